"""What each flow of the head calls on another: one small Protocol per caller and callee.

Types only, no behaviour. The head (head.py) builds one object per flow and
connects them; each flow's `connect` takes these interfaces, so its signature
lists exactly what it depends on, and a method named here is the only way
that flow reaches the other. All run in the driver process under the head's lock.

    TaskFlow    (task_flow.py)   needs ActorCallsForTasks, RecoveryForTasks
    ActorFlow   (actor_flow.py)  needs TasksForActors
    Waiting     (waiting.py)     needs TasksForWaiting, RecoveryForWaiting
    Recovery    (recovery.py)    needs TasksForRecovery, ActorsForRecovery, WaitingForRecovery
    every flow                   uses the Outbox (messaging.py) and most use Timers
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from minicluster._private.head.object_directory import ObjectEntry, Waiter
from minicluster._private.head.task_records import TaskRecord
from minicluster._private.head.virtual_nodes import NodeRecord, WorkerRecord
from minicluster._private.wire.hub import Peer


class Timers(Protocol):
    """The hub, as flows use it (messaging.LockedTimers)."""

    def call_later(self, seconds: float, fn: Callable[[], None]) -> Any: ...  # fn runs under the head's lock

    def cancel_timer(self, timer: Any) -> None: ...

    def close_peer(self, peer: Peer) -> None: ...


# ---- on the task flow ---------------------------------------------------------------


class TasksForActors(Protocol):
    """What the actor flow asks of the task flow: actors' tasks run like tasks."""

    def start_task(self, task: TaskRecord) -> None: ...

    def args_ready(self, task: TaskRecord) -> None: ...

    def replenish(self, node: NodeRecord) -> None: ...

    def send_exec(self, task: TaskRecord, worker: WorkerRecord) -> None: ...

    def task_reported(self, task: TaskRecord, results: list, error_info: Optional[tuple], node_id: bytes) -> None: ...

    def discard_results(self, task_id: bytes, results: list, node_id: bytes) -> None: ...

    def finish_with_error(self, task: TaskRecord, error: BaseException, error_type: str, message: str) -> None: ...

    def cancel_task(self, task_id: bytes, force: bool, recursive: bool) -> None: ...


class TasksForWaiting(Protocol):
    """What get/wait asks of the task flow: tasks taken back from a blocked worker go back in line."""

    def args_ready(self, task: TaskRecord) -> None: ...

    def schedule(self) -> None: ...


class TasksForRecovery(Protocol):
    """What failure handling asks of the task flow."""

    def start_task(self, task: TaskRecord) -> None: ...

    def args_ready(self, task: TaskRecord) -> None: ...

    def retry(self, task: TaskRecord) -> None: ...

    def finish_with_error(self, task: TaskRecord, error: BaseException, error_type: str, message: str) -> None: ...

    def object_ready(self, object_id: bytes, entry: ObjectEntry) -> None: ...

    def cancel_task(self, task_id: bytes, force: bool, recursive: bool) -> None: ...

    def replenish(self, node: NodeRecord) -> None: ...

    def schedule(self) -> None: ...


# ---- on the actor flow --------------------------------------------------------------


class ActorCallsForTasks(Protocol):
    """What the task flow hands to the actor flow: the actor-specific steps of a task's path."""

    def add_actor_call(self, task: TaskRecord) -> None: ...

    def queue_actor_call(self, task: TaskRecord) -> None: ...

    def hold_call_with_failed_argument(self, task: TaskRecord) -> bool: ...

    def requeue_call(self, task: TaskRecord) -> None: ...

    def actor_call_done(self, worker: WorkerRecord, message: tuple) -> None: ...

    def cancel_actor_call(self, task: TaskRecord) -> None: ...

    def creation_done(self, task: TaskRecord, worker: WorkerRecord, error_info: Optional[tuple]) -> bool: ...

    def creation_failed(self, task: TaskRecord, error_type: Optional[str], message: Optional[str],
                        error_text: Optional[str] = None) -> None: ...


class ActorsForRecovery(Protocol):
    """What failure handling asks of the actor flow."""

    def add_actor_call(self, task: TaskRecord) -> None: ...

    def actor_worker_died(self, worker: WorkerRecord, reason: str, node_death: Optional[str]) -> None: ...

    def creation_died(self, task: TaskRecord, reason: str) -> bool: ...

    def owner_died_actors(self, owner: bytes) -> None: ...

    def kill_actor(self, actor_id: bytes, no_restart: bool, reason: str = ..., graceful: bool = ...) -> None:
        ...  # (placement_groups.end_group_work: the actors of a group removed with its creator)


# ---- on recovery and waiting ----------------------------------------------------------


class RecoveryForTasks(Protocol):
    """What the task flow asks of recovery: arguments that are lost or on a stopped node."""

    def check_copies(self, object_id: bytes) -> None: ...

    def recover(self, object_id: bytes) -> None: ...

    def await_unreachable(self, object_id: bytes) -> None: ...


class RecoveryForWaiting(Protocol):
    """What get/wait asks of recovery: a wanted object that is lost or unreachable."""

    def recover(self, object_id: bytes) -> None: ...

    def await_unreachable(self, object_id: bytes) -> None: ...


class WaitingForRecovery(Protocol):
    """What failure handling asks of waiting: a dead worker's blocked reads go."""

    def unregister_waiter(self, waiter: Waiter) -> None: ...


__all__ = ["Timers", "TasksForActors", "TasksForWaiting", "TasksForRecovery", "ActorCallsForTasks",
           "ActorsForRecovery", "RecoveryForTasks", "RecoveryForWaiting", "WaitingForRecovery"]
