"""A frozen copy of what the head knows, for tests and benchmarks (`minicluster.testing.snapshot`).

Owns the snapshot records and `take`, which fills them from a Head. `take` runs
under the head's lock (Head.snapshot holds it), so every field describes one
moment. Ids are hex strings, as the public API shows them; nothing here points
back into the head, so a snapshot stays valid after the session ends.
"""

from __future__ import annotations

import collections
import types
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple, Union


@dataclass(frozen=True)
class AttemptSnapshot:
    """One attempt of a task (a `list_tasks` row carries the same fields)."""

    attempt_number: int
    state: str
    node_id: Optional[str]
    worker_id: Optional[str]
    error_type: Optional[str]
    error_message: Optional[str]


@dataclass(frozen=True)
class TaskSnapshot:
    """A task the head knows: unfinished (in its task table), or finished (in its history)."""

    task_id: str
    name: str
    state: str  #: its last attempt's state
    finished: bool
    attempts: Tuple[AttemptSnapshot, ...]


@dataclass(frozen=True)
class NodeSnapshot:
    """One virtual node: its node manager process, its workers and its folders."""

    node_id: str
    name: str  #: node-<index>, in start order
    pid: int  #: its node manager's pid (0 before the process started)
    alive: bool
    stopped: bool  #: SIGSTOPped (minicluster.testing.stop_node)
    worker_pids: Tuple[int, ...]  #: the workers connected to the head now
    store_dir: str  #: its shared-memory object folder
    spill_dir: str  #: where its store spills to disk when over capacity


@dataclass(frozen=True)
class ClusterSnapshot:
    """The session as the head sees it at one moment."""

    session_dir: str
    logs_dir: str
    store_root: str  #: the folder of every node's store folder
    spill_root: str  #: the folder of every node's spill folder
    nodes: Tuple[NodeSnapshot, ...]  #: every node ever started, dead ones too, in start order
    live_tasks: int  #: tasks not finished yet (pending, running, or being rebuilt)
    #: the unfinished tasks; with finished_tasks=True also the finished ones the head keeps, oldest first
    tasks: Tuple[TaskSnapshot, ...]
    finished_tasks_kept: int  #: finished tasks in the head's history (for the state API)
    objects: int  #: entries in the object directory (live objects and lineage-only ones)
    freed_ids_remembered: int  #: ids of freed objects kept to word late errors
    pending_waiters: int  #: get/wait calls blocked on objects not ready yet
    actors: Mapping[str, int]  #: how many actors are in each state (ALIVE, DEAD, ...)
    lineage_records: int  #: finished tasks kept to rebuild lost objects
    lineage_bytes: int  #: their accounted size
    lineage_evicted_remembered: int  #: ids of tasks dropped from lineage, kept to word errors
    fault_plan_installed: bool  #: a FaultPlan's hooks are in the head
    #: placement group id (hex) -> its state (PENDING, CREATED, RESCHEDULING, REMOVED)
    placement_groups: Mapping[str, str] = field(default_factory=dict)
    #: node id (hex) -> what placed placement group bundles reserve there (taken from its pool)
    reserved: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def node(self, node_id: str) -> NodeSnapshot:
        """The node with this hex id; ValueError if the session never had it."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise ValueError(f"no node {node_id} in this session")

    def task(self, ref_or_task_id: Union[Any, str]) -> Optional[TaskSnapshot]:
        """The task that makes an ObjectRef (or of a hex task id), or None if it is not in `tasks`."""
        task_id = ref_or_task_id if isinstance(ref_or_task_id, str) else ref_or_task_id.task_id().hex()
        for task in self.tasks:
            if task.task_id == task_id:
                return task
        return None

    def pids(self) -> Tuple[int, ...]:
        """Every process of the session the head knows: node managers, then workers."""
        return tuple(n.pid for n in self.nodes if n.pid) + tuple(p for n in self.nodes for p in n.worker_pids)


def take(head: Any, finished_tasks: bool) -> ClusterSnapshot:
    """Copy the head's state; the caller holds `head.lock`."""
    session, layout, objects = head.session, head.session.layout, head.objects
    nodes = tuple(NodeSnapshot(node.node_id.hex(), node.name, node.pid, node.alive, node.stopped,
                               tuple(w.pid for w in node.workers.values()), node.store_dir, node.spill_dir)
                  for node in head.nodes.values())
    tasks = []
    if finished_tasks:
        # A task being rebuilt is in the task table again; its live record is the one shown.
        tasks += [TaskSnapshot(entry.task_id.hex(), entry.kind.name, entry.attempts[-1].state, True,
                               tuple(_attempt(a) for a in entry.attempts))
                  for entry in head.history.entries(skip=head.tasks)]
    tasks += [TaskSnapshot(task.spec.task_id.hex(), task.spec.name, task.state, task.finished,
                           tuple(_attempt(a) for a in task.attempts))
              for task in head.tasks.values()]
    waiters = {id(w) for entry in objects.entries.values() for w in entry.waiters or () if not w.fired}
    actors = collections.Counter(actor.state for actor in head.actors.values())
    groups = head.head_state.groups
    reserved: dict = {}
    for node_id, bundle in groups.reservations():
        mine = reserved.setdefault(node_id.hex(), {})
        for key, qty in bundle.items():
            mine[key] = mine.get(key, 0.0) + qty
    return ClusterSnapshot(
        session_dir=session.dir,
        logs_dir=session.logs_dir,
        store_root=layout.store_root,
        spill_root=layout.spill_root,
        nodes=nodes,
        live_tasks=len(head.tasks),
        tasks=tuple(tasks),
        finished_tasks_kept=len(head.history),
        objects=len(objects.entries),
        freed_ids_remembered=len(objects.freed),
        pending_waiters=len(waiters),
        actors=types.MappingProxyType(dict(actors)),
        lineage_records=len(head.lineage.records),
        lineage_bytes=head.lineage.bytes,
        lineage_evicted_remembered=len(head.lineage.evicted),
        fault_plan_installed=head.faults is not None,
        placement_groups=types.MappingProxyType({r.group_id.hex(): r.state for r in groups.records.values()}),
        reserved=types.MappingProxyType({k: types.MappingProxyType(v) for k, v in reserved.items()}),
    )


def _attempt(a: Any) -> AttemptSnapshot:
    """A live AttemptRecord or a history Attempt (the same fields) as an AttemptSnapshot."""
    return AttemptSnapshot(a.attempt_number, a.state, a.node_id.hex() if a.node_id else None,
                           a.worker_id.hex() if a.worker_id else None, a.error_type, a.error_message)
