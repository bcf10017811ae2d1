"""The errors minicluster raises, with Ray's names and class hierarchy.

Every process imports this module; errors cross process boundaries pickled.

    RayError
    ├── RayTaskError                  (also an instance of the user's class, see as_instanceof_cause)
    ├── TaskCancelledError
    ├── WorkerCrashedError
    ├── NodeDiedError
    ├── TaskUnschedulableError
    ├── ObjectStoreFullError
    ├── GetTimeoutError               (also a builtin TimeoutError)
    ├── RayActorError
    │   ├── ActorDiedError
    │   └── ActorUnavailableError
    ├── ActorAlreadyExistsError       (also a ValueError: an actor's name is taken)
    ├── ObjectLostError
    │   ├── OwnerDiedError
    │   ├── ObjectFetchTimedOutError
    │   ├── ObjectFreedError
    │   ├── ReferenceCountingAssertionError   (also an AssertionError)
    │   └── ObjectReconstructionFailedError   (.reason names Ray's reason)
    │       ├── ObjectReconstructionFailedMaxAttemptsExceededError
    │       └── ObjectReconstructionFailedLineageEvictedError
    └── defined so that user code catching them runs, never raised by minicluster (it has no
        such failure or feature): RaySystemError, LocalRayletDiedError, OutOfMemoryError,
        OutOfDiskError, RuntimeEnvSetupError, TaskPlacementGroupRemoved, ActorPlacementGroupRemoved,
        ActorUnschedulableError, PendingCallsLimitExceeded, AsyncioActorExit, CrossLanguageError
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

_logger = logging.getLogger(__name__)


class RayError(Exception):
    """Base class of every error minicluster raises."""


class RayTaskError(RayError):
    """A task raised an exception; stored as the task's result and raised by `get`.

    `get` raises `as_instanceof_cause()`, a subclass of both this class and the
    user's exception class, so `except MyError` works where the user expects it.
    """

    def __init__(
        self,
        function_name: str,
        traceback_str: str,
        cause: Optional[BaseException],
        proctitle: Optional[str] = None,
        pid: Optional[int] = None,
        ip: Optional[str] = None,
        actor_repr: Optional[str] = None,
        actor_id: Optional[str] = None,
    ) -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.proctitle = proctitle or f"ray::{function_name}()"
        self.pid = os.getpid() if pid is None else pid
        self.ip = ip or "127.0.0.1"
        self.actor_repr = actor_repr
        self.actor_id = actor_id
        # Not super(): in the dual class (see as_instanceof_cause) the next __init__
        # in line is the user's, whose signature we do not know.
        Exception.__init__(self, self._message())

    def _message(self) -> str:
        header = f"{self.proctitle} (pid={self.pid}, ip={self.ip}"
        if self.actor_repr:
            header += f", actor_id={self.actor_id}, repr={self.actor_repr}"
        header += ")"
        body = self.traceback_str.rstrip("\n")
        return f"{header}\n{body}" if body else header

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple:
        # The dual class (as_instanceof_cause) is made anew where it is loaded: from the cause.
        return (RayTaskError if type(self) is RayTaskError else _dual_of, self._init_args())

    def _init_args(self) -> tuple:
        """RayTaskError.__init__'s arguments that rebuild this error (pickling, the dual class)."""
        return (self.function_name, self.traceback_str, self.cause, self.proctitle, self.pid, self.ip,
                self.actor_repr, self.actor_id)

    def as_instanceof_cause(self) -> "RayTaskError":
        """Return an error that is both a RayTaskError and an instance of the cause's class.

        Falls back to this plain RayTaskError, with a warning on the `minicluster.exceptions`
        logger (Ray's words), when the cause's class cannot be subclassed or a subclass
        instance cannot be made.
        """
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or issubclass(cause_cls, RayTaskError):
            return self
        try:
            return self.make_dual_exception_instance()
        except TypeError as exc:
            _logger.warning(
                f"User exception type {cause_cls} in RayTaskError can't be subclassed! This exception is "
                "raised as RayTaskError only. You can use `ray_task_error.cause` to access the user "
                f"exception. Failure in subclassing: {exc}")
        except Exception as exc:  # noqa: BLE001 - any failure means "not subclassable"
            _logger.warning(
                f"Failed to combine RayTaskError with user exception type {cause_cls}; raising "
                f"RayTaskError only. Failure in subclassing: {exc}")
        return self

    def make_dual_exception_instance(self) -> "RayTaskError":
        """An error of a class that inherits from both RayTaskError and the cause's class, with
        the cause's attributes (Ray's method). Raises TypeError if that class cannot be made."""
        cause_cls = type(self.cause)
        cls = _dual_class(cause_cls)  # (TypeError if the class refuses to be subclassed)
        err = cls.__new__(cls)
        RayTaskError.__init__(err, *self._init_args())
        # Copy the cause's attributes so `e.errno`, `e.args` etc. read like the original.
        for key, value in getattr(self.cause, "__dict__", {}).items():
            err.__dict__.setdefault(key, value)
        err.args = (str(self),)
        return err


