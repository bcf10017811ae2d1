"""Blocking reads: get and wait, from the driver and from tasks.

Runs in the driver process, under the head's lock: the driver (driver.py, via
Head) and workers' "get"/"wait"/"forget" messages call it; recovery drops a
dead worker's reads (flow_interfaces.py). It needs the task flow (tasks taken
back from a blocked worker go back in line) and recovery (a wanted object
that is lost, or whose copies are all on stopped nodes).

A read that cannot be answered now registers a Waiter on the objects
(object_directory.py). While a task is blocked in get/wait, its CPUs are lent
to other tasks, and tasks pipelined behind it are taken back, so nested work
cannot deadlock on a full node.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, List, Optional

from minicluster._private.head.flow_interfaces import RecoveryForWaiting, TasksForWaiting, Timers
from minicluster._private.head.head_state import HeadState
from minicluster._private.head.messaging import Outbox
from minicluster._private.head.object_directory import LOST, PENDING, READY, RELEASED, Waiter
from minicluster._private.head.scheduler import lent_when_blocked
from minicluster._private.head.virtual_nodes import WorkerRecord
from minicluster._private.wire import messages as msg


class Waiting:
    """Head logic for get/wait; see the module docstring."""

    def __init__(self, state: HeadState, outbox: Outbox, timers: Timers) -> None:
        self.state = state
        self.outbox = outbox
        self.timers = timers
        # set by connect(): the flows this one calls
        self.tasks: TasksForWaiting
        self.recovery: RecoveryForWaiting

    def connect(self, tasks: TasksForWaiting, recovery: RecoveryForWaiting) -> None:
        self.tasks = tasks
        self.recovery = recovery

    def register_wait(self, object_ids: List[bytes], needed_remaining: int,
                      on_ready: Callable[[Waiter], None], fail_fast: bool = False) -> Optional[Waiter]:
        """Register a waiter unless enough objects are ready already (then returns None).

        fail_fast (get): an object that is an error ends the wait at once; when one is
        READY already, the waiter returned has fired (`failed` names it) and is not
        registered, and `on_ready` is not called.
        """
        state = self.state
        entries = state.objects.entries
        for object_id in object_ids:
            entry = entries.get(object_id)
            if entry is not None and entry.state in (LOST, RELEASED):
                self.recovery.recover(object_id)  # someone needs it now: rebuild it
        pending = []
        for object_id in object_ids:
            entry = entries.get(object_id)
            if entry is None:
                continue
            if entry.state == PENDING:
                pending.append(object_id)
            elif entry.state == READY and not state.reachable(entry):
                pending.append(object_id)
                self.recovery.await_unreachable(object_id)
            elif fail_fast and entry.is_error and entry.state == READY:
                failed = Waiter([], 0, 0, on_ready, fail_fast)
                failed.fired, failed.failed = True, object_id
                return failed
        if len(pending) <= needed_remaining:
            return None
        waiter = Waiter(pending, len(pending), needed_remaining, on_ready, fail_fast)
        for object_id in pending:
            entry = entries[object_id]
            if entry.waiters is None:
                entry.waiters = []
            entry.waiters.append(waiter)
        return waiter

    def unregister_waiter(self, waiter: Waiter) -> None:
        """Take a waiter off its objects (it fired, timed out, or its reader is gone)."""
        objects = self.state.objects
        entries = objects.entries
        for object_id in waiter.object_ids:
            entry = entries.get(object_id)
            if entry is not None and entry.waiters:
                try:
                    entry.waiters.remove(waiter)
                except ValueError:
                    pass
                if not entry.waiters:
                    entry.waiters = None
                    objects.maybe_free(object_id)

    def worker_wait(self, worker: WorkerRecord, request_id: int, object_ids: List[bytes], num_returns: int,
                    timeout: Optional[float], reply_all: bool) -> None:
        """A task's get (reply_all: every payload) or wait (the ready ids): reply now or when ready."""
        peer = worker.peer
        state = self.state

        def reply(waiter: Optional[Waiter], blocked: bool = True) -> None:
            if blocked and worker.requests.pop(request_id, None) is None:
                return  # it timed out, was forgotten, or its worker died
            failed = waiter.failed if waiter is not None else None
            if failed is not None:
                # One failed: the get raises its error at once; the others are not waited for.
                self.unregister_waiter(waiter)
                payload: Any = [state.payload_of(oid) if oid == failed else None for oid in object_ids]
            elif reply_all:
                payload = [state.payload_of(oid) for oid in object_ids]
            else:
                payload = state.ready_ids(object_ids)[:num_returns]
            self.outbox.post(peer, msg.Reply.new(request_id=request_id, payload=payload))
            if blocked:
                self.unblock(worker)

        needed_remaining = len(object_ids) - num_returns
        waiter = self.register_wait(object_ids, needed_remaining, reply, fail_fast=reply_all)
        if waiter is None or waiter.fired:  # ready now (or an error among them is, for a get)
            reply(waiter, blocked=False)
            return
        worker.requests[request_id] = waiter
        self._block(worker)
        if timeout is not None:
            def expire() -> None:
                if not waiter.fired:
                    waiter.fired = True
                    self.unregister_waiter(waiter)
                    reply(waiter)
            self.timers.call_later(timeout, expire)

    def forget(self, worker: WorkerRecord, request_id: int) -> None:
        """The worker gave up a get/wait (its own timeout): no reply is wanted any more."""
        waiter = worker.requests.pop(request_id, None)
        if waiter is not None:
            waiter.fired = True
            self.unregister_waiter(waiter)
            self.unblock(worker)

    def _block(self, worker: WorkerRecord) -> None:
        """A task waits in get/wait: lend its CPUs to other tasks so nested work cannot deadlock.

        Tasks pipelined behind it are taken back (the worker skips them) and queued
        again: the blocked task may be waiting for one of them.
        """
        worker.blocked += 1
        if worker.blocked == 1 and worker.task is not None:
            if len(worker.queue) > 1:
                taken = list(worker.queue)[1:]
                worker.queue = collections.deque([worker.queue[0]])
                self.outbox.post(worker.peer, msg.Steal.new(task_ids=[t.spec.task_id for t in taken]))
                for task in taken:
                    task.worker = None
                    task.node = None
                    self.tasks.args_ready(task)
            self.state.scheduler.release(worker.node.node_id, lent_when_blocked(worker.task.spec.resources))
            self.tasks.schedule()

    def unblock(self, worker: WorkerRecord) -> None:
        if worker.blocked <= 0:
            return
        worker.blocked -= 1
        if worker.blocked == 0 and worker.task is not None and not worker.dead:
            self.state.scheduler.acquire(worker.node.node_id, lent_when_blocked(worker.task.spec.resources))
