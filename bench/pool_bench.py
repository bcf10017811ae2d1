"""[pool_tiny] and [pool_1mb]: `Pool.map` of minicluster's Pool, Ray's and the standard library's.

Run in a measurement subprocess (child.py, group ``pool``) on the ``warm`` profile (2 worker
slots): minicluster ``minicluster.util.multiprocessing.Pool(2)``, Ray
``ray.util.multiprocessing.Pool(2)`` on its session, and ``multiprocessing.Pool(2)``. The
mapped functions are in bench/tasks.py, so every pool gets them by reference; each pool picks
its own default chunksize (all three: ceil(items / (4 x processes))).

- [pool_tiny] ``map(identity, range(N))``, N = 100,000 (quick: 20,000), after a 500-item warm-up;
  items/s, median of 3 runs (quick: 1).
- [pool_1mb] ``map(size_of, items)`` over M distinct 1 MiB ``bytes`` objects, M = 100 (quick: 40),
  after a warm-up of 4; MB/s (MiB sent per second), median of 3 runs (quick: 1).
"""

from __future__ import annotations

import time
from typing import Any

from bench import tasks
from bench.systems import Handle
from bench.workloads import Record, median, ok

MIB = 2**20


def _pool_of(h: Handle) -> tuple[Any, bool]:
    """(the Pool to map on, whether this benchmark made it and must close it)."""
    if h.rt is not None:
        import importlib

        module = importlib.import_module(f"{h.system}.util.multiprocessing")
        return module.Pool(2), True
    assert h.pool is not None
    return h.pool.pool, False


def pool_map(h: Handle, tiny_items: int, big_items: int, runs: int) -> dict[str, Record]:
    pool, owned = _pool_of(h)
    try:
        pool.map(tasks.identity, range(500))
        rates: list[float] = []
        for _ in range(runs):
            t0 = time.perf_counter()
            out = pool.map(tasks.identity, range(tiny_items))
            rates.append(tiny_items / (time.perf_counter() - t0))
            if out != list(range(tiny_items)):
                raise AssertionError("wrong results")
        tiny = ok(median(rates), runs=rates, items=tiny_items)

        blobs = [bytes([i % 256]) * MIB for i in range(big_items)]  # distinct objects: no pickle memo
        pool.map(tasks.size_of, blobs[:4])
        mbps: list[float] = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sizes = pool.map(tasks.size_of, blobs)
            mbps.append(big_items / (time.perf_counter() - t0))
            if sizes != [MIB] * big_items:
                raise AssertionError("wrong results")
        big = ok(median(mbps), runs=mbps, items=big_items)
    finally:
        if owned:
            pool.terminate()
    return {"pool_tiny": tiny, "pool_1mb": big}
