"""Ownership: the process that created a ref owns the object; if the owner dies, the object is gone.

From the seed chapter: the owner is the worker that created the original
ObjectRef (by `.remote()` or `put`), which may be a worker for nested tasks.
Ray does not recover from owner failure: the remaining copies are cleaned up
and every later `get` raises OwnerDiedError - also in borrowers that received
the ref inside another object. Every test here kills the owning worker (or its
node) for real.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from conftest import count_lines, on, wait_for

import minicluster as ray
from minicluster import exceptions as rex
from minicluster import testing
from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy

N = 200_000  # float64 elements: 1.6 MB, stored in a node's store (not inline)


def store_file(node: str, object_hex: str) -> str:
    return os.path.join(testing.snapshot().store_root, node, object_hex)


@ray.remote
def put_and_return(fill, size):
    """Owns an object made by put; hands the ref (inside a list) to the caller, with its pid."""
    return [ray.put(np.full(size, fill))], os.getpid()


@ray.remote(max_calls=1)
def put_and_return_once(fill, size):
    """As put_and_return, in a worker that exits right after (max_calls=1)."""
    return [ray.put(np.full(size, fill))], os.getpid()


@ray.remote
def parent_of_put(node):
    """Blocks in get on a child (pinned to its own node) that owns a put; returns its ref and both pids."""
    child = put_and_return.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
    inner, owner_pid = ray.get(child.remote(4.0, N))
    return inner, owner_pid, os.getpid()


@ray.remote
def make(log, fill, size=N):
    with open(log, "a") as f:
        f.write("run\n")
    return np.full(size, fill)


@ray.remote
def submit_and_return(log, fill, size=N):
    """Owns the result of a nested task; returns the ref (inside a list) and its pid."""
    child = make.remote(log, fill, size)
    ray.wait([child], timeout=10)
    return [child], os.getpid()


@ray.remote
def submit_and_return_on(log, node, fill=3.0):
    """As submit_and_return, with the child pinned (softly) to `node`."""
    child = make.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)).remote(log, fill)
    ray.wait([child], timeout=10)
    return [child], os.getpid()


@ray.remote
def first_of(array):
    return float(array[0])


@ray.remote
def get_inner(refs):
    """A borrower: gets the ref that arrived nested in its argument."""
    return float(ray.get(refs[0])[0])


@ray.remote
def slow(log, release):
    with open(log, "a") as f:
        f.write("run\n")
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)
    return "slow"


@ray.remote
def submit_slow_and_return(log, release):
    return [slow.remote(log, release)], os.getpid()


def kill_owner(pid: int) -> None:
    """SIGKILL the owning worker and wait until the cluster noticed (the kill itself is asynchronous)."""
    testing.kill_worker(pid)
    wait_for(lambda: pid not in testing.worker_pids(), timeout=2.0, what=f"worker {pid} to be noticed dead")
    wait_for(lambda: pid not in testing.worker_pids(), timeout=2.0, what=f"worker {pid} to be noticed dead")


def owner_died(ref, timeout=5.0):
    start = time.monotonic()
    with pytest.raises(rex.OwnerDiedError) as info:
        ray.get(ref, timeout=timeout)
    assert time.monotonic() - start < 2.0
    assert isinstance(info.value, rex.ObjectLostError)
    assert ref.hex() in str(info.value)
    return info.value


# ---- owned by a worker: put -------------------------------------------------------------------


@pytest.mark.parametrize("size", [10, N], ids=["inline", "in-store"])
def test_worker_owned_put_raises_owner_died_after_the_worker_is_killed(cluster, size):
    """The issue's example: a task returns [ray.put(x)] to the driver, then that worker is killed."""
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    [inner], pid = ray.get(put_and_return.options(scheduling_strategy=on(node)).remote(7.0, size), timeout=10)
    assert ray.get(inner, timeout=10)[0] == 7.0  # fine while the owner lives
    kill_owner(pid)
    error = owner_died(inner)
    assert "owner" in str(error).lower()


def test_worker_owned_put_raises_owner_died_when_the_owners_node_dies(cluster):
    cluster(num_nodes=3)
    _, node, _ = testing.live_nodes()
    [inner], _ = ray.get(put_and_return.options(scheduling_strategy=on(node)).remote(1.0, N), timeout=10)
    testing.kill_node(node)
    owner_died(inner)


