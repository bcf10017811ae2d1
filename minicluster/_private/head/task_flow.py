"""How a task moves from submission to its stored result (part of the head).

Runs in the driver process, as methods of `Head` (head.py), under the head's
lock. The path of a task:

    submit ─► waiting for its arguments (PENDING_ARGS_AVAIL; lost ones are rebuilt)
            ─► ready queue, one FIFO per resource shape (PENDING_NODE_ASSIGNMENT)
            ─► placed on a node, resources held (scheduler.py); waits there for a worker
            ─► sent to a worker (RUNNING); tiny tasks may be pipelined behind a busy one
            ─► "done": results stored (objects.py), getters and dependents woken, the
               task kept as lineage; or an error: retried if allowed, else the result

Cancellation lives here too: a task not yet running is dropped, a running one
interrupted (or its worker killed with force=True).
"""

from __future__ import annotations

import collections
import os
import sys
from typing import Any, Optional

from minicluster._private.store import object_store
from minicluster.exceptions import ObjectLostError, RayTaskError, TaskCancelledError, TaskUnschedulableError
from minicluster._private.wire import messages as msg
from minicluster._private.wire.hub import Peer
from minicluster._private.common.ids import task_of
from minicluster._private.head.lineage import arguments_of
from minicluster._private.head.object_directory import LOST, PENDING, READY, RELEASED
from minicluster._private.head.scheduler import INFEASIBLE, Unschedulable
from minicluster._private.store.serialization import error_blob
from minicluster._private.head.task_records import TaskRecord
from minicluster._private.common.task_spec import ACTOR_CREATION_TASK, ACTOR_TASK, NORMAL_TASK
from minicluster._private.head.virtual_nodes import INTENDED_USER_EXIT, NodeRecord, WorkerRecord

# Tiny tasks are pipelined: up to PIPELINE_DEPTH queued at a busy worker, so one
# message carries many. Deeper amortizes more but lets a worker hoard work other
# workers could start; only functions averaging under PIPELINE_QUICK_S qualify.
PIPELINE_DEPTH = 16
PIPELINE_QUICK_S = 0.001

# A node keeps `num_cpus` workers warm; extra ones (started while tasks were
# blocked in get) exit after being idle this long. Shorter frees memory sooner;
# longer avoids forking again in bursty nested workloads.
IDLE_RETIRE_S = 2.0


