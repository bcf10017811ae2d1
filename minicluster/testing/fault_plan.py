"""FaultPlan: the faults a test wants injected, built in code, fired by the runtime at its own event points.

Runs in the driver (the test's process). A plan is a list of planned faults,
a seed, and the journal of what fired. Installed into a running session, the
head's injector (injector.py) fires each fault at the logical event it names,
never on an outside timer racing the work:

    plan = (FaultPlan(seed=1234)
            .kill_worker("train_step", attempt=0, at="before_store")   # a crash after the work, before the result
            .raise_in_task("load", IOError("disk hiccup"), attempts=[0])  # a transient application error
            .kill_node("random", after_tasks=10)                       # a power cut, after 10 tasks finished there
            .chaos(kill_worker_every=50))                              # and a random worker now and then
    with plan:                                   # installed into the running session; on a clean exit,
        ray.get(pipeline.remote())               # every planned fault must have fired
    plan.journal.count("kill_worker")

Every random choice (which node "random" is, delays, which task chaos kills)
comes from the seed: the same seed and the same program give the same faults.
A planned fault that never fired fails `assert_all_fired()` unless it was
marked `optional=True`; chaos is a rate and is always optional.

Worker-side points (`at=`): "load_args" (while the task's arguments are being
loaded), "start" (arguments ready, before the task's code), "before_store"
(the code returned, its result not yet stored); for generator tasks also
"after_item" with `item=k` (its k-th item was just reported to the caller). Nodes are named by hex id (as
`nodes()` gives them), by start index (0 is the first node, where the driver's
objects live), or "random" (a seeded pick among the nodes other than the
driver's); names are resolved when the plan is installed.
"""

from __future__ import annotations

import os
import random
from typing import Any, Iterable, List, Optional, Tuple, Union

from minicluster._private.store.serialization import cloudpickle_dumps
from minicluster._private.wire import fault_hooks
from minicluster.testing import backend
from minicluster.testing.faults import (
    CHANNELS,
    TASK_POINTS,
    Chaos,
    Delay,
    Fault,
    KillActor,
    KillNode,
    KillWorker,
    NodeName,
    RaiseInTask,
    SeenNames,
    StopNode,
    TaskName,
    TaskSelector,
)
from minicluster.testing.injector import Injector
from minicluster.testing.journal import FaultJournal

#: Environment variable holding the seed of plans made without one (the pytest plugin sets it too).
SEED_ENV = "MINICLUSTER_TEST_SEED"

def default_seed() -> int:
    """The seed from MINICLUSTER_TEST_SEED if set, else a fresh random one (printed with failures)."""
    raw = os.environ.get(SEED_ENV, "").strip()
    if raw:
        try:
            return int(raw, 0)
        except ValueError:
            raise ValueError(f"{SEED_ENV}={raw!r} is not an integer seed") from None
    return random.SystemRandom().randrange(2**31)


class UnfiredFaultsError(AssertionError):
    """Planned faults that never fired (the test did not test what it meant to)."""


