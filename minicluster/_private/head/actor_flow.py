"""Actors in the head: creation, calls in order, death, restart and kill.

Runs in the driver process, under the head's lock: Head (head.py) calls it for
create/lookup/kill; the task flow hands it the actor-specific steps of a task's
path, and recovery the death of an actor's worker (flow_interfaces.py). It
needs the task flow (an actor's tasks are placed and run like tasks).

    create ─► the ACTOR_CREATION_TASK is placed and run like any task (task_flow.py);
              its worker is then dedicated to the actor (it leaves the node's pool)
    call   ─► an ACTOR_TASK waits for its arguments, then joins the actor's queue;
              calls are sent to the actor's worker in each caller's submission order
              (async and threaded actors: as soon as their arguments are ready, as
              Ray's allow_out_of_order_execution); the worker runs each concurrency
              group's calls in its own threads, up to the group's limit
    dies   ─► (its process or node) restarts remain: the constructor runs again on a
              fresh worker; calls in flight are retried if max_task_retries allows,
              else fail with ActorUnavailableError; queued and new calls wait for the
              restart (deliberately better than Ray, which fails them)
              no restarts left, ray.kill, or the constructor raised: DEAD; every
              pending and later call fails with ActorDiedError, carrying the reason
    handles gone ─► (not detached) the creation result its handles hold a ref to was freed:
              once its submitted calls are done, its worker is told to exit (Ray's rule)
    exit_actor ─► the worker says so (ActorExiting) and exits: DEAD, no restart

Actor states and their legal moves: states.py; the record: actor_records.py.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Deque, Dict, List, Optional, Tuple

from minicluster._private.head.actor_records import ActorRecord
from minicluster._private.head.flow_interfaces import TasksForActors, Timers
from minicluster._private.head.head_state import HeadState
from minicluster._private.head.messaging import Outbox
from minicluster._private.head.states import (
    ALIVE,
    DEAD,
    PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY,
    RESTARTING,
    RUNNING,
)
from minicluster._private.head.task_records import TaskRecord
from minicluster._private.head.virtual_nodes import INTENDED_SYSTEM_EXIT, INTENDED_USER_EXIT, WorkerRecord, worker_kind
from minicluster._private.store.serialization import deserialize
from minicluster._private.wire import messages as msg
from minicluster.exceptions import (
    ActorAlreadyExistsError,
    ActorDiedError,
    ActorUnavailableError,
    TaskCancelledError,
)

ORDERING = PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY
#: Ray's words for an actor ended because no handle to it is left
OUT_OF_SCOPE = "all references to the actor were removed"
EXITED = "it exited on purpose: its code called exit_actor() (or __ray_terminate__ ran)"


class ActorFlow:
    """Head logic for actors; see the module docstring."""

    def __init__(self, state: HeadState, outbox: Outbox, timers: Timers) -> None:
        self.state = state
        self.outbox = outbox
        self.timers = timers
        self.tasks: TasksForActors  # set by connect()
        # The object directory reports the last handle's ref going from deep inside other
        # flows' steps; the actor is ended a moment later, from a clean start (a timer).
        state.on_handles_gone = lambda actor_id: timers.call_later(0, lambda: self.handles_gone(actor_id))

    def connect(self, tasks: TasksForActors) -> None:
        self.tasks = tasks

    # ---- creation ---------------------------------------------------------------

    def create_actor(self, spec: Any, meta: Dict[str, Any], submitter_node: bytes, owner: bytes,
                     get_if_exists: bool = False) -> Optional[msg.ActorFound]:
        """Register an actor and submit its creation task. With get_if_exists, a live actor of
        the same name is returned instead (lookup and creation in one step under the lock).
        ValueError if the name is taken."""
        state = self.state
        if meta.get("namespace") is None:
            meta["namespace"] = state.namespace  # created in a worker: the job's namespace
        name, namespace = meta.get("name"), meta.get("namespace")
        if name is not None:
            # Taken while its actor lives, and (Ray's rule) while a dead non-detached actor's
            # handles do: its name is released by kill, exit_actor, or when its handles are gone.
            existing = state.named_actors.get((namespace, name))
            if existing is not None:
                if get_if_exists:
                    return msg.ActorFound.new(actor_id=existing, meta=state.actors[existing].meta)
                raise ActorAlreadyExistsError(
                    f"The name {name!r} (namespace={namespace!r}) is already taken by another actor. Please "
                    f"use a different name or get the existing actor using get_actor({name!r}, "
                    f"namespace={namespace!r})")
            state.named_actors[(namespace, name)] = spec.actor_id
        if meta["detached"] is None:
            meta["detached"] = state.default_actor_lifetime == "detached"
        for object_id in spec.return_ids():
            state.objects.create(object_id, owner)
            # Pinned while the constructor runs (its error is read from it), and for a detached
            # actor until it dies; otherwise its handles hold it, and once it is freed the actor ends.
            state.objects.pin(object_id)
            if not meta["detached"]:
                state.actor_handles[object_id] = spec.actor_id
            creator = state.workers.get(owner)
            if creator is not None:
                creator.owned.add(object_id)  # so its worker is not retired while the actor lives
        task = TaskRecord(spec, 0, submitter_node, state.task_changes)
        record = ActorRecord(spec.actor_id, meta, task, owner)
        record.creation_pinned = True
        state.actors[spec.actor_id] = record
        state.tasks[spec.task_id] = task
        self.tasks.start_task(task)
        return None

    def creation_done(self, task: TaskRecord, worker: WorkerRecord, error_info: Optional[msg.ErrorInfo]) -> bool:
        """The creation task reported (its lease still held). Returns True if the worker is the actor's now."""
        record = self.state.actors.get(task.spec.actor_id)
        scheduler = self.state.scheduler
        node_id = worker.node.node_id
        if error_info is not None or record is None:
            scheduler.release(node_id, task.spec.resources)
            # It holds no actor: back to the pool, serving anything as a fresh worker does,
            # unless it was set up for an environment or GPUs: then tasks of those only.
            plain = task.spec.runtime_env is None and not task.spec.resources.get("GPU")
            worker.kind = None if plain else worker_kind(task.spec, as_task=True)
            return False  # the constructor raised (creation_failed settled the actor): back to the pool
        if record.state == DEAD:
            # Killed while its constructor ran: the process holds an instance, so it goes too.
            scheduler.release(node_id, task.spec.resources)
            self._kill_worker(worker, INTENDED_USER_EXIT, "its actor was killed while its constructor ran")
            return True
        record.set_state(ALIVE)
        record.worker = worker
        record.node_id, record.pid = node_id, worker.pid
        worker.actor = record
        # Ray's rule: an actor placed with the implicit 1 CPU holds no CPU while it lives;
        # explicit num_cpus and custom resources stay held until it dies.
        record.held = dict(task.spec.resources)
        if not record.meta["holds_cpus"]:  # (in a placement group the CPU is the bundle's: CPU_group_...)
            for key in [k for k in record.held if k == "CPU" or k.startswith("CPU_group_")]:
                scheduler.release(node_id, {key: record.held.pop(key)})
        self.tasks.replenish(worker.node)  # the node's pool lost a worker to the actor
        if not record.meta["detached"]:
            self._unpin_creation(record)  # from now on only its handles keep it alive
        if record.kill_requested is not None:
            self._kill_actor_process(record)
        self._dispatch(record)
        self._end_if_unused(record)
        return True

    def creation_failed(self, task: TaskRecord, error_type: Optional[str], message: Optional[str],
                        error_text: Optional[str] = None) -> None:
        """The creation task failed for good: the constructor raised, or it can never be placed.
        `error_text`: the constructor's error as the worker reported it, if known."""
        record = self.state.actors.get(task.spec.actor_id)
        if record is None or record.state == DEAD:
            return
        if error_type == "TASK_EXECUTION_EXCEPTION":
            record.init_failed = True  # never restarted (as in Ray)
            cause = ("The actor died because of an error raised in its creation task, "
                     + (error_text or self._stored_error_text(task)))
        else:
            cause = record.death_cause or f"The actor could not be (re)created: {message}"
        self._actor_dead(record, cause)

    def _unpin_creation(self, record: ActorRecord) -> None:
        if record.creation_pinned:
            record.creation_pinned = False
            for object_id in record.creation.spec.return_ids():
                self.state.objects.unpin(object_id)

    def _stored_error_text(self, task: TaskRecord) -> str:
        object_id = task.spec.return_ids()[0]
        entry = self.state.objects.entries.get(object_id)
        if entry is None or not entry.is_error or entry.payload is None:
            return ""
        error, _ = deserialize(self.state.error_blob_of(object_id, entry))  # inline or in a store
        return str(error)

    # ---- calls --------------------------------------------------------------------

    def add_actor_call(self, task: TaskRecord) -> None:
        """A new (or rebuilt) call: it takes its place in its actor's queue, then waits for its arguments."""
        record = self.state.actors.get(task.spec.actor_id)
        if record is None or record.state == DEAD:
            self._fail_call(task, record)
            return
        record.pending.append(task)
        record.callers.add(task.spec.owner)
        self.tasks.start_task(task)

    def queue_actor_call(self, task: TaskRecord) -> None:
        """A call's arguments are ready: its turn may come (or it fails if the actor is dead)."""
        record = self.state.actors.get(task.spec.actor_id)
        if record is None or record.state == DEAD:
            self._fail_call(task, record)
            return
        task.set_state(ORDERING)
        if record.meta["allow_out_of_order"] and record.state == ALIVE:
            # Out-of-order execution (Ray's default for async and threaded actors): a call
            # goes as soon as its arguments are ready, ahead of earlier calls still waiting.
            record.pending.remove(task)
            self._send(record, task)
            return
        self._dispatch(record)

    def hold_call_with_failed_argument(self, task: TaskRecord) -> bool:
        """A call's argument is an error. As in Ray, where the caller hands such an argument on
        to the actor as is: if the actor is alive the call fails with the argument's error
        (False: the task flow does it now); if the actor is dead, with ActorDiedError; while
        it is being (re)created the call keeps its place and is settled when the actor is
        alive (the argument's error) or dead (ActorDiedError)."""
        record = self.state.actors.get(task.spec.actor_id)
        if record is not None and record.state == ALIVE:
            return False
        if record is None or record.state == DEAD:
            self._fail_call(task, record)
            return True
        record.failed_args.add(task.spec.task_id)
        task.set_state(ORDERING)
        return True

    def requeue_call(self, task: TaskRecord) -> None:
        """A sent call came back unstarted (an argument was lost): first in line again, it
        was the oldest not finished; it goes once its argument is rebuilt."""
        record = self.state.actors.get(task.spec.actor_id)
        if record is not None:
            record.pending.appendleft(task)

    def _dispatch(self, record: ActorRecord) -> None:
        """Send queued calls to the actor's worker, each caller's in its submission order.

        As in Ray, order is kept per caller (the process that submitted the call): a call
        still waiting for its arguments holds back the later calls of its caller only
        (with allow_out_of_order_execution, nobody's).
        """
        if record.state != ALIVE or record.worker is None:
            return
        in_order = not record.meta["allow_out_of_order"]
        pending = record.pending
        held: Optional[set] = None  # callers with an earlier call still waiting for its arguments
        kept: Optional[Deque[TaskRecord]] = None
        while pending:
            task = pending[0]
            if task.finished:
                pending.popleft()
                record.failed_args.discard(task.spec.task_id)
                continue
            if record.failed_args and task.spec.task_id in record.failed_args:
                record.failed_args.discard(task.spec.task_id)
                pending.popleft()
                self.tasks.args_ready(task)  # the actor is alive now: the argument's error
                continue
            caller = task.spec.owner
            if task.state != ORDERING or (held is not None and caller in held):
                if held is None:
                    held, kept = set(), collections.deque()
                if in_order:
                    held.add(caller)
                    if len(held) >= len(record.callers):
                        break  # every caller is held back: nothing after this can go
                kept.append(pending.popleft())  # type: ignore[union-attr]
                continue
            pending.popleft()
            self._send(record, task)
        if kept:
            pending.extendleft(reversed(kept))  # the held-back calls keep their places, in order

    def _send(self, record: ActorRecord, task: TaskRecord) -> None:
        worker = record.worker
        record.inflight[task.spec.task_id] = task
        task.worker = worker
        task.node = worker.node
        task.set_state(RUNNING, node_id=worker.node.node_id, worker_id=worker.worker_id)
        self.tasks.send_exec(task, worker)

    @staticmethod
    def _started(record: ActorRecord, calls: Any) -> List[TaskRecord]:
        """Of the calls sent to the actor's worker, those it has begun as far as the head can
        tell: in each concurrency group, the oldest ones up to the group's max concurrency
        (calls begin in order within a group; the default group's limit is max_concurrency)."""
        limits = record.meta["concurrency_groups"]
        default = record.meta["max_concurrency"]
        begun: Dict[str, int] = {}
        started = []
        for task in sorted(calls, key=lambda t: t.attempts[0].creation_time):
            group = task.spec.concurrency_group
            count = begun.get(group, 0)
            if count < limits.get(group, default):
                begun[group] = count + 1
                started.append(task)
        return started

    def cancel_actor_call(self, task: TaskRecord) -> None:
        """cancel() of a call sent to the actor: one that has not started fails now with
        TaskCancelledError (the worker skips it); a running one is left alone (Ray's rule)."""
        record = self.state.actors.get(task.spec.actor_id)
        worker = task.worker
        if record is None or worker is None:
            return
        # Signalled: a running call busy in its own code reads it too (is_canceled() turns true).
        self.outbox.post_urgent(worker.peer, msg.CancelTask.new(task_id=task.spec.task_id), worker.pid)
        if task in self._started(record, record.inflight.values()):
            return
        record.inflight.pop(task.spec.task_id, None)  # its late report is discarded
        task.worker = None
        self.tasks.finish_with_error(task, TaskCancelledError(task.spec.task_id.hex()), "TASK_CANCELLED",
                                     "cancelled before it started")

    def actor_call_done(self, worker: WorkerRecord, message: msg.Done) -> None:
        """An actor's worker reported a call."""
        record = worker.actor
        task = record.inflight.pop(message.task_id, None) if record is not None else None
        if task is None or task.attempt != message.attempt:
            self.tasks.discard_results(message.task_id, message.results, worker.node.node_id)
            return
        task.record_times(message.start, message.end)
        self.tasks.task_reported(task, message.results, message.error, worker.node.node_id)
        if record is not None:
            self._end_if_unused(record)

    def _fail_call(self, task: TaskRecord, record: Optional[ActorRecord]) -> None:
        error = ActorDiedError(
            task.spec.actor_id.hex() if task.spec.actor_id else None,
            record.death_cause if record is not None else (
                "The actor is dead, or never was in this session (dead actors' records are kept up to "
                f"RAY_maximum_gcs_destroyed_actor_cached_count={self.state.max_dead_actors}; older ones are "
                "dropped)."),
            actor_init_failed=bool(record and record.init_failed),
        )
        self.tasks.finish_with_error(task, error, "ACTOR_DIED", str(error))

    # ---- death, restart, kill ----------------------------------------------------------

    def actor_worker_died(self, worker: WorkerRecord, reason: str, node_death: Optional[str]) -> None:
        """The worker of an actor died: restart the actor if allowed, else it is DEAD."""
        record = worker.actor
        worker.actor = None
        if record is None or record.state == DEAD:
            return
        record.worker = None
        self.state.scheduler.release(worker.node.node_id, record.held)
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
        # The calls that had begun may have run (retried or failed); the others never
        # started and simply wait for the restart.
        running = self._started(record, inflight)
        begun = {id(task) for task in running}
        never_started = [task for task in inflight if id(task) not in begun]
        for task in never_started:
            task.set_state(ORDERING)
        retry_front = []
        for task in running:
            if task.retries_left != 0:
                if task.retries_left > 0:
                    task.retries_left -= 1
                task.fail_attempt("ACTOR_DIED", cause)
                task.new_attempt()
                task.set_state(ORDERING)  # its arguments were ready and are still pinned
                retry_front.append(task)
            else:
                error = ActorUnavailableError(record.actor_id.hex(), f"{cause} The actor is restarting; this call "
                                              "was running and may or may not have run (max_task_retries=0).")
                self.tasks.finish_with_error(task, error, "ACTOR_DIED", str(error))
        record.pending.extendleft(reversed(retry_front + never_started))
        self._restart_actor(record)

    def _death_cause(self, record: ActorRecord, worker: WorkerRecord, reason: str, node_death: Optional[str]) -> str:
        header = (f"The actor died unexpectedly before finishing this task.\n\tclass_name: "
                  f"{record.meta['class_name']}\n\tactor_id: {record.actor_id.hex()}\n\tpid: {worker.pid}\n")
        if record.kill_requested is not None:
            return header + f"The actor is dead because {record.kill_reason or 'it was killed by `ray.kill`'}."
        if node_death:
            return header + f"The actor died because its node has died: {worker.node.name}, {node_death}."
        return header + f"The actor is dead because its worker process has died ({reason})."

    def _restart_actor(self, record: ActorRecord) -> None:
        record.set_state(RESTARTING)
        record.num_restarts += 1
        task = record.creation
        task.new_attempt()
        task.node = None
        task.worker = None
        self.state.tasks[task.spec.task_id] = task
        self.tasks.start_task(task)

    def creation_died(self, task: TaskRecord, reason: str) -> bool:
        """The creation task's worker died while constructing. Returns True if handled here."""
        record = self.state.actors.get(task.spec.actor_id)
        if record is None:
            return False
        if record.kill_requested is None and record.restarts_left():
            record.num_restarts += 1
            task.fail_attempt("WORKER_DIED", reason)
            task.new_attempt()
            task.node = None
            self.tasks.args_ready(task)
            return True
        cause = ("The actor died unexpectedly before finishing this task.\n"
                 f"\tclass_name: {record.meta['class_name']}\n\tactor_id: {record.actor_id.hex()}\n"
                 + (f"The actor is dead because {record.kill_reason or 'it was killed by `ray.kill`'}."
                    if record.kill_requested is not None
                    else f"The actor is dead because its worker process died while creating it ({reason})."))
        self.tasks.finish_with_error(task, ActorDiedError(record.actor_id.hex(), cause), "ACTOR_DIED", cause)
        self._actor_dead(record, cause)
        return True

    def _actor_dead(self, record: ActorRecord, cause: str, inflight: Any = ()) -> None:
        if record.state == DEAD:
            return
        record.set_state(DEAD)
        record.death_cause = cause
        self.state.dead_actors.append(record.actor_id)
        self._forget_old_dead()
        calls = list(inflight) + list(record.pending)
        record.pending.clear()
        record.failed_args.clear()
        for task in calls:
            if not task.finished:
                self._fail_call(task, record)
        self._unpin_creation(record)
        if record.meta["detached"] or record.out_of_scope:
            self._release_name(record)  # (a non-detached one keeps it while its handles live)
        worker = record.worker
        record.worker = None
        if worker is not None and not worker.dead:
            worker.actor = None
            self._kill_worker(worker, INTENDED_SYSTEM_EXIT, "the actor it ran is dead")

    def kill_actor(self, actor_id: bytes, no_restart: bool, reason: str = "it was killed by `ray.kill`",
                   graceful: bool = False) -> None:
        """`kill(handle)`: end the actor's process now; restart it only if no_restart=False.
        graceful: the worker is asked to exit (its actor's __ray_shutdown__ runs first), not killed."""
        record = self.state.actors.get(actor_id)
        if record is None or record.state == DEAD:
            return
        record.kill_requested = no_restart
        record.kill_reason = reason
        if no_restart:
            self._release_name(record)
        if record.worker is not None and graceful:
            worker = record.worker
            worker.expect_exit(INTENDED_SYSTEM_EXIT, f"its actor ended because {reason}")
            self.outbox.post(worker.peer, msg.Retire.new())
            # Its __ray_shutdown__ may hang: past the grace period the process is killed (Ray's rule).
            self.timers.call_later(self.state.actor_shutdown_timeout_s, lambda: self._end_overdue(worker))
        elif record.worker is not None:
            self._kill_actor_process(record)
        elif no_restart:
            task = record.creation
            cause = ("The actor died unexpectedly before finishing this task.\n"
                     f"\tclass_name: {record.meta['class_name']}\n\tactor_id: {actor_id.hex()}\n"
                     f"The actor is dead because {reason}.")
            record.death_cause = cause  # what creation_failed reports when the cancel lands
            if not task.finished:
                self.tasks.cancel_task(task.spec.task_id, force=True, recursive=False)
            self._actor_dead(record, cause)

    def _forget_old_dead(self) -> None:
        """Keep at most `max_dead_actors` dead actors' records, as Ray's GCS does: a long-running
        driver that makes actors by the million must not grow without bound. A call on a handle
        of a forgotten actor fails with ActorDiedError, as for any dead actor."""
        state = self.state
        while len(state.dead_actors) > state.max_dead_actors:
            record = state.actors.pop(state.dead_actors.popleft(), None)
            if record is not None:
                self._release_name(record)  # (a non-detached one's name, still held for its handles)

    def _release_name(self, record: ActorRecord) -> None:
        """An actor that will not come back gives up its name at once (Ray's rule): the name
        can be taken again before its process is gone."""
        key = (record.meta.get("namespace"), record.name)
        if record.name is not None and self.state.named_actors.get(key) == record.actor_id:
            del self.state.named_actors[key]

    def _kill_actor_process(self, record: ActorRecord) -> None:
        if record.worker is not None:
            why = f"its actor ended because {record.kill_reason or 'it was killed'}"
            self._kill_worker(record.worker, INTENDED_USER_EXIT, why)

    def _end_overdue(self, worker: WorkerRecord) -> None:
        if not worker.dead:
            self._kill_worker(worker, INTENDED_SYSTEM_EXIT, "its actor's __ray_shutdown__ ran past "
                              "actor_graceful_shutdown_timeout_ms")

    def _kill_worker(self, worker: WorkerRecord, exit_type: str, why: str) -> None:
        worker.expect_exit(exit_type, why)  # for the state API: not a crash
        try:
            os.kill(worker.pid, 9)
        except ProcessLookupError:
            pass
        # Its death is certain now: the actors it owns go at once, as its death would end them
        # (recovery.py), so a call made after `kill(owner)` returns fails as in Ray.
        self.owner_died_actors(worker.worker_id)

    def owner_died_actors(self, owner: bytes) -> None:
        """Actors whose owner died go too, unless detached."""
        for record in list(self.state.actors.values()):
            if record.owner != owner or record.meta["detached"]:
                continue
            if record.state == DEAD:
                self._release_name(record)
            else:
                self.kill_actor(record.actor_id, no_restart=True,
                                reason=f"its owner has died (worker {owner.hex()[:12]}...); actors die with their "
                                       "owner unless created with lifetime=\"detached\"")

    def actor_exiting(self, worker: WorkerRecord, task_id: bytes) -> None:
        """The actor's code called exit_actor() (or __ray_terminate__ ran), in a call or its
        constructor: its worker exits on purpose and the actor is not restarted (Ray's rule
        for an intended exit). The call that asked is never reported: it fails, with the
        queued ones, when the worker is gone."""
        record = worker.actor
        if record is None:
            task = self.state.tasks.get(task_id)  # the constructor called it
            record = self.state.actors.get(task.spec.actor_id) if task is not None else None
        if record is None or record.state == DEAD:
            return
        record.kill_requested = True
        record.kill_reason = EXITED
        self._release_name(record)
        worker.expect_exit(INTENDED_USER_EXIT, "its actor called exit_actor()")

    # ---- lifetime: the last handle is gone ------------------------------------------------

    def handles_gone(self, actor_id: bytes) -> None:
        """No process holds a handle of this non-detached actor any more (its creation
        result was freed): as in Ray, it ends once the calls already submitted are done."""
        record = self.state.actors.get(actor_id)
        if record is None:
            return
        record.out_of_scope = True
        if record.state == DEAD:
            self._release_name(record)  # a dead actor's name was held for its handles
            return
        self._end_if_unused(record)

    def _end_if_unused(self, record: ActorRecord) -> None:
        if record.out_of_scope and not record.pending and not record.inflight and record.state != DEAD:
            self.kill_actor(record.actor_id, no_restart=True, reason=OUT_OF_SCOPE, graceful=True)

    # ---- lookups ----------------------------------------------------------------

    def named_actors(self) -> List[Tuple[Any, str]]:
        """(namespace, name) of every named actor not dead (restarting ones included, as Ray)."""
        actors = self.state.actors
        return [key for key, actor_id in self.state.named_actors.items()
                if actor_id in actors and actors[actor_id].state != DEAD]

    def lookup_actor(self, name: str, namespace: Optional[str]) -> Optional[msg.ActorFound]:
        """The actor named `name` in `namespace` (None: the job's)."""
        if namespace is None:
            namespace = self.state.namespace
        # Killed ones have left it; a dead one whose handles live is found, as in Ray (its
        # calls then fail with ActorDiedError).
        actor_id = self.state.named_actors.get((namespace, name))
        record = self.state.actors.get(actor_id) if actor_id else None
        if record is None:
            return None
        return msg.ActorFound.new(actor_id=record.actor_id, meta=record.meta)