def test_owner_death_frees_every_copy(cluster):
    """The value was copied to the driver's node by a get; the owner's death deletes both files."""
    cluster(num_nodes=2)
    head, node = testing.live_nodes()
    [inner], pid = ray.get(put_and_return.options(scheduling_strategy=on(node)).remote(2.0, N), timeout=10)
    assert ray.get(inner, timeout=10)[0] == 2.0
    files = [store_file(n, inner.hex()) for n in (head, node)]
    assert all(os.path.exists(f) for f in files)
    kill_owner(pid)
    wait_for(lambda: not any(os.path.exists(f) for f in files), timeout=2.0,
             what="the dead owner's object files to be deleted")
    owner_died(inner)


# ---- owned by a worker: nested tasks ----------------------------------------------------------


def test_result_of_a_nested_task_raises_owner_died_after_its_owner_is_killed(cluster, tmp_path):
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    log = str(tmp_path / "make")
    [child], pid = ray.get(submit_and_return.options(scheduling_strategy=on(node)).remote(log, 3.0), timeout=10)
    assert ray.get(child, timeout=10)[0] == 3.0
    kill_owner(pid)
    owner_died(child)
    assert count_lines(log) == 1  # no recovery from owner death: nothing is re-run


def test_nested_result_lost_with_its_owner_is_not_reconstructed(cluster, tmp_path):
    """Lineage needs the owner: the node holding both owner and value dies, the value is not rebuilt."""
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    log = str(tmp_path / "make")
    [child], _ = ray.get(submit_and_return.options(scheduling_strategy=on(node)).remote(log, 3.0), timeout=10)
    testing.kill_node(node)
    owner_died(child)
    assert count_lines(log) == 1


def test_pending_nested_task_result_fails_at_once_when_its_owner_dies(cluster, tmp_path):
    """The owner dies while its child task still runs: the driver's get does not wait for the child."""
    cluster(num_nodes=3)
    _, owner_node, _ = testing.live_nodes()
    log, release = str(tmp_path / "slow"), str(tmp_path / "release")
    [child], pid = ray.get(
        submit_slow_and_return.options(scheduling_strategy=on(owner_node)).remote(log, release), timeout=10)
    wait_for(lambda: count_lines(log) == 1, timeout=10, what="the child task to start")
    kill_owner(pid)
    owner_died(child)
    open(release, "w").close()


def test_task_waiting_for_a_nested_result_fails_when_the_owner_dies(cluster, tmp_path):
    """The driver's task depends on a worker-owned object still being computed; the owner dies."""
    cluster(num_nodes=3)
    head, owner_node, _ = testing.live_nodes()
    log, release = str(tmp_path / "slow"), str(tmp_path / "release")
    [child], pid = ray.get(
        submit_slow_and_return.options(scheduling_strategy=on(owner_node)).remote(log, release), timeout=10)
    dependent = first_of.options(scheduling_strategy=on(head)).remote(child)
    wait_for(lambda: count_lines(log) == 1, timeout=10, what="the child task to start")
    assert ray.wait([dependent], timeout=0.2)[0] == []
    kill_owner(pid)
    with pytest.raises(rex.OwnerDiedError) as info:
        ray.get(dependent, timeout=5)
    assert isinstance(info.value, rex.RayTaskError)
    open(release, "w").close()


def test_owner_death_frees_its_nested_results_on_other_nodes(cluster, tmp_path):
    cluster(num_nodes=3)
    _, owner_node, child_node = testing.live_nodes()
    log = str(tmp_path / "make")
    [child], pid = ray.get(
        submit_and_return_on.options(scheduling_strategy=on(owner_node)).remote(log, child_node), timeout=10)
    path = store_file(child_node, child.hex())
    assert os.path.exists(path)
    kill_owner(pid)
    wait_for(lambda: not os.path.exists(path), timeout=2.0, what="the child's result file to be deleted")
    owner_died(child)


def test_owner_node_death_frees_copies_on_other_nodes(cluster):
    cluster(num_nodes=2)
    head, node = testing.live_nodes()
    [inner], _ = ray.get(put_and_return.options(scheduling_strategy=on(node)).remote(1.0, N), timeout=10)
    assert ray.get(inner, timeout=10)[0] == 1.0  # copies it to the driver's node
    path = store_file(head, inner.hex())
    assert os.path.exists(path)
    testing.kill_node(node)
    wait_for(lambda: not os.path.exists(path), timeout=2.0, what="the copy on the driver's node to be deleted")
    owner_died(inner)


def test_worker_owned_object_lost_with_its_node_is_rebuilt_while_the_owner_lives(cluster, tmp_path):
    """Only the value's node dies; its owner (a worker elsewhere) is alive: lineage rebuilds it."""
    cluster(num_nodes=3)
    _, owner_node, victim = testing.live_nodes()
    log = str(tmp_path / "make")
    [child], _ = ray.get(
        submit_and_return_on.options(scheduling_strategy=on(owner_node)).remote(log, victim), timeout=10)
    assert testing.object_locations(child) == [victim]
    testing.kill_node(victim)
    assert ray.get(child, timeout=10)[0] == 3.0
    assert count_lines(log) == 2


