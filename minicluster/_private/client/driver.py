"""The driver's side of the runtime: the session, the embedded head, and the client API.

Runs in the user's process. `DriverClient` starts the session (session.py),
the head and its I/O thread (head.py, hub.py) and the node processes, then
serves the public API by calling the head directly: no message hop between
the driver and the head, which is why a driver-side `.remote()` costs a few
microseconds. The driver lives on the first node (the head node): its `put`s
go to that node's store, and values it reads from other nodes are copied there.
"""

from __future__ import annotations

import _thread
import os
import time
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple

from minicluster._private.client import clusters
from minicluster._private.client.log_monitor import LogMonitor
from minicluster._private.client.object_ref import LocalRefCounter, ObjectRef, set_counter
from minicluster._private.client.runtime_client import RuntimeClient
from minicluster._private.client.session import Session
from minicluster._private.common import config, runtime_envs
from minicluster._private.common.ids import driver_task_id, job_of, new_worker_id, start_job
from minicluster._private.common.task_spec import ITEM
from minicluster._private.head.head import DRIVER, Head
from minicluster._private.observe.state_recorder import StateRecorder
from minicluster._private.store import object_store, store_spares
from minicluster._private.store.serialization import Serialized, serialize
from minicluster._private.wire import messages as msg
from minicluster.exceptions import GetTimeoutError, ObjectLostError, ObjectStoreFullError, RayError

# How often get() follows the head to a new copy after the one it read vanished
# (its node died mid-read) before calling the object lost.
_VANISHED_COPY_RETRIES = 100

NODE_START_TIMEOUT_S = 30.0


