"""What the driver and the workers share as users of the runtime.

A `RuntimeClient` is the per-process object behind the public API (`get`,
`put`, `remote`, ...). The driver's (driver.py) calls the embedded head
directly; a worker's (worker.py) sends messages to it. Both turn the head's
answers into values the same way, here: a payload (wire/messages.py) says
where a value is, inline, in node stores, or an error to raise
(RayTaskError, ObjectLostError, ...).
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any, Callable, List, Optional, Sequence, Tuple

from minicluster._private.client.object_ref import LocalRefCounter
from minicluster._private.client.pending_calls import PendingCalls
from minicluster._private.common import config, runtime_envs
from minicluster._private.common.ids import job_id, object_id_for_put
from minicluster._private.store import object_store
from minicluster._private.store.serialization import FLAG_ERROR, Serialized, deserialize
from minicluster._private.wire.messages import Payload
from minicluster.exceptions import RayTaskError

# (task id, task name, function name) of the task running in this thread / asyncio task.
_current_task: contextvars.ContextVar = contextvars.ContextVar("minicluster_current_task", default=None)


class RuntimeClient:
    """Base of DriverClient and WorkerClient."""

    node_id: bytes
    worker_id: bytes
    layout: object_store.Layout
    refs: LocalRefCounter
    namespace: Optional[str]  #: the job's namespace; None in a worker (the head knows it)
    #: Set only by a test's fault plan (fault_hooks.py): called before an object is
    #: copied in from another node, to delay the transfer.
    transfer_delay: Optional[Callable[[bytes], None]] = None
    #: Set by exit_actor() in an actor's worker: its running call ends the actor (worker.py)
    actor_exit_requested = False
    #: An actor's worker: what exit_actor() calls (with the current task id) to end the actor
    actor_exit_hook: Optional[Callable[[bytes], None]] = None
    #: In a worker: (group id, bundle index, capture child tasks) of the running task's or actor's
    #: placement group, else None (get_current_placement_group; child tasks it captures)
    current_placement_group: Optional[tuple] = None

    def __init__(self) -> None:
        self.known_functions: set = set()
        self._put_counter = 0
        self._put_lock = threading.Lock()
        self.idle_task_id: bytes = b""  #: the task id outside any task (the driver's own)
        self.current_actor_id: Optional[bytes] = None
        self.session_dir = ""  #: the session folder (runtime_env packages live there)
        self.pending_calls = PendingCalls()  #: calls to actors with max_pending_calls (pending_calls.py)
        self.session_name = ""  #: the session folder's name (get_runtime_context().get_session_name())
        # Read once per process, like Ray reads RAY_TASK_MAX_RETRIES at start-up.
        self.default_max_retries = config.task_max_retries()
        #: The runtime_env this process's code runs in (runtime_envs.encode): the job's in the
        #: driver, the worker's own in a worker. Tasks and actors submitted from here inherit it.
        self.runtime_env: Optional[str] = None
        self._child_envs: dict = {}  #: (own env's encoding) -> merged encoding, for env_for_child
        #: GPU ids of the running task or actor (get_gpu_ids()); a worker sets them per task
        self.gpu_ids: tuple = ()

    @property
    def store_root(self) -> str:
        return self.layout.store_root

    def store_dir(self) -> str:
        """This process's node's shared-memory store folder."""
        return self.layout.dir_of(self.node_id)

    # ---- what runs now (per thread and per asyncio task: threaded and async actors) ----

    @property
    def current_task_id(self) -> bytes:
        current = _current_task.get()
        return current[0] if current is not None else self.idle_task_id

    @property
    def current_task_name(self) -> Optional[str]:
        current = _current_task.get()
        return current[1] if current is not None else None

    @property
    def current_function_name(self) -> Optional[str]:
        current = _current_task.get()
        return current[2] if current is not None else None

    @staticmethod
    def enter_task(task_id: bytes, name: str, function_name: str) -> Any:
        return _current_task.set((task_id, name, function_name))

    @staticmethod
    def leave_task(token: Any) -> None:
        _current_task.reset(token)

    def env_for_child(self, own: Optional[dict]) -> Optional[str]:
        """The encoded runtime_env of a task or actor submitted from here: its own environment
        (checked options) merged over this process's, as Ray's children inherit."""
        if not own:
            return self.runtime_env
        key = (self.runtime_env, runtime_envs.encode(own))
        merged = self._child_envs.get(key)
        if merged is None:
            merged = runtime_envs.encode(runtime_envs.merge(runtime_envs.decode(self.runtime_env), own))
            if len(self._child_envs) > 256:
                self._child_envs.clear()
            self._child_envs[key] = merged
        return merged

    # ---- ids -----------------------------------------------------------------

    def next_put_id(self) -> bytes:
        with self._put_lock:
            self._put_counter += 1
            index = self._put_counter
        return object_id_for_put(self.current_task_id, index)

    @property
    def job_id(self) -> bytes:
        return job_id()

    # ---- turning payloads into values ----------------------------------------------

    def load(self, object_id: bytes, payload: Payload) -> Any:
        """The value a payload describes; raises the stored error for error payloads."""
        kind = payload.kind
        if kind == "i":
            value, flags = deserialize(payload.data)
        elif kind == "s":
            locations = payload.data
            if self.transfer_delay is not None and self.node_id not in locations:
                self.transfer_delay(object_id)
            view, copied = object_store.fetch(self.layout, self.node_id, object_id, locations)
            if copied:
                self.add_location(object_id, copied)
            value, flags = deserialize(view)
        else:
            value, flags = deserialize(payload.data)
            flags |= FLAG_ERROR
        if flags & FLAG_ERROR:
            error = as_raisable(value)
            del value
            try:
                raise error
            finally:
                # Not kept in this frame: the error's traceback holds the frame, and the cycle
                # would keep the caller's locals (actor handles, refs) alive until a gc pass.
                del error
        return value

    def add_location(self, object_id: bytes, size: int) -> None:
        """Tell the head this node now holds a copy of the object."""
        raise NotImplementedError

    # ---- the operations every client provides -------------------------------

    def get(self, object_ids: Sequence[bytes], timeout: Optional[float]) -> List[Any]:
        raise NotImplementedError

    def put(self, value: Any) -> bytes:
        raise NotImplementedError

    def put_serialized(self, serialized: Serialized) -> Any:
        """put() of a value serialized already (a large task argument: pickled once, not twice)."""
        raise NotImplementedError

    def stream_next(self, task_id: bytes, advance: bool) -> Tuple[str, Any]:
        """A generator task's next item: ("item" | "pending" | "end", its ObjectRef or None)."""
        raise NotImplementedError

    def stream_abandoned(self, task_id: bytes) -> None:
        """A generator was dropped before its end (called from __del__: must not block)."""
        raise NotImplementedError


def as_raisable(error: BaseException) -> BaseException:
    """The exception `get` raises for a stored error: task errors also match the user's class."""
    if isinstance(error, RayTaskError):
        return error.as_instanceof_cause()
    return error
