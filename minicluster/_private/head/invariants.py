"""The head's invariants, checked: what head_state.py and the records promise, walked in full.

Runs in the driver process under the head's lock, only when asked
(Head.validate_state: the tests' teardown and the invariant tests). It reads,
never writes, and returns one line per violation, naming the record.

What must hold whenever the lock is released:
  tasks    every open task is not finished, sits where its state says (ready queue,
           node waiting list, worker queue, actor queue or in-flight map), and waits
           on exactly `deps_waiting` argument entries while PENDING_ARGS_AVAIL
  workers  the head's and the nodes' worker maps agree; a worker's queue holds open
           tasks it was sent (or stale closed ones); idle workers are free; blocked
           counts match outstanding requests
  nodes    a dead node has no workers, idle workers or waiting tasks; the scheduler
           knows every node with the same flags, and on a live node exactly the
           resources held by its waiting tasks, busy workers, alive actors and placed
           placement group bundles are in use
  groups   a CREATED group has every bundle on a live node, a PENDING or REMOVED one none;
           the waiting list holds exactly the PENDING and RESCHEDULING ones; each node's
           group resources are exactly those of the bundles placed there; strict
           strategies hold (placement_groups.py)
  actors   ALIVE has a live worker pointing back at it; PENDING_CREATION/RESTARTING
           have an open creation task; DEAD holds nothing; queued calls are its own
  objects  holders are live: borrowers are live workers that list the object; owners'
           `owned` sets point at entries they own; payloads match the entry state;
           copies are on live nodes; a pending task result has an open task
  lineage  records are finished, not open, hold refs, and count their live results
"""

from __future__ import annotations

import collections
from typing import Any, Dict, List

from minicluster._private.common.ids import is_put_object, task_of
from minicluster._private.common.task_spec import ACTOR_TASK
from minicluster._private.head.head_state import HeadState
from minicluster._private.head.object_directory import LOST, PENDING, READY, RELEASED
from minicluster._private.head.scheduler import kept_when_blocked
from minicluster._private.head.states import (
    ALIVE,
    DEAD,
    FINISHED,
    PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY,
    PENDING_ARGS_AVAIL,
    PENDING_CREATION,
    PENDING_NODE_ASSIGNMENT,
    RESTARTING,
    RUNNING,
    SUBMITTED_TO_WORKER,
    TERMINAL,
)
from minicluster._private.store import object_store

_EPS = 1e-6


class HeadStateError(AssertionError):
    """validate_state found records that break the head's invariants (a head bug)."""


def violations(state: HeadState) -> List[str]:
    """Every broken invariant of the head's records, as readable lines (empty: all hold)."""
    problems: List[str] = []
    _check_tasks(state, problems)
    _check_nodes_and_workers(state, problems)
    _check_resources(state, problems)
    _check_actors(state, problems)
    _check_objects(state, problems)
    _check_lineage(state, problems)
    problems.extend(state.groups.violations())
    return problems


def _name(task) -> str:
    return f"task {task.spec.name} {task.spec.task_id.hex()[:16]} ({task.state}, attempt {task.attempt})"


