"""Spare files (store_spares.py): large puts and results go into pre-allocated fresh files.

What must hold: values are right, a zero-copy view of a freed object never
changes, a spare never outlives its process or its node, and the store's
capacity and ObjectStoreFullError mean what they did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import wait_for

import minicluster as ray
from minicluster import testing
from minicluster._private.store import store_spares  # unit-tested here: its constants and spare_path

MB = 2**20
BIG = 16 * MB  # above store_spares.MIN_BYTES
ALLOCATED = 5.0  # seconds to wait for the thread to allocate a spare, on a busy machine


def big(value: float) -> np.ndarray:
    return np.full(BIG // 8, value)


def store_dir() -> str:
    """The driver's node's store folder (where its puts go)."""
    return testing.snapshot().node(ray.get_runtime_context().get_node_id()).store_dir


def spares(folder: str) -> list:
    """Paths of the spare files in a store folder (not the slot lock files)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return [os.path.join(folder, n) for n in names if n.startswith(".spare-") and not n.startswith(".spare-slot")]


def allocated_spare(folder: str, size: int = BIG):
    """The spare whose pages are all there (st_blocks), if there is one."""
    for path in spares(folder):
        try:
            if os.stat(path).st_blocks * 512 >= size:
                return path
        except FileNotFoundError:
            pass
    return None


def object_file(ref: ray.ObjectRef) -> str:
    return os.path.join(store_dir(), ref.hex())


@ray.remote
def make_big(value: float) -> np.ndarray:
    return big(value)


@ray.remote
def pid() -> int:
    return os.getpid()


def test_a_put_goes_into_the_prepared_spare(cluster):
    cluster(num_nodes=1)
    first = ray.put(big(1.0))
    spare = wait_for(lambda: allocated_spare(store_dir()), timeout=ALLOCATED, what="a spare after a large put")
    inode = os.stat(spare).st_ino
    second = ray.put(big(2.0))
    assert os.stat(object_file(second)).st_ino == inode  # the spare became the object
    assert os.path.getsize(object_file(second)) < BIG + MB  # trimmed to the value's size
    assert np.all(ray.get(second) == 2.0)
    assert np.all(ray.get(first) == 1.0)


