"""[arg_value]: a task given a 100 MB numpy array by value (not a ref), returning ``x.sum()``.

The common user pattern ``f.remote(big_array)``: Ray-like systems put the array into their
object store on every call (an implicit put) and the worker maps it; PPE / mp pickle it
through a pipe. Runs in its own measurement subprocess per system (group ``bigarg``), so the
first call is the first large object the fresh system ever stores: it pays the page
allocation of a fresh store (tmpfs) and the page faults in both processes.

Before the clock both worker slots run the same function once on a tiny array (two calls at
once that each wait 0.3 s, so each slot gets one: numpy imported and the function loaded
in both). Then the first call is timed alone, then ``arg_value_calls`` more calls one at a
time: the value is the first call; the details give the median and worst of the later ones.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

from bench import tasks
from bench.specs import Reps
from bench.systems import PoolSystem
from bench.workloads import ARRAY_LEN, Record, _big_array, median, ok

WARM_WAIT_S = 0.3


def _check(total: float) -> None:
    if total != float(ARRAY_LEN):
        raise AssertionError(f"wrong sum {total!r}")


def _record(times_ms: list[float]) -> Record:
    first, later = times_ms[0], times_ms[1:]
    return ok(first, first_ms=first, later_median_ms=median(later), later_worst_ms=max(later),
              later_runs=later)


def rl_arg_value(rt: ModuleType, r: Reps) -> Record:
    import numpy as np

    @rt.remote
    def total(x: Any, wait: float = 0.0) -> float:
        if wait:
            import time as _time

            _time.sleep(wait)
        return float(x.sum())

    small = np.ones(10)
    rt.get([total.remote(small, WARM_WAIT_S), total.remote(small, WARM_WAIT_S)])
    arr = _big_array()
    times: list[float] = []
    for _ in range(1 + r.arg_value_calls):
        t0 = time.perf_counter()
        v = rt.get(total.remote(arr))
        times.append((time.perf_counter() - t0) * 1e3)
        _check(v)
    return _record(times)


def pool_arg_value(pool: PoolSystem, r: Reps) -> Record:
    import numpy as np

    small = np.ones(10)
    waiters = [pool.submit(tasks.array_sum, small, WARM_WAIT_S) for _ in range(2)]
    for w in waiters:
        w()
    arr = _big_array()
    times: list[float] = []
    for _ in range(1 + r.arg_value_calls):
        t0 = time.perf_counter()
        v = pool.call(tasks.array_sum, arr)
        times.append((time.perf_counter() - t0) * 1e3)
        _check(v)
    return _record(times)
