"""Placement groups in the head: their records, where their bundles go, and what removing one ends.

Runs in the driver process, under the head's lock. A group is a list of bundles
(resource dicts) and a strategy (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD). It is
placed all at once or not at all: each bundle takes its resources from one node's
available pool (scheduler.py) and adds the group's named resources to that node
(common/placement.py), which the group's tasks and actors then ask for. So
cluster_resources / available_resources show the reservation, and a task in a
group can run only where its bundle is, on what the bundle reserved.

    PENDING ─► CREATED              every bundle fits somewhere now (tried each time the
                                    task flow schedules: a node added, resources freed)
    CREATED ─► RESCHEDULING ─► CREATED    a node holding bundles died: those bundles are
                                    placed again on nodes that fit (the others stay)
    any     ─► REMOVED              remove_placement_group: reservations returned; its
                                    waiting tasks fail with TaskPlacementGroupRemoved, its
                                    running tasks' workers and its actors are killed

A group that could never fit the cluster stays PENDING (with a warning on the
driver's terminal, once), and is placed when a node that fits is added, as Ray.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Literal, Optional, Tuple

from minicluster._private.common.ids import job_id
from minicluster._private.common.placement import bundle_resources, group_of, is_group_resource, labels_match
from minicluster._private.head.gpus import GroupDevices
from minicluster._private.head.scheduler import NodeResources, Scheduler, Unschedulable
from minicluster._private.head.virtual_nodes import INTENDED_SYSTEM_EXIT
from minicluster.exceptions import TaskPlacementGroupRemoved

GroupState = Literal["PENDING", "CREATED", "RESCHEDULING", "REMOVED"]
PENDING: GroupState = "PENDING"
CREATED: GroupState = "CREATED"
RESCHEDULING: GroupState = "RESCHEDULING"
REMOVED: GroupState = "REMOVED"
_MOVES = {PENDING: {CREATED, REMOVED}, CREATED: {RESCHEDULING, REMOVED}, RESCHEDULING: {CREATED, REMOVED},
          REMOVED: set()}
_EPS = 1e-9


class GroupRemoved(Unschedulable):
    """A task asks for a removed group's resources: it fails with `error`."""

    def __init__(self, group_id: bytes) -> None:
        self.error = TaskPlacementGroupRemoved(
            f"The placement group corresponding to this task has been removed. Placement group id: {group_id.hex()}")
        super().__init__(str(self.error))


@dataclass(eq=False)
class GroupRecord:
    group_id: bytes
    name: str
    strategy: str
    bundles: List[Dict[str, float]]  #: as asked (zero quantities dropped)
    namespace: str
    detached: bool
    creator_job: bytes
    #: bundle index -> the node holding it (None while unplaced). All set in CREATED, none in PENDING,
    #: some in RESCHEDULING; all None in REMOVED
    nodes: List[Optional[bytes]] = field(default_factory=list)
    state: GroupState = PENDING
    created_at: float = field(default_factory=time.time)
    placed_at: float = 0.0
    attempts: int = 0
    infeasible: bool = False  #: no live node set could ever hold it (warned once)
    #: per bundle, the node labels it needs (bundle_label_selector); empty: any node
    selectors: List[Dict[str, str]] = field(default_factory=list)
    #: the actor whose code created it, if any: a group not detached goes when that actor's process
    #: does (Ray's rule; one created by the driver or a task lives as long as the job)
    creator_actor: Optional[bytes] = None
    #: the nodes its bundles were last on, kept after removal for placement_group_table
    last_nodes: List[Optional[bytes]] = field(default_factory=list)

    def set_state(self, new: GroupState) -> None:
        if new not in _MOVES[self.state]:
            raise AssertionError(f"placement group {self.group_id.hex()}: illegal move {self.state} -> {new}")
        self.state = new


