"""An async actor's calls: its event loop thread, fed in batches.

Runs in a worker process whose actor has `async def` methods (worker.py makes
one when the actor is created). The loop runs on its own thread
("actor-event-loop"):

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
from typing import TYPE_CHECKING, Dict, List

if TYPE_CHECKING:
    from minicluster._private.node.worker import Worker
    from minicluster._private.wire.messages import Exec


class AsyncCalls:
    """The event loop of one async actor and the calls running on it."""

    def __init__(self, worker: "Worker", max_concurrency: int) -> None:
        self.worker = worker
        self.running: Dict[bytes, asyncio.Task] = {}  #: loop thread only
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.slots = asyncio.Semaphore(max_concurrency)  # at most max_concurrency awaiting at once
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, name="actor-event-loop", daemon=True).start()
        ready.wait()

    # ---- other threads ---------------------------------------------------------------

    def start(self, requests: List["Exec"]) -> None:
        """Begin these calls, in this order (the worker's main thread)."""
        self.loop.call_soon_threadsafe(self._start, requests)

    def cancel(self, task_id: bytes) -> None:
        """cancel() of one call (the worker's reader thread)."""
        self.loop.call_soon_threadsafe(self._cancel, task_id)

    # ---- the loop thread ---------------------------------------------------------------

    def _start(self, requests: List["Exec"]) -> None:
        for request in requests:
            self.loop.create_task(self._run(request))

    def _cancel(self, task_id: bytes) -> None:
        task = self.running.get(task_id)
        if task is not None:
            task.cancel()
        else:
            self.worker.cancelled_queued.add(task_id)

    async def _run(self, request: "Exec") -> None:
        task_id = request.task_id
        self.running[task_id] = asyncio.current_task()  # type: ignore[assignment]
        try:
            done, value = await self.worker.execute_async(request, self.slots)
        except BaseException:  # noqa: BLE001 - a bug of ours, not the call's: fail loudly, never hang
            traceback.print_exc()
            os._exit(1)
        finally:
            self.running.pop(task_id, None)
        if done.error is not None and done.error.error_type == "ACTOR_EXIT":
            return  # the call ended the actor: never reported (the head fails it; worker.py)
        if self.worker.client.hold_reply(done, value):
            self.worker.flush_replies_soon()