def test_driver_owned_result_survives_the_death_of_the_worker_that_made_it(cluster, tmp_path):
    """The executing worker is not the owner: killing it loses nothing (the value is in its node's store)."""
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    log = str(tmp_path / "make")

    @ray.remote
    def make_with_pid(log):
        with open(log, "a") as f:
            f.write("run\n")
        return np.full(N, 4.0), os.getpid()

    ref = make_with_pid.options(scheduling_strategy=on(node)).remote(log)
    ready, _ = ray.wait([ref], timeout=10)
    assert ready
    pid = ray.get(ref, timeout=10)[1]
    kill_owner(pid)
    value, _ = ray.get(ref, timeout=10)
    assert value[0] == 4.0
    assert count_lines(log) == 1


# ---- borrowers ---------------------------------------------------------------------------------


def test_borrower_task_gets_owner_died(cluster):
    """A task receives the ref nested in a list (a borrower) after the owner died."""
    cluster(num_nodes=2)
    head, node = testing.live_nodes()
    [inner], pid = ray.get(put_and_return.options(scheduling_strategy=on(node)).remote(5.0, N), timeout=10)
    assert ray.get(get_inner.options(scheduling_strategy=on(head)).remote([inner]), timeout=10) == 5.0
    kill_owner(pid)
    with pytest.raises(rex.OwnerDiedError):
        ray.get(get_inner.options(scheduling_strategy=on(head)).remote([inner]), timeout=10)


def test_task_depending_on_an_object_whose_owner_died_fails_with_owner_died(cluster):
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    [inner], pid = ray.get(put_and_return.options(scheduling_strategy=on(node)).remote(6.0, N), timeout=10)
    kill_owner(pid)
    with pytest.raises(rex.RayTaskError) as info:
        ray.get(first_of.remote(inner), timeout=10)
    assert isinstance(info.value, rex.OwnerDiedError)


def test_borrowed_ref_inside_a_stored_object_raises_owner_died(cluster):
    """The driver keeps the inner ref only inside another object (a put list)."""
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    result = put_and_return.options(scheduling_strategy=on(node)).remote(8.0, N)
    [inner], pid = ray.get(result, timeout=10)
    holder = ray.put([inner])
    del inner, result
    kill_owner(pid)
    [again] = ray.get(holder, timeout=10)
    owner_died(again)


def test_worker_past_max_calls_stays_while_it_owns_objects_and_dies_with_them_if_killed(cluster):
    """As in Ray, a worker that reached max_calls exits only once nothing it owns is referenced:
    its exit would take its objects along. Killed meanwhile, it does take them (owner death)."""
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    [inner], pid = ray.get(put_and_return_once.options(scheduling_strategy=on(node)).remote(9.0, N), timeout=10)
    assert ray.get(inner, timeout=5)[0] == 9.0
    assert pid in testing.worker_pids()  # still there: it owns `inner`
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pid not in testing.worker_pids(), timeout=5.0, what="the head to see the worker's death")
    owner_died(inner)


def test_idle_worker_that_owns_objects_is_not_retired(cluster, monkeypatch):
    """A nested task ran in a surplus worker (its parent was blocked in get) and put an object.

    Surplus workers retire when idle; Ray never lets an idle worker that owns objects in
    scope exit (CoreWorker refuses the raylet's exit request), since that loses them.
    """
    from minicluster._private.head import task_placement

    monkeypatch.setattr(task_placement, "IDLE_RETIRE_S", 0.1)  # retire surplus workers quickly
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    [inner], owner_pid, parent_pid = ray.get(
        parent_of_put.options(scheduling_strategy=on(node)).remote(node), timeout=10)
    assert owner_pid != parent_pid  # the child ran in a second worker while the parent waited
    wait_for(lambda: len(testing.worker_pids(node)) == 1, timeout=5.0, what="the node's pool to shrink back")
    assert ray.get(inner, timeout=5)[0] == 4.0
    assert owner_pid in testing.worker_pids(node)


def test_objects_owned_by_the_driver_are_not_affected_by_worker_deaths(cluster):
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    mine = ray.put(np.full(N, 1.5))
    assert ray.get(get_inner.options(scheduling_strategy=on(node)).remote([mine]), timeout=10) == 1.5
    for pid in testing.worker_pids():
        kill_owner(pid)
    assert ray.get(mine, timeout=10)[0] == 1.5
    assert ray.get(get_inner.options(scheduling_strategy=on(node)).remote([mine]), timeout=10) == 1.5
