"""The head: the one place that knows every task, object, worker and node of a session.

Runs inside the driver process. Its state is guarded by one lock and touched
from two kinds of threads: the user's threads (through driver.py: submit, get,
put, ...) and the hub thread (hub.py: messages from node managers and workers,
timers). Every entry point takes the lock, changes state, queues outgoing
messages per connection, and sends them as one frame per connection when it
leaves (`_flush`), so a burst of work costs one syscall per worker.

The Head is one object in four files, by concern:

    head.py       lifecycle (nodes start, stop, die), messages in, state queries
    task_flow.py  a task's path from submission to stored result; cancellation
    actor_flow.py actors: creation, ordered calls, death, restart, kill
    waiting.py    get and wait, from the driver and from tasks
    recovery.py   dead workers, nodes and owners; lost objects and their rebuild

The records it keeps live in objects.py (values, holders), lineage.py
(finished tasks kept for rebuilding), task_records.py (attempts),
task_history.py (finished tasks, compactly, for the state API),
virtual_nodes.py (nodes, workers) and scheduler.py (resources, placement).
"""

from __future__ import annotations

import collections
import os
import pathlib
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from minicluster._private.common import config, fault_hooks
from minicluster._private.store import object_store
from minicluster._private.head import virtual_nodes as node_procs
from minicluster._private.head.actor_flow import ActorFlow
from minicluster._private.wire import messages as msg
from minicluster._private.wire.hub import Hub, Peer
from minicluster._private.common.ids import new_node_id
from minicluster._private.head.lineage import Lineage
from minicluster._private.head.object_directory import ObjectDirectory
from minicluster._private.head.recovery import Recovery
from minicluster._private.head.scheduler import Scheduler
from minicluster._private.head.task_flow import TaskFlow
from minicluster._private.head.task_history import TaskHistory
from minicluster._private.head.task_records import TaskRecord
from minicluster._private.head.virtual_nodes import NodeRecord, WorkerRecord
from minicluster._private.head.waiting import Waiting

DRIVER = b"driver"  # owner id of objects the driver creates

# The folder that holds the minicluster package (this file is minicluster/_private/head/head.py).
_PACKAGE_PARENT = str(pathlib.Path(__file__).resolve().parents[3])


