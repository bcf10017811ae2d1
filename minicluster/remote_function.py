"""`@remote` functions: turning a call into a TaskSpec and handing it to the runtime.

Runs in whichever process calls `.remote()` (the driver, or a worker for
nested tasks). The function is pickled by value once per process and sent
to the head once; each call then only pickles its arguments.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any, Dict, List, Optional, Tuple

from minicluster._private.client import context
from minicluster._private.client.object_ref import ObjectRef
from minicluster._private.client.object_ref_generator import ObjectRefGenerator
from minicluster._private.common import config, labels, placement, runtime_envs, signatures
from minicluster._private.common import options as opts
from minicluster._private.common.ids import new_task_id
from minicluster._private.common.task_spec import DYNAMIC, STREAMING, TaskSpec, resources_of, strategy_of
from minicluster._private.store.serialization import dumps_function, pickle_definition, serialize


class RemoteFunction:
    """A function declared with `@remote`; call `.remote(...)` to run it as a task."""

    def __init__(self, function: Any, options: Dict[str, Any]) -> None:
        if inspect.iscoroutinefunction(function):
            raise ValueError("'async def' should not be used for remote tasks. You can wrap the async function "
                             "with `asyncio.run(f())`, or make it a method of an async actor.")
        self._function = function
        self._options = opts.validate(options, opts.TASK_OPTIONS, "remote functions")
        #: Ray's default for a generator function is a streaming generator task
        self._is_generator = inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function)
        opts.check_num_returns(self._options.get("num_returns"), self._is_generator)
        # Ray's function descriptor: module and __name__, without the `<locals>` path of a
        # function defined inside another (get_task_function_name(), the state API).
        self._func_name = f"{function.__module__}.{getattr(function, '__name__', 'remote_function')}"
        self._blob: Optional[bytes] = None
        self._static: Optional[_StaticOptions] = None
        self._function_id = b""
        self._lock = threading.Lock()
        self._check: Optional[signatures.ArgumentCheck] = None
        self._checked = False  #: _check was looked up (at the first call: decorating stays cheap)
        self.__doc__ = function.__doc__
        self.__name__ = getattr(function, "__name__", "remote_function")
        self.__qualname__ = getattr(function, "__qualname__", self.__name__)
        self.__module__ = function.__module__

    def __getstate__(self) -> dict:
        return {"function": self._function, "options": self._options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["function"], state["options"])  # type: ignore[misc]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running '{self._func_name}()', "
            f"try '{self._func_name}.remote()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        if self._static is None:
            self._static = _StaticOptions(self._options, self.__name__)
        return self._submit(args, kwargs, self._static)

    def options(self, **options: Any) -> "_BoundOptions":
        return _BoundOptions(self, {**self._options, **_validate_call_options(options, self._is_generator)})

    def _remote(self, args: Optional[tuple] = None, kwargs: Optional[dict] = None, **options: Any) -> Any:
        """Ray's spelling of `.options(**options).remote(*args, **kwargs)`."""
        return self.options(**options).remote(*(args or ()), **(kwargs or {}))

    def _pickled(self) -> Tuple[bytes, bytes]:
        if self._blob is None:
            with self._lock:
                if self._blob is None:
                    self._function_id, self._blob = pickle_definition(
                        self._function, f"remote function {self._func_name}")
        return self._function_id, self._blob  # type: ignore[return-value]

    def _submit(self, args: tuple, kwargs: dict, static: "_StaticOptions") -> Any:
        if not self._checked:
            self._check = signatures.check_for(signatures.params_of(self._function))
            self._checked = True
        if self._check is not None:
            self._check.check(args, kwargs, f"{self.__name__}.remote()")
        client = context.client()
        function_id, blob = self._pickled()
        args_blob, arg_refs, borrowed, keep_alive = _serialize_args(client, args, kwargs, self._func_name)
        num_returns = static.num_returns
        if num_returns is None:
            num_returns = STREAMING if self._is_generator else 1
        strategy, resources = static.strategy, static.resources
        if static.capture and client.current_placement_group is not None:
            grouped = placement.captured(client, static.name or self.__name__, resources)
            if grouped is not None:
                strategy, resources = grouped
        spec = TaskSpec(
            task_id=new_task_id(),
            name=static.name or self.__name__,
            func_name=self._func_name,
            function_id=function_id,
            args=args_blob,
            arg_refs=arg_refs,
            borrowed=borrowed,
            num_returns=num_returns,
            resources=resources,
            max_retries=client.default_max_retries if static.max_retries is None else static.max_retries,
            retry_exceptions=static.retry_exceptions,
            max_calls=static.max_calls,
            strategy=strategy,
            parent_task_id=client.current_task_id,
            owner=client.worker_id,
            args_size=len(args_blob),
            runtime_env=client.env_for_child(static.runtime_env),
            label_selector=static.label_selector,
            task_events=static.task_events,
            backpressure=static.backpressure,
        )
        refs = client.submit(spec, blob)
        del keep_alive  # put() refs of large arguments: pinned by the head from submission on
        return returned_refs(refs, num_returns)