def _check_tasks(state: HeadState, problems: List[str]) -> None:
    in_ready: Dict[int, int] = collections.Counter()
    for shape, queue in state.ready.items():
        for task in queue:
            if not task.finished and task.state == PENDING_NODE_ASSIGNMENT:
                in_ready[id(task)] += 1
                if task.shape != shape:
                    problems.append(f"{_name(task)} is in the ready queue of another shape")
    dependents: Dict[int, int] = collections.Counter()
    for entry in state.objects.entries.values():
        for task in entry.dependents or ():
            dependents[id(task)] += 1
    # Where each task is queued, by identity (one pass each: the walk stays linear).
    waiting_at: Dict[int, Any] = {id(task): node for node in state.nodes.values() for task in node.waiting}
    queued_at: Dict[int, tuple] = {id(task): (worker, index) for worker in state.workers.values()
                                   for index, task in enumerate(worker.queue)}
    pending_at: Dict[int, Any] = {id(task): actor for actor in state.actors.values() for task in actor.pending}
    for task_id, task in state.tasks.items():
        name = _name(task)
        if task.spec.task_id != task_id:
            problems.append(f"{name} is filed under another id {task_id.hex()}")
        if task.finished or task.state in TERMINAL:
            problems.append(f"{name} is closed but still in head.tasks")
            continue
        if not task.pinned:
            problems.append(f"{name} is open but its arguments are not pinned")
        if task.owner_dead and not task.cancelled:
            problems.append(f"{name} lost its owner but is not cancelled")
        if task.cancel_children and not task.cancelled:
            problems.append(f"{name} cancels its children but is not cancelled itself")
        status = task.state
        worker = task.worker
        is_actor_call = task.spec.task_type == ACTOR_TASK
        if status == PENDING_ARGS_AVAIL:
            if task.deps_waiting <= 0:
                problems.append(f"{name} waits for arguments but counts {task.deps_waiting}")
            elif dependents[id(task)] != task.deps_waiting:
                problems.append(f"{name} counts {task.deps_waiting} missing arguments but waits on "
                                f"{dependents[id(task)]} entries")
        if status in (PENDING_ARGS_AVAIL, PENDING_NODE_ASSIGNMENT, PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY):
            if worker is not None:
                problems.append(f"{name} has a worker but was not sent to one")
        if status == PENDING_NODE_ASSIGNMENT:
            if in_ready[id(task)] != 1:
                problems.append(f"{name} is {in_ready[id(task)]} times in its ready queue (want 1)")
            if task.node is not None:
                problems.append(f"{name} waits for placement but has a node")
        elif status == SUBMITTED_TO_WORKER:
            node = task.node
            if node is None or not node.alive:
                problems.append(f"{name} is placed on no live node")
            elif worker is None:
                if waiting_at.get(id(task)) is not node:
                    problems.append(f"{name} holds resources on {node.name} but is not in its waiting list")
            elif queued_at.get(id(task), (None, 0))[0] is not worker or queued_at[id(task)][1] == 0:
                problems.append(f"{name} is not queued behind another task at its worker")
        elif status == RUNNING:
            if worker is None or worker.dead or state.workers.get(worker.worker_id) is not worker:
                problems.append(f"{name} runs on no live worker")
            elif is_actor_call:
                actor = state.actors.get(task.spec.actor_id)
                if actor is None or actor.inflight.get(task.spec.task_id) is not task or actor.worker is not worker:
                    problems.append(f"{name} runs but is not in flight at its actor's worker")
            elif not worker.queue or worker.queue[0] is not task:
                problems.append(f"{name} runs but is not first in its worker's queue")
        if is_actor_call and status in (PENDING_ARGS_AVAIL, PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY):
            actor = state.actors.get(task.spec.actor_id)
            if actor is None or pending_at.get(id(task)) is not actor:
                problems.append(f"{name} is an actor call waiting outside its actor's queue")
        elif status == PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY:
            problems.append(f"{name} is not an actor call but waits in an actor's queue state")
    for parent in state.children:
        if parent not in state.tasks:
            problems.append(f"children are kept for task {parent.hex()[:16]}, which is not open")


