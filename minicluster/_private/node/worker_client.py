"""The runtime as code running inside a worker process sees it.

Runs in every worker, used from any of its threads (the main thread running a
task, an actor's pool or event-loop thread). `WorkerClient` turns the public API
(`get`, `put`, `remote`, actor calls, `cancel`, ...) into messages to the head and
waits for their replies, which the waiting thread reads itself or gets from the
thread reading the connection then (inbox.py);
every frame it sends carries this process's reference-count changes: new holds
first, then an async actor's held replies, then the messages, releases last.
`store_value` turns a task's result into a payload: inline bytes, or a file in
this node's store.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from minicluster._private.client.object_ref import LocalRefCounter, ObjectRef
from minicluster._private.client.runtime_client import RuntimeClient
from minicluster._private.common import config
from minicluster._private.common.task_spec import ITEM
from minicluster._private.node.inbox import Inbox
from minicluster._private.store import object_store, store_spares
from minicluster._private.store.serialization import Serialized, serialize
from minicluster._private.wire import messages as msg
from minicluster._private.wire.protocol import Connection
from minicluster.exceptions import ActorAlreadyExistsError, GetTimeoutError, ObjectStoreFullError


class WorkerClient(RuntimeClient):
    """The runtime as code running inside this worker sees it."""

    def __init__(self, conn: Connection, worker_id: bytes, node_id: bytes, layout: object_store.Layout,
                 capacity: int) -> None:
        super().__init__()
        self.conn = conn
        self.worker_id = worker_id
        self.node_id = node_id
        self.layout = layout
        self.capacity = capacity  #: this node's store size; a larger value cannot be stored
        #: None: the job's namespace, which only the head knows for sure (a job joining a
        #: Cluster sets it after this worker started); the head fills it in where it is needed
        self.namespace: Optional[str] = None
        self.refs = LocalRefCounter(on_first=self._on_first_ref)
        self._adds: List[bytes] = []
        #: async actors' finished calls: (Done message, return value) not sent yet. The value
        #: stays alive until its reply is out: refs inside it must not be released first.
        self._held: List[Tuple[msg.Done, Any]] = []
        self._delta_lock = threading.Lock()
        self._requests: Dict[int, list] = {}
        self.inbox: Inbox = None  # type: ignore[assignment]  # (set by the worker right after: worker.py)
        self._request_ids = itertools.count(1)
        #: tasks running or queued here whose cancel() arrived, until they end: is_canceled()
        self.cancel_requested: set = set()
        self.in_async_actor = False  #: is_canceled() is refused there, as in Ray (the coroutine is cancelled)
        #: generators dropped before their end (ObjectRefGenerator.__del__), told with the next send
        self._abandoned: collections.deque = collections.deque()

    def is_canceled(self) -> bool:
        """Whether cancel() was called on the task running in this thread."""
        if self.in_async_actor:
            raise RuntimeError("is_canceled() is not supported in an async actor: a cancelled call's "
                               "coroutine gets asyncio.CancelledError instead")
        return self.current_task_id in self.cancel_requested

    # ---- outgoing messages ----------------------------------------------------

    def _on_first_ref(self, object_id: bytes) -> None:
        with self._delta_lock:
            self._adds.append(object_id)

    def hold_reply(self, done: msg.Done, value: Any) -> bool:
        """Keep an async call's reply for the next send, from whichever thread; True if it is
        the first one held (the caller then makes sure a send comes soon)."""
        with self._delta_lock:
            self._held.append((done, value))
            return len(self._held) == 1

    def send(self, *messages: Any) -> None:
        """Send messages wrapped in this process's reference-count changes, after any held
        replies (so a request never overtakes a reply it may wait for).

        New holds go first and releases last: a release sent ahead of a message
        that pins the object (a result containing the ref) could free it early.
        """
        if not (messages or self._adds or self._held or self._abandoned or self.refs.has_released()):
            return  # (a worker going idle after each task: nothing to say, nearly always)
        removed = self.refs.drain() if self.refs.has_released() else []
        with self._delta_lock:
            added, self._adds = self._adds, []
            held, self._held = self._held, []
        batch: List[Any] = [msg.Refs.new(added=added, removed=[])] if added else []
        batch.extend(done for done, _ in held)
        batch.extend(messages)
        if self._abandoned:
            abandoned = []
            while self._abandoned:
                abandoned.append(self._abandoned.popleft())
            batch.append(msg.StreamAbandon.new(task_ids=abandoned))
        if removed:
            batch.append(msg.Refs.new(added=[], removed=removed))
        if batch:
            self.conn.send_list(batch)
        del held  # the replies are out: their values, and refs inside them, may go now

    def request(self, build: Callable[[int], Any], timeout: Optional[float] = None) -> Any:
        """Send the request `build(request_id)` and block for its Reply; interruptible by
        cancellation (SIGINT)."""
        request_id = next(self._request_ids)
        slot: list = [False, None]  # (answered, payload)
        self._requests[request_id] = slot
        try:
            message = build(request_id)
            self.send(message)
            if not self.inbox.wait_for(lambda: slot[0], timeout):
                self.send(msg.Forget.new(request_id=request_id))
                raise GetTimeoutError(f"{type(message).__name__.lower()} timed out after {timeout} seconds")
            return slot[1]
        except BaseException:
            # Cancelled (KeyboardInterrupt) or timed out: the head must stop counting us as blocked.
            if not slot[0]:
                try:
                    self.send(msg.Forget.new(request_id=request_id))
                except OSError:
                    pass
            raise
        finally:
            self._requests.pop(request_id, None)

    def on_reply(self, request_id: int, payload: Any) -> None:
        slot = self._requests.get(request_id)
        if slot is not None:
            slot[1] = payload
            slot[0] = True

    # ---- the client API ---------------------------------------------------------

    def add_location(self, object_id: bytes, size: int) -> None:
        self.send(msg.Located.new(object_id=object_id, node_id=self.node_id, size=size))

    def submit(self, spec: Any, function_blob: Optional[bytes]) -> List[ObjectRef]:
        # The head counts this worker as holding each result from the submission on,
        # so the refs are made without announcing them again.
        messages: List[Any] = []
        if spec.function_id not in self.known_functions and function_blob is not None:
            messages.append(msg.DefineFunction.new(function_id=spec.function_id, blob=function_blob))
            self.known_functions.add(spec.function_id)
        messages.append(msg.Submit.new(spec=spec))
        self.send(*messages)
        return [ObjectRef(oid, _announce=False) for oid in spec.return_ids()]

    def get(self, object_ids: Sequence[bytes], timeout: Optional[float]) -> List[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        ids = list(object_ids)
        for _ in range(100):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            payloads = self.request(lambda request_id: msg.Get.new(request_id=request_id, object_ids=ids),
                                     timeout=remaining)
            try:
                if None in payloads:  # one failed and the head did not wait for the rest: raise its error
                    failed = next(i for i, payload in enumerate(payloads) if payload is not None)
                    self.load(ids[failed], payloads[failed])
                return [self.load(oid, payload) for oid, payload in zip(object_ids, payloads)]
            except FileNotFoundError as exc:
                # A copy vanished between the head's answer and our read (its node died):
                # tell the head, which rebuilds or reports the loss, then ask again.
                self.send(msg.Lost.new(object_id=bytes.fromhex(str(exc.args[0]))))
        raise RuntimeError("object kept vanishing while being fetched")

    def put(self, value: Any) -> ObjectRef:
        return self.put_serialized(serialize(value, what="put() value"))

    def put_serialized(self, serialized: Serialized) -> ObjectRef:
        object_id = self.next_put_id()
        value = store_serialized(self, object_id, serialized, what="put() value")
        self.send(msg.Put.new(object_id=object_id, value=value))
        return ObjectRef(object_id, _announce=False)

    def wait(self, object_ids: Sequence[bytes], num_returns: int, timeout: Optional[float],
             fetch_local: bool) -> List[bytes]:
        ids = list(object_ids)
        return self.request(lambda request_id: msg.Wait.new(request_id=request_id, object_ids=ids,
                                                             num_returns=num_returns, timeout=timeout))

    def stream_next(self, task_id: bytes, advance: bool) -> Tuple[str, Optional[ObjectRef]]:
        """A generator's next item (object_ref_generator.py; the head's side: streams.py)."""
        status, object_id = self.request(lambda request_id: msg.StreamNext.new(
            request_id=request_id, task_id=task_id, advance=advance))
        if not object_id:
            return status, None
        # An item taken: the head counts this worker as its holder already.
        return status, ObjectRef(object_id, _announce=not (advance and status == ITEM))

    def stream_abandoned(self, task_id: bytes) -> None:
        """From ObjectRefGenerator.__del__ (any thread, any moment): lock-free, sent with the next frame."""
        self._abandoned.append(task_id)

    def cancel(self, object_id: bytes, force: bool, recursive: bool) -> None:
        problem = self.request(lambda request_id: msg.Cancel.new(request_id=request_id, object_id=object_id,
                                                                  force=force, recursive=recursive))  # answered at once
        if problem:
            raise ValueError(problem)

    def state(self, what: str, about: Any = None) -> Any:
        return self.request(lambda request_id: msg.QueryState.new(request_id=request_id, what=what, about=about))

    def create_actor(self, spec: Any, class_blob: bytes, meta: Dict[str, Any],
                     get_if_exists: bool) -> Tuple[Optional[msg.ActorFound], Optional[ObjectRef]]:
        """Create the actor; returns (the live actor of that name if get_if_exists found one,
        else None; the ref the new actor's handle holds). ValueError if its name is taken."""
        if spec.function_id not in self.known_functions:
            self.send(msg.DefineFunction.new(function_id=spec.function_id, blob=class_blob))
            self.known_functions.add(spec.function_id)
        answer = self.request(lambda request_id: msg.CreateActor.new(request_id=request_id, spec=spec, meta=meta,
                                                                      get_if_exists=get_if_exists))
        if isinstance(answer, str):
            raise ActorAlreadyExistsError(answer)
        if answer is not None:
            return answer, None
        # The head counts this worker as holding the handle's ref from the creation on.
        return None, ObjectRef(spec.return_ids()[0], _announce=False)

    def actor_lookup(self, name: str, namespace: Optional[str]) -> Optional[msg.ActorFound]:
        """The named actor's handle arguments (actor id, its metadata), or None."""
        found = self.request(lambda request_id: msg.LookupActor.new(request_id=request_id, name=name,
                                                                     namespace=namespace))
        return found or None

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        self.send(msg.KillActor.new(actor_id=actor_id, no_restart=no_restart))

    def change_placement_group(self, op: str, args: Any) -> Optional[str]:
        """Create or remove a placement group (util/placement_group.py); an error's text, or None."""
        return self.request(lambda request_id: msg.ChangePlacementGroup.new(request_id=request_id, op=op, args=args))


def store_value(client: RuntimeClient, object_id: bytes, value: Any, what: str, flags: int = 0) -> msg.Value:
    """Serialize a value into a payload: inline bytes, or a file in this node's store."""
    return store_serialized(client, object_id, serialize(value, flags=flags, what=what), what)


def store_serialized(client: RuntimeClient, object_id: bytes, serialized: Any, what: str) -> msg.Value:
    """A serialized value as a payload: inline bytes, or a file in this node's store."""
    if serialized.size <= config.INLINE_THRESHOLD:
        return msg.Value.new(kind="i", data=serialized.to_bytes(), refs=serialized.refs)
    if serialized.size > client.capacity:  # type: ignore[attr-defined]
        raise ObjectStoreFullError(
            f"{what}: {serialized.size} bytes is larger than the node's object store "
            f"({client.capacity} bytes, object_store_memory)"  # type: ignore[attr-defined]
        )
    size = object_store.write(client.store_dir(), object_id, serialized,
                              store_spares.spare_limit(client.capacity))  # type: ignore[attr-defined]
    return msg.Value.new(kind="s", data=size, refs=serialized.refs)
