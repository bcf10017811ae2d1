"""What happens when a worker, a node or an owner dies, or an object is lost (part of the head).

Runs in the driver process, under the head's lock: Head (head.py) reports deaths
(a worker's exit, a node's), stops and resumes; the task flow and waiting ask
for lost or unreachable objects (flow_interfaces.py). It needs the task flow
(tasks go back in line, retry or fail), the actor flow (an actor's worker died)
and waiting (a dead worker's blocked reads).

    worker dies ─► its running task's attempt failed (WORKER_DIED): retried if retries
                   are left, else WorkerCrashedError; tasks queued behind it go back in
                   line; its borrowed refs are dropped; the objects it owned become
                   OwnerDiedError everywhere, and the tasks it submitted are cancelled
    node dies   ─► all its workers die (NODE_DIED, NodeDiedError when out of retries);
                   its copies of objects are gone: objects with no copy left are LOST
    object LOST ─► rebuilt when someone needs it, by re-running the task that made it
                   (lineage.py), recursively; or settled with Ray's reason why not
    node stops  ─► (SIGSTOP) its copies are unreachable: readers wait; after the fetch
                   timeout the object is rebuilt or fails with ObjectFetchTimedOutError
"""

from __future__ import annotations

import collections
import os
import time
from typing import Optional

from minicluster._private.common.ids import task_of
from minicluster._private.common.task_spec import ACTOR_CREATION_TASK, ACTOR_TASK
from minicluster._private.head import placement_groups
from minicluster._private.head import virtual_nodes as node_procs
from minicluster._private.head.announcements import Announcer
from minicluster._private.head.flow_interfaces import ActorsForRecovery, TasksForRecovery, Timers, WaitingForRecovery
from minicluster._private.head.head_state import HeadState
from minicluster._private.head.object_directory import LOST, PENDING, READY, RELEASED
from minicluster._private.head.task_records import TaskRecord
from minicluster._private.head.virtual_nodes import NodeRecord, WorkerRecord
from minicluster._private.store import object_store
from minicluster._private.store.serialization import error_blob
from minicluster.exceptions import (
    NodeDiedError,
    ObjectFetchTimedOutError,
    ObjectLostError,
    ObjectReconstructionFailedError,
    ObjectReconstructionFailedLineageEvictedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
    OwnerDiedError,
    TaskCancelledError,
    WorkerCrashedError,
)