def _check_nodes_and_workers(state: HeadState, problems: List[str]) -> None:
    for worker_id, worker in state.workers.items():
        name = f"worker {worker_id.hex()[:12]} (pid {worker.pid})"
        if worker.dead:
            problems.append(f"{name} is dead but still in head.workers")
        if not worker.node.alive:
            problems.append(f"{name} is on dead {worker.node.name}")
        if worker.node.workers.get(worker_id) is not worker:
            problems.append(f"{name} is missing from its node's workers")
        if worker.blocked != len(worker.requests):
            problems.append(f"{name} is blocked {worker.blocked} times with {len(worker.requests)} open requests")
        for waiter in worker.requests.values():
            if waiter.fired:
                problems.append(f"{name} keeps a request whose waiter already fired")
        if worker.actor is not None:
            if worker.queue:
                problems.append(f"{name} runs an actor but has queued tasks")
            if worker.actor.worker is not worker or worker.actor.state != ALIVE:
                problems.append(f"{name} belongs to actor {worker.actor.actor_id.hex()[:12]}, "
                                f"which is {worker.actor.state} elsewhere")
        for index, task in enumerate(worker.queue):
            if task.finished:
                continue  # cancelled while queued: the worker skips it
            if task.worker is not worker:
                problems.append(f"{_name(task)} is in the queue of {name} but points elsewhere")
            want = RUNNING if index == 0 else SUBMITTED_TO_WORKER
            if task.state != want:
                problems.append(f"{_name(task)} is at position {index} of {name}'s queue (want {want})")
    for node_id, node in state.nodes.items():
        if node.node_id != node_id:
            problems.append(f"{node.name} is filed under another id")
        for worker_id, worker in node.workers.items():
            if state.workers.get(worker_id) is not worker or worker.node is not node:
                problems.append(f"worker {worker_id.hex()[:12]} of {node.name} is not a live worker of it")
        seen = set()
        for worker in node.idle:
            if id(worker) in seen:
                problems.append(f"worker {worker.worker_id.hex()[:12]} is idle twice on {node.name}")
            seen.add(id(worker))
            if node.workers.get(worker.worker_id) is not worker:
                problems.append(f"idle worker {worker.worker_id.hex()[:12]} is not a worker of {node.name}")
            if worker.queue or worker.actor is not None or worker.retiring:
                problems.append(f"idle worker {worker.worker_id.hex()[:12]} of {node.name} is busy, an actor's, "
                                "or retiring")
        for task in node.waiting:
            if not task.finished and (task.state != SUBMITTED_TO_WORKER or task.node is not node
                                      or task.worker is not None):
                problems.append(f"{_name(task)} waits for a worker on {node.name} but is not placed there")
        if not node.alive and (node.workers or node.idle or node.waiting):
            problems.append(f"dead {node.name} still has workers or waiting tasks")
        if node.pending_spawn < 0:
            problems.append(f"{node.name} expects {node.pending_spawn} workers")


def _check_resources(state: HeadState, problems: List[str]) -> None:
    scheduler = state.scheduler
    if set(scheduler.nodes) != set(state.nodes):
        problems.append("the scheduler's nodes differ from the head's")
    used: Dict[bytes, Dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))

    def hold(node_id: bytes, request: Dict[str, float]) -> None:
        for key, qty in request.items():
            used[node_id][key] += qty

    for node_id, node in state.nodes.items():
        for task in node.waiting:
            hold(node_id, task.spec.resources)  # closed ones too: released when met
        for worker in node.workers.values():
            if worker.queue:  # one lease for the whole queue; a blocked one lent its CPUs out
                resources = worker.queue[0].spec.resources
                hold(node_id, kept_when_blocked(resources) if worker.blocked else resources)
    for actor in state.actors.values():
        if actor.state == ALIVE and actor.worker is not None:
            hold(actor.worker.node.node_id, actor.held)
    for node_id, bundle in state.groups.reservations():
        hold(node_id, bundle)  # a placed bundle takes its resources from its node's pool
    for node_id, node in state.nodes.items():
        resources = scheduler.nodes.get(node_id)
        if resources is None:
            continue
        if resources.alive != node.alive or resources.stopped != node.stopped:
            problems.append(f"the scheduler's alive/stopped flags of {node.name} differ from the node's")
        if not node.alive:
            continue
        for key, total in resources.total.items():
            want = total - used[node_id].get(key, 0.0)
            have = resources.available.get(key, 0.0)
            if abs(want - have) > _EPS:
                problems.append(f"{node.name} has {have:g} {key} available, but what is held there leaves {want:g}")


def _check_actors(state: HeadState, problems: List[str]) -> None:
    for actor_id, actor in state.actors.items():
        name = f"actor {actor.meta['class_name']} {actor_id.hex()[:12]} ({actor.state})"
        worker = actor.worker
        if actor.state == ALIVE:
            if worker is None or worker.dead or state.workers.get(worker.worker_id) is not worker:
                problems.append(f"{name} has no live worker")
            elif worker.actor is not actor:
                problems.append(f"{name}'s worker does not point back at it")
        elif worker is not None:
            problems.append(f"{name} keeps a worker")
        if actor.state in (PENDING_CREATION, RESTARTING):
            creation = actor.creation
            if state.tasks.get(creation.spec.task_id) is not creation or creation.finished:
                problems.append(f"{name} has no open creation task")
        if actor.state == DEAD and (actor.pending or actor.inflight):
            problems.append(f"{name} still has queued or in-flight calls")
    dead = [actor_id for actor_id, actor in state.actors.items() if actor.state == DEAD]
    if sorted(dead) != sorted(state.dead_actors):
        problems.append(f"{len(dead)} actors are DEAD but the list of dead ones has {len(state.dead_actors)}")
    if len(state.dead_actors) > state.max_dead_actors:
        problems.append(f"{len(state.dead_actors)} dead actors are kept, over the cap of {state.max_dead_actors}")
        if actor.state != ALIVE and actor.held:
            problems.append(f"{name} holds resources")
        for task in list(actor.pending) + list(actor.inflight.values()):
            if task.spec.actor_id != actor_id:
                problems.append(f"{_name(task)} is queued at another actor, {name}")
        if actor.failed_args - {task.spec.task_id for task in actor.pending}:
            problems.append(f"{name} holds calls with a failed argument that are not in its queue")
        for _task_id, task in actor.inflight.items():
            if task.finished or task.state != RUNNING:
                problems.append(f"{_name(task)} is in flight at {name} but not running")
    for key, actor_id in state.named_actors.items():
        if actor_id not in state.actors:
            problems.append(f"the name {key} points at no actor")


