"""Where a ready task goes: placed on a node, then handed to one of its workers (part of the task flow).

Runs in the driver process, under the head's lock. TaskFlow (task_flow.py) is built on this
class: the task flow queues a task whose arguments are ready (ready queues, one per scheduling
class: resource shape and function) and calls `schedule`; from here on the task is placed on a
node, where its resources are held (scheduler.py), waits there for a worker of its kind
(starting one if needed), and is sent to it in an Exec message. It uses the task flow's records
(state, outbox, timers, streams) and its `finish_with_error` for a task that can never be placed.

    schedule      ready queues -> nodes, the least recently served scheduling class first
                  (Ray's fair queueing): 1000 calls of f blocked in get() on g must not each
                  take the CPU their blocked predecessor lends out before any g runs
    worker_free   a worker with nothing to do takes a task waiting on its node, or goes idle
                  (an idle surplus one, started for tasks blocked in get, retires later)
    _pipeline     tiny tasks queued behind a busy worker's current one: one frame carries many
    send_exec     the Exec message: the function the first time, argument payloads, GPU ids
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from minicluster._private.common import labels
from minicluster._private.common.placement import plain_resources
from minicluster._private.common.task_spec import ACTOR_CREATION_TASK, ACTOR_TASK, NORMAL_TASK
from minicluster._private.head import gpus
from minicluster._private.head.flow_interfaces import Timers
from minicluster._private.head.head_state import HeadState
from minicluster._private.head.messaging import Outbox
from minicluster._private.head.scheduler import INFEASIBLE, Unschedulable
from minicluster._private.head.states import PENDING_NODE_ASSIGNMENT, RUNNING, SUBMITTED_TO_WORKER
from minicluster._private.head.streams import Streams
from minicluster._private.head.task_records import TaskRecord
from minicluster._private.head.virtual_nodes import NodeRecord, WorkerRecord, worker_kind
from minicluster._private.wire import messages as msg
from minicluster.exceptions import TaskUnschedulableError

# Tiny tasks are pipelined: up to PIPELINE_DEPTH queued at a busy worker, so one
# message carries many. Deeper amortizes more but lets a worker hoard work other
# workers could start; only functions averaging under PIPELINE_QUICK_S qualify.
PIPELINE_DEPTH = 16
PIPELINE_QUICK_S = 0.001

# A node keeps `num_cpus` workers warm; extra ones (started while tasks were
# blocked in get) exit after being idle this long. Shorter frees memory sooner;
# longer avoids forking again in bursty nested workloads.
IDLE_RETIRE_S = 2.0


class TaskPlacement:
    """The placement half of TaskFlow; see the module docstring."""

    # TaskFlow's, set in its __init__
    state: HeadState
    outbox: Outbox
    timers: Timers
    streams: Streams
    #: shape -> scheduler.changes when its queue's first task could not be placed
    _blocked: dict
    _placement_pending: bool

    def schedule(self) -> None:
        """Place queued tasks on nodes with free resources and hand them to workers."""
        state = self.state
        scheduler = state.scheduler
        if state.groups.waiting:
            state.groups.place_waiting()  # placement groups first: their bundles wait for no task
        ready = state.ready
        blocked = self._blocked
        # Fair queueing between scheduling classes, as Ray's: the least recently served class
        # goes first. Without it, 1000 calls of f, each blocked in get() on g, which gets on h,
        # would start f after f on the CPUs their blocked predecessors lend out, and a worker for
        # each, before any g could run.
        for shape, queue in list(ready.items()):
            if blocked.get(shape) == scheduler.changes:
                continue  # its first task could not be placed, and nothing was freed or added since
            served = False
            while queue:
                task = queue[0]
                if task.finished or task.state != PENDING_NODE_ASSIGNMENT:
                    queue.popleft()
                    continue
                placed = self.place_task(task)
                if placed is None:
                    blocked[shape] = scheduler.changes
                    break
                queue.popleft()
                served = served or placed
            if not queue:
                del ready[shape]
                blocked.pop(shape, None)
            elif served:
                ready.move_to_end(shape)

    def place_task(self, task: TaskRecord) -> Optional[bool]:
        """Place one task that waits for a node (PENDING_NODE_ASSIGNMENT) and hand it to a worker
        there, or queue it on the node for one. True: placed; None: no node can take it now (it
        stays where it is); False: it cannot run anywhere and has failed."""
        scheduler = self.state.scheduler
        spec = task.spec
        try:
            node_id = scheduler.place(spec.resources, spec.strategy, self._preferred_node(task), spec.label_selector)
        except Unschedulable as exc:
            error = getattr(exc, "error", None) or TaskUnschedulableError(str(exc))
            self.finish_with_error(task, error, "TASK_UNSCHEDULABLE_ERROR", str(exc))
            return False
        if node_id is None:
            return None
        if node_id == INFEASIBLE:
            self._warn_infeasible(task.shape, task)
            return None
        scheduler.acquire(node_id, spec.resources)
        node = self.state.nodes[node_id]
        task.node = node
        task.set_state(SUBMITTED_TO_WORKER, node_id=node_id)
        worker = node.take_idle(worker_kind(spec)) if node.idle else None
        if worker is not None:
            self._dispatch(task, worker)
        else:
            node.waiting.append(task)
            self.replenish(node)
        return True

    def _preferred_node(self, task: TaskRecord) -> Optional[bytes]:
        best, best_size = task.submitter_node, 0
        entries = self.state.objects.entries
        for object_id in task.spec.arg_refs:
            entry = entries.get(object_id)
            if entry is not None and entry.payload is not None and entry.payload.kind == "s":
                if entry.size > best_size and entry.payload.data:
                    best, best_size = entry.payload.data[0], entry.size
        return best

    def _warn_infeasible(self, shape: tuple, task: TaskRecord) -> None:
        warned = self.state.infeasible_warned
        if shape in warned:
            return
        warned.add(shape)
        selectors = task.spec.label_selector  # (its own, then its fallback_strategy's)
        labelled = f" on a node with labels {' or '.join(map(labels.describe, selectors))}" if selectors else ""
        print(
            f"minicluster: warning: task {task.spec.name} needs {task.spec.resources}{labelled}, which no node has "
            f"(cluster: {self.state.scheduler.totals()}). It stays pending until a node that fits is added.",
            file=sys.stderr,
        )

    def replenish(self, node: NodeRecord) -> None:
        """Ask the node for workers when tasks wait for one there."""
        if not node.alive or node.peer is None:
            return
        want = len(node.waiting) - node.pending_spawn
        if want > 0:
            node.pending_spawn += want
            self.outbox.post(node.peer, msg.Spawn.new(count=want))
        elif node.pool_size() + node.pending_spawn < node.target_workers:
            missing = node.target_workers - node.pool_size() - node.pending_spawn
            node.pending_spawn += missing
            self.outbox.post(node.peer, msg.Spawn.new(count=missing))

    def worker_free(self, worker: WorkerRecord) -> None:
        """A worker has nothing to do: give it a task waiting on its node, or make it idle."""
        node = worker.node
        waiting = node.waiting
        while waiting:
            task = waiting[0]
            if task.finished:
                waiting.popleft()
                self.state.scheduler.release(node.node_id, task.spec.resources)
                continue
            if worker.kind is None or worker.kind == worker_kind(task.spec):
                waiting.popleft()
                self._dispatch(task, worker)
                return
            task = next((t for t in waiting if not t.finished and worker.kind == worker_kind(t.spec)), None)
            if task is not None:  # (one of another kind is first: a worker is being started for it)
                waiting.remove(task)
                self._dispatch(task, worker)
                return
            break
        node.idle.append(worker)
        if len(node.workers) > node.target_workers and node.pool_size() > node.target_workers:
            # Extra workers are started for tasks blocked in get(); let them go once idle.
            self.timers.call_later(IDLE_RETIRE_S, lambda: self._retire_if_idle(worker))

    def _retire_if_idle(self, worker: WorkerRecord) -> None:
        node = worker.node
        if worker.dead or worker.retiring or worker.queue or node.pool_size() <= node.target_workers:
            return
        if worker.owned:  # (only live ones: an entry's deletion drops its id from its owner)
            return  # it owns live objects: its exit would take them along (OwnerDiedError)
        try:
            node.idle.remove(worker)
        except ValueError:
            return
        worker.retire("idle surplus worker (started while tasks were blocked in get)")
        self.outbox.post(worker.peer, msg.Retire.new())

    def _let_go(self, worker: WorkerRecord) -> None:
        """A worker that reached max_calls and owns nothing (any more) exits."""
        if not worker.dead and worker.peer is not None:
            self.outbox.post(worker.peer, msg.Retire.new())

    def _dispatch(self, task: TaskRecord, worker: WorkerRecord) -> None:
        if worker.kind is None:
            worker.kind = worker_kind(task.spec)
        worker.queue.append(task)
        task.worker = worker
        if len(worker.queue) == 1:
            task.set_state(RUNNING, node_id=worker.node.node_id, worker_id=worker.worker_id)
        self.send_exec(task, worker)

    def send_exec(self, task: TaskRecord, worker: WorkerRecord) -> None:
        """Post the task's "exec" message to the worker (with its function the first time)."""
        spec = task.spec
        peer = worker.peer
        state = self.state
        if spec.task_type != ACTOR_TASK and spec.function_id not in worker.functions:
            worker.functions.add(spec.function_id)
            self.outbox.post(peer, msg.DefineFunction.new(function_id=spec.function_id,
                                                          blob=state.functions[spec.function_id]))
        payloads = None
        if spec.arg_refs:
            payload_of = state.payload_of
            payloads = {object_id: payload_of(object_id) for object_id in spec.arg_refs}
        actor = None
        if spec.task_type == ACTOR_CREATION_TASK:
            meta = state.actors[spec.actor_id].meta
            actor = msg.ActorConfig.new(actor_id=spec.actor_id, max_concurrency=meta["max_concurrency"],
                                        is_async=meta["is_async"], class_name=meta["class_name"],
                                        concurrency_groups=meta["concurrency_groups"])
        if spec.backpressure > 0:
            ack = self.streams.ack_for(task)  # a retry resumes where the consumer is
            if ack is not None:
                self.outbox.post(peer, ack)
        faults = state.faults  # a test's fault plan, if one is installed: orders for the worker (fault_hooks.py)
        message = msg.Exec.new(task_id=spec.task_id, attempt=task.attempt, function_id=spec.function_id,
                               name=spec.name, args_blob=spec.args, payloads=payloads, num_returns=spec.num_returns,
                               retry_exceptions=spec.retry_exceptions, max_calls=spec.max_calls,
                               task_type=spec.task_type, func_name=spec.func_name, method=spec.method,
                               concurrency_group=spec.concurrency_group,
                               actor_config=actor, faults=None if faults is None else faults.on_exec(task, worker),
                               num_cpus=spec.resources.get("CPU", 0.0), runtime_env=spec.runtime_env,
                               gpu_ids=self._gpus_for(spec, worker))
        if spec.strategy[0] == "PG":  # in a placement group: the worker's code may ask which one
            message = message._replace(placement=spec.strategy[1:],
                                       num_cpus=plain_resources(spec.resources).get("CPU", 0.0))
        if faults is None or not faults.hold_exec(worker, message):
            self.outbox.post(peer, message)

    def _gpus_for(self, spec: Any, worker: WorkerRecord) -> Optional[tuple]:
        """The GPU ids of a task or actor about to start (an actor's calls keep its own)."""
        amount = plain_resources(spec.resources).get("GPU")  # (in a placement group: GPU_group_...)
        if not amount or spec.task_type == ACTOR_TASK:
            return None
        node = worker.node
        devices = self.state.groups.devices.pool(spec.strategy, node.node_id, node.gpu_ids)
        return gpus.assign(devices, node.workers, worker, amount)

    def _pipeline(self, worker: WorkerRecord) -> None:
        """Queue more tiny tasks of the same shape behind a busy worker's current one.

        Only tasks whose function is known to run in under PIPELINE_QUICK_S, and
        only those no free resources could take right now (schedule ran first):
        one frame then carries many tasks, and one frame their results.
        """
        running = worker.queue[0].spec
        if (worker.dead or worker.blocked or len(worker.queue) >= PIPELINE_DEPTH or running.max_calls
                or running.task_type != NORMAL_TASK):
            return  # (an actor's creation task: its worker is about to belong to the actor)
        shape = worker.queue[0].shape
        if shape[1][0] == "SPREAD":
            return
        ready = self.state.ready.get(shape)
        durations = self.state.durations
        node_id = worker.node.node_id
        while ready and len(worker.queue) < PIPELINE_DEPTH:
            task = ready[0]
            if task.finished or task.state != PENDING_NODE_ASSIGNMENT:
                ready.popleft()
                continue
            strategy = task.spec.strategy
            if task.spec.max_calls or durations.get(task.spec.function_id, 1.0) >= PIPELINE_QUICK_S or (
                strategy[0] == "NODE" and strategy[1] != node_id
            ):
                break
            ready.popleft()
            task.node = worker.node
            task.set_state(SUBMITTED_TO_WORKER, node_id=node_id)
            self._dispatch(task, worker)
