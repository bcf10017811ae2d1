"""Lost objects: served from a copy, else rebuilt from lineage, else a precise ObjectLostError.

From the seed chapter "对象容错": when a value is lost with its node, Ray first
uses a copy on another node, else re-runs the task that made it, re-creating
its lost arguments the same way; objects made by `put` cannot be rebuilt,
rebuilding counts against the task's retries, lineage is capped by
max_lineage_bytes, and with retries disabled the loss is final.

Values up to 100 KiB travel inline and are held by the head, so they survive
node deaths; every value that must be *lost* here is a ~1.6 MB array that lives
in one node's store. The driver's `get` copies a value to the driver's node, so
tests that need the only copy on the victim use `ray.wait` (which does not
fetch) to know a task finished. Each task appends a line to a file per run, so
a test knows exactly how often it executed.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from conftest import on, runs, wait_for, wait_ready

import minicluster as ray
from minicluster import exceptions as rex
from minicluster import testing

N = 200_000  # float64 elements: 1.6 MB, well above the 100 KiB inline limit


def log_run(path) -> str:
    node = ray.get_runtime_context().get_node_id()
    with open(path, "a") as f:
        f.write(node + "\n")
    return node


@ray.remote
def big(log, fill=1.0):
    log_run(log)
    return np.full(N, fill)


@ray.remote
def plus(log, array, amount=1.0):
    log_run(log)
    return array + amount


@ray.remote
def total(array):
    return float(array.sum())


@ray.remote
def gate(log, release):
    log_run(log)
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)


@ray.remote
def gated_plus(log, array, release):
    log_run(log)
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)
    return array + 1.0


@ray.remote
def get_nested(refs):
    return float(ray.get(refs[0])[0])


@ray.remote
def padded(padding):
    return len(padding)


@ray.remote
def small(log):
    log_run(log)
    return "small value"


def store_file(node: str, ref) -> str:
    return os.path.join(testing.snapshot().store_root, node, ref.hex())


# ---- a copy on another node is used first ------------------------------------------------------


def test_lost_object_with_a_copy_elsewhere_is_served_without_re_execution(cluster, tmp_path):
    cluster(num_nodes=3)
    _, victim, reader = testing.live_nodes()
    log = str(tmp_path / "big")
    ref = big.options(scheduling_strategy=on(victim, soft=True)).remote(log, 3.0)
    # A task on `reader` reads the object: that makes a second copy there.
    assert ray.get(total.options(scheduling_strategy=on(reader)).remote(ref), timeout=10) == 3.0 * N
    assert sorted(testing.object_locations(ref)) == sorted([victim, reader])
    assert os.path.exists(store_file(reader, ref))
    testing.kill_node(victim)
    value = ray.get(ref, timeout=10)
    assert value[0] == 3.0 and value.shape == (N,)
    assert runs(log) == [victim]  # served from the copy: never re-executed
    assert victim not in testing.object_locations(ref)
    assert reader in testing.object_locations(ref)


def test_small_inline_values_survive_their_nodes_death(cluster, tmp_path):
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    log = str(tmp_path / "small")
    ref = small.options(scheduling_strategy=on(victim)).remote(log)
    wait_ready([ref])
    assert testing.object_locations(ref) == []  # inline: held by the head, not in a store
    testing.kill_node(victim)
    assert ray.get(ref, timeout=10) == "small value"
    assert runs(log) == [victim]


# ---- lineage reconstruction --------------------------------------------------------------------


def test_lost_object_is_rebuilt_by_re_running_its_task(cluster, tmp_path):
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    ref = big.options(scheduling_strategy=on(victim, soft=True)).remote(log, 5.0)
    wait_ready([ref])
    assert testing.object_locations(ref) == [victim]
    testing.kill_node(victim)
    start = time.monotonic()
    value = ray.get(ref, timeout=10)
    assert time.monotonic() - start < 5.0
    assert value[0] == 5.0 and value.shape == (N,)
    assert runs(log) == [victim, survivor]
    assert survivor in testing.object_locations(ref)


def test_dependent_task_of_a_lost_object_triggers_its_rebuild(cluster, tmp_path):
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    ref = big.options(scheduling_strategy=on(victim, soft=True)).remote(log, 2.0)
    wait_ready([ref])
    testing.kill_node(victim)
    assert ray.get(total.remote(ref), timeout=10) == 2.0 * N
    assert runs(log) == [victim, survivor]


def test_lost_arguments_are_rebuilt_recursively(cluster, tmp_path):
    """a -> b -> c all live only on the victim; getting c re-runs a, b and c, in order."""
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    la, lb, lc = (str(tmp_path / name) for name in "abc")
    a = big.options(scheduling_strategy=on(victim, soft=True)).remote(la, 1.0)
    b = plus.options(scheduling_strategy=on(victim, soft=True)).remote(lb, a, 10.0)
    c = plus.options(scheduling_strategy=on(victim, soft=True)).remote(lc, b, 100.0)
    wait_ready([c])
    del a, b  # only lineage remembers them now
    testing.kill_node(victim)
    value = ray.get(c, timeout=10)
    assert value[0] == 111.0
    assert runs(la) == [victim, survivor]
    assert runs(lb) == [victim, survivor]
    assert runs(lc) == [victim, survivor]


def test_rebuild_only_re_runs_what_was_lost(cluster, tmp_path):
    """b's argument a still has a copy on a live node: rebuilding b does not re-run a."""
    cluster(num_nodes=3)
    keeper, victim, _ = testing.live_nodes()
    la, lb = str(tmp_path / "a"), str(tmp_path / "b")
    a = big.options(scheduling_strategy=on(keeper)).remote(la, 1.0)
    b = plus.options(scheduling_strategy=on(victim, soft=True)).remote(lb, a, 1.0)
    wait_ready([b])
    testing.kill_node(victim)
    assert ray.get(b, timeout=10)[0] == 2.0
    assert runs(la) == [keeper]
    assert len(runs(lb)) == 2


