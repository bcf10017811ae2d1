"""One measurement subprocess: one system, one group of benchmarks, in a fresh interpreter.

Invoked by ``run.py`` only::

    python -m bench.child --system ray --benches throughput,roundtrip --out res.json [--quick]

``--system none`` runs the system-independent baselines ([pipe], [memcpy]). The result
file is rewritten after every benchmark, so a run killed by its timeout still reports what
finished. Failures become ``{"ok": false, "reason": ...}`` records, never a crash of the run.

Before [start] starts its clock this process has imported only the standard-library
modules that ``bench.workloads`` / ``bench.systems`` / ``bench.specs`` need (no numpy, no
``multiprocessing``, no ``concurrent.futures``, no ``ray`` / ``minicluster``).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench import systems, workloads
from bench.specs import BY_NAME, Reps, reps
from bench.workloads import Record, na


def _parse(argv: list[str]) -> dict[str, str]:
    """``--key value`` pairs and bare ``--flag``s (argparse is not worth its imports here)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        key = argv[i].removeprefix("--")
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[key] = argv[i + 1]
            i += 2
        else:
            out[key] = "1"
            i += 1
    return out


class Results:
    """Result records plus metadata, saved atomically to the ``--out`` file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.records: dict[str, Record] = {}
        self.meta: dict[str, Any] = {"pid": os.getpid()}

    def save(self) -> None:
        import json

        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"results": self.records, "meta": self.meta}, f, default=repr)
        os.replace(tmp, self.path)

    def guarded(self, names: tuple[str, ...], fn: Callable[[], dict[str, Record]]) -> None:
        """Run ``fn``; any exception becomes an n/a record for ``names``. Save either way."""
        try:
            self.records.update(fn())
        except Exception as e:  # a failing benchmark must not stop the others
            traceback.print_exc()
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            for n in names:
                self.records[n] = na(f"{type(e).__name__}: {msg}"[:200], traceback=traceback.format_exc())
        self.save()


def _bind(name: str, fn: Callable[[Reps], Record], r: Reps) -> Callable[[], dict[str, Record]]:
    return lambda: {name: fn(r)}


def _bind_step(h: systems.Handle, step: tuple[str, ...], r: Reps) -> Callable[[], dict[str, Record]]:
    return lambda: workloads.run_warm_step(h, step, r)


def _bind_actor(name: str, h: systems.Handle, r: Reps) -> Callable[[], dict[str, Record]]:
    return lambda: {name: workloads.ACTOR_BENCHES[name](h.rt, r)}


def _bind_generator(name: str, h: systems.Handle, r: Reps) -> Callable[[], dict[str, Record]]:
    return lambda: {name: workloads.GENERATOR_BENCHES[name](h.rt, r)}


def run_cluster_group(res: Results, system: str, names: list[str], r: Reps) -> None:
    """The ``cluster`` group: one Cluster, the benchmarks in order, each saved when done."""

    def emit(name: str, record: Record) -> None:
        res.records[name] = record
        if name == "cluster_start":
            res.meta.update(version=record["extra"].get("version"), origin=record["extra"].get("origin"))
        res.save()

    all_names = ("cluster_start", "add_node", "footprint2", "reconstruct", "chain100")
    try:
        workloads.run_cluster(system, r, names, emit)
    except systems.Unavailable as e:
        for n in all_names:
            res.records.setdefault(n, na(str(e)))
    except Exception as e:  # the steps depend on each other: what did not finish becomes n/a
        traceback.print_exc()
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        for n in all_names:
            res.records.setdefault(n, na(f"{type(e).__name__}: {msg}"[:200],
                                         traceback=traceback.format_exc()))
    res.records = {k: v for k, v in res.records.items() if k in names}
    res.save()


def main(argv: list[str]) -> int:
    args = _parse(argv)
    system, out = args["system"], args["out"]
    names = args["benches"].split(",")
    r = reps(quick="quick" in args)
    res = Results(out)
    res.meta.update(system=system, benches=names, quick="quick" in args)
    groups = {BY_NAME[n].group for n in names}
    if len(groups) != 1:
        raise SystemExit(f"benchmarks of different groups in one process: {names}")
    group = groups.pop()

    if group == "baseline":
        for n in names:
            fn = workloads.pipe if n == "pipe" else workloads.memcpy
            res.guarded((n,), _bind(n, fn, r))
        return 0

    if group == "start":
        res.guarded(("start", "shutdown"), lambda: workloads.measure_start(system))
        res.records = {k: v for k, v in res.records.items() if k in names}
        res.save()
        return 0

    if group == "cluster":
        run_cluster_group(res, system, names, r)
        return 0

    try:
        h = systems.start(system, "warm")
    except systems.Unavailable as e:
        for n in names:
            res.records[n] = na(str(e))
        res.save()
        return 0
    res.meta.update(version=h.version(), origin=h.origin())
    try:
        if group == "warm":
            for step in workloads.WARM_STEPS:
                if any(n in names for n in step):
                    res.guarded(step, _bind_step(h, step, r))
        elif group == "bigarg":
            from bench import bigarg

            res.guarded(("arg_value",), lambda: {"arg_value": bigarg.rl_arg_value(h.rt, r) if h.rt is not None
                                                 else bigarg.pool_arg_value(h.pool, r)})
        elif group == "retry":
            rt = h.rt
            if rt is not None:
                res.guarded(("retry",), lambda: {"retry": workloads.rl_retry(rt, r)})
            else:
                res.guarded(("retry",), lambda: {"retry": workloads.pool_retry(h, r)})
        elif group == "footprint":
            res.guarded(("footprint",), lambda: {"footprint": workloads.footprint(h)})
        elif group == "lineage":
            rt = h.rt
            if rt is None:
                raise SystemExit("lineage_mem needs a Ray-like system")
            res.guarded(("lineage_mem",),
                        lambda: {"lineage_mem": workloads.rl_lineage_mem(system, rt, r)})
        elif group == "actors":
            if h.rt is None:
                raise SystemExit("the actor benchmarks need a Ray-like system")
            for n in workloads.ACTOR_BENCHES:
                if n in names:
                    res.guarded((n,), _bind_actor(n, h, r))
        elif group == "generators":
            if h.rt is None:
                raise SystemExit("the generator benchmarks need a Ray-like system")
            for n in workloads.GENERATOR_BENCHES:
                if n in names:
                    res.guarded((n,), _bind_generator(n, h, r))
        elif group == "pool":
            from bench import pool_bench

            res.guarded(("pool_tiny", "pool_1mb"),
                        lambda: pool_bench.pool_map(h, r.pool_tiny_items, r.pool_big_items, r.pool_runs))
        elif group == "chaos":
            rt = h.rt
            res.guarded(("chaos",), lambda: {"chaos": workloads.rl_chaos(rt, r)})
    finally:
        t0 = time.perf_counter()
        try:
            h.shutdown()
        except Exception as e:  # still save the results; run.py kills what is left
            res.meta["final_shutdown_error"] = repr(e)
        res.meta["final_shutdown_s"] = time.perf_counter() - t0
        res.records = {k: v for k, v in res.records.items() if k in names}
        res.save()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
