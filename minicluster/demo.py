"""`minicluster demo`: a short job that shows what minicluster does, and where the time went.

Runs in the user's process as a driver. A small DAG over two virtual nodes:

    make_shard(i) x4 ──► normalize(shard) x4 ──► total(...) ──► result
                              one normalize() crashes its worker on its first
                              attempt (os._exit) and is retried on a fresh worker
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, List

import minicluster as ray
from minicluster.util.state import list_nodes, list_tasks


@ray.remote
def make_shard(index: int, size: int) -> List[int]:
    return list(range(index * size, (index + 1) * size))


@ray.remote(max_retries=2)
def normalize(shard: List[int], crash_marker: str) -> int:
    # The first attempt of the task that owns the marker kills its own worker process,
    # as a segfault or the OOM killer would; minicluster retries it elsewhere.
    if crash_marker and not os.path.exists(crash_marker):
        open(crash_marker, "w").close()
        os._exit(1)
    return sum(x * x for x in shard)


@ray.remote
def total(*parts: int) -> int:
    return sum(parts)


def _attempt_rows() -> List[Any]:
    """(attempt, node name, ms running) per task attempt, from the state API (oldest task first)."""
    names = {node.node_id: node.node_name for node in list_nodes()}
    rows = []
    for attempt in list_tasks(detail=True, limit=1000):
        times = {event["state"]: event["created_ms"] for event in attempt.events or ()}
        end = times.get("FINISHED", times.get("FAILED"))
        ms = end - times["RUNNING"] if end is not None and times.get("RUNNING") is not None else None
        rows.append((attempt, names.get(attempt.node_id, "-"), ms))
    return rows


def run(num_nodes: int = 2, num_cpus: int = 2, out: Any = None) -> int:
    """Run the demo; returns 0 when the result is right."""
    write = (lambda s: print(s, file=out)) if out is not None else print
    t0 = time.perf_counter()
    ray.init(num_nodes=num_nodes, num_cpus=num_cpus)
    t_init = time.perf_counter() - t0
    write(f"started {num_nodes} virtual nodes x {num_cpus} CPUs in {t_init * 1000:.0f} ms")
    with tempfile.TemporaryDirectory(prefix="minicluster-demo-") as tmp:
        marker = os.path.join(tmp, "crashed-once")
        t1 = time.perf_counter()
        shards = [make_shard.remote(i, 1000) for i in range(4)]
        parts = [normalize.remote(s, marker if i == 2 else "") for i, s in enumerate(shards)]
        result = ray.get(total.remote(*parts))
        t_job = time.perf_counter() - t1
    expected = sum(x * x for x in range(4000))
    ok = result == expected
    write(f"result: {result} ({'correct' if ok else f'WRONG, expected {expected}'}) in {t_job * 1000:.1f} ms")
    write("")
    write("where the time went (one row per attempt):")
    write(f"  {'task':<12} {'attempt':>7}  {'node':<7} {'state':<9} {'ms':>7}  error")
    for attempt, node, ms in _attempt_rows():
        took = f"{ms:.2f}" if ms is not None else ""
        error = f"{attempt.error_type}: {attempt.error_message}" if attempt.error_type else ""
        write(f"  {attempt.name:<12} {attempt.attempt_number:>7}  {node:<7} {attempt.state:<9} {took:>7}  {error}")
    write("  (ms: how long the attempt ran in its worker; for a crash, until the head saw the worker die)")
    write("")
    write("normalize's first attempt lost its worker (os._exit) and was retried on a fresh worker;")
    write("the job still got the right answer. Try it yourself: `import minicluster as ray`.")
    t2 = time.perf_counter()
    ray.shutdown()
    write(f"shutdown in {(time.perf_counter() - t2) * 1000:.0f} ms; total {(time.perf_counter() - t0) * 1000:.0f} ms")
    write("")
    write("See what happened, now or later, from any shell: `minicluster list tasks`, `minicluster summary tasks`,")
    write("`minicluster status`, `minicluster logs`, `minicluster timeline -o trace.json` (open it in Perfetto).")
    return 0 if ok else 1
