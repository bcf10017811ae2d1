"""ObjectRef, and the per-process counter of live refs that feeds reference counting.

Runs in every process. Each ObjectRef instance counts once in its process's
`LocalRefCounter`; the runtime learns when a process starts holding an object
(count 0 -> 1) and when it lets go (1 -> 0), and frees the object once no
process, task or containing object holds it.

`__del__` may run at any moment (inside another ObjectRef's constructor, in
any thread), so it never takes a lock: it only appends to a deque that the
runtime drains later. Increments are applied at once and decrements later, so
the count can only be too high for a moment, never too low: an object is
never freed while a ref to it exists.
"""

from __future__ import annotations

import collections
import threading
import types
from typing import Any, Callable, Dict, Generator, List, Optional

from minicluster._private.client import context
from minicluster._private.common.ids import TaskID
from minicluster._private.store import serialization


class LocalRefCounter:
    """Counts the live ObjectRef instances of one process, per object id."""

    def __init__(self, on_first: Optional[Callable[[bytes], None]] = None) -> None:
        self.counts: Dict[bytes, int] = {}
        self._released: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._on_first = on_first
        self.alive = True

    def incr(self, object_id: bytes, announce: bool = True) -> None:
        with self._lock:
            count = self.counts.get(object_id, 0)
            self.counts[object_id] = count + 1
        if count == 0 and announce and self._on_first is not None:
            self._on_first(object_id)

    def decr(self, object_id: bytes) -> None:
        self._released.append(object_id)  # lock-free: safe inside __del__

    def has_released(self) -> bool:
        return bool(self._released)

    def drain(self) -> List[bytes]:
        """Apply pending decrements; return the ids this process no longer holds."""
        released = self._released
        if not released:  # (nearly always, on the head's hot paths: no lock then)
            return []
        gone = []
        with self._lock:
            counts = self.counts
            while released:
                object_id = released.popleft()
                count = counts.get(object_id, 0) - 1
                if count > 0:
                    counts[object_id] = count
                elif count == 0:
                    del counts[object_id]
                    gone.append(object_id)
        return gone


_NIL_ID = b"\xff" * 28

# The counter of the current process's runtime; set by init() or the worker.
_counter: Optional[LocalRefCounter] = None


def set_counter(counter: Optional[LocalRefCounter]) -> None:
    global _counter
    _counter = counter


class ObjectRef:
    """A reference to an object that a task returns or `put` stores."""

    __slots__ = ("_id", "_counter", "__weakref__")
    __class_getitem__ = classmethod(types.GenericAlias)  #: `ObjectRef[int]` in annotations, as in Ray

    def __init__(self, object_id: bytes, _announce: bool = True) -> None:
        self._id = object_id
        counter = _counter
        self._counter = counter
        if counter is not None and counter.alive:
            counter.incr(object_id, _announce)

    def __del__(self) -> None:
        counter = self._counter
        if counter is not None and counter.alive:
            counter.decr(self._id)

    def __reduce__(self) -> tuple:
        refs = serialization.collect_refs()
        if refs is not None:
            refs.append(self._id)
        return (ObjectRef, (self._id,))

    @classmethod
    def nil(cls) -> "ObjectRef":
        """The nil ref (all 0xff), as Ray's: what a generator's next with a timeout returns
        when no item came in time."""
        return cls(_NIL_ID, _announce=False)

    def is_nil(self) -> bool:
        return self._id == _NIL_ID

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> TaskID:
        return TaskID(self._id[:24])

    def __eq__(self, other: object) -> bool:
        return type(other) is ObjectRef and other._id == self._id  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def future(self) -> Any:
        """A concurrent.futures.Future that resolves to the object's value."""
        import concurrent.futures  # only for callers of future(): keeps every worker's start light

        future: concurrent.futures.Future = concurrent.futures.Future()
        client = context.client()

        def resolve() -> None:
            try:
                future.set_result(client.get([self._id], None)[0])
            except BaseException as exc:  # noqa: BLE001 - delivered through the future
                future.set_exception(exc)

        threading.Thread(target=resolve, name="minicluster-future", daemon=True).start()
        return future

    def __await__(self) -> Generator[Any, None, Any]:
        import asyncio  # ~30 ms to import; only code that awaits refs pays it

        return asyncio.wrap_future(self.future()).__await__()


# Arguments like (i, ref) are pickled by the C pickler, several times faster than cloudpickle.
serialization.register_plain_type(ObjectRef)