class Head(TaskFlow, ActorFlow, Recovery, Waiting):
    def __init__(self, session: Any, driver_counts: Dict[bytes, int], drain_driver_refs: Callable[[], List[bytes]]) -> None:
        self.session = session
        self.lock = threading.RLock()
        self.scheduler = Scheduler()
        self.objects = ObjectDirectory(driver_counts, session.layout, self._entry_deleted)
        self.default_capacity = config.MIN_SHM_BYTES  # set by the driver from object_store_memory
        self.namespace = "default"  # the job's namespace (init(namespace=...)), told to workers
        self.lineage = Lineage(config.max_lineage_bytes(), self._release_lineage_args)
        self.tasks: Dict[bytes, TaskRecord] = {}
        self.history = TaskHistory()  #: compact copies of finished tasks, for the state API
        self.task_changes: set = set()  #: TaskRecords changed since the state recorder last looked
        self.children: Dict[bytes, set] = collections.defaultdict(set)  # parent task -> child task ids
        self.actors: Dict[bytes, Any] = {}  # actor id -> ActorRecord (actor_flow.py)
        self.named_actors: Dict[tuple, bytes] = {}  # (namespace, name) -> actor id
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
        #: fault_hooks.HeadHooks of the fault plan a test installed (minicluster.testing), else None
        self.faults: Optional[fault_hooks.HeadHooks] = None

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
            namespace=self.namespace,
            num_workers=num_workers,
            logs_dir=self.session.logs_dir,  # workers' stdout/stderr files (log_files.py)
            # The package's own folder first: editable installs are found by a
            # site hook that the node's `python -S` does not run.
            sys_path=[_PACKAGE_PARENT] + sys.path,
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
            # A spilled copy is on its node's disk: still that node's copy.
            return list(dict.fromkeys(object_store.node_of(location) for location in entry.payload[1]))

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
            self._handle(peer, messages)
            self._flush()

    def _handle(self, peer: Peer, messages: List[Any]) -> None:
        state = peer.state
        for message in messages:
            if peer.closed:
                break  # a handler dropped this peer (its worker was killed): the rest is stale
            handler = _HANDLERS.get(type(message))
            if handler is None:
                print(f"minicluster: unknown message {type(message).__name__}", file=sys.stderr)
                continue
            handler(self, peer, state, message)
            state = peer.state

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

    def _on_node_hello(self, peer: Peer, state: Any, message: msg.NodeHello) -> None:
        node = self.nodes.get(message.node_id)
        if node is None:
            return
        node.peer = peer
        peer.state = node
        node.hello.set()

    def _on_worker_exit(self, peer: Peer, state: Any, message: msg.WorkerExit) -> None:
        worker = self.workers.get(message.worker_id)
        if worker is None:
            node = state
            if isinstance(node, NodeRecord) and node.alive and node.pending_spawn > 0:
                node.pending_spawn -= 1  # died before it could connect
                self._replenish(node)
            return
        if worker.peer is not None:
            self._handle(worker.peer, self.hub.drain(worker.peer))
        self._worker_died(worker, message.exitcode)

    # ---- workers ----

    def _on_worker_hello(self, peer: Peer, state: Any, message: msg.WorkerHello) -> None:
        worker_id = message.worker_id
        node = self.nodes.get(message.node_id)
        if node is None or not node.alive:
            self.hub.close_peer(peer)
            return
        worker = WorkerRecord(worker_id, node, message.pid, peer)
        peer.state = worker
        self.workers[worker_id] = worker
        node.workers[worker_id] = worker
        node.pending_spawn = max(0, node.pending_spawn - 1)
        self._worker_free(worker)

    def _on_fn(self, peer: Peer, worker: WorkerRecord, message: msg.DefineFunction) -> None:
        # Not marked as known to this worker: it holds the function as a RemoteFunction,
        # not in its task-function cache, so its first task of it must carry the blob.
        self.functions[message.function_id] = message.blob

    def _on_submit(self, peer: Peer, worker: WorkerRecord, message: msg.Submit) -> None:
        spec = message.spec
        for object_id in spec.return_ids():
            self.objects.create(object_id, worker.worker_id)
            self.objects.add_borrower(object_id, worker.worker_id)
            worker.borrowed.add(object_id)
            worker.owned.add(object_id)
        self._add_task(spec, worker.node.node_id)

    def _on_put(self, peer: Peer, worker: WorkerRecord, message: msg.Put) -> None:
        object_id, value = message.object_id, message.value
        self.objects.create(object_id, worker.worker_id)
        self.objects.add_borrower(object_id, worker.worker_id)  # before storing: the put's ref holds it
        worker.borrowed.add(object_id)
        worker.owned.add(object_id)
        self._store(object_id, value.kind, value.data, value.refs, worker.node.node_id, False)

    def _on_refs(self, peer: Peer, worker: WorkerRecord, message: msg.Refs) -> None:
        objects = self.objects
        for object_id in message.added:
            if objects.add_borrower(object_id, worker.worker_id):
                worker.borrowed.add(object_id)
        for object_id in message.removed:
            worker.borrowed.discard(object_id)
            objects.remove_borrower(object_id, worker.worker_id)

    def _on_located(self, peer: Peer, worker: WorkerRecord, message: msg.Located) -> None:
        self.objects.add_location(message.object_id, message.node_id, message.size)
        self.objects.make_room(message.node_id)

    def _on_lost(self, peer: Peer, worker: WorkerRecord, message: msg.Lost) -> None:
        self.check_copies(message.object_id)

    def _on_get(self, peer: Peer, worker: WorkerRecord, message: msg.Get) -> None:
        object_ids = message.object_ids  # (the worker itself enforces get()'s timeout)
        self._worker_wait(worker, message.request_id, object_ids, len(object_ids), None, reply_all=True)

    def _on_wait(self, peer: Peer, worker: WorkerRecord, message: msg.Wait) -> None:
        self._worker_wait(worker, message.request_id, message.object_ids, message.num_returns, message.timeout,
                          reply_all=False)

    def _on_forget(self, peer: Peer, worker: WorkerRecord, message: msg.Forget) -> None:
        waiter = worker.requests.pop(message.request_id, None)
        if waiter is not None:
            waiter.fired = True
            self._unregister_waiter(waiter)
            self._unblock(worker)

    def _on_cancel(self, peer: Peer, worker: WorkerRecord, message: msg.Cancel) -> None:
        try:
            self._cancel(message.object_id, message.force, message.recursive)
            problem = None
        except ValueError as exc:  # raised by the task's cancel() call
            problem = str(exc)
        self._post(peer, msg.Reply.new(request_id=message.request_id, payload=problem))

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

    # ==== cancellation =============================================================

    def cancel(self, object_id: bytes, force: bool, recursive: bool) -> None:
        with self.lock:
            self._cancel(object_id, force, recursive)
            self._flush()

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

    def _on_create_actor(self, peer: Peer, worker: WorkerRecord, message: msg.CreateActor) -> None:
        try:
            self.create_actor(message.spec, message.meta, worker.node.node_id, worker.worker_id)
            problem = None
        except ValueError as exc:
            problem = str(exc)
        self._post(peer, msg.Reply.new(request_id=message.request_id, payload=problem))

    def _on_lookup_actor(self, peer: Peer, worker: WorkerRecord, message: msg.LookupActor) -> None:
        found = self.lookup_actor(message.name, message.namespace)
        self._post(peer, msg.Reply.new(request_id=message.request_id, payload=found))

    def _on_kill_actor(self, peer: Peer, worker: WorkerRecord, message: msg.KillActor) -> None:
        self.kill_actor(message.actor_id, message.no_restart)

    def _on_state(self, peer: Peer, worker: WorkerRecord, message: msg.QueryState) -> None:
        self._post(peer, msg.Reply.new(request_id=message.request_id, payload=self.state(message.what)))

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


_HANDLERS: Dict[type, Callable[[Head, Peer, Any, Any], None]] = {
    msg.NodeHello: Head._on_node_hello,
    msg.WorkerExit: Head._on_worker_exit,
    msg.WorkerHello: Head._on_worker_hello,
    msg.DefineFunction: Head._on_fn,
    msg.Submit: Head._on_submit,
    msg.Put: Head._on_put,
    msg.Refs: Head._on_refs,
    msg.Located: Head._on_located,
    msg.Lost: Head._on_lost,
    msg.Get: Head._on_get,
    msg.Wait: Head._on_wait,
    msg.Forget: Head._on_forget,
    msg.Cancel: Head._on_cancel,
    msg.Done: Head._on_done,
    msg.QueryState: Head._on_state,
    msg.CreateActor: Head._on_create_actor,
    msg.LookupActor: Head._on_lookup_actor,
    msg.KillActor: Head._on_kill_actor,
    msg.FaultFired: fault_hooks.fault_message,
}
