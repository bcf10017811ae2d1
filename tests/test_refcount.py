"""Distributed reference counting: an object's value lives exactly as long as someone holds it.

Holders: ObjectRefs in the driver, refs held by running (or waiting) tasks,
refs nested inside other stored objects, and borrowers - worker processes that
keep a ref they received. Once no one holds an object it is freed from every
store: its file `<store root>/<node id hex>/<object id hex>` disappears.

Frees are applied asynchronously (the driver's drops are drained by the head),
so "gone" is checked with wait_for and "still there" after something that
forces the head to catch up (round trips through tasks, `settle`).
"""

from __future__ import annotations

import gc
import os
import pickle
import sys
import time

import numpy as np
import pytest
from conftest import count_lines, on, wait_for

import minicluster as ray
from minicluster import exceptions as rex
from minicluster import testing
from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from minicluster.util.state import list_objects

N = 200_000  # float64 elements: 1.6 MB, stored in a node's store (not inline)


def store_file(node: str, object_hex: str) -> str:
    return os.path.join(testing.snapshot().store_root, node, object_hex)


def files_of(object_hex: str) -> list:
    """The store files of an object, on every node."""
    root = testing.snapshot().store_root
    return [os.path.join(root, n, object_hex) for n in os.listdir(root)
            if os.path.exists(os.path.join(root, n, object_hex))]


def wait_freed(object_hex: str, timeout: float = 2.0) -> None:
    wait_for(lambda: not files_of(object_hex), timeout=timeout, what=f"object {object_hex[:16]}... to be freed")


def settle() -> None:
    """Round trips through tasks: the head has applied every ref change made before them
    (a submission applies the driver's dropped refs; a worker reports its own with its results)."""
    for _ in range(2):
        ray.get(noop.remote(), timeout=10)


def stored_bytes() -> int:
    """Bytes of object files of this session: node stores plus spilled objects."""
    snap = testing.snapshot()
    return folder_bytes(snap.store_root) + folder_bytes(snap.spill_root)


def folder_bytes(path: str) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except FileNotFoundError:
                pass
    return total


@ray.remote
def noop():
    return None


@ray.remote
def make(fill=1.0):
    return np.full(N, fill)


@ray.remote
def first_of(array):
    return float(array[0])


@ray.remote
def hold_until(array, started, release):
    """A running task holding its (resolved) argument until `release` exists."""
    open(started, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)
    return float(array[0])


@ray.remote
def keep_borrowed(refs):
    """Borrow: keep the nested ref in this worker process after the task returns."""
    sys.minicluster_test_kept = list(refs)
    return os.getpid()


@ray.remote
def drop_borrowed():
    kept = getattr(sys, "minicluster_test_kept", None)
    sys.minicluster_test_kept = None
    del kept
    return os.getpid()


@ray.remote
def pass_on(refs, node):
    """Hand the nested ref on to a task on `node` that keeps it; returns that worker's pid."""
    strategy = NodeAffinitySchedulingStrategy(node, soft=False)
    return ray.get(keep_borrowed.options(scheduling_strategy=strategy).remote(refs))


@ray.remote
def read_borrowed():
    return float(ray.get(sys.minicluster_test_kept[0])[0])


# ---- the driver's refs ------------------------------------------------------------------------


def test_put_object_is_freed_when_the_driver_drops_its_ref(cluster):
    cluster(num_nodes=1)
    head = testing.live_nodes()[0]
    ref = ray.put(np.ones(N))
    path = store_file(head, ref.hex())
    assert os.path.exists(path)
    object_hex = ref.hex()
    del ref
    wait_for(lambda: not os.path.exists(path), timeout=2.0, what="the put object's file to be deleted")
    assert not files_of(object_hex)


def test_task_result_lives_while_referenced_and_is_freed_after(cluster):
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    ref = make.options(scheduling_strategy=on(node)).remote(2.0)
    ray.wait([ref], timeout=10)
    path = store_file(node, ref.hex())
    assert os.path.exists(path)
    settle()
    assert os.path.exists(path)  # still referenced: still there
    object_hex = ref.hex()
    del ref
    wait_freed(object_hex)


