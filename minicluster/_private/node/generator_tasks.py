"""Generator tasks in a worker: items reported as they are yielded, backpressure, Ray's return rules.

Runs in every worker, on the thread that runs the task (the main thread, an
actor's pool thread, or an async actor's loop); StreamAck messages come through
inbox.py (a generator waiting for its consumer reads them itself, or waits for the
thread that reads). The head's side is head/streams.py.

* Streaming (num_returns="streaming", a generator function's default) and dynamic
  tasks: the k-th item is stored as `stream_item_id(task, k)` and reported with a
  StreamItem before the generator is resumed. Never batched (measured: a 1 ms
  batching window gave +40% items/s on tiny items): an item yielded is an item
  reported, so a worker that dies right after a yield (os._exit, a crash) has
  reported everything it yielded, and a test of that crash sees the same items
  every run.
* Backpressure (_generator_backpressure_num_objects=N): after yielding, the
  generator is not resumed while N of its items wait for the consumer.
* An exception of the generator is reported as an error item (the head makes it
  the next item if the task is not retried); a dynamic task's return value then
  lists it after the items.
* num_returns=N with a generator: its first N values are the results; values
  yielded before an exception keep their places, the error fills the rest.
"""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from minicluster._private.client.object_ref import ObjectRef
from minicluster._private.client.object_ref_generator import DynamicObjectRefGenerator
from minicluster._private.common.task_spec import DYNAMIC, stream_item_id
from minicluster._private.node.task_errors import error_results, inline_error, one_line, task_error
from minicluster._private.node.worker_client import WorkerClient, store_value
from minicluster._private.wire import fault_hooks
from minicluster._private.wire import messages as msg

if TYPE_CHECKING:
    from minicluster._private.node.worker import Worker

_NO_VALUE = object()


