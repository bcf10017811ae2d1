"""Generator tasks' streams: items reported one by one, handed to the consumer in order (part of the head).

Runs in the driver process, under the head's lock. A streaming generator task
(num_returns="streaming", task_spec.STREAMING) has one return value, its
*completion* (None, or the error that ended it), and items: the k-th item is the
object `stream_item_id(task, k)`, stored by the worker and reported with a
StreamItem message while the task runs. A dynamic one (task_spec.DYNAMIC) reports
its items the same way; its completion value holds refs to them all.

What a StreamRecord keeps true (lock released):

* items 1..`produced` were reported by some attempt; entries 1..`pinned` exist or were
  freed after being consumed, `pinned` >= `produced` (an entry past `produced` is one the
  consumer peeked at: PENDING until produced, or, once the stream ended, the
  end-of-stream error);
* items consumed+1..pinned are pinned by the stream (the consumer has not taken them);
  consumed ones are held by the consumer's ObjectRefs like any result;
* the consumer takes items strictly in order, each exactly once: a retried attempt
  reports items 1..k again, and those are dropped (or stored, if lost meanwhile), so a
  crash mid-stream shows no duplicate and no gap;
* an exception raised by the generator becomes the item after the last one, once the
  task will not be retried (Ray's rule; a dynamic task's completion then lists it too); a
  system failure (worker or node died, cancel) ends the stream, and the completion
  object holds the error.

The stream goes when nothing holds its completion object any more (the consumer
dropped its ObjectRefGenerator): the items it still pins are released.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from minicluster._private.common.task_spec import DYNAMIC, END, ITEM, PENDING_ITEM, STREAMING, stream_item_id
from minicluster._private.head.head_state import HeadState
from minicluster._private.head.messaging import Outbox
from minicluster._private.head.object_directory import READY
from minicluster._private.head.task_records import TaskRecord
from minicluster._private.head.virtual_nodes import WorkerRecord
from minicluster._private.store import object_store
from minicluster._private.store.serialization import error_blob, serialize
from minicluster._private.wire import messages as msg
from minicluster.exceptions import ObjectRefStreamEndOfStreamError


class StreamRecord:
    __slots__ = ("task_id", "owner", "kind", "produced", "consumed", "pinned", "finished", "error", "limit")

    def __init__(self, task_id: bytes, owner: bytes, kind: int, limit: int) -> None:
        self.task_id = task_id
        self.owner = owner  #: the caller: it owns every item, as it owns the completion
        self.kind = kind  #: STREAMING or DYNAMIC
        self.produced = 0
        self.consumed = 0
        self.pinned = 0
        self.finished = False  #: the task closed: no item comes after `produced`
        #: (attempt, Value) the generator raised in that attempt; published as an item if final
        self.error: Optional[Tuple[int, msg.Value]] = None
        self.limit = limit  #: _generator_backpressure_num_objects (-1: none)


class Streams:
    """The streams of open and recently finished generator tasks; see the module docstring."""

    def __init__(self, state: HeadState, outbox: Outbox, tasks: Any) -> None:
        self.state = state
        self.outbox = outbox
        self.tasks = tasks  #: the task flow: stores values and wakes their readers
        self.records: Dict[bytes, StreamRecord] = {}
        state.on_stream_unheld = self.drop

    # ---- the producer -------------------------------------------------------------

    def open(self, task: TaskRecord) -> None:
        spec = task.spec
        if spec.task_id not in self.records:
            self.records[spec.task_id] = StreamRecord(spec.task_id, spec.owner, spec.num_returns, spec.backpressure)

    def item(self, worker: WorkerRecord, message: msg.StreamItem) -> None:
        """A worker reports an item its generator yielded (or the exception it raised)."""
        task_id, value = message.task_id, message.value
        node_id = worker.node.node_id
        task = self.state.tasks.get(task_id)
        current = task is not None and task.attempt == message.attempt and task.worker is worker
        stream = self.records.get(task_id)
        if not current:
            self._discard(value, stream_item_id(task_id, message.index), node_id)
            return
        if message.is_error:
            if stream is not None:
                stream.error = (message.attempt, value)
            return
        object_id = stream_item_id(task_id, message.index)
        if stream is not None:
            if message.index > stream.pinned:
                self._pin_next(stream)
            stream.produced = max(stream.produced, message.index)
        task.items = max(task.items, message.index)
        # A retry (or a rebuild) reports items already stored: the store keeps the one it has
        # and drops the new copy; a lost one takes the new value.
        self.tasks.store(object_id, value.kind, value.data, value.refs, node_id, False)

    def _pin_next(self, stream: StreamRecord) -> bytes:
        stream.pinned += 1
        object_id = stream_item_id(stream.task_id, stream.pinned)
        objects = self.state.objects
        objects.create(object_id, stream.owner)
        objects.pin(object_id)
        owner = self.state.workers.get(stream.owner)
        if owner is not None:
            owner.owned.add(object_id)  # lost with its owner, like the completion object
        return object_id

    def _discard(self, value: msg.Value, object_id: bytes, node_id: bytes) -> None:
        """A stale attempt's item: delete its file, unless it is (renamed over) the live copy."""
        entry = self.state.objects.entries.get(object_id)
        live = entry is not None and entry.payload is not None and entry.payload.kind == "s" \
            and node_id in entry.payload.data
        if value.kind == "s" and not live:
            object_store.delete(self.state.session.layout.dir_of(node_id), object_id)

    def final_results(self, task: TaskRecord, results: list, error_type: Optional[str],
                      is_error: bool) -> Tuple[list, bool]:
        """The task ends for good with these results (is_error: they are its error): an exception
        the generator raised becomes its next item, and the completion holds None (Ray's rule)."""
        stream = self.records.get(task.spec.task_id)
        if stream is None or error_type != "TASK_EXECUTION_EXCEPTION":
            return results, is_error
        raised, stream.error = stream.error, None
        if raised is None or raised[0] != task.attempt:
            return results, is_error  # it failed before the generator ran: the completion says why
        value = raised[1]
        index = stream.produced + 1
        object_id = stream_item_id(stream.task_id, index) if index <= stream.pinned else self._pin_next(stream)
        stream.produced = task.items = index
        entry = self.state.objects.set_value(object_id, value.kind, value.data, value.refs, None, True)
        if entry is not None:
            entry.unhandled = True
            self.tasks.object_ready(object_id, entry)
        # A dynamic task's worker sent its DynamicObjectRefGenerator, this last item included.
        return ([_NONE_VALUE] if stream.kind == STREAMING else results), False

    def closed(self, task: TaskRecord) -> None:
        """The task closed (finished, failed for good, cancelled): the stream has all its items.
        Entries the consumer peeked at past the last item end the stream for their waiters."""
        stream = self.records.get(task.spec.task_id)
        if stream is None:
            return
        stream.finished = True
        stream.error = None
        if stream.kind == DYNAMIC:
            self.drop(stream.task_id)  # the completion value's refs hold the items now
            return
        if stream.pinned > stream.produced:
            blob = error_blob(ObjectRefStreamEndOfStreamError("the generator task has no more items"))
            for index in range(stream.produced + 1, stream.pinned + 1):
                object_id = stream_item_id(stream.task_id, index)
                entry = self.state.objects.entries.get(object_id)
                if entry is not None and entry.state != READY:
                    entry.payload = msg.Payload.new(kind="e", data=blob)
                    entry.size = len(blob)
                    entry.is_error = True
                    entry.state = READY
                    self.tasks.object_ready(object_id, entry)

    def item_count(self, task_id: bytes) -> int:
        stream = self.records.get(task_id)
        return stream.produced if stream is not None else 0

    def ack_for(self, task: TaskRecord) -> Optional[msg.StreamAck]:
        """Before an attempt starts: its backpressure limit, and how far the consumer got."""
        stream = self.records.get(task.spec.task_id)
        if stream is None or stream.limit <= 0:
            return None
        return msg.StreamAck.new(task_id=stream.task_id, consumed=stream.consumed, limit=stream.limit)

    # ---- the consumer ---------------------------------------------------------------

    def next(self, task_id: bytes, advance: bool, consumer: Optional[WorkerRecord]) -> Tuple[str, bytes]:
        """The consumer's next(): (ITEM, id) taken (a worker consumer holds it now; the driver
        must take it with `taken`), (PENDING_ITEM, id) to wait for, or (END, b"")."""
        stream = self.records.get(task_id)
        if stream is None:
            return END, b""
        index = stream.consumed + 1
        if index > stream.produced and stream.finished:
            return END, b""
        object_id = stream_item_id(task_id, index) if index <= stream.pinned else self._pin_next(stream)
        entry = self.state.objects.entries.get(object_id)
        if entry is None or entry.state != READY:
            return PENDING_ITEM, object_id
        if not advance:
            return ITEM, object_id
        stream.consumed = index
        if consumer is not None:
            self.state.objects.add_borrower(object_id, consumer.worker_id)
            consumer.borrowed.add(object_id)
            self.state.objects.unpin(object_id)
        self._ack(stream)
        return ITEM, object_id

    def taken(self, object_id: bytes) -> None:
        """The driver made its ObjectRef for an item next() handed it: the stream lets go."""
        self.state.objects.unpin(object_id)

    def _ack(self, stream: StreamRecord) -> None:
        if stream.limit <= 0 or stream.finished:
            return
        task = self.state.tasks.get(stream.task_id)
        worker = task.worker if task is not None else None
        if worker is not None and worker.peer is not None:
            self.outbox.post(worker.peer, msg.StreamAck.new(task_id=stream.task_id, consumed=stream.consumed,
                                                            limit=stream.limit))

    def abandon(self, task_id: bytes) -> None:
        """The consumer dropped its generator before the end: a producer paused by backpressure
        goes on (to the end: Ray does not cancel it), its items freed once it ends."""
        stream = self.records.get(task_id)
        if stream is None or stream.finished or stream.limit <= 0:
            return
        stream.limit = -1
        task = self.state.tasks.get(task_id)
        worker = task.worker if task is not None else None
        if worker is not None and worker.peer is not None:
            self.outbox.post(worker.peer, msg.StreamAck.new(task_id=task_id, consumed=stream.consumed, limit=-1))

    def drop(self, task_id: bytes) -> None:
        """Nobody holds the completion any more (or a dynamic task ended): release the items
        the consumer never took."""
        stream = self.records.get(task_id)
        if stream is None or not stream.finished:
            return  # (a running task's completion is PENDING, hence held: only after it ends)
        del self.records[task_id]
        objects = self.state.objects
        for index in range(stream.consumed + 1, stream.pinned + 1):
            objects.unpin(stream_item_id(task_id, index))


_NONE_VALUE = msg.Value.new(kind="i", data=serialize(None).to_bytes(), refs=[])  #: a clean completion
