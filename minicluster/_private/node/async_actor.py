"""An async actor's calls: its event loop threads, fed in batches.

Runs in a worker process whose actor has `async def` methods (worker.py makes
one when the actor is created). Each concurrency group has its own event loop
on its own thread ("AsyncIO Thread: default", "AsyncIO Thread: <group>", as in
Ray), with its own limit: a coroutine that blocks one group's loop does not
hold back another group's calls. For each loop:

    main thread ── start(batch) ──► one wake-up of the loop ──► a task per call
    reader thread ── cancel(id) ──► decided on the loop thread
    a call ends ──► its reply is held (WorkerClient.hold_reply) ──► the main
                    thread sends all held replies in one frame (flush_replies_soon)

Batching both ways is what lets one actor answer tens of thousands of calls a
second: a wake-up and a socket write per call would cost more than the calls.
What keeps the batching safe: a held reply keeps the call's return value alive
until it is sent (refs inside it are released only after the reply); every
send, from any thread, carries the held replies first (a blocking `get` in a
coroutine cannot overtake a reply it waits for); the main thread, not the loop,
sends them (a coroutine that blocks the loop does not hold other replies back);
and a worker that exits sends them first.

Cancellation is decided on the loop thread, where calls begin, so there is no
gap between "not begun" and "running": a cancel either finds the call running
(its coroutine is cancelled at its next await, as Ray does) or is left in the
worker's `cancelled_queued`, which the call checks when it begins.
"""

from __future__ import annotations

import asyncio
import os
import threading
import traceback
from typing import TYPE_CHECKING, Any, Dict, List

from minicluster.exceptions import AsyncioActorExit

if TYPE_CHECKING:
    from minicluster._private.node.worker import Worker
    from minicluster._private.wire.messages import Exec


class _GroupLoop:
    """One concurrency group's event loop, on its own thread, and the calls running on it."""

    def __init__(self, group: str, limit: int) -> None:
        self.running: Dict[bytes, asyncio.Task] = {}  #: its loop thread only
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.slots = asyncio.Semaphore(limit)  # at most `limit` of the group's calls awaiting at once
            ready.set()
            while True:
                try:
                    self.loop.run_forever()
                    return
                except AsyncioActorExit:
                    # exit_actor() in an asyncio task of the actor's own (not a call): the worker
                    # is exiting already (Worker.exit_requested); the loop serves on until then.
                    continue

        # Ray's thread names: "AsyncIO Thread: default", "AsyncIO Thread: <group>"
        threading.Thread(target=run, name=f"AsyncIO Thread: {group or 'default'}", daemon=True).start()
        ready.wait()


class AsyncCalls:
    """The event loops of one async actor (one per concurrency group) and the calls running on them."""

    def __init__(self, worker: "Worker", groups: Dict[str, int]) -> None:
        """`groups`: each concurrency group's max concurrency, "" the default group's."""
        self.worker = worker
        self.loops = {group: _GroupLoop(group, limit) for group, limit in groups.items()}
        # With several loops, the reader thread must know which one a call was handed to
        # (to cancel it there); a call not handed to any yet is cancelled when it begins.
        self._lock = threading.Lock()
        self._where: Dict[bytes, _GroupLoop] = {}
        self._single = self.loops[""] if len(self.loops) == 1 else None

    def construct(self, cls: type, args: tuple, kwargs: dict) -> Any:
        """Run the actor's constructor on the default group's loop and wait for it (the
        worker's main thread), as Ray does: `asyncio.create_task` works in `__init__`."""

        client = self.worker.client
        running = (client.current_task_id, client.current_task_name, client.current_function_name)

        async def construct() -> Any:
            # The creation task is what runs (asyncio tasks it creates inherit it: exit_actor()).
            token = client.enter_task(*running)
            try:
                return cls(*args, **kwargs), None
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                return None, exc
            finally:
                client.leave_task(token)

        instance, error = asyncio.run_coroutine_threadsafe(construct(), self.loops[""].loop).result()
        if error is not None:
            raise error  # (its traceback: the constructor's frames, not the future's)
        return instance

    def stop(self) -> None:
        """The constructor failed: the loops end (the worker serves plain tasks again)."""
        for where in self.loops.values():
            where.loop.call_soon_threadsafe(where.loop.stop)

    # ---- other threads ---------------------------------------------------------------

    def start(self, requests: List["Exec"]) -> None:
        """Begin these calls, in this order within each group (the worker's main thread)."""
        if self._single is not None:
            self._single.loop.call_soon_threadsafe(self._start, self._single, requests)
            return
        by_group: Dict[str, List["Exec"]] = {}
        for request in requests:
            by_group.setdefault(request.concurrency_group, []).append(request)
        with self._lock:
            for group, batch in by_group.items():
                where = self.loops[group]
                for request in batch:
                    self._where[request.task_id] = where
                where.loop.call_soon_threadsafe(self._start, where, batch)

    def cancel(self, task_id: bytes) -> None:
        """cancel() of one call (the worker's reader thread)."""
        if self._single is not None:
            self._single.loop.call_soon_threadsafe(self._cancel, self._single, task_id)
            return
        with self._lock:
            where = self._where.get(task_id)
            if where is None:
                self.worker.cancelled_queued.add(task_id)  # not handed to a loop yet: skipped when it begins
                return
            where.loop.call_soon_threadsafe(self._cancel, where, task_id)

    # ---- a loop thread ---------------------------------------------------------------

    def _start(self, where: _GroupLoop, requests: List["Exec"]) -> None:
        for request in requests:
            where.loop.create_task(self._run(where, request))

    def _cancel(self, where: _GroupLoop, task_id: bytes) -> None:
        task = where.running.get(task_id)
        if task is not None:
            task.cancel()
        else:
            self.worker.cancelled_queued.add(task_id)

    async def _run(self, where: _GroupLoop, request: "Exec") -> None:
        task_id = request.task_id
        where.running[task_id] = asyncio.current_task()  # type: ignore[assignment]
        try:
            done, value = await self.worker.execute_async(request, where.slots)
        except BaseException:  # noqa: BLE001 - a bug of ours, not the call's: fail loudly, never hang
            traceback.print_exc()
            os._exit(1)
        finally:
            where.running.pop(task_id, None)
            if self._single is None:
                with self._lock:
                    self._where.pop(task_id, None)
        if done.error is not None and done.error.error_type == "ACTOR_EXIT":
            return  # the call ended the actor: never reported (the head fails it; worker.py)
        if self.worker.client.hold_reply(done, value):
            self.worker.flush_replies_soon()
