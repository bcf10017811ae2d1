"""Recycled object files (store_recycle.py): a freed large object's pages serve the next large write.

What must hold: a file goes back into use only once no process maps it (a zero-copy view
of a freed object, in the driver or in a worker, never changes); a reused file holds
exactly the new value, nothing of the old one; values passed by value arrive whole and
read-only; kept files are a bounded share of the capacity, go when unused, and go with
their node.
"""

from __future__ import annotations

import mmap
import os
import time

import numpy as np
import pytest
from conftest import wait_for

import minicluster as ray
from minicluster import testing
from minicluster._private.store import store_recycle  # unit-tested here: its folder and constants
from minicluster._private.store.serialization import serialize

MB = 2**20
BIG = 16 * MB  # above store_recycle.MIN_BYTES
SETTLE = 10.0  # seconds to wait for the head's deleter thread, on a busy machine


@pytest.fixture
def kept_long(monkeypatch):
    """Kept files stay until used (a busy machine may pause a test longer than IDLE_SECONDS)."""
    monkeypatch.setattr(store_recycle, "IDLE_SECONDS", 120.0)


def store_dir() -> str:
    """The driver's node's store folder (where its puts go)."""
    return testing.snapshot().node(ray.get_runtime_context().get_node_id()).store_dir


def free_files(folder: str) -> list:
    try:
        return sorted(os.listdir(store_recycle.free_dir(folder)))
    except FileNotFoundError:
        return []


def inode(ref: ray.ObjectRef) -> int:
    return os.stat(os.path.join(store_dir(), ref.hex())).st_ino


@ray.remote
def total(x: np.ndarray) -> float:
    return float(x.sum())


@ray.remote
def scribble(x: np.ndarray) -> str:
    try:
        x[0] = -1.0
    except ValueError as exc:
        return f"read-only: {exc}"
    return "written"


@ray.remote
class Keeper:
    def keep(self, x: np.ndarray) -> float:
        self.x = x  # the worker keeps its zero-copy view of the argument's file
        return float(x[0])

    def check(self) -> tuple:
        return float(self.x.min()), float(self.x.max())


