"""Task and actor states: the closed sets of names and the legal moves between them.

Pure data, no I/O; imported by the head's records (task_records.py,
actor_records.py), which run in the driver process under the head's lock.

The names are Ray's (`ray.util.state` prints them; so do we, as plain strings:
a state is a `Literal`, not an Enum, so rows, journals and f-strings show the
same text as before and a check costs two hash look-ups of interned strings).

Every change of a task attempt's state goes through `TaskRecord.set_state` /
`close` / `fail_attempt` / `new_attempt`, every change of an actor's through
`ActorRecord.set_state`; each checks its move against the tables below and
raises IllegalTransition otherwise.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Literal, Tuple

# ---- tasks --------------------------------------------------------------------------

TaskState = Literal[
    "PENDING_ARGS_AVAIL",  # waiting for its arguments (lost ones are being rebuilt)
    "PENDING_NODE_ASSIGNMENT",  # in a ready queue (head.ready), waiting for free resources
    "SUBMITTED_TO_WORKER",  # placed (resources held): in its node's `waiting` or pipelined behind a busy worker
    "PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY",  # actor call with its arguments, queued at its actor
    "RUNNING",  # sent to a worker and its turn there: normal tasks first in worker.queue, calls in actor.inflight
    "FINISHED",
    "FAILED",
]

PENDING_ARGS_AVAIL: TaskState = "PENDING_ARGS_AVAIL"
PENDING_NODE_ASSIGNMENT: TaskState = "PENDING_NODE_ASSIGNMENT"
SUBMITTED_TO_WORKER: TaskState = "SUBMITTED_TO_WORKER"
PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY: TaskState = "PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY"
RUNNING: TaskState = "RUNNING"
FINISHED: TaskState = "FINISHED"
FAILED: TaskState = "FAILED"

# Ray's order of a task's usual path (task_history.py stores an index into this; actor
# calls' ordering state comes last so older indices keep their meaning).
STATES: Tuple[TaskState, ...] = (PENDING_ARGS_AVAIL, PENDING_NODE_ASSIGNMENT, SUBMITTED_TO_WORKER, RUNNING,
                                 FINISHED, FAILED, PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY)
TERMINAL: Tuple[TaskState, ...] = (FINISHED, FAILED)

# The legal moves of one attempt's state, written down once: from -> the states it may go to.
# Why each move exists (which flow makes it) is noted on its line.
TASK_TRANSITIONS: Dict[str, FrozenSet[str]] = {
    PENDING_ARGS_AVAIL: frozenset({
        PENDING_NODE_ASSIGNMENT,  # arguments ready: queued for placement (task_flow.args_ready)
        PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY,  # actor call's arguments ready (actor_flow)
        FAILED,  # an argument is an error or freed; cancelled; its actor is dead
    }),
    PENDING_NODE_ASSIGNMENT: frozenset({
        SUBMITTED_TO_WORKER,  # placed on a node (task_placement.schedule / pipeline)
        FAILED,  # cancelled, or unschedulable (hard affinity to a dead node)
    }),
    SUBMITTED_TO_WORKER: frozenset({
        RUNNING,  # handed to an idle worker, or its turn came behind a pipelined one
        PENDING_NODE_ASSIGNMENT,  # taken back before it started: worker died/retired/blocked, node died
        PENDING_ARGS_AVAIL,  # taken back, and an argument is gone meanwhile (it waits for the rebuild)
        FAILED,  # cancelled before it started
    }),
    PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY: frozenset({
        RUNNING,  # sent to the actor's worker, in submission order (actor_flow.dispatch)
        FAILED,  # cancelled, or its actor died for good
    }),
    RUNNING: frozenset({
        FINISHED,
        FAILED,  # the task raised, was cancelled, or its worker died (a retry opens a new attempt)
        PENDING_ARGS_AVAIL,  # the worker found an argument's copy gone (ARG_LOST): same attempt waits
        PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY,  # sent to an actor that died before starting it
    }),
    FINISHED: frozenset(),
    FAILED: frozenset(),
}

# A new attempt (TaskRecord.new_attempt, starting at PENDING_ARGS_AVAIL) may follow only an
# ended one: a retry after FAILED, a lineage rebuild or an actor restart after FINISHED.
NEW_ATTEMPT_FROM: FrozenSet[str] = frozenset(TERMINAL)

# ---- actors -------------------------------------------------------------------------

# Ray also has DEPENDENCIES_UNREADY (creation arguments not ready); minicluster reports
# PENDING_CREATION for that time too, so the name is not part of the type.
ActorState = Literal["PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"]

PENDING_CREATION: ActorState = "PENDING_CREATION"
ALIVE: ActorState = "ALIVE"
RESTARTING: ActorState = "RESTARTING"
DEAD: ActorState = "DEAD"

ACTOR_TRANSITIONS: Dict[str, FrozenSet[str]] = {
    PENDING_CREATION: frozenset({ALIVE, DEAD}),  # constructor returned / raised, killed, or unplaceable
    ALIVE: frozenset({RESTARTING, DEAD}),  # its worker died with / without restarts left; killed
    RESTARTING: frozenset({ALIVE, DEAD}),
    DEAD: frozenset(),
}


class IllegalTransition(AssertionError):
    """A record was asked to move between two states that the tables above do not connect: a head bug."""

    def __init__(self, what: str, name: str, old: str, new: str) -> None:
        super().__init__(f"illegal {what} state change of {name}: {old} -> {new}")
        self.old, self.new = old, new
