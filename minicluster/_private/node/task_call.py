"""One task or actor call as a worker runs it (worker.py): the fields of its Exec message and
what running it adds, what an actor call calls, and a return value split into its num_returns.

Runs in every worker process, on the thread that runs the call.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, List, Optional, Sequence

from minicluster._private.common.task_spec import FIRST_RETURN
from minicluster._private.wire import messages as msg
from minicluster.exceptions import AsyncioActorExit


class Call:
    """One task or actor call being run: the fields of the head's Exec message, and what running it adds."""

    __slots__ = ("task_id", "attempt", "function_id", "name", "args_blob", "payloads", "num_returns",
                 "retry_exceptions", "max_calls", "task_type", "func_name", "method", "actor_config", "faults",
                 "fn", "args", "kwargs", "error", "token", "start", "items", "kept")

    def __init__(self, request: msg.Exec) -> None:
        # Copied once: the worker reads them some 40 times a task, and CPython 3.11 reads
        # a slot several times faster than a NamedTuple field.
        self.task_id = request.task_id
        self.attempt = request.attempt
        self.function_id = request.function_id
        self.name = request.name
        self.args_blob = request.args_blob
        self.payloads = request.payloads
        self.num_returns = request.num_returns
        self.retry_exceptions = request.retry_exceptions
        self.max_calls = request.max_calls
        self.task_type = request.task_type
        self.func_name = request.func_name
        self.method = request.method
        self.actor_config = request.actor_config
        self.faults = request.faults
        self.fn: Any = None
        self.args: Any = ()
        self.kwargs: Any = {}
        self.error: Optional[BaseException] = None
        self.token: Any = None
        self.start = time.time()
        self.items = 0  #: a generator task: the items it reported so far
        self.kept: Any = None  #: a value the Done's results refer to, kept until it is sent

    def return_ids(self) -> List[bytes]:
        task_id = self.task_id
        count = self.num_returns
        if count == 1 or count < 0:  # nearly every task; (a generator task: its completion)
            return [task_id + FIRST_RETURN]
        return [task_id + i.to_bytes(4, "little") for i in range(1, count + 1)]


def actor_callable(actor: Any, method: str) -> Any:
    """What an actor call of `method` calls: the actor's method, or one of Ray's own names."""
    if method == "__ray_terminate__":
        return _terminate  # queued like any call: the calls before it run first
    if method == "__ray_ready__":
        return _ready
    if method == "__ray_call__":  # Ray's: run the function given on the actor
        return lambda fn, *args, **kwargs: fn(actor, *args, **kwargs)
    return _method_of(actor, method)


def _method_of(actor: Any, name: str) -> Any:
    """The actor's method `name`, found on its class as Ray does: an instance attribute of the
    same name (`self.ready = True` beside a `ready()` method) does not hide it."""
    cls = type(actor)
    try:
        member = inspect.getattr_static(cls, name)
    except AttributeError:
        return getattr(actor, name)  # (a __getattr__ of the class's own)
    getter = getattr(type(member), "__get__", None)
    return getter(member, actor, cls) if getter is not None else member


def _ready() -> bool:
    """`handle.__ray_ready__.remote()` (Ray's): True once the actor is constructed."""
    return True


def _terminate() -> None:
    """`handle.__ray_terminate__.remote()`: the actor exits as if it called exit_actor()."""
    raise AsyncioActorExit("__ray_terminate__ was called")


def split_returns(result: Any, num_returns: int, name: str) -> Sequence[Any]:
    if num_returns < 0:
        return (result,)  # a generator task: its completion value
    if num_returns == 1:
        return (result,)
    if num_returns == 0:
        return ()
    try:
        values = tuple(result)
    except TypeError:
        raise ValueError(
            f"Task {name} declared num_returns={num_returns} but returned a non-iterable {type(result).__name__}"
        ) from None
    if len(values) != num_returns:
        raise ValueError(
            f"Task {name} declared num_returns={num_returns} but returned {len(values)} values"
        )
    return values
