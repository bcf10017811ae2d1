"""The event journal: every injected fault that fired, in order, with what, where, when and which task.

Runs in the driver. The journal belongs to a FaultPlan (fault_plan.py); while the
plan is installed, the head's fault injector (injector.py) appends to it from the
head's I/O thread, and the test reads it from its own thread, so every access
takes the journal's lock. Events can also be written, one JSON object a line,
to a file (the session's `logs/faults.jsonl`: the journal of the plan installed
last in that session), and turned into Chrome-trace
instant events to lay over the timeline.

    journal.count("kill_worker")                 # how many workers the plan killed
    journal.events(kind="kill_node")[0].node     # "node-2"
    print(journal.format())                      # a table, as the pytest plugin prints it on failure
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from typing import IO, Any, Dict, Iterator, List, Optional

#: Event kinds, each the name of what happened.
KINDS = ("kill_worker", "kill_node", "stop_node", "resume_node", "raise", "kill_actor",
         "delay_dispatch", "delay_result", "delay_transfer")


@dataclass(frozen=True)
class FaultEvent:
    """One fault that fired."""

    seq: int  #: 1, 2, ... in firing order
    kind: str  #: one of KINDS
    fault: str  #: the planned fault that fired, as `FaultPlan.describe()` lists it ("#2 kill_worker(...)")
    time: float  #: wall clock (time.time()) when the head learnt of it
    elapsed_s: float  #: seconds since the plan was installed
    node: Optional[str] = None  #: node name ("node-1") where it happened
    node_id: Optional[str] = None  #: hex node id
    worker_pid: Optional[int] = None
    task: Optional[str] = None  #: task name, for faults aimed at a task
    task_id: Optional[str] = None  #: hex task id
    attempt: Optional[int] = None  #: the task's attempt number (0, 1, ...)
    point: Optional[str] = None  #: where in the worker it fired (fault_hooks.POINTS), if there
    detail: str = ""  #: anything else: a delay's length, the exception raised, ...

    def line(self) -> str:
        where = " ".join(x for x in (self.node or "", f"pid={self.worker_pid}" if self.worker_pid else "") if x)
        task = f"{self.task} attempt {self.attempt}" if self.task is not None else ""
        point = f"at {self.point}" if self.point else ""
        parts = [f"#{self.seq:<3} {self.elapsed_s:8.3f}s  {self.kind:<14}", where, task, point, self.detail,
                 f"<- {self.fault}"]
        return "  ".join(p for p in parts if p)


class FaultJournal:
    """The fired faults of one plan, in firing order; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: List[FaultEvent] = []
        self._sink: Optional[IO[str]] = None

    # ---- recording (the head's injector) -------------------------------------------

    def record(self, **fields: Any) -> FaultEvent:
        with self._lock:
            event = FaultEvent(seq=len(self._events) + 1, **fields)
            self._events.append(event)
            if self._sink is not None:
                self._sink.write(json.dumps(asdict(event)) + "\n")
            return event

    def write_to(self, path: Optional[str]) -> None:
        """Also write every event, as a JSON line, to `path` (None: stop); the file starts over."""
        with self._lock:
            if self._sink is not None:
                self._sink.close()
                self._sink = None
            if path is not None:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                self._sink = open(path, "w", buffering=1)
                for event in self._events:
                    self._sink.write(json.dumps(asdict(event)) + "\n")

    # ---- queries (the test) -------------------------------------------------------

    def events(self, kind: Optional[str] = None, task: Optional[str] = None,
               node: Optional[str] = None) -> List[FaultEvent]:
        """The events so far, optionally only of one kind, task name, or node (name or hex id)."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown fault event kind {kind!r}; kinds are: {', '.join(KINDS)}")
        with self._lock:
            events = list(self._events)
        return [e for e in events
                if (kind is None or e.kind == kind)
                and (task is None or e.task == task)
                and (node is None or node in (e.node, e.node_id))]

    def count(self, kind: Optional[str] = None, task: Optional[str] = None, node: Optional[str] = None) -> int:
        return len(self.events(kind, task, node))

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def __iter__(self) -> Iterator[FaultEvent]:
        return iter(self.events())

    def format(self) -> str:
        """One line per event; what the pytest plugin shows for a failing test."""
        events = self.events()
        if not events:
            return "(no injected fault fired)"
        return "\n".join(e.line() for e in events)

    def trace_events(self, pid: int = 0) -> List[Dict[str, Any]]:
        """Chrome-trace instant events (microsecond timestamps), one per fault, for the timeline."""
        return [
            {"name": f"injected {e.kind}", "cat": "fault", "ph": "i", "s": "g", "ts": e.time * 1e6,
             "pid": pid, "tid": e.node or "cluster",
             "args": {k: v for k, v in asdict(e).items() if v not in (None, "")}}
            for e in self.events()
        ]