class FaultPlan:
    """The faults to inject into a session, the seed of every random choice, and the journal."""

    def __init__(self, seed: Optional[int] = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"FaultPlan(seed={seed!r}): the seed must be an int")
        self.seed: int = default_seed() if seed is None else seed
        self.faults: List[Fault] = []
        self.journal = FaultJournal()
        self.seen = SeenNames()  #: names of the tasks and actors that ran while installed (for unfired faults' hints)
        self.chaos_enabled = True  #: False: chaos() schedules are ignored (the pytest plugin's --minicluster-chaos=off)
        self._injector: Any = None

    # ---- building -----------------------------------------------------------------

    def kill_worker(self, task: TaskName, *, attempt: Optional[int] = 0, at: str = "start",
                    nth: Optional[int] = 1, optional: bool = False, item: Optional[int] = None) -> "FaultPlan":
        """SIGKILL the worker running attempt `attempt` of the `nth` task named `task`, at point `at`.

        `at`: "load_args", "start", "before_store", or for a generator task "after_item"
        with `item=k` (right after its k-th item reached the caller's stream).
        `attempt=None`: every attempt; `nth=None`: every task so named.
        """
        target = _selector("kill_worker", task, None if attempt is None else [attempt], nth)
        if at == fault_hooks.AFTER_ITEM or item is not None:
            if at != fault_hooks.AFTER_ITEM:
                raise ValueError(f"kill_worker(item={item!r}): `item` goes with at='after_item', not at={at!r}")
            _positive("kill_worker", "item", item)
            return self._add(KillWorker(target=target, at=fault_hooks.after_item(item), optional=optional))
        return self._add(KillWorker(target=target, at=_point("kill_worker", at), optional=optional))

    def raise_in_task(self, task: TaskName, exception: Union[BaseException, type], *,
                      attempts: Union[int, Iterable[int], str] = (0,), nth: Optional[int] = 1,
                      optional: bool = False) -> "FaultPlan":
        """Raise `exception` inside the given attempts of the `nth` task named `task`, before its code runs.

        It is the task's own exception: `retry_exceptions` decides on retries.
        attempts=[0] is a transient fault, attempts="all" a permanent one.
        """
        if isinstance(exception, type) and issubclass(exception, BaseException):
            exception = exception("injected by minicluster.testing")
        if not isinstance(exception, BaseException):
            raise TypeError(f"raise_in_task({task!r}, {exception!r}): the exception must be an exception "
                            "instance or class")
        try:
            blob = cloudpickle_dumps(exception)
        except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing here
            raise ValueError(f"raise_in_task({task!r}): the exception {exception!r} cannot be pickled "
                             f"({type(exc).__name__}: {exc})") from None
        if attempts == "all":
            attempt_list: Optional[List[int]] = None
        elif isinstance(attempts, int):
            attempt_list = [attempts]
        elif isinstance(attempts, str):
            raise ValueError(f"raise_in_task({task!r}): attempts must be an int, a list of ints or 'all', "
                             f"not {attempts!r}")
        else:
            attempt_list = list(attempts)
        target = _selector("raise_in_task", task, attempt_list, nth)
        return self._add(RaiseInTask(target=target, exception=exception, blob=blob, optional=optional))

    def kill_node(self, node: NodeName = None, *, after_tasks: Optional[int] = None,
                  when_task_starts: Optional[TaskName] = None, attempt: Optional[int] = 0,
                  nth: Optional[int] = 1, optional: bool = False) -> "FaultPlan":
        """Power cut: kill every process of `node` and lose its store, after `after_tasks` tasks
        finished on it, or when attempt `attempt` of the `nth` task named `when_task_starts` starts
        there (node=None: on whichever node it starts)."""
        return self._add(KillNode(**_node_fault_fields("kill_node", node, after_tasks, when_task_starts, attempt, nth),
                                  optional=optional))

    def stop_node(self, node: NodeName = None, *, seconds: float, after_tasks: Optional[int] = None,
                  when_task_starts: Optional[TaskName] = None, attempt: Optional[int] = 0,
                  nth: Optional[int] = 1, optional: bool = False) -> "FaultPlan":
        """SIGSTOP every process of `node` for `seconds` (a hang, or a partition), then SIGCONT it.
        Triggers as for kill_node."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ValueError(f"stop_node(seconds={seconds!r}): must be a number of seconds > 0")
        return self._add(StopNode(**_node_fault_fields("stop_node", node, after_tasks, when_task_starts, attempt, nth),
                                  seconds=float(seconds), optional=optional))

    def kill_actor(self, actor: Any, *, call: int = 1, method: Optional[str] = None, at: str = "start",
                   optional: bool = False) -> "FaultPlan":
        """Kill the actor's process at its `call`-th call (of `method`, if given), at point `at`.

        `actor`: the actor's name, its class name, or its handle.
        """
        actor_key: Union[str, bytes]
        if isinstance(actor, str):
            actor_key = actor
        elif hasattr(actor, "_actor_id"):
            actor_key = actor._actor_id
        else:
            raise TypeError(f"kill_actor({actor!r}): give the actor's name, class name or handle")
        _positive("kill_actor", "call", call)
        return self._add(KillActor(actor=actor_key, call=call, method=method, at=_point("kill_actor", at),
                                   optional=optional))

    def delay(self, channel: str, *, ms: Tuple[float, float], task: Optional[TaskName] = None,
              optional: bool = False) -> "FaultPlan":
        """Delay by a seeded random amount in [ms[0], ms[1]] milliseconds: "dispatch" (a task's
        message to its worker), "result" (its "done" message back) or "transfer" (each copy
        of an object from another node's store)."""
        if channel not in CHANNELS:
            raise ValueError(f"delay({channel!r}): unknown channel; channels are: {', '.join(CHANNELS)}")
        try:
            low, high = (float(x) for x in ms)
        except (TypeError, ValueError):
            raise ValueError(f"delay({channel!r}, ms={ms!r}): ms must be a pair (low, high) of milliseconds") from None
        if low < 0 or high < low:
            raise ValueError(f"delay({channel!r}, ms={ms!r}): need 0 <= low <= high")
        selector = None if task is None else _selector("delay", task, None, None)
        return self._add(Delay(channel=channel, low_ms=low, high_ms=high, task=selector, optional=optional))

    def chaos(self, *, kill_worker_every: Optional[int] = None, kill_node_every: Optional[int] = None,
              max_node_kills: int = 1, points: Iterable[str] = TASK_POINTS, actors: bool = False) -> "FaultPlan":
        """Random kills at a rate counted in tasks (reproducible from the seed): on average every
        `kill_worker_every` dispatched tasks the worker running one dies (at a random point of
        `points`); on average every `kill_node_every` finished tasks a random node other than the
        driver's dies, at most `max_node_kills` times. Always optional; a later call replaces
        the schedule."""
        if kill_worker_every is None and kill_node_every is None:
            raise ValueError("chaos(): give kill_worker_every and/or kill_node_every")
        if kill_worker_every is not None:
            _positive("chaos", "kill_worker_every", kill_worker_every)
        if kill_node_every is not None:
            _positive("chaos", "kill_node_every", kill_node_every)
        _positive("chaos", "max_node_kills", max_node_kills)
        point_list = tuple(_point("chaos", p) for p in points)
        if not point_list:
            raise ValueError("chaos(points=()): give at least one point")
        return self._add(Chaos(kill_worker_every=kill_worker_every, kill_node_every=kill_node_every,
                               max_node_kills=max_node_kills, points=point_list, actors=actors, optional=True))

    def _add(self, fault: Fault) -> "FaultPlan":
        injector = self._injector
        if injector is None:
            fault.fault_id = len(self.faults) + 1
            self.faults.append(fault)
        else:
            injector.add(fault)  # numbered, resolved and appended under the head's lock
        return self

    # ---- installing -----------------------------------------------------------------

    @property
    def installed(self) -> bool:
        return self._injector is not None

    def install(self) -> "FaultPlan":
        """Make the running session (started by init() in this process) fire this plan's faults."""
        backend.refuse_on_ray("FaultPlan.install")
        if self._injector is not None:
            raise RuntimeError("this fault plan is installed already")
        self._injector = Injector.install(self)
        return self

    def uninstall(self) -> None:
        """Stop firing faults: held messages go out, stopped nodes resume. Idempotent."""
        injector, self._injector = self._injector, None
        if injector is not None:
            injector.uninstall()

    def __enter__(self) -> "FaultPlan":
        return self.install()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.uninstall()
        if exc_type is None:
            self.assert_all_fired()

    # ---- checking -------------------------------------------------------------------

    def unfired(self) -> List[Fault]:
        """Planned faults that never fired and were not marked optional."""
        return [f for f in self.faults if not f.optional and f.fired == 0]

    def assert_all_fired(self) -> None:
        missing = self.unfired()
        if missing:
            lines = "\n".join(f"  {f.describe()}" + _indented(self.seen.hint(f)) for f in missing)
            raise UnfiredFaultsError(
                f"{len(missing)} planned fault(s) never fired (seed {self.seed}); the test did not "
                f"exercise what it planned. Mark a fault optional=True if it may legitimately not fire.\n"
                f"{lines}\nFaults that fired:\n{self.journal.format()}"
            )

    def describe(self) -> str:
        """The plan, one fault a line, with how often each fired."""
        lines = [f"FaultPlan(seed={self.seed})" + ("" if self.chaos_enabled else " [chaos disabled]")]
        lines += [f"  {f.describe()}  fired {f.fired}x" for f in self.faults]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"FaultPlan(seed={self.seed}, faults={len(self.faults)}, fired={len(self.journal)})"


# ==== validation helpers ==================================================================


def _indented(hint: str) -> str:
    return f"\n      {hint}" if hint else ""


def _positive(method: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{method}({name}={value!r}): must be an int >= 1")


def _point(method: str, at: str) -> str:
    if at not in TASK_POINTS:
        raise ValueError(f"{method}(at={at!r}): unknown point; points are: {', '.join(TASK_POINTS)} "
                         "(and, for kill_worker of a generator task, 'after_item' with item=k)")
    return at


def _selector(method: str, task: TaskName, attempts: Optional[List[int]], nth: Optional[int]) -> TaskSelector:
    if isinstance(task, str):
        if not task:
            raise ValueError(f"{method}(): the task name is empty")
        name, by_function = task, False
    elif isinstance(getattr(task, "_func_name", None), str):  # a remote function
        name, by_function = task._func_name, True
    elif isinstance(getattr(getattr(task, "_function", None), "_func_name", None), str):  # f.options(...)
        name, by_function = task._function._func_name, True
    else:
        raise TypeError(f"{method}({task!r}): give a task name or a remote function")
    if attempts is not None:
        for attempt in attempts:
            if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
                raise ValueError(f"{method}({name!r}): attempt numbers are ints >= 0 (0 is the first "
                                 f"attempt), got {attempt!r}")
    if nth is not None:
        _positive(method, "nth", nth)
    return TaskSelector(name, by_function, None if attempts is None else frozenset(attempts), nth)


def _node_fault_fields(method: str, node: NodeName, after_tasks: Optional[int], when_task_starts: Optional[TaskName],
                       attempt: Optional[int], nth: Optional[int]) -> dict:
    if (after_tasks is None) == (when_task_starts is None):
        raise ValueError(f"{method}({node!r}): give exactly one trigger, after_tasks=N or when_task_starts=name")
    if after_tasks is not None:
        _positive(method, "after_tasks", after_tasks)
        if node is None:
            raise ValueError(f"{method}(None, after_tasks={after_tasks}): after_tasks counts tasks on one node; "
                             "name it (hex id, index, or 'random')")
    if node is not None and not isinstance(node, (str, int)) or isinstance(node, bool):
        raise TypeError(f"{method}(node={node!r}): a node is a hex id, a start index, 'random' or None")
    if isinstance(node, int) and node < 0:
        raise ValueError(f"{method}(node={node}): node indexes start at 0")
    selector = None
    if when_task_starts is not None:
        selector = _selector(method, when_task_starts, None if attempt is None else [attempt], nth)
    return {"node": node, "after_tasks": after_tasks, "when_task_starts": selector}


__all__ = ["FaultPlan", "Fault", "UnfiredFaultsError", "default_seed", "SEED_ENV", "TASK_POINTS", "CHANNELS"]
