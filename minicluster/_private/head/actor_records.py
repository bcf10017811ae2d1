"""The head's record of one actor (driver process, under the head's lock).

Written only by the actor flow (actor_flow.py); read by the state recorder
(`list_actors`) and the fault injector. Its state is one of states.ActorState
and changes only through `set_state`, which checks states.ACTOR_TRANSITIONS.
"""

from __future__ import annotations

import collections
from typing import Any, Deque, Dict, Optional, Set

from minicluster._private.common.ids import job_id
from minicluster._private.head.states import (
    ACTOR_TRANSITIONS,
    ALIVE,
    DEAD,
    PENDING_CREATION,
    RESTARTING,
    ActorState,
    IllegalTransition,
)
from minicluster._private.head.task_records import TaskRecord

__all__ = ["ActorRecord", "PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"]


class ActorRecord:
    """What the head knows about one actor.

    By state (head_state.py checks these):
        PENDING_CREATION, RESTARTING  worker None; its creation task open (in head.tasks)
        ALIVE      worker is a live worker whose `actor` is this record; `held` its resources
        DEAD       worker None, pending and inflight empty, held empty; death_cause set
    inflight calls are RUNNING at `worker`; pending calls wait for their arguments
    (PENDING_ARGS_AVAIL) or their turn (PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY).
    """

    def __init__(self, actor_id: bytes, meta: Dict[str, Any], creation: TaskRecord, owner: bytes) -> None:
        self.actor_id = actor_id
        self.meta = meta
        self.creation = creation  #: the creation task, run again on each restart
        self.owner = owner  #: worker id (or DRIVER) that created it; its death ends the actor
        self.state: ActorState = PENDING_CREATION  #: changed only by set_state
        self.worker: Optional[Any] = None  #: its WorkerRecord while ALIVE
        self.num_restarts = 0
        self.pending: Deque[TaskRecord] = collections.deque()  #: calls not yet sent, in order
        self.inflight: Dict[bytes, TaskRecord] = {}  #: calls sent to the worker
        self.callers: Set[bytes] = set()  #: every process (worker id) that called it: order is per caller
        #: queued calls with a failed argument, held while the actor (re)starts (see actor_flow.py)
        self.failed_args: Set[bytes] = set()
        self.death_cause = ""
        self.init_failed = False
        self.kill_requested: Optional[bool] = None  #: set by kill(): no_restart (cleared by a restart)
        self.kill_reason = ""  #: why it was killed: `ray.kill`, or its owner died
        self.creation_pinned = False  #: the head pins its creation result (constructor running, or detached)
        self.out_of_scope = False  #: no handle is left: it ends once its submitted calls are done
        self.held: Dict[str, float] = {}  #: resources it holds while alive
        self.node_id: Optional[bytes] = None  #: where it runs, or last ran (state API)
        self.pid: Optional[int] = None

    def set_state(self, state: ActorState) -> None:
        """Move to `state` (a legal move, else IllegalTransition)."""
        if state not in ACTOR_TRANSITIONS[self.state]:
            raise IllegalTransition("actor", f"actor {self.meta['class_name']} ({self.actor_id.hex()})",
                                    self.state, state)
        self.state = state

    @property
    def name(self) -> Optional[str]:
        return self.meta.get("name")

    def state_row(self) -> Dict[str, Any]:
        """Its `list_actors` row, with Ray's ActorState fields."""
        meta = self.meta
        strategy = self.creation.spec.strategy
        return {
            "actor_id": self.actor_id.hex(),
            "class_name": meta["class_name"],
            "state": self.state,
            "job_id": job_id().hex(),
            "name": meta.get("name") or "",
            "node_id": self.node_id.hex() if self.node_id is not None else None,
            "pid": self.pid,
            "ray_namespace": meta.get("namespace"),
            "num_restarts": self.num_restarts,
            "death_cause": self.death_cause or None,
            "is_detached": meta["detached"],
            "required_resources": dict(self.creation.spec.resources),
            "placement_group_id": strategy[1].hex() if strategy[0] == "PG" else None,
            "repr_name": "",
        }

    def restarts_left(self) -> bool:
        max_restarts = self.meta["max_restarts"]
        return max_restarts == -1 or self.num_restarts < max_restarts
