"""Ray's `ray.util.queue`: a first-in first-out queue that tasks, actors and the driver share.

The queue's items live in one async actor (`_QueueActor`, an asyncio.Queue on the actor's
event loop); a `Queue` object is a thin client holding that actor's handle, so it can be
passed to tasks and actors like any value and every copy talks to the same queue. The
client runs in whichever process uses it; the actor runs in its own worker.

Blocking put/get wait inside the actor (an awaiting call does not hold up the others), so a
consumer blocked in get() is woken by a put from anywhere. `Empty` and `Full` are the
standard library's queue.Empty / queue.Full (subclasses), raised on the caller's side.

As in Ray, the actor takes `actor_options` (resources, max_restarts, ...): a restarted
queue actor runs its constructor again and starts empty; items put before the crash are
gone.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any, Dict, List, Optional

from minicluster import api
from minicluster.exceptions import RayError, RayTaskError


class Empty(_stdlib_queue.Empty):
    """get on an empty queue (without blocking, or after the timeout)."""


class Full(_stdlib_queue.Full):
    """put on a full queue (without blocking, or after the timeout)."""


class Queue:
    """A FIFO queue held by an actor. `maxsize` 0 (the default) means unbounded.

    `actor_options` go to the queue actor's `.options(...)`, e.g. {"num_cpus": 1}.
    """

    def __init__(self, maxsize: int = 0, actor_options: Optional[Dict[str, Any]] = None) -> None:
        self.maxsize = maxsize
        # num_cpus=0 unless actor_options say otherwise: the queue waits, it does not compute, and
        # a CPU taken even while its constructor runs would show (Ray: available CPUs do not change)
        options = {"num_cpus": 0, **(actor_options or {})}
        self.actor: Any = api.remote(_QueueActor).options(**options).remote(maxsize)

    # ---- size -----------------------------------------------------------------------

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """How many items are in the queue."""
        return api.get(self.actor.qsize.remote())

    def qsize(self) -> int:
        """How many items are in the queue."""
        return self.size()

    def empty(self) -> bool:
        return api.get(self.actor.empty.remote())

    def full(self) -> bool:
        return api.get(self.actor.full.remote())

    # ---- put ------------------------------------------------------------------------

    def put(self, item: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Add an item. Full when the queue is full and `block` is False, or it stayed full
        for `timeout` seconds. ValueError for a negative timeout."""
        _get_translated(self._put_call(item, block, timeout))

    async def put_async(self, item: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """put() for asyncio code: awaits instead of blocking the thread."""
        await _await_translated(self._put_call(item, block, timeout))

    def put_nowait(self, item: Any) -> None:
        """put(item, block=False)."""
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable) -> None:
        """Add all `items` in order, or none of them: Full if they do not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        _get_translated(self.actor.put_nowait_batch.remote(list(items)))

    def _put_call(self, item: Any, block: bool, timeout: Optional[float]) -> Any:
        if not block:
            return self.actor.put_nowait.remote(item)
        _check_timeout(timeout)
        return self.actor.put.remote(item, timeout)

    # ---- get ------------------------------------------------------------------------

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """Remove and return the oldest item. Empty when the queue is empty and `block` is
        False, or it stayed empty for `timeout` seconds. ValueError for a negative timeout."""
        return _get_translated(self._get_call(block, timeout))

    async def get_async(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """get() for asyncio code: awaits instead of blocking the thread."""
        return await _await_translated(self._get_call(block, timeout))

    def get_nowait(self) -> Any:
        """get(block=False)."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> List[Any]:
        """Remove and return the `num_items` oldest items, or none: Empty if there are fewer."""
        if not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        return _get_translated(self.actor.get_nowait_batch.remote(num_items))

    def _get_call(self, block: bool, timeout: Optional[float]) -> Any:
        if not block:
            return self.actor.get_nowait.remote()
        _check_timeout(timeout)
        return self.actor.get.remote(timeout)

    # ---- end ------------------------------------------------------------------------

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """End the queue's actor (its items are dropped). Without `force`, it is asked to exit
        after the calls already sent and killed if it has not within `grace_period_s`."""
        if self.actor is not None:
            if force:
                api.kill(self.actor, no_restart=True)
            else:
                ending = self.actor.__ray_terminate__.remote()
                done, _ = api.wait([ending], timeout=grace_period_s)
                if not done:
                    api.kill(self.actor, no_restart=True)
                try:  # the actor's exit is this call's expected error: taken, so not reported as unhandled
                    api.get(ending, timeout=grace_period_s)
                except RayError:
                    pass
        self.actor = None


def _check_timeout(timeout: Optional[float]) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


def _translate(error: RayTaskError) -> Exception:
    """The actor's Empty/Full as a plain Empty/Full for the caller (not the task-error wrapper)."""
    cause = getattr(error, "cause", None)
    for kind in (Empty, Full):
        if isinstance(cause, kind):
            return kind(*cause.args)
    return error


def _get_translated(ref: Any) -> Any:
    try:
        return api.get(ref)
    except RayTaskError as error:
        translated = _translate(error)
        if translated is error:
            raise
        raise translated from None


async def _await_translated(ref: Any) -> Any:
    try:
        return await ref
    except RayTaskError as error:
        translated = _translate(error)
        if translated is error:
            raise
        raise translated from None


class _QueueActor:
    """The queue itself, in an async actor: blocked puts and gets await on its event loop."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: Optional[float] = None) -> None:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            raise Full(f"the queue stayed full for {timeout} s") from None

    async def get(self, timeout: Optional[float] = None) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Empty(f"the queue stayed empty for {timeout} s") from None

    def put_nowait(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"the queue is full (maxsize {self.maxsize})") from None

    def put_nowait_batch(self, items: List[Any]) -> None:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            raise Full(f"Cannot add {len(items)} items to queue of size {self.queue.qsize()} "
                       f"and maxsize {self.maxsize}.")
        for item in items:
            self.queue.put_nowait(item)

    def get_nowait(self) -> Any:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("the queue is empty") from None

    def get_nowait_batch(self, num_items: int) -> List[Any]:
        if num_items > self.queue.qsize():
            raise Empty(f"Cannot get {num_items} items from queue of size {self.queue.qsize()}.")
        return [self.queue.get_nowait() for _ in range(num_items)]


__all__ = ["Empty", "Full", "Queue"]