def test_freed_objects_views_stay_intact_while_puts_reuse_spares(cluster):
    """Back-to-back puts take spares while the thread is still allocating them; a view of a
    freed object must never change, and every value must be the one put."""
    cluster(num_nodes=1)
    size = 48 * MB  # a dozen allocation chunks: puts often catch the thread in the middle of one
    kept = []
    kept_inodes = set()
    sizes = set()
    for i in range(24):
        ref = ray.put(np.full(size // 8, float(i)))
        st = os.stat(object_file(ref))
        assert st.st_ino not in kept_inodes, f"put {i} went into the file of a freed, still mapped object"
        sizes.add(st.st_size)
        view = ray.get(ref)
        assert view[0] == i and view[-1] == i and np.all(view == i), f"put {i}"
        if i % 4 == 0:
            kept.append((i, view))  # the object is freed below; its view stays mapped
            kept_inodes.add(st.st_ino)  # (so its inode number cannot be reused)
        del ref, view
    assert len(sizes) == 1, f"object files of equal values differ in size: {sizes}"
    for i, view in kept:
        assert np.all(view == i), f"the view of freed object {i} changed"


def test_shutdown_removes_the_spare_with_the_store(cluster):
    cluster(num_nodes=1)
    ray.put(big(1.0))
    spare = wait_for(lambda: allocated_spare(store_dir()), timeout=ALLOCATED, what="a spare")
    root = testing.snapshot().store_root
    ray.shutdown()
    assert not os.path.exists(spare)
    assert not os.path.exists(root)


def test_an_unused_spare_is_dropped(cluster):
    cluster(num_nodes=1)
    ray.put(big(1.0))
    wait_for(lambda: spares(store_dir()), timeout=ALLOCATED, what="a spare")
    wait_for(lambda: not spares(store_dir()), timeout=store_spares.IDLE_SECONDS + 5, what="the idle spare to go")


def test_spares_are_a_bounded_share_of_the_capacity(cluster):
    capacity = 96 * MB
    cluster(num_nodes=1, object_store_memory=capacity)
    limit = capacity // store_spares.LIMIT_SHARE
    ray.put(np.ones(4 * limit // 8))  # asks for a spare larger than the limit
    spare = wait_for(lambda: allocated_spare(store_dir(), limit), timeout=ALLOCATED, what="a spare")
    assert os.path.getsize(spare) <= limit
    with pytest.raises(ray.exceptions.ObjectStoreFullError):
        ray.put(np.ones((capacity + MB) // 8))
    # Over capacity, objects spill as before: the spare is not counted, so it causes no spilling.
    refs = [ray.put(big(float(i))) for i in range(8)]  # 128 MB into a 96 MB store
    assert [ray.get(r)[0] for r in refs] == [float(i) for i in range(8)]
    spill = os.path.join(testing.snapshot().spill_root, os.path.basename(store_dir()))
    assert os.listdir(spill)
    total = sum(os.path.getsize(p) for p in spares(store_dir()))
    assert total <= capacity // 4


def test_a_tasks_large_results_use_its_workers_spare_which_goes_when_the_worker_dies(cluster):
    cluster(num_nodes=1, num_cpus=1)
    worker = ray.get(pid.remote())
    assert ray.get(make_big.remote(1.0))[0] == 1.0
    path = store_spares.spare_path(store_dir(), worker)
    wait_for(lambda: os.path.exists(path), timeout=ALLOCATED, what="the worker's spare")
    assert np.all(ray.get(make_big.remote(2.0)) == 2.0)
    wait_for(lambda: os.path.exists(path), timeout=ALLOCATED, what="the worker's next spare")
    testing.kill_worker(worker, signal.SIGSTOP)  # its idle timer cannot drop the spare now
    assert os.path.exists(path)
    testing.kill_worker(worker)
    wait_for(lambda: not os.path.exists(path), timeout=5, what="the node manager to remove the dead worker's spare")


def test_killing_the_drivers_node_drops_the_drivers_spare(cluster):
    cluster(num_nodes=2)
    ray.put(big(1.0))
    old = store_dir()
    wait_for(lambda: spares(old), timeout=ALLOCATED, what="a spare")
    testing.kill_node(os.path.basename(old))
    assert not os.path.exists(old)
    ref = ray.put(big(2.0))  # the driver now puts into the other node's store
    assert store_dir() != old
    assert np.all(ray.get(ref) == 2.0)
    wait_for(lambda: spares(store_dir()), timeout=ALLOCATED, what="a spare on the new node")
    assert not os.path.exists(old)


DRIVER_SCRIPT = textwrap.dedent("""
    import json, os, time
    import numpy as np
    import minicluster as ray
    from minicluster import testing

    ray.init(num_nodes=1, num_cpus=1)
    ray.put(np.ones(2 * 2**20))
    snap = testing.snapshot()
    folder = snap.node(ray.get_runtime_context().get_node_id()).store_dir
    deadline = time.monotonic() + 10
    while not [n for n in os.listdir(folder) if n.startswith(".spare-") and "slot" not in n]:
        assert time.monotonic() < deadline, "no spare"
        time.sleep(0.01)
    print(json.dumps({"store_root": snap.store_root}), flush=True)
    time.sleep(120)
""")


def test_driver_sigkill_leaves_no_spare():
    proc = subprocess.Popen([sys.executable, "-c", DRIVER_SCRIPT], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        line = proc.stdout.readline()
        assert line, f"the driver script printed nothing (exit code {proc.poll()})"
        root = json.loads(line)["store_root"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        wait_for(lambda: not os.path.exists(root), timeout=5, what="the store folder and its spare to go")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
