"""Actors in the head: creation, calls in order, death, restart and kill (part of the head).

Runs in the driver process, as methods of `Head` (head.py), under the head's lock.

    create ─► the ACTOR_CREATION_TASK is placed and run like any task (task_flow.py);
              its worker is then dedicated to the actor (it leaves the node's pool)
    call   ─► an ACTOR_TASK waits for its arguments, then joins the actor's queue;
              calls are sent to the actor's worker strictly in submission order
    dies   ─► (its process or node) restarts remain: the constructor runs again on a
              fresh worker; calls in flight are retried if max_task_retries allows,
              else fail with ActorUnavailableError; queued and new calls wait for the
              restart (deliberately better than Ray, which fails them)
              no restarts left, ray.kill, or the constructor raised: DEAD; every
              pending and later call fails with ActorDiedError, carrying the reason
"""

from __future__ import annotations

import collections
import os
from typing import Any, Deque, Dict, Optional

from minicluster.exceptions import ActorDiedError, ActorUnavailableError, TaskCancelledError
from minicluster._private.common.ids import JOB_ID
from minicluster._private.store.serialization import deserialize
from minicluster._private.wire import messages as msg
from minicluster._private.head.task_records import TaskRecord
from minicluster._private.head.virtual_nodes import INTENDED_SYSTEM_EXIT, INTENDED_USER_EXIT, WorkerRecord

PENDING_CREATION = "PENDING_CREATION"
ALIVE = "ALIVE"
RESTARTING = "RESTARTING"
DEAD = "DEAD"


class ActorRecord:
    """What the head knows about one actor."""

    def __init__(self, actor_id: bytes, meta: Dict[str, Any], creation: TaskRecord, owner: bytes) -> None:
        self.actor_id = actor_id
        self.meta = meta
        self.creation = creation  #: the creation task, run again on each restart
        self.owner = owner  #: worker id (or DRIVER) that created it; its death ends the actor
        self.state = PENDING_CREATION
        self.worker: Optional[WorkerRecord] = None
        self.num_restarts = 0
        self.pending: Deque[TaskRecord] = collections.deque()  #: calls not yet sent, in order
        self.inflight: Dict[bytes, TaskRecord] = {}  #: calls sent to the worker
        self.death_cause = ""
        self.init_failed = False
        self.kill_requested: Optional[bool] = None  #: set by kill(): no_restart (cleared by a restart)
        self.kill_reason = ""  #: why it was killed: `ray.kill`, or its owner died
        self.held: Dict[str, float] = {}  #: resources it holds while alive
        self.node_id: Optional[bytes] = None  #: where it runs, or last ran (state API)
        self.pid: Optional[int] = None

    @property
    def name(self) -> Optional[str]:
        return self.meta.get("name")

    def state_row(self) -> Dict[str, Any]:
        """Its `list_actors` row, with Ray's ActorState fields."""
        meta = self.meta
        return {
            "actor_id": self.actor_id.hex(),
            "class_name": meta["class_name"],
            "state": self.state,
            "job_id": JOB_ID.hex(),
            "name": meta.get("name") or "",
            "node_id": self.node_id.hex() if self.node_id is not None else None,
            "pid": self.pid,
            "ray_namespace": meta.get("namespace"),
            "num_restarts": self.num_restarts,
            "death_cause": self.death_cause or None,
            "is_detached": meta["detached"],
            "required_resources": dict(self.creation.spec.resources),
            "repr_name": "",
        }

    def restarts_left(self) -> bool:
        max_restarts = self.meta["max_restarts"]
        return max_restarts == -1 or self.num_restarts < max_restarts