class _StaticOptions:
    """A task's options resolved once per options set, not once per call."""

    __slots__ = ("num_returns", "name", "resources", "max_retries", "retry_exceptions", "max_calls", "strategy",
                 "runtime_env", "label_selector", "backpressure", "capture", "task_events")

    def __init__(self, options: Dict[str, Any], function_name: str) -> None:
        self.num_returns = num_returns_code(options.get("num_returns"))  #: None: by the function's kind
        self.backpressure = options.get("_generator_backpressure_num_objects", -1)
        self.name = options.get("name")
        self.resources = resources_of(options)
        self.max_retries = options.get("max_retries")
        retry_exceptions = options.get("retry_exceptions", False)
        if isinstance(retry_exceptions, (list, tuple)):
            retry_exceptions = dumps_function(tuple(retry_exceptions), "retry_exceptions")
        self.retry_exceptions = retry_exceptions
        self.max_calls = options.get("max_calls", 0)
        self.strategy = strategy_of(options.get("scheduling_strategy"))
        self.runtime_env = runtime_envs.check(options.get("runtime_env"), at_job=False)
        self.label_selector = labels.alternatives(options.get("label_selector"), options.get("fallback_strategy"))
        self.task_events = options.get("enable_task_events", True)
        #: whether a call joins the calling task's placement group when that task captures its children
        self.capture = placement.may_capture(options)
        grouped = placement.explicit_in_group(self.name or function_name, options, self.resources)
        if grouped is not None:
            self.strategy, self.resources = grouped


class _BoundOptions:
    """`f.options(...)`: the same function with other options, ready for `.remote()`."""

    def __init__(self, function: RemoteFunction, options: Dict[str, Any]) -> None:
        self._function = function
        self._options = options
        self._static = _StaticOptions(options, function.__name__)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._function._submit(args, kwargs, self._static)

    def options(self, **options: Any) -> "_BoundOptions":
        return _BoundOptions(self._function, {**self._options,
                                              **_validate_call_options(options, self._function._is_generator)})


def _validate_call_options(options: Dict[str, Any], is_generator: bool) -> Dict[str, Any]:
    fixed = sorted(opts.DECLARATION_ONLY & set(options))
    if fixed:
        raise ValueError(
            f"The option {fixed[0]!r} can only be set in @remote(...), not in .options(): "
            "it applies to the workers that run the function, not to one call"
        )
    validated = opts.validate(options, opts.TASK_OPTIONS, "remote functions")
    opts.check_num_returns(validated.get("num_returns"), is_generator)
    return validated


def num_returns_code(num_returns: Any) -> Optional[int]:
    """num_returns as a TaskSpec holds it: generator modes as task_spec's codes."""
    if num_returns == "streaming":
        return STREAMING
    if num_returns == "dynamic":
        return DYNAMIC
    return num_returns


def returned_refs(refs: List[ObjectRef], num_returns: int) -> Any:
    """What `.remote()` returns: one ref, None, a list, or a streaming task's ObjectRefGenerator."""
    if num_returns == 1 or num_returns == DYNAMIC:
        return refs[0]
    if num_returns == 0:
        return None
    if num_returns == STREAMING:
        return ObjectRefGenerator(refs[0])
    return refs


def _serialize_args(client: Any, args: tuple, kwargs: dict, func_name: str) -> Tuple[bytes, tuple, tuple, list]:
    """Pickle the arguments; large values go to the object store first, as in Ray.

    The blob holds (args, kwargs, slots): each top-level ref leaves None in its place
    and its (position, object id) in the flat tuple `slots`; the worker puts the
    value there (the task pins the object meanwhile, so the worker never holds a ref
    to it, and the blob stays builtins, which the C pickler handles fast). Refs
    nested inside arguments stay ObjectRefs. Returns (blob, top-level ref ids,
    nested ref ids, refs to keep alive until submitted).
    """
    keep_alive: List[ObjectRef] = []
    slots: List[Any] = []
    args, kwargs = _lift_refs(args, kwargs, slots)
    serialized = serialize((args, kwargs, tuple(slots)), what=f"arguments of {func_name}")
    if serialized.size > config.INLINE_THRESHOLD:
        args = tuple([_maybe_put(client, a, keep_alive, func_name) for a in args])
        kwargs = {k: _maybe_put(client, v, keep_alive, func_name) for k, v in kwargs.items()}
        args, kwargs = _lift_refs(args, kwargs, slots)
        serialized = serialize((args, kwargs, tuple(slots)), what=f"arguments of {func_name}")
    return serialized.to_bytes(), tuple(slots[1::2]), tuple(serialized.refs), keep_alive


def _lift_refs(args: tuple, kwargs: dict, slots: List[Any]) -> Tuple[tuple, dict]:
    """Move the top-level refs out of args and kwargs into `slots` (position, object id, ...)."""
    if ObjectRef in map(type, args):  # (not any(<generator>): this runs on every submit)
        lifted = list(args)
        for index, value in enumerate(args):
            if type(value) is ObjectRef:
                lifted[index] = None
                slots += (index, value._id)
        args = tuple(lifted)
    if kwargs and ObjectRef in map(type, kwargs.values()):
        kwargs = dict(kwargs)
        for key, value in kwargs.items():
            if type(value) is ObjectRef:
                kwargs[key] = None
                slots += (key, value._id)
    return args, kwargs


def _maybe_put(client: Any, value: Any, keep_alive: List[ObjectRef], func_name: str) -> Any:
    serialized = serialize(value, what=f"an argument of {func_name}")
    if serialized.size <= config.INLINE_THRESHOLD:
        return value
    ref = client.put_serialized(serialized)  # (pickled once: its buffers are the caller's, not copies)
    keep_alive.append(ref)
    return ref
