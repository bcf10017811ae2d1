"""The head: the one place that knows every task, object, worker and node of a session.

Runs inside the driver process. Its state is guarded by one lock and touched
from two kinds of threads: the user's threads (through driver.py: submit, get,
put, ...) and the hub thread (hub.py: messages from node managers and workers,
timers). Every entry point takes the lock, changes state, queues outgoing
messages per connection, and sends them as one frame per connection when it
leaves (`_flush`), so a burst of work costs one syscall per worker.

Where things go:

    submit ─► waiting for arguments (PENDING_ARGS_AVAIL)
            ─► ready queue, one FIFO per resource shape (PENDING_NODE_ASSIGNMENT)
            ─► placed on a node, resources held (scheduler.py); waits there for a worker
            ─► sent to an idle worker (RUNNING)
            ─► "done": results stored (objects.py), dependents and getters woken
               or an error: retried if allowed, else stored as the result

    worker dies ─► its task's attempt failed (WORKER_DIED); retried if retries
                   are left, else WorkerCrashedError; its borrowed refs are
                   dropped and the objects it owned become OwnerDiedError
    node dies   ─► all its workers die (NODE_DIED, NodeDiedError); its copies
                   of objects are gone (objects with no copy left are lost)
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import config, object_store, virtual_nodes as node_procs
from .exceptions import (
    NodeDiedError,
    ObjectFetchTimedOutError,
    ObjectLostError,
    ObjectReconstructionFailedError,
    ObjectReconstructionFailedLineageEvictedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
    RayTaskError,
    OwnerDiedError,
    ReferenceCountingAssertionError,
    TaskCancelledError,
    TaskUnschedulableError,
    WorkerCrashedError,
)
from .hub import Hub, Peer
from .ids import new_node_id, task_of
from .virtual_nodes import NodeRecord, WorkerRecord
from .lineage import Lineage, arguments_of
from .objects import LOST, PENDING, READY, RELEASED, ObjectDirectory, Waiter
from .scheduler import INFEASIBLE, Scheduler, Unschedulable
from .serialization import FLAG_ERROR, serialize
from .task_records import TaskRecord, TaskHistory

DRIVER = b"driver"  # owner id of objects the driver creates

# Tiny tasks are pipelined: up to PIPELINE_DEPTH queued at a busy worker, so one
# message carries many. Deeper amortizes more but lets a worker hoard work other
# workers could start; only functions averaging under PIPELINE_QUICK_S qualify.
PIPELINE_DEPTH = 16

# A node keeps `num_cpus` workers warm; extra ones (started while tasks were
# blocked in get) exit after being idle this long. Shorter frees memory sooner;
# longer avoids forking again in bursty nested workloads.
IDLE_RETIRE_S = 2.0
PIPELINE_QUICK_S = 0.001


def error_blob(error: BaseException) -> bytes:
    return serialize(error, flags=FLAG_ERROR).to_bytes()


class Head:
    def __init__(self, session: Any, driver_counts: Dict[bytes, int], drain_driver_refs: Callable[[], List[bytes]]) -> None:
        self.session = session
        self.lock = threading.RLock()
        self.scheduler = Scheduler()
        self.objects = ObjectDirectory(driver_counts, session.layout, self._entry_deleted)
        self.default_capacity = config.MIN_SHM_BYTES  # set by the driver from object_store_memory
        self.lineage = Lineage(config.max_lineage_bytes(), self._release_lineage_args)
        self.tasks: Dict[bytes, TaskRecord] = {}
        self.history = TaskHistory()
        self.children: Dict[bytes, set] = collections.defaultdict(set)  # parent task -> child task ids
        self.functions: Dict[bytes, bytes] = {}
        self.nodes: Dict[bytes, NodeRecord] = {}
        self.workers: Dict[bytes, WorkerRecord] = {}
        self.ready: Dict[tuple, collections.deque] = {}  # resource shape -> tasks waiting for placement
        self.infeasible_warned: set = set()
        self.durations: Dict[bytes, float] = {}  # function id -> moving average run time (s)
        self.fetch_timers: Dict[bytes, list] = {}  # object id -> timer, while all its copies are on stopped nodes
        self.fetch_timeout_s = config.fetch_fail_timeout_s()
        self._dirty: List[Peer] = []
        self._placement_pending = False
        self._drain_driver_refs = drain_driver_refs
        self.hub = Hub(session.socket_path, session.key, self)
        self.closed = False

    # ==== lifecycle ==================================================================

    def start(self) -> None:
        self.hub.start()
        self._housekeeping()

    def _housekeeping(self) -> None:
        """Every 100 ms: apply refs the driver dropped while idle (so their objects are freed)."""
        if self.closed:
            return
        with self.lock:
            self._apply_driver_refs()
            self._flush()
        self.hub.call_later(0.1, self._housekeeping)

    def add_node(self, num_cpus: float, resources: Optional[Dict[str, float]], num_workers: int) -> NodeRecord:
        node_id = new_node_id()
        total = {"CPU": float(num_cpus), f"node:{node_id.hex()}": 1.0}
        for key, qty in (resources or {}).items():
            total[key] = float(qty)
        layout = self.session.layout
        with self.lock:
            node = NodeRecord(node_id, len(self.nodes), total, num_workers, layout.dir_of(node_id),
                              layout.dir_of(object_store.spill_location(node_id)), self.default_capacity)
            self.objects.capacity[node_id] = node.capacity
            self.nodes[node_id] = node
            self.scheduler.add_node(node_id, total)
            node.pending_spawn = num_workers
            node.start_time = time.time()
        cfg = dict(
            node_id=node_id,
            socket_path=self.session.socket_path,
            key=self.session.key,
            store_root=layout.store_root,
            spill_root=layout.spill_root,
            capacity=node.capacity,
            num_workers=num_workers,
            # The package's own folder first: editable installs are found by a
            # site hook that the node's `python -S` does not run.
            sys_path=[os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] + sys.path,
        )
        node.process = node_procs.launch(cfg, None)
        node.pid = node.process.pid
        with self.lock:
            self._schedule()
            self._flush()
        return node

    def wait_for_nodes(self, timeout: float) -> None:
        """Block until every live node manager has said hello; fail fast if one exits."""
        deadline = time.monotonic() + timeout
        for node in list(self.nodes.values()):
            while node.alive and not node.hello.wait(0.05):
                code = node.process.poll() if node.process else None
                if code is not None:
                    raise RuntimeError(f"minicluster: {node.name} failed to start (its process exited with {code}); "
                                       "see its error output above")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"minicluster: {node.name} did not start within {timeout:.0f} s")

    def kill_node(self, node_id: bytes, reason: str = "killed") -> None:
        with self.lock:
            node = self.nodes[node_id]
            if not node.alive:
                return
            node_procs.kill(node)
            self._node_died(node, reason)
            self._flush()

    def stop_node(self, node_id: bytes) -> None:
        with self.lock:
            node = self.nodes[node_id]
            if not node.alive or node.stopped:
                return
            os.killpg(node.pid, signal.SIGSTOP)
            node.stopped = True
            self.scheduler.set_stopped(node_id, True)

    def resume_node(self, node_id: bytes) -> None:
        with self.lock:
            node = self.nodes[node_id]
            if not node.alive or not node.stopped:
                return
            os.killpg(node.pid, signal.SIGCONT)
            node.stopped = False
            self.scheduler.set_stopped(node_id, False)
            self._node_reachable(node)
            self._schedule()
            self._flush()

    def object_locations(self, object_id: bytes) -> List[bytes]:
        with self.lock:
            entry = self.objects.entries.get(object_id)
            if entry is None or entry.payload is None or entry.payload[0] != "s":
                return []
            return list(entry.payload[1])

    def shutdown(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            for node in self.nodes.values():
                if node.alive:
                    node.alive = False
                    if node.pid:
                        try:
                            os.killpg(node.pid, 9)
                        except (ProcessLookupError, PermissionError):
                            pass
            for node in self.nodes.values():
                node_procs.kill(node)
                node.end_time = node.end_time or time.time()
            # Wake everything still blocked in the driver so it can fail instead of hanging.
            for entry in self.objects.entries.values():
                for waiter in entry.waiters or ():
                    if not waiter.fired:
                        waiter.fired = True
                        waiter.on_ready(waiter)
        self.hub.stop()

    # ==== messages from the hub ======================================================

    def on_messages(self, peer: Peer, messages: List[Any]) -> None:
        with self.lock:
            self._apply_driver_refs()
            state = peer.state
            for message in messages:
                handler = _HANDLERS.get(message[0])
                if handler is None:
                    print(f"minicluster: unknown message {message[0]!r}", file=sys.stderr)
                    continue
                handler(self, peer, state, message)
                state = peer.state
            self._flush()

    def on_close(self, peer: Peer) -> None:
        with self.lock:
            state = peer.state
            if isinstance(state, WorkerRecord):
                if not state.dead:
                    # The node manager reports the exit status right after; wait briefly for it.
                    worker = state
                    self.hub.call_later(config.DEATH_REPORT_GRACE_S, lambda: self._death_timeout(worker))
            elif isinstance(state, NodeRecord):
                if state.alive and not self.closed:
                    node_procs.kill(state)  # whatever is left of it goes too
                    self._node_died(state, "its node manager process exited")
            self._flush()

    def _death_timeout(self, worker: WorkerRecord) -> None:
        with self.lock:
            if not worker.dead:
                self._worker_died(worker, None)
                self._flush()

    # ---- node managers ----

    def _on_node_hello(self, peer: Peer, state: Any, message: tuple) -> None:
        _, node_id, pid = message
        node = self.nodes.get(node_id)
        if node is None:
            return
        node.peer = peer
        peer.state = node
        node.hello.set()

    def _on_worker_exit(self, peer: Peer, state: Any, message: tuple) -> None:
        _, pid, worker_id, exitcode = message
        worker = self.workers.get(worker_id)
        if worker is None:
            node = state
            if isinstance(node, NodeRecord) and node.alive and node.pending_spawn > 0:
                node.pending_spawn -= 1  # died before it could connect
                self._replenish(node)
            return
        self._worker_died(worker, exitcode)

    # ---- workers ----

    def _on_worker_hello(self, peer: Peer, state: Any, message: tuple) -> None:
        _, worker_id, node_id, pid = message
        node = self.nodes.get(node_id)
        if node is None or not node.alive:
            self.hub.close_peer(peer)
            return
        worker = WorkerRecord(worker_id, node, pid, peer)
        peer.state = worker
        self.workers[worker_id] = worker
        node.workers[worker_id] = worker
        node.pending_spawn = max(0, node.pending_spawn - 1)
        self._worker_free(worker)

    def _on_fn(self, peer: Peer, worker: WorkerRecord, message: tuple) -> None:
        # Not marked as known to this worker: it holds the function as a RemoteFunction,
        # not in its task-function cache, so its first task of it must carry the blob.
        self.functions[message[1]] = message[2]

    def _on_submit(self, peer: Peer, worker: WorkerRecord, message: tuple) -> None:
        spec = message[1]
        for object_id in spec.return_ids():
            self.objects.create(object_id, worker.worker_id)
            self.objects.add_borrower(object_id, worker.worker_id)
            worker.borrowed.add(object_id)
            worker.owned.add(object_id)
        self._add_task(spec, worker.node.node_id)

    def _on_put(self, peer: Peer, worker: WorkerRecord, message: tuple) -> None:
        _, object_id, kind, data, refs = message
        self.objects.create(object_id, worker.worker_id)
        self.objects.add_borrower(object_id, worker.worker_id)  # before storing: the put's ref holds it
        worker.borrowed.add(object_id)
        worker.owned.add(object_id)
        self._store(object_id, kind, data, refs, worker.node.node_id, False)

    def _on_refs(self, peer: Peer, worker: WorkerRecord, message: tuple) -> None:
        _, added, removed = message
        objects = self.objects
        for object_id in added:
            if objects.add_borrower(object_id, worker.worker_id):
                worker.borrowed.add(object_id)
        for object_id in removed:
            worker.borrowed.discard(object_id)
            objects.remove_borrower(object_id, worker.worker_id)

    def _on_located(self, peer: Peer, worker: WorkerRecord, message: tuple) -> None:
        _, object_id, node_id, size = message
        self.objects.add_location(object_id, node_id, size)
        self.objects.make_room(node_id)

    def _on_lost(self, peer: Peer, worker: WorkerRecord, message: tuple) -> None:
        self.check_copies(message[1])

    def _on_get(self, peer: Peer, worker: WorkerRecord, message: tuple) -> None:
        _, request_id, object_ids = message  # the worker itself enforces get()'s timeout
        self._worker_wait(worker, request_id, object_ids, len(object_ids), None, reply_all=True)

    def _on_wait(self, peer: Peer, worker: WorkerRecord, message: tuple) -> None:
        _, request_id, object_ids, num_returns, timeout = message
        self._worker_wait(worker, request_id, object_ids, num_returns, timeout, reply_all=False)

    def _on_forget(self, peer: Peer, worker: WorkerRecord, message: tuple) -> None:
        waiter = worker.requests.pop(message[1], None)
        if waiter is not None:
            waiter.fired = True
            self._unregister_waiter(waiter)
            self._unblock(worker)

    def _on_cancel(self, peer: Peer, worker: WorkerRecord, message: tuple) -> None:
        _, object_id, force, recursive = message
        self._cancel(object_id, force, recursive)

    def _on_done(self, peer: Peer, worker: WorkerRecord, message: tuple) -> None:
        _, task_id, attempt, results, error_info, start, end, retire = message
        queue = worker.queue
        task = queue.popleft() if queue else None
        worker.tasks_done += 1
        was_blocked, worker.blocked = worker.blocked, 0
        if task is not None:
            # The next pipelined task inherits the lease; the last one gives it back.
            if queue:
                if was_blocked:
                    self.scheduler.acquire(worker.node.node_id, task.spec.resources)
                queue[0].set_state("RUNNING", worker_id=worker.worker_id)
            elif not was_blocked:
                self.scheduler.release(worker.node.node_id, task.spec.resources)
            previous = self.durations.get(task.spec.function_id)
            took = end - start
            self.durations[task.spec.function_id] = took if previous is None else 0.8 * previous + 0.2 * took
        if retire:
            worker.retiring = True
            # It exits now (max_calls): anything still queued there never started.
            leftover, worker.queue = list(queue), collections.deque()
            if leftover:
                self.scheduler.release(worker.node.node_id, leftover[0].spec.resources)
            for other in leftover:
                other.worker = None
                other.node = None
                self._args_ready(other)
            queue = worker.queue
        if task is None or task.spec.task_id != task_id or task.attempt != attempt:
            self._discard_results(task_id, results, worker.node.node_id)
        else:
            task.record_times(start, end)
            self._task_reported(task, results, error_info, worker.node.node_id)
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
        if worker.dead or worker.blocked or len(worker.queue) >= PIPELINE_DEPTH or worker.queue[0].spec.max_calls:
            return
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

    # ==== tasks ======================================================================

    def submit_from_driver(self, spec: Any, function_blob: Optional[bytes], driver_node: bytes) -> None:
        with self.lock:
            self._apply_driver_refs()
            if function_blob is not None:
                self.functions[spec.function_id] = function_blob
            for object_id in spec.return_ids():
                self.objects.create(object_id, DRIVER)
            self._add_task(spec, driver_node)
            self._flush()

    def _add_task(self, spec: Any, submitter_node: bytes) -> None:
        task = TaskRecord(spec, spec.max_retries, submitter_node)
        self.tasks[spec.task_id] = task
        if spec.parent_task_id in self.tasks:
            self.children[spec.parent_task_id].add(spec.task_id)
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
                self._fail_on_argument_error(task, entry.payload[1])
                return
        task.set_state("PENDING_NODE_ASSIGNMENT")
        shape = task.shape
        queue = self.ready.get(shape)
        if queue is None:
            queue = self.ready[shape] = collections.deque()
        elif queue:
            self._placement_pending = False  # tasks of this shape already wait: FIFO, nothing to try
        queue.append(task)

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

    def set_waiting_again(self, task: TaskRecord) -> None:
        """An argument stopped being ready before the task ran (its node died): wait for its rebuild."""
        task.set_state("PENDING_ARGS_AVAIL")
        self._wait_for_args(task)

    def _fail_on_argument_error(self, task: TaskRecord, blob: bytes) -> None:
        """A task depending on a failed object fails with that error.

        Upstream task errors pass through unchanged (as in Ray); a lost-object error
        is wrapped so the dependent's error is a RayTaskError that is also the loss.
        """
        from .serialization import deserialize

        error, _ = deserialize(blob)
        if not isinstance(error, RayTaskError):
            blob = error_blob(RayTaskError(task.spec.name, f"{type(error).__name__}: {error}", error))
        self._finish_with_payload_error(task, blob, "TASK_EXECUTION_EXCEPTION", "an argument is an error")

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
            self._post(node.peer, ("spawn", want))
        elif len(node.workers) + node.pending_spawn < node.target_workers:
            missing = node.target_workers - len(node.workers) - node.pending_spawn
            node.pending_spawn += missing
            self._post(node.peer, ("spawn", missing))

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
        if len(node.workers) > node.target_workers:
            # Extra workers are started for tasks blocked in get(); let them go once idle.
            self.hub.call_later(IDLE_RETIRE_S, lambda: self._retire_if_idle(worker))

    def _retire_if_idle(self, worker: WorkerRecord) -> None:
        with self.lock:
            node = worker.node
            if worker.dead or worker.retiring or worker.queue or len(node.workers) <= node.target_workers:
                return
            try:
                node.idle.remove(worker)
            except ValueError:
                return
            worker.retiring = True
            self._post(worker.peer, ("retire",))
            self._flush()

    def _dispatch(self, task: TaskRecord, worker: WorkerRecord) -> None:
        spec = task.spec
        worker.queue.append(task)
        task.worker = worker
        if len(worker.queue) == 1:
            task.set_state("RUNNING", node_id=worker.node.node_id, worker_id=worker.worker_id)
        peer = worker.peer
        if spec.function_id not in worker.functions:
            worker.functions.add(spec.function_id)
            self._post(peer, ("fn", spec.function_id, self.functions[spec.function_id]))
        payloads = None
        if spec.arg_refs:
            payloads = {}
            entries = self.objects.entries
            for object_id in spec.arg_refs:
                payloads[object_id] = self.payload_of(object_id)
        self._post(peer, ("exec", (spec.task_id, task.attempt, spec.function_id, spec.name, spec.args, payloads,
                                   spec.num_returns, spec.retry_exceptions, spec.max_calls, spec.actor_id,
                                   spec.task_type, spec.func_name)))

    def _task_reported(self, task: TaskRecord, results: list, error_info: Optional[tuple], node_id: bytes) -> None:
        task.worker = None
        if error_info is None:
            self._finish(task, results, node_id, "FINISHED", None, None)
            return
        error_type, retryable, message = error_info
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
        for object_id, (kind, data, nested) in zip(task.spec.return_ids(), results):
            if task.owner_dead:
                continue
            self._store(object_id, kind, data, nested, node_id, is_error)
        if not is_error and not task.owner_dead:
            self._keep_lineage(task)
        self._close_task(task, state, error_type, message)

    def _keep_lineage(self, task: TaskRecord) -> None:
        """Keep a finished task while its results exist, so they can be rebuilt if lost."""
        entries = self.objects.entries
        live = sum(1 for object_id in task.spec.return_ids() if object_id in entries)
        if not live or task.spec.task_type != "NORMAL_TASK":
            return
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

    def _entry_deleted(self, object_id: bytes) -> None:
        self.lineage.result_deleted(object_id)

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
        for index, (kind, _, _) in enumerate(results, start=1):
            if kind == "s":
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
            entry.payload = ("e", blob)
            entry.size = len(blob)
            entry.is_error = True
            entry.state = READY
            self._object_ready(object_id, entry)
            self.objects.maybe_free(object_id)
        self._close_task(task, "FAILED", error_type, message)

    def _close_task(self, task: TaskRecord, state: str, error_type: Optional[str], message: Optional[str]) -> None:
        task.close(state, error_type, message)
        self.tasks.pop(task.spec.task_id, None)
        if not task.in_history:  # a rebuilt task is already there, with its new attempts
            task.in_history = True
            self.history.add(task)
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

    # ==== failures ===================================================================

    def _worker_died(self, worker: WorkerRecord, exitcode: Optional[int], node_death: Optional[str] = None) -> None:
        if worker.dead:
            return
        worker.dead = True
        node = worker.node
        node.workers.pop(worker.worker_id, None)
        self.workers.pop(worker.worker_id, None)
        try:
            node.idle.remove(worker)
        except ValueError:
            pass
        if worker.peer is not None:
            self.hub.close_peer(worker.peer)
        for waiter in worker.requests.values():
            waiter.fired = True
            self._unregister_waiter(waiter)
        worker.requests.clear()
        queued, worker.queue = list(worker.queue), collections.deque()
        if queued:
            if not worker.blocked:
                self.scheduler.release(node.node_id, queued[0].spec.resources)
            for task in queued:
                task.worker = None
            self._attempt_died(queued[0], worker, exitcode, node_death)
            for task in queued[1:]:  # never started: back in line, no retry used
                if not task.finished:
                    task.node = None
                    task.set_state("PENDING_NODE_ASSIGNMENT")
                    self._args_ready(task)
        for object_id in list(worker.borrowed):
            self.objects.remove_borrower(object_id, worker.worker_id)
        worker.borrowed.clear()
        self._owner_died(worker)
        if node_death is None and node.alive:
            self._replenish(node)
        self._schedule()

    def _attempt_died(self, task: TaskRecord, worker: WorkerRecord, exitcode: Optional[int], node_death: Optional[str]) -> None:
        reason = f"node {worker.node.name} died: {node_death}" if node_death else node_procs.exit_reason(exitcode)
        error_type = "NODE_DIED" if node_death else "WORKER_DIED"
        if task.cancelled:
            self._finish_with_error(task, TaskCancelledError(task.spec.task_id.hex()), "TASK_CANCELLED",
                                    f"cancelled with force=True (worker {reason})")
            return
        message = f"worker pid={worker.pid} {reason}"
        if task.retries_left != 0:
            task.fail_attempt(error_type, message)
            self._retry(task)
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
        self._finish_with_error(task, error, error_type, message)

    def _owner_died(self, worker: WorkerRecord) -> None:
        """The worker owned these objects; without their owner they are gone for good."""
        if not worker.owned:
            return
        for object_id in worker.owned:
            entry = self.objects.entries.get(object_id)
            if entry is None:
                continue
            blob = error_blob(OwnerDiedError(object_id.hex(), f"worker {worker.worker_id.hex()} (pid {worker.pid})"))
            entry = self.objects.replace_with_error(object_id, blob)
            if entry is not None:
                self._object_ready(object_id, entry)
            task = self.tasks.get(task_of(object_id))
            if task is not None and task.spec.owner == worker.worker_id:
                task.owner_dead = True
                self._cancel_task(task.spec.task_id, False, True)
        worker.owned.clear()

    def _node_died(self, node: NodeRecord, reason: str) -> None:  # noqa: C901
        node.alive = False
        node.death_reason = reason
        node.end_time = time.time()
        node.hello.set()
        self.scheduler.remove_node(node.node_id)
        if node.peer is not None:
            self.hub.close_peer(node.peer)
        for worker in list(node.workers.values()):
            self._worker_died(worker, None, node_death=reason)
        waiting, node.waiting = list(node.waiting), collections.deque()
        for task in waiting:
            if not task.finished:
                task.node = None
                task.set_state("PENDING_NODE_ASSIGNMENT")
                self._args_ready(task)
        for object_id in self.objects.drop_node(node.node_id):
            self._object_lost(object_id)
        self._schedule()

    def check_copies(self, object_id: bytes) -> None:
        """A reader found a listed copy missing: drop copies whose node is dead; handle total loss."""
        entry = self.objects.entries.get(object_id)
        if entry is None or entry.payload is None or entry.payload[0] != "s":
            return
        locations = entry.payload[1]
        layout = self.session.layout
        for location in list(locations):
            node = self.nodes.get(object_store.node_of(location))
            if node is None or not node.alive or not os.path.exists(os.path.join(layout.dir_of(location), object_id.hex())):
                locations.remove(location)
        if not locations:
            self.objects.mark_lost(object_id)
            self._object_lost(object_id)

    def _object_lost(self, object_id: bytes) -> None:
        """No copy is left. Rebuild it now if someone waits for it; otherwise when first needed."""
        entry = self.objects.entries.get(object_id)
        if entry is not None and (entry.waiters or entry.dependents):
            self._recover(object_id)

    def _reachable(self, entry: Any) -> bool:
        """Whether a reader can fetch the value: inline, or a copy on a node that is not stopped."""
        payload = entry.payload
        if payload is None or payload[0] != "s":
            return True
        nodes = self.nodes
        return any(not nodes[object_store.node_of(loc)].stopped for loc in payload[1])

    def _await_unreachable(self, object_id: bytes) -> None:
        """Every copy is on a stopped node: readers wait for it to resume, at most the fetch timeout."""
        if object_id in self.fetch_timers:
            return
        self.fetch_timers[object_id] = self.hub.call_later(self.fetch_timeout_s, lambda: self._fetch_timed_out(object_id))

    def _fetch_timed_out(self, object_id: bytes) -> None:
        with self.lock:
            self.fetch_timers.pop(object_id, None)
            entry = self.objects.entries.get(object_id)
            if entry is None or entry.state != READY or self._reachable(entry):
                return
            if not (entry.waiters or entry.dependents):
                return
            # Give up on the hung copies: rebuild if lineage allows, else report the timeout.
            for location in list(entry.payload[1]):
                self.objects.remove_location(object_id, location)
            if self.lineage.why_not_rebuildable(object_id) is None:
                self.objects.mark_lost(object_id)
                self._recover(object_id)
            else:
                self.objects.replace_with_error(object_id, error_blob(ObjectFetchTimedOutError(object_id.hex())))
                self._object_ready(object_id, entry)
            self._flush()

    def _node_reachable(self, node: NodeRecord) -> None:
        """A stopped node resumed: readers waiting for its copies can go on."""
        for object_id, entry in list(self.objects.entries.items()):
            payload = entry.payload
            if (entry.waiters or entry.dependents) and payload is not None and payload[0] == "s" \
                    and any(object_store.node_of(loc) == node.node_id for loc in payload[1]) \
                    and entry.state == READY:
                timer = self.fetch_timers.pop(object_id, None)
                if timer is not None:
                    self.hub.cancel_timer(timer)
                self._object_ready(object_id, entry)

    def _recover(self, object_id: bytes) -> None:
        """Rebuild a LOST or RELEASED object by re-running the task that made it (lineage
        reconstruction), or settle it with the error that says why it cannot be rebuilt."""
        entry = self.objects.entries.get(object_id)
        if entry is None or entry.state not in (LOST, RELEASED):
            return
        task_id = task_of(object_id)
        running = self.tasks.get(task_id)
        if running is not None and not running.finished:
            entry.state = PENDING  # its task is re-running already: one rebuild serves all
            return
        reason = self.lineage.why_not_rebuildable(object_id)
        if reason is not None:
            error = _unrebuildable_error(object_id, reason)
            self.objects.replace_with_error(object_id, error_blob(error))
            self._object_ready(object_id, entry)
            return
        task = self.lineage.take(task_id)
        if task.retries_left > 0:
            task.retries_left -= 1
        task.new_attempt()
        task.finished = False
        task.node = None
        for return_id in task.spec.return_ids():
            other = self.objects.entries.get(return_id)
            if other is not None and other.state in (LOST, RELEASED):
                other.state = PENDING
        self.tasks[task_id] = task
        self._start_task(task)

    # ==== cancellation =============================================================

    def cancel(self, object_id: bytes, force: bool, recursive: bool) -> None:
        with self.lock:
            self._cancel(object_id, force, recursive)
            self._flush()

    def _cancel(self, object_id: bytes, force: bool, recursive: bool) -> None:
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
            try:
                os.kill(worker.pid, 9)
            except ProcessLookupError:
                pass
        else:
            self._post(worker.peer, ("cancel", task_id, False))

    # ==== getting values =============================================================

    def register_wait(self, object_ids: List[bytes], needed_remaining: int, on_ready: Callable[[Waiter], None]) -> Optional[Waiter]:
        """Register a waiter unless enough objects are ready already (then returns None). Lock held."""
        entries = self.objects.entries
        for object_id in object_ids:
            entry = entries.get(object_id)
            if entry is not None and entry.state in (LOST, RELEASED):
                self._recover(object_id)  # someone needs it now: rebuild it
        pending = []
        for object_id in object_ids:
            entry = entries.get(object_id)
            if entry is None:
                continue
            if entry.state == PENDING:
                pending.append(object_id)
            elif entry.state == READY and not self._reachable(entry):
                pending.append(object_id)
                self._await_unreachable(object_id)
        if len(pending) <= needed_remaining:
            return None
        waiter = Waiter(pending, len(pending), needed_remaining, on_ready)
        for object_id in pending:
            entry = entries[object_id]
            if entry.waiters is None:
                entry.waiters = []
            entry.waiters.append(waiter)
        return waiter

    def _unregister_waiter(self, waiter: Waiter) -> None:
        entries = self.objects.entries
        for object_id in waiter.object_ids:
            entry = entries.get(object_id)
            if entry is not None and entry.waiters:
                try:
                    entry.waiters.remove(waiter)
                except ValueError:
                    pass
                if not entry.waiters:
                    entry.waiters = None
                    self.objects.maybe_free(object_id)

    def payload_of(self, object_id: bytes) -> tuple:
        entry = self.objects.entries.get(object_id)
        if entry is None:
            return ("e", error_blob(self._missing_error(object_id)))
        payload = entry.payload
        if payload is None:  # lost again after the wait ended: the caller asks once more
            return ("s", [], entry.size)
        if payload[0] == "s":
            nodes = self.nodes
            return ("s", [loc for loc in payload[1] if not nodes[object_store.node_of(loc)].stopped], payload[2])
        return payload

    def ready_ids(self, object_ids: List[bytes]) -> List[bytes]:
        entries = self.objects.entries
        return [oid for oid in object_ids if (e := entries.get(oid)) is None or e.state == READY]

    def _missing_error(self, object_id: bytes) -> BaseException:
        if object_id in self.objects.freed:
            return ReferenceCountingAssertionError(object_id.hex())
        return ObjectLostError(object_id.hex())

    def _worker_wait(self, worker: WorkerRecord, request_id: int, object_ids: List[bytes], num_returns: int,
                     timeout: Optional[float], reply_all: bool) -> None:
        peer = worker.peer

        def reply(waiter: Optional[Waiter]) -> None:
            if worker.requests.pop(request_id, None) is None and waiter is not None:
                return
            if reply_all:
                payload: Any = [self.payload_of(oid) for oid in object_ids]
            else:
                payload = self.ready_ids(object_ids)[:num_returns]
            self._post(peer, ("reply", request_id, payload))
            if waiter is not None:
                self._unblock(worker)

        needed_remaining = len(object_ids) - num_returns
        waiter = self.register_wait(object_ids, needed_remaining, reply)
        if waiter is None:
            reply(None)
            return
        worker.requests[request_id] = waiter
        self._block(worker)
        if timeout is not None:
            def expire() -> None:
                with self.lock:
                    if not waiter.fired:
                        waiter.fired = True
                        self._unregister_waiter(waiter)
                        reply(waiter)
                        self._flush()
            self.hub.call_later(timeout, expire)

    def _block(self, worker: WorkerRecord) -> None:
        """A task waits in get/wait: lend its CPUs to other tasks so nested work cannot deadlock.

        Tasks pipelined behind it are taken back (the worker skips them) and queued
        again: the blocked task may be waiting for one of them.
        """
        worker.blocked += 1
        if worker.blocked == 1 and worker.task is not None:
            if len(worker.queue) > 1:
                taken = list(worker.queue)[1:]
                worker.queue = collections.deque([worker.queue[0]])
                self._post(worker.peer, ("steal", [t.spec.task_id for t in taken]))
                for task in taken:
                    task.worker = None
                    task.node = None
                    self._args_ready(task)
            self.scheduler.release(worker.node.node_id, worker.task.spec.resources)
            self._schedule()

    def _unblock(self, worker: WorkerRecord) -> None:
        if worker.blocked <= 0:
            return
        worker.blocked -= 1
        if worker.blocked == 0 and worker.task is not None and not worker.dead:
            self.scheduler.acquire(worker.node.node_id, worker.task.spec.resources)

    # ==== puts and locations from the driver ===========================================

    def put_from_driver(self, object_id: bytes, kind: str, data: Any, refs: list, node_id: bytes) -> None:
        with self.lock:
            self._apply_driver_refs()
            self.objects.create(object_id, DRIVER)
            self._store(object_id, kind, data, refs, node_id, False)
            self._flush()

    def add_location(self, object_id: bytes, node_id: bytes, size: int) -> None:
        with self.lock:
            self.objects.add_location(object_id, node_id, size)
            self.objects.make_room(node_id)

    # ==== cluster state ================================================================

    def state(self, what: str) -> Any:
        with self.lock:
            if what == "nodes":
                return [self._node_info(node) for node in self.nodes.values()]
            if what == "cluster_resources":
                return self.scheduler.totals()
            if what == "available_resources":
                return self.scheduler.availables()
        raise ValueError(f"unknown state query {what!r}")

    def _node_info(self, node: NodeRecord) -> Dict[str, Any]:
        return {
            "NodeID": node.node_id.hex(),
            "Alive": node.alive,
            "alive": node.alive,
            "NodeName": node.name,
            "NodeManagerAddress": "127.0.0.1",
            "NodeManagerHostname": os.uname().nodename,
            "Resources": dict(node.resources) if node.alive else {},
            "DeathReason": node.death_reason,
            "Pid": node.pid,
            "NumWorkers": len(node.workers),
            "StoreDir": node.store_dir,
            "ObjectStoreMemory": node.capacity,
            "ObjectStoreUsed": self.objects.node_usage.get(node.node_id, 0),
            "Stopped": node.stopped,
            "StartTime": node.start_time,
            "EndTime": node.end_time,
        }

    def _on_state(self, peer: Peer, worker: WorkerRecord, message: tuple) -> None:
        _, request_id, what = message
        self._post(peer, ("reply", request_id, self.state(what)))

    # ==== plumbing ===================================================================

    def _apply_driver_refs(self) -> None:
        for object_id in self._drain_driver_refs():
            self.objects.maybe_free(object_id)

    def _post(self, peer: Optional[Peer], message: tuple) -> None:
        if peer is None:
            return
        if not peer.outbox:
            self._dirty.append(peer)
        peer.outbox.append(message)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for peer in dirty:
            messages, peer.outbox = peer.outbox, []
            if messages:
                peer.send(messages)


def _unrebuildable_error(object_id: bytes, reason: str) -> BaseException:
    if reason == "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED":
        return ObjectReconstructionFailedMaxAttemptsExceededError(object_id.hex(), reason=reason)
    if reason == "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED":
        return ObjectReconstructionFailedLineageEvictedError(object_id.hex(), reason=reason)
    if reason == "OBJECT_UNRECONSTRUCTABLE_BORROWED":
        return ObjectLostError(object_id.hex())
    return ObjectReconstructionFailedError(object_id.hex(), reason=reason)


_HANDLERS: Dict[str, Callable[[Head, Peer, Any, tuple], None]] = {
    "node_hello": Head._on_node_hello,
    "worker_exit": Head._on_worker_exit,
    "worker_hello": Head._on_worker_hello,
    "fn": Head._on_fn,
    "submit": Head._on_submit,
    "put": Head._on_put,
    "refs": Head._on_refs,
    "located": Head._on_located,
    "lost": Head._on_lost,
    "get": Head._on_get,
    "wait": Head._on_wait,
    "forget": Head._on_forget,
    "cancel": Head._on_cancel,
    "done": Head._on_done,
    "state": Head._on_state,
}