class DriverClient(RuntimeClient):
    def __init__(self, num_nodes: int, num_cpus: float, resources: Optional[Dict[str, float]],
                 object_store_memory: Optional[int], namespace: Optional[str], log_to_driver: bool = True,
                 labels: Optional[Dict[str, str]] = None, settings: Optional[Any] = None) -> None:
        """Start a session of `num_nodes` nodes; `object_store_memory` is each node's store capacity;
        `settings` (system_config.ClusterSettings) apply from the first node on.

        Workers' output is printed here with a `(task pid=.., node=..)` prefix unless
        `log_to_driver` is False; it is kept in the session's logs/ folder either way.
        """
        config.check_platform()
        super().__init__()
        self.worker_id = new_worker_id()
        self.job = start_job()  # before any id is made: every id of this session carries it
        self.idle_task_id = driver_task_id()
        self.namespace = namespace or anonymous_namespace()
        self.cluster_owned = False  #: made by a cluster_utils.Cluster, which alone may stop it
        self.refs = LocalRefCounter()
        self.session = Session(object_store_memory)
        self.session_dir = self.session.dir
        self.session_name = os.path.basename(self.session.dir)
        self.address = clusters.address_of(self.session.dir)  #: what init(address=...) takes
        self.layout = self.session.layout
        self.default_cpus = num_cpus
        self.default_resources = resources
        self.num_workers_per_node = max(1, int(num_cpus))
        try:
            self.head = Head(self.session, self.refs.counts, self.refs.drain)
        except BaseException:
            self.session.cleanup()
            raise
        self.head.namespace = self.namespace
        if settings is not None:
            self.head.apply_settings(settings)  # before the nodes start: some are theirs (preloaded modules)
        try:
            self.head.start()
            self.head.default_capacity = object_store_memory or config.default_store_capacity(
                self.session.in_shm, max(1, num_nodes))
            for _ in range(num_nodes):
                self.head.add_node(num_cpus, resources, self.num_workers_per_node, labels=labels)
            self.head.wait_for_nodes(NODE_START_TIMEOUT_S)
            # What happens is journaled for `minicluster list ...` (state_recorder.py), and
            # workers' output is forwarded here (log_monitor.py).
            self.recorder = StateRecorder(self.head, self.session, self.worker_id)
            self.recorder.start()
            self.log_monitor = LogMonitor(self.session.logs_dir, self.head.hub, self.recorder.node_name_of_worker,
                                          enabled=log_to_driver)
            self.log_monitor.start()
        except BaseException:
            self.head.shutdown()  # a failed start leaves nothing running
            self.session.cleanup()
            raise
        self._node_id: Optional[bytes] = None
        set_counter(self.refs)

    @property
    def node_id(self) -> bytes:
        """The driver's node: the first live node (puts go to its store)."""
        node = self.head.nodes.get(self._node_id) if self._node_id else None
        if node is None or not node.alive:
            alive = [n.node_id for n in self.head.nodes.values() if n.alive]
            if not alive:
                raise RayError("minicluster: no live node left in this session; add one "
                               "(minicluster.testing.add_node or Cluster.add_node)")
            self._node_id = alive[0]
        return self._node_id  # type: ignore[return-value]

    # ---- tasks -----------------------------------------------------------------------

    def submit(self, spec: Any, function_blob: Optional[bytes]) -> List[ObjectRef]:
        # The refs exist before the head knows the task, so a result can never be
        # freed for lack of holders between submission and the caller seeing it.
        if spec.arg_refs or spec.borrowed:
            self.check_session(spec.arg_refs)
            self.check_session(spec.borrowed)
        refs = [ObjectRef(oid) for oid in spec.return_ids()]
        blob = None if spec.function_id in self.known_functions else function_blob
        self.head.submit_from_driver(spec, blob, self.node_id)
        self.known_functions.add(spec.function_id)
        return refs

    def put(self, value: Any) -> ObjectRef:
        return self.put_serialized(serialize(value, what="put() value"))

    def put_serialized(self, serialized: Serialized) -> ObjectRef:
        object_id = self.next_put_id()
        ref = ObjectRef(object_id)
        self.check_session(serialized.refs)
        if serialized.size <= config.INLINE_THRESHOLD:
            self.head.put_from_driver(object_id, "i", serialized.to_bytes(), serialized.refs, self.node_id)
        else:
            capacity = self._check_fits(serialized.size)
            size = object_store.write(self.store_dir(), object_id, serialized, store_spares.spare_limit(capacity))
            self.head.put_from_driver(object_id, "s", size, serialized.refs, self.node_id)
        return ref

    def _check_fits(self, size: int) -> int:
        """The node's store capacity; raises ObjectStoreFullError if `size` cannot fit in it."""
        head = self.head
        capacity = head.nodes[self.node_id].capacity
        if size > capacity:
            raise ObjectStoreFullError(
                f"put() of an object of {size} bytes: larger than the node's object store "
                f"({capacity} bytes, object_store_memory); nothing was stored"
            )
        with head.lock:
            # The refs the caller dropped first: their objects' room (and, for a large one,
            # its file, reused by this write: store_recycle.py) is free before this put.
            head.apply_driver_refs()
            problem = head.objects.no_room_for(self.node_id, size)
        if problem is not None:
            raise ObjectStoreFullError(f"put() of an object of {size} bytes: {problem}; nothing was stored")
        return capacity

    # ---- values ----------------------------------------------------------------------

    def get(self, object_ids: Sequence[bytes], timeout: Optional[float]) -> List[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        values, waiter, wakeup = self._get_ready_or_wait(object_ids)
        if values is not None:
            return values
        failed = self._await(waiter, wakeup, timeout)
        head = self.head
        if failed is not None:  # one failed: raise its error now, as Ray does, without waiting for the rest
            with head.lock:
                payload = head.payload_of(failed)
            self.load(failed, payload)
        values = []
        for object_id in object_ids:
            for _ in range(_VANISHED_COPY_RETRIES):
                with head.lock:
                    payload = head.payload_of(object_id)
                    head.flush()
                try:
                    values.append(self.load(object_id, payload))
                    break
                except FileNotFoundError:
                    # The copy vanished under us (its node died): let the head sort it out, then retry.
                    with head.lock:
                        head.check_copies(object_id)
                        head.flush()
                    remaining = None if deadline is None else deadline - time.monotonic()
                    self._wait_all([object_id], 1, remaining)
            else:
                # Every copy it was pointed at vanished while being read, again and again.
                raise ObjectLostError(object_id.hex())
        return values

    def _get_ready_or_wait(self, object_ids: Sequence[bytes]) -> Tuple[Optional[List[Any]], Any, "_Wakeup"]:
        """One turn of the head's lock: the values when every object is ready already (a result
        that came in while the caller did something else, a stream's item); else a waiter,
        registered in that same turn (a round trip's get takes the lock once before it blocks).
        No values and no waiter: every object is ready after all, or one failed already
        (`waiter.failed`), or a copy vanished while read; the caller reads them the long way."""
        self.check_session(object_ids)
        head = self.head
        wakeup = _Wakeup()
        waiter = None
        with head.lock:
            head.apply_driver_refs()
            payloads = head.ready_payloads(object_ids)
            if payloads is None:
                waiter = head.register_wait(list(object_ids), 0, wakeup.fire, True)
            head.flush()  # waiting may have started a rebuild of a lost object: send its task now
        if payloads is not None:
            try:
                return [self.load(object_id, payload) for object_id, payload in zip(object_ids, payloads)], None, wakeup
            except FileNotFoundError:
                pass  # (its node died meanwhile: the long way lets the head sort it out)
        return None, waiter, wakeup

    def wait(self, object_ids: Sequence[bytes], num_returns: int, timeout: Optional[float],
             fetch_local: bool) -> List[bytes]:
        try:
            self._wait_all(object_ids, num_returns, timeout)
        except GetTimeoutError:
            pass
        with self.head.lock:
            return self.head.ready_ids(list(object_ids))[:num_returns]

    def _wait_all(self, object_ids: Sequence[bytes], num_ready: int, timeout: Optional[float]) -> None:
        """Block until `num_ready` of the objects are ready; GetTimeoutError after `timeout`."""
        self.check_session(object_ids)
        head = self.head
        wakeup = _Wakeup()
        with head.lock:
            head.apply_driver_refs()
            waiter = head.register_wait(list(object_ids), len(object_ids) - num_ready, wakeup.fire)
            head.flush()  # waiting may have started a rebuild of a lost object: send its task now
        self._await(waiter, wakeup, timeout)

    def _await(self, waiter: Any, wakeup: "_Wakeup", timeout: Optional[float]) -> Optional[bytes]:
        """Block until the registered `waiter` fires; GetTimeoutError after `timeout`. Returns the id
        of an object that is an error when the waiter is a get's (fail fast), else None."""
        if waiter is None:
            return None
        head = self.head
        if waiter.fired or wakeup.wait(timeout):
            if head.closed:
                raise RayError("minicluster was shut down while get() was waiting")
            if waiter.failed is None:
                return None
        with head.lock:
            if not waiter.fired:
                waiter.fired = True
                head.unregister_waiter(waiter)
                raise GetTimeoutError(f"Get timed out: some object(s) not ready after {timeout} seconds.")
            if waiter.failed is not None:
                head.unregister_waiter(waiter)  # the others it waited on are not wanted now
        return waiter.failed

    def stream_next(self, task_id: bytes, advance: bool) -> Tuple[str, Optional[ObjectRef]]:
        """A generator's next item (object_ref_generator.py; the head's side: streams.py)."""
        head = self.head
        with head.lock:
            head.apply_driver_refs()
            status, object_id = head.stream_next(task_id, advance)
            ref = ObjectRef(object_id) if object_id else None  # counted before the stream lets go of it
            if ref is not None and advance and status == ITEM:
                head.stream_taken(object_id)
            head.flush()
        return status, ref

    def stream_abandoned(self, task_id: bytes) -> None:
        """From ObjectRefGenerator.__del__ (any thread, any moment): lock-free, applied later."""
        self.head.abandoned_streams.append(task_id)

    def check_session(self, object_ids: Sequence[bytes]) -> None:
        """Refuse refs of an ended session (ValueError, as Ray): their ids end in another job's id,
        and the head would otherwise take them for lost objects, or for this session's own."""
        job = self.job
        for object_id in object_ids:
            if job_of(object_id) != job:
                raise ValueError(
                    f"ObjectRef({object_id.hex()}) belongs to a minicluster session that has ended (job "
                    f"{job_of(object_id).hex()}; this session is job {job.hex()}). A ref does not outlive "
                    "shutdown(): make the object again in this session.")

    def add_location(self, object_id: bytes, size: int) -> None:
        self.head.add_location(object_id, self.node_id, size)

    # ---- actors ------------------------------------------------------------------------

    def create_actor(self, spec: Any, class_blob: bytes, meta: Dict[str, Any],
                     get_if_exists: bool) -> Tuple[Optional[msg.ActorFound], Optional[ObjectRef]]:
        """Create the actor; returns (the live actor of that name if get_if_exists found one,
        else None; the ref the new actor's handle holds). ValueError if its name is taken."""
        self.check_session(spec.arg_refs)
        self.check_session(spec.borrowed)
        ref = ObjectRef(spec.return_ids()[0])  # counted before the head knows the actor
        head = self.head
        with head.lock:
            head.apply_driver_refs()
            head.functions[spec.function_id] = class_blob
            existing = head.create_actor(spec, meta, self.node_id, DRIVER, get_if_exists)
            head.flush()
        return (existing, None) if existing is not None else (None, ref)

    def set_namespace(self, namespace: Optional[str]) -> None:
        """A job joining this Cluster's session: its namespace, or (as Ray gives each job) a fresh
        anonymous one. Workers ask the head for it, so the ones already started follow."""
        self.namespace = namespace or anonymous_namespace()
        with self.head.lock:
            self.head.namespace = self.namespace

    def set_job_config(self, job_config: Any) -> None:
        """What the head applies of a JobConfig (the job's namespace is set at start)."""
        with self.head.lock:
            self.head.head_state.default_actor_lifetime = job_config.default_actor_lifetime
            self.head.set_job_reconstruction(not job_config._disable_job_level_lineage_reconstruction)
        # The job's runtime_env, its local folders copied into the session (as Ray uploads them):
        # every task and actor of the job inherits it.
        env = runtime_envs.package(job_config.runtime_env, self.session.dir)
        if job_config.code_search_path:
            env = {**(env or {}), runtime_envs.CODE_SEARCH_PATH: job_config.code_search_path}
        self.runtime_env = runtime_envs.encode(env)

    def actor_lookup(self, name: str, namespace: str) -> Optional[tuple]:
        """The named actor's handle arguments (actor id, its metadata), or None."""
        with self.head.lock:
            found = self.head.lookup_actor(name, namespace)
        return found or None

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        with self.head.lock:
            self.head.kill_actor(actor_id, no_restart)
            self.head.flush()

    def state(self, what: str, about: Any = None) -> Any:
        return self.head.state(what, about)

    def change_placement_group(self, op: str, args: Any) -> Optional[str]:
        """Create or remove a placement group (util/placement_group.py); an error's text, or None."""
        head = self.head
        with head.lock:
            answer = head.change_placement_group(op, args)
            head.flush()
        return answer

    def cancel(self, object_id: bytes, force: bool, recursive: bool) -> None:
        self.check_session([object_id])
        self.head.cancel(object_id, force, recursive)

    # ---- lifecycle -------------------------------------------------------------------

    def shutdown(self) -> None:
        self.refs.alive = False
        set_counter(None)
        try:
            self.head.shutdown()
            # The nodes are gone: print their last output, journal the end.
            self.log_monitor.close()
            self.recorder.close()
        finally:
            self.session.cleanup()


def anonymous_namespace() -> str:
    """A job's namespace when it names none: as in Ray, its own, a random UUID (named actors
    another job creates without a namespace are not found from it)."""
    return str(uuid.uuid4())


class _Wakeup:
    """A one-shot signal from the hub thread (a waiter's callback) to the thread blocked in
    get or wait. A bare lock, held until fired: threading.Event builds a Condition per wait
    and notifies through it, which costs both threads more on every round trip."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def fire(self, _waiter: Any = None) -> None:
        try:
            self._lock.release()
        except RuntimeError:
            pass  # fired already

    def wait(self, timeout: Optional[float]) -> bool:
        if timeout is None:
            # In slices, so that Ctrl-C reaches the main thread promptly on every platform.
            while not self._lock.acquire(timeout=0.5):
                pass
            return True
        return self._lock.acquire(timeout=max(0.0, timeout))