_DUAL_CLASSES: dict[type, type] = {}


def _dual_of(*args: Any) -> RayTaskError:
    """Unpickle a dual-class RayTaskError (its class is made from the cause's)."""
    return RayTaskError(*args).make_dual_exception_instance()


def _dual_class(cause_cls: type) -> type:
    cls = _DUAL_CLASSES.get(cause_cls)
    if cls is None:

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # never called by us
            RayTaskError.__init__(self, *args, **kwargs)

        cls = type(
            f"RayTaskError({cause_cls.__name__})",
            (RayTaskError, cause_cls),
            {"__init__": __init__, "__module__": __name__, "__str__": RayTaskError.__str__},
        )
        _DUAL_CLASSES[cause_cls] = cls
    return cls


class TaskCancelledError(RayError):
    """The task was cancelled with `cancel()`."""

    def __init__(self, task_id: Optional[str] = None, error_message: Optional[str] = None) -> None:
        self.task_id = task_id
        self.error_message = error_message
        super().__init__(task_id, error_message)

    def __str__(self) -> str:
        if self.error_message:
            return self.error_message
        return f"Task {self.task_id} was cancelled." if self.task_id else "This task or its dependency was cancelled."


class _SystemFailure(RayError):
    """A failure of the machinery, not of the task's code; `.message` says what happened."""

    default_message = ""

    def __init__(self, message: Optional[str] = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class WorkerCrashedError(_SystemFailure):
    """The worker running the task died and the task has no retries left."""

    default_message = "The worker died unexpectedly while executing this task."


class NodeDiedError(_SystemFailure):
    """The node running the task died and the task has no retries left."""

    default_message = "The node running this task died."


class TaskUnschedulableError(RayError):
    """The task can never be scheduled (for example: hard affinity to a dead node)."""

    def __init__(self, error_message: str) -> None:
        self.error_message = error_message
        super().__init__(error_message)

    def __str__(self) -> str:
        return f"The task is not schedulable: {self.error_message}"


class ObjectStoreFullError(RayError):
    """The object store cannot hold the object, even after eviction and spilling."""


class GetTimeoutError(RayError, TimeoutError):
    """`get` or `wait` did not finish within its timeout."""


class RayActorError(RayError):
    """The actor is dead or unavailable."""

    def __init__(self, actor_id: Optional[str] = None,
                 error_msg: str = "The actor died unexpectedly before finishing this task.") -> None:
        self.actor_id = actor_id
        self.error_msg = error_msg
        super().__init__(error_msg)

    def __str__(self) -> str:
        return self.error_msg


class ActorDiedError(RayActorError):
    """The actor is dead for good: its restarts are exhausted, it was killed, or its constructor failed."""

    def __init__(
        self,
        actor_id: Optional[str] = None,
        error_msg: str = "The actor died unexpectedly before finishing this task.",
        actor_init_failed: bool = False,
    ) -> None:
        self.actor_init_failed = actor_init_failed
        super().__init__(actor_id, error_msg)

    def __reduce__(self) -> tuple:
        return (ActorDiedError, (self.actor_id, self.error_msg, self.actor_init_failed))


class ActorUnavailableError(RayActorError):
    """The actor is restarting; the call may or may not have run."""

    def __reduce__(self) -> tuple:
        return (ActorUnavailableError, (self.actor_id, self.error_msg))


class ObjectLostError(RayError):
    """No copy of the object's value can be reached."""

    def __init__(self, object_ref_hex: str, owner_address: str = "", call_site: str = "") -> None:
        self.object_ref_hex = object_ref_hex
        self.owner_address = owner_address
        self.call_site = call_site
        super().__init__(object_ref_hex, owner_address, call_site)

    def _base_str(self) -> str:
        return f"Failed to retrieve object {self.object_ref_hex}."

    def __str__(self) -> str:
        return (
            self._base_str()
            + "\n\nAll copies of the object are lost, and it cannot be rebuilt from lineage"
            " (it was made by put, lineage reconstruction is disabled, or its creator is not retryable)."
        )


class OwnerDiedError(ObjectLostError):
    """The process that owned the object (created its ref) died; its objects are gone."""

    def __str__(self) -> str:
        owner = f" ({self.owner_address})" if self.owner_address else ""
        return (
            self._base_str()
            + f"\n\nThe object's owner{owner} has exited. The owner is the process that created the "
            "ObjectRef with .remote() or put(); objects whose owner died cannot be recovered."
        )


class ObjectFetchTimedOutError(ObjectLostError):
    """Fetching a copy from another node did not finish within fetch_fail_timeout_milliseconds."""

    def __str__(self) -> str:
        return (
            self._base_str()
            + "\n\nFetching the object's value from the node that holds it timed out "
            "(MINICLUSTER_fetch_fail_timeout_milliseconds)."
        )


class ReferenceCountingAssertionError(ObjectLostError, AssertionError):
    """The object was freed because no reference to it remained."""

    def __str__(self) -> str:
        return self._base_str() + "\n\nThe object has already been deleted by the reference counting protocol."


class ObjectFreedError(ObjectLostError):
    """The object was freed explicitly (Ray's internal free()); minicluster frees only unreferenced objects."""

    def __str__(self) -> str:
        return self._base_str() + "\n\nThe object was manually freed and can no longer be used."


# Ray's names for why an object could not be rebuilt.
RECONSTRUCTION_REASONS = (
    "OBJECT_UNRECONSTRUCTABLE_LINEAGE_DISABLED",
    "OBJECT_UNRECONSTRUCTABLE_PUT",
    "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED",
    "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED",
    "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED",
    "OBJECT_UNRECONSTRUCTABLE_BORROWED",
    "OBJECT_UNRECONSTRUCTABLE_TASK_CANCELLED",
)


class ObjectReconstructionFailedError(ObjectLostError):
    """The object was lost and could not be rebuilt; `.reason` says why."""

    default_reason = "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED"

    def __init__(
        self, object_ref_hex: str, owner_address: str = "", call_site: str = "", reason: Optional[str] = None
    ) -> None:
        self.reason = reason or self.default_reason
        super().__init__(object_ref_hex, owner_address, call_site)

    def __reduce__(self) -> tuple:
        return (type(self), (self.object_ref_hex, self.owner_address, self.call_site, self.reason))

    def __str__(self) -> str:
        return (
            self._base_str()
            + f"\n\nThe object cannot be reconstructed ({self.reason}): "
            + _REASON_TEXT.get(self.reason, "see the reason name.")
        )


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectReconstructionFailedError):
    """The task that made the object ran out of retries while rebuilding it."""

    default_reason = "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED"