class Recovery:
    """Head logic for failures and lost objects; see the module docstring."""

    def __init__(self, state: HeadState, timers: Timers) -> None:
        self.state = state
        self.timers = timers
        self.announce: Announcer  #: set by the head: worker deaths and retries on the driver's terminal
        # set by connect(): the flows this one calls
        self.tasks: TasksForRecovery
        self.actors: ActorsForRecovery
        self.waiting: WaitingForRecovery

    def connect(self, tasks: TasksForRecovery, actors: ActorsForRecovery, waiting: WaitingForRecovery) -> None:
        self.tasks = tasks
        self.actors = actors
        self.waiting = waiting

    # ---- deaths ------------------------------------------------------------------------

    def worker_died(self, worker: WorkerRecord, exitcode: Optional[int], node_death: Optional[str] = None) -> None:
        """A worker is gone (its exit was reported, its connection dropped, or its node died)."""
        if worker.dead:
            return
        state = self.state
        worker.mark_dead(exitcode, node_death)
        node = worker.node
        if node_death is None and worker.info.intended_exit is None and (worker.queue or worker.actor is not None):
            what = (f"task {worker.queue[0].spec.name}" if worker.queue
                    else f"actor {worker.actor.meta['class_name'].rpartition('.')[2]}")
            self.announce.worker_died(what, worker.pid, node.name, node_procs.exit_reason(exitcode))
        node.workers.pop(worker.worker_id, None)
        state.workers.pop(worker.worker_id, None)
        try:
            node.idle.remove(worker)
        except ValueError:
            pass
        if worker.peer is not None:
            self.timers.close_peer(worker.peer)
        for waiter in worker.requests.values():
            waiter.fired = True
            self.waiting.unregister_waiter(waiter)
        worker.requests.clear()
        queued, worker.queue = list(worker.queue), collections.deque()
        if queued:
            if not worker.blocked:
                state.scheduler.release(node.node_id, queued[0].spec.resources)
            for task in queued:
                task.worker = None
            self._attempt_died(queued[0], worker, exitcode, node_death)
            for task in queued[1:]:  # never started: back in line, no retry used
                if not task.finished:
                    task.node = None
                    self.tasks.args_ready(task)
        if worker.actor is not None:
            actor_id = worker.actor.actor_id
            self.actors.actor_worker_died(worker, node_procs.exit_reason(exitcode), node_death)
            placement_groups.creator_died(state, self.tasks, self.actors, actor_id)  # its groups go with it
        for object_id in list(worker.borrowed):
            state.objects.remove_borrower(object_id, worker.worker_id)
        worker.borrowed.clear()
        self._owner_died(worker)
        self.actors.owner_died_actors(worker.worker_id)
        if node_death is None and node.alive:
            self.tasks.replenish(node)
        self.tasks.schedule()

    def _attempt_died(self, task: TaskRecord, worker: WorkerRecord, exitcode: Optional[int],
                      node_death: Optional[str]) -> None:
        if task.finished:
            return  # cancelled while it waited behind another task: already settled
        reason = f"node {worker.node.name} died: {node_death}" if node_death else node_procs.exit_reason(exitcode)
        error_type = "NODE_DIED" if node_death else "WORKER_DIED"
        creation = task.spec.task_type == ACTOR_CREATION_TASK
        if creation and not task.cancelled and self.actors.creation_died(task, reason):
            return
        if task.cancelled:
            self.tasks.finish_with_error(task, TaskCancelledError(task.spec.task_id.hex()), "TASK_CANCELLED",
                                         f"cancelled with force=True (worker {reason})")
            return
        message = f"worker pid={worker.pid} {reason}"
        if task.retries_left != 0:
            self.announce.retry(task.spec.name, task.retries_left, message)
            task.fail_attempt(error_type, message)
            self.tasks.retry(task)
            return
        attempts = task.attempt + 1
        if node_death:
            error: BaseException = NodeDiedError(
                f"Task {task.spec.name} (task id {task.spec.task_id.hex()}) failed: the node it ran on, "
                f"{worker.node.name} ({worker.node.node_id.hex()}), died ({node_death}). "
                f"No retries left after {attempts} attempt(s)."
            )
        else:
            error = WorkerCrashedError(
                f"The worker died unexpectedly while executing this task ({reason}). "
                f"Task {task.spec.name} (task id {task.spec.task_id.hex()}) failed after {attempts} "
                f"attempt(s); no retries left (max_retries={task.spec.max_retries})."
            )
        self.tasks.finish_with_error(task, error, error_type, message)

    def _owner_died(self, worker: WorkerRecord) -> None:
        """The worker owned these objects; without their owner they are gone for good."""
        if not worker.owned:
            return
        state = self.state
        for object_id in worker.owned:
            entry = state.objects.entries.get(object_id)
            if entry is None:
                continue
            blob = error_blob(OwnerDiedError(object_id.hex(), f"worker {worker.worker_id.hex()} (pid {worker.pid})"))
            entry = state.objects.replace_with_error(object_id, blob)
            if entry is not None:
                self.tasks.object_ready(object_id, entry)
            task = state.tasks.get(task_of(object_id))
            if task is not None and task.spec.owner == worker.worker_id:
                task.owner_dead = True
                self.tasks.cancel_task(task.spec.task_id, False, True)
        worker.owned.clear()

    def node_died(self, node: NodeRecord, reason: str) -> None:
        """A node is gone: its workers die with it, its tasks go back in line, its copies are lost."""
        state = self.state
        node.alive = False
        node.death_reason = reason
        node.end_time = time.time()
        node.hello.set()
        state.scheduler.remove_node(node.node_id)
        if node.peer is not None:
            self.timers.close_peer(node.peer)
        for worker in list(node.workers.values()):
            self.worker_died(worker, None, node_death=reason)
        waiting, node.waiting = list(node.waiting), collections.deque()
        for task in waiting:
            if not task.finished:
                task.node = None
                self.tasks.args_ready(task)
        for object_id in state.objects.drop_node(node.node_id):
            self._object_lost(object_id)
        self.tasks.schedule()

    # ---- lost objects ------------------------------------------------------------------

    def check_copies(self, object_id: bytes) -> None:
        """A reader found a listed copy missing: drop copies whose node is dead; handle total loss."""
        state = self.state
        entry = state.objects.entries.get(object_id)
        if entry is None or entry.payload is None or entry.payload.kind != "s":
            return
        locations = entry.payload.data
        layout = state.session.layout
        for location in list(locations):
            node = state.nodes.get(object_store.node_of(location))
            stored = os.path.join(layout.dir_of(location), object_id.hex())
            if node is None or not node.alive or not os.path.exists(stored):
                locations.remove(location)
        if not locations:
            state.objects.mark_lost(object_id)
            self._object_lost(object_id)

    def _object_lost(self, object_id: bytes) -> None:
        """No copy is left. Rebuild it now if someone waits for it; otherwise when first needed."""
        entry = self.state.objects.entries.get(object_id)
        if entry is not None and (entry.waiters or entry.dependents):
            self.recover(object_id)

    def recover(self, object_id: bytes) -> None:
        """Rebuild a LOST or RELEASED object by re-running the task that made it (lineage
        reconstruction), or settle it with the error that says why it cannot be rebuilt."""
        state = self.state
        objects = state.objects
        entry = objects.entries.get(object_id)
        if entry is None or entry.state not in (LOST, RELEASED):
            return
        if objects.take_back_cached(object_id, state.reachable):
            if entry.waiters or entry.dependents:
                self.tasks.object_ready(object_id, entry)
            return
        task_id = task_of(object_id)
        running = state.tasks.get(task_id)
        if running is not None and not running.finished:
            entry.state = PENDING  # its task is re-running already: one rebuild serves all
            return
        reason = state.lineage.why_not_rebuildable(object_id)
        if reason is not None:
            error = _unrebuildable_error(object_id, reason)
            objects.replace_with_error(object_id, error_blob(error))
            self.tasks.object_ready(object_id, entry)
            return
        task = state.lineage.take(task_id)
        if task.retries_left > 0:
            task.retries_left -= 1
        task.new_attempt()
        task.node = None
        for return_id in task.output_ids():
            other = objects.entries.get(return_id)
            if other is not None and other.state in (LOST, RELEASED):
                other.state = PENDING
        state.tasks[task_id] = task
        if task.spec.task_type == ACTOR_TASK:
            self.actors.add_actor_call(task)  # rebuilt by calling the actor again
        else:
            self.tasks.start_task(task)

    # ---- stopped nodes -----------------------------------------------------------------

    def await_unreachable(self, object_id: bytes) -> None:
        """Every copy is on a stopped node: readers wait for it to resume, at most the fetch timeout."""
        timers = self.state.fetch_timers
        if object_id in timers:
            return
        timers[object_id] = self.timers.call_later(self.state.fetch_timeout_s, lambda: self._fetch_timed_out(object_id))

    def _fetch_timed_out(self, object_id: bytes) -> None:
        state = self.state
        state.fetch_timers.pop(object_id, None)
        entry = state.objects.entries.get(object_id)
        if entry is None or entry.state != READY or state.reachable(entry):
            return
        if not (entry.waiters or entry.dependents):
            return
        # Give up on the hung copies: rebuild if lineage allows, else report the timeout.
        for location in list(entry.payload.data):
            state.objects.remove_location(object_id, location)
        if state.lineage.why_not_rebuildable(object_id) is None:
            state.objects.mark_lost(object_id)
            self.recover(object_id)
        else:
            state.objects.replace_with_error(object_id, error_blob(ObjectFetchTimedOutError(object_id.hex())))
            self.tasks.object_ready(object_id, entry)

    def node_reachable(self, node: NodeRecord) -> None:
        """A stopped node resumed: readers waiting for its copies can go on."""
        state = self.state
        for object_id, entry in list(state.objects.entries.items()):
            payload = entry.payload
            if (entry.waiters or entry.dependents) and payload is not None and payload.kind == "s" \
                    and any(object_store.node_of(loc) == node.node_id for loc in payload.data) \
                    and entry.state == READY:
                timer = state.fetch_timers.pop(object_id, None)
                if timer is not None:
                    self.timers.cancel_timer(timer)
                self.tasks.object_ready(object_id, entry)


def _unrebuildable_error(object_id: bytes, reason: str) -> BaseException:
    if reason == "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED":
        return ObjectReconstructionFailedMaxAttemptsExceededError(object_id.hex(), reason=reason)
    if reason == "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED":
        return ObjectReconstructionFailedLineageEvictedError(object_id.hex(), reason=reason)
    if reason == "OBJECT_UNRECONSTRUCTABLE_BORROWED":
        return ObjectLostError(object_id.hex())
    return ObjectReconstructionFailedError(object_id.hex(), reason=reason)