class PlacementGroups:
    """Every placement group of the session and their reservations on the scheduler's nodes."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.records: Dict[bytes, GroupRecord] = {}
        self.named: Dict[Tuple[str, str], bytes] = {}  #: (namespace, name) -> id of a group not removed
        self.waiting: Dict[bytes, GroupRecord] = {}  #: PENDING and RESCHEDULING groups by id, oldest first
        #: scheduler.changes when every waiting group was last tried (-1: try again): placing is
        #: retried only once resources came back or nodes changed, not on every schedule() call
        self._tried_at = -1
        self._warned: set = set()  #: (strategy, bundles) shapes warned about as infeasible
        self._fresh: List[GroupRecord] = []  #: waiting groups not tried yet (tried alone, at once)
        #: a node's labels (set by head_state.new_state), for bundle_label_selector
        self.labels_of: Callable[[bytes], Dict[str, str]] = lambda node_id: {}
        #: a node's GPU device ids (set with labels_of), and the devices bundles own (gpus.py)
        self.gpu_ids_of: Callable[[bytes], List[str]] = lambda node_id: []
        self.devices = GroupDevices()
        scheduler.groups = self

    # ---- asked by the scheduler ---------------------------------------------------------

    def claims(self, request: Dict[str, float]) -> bool:
        """A request no live node could hold: True if it is a group's that is (re)placing (so the task
        waits instead of being infeasible); raises GroupRemoved if its group is gone."""
        group_id = group_of(request)
        if group_id is None:
            return False
        record = self.records.get(group_id)
        if record is None or record.state == REMOVED:
            raise GroupRemoved(group_id)
        return True

    # ---- creation and placement ---------------------------------------------------------

    def create(self, group_id: bytes, bundles: List[Dict[str, float]], strategy: str, name: str, namespace: str,
               detached: bool, creator_job: bytes, selectors: List[Dict[str, str]]) -> Optional[str]:
        """A new group (PENDING until placed); returns an error text if its name is taken."""
        if name and (namespace, name) in self.named:
            return (f"Failed to create placement group '{group_id.hex()}' because name '{name}' already exists.")
        record = GroupRecord(group_id, name, strategy, [dict(b) for b in bundles], namespace, detached, creator_job,
                             nodes=[None] * len(bundles), selectors=[dict(s) for s in selectors])
        self.records[group_id] = record
        if name:
            self.named[(namespace, name)] = group_id
        self.waiting[group_id] = record
        self._fresh.append(record)
        return None

    def place_waiting(self) -> bool:
        """Place every waiting group that fits now, oldest first; True if one was placed."""
        placed = False
        if self._tried_at == self.scheduler.changes:
            tried, self._fresh = self._fresh, []
        else:
            tried, self._fresh = list(self.waiting.values()), []
        for record in tried:
            if record.state not in (PENDING, RESCHEDULING):
                continue
            plan = self._plan(record, use_totals=False)
            if plan is None:
                if not record.infeasible and self._plan(record, use_totals=True) is None:
                    record.infeasible = True
                    shape = (record.strategy, repr(record.bundles))
                    if shape in self._warned:
                        continue
                    self._warned.add(shape)
                    shown = record.name or record.group_id.hex()
                    print(f"minicluster: warning: placement group {shown} needs "
                          f"{record.bundles} ({record.strategy}), which the cluster's nodes cannot hold "
                          f"(cluster: {_plain_totals(self.scheduler)}). It stays pending until nodes that fit "
                          "are added.",
                          file=sys.stderr)
                continue
            record.attempts += 1
            for index, node_id in plan.items():
                self._reserve(record, index, node_id)
            record.set_state(CREATED)
            record.placed_at = time.time()
            record.infeasible = False
            del self.waiting[record.group_id]
            placed = True
        if placed:
            self.scheduler.changes += 1  # the bundles' resources appeared: tasks waiting for them may go
        self._tried_at = self.scheduler.changes
        return placed

    def _plan(self, record: GroupRecord, use_totals: bool) -> Optional[Dict[int, bytes]]:
        """Bundle index -> node for the unplaced bundles, all or nothing; None if they do not fit."""
        nodes = [n for n in self.scheduler.nodes.values() if n.alive and not (n.stopped and not use_totals)]
        nodes.sort(key=lambda n: (n.cpu_load() if not use_totals else 0.0))
        free = {n.node_id: dict(n.total if use_totals else n.available) for n in nodes}
        todo = [i for i, node_id in enumerate(record.nodes) if node_id is None]
        used = {node_id for node_id in record.nodes if node_id is not None}
        strategy = record.strategy
        selectors, labels_of = record.selectors, self.labels_of

        def allowed(node_id: bytes, index: int) -> bool:
            return not selectors or not selectors[index] or labels_match(labels_of(node_id), selectors[index])

        if strategy in ("PACK", "STRICT_PACK"):
            candidates = [n.node_id for n in nodes if not used or n.node_id in used]
            together = _sum_bundles(record.bundles[i] for i in todo)
            for node_id in candidates:
                if _fits(free[node_id], together) and all(allowed(node_id, i) for i in todo):
                    return {i: node_id for i in todo}
            if strategy == "STRICT_PACK":
                return None
        plan: Dict[int, bytes] = {}
        for index in todo:
            bundle = record.bundles[index]
            taken = used | set(plan.values())
            if strategy == "PACK":  # fill the nodes already chosen first
                order = sorted(free, key=lambda node_id: node_id not in taken)
            else:  # SPREAD, STRICT_SPREAD: nodes without a bundle of the group first
                order = sorted(free, key=lambda node_id: node_id in taken)
                if strategy == "STRICT_SPREAD":
                    order = [node_id for node_id in order if node_id not in taken]
            target = next((node_id for node_id in order if _fits(free[node_id], bundle) and allowed(node_id, index)),
                          None)
            if target is None:
                return None
            _take(free[target], bundle)
            plan[index] = target
        return plan

    def _reserve(self, record: GroupRecord, index: int, node_id: bytes) -> None:
        node = self.scheduler.nodes[node_id]
        self.scheduler.acquire(node_id, record.bundles[index])
        for key, qty in bundle_resources(record.group_id, index, record.bundles[index]).items():
            node.total[key] = node.total.get(key, 0.0) + qty
            node.available[key] = node.available.get(key, 0.0) + qty
        record.nodes[index] = node_id
        record.last_nodes = list(record.nodes)
        self.devices.reserve(record.group_id, index, node_id, self.gpu_ids_of(node_id),
                             record.bundles[index].get("GPU", 0.0))

    def _unreserve(self, record: GroupRecord, index: int, give_back: bool) -> None:
        node_id = record.nodes[index]
        record.nodes[index] = None
        self.devices.release(record.group_id, index)
        node = self.scheduler.nodes.get(node_id) if node_id is not None else None
        if node is None:
            return
        for key, qty in bundle_resources(record.group_id, index, record.bundles[index]).items():
            _drop(node, key, qty)
        if give_back and node.alive:
            self.scheduler.release(node.node_id, record.bundles[index])

    # ---- node death and removal -----------------------------------------------------------

    def node_removed(self, node_id: bytes) -> None:
        """A node died: the bundles it held are placed again (the group goes RESCHEDULING)."""
        for record in self.records.values():
            if record.state == REMOVED or node_id not in record.nodes:
                continue
            for index, held_by in enumerate(record.nodes):
                if held_by == node_id:
                    self._unreserve(record, index, give_back=False)
            if record.state == CREATED:
                record.set_state(RESCHEDULING)
                self.waiting[record.group_id] = record
        self._tried_at = -1

    def remove(self, group_id: bytes) -> Optional[GroupRecord]:
        """Mark the group REMOVED and give its reservations back; None if unknown or already removed."""
        record = self.records.get(group_id)
        if record is None or record.state == REMOVED:
            return None
        for index in range(len(record.nodes)):
            self._unreserve(record, index, give_back=True)
        self.waiting.pop(group_id, None)
        self.scheduler.changes += 1  # tasks waiting for the group's resources must now fail
        if record.name and self.named.get((record.namespace, record.name)) == group_id:
            del self.named[(record.namespace, record.name)]
        record.set_state(REMOVED)
        return record

    # ---- queries -------------------------------------------------------------------------

    def lookup(self, name: str, namespace: str) -> Optional[Tuple[bytes, List[Dict[str, float]]]]:
        group_id = self.named.get((namespace, name))
        if group_id is None:
            return None
        return group_id, self.records[group_id].bundles

    def reservations(self) -> Iterator[Tuple[bytes, Dict[str, float]]]:
        """(node id, bundle) of every placed bundle: what the groups take from their nodes' pools."""
        for record in self.records.values():
            for index, node_id in enumerate(record.nodes):
                if node_id is not None:
                    yield node_id, record.bundles[index]

    def table_row(self, record: GroupRecord) -> Dict[str, Any]:
        """One group as Ray's placement_group_table shows it."""
        nodes = record.nodes if record.state != REMOVED else (record.last_nodes or record.nodes)
        latency = max(0.0, (record.placed_at - record.created_at) * 1000) if record.placed_at else 0.0
        scheduling = {PENDING: "INFEASIBLE" if record.infeasible else "PENDING", CREATED: "FINISHED",
                      RESCHEDULING: "RESCHEDULING", REMOVED: "REMOVED"}[record.state]
        return {
            "placement_group_id": record.group_id.hex(),
            "name": record.name,
            "bundles": {i: dict(b) for i, b in enumerate(record.bundles)},
            "bundles_to_node_id": {i: (n.hex() if n else "") for i, n in enumerate(nodes)},
            "strategy": record.strategy,
            "state": record.state,
            "is_detached": record.detached,
            "creator_job_id": record.creator_job.hex(),
            "stats": {"end_to_end_creation_latency_ms": latency, "scheduling_latency_ms": latency,
                      "scheduling_attempt": max(1, record.attempts), "highest_retry_delay_ms": 0.0,
                      "scheduling_state": scheduling},
        }

    def violations(self) -> List[str]:
        """The groups' own invariants (invariants.py adds their reservations to each node's books)."""
        problems: List[str] = []
        expected: Dict[bytes, Dict[str, float]] = {}
        for record in self.records.values():
            what = f"placement group {record.group_id.hex()} ({record.state})"
            placed = [n for n in record.nodes if n is not None]
            if record.state == CREATED and len(placed) != len(record.bundles):
                problems.append(f"{what} has unplaced bundles")
            if record.state in (PENDING, REMOVED) and placed:
                problems.append(f"{what} holds bundles")
            waits = record.group_id in self.waiting
            if waits != (record.state in (PENDING, RESCHEDULING)):
                problems.append(f"{what} is {'' if waits else 'not '}in the waiting list")
            for index, node_id in enumerate(record.nodes):
                if node_id is None:
                    continue
                node = self.scheduler.nodes.get(node_id)
                if node is None or not node.alive:
                    problems.append(f"{what} has bundle {index} on a dead or unknown node")
                    continue
                if record.selectors and record.selectors[index] and not labels_match(
                        self.labels_of(node_id), record.selectors[index]):
                    problems.append(f"{what} has bundle {index} on a node its label selector excludes")
                mine = expected.setdefault(node_id, {})
                for key, qty in bundle_resources(record.group_id, index, record.bundles[index]).items():
                    mine[key] = mine.get(key, 0.0) + qty
            if record.strategy == "STRICT_SPREAD" and len(set(placed)) != len(placed):
                problems.append(f"{what} (STRICT_SPREAD) has two bundles on one node")
            if record.strategy == "STRICT_PACK" and len(set(placed)) > 1:
                problems.append(f"{what} (STRICT_PACK) is on several nodes")
        for node in self.scheduler.nodes.values():
            if not node.alive:
                continue
            mine = expected.get(node.node_id, {})
            for key, total in node.total.items():
                if is_group_resource(key) and abs(mine.get(key, 0.0) - total) > 1e-6:
                    problems.append(f"node {node.node_id.hex()[:12]} has {total:g} {key}, "
                                    f"its bundles {mine.get(key, 0):g}")
            for key in mine:
                if key not in node.total:
                    problems.append(f"node {node.node_id.hex()[:12]} lacks {key} of a bundle placed there")
        return problems