class TaskFlow:
    """Head methods that move tasks along; see the module docstring."""

    def _on_done(self, peer: Peer, worker: WorkerRecord, message: msg.Done) -> None:
        self._task_done(worker, message)
        if self.faults is not None:
            self.faults.after_done(worker)  # node triggers of a test's fault plan (fault_hooks.py)

    def _task_done(self, worker: WorkerRecord, message: msg.Done) -> None:
        if worker.actor is not None:
            self._actor_call_done(worker, message)
            return
        task_id, attempt, results, error_info, retire = (message.task_id, message.attempt, message.results,
                                                         message.error, message.retire)
        queue = worker.queue
        task = queue.popleft() if queue else None
        worker.tasks_done += 1
        was_blocked, worker.blocked = worker.blocked, 0
        if task is not None:
            # The next pipelined task inherits the lease; the last one gives it back.
            # An actor's creation task keeps it: _creation_done decides what the actor holds.
            keeps_lease = bool(queue) or task.spec.task_type == ACTOR_CREATION_TASK
            if keeps_lease and was_blocked:
                self.scheduler.acquire(worker.node.node_id, task.spec.resources)
            elif not keeps_lease and not was_blocked:
                self.scheduler.release(worker.node.node_id, task.spec.resources)
            if queue and not queue[0].finished:  # (a cancelled one is skipped by the worker)
                queue[0].set_state("RUNNING", worker_id=worker.worker_id)
            previous = self.durations.get(task.spec.function_id)
            took = message.end - message.start
            self.durations[task.spec.function_id] = took if previous is None else 0.8 * previous + 0.2 * took
        if retire:
            worker.retire(f"reached max_calls of {task.spec.name}" if task is not None else "reached max_calls")
            # It exits now (max_calls): anything still queued there never started.
            leftover, worker.queue = list(queue), collections.deque()
            if leftover:
                self.scheduler.release(worker.node.node_id, leftover[0].spec.resources)
            for other in leftover:
                other.worker = None
                other.node = None
                self._args_ready(other)
            queue = worker.queue
            self._replenish(worker.node)  # its successor starts now, not once its exit is reported
        if task is None or task.spec.task_id != task_id or task.attempt != attempt or task.finished:
            self._discard_results(task_id, results, worker.node.node_id)
        else:
            task.record_times(message.start, message.end)
            self._task_reported(task, results, error_info, worker.node.node_id)
            if task.spec.task_type == ACTOR_CREATION_TASK and self._creation_done(task, worker, error_info):
                self._schedule()
                return  # the worker now belongs to the actor
        if not retire and not queue:
            self._worker_free(worker)
        self._schedule()
        if queue and not retire:
            self._pipeline(worker)

    def _pipeline(self, worker: WorkerRecord) -> None:
        """Queue more tiny tasks of the same shape behind a busy worker's current one.

        Only tasks whose function is known to run in under PIPELINE_QUICK_S, and
        only those no free resources could take right now (_schedule ran first):
        one frame then carries many tasks, and one frame their results.
        """
        running = worker.queue[0].spec
        if (worker.dead or worker.blocked or len(worker.queue) >= PIPELINE_DEPTH or running.max_calls
                or running.task_type != NORMAL_TASK):
            return  # (an actor's creation task: its worker is about to belong to the actor)
        shape = worker.queue[0].shape
        if shape[1][0] == "SPREAD":
            return
        ready = self.ready.get(shape)
        node_id = worker.node.node_id
        while ready and len(worker.queue) < PIPELINE_DEPTH:
            task = ready[0]
            if task.finished or task.state != "PENDING_NODE_ASSIGNMENT":
                ready.popleft()
                continue
            strategy = task.spec.strategy
            if task.spec.max_calls or self.durations.get(task.spec.function_id, 1.0) >= PIPELINE_QUICK_S or (
                strategy[0] == "NODE" and strategy[1] != node_id
            ):
                break
            ready.popleft()
            task.node = worker.node
            task.set_state("SUBMITTED_TO_WORKER", node_id=node_id)
            self._dispatch(task, worker)

    def _add_task(self, spec: Any, submitter_node: bytes) -> None:
        task = TaskRecord(spec, spec.max_retries, submitter_node, self.task_changes)
        self.tasks[spec.task_id] = task
        if spec.parent_task_id in self.tasks:
            self.children[spec.parent_task_id].add(spec.task_id)
        if spec.task_type == ACTOR_TASK:
            self._add_actor_call(task)
        else:
            self._start_task(task)

    def _start_task(self, task: TaskRecord) -> None:
        """Pin the task's arguments, then queue it, or wait until its arguments exist."""
        objects = self.objects
        missing = []
        for object_id in arguments_of(task):
            if not objects.pin(object_id):
                missing.append(object_id)
        task.pinned = True
        if missing:
            self._finish_with_error(task, self._missing_error(missing[0]), "TASK_EXECUTION_EXCEPTION",
                                    "an argument was already freed")
            return
        self._placement_pending = True
        self._wait_for_args(task)
        if task.deps_waiting == 0 and self._placement_pending:
            self._schedule()

    def _wait_for_args(self, task: TaskRecord) -> None:
        """Register the task on its arguments that are not ready (rebuilding lost ones); queue it if none."""
        waiting = 0
        entries = self.objects.entries
        for object_id in task.spec.arg_refs:
            entry = entries.get(object_id)
            if entry is None:
                continue  # reported by _args_ready
            if entry.state in (LOST, RELEASED):
                self._recover(object_id)
            unreachable = entry.state == READY and not self._reachable(entry)
            if unreachable:
                self._await_unreachable(object_id)
            if entry.state == PENDING or unreachable:
                waiting += 1
                if entry.dependents is None:
                    entry.dependents = []
                entry.dependents.append(task)
        task.deps_waiting = waiting
        if waiting == 0:
            self._args_ready(task)

    def _args_ready(self, task: TaskRecord) -> None:
        """All top-level arguments exist: fail at once on an upstream error, else queue for placement."""
        if task.finished:
            return
        for object_id in task.spec.arg_refs:
            entry = self.objects.entries.get(object_id)
            if entry is None:
                self._finish_with_error(task, self._missing_error(object_id), "TASK_EXECUTION_EXCEPTION",
                                        "an argument was freed")
                return
            if entry.state != READY:
                self.set_waiting_again(task)
                return
            if entry.is_error:
                self._fail_on_argument_error(task, self._error_blob_of(object_id, entry))
                return
        if task.spec.task_type == ACTOR_TASK:
            self._queue_actor_call(task)
            return
        task.set_state("PENDING_NODE_ASSIGNMENT")
        shape = task.shape
        queue = self.ready.get(shape)
        if queue is None:
            queue = self.ready[shape] = collections.deque()
        elif queue:
            self._placement_pending = False  # tasks of this shape already wait: FIFO, nothing to try
        queue.append(task)

    def set_waiting_again(self, task: TaskRecord) -> None:
        """An argument stopped being ready before the task ran (its node died): wait for its rebuild."""
        task.set_state("PENDING_ARGS_AVAIL")
        self._wait_for_args(task)

    def _error_blob_of(self, object_id: bytes, entry: Any) -> bytes:
        payload = entry.payload
        if payload[0] != "s":
            return payload[1]
        for location in payload[1]:  # a large error lives in a store like a large value
            try:
                return bytes(object_store.read(self.session.layout.dir_of(location), object_id))
            except FileNotFoundError:
                continue
        return error_blob(ObjectLostError(object_id.hex()))

    def _fail_on_argument_error(self, task: TaskRecord, blob: bytes) -> None:
        """A task depending on a failed object fails with that error.

        Upstream task errors pass through unchanged (as in Ray); a lost-object error
        is wrapped so the dependent's error is a RayTaskError that is also the loss.
        """
        from minicluster._private.store.serialization import deserialize

        error, _ = deserialize(blob)
        if not isinstance(error, RayTaskError):
            blob = error_blob(RayTaskError(task.spec.name, f"{type(error).__name__}: {error}", error))
        self._finish_with_payload_error(task, blob, "TASK_EXECUTION_EXCEPTION", "an argument is an error")

    def _schedule(self) -> None:
        """Place queued tasks on nodes with free resources and hand them to workers."""
        for shape, queue in list(self.ready.items()):
            while queue:
                task = queue[0]
                if task.finished or task.state != "PENDING_NODE_ASSIGNMENT":
                    queue.popleft()
                    continue
                try:
                    node_id = self.scheduler.place(task.spec.resources, task.spec.strategy, self._preferred_node(task))
                except Unschedulable as exc:
                    queue.popleft()
                    self._finish_with_error(task, TaskUnschedulableError(str(exc)), "TASK_UNSCHEDULABLE_ERROR", str(exc))
                    continue
                if node_id is None:
                    break
                if node_id == INFEASIBLE:
                    self._warn_infeasible(shape, task)
                    break
                queue.popleft()
                self.scheduler.acquire(node_id, task.spec.resources)
                node = self.nodes[node_id]
                task.node = node
                task.set_state("SUBMITTED_TO_WORKER", node_id=node_id)
                if node.idle:
                    self._dispatch(task, node.idle.popleft())
                else:
                    node.waiting.append(task)
                    self._replenish(node)
            if not queue:
                del self.ready[shape]

    def _preferred_node(self, task: TaskRecord) -> Optional[bytes]:
        best, best_size = task.submitter_node, 0
        for object_id in task.spec.arg_refs:
            entry = self.objects.entries.get(object_id)
            if entry is not None and entry.payload is not None and entry.payload[0] == "s":
                if entry.size > best_size and entry.payload[1]:
                    best, best_size = entry.payload[1][0], entry.size
        return best

    def _warn_infeasible(self, shape: tuple, task: TaskRecord) -> None:
        if shape in self.infeasible_warned:
            return
        self.infeasible_warned.add(shape)
        print(
            f"minicluster: warning: task {task.spec.name} needs {task.spec.resources}, which no node has "
            f"(cluster: {self.scheduler.totals()}). It stays pending until a node that fits is added.",
            file=sys.stderr,
        )

    def _replenish(self, node: NodeRecord) -> None:
        """Ask the node for workers when tasks wait for one there."""
        if not node.alive or node.peer is None:
            return
        want = len(node.waiting) - node.pending_spawn
        if want > 0:
            node.pending_spawn += want
            self._post(node.peer, msg.Spawn.new(count=want))
        elif node.pool_size() + node.pending_spawn < node.target_workers:
            missing = node.target_workers - node.pool_size() - node.pending_spawn
            node.pending_spawn += missing
            self._post(node.peer, msg.Spawn.new(count=missing))

    def _worker_free(self, worker: WorkerRecord) -> None:
        node = worker.node
        while node.waiting:
            task = node.waiting.popleft()
            if task.finished:
                self.scheduler.release(node.node_id, task.spec.resources)
                continue
            self._dispatch(task, worker)
            return
        node.idle.append(worker)
        if node.pool_size() > node.target_workers:
            # Extra workers are started for tasks blocked in get(); let them go once idle.
            self.hub.call_later(IDLE_RETIRE_S, lambda: self._retire_if_idle(worker))

    def _retire_if_idle(self, worker: WorkerRecord) -> None:
        with self.lock:
            node = worker.node
            if worker.dead or worker.retiring or worker.queue or node.pool_size() <= node.target_workers:
                return
            if worker.owned:  # (only live ones: an entry's deletion drops its id from its owner)
                return  # it owns live objects: its exit would take them along (OwnerDiedError)
            try:
                node.idle.remove(worker)
            except ValueError:
                return
            worker.retire("idle surplus worker (started while tasks were blocked in get)")
            self._post(worker.peer, msg.Retire.new())
            self._flush()

    def _dispatch(self, task: TaskRecord, worker: WorkerRecord) -> None:
        worker.queue.append(task)
        task.worker = worker
        if len(worker.queue) == 1:
            task.set_state("RUNNING", node_id=worker.node.node_id, worker_id=worker.worker_id)
        self._send_exec(task, worker)

    def _send_exec(self, task: TaskRecord, worker: WorkerRecord) -> None:
        spec = task.spec
        peer = worker.peer
        if spec.task_type != ACTOR_TASK and spec.function_id not in worker.functions:
            worker.functions.add(spec.function_id)
            self._post(peer, msg.DefineFunction.new(function_id=spec.function_id,
                                                    blob=self.functions[spec.function_id]))
        payloads = None
        if spec.arg_refs:
            payloads = {object_id: self.payload_of(object_id) for object_id in spec.arg_refs}
        actor = None
        if spec.task_type == ACTOR_CREATION_TASK:
            meta = self.actors[spec.actor_id].meta
            actor = msg.ActorConfig.new(actor_id=spec.actor_id, max_concurrency=meta["max_concurrency"],
                                        is_async=meta["is_async"], class_name=meta["class_name"])
        faults = self.faults  # a test's fault plan, if one is installed: orders for the worker (fault_hooks.py)
        message = msg.Exec.new(task_id=spec.task_id, attempt=task.attempt, function_id=spec.function_id,
                               name=spec.name, args_blob=spec.args, payloads=payloads, num_returns=spec.num_returns,
                               retry_exceptions=spec.retry_exceptions, max_calls=spec.max_calls,
                               task_type=spec.task_type, func_name=spec.func_name, method=spec.method,
                               actor_config=actor, faults=None if faults is None else faults.on_exec(task, worker))
        if faults is None or not faults.hold_exec(worker, message):
            self._post(peer, message)

    def _task_reported(self, task: TaskRecord, results: list, error_info: Optional[msg.ErrorInfo],
                       node_id: bytes) -> None:
        task.worker = None
        if error_info is None:
            self._finish(task, results, node_id, "FINISHED", None, None)
            return
        error_type, retryable, message = error_info.error_type, error_info.retryable, error_info.message
        if error_type == "ARG_LOST" and not task.cancelled:
            # An argument's copy vanished before the worker could read it: not the task's
            # fault, so no retry is used; wait for the argument to be rebuilt.
            self.check_copies(bytes.fromhex(message))
            task.set_state("PENDING_ARGS_AVAIL")
            self._wait_for_args(task)
            return
        if task.cancelled or error_type == "TASK_CANCELLED":
            self._finish(task, results, node_id, "FAILED", "TASK_CANCELLED", message)
        elif retryable and task.retries_left != 0:
            task.fail_attempt(error_type, message)
            self._retry(task)
        else:
            self._finish(task, results, node_id, "FAILED", error_type, message)

    def _retry(self, task: TaskRecord) -> None:
        if task.retries_left > 0:
            task.retries_left -= 1
        task.new_attempt()
        task.node = None
        self._args_ready(task)

    def _finish(self, task: TaskRecord, results: list, node_id: bytes, state: str, error_type: Optional[str], message: Optional[str]) -> None:
        is_error = state == "FAILED"
        if task.owner_dead:
            self._discard_results(task.spec.task_id, results, node_id)
        for object_id, value in zip(task.spec.return_ids(), results):
            if task.owner_dead:
                continue
            self._store(object_id, value.kind, value.data, value.refs, node_id, is_error)
        if not is_error and not task.owner_dead:
            self._keep_lineage(task)
        self._close_task(task, state, error_type, message)

    def _keep_lineage(self, task: TaskRecord) -> None:
        """Keep a finished task while its results exist, so they can be rebuilt if lost."""
        entries = self.objects.entries
        live = sum(1 for object_id in task.spec.return_ids() if object_id in entries)
        kind = task.spec.task_type
        if not live or not (kind == NORMAL_TASK or (kind == ACTOR_TASK and task.spec.max_retries != 0)):
            return  # actor calls are rebuilt only with max_task_retries (SPEC section 3)
        if not task.lineage_held:
            task.lineage_held = True
            for object_id in arguments_of(task):
                self.objects.add_lineage_ref(object_id)
        self.lineage.keep(task, live)

    def _release_lineage_args(self, task: TaskRecord) -> None:
        if task.lineage_held:
            task.lineage_held = False
            for object_id in arguments_of(task):
                self.objects.release_lineage_ref(object_id)

    def _entry_deleted(self, object_id: bytes, entry: Any) -> None:
        self.lineage.result_deleted(object_id)
        owner = self.workers.get(entry.owner)
        if owner is not None:
            owner.owned.discard(object_id)

    def _store(self, object_id: bytes, kind: str, data: Any, nested: list, node_id: bytes, is_error: bool) -> None:
        entry = self.objects.set_value(object_id, kind, data, nested, node_id, is_error)
        if entry is not None:
            self._object_ready(object_id, entry)
            self.objects.maybe_free(object_id)
            if kind == "s":
                self.objects.make_room(node_id)

    def _discard_results(self, task_id: bytes, results: list, node_id: bytes) -> None:
        """Results nobody will read (a stale attempt, a dead owner): delete their store files."""
        store_dir = self.session.layout.dir_of(node_id)
        for index, value in enumerate(results, start=1):
            if value.kind == "s":
                object_store.delete(store_dir, task_id + index.to_bytes(4, "little"))

    def _finish_with_error(self, task: TaskRecord, error: BaseException, error_type: str, message: str) -> None:
        self._finish_with_payload_error(task, error_blob(error), error_type, message)

    def _finish_with_payload_error(self, task: TaskRecord, blob: bytes, error_type: str, message: str) -> None:
        for object_id in task.spec.return_ids():
            if task.owner_dead:
                continue
            entry = self.objects.entries.get(object_id)
            if entry is None:
                continue
            entry.payload = msg.Payload.new(kind="e", data=blob)
            entry.size = len(blob)
            entry.is_error = True
            entry.state = READY
            self._object_ready(object_id, entry)
            self.objects.maybe_free(object_id)
        self._close_task(task, "FAILED", error_type, message)

    def _close_task(self, task: TaskRecord, state: str, error_type: Optional[str], message: Optional[str]) -> None:
        task.close(state, error_type, message)
        if task.spec.task_type == ACTOR_CREATION_TASK and state == "FAILED":
            self._creation_failed(task, error_type, message)
        self.tasks.pop(task.spec.task_id, None)
        # A compact copy for the state API; the record itself lives on only as lineage.
        # A rebuilt task finishing again replaces its old entry: the new one has all its attempts.
        self.history.drop(task.history_entry, task.spec.task_id)
        task.history_entry = self.history.add(task)
        kids = self.children.pop(task.spec.task_id, None)
        if kids and task.cancelled:
            for child in kids:
                self._cancel_task(child, False, True)
        if task.pinned:
            task.pinned = False
            for object_id in task.spec.arg_refs + task.spec.borrowed:
                self.objects.unpin(object_id)

    def _object_ready(self, object_id: bytes, entry: Any) -> None:
        waiters, entry.waiters = entry.waiters, None
        if waiters:
            for waiter in waiters:
                waiter.notify()
        dependents, entry.dependents = entry.dependents, None
        if dependents:
            for task in dependents:
                task.deps_waiting -= 1
                if task.deps_waiting == 0:
                    self._args_ready(task)
            self._schedule()

    def _cancel(self, object_id: bytes, force: bool, recursive: bool) -> None:
        task = self.tasks.get(task_of(object_id))
        if force and task is not None and task.spec.task_type == ACTOR_TASK:
            raise ValueError("force=True is not supported for actor tasks (as in Ray): killing the process would "
                             "kill the actor; use kill(actor) for that")
        self._cancel_task(task_of(object_id), force, recursive)

    def _cancel_task(self, task_id: bytes, force: bool, recursive: bool) -> None:
        task = self.tasks.get(task_id)
        if task is None or task.finished:
            return  # finished (or unknown): cancelling changes nothing
        task.cancelled = True
        if recursive:
            for child in list(self.children.get(task_id, ())):
                self._cancel_task(child, force, recursive)
        worker = task.worker
        if worker is not None and task.spec.task_type == ACTOR_TASK:
            self._cancel_actor_call(task)
            return
        if worker is not None and worker.task is not task:
            # Pipelined behind another task, not started: it fails now, like a pending task.
            # It stays in the worker's queue (so the head's and the worker's queues stay in
            # step); the worker skips it, and its report, if any, is discarded.
            self._post(worker.peer, msg.CancelTask.new(task_id=task_id))
            self._finish_with_error(task, TaskCancelledError(task_id.hex()), "TASK_CANCELLED",
                                    "cancelled before it started")
            return
        if worker is None:
            if task.node is not None:
                self.scheduler.release(task.node.node_id, task.spec.resources)
                try:
                    task.node.waiting.remove(task)
                except ValueError:
                    pass
            self._finish_with_error(task, TaskCancelledError(task_id.hex()), "TASK_CANCELLED",
                                    "cancelled before it started")
        elif force and worker.task is task:
            worker.expect_exit(INTENDED_USER_EXIT, f"killed by cancel(force=True) of task {task.spec.name}")
            try:
                os.kill(worker.pid, 9)
            except ProcessLookupError:
                pass
        else:
            self._post(worker.peer, msg.CancelTask.new(task_id=task_id))
