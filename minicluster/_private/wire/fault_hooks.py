"""Where a test's fault plan reaches into the runtime: the hook points and the orders fired at them.

Runs in two kinds of process. In the driver, the head calls the hooks of the
installed plan (`head.faults`, see `HeadHooks`; it is None when no plan is
installed, and then each hook costs one `is None` check). In a worker, the
orders that came with a task are carried out at exactly the named point of the
worker's own code, so a fault never races the work it is aimed at:

    head (driver)                                   worker
    -------------                                   ------
    _send_exec ─► faults.on_exec(task, worker) ───► Exec(..., faults=orders)
                  faults.hold_exec(...)               LOAD_ARGS    argument tuple unpickled, refs not loaded
                  (dispatch delay: sent later)        START        arguments ready, user code not started
                                                      AFTER_ITEM   a generator's k-th item reported (k: after_item(k))
                                                      BEFORE_STORE user code returned, results not stored
                                                      BEFORE_REPLY results stored, Done not sent
                                                      FETCH        before copying an object from another node
    fault_message ◄── FaultFired ◄──────────────────── each order reports itself as it fires
    _on_done ─► faults.after_done(worker)           (node triggers: "after N tasks finished on node X")

An order is a FaultOrder (point, action, argument, fault reference: wire/messages.py);
the worker echoes the reference (opaque to it) in its report. Actions:

    KILL_WORKER  SIGKILL this worker, once the head has the report (a crash: WORKER_DIED)
    KILL_NODE    ask the head to kill this worker's node, and wait for the end
    STOP_NODE    ask the head to SIGSTOP this worker's node; go on once it resumes
    RAISE        raise the pickled exception, as if the task's own code had raised it
    SLEEP        sleep `argument` seconds (result delay); at FETCH, argument is a
                 FetchDelay: each copy from another node sleeps a seeded amount

The plan itself (what to fire, when, the seed, the journal) is test code:
minicluster/testing/.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import time
from typing import Any, Optional, Protocol, Tuple

from minicluster._private.wire.messages import FaultFired, FaultOrder, Reply

LOAD_ARGS = "load_args"
START = "start"
BEFORE_STORE = "before_store"
BEFORE_REPLY = "before_reply"
FETCH = "fetch"
AFTER_ITEM = "after_item"
POINTS = (LOAD_ARGS, START, AFTER_ITEM, BEFORE_STORE, BEFORE_REPLY, FETCH)


def after_item(index: int) -> str:
    """The point right after a generator task reported its `index`-th item (1-based)."""
    return f"{AFTER_ITEM}:{index}"

KILL_WORKER = "kill_worker"
KILL_NODE = "kill_node"
STOP_NODE = "stop_node"
RAISE = "raise"
SLEEP = "sleep"

class HeadHooks(Protocol):
    """What the head calls while a plan is installed (`head.faults`), always under the head's lock."""

    def on_exec(self, task: Any, worker: Any) -> Optional[Tuple[FaultOrder, ...]]:
        """A task attempt is being sent to a worker: the orders it carries, or None."""

    def hold_exec(self, worker: Any, message: Any) -> bool:
        """True if the plan keeps this Exec message back for now (it sends it later itself)."""

    def after_done(self, worker: Any) -> None:
        """The head finished handling a Done message from this worker."""

    def on_fired(self, worker: Any, message: FaultFired) -> None:
        """A worker reports an order firing (see `fault_message`)."""


# ==== head side =========================================================================


def fault_message(head: Any, peer: Any, worker: Any, message: FaultFired) -> None:
    """Handler of a worker's FaultFired report.

    Runs in the head (hub thread, lock held). Without an installed plan (it was
    removed meanwhile) a worker waiting for an answer is let go at once.
    """
    faults = head.faults
    if faults is not None:
        faults.on_fired(worker, message)
    elif message.request_id:
        head.post(peer, Reply.new(request_id=message.request_id, payload=None))


# ==== worker side =======================================================================


def carry_out(client: Any, call: Any, point: str) -> None:
    """Fire the orders of `call` (a worker's running task) that are aimed at `point`."""
    for order in call.faults:
        if order.point != point:
            continue
        action = order.action
        if action == SLEEP:
            _report(client, call, order, seconds=order.argument)
            time.sleep(order.argument)
        elif action == RAISE:
            _report(client, call, order)
            raise pickle.loads(order.argument)
        elif action == KILL_WORKER:
            # Wait until the head has the report: it may learn of the death from the node
            # manager before it reads this socket, and would then never see the report.
            client.request(lambda request_id, order=order: _fired(request_id, call, order))
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # SIGKILL lands before this returns
        elif action in (KILL_NODE, STOP_NODE):
            # The head acts on the whole node; a stopped node's worker goes on after resume.
            client.request(lambda request_id, order=order: _fired(request_id, call, order))


def transfer_delay_of(client: Any, call: Any) -> Optional["TransferDelay"]:
    """The FETCH order of a task as a callable for `RuntimeClient.transfer_delay`, if it has one."""
    for order in call.faults:
        if order.point == FETCH:
            delay = order.argument
            return TransferDelay(random.Random(delay.seed), delay.low_s, delay.high_s,
                                 lambda seconds, object_id, order=order: _report(
                                     client, call, order, seconds=seconds, object_hex=object_id.hex()))
    return None


class TransferDelay:
    """Called before an object is copied in from another node: sleeps a seeded random time."""

    def __init__(self, rng: random.Random, low_s: float, high_s: float, on_delay: Any) -> None:
        self.rng = rng
        self.low_s = low_s
        self.high_s = high_s
        self.on_delay = on_delay

    def __call__(self, object_id: bytes) -> None:
        seconds = self.rng.uniform(self.low_s, self.high_s)
        self.on_delay(seconds, object_id)
        time.sleep(seconds)


def _fired(request_id: int, call: Any, order: FaultOrder, seconds: Optional[float] = None,
           object_hex: Optional[str] = None) -> FaultFired:
    return FaultFired.new(request_id=request_id, task_id=call.task_id, attempt=call.attempt, ref=order.ref,
                          point=order.point, action=order.action, seconds=seconds, object_hex=object_hex)


def _report(client: Any, call: Any, order: FaultOrder, seconds: Optional[float] = None,
            object_hex: Optional[str] = None) -> None:
    """Tell the head an order fired, without waiting for an answer (request id 0)."""
    client.send(_fired(0, call, order, seconds, object_hex))
