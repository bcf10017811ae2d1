"""Blocking reads: get and wait, from the driver and from tasks (part of the head).

Runs in the driver process, as methods of `Head` (head.py), under the head's
lock. A read that cannot be answered now registers a Waiter on the objects
(objects.py). While a task is blocked in get/wait, its CPUs are lent to other
tasks, and tasks pipelined behind it are taken back, so nested work cannot
deadlock on a full node.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, List, Optional

from minicluster._private.store import object_store
from minicluster.exceptions import ObjectLostError, ReferenceCountingAssertionError
from minicluster._private.head.object_directory import LOST, PENDING, READY, RELEASED, Waiter
from minicluster._private.store.serialization import error_blob
from minicluster._private.wire import messages as msg
from minicluster._private.head.virtual_nodes import WorkerRecord


class Waiting:
    """Head methods for get/wait; see the module docstring."""

    def register_wait(self, object_ids: List[bytes], needed_remaining: int, on_ready: Callable[[Waiter], None]) -> Optional[Waiter]:
        """Register a waiter unless enough objects are ready already (then returns None). Lock held."""
        entries = self.objects.entries
        for object_id in object_ids:
            entry = entries.get(object_id)
            if entry is not None and entry.state in (LOST, RELEASED):
                self._recover(object_id)  # someone needs it now: rebuild it
        pending = []
        for object_id in object_ids:
            entry = entries.get(object_id)
            if entry is None:
                continue
            if entry.state == PENDING:
                pending.append(object_id)
            elif entry.state == READY and not self._reachable(entry):
                pending.append(object_id)
                self._await_unreachable(object_id)
        if len(pending) <= needed_remaining:
            return None
        waiter = Waiter(pending, len(pending), needed_remaining, on_ready)
        for object_id in pending:
            entry = entries[object_id]
            if entry.waiters is None:
                entry.waiters = []
            entry.waiters.append(waiter)
        return waiter

    def _unregister_waiter(self, waiter: Waiter) -> None:
        entries = self.objects.entries
        for object_id in waiter.object_ids:
            entry = entries.get(object_id)
            if entry is not None and entry.waiters:
                try:
                    entry.waiters.remove(waiter)
                except ValueError:
                    pass
                if not entry.waiters:
                    entry.waiters = None
                    self.objects.maybe_free(object_id)

    def payload_of(self, object_id: bytes) -> msg.Payload:
        entry = self.objects.entries.get(object_id)
        if entry is None:
            return msg.Payload.new(kind="e", data=error_blob(self._missing_error(object_id)))
        payload = entry.payload
        if payload is None:  # lost again after the wait ended: the caller asks once more
            return msg.Payload.new(kind="s", data=[], size=entry.size)
        if payload.kind == "s":
            nodes = self.nodes
            reachable = [loc for loc in payload.data if not nodes[object_store.node_of(loc)].stopped]
            return msg.Payload.new(kind="s", data=reachable, size=payload.size)
        return payload

    def ready_ids(self, object_ids: List[bytes]) -> List[bytes]:
        entries = self.objects.entries
        return [oid for oid in object_ids if (e := entries.get(oid)) is None or e.state == READY]

    def _missing_error(self, object_id: bytes) -> BaseException:
        if object_id in self.objects.freed:
            return ReferenceCountingAssertionError(object_id.hex())
        return ObjectLostError(object_id.hex())

    def _worker_wait(self, worker: WorkerRecord, request_id: int, object_ids: List[bytes], num_returns: int,
                     timeout: Optional[float], reply_all: bool) -> None:
        peer = worker.peer

        def reply(waiter: Optional[Waiter]) -> None:
            if worker.requests.pop(request_id, None) is None and waiter is not None:
                return
            if reply_all:
                payload: Any = [self.payload_of(oid) for oid in object_ids]
            else:
                payload = self.ready_ids(object_ids)[:num_returns]
            self._post(peer, msg.Reply.new(request_id=request_id, payload=payload))
            if waiter is not None:
                self._unblock(worker)

        needed_remaining = len(object_ids) - num_returns
        waiter = self.register_wait(object_ids, needed_remaining, reply)
        if waiter is None:
            reply(None)
            return
        worker.requests[request_id] = waiter
        self._block(worker)
        if timeout is not None:
            def expire() -> None:
                with self.lock:
                    if not waiter.fired:
                        waiter.fired = True
                        self._unregister_waiter(waiter)
                        reply(waiter)
                        self._flush()
            self.hub.call_later(timeout, expire)

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
                self._post(worker.peer, msg.Steal.new(task_ids=[t.spec.task_id for t in taken]))
                for task in taken:
                    task.worker = None
                    task.node = None
                    self._args_ready(task)
            self.scheduler.release(worker.node.node_id, worker.task.spec.resources)
            self._schedule()

    def _unblock(self, worker: WorkerRecord) -> None:
        if worker.blocked <= 0:
            return
        worker.blocked -= 1
        if worker.blocked == 0 and worker.task is not None and not worker.dead:
            self.scheduler.acquire(worker.node.node_id, worker.task.spec.resources)
