"""Chaos soak: seeded rounds of tests/chaos_workload.py for a while, then the figures.

Usage::

    python bench/soak.py [--seconds 300] [--parts 40] [--first-seed 1000]

Each round is a fresh 3-node session running map and reduce tasks under worker kills
(chaos every ~8 dispatches), one node kill, one node stop (0.3 s) and one junk frame
written into a worker's head socket. Every round's results are compared with the same
functions run without minicluster, and after each shutdown the session's processes and
shared-memory folders must be gone. Prints rounds, faults by kind, identical rounds and
leaks; exits 1 if any round differed or leaked. `pytest -m slow tests/test_chaos.py` with
MINICLUSTER_SOAK_S set runs the same as a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from chaos_workload import leftovers, run_round, session_pids  # noqa: E402

import minicluster as ray  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--parts", type=int, default=40)
    parser.add_argument("--first-seed", type=int, default=1000)
    args = parser.parse_args()
    faults: dict = {}
    rounds = identical = 0
    leaks = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mc-soak-") as markers:
        while time.monotonic() - started < args.seconds:
            seed = args.first_seed + rounds
            ray.init(num_nodes=3, num_cpus=2, log_to_driver=False)
            pids = session_pids()
            try:
                result = run_round(seed, args.parts, os.path.join(markers, f"junk-{seed}"))
                pids = sorted(set(pids) | set(session_pids()))
            finally:
                ray.shutdown()
            deadline = time.monotonic() + 5
            while leftovers(pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = leftovers(pids)
            leaks.extend(left)
            rounds += 1
            identical += result.identical
            for kind, count in result.faults.items():
                faults[kind] = faults.get(kind, 0) + count
            if not result.identical or left:
                print(f"round {rounds} (seed {seed}): identical={result.identical} leftovers={left}", flush=True)
    elapsed = time.monotonic() - started
    print(f"soak: {rounds} rounds in {elapsed:.0f} s, {rounds * (2 * args.parts + 2)} tasks")
    print("faults: " + ", ".join(f"{kind} {count}" for kind, count in sorted(faults.items())))
    print(f"identical results: {identical}/{rounds}")
    print(f"leaks: {len(leaks)}" + (f" {leaks}" if leaks else ""))
    return 0 if identical == rounds and not leaks else 1


if __name__ == "__main__":
    sys.exit(main())
