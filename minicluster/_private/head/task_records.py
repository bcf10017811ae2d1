"""The head's record of each task and of each of its attempts.

Runs in the driver process, under the head's lock. One TaskRecord per task,
one AttemptRecord per attempt (0, 1, ...): the state API and the timeline
read these while the task is pending or running. When it finishes, a compact
copy goes to the bounded TaskHistory (task_history.py) and the record itself
is dropped, unless lineage keeps it to rebuild the task's results; so a long
job keeps a small, steady memory footprint.

When an attempt ends (it failed and will be retried, or the task finished)
the TaskRecord adds itself to the head's `task_changes` set; the state
recorder (state_recorder.py) drains that set on a timer and journals those
tasks' attempt rows. Tasks still pending or running are found by the
recorder's own scan of the head's live tasks, so the hot path of a task
costs one set insertion here.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Set, Tuple

from minicluster._private.common.task_spec import stream_item_id
from minicluster._private.head.states import (
    FAILED,
    NEW_ATTEMPT_FROM,
    PENDING_ARGS_AVAIL,
    RUNNING,
    STATES,
    TASK_TRANSITIONS,
    TERMINAL,
    IllegalTransition,
    TaskState,
)

__all__ = ["AttemptRecord", "TaskRecord", "STATES", "TERMINAL", "attempt_events"]


def attempt_events(state: str, creation: Optional[float], start: Optional[float],
                   end: Optional[float]) -> List[tuple]:
    """Ray's `events` of an attempt, as (state, time): when it was created, started running, ended.

    Only these three moments are kept per attempt. Keeping every state change's time
    cost the hot path more than the 5% budget of recording (an object per change, and
    longer garbage-collector passes over the 100k remembered tasks).
    """
    events = [(PENDING_ARGS_AVAIL, creation)]
    if start is not None:
        events.append((RUNNING, start))
    elif state not in TERMINAL and state != PENDING_ARGS_AVAIL:
        events.append((state, None))
    if state in TERMINAL:
        events.append((state, end))
    return events


class AttemptRecord:
    __slots__ = ("attempt_number", "state", "node_id", "worker_id", "error_type", "error_message",
                 "creation_time", "start_time", "end_time", "injected")

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number
        #: changed only by its TaskRecord, through the transition check (states.TASK_TRANSITIONS)
        self.state: TaskState = PENDING_ARGS_AVAIL
        self.node_id: Optional[bytes] = None
        self.worker_id: Optional[bytes] = None
        self.error_type: Optional[str] = None
        self.error_message: Optional[str] = None
        self.creation_time = time.time()
        self.start_time: Optional[float] = None
        self.end_time: Optional[float] = None
        #: set when a test's fault plan injected a fault into this attempt (minicluster.testing);
        #: its failure message then says so
        self.injected: Optional[str] = None

    @property
    def events(self) -> List[tuple]:
        """(state, time) of when it was created, started running and ended (attempt_events)."""
        return attempt_events(self.state, self.creation_time, self.start_time, self.end_time)


class TaskRecord:
    """One task: its spec, its attempts, and where it is now.

    Its state is its last attempt's (`state`, one of states.TaskState); it changes only
    through set_state / fail_attempt / new_attempt / close, which check the move against
    states.TASK_TRANSITIONS. Where the task is, by state (invariants.py checks these):

        PENDING_ARGS_AVAIL       deps_waiting > 0 dependents entries name it (objects' `dependents`)
        PENDING_NODE_ASSIGNMENT  in head.ready[shape]; node and worker are None
        SUBMITTED_TO_WORKER      node set, holding resources there; in node.waiting (worker None)
                                 or pipelined in worker.queue[1:] (worker set)
        PENDING_ACTOR_..._ORDERING  an actor call in its actor's `pending` queue
        RUNNING                  worker set: first in worker.queue, or in its actor's `inflight`
        FINISHED / FAILED        closed: `finished`, out of head.tasks (maybe kept as lineage)

    The flags beside the state, and their legal combinations:

        finished      True exactly when closed (close() sets it, new_attempt() clears it for a
                      retry, a lineage rebuild or an actor restart); so finished implies a
                      terminal state, and a terminal state without `finished` exists only
                      between fail_attempt() and the new_attempt() that always follows it
        cancelled     cancel() asked for it; any state. A cancelled task still open ends
                      FAILED (TASK_CANCELLED) unless its result was already on its way (FINISHED)
        cancel_children  the cancel was recursive (or its owner died): the tasks it submitted are
                      cancelled too, also those it submits after the cancel; implies cancelled
        owner_dead    its owner died: implies cancelled (once open); its results are dropped
        pinned        its argument refs are pinned: True from start_task to close
        lineage_held  it holds lineage refs on its arguments (lineage.py): only after it
                      FINISHED once, kept until its lineage record goes
    """

    __slots__ = ("spec", "attempt", "retries_left", "submitter_node", "node", "worker", "deps_waiting",
                 "attempts", "cancelled", "cancel_children", "owner_dead", "finished", "pinned", "shape",
                 "live_returns", "lineage_held", "history_entry", "changes", "items")

    def __init__(self, spec: Any, max_retries: int, submitter_node: bytes, changes: Optional[Set[Any]] = None) -> None:
        self.spec = spec
        self.attempt = 0
        self.retries_left = max_retries
        self.submitter_node = submitter_node
        self.node: Any = None  #: NodeRecord it is placed on (from placement until a new attempt)
        self.worker: Any = None  #: WorkerRecord it was sent to, until it reports or is taken back
        self.deps_waiting = 0  #: arguments not ready yet (PENDING_ARGS_AVAIL only)
        self.attempts: List[AttemptRecord] = [AttemptRecord(0)]
        self.cancelled = False
        self.cancel_children = False
        self.owner_dead = False
        self.finished = False
        self.pinned = False
        self.shape = _shape_of(spec)
        self.live_returns = 0  #: while kept as lineage: how many of its results still exist
        self.lineage_held = False  #: holds lineage refs on its arguments
        self.history_entry = -1  #: its entry number in the TaskHistory once it finished, else -1
        self.items = 0  #: a generator task: how many items it reported (streams.py)
        #: the head's set of tasks whose attempts ended since the state recorder last looked
        self.changes: Set[Any] = changes if changes is not None else set()

    def output_ids(self) -> Tuple[bytes, ...]:
        """Every object the task makes: its return values, then a generator's items."""
        returns = self.spec.return_ids()
        if not self.items:
            return returns
        task_id = self.spec.task_id
        return returns + tuple(stream_item_id(task_id, index) for index in range(1, self.items + 1))

    @property
    def state(self) -> TaskState:
        return self.attempts[-1].state

    def set_state(self, state: TaskState, node_id: Optional[bytes] = None, worker_id: Optional[bytes] = None) -> None:
        """Move the current attempt to `state` (a legal move, else IllegalTransition).

        The one place an attempt's state changes (fail_attempt and close come through here;
        new_attempt starts a fresh attempt, checked against NEW_ATTEMPT_FROM)."""
        record = self.attempts[-1]
        if state not in TASK_TRANSITIONS[record.state]:
            raise IllegalTransition("task", self._name(), record.state, state)
        record.state = state
        if node_id is not None:
            record.node_id = node_id
        if worker_id is not None:
            record.worker_id = worker_id
            record.start_time = time.time()

    def record_times(self, start: float, end: float) -> None:
        record = self.attempts[-1]
        record.start_time = start
        record.end_time = end

    def fail_attempt(self, error_type: str, message: str) -> None:
        """The current attempt failed and the task goes on: new_attempt() must follow at once."""
        self.set_state(FAILED)
        record = self.attempts[-1]
        record.error_type = error_type
        record.error_message = message if record.injected is None else _with_note(message, record.injected)
        record.end_time = record.end_time or time.time()
        self.changes.add(self)

    def new_attempt(self) -> None:
        """Open the next attempt (PENDING_ARGS_AVAIL): a retry, a lineage rebuild, an actor restart."""
        old = self.attempts[-1].state
        if old not in NEW_ATTEMPT_FROM:
            raise IllegalTransition("task", self._name(), old, "a new attempt")
        self.attempt += 1
        self.attempts.append(AttemptRecord(self.attempt))
        self.finished = False

    def close(self, state: TaskState, error_type: Optional[str], message: Optional[str]) -> None:
        """The task ends, FINISHED or FAILED, with this attempt."""
        if self.finished or state not in TERMINAL:
            raise IllegalTransition("task", self._name(), self.state + (" (closed)" if self.finished else ""), state)
        self.set_state(state)
        self.finished = True
        self.changes.add(self)
        record = self.attempts[-1]
        record.error_type = error_type
        record.error_message = message if record.injected is None else _with_note(message, record.injected)
        record.end_time = record.end_time or time.time()

    def _name(self) -> str:
        return f"task {self.spec.name} ({self.spec.task_id.hex()}) attempt {self.attempt}"


# Every task of one shape shares one shape tuple: a task kept as lineage lives long, and its
# own copy (three tuples) was about 200 of the roughly 1,200 bytes it costs. Bounded: past
# SHAPES_KEPT distinct shapes (strategies naming many nodes) it starts over.
SHAPES_KEPT = 10_000
_shapes: Dict[tuple, tuple] = {}


def _shape_of(spec: Any) -> tuple:
    """(sorted resources, strategy, function[, label selector, runtime_env]): the key of the ready
    queue a task waits in (task_flow.py), its scheduling class as Ray calls it."""
    shape = (tuple(sorted(spec.resources.items())), spec.strategy, spec.function_id)
    if spec.label_selector is not None or spec.runtime_env is not None:
        # FIFO per shape: a selector no node matches must not hold up other tasks, and a task
        # pipelined behind another must need the same worker (its runtime_env).
        shape += (spec.label_selector, spec.runtime_env)
    shared = _shapes.get(shape)
    if shared is None:
        if len(_shapes) >= SHAPES_KEPT:
            _shapes.clear()
        shared = _shapes[shape] = shape
    return shared


def _with_note(message: Optional[str], injected: str) -> Optional[str]:
    if message is None:
        return None
    return f"{message} [injected by minicluster.testing: {injected}]"