def change(state: Any, tasks: Any, actors: Any, op: str, args: Any, creator_actor: Optional[bytes]) -> Optional[str]:
    """A user's create or remove (Head.change_placement_group); an error's text, or None.
    creator_actor: the actor whose code asks, if any."""
    groups: PlacementGroups = state.groups
    if op == "create":
        group_id, bundles, strategy, name, namespace, detached, selectors = args
        problem = groups.create(group_id, bundles, strategy, name, namespace, detached, job_id(), selectors)
        if problem is None:
            groups.records[group_id].creator_actor = creator_actor
        return problem
    if op == "remove":
        record = groups.remove(args)
        if record is not None:
            end_group_work(record, state, tasks, actors)
        return None
    raise ValueError(f"unknown placement group change {op!r}")


def creator_died(state: Any, tasks: Any, actors: Any, actor_id: bytes) -> None:
    """An actor's process is gone (dead or restarting): the groups it created, unless detached, go."""
    for record in list(state.groups.records.values()):
        if record.creator_actor == actor_id and not record.detached and record.state != REMOVED:
            state.groups.remove(record.group_id)
            end_group_work(record, state, tasks, actors)


def table(groups: PlacementGroups, group_id: Optional[bytes]) -> Any:
    """placement_group_table's rows: one group's (None if unknown), or every group's by id hex."""
    if group_id is not None:
        record = groups.records.get(group_id)
        return groups.table_row(record) if record is not None else None
    return {record.group_id.hex(): groups.table_row(record) for record in groups.records.values()}