def test_released_argument_still_in_a_store_is_reused_by_a_rebuild(cluster, tmp_path):
    """Nothing refers to a any more, but its copy is still in keeper's store (Ray keeps
    released objects until it needs the room): rebuilding b takes that copy back instead
    of re-running a, which could not run again (max_retries=0)."""
    cluster(num_nodes=3)
    keeper, victim, _ = testing.live_nodes()
    la, lb = str(tmp_path / "a"), str(tmp_path / "b")
    a = big.options(scheduling_strategy=on(keeper), max_retries=0).remote(la, 1.0)
    b = plus.options(scheduling_strategy=on(victim, soft=True)).remote(lb, a, 1.0)
    wait_ready([b])
    del a  # only b's lineage remembers it
    testing.kill_node(victim)
    assert ray.get(b, timeout=10)[0] == 2.0
    assert runs(la) == [keeper]
    assert len(runs(lb)) == 2


def test_released_copies_give_way_first_when_a_store_is_full(cluster, tmp_path):
    """A released object's cached copy is dropped (not spilled) to make room; a rebuild that
    needs it later must re-run its task, here impossible (max_retries=0)."""
    cluster(num_nodes=3, object_store_memory=5 * 2**20)
    keeper, victim, _ = testing.live_nodes()
    la, lb = str(tmp_path / "a"), str(tmp_path / "b")
    a = big.options(scheduling_strategy=on(keeper), max_retries=0).remote(la, 1.0)
    b = plus.options(scheduling_strategy=on(victim, soft=True)).remote(lb, a, 1.0)
    wait_ready([b])
    a_hex = a.hex()
    del a
    fillers = [big.options(scheduling_strategy=on(keeper)).remote(str(tmp_path / "fill"), 9.0) for _ in range(3)]
    wait_ready(fillers)
    snapshot = testing.snapshot()
    assert not os.path.exists(os.path.join(snapshot.store_root, keeper, a_hex))
    assert not os.path.exists(os.path.join(snapshot.node(keeper).spill_dir, a_hex))
    assert all(os.path.exists(store_file(keeper, ref)) for ref in fillers)  # the held ones were not spilled
    testing.kill_node(victim)
    with pytest.raises(rex.ObjectReconstructionFailedError, match="RETRIES_DISABLED"):
        ray.get(b, timeout=10)
    assert runs(la) == [keeper]


