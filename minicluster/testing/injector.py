"""The fault injector: a FaultPlan at work inside the head, deciding at the head's own event points.

Runs in the driver, as `head.faults` (the head calls it through the hooks of
minicluster/fault_hooks.py), always under the head's lock: from the head's I/O
thread for messages and timers, from the test's thread for install/uninstall.

    head event                    what the injector may do
    ----------                    ------------------------
    a task attempt is dispatched  attach orders to its Exec: kill the worker at a point,
                                  raise an exception, kill/stop the node when it starts,
                                  sleep before replying, slow its fetches; or hold the
                                  message back (dispatch delay, sent later on a hub timer)
    a worker reports an order     journal it; mark the attempt as injected; for node
    firing (FaultFired)           orders, kill the node (head.kill_node) or stop it and
                                  resume it later (head.stop_node / resume_node)
    a Done was handled            count tasks finished per node: node triggers, node chaos
    the driver copies an object   (driver-side transfer delay)

Every random choice comes from random.Random streams derived from the plan's
seed, one per kind of event (dispatches, finished tasks, node picks, driver
transfers), so the choices of one stream do not depend on how the OS
interleaved the others: the same seed and program give the same faults.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple

from minicluster._private.client import context
from minicluster._private.common.task_spec import ACTOR_TASK, NORMAL_TASK
from minicluster._private.observe import state_journal
from minicluster._private.wire import fault_hooks
from minicluster._private.wire.messages import Exec, FaultFired, FaultOrder, FaultRef, FetchDelay, Reply
from minicluster.testing.faults import (
    Chaos,
    Delay,
    Fault,
    KillActor,
    KillNode,
    KillWorker,
    NodeFault,
    RaiseInTask,
    StopNode,
    TaskSelector,
)

if TYPE_CHECKING:
    from minicluster.testing.fault_plan import FaultPlan

#: Where the journal is written in the session folder, for tools outside the test process.
JOURNAL_FILE = state_journal.FAULTS  # the timeline lays these over the task slices

#: Chaos remembers which task attempts it counted; past this many it forgets finished tasks
#: (a pass over the table every COUNTED_LIMIT dispatches: cheap, and memory stays bounded).
COUNTED_LIMIT = 50_000


class _Match:
    """Progress of one task-aimed fault: the tasks seen so far, the one it is bound to, what fired."""

    __slots__ = ("seen", "bound", "count", "fired_keys")

    def __init__(self) -> None:
        self.seen: Optional[Set[bytes]] = set()  #: names-matching tasks seen, until the nth is found
        self.bound: Optional[bytes] = None  #: the task id it aims at (nth given)
        self.count = 0  #: actor faults: calls seen
        self.fired_keys: Set[Tuple[bytes, int]] = set()  #: (task id, attempt) it fired in


class Injector:
    """Implements fault_hooks.HeadHooks for one installed FaultPlan."""

    def __init__(self, plan: FaultPlan, head: Any, client: Any) -> None:
        self.plan = plan
        self.head = head
        self.serial = next(_serials)  #: orders carry it: a late report of an earlier plan is not ours
        self.client = client
        self.journal = plan.journal
        self.t0 = time.monotonic()
        seed = plan.seed
        self.rng_dispatch = random.Random(f"{seed}/dispatch")
        self.rng_done = random.Random(f"{seed}/done")
        self.rng_nodes = random.Random(f"{seed}/nodes")
        self.rng_driver = random.Random(f"{seed}/driver")
        self.task_faults: List[Fault] = []  #: KillWorker, RaiseInTask, NodeFault(when_task_starts)
        self.count_faults: List[NodeFault] = []  #: NodeFault(after_tasks)
        self.actor_faults: List[KillActor] = []
        self.delays: List[Delay] = []
        self.chaos: Optional[Chaos] = None
        self.matches: Dict[int, _Match] = {}
        self.held: Dict[bytes, List[Exec]] = {}  #: worker id -> Exec messages held back, in order
        self.hold_s = 0.0  #: dispatch delay chosen by the on_exec just before hold_exec
        self.hold_fault: Optional[Delay] = None
        self.hold_task: Any = None
        self.stopped: Dict[bytes, Tuple[list, list, StopNode]] = {}  #: node id -> (timer, workers waiting, fault)
        self.finished_on: Dict[bytes, int] = collections.Counter()
        self.finished_total = 0
        self.dispatched = 0  #: chaos: task attempts dispatched (a re-dispatch of one counts once)
        self.counted: Dict[bytes, int] = {}  #: chaos: task id -> its highest attempt counted
        #: chaos: task id -> (attempt, kill order) not yet carried out; an attempt sent again
        #: (it was queued behind a task whose worker died first) still carries it
        self.chaos_orders: Dict[bytes, Tuple[int, FaultOrder]] = {}
        self.counted_limit = COUNTED_LIMIT
        self.next_worker_kill = 0
        self.next_node_kill = 0
        self.node_kills = 0

    # ==== install / uninstall (the test's thread) ========================================

    @classmethod
    def install(cls, plan: FaultPlan) -> "Injector":
        client = context.current()
        if client is None or context.in_worker():
            raise RuntimeError("FaultPlan.install(): no session is running in this process (call init() first); "
                               "plans are installed from the driver")
        head = client.head
        with head.lock:
            if head.closed:
                raise RuntimeError("FaultPlan.install(): the session was shut down")
            if head.faults is not None:
                raise RuntimeError("FaultPlan.install(): another fault plan is installed in this session; "
                                   "uninstall it first")
            injector = cls(plan, head, client)
            for fault in plan.faults:
                injector._prepare(fault)  # a bad node name raises here, before anything is installed
            head.faults = injector
            injector._update_driver_transfer()
        plan.journal.write_to(os.path.join(head.session.logs_dir, JOURNAL_FILE))
        return injector

    def add(self, fault: Fault) -> None:
        """A fault added to the plan while installed."""
        with self.head.lock:
            fault.fault_id = len(self.plan.faults) + 1
            self._prepare(fault)
            self.plan.faults.append(fault)
            self._update_driver_transfer()

    def uninstall(self) -> None:
        head = self.head
        with head.lock:
            if head.faults is self:
                head.faults = None
            held, self.held = self.held, {}
            if not head.closed:
                for worker_id, messages in held.items():
                    worker = head.workers.get(worker_id)
                    if worker is not None and not worker.dead:
                        for message in messages:
                            head.post(worker.peer, message)
                for node_id in list(self.stopped):
                    self._resume(node_id)
                head.flush()
            if self.client.transfer_delay == self._driver_transfer:
                self.client.transfer_delay = None
        self.journal.write_to(None)

    def _prepare(self, fault: Fault) -> None:
        """Resolve the fault's node names and sort it into the lists the hooks walk."""
        self.matches[fault.fault_id] = _Match()
        if isinstance(fault, NodeFault):
            if fault.node is not None:
                fault.node_id = self._resolve_node(fault)
            if fault.after_tasks is not None:
                self.count_faults.append(fault)
            else:
                self.task_faults.append(fault)
        elif isinstance(fault, (KillWorker, RaiseInTask)):
            self.task_faults.append(fault)
        elif isinstance(fault, KillActor):
            self.actor_faults.append(fault)
        elif isinstance(fault, Delay):
            self.delays.append(fault)
        elif isinstance(fault, Chaos):
            self.chaos = fault
            if fault.kill_worker_every:
                self.next_worker_kill = _gap(self.rng_dispatch, fault.kill_worker_every)
            if fault.kill_node_every:
                self.next_node_kill = _gap(self.rng_done, fault.kill_node_every)
        else:
            raise TypeError(f"unknown fault {fault!r}")

    def _resolve_node(self, fault: NodeFault) -> bytes:
        nodes = sorted(self.head.nodes.values(), key=lambda n: n.index)
        listing = ", ".join(f"{n.index}: {n.name} {n.node_id.hex()}" + ("" if n.alive else " (dead)") for n in nodes)
        name = fault.node
        if name == "random":
            driver_node = self.client.node_id
            candidates = [n for n in nodes if n.alive and n.node_id != driver_node]
            if not candidates:
                raise ValueError(f"fault {fault.describe()}: 'random' picks a live node other than the driver's, "
                                 f"and there is none (nodes: {listing}); start more nodes")
            return self.rng_nodes.choice(candidates).node_id
        if isinstance(name, int):
            if name >= len(nodes):
                raise ValueError(f"fault {fault.describe()}: no node with index {name} in this session "
                                 f"(nodes: {listing})")
            return nodes[name].node_id
        try:
            raw = bytes.fromhex(str(name))
        except ValueError:
            raw = b""
        if raw not in self.head.nodes:
            raise ValueError(f"fault {fault.describe()}: no node {name!r} in this session; name a node by hex id, "
                             f"start index or 'random' (nodes: {listing})")
        return raw

    # ==== hooks (head's lock held) =========================================================

    def on_exec(self, task: Any, worker: Any) -> Optional[Tuple[FaultOrder, ...]]:
        spec = task.spec
        attempt = task.attempt
        self.plan.seen.task(spec.name, spec.func_name)  # an unfired fault's report lists what ran
        orders: List[FaultOrder] = []
        for fault in self.task_faults:
            if isinstance(fault, NodeFault):
                if fault.fired or (fault.node_id is not None and fault.node_id != worker.node.node_id):
                    continue
                if self._aims_at(fault, fault.when_task_starts, spec, attempt):  # type: ignore[arg-type]
                    action = fault_hooks.KILL_NODE if isinstance(fault, KillNode) else fault_hooks.STOP_NODE
                    orders.append(FaultOrder.new(point=fault_hooks.START, action=action, argument=None,
                                                 ref=self._ref(fault)))
            elif isinstance(fault, KillWorker):
                if self._aims_at(fault, fault.target, spec, attempt):
                    orders.append(FaultOrder.new(point=fault.at, action=fault_hooks.KILL_WORKER, argument=None,
                                                 ref=self._ref(fault)))
            elif isinstance(fault, RaiseInTask) and self._aims_at(fault, fault.target, spec, attempt):
                orders.append(FaultOrder.new(point=fault_hooks.START, action=fault_hooks.RAISE, argument=fault.blob,
                                             ref=self._ref(fault)))
        if self.actor_faults and spec.task_type == ACTOR_TASK:
            record = self.head.actors.get(spec.actor_id)
            if record is not None:
                self.plan.seen.actor(record.meta.get("name"), record.meta.get("class_name"))
            for fault in self.actor_faults:
                if not fault.fired and self._actor_call_aimed(fault, spec):
                    orders.append(FaultOrder.new(point=fault.at, action=fault_hooks.KILL_WORKER, argument=None,
                                                 ref=self._ref(fault)))
        for delay in self.delays:
            if delay.task is not None and not delay.task.matches_name(spec):
                continue
            rng = self.rng_dispatch
            if delay.channel == "dispatch":
                seconds = rng.uniform(delay.low_ms, delay.high_ms) / 1000.0
                if seconds > self.hold_s:
                    self.hold_s, self.hold_fault, self.hold_task = seconds, delay, task
            elif delay.channel == "result":
                seconds = rng.uniform(delay.low_ms, delay.high_ms) / 1000.0
                orders.append(FaultOrder.new(point=fault_hooks.BEFORE_REPLY, action=fault_hooks.SLEEP, argument=seconds,
                                             ref=self._ref(delay)))
            else:
                argument = FetchDelay.new(seed=rng.getrandbits(63), low_s=delay.low_ms / 1000.0,
                                          high_s=delay.high_ms / 1000.0)
                orders.append(FaultOrder.new(point=fault_hooks.FETCH, action=fault_hooks.SLEEP, argument=argument,
                                             ref=self._ref(delay)))
        chaos = self.chaos
        if chaos is not None and chaos.kill_worker_every and self.plan.chaos_enabled and (
                spec.task_type == NORMAL_TASK or (chaos.actors and spec.task_type == ACTOR_TASK)) \
                and self._first_dispatch(spec.task_id, attempt):
            self.dispatched += 1
            if self.dispatched >= self.next_worker_kill:
                self.next_worker_kill += _gap(self.rng_dispatch, chaos.kill_worker_every)
                point = self.rng_dispatch.choice(chaos.points)
                order = FaultOrder.new(point=point, action=fault_hooks.KILL_WORKER, argument=None, ref=self._ref(chaos))
                self.chaos_orders[spec.task_id] = (attempt, order)
                orders.append(order)
        elif chaos is not None:
            pending = self.chaos_orders.get(spec.task_id)
            if pending is not None and pending[0] == attempt:
                orders.append(pending[1])
        return tuple(orders) if orders else None

    def hold_exec(self, worker: Any, message: Exec) -> bool:
        held = self.held.get(worker.worker_id)
        if held is not None:  # behind a held message: keep the worker's order
            held.append(message)
            self.hold_s = 0.0
            return True
        seconds = self.hold_s
        if seconds <= 0.0:
            return False
        self.hold_s = 0.0
        self.held[worker.worker_id] = [message]
        self.head.hub.call_later(seconds, lambda: self._release(worker))
        fault, task = self.hold_fault, self.hold_task
        assert fault is not None
        fault.fired += 1
        self._record("delay_dispatch", fault, node=worker.node, worker=worker, task=task,
                     attempt=task.attempt, detail=f"{seconds * 1000:.1f} ms")
        return True

    def on_fired(self, worker: Any, message: FaultFired) -> None:
        request_id, task_id, attempt = message.request_id, message.task_id, message.attempt
        point, action = message.point, message.action
        head = self.head
        if message.ref.serial != self.serial:  # an order of a plan uninstalled since: let the worker go on
            if request_id:
                head.post(worker.peer, Reply.new(request_id=request_id, payload=None))
            return
        fault_id = message.ref.fault_id
        fault = self.plan.faults[fault_id - 1]
        fault.fired += 1
        if isinstance(fault, Chaos):
            self.chaos_orders.pop(task_id, None)
        self.matches[fault_id].fired_keys.add((task_id, attempt))
        task = head.tasks.get(task_id)
        node = worker.node
        if action == fault_hooks.SLEEP:
            if point == fault_hooks.FETCH:
                self._record("delay_transfer", fault, node=node, worker=worker, task=task, attempt=attempt,
                             point=point, detail=f"{message.seconds * 1000:.1f} ms, object {message.object_hex}")
            else:
                self._record("delay_result", fault, node=node, worker=worker, task=task, attempt=attempt,
                             point=point, detail=f"{message.seconds * 1000:.1f} ms")
            return
        kind = {fault_hooks.KILL_WORKER: "kill_actor" if isinstance(fault, KillActor) else "kill_worker",
                fault_hooks.RAISE: "raise", fault_hooks.KILL_NODE: "kill_node",
                fault_hooks.STOP_NODE: "stop_node"}[action]
        text = f"{'chaos ' if isinstance(fault, Chaos) else ''}{kind} at {point} (fault {fault.describe()})"
        if task is not None and attempt < len(task.attempts):
            task.attempts[attempt].injected = text
        detail_text = repr(getattr(fault, "exception", "")) if action == fault_hooks.RAISE else ""
        self._record(kind, fault, node=node, worker=worker, task=task, attempt=attempt, point=point,
                     detail=detail_text)
        if action == fault_hooks.KILL_WORKER:
            head.post(worker.peer, Reply.new(request_id=request_id, payload=None))  # recorded: it may die now
        elif action == fault_hooks.KILL_NODE:
            head.kill_node(node.node_id, f"killed by minicluster.testing: {fault.describe()}")
        elif action == fault_hooks.STOP_NODE:
            assert isinstance(fault, StopNode)
            self._stop(node, fault, (worker, request_id))

    def after_done(self, worker: Any) -> None:
        node = worker.node
        node_id = node.node_id
        self.finished_total += 1
        count = self.finished_on[node_id] = self.finished_on[node_id] + 1
        for fault in self.count_faults:
            after = fault.after_tasks
            if not fault.fired and fault.node_id == node_id and after is not None and count >= after and node.alive:
                fault.fired += 1
                detail = f"after {count} tasks finished on it"
                if isinstance(fault, StopNode):
                    self._record("stop_node", fault, node=node, detail=detail)
                    self._stop(node, fault, None)
                else:
                    self._record("kill_node", fault, node=node, detail=detail)
                    self.head.kill_node(node_id, f"killed by minicluster.testing: {fault.describe()}")
        chaos = self.chaos
        if chaos is not None and chaos.kill_node_every and self.plan.chaos_enabled \
                and self.node_kills < chaos.max_node_kills and self.finished_total >= self.next_node_kill:
            self.next_node_kill += _gap(self.rng_done, chaos.kill_node_every)
            driver_node = self.client.node_id
            candidates = sorted((n for n in self.head.nodes.values() if n.alive and n.node_id != driver_node),
                                key=lambda n: n.index)
            if candidates:
                victim = self.rng_done.choice(candidates)
                self.node_kills += 1
                chaos.fired += 1
                self._record("kill_node", chaos, node=victim,
                             detail=f"chaos, after {self.finished_total} tasks finished")
                self.head.kill_node(victim.node_id, f"killed by minicluster.testing: chaos ({chaos.describe()})")

    # ==== helpers ===========================================================================

    def _aims_at(self, fault: Fault, selector: TaskSelector, spec: Any, attempt: int) -> bool:
        if not selector.matches_name(spec):
            return False
        match = self.matches[fault.fault_id]
        if selector.nth is not None:
            if match.bound is None:
                seen = match.seen
                assert seen is not None
                seen.add(spec.task_id)
                if len(seen) == selector.nth:
                    match.bound, match.seen = spec.task_id, None
            if match.bound != spec.task_id:
                return False
        if selector.attempts is not None and attempt not in selector.attempts:
            return False
        return (spec.task_id, attempt) not in match.fired_keys

    def _ref(self, fault: Fault) -> FaultRef:
        """How an order names its fault: this injector's serial and the fault's id."""
        return FaultRef.new(serial=self.serial, fault_id=fault.fault_id)

    def _first_dispatch(self, task_id: bytes, attempt: int) -> bool:
        """Whether this attempt is dispatched for the first time (tasks queued behind a dead
        worker's running one are sent again): chaos counts task attempts, not messages."""
        counted = self.counted
        if counted.get(task_id, -1) >= attempt:
            return False
        counted[task_id] = attempt
        if len(counted) > self.counted_limit:  # forget finished tasks now and then
            live = self.head.tasks
            self.counted = {t: a for t, a in counted.items() if t in live}
            self.chaos_orders = {t: o for t, o in self.chaos_orders.items() if t in live}
            self.counted_limit = max(COUNTED_LIMIT, 2 * len(self.counted))
        return True

    def _actor_call_aimed(self, fault: KillActor, spec: Any) -> bool:
        if isinstance(fault.actor, bytes):
            if spec.actor_id != fault.actor:
                return False
        else:
            record = self.head.actors.get(spec.actor_id)
            if record is None or fault.actor not in (record.meta.get("name"), record.meta.get("class_name")):
                return False
        if fault.method is not None and spec.method != fault.method:
            return False
        match = self.matches[fault.fault_id]
        if match.bound is None:
            match.count += 1
            if match.count == fault.call:
                match.bound = spec.task_id
        return match.bound == spec.task_id

    def _release(self, worker: Any) -> None:
        """A dispatch delay is over: send the worker what was held for it, in order."""
        head = self.head
        with head.lock:
            messages = self.held.pop(worker.worker_id, None)
            if not messages or worker.dead or head.closed:
                return
            for message in messages:
                head.post(worker.peer, message)
            head.flush()

    def _stop(self, node: Any, fault: StopNode, waiting: Optional[tuple]) -> None:
        node_id = node.node_id
        self.head.stop_node(node_id)
        entry = self.stopped.get(node_id)
        if entry is None:
            timer = self.head.hub.call_later(fault.seconds, lambda: self._resume_later(node_id))
            entry = self.stopped[node_id] = (timer, [], fault)
        if waiting is not None:
            entry[1].append(waiting)

    def _resume_later(self, node_id: bytes) -> None:
        with self.head.lock:
            if node_id in self.stopped and not self.head.closed:
                self._resume(node_id)
                self.head.flush()

    def _resume(self, node_id: bytes) -> None:
        timer, waiting, fault = self.stopped.pop(node_id)
        self.head.hub.cancel_timer(timer)
        for worker, request_id in waiting:
            if not worker.dead:  # it asked for the stop; it goes on once the node runs again
                self.head.post(worker.peer, Reply.new(request_id=request_id, payload=None))
        self.head.flush()
        node = self.head.nodes[node_id]
        if node.alive:
            self.head.resume_node(node_id)
            self._record("resume_node", fault, node=node)

    def _update_driver_transfer(self) -> None:
        delays = [d for d in self.delays if d.channel == "transfer" and d.task is None]
        if delays and self.client.transfer_delay is None:
            self.client.transfer_delay = self._driver_transfer

    def _driver_transfer(self, object_id: bytes) -> None:
        """The driver is about to copy an object from another node: a transfer delay."""
        head = self.head
        with head.lock:
            if head.faults is not self:
                return
            delay = next(d for d in self.delays if d.channel == "transfer" and d.task is None)
            seconds = self.rng_driver.uniform(delay.low_ms, delay.high_ms) / 1000.0
            delay.fired += 1
            node = head.nodes.get(self.client.node_id)
            self._record("delay_transfer", delay, node=node, point=fault_hooks.FETCH,
                         detail=f"{seconds * 1000:.1f} ms, object {object_id.hex()} (driver)")
        time.sleep(seconds)

    def _record(self, kind: str, fault: Optional[Fault], *, node: Any = None, worker: Any = None, task: Any = None,
                attempt: Optional[int] = None, point: Optional[str] = None, detail: str = "") -> None:
        self.journal.record(
            kind=kind,
            fault=fault.describe() if fault is not None else "",
            time=time.time(),
            elapsed_s=time.monotonic() - self.t0,
            node=node.name if node is not None else None,
            node_id=node.node_id.hex() if node is not None else None,
            worker_pid=worker.pid if worker is not None else None,
            task=task.spec.name if task is not None else None,
            task_id=task.spec.task_id.hex() if task is not None else None,
            attempt=attempt,
            point=point,
            detail=detail,
        )


_serials = itertools.count(1)


def _gap(rng: random.Random, every: int) -> int:
    """Tasks until the next chaos kill: uniform in [every/2, 3*every/2], so on average `every`."""
    return rng.randint(max(1, every - every // 2), every + every // 2)
