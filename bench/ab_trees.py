"""Is change B faster than A? Round trips of two checkouts of minicluster, measured in turns.

    python -m bench.ab_trees /path/to/A /path/to/B [--actor | --throughput] [--sessions 6] [--rounds 8]

(make a checkout of a commit with `git worktree add --detach /tmp/a <commit>`.)

On this shared 2-core host the speed of a whole run drifts by 30% within minutes, so two
runs of bench/run.py, one per checkout, compare the drift more than the code. Here both
sessions are alive at once, each in its own driver process started with that checkout on
its PYTHONPATH, and they take turns: a block of `--calls` round trips in A, then one in B,
then B first, and so on; the idle one blocks on its pipe and costs nothing. Each block pair
saw the same host, so the ratio of a pair is the code's. Where the kernel happened to put a
session's processes (its worker on its driver's core or not) lasts as long as the session
and moved one comparison by 15%, so both sides are started afresh `--sessions` times, each
pair of sessions running `--rounds` block pairs. Printed: the median of all pairs' ratios,
how many pairs B won, and each side's CPU time per round trip (its driver process, and that
process's main thread).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

READY = "ready"


def child(actor: bool, calls: int, throughput: bool) -> None:
    """One side: a session, warmed up; a block of round trips for each "go" line on stdin (with
    `throughput`: `calls` tasks submitted at once, then all their results got, on 2 CPUs)."""
    import minicluster as ray

    ray.init(num_cpus=2 if throughput else 1)

    @ray.remote
    def f(i: int) -> int:
        return i

    @ray.remote
    class Echo:
        def f(self, i: int) -> int:
            return i

    call = Echo.remote().f if actor else f
    for i in range(2000):
        ray.get(call.remote(i))
    print(READY, flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        t0, p0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
        if throughput:
            ray.get([call.remote(i) for i in range(calls)])
        else:
            for i in range(calls):
                ray.get(call.remote(i))
        t1, p1, m1 = time.perf_counter(), time.process_time(), time.thread_time()
        print(" ".join(f"{(b - a) / calls * 1e6:.2f}" for a, b in ((t0, t1), (p0, p1), (m0, m1))), flush=True)
    ray.shutdown()


def sessions(trees: list, args: argparse.Namespace, rows: dict) -> None:
    """Start a session on each side, run `args.rounds` block pairs in turns, stop both."""
    sides = {}
    for tree in trees:
        argv = [sys.executable, os.path.abspath(__file__), tree, tree, "--child", "--calls", str(args.calls)]
        flags = (["--actor"] if args.actor else []) + (["--throughput"] if args.throughput else [])
        sides[tree] = subprocess.Popen(argv + flags, cwd=tree, text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       env={**os.environ, "PYTHONPATH": tree})
    try:
        for side in sides.values():
            if side.stdout.readline().strip() != READY:  # type: ignore[union-attr]
                raise SystemExit("a side failed to start (its error is above)")
        for turn in range(args.rounds):
            for tree in (trees if turn % 2 == 0 else trees[::-1]):
                side = sides[tree]
                side.stdin.write("go\n")  # type: ignore[union-attr]
                side.stdin.flush()  # type: ignore[union-attr]
                rows[tree].append([float(x) for x in side.stdout.readline().split()])  # type: ignore[union-attr]
    finally:
        for side in sides.values():
            side.stdin.close()  # type: ignore[union-attr]
            side.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--actor", action="store_true", help="actor calls instead of tasks")
    parser.add_argument("--throughput", action="store_true",
                        help="blocks of --calls tasks submitted at once, then got (2 CPUs): time per task")
    parser.add_argument("--sessions", type=int, default=6, help="fresh session pairs")
    parser.add_argument("--rounds", type=int, default=8, help="block pairs per session pair")
    parser.add_argument("--calls", type=int, default=300, help="round trips per block")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.actor, args.calls, args.throughput)
        return
    trees = [os.path.abspath(args.a), os.path.abspath(args.b)]
    rows: dict = {tree: [] for tree in trees}
    for _ in range(args.sessions):
        sessions(trees, args, rows)
    what = "actor calls" if args.actor else "tasks"
    if args.throughput:
        what += ", submitted in blocks (throughput)"
    print(f"{what}: {args.sessions} x {args.rounds} block pairs of {args.calls} round trips; medians per round trip")
    for tree in trees:
        wall, cpu, main_thread = (statistics.median(row[i] for row in rows[tree]) for i in range(3))
        print(f"  {tree}: {wall:6.1f} us wall; driver CPU {cpu:6.1f} us, of it its main thread {main_thread:6.1f} us")
    pairs = list(zip(rows[trees[0]], rows[trees[1]]))
    ratio = statistics.median(b[0] / a[0] for a, b in pairs)
    wins = sum(1 for a, b in pairs if b[0] < a[0])
    print(f"  B / A: {ratio:.3f} (median of the pairs); B faster in {wins} of {len(pairs)} pairs")


if __name__ == "__main__":
    main()