def test_queued_task_whose_argument_is_lost_waits_for_its_rebuild(cluster, tmp_path):
    """The argument was ready (on the victim) when the task was queued on another node."""
    cluster(num_nodes=3)
    _, other, victim = testing.live_nodes()
    la, lb, lx = (str(tmp_path / name) for name in ("a", "b", "x"))
    release = str(tmp_path / "release")
    a = big.options(scheduling_strategy=on(victim, soft=True)).remote(la)
    wait_ready([a])
    blocker = gate.options(scheduling_strategy=on(other)).remote(lx, release)
    wait_for(lambda: runs(lx), timeout=10, what="the blocker to take the other node's CPU")
    b = plus.options(scheduling_strategy=on(other)).remote(lb, a)
    assert ray.wait([b], timeout=0.2)[0] == []
    testing.kill_node(victim)
    open(release, "w").close()
    assert ray.get(b, timeout=10)[0] == 2.0
    assert len(runs(la)) == 2
    ray.get(blocker, timeout=10)


def test_running_task_retried_after_node_death_rebuilds_its_lost_argument(cluster, tmp_path):
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    la, lb, release = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "release")
    a = big.options(scheduling_strategy=on(victim, soft=True)).remote(la)
    b = gated_plus.options(scheduling_strategy=on(victim, soft=True)).remote(lb, a, release)
    wait_for(lambda: runs(lb) == [victim], timeout=10, what="b to start on the victim")
    testing.kill_node(victim)
    open(release, "w").close()
    assert ray.get(b, timeout=10)[0] == 2.0
    assert runs(la) == [victim, survivor]
    assert runs(lb) == [victim, survivor]


def test_borrower_task_get_of_a_lost_object_rebuilds_it(cluster, tmp_path):
    """A task that received the ref nested (a borrower) gets it after its node died."""
    cluster(num_nodes=3)
    _, other, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    ref = big.options(scheduling_strategy=on(victim, soft=True)).remote(log, 3.0)
    wait_ready([ref])
    testing.kill_node(victim)
    readers = [get_nested.options(scheduling_strategy=on(other)).remote([ref]) for _ in range(3)]
    assert ray.get(ref, timeout=10)[0] == 3.0
    assert ray.get(readers, timeout=10) == [3.0] * 3
    assert len(runs(log)) == 2  # one rebuild for the driver and the borrowers together


def test_lost_ref_inside_a_stored_object_is_rebuilt(cluster, tmp_path):
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    inner = big.options(scheduling_strategy=on(victim, soft=True)).remote(log, 7.0)
    outer = ray.put([inner])
    wait_ready([inner])
    del inner
    testing.kill_node(victim)
    [again] = ray.get(outer)
    assert ray.get(again, timeout=10)[0] == 7.0
    assert runs(log) == [victim, survivor]


def test_get_of_several_lost_objects(cluster, tmp_path):
    cluster(num_nodes=3)
    _, a, b = testing.live_nodes()
    la, lb = str(tmp_path / "a"), str(tmp_path / "b")
    ra = big.options(scheduling_strategy=on(a, soft=True)).remote(la, 1.0)
    rb = big.options(scheduling_strategy=on(b, soft=True)).remote(lb, 2.0)
    rc = big.options(scheduling_strategy=on(b, soft=True), max_retries=0).remote(lb, 3.0)
    wait_ready([ra, rb, rc])
    testing.kill_node(a)
    testing.kill_node(b)
    assert [v[0] for v in ray.get([ra, rb], timeout=10)] == [1.0, 2.0]
    with pytest.raises(rex.ObjectReconstructionFailedError):
        ray.get([ra, rc, rb], timeout=10)