class ObjectReconstructionFailedLineageEvictedError(ObjectReconstructionFailedError):
    """The lineage needed to rebuild the object was evicted (max_lineage_bytes)."""

    default_reason = "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED"


class AsyncioActorExit(RayError, SystemExit):
    """Raised by `minicluster.actor.exit_actor()` in the calling method (Ray's name; here for
    every kind of actor). The worker ends the actor: no restart; the call and those queued
    behind it fail with ActorDiedError."""


_REASON_TEXT = {
    "OBJECT_UNRECONSTRUCTABLE_LINEAGE_DISABLED": "lineage reconstruction is disabled for this cluster "
    "(enable_object_reconstruction=False, or _system_config lineage_pinning_enabled=False).",
    "OBJECT_UNRECONSTRUCTABLE_PUT": "objects made by put() cannot be rebuilt from lineage.",
    "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED": "the task that made it has max_retries=0 "
    "(or MINICLUSTER_TASK_MAX_RETRIES=0).",
    "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED": "the task that made it has used all its retries.",
    "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED": "its lineage was evicted to stay under "
    "max_lineage_bytes (MINICLUSTER_max_lineage_bytes).",
    "OBJECT_UNRECONSTRUCTABLE_BORROWED": "it was borrowed and its owner could not rebuild it.",
    "OBJECT_UNRECONSTRUCTABLE_TASK_CANCELLED": "the task that made it was cancelled.",
}


