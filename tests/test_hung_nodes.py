"""Hung machines: a node whose processes are SIGSTOPped stays "alive" but answers nothing.

`testing.stop_node` freezes every process of a node; `resume_node` thaws it.
A fetch of an object whose only copy is on a frozen node waits at most
MINICLUSTER_fetch_fail_timeout_milliseconds (RAY_fetch_fail_timeout_milliseconds
honoured; read at init), then rebuilds the object from lineage where possible,
else raises ObjectFetchTimedOutError. Resuming the node in time lets a waiting
get finish with the original copy.

The objects here are ~1.6 MB arrays made by tasks pinned to the node that is
then stopped, and they are never read by the driver before the stop (a read
would copy them to the driver's node): `ray.wait` tells when they exist.
"""

from __future__ import annotations

import concurrent.futures
import os
import time

import numpy as np
import psutil
import pytest
from conftest import on, runs, wait_for, wait_ready

import minicluster as ray
from minicluster import exceptions as rex
from minicluster import testing

N = 200_000
TIMEOUT_MS = 300


@ray.remote
def big(log, fill=1.0):
    with open(log, "a") as f:
        f.write(ray.get_runtime_context().get_node_id() + "\n")
    return np.full(N, fill)


@ray.remote
def first_of(array):
    return float(array[0])


@ray.remote
def gate(started, release):
    open(started, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)


@ray.remote
def get_nested(refs):
    return float(ray.get(refs[0])[0])


@ray.remote
def where_am_i():
    return ray.get_runtime_context().get_node_id()


def node_pids(node: str) -> list:
    info = next(n for n in ray.nodes() if n["NodeID"] == node)
    return [info["Pid"]] + testing.worker_pids(node)


def is_stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def short_fetch_timeout(monkeypatch):
    monkeypatch.delenv("RAY_fetch_fail_timeout_milliseconds", raising=False)
    monkeypatch.setenv("MINICLUSTER_fetch_fail_timeout_milliseconds", str(TIMEOUT_MS))


# ---- what a stopped node is -------------------------------------------------------------------


def test_stopped_node_is_frozen_but_alive_and_resumes(cluster):
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    pids = node_pids(node)
    testing.stop_node(node)
    wait_for(lambda: all(is_stopped(p) for p in pids), timeout=2.0, what="every process of the node to stop")
    assert node in testing.live_nodes()
    assert next(n for n in ray.nodes() if n["NodeID"] == node)["Alive"] is True
    testing.resume_node(node)
    wait_for(lambda: not any(is_stopped(p) for p in pids), timeout=2.0, what="the node to resume")
    assert ray.get(where_am_i.options(scheduling_strategy=on(node)).remote(), timeout=10) == node


def test_new_tasks_avoid_a_stopped_node(cluster):
    cluster(num_nodes=2)
    head, node = testing.live_nodes()
    testing.stop_node(node)
    assert ray.get([where_am_i.remote() for _ in range(6)], timeout=10) == [head] * 6
    testing.resume_node(node)


def test_task_pinned_to_a_stopped_node_waits_for_it(cluster):
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    testing.stop_node(node)
    ref = where_am_i.options(scheduling_strategy=on(node)).remote()
    with pytest.raises(rex.GetTimeoutError):
        ray.get(ref, timeout=0.3)
    testing.resume_node(node)
    assert ray.get(ref, timeout=10) == node


def test_task_running_on_a_stopped_node_finishes_after_resume(cluster, tmp_path):
    """A hung machine is not a dead one: its running task is neither failed nor retried."""
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    log = str(tmp_path / "runs")

    @ray.remote
    def slowish(log):
        with open(log, "a") as f:
            f.write("start\n")
        time.sleep(0.2)
        return "done"

    ref = slowish.options(scheduling_strategy=on(node, soft=True)).remote(log)
    wait_for(lambda: runs(log) == ["start"], timeout=10, what="the task to start")
    testing.stop_node(node)
    with pytest.raises(rex.GetTimeoutError):
        ray.get(ref, timeout=0.5)
    testing.resume_node(node)
    assert ray.get(ref, timeout=10) == "done"
    assert runs(log) == ["start"]


def test_a_stopped_node_can_be_killed(cluster, tmp_path):
    cluster(num_nodes=2)
    head, node = testing.live_nodes()
    log = str(tmp_path / "big")
    ref = big.options(scheduling_strategy=on(node, soft=True)).remote(log)
    wait_ready([ref])
    pids = node_pids(node)
    testing.stop_node(node)
    testing.kill_node(node)
    wait_for(lambda: not any(psutil.pid_exists(p) and not is_zombie(p) for p in pids), timeout=2.0,
             what="the stopped node's processes to die")
    assert ray.get(ref, timeout=10)[0] == 1.0  # rebuilt elsewhere
    assert runs(log) == [node, head]


