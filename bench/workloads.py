"""The benchmark bodies. Each returns a result record (see ``ok`` / ``na``).

Ray-style benchmarks (``rl_*``) are written once and take the module: ``ray`` or
``minicluster`` (same API). Their remote functions are defined inside the body, so
cloudpickle ships them by value exactly like functions of a user's script. The pool
variants (``pool_*``) do the same work with ProcessPoolExecutor / multiprocessing.Pool and
the top-level functions of ``bench.tasks``.

What is timed (all wall-clock, ``time.perf_counter``):

[start]      from before ``import`` to the first result of a task returning 1
             (PPE/mp: import + pool creation + first result); [shutdown] then ``shutdown()``
             (PPE: ``shutdown(wait=True)``, mp: ``close(); join()``).
[throughput] after a warm-up, submit N no-op tasks returning their int argument, then get
             all; N / elapsed, median over runs.
[roundtrip]  ``get(f.remote(i))`` one at a time (PPE ``submit().result()``, mp ``apply``);
             median and p90 per call, in microseconds.
[put]        ``put(np.ones(100 MiB / 8))``, median over runs.
[get]        the first ``get`` of each freshly put object, median; also whether the result
             is a read-only view (``not a.flags.writeable``), as expected for zero-copy.
[arg]        a task taking the 100 MB object ref and returning ``arr[0]``, median per call
             after warm-up (PPE/mp: the array itself is the argument, pickled and copied).
[retry]      a ``max_retries=1`` task that ``os._exit(1)``s its worker on the first attempt
             (a marker file in a temp dir tells the attempt): submit-to-result time minus
             that of the same task when it does not crash, median of the paired differences.
[chaos]      minicluster only: N tiny tasks (submit all, get all) fault-free, then the same with
             a ``minicluster.testing`` chaos plan killing a worker every 100 tasks (seeded by the
             run's index); chaos time / fault-free time, median of the paired ratios.
[footprint]  after init and one task and 1 s of idling: the sum of PSS
             (``memory_full_info().pss``) of the driver and all its descendants.
[pipe]       ``multiprocessing.Pipe`` ping-pong with a child process: median / p90 per trip.
[memcpy]     ``np.copyto`` of 100 MiB into an already-touched buffer (and ``arr.copy()``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import time
from types import ModuleType
from typing import Any

from bench import tasks
from bench.specs import Reps
from bench.systems import RAYLIKE, Handle, PoolSystem, init_kwargs, slots

Record = dict[str, Any]

ARRAY_BYTES = 100 * 2**20
ARRAY_LEN = ARRAY_BYTES // 8
RETRY_SETTLE_S = 1.0  # pause after each crash so every pair starts with a full pool
FOOTPRINT_IDLE_S = 1.0
LOST_TASK_TIMEOUT_S = 3.0
RETRY_GET_TIMEOUT_S = 30.0  # a retry that never comes becomes n/a, not a group timeout


def ok(value: float, **extra: Any) -> Record:
    return {"ok": True, "value": value, "extra": extra}


def na(reason: str, **extra: Any) -> Record:
    return {"ok": False, "reason": reason, "extra": extra}


def median(xs: list[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def p90(xs: list[float]) -> float:
    s = sorted(xs)
    return s[int(0.9 * (len(s) - 1))]


def _big_array() -> Any:
    import numpy as np

    return np.ones(ARRAY_LEN)


# ----------------------------------------------------------------------------- start


def measure_start(system: str) -> dict[str, Record]:
    """[start] and [shutdown] in this fresh process (start-up profile: 4 worker slots)."""
    if system in RAYLIKE:
        return _start_raylike(system)
    return _start_pool(system)


def _start_raylike(system: str) -> dict[str, Record]:
    preimported = system in sys.modules
    if importlib.util.find_spec(system) is None:
        return {"start": na("not installed"), "shutdown": na("not installed")}
    t0 = time.perf_counter()
    try:
        rt = importlib.import_module(system)
    except Exception as e:  # report as n/a, keep the run going
        reason = f"import failed: {type(e).__name__}: {e}"
        return {"start": na(reason), "shutdown": na(reason)}
    t_import = time.perf_counter()
    try:
        rt.init(**init_kwargs(system, "start"))
    except Exception as e:
        reason = f"init failed: {type(e).__name__}: {e}"
        return {"start": na(reason), "shutdown": na(reason)}
    t_init = time.perf_counter()

    @rt.remote
    def one() -> int:
        return 1

    first = rt.get(one.remote())
    t_first = time.perf_counter()
    if first != 1:
        raise AssertionError(f"first task returned {first!r}")
    s0 = time.perf_counter()
    rt.shutdown()
    s1 = time.perf_counter()
    return {
        "start": ok(t_first - t0, import_s=t_import - t0, init_s=t_init - t_import,
                    first_task_s=t_first - t_init, preimported=preimported,
                    version=getattr(rt, "__version__", None),
                    origin=os.path.dirname(getattr(rt, "__file__", None) or "")),
        "shutdown": ok(s1 - s0),
    }


def _start_pool(system: str) -> dict[str, Record]:
    modname = "concurrent.futures" if system == "ppe" else "multiprocessing"
    preimported = modname in sys.modules
    t0 = time.perf_counter()
    pool = PoolSystem(system, slots("start"))  # imports the module inside
    t_pool = time.perf_counter()
    first = pool.call(tasks.one)
    t_first = time.perf_counter()
    if first != 1:
        raise AssertionError(f"first task returned {first!r}")
    s0 = time.perf_counter()
    pool.shutdown()
    s1 = time.perf_counter()
    return {
        "start": ok(t_first - t0, pool_s=t_pool - t0, first_task_s=t_first - t_pool,
                    preimported=preimported),
        "shutdown": ok(s1 - s0),
    }


# ------------------------------------------------------------------------ throughput


def rl_throughput(rt: ModuleType, r: Reps) -> Record:
    @rt.remote
    def noop(i: int) -> int:
        return i

    rt.get([noop.remote(i) for i in range(r.throughput_warmup)])
    rates: list[float] = []
    submit_s: list[float] = []
    for _ in range(r.throughput_runs):
        n = r.throughput_tasks
        t0 = time.perf_counter()
        refs = [noop.remote(i) for i in range(n)]
        t1 = time.perf_counter()
        out = rt.get(refs)
        t2 = time.perf_counter()
        if out != list(range(n)):
            raise AssertionError("wrong results")
        rates.append(n / (t2 - t0))
        submit_s.append(t1 - t0)
    return ok(median(rates), runs=rates, tasks=r.throughput_tasks, submit_s=submit_s)


def pool_throughput(pool: PoolSystem, r: Reps) -> Record:
    for w in [pool.submit(tasks.identity, i) for i in range(r.throughput_warmup)]:
        w()
    rates: list[float] = []
    submit_s: list[float] = []
    for _ in range(r.throughput_runs):
        n = r.throughput_tasks
        t0 = time.perf_counter()
        waiters = [pool.submit(tasks.identity, i) for i in range(n)]
        t1 = time.perf_counter()
        out = [w() for w in waiters]
        t2 = time.perf_counter()
        if out != list(range(n)):
            raise AssertionError("wrong results")
        rates.append(n / (t2 - t0))
        submit_s.append(t1 - t0)
    return ok(median(rates), runs=rates, tasks=r.throughput_tasks, submit_s=submit_s)


# ------------------------------------------------------------------------- roundtrip


def _latency_record(times_s: list[float]) -> Record:
    us = [t * 1e6 for t in times_s]
    return ok(median(us), p90=p90(us), calls=len(us), min=min(us))


def rl_roundtrip(rt: ModuleType, r: Reps) -> Record:
    @rt.remote
    def noop(i: int) -> int:
        return i

    for i in range(r.roundtrip_warmup):
        rt.get(noop.remote(i))
    times: list[float] = []
    for i in range(r.roundtrip_calls):
        t0 = time.perf_counter()
        v = rt.get(noop.remote(i))
        times.append(time.perf_counter() - t0)
        if v != i:
            raise AssertionError("wrong result")
    return _latency_record(times)


def pool_roundtrip(pool: PoolSystem, r: Reps) -> Record:
    for i in range(r.roundtrip_warmup):
        pool.call(tasks.identity, i)
    times: list[float] = []
    for i in range(r.roundtrip_calls):
        t0 = time.perf_counter()
        v = pool.call(tasks.identity, i)
        times.append(time.perf_counter() - t0)
        if v != i:
            raise AssertionError("wrong result")
    return _latency_record(times)


# --------------------------------------------------------------------------- put/get


def rl_put_get(rt: ModuleType, r: Reps) -> tuple[Record, Record]:
    """[put] and [get]: each run puts the array anew and gets that fresh object once."""
    arr = _big_array()
    put_s: list[float] = []
    get_s: list[float] = []
    readonly: list[bool] = []
    for _ in range(r.put_runs):
        t0 = time.perf_counter()
        ref = rt.put(arr)
        t1 = time.perf_counter()
        a = rt.get(ref)
        t2 = time.perf_counter()
        if a.shape != arr.shape or a[0] != 1.0 or a[-1] != 1.0:
            raise AssertionError("get returned the wrong array")
        readonly.append(not a.flags.writeable)
        put_s.append(t1 - t0)
        get_s.append(t2 - t1)
        del a, ref
    put_ms = [t * 1e3 for t in put_s]
    get_ms = [t * 1e3 for t in get_s]
    return (ok(median(put_ms), runs=put_ms, mb=ARRAY_BYTES / 2**20),
            ok(median(get_ms), runs=get_ms, readonly=all(readonly),
               readonly_runs=readonly))


# ------------------------------------------------------------------------------- arg


def rl_arg(rt: ModuleType, r: Reps) -> Record:
    @rt.remote
    def first(a: Any) -> float:
        return float(a[0])

    arr = _big_array()
    ref = rt.put(arr)
    for _ in range(2):
        rt.get(first.remote(ref))
    times: list[float] = []
    for _ in range(r.arg_calls):
        t0 = time.perf_counter()
        v = rt.get(first.remote(ref))
        times.append((time.perf_counter() - t0) * 1e3)
        if v != 1.0:
            raise AssertionError("wrong result")
    del ref
    # For information only (best effort): the array itself as the argument, i.e. an
    # implicit put per call.
    by_value: list[float] = []
    info: dict[str, Any] = {}
    try:
        for _ in range(r.arg_calls):
            t0 = time.perf_counter()
            v = rt.get(first.remote(arr))
            by_value.append((time.perf_counter() - t0) * 1e3)
            if v != 1.0:
                raise AssertionError("wrong result")
        info = {"by_value_ms": median(by_value), "by_value_runs": by_value}
    except Exception as e:  # the main number stands without it
        info = {"by_value_error": f"{type(e).__name__}: {e}"}
    return ok(median(times), runs=times, passed="object ref", **info)


def pool_arg(pool: PoolSystem, r: Reps) -> Record:
    arr = _big_array()
    pool.call(tasks.first_elem, arr)
    times: list[float] = []
    for _ in range(r.arg_calls):
        t0 = time.perf_counter()
        v = pool.call(tasks.first_elem, arr)
        times.append((time.perf_counter() - t0) * 1e3)
        if v != 1.0:
            raise AssertionError("wrong result")
    return ok(median(times), runs=times, passed="pickled array")


# ----------------------------------------------------------------------------- retry


def _mkdtemp() -> str:
    import tempfile  # imported lazily: keep the child's pre-[start] imports minimal

    return tempfile.mkdtemp(prefix="minicluster-bench-retry-")


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def rl_retry(rt: ModuleType, r: Reps) -> Record:
    @rt.remote(max_retries=1)
    def crash_once(marker: str) -> int:
        import os as _os

        if not _os.path.exists(marker):
            with open(marker, "w"):
                pass
            _os._exit(1)
        return 1

    tmp = _mkdtemp()
    try:
        warm = os.path.join(tmp, "warm")
        open(warm, "w").close()
        for _ in range(3):
            rt.get(crash_once.remote(warm))
        base_ms: list[float] = []
        crash_ms: list[float] = []
        for i in range(r.retry_runs):
            base = os.path.join(tmp, f"base{i}")
            open(base, "w").close()
            t0 = time.perf_counter()
            v0 = rt.get(crash_once.remote(base), timeout=RETRY_GET_TIMEOUT_S)
            t1 = time.perf_counter()
            crash = os.path.join(tmp, f"crash{i}")
            v1 = rt.get(crash_once.remote(crash), timeout=RETRY_GET_TIMEOUT_S)
            t2 = time.perf_counter()
            if v0 != 1 or v1 != 1 or not os.path.exists(crash):
                raise AssertionError("crash/retry did not happen as planned")
            base_ms.append((t1 - t0) * 1e3)
            crash_ms.append((t2 - t1) * 1e3)
            time.sleep(RETRY_SETTLE_S)
    finally:
        _rmtree(tmp)
    extra = [c - b for c, b in zip(crash_ms, base_ms, strict=True)]
    return ok(median(extra), crash_ms=crash_ms, base_ms=base_ms)


def pool_retry(h: Handle, r: Reps) -> Record:
    """PPE/mp have no retry: show what happens when a worker dies mid-task."""
    pool = _pool(h)
    tmp = _mkdtemp()
    try:
        base = os.path.join(tmp, "base")
        open(base, "w").close()
        pool.call(tasks.crash_once, base)
        t0 = time.perf_counter()
        waiter = pool.submit(tasks.crash_once, os.path.join(tmp, "crash"))
        try:
            waiter(LOST_TASK_TIMEOUT_S)
        except Exception as e:  # BrokenProcessPool / TimeoutError: the point of the test
            name = type(e).__name__
            if name == "TimeoutError":
                return na("no retry: task lost", error=repr(e),
                          detail=f"the worker died, Pool replaced it, get() was still waiting "
                                 f"after {LOST_TASK_TIMEOUT_S:g} s")
            return na(name, error=repr(e), after_ms=(time.perf_counter() - t0) * 1e3)
        return ok((time.perf_counter() - t0) * 1e3, note="the crashing task returned?!")
    finally:
        _rmtree(tmp)
        pool.terminate()
        h.pool = None  # already stopped


# ----------------------------------------------------------------------------- chaos

CHAOS_KILL_EVERY = 100  # tasks between worker kills, on average


def rl_chaos(rt: ModuleType, r: Reps) -> Record:
    """[chaos]: the cost of worker deaths and retries at a steady rate, against no faults."""
    if rt.__name__ != "minicluster":
        return na("minicluster only (fault injection)")
    from minicluster.testing import FaultPlan

    @rt.remote(max_retries=-1)
    def noop(i: int) -> int:
        return i

    def timed(n: int) -> float:
        t0 = time.perf_counter()
        out = rt.get([noop.remote(i) for i in range(n)])
        took = time.perf_counter() - t0
        if out != list(range(n)):
            raise AssertionError("wrong results")
        return took

    rt.get([noop.remote(i) for i in range(r.throughput_warmup)])
    base_s: list[float] = []
    chaos_s: list[float] = []
    kills: list[int] = []
    for run in range(r.chaos_runs):
        base_s.append(timed(r.chaos_tasks))
        plan = FaultPlan(seed=run).chaos(kill_worker_every=CHAOS_KILL_EVERY).install()
        try:
            chaos_s.append(timed(r.chaos_tasks))
        finally:
            plan.uninstall()
        kills.append(plan.journal.count("kill_worker"))
    ratios = [c / b for c, b in zip(chaos_s, base_s, strict=True)]
    return ok(median(ratios), ratios=ratios, chaos_s=chaos_s, base_s=base_s, kills=kills,
              tasks=r.chaos_tasks, every=CHAOS_KILL_EVERY)


# ------------------------------------------------------------------------- footprint


def footprint(h: Handle) -> Record:
    import psutil

    if h.rt is not None:
        rt = h.rt

        @rt.remote
        def one() -> int:
            return 1

        rt.get(one.remote())
    else:
        _pool(h).call(tasks.one)
    time.sleep(FOOTPRINT_IDLE_S)
    me = psutil.Process()
    pss = rss = 0
    names: dict[str, int] = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            name = p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        pss += info.pss
        rss += info.rss
        names[name] = names.get(name, 0) + 1
    return ok(pss / 2**20, nprocs=sum(names.values()), rss_mb=rss / 2**20, processes=names)


# ------------------------------------------------------------------------- baselines


def pipe(r: Reps) -> Record:
    import multiprocessing

    a, b = multiprocessing.Pipe()
    peer = multiprocessing.Process(target=tasks.echo, args=(b,))
    peer.start()
    try:
        for i in range(200):
            a.send(i)
            a.recv()
        times: list[float] = []
        for i in range(r.pipe_calls):
            t0 = time.perf_counter()
            a.send(i)
            a.recv()
            times.append(time.perf_counter() - t0)
        a.send(None)
    finally:
        peer.join(timeout=10)
        if peer.is_alive():
            peer.kill()
            peer.join()
    return _latency_record(times)


def memcpy(r: Reps) -> Record:
    import numpy as np

    src = _big_array()
    dst = np.zeros_like(src)
    dst.fill(2.0)  # touch every page so only the copy is timed
    copyto: list[float] = []
    copy: list[float] = []
    for _ in range(r.memcpy_runs):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        copyto.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        c = src.copy()
        copy.append((time.perf_counter() - t0) * 1e3)
        del c
    return ok(median(copyto), runs=copyto, arr_copy_ms=median(copy), arr_copy_runs=copy)


# -------------------------------------------------------------------------- dispatch


# Warm-group steps in run order; [put] and [get] are one step (get reads what put stored).
WARM_STEPS: list[tuple[str, ...]] = [("throughput",), ("roundtrip",), ("put", "get"), ("arg",)]


def run_warm_step(h: Handle, step: tuple[str, ...], r: Reps) -> dict[str, Record]:
    """Run one warm-group step on a started system."""
    if step == ("throughput",):
        rec = rl_throughput(h.rt, r) if h.rt is not None else pool_throughput(_pool(h), r)
        return {"throughput": rec}
    if step == ("roundtrip",):
        rec = rl_roundtrip(h.rt, r) if h.rt is not None else pool_roundtrip(_pool(h), r)
        return {"roundtrip": rec}
    if step == ("put", "get"):
        if h.rt is None:
            return {"put": na("no object store"), "get": na("no object store")}
        put, get = rl_put_get(h.rt, r)
        return {"put": put, "get": get}
    if step == ("arg",):
        return {"arg": rl_arg(h.rt, r) if h.rt is not None else pool_arg(_pool(h), r)}
    raise ValueError(step)


def _pool(h: Handle) -> PoolSystem:
    assert h.pool is not None
    return h.pool
