"""minicluster.testing.snapshot(): the head's state as one frozen record, for tests and benchmarks."""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import pytest
from conftest import wait_for

import minicluster as ray
from minicluster import testing


@ray.remote
def wait_for_file(path: str) -> str:
    while not os.path.exists(path):
        time.sleep(0.005)
    return "done"


@ray.remote
def snapshot_in_a_worker() -> str:
    try:
        testing.snapshot()
    except RuntimeError as exc:
        return str(exc)
    return "no error"


@ray.remote
class Counter:
    def ping(self) -> int:
        return 1


def test_without_a_session_or_in_a_worker_it_is_a_clear_error(cluster):
    with pytest.raises(RuntimeError, match="call init"):
        testing.snapshot()
    cluster(num_nodes=1)
    assert "works in the driver" in ray.get(snapshot_in_a_worker.remote(), timeout=10)


def test_folders_and_nodes(cluster):
    info = cluster(num_nodes=2)
    snap = testing.snapshot()
    assert snap.session_dir == info.address_info["session_dir"]
    assert snap.logs_dir == os.path.join(info.address_info["session_dir"], "logs") and os.path.isdir(snap.logs_dir)
    assert os.path.isdir(snap.store_root)
    assert [n.node_id for n in snap.nodes] == testing.live_nodes()
    assert [n.name for n in snap.nodes] == ["node-0", "node-1"]
    for node in snap.nodes:
        assert node.alive and not node.stopped and node.pid > 0
        assert node.store_dir == os.path.join(snap.store_root, node.node_id) and os.path.isdir(node.store_dir)
        assert node.spill_dir == os.path.join(snap.spill_root, node.node_id)
        assert set(node.worker_pids) == set(testing.worker_pids(node.node_id))
    assert snap.node(snap.nodes[1].node_id) == snap.nodes[1]
    with pytest.raises(ValueError, match="no node"):
        snap.node("ab" * 28)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.live_tasks = 3  # type: ignore[misc]

    victim = snap.nodes[1].node_id
    testing.stop_node(victim)
    assert testing.snapshot().node(victim).stopped
    testing.kill_node(victim)
    dead = testing.snapshot().node(victim)
    assert not dead.alive and dead.worker_pids == ()
    assert snap.node(victim).alive  # a snapshot is a copy: it does not change afterwards


def _state(snap: testing.ClusterSnapshot, ref: ray.ObjectRef) -> str:
    task = snap.task(ref)
    return task.state if task is not None else ""


def test_tasks_objects_and_waiters(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    marker = tmp_path / "go"
    ref = wait_for_file.remote(str(marker))
    wait_for(lambda r=ref: _state(testing.snapshot(), r) == "RUNNING", what="the task to run")
    got: list = []
    reader = threading.Thread(target=lambda r: got.append(ray.get(r, timeout=20)), args=(ref,))
    reader.start()
    wait_for(lambda: testing.snapshot().pending_waiters == 1, what="the get to wait")
    snap = testing.snapshot()
    assert snap.live_tasks == 1 and snap.objects >= 1
    [task] = snap.tasks
    assert task.name == "wait_for_file" and not task.finished and task.task_id == ref.task_id().hex()
    assert [(a.attempt_number, a.state) for a in task.attempts] == [(0, "RUNNING")]
    marker.touch()
    reader.join(timeout=20)
    assert got == ["done"]
    after = testing.snapshot()
    assert after.live_tasks == 0 and after.pending_waiters == 0 and after.tasks == ()
    assert after.task(ref) is None  # finished: only with finished_tasks=True
    finished = testing.snapshot(finished_tasks=True).task(ref)
    assert finished is not None and finished.finished and finished.state == "FINISHED"
    assert finished.attempts[0].node_id == testing.live_nodes()[0]
    # Its result still exists, so the task is kept as lineage (to rebuild it) and in the history.
    assert after.lineage_records == 1 and after.lineage_bytes > 0 and after.finished_tasks_kept == 1
    del ref
    wait_for(lambda: testing.snapshot().lineage_records == 0, what="the lineage to go with the result")
    assert testing.snapshot().freed_ids_remembered >= 1


def test_actors_by_state_and_the_fault_plan_flag(cluster):
    cluster(num_nodes=1, num_cpus=1)
    assert dict(testing.snapshot().actors) == {}
    counter = Counter.remote()
    assert ray.get(counter.ping.remote(), timeout=10) == 1
    assert dict(testing.snapshot().actors) == {"ALIVE": 1}
    ray.kill(counter)
    wait_for(lambda: dict(testing.snapshot().actors) == {"DEAD": 1}, what="the actor to be dead")
    assert not testing.snapshot().fault_plan_installed
    with testing.FaultPlan(seed=1):
        assert testing.snapshot().fault_plan_installed
    assert not testing.snapshot().fault_plan_installed