def _check_objects(state: HeadState, problems: List[str]) -> None:
    objects = state.objects
    entries = objects.entries
    for object_id, entry in entries.items():
        name = f"object {object_id.hex()[:16]} ({entry.state})"
        for borrower in entry.borrowers or ():
            worker = state.workers.get(borrower)
            if worker is None:
                problems.append(f"{name} is borrowed by worker {borrower.hex()[:12]}, which is not alive")
            elif object_id not in worker.borrowed:
                problems.append(f"{name} lists borrower {borrower.hex()[:12]}, which does not list it")
        if entry.pins < 0 or entry.lineage_refs < 0:
            problems.append(f"{name} has {entry.pins} pins and {entry.lineage_refs} lineage refs")
        if entry.state == READY:
            if entry.payload is None:
                problems.append(f"{name} has no value")
            elif entry.payload.kind == "s":
                if not entry.payload.data:
                    problems.append(f"{name} has no copy left")
                for location in entry.payload.data:
                    node = state.nodes.get(object_store.node_of(location))
                    if node is None or not node.alive:
                        problems.append(f"{name} has a copy on a dead node")
        elif entry.state == RELEASED and entry.payload is not None:
            if entry.payload.kind != "s" or entry.is_error or entry.nested:
                problems.append(f"{name} caches a value that is not a plain store copy")
            for location in entry.payload.data:
                node = state.nodes.get(object_store.node_of(location))
                if node is None or not node.alive:
                    problems.append(f"{name} caches a copy on a dead node")
        elif entry.payload is not None:
            problems.append(f"{name} has a value")
        if entry.state == RELEASED and entry.lineage_refs <= 0:
            problems.append(f"{name} is kept for lineage but no lineage needs it")
        if entry.state == PENDING and not is_put_object(object_id):
            task = state.tasks.get(task_of(object_id))
            if task is None or task.finished:
                problems.append(f"{name} waits for a task that is not running")
        if entry.state in (LOST, RELEASED) and entry.waiters:
            problems.append(f"{name} has readers waiting but is not being rebuilt")
    for worker_id, worker in state.workers.items():
        for object_id in worker.borrowed:
            entry = entries.get(object_id)
            if entry is None or not entry.borrowers or worker_id not in entry.borrowers:
                problems.append(f"worker {worker_id.hex()[:12]} borrows object {object_id.hex()[:16]}, "
                                "which does not list it")
        for object_id in worker.owned:
            entry = entries.get(object_id)
            if entry is None:
                problems.append(f"worker {worker_id.hex()[:12]} owns object {object_id.hex()[:16]}, which is gone")


def _check_lineage(state: HeadState, problems: List[str]) -> None:
    lineage = state.lineage
    entries = state.objects.entries
    total = 0
    for task_id, task in lineage.records.items():
        name = _name(task)
        total += lineage.size_of(task)
        if not task.finished or task.state != FINISHED:
            problems.append(f"{name} is kept as lineage but did not finish")
        if task_id in state.tasks:
            problems.append(f"{name} is kept as lineage and open at once")
        if not task.lineage_held:
            problems.append(f"{name} is kept as lineage without lineage refs on its arguments")
        live = sum(1 for object_id in task.output_ids() if object_id in entries)
        if live != task.live_returns or live <= 0:
            problems.append(f"{name} is kept for {task.live_returns} live results; {live} exist")
    if total != lineage.bytes:
        problems.append(f"lineage counts {lineage.bytes} bytes; its records add up to {total}")
