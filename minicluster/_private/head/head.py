"""The head: the one place that knows every task, object, worker and node of a session.

Runs inside the driver process. Its state is guarded by one lock and touched
from two kinds of threads: the user's threads (through driver.py: submit, get,
put, ...) and the hub thread (hub.py: messages from node managers and workers,
timers). Every entry point takes the lock, changes state, queues outgoing
messages per connection, and sends them as one frame per connection when it
leaves (`flush`), so a burst of work costs one syscall per worker.

`Head` is the facade: the entry points, lifecycle (nodes start, stop, die),
messages in (each one's handler in head_messages.py, the class Head is built on),
state queries. The state is one object and the work is split in
flows, each an object built here with the state and connected to the flows it
calls through the small interfaces of flow_interfaces.py:

    head_state.py   HeadState: every record, each field with its invariant
    invariants.py   the check of those invariants (Head.validate_state)
    messaging.py    Outbox (post/flush) and timers that run under the lock
    task_flow.py    TaskFlow: a task's path from submission to stored result; cancel
    task_placement.py  the part of TaskFlow that places ready tasks on nodes and workers
    state_queries.py   answers to the state queries (nodes, resources, a task's context)
    head_messages.py   what the head does with each message of a node manager or worker
    actor_flow.py   ActorFlow: actors: creation, ordered calls, death, restart, kill
    waiting.py      Waiting: get and wait, from the driver and from tasks
    recovery.py     Recovery: dead workers, nodes and owners; lost objects and their rebuild
    states.py       task and actor states and their legal transitions

The records it keeps live in object_directory.py (values, holders), lineage.py
(finished tasks kept for rebuilding), task_records.py (attempts),
actor_records.py (actors), task_history.py (finished tasks, compactly, for the
state API), virtual_nodes.py (nodes, workers) and scheduler.py (resources,
placement).
"""

from __future__ import annotations

import collections
import os
import pathlib
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from minicluster._private.common import config
from minicluster._private.common.ids import job_id, new_node_id
from minicluster._private.common.system_config import ClusterSettings
from minicluster._private.head import global_gc, gpus, placement_groups, state_queries
from minicluster._private.head import virtual_nodes as node_procs
from minicluster._private.head.actor_flow import ActorFlow
from minicluster._private.head.announcements import Announcer
from minicluster._private.head.global_gc import GlobalGC
from minicluster._private.head.head_messages import HANDLERS, HeadMessages
from minicluster._private.head.head_state import new_state
from minicluster._private.head.invariants import HeadStateError, violations
from minicluster._private.head.messaging import LockedTimers, Outbox
from minicluster._private.head.object_directory import READY, Waiter
from minicluster._private.head.recovery import Recovery
from minicluster._private.head.task_flow import TaskFlow
from minicluster._private.head.virtual_nodes import NodeRecord, WorkerRecord
from minicluster._private.head.waiting import Waiting
from minicluster._private.store import object_store, store_recycle, store_spares
from minicluster._private.wire import fault_hooks
from minicluster._private.wire import messages as msg
from minicluster._private.wire.hub import Hub, Peer

DRIVER = b"driver"  # owner id of objects the driver creates
HEAD_NODE_RESOURCE = "node:__internal_head__"

# The folder that holds the minicluster package (this file is minicluster/_private/head/head.py).
_PACKAGE_PARENT = str(pathlib.Path(__file__).resolve().parents[3])