class ActorFlow:
    """Head methods for actors; see the module docstring."""

    # ---- creation ---------------------------------------------------------------

    def create_actor(self, spec: Any, meta: Dict[str, Any], submitter_node: bytes, owner: bytes) -> None:
        """Register an actor and submit its creation task. Lock held."""
        name, namespace = meta.get("name"), meta.get("namespace")
        if name is not None:
            existing = self.named_actors.get((namespace, name))
            if existing is not None and self.actors[existing].state != DEAD:
                raise ValueError(f"The name {name!r} (namespace={namespace!r}) is already taken by another actor")
            self.named_actors[(namespace, name)] = spec.actor_id
        for object_id in spec.return_ids():
            self.objects.create(object_id, owner)
            self.objects.pin(object_id)  # the creation result lives as long as the actor record
            creator = self.workers.get(owner)
            if creator is not None:
                creator.owned.add(object_id)  # so its worker is not retired while the actor lives
        task = TaskRecord(spec, 0, submitter_node, self.task_changes)
        record = ActorRecord(spec.actor_id, meta, task, owner)
        self.actors[spec.actor_id] = record
        self.tasks[spec.task_id] = task
        self._start_task(task)

    def _creation_done(self, task: TaskRecord, worker: WorkerRecord, error_info: Optional[msg.ErrorInfo]) -> bool:
        """The creation task reported (its lease still held). Returns True if the worker is the actor's now."""
        record = self.actors.get(task.spec.actor_id)
        node_id = worker.node.node_id
        if error_info is not None or record is None:
            self.scheduler.release(node_id, task.spec.resources)
            return False  # the constructor raised (_creation_failed settled the actor): back to the pool
        if record.state == DEAD:
            # Killed while its constructor ran: the process holds an instance, so it goes too.
            self.scheduler.release(node_id, task.spec.resources)
            self._kill_worker(worker, INTENDED_USER_EXIT, "its actor was killed while its constructor ran")
            return True
        record.state = ALIVE
        record.worker = worker
        record.node_id, record.pid = node_id, worker.pid
        worker.actor = record
        # Ray's rule: an actor placed with the implicit 1 CPU holds no CPU while it lives;
        # explicit num_cpus and custom resources stay held until it dies.
        record.held = dict(task.spec.resources)
        if not record.meta["holds_cpus"]:
            self.scheduler.release(node_id, {"CPU": record.held.pop("CPU", 0.0)})
        self._replenish(worker.node)  # the node's pool lost a worker to the actor
        if record.kill_requested is not None:
            self._kill_actor_process(record)
        self._actor_dispatch(record)
        return True

    def _creation_failed(self, task: TaskRecord, error_type: Optional[str], message: Optional[str]) -> None:
        """The creation task failed for good: the constructor raised, or it can never be placed."""
        record = self.actors.get(task.spec.actor_id)
        if record is None or record.state == DEAD:
            return
        if error_type == "TASK_EXECUTION_EXCEPTION":
            record.init_failed = True  # never restarted (as in Ray)
            cause = "The actor died because of an error raised in its creation task, " + self._stored_error_text(task)
        else:
            cause = record.death_cause or f"The actor could not be (re)created: {message}"
        self._actor_dead(record, cause)

    def _stored_error_text(self, task: TaskRecord) -> str:
        object_id = task.spec.return_ids()[0]
        entry = self.objects.entries.get(object_id)
        if entry is None or not entry.is_error or entry.payload is None:
            return ""
        error, _ = deserialize(self._error_blob_of(object_id, entry))  # inline or in a store (task_flow.py)
        return str(error)

    # ---- calls --------------------------------------------------------------------

    def _queue_actor_call(self, task: TaskRecord) -> None:
        """An actor call's arguments are ready: join its actor's queue (or fail if the actor is dead)."""
        record = self.actors.get(task.spec.actor_id)
        if record is None or record.state == DEAD:
            self._fail_call(task, record)
            return
        task.set_state("PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY")
        task.ready = True
        self._actor_dispatch(record)

    def _add_actor_call(self, task: TaskRecord) -> None:
        record = self.actors.get(task.spec.actor_id)
        if record is None or record.state == DEAD:
            self._fail_call(task, record)
            return
        task.ready = False
        record.pending.append(task)
        self._start_task(task)

    def _actor_dispatch(self, record: ActorRecord) -> None:
        """Send queued calls to the actor's worker, in submission order."""
        if record.state != ALIVE or record.worker is None:
            return
        worker = record.worker
        while record.pending:
            task = record.pending[0]
            if task.finished:
                record.pending.popleft()
                continue
            if not task.ready:
                break  # an earlier call still waits for its arguments: keep the order
            record.pending.popleft()
            record.inflight[task.spec.task_id] = task
            task.worker = worker
            task.node = worker.node
            task.set_state("RUNNING", node_id=worker.node.node_id, worker_id=worker.worker_id)
            self._send_exec(task, worker)

    def _cancel_actor_call(self, task: TaskRecord) -> None:
        """cancel() of a call sent to the actor: one that has not started fails now with
        TaskCancelledError (the worker skips it); a running one is left alone (Ray's rule)."""
        record = self.actors.get(task.spec.actor_id)
        worker = task.worker
        if record is None or worker is None:
            return
        self._post(worker.peer, msg.CancelTask.new(task_id=task.spec.task_id))
        # Calls start in submission order, at most max_concurrency at a time.
        by_age = sorted(record.inflight.values(), key=lambda t: t.attempts[0].creation_time)
        if task in by_age[: record.meta["max_concurrency"]]:
            return
        record.inflight.pop(task.spec.task_id, None)  # its late report is discarded
        task.worker = None
        self._finish_with_error(task, TaskCancelledError(task.spec.task_id.hex()), "TASK_CANCELLED",
                                "cancelled before it started")

    def _actor_call_done(self, worker: WorkerRecord, message: msg.Done) -> None:
        record = worker.actor
        task = record.inflight.pop(message.task_id, None) if record is not None else None
        if task is None or task.attempt != message.attempt:
            self._discard_results(message.task_id, message.results, worker.node.node_id)
            return
        task.record_times(message.start, message.end)
        self._task_reported(task, message.results, message.error, worker.node.node_id)

    def _fail_call(self, task: TaskRecord, record: Optional[ActorRecord]) -> None:
        error = ActorDiedError(
            task.spec.actor_id.hex() if task.spec.actor_id else None,
            record.death_cause if record is not None else "The actor does not exist.",
            actor_init_failed=bool(record and record.init_failed),
        )
        self._finish_with_error(task, error, "ACTOR_DIED", str(error))

    # ---- death, restart, kill ----------------------------------------------------------

    def _actor_worker_died(self, worker: WorkerRecord, reason: str, node_death: Optional[str]) -> None:
        record = worker.actor
        worker.actor = None
        if record is None or record.state == DEAD:
            return
        record.worker = None
        self.scheduler.release(worker.node.node_id, record.held)
        record.held = {}
        cause = self._death_cause(record, worker, reason, node_death)
        restart = record.kill_requested is not True and record.restarts_left()
        record.kill_requested = None  # a kill(no_restart=False) is done once the process is gone
        record.kill_reason = ""
        inflight = sorted(record.inflight.values(), key=lambda t: t.attempts[0].creation_time)
        record.inflight.clear()
        for task in inflight:
            task.worker = None
        if not restart:
            self._actor_dead(record, cause, inflight)
            return
        # Calls start in order, at most max_concurrency at a time: the oldest ones were
        # running; the others never started and simply wait for the restart.
        running = inflight[: record.meta["max_concurrency"]]
        never_started = inflight[len(running):]
        for task in never_started:
            task.ready = True
        retry_front = []
        for task in running:
            task.worker = None
            if task.retries_left != 0:
                if task.retries_left > 0:
                    task.retries_left -= 1
                task.fail_attempt("ACTOR_DIED", cause)
                task.new_attempt()
                task.ready = True
                retry_front.append(task)
            else:
                error = ActorUnavailableError(record.actor_id.hex(), f"{cause} The actor is restarting; this call "
                                              "was running and may or may not have run (max_task_retries=0).")
                self._finish_with_error(task, error, "ACTOR_DIED", str(error))
        record.pending.extendleft(reversed(retry_front + never_started))
        self._restart_actor(record, cause)

    def _death_cause(self, record: ActorRecord, worker: WorkerRecord, reason: str, node_death: Optional[str]) -> str:
        header = (f"The actor died unexpectedly before finishing this task.\n\tclass_name: "
                  f"{record.meta['class_name']}\n\tactor_id: {record.actor_id.hex()}\n\tpid: {worker.pid}\n")
        if record.kill_requested is not None:
            return header + f"The actor is dead because {record.kill_reason or 'it was killed by `ray.kill`'}."
        if node_death:
            return header + f"The actor is dead because its node ({worker.node.name}) died: {node_death}."
        return header + f"The actor is dead because its worker process has died ({reason})."

    def _restart_actor(self, record: ActorRecord, cause: str) -> None:
        record.state = RESTARTING
        record.num_restarts += 1
        task = record.creation
        task.new_attempt()
        task.finished = False
        task.node = None
        task.worker = None
        self.tasks[task.spec.task_id] = task
        self._start_task(task)

    def _creation_died(self, task: TaskRecord, reason: str) -> bool:
        """The creation task's worker died while constructing. Returns True if handled here."""
        record = self.actors.get(task.spec.actor_id)
        if record is None:
            return False
        if record.kill_requested is None and record.restarts_left():
            record.num_restarts += 1
            task.fail_attempt("WORKER_DIED", reason)
            task.new_attempt()
            task.node = None
            self._args_ready(task)
            return True
        cause = ("The actor died unexpectedly before finishing this task.\n"
                 f"\tclass_name: {record.meta['class_name']}\n\tactor_id: {record.actor_id.hex()}\n"
                 + ("The actor is dead because it was killed by `ray.kill`." if record.kill_requested is not None
                    else f"The actor is dead because its worker process died while creating it ({reason})."))
        self._finish_with_error(task, ActorDiedError(record.actor_id.hex(), cause), "ACTOR_DIED", cause)
        self._actor_dead(record, cause)
        return True

    def _actor_dead(self, record: ActorRecord, cause: str, inflight: Any = ()) -> None:
        if record.state == DEAD:
            return
        record.state = DEAD
        record.death_cause = cause
        calls = list(inflight) + list(record.pending)
        record.pending.clear()
        for task in calls:
            if not task.finished:
                self._fail_call(task, record)
        for object_id in record.creation.spec.return_ids():
            self.objects.unpin(object_id)
        worker = record.worker
        record.worker = None
        if worker is not None and not worker.dead:
            worker.actor = None
            self._kill_worker(worker, INTENDED_SYSTEM_EXIT, "the actor it ran is dead")

    def kill_actor(self, actor_id: bytes, no_restart: bool, reason: str = "it was killed by `ray.kill`") -> None:
        """`kill(handle)`: end the actor's process now; restart it only if no_restart=False."""
        record = self.actors.get(actor_id)
        if record is None or record.state == DEAD:
            return
        record.kill_requested = no_restart
        record.kill_reason = reason
        if record.worker is not None:
            self._kill_actor_process(record)
        elif no_restart:
            task = record.creation
            cause = ("The actor died unexpectedly before finishing this task.\n"
                     f"\tclass_name: {record.meta['class_name']}\n\tactor_id: {actor_id.hex()}\n"
                     f"The actor is dead because {reason}.")
            if not task.finished:
                self._cancel_task(task.spec.task_id, force=True, recursive=False)
            self._actor_dead(record, cause)

    def _kill_actor_process(self, record: ActorRecord) -> None:
        if record.worker is not None:
            why = f"its actor ended because {record.kill_reason or 'it was killed'}"
            self._kill_worker(record.worker, INTENDED_USER_EXIT, why)

    def _kill_worker(self, worker: WorkerRecord, exit_type: str, why: str) -> None:
        worker.expect_exit(exit_type, why)  # for the state API: not a crash
        try:
            os.kill(worker.pid, 9)
        except ProcessLookupError:
            pass

    def _owner_died_actors(self, owner: bytes) -> None:
        """Actors whose owner died go too, unless detached."""
        for record in list(self.actors.values()):
            if record.owner == owner and record.state != DEAD and not record.meta["detached"]:
                self.kill_actor(record.actor_id, no_restart=True,
                                reason=f"its owner (worker {owner.hex()[:12]}...) died; actors die with their owner "
                                       "unless created with lifetime=\"detached\"")

    # ---- lookups ----------------------------------------------------------------

    def lookup_actor(self, name: str, namespace: str) -> Optional[msg.ActorFound]:
        actor_id = self.named_actors.get((namespace, name))
        record = self.actors.get(actor_id) if actor_id else None
        if record is None or record.state == DEAD:
            return None
        return msg.ActorFound.new(actor_id=record.actor_id, meta=record.meta)

