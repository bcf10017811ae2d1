"""The planned faults: one record per kind, as FaultPlan builds them and the injector fires them.

Plain data, shared by fault_plan.py (which validates and builds them) and
injector.py (which matches them against the head's events and fires them).
Runs in the driver.
"""

from __future__ import annotations

import collections
import difflib
from dataclasses import dataclass, field
from typing import Any, Counter, FrozenSet, Optional, Set, Tuple, Union

from minicluster._private.wire import fault_hooks

TASK_POINTS = (fault_hooks.LOAD_ARGS, fault_hooks.START, fault_hooks.BEFORE_STORE)
CHANNELS = ("dispatch", "result", "transfer")

NodeName = Union[str, int, None]
TaskName = Any  # a task name (str: the `name` option, else the function's name) or a remote function


# ==== planned faults ====================================================================


@dataclass(kw_only=True)
class Fault:
    """One planned fault. `fired` counts how often it fired (the injector updates it)."""

    fault_id: int = 0  #: 1, 2, ... in the order the plan got them
    optional: bool = False
    fired: int = 0

    @property
    def kind(self) -> str:
        raise NotImplementedError

    def arguments(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return f"#{self.fault_id} {self.kind}({self.arguments()})" + (" optional" if self.optional else "")


@dataclass(frozen=True)
class TaskSelector:
    """Which task attempts a fault aims at: by name, attempt numbers, and which matching task."""

    name: str  #: the task's name, or the function's module-qualified name if by_function
    by_function: bool
    attempts: Optional[FrozenSet[int]]  #: None: every attempt
    nth: Optional[int]  #: the nth task (1-based, in order of first dispatch) so named; None: all of them

    def matches_name(self, spec: Any) -> bool:
        return (spec.func_name if self.by_function else spec.name) == self.name

    def text(self) -> str:
        attempts = "all" if self.attempts is None else ",".join(str(a) for a in sorted(self.attempts))
        nth = "every" if self.nth is None else str(self.nth)
        return f"{'function' if self.by_function else 'task'}={self.name!r}, attempt={attempts}, nth={nth}"


@dataclass(kw_only=True)
class KillWorker(Fault):
    target: TaskSelector
    at: str

    kind = "kill_worker"  # type: ignore[assignment]

    def arguments(self) -> str:
        return f"{self.target.text()}, at={self.at!r}"


@dataclass(kw_only=True)
class RaiseInTask(Fault):
    target: TaskSelector
    exception: BaseException
    blob: bytes = field(repr=False, default=b"")

    kind = "raise_in_task"  # type: ignore[assignment]

    def arguments(self) -> str:
        return f"{self.target.text()}, exception={self.exception!r}"


@dataclass(kw_only=True)
class NodeFault(Fault):
    """Kill or stop a node, after N tasks finished on it or when a named task starts there."""

    node: NodeName
    after_tasks: Optional[int] = None
    when_task_starts: Optional[TaskSelector] = None
    node_id: Optional[bytes] = None  #: resolved at install; None with when_task_starts: wherever it starts

    def arguments(self) -> str:
        trigger = (f"after_tasks={self.after_tasks}" if self.after_tasks is not None
                   else f"when_task_starts=({self.when_task_starts.text()})")  # type: ignore[union-attr]
        return f"node={self.node!r}, {trigger}"


@dataclass(kw_only=True)
class KillNode(NodeFault):
    kind = "kill_node"  # type: ignore[assignment]


@dataclass(kw_only=True)
class StopNode(NodeFault):
    seconds: float = 0.0

    kind = "stop_node"  # type: ignore[assignment]

    def arguments(self) -> str:
        return f"{super().arguments()}, seconds={self.seconds}"


@dataclass(kw_only=True)
class KillActor(Fault):
    actor: Union[str, bytes]  #: actor name or class name; bytes: the id of a handle
    call: int  #: the nth call sent to the actor (1-based; retried calls count again)
    method: Optional[str]
    at: str

    kind = "kill_actor"  # type: ignore[assignment]

    def arguments(self) -> str:
        actor = self.actor.hex() if isinstance(self.actor, bytes) else repr(self.actor)
        method = f", method={self.method!r}" if self.method else ""
        return f"actor={actor}, call={self.call}{method}, at={self.at!r}"


@dataclass(kw_only=True)
class Delay(Fault):
    channel: str  #: one of CHANNELS
    low_ms: float
    high_ms: float
    task: Optional[TaskSelector] = None  #: only these tasks; None: all (and the driver's transfers)

    kind = "delay"  # type: ignore[assignment]

    def arguments(self) -> str:
        task = f", {self.task.text()}" if self.task else ""
        return f"{self.channel!r}, ms=({self.low_ms:g}, {self.high_ms:g}){task}"


@dataclass(kw_only=True)
class Chaos(Fault):
    """Random kills at a rate, counted in tasks: reproducible from the seed."""

    kill_worker_every: Optional[int] = None  #: on average every N task dispatches, kill the worker running it
    kill_node_every: Optional[int] = None  #: on average every N finished tasks, kill a random node
    max_node_kills: int = 1
    points: Tuple[str, ...] = TASK_POINTS
    actors: bool = False  #: also aim at actor calls (their actors then restart or die)

    kind = "chaos"  # type: ignore[assignment]

    def arguments(self) -> str:
        parts = []
        if self.kill_worker_every:
            parts.append(f"kill_worker_every={self.kill_worker_every}")
        if self.kill_node_every:
            parts.append(f"kill_node_every={self.kill_node_every}, max_node_kills={self.max_node_kills}")
        parts.append(f"points={self.points}")
        if self.actors:
            parts.append("actors=True")
        return ", ".join(parts)


# ==== what ran: the hints of an unfired fault ==============================================

#: At most this many names are listed in an unfired fault's hint.
NAMES_LISTED = 20


@dataclass
class SeenNames:
    """The names of what ran while a plan was installed (the injector notes each dispatch), so that
    a fault that never fired can say why: a typo in a name is the usual reason."""

    tasks: Counter[str] = field(default_factory=collections.Counter)  #: task name -> attempts dispatched
    functions: Set[str] = field(default_factory=set)  #: module-qualified function names
    actors: Set[str] = field(default_factory=set)  #: actor names and class names that got calls

    def task(self, name: str, func_name: str) -> None:
        self.tasks[name] += 1
        self.functions.add(func_name)

    def actor(self, name: Optional[str], class_name: Optional[str]) -> None:
        self.actors.update(n for n in (name, class_name) if n)

    def hint(self, fault: Fault) -> str:
        """Why `fault` may not have fired, from the names that ran; "" if the names say nothing."""
        selector = getattr(fault, "target", None) or getattr(fault, "when_task_starts", None) \
            or getattr(fault, "task", None)
        if isinstance(selector, TaskSelector):
            if selector.by_function:
                return _missing("function", selector.name, self.functions)
            if selector.name not in self.tasks:
                return _missing("task", selector.name, self.tasks)
            return (f"{self.tasks[selector.name]} attempt(s) of tasks named {selector.name!r} ran, "
                    f"none matching nth/attempt ({selector.text()})")
        if isinstance(fault, KillActor) and isinstance(fault.actor, str) and fault.actor not in self.actors:
            return _missing("actor (name or class)", fault.actor, self.actors)
        return ""


def _missing(what: str, name: str, seen: Any) -> str:
    names = sorted(seen)
    if not names:
        return f"no {what} named {name!r} ran: none at all ran while the plan was installed"
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    listed = ", ".join(names[:NAMES_LISTED]) + (f", ... ({len(names)} in all)" if len(names) > NAMES_LISTED else "")
    suggestion = f"; did you mean {close[0]!r}?" if close else "."
    return f"no {what} named {name!r} ran{suggestion} These ran: {listed}"


# ==== the plan ============================================================================