def is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ---- fetching from a stopped node -------------------------------------------------------------


def test_fetch_from_a_stopped_node_times_out_when_the_object_cannot_be_rebuilt(cluster, tmp_path, short_fetch_timeout):
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    log = str(tmp_path / "big")
    ref = big.options(scheduling_strategy=on(node), max_retries=0).remote(log)
    wait_ready([ref])
    assert testing.object_locations(ref) == [node]
    testing.stop_node(node)
    start = time.monotonic()
    with pytest.raises(rex.ObjectFetchTimedOutError) as info:
        ray.get(ref, timeout=10)
    took = time.monotonic() - start
    assert TIMEOUT_MS / 1000 * 0.8 <= took < 3.0, f"gave up after {took:.2f} s"
    assert isinstance(info.value, rex.ObjectLostError)
    assert ref.hex() in str(info.value)
    assert runs(log) == [node]
    testing.resume_node(node)


def test_copy_on_a_live_node_is_used_while_another_copy_hangs(cluster, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_fetch_fail_timeout_milliseconds", raising=False)
    monkeypatch.setenv("MINICLUSTER_fetch_fail_timeout_milliseconds", "30000")
    cluster(num_nodes=3)
    _, hung, other = testing.live_nodes()
    log = str(tmp_path / "big")
    ref = big.options(scheduling_strategy=on(hung), max_retries=0).remote(log, 6.0)
    assert ray.get(first_of.options(scheduling_strategy=on(other)).remote(ref), timeout=10) == 6.0
    testing.stop_node(hung)
    start = time.monotonic()
    assert ray.get(ref, timeout=10)[0] == 6.0
    assert time.monotonic() - start < 2.0  # no waiting for the hung copy (the fetch timeout is 30 s)
    assert runs(log) == [hung]
    testing.resume_node(hung)


def test_borrower_fetch_from_a_stopped_node_times_out(cluster, tmp_path, short_fetch_timeout):
    """A task's own get (of a ref it received nested) gives up after the fetch timeout too."""
    cluster(num_nodes=3)
    _, reader_node, hung = testing.live_nodes()
    ref = big.options(scheduling_strategy=on(hung), max_retries=0).remote(str(tmp_path / "big"))
    wait_ready([ref])
    testing.stop_node(hung)
    start = time.monotonic()
    with pytest.raises(rex.ObjectFetchTimedOutError) as info:
        ray.get(get_nested.options(scheduling_strategy=on(reader_node)).remote([ref]), timeout=10)
    assert time.monotonic() - start < 3.0
    assert isinstance(info.value, rex.RayTaskError)
    testing.resume_node(hung)


def test_killing_a_hung_node_ends_the_wait_and_rebuilds(cluster, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_fetch_fail_timeout_milliseconds", raising=False)
    monkeypatch.setenv("MINICLUSTER_fetch_fail_timeout_milliseconds", "30000")
    cluster(num_nodes=2)
    head, hung = testing.live_nodes()
    log = str(tmp_path / "big")
    ref = big.options(scheduling_strategy=on(hung, soft=True)).remote(log, 8.0)
    wait_ready([ref])
    testing.stop_node(hung)
    future = ref.future()
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(timeout=0.3)  # waiting for the hung node
    testing.kill_node(hung)
    assert future.result(timeout=10)[0] == 8.0
    assert runs(log) == [hung, head]


def test_fetch_timeout_applies_again_to_a_later_get(cluster, tmp_path, short_fetch_timeout):
    """A get that gave up early (its own timeout) does not use up the fetch timeout of a later one."""
    cluster(num_nodes=2)
    _, hung = testing.live_nodes()
    ref = big.options(scheduling_strategy=on(hung), max_retries=0).remote(str(tmp_path / "big"))
    wait_ready([ref])
    testing.stop_node(hung)
    with pytest.raises(rex.GetTimeoutError):
        ray.get(ref, timeout=0.05)
    with pytest.raises(rex.ObjectFetchTimedOutError):
        ray.get(ref, timeout=10)
    testing.resume_node(hung)


def test_ray_fetch_timeout_variable_is_honoured(cluster, tmp_path, monkeypatch):
    monkeypatch.delenv("MINICLUSTER_fetch_fail_timeout_milliseconds", raising=False)
    monkeypatch.setenv("RAY_fetch_fail_timeout_milliseconds", str(TIMEOUT_MS))
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    ref = big.options(scheduling_strategy=on(node), max_retries=0).remote(str(tmp_path / "big"))
    wait_ready([ref])
    testing.stop_node(node)
    start = time.monotonic()
    with pytest.raises(rex.ObjectFetchTimedOutError):
        ray.get(ref, timeout=10)
    assert time.monotonic() - start < 3.0
    testing.resume_node(node)


def test_fetch_timeout_is_read_at_init(cluster, tmp_path, monkeypatch):
    """Set after init, the variable does not apply to the running session (the default is 10 minutes)."""
    monkeypatch.delenv("RAY_fetch_fail_timeout_milliseconds", raising=False)
    monkeypatch.delenv("MINICLUSTER_fetch_fail_timeout_milliseconds", raising=False)
    cluster(num_nodes=2)
    monkeypatch.setenv("MINICLUSTER_fetch_fail_timeout_milliseconds", "50")
    _, node = testing.live_nodes()
    ref = big.options(scheduling_strategy=on(node), max_retries=0).remote(str(tmp_path / "big"))
    wait_ready([ref])
    testing.stop_node(node)
    with pytest.raises(rex.GetTimeoutError):
        ray.get(ref, timeout=0.5)
    testing.resume_node(node)
    assert ray.get(ref, timeout=10)[0] == 1.0


def test_fetch_from_a_stopped_node_falls_back_to_reconstruction(cluster, tmp_path, short_fetch_timeout):
    """The object's task has the default strategy (its rebuild may run anywhere): it is made on
    `node` because the driver's node is busy, then `node` hangs and the get rebuilds it on `head`."""
    cluster(num_nodes=2)
    head, node = testing.live_nodes()
    log, started, release = str(tmp_path / "big"), str(tmp_path / "started"), str(tmp_path / "release")
    blocker = gate.options(scheduling_strategy=on(head)).remote(started, release)
    wait_for(lambda: os.path.exists(started), timeout=10, what="the blocker to take the head's CPU")
    ref = big.options(max_retries=2).remote(log, 3.0)
    wait_ready([ref])
    assert runs(log) == [node]
    open(release, "w").close()
    ray.get(blocker, timeout=10)
    testing.stop_node(node)
    start = time.monotonic()
    value = ray.get(ref, timeout=10)
    took = time.monotonic() - start
    assert value[0] == 3.0
    assert TIMEOUT_MS / 1000 * 0.8 <= took < 5.0, f"took {took:.2f} s"
    assert runs(log) == [node, head]  # rebuilt on the live node
    testing.resume_node(node)
    assert ray.get(ref, timeout=10)[0] == 3.0


def test_resume_lets_a_waiting_get_finish_with_the_original_copy(cluster, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_fetch_fail_timeout_milliseconds", raising=False)
    monkeypatch.setenv("MINICLUSTER_fetch_fail_timeout_milliseconds", "30000")
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    log = str(tmp_path / "big")
    ref = big.options(scheduling_strategy=on(node)).remote(log, 4.0)
    wait_ready([ref])
    testing.stop_node(node)
    with pytest.raises(rex.GetTimeoutError):
        ray.get(ref, timeout=0.3)  # waiting on the hung node, not failing
    future = ref.future()
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(timeout=0.2)  # a concurrent get is blocked as well
    testing.resume_node(node)
    assert future.result(timeout=10)[0] == 4.0
    assert ray.get(ref, timeout=10)[0] == 4.0
    assert runs(log) == [node]  # no re-execution


def test_dependent_task_of_an_object_on_a_stopped_node_fails_after_the_fetch_timeout(cluster, tmp_path,
                                                                                     short_fetch_timeout):
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    ref = big.options(scheduling_strategy=on(node), max_retries=0).remote(str(tmp_path / "big"))
    wait_ready([ref])
    testing.stop_node(node)
    start = time.monotonic()
    with pytest.raises(rex.RayTaskError) as info:
        ray.get(first_of.remote(ref), timeout=10)
    assert time.monotonic() - start < 3.0
    assert isinstance(info.value, rex.ObjectFetchTimedOutError)
    testing.resume_node(node)


def test_dependent_task_waits_for_a_resumed_node(cluster, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_fetch_fail_timeout_milliseconds", raising=False)
    monkeypatch.setenv("MINICLUSTER_fetch_fail_timeout_milliseconds", "30000")
    cluster(num_nodes=2)
    head, node = testing.live_nodes()
    ref = big.options(scheduling_strategy=on(node)).remote(str(tmp_path / "big"), 5.0)
    wait_ready([ref])
    testing.stop_node(node)
    out = first_of.options(scheduling_strategy=on(head)).remote(ref)
    assert ray.wait([out], timeout=0.3)[0] == []
    testing.resume_node(node)
    assert ray.get(out, timeout=10) == 5.0
