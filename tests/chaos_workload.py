"""The workload of the chaos test and the soak (test_chaos.py, bench/soak.py): one seeded round
of map and reduce tasks under worker kills, a node kill, a node stop and a junk frame.

Values are numpy arrays of 160 to 480 KB, so they live in the nodes' stores (a node kill
loses them and lineage rebuilds them); every result is checked against the same
functions run here, without minicluster: a fault-free run by construction.
"""

from __future__ import annotations

import glob
import os
import struct
import time
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

import minicluster as ray
from minicluster import testing
from minicluster.testing import FaultPlan


def make_part(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 1000, size=20_000 * (1 + i % 3))


def weigh(part: np.ndarray, i: int) -> int:
    return int(part.sum()) * (i + 1)


def total(*weights: int) -> int:
    return sum(weights) % 1_000_003


def send_junk_once(marker: str) -> str:
    """First attempt: write an undecodable frame into this worker's head socket, then hang
    (the head drops the connection; the worker exits; the attempt is retried)."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        from minicluster._private.client import context

        payload = b"\x80\x05junk frame"
        os.write(context.client().conn.sock.fileno(), struct.pack("<I", len(payload)) + payload)
        time.sleep(60)
    return "junk survived"


remote_part = ray.remote(max_retries=-1)(make_part)
remote_weigh = ray.remote(max_retries=-1)(weigh)
remote_total = ray.remote(max_retries=-1)(total)
remote_junk = ray.remote(max_retries=-1)(send_junk_once)


def expected(parts: int) -> tuple:
    weights = [weigh(make_part(i), i) for i in range(parts)]
    return weights, total(*weights), "junk survived"


@dataclass
class Round:
    seed: int
    identical: bool
    faults: Dict[str, int]


def run_round(seed: int, parts: int, marker: str) -> Round:
    """One round in the running session (3+ nodes): returns whether the results equal a fault-free run."""
    plan = (FaultPlan(seed=seed)
            .chaos(kill_worker_every=8, kill_node_every=parts, max_node_kills=1)
            .stop_node("random", seconds=0.3, after_tasks=4, optional=True))
    with plan:
        junk = remote_junk.remote(marker)
        part_refs = [remote_part.remote(i) for i in range(parts)]
        weight_refs = [remote_weigh.remote(part, i) for i, part in enumerate(part_refs)]
        total_ref = remote_total.remote(*weight_refs)
        got = (ray.get(weight_refs, timeout=120), ray.get(total_ref, timeout=120), ray.get(junk, timeout=120))
    faults: Dict[str, int] = {}
    for event in plan.journal:
        faults[event.kind] = faults.get(event.kind, 0) + 1
    faults["junk_frame"] = int(os.path.exists(marker))
    return Round(seed, got == expected(parts), faults)


def leftovers(pids: List[int]) -> List[str]:
    """What a session left behind after shutdown: live processes, shared-memory folders of this process."""
    import psutil

    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(f"process {pid}")
        except psutil.NoSuchProcess:
            pass
    left.extend(glob.glob(f"/dev/shm/minicluster-{os.getuid()}-{os.getpid()}-*"))
    return left


def session_pids() -> List[int]:
    return list(testing.snapshot().pids()) if ray.is_initialized() else []