def state_rows(groups: PlacementGroups) -> List[Dict[str, Any]]:
    """The groups as the state API lists them (list_placement_groups; journaled with the status)."""
    rows = []
    for record in groups.records.values():
        row = groups.table_row(record)
        nodes = row["bundles_to_node_id"]
        rows.append({
            "placement_group_id": row["placement_group_id"],
            "name": record.name,
            "creator_job_id": row["creator_job_id"],
            "state": record.state,
            "bundles": [{"bundle_id": f"{row['placement_group_id']}:{i}", "node_id": nodes[i] or None,
                         "unit_resources": dict(bundle)} for i, bundle in enumerate(record.bundles)],
            "is_detached": record.detached,
            "stats": row["stats"],
        })
    return rows


def end_group_work(record: GroupRecord, state: Any, tasks: Any, actors: Any) -> None:
    """After removal: tasks placed and waiting for a worker go back in line (where they fail as the
    group is gone), workers running the group's tasks are killed (their tasks retry, then fail the
    same way), and the group's actors die with a cause naming the group (Ray's behaviour)."""
    group_id = record.group_id
    why = f"its placement group was removed (placement group id: {group_id.hex()})"
    for node in state.nodes.values():
        if not node.waiting:
            continue
        keep = []
        for task in node.waiting:
            if not task.finished and group_of(task.spec.resources) == group_id:
                state.scheduler.release(node.node_id, task.spec.resources)
                task.node = None
                tasks.args_ready(task)
            else:
                keep.append(task)
        node.waiting.clear()
        node.waiting.extend(keep)
    for actor in list(state.actors.values()):
        if group_of(actor.creation.spec.resources) == group_id:
            actors.kill_actor(actor.actor_id, True, reason=why)
    for worker in list(state.workers.values()):
        if worker.actor is None and worker.queue and group_of(worker.queue[0].spec.resources) == group_id:
            worker.expect_exit(INTENDED_SYSTEM_EXIT, f"Destroying worker since {why}")
            try:
                os.kill(worker.pid, signal.SIGKILL)  # its exit report retries or fails the task
            except ProcessLookupError:
                pass


def _plain_totals(scheduler: Scheduler) -> Dict[str, float]:
    return {k: v for k, v in scheduler.totals().items() if not is_group_resource(k) and not k.startswith("node:")}


def _fits(free: Dict[str, float], bundle: Dict[str, float]) -> bool:
    return all(free.get(key, 0.0) + _EPS >= qty for key, qty in bundle.items())


def _take(free: Dict[str, float], bundle: Dict[str, float]) -> None:
    for key, qty in bundle.items():
        free[key] = free.get(key, 0.0) - qty


def _sum_bundles(bundles: Any) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for bundle in bundles:
        for key, qty in bundle.items():
            out[key] = out.get(key, 0.0) + qty
    return out


def _drop(node: NodeResources, key: str, qty: float) -> None:
    """Take a bundle's named resource off its node (a group-wide name may stay for other bundles)."""
    left = node.total.get(key, 0.0) - qty
    if left <= _EPS:
        node.total.pop(key, None)
        node.available.pop(key, None)
    else:
        node.total[key] = left
        node.available[key] = max(0.0, node.available.get(key, 0.0) - qty)