@pytest.mark.slow
def test_node_dying_during_a_rebuild_is_survived(cluster, tmp_path):
    """The node running the rebuild dies too: the rebuild is retried (its retries allow it)."""
    cluster(num_nodes=1)
    testing.add_node(num_cpus=1, resources={"r": 1})
    testing.add_node(num_cpus=1, resources={"r": 1})
    log, release = str(tmp_path / "big"), str(tmp_path / "release")

    @ray.remote(resources={"r": 1}, max_retries=3)
    def slow_on_rebuild(log, release):
        log_run(log)
        if len(runs(log)) == 2:  # the first rebuild hangs until released (or killed)
            deadline = time.monotonic() + 60
            while not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.005)
        return np.full(N, 5.0)

    ref = slow_on_rebuild.remote(log, release)
    wait_ready([ref])
    first = runs(log)[0]
    testing.kill_node(first)
    ray.wait([ref], timeout=0.05)  # starts the rebuild
    wait_for(lambda: len(runs(log)) == 2, timeout=5, what="the rebuild to start")
    second = runs(log)[1]
    third = testing.add_node(num_cpus=1, resources={"r": 1})
    testing.kill_node(second)
    assert ray.get(ref, timeout=10)[0] == 5.0
    assert runs(log) == [first, second, third]
    open(release, "w").close()


