"""How a task moves from submission to its stored result (part of the head).

Runs in the driver process, under the head's lock: Head (head.py) calls it for
submissions and "done" messages; the other flows call it through the interfaces
of flow_interfaces.py. It needs the actor flow (an actor's tasks take side
steps there) and recovery (lost or unreachable arguments). The path of a task:

    submit ─► waiting for its arguments (PENDING_ARGS_AVAIL; lost ones are rebuilt)
            ─► ready queue, one FIFO per scheduling class: resource shape and function
               (PENDING_NODE_ASSIGNMENT)
            ─► placed on a node, resources held (scheduler.py); waits there for a worker
            ─► sent to a worker (RUNNING); tiny tasks may be pipelined behind a busy one
               (SUBMITTED_TO_WORKER until their turn)
               (these two steps: task_placement.py, the class TaskFlow is built on)
            ─► "done": results stored (object_directory.py), getters and dependents woken, the
               task kept as lineage; or an error: retried if allowed, else the result

Cancellation lives here too: a task not yet running is dropped, a running one
interrupted (or its worker killed with force=True).
"""

from __future__ import annotations

import collections
import os
from typing import Any, Optional

from minicluster._private.common.ids import task_of
from minicluster._private.common.task_spec import ACTOR_CREATION_TASK, ACTOR_TASK, NORMAL_TASK, argument_failed
from minicluster._private.head.announcements import Announcer
from minicluster._private.head.flow_interfaces import ActorCallsForTasks, RecoveryForTasks, Timers
from minicluster._private.head.head_state import HeadState
from minicluster._private.head.lineage import arguments_of
from minicluster._private.head.messaging import Outbox
from minicluster._private.head.object_directory import LOST, PENDING, READY, RELEASED
from minicluster._private.head.scheduler import kept_when_blocked, lent_when_blocked
from minicluster._private.head.states import (
    FAILED,
    FINISHED,
    PENDING_ARGS_AVAIL,
    PENDING_NODE_ASSIGNMENT,
    RUNNING,
    SUBMITTED_TO_WORKER,
)
from minicluster._private.head.streams import Streams
from minicluster._private.head.task_placement import TaskPlacement
from minicluster._private.head.task_records import TaskRecord
from minicluster._private.head.virtual_nodes import INTENDED_USER_EXIT, WorkerRecord
from minicluster._private.store import object_store
from minicluster._private.store.serialization import deserialize, error_blob
from minicluster._private.wire import messages as msg
from minicluster.exceptions import ObjectStoreFullError, TaskCancelledError


