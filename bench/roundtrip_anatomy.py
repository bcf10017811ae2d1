"""Where a round trip's time goes: `get(f.remote(i))` and `get(actor.f.remote(i))`, segment by segment.

    python -m bench.roundtrip_anatomy            # a task round trip
    python -m bench.roundtrip_anatomy --actor    # an actor call round trip
    python -m bench.roundtrip_anatomy --calls 5000 --cpus 2
    python -m bench.roundtrip_anatomy --cpu [--actor]   # CPU time per round trip, per thread

A diagnostic beside bench/run.py (which measures round trips against Ray and
ProcessPoolExecutor): it wraps a few private functions of the driver and of the
worker with timestamps (time.perf_counter_ns is CLOCK_MONOTONIC, one clock for
every process of the machine) and prints the median of each segment:

    driver  remote()            D0  -> D1   the caller's side: options, arguments, TaskSpec
    head    submit              D1  -> D2   record and place the task, Exec written to the socket
    kernel  to the worker       D2  -> W1   the worker (its main thread, idle) has decoded the Exec
    worker  handoff             W1  -> W2   the Exec taken from the worker's queue of tasks
    worker  run                 W2  -> W3   arguments, the call, its result stored, Done built
    worker  send                W3  -> W4   Done written to the socket
    kernel  to the head         W4  -> H1   the head's I/O thread has read it
    head    done, until wake    H1  -> H2   settle the task until the waiting get() is woken
    head    done, the rest      H2  -> H3   the rest of the message's handling (the I/O thread keeps the GIL)
    driver  get() returns       H3  -> D3   the caller wakes, reads the value, returns

The wrappers cost a few microseconds each, so the total is a little above
bench/run.py's [roundtrip] / [actor_call].

`--cpu` wraps nothing: it runs batches of 3,000 round trips and prints, per round trip, the
wall time and the CPU time of the driver's main thread, of the head's I/O thread and of the
worker process (all its threads; its idle spin, node/inbox.py, counts). On a shared host
the wall time of a run moves by 30% with the host's load; which thread spends how much CPU
moves much less, so compare those. It names private functions on purpose (it is a profile,
not a test); when they move, move it with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Dict, List

BATCH = 3000  #: round trips per batch of --cpu

SEGMENTS = [
    ("driver", "remote()", "D0", "D1"),
    ("head", "submit", "D1", "D2"),
    ("kernel", "to the worker", "D2", "W1"),
    ("worker", "handoff", "W1", "W2"),
    ("worker", "run", "W2", "W3"),
    ("worker", "send", "W3", "W4"),
    ("kernel", "to the head", "W4", "H1"),
    ("head", "done, until wake", "H1", "H2"),
    ("head", "done, the rest", "H2", "H3"),
    ("driver", "get() returns", "H3", "D3"),
]


def install_worker_stamps() -> bool:
    """(in a worker) Stamp W1..W4 of each task, keyed by task id, in builtins._anatomy."""
    import builtins

    from minicluster._private.node import inbox as inbox_module
    from minicluster._private.node import worker as worker_module
    from minicluster._private.wire import protocol

    now = time.perf_counter_ns
    stamps: List[Dict[str, int]] = []
    current: Dict[str, int] = {}
    builtins._anatomy = stamps  # type: ignore[attr-defined]
    run = worker_module.Worker.execute

    def execute(self, request):  # type: ignore[no-untyped-def]
        current["W2"] = now()
        current["tid"] = request.task_id  # type: ignore[assignment]
        result = run(self, request)
        current["W3"] = now()
        return result

    send_list = protocol.Connection.send_list

    def sending(self, messages):  # type: ignore[no-untyped-def]
        send_list(self, messages)
        if "W3" in current:
            current["W4"] = now()
            stamps.append(dict(current))
            current.clear()

    dispatch = inbox_module.Inbox._dispatch

    def dispatched(self, frame):  # type: ignore[no-untyped-def]
        dispatch(self, frame)
        if "W1" not in current and not self.tasks.empty():
            current["W1"] = now()

    worker_module.Worker.execute = execute
    protocol.Connection.send_list = sending
    inbox_module.Inbox._dispatch = dispatched
    return True


def worker_stamps() -> list:
    import builtins

    return list(getattr(builtins, "_anatomy", []))


def install_driver_stamps(current: Dict[str, int]) -> None:
    from minicluster._private.client import driver
    from minicluster._private.head import head
    from minicluster._private.wire import hub

    now = time.perf_counter_ns
    submit = driver.DriverClient.submit

    def submitting(self, spec, blob):  # type: ignore[no-untyped-def]
        current["tid"] = spec.task_id
        current["D1"] = now()
        return submit(self, spec, blob)

    send_raw = hub.Peer.send_raw

    def sent(self, data):  # type: ignore[no-untyped-def]
        send_raw(self, data)
        current.setdefault("D2", now())

    on_messages = head.Head.on_messages

    def handled(self, peer, messages):  # type: ignore[no-untyped-def]
        current.setdefault("H1", now())
        on_messages(self, peer, messages)
        current.setdefault("H3", now())

    fire = driver._Wakeup.fire

    def fired(self, waiter=None):  # type: ignore[no-untyped-def]
        current.setdefault("H2", now())
        fire(self, waiter)

    driver.DriverClient.submit = submitting
    hub.Peer.send_raw = sent
    head.Head.on_messages = handled
    driver._Wakeup.fire = fired


def cpu_per_round_trip(ray, call, pid_call, batches: int) -> None:  # type: ignore[no-untyped-def]
    """Print the medians over `batches` of BATCH round trips: wall, and CPU per thread (the
    kernel counts threads' CPU in 10 ms ticks: a batch of 3,000 resolves ~3 us per round trip)."""
    import psutil

    from minicluster._private.client import context

    worker = psutil.Process(ray.get(pid_call.remote()))
    driver = psutil.Process()
    hub_id = context.client().head.hub.thread.native_id

    def hub_cpu() -> float:
        return next(t.user_time + t.system_time for t in driver.threads() if t.id == hub_id)

    def worker_cpu() -> float:
        times = worker.cpu_times()
        return times.user + times.system

    for i in range(1000):
        ray.get(call.remote(i))
    rows = []
    for _ in range(batches):
        before = (time.perf_counter(), time.thread_time(), hub_cpu(), worker_cpu())
        for i in range(BATCH):
            ray.get(call.remote(i))
        after = (time.perf_counter(), time.thread_time(), hub_cpu(), worker_cpu())
        rows.append([(b - a) * 1e6 / BATCH for a, b in zip(before, after)])
    names = ["wall", "driver main thread", "head I/O thread", "worker process"]
    for column, name in enumerate(names):
        print(f"  {name:22s} {statistics.median(row[column] for row in rows):7.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actor", action="store_true", help="an actor call instead of a task")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--cpus", type=int, default=1, help="num_cpus of the one node")
    parser.add_argument("--cpu", action="store_true", help="CPU time per round trip and thread, no stamps")
    parser.add_argument("--batches", type=int, default=8, help="--cpu: batches of 3,000 round trips")
    args = parser.parse_args()

    import minicluster as ray

    ray.init(num_cpus=args.cpus)

    @ray.remote
    def f(i: int) -> int:
        return i

    @ray.remote
    def stamp_worker() -> bool:
        return install_worker_stamps()

    @ray.remote
    def stamps_of_worker() -> list:
        return worker_stamps()

    @ray.remote
    class Echo:
        def f(self, i: int) -> int:
            return i

        def stamp_worker(self) -> bool:
            return install_worker_stamps()

        def stamps_of_worker(self) -> list:
            return worker_stamps()

        def pid(self) -> int:
            return os.getpid()

    @ray.remote
    def pid() -> int:
        return os.getpid()

    if args.actor:
        echo = Echo.remote()
        call, install, collect, pid_call = echo.f, echo.stamp_worker, echo.stamps_of_worker, echo.pid
    else:
        call, install, collect, pid_call = f, stamp_worker, stamps_of_worker, pid
    if args.cpu:
        print(("actor call get(a.f.remote(i))" if args.actor else "task get(f.remote(i))")
              + f": medians of {args.batches} batches of {BATCH:,} round trips, per round trip")
        cpu_per_round_trip(ray, call, pid_call, args.batches)
        ray.shutdown()
        return
    for i in range(300):
        ray.get(call.remote(i))
    ray.get(install.remote())  # (a task lands on the worker the round trips use: the one most recently idle)
    current: Dict[str, int] = {}
    install_driver_stamps(current)
    rows = []
    for i in range(args.calls):
        current.clear()
        current["D0"] = time.perf_counter_ns()
        ray.get(call.remote(i))
        current["D3"] = time.perf_counter_ns()
        rows.append(dict(current))
    by_task = {s["tid"]: s for s in ray.get(collect.remote())}
    ray.shutdown()

    joined = [{**row, **by_task[row["tid"]]} for row in rows if row.get("tid") in by_task]
    needed = {"D0", "D1", "D2", "W1", "W2", "W3", "W4", "H1", "H2", "H3", "D3"}
    joined = [row for row in joined if needed <= row.keys()]
    what = "actor call get(a.f.remote(i))" if args.actor else "task get(f.remote(i))"
    print(f"{what}: {len(joined)} of {args.calls} round trips stamped; medians in microseconds")
    for where, name, start, end in SEGMENTS:
        median = statistics.median((row[end] - row[start]) / 1000 for row in joined)
        print(f"  {where:7s} {name:18s} {start:>2}->{end:<2} {median:7.1f}")
    total = statistics.median((row["D3"] - row["D0"]) / 1000 for row in joined)
    print(f"  {'total':7s} {'':18s} D0->D3 {total:7.1f}")


if __name__ == "__main__":
    main()