def test_concurrent_gets_of_a_lost_object_trigger_one_rebuild(cluster, tmp_path):
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    ref = big.options(scheduling_strategy=on(victim, soft=True)).remote(log, 4.0)
    wait_ready([ref])
    testing.kill_node(victim)
    results, errors = [], []
    barrier = threading.Barrier(6)

    def reader():
        try:
            barrier.wait(5)
            results.append(float(ray.get(ref, timeout=20)[0]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(6)]
    for t in threads:
        t.start()
    dependents = [total.remote(ref) for _ in range(3)]  # dependent tasks want it too
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert results == [4.0] * 6
    assert ray.get(dependents, timeout=10) == [4.0 * N] * 3
    assert len(runs(log)) == 2  # the original run and exactly one rebuild


def test_rebuild_of_a_multi_return_task_restores_the_lost_return(cluster, tmp_path):
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    log = str(tmp_path / "pair")

    @ray.remote(num_returns=2)
    def pair(log):
        log_run(log)
        return np.full(N, 1.0), np.full(N, 2.0)

    first, second = pair.options(scheduling_strategy=on(victim, soft=True)).remote(log)
    wait_ready([first, second])
    testing.kill_node(victim)
    assert ray.get(second, timeout=10)[0] == 2.0
    assert ray.get(first, timeout=10)[0] == 1.0
    assert runs(log) == [victim, survivor]


@pytest.mark.slow
def test_rebuilt_object_can_be_lost_and_rebuilt_again_within_max_retries(cluster, tmp_path):
    cluster(num_nodes=1)
    a = testing.add_node(num_cpus=1, resources={"r": 1})
    b = testing.add_node(num_cpus=1, resources={"r": 1})
    log = str(tmp_path / "big")
    ref = big.options(resources={"r": 1}, max_retries=2).remote(log, 6.0)
    wait_ready([ref])
    first = runs(log)[0]
    testing.kill_node(first)
    wait_ready([ref])  # wait() on a lost object starts its rebuild
    second = runs(log)[1]
    assert second == (b if first == a else a)
    c = testing.add_node(num_cpus=1, resources={"r": 1})
    testing.kill_node(second)
    assert ray.get(ref, timeout=10)[0] == 6.0
    assert runs(log) == [first, second, c]


# ---- spilled objects -----------------------------------------------------------------------


def test_objects_spilled_from_a_full_store_are_lost_with_their_node_and_rebuilt(cluster, tmp_path):
    """A 5 MB store holds 3 of the 6 arrays; the rest spill to the node's disk, which dies with it."""
    cluster(num_nodes=2, object_store_memory=5 * 2**20)
    survivor, victim = testing.live_nodes()
    logs = [str(tmp_path / f"big{i}") for i in range(6)]
    refs = [big.options(scheduling_strategy=on(victim, soft=True)).remote(logs[i], float(i)) for i in range(6)]
    wait_ready(refs)
    testing.kill_node(victim)
    values = ray.get(refs, timeout=20)
    assert [v[0] for v in values] == [float(i) for i in range(6)]
    assert all(runs(log) == [victim, survivor] for log in logs)


def test_object_locations_of_spilled_objects_are_node_ids(cluster, tmp_path):
    cluster(num_nodes=2, object_store_memory=5 * 2**20)
    _, node = testing.live_nodes()
    refs = [big.options(scheduling_strategy=on(node)).remote(str(tmp_path / "big"), float(i)) for i in range(6)]
    wait_ready(refs)
    for ref in refs:
        assert testing.object_locations(ref) == [node]


# ---- what cannot be rebuilt --------------------------------------------------------------------


def test_exhausted_retries_raise_max_attempts_exceeded(cluster, tmp_path):
    cluster(num_nodes=1)
    testing.add_node(num_cpus=1, resources={"r": 1})
    testing.add_node(num_cpus=1, resources={"r": 1})
    log = str(tmp_path / "big")
    ref = big.options(resources={"r": 1}, max_retries=1).remote(log)
    wait_ready([ref])
    testing.kill_node(runs(log)[0])
    wait_ready([ref])  # rebuilt once: that used the only retry
    assert len(runs(log)) == 2
    testing.kill_node(runs(log)[1])
    start = time.monotonic()
    with pytest.raises(rex.ObjectReconstructionFailedMaxAttemptsExceededError) as info:
        ray.get(ref, timeout=10)
    assert time.monotonic() - start < 2.0
    error = info.value
    assert isinstance(error, rex.ObjectReconstructionFailedError)
    assert isinstance(error, rex.ObjectLostError)
    assert error.reason == "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED"
    assert "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED" in str(error)
    assert ref.hex() in str(error)
    assert len(runs(log)) == 2


def test_max_retries_zero_disables_reconstruction(cluster, tmp_path):
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    ref = big.options(scheduling_strategy=on(victim, soft=True), max_retries=0).remote(log)
    wait_ready([ref])
    testing.kill_node(victim)
    with pytest.raises(rex.ObjectReconstructionFailedError) as info:
        ray.get(ref, timeout=10)
    error = info.value
    assert isinstance(error, rex.ObjectLostError)
    assert error.reason == "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED"
    assert ref.hex() in str(error)
    assert "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED" in str(error)
    assert runs(log) == [victim]


@pytest.mark.parametrize("variable", ["MINICLUSTER_TASK_MAX_RETRIES", "RAY_TASK_MAX_RETRIES"])
def test_task_max_retries_zero_in_the_environment_disables_reconstruction(cluster, tmp_path, monkeypatch, variable):
    monkeypatch.delenv("MINICLUSTER_TASK_MAX_RETRIES", raising=False)
    monkeypatch.delenv("RAY_TASK_MAX_RETRIES", raising=False)
    monkeypatch.setenv(variable, "0")
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    ref = big.options(scheduling_strategy=on(victim, soft=True)).remote(log)
    wait_ready([ref])
    testing.kill_node(victim)
    with pytest.raises(rex.ObjectReconstructionFailedError) as info:
        ray.get(ref, timeout=10)
    assert info.value.reason == "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED"
    assert ref.hex() in str(info.value)
    assert runs(log) == [victim]


def test_put_objects_are_not_reconstructable(cluster):
    """put() writes to the driver's node (the first one); when it dies the value is gone for good."""
    cluster(num_nodes=2)
    head, _ = testing.live_nodes()
    ref = ray.put(np.full(N, 9.0))
    assert testing.object_locations(ref) == [head]
    testing.kill_node(head)
    with pytest.raises(rex.ObjectReconstructionFailedError) as info:
        ray.get(ref, timeout=10)
    error = info.value
    assert isinstance(error, rex.ObjectLostError)
    assert error.reason == "OBJECT_UNRECONSTRUCTABLE_PUT"
    assert "OBJECT_UNRECONSTRUCTABLE_PUT" in str(error)
    assert "put" in str(error).split("OBJECT_UNRECONSTRUCTABLE_PUT", 1)[1]  # says why
    assert ref.hex() in str(error)


def test_put_object_with_a_copy_on_another_node_survives(cluster):
    cluster(num_nodes=2)
    head, other = testing.live_nodes()
    ref = ray.put(np.full(N, 9.0))
    assert ray.get(total.options(scheduling_strategy=on(other)).remote(ref), timeout=10) == 9.0 * N
    assert sorted(testing.object_locations(ref)) == sorted([head, other])
    testing.kill_node(head)
    assert ray.get(ref, timeout=10)[0] == 9.0


def test_dependent_of_an_unrebuildable_object_fails_with_a_task_error_that_is_the_loss(cluster, tmp_path):
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    ref = big.options(scheduling_strategy=on(victim, soft=True), max_retries=0).remote(log)
    wait_ready([ref])
    testing.kill_node(victim)
    with pytest.raises(rex.RayTaskError) as info:
        ray.get(total.remote(ref), timeout=10)
    assert isinstance(info.value, rex.ObjectReconstructionFailedError)
    assert isinstance(info.value, rex.ObjectLostError)
    assert ref.hex() in str(info.value)


def test_rebuild_that_needs_an_unrebuildable_argument_fails_with_the_loss(cluster, tmp_path):
    """b can be retried but its lost argument a cannot (max_retries=0): b's rebuild fails with a's loss."""
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    la, lb = str(tmp_path / "a"), str(tmp_path / "b")
    a = big.options(scheduling_strategy=on(victim, soft=True), max_retries=0).remote(la)
    b = plus.options(scheduling_strategy=on(victim, soft=True), max_retries=3).remote(lb, a)
    wait_ready([b])
    testing.kill_node(victim)
    with pytest.raises(rex.ObjectLostError) as info:
        ray.get(b, timeout=10)
    assert isinstance(info.value, rex.ObjectReconstructionFailedError)
    assert info.value.reason == "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED"
    assert a.hex() in str(info.value)
    assert runs(la) == [victim]
    with pytest.raises(rex.ObjectReconstructionFailedError):
        ray.get(a, timeout=10)


def test_each_task_in_the_chain_counts_its_own_retries(cluster, tmp_path):
    """Rebuilding b (max_retries=5) re-runs a (max_retries=1) too; the second loss finds a out of retries."""
    cluster(num_nodes=1)
    testing.add_node(num_cpus=1, resources={"r": 1})
    testing.add_node(num_cpus=1, resources={"r": 1})
    la, lb = str(tmp_path / "a"), str(tmp_path / "b")
    a = big.options(resources={"r": 1}, max_retries=1).remote(la)
    wait_ready([a])
    node = runs(la)[0]
    b = plus.options(resources={"r": 1}, max_retries=5).remote(lb, a)
    wait_ready([b])
    assert runs(lb) == [node]  # placed where its argument is
    testing.kill_node(node)
    wait_ready([b])  # b and a are rebuilt, on the other "r" node
    node = runs(la)[1]
    assert runs(lb)[1] == node
    testing.kill_node(node)
    testing.add_node(num_cpus=1, resources={"r": 1})
    with pytest.raises(rex.ObjectLostError) as info:
        ray.get(b, timeout=10)
    assert isinstance(info.value, rex.ObjectReconstructionFailedMaxAttemptsExceededError)
    assert a.hex() in str(info.value)
    assert len(runs(la)) == 2


def test_cancelled_finished_task_keeps_its_value_but_is_never_rebuilt(cluster, tmp_path):
    """Ray: cancel() of a task that already finished leaves its result, but a cancelled task
    never runs again, so once that result is lost it cannot be rebuilt."""
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    ref = big.options(scheduling_strategy=on(victim, soft=True)).remote(log)
    wait_ready([ref])
    ray.cancel(ref)
    assert ray.get(total.options(scheduling_strategy=on(victim)).remote(ref), timeout=10) == N
    testing.kill_node(victim)
    with pytest.raises(rex.ObjectReconstructionFailedError) as info:
        ray.get(ref, timeout=10)
    assert info.value.reason == "OBJECT_UNRECONSTRUCTABLE_TASK_CANCELLED"
    assert runs(log) == [victim]


def test_task_placed_after_its_argument_was_lost_for_good_names_the_argument(cluster, tmp_path):
    """The argument is lost while the task waits for a node that can run it: once placed, the
    task fails with Ray's argument sentence and the loss, as when it fails before placement."""
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    array = big.options(scheduling_strategy=on(victim, soft=True), max_retries=0).remote(str(tmp_path / "big"))
    wait_ready([array])
    waiting = total.options(resources={"later": 1}).remote(array)
    testing.kill_node(victim)
    with pytest.raises(rex.ObjectReconstructionFailedError):
        ray.get(array, timeout=10)  # the loss is known before the task can be placed
    testing.add_node(num_cpus=1, resources={"later": 1})
    with pytest.raises(rex.RayTaskError) as info:
        ray.get(waiting, timeout=10)
    assert isinstance(info.value, rex.ObjectReconstructionFailedError)
    assert "At least one of the input arguments for this task could not be computed" in str(info.value)
    assert "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED" in str(info.value)


@ray.remote(max_restarts=-1)
class KeepsItsArgument:
    def __init__(self, array):
        self.first = float(array[0])

    def uses(self, array) -> float:
        return self.first + float(array[0])


def test_restart_whose_constructor_argument_is_lost_for_good_ends_the_actor(cluster, tmp_path):
    """Ray: the restart's constructor fails on its lost argument, so the actor dies of it;
    calls made meanwhile, even ones passing the same lost object, fail with ActorDiedError
    (not with the argument's loss), and the death names the loss."""
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    array = big.options(scheduling_strategy=on(victim, soft=True), max_retries=0).remote(str(tmp_path / "big"))
    actor = KeepsItsArgument.options(scheduling_strategy=on(victim, soft=True)).remote(array)
    assert ray.get(actor.uses.remote(array), timeout=10) == 2.0
    testing.kill_node(victim)
    for call in (actor.uses.remote(array), actor.uses.remote(array)):
        with pytest.raises(rex.ActorDiedError) as info:
            ray.get(call, timeout=10)
        assert info.value.actor_init_failed
        assert "At least one of the input arguments" in str(info.value)
        assert "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED" in str(info.value)


# ---- lineage is bounded ---------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["MINICLUSTER_max_lineage_bytes", "RAY_max_lineage_bytes"])
def test_evicted_lineage_makes_reconstruction_fail(cluster, tmp_path, monkeypatch, variable):
    monkeypatch.delenv("MINICLUSTER_max_lineage_bytes", raising=False)
    monkeypatch.delenv("RAY_max_lineage_bytes", raising=False)
    monkeypatch.setenv(variable, "20000")
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    padding = b"x" * 2000  # each task's spec carries ~2 KB of arguments
    first = big.options(scheduling_strategy=on(victim, soft=True)).remote(log, 1.0)
    wait_ready([first])
    later = [padded.options(scheduling_strategy=on(victim, soft=True)).remote(padding) for _ in range(30)]
    ray.get(later, timeout=20)  # ~60 KB of newer lineage pushes the first record out
    newest = big.options(scheduling_strategy=on(victim, soft=True)).remote(str(tmp_path / "newest"), 2.0)
    wait_ready([newest])
    testing.kill_node(victim)
    with pytest.raises(rex.ObjectReconstructionFailedLineageEvictedError) as info:
        ray.get(first, timeout=10)
    assert isinstance(info.value, rex.ObjectReconstructionFailedError)
    assert info.value.reason == "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED"
    assert "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED" in str(info.value)
    assert first.hex() in str(info.value)
    assert runs(log) == [victim]
    # Only the oldest lineage went: the newest object is still rebuilt.
    assert ray.get(newest, timeout=10)[0] == 2.0
    assert len(runs(str(tmp_path / "newest"))) == 2


def test_evicted_lineage_of_an_upstream_task_fails_the_downstream_rebuild(cluster, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_max_lineage_bytes", raising=False)
    monkeypatch.setenv("MINICLUSTER_max_lineage_bytes", "20000")
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    la, lb = str(tmp_path / "a"), str(tmp_path / "b")
    a = big.options(scheduling_strategy=on(victim, soft=True)).remote(la)
    b = plus.options(scheduling_strategy=on(victim, soft=True)).remote(lb, a)
    wait_ready([b])
    del a
    later = [padded.options(scheduling_strategy=on(victim, soft=True)).remote(b"x" * 2000) for _ in range(30)]
    ray.get(later, timeout=20)
    testing.kill_node(victim)
    with pytest.raises(rex.ObjectReconstructionFailedLineageEvictedError):
        ray.get(b, timeout=10)
    assert len(runs(la)) == 1


def test_lineage_within_the_limit_still_rebuilds(cluster, tmp_path, monkeypatch):
    """Control for the test above: the same workload under a roomy limit rebuilds the first object."""
    monkeypatch.delenv("RAY_max_lineage_bytes", raising=False)
    monkeypatch.setenv("MINICLUSTER_max_lineage_bytes", str(10 * 1024 * 1024))
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    padding = b"x" * 2000
    first = big.options(scheduling_strategy=on(victim, soft=True)).remote(log, 1.0)
    wait_ready([first])
    later = [padded.options(scheduling_strategy=on(victim, soft=True)).remote(padding) for _ in range(30)]
    ray.get(later, timeout=20)
    testing.kill_node(victim)
    assert ray.get(first, timeout=10)[0] == 1.0
    assert runs(log) == [victim, survivor]


def test_lineage_of_freed_objects_does_not_count_against_the_limit(cluster, tmp_path, monkeypatch):
    """Records are dropped with their results: many finished-and-dropped tasks evict nothing."""
    monkeypatch.delenv("RAY_max_lineage_bytes", raising=False)
    monkeypatch.setenv("MINICLUSTER_max_lineage_bytes", "20000")
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    first = big.options(scheduling_strategy=on(victim, soft=True)).remote(log, 1.0)
    wait_ready([first])
    for _ in range(30):  # ~60 KB of lineage in all, but never more than one record at a time
        assert ray.get(padded.options(scheduling_strategy=on(victim, soft=True)).remote(b"x" * 2000)) == 2000
    testing.kill_node(victim)
    assert ray.get(first, timeout=10)[0] == 1.0
    assert runs(log) == [victim, survivor]


def test_lineage_limit_is_read_at_init(cluster, tmp_path, monkeypatch):
    """Changing the variable after init does not change the running session's limit."""
    monkeypatch.delenv("RAY_max_lineage_bytes", raising=False)
    monkeypatch.setenv("MINICLUSTER_max_lineage_bytes", str(10 * 1024 * 1024))
    cluster(num_nodes=2)
    monkeypatch.setenv("MINICLUSTER_max_lineage_bytes", "1")
    survivor, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    first = big.options(scheduling_strategy=on(victim, soft=True)).remote(log, 1.0)
    wait_ready([first])
    testing.kill_node(victim)
    assert ray.get(first, timeout=10)[0] == 1.0
    assert runs(log) == [victim, survivor]