def test_object_is_freed_from_every_node_holding_a_copy(cluster):
    cluster(num_nodes=3)
    head, a, b = testing.live_nodes()
    ref = make.options(scheduling_strategy=on(a)).remote()
    assert ray.get(first_of.options(scheduling_strategy=on(b)).remote(ref), timeout=10) == 1.0
    assert ray.get(ref, timeout=10)[0] == 1.0  # a copy on the driver's node too
    assert sorted(testing.object_locations(ref)) == sorted([head, a, b])
    assert len(files_of(ref.hex())) == 3
    object_hex = ref.hex()
    del ref
    wait_freed(object_hex)


def test_results_of_tasks_whose_refs_were_dropped_at_once_are_freed(cluster, tmp_path):
    """Fire and forget: the refs are gone before the tasks finish; their results must not leak."""
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    log = str(tmp_path / "log")

    @ray.remote
    def logged(log):
        with open(log, "a") as f:
            f.write("run\n")
        return np.ones(N)

    for _ in range(5):
        logged.options(scheduling_strategy=on(node)).remote(log)
    wait_for(lambda: count_lines(log) == 5, timeout=10, what="the tasks to run")
    wait_for(lambda: stored_bytes() == 0, timeout=2.0, what="their results to be freed")


def test_objects_a_worker_creates_and_drops_are_freed(cluster, tmp_path):
    cluster(num_nodes=2)
    _, node = testing.live_nodes()

    @ray.remote
    def churn():
        kept = ray.put(np.ones(N))
        child = make.remote(2.0)
        assert ray.get(child)[0] == 2.0
        return kept.hex(), child.hex()

    put_hex, child_hex = ray.get(churn.options(scheduling_strategy=on(node)).remote(), timeout=10)
    wait_freed(put_hex)
    wait_freed(child_hex)
    wait_for(lambda: stored_bytes() == 0, timeout=2.0, what="the store to be empty")


def test_borrowed_ref_passed_on_to_another_worker_keeps_the_object(cluster):
    """driver -> task on A -> nested task on B keeps it: alive until B lets go."""
    cluster(num_nodes=3)
    _, a, b = testing.live_nodes()
    ref = ray.put(np.full(N, 2.5))
    object_hex = ref.hex()
    pid = ray.get(pass_on.options(scheduling_strategy=on(a)).remote([ref], b), timeout=10)
    del ref
    settle()
    assert files_of(object_hex), "freed while a second-hand borrower holds it"
    testing.kill_worker(pid)
    wait_freed(object_hex)


