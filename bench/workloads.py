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
[put]        ``put(np.ones(100 MiB / 8))``, median over runs (each ref dropped after its get);
             then back-to-back: several puts in a row, every ref kept, median and worst.
[get]        the first ``get`` of each freshly put object, median; also whether the result
             is a read-only view (``not a.flags.writeable``), as expected for zero-copy; then
             the first gets of the back-to-back puts' objects, in a row, median and worst.
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
[memcpy]     ``np.copyto`` of 100 MiB into an already-touched buffer (and ``arr.copy()``, and
             ``arr.sum()``, the work of [arg_value]'s task).

[bookkeeping]   tiny-task throughput, in the warm group, three ways in rotation: plain
                ``noop(i)`` (refs dropped after each run); ``with_arg(i, dep)`` whose ``dep`` is
                the ref of an earlier task's result (refs dropped); the same with every ref kept
                alive to the end (so every task's lineage record stays, holding its argument).
                Value: how much slower the kept variant is than plain, in percent.
[cluster_start] ``Cluster(initialize_head=True, head_node_args={"num_cpus": 1, ...})`` +
                ``init(address=cluster.address)`` + the first task's result (module imported
                before the clock).
[add_node]      ``cluster.add_node(num_cpus=1)`` (it waits for the node to be up), median over
                every node added in the group; the first task pinned to it is timed apart.
[footprint2]    after cluster start, one added node, a task on each and 1 s idle: PSS of the
                driver and all its descendants (2 nodes: head + worker).
[reconstruct]   a task returning ``np.zeros(10**6)`` (8 MB) pinned (soft) by
                NodeAffinitySchedulingStrategy to a worker node; once done (``wait`` with
                fetch_local=False, so no copy elsewhere), ``remove_node`` it and time the next
                ``get`` (rebuilt on the head). Compared with the same task's normal
                submit-to-result time on the head.
[chain100]      100 chained tasks (the first makes ``np.zeros(2**15)``, 256 KiB, so the values
                live in the node's store; each next one adds 1 to the previous output), all
                pinned (soft) to one worker node, only the last ref kept; remove the node and time
                ``get`` of the last (100 tasks re-run, recursively).
[lineage_mem]   N tiny tasks in batches of 1,000, task j of each batch taking the ref of task j
                of the previous batch, only the last batch's refs kept: every finished task is
                lineage the latest results depend on, so only the cap bounds it. Peak growth of
                the driver's RSS over the baseline after a warm-up.
[actor_create]  warm node (after init and a task): ``Cls.remote()`` + ``get(a.ping.remote())``,
                median over runs (each actor killed afterwards).
[actor_call]    ``get(a.ping.remote(i))`` one at a time on one actor, median and p90.
[actor_async]   an actor whose ``ping`` is ``async def``: submit N calls, get all; calls/s.
[actor_restart] a ``max_restarts=1`` actor; time from calling a method that ``os._exit(1)``s
                (its ``get`` raises) until a ``ping`` is answered by the restarted actor.
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
from bench.specs import LINEAGE_CAP_BYTES, Reps
from bench.systems import (
    CLUSTER_HEAD_ARGS,
    CLUSTER_NODE_ARGS,
    RAYLIKE,
    Handle,
    PoolSystem,
    attach_kwargs,
    import_raylike,
    init_kwargs,
    slots,
)

Record = dict[str, Any]

ARRAY_BYTES = 100 * 2**20
ARRAY_LEN = ARRAY_BYTES // 8
RETRY_SETTLE_S = 1.0  # pause after each crash so every pair starts with a full pool
FOOTPRINT_IDLE_S = 1.0
LOST_TASK_TIMEOUT_S = 3.0
BOOKKEEPING_SETTLE_S = 0.3  # pause before each timed run: frees of the last one happen in it
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
    b2b_put, b2b_get = _put_get_burst(rt, arr, r.put_burst)
    return (ok(median(put_ms), runs=put_ms, mb=ARRAY_BYTES / 2**20, b2b_runs=b2b_put,
               b2b_median=median(b2b_put), b2b_worst=max(b2b_put)),
            ok(median(get_ms), runs=get_ms, readonly=all(readonly),
               readonly_runs=readonly, b2b_runs=b2b_get, b2b_median=median(b2b_get), b2b_worst=max(b2b_get)))


def _put_get_burst(rt: ModuleType, arr: Any, n: int) -> tuple[list[float], list[float]]:
    """Back-to-back: ``n`` puts in a row, every ref kept (n distinct live objects, no pause for
    any background work between them), then the first get of each, in a row. Times in ms."""
    refs = []
    put_ms: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        refs.append(rt.put(arr))
        put_ms.append((time.perf_counter() - t0) * 1e3)
    get_ms: list[float] = []
    for ref in refs:
        t0 = time.perf_counter()
        a = rt.get(ref)
        get_ms.append((time.perf_counter() - t0) * 1e3)
        if a.shape != arr.shape or a[-1] != 1.0:
            raise AssertionError("get returned the wrong array")
        del a
    del refs
    return put_ms, get_ms


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
    if h.rt is not None:
        rt = h.rt

        @rt.remote
        def one() -> int:
            return 1

        rt.get(one.remote())
    else:
        _pool(h).call(tasks.one)
    time.sleep(FOOTPRINT_IDLE_S)  # idle on purpose: the footprint of a session at rest
    pss_mb, rss_mb, names = _pss_tree()
    return ok(pss_mb, nprocs=sum(names.values()), rss_mb=rss_mb, processes=names)


# ----------------------------------------------------------------------- bookkeeping


def rl_bookkeeping(rt: ModuleType, r: Reps) -> Record:
    """Tiny-task throughput: plain vs. a ref argument vs. a ref argument with lineage kept."""

    @rt.remote
    def noop(i: int) -> int:
        return i

    @rt.remote
    def with_arg(i: int, dep: int) -> int:
        return i

    seeds = [noop.remote(i) for i in range(100)]
    rt.get(seeds)
    n = r.bookkeeping_tasks
    rt.get([noop.remote(i) for i in range(300)])
    rt.get([with_arg.remote(i, seeds[i % 100]) for i in range(300)])
    rates: dict[str, list[float]] = {"plain": [], "ref_arg": [], "ref_arg_kept": []}
    modes = list(rates)
    kept: list[Any] = []
    for run in range(r.bookkeeping_runs):
        for mode in modes[run % 3:] + modes[: run % 3]:  # rotate the order run by run
            time.sleep(BOOKKEEPING_SETTLE_S)  # let the previous mode's refs be released first
            t0 = time.perf_counter()
            if mode == "plain":
                refs = [noop.remote(i) for i in range(n)]
            else:
                refs = [with_arg.remote(i, seeds[i % 100]) for i in range(n)]
            out = rt.get(refs)
            rates[mode].append(n / (time.perf_counter() - t0))
            if out != list(range(n)):
                raise AssertionError("wrong results")
            if mode == "ref_arg_kept":
                kept.extend(refs)
            del refs, out
    med = {k: median(v) for k, v in rates.items()}
    cost = (1 - med["ref_arg_kept"] / med["plain"]) * 100
    return ok(cost, tasks=n, rates=rates, median_rates=med, kept_refs=len(kept),
              ref_arg_cost_pct=(1 - med["ref_arg"] / med["plain"]) * 100)


# -------------------------------------------------------------------------- cluster


def _pss_tree() -> tuple[float, float, dict[str, int]]:
    """PSS and RSS (MB) of this process and all its descendants, and their names."""
    import psutil

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
    return pss / 2**20, rss / 2**20, names


def _locations(system: str, rt: ModuleType, ref: Any, labels: dict[str, str]) -> str:
    """Where copies of ``ref`` are, as "victim", "head", ... (diagnostic only)."""
    try:
        if system == "minicluster":
            testing = importlib.import_module("minicluster.testing")
            nodes = list(testing.object_locations(ref))
        else:
            info = rt.experimental.get_object_locations([ref])
            nodes = list(next(iter(info.values())).get("node_ids", []))
    except Exception as e:  # diagnostics must not fail the benchmark
        return f"unknown ({type(e).__name__})"
    return "+".join(labels.get(n, "other") for n in nodes) or "none reported"


def run_cluster(system: str, r: Reps, names: list[str], emit: Any) -> None:
    """The ``cluster`` group: [cluster_start], [add_node], [footprint2], [reconstruct], [chain100].

    One Cluster for the whole group (Ray's takes seconds to start and to add a node). ``emit``
    is called with each finished record, so a group killed by its timeout still reports them.
    """

    rt = import_raylike(system)
    cluster_utils = importlib.import_module(f"{system}.cluster_utils")
    strategies = importlib.import_module(f"{system}.util.scheduling_strategies")
    affinity = strategies.NodeAffinitySchedulingStrategy

    @rt.remote
    def one() -> int:
        return 1

    @rt.remote
    def make() -> Any:
        import numpy

        return numpy.zeros(10**6)

    @rt.remote
    def start_chain() -> Any:
        import numpy

        return numpy.zeros(2**15)

    @rt.remote
    def step(x: Any) -> Any:
        return x + 1

    t0 = time.perf_counter()
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args=dict(CLUSTER_HEAD_ARGS))
    t1 = time.perf_counter()
    try:
        rt.init(address=cluster.address, **attach_kwargs(system))
        t2 = time.perf_counter()
        if rt.get(one.remote()) != 1:
            raise AssertionError("first task returned the wrong value")
        t3 = time.perf_counter()
        emit("cluster_start", ok(t3 - t0, cluster_s=t1 - t0, init_s=t2 - t1, first_task_s=t3 - t2,
                                 version=getattr(rt, "__version__", None),
                                 origin=os.path.dirname(getattr(rt, "__file__", None) or "")))
        head_id = cluster.head_node.node_id
        add_s: list[float] = []
        first_task_s: list[float] = []

        def add_node() -> Any:
            a0 = time.perf_counter()
            node = cluster.add_node(**CLUSTER_NODE_ARGS)
            a1 = time.perf_counter()
            pinned = one.options(scheduling_strategy=affinity(node.node_id, soft=False))
            if rt.get(pinned.remote(), timeout=60) != 1:
                raise AssertionError("task on the new node returned the wrong value")
            add_s.append(a1 - a0)
            first_task_s.append(time.perf_counter() - a1)
            emit("add_node", ok(median(add_s), runs=list(add_s), first_task_s=list(first_task_s)))
            return node

        victim = add_node()

        if "footprint2" in names:
            rt.get(one.options(scheduling_strategy=affinity(head_id, soft=False)).remote())
            time.sleep(FOOTPRINT_IDLE_S)
            pss, rss, procs = _pss_tree()
            emit("footprint2", ok(pss, nprocs=sum(procs.values()), rss_mb=rss, processes=procs,
                                  nodes=2))

        if "reconstruct" in names:
            on_head = make.options(scheduling_strategy=affinity(head_id, soft=False))
            normal_ms: list[float] = []
            for _ in range(4):  # the first one warms the head's worker (numpy import)
                n0 = time.perf_counter()
                v = rt.get(on_head.remote(), timeout=60)
                normal_ms.append((time.perf_counter() - n0) * 1e3)
                del v
            normal = median(normal_ms[1:])
            get_ms: list[float] = []
            remove_ms: list[float] = []
            located: list[str] = []
            for i in range(r.reconstruct_runs):
                if i > 0:
                    victim = add_node()
                ref = make.options(scheduling_strategy=affinity(victim.node_id, soft=True)).remote()
                rt.wait([ref], timeout=60, fetch_local=False)
                located.append(_locations(system, rt, ref, {victim.node_id: "victim", head_id: "head"}))
                g0 = time.perf_counter()
                cluster.remove_node(victim)
                g1 = time.perf_counter()
                v = rt.get(ref, timeout=60)
                g2 = time.perf_counter()
                if v.shape != (10**6,) or v[-1] != 0:
                    raise AssertionError("reconstructed the wrong array")
                del v, ref
                remove_ms.append((g1 - g0) * 1e3)
                get_ms.append((g2 - g1) * 1e3)
                victim = None
            emit("reconstruct", ok(median(get_ms), runs=get_ms, remove_ms=remove_ms,
                                   normal_ms=normal, normal_runs=normal_ms,
                                   copies=located))

        if "chain100" in names:
            if victim is None:
                victim = add_node()
            strategy = affinity(victim.node_id, soft=True)
            c0 = time.perf_counter()
            x = start_chain.options(scheduling_strategy=strategy).remote()
            for _ in range(r.chain_len - 1):
                x = step.options(scheduling_strategy=strategy).remote(x)
            rt.wait([x], timeout=120, fetch_local=False)
            c1 = time.perf_counter()
            where = _locations(system, rt, x, {victim.node_id: "victim", head_id: "head"})
            cluster.remove_node(victim)
            victim = None
            g1 = time.perf_counter()
            v = rt.get(x, timeout=120)
            g2 = time.perf_counter()
            if v.shape != (2**15,) or v[0] != r.chain_len - 1:
                raise AssertionError(f"chain rebuilt to the wrong value {v[0]!r}")
            del v, x
            emit("chain100", ok((g2 - g1) * 1e3, build_ms=(c1 - c0) * 1e3, tasks=r.chain_len,
                                copies=where))
    finally:
        try:
            rt.shutdown()
        finally:
            cluster.shutdown()


# ------------------------------------------------------------------------ lineage_mem


def _lineage_internals(system: str) -> dict[str, Any]:
    """minicluster's own lineage accounting (diagnostic; ``minicluster.testing.snapshot()``)."""
    if system != "minicluster":
        return {}
    try:
        snap = importlib.import_module("minicluster.testing").snapshot()
        return {"lineage_records": snap.lineage_records,
                "lineage_bytes_mb": snap.lineage_bytes / 2**20,
                "evicted_ids_remembered": snap.lineage_evicted_remembered,
                "object_entries": snap.objects,
                "task_history": snap.finished_tasks_kept,
                "freed_ids_remembered": snap.freed_ids_remembered}
    except Exception as e:  # diagnostics must not fail the benchmark (an older minicluster has no snapshot)
        return {"internals_error": f"{type(e).__name__}: {e}"}


def _lineage_phase(rt: ModuleType, fn: Any, tasks: int, batch: int, dependent: bool,
                   rss: Any, base: int) -> dict[str, Any]:
    """Run ``tasks`` tasks in batches, keeping only the last batch's refs; sample RSS growth.

    ``dependent``: task j of a batch takes the ref of task j of the previous batch (``fn(x)``
    returns ``x + 1``), else its index (``fn(i)`` returns ``i``).
    """
    batches = tasks // batch
    every = max(1, batches // 20)
    samples: list[tuple[int, float]] = []
    half_mb = 0.0
    prev = [fn.remote(0) for _ in range(batch)] if dependent else []
    if dependent:
        rt.get(prev)
    start_mb = (rss() - base) / 2**20
    t0 = time.perf_counter()
    for b in range(1, batches + 1):
        cur = [fn.remote(p) for p in prev] if dependent else [fn.remote(i) for i in range(batch)]
        rt.get(cur)
        prev = cur  # keep the last batch only
        if b % every == 0 or b == batches:
            samples.append((b * batch, (rss() - base) / 2**20))
        if b == batches // 2:
            half_mb = (rss() - base) / 2**20
    elapsed = time.perf_counter() - t0
    last = rt.get(prev[-1])
    expected = batches + 1 if dependent else batch - 1
    if last != expected:
        raise AssertionError(f"wrong result {last!r}, expected {expected}")
    end_mb = (rss() - base) / 2**20
    return {"tasks": batches * batch, "rate": batches * batch / elapsed, "elapsed_s": elapsed,
            "samples": samples, "start_mb": start_mb, "end_mb": end_mb,
            "second_half_mb": end_mb - half_mb,
            "peak_mb": max([end_mb, *(mb for _, mb in samples)])}


def rl_lineage_mem(system: str, rt: ModuleType, r: Reps) -> Record:
    """[lineage_mem]: driver RSS growth over many tiny tasks, lineage capped (see README).

    Phase 1 (the value): ``lineage_tasks`` independent tiny tasks in batches, keeping the last
    batch's refs only. Phase 2 (details): ``lineage_dep_tasks`` dependent tasks (each takes
    the previous batch's ref), so all of them are lineage of the latest results and only
    the cap bounds it.
    """
    import gc

    import psutil

    @rt.remote
    def noop(i: int) -> int:
        return i

    @rt.remote
    def step(x: int) -> int:
        return x + 1

    me = psutil.Process()

    def rss() -> int:
        return int(me.memory_info().rss)

    batch = r.lineage_batch
    for _ in range(5):  # warm-up: worker pools, freelists
        rt.get([noop.remote(i) for i in range(batch)])
        rt.get([step.remote(i) for i in range(batch)])
    gc.collect()
    base = rss()
    plain = _lineage_phase(rt, noop, r.lineage_tasks, batch, False, rss, base)
    after_plain = _lineage_internals(system)
    dep = _lineage_phase(rt, step, r.lineage_dep_tasks, batch, True, rss, base)
    after_dep = _lineage_internals(system)
    cap = os.environ.get("MINICLUSTER_max_lineage_bytes") if system == "minicluster" else None
    return ok(plain["peak_mb"], base_rss_mb=base / 2**20, batch=batch,
              cap_mb=int(cap) / 2**20 if cap else LINEAGE_CAP_BYTES / 2**20,
              tasks=plain["tasks"], plain=plain, dependent=dep,
              internals_after_plain=after_plain, internals_after_dependent=after_dep)


# ---------------------------------------------------------------------------- actors


def _actor_classes(rt: ModuleType) -> tuple[Any, Any]:
    @rt.remote
    class Pinger:
        def ping(self, i: int = 0) -> int:
            return i

        def die(self) -> None:
            import os as _os

            _os._exit(1)

    @rt.remote
    class AsyncPinger:
        async def ping(self, i: int = 0) -> int:
            return i

    return Pinger, AsyncPinger


def _warm(rt: ModuleType) -> None:
    @rt.remote
    def one() -> int:
        return 1

    rt.get(one.remote())


def rl_actor_create(rt: ModuleType, r: Reps) -> Record:
    pinger, _ = _actor_classes(rt)
    _warm(rt)
    times: list[float] = []
    for _ in range(r.actor_create_runs):
        t0 = time.perf_counter()
        a = pinger.remote()
        v = rt.get(a.ping.remote(7), timeout=60)
        times.append((time.perf_counter() - t0) * 1e3)
        if v != 7:
            raise AssertionError("wrong result")
        rt.kill(a)
        del a
    return ok(median(times), runs=times)


def rl_actor_call(rt: ModuleType, r: Reps) -> Record:
    pinger, _ = _actor_classes(rt)
    a = pinger.remote()
    try:
        for i in range(r.actor_warmup):
            rt.get(a.ping.remote(i))
        times: list[float] = []
        for i in range(r.actor_calls):
            t0 = time.perf_counter()
            v = rt.get(a.ping.remote(i))
            times.append(time.perf_counter() - t0)
            if v != i:
                raise AssertionError("wrong result")
    finally:
        rt.kill(a)
    return _latency_record(times)


def rl_actor_async(rt: ModuleType, r: Reps) -> Record:
    _, async_pinger = _actor_classes(rt)
    a = async_pinger.remote()
    try:
        rt.get([a.ping.remote(i) for i in range(r.actor_warmup)])
        rates: list[float] = []
        n = r.actor_async_calls
        for _ in range(r.actor_async_runs):
            t0 = time.perf_counter()
            out = rt.get([a.ping.remote(i) for i in range(n)])
            rates.append(n / (time.perf_counter() - t0))
            if out != list(range(n)):
                raise AssertionError("wrong results")
    finally:
        rt.kill(a)
    return ok(median(rates), runs=rates, calls=n)


def rl_actor_restart(rt: ModuleType, r: Reps) -> Record:
    pinger, _ = _actor_classes(rt)
    total_ms: list[float] = []
    die_ms: list[float] = []
    errors: list[str] = []
    failed_pings: list[int] = []
    for _ in range(r.actor_restart_runs):
        a = pinger.options(max_restarts=1).remote()
        rt.get(a.ping.remote(), timeout=60)
        t0 = time.perf_counter()
        try:
            rt.get(a.die.remote(), timeout=60)
            raise AssertionError("the method that exits returned")
        except AssertionError:
            raise
        except Exception as e:  # the call that killed the actor fails: expected
            errors.append(type(e).__name__)
        t1 = time.perf_counter()
        fails = 0
        deadline = t0 + 60
        while True:
            try:
                v = rt.get(a.ping.remote(3), timeout=max(0.1, deadline - time.perf_counter()))
                break
            except Exception as e:  # still restarting (Ray may refuse calls meanwhile)
                fails += 1
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"restarted actor did not answer within 60 s: {e!r}") from e
                time.sleep(0.001)
        t2 = time.perf_counter()
        if v != 3:
            raise AssertionError("wrong result")
        total_ms.append((t2 - t0) * 1e3)
        die_ms.append((t1 - t0) * 1e3)
        failed_pings.append(fails)
        rt.kill(a)
        del a
    return ok(median(total_ms), runs=total_ms, crash_call_ms=die_ms, crash_errors=errors,
              failed_pings=failed_pings)


ACTOR_BENCHES: dict[str, Any] = {"actor_create": rl_actor_create, "actor_call": rl_actor_call,
                                 "actor_async": rl_actor_async, "actor_restart": rl_actor_restart}


def _items_per_second(rt: ModuleType, gen_fn: Any, n: int, runs: int) -> Record:
    rt.get(list(gen_fn.remote(10)))  # warm: a worker and the function are ready
    rates: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        count = 0
        for ref in gen_fn.remote(n):
            rt.get(ref)
            count += 1
        rates.append(count / (time.perf_counter() - t0))
        if count != n:
            raise AssertionError(f"{count} items, expected {n}")
    return ok(median(rates), runs=rates, items=n)


def rl_gen_tiny(rt: ModuleType, r: Reps) -> Record:
    @rt.remote(num_returns="streaming")
    def tiny(n: int) -> Any:
        for i in range(n):
            yield i

    return _items_per_second(rt, tiny, r.gen_items, r.gen_runs)


def rl_gen_1mb(rt: ModuleType, r: Reps) -> Record:
    @rt.remote(num_returns="streaming")
    def big(n: int) -> Any:
        import numpy as np

        for i in range(n):
            yield np.full(1_000_000 // 8, i, dtype=np.int64)

    return _items_per_second(rt, big, r.gen_big_items, r.gen_runs)


GENERATOR_BENCHES: dict[str, Any] = {"gen_tiny": rl_gen_tiny, "gen_1mb": rl_gen_1mb}


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
    sums: list[float] = []
    for _ in range(r.memcpy_runs):  # [arg_value]'s floor is a copy into the store plus this
        t0 = time.perf_counter()
        src.sum()
        sums.append((time.perf_counter() - t0) * 1e3)
    return ok(median(copyto), runs=copyto, arr_copy_ms=median(copy), arr_copy_runs=copy,
              sum_ms=median(sums), sum_runs=sums)


# -------------------------------------------------------------------------- dispatch


# Warm-group steps in run order; [put] and [get] are one step (get reads what put stored).
WARM_STEPS: list[tuple[str, ...]] = [("throughput",), ("bookkeeping",), ("roundtrip",), ("put", "get"),
                                     ("arg",)]


def run_warm_step(h: Handle, step: tuple[str, ...], r: Reps) -> dict[str, Record]:
    """Run one warm-group step on a started system."""
    if step == ("throughput",):
        rec = rl_throughput(h.rt, r) if h.rt is not None else pool_throughput(_pool(h), r)
        return {"throughput": rec}
    if step == ("bookkeeping",):
        if h.rt is None:
            return {"bookkeeping": na("no object refs / lineage")}
        return {"bookkeeping": rl_bookkeeping(h.rt, r)}
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
