"""A task's failure as its caller sees it: the error `get` raises, and its payloads.

Runs in every worker (worker.py, generator_tasks.py). The traceback shows the
user's frames only; an exception that cannot travel (does not pickle, or does
not load again) is replaced by its text, so the caller always gets an error it
can load.
"""

from __future__ import annotations

import os
import pickle
import traceback
from typing import Any, List, Optional, Tuple

from minicluster._private.common.task_spec import argument_failed
from minicluster._private.node.call_args import ArgumentFailed
from minicluster._private.node.worker_client import WorkerClient, store_serialized
from minicluster._private.store.serialization import FLAG_ERROR, deserialize, serialize
from minicluster._private.wire import messages as msg
from minicluster.exceptions import RayError, RayTaskError, TaskCancelledError


def task_error(exc: BaseException, name: str, retry_exceptions: Any,
                cancelled_id: Optional[bytes]) -> Tuple[BaseException, bool]:
    """The task's error as `get` raises it, and whether a retry may run it again. A task that
    cancel() interrupted (`cancelled_id`) fails, as in Ray, with its frames and then
    TaskCancelledError (not the KeyboardInterrupt that carried the cancel)."""
    if isinstance(exc, ArgumentFailed):  # (never retried: the argument stays failed)
        return argument_failed(name, exc.error), False
    if cancelled_id is not None:
        cause: BaseException = TaskCancelledError(cancelled_id.hex())
        ending = f"{TaskCancelledError.__module__}.TaskCancelledError: {cause}\n"
        return RayTaskError(name, user_traceback(exc, ending), cause), False
    tb = user_traceback(exc)
    if retry_exceptions is True:
        retryable = isinstance(exc, Exception)
    elif retry_exceptions:
        classes = pickle.loads(retry_exceptions)
        retryable = isinstance(exc, classes)
    else:
        retryable = False
    if isinstance(exc, RayTaskError):
        # A child's error that this task's get() raised: this task's frames, then the child's
        # whole error as the last line (as Ray shows it); still an instance of the child's cause.
        return RayTaskError(name, tb, exc.cause), retryable
    return RayTaskError(name, tb, exc), retryable


# minicluster's own code (its frames are left out of task tracebacks); the demo's tasks are user code.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep
_DEMO_FILE = os.path.join(_PACKAGE_DIR, "demo.py")


def user_traceback(exc: BaseException, ending: Optional[str] = None) -> str:
    """The exception as Ray shows a task's error: the user's frames only (not the worker's, nor
    those of get() and the rest of the runtime), without Python's "Traceback (most recent call
    last):" line; `ending` replaces the exception's own last line(s)."""
    formatted = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    formatted.stack = traceback.StackSummary.from_list([
        frame for frame in formatted.stack
        if not frame.filename.startswith(_PACKAGE_DIR) or frame.filename == _DEMO_FILE])
    if ending is not None:
        return "".join(formatted.stack.format()) + ending
    return "".join(line for line in formatted.format() if line != "Traceback (most recent call last):\n")


def error_results(client: WorkerClient, return_ids: List[bytes], error: BaseException, name: str) -> List[msg.Value]:
    """The error as every return value's payload, pickled once; always one the caller can load."""
    if not return_ids:
        return []
    what = "task error"
    try:
        serialized = serialize(error, flags=FLAG_ERROR, what=what)
        first = store_serialized(client, return_ids[0], serialized, what)
        if first.kind == "i":
            deserialize(first.data)  # an exception that pickles but cannot be re-created fails here
    except Exception as exc:  # noqa: BLE001 - any failure means: send the text instead
        serialized = serialize(stand_in(error, name, exc), flags=FLAG_ERROR, what=what)
        first = store_serialized(client, return_ids[0], serialized, what)
    if first.kind == "i":
        return [first] * len(return_ids)
    # A large error is stored like a large value: one file per return.
    return [first] + [store_serialized(client, oid, serialized, what) for oid in return_ids[1:]]


def stand_in(error: BaseException, name: str, problem: Exception) -> RayTaskError:
    """The task's error as text, for an exception that cannot travel (does not pickle or load)."""
    cause = getattr(error, "cause", error)
    traceback_str = getattr(error, "traceback_str", str(error))
    # Ray's words, then ours (the exception may pickle yet fail to be re-created in the caller)
    stand_in = RayError(f"Exception {type(cause).__module__}.{type(cause).__name__} isn't serializable: {problem}.\n"
                        f"{type(cause).__name__}: {cause} (the exception could not be re-created in the caller: "
                        f"{type(problem).__name__}: {problem})\nOriginal exception details:\n{traceback_str}")
    return RayTaskError(name, traceback_str, stand_in)


def one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 500 else text[:497] + "..."


def inline_error(error: BaseException, name: str) -> msg.Value:
    """A large generator exception (stored as a file for the completion) as an inline item."""
    try:
        serialized = serialize(error, flags=FLAG_ERROR, what="task error")
    except Exception as exc:  # noqa: BLE001 - as _error_results: the text instead
        serialized = serialize(stand_in(error, name, exc), flags=FLAG_ERROR, what="task error")
    return msg.Value.new(kind="i", data=serialized.to_bytes(), refs=serialized.refs)
