"""ObjectRefGenerator: what `.remote()` of a generator function returns (Ray's streaming generator).

Runs in the process that called `.remote()` (the driver or a worker): it is the
stream's only consumer, and it cannot be passed to another process (as in Ray).
Each `next()` asks the head for the stream's next item (head/streams.py): taken
at once if it was reported, else the consumer waits for that item's object with
the ordinary wait machinery and asks again. After the last item, the task's
completion object says how it ended: clean (StopIteration), or with a system
error (worker died with no retries left, cancelled), which `next()` returns once as
a ref that raises, as Ray does. An exception the generator raised arrives as an
item of its own.

The generator holds the completion's ref; dropping it lets the head release the
items never taken.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Deque, Iterator, List, Optional

from minicluster._private.client import context
from minicluster._private.client.object_ref import ObjectRef
from minicluster._private.common.task_spec import END, ITEM, PENDING_ITEM
from minicluster.exceptions import GetTimeoutError


class ObjectRefGenerator:
    """A generator of ObjectRefs, one per item the task yields, as they are produced.

    Iterate it (`for ref in gen`, `next(gen)`, `async for`), or pass it to `wait`:
    it is ready when `next()` would not block. Not thread-safe, like Ray's.
    """

    def __init__(self, completion: ObjectRef) -> None:
        self._generator_ref = completion
        self._task_id = completion.binary()[:24]
        self._raised = False  #: the completion's error was handed out: the stream is over
        self._over = False  #: next() reached the end (StopIteration or the completion's error)

    # ---- the generator protocol ------------------------------------------------------

    def __iter__(self) -> "ObjectRefGenerator":
        return self

    def __next__(self) -> ObjectRef:
        return self._next_sync()

    def __aiter__(self) -> "ObjectRefGenerator":
        return self

    async def __anext__(self) -> ObjectRef:
        ref = await self._next_async()
        return ref

    def send(self, value: Any) -> None:
        raise NotImplementedError("`gen.send` is not supported.")

    def throw(self, value: Any) -> None:
        raise NotImplementedError("`gen.throw` is not supported.")

    def close(self) -> None:
        raise NotImplementedError("`gen.close` is not supported.")

    async def asend(self, value: Any) -> None:
        raise NotImplementedError("`gen.asend` is not supported.")

    async def athrow(self, value: Any) -> None:
        raise NotImplementedError("`gen.athrow` is not supported.")

    async def aclose(self) -> None:
        raise NotImplementedError("`gen.aclose` is not supported.")

    # ---- Ray's public helpers ---------------------------------------------------------

    def completed(self) -> ObjectRef:
        """A ref that is ready when the task ends; `get` of it raises if the task failed
        (other than by an exception of the generator, which is an item)."""
        return self._generator_ref

    def next_ready(self) -> bool:
        """True if `next()` would return at once with a ready ref (False at the end)."""
        status, _ = context.client().stream_next(self._task_id, False)
        return status == ITEM

    def is_finished(self) -> bool:
        """True once every item was taken and `next()` would raise StopIteration."""
        status, _ = context.client().stream_next(self._task_id, False)
        if status != END:
            return False
        return self._raised or not self._completion_failed(0)

    # ---- taking the next item ----------------------------------------------------------

    def _next_sync(self, timeout_s: Optional[float] = None) -> ObjectRef:
        """The next item's ref; a nil ref if none is ready within `timeout_s` (None or -1:
        wait as long as it takes); StopIteration at the end."""
        client = context.client()
        deadline = None if timeout_s is None or timeout_s < 0 else time.monotonic() + timeout_s
        while True:
            status, ref = client.stream_next(self._task_id, True)
            if status == ITEM:
                return ref
            if status == PENDING_ITEM:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not client.wait([ref.binary()], 1, remaining, False):
                    return ObjectRef.nil()
                continue
            return self._at_end(deadline)

    async def _next_async(self, timeout_s: Optional[float] = None) -> ObjectRef:
        """As _next_sync, for async code: the waiting runs off the event loop."""
        import asyncio  # (only async consumers load it)

        ref = await asyncio.get_running_loop().run_in_executor(None, self._next_or_none, timeout_s)
        if ref is None:
            raise StopAsyncIteration
        return ref

    def _next_or_none(self, timeout_s: Optional[float]) -> Optional[ObjectRef]:
        try:
            return self._next_sync(timeout_s)
        except StopIteration:  # (it cannot cross a Future: asyncio refuses it)
            return None

    def _at_end(self, deadline: Optional[float]) -> ObjectRef:
        self._over = True
        if self._raised:
            raise StopIteration
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            failed = self._completion_failed(remaining)
        except GetTimeoutError:
            return ObjectRef.nil()
        if failed:
            self._raised = True
            return self._generator_ref
        raise StopIteration

    def _completion_failed(self, timeout: Optional[float]) -> bool:
        try:
            context.client().get([self._generator_ref.binary()], timeout)
        except GetTimeoutError:
            raise
        except Exception:  # noqa: BLE001 - any error the task ended with
            return True
        return False

    def _watched(self) -> ObjectRef:
        """The ref `wait` watches for this generator: its next item (ready or not), or the
        completion once the stream has no item left."""
        status, ref = context.client().stream_next(self._task_id, False)
        return self._generator_ref if status == END else ref

    def __del__(self) -> None:
        # Dropped before its end: a producer paused by backpressure must not wait for us.
        if not self._over:
            client = context.current()
            if client is not None:
                client.stream_abandoned(self._task_id)

    def __reduce__(self) -> tuple:
        raise TypeError("You cannot return or pass a generator to other task. "
                        "Serializing a ObjectRefGenerator is not allowed.")

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._generator_ref.hex()})"


class DynamicObjectRefGenerator:
    """The value of a `num_returns="dynamic"` task: the refs of every item it yielded."""

    def __init__(self, refs: List[ObjectRef]) -> None:
        self._refs: Deque[ObjectRef] = collections.deque(refs)

    def __iter__(self) -> Iterator[ObjectRef]:
        while self._refs:
            yield self._refs.popleft()

    def __len__(self) -> int:
        return len(self._refs)

    def __reduce__(self) -> tuple:
        return (DynamicObjectRefGenerator, (list(self._refs),))