def test_value_read_by_the_driver_stays_valid_after_its_ref_is_dropped(cluster):
    """Freeing unlinks the file; an array the driver still holds keeps its mapping (POSIX)."""
    cluster(num_nodes=1)
    ref = ray.put(np.arange(N, dtype=np.float64))
    array = ray.get(ref)
    object_hex = ref.hex()
    del ref
    wait_freed(object_hex)
    gc.collect()
    assert array[-1] == N - 1 and float(array.sum()) == float(N * (N - 1) // 2)


# ---- refs held by tasks -----------------------------------------------------------------------


def test_argument_of_a_running_task_is_kept_until_the_task_ends(cluster, tmp_path):
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    ref = ray.put(np.full(N, 3.0))
    object_hex = ref.hex()
    out = hold_until.options(scheduling_strategy=on(node)).remote(ref, started, release)
    wait_for(lambda: os.path.exists(started), timeout=10, what="the task to start")
    del ref
    settle()
    assert files_of(object_hex), "freed while a running task holds it as its argument"
    open(release, "w").close()
    assert ray.get(out, timeout=10) == 3.0
    # While `out` lives, its lineage keeps the argument's copy as an evictable cache (a
    # rebuild of `out` would take it back); with `out` gone, nothing refers to it.
    del out
    wait_freed(object_hex)


def test_argument_of_a_task_waiting_for_a_cpu_is_kept(cluster, tmp_path):
    cluster(num_nodes=1)
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    blocker = hold_until.remote([0.0], started, release)  # takes the only CPU
    wait_for(lambda: os.path.exists(started), timeout=10, what="the blocker to start")
    ref = ray.put(np.full(N, 4.0))
    object_hex = ref.hex()
    queued = first_of.remote(ref)
    del ref
    settle_ids = ray.wait([queued], timeout=0.3)[0]
    assert settle_ids == []
    assert files_of(object_hex), "freed while a queued task needs it"
    open(release, "w").close()
    assert ray.get([blocker, queued], timeout=10) == [0.0, 4.0]
    del queued  # (its lineage kept the argument's copy as a cache)
    wait_freed(object_hex)


def test_ref_returned_by_a_task_stays_alive_after_the_task_ends(cluster):
    """The worker's put ref travels back in the result; the result (in the driver) keeps it."""
    cluster(num_nodes=2)
    _, node = testing.live_nodes()

    @ray.remote
    def put_inside():
        return [ray.put(np.full(N, 5.0))]

    outer = put_inside.options(scheduling_strategy=on(node)).remote()
    [inner] = ray.get(outer, timeout=10)
    del outer
    settle()
    assert ray.get(inner, timeout=10)[0] == 5.0
    object_hex = inner.hex()
    del inner
    wait_freed(object_hex)


# ---- refs nested in stored objects ------------------------------------------------------------


def test_ref_inside_a_put_object_keeps_the_inner_object(cluster):
    cluster(num_nodes=1)
    inner = ray.put(np.full(N, 6.0))
    inner_hex = inner.hex()
    outer = ray.put([inner])
    del inner
    settle()
    assert files_of(inner_hex), "freed while a stored object contains its ref"
    [again] = ray.get(outer)
    assert ray.get(again)[0] == 6.0
    del again, outer
    wait_freed(inner_hex)


def test_ref_inside_a_task_result_keeps_the_inner_object(cluster):
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    inner = ray.put(np.full(N, 7.0))
    inner_hex = inner.hex()

    @ray.remote
    def wrap(refs):
        return refs  # returns the (unresolved) ref, nested

    outer = wrap.options(scheduling_strategy=on(node)).remote([inner])
    ray.wait([outer], timeout=10)
    del inner
    settle()
    assert files_of(inner_hex)
    [again] = ray.get(outer, timeout=10)
    assert ray.get(again, timeout=10)[0] == 7.0
    del again, outer
    wait_freed(inner_hex)


# ---- borrowers in other processes --------------------------------------------------------------


@ray.remote
def keep_nested_of_same(value, refs):
    """Gets the object twice: resolved as a top-level argument, as a ref nested in a list."""
    assert float(value[0]) == 8.0 and type(refs[0]) is ray.ObjectRef
    sys.minicluster_test_kept = list(refs)
    return os.getpid()


@pytest.mark.parametrize("passed", ["nested", "as value and nested"])
def test_worker_that_keeps_a_borrowed_ref_keeps_the_object_alive(cluster, passed):
    """A nested ref the task keeps is a borrow that outlives it. A top-level ref reaches the
    worker as its value (the task pins it, no borrow); the same ref nested beside it still
    makes a real borrow."""
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    ref = ray.put(np.full(N, 8.0))
    object_hex = ref.hex()
    if passed == "nested":
        call = keep_borrowed.options(scheduling_strategy=on(node)).remote([ref])
    else:
        call = keep_nested_of_same.options(scheduling_strategy=on(node)).remote(ref, [ref])
    pid = ray.get(call, timeout=10)
    del ref, call
    settle()
    assert files_of(object_hex), "freed while a worker still holds a borrowed ref"
    assert ray.get(read_borrowed.options(scheduling_strategy=on(node)).remote(), timeout=10) == 8.0
    assert ray.get(drop_borrowed.options(scheduling_strategy=on(node)).remote(), timeout=10) == pid
    wait_freed(object_hex)


def test_borrower_death_releases_its_refs(cluster):
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    ref = ray.put(np.full(N, 9.0))
    object_hex = ref.hex()
    pid = ray.get(keep_borrowed.options(scheduling_strategy=on(node)).remote([ref]), timeout=10)
    del ref
    settle()
    assert files_of(object_hex)
    testing.kill_worker(pid)
    wait_freed(object_hex)


def test_borrower_node_death_releases_its_refs(cluster):
    cluster(num_nodes=2)
    _, node = testing.live_nodes()
    ref = ray.put(np.full(N, 9.5))
    object_hex = ref.hex()
    ray.get(keep_borrowed.options(scheduling_strategy=on(node)).remote([ref]), timeout=10)
    del ref
    settle()
    assert files_of(object_hex)
    testing.kill_node(node)
    wait_freed(object_hex)


def test_spilled_objects_are_freed_too(cluster):
    """A 5 MB store spills most of 8 arrays to disk; dropping the refs frees both places."""
    cluster(num_nodes=1, object_store_memory=5 * 2**20)
    refs = [ray.put(np.full(N, float(i))) for i in range(8)]
    assert [ray.get(r)[0] for r in refs] == [float(i) for i in range(8)]
    assert stored_bytes() >= 8 * N * 8
    del refs
    wait_for(lambda: stored_bytes() == 0, timeout=3.0, what="stored and spilled copies to be freed")


# ---- memory comes back ---------------------------------------------------------------------


@pytest.mark.slow
def test_creating_and_dropping_many_objects_keeps_the_store_small(cluster):
    """2,000 x 1 MB objects made and dropped one by one: the store folder never holds many of them."""
    cluster(num_nodes=1)
    chunk = np.ones(1024 * 1024 // 8)  # 1 MB
    peak = 0
    for i in range(2000):
        ref = ray.put(chunk)
        del ref
        if i % 10 == 0:
            peak = max(peak, stored_bytes())
    wait_for(lambda: stored_bytes() < 5 * 1024 * 1024, timeout=3.0, what="the store folder to empty")
    assert peak < 64 * 1024 * 1024, f"store folder peaked at {peak / 2**20:.0f} MB"


@pytest.mark.slow
def test_task_results_created_and_dropped_keep_the_store_small(cluster):
    cluster(num_nodes=2)
    _, node = testing.live_nodes()

    @ray.remote
    def one_mb(i):
        return np.full(1024 * 1024 // 8, float(i))

    peak = 0
    for _batch in range(20):
        refs = [one_mb.options(scheduling_strategy=on(node)).remote(i) for i in range(10)]
        assert ray.get(refs[-1], timeout=10)[0] == 9.0
        del refs
        peak = max(peak, stored_bytes())
    wait_for(lambda: stored_bytes() < 5 * 1024 * 1024, timeout=3.0, what="the store folder to empty")
    assert peak < 64 * 1024 * 1024, f"store folder peaked at {peak / 2**20:.0f} MB"


# ---- every node can hold objects -----------------------------------------------------------


def test_a_node_whose_id_starts_with_the_spill_mark_stores_objects(cluster, monkeypatch):
    """Node ids are 28 random bytes, so 1 node in 256 starts with 0x7e; force two such nodes."""
    def tilde_node_id() -> bytes:
        return b"\x7e" + os.urandom(27)

    for module in list(sys.modules.values()):  # wherever the runtime looks the function up
        if getattr(module, "__name__", "").startswith("minicluster") and hasattr(module, "new_node_id"):
            monkeypatch.setattr(module, "new_node_id", tilde_node_id)
    cluster(num_nodes=2)
    head, node = testing.live_nodes()
    assert head.startswith("7e") and node.startswith("7e")
    put_ref = ray.put(np.full(N, 1.0))  # written by the driver into the head node's store
    assert testing.object_locations(put_ref) == [head]
    assert os.path.exists(store_file(head, put_ref.hex()))
    result = make.options(scheduling_strategy=on(node)).remote(2.0)
    assert ray.get(first_of.options(scheduling_strategy=on(node)).remote(result), timeout=10) == 2.0
    assert os.path.exists(store_file(node, result.hex()))
    assert ray.get(result, timeout=10)[0] == 2.0
    assert ray.get(put_ref, timeout=10)[0] == 1.0


# ---- a ref to a freed object ---------------------------------------------------------------


def test_get_of_a_freed_object_raises_reference_counting_assertion_error(cluster):
    """Out-of-band: a ref pickled by the user and restored after every counted ref was dropped."""
    cluster(num_nodes=1)
    ref = ray.put(np.full(N, 1.0))
    object_hex = ref.hex()
    blob = pickle.dumps(ref)
    del ref
    gc.collect()
    # Unlike Ray (which pins an object whose ref was pickled out of band), the SPEC frees it
    # with its last counted ref; a later get says so.
    wait_freed(object_hex, timeout=2.0)
    restored = pickle.loads(blob)
    with pytest.raises(rex.ReferenceCountingAssertionError) as info:
        ray.get(restored, timeout=5)
    assert isinstance(info.value, rex.ObjectLostError)
    assert isinstance(info.value, AssertionError)
    assert object_hex in str(info.value)


def test_a_task_that_sends_nothing_still_releases_what_it_dropped(cluster, tmp_path):
    """Releases ride on a worker's frames; a task computing (or reading the state API's files)
    for a long time must not hold what it dropped until it ends."""
    cluster(num_cpus=2)
    gate = tmp_path / "drop"

    @ray.remote
    def drops_then_computes():
        ref = ray.put(np.zeros(200_000))  # (in the store: freed once released)
        while not gate.exists():  # no message goes out while it waits and computes
            time.sleep(0.01)
        del ref
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pass

    running = drops_then_computes.remote()
    task_hex = running.hex()[:48]

    def its_put_alive():
        return any(o.object_id.startswith(task_hex) and o.object_id != running.hex() for o in list_objects())

    wait_for(its_put_alive, what="the task's put")
    gate.touch()
    wait_for(lambda: not its_put_alive(), timeout=10, what="the dropped put freed while the task still runs")
    ray.cancel(running, force=True)


def test_a_store_filling_up_makes_every_process_collect_reference_cycles(cluster):
    # As Ray's automatic global GC: refs that only a reference cycle holds (in an actor that
    # turned the cycle collector off) keep their objects until the store fills; then every
    # process runs gc.collect() and the objects go.
    from conftest import wait_for

    MiB = 1 << 20
    cluster(num_cpus=1, object_store_memory=100 * MiB)

    @ray.remote
    class Hoarder:
        def __init__(self):
            import gc

            gc.disable()
            self.collections = 0
            gc.callbacks.append(self._collected)

        def _collected(self, phase, info):
            if phase == "stop":
                self.collections += 1

        def cycle(self):
            ref = ray.put(b"x" * (20 * MiB))
            loop = [ref]
            loop.append(loop)  # only the cycle holds the ref now
            return True

        def collections_seen(self):
            return self.collections

    hoarder = Hoarder.remote()
    for _ in range(3):  # 60% of the store: nothing happens yet
        assert ray.get(hoarder.cycle.remote())
    assert ray.get(hoarder.collections_seen.remote()) == 0
    assert ray.get(hoarder.cycle.remote())  # 80%
    wait_for(lambda: ray.get(hoarder.collections_seen.remote()) > 0, 10, "the actor to collect garbage")
    store = testing.snapshot().nodes[0].store_dir

    def stored() -> int:  # the object files (spares and recycled files have a dot in their names)
        return sum(e.stat().st_size for e in os.scandir(store) if e.is_file() and "." not in e.name)

    wait_for(lambda: stored() < 20 * MiB, 10, "the cycles' objects to be freed")
