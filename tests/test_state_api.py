"""minicluster.util.state in the driver: every attempt recorded with the seed's fields (SPEC 2, 3)."""

from __future__ import annotations

import json
import os
import time
import warnings

import pytest
from conftest import wait_for

import minicluster as ray
from minicluster import testing
from minicluster.exceptions import WorkerCrashedError
from minicluster.util.state import (
    RayStateApiException,
    TaskState,
    get_task,
    list_actors,
    list_nodes,
    list_objects,
    list_tasks,
    list_workers,
    summarize_tasks,
)

SEED_FIELDS = ("task_id", "attempt_number", "name", "state", "job_id", "actor_id", "type", "func_or_class_name",
               "parent_task_id", "node_id", "worker_id", "error_type")


@ray.remote
def ok(x: int) -> int:
    return x


@ray.remote
def bad() -> None:
    raise ValueError("boom")


@ray.remote(max_retries=1)
def crash_once(marker: str) -> str:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return "second time lucky"


@ray.remote(max_retries=0)
def crash_always() -> None:
    os._exit(3)


@ray.remote
def sleeper(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def test_every_attempt_is_recorded_with_the_seeds_fields(cluster, tmp_path):
    cluster(num_cpus=2)
    marker = str(tmp_path / "crashed")
    refs = {"ok": ok.remote(1), "crash_once": crash_once.remote(marker)}
    assert ray.get(refs["ok"]) == 1
    assert ray.get(refs["crash_once"]) == "second time lucky"
    failing = bad.remote()
    with pytest.raises(ValueError):
        ray.get(failing)
    dead = crash_always.remote()
    with pytest.raises(WorkerCrashedError):
        ray.get(dead)

    rows = list_tasks()
    assert all(isinstance(row, TaskState) for row in rows)
    by_name = {}
    for row in rows:
        by_name.setdefault(row.name, []).append(row)
    assert sorted(by_name) == ["bad", "crash_always", "crash_once", "ok"]
    node_ids = {n.node_id for n in list_nodes()}
    worker_ids = {w.worker_id for w in list_workers()}
    for row in rows:
        for field in SEED_FIELDS:
            assert field in row.keys()
        assert row.job_id == ray.get_runtime_context().get_job_id()  # 01000000 in a process's first session
        assert row.actor_id is None
        assert row.type == "NORMAL_TASK"
        assert row.func_or_class_name == row.name
        assert row.parent_task_id == "ff" * 20 + row.job_id  # the driver's task id, as Ray's
        assert row.node_id in node_ids
        assert row.worker_id in worker_ids
        assert row.worker_pid and row.worker_pid > 0
        assert row["state"] == row.state  # item access, as Ray's records allow
    assert [(r.attempt_number, r.state, r.error_type) for r in by_name["crash_once"]] == [
        (0, "FAILED", "WORKER_DIED"), (1, "FINISHED", None)]
    assert by_name["crash_once"][0].task_id == by_name["crash_once"][1].task_id == refs["crash_once"].task_id().hex()
    assert by_name["crash_once"][0].worker_id != by_name["crash_once"][1].worker_id
    assert [(r.state, r.error_type) for r in by_name["bad"]] == [("FAILED", "TASK_EXECUTION_EXCEPTION")]
    assert [(r.state, r.error_type) for r in by_name["crash_always"]] == [("FAILED", "WORKER_DIED")]
    assert [(r.state, r.error_type) for r in by_name["ok"]] == [("FINISHED", None)]


def test_detail_adds_error_message_times_and_ray_state_events(cluster):
    cluster(num_cpus=1)
    failing = bad.remote()
    with pytest.raises(ValueError):
        ray.get(failing)
    plain = list_tasks(filters=[("name", "=", "bad")])[0]
    assert plain.error_message is None and plain.start_time_ms is None  # as in Ray, only with detail
    row = list_tasks(filters=[("name", "=", "bad")], detail=True)[0]
    assert "ValueError: boom" in row.error_message
    assert row.creation_time_ms <= row.start_time_ms <= row.end_time_ms
    assert abs(row.end_time_ms / 1000 - time.time()) < 60
    assert [e["state"] for e in row.events] == ["PENDING_ARGS_AVAIL", "RUNNING", "FAILED"]
    assert [int(e["created_ms"]) for e in row.events] == [row.creation_time_ms, row.start_time_ms, row.end_time_ms]
    assert row.required_resources == {"CPU": 1.0}
    assert row.language == "PYTHON"
    assert row.task_log_info["stdout_file"].endswith(f"-{row.worker_pid}.out")


def test_live_states_follow_rays_names(cluster):
    cluster(num_cpus=1)
    first = sleeper.remote(1.5)
    wait_for(lambda: get_task(first)[-1].state == "RUNNING", 10, "the first task to run")
    queued = ok.remote(1)
    dependent = ok.remote(first)
    assert get_task(queued)[-1].state == "PENDING_NODE_ASSIGNMENT"  # no free CPU
    assert get_task(dependent)[-1].state == "PENDING_ARGS_AVAIL"  # waits for `first`
    assert ray.get([first, queued, dependent], timeout=20) == ["slept", 1, "slept"]
    assert {t.state for t in list_tasks()} == {"FINISHED"}


def test_filters_limit_and_errors(cluster):
    cluster(num_cpus=2)
    ray.get([ok.remote(i) for i in range(5)])
    with pytest.raises(ValueError):
        ray.get(bad.remote())
    assert len(list_tasks(filters=[("name", "=", "ok")])) == 5
    assert len(list_tasks(filters=[("name", "!=", "ok")])) == 1
    assert len(list_tasks(filters=[("state", "=", "failed")])) == 1  # values compare case-insensitively
    assert len(list_tasks(filters=[("attempt_number", "=", "0")])) == 6
    assert len(list_tasks(filters=[("attempt_number", "=", 0), ("state", "=", "FINISHED")])) == 5
    assert list_tasks(filters=[("state", "=", "NOPE")]) == []
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert len(list_tasks(limit=2)) == 2
    with pytest.raises(RayStateApiException) as info:
        list_tasks(filters=[("bogus", "=", 1)])
    assert "bogus" in str(info.value) and "task_id" in str(info.value) and "error_type" in str(info.value)
    with pytest.raises(RayStateApiException) as info:
        list_tasks(filters=[("state", ">", "x")])
    assert "'='" in str(info.value) and "'!='" in str(info.value)
    with pytest.raises(RayStateApiException):
        list_tasks(filters=[("state", "=")])  # type: ignore[list-item]
    with pytest.raises(RayStateApiException):
        list_workers(filters=[("task_id", "=", "x")])


def test_get_task_by_id_or_ref_and_unknown_ids(cluster, tmp_path):
    cluster(num_cpus=1)
    ref = crash_once.remote(str(tmp_path / "m"))
    ray.get(ref)
    by_ref = get_task(ref)
    by_id = get_task(ref.task_id().hex())
    assert [a.attempt_number for a in by_ref] == [a.attempt_number for a in by_id] == [0, 1]
    assert by_ref[0].error_message  # get returns details
    assert get_task("00" * 24) is None
    with pytest.raises(RayStateApiException):
        get_task("")


def test_summarize_tasks_counts_attempts_by_name(cluster, tmp_path):
    cluster(num_cpus=2)
    ray.get(crash_once.remote(str(tmp_path / "m")))
    ray.get([ok.remote(i) for i in range(3)])
    summary = summarize_tasks()["cluster"]
    assert summary["summary_by"] == "func_name"
    assert summary["total_tasks"] == 5
    assert summary["total_actor_tasks"] == 0 and summary["total_actor_scheduled"] == 0
    assert summary["summary"]["crash_once"] == {
        "func_or_class_name": "crash_once", "state_counts": {"FAILED": 1, "FINISHED": 1}, "type": "NORMAL_TASK"}
    assert summary["summary"]["ok"]["state_counts"] == {"FINISHED": 3}


def test_nested_tasks_name_their_parent(cluster):
    cluster(num_cpus=2)

    @ray.remote
    def outer() -> int:
        return ray.get(ok.remote(7))

    ref = outer.remote()
    assert ray.get(ref) == 7
    child = list_tasks(filters=[("name", "=", "ok")])[0]
    assert child.parent_task_id == ref.task_id().hex()


def test_nodes_workers_objects_and_actors(cluster):
    cluster(num_nodes=2, num_cpus=1)
    nodes = list_nodes()
    assert [n.node_name for n in nodes] == ["node-0", "node-1"]
    assert [n.state for n in nodes] == ["ALIVE", "ALIVE"]
    assert nodes[0].is_head_node and not nodes[1].is_head_node
    assert nodes[0].resources_total["CPU"] == 1.0
    wait_for(lambda: testing.worker_pids(nodes[1].node_id), 10, "node-1's worker to start")
    testing.kill_node(nodes[1].node_id)
    dead = list_nodes(filters=[("state", "=", "DEAD")])
    assert [n.node_id for n in dead] == [nodes[1].node_id]
    assert "kill_node" in dead[0].state_message
    gone = [w for w in list_workers() if w.node_id == nodes[1].node_id]
    assert gone and all(not w.is_alive and w.exit_type == "SYSTEM_ERROR" for w in gone)
    driver = list_workers(filters=[("worker_type", "=", "DRIVER")])
    assert [w.pid for w in driver] == [os.getpid()]
    assert driver[0].is_alive

    held = ray.put(b"x" * 200_000)
    objects = {o.object_id: o for o in list_objects(detail=True)}
    mine = objects[held.hex()]
    assert mine.reference_type == "LOCAL_REFERENCE"
    assert mine.type == "DRIVER" and mine.pid == os.getpid()
    assert mine.task_status == "NIL"
    assert mine.object_size >= 200_000
    assert mine.storage == "SHARED_MEMORY" and mine.locations == [nodes[0].node_id]
    assert list_actors() == []


@ray.remote
class Pinger:
    def pid(self) -> int:
        return os.getpid()


def test_actors_are_listed_alive_then_dead_with_the_reason(cluster):
    cluster(num_nodes=1, num_cpus=1)
    named = Pinger.options(name="pinger", namespace="ns").remote()
    plain = Pinger.remote()
    pids = ray.get([named.pid.remote(), plain.pid.remote()])
    rows = {a.name: a for a in list_actors()}
    assert set(rows) == {"pinger", ""}
    assert [rows["pinger"].state, rows[""].state] == ["ALIVE", "ALIVE"]
    assert [rows["pinger"].pid, rows[""].pid] == pids
    assert rows["pinger"].class_name == "Pinger" and rows["pinger"].ray_namespace == "ns"
    assert rows["pinger"].node_id == testing.live_nodes()[0]
    ray.kill(named)
    wait_for(lambda: list_actors(filters=[("state", "=", "DEAD")]), 5, "the killed actor to be listed DEAD")
    dead = get_actor_row(named._actor_id.hex())
    assert "ray.kill" in dead.death_cause
    assert [a.actor_id for a in list_actors(filters=[("state", "=", "ALIVE")])] == [plain._actor_id.hex()]
    wait_for(lambda: any(w.pid == pids[0] and not w.is_alive for w in list_workers()), 5, "its worker to be listed")
    worker = next(w for w in list_workers() if w.pid == pids[0])
    assert worker.exit_type == "INTENDED_USER_EXIT"  # killed on purpose, not a crash


def get_actor_row(actor_id: str):
    rows = [a for a in list_actors(detail=True) if a.actor_id == actor_id]  # death_cause is a detail field
    assert len(rows) == 1
    return rows[0]


def test_a_worker_reads_the_journal_of_its_session(cluster):
    cluster(num_cpus=2)
    ray.get(ok.remote(1))

    @ray.remote
    def look() -> list:
        from minicluster.util.state import list_tasks as worker_list_tasks

        time.sleep(0.5)  # the journal is written every 200 ms
        return [(t.name, t.state) for t in worker_list_tasks(filters=[("name", "=", "ok")])]

    assert ray.get(look.remote()) == [("ok", "FINISHED")]


def test_timeline_has_one_slice_per_attempt_and_marks_failures(cluster, tmp_path):
    cluster(num_cpus=2)
    ray.get(crash_once.remote(str(tmp_path / "m")))
    ray.get([ok.remote(i) for i in range(3)])
    events = ray.timeline()
    slices = [e for e in events if e["ph"] == "X"]
    assert len(slices) == 5
    failed = [e for e in slices if "failed" in e["cat"]]
    assert len(failed) == 1 and "FAILED WORKER_DIED" in failed[0]["name"]
    assert failed[0]["args"]["attempt_number"] == 0
    tracks = {(e["pid"], e["tid"]) for e in slices}
    named = {(e["pid"], e["tid"]) for e in events if e["name"] == "thread_name"}
    assert tracks <= named  # every slice sits on a named worker track
    path = tmp_path / "trace.json"
    assert ray.timeline(filename=str(path)) is None
    with open(path) as f:
        written = json.load(f)
    # The slices are settled (every task ended); a worker started since (the crashed one's
    # replacement) may add a track name, so only the slices are compared.
    assert [e for e in written if e["ph"] == "X"] == json.loads(json.dumps(slices))