class Head(HeadMessages):
    def __init__(self, session: Any, driver_counts: Dict[bytes, int],
                 drain_driver_refs: Callable[[], List[bytes]]) -> None:
        self.session = session
        self.lock = threading.RLock()
        self.head_state = state = new_state(session, driver_counts)
        self._drain_driver_refs = drain_driver_refs
        #: task ids of generators the driver dropped before their end (appended lock-free by
        #: ObjectRefGenerator.__del__, applied with the driver's refs)
        self.abandoned_streams: "collections.deque[bytes]" = collections.deque()
        self.preload_modules: Tuple[str, ...] = ()  #: imported by each node before it forks workers
        self.hub = Hub(session.socket_path, session.key, self)
        self.outbox = outbox = Outbox()
        timers = LockedTimers(self.hub, self.lock, outbox)
        # The flows, then their links to one another (cyclic: a task's path crosses them all).
        self.task_flow = TaskFlow(state, outbox, timers)
        self.actor_flow = ActorFlow(state, outbox, timers)
        self.waiting = Waiting(state, outbox, timers)
        self.recovery = Recovery(state, timers)
        self.task_flow.connect(actors=self.actor_flow, recovery=self.recovery)
        self.actor_flow.connect(tasks=self.task_flow)
        self.waiting.connect(tasks=self.task_flow, recovery=self.recovery)
        self.recovery.connect(tasks=self.task_flow, actors=self.actor_flow, waiting=self.waiting)
        # What the user is told on the terminal: retries, worker deaths, errors nobody read.
        self.announcer = Announcer(timers, state.error_blob_of)
        self.task_flow.announce = self.recovery.announce = self.announcer
        state.objects.on_unhandled = self.announcer.unhandled_error
        self.global_gc = GlobalGC(state, outbox)  # a store filling up: every process collects garbage
        state.objects.on_filling, state.objects.pressure = self.global_gc.store_filling, global_gc.PRESSURE
        # Read-only views for the driver, the state recorder and the fault injector: the
        # state's containers themselves (never rebound), so reading them costs nothing.
        self.scheduler = state.scheduler
        self.objects = state.objects
        self.lineage = state.lineage
        self.tasks = state.tasks
        self.history = state.history
        self.task_changes = state.task_changes
        self.actors = state.actors
        self.functions = state.functions
        self.nodes = state.nodes
        self.workers = state.workers

    # Settings and flags others set: kept in the state, where the flows read them.
    @property
    def faults(self) -> Optional[fault_hooks.HeadHooks]:
        """Hooks of the fault plan a test installed (minicluster.testing), else None."""
        return self.head_state.faults

    @faults.setter
    def faults(self, hooks: Optional[fault_hooks.HeadHooks]) -> None:
        self.head_state.faults = hooks

    def apply_settings(self, settings: ClusterSettings) -> None:
        """The cluster-wide settings (init's, or the first Cluster node's). Reconstruction is the
        cluster's switch: off, no lineage is kept and lost objects are never rebuilt."""
        with self.lock:
            self.head_state.lineage.cluster_enabled = settings.reconstruction
            self.head_state.actor_shutdown_timeout_s = settings.actor_shutdown_timeout_s
            self.preload_modules = settings.preload_modules  # for the nodes added from now on

    def set_job_reconstruction(self, enabled: bool) -> None:
        """The running job's switch (JobConfig._disable_job_level_lineage_reconstruction)."""
        with self.lock:
            self.head_state.lineage.job_enabled = enabled

    @property
    def closed(self) -> bool:
        return self.head_state.closed

    @property
    def namespace(self) -> str:
        return self.head_state.namespace

    @namespace.setter
    def namespace(self, namespace: str) -> None:
        self.head_state.namespace = namespace

    @property
    def default_capacity(self) -> int:
        return self.head_state.default_capacity

    @default_capacity.setter
    def default_capacity(self, capacity: int) -> None:
        self.head_state.default_capacity = capacity

    # ==== lifecycle ==================================================================

    def start(self) -> None:
        self.hub.start()
        self._housekeeping()

    def _housekeeping(self) -> None:
        """Every 100 ms: apply refs the driver dropped while idle (so their objects are freed)."""
        if self.head_state.closed:
            return
        with self.lock:
            self.apply_driver_refs()
            self.flush()
        self.hub.call_later(0.1, self._housekeeping)

    def add_node(self, num_cpus: float, resources: Optional[Dict[str, float]], num_workers: int,
                 capacity: Optional[int] = None, labels: Optional[Dict[str, str]] = None) -> NodeRecord:
        """Start a virtual node; `capacity`: its store's bytes (default: the session's)."""
        node_id = new_node_id()
        total = {"CPU": float(num_cpus), f"node:{node_id.hex()}": 1.0}
        if not self.head_state.nodes:
            total[HEAD_NODE_RESOURCE] = 1.0  # Ray's marker of the head node (the first one here)
        resources = dict(resources or {})
        if "GPU" not in resources:  # not given: the machine's, as Ray's nodes detect them
            resources["GPU"] = gpus.detect_gpus()
        for key, qty in resources.items():
            if qty or key != "GPU":  # (no GPU resource at all on a node without GPUs, as in Ray)
                total[key] = float(qty)
        layout = self.session.layout
        state = self.head_state
        capacity = capacity or state.default_capacity
        if "memory" not in total:  # Ray's default memory resource: the machine's, less the store
            total["memory"] = float(config.default_node_memory(capacity))
        with self.lock:
            node = NodeRecord(node_id, len(state.nodes), total, num_workers, layout.dir_of(node_id),
                              layout.dir_of(object_store.spill_location(node_id)), capacity)
            # Ray's default label, then the caller's (get_runtime_context().get_node_labels()).
            node.labels = {"ray.io/node-id": node_id.hex(), **(labels or {})}
            node.gpu_ids = gpus.device_ids(total.get("GPU", 0.0))
            state.objects.capacity[node_id] = node.capacity
            store_recycle.allow(node.store_dir, store_spares.spare_limit(node.capacity))
            state.nodes[node_id] = node
            state.scheduler.add_node(node_id, total, node.labels)
            node.pending_spawn = num_workers
            node.start_time = time.time()
        cfg = dict(
            node_id=node_id,
            socket_path=self.session.socket_path,
            key=self.session.key,
            store_root=layout.store_root,
            spill_root=layout.spill_root,
            capacity=node.capacity,
            job_id=job_id(),  # the node's workers make ids of this session's job
            num_workers=num_workers,
            logs_dir=self.session.logs_dir,  # workers' stdout/stderr files (log_files.py)
            # The package's own folder first: editable installs are found by a
            # site hook that the node's `python -S` does not run.
            sys_path=[_PACKAGE_PARENT] + sys.path,
            preload_modules=self.preload_modules,
        )
        node.process = node_procs.launch(cfg, None)
        node.pid = node.process.pid
        self.session.record_node(node.pid)  # so a later init() can reap it if this driver dies
        with self.lock:
            self.task_flow.schedule()
            self.flush()
        return node

    def wait_for_nodes(self, timeout: float) -> None:
        """Block until every live node manager has said hello; fail fast if one exits."""
        deadline = time.monotonic() + timeout
        for node in list(self.head_state.nodes.values()):
            while node.alive and not node.hello.wait(0.05):
                code = node.process.poll() if node.process else None
                if code is not None:
                    raise RuntimeError(f"minicluster: {node.name} failed to start (its process exited with {code}); "
                                       "see its error output above")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"minicluster: {node.name} did not start within {timeout:.0f} s")

    def kill_node(self, node_id: bytes, reason: str = "killed") -> None:
        with self.lock:
            node = self.head_state.nodes[node_id]
            if not node.alive:
                return
            node_procs.kill(node)
            self.recovery.node_died(node, reason)
            self.flush()

    def stop_node(self, node_id: bytes) -> None:
        with self.lock:
            node = self.head_state.nodes[node_id]
            if not node.alive or node.stopped:
                return
            os.killpg(node.pid, signal.SIGSTOP)
            node.stopped = True
            self.head_state.scheduler.set_stopped(node_id, True)

    def resume_node(self, node_id: bytes) -> None:
        with self.lock:
            node = self.head_state.nodes[node_id]
            if not node.alive or not node.stopped:
                return
            os.killpg(node.pid, signal.SIGCONT)
            node.stopped = False
            self.head_state.scheduler.set_stopped(node_id, False)
            self.recovery.node_reachable(node)
            self.task_flow.schedule()
            self.flush()

    def object_locations(self, object_id: bytes) -> List[bytes]:
        with self.lock:
            entry = self.head_state.objects.entries.get(object_id)
            if entry is None or entry.payload is None or entry.payload.kind != "s":
                return []
            # A spilled copy is on its node's disk: still that node's copy.
            return list(dict.fromkeys(object_store.node_of(location) for location in entry.payload.data))

    def shutdown(self) -> None:
        state = self.head_state
        with self.lock:
            if state.closed:
                return
            state.closed = True
            self.announcer.closed = True
            for node in state.nodes.values():
                if node.alive:
                    node.alive = False
                    if node.pid:
                        try:
                            os.killpg(node.pid, 9)
                        except (ProcessLookupError, PermissionError):
                            pass
            for node in state.nodes.values():
                node_procs.kill(node)
                node.end_time = node.end_time or time.time()
            # Wake everything still blocked in the driver so it can fail instead of hanging.
            for entry in state.objects.entries.values():
                for waiter in entry.waiters or ():
                    if not waiter.fired:
                        waiter.fired = True
                        waiter.on_ready(waiter)
        self.hub.stop()

    def validate_state(self) -> None:
        """Check every invariant of the head's records (head_state.py); raise HeadStateError
        listing each violation. For tests: it walks everything, so it is not cheap."""
        with self.lock:
            if self.head_state.closed:
                return  # shut down: its processes were killed without their records being settled
            problems = violations(self.head_state)
        if problems:
            raise HeadStateError(f"{len(problems)} head invariant violation(s):\n  " + "\n  ".join(problems))

    # ==== messages from the hub ======================================================

    def on_messages(self, peer: Peer, messages: List[Any]) -> None:
        with self.lock:
            self.apply_driver_refs()
            self._handle(peer, messages)
            self.outbox.flush()

    def _handle(self, peer: Peer, messages: List[Any]) -> None:
        state = peer.state
        for message in messages:
            if peer.closed:
                break  # a handler dropped this peer (its worker was killed): the rest is stale
            handler = HANDLERS.get(type(message))
            if handler is None:
                print(f"minicluster: unknown message {type(message).__name__}", file=sys.stderr)
                continue
            try:
                handler(self, peer, state, message)
            except Exception:  # noqa: BLE001 - one bad message costs its sender, never the head
                print(f"minicluster: internal error handling {type(message).__name__}:", file=sys.stderr)
                traceback.print_exc()
                self.hub.drop_peer(peer, f"handling its {type(message).__name__} failed (see above)")
                break
            state = peer.state

    def on_close(self, peer: Peer) -> None:
        with self.lock:
            state = peer.state
            if isinstance(state, WorkerRecord):
                if not state.dead:
                    # A worker reads its connection only between tasks (node/inbox.py): one whose
                    # connection broke (the head dropped it, or its task closed the socket) would run
                    # its task to the end unseen, while the head retries it elsewhere. (One that
                    # exited is gone or a zombie: its pid is not reused within these microseconds.)
                    try:
                        os.kill(state.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    # The node manager reports the exit status right after; wait briefly for it.
                    worker = state
                    self.hub.call_later(config.DEATH_REPORT_GRACE_S, lambda: self._death_timeout(worker))
            elif isinstance(state, NodeRecord):
                if state.alive and not self.head_state.closed:
                    node_procs.kill(state)  # whatever is left of it goes too
                    self.recovery.node_died(state, "its node manager process exited")
            self.flush()

    def _death_timeout(self, worker: WorkerRecord) -> None:
        with self.lock:
            if not worker.dead:
                self.recovery.worker_died(worker, None)
                self.flush()

    # ==== tasks ======================================================================

    def submit_from_driver(self, spec: Any, function_blob: Optional[bytes], driver_node: bytes) -> None:
        with self.lock:
            self.apply_driver_refs()
            if function_blob is not None:
                self.functions[spec.function_id] = function_blob
            for object_id in spec.return_ids():
                self.objects.create(object_id, DRIVER)
            self.task_flow.add_task(spec, driver_node)
            self.outbox.flush()

    # ==== cancellation =============================================================

    def cancel(self, object_id: bytes, force: bool, recursive: bool) -> None:
        with self.lock:
            self.task_flow.cancel(object_id, force, recursive)
            self.flush()

    # ==== puts and locations from the driver ===========================================

    def put_from_driver(self, object_id: bytes, kind: str, data: Any, refs: list, node_id: bytes) -> None:
        with self.lock:
            self.apply_driver_refs()
            self.objects.create(object_id, DRIVER)
            self.task_flow.store(object_id, kind, data, refs, node_id, False)
            self.flush()

    def add_location(self, object_id: bytes, node_id: bytes, size: int) -> None:
        with self.lock:
            self.objects.add_location(object_id, node_id, size)
            self.objects.make_room(node_id)

    # ==== cluster state ================================================================

    def state(self, what: str, about: Any = None) -> Any:
        """A state query of the driver or of a worker (state_queries.py)."""
        with self.lock:
            return state_queries.answer(self.head_state, self.actor_flow, what, about)

    # ==== for the driver (driver.py), its lock held ======================================

    def stream_next(self, task_id: bytes, advance: bool) -> tuple:
        """next() on a generator in the driver: see Streams.next; an item taken must be passed
        to stream_taken once the driver's ObjectRef to it exists."""
        return self.task_flow.streams.next(task_id, advance, None)

    def stream_taken(self, object_id: bytes) -> None:
        self.task_flow.streams.taken(object_id)

    def register_wait(self, object_ids: List[bytes], needed_remaining: int,
                      on_ready: Callable[[Waiter], None], fail_fast: bool = False) -> Optional[Waiter]:
        return self.waiting.register_wait(object_ids, needed_remaining, on_ready, fail_fast)

    def unregister_waiter(self, waiter: Waiter) -> None:
        self.waiting.unregister_waiter(waiter)

    def payload_of(self, object_id: bytes) -> msg.Payload:
        return self.head_state.payload_of(object_id)

    def ready_payloads(self, object_ids: Sequence[bytes]) -> Optional[List[msg.Payload]]:
        """Each object's payload if every one is READY and reachable now, else None."""
        state = self.head_state
        entries = state.objects.entries
        for object_id in object_ids:
            entry = entries.get(object_id)
            if entry is None or entry.state != READY or not state.reachable(entry):
                return None
        return [state.payload_of(object_id) for object_id in object_ids]

    def ready_ids(self, object_ids: List[bytes]) -> List[bytes]:
        return self.head_state.ready_ids(object_ids)

    def check_copies(self, object_id: bytes) -> None:
        self.recovery.check_copies(object_id)

    def create_actor(self, spec: Any, meta: Dict[str, Any], submitter_node: bytes, owner: bytes,
                     get_if_exists: bool = False) -> Optional[msg.ActorFound]:
        return self.actor_flow.create_actor(spec, meta, submitter_node, owner, get_if_exists)

    def lookup_actor(self, name: str, namespace: Optional[str]) -> Optional[msg.ActorFound]:
        return self.actor_flow.lookup_actor(name, namespace)

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        self.actor_flow.kill_actor(actor_id, no_restart)

    def change_placement_group(self, op: str, args: Any, creator_actor: Optional[bytes] = None) -> Optional[str]:
        """Create ("create", its fields) or remove ("remove", its id) a placement group (lock held);
        returns an error's text or None. Placing it, or failing its work, follows at once."""
        answer = placement_groups.change(self.head_state, self.task_flow, self.actor_flow, op, args, creator_actor)
        self.task_flow.schedule()
        return answer

    # ==== plumbing ===================================================================

    def apply_driver_refs(self) -> None:
        """Free what the driver's dropped ObjectRefs held (its ref counter queues them). Lock held."""
        objects = self.objects
        for object_id in self._drain_driver_refs():
            objects.maybe_free(object_id)
        abandoned = self.abandoned_streams
        while abandoned:
            self.task_flow.streams.abandon(abandoned.popleft())

    def post(self, peer: Optional[Peer], message: Any) -> None:
        """Queue a message for a peer (lock held); sent by flush()."""
        self.outbox.post(peer, message)

    def flush(self) -> None:
        """Send what was posted, one frame per peer (lock held, as an entry point leaves)."""
        self.outbox.flush()