def test_a_freed_objects_file_takes_the_next_large_put_and_holds_only_the_new_value(cluster, kept_long):
    cluster(num_nodes=1)
    folder = store_dir()
    first = ray.put(np.full(BIG // 8, 1.0))
    old = inode(first)
    del first
    wait_for(lambda: free_files(folder), timeout=SETTLE, what="the freed object's file to be kept")
    value = np.full((BIG - 3 * MB) // 8, 2.0)  # smaller: the old file must be cut to the new size
    second = ray.put(value)
    assert inode(second) == old  # the same pages, not fresh ones
    assert free_files(folder) == []
    assert os.path.getsize(os.path.join(folder, second.hex())) == serialize(value).size
    got = ray.get(second)
    assert got.shape == value.shape and np.all(got == 2.0)


def test_a_put_right_after_a_dropped_ref_takes_the_dropped_objects_file(cluster, kept_long):
    cluster(num_nodes=1)
    dropped = None
    for i in range(4):
        ref = ray.put(np.full(BIG // 8, float(i)))
        assert dropped is None or inode(ref) == dropped, f"put {i} did not reuse the dropped object's file"
        dropped = inode(ref)
        assert np.all(ray.get(ref) == float(i))
        del ref  # nothing waits: the next put frees it first and finds its file


def test_a_freed_object_the_driver_still_maps_is_never_reused(cluster):
    cluster(num_nodes=1)
    folder = store_dir()
    ref = ray.put(np.full(BIG // 8, 7.0))
    view = ray.get(ref)  # zero-copy: maps the file
    mapped = inode(ref)
    path = os.path.join(folder, ref.hex())
    del ref
    wait_for(lambda: not os.path.exists(path), timeout=SETTLE, what="the object to be freed")
    for i in range(6):  # frees and puts that would reuse any kept file
        other = ray.put(np.full(BIG // 8, float(i)))
        assert inode(other) != mapped, f"put {i} went into the file of a freed object still mapped"
        assert np.all(ray.get(other) == float(i))
        del other
    assert view.min() == 7.0 and view.max() == 7.0


def test_a_by_value_argument_a_worker_keeps_is_never_reused_and_calls_see_fresh_values(cluster):
    cluster(num_nodes=1, num_cpus=2)
    keeper = Keeper.remote()
    arr = np.full(BIG // 8, 3.0)
    assert ray.get(keeper.keep.remote(arr)) == 3.0  # the argument's object is freed after the call
    base = testing.snapshot().objects
    for i in range(6):
        arr[0] = float(i)  # the caller changes its array between calls: each call sees its own copy
        assert ray.get(total.remote(arr)) == 3.0 * (BIG // 8 - 1) + i
        assert ray.get(keeper.check.remote()) == (3.0, 3.0)  # the kept view never changed
    assert arr[0] == 5.0
    wait_for(lambda: testing.snapshot().objects <= base, timeout=SETTLE, what="the arguments' objects to be freed")


def test_a_task_cannot_write_into_a_by_value_argument(cluster):
    cluster(num_nodes=1, num_cpus=1)
    arr = np.full(BIG // 8, 4.0)
    for _ in range(3):  # the later calls reuse the first call's file
        assert ray.get(scribble.remote(arr)).startswith("read-only")
    assert np.all(arr == 4.0)


def test_kept_files_are_a_bounded_share_of_the_capacity_and_go_when_unused(cluster):
    capacity = 96 * MB
    cluster(num_nodes=1, object_store_memory=capacity)
    folder = store_dir()
    limit = capacity // 8  # store_spares.spare_limit
    too_big = ray.put(np.ones((limit + MB) // 8))
    path = os.path.join(folder, too_big.hex())
    del too_big
    wait_for(lambda: not os.path.exists(path), timeout=SETTLE, what="the object to be freed")
    assert free_files(folder) == []  # larger than the limit: unlinked, not kept
    refs = [ray.put(np.full(10 * MB // 8, float(i))) for i in range(3)]
    del refs
    wait_for(lambda: free_files(folder), timeout=SETTLE, what="a freed file to be kept")
    kept = sum(int(name.split("-")[0]) for name in free_files(folder))
    assert kept <= limit
    wait_for(lambda: not free_files(folder), timeout=store_recycle.IDLE_SECONDS + SETTLE,
             what="the unused kept files to go")


def test_a_killed_nodes_kept_files_go_with_its_folder(cluster, kept_long):
    cluster(num_nodes=2)
    old = store_dir()
    ref = ray.put(np.ones(BIG // 8))
    del ref
    wait_for(lambda: free_files(old), timeout=SETTLE, what="a kept file")
    testing.kill_node(os.path.basename(old))
    assert not os.path.exists(old)
    ref = ray.put(np.full(BIG // 8, 2.0))  # into the other node's store
    assert np.all(ray.get(ref) == 2.0)
    del ref
    wait_for(lambda: free_files(store_dir()), timeout=SETTLE, what="a kept file on the other node")
    assert not os.path.exists(old)


def test_small_objects_are_not_kept(cluster, kept_long):
    cluster(num_nodes=1)
    folder = store_dir()
    ref = ray.put(np.ones((store_recycle.MIN_BYTES - MB) // 8))
    path = os.path.join(folder, ref.hex())
    del ref
    wait_for(lambda: not os.path.exists(path), timeout=SETTLE, what="the object to be freed")
    big = ray.put(np.ones(BIG // 8))  # a later free of a large one is kept: the deleter has run
    del big
    wait_for(lambda: free_files(folder), timeout=SETTLE, what="the large freed file to be kept")
    assert len(free_files(folder)) == 1


def test_a_by_value_arguments_file_serves_the_next_call(cluster, kept_long):
    """The worker drops its map of an argument just after its reply, which frees the argument:
    the file is tried again until it is unmapped, then kept for the next call's argument."""
    cluster(num_nodes=1, num_cpus=1)
    folder = store_dir()
    arr = np.full(BIG // 8, 1.0)
    assert ray.get(total.remote(arr)) == BIG // 8
    wait_for(lambda: free_files(folder), timeout=SETTLE, what="the argument's file to be kept")
    first = free_files(folder)
    arr[-1] = 2.0
    assert ray.get(total.remote(arr)) == BIG // 8 + 1  # written into the kept file
    wait_for(lambda: free_files(folder) and free_files(folder) != first, timeout=SETTLE,
             what="the second argument's file to be kept in turn")
    assert not set(first) & set(free_files(folder))


def _mapped_file(folder: str, name: str) -> mmap.mmap:
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.truncate(store_recycle.MIN_BYTES)
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # stays mapped after the close


def test_a_freed_file_still_mapped_is_tried_again_and_kept_once_unmapped_or_else_unlinked(monkeypatch):
    """store_recycle alone, in this process: its own map counts like any reader's."""
    monkeypatch.setattr(store_recycle, "RETRY_DELAYS", (0.3,) * 5)  # no try is over before the unmap
    monkeypatch.setattr(store_recycle, "IDLE_SECONDS", 120.0)
    folder = f"/dev/shm/minicluster-test-recycle-{os.getpid()}"
    os.mkdir(folder)
    try:
        store_recycle.allow(folder, 4 * store_recycle.MIN_BYTES)
        view = _mapped_file(folder, "a.del-1")
        assert store_recycle.offer(os.path.join(folder, "a.del-1"), folder)  # taken: to be tried again
        assert free_files(folder) == [] and os.path.exists(os.path.join(folder, "a.del-1"))
        view.close()
        wait_for(lambda: store_recycle.expire(time.monotonic()) is not None and free_files(folder),
                 timeout=10, what="the unmapped file to be kept")
        assert not os.path.exists(os.path.join(folder, "a.del-1"))

        view = _mapped_file(folder, "b.del-2")  # mapped through every try: unlinked in the end
        assert store_recycle.offer(os.path.join(folder, "b.del-2"), folder)
        wait_for(lambda: store_recycle.expire(time.monotonic()) is None or
                 not os.path.exists(os.path.join(folder, "b.del-2")), timeout=10, what="the tries to end")
        assert not os.path.exists(os.path.join(folder, "b.del-2")) and len(free_files(folder)) == 1
        assert view[:1] == b"\0"  # (its reader's view is intact)
        view.close()
    finally:
        store_recycle.forbid(folder)
        for name in free_files(folder):
            os.unlink(os.path.join(store_recycle.free_dir(folder), name))
        store_recycle.expire(time.monotonic() + store_recycle.IDLE_SECONDS)
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
