"""Task functions for the pool systems (PPE, multiprocessing.Pool) and the pipe baseline.

They live at module top level so that pickle sends them by reference
(``bench.tasks.identity``). The Ray-style benchmarks do not use this module: they define
their remote functions inside the benchmark body so cloudpickle ships them by value, as
it does for functions of a user's ``__main__`` script.

Keep this module free of heavy imports: [start] for PPE/mp imports it before the clock.
"""

from __future__ import annotations

import os
from typing import Any


def one() -> int:
    return 1


def identity(i: int) -> int:
    return i


def first_elem(arr: Any) -> float:
    return float(arr[0])


def array_sum(arr: Any, wait: float = 0.0) -> float:
    """[arg_value]: the array's sum (after ``wait`` seconds: the warm-up keeps both workers busy)."""
    if wait:
        import time

        time.sleep(wait)
    return float(arr.sum())


def crash_once(marker: str) -> int:
    """Kill the worker process on the first call for ``marker``; return 1 afterwards."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(1)
    return 1


def echo(conn: Any) -> None:
    """Pipe ping-pong peer: send back everything received until ``None``."""
    while True:
        msg = conn.recv()
        if msg is None:
            conn.close()
            return
        conn.send(msg)


def size_of(blob: Any) -> int:
    """[pool_1mb]: the item's length (the result is tiny; the 1 MB goes one way)."""
    return len(blob)