class TaskFlow(TaskPlacement):
    """Moves tasks along; see the module docstring. Public methods are what Head and the
    other flows call (flow_interfaces.py lists who calls which)."""

    def __init__(self, state: HeadState, outbox: Outbox, timers: Timers) -> None:
        self.state = state
        self.outbox = outbox
        self.timers = timers
        self.announce: Announcer  #: set by the head: retries on the driver's terminal
        # set by connect(): the flows this one calls
        self.actors: ActorCallsForTasks
        self.recovery: RecoveryForTasks
        # Placement is tried once per submission burst: cleared when a task joins a queue
        # where others of its shape already wait (FIFO: nothing could be placed anyway).
        self._placement_pending = False
        #: shape -> scheduler.changes when its queue's first task could not be placed: the queue is
        #: skipped until resources come back or nodes change (many shapes: placement groups')
        self._blocked: dict = {}
        state.owner_free = self._let_go
        self.streams = Streams(state, outbox, self)  #: generator tasks' items (streams.py)

    def connect(self, actors: ActorCallsForTasks, recovery: RecoveryForTasks) -> None:
        self.actors = actors
        self.recovery = recovery

    # ---- a task reports ------------------------------------------------------------

    def task_done(self, worker: WorkerRecord, message: msg.Done) -> None:
        """A worker's "done" message: store the results, settle the task, give the worker more work."""
        if worker.actor is not None:
            self.actors.actor_call_done(worker, message)
            return
        task_id, attempt, results, error_info, retire = (message.task_id, message.attempt, message.results,
                                                         message.error, message.retire)
        scheduler = self.state.scheduler
        queue = worker.queue
        task = queue.popleft() if queue else None
        worker.tasks_done += 1
        was_blocked, worker.blocked = worker.blocked, 0
        if task is not None:
            # The next pipelined task inherits the lease; the last one gives it back.
            # An actor's creation task keeps it: creation_done decides what the actor holds.
            keeps_lease = bool(queue) or task.spec.task_type == ACTOR_CREATION_TASK
            if keeps_lease and was_blocked:
                scheduler.acquire(worker.node.node_id, lent_when_blocked(task.spec.resources))
            elif not keeps_lease:  # (a blocked one lent its CPUs out already)
                scheduler.release(worker.node.node_id,
                                  kept_when_blocked(task.spec.resources) if was_blocked else task.spec.resources)
            if queue and not retire and not queue[0].finished:  # (a cancelled one is skipped by the worker)
                queue[0].set_state(RUNNING, worker_id=worker.worker_id)
            durations = self.state.durations
            previous = durations.get(task.spec.function_id)
            took = message.end - message.start
            durations[task.spec.function_id] = took if previous is None else 0.8 * previous + 0.2 * took
        if retire:
            worker.retire(f"reached max_calls of {task.spec.name}" if task is not None else "reached max_calls")
            # It exits now (max_calls): anything still queued there never started.
            leftover, worker.queue = list(queue), collections.deque()
            if leftover:
                scheduler.release(worker.node.node_id, leftover[0].spec.resources)
            for other in leftover:
                other.worker = None
                other.node = None
                self.args_ready(other)
            queue = worker.queue
            self.replenish(worker.node)  # its successor starts now, not once its exit is reported
            if not worker.owned:
                self._let_go(worker)
            # else it stays, running nothing, until the objects it owns are gone (head_state's
            # owner_free): they live as long as their owner, as in Ray
        if task is None or task.spec.task_id != task_id or task.attempt != attempt or task.finished:
            self.discard_results(task_id, results, worker.node.node_id)
        else:
            task.record_times(message.start, message.end)
            self.task_reported(task, results, error_info, worker.node.node_id)
            if task.spec.task_type == ACTOR_CREATION_TASK and self.actors.creation_done(task, worker, error_info):
                self.schedule()
                return  # the worker now belongs to the actor
        if not retire and not queue:
            self.worker_free(worker)
        self.schedule()
        if queue and not retire:
            self._pipeline(worker)

    # ---- submission and arguments ----------------------------------------------------

    def add_task(self, spec: Any, submitter_node: bytes) -> None:
        """A new task (from the driver or a worker): record it and start it on its path."""
        state = self.state
        task = TaskRecord(spec, spec.max_retries, submitter_node, state.task_changes)
        state.tasks[spec.task_id] = task
        if spec.num_returns < 0:
            self.streams.open(task)
        if spec.parent_task_id in state.tasks:
            state.children[spec.parent_task_id].add(spec.task_id)
        if spec.task_type == ACTOR_TASK:
            self.actors.add_actor_call(task)
        else:
            self.start_task(task)

    def start_task(self, task: TaskRecord) -> None:
        """Pin the task's arguments, then queue it, or wait until its arguments exist."""
        objects = self.state.objects
        missing = []
        for object_id in arguments_of(task):
            if not objects.pin(object_id):
                missing.append(object_id)
        task.pinned = True
        if missing:
            self.finish_with_error(task, self.state.missing_error(missing[0]), "TASK_EXECUTION_EXCEPTION",
                                   "an argument was already freed")
            return
        self._placement_pending = True
        self._wait_for_args(task)
        if task.deps_waiting == 0 and self._placement_pending:
            self.schedule()

    def _wait_for_args(self, task: TaskRecord) -> None:
        """Register the task on its arguments that are not ready (rebuilding lost ones); queue it if none."""
        waiting = 0
        state = self.state
        entries = state.objects.entries
        for object_id in task.spec.arg_refs:
            entry = entries.get(object_id)
            if entry is None:
                continue  # reported by args_ready
            if entry.state in (LOST, RELEASED):
                self.recovery.recover(object_id)
            unreachable = entry.state == READY and not state.reachable(entry)
            if unreachable:
                self.recovery.await_unreachable(object_id)
            if entry.state == PENDING or unreachable:
                waiting += 1
                if entry.dependents is None:
                    entry.dependents = []
                entry.dependents.append(task)
        task.deps_waiting = waiting
        if waiting == 0:
            self.args_ready(task)

    def args_ready(self, task: TaskRecord) -> None:
        """All top-level arguments exist: fail at once on an upstream error, else queue for placement.

        Also how a task taken back from a worker or node (never started) goes back in line.
        """
        if task.finished:
            return
        state = self.state
        entries = state.objects.entries
        for object_id in task.spec.arg_refs:
            entry = entries.get(object_id)
            if entry is None:
                self.finish_with_error(task, state.missing_error(object_id), "TASK_EXECUTION_EXCEPTION",
                                       "an argument was freed")
                return
            if entry.state != READY:
                self._wait_again(task)
                return
            if entry.is_error:
                entry.unhandled = False  # carried on by this task's own error
                if task.spec.task_type == ACTOR_TASK and self.actors.hold_call_with_failed_argument(task):
                    return  # its actor is (re)starting: the call fails once it is alive, or dies
                self._fail_on_argument_error(task, state.error_blob_of(object_id, entry))
                return
        if task.spec.task_type == ACTOR_TASK:
            self.actors.queue_actor_call(task)
            return
        task.set_state(PENDING_NODE_ASSIGNMENT)
        if not state.ready and not state.groups.waiting and self.place_task(task) is not None:
            # Nothing else waits for a node: no turn to take (schedule's fair queueing), so it
            # is placed at once; the ready queue is for tasks that wait.
            self._placement_pending = False
            return
        shape = task.shape
        queue = state.ready.get(shape)
        if queue is None:
            queue = state.ready[shape] = collections.deque()
            state.ready.move_to_end(shape, last=False)  # never served: its turn comes first (schedule)
        elif queue:
            self._placement_pending = False  # tasks of this shape already wait: FIFO, nothing to try
        queue.append(task)

    def _wait_again(self, task: TaskRecord) -> None:
        """An argument stopped being ready before the task ran (its node died): wait for its rebuild."""
        if task.state != PENDING_ARGS_AVAIL:
            task.set_state(PENDING_ARGS_AVAIL)
        self._wait_for_args(task)

    def _fail_on_argument_error(self, task: TaskRecord, blob: bytes) -> None:
        """A task depending on a failed object fails with that error, wrapped as Ray does: its
        own header, Ray's sentence, then the upstream error; still an instance of the upstream
        cause (or, for a lost object, of the loss)."""

        error, _ = deserialize(blob)
        blob = error_blob(argument_failed(task.spec.name, error))
        self._finish_with_payload_error(task, blob, "TASK_EXECUTION_EXCEPTION", "an argument is an error")

    # ---- results -------------------------------------------------------------------

    def task_reported(self, task: TaskRecord, results: list, error_info: Optional[msg.ErrorInfo],
                      node_id: bytes) -> None:
        """The current attempt of an open task reported: finish it, retry it, or wait for a lost argument."""
        task.worker = None
        if error_info is None:
            self._finish(task, results, node_id, FINISHED, None, None)
            return
        error_type, retryable, message = error_info.error_type, error_info.retryable, error_info.message
        if error_type == "ARG_LOST" and not task.cancelled:
            # An argument's copy vanished before the worker could read it: not the task's
            # fault, so no retry is used; wait for the argument to be rebuilt.
            self.recovery.check_copies(bytes.fromhex(message))
            task.set_state(PENDING_ARGS_AVAIL)
            task.node = None
            if task.spec.task_type == ACTOR_TASK:
                self.actors.requeue_call(task)  # back at the front of its actor's queue
            self._wait_for_args(task)
            return
        if task.cancelled or error_type == "TASK_CANCELLED":
            self._finish(task, results, node_id, FAILED, "TASK_CANCELLED", message)
        elif retryable and task.retries_left != 0:
            self.announce.retry(task.spec.name, task.retries_left, message)
            task.fail_attempt(error_type, message)
            self.retry(task)
        else:
            self._finish(task, results, node_id, FAILED, error_type, message, error_info.first_error)

    def retry(self, task: TaskRecord) -> None:
        """Run a failed attempt's task again (the caller ended the attempt with fail_attempt)."""
        if task.retries_left > 0:
            task.retries_left -= 1
        task.new_attempt()
        task.node = None
        if task.spec.task_type == ACTOR_TASK:
            self.actors.requeue_call(task)  # an actor call waits in its actor's queue, not a node's
        self.args_ready(task)

    def _finish(self, task: TaskRecord, results: list, node_id: bytes, state: str, error_type: Optional[str],
                message: Optional[str], first_error: int = 0) -> None:
        is_error = state == FAILED
        if task.owner_dead:
            self.discard_results(task.spec.task_id, results, node_id)
            self._close_task(task, state, error_type, message)
            return
        stored = 0
        for value in results:
            if value.kind == "s":
                stored += value.data
        problem = self.state.objects.no_room_for(node_id, stored) if stored else None
        if problem is not None:  # the store is full and cannot spill: the cap holds, the task fails
            self.discard_results(task.spec.task_id, results, node_id)
            problem = f"the results of {task.spec.name} ({stored} bytes) were not kept: {problem}"
            self.finish_with_error(task, ObjectStoreFullError(problem), "OUT_OF_DISK_ERROR", problem)
            return
        stored_error = is_error
        if task.spec.num_returns < 0:
            results, stored_error = self.streams.final_results(task, results, error_type, is_error)
        unhandled = stored_error and _unhandled_if_unread(task, error_type)
        for index, (object_id, value) in enumerate(zip(task.spec.return_ids(), results)):
            failed = stored_error and index >= first_error  # (values a generator yielded before it raised)
            self.store(object_id, value.kind, value.data, value.refs, node_id, failed, unhandled and failed)
        if not is_error:
            self._keep_lineage(task)
        error_text = None
        if is_error and task.spec.task_type == ACTOR_CREATION_TASK and results and results[0].kind == "i":
            # (a restart's constructor failed: its result keeps the first run's value, so the
            # actor's cause of death is read here)
            error_text = str(deserialize(results[0].data)[0])
        self._close_task(task, state, error_type, message, error_text)

    def _keep_lineage(self, task: TaskRecord) -> None:
        """Keep a finished task while its results exist, so they can be rebuilt if lost."""
        objects = self.state.objects
        entries = objects.entries
        live = 0
        for object_id in task.output_ids():
            if object_id in entries:
                live += 1
        kind = task.spec.task_type
        if not live or not self.state.lineage.enabled:
            return
        if kind == ACTOR_TASK and task.spec.max_retries == 0:
            # Actor calls are rebuilt only with max_task_retries (SPEC section 3); a lost
            # result says so (ObjectReconstructionFailedError, RETRIES_DISABLED)
            self.state.lineage.retries_disabled.add(task.spec.task_id)
            return
        if not (kind == NORMAL_TASK or kind == ACTOR_TASK):
            return
        if not task.lineage_held:
            task.lineage_held = True
            for object_id in arguments_of(task):
                objects.add_lineage_ref(object_id)
        self.state.lineage.keep(task, live)

    def store(self, object_id: bytes, kind: str, data: Any, nested: list, node_id: bytes, is_error: bool,
              unhandled: bool = False) -> None:
        """Record a produced value (a task's result or a put) and wake whoever waits for it.
        `unhandled`: a failed task's result, announced if it is freed before anyone reads it."""
        objects = self.state.objects
        entry = objects.set_value(object_id, kind, data, nested, node_id, is_error)
        if entry is not None:
            entry.unhandled = unhandled
            self.object_ready(object_id, entry)
            objects.maybe_free(object_id)
            if kind == "s":
                objects.make_room(node_id)

    def discard_results(self, task_id: bytes, results: list, node_id: bytes) -> None:
        """Results nobody will read (a stale attempt, a dead owner): delete their store files."""
        store_dir = self.state.session.layout.dir_of(node_id)
        for index, value in enumerate(results, start=1):
            if value.kind == "s":
                object_store.delete(store_dir, task_id + index.to_bytes(4, "little"))

    def finish_with_error(self, task: TaskRecord, error: BaseException, error_type: str, message: str) -> None:
        """The task fails for good with `error` as every result."""
        self._finish_with_payload_error(task, error_blob(error), error_type, message)

    def _finish_with_payload_error(self, task: TaskRecord, blob: bytes, error_type: str, message: str) -> None:
        objects = self.state.objects
        if not task.owner_dead:
            returns = len(task.spec.return_ids())
            for index, object_id in enumerate(task.output_ids()):
                entry = objects.entries.get(object_id)
                if entry is None or (index >= returns and entry.state == READY):
                    continue  # (a generator's items it did report keep their values)
                entry.payload = msg.Payload.new(kind="e", data=blob)
                entry.size = len(blob)
                entry.is_error = True
                entry.state = READY
                entry.unhandled = _unhandled_if_unread(task, error_type)
                self.object_ready(object_id, entry)
                objects.maybe_free(object_id)
        self._close_task(task, FAILED, error_type, message)

    def _close_task(self, task: TaskRecord, state: str, error_type: Optional[str], message: Optional[str],
                    error_text: Optional[str] = None) -> None:
        head = self.state
        task.close(state, error_type, message)
        if task.spec.num_returns < 0:
            self.streams.closed(task)
        if task.spec.task_type == ACTOR_CREATION_TASK and state == FAILED:
            self.actors.creation_failed(task, error_type, message, error_text)
        head.tasks.pop(task.spec.task_id, None)
        # A compact copy for the state API; the record itself lives on only as lineage.
        # A rebuilt task finishing again replaces its old entry: the new one has all its attempts.
        if task.history_entry >= 0:
            head.history.drop(task.history_entry, task.spec.task_id)
        if task.spec.task_events:  # enable_task_events=False: the state API never shows it
            task.history_entry = head.history.add(task)
        kids = head.children.pop(task.spec.task_id, None)
        if kids and task.cancel_children:
            for child in kids:
                self.cancel_task(child, False, True)
        if task.pinned:
            task.pinned = False
            for object_id in task.spec.arg_refs + task.spec.borrowed:
                head.objects.unpin(object_id)

    def object_ready(self, object_id: bytes, entry: Any) -> None:
        """An object became READY (a value or an error): wake its readers and dependent tasks."""
        waiters, entry.waiters = entry.waiters, None
        if waiters:
            for waiter in waiters:
                waiter.notify(object_id, entry.is_error)
        dependents, entry.dependents = entry.dependents, None
        if dependents:
            for task in dependents:
                task.deps_waiting -= 1
                if task.deps_waiting == 0:
                    self.args_ready(task)
            self.schedule()

    # ---- cancellation ----------------------------------------------------------------

    def cancel(self, object_id: bytes, force: bool, recursive: bool) -> None:
        """cancel(ref) from the driver or a task; ValueError for force=True on an actor call."""
        task = self.state.tasks.get(task_of(object_id))
        if force and task is not None and task.spec.task_type == ACTOR_TASK:
            raise ValueError("force=True is not supported for actor tasks (as in Ray): killing the process would "
                             "kill the actor; use kill(actor) for that")
        self.cancel_task(task_of(object_id), force, recursive)

    def cancel_task(self, task_id: bytes, force: bool, recursive: bool) -> None:
        task = self.state.tasks.get(task_id)
        if task is None or task.finished:
            # Finished (or unknown): its results stay, but as in Ray a cancelled task is never
            # run again, so they can no longer be rebuilt (lineage.why_not_rebuildable).
            done = self.state.lineage.get(task_id)
            if done is not None:
                done.cancelled = True
            return
        task.cancelled = True
        if recursive:
            task.cancel_children = True
            for child in list(self.state.children.get(task_id, ())):
                self.cancel_task(child, force, recursive)
        worker = task.worker
        if worker is not None and task.spec.task_type == ACTOR_TASK:
            self.actors.cancel_actor_call(task)
            return
        if worker is not None and worker.task is not task:
            # Pipelined behind another task, not started: it fails now, like a pending task.
            # It stays in the worker's queue (so the head's and the worker's queues stay in
            # step); the worker skips it, and its report, if any, is discarded. Signalled: the
            # worker must read it before it gets to that task, even if it reads nothing meanwhile.
            self.outbox.post_urgent(worker.peer, msg.CancelTask.new(task_id=task_id), worker.pid)
            self.finish_with_error(task, TaskCancelledError(task_id.hex()), "TASK_CANCELLED",
                                   "cancelled before it started")
            return
        if worker is None:
            placed = task.node is not None and task.state == SUBMITTED_TO_WORKER
            if placed:
                self.state.scheduler.release(task.node.node_id, task.spec.resources)
                try:
                    task.node.waiting.remove(task)
                except ValueError:
                    pass
            self.finish_with_error(task, TaskCancelledError(task_id.hex()), "TASK_CANCELLED",
                                   "cancelled before it started")
            if placed:
                self.schedule()  # its resources are free again: the next task in line takes them
        elif force and worker.task is task:
            worker.expect_exit(INTENDED_USER_EXIT, f"killed by cancel(force=True) of task {task.spec.name}")
            try:
                os.kill(worker.pid, 9)
            except ProcessLookupError:
                pass
        else:
            # It runs: interrupted with KeyboardInterrupt (running its own code, it may read nothing).
            self.outbox.post_urgent(worker.peer, msg.CancelTask.new(task_id=task_id), worker.pid)


def _unhandled_if_unread(task: TaskRecord, error_type: Optional[str]) -> bool:
    """Whether the failure is announced if its result is freed unread (announcements.py): not a
    cancelled task's (the user asked for it) nor an actor's creation task's (its result is ours,
    nobody reads it; the actor's calls report the failure)."""
    return error_type != "TASK_CANCELLED" and task.spec.task_type != ACTOR_CREATION_TASK