class GeneratorTasks:
    """One per worker: runs generator tasks' generators and reports their items."""

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker
        self.client: WorkerClient = worker.client
        #: streaming tasks with a backpressure limit: task id -> (items consumed, limit) (StreamAck)
        self.acks: Dict[bytes, Tuple[int, int]] = {}

    # ---- streaming and dynamic ------------------------------------------------------

    def run(self, call: Any, generator: Any) -> Any:
        """Run the generator to its end, reporting each item; returns the task's own value."""
        if inspect.isasyncgen(generator):
            raise TypeError(f"{call.name} is an async generator: run it in an async actor")
        items = _items_of(call, generator)
        for index, item in enumerate(items, start=1):
            self._report(call, index, item)
            del item  # (its refs may go once it is stored)
            if not self._caught_up(call.task_id, index):
                self.wait_for_consumer(call, index)
        return self.result(call)

    async def run_async(self, call: Any, generator: Any) -> Any:
        """`run` for an async actor's method: an async generator runs on the actor's loop."""
        if not inspect.isasyncgen(generator):
            return self.run(call, generator)
        import asyncio  # (loaded already: this is an async actor)

        index = 0
        async for item in generator:
            index += 1
            self._report(call, index, item)
            del item
            if not self._caught_up(call.task_id, index):
                await asyncio.get_running_loop().run_in_executor(None, self.wait_for_consumer, call, index)
        return self.result(call)

    def _report(self, call: Any, index: int, item: Any) -> None:
        worker = self.worker
        # Not interruptible while it stores and sends (a half-written frame would break the
        # connection); a cancel that came meanwhile lands right after.
        interruptible, worker.in_user_code = worker.in_user_code, False
        call.items = index
        value = store_value(self.client, stream_item_id(call.task_id, index), item,
                            what=f"item {index} of {call.name}")
        self.client.send(msg.StreamItem.new(task_id=call.task_id, attempt=call.attempt, index=index, value=value,
                                            is_error=False))
        if call.faults:  # a test's fault plan may kill this worker right after this item
            fault_hooks.carry_out(self.client, call, fault_hooks.after_item(index))
        worker.in_user_code = interruptible
        if interruptible and worker.cancel_target == call.task_id:
            worker.cancel_target = None
            raise KeyboardInterrupt

    def on_ack(self, message: msg.StreamAck) -> None:
        """(whichever thread reads, inbox.py) The consumer took more items, or the limit changed."""
        self.acks[message.task_id] = (message.consumed, message.limit)

    def _caught_up(self, task_id: bytes, produced: int) -> bool:
        consumed, limit = self.acks.get(task_id, (0, -1))
        return limit <= 0 or produced - consumed < limit

    def wait_for_consumer(self, call: Any, produced: int) -> None:
        """Backpressure: pause while `limit` items wait for the consumer."""
        # Reads the connection itself, or waits for the thread that does (a cancel interrupts it).
        self.worker.inbox.wait_for(lambda: self._caught_up(call.task_id, produced), None)

    @staticmethod
    def result(call: Any, count: Optional[int] = None) -> Any:
        """A streaming task returns nothing of its own; a dynamic one the refs of its items
        (`count` of them: the items, and the exception after them if it raised)."""
        if call.num_returns != DYNAMIC:
            return None
        return DynamicObjectRefGenerator([ObjectRef(stream_item_id(call.task_id, index))
                                          for index in range(1, (count or call.items) + 1)])

    def report_error(self, call: Any, wrapped: BaseException, results: List[msg.Value],
                     return_ids: List[bytes]) -> List[msg.Value]:
        """The generator raised: report the error as an item (the head decides whether it is
        one); a dynamic task's return value lists it after the items. Returns the results."""
        item = results[0] if results[0].kind == "i" else inline_error(wrapped, call.name)
        self.client.send(msg.StreamItem.new(task_id=call.task_id, attempt=call.attempt, index=0, value=item,
                                            is_error=True))
        if call.num_returns != DYNAMIC:
            return results
        call.kept = self.result(call, call.items + 1)
        return [store_value(self.client, return_ids[0], call.kept, what=f"return value of {call.name}")]

    def finish(self, call: Any) -> None:
        """The task ended: forget its backpressure state."""
        if self.acks:
            self.acks.pop(call.task_id, None)

    # ---- num_returns=N ---------------------------------------------------------------------

    def static_results(self, call: Any, generator: Any,
                       return_ids: List[bytes]) -> Tuple[List[msg.Value], Optional[msg.ErrorInfo]]:
        """A generator with num_returns=N: its first N values are the results. As in Ray, if it
        raises (or stops early, a ValueError) the values it yielded before are kept and the
        error fills the rest; values past the N-th are left unread, with a warning."""
        client, name = self.client, call.name
        results: List[msg.Value] = []
        try:
            for object_id in return_ids:
                try:
                    item = next(generator)
                except StopIteration:
                    raise ValueError(f"Task {name} declared num_returns={call.num_returns} but its generator "
                                     f"yielded only {len(results)} values") from None
                results.append(store_value(client, object_id, item, what=f"return value of {name}"))
                del item
        except Exception as error:  # noqa: BLE001 - the task's error, after the values it yielded
            wrapped, retryable = task_error(error, name, call.retry_exceptions, None)
            first = len(results)
            results += error_results(client, return_ids[first:], wrapped, name)
            return results, msg.ErrorInfo.new(error_type="TASK_EXECUTION_EXCEPTION", retryable=retryable,
                                               message=one_line(error), first_error=first)
        if next(generator, _NO_VALUE) is not _NO_VALUE:
            print(f"minicluster: task {name} declared num_returns={call.num_returns} but its generator yields "
                  "more values: the rest are ignored", file=sys.stderr)
        return results, None


def _items_of(call: Any, generator: Any) -> Any:
    """The items of a generator task's result: it must be iterable (a generator, as Ray requires)."""
    try:
        return iter(generator)
    except TypeError:
        raise TypeError(f"Task {call.name} has num_returns='streaming' or 'dynamic' but returned a "
                        f"{type(generator).__name__}, not a generator") from None
