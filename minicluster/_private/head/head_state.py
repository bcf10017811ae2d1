"""The head's state: every record of a session, in one object, with the invariants it keeps.

Lives in the driver process, guarded by the head's lock (head.py): every read
and write happens with it held, from the user's threads or the hub thread.
The flows (task_flow.py, actor_flow.py, waiting.py, recovery.py) change it;
nothing else writes it (the state recorder and fault injector only read).

Each field's comment says who writes it, what it maps, and what must be true
whenever the lock is released; `invariants.py` checks them (Head.validate_state).
The few methods here only read the state (queries several flows share).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from minicluster._private.common import config
from minicluster._private.common.task_spec import FIRST_RETURN
from minicluster._private.head.actor_records import ActorRecord
from minicluster._private.head.lineage import Lineage, arguments_of
from minicluster._private.head.object_directory import READY, ObjectDirectory, ObjectEntry
from minicluster._private.head.placement_groups import PlacementGroups
from minicluster._private.head.scheduler import Scheduler
from minicluster._private.head.task_history import TaskHistory
from minicluster._private.head.task_records import TaskRecord
from minicluster._private.head.virtual_nodes import NodeRecord, WorkerRecord
from minicluster._private.store import object_store
from minicluster._private.store.serialization import error_blob
from minicluster._private.wire import fault_hooks
from minicluster._private.wire import messages as msg
from minicluster.exceptions import ObjectLostError, ReferenceCountingAssertionError


@dataclass(eq=False)
class HeadState:
    #: the session (constant): its layout says where each node's store is
    session: Any
    #: resources per node (scheduler.py). Written by the task flow (place, acquire, release),
    #: the actor flow (what an actor holds) and Head (nodes come, stop, die). One entry per
    #: node in `nodes`, same alive and stopped flags; on a live node, total - available is
    #: exactly what its node.waiting tasks, its unblocked busy workers' leases (one per
    #: worker.queue) and its ALIVE actors' `held` add up to
    scheduler: Scheduler
    #: placement groups and their bundles' reservations (placement_groups.py), on the scheduler's
    #: nodes: a placed bundle's resources are taken from its node's pool and its group's named
    #: resources added there. Written by Head (create, remove) and the task flow (placing)
    groups: PlacementGroups
    #: every live object (object_directory.py). Borrowers are live workers whose `borrowed`
    #: lists the object; a READY object's store copies are on live nodes; a PENDING task
    #: result's task is open (in `tasks`) or is being rebuilt
    objects: ObjectDirectory
    #: finished tasks kept to rebuild their results (lineage.py). Each record is FINISHED,
    #: not in `tasks`, holds lineage refs, and `live_returns` of its results still exist
    lineage: Lineage
    #: task id -> TaskRecord of every open task (submitted or reopened, not closed). Written
    #: by the task, actor and recovery flows. No task here is `finished`; where each one is
    #: follows from its state (task_records.TaskRecord's docstring)
    tasks: Dict[bytes, TaskRecord] = field(default_factory=dict)
    #: compact copies of finished tasks, for the state API (task_flow writes on close)
    history: TaskHistory = field(default_factory=TaskHistory)
    #: TaskRecords whose attempts ended since the state recorder last looked (it drains it)
    task_changes: Set[TaskRecord] = field(default_factory=set)
    #: parent task id -> ids of tasks it submitted, for recursive cancel. Keys are open tasks
    #: (added only while the parent is open, popped when it closes); children may have closed
    children: Dict[bytes, Set[bytes]] = field(default_factory=lambda: collections.defaultdict(set))
    #: actor id -> ActorRecord, every actor of the session; DEAD ones stay (for list_actors and the
    #: errors of calls on their handles) until more than `max_dead_actors` are dead, oldest first
    actors: Dict[bytes, ActorRecord] = field(default_factory=dict)
    #: ids of the DEAD actors in `actors`, in the order they died (actor_flow._forget_old_dead)
    dead_actors: Deque[bytes] = field(default_factory=collections.deque)
    #: Ray's RAY_maximum_gcs_destroyed_actor_cached_count: dead actor records kept
    max_dead_actors: int = field(default_factory=lambda: config.env(
        "maximum_gcs_destroyed_actor_cached_count", 100_000, int))
    #: creation result id -> actor id, for actors that live while a handle does (not detached):
    #: handles hold a ref to that result; once it is freed the actor ends (actor_flow.py)
    actor_handles: Dict[bytes, bytes] = field(default_factory=dict)
    #: called (by the object directory's deletion hook) with an actor id whose handles are all
    #: gone; set by the actor flow
    on_handles_gone: Optional[Callable[[bytes], None]] = None
    #: called (by the object directory's hook) with a task id when nothing holds that task's
    #: first return value any more: a generator's consumer is gone (streams.py); set by Streams
    on_stream_unheld: Optional[Callable[[bytes], None]] = None
    #: lifetime of actors created without `lifetime=` (JobConfig.default_actor_lifetime);
    #: set by the driver before anything runs
    default_actor_lifetime: str = "non_detached"
    #: (namespace, name) -> actor id of a named actor in `actors` (the newest of that name); an
    #: actor killed without restart, or that exited on purpose, leaves it at once (Ray's rule)
    named_actors: Dict[Tuple[Any, str], bytes] = field(default_factory=dict)
    #: function id -> pickled function or class, sent to a worker before its first task of it
    functions: Dict[bytes, bytes] = field(default_factory=dict)
    #: node id -> NodeRecord, every node of the session (dead ones stay, alive False, with no
    #: workers, idle or waiting tasks). Written by Head (add, stop, resume) and recovery
    nodes: Dict[bytes, NodeRecord] = field(default_factory=dict)
    #: worker id -> WorkerRecord of every connected live worker: not dead, its node alive,
    #: and in its node's `workers`; a node's `idle` workers are among them, each at most once,
    #: with an empty queue and no actor. Written by Head (hello) and recovery (death)
    workers: Dict[bytes, WorkerRecord] = field(default_factory=dict)
    #: scheduling class (resource shape and function) -> FIFO of tasks waiting for placement (task
    #: flow), the least recently served class first. Every open task in PENDING_NODE_ASSIGNMENT is
    #: in ready[task.shape] exactly once; other entries are stale (closed, or placed meanwhile) and
    #: are dropped when met
    ready: "collections.OrderedDict[tuple, Deque[TaskRecord]]" = field(default_factory=collections.OrderedDict)
    #: shapes already warned about as infeasible (warn once each)
    infeasible_warned: Set[tuple] = field(default_factory=set)
    #: function id -> moving average run time (s), to decide what is tiny enough to pipeline
    durations: Dict[bytes, float] = field(default_factory=dict)
    #: object id -> hub timer, while every copy of a wanted object is on a stopped node (recovery)
    fetch_timers: Dict[bytes, Any] = field(default_factory=dict)
    #: how long readers wait for a stopped node's copy before giving up on it (constant)
    fetch_timeout_s: float = field(default_factory=config.fetch_fail_timeout_s)
    #: the job's namespace (init(namespace=...), else anonymous); set by the driver, changed by a job
    #: joining a Cluster; workers ask for it (get_actor, named actors they create)
    namespace: str = "default"
    #: how long an actor ending on purpose may take to exit (its __ray_shutdown__) before it is
    #: killed (Ray's actor_graceful_shutdown_timeout_ms); set by the driver (init, Cluster)
    actor_shutdown_timeout_s: float = 30.0
    #: store bytes of a new node (object_store_memory); set by the driver before nodes start
    default_capacity: int = config.MIN_SHM_BYTES
    #: hooks of the fault plan a test installed (minicluster.testing), else None; set by the injector
    faults: Optional[fault_hooks.HeadHooks] = None
    #: True once the session shut down: nothing new starts
    closed: bool = False
    #: set by the task flow: called when a worker leaving after max_calls no longer owns any
    #: object, so it may exit now (its exit would have taken them along: OwnerDiedError)
    owner_free: Optional[Callable[[WorkerRecord], None]] = None

    # ---- queries several flows share (read only) ---------------------------------------

    def reachable(self, entry: ObjectEntry) -> bool:
        """Whether a reader can fetch the value: inline, or a copy on a node that is not stopped."""
        payload = entry.payload
        if payload is None or payload.kind != "s":
            return True
        nodes = self.nodes
        return any(not nodes[object_store.node_of(loc)].stopped for loc in payload.data)

    def missing_error(self, object_id: bytes) -> BaseException:
        """The error of an object that has no entry: freed by its refs, or lost."""
        if object_id in self.objects.freed:
            return ReferenceCountingAssertionError(object_id.hex())
        return ObjectLostError(object_id.hex())

    def payload_of(self, object_id: bytes) -> msg.Payload:
        """Where a reader finds the value (copies on stopped nodes left out)."""
        entry = self.objects.entries.get(object_id)
        if entry is None:
            return msg.Payload.new(kind="e", data=error_blob(self.missing_error(object_id)))
        entry.unhandled = False  # (an error read by get is handled)
        payload = entry.payload
        if payload is None:  # lost again after the wait ended: the caller asks once more
            return msg.Payload.new(kind="s", data=[], size=entry.size)
        if payload.kind == "s":
            nodes = self.nodes
            reachable = [loc for loc in payload.data if not nodes[object_store.node_of(loc)].stopped]
            return msg.Payload.new(kind="s", data=reachable, size=payload.size)
        return payload

    def ready_ids(self, object_ids: List[bytes]) -> List[bytes]:
        """The ready ones; as in Ray, an error that `wait` reports ready counts as handled."""
        entries = self.objects.entries
        ready = [oid for oid in object_ids if (e := entries.get(oid)) is None or e.state == READY]
        for oid in ready:
            entry = entries.get(oid)
            if entry is not None:
                entry.unhandled = False
        return ready

    def error_blob_of(self, object_id: bytes, entry: ObjectEntry) -> bytes:
        """The pickled error an error object holds, inline or in a store."""
        payload = entry.payload
        if payload.kind != "s":
            return payload.data
        for location in payload.data:  # a large error lives in a store like a large value
            try:
                return bytes(object_store.read(self.session.layout.dir_of(location), object_id))
            except FileNotFoundError:
                continue
        return error_blob(ObjectLostError(object_id.hex()))


def new_state(session: Any, driver_counts: Dict[bytes, int]) -> HeadState:
    """A fresh state; the object directory and lineage call back into it to keep links tidy."""
    state: Optional[HeadState] = None

    def entry_deleted(object_id: bytes, entry: ObjectEntry) -> None:
        # An object is gone for good: lineage kept only for it goes, and its owner forgets it.
        state.lineage.result_deleted(object_id)
        owner = state.workers.get(entry.owner)
        if owner is not None:
            owner.owned.discard(object_id)
            if owner.retiring and not owner.owned and state.owner_free is not None:
                state.owner_free(owner)

    def entry_unheld(object_id: bytes) -> None:
        # Nothing holds it now (lineage may keep the entry): if it is an actor's creation
        # result, the last handle to that actor is gone.
        actor_id = state.actor_handles.pop(object_id, None)
        if actor_id is not None and state.on_handles_gone is not None:
            state.on_handles_gone(actor_id)
        if object_id[24:28] == FIRST_RETURN and state.on_stream_unheld is not None:
            state.on_stream_unheld(object_id[:24])  # (a no-op unless that task is a generator)

    def release_lineage_args(task: TaskRecord) -> None:
        # A lineage record goes: the lineage refs it held on its arguments go with it.
        if task.lineage_held:
            task.lineage_held = False
            for object_id in arguments_of(task):
                state.objects.release_lineage_ref(object_id)

    scheduler = Scheduler()
    state = HeadState(
        session=session,
        scheduler=scheduler,
        groups=PlacementGroups(scheduler),
        objects=ObjectDirectory(driver_counts, session.layout, entry_deleted, entry_unheld),
        lineage=Lineage(config.max_lineage_bytes(), release_lineage_args),
    )
    state.groups.labels_of = lambda node_id: state.nodes[node_id].labels  # (bundle_label_selector)
    state.groups.gpu_ids_of = lambda node_id: state.nodes[node_id].gpu_ids  # (a bundle's own devices)
    return state