class ActorAlreadyExistsError(ValueError, RayError):
    """An actor is created with a name a live actor of its namespace already has."""


# ---- Ray's other errors: never raised here, defined so that user code catching them runs ----


class RaySystemError(RayError):
    """A failure of Ray's own system (minicluster reports its failures with the classes above)."""

    def __init__(self, client_exc: Any = None, traceback_str: Optional[str] = None) -> None:
        self.client_exc = client_exc
        self.traceback_str = traceback_str
        super().__init__(client_exc)

    def __str__(self) -> str:
        text = f"System error: {self.client_exc}"
        return f"{text}\ntraceback: {self.traceback_str}" if self.traceback_str else text


class LocalRayletDiedError(RayError):
    """The raylet of the task's node died (minicluster: NodeDiedError)."""


class OutOfMemoryError(RayError):
    """Ray's memory monitor killed the task's worker (minicluster has no memory monitor)."""


class OutOfDiskError(RayError):
    """The local disk is full (Ray's object spilling)."""


class RuntimeEnvSetupError(RayError):
    """The task's runtime_env could not be set up."""

    def __init__(self, error_message: Optional[str] = None) -> None:
        self.error_message = error_message
        super().__init__(error_message)

    def __str__(self) -> str:
        return f"Failed to set up runtime environment.\n{self.error_message or ''}".rstrip()


class TaskPlacementGroupRemoved(RayError):
    """The task's placement group was removed."""


class ActorPlacementGroupRemoved(RayError):
    """The actor's placement group was removed."""


class ActorUnschedulableError(RayError):
    """The actor can never be scheduled."""

    def __init__(self, error_message: str = "") -> None:
        self.error_message = error_message
        super().__init__(error_message)


class PendingCallsLimitExceeded(RayError):
    """An actor's max_pending_calls was reached."""


class ObjectRefStreamEndOfStreamError(RayError):
    """A generator task's stream has no more items (the ref of a position past its last item)."""


class CrossLanguageError(RayError):
    """An error raised by code in another language (Java, C++)."""


__all__ = [
    "RayError",
    "RayTaskError",
    "TaskCancelledError",
    "WorkerCrashedError",
    "NodeDiedError",
    "TaskUnschedulableError",
    "ObjectStoreFullError",
    "GetTimeoutError",
    "RayActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "AsyncioActorExit",
    "ObjectLostError",
    "OwnerDiedError",
    "ObjectFetchTimedOutError",
    "ReferenceCountingAssertionError",
    "ObjectReconstructionFailedError",
    "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectReconstructionFailedLineageEvictedError",
    "ObjectFreedError",
    "ActorAlreadyExistsError",
    "RaySystemError",
    "LocalRayletDiedError",
    "OutOfMemoryError",
    "OutOfDiskError",
    "RuntimeEnvSetupError",
    "TaskPlacementGroupRemoved",
    "ActorPlacementGroupRemoved",
    "ActorUnschedulableError",
    "PendingCallsLimitExceeded",
    "CrossLanguageError",
    "ObjectRefStreamEndOfStreamError",
]
