"""Actors: `@remote` classes, their handles and method calls.

Runs in whichever process creates or calls an actor (the driver, or a worker
holding a handle). Creating an actor submits an ACTOR_CREATION_TASK; the head
(actor_flow.py) places it like a task and then dedicates the worker that ran
it to the actor. Each method call is an ACTOR_TASK the head sends to that
worker, in each caller's submission order. A handle pickles to (actor id,
class metadata, a ref to the creation task's result), so it can be passed to
tasks and other actors and used from there; that ref, counted like any other,
keeps a non-detached actor alive (handles from get_actor hold none, as in Ray).
"""

from __future__ import annotations

import inspect
import threading
from typing import Any, Dict, List, Optional, Tuple

from minicluster._private.client import context
from minicluster._private.client.object_ref import ObjectRef
from minicluster._private.common import labels, placement, runtime_envs, signatures
from minicluster._private.common import options as opts
from minicluster._private.common.ids import ActorID, new_actor_id, new_task_id
from minicluster._private.common.task_spec import (
    ACTOR_CREATION_TASK,
    ACTOR_TASK,
    DEFAULT_STRATEGY,
    TaskSpec,
    resources_of,
    strategy_of,
)
from minicluster._private.store.serialization import dumps_function, pickle_definition
from minicluster.exceptions import AsyncioActorExit
from minicluster.remote_function import _serialize_args, num_returns_code, returned_refs


class ActorClassMeta:
    """What a handle needs to know about its class: name, methods and their options."""

    def __init__(self, cls: type) -> None:
        self.class_name = cls.__qualname__  #: as Ray's handle repr and list_actors show it
        self.short_name = cls.__name__  #: what task names start with: "Counter.incr", as Ray
        self.module = cls.__module__
        self.methods: Dict[str, Dict[str, Any]] = {}
        #: each method's parameters as the caller passes them (without self or cls), checked at .remote()
        self.signatures: Dict[str, Optional[signatures.Params]] = {}
        self.constructor = signatures.params_of(cls)
        self.is_async = False
        #: method -> its `__ray_invocation_decorator__` (Ray's hook around `.remote()`)
        self.invocation_decorators: Dict[str, Any] = {}
        for name, member in inspect.getmembers(cls, predicate=callable):
            if name.startswith("__") and name != "__call__":
                continue
            self.methods[name] = method_options = dict(getattr(member, "__minicluster_method_options__", {}))
            is_generator = inspect.isgeneratorfunction(member) or inspect.isasyncgenfunction(member)
            opts.check_num_returns(method_options.get("num_returns"), is_generator)
            if is_generator and "num_returns" not in method_options:
                method_options["num_returns"] = "streaming"  # Ray's default for a method that yields
            bound_by_class = isinstance(inspect.getattr_static(cls, name, None), (staticmethod, classmethod))
            self.signatures[name] = signatures.params_of(member, drop_first=not bound_by_class)
            decorator = getattr(member, "__ray_invocation_decorator__", None)
            if decorator is not None:
                self.invocation_decorators[name] = decorator
            if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
                self.is_async = True
        # get_task_function_name() as Ray gives it: module.Class.method, but an async
        # actor's keeps the class's qualified name (Ray loads those by another path).
        self.function_prefix = f"{self.module}.{self.class_name if self.is_async else self.short_name}"


class ActorClassInheritanceException(TypeError):
    """A class statement tried to subclass an actor class (Ray's exception)."""


class ActorClass:
    """A class declared with `@remote`; `.remote(...)` creates an actor and returns its handle.

    Made by `make_actor_class`. As in Ray, its type derives from the user's class too
    ("ActorClass(Name)"), so class attributes, static and class methods and the MRO are
    there; and it has no __init__ of its own, so a class method calling `cls(...)` builds
    a plain local instance, as in Ray.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # `class Derived(SomeActorClass)` calls the actor class's type with (name, bases,
        # namespace): refused as in Ray. Any other call (a class method's `cls(...)`) makes
        # a plain instance, through the user's own __new__ if it has one.
        if len(args) == 3 and isinstance(args[1], tuple) and any(isinstance(b, ActorClass) for b in args[1]):
            base = next(b for b in args[1] if isinstance(b, ActorClass))
            raise ActorClassInheritanceException(
                f"Attempted to define subclass '{args[0]}' of actor class '{base.__name__}'. Inheriting from "
                "actor classes is not currently supported. You can instead inherit from a non-actor base "
                "class and make the derived class an actor class (with @ray.remote).")
        base_new = super().__new__
        return base_new(cls) if base_new is object.__new__ else base_new(cls, *args, **kwargs)

    def _setup(self, cls: type, options: Dict[str, Any]) -> None:
        self._cls = cls
        self._options = options
        self._meta_cache: Optional[ActorClassMeta] = None
        self._blob: Optional[bytes] = None
        self._class_id = b""
        self._lock = threading.Lock()
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__
        self.__doc__ = cls.__doc__

    @property
    def _meta(self) -> ActorClassMeta:
        # Read on first use, not in _setup: a class that refers to itself is unpickled in
        # two steps, and make_actor_class runs before its methods are filled in.
        if self._meta_cache is None:
            self._meta_cache = ActorClassMeta(self._cls)
        return self._meta_cache

    @property
    def __ray_metadata__(self) -> ActorClassMeta:
        """Ray's name for the class's metadata; its `class_name` is the one list_actors shows."""
        return self._meta

    def __reduce__(self) -> tuple:
        # Rebuilt from the user's class: the derived type is made afresh where it is loaded.
        return (make_actor_class, (self._cls, self._options))

    def __reduce_ex__(self, protocol: Any) -> tuple:  # (before any the user's class defines)
        return self.__reduce__()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actors cannot be instantiated directly. Instead of '{self.__qualname__}()', "
            f"use '{self.__qualname__}.remote()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        return self._create(args, kwargs, self._options)

    def _remote(self, args: Optional[tuple] = None, kwargs: Optional[dict] = None, **options: Any) -> "ActorHandle":
        """Ray's spelling of `.options(**options).remote(*args, **kwargs)`."""
        return self.options(**options).remote(*(args or ()), **(kwargs or {}))

    def options(self, **options: Any) -> "_ActorOptions":
        if "concurrency_groups" in options:
            raise ValueError("Setting 'concurrency_groups' is not supported in '.options()'.")
        validated = opts.validate(options, opts.ACTOR_OPTIONS, "actors")
        return _ActorOptions(self, _check_name_given({**self._options, **validated}))

    def _pickled(self) -> Tuple[bytes, bytes]:
        if self._blob is None:
            with self._lock:
                if self._blob is None:
                    self._class_id, self._blob = pickle_definition(self._cls, f"actor {self._cls.__name__}")
        return self._class_id, self._blob  # type: ignore[return-value]

    def _create(self, args: tuple, kwargs: dict, options: Dict[str, Any]) -> "ActorHandle":
        check = signatures.check_for(self._meta.constructor)
        if check is not None:
            check.check(args, kwargs, f"{self.__name__}.remote()")
        client = context.client()
        name = options.get("name")
        namespace = options.get("namespace") or client.namespace  # (None in a worker: the head fills it in)
        get_if_exists = bool(name is not None and options.get("get_if_exists"))
        class_id, blob = self._pickled()
        actor_id = new_actor_id()
        args_blob, arg_refs, borrowed, keep_alive = _serialize_args(client, args, kwargs, self.__qualname__)
        # Ray's rule: an actor without num_cpus needs 1 CPU to be placed but holds none while it lives.
        resources = resources_of(options, default_cpus=1.0)
        strategy = strategy_of(options.get("scheduling_strategy"))
        grouped = placement.explicit_in_group(self._meta.short_name, options, resources)
        if grouped is None and placement.may_capture(options) and client.current_placement_group is not None:
            grouped = placement.captured(client, self._meta.short_name, resources)
        if grouped is not None:
            strategy, resources = grouped
        spec = TaskSpec(
            task_id=new_task_id(actor_id),
            name=f"{self._meta.short_name}.__init__",
            func_name=f"{self._meta.function_prefix}.__init__",
            function_id=class_id,
            args=args_blob,
            arg_refs=arg_refs,
            borrowed=borrowed,
            num_returns=1,
            resources=resources,
            max_retries=0,
            retry_exceptions=False,
            max_calls=0,
            strategy=strategy,
            parent_task_id=client.current_task_id,
            owner=client.worker_id,
            task_type=ACTOR_CREATION_TASK,
            actor_id=actor_id,
            args_size=len(args_blob),
            runtime_env=client.env_for_child(runtime_envs.check(options.get("runtime_env"), at_job=False)),
            label_selector=labels.alternatives(options.get("label_selector"), options.get("fallback_strategy")),
            task_events=options.get("enable_task_events", True),
        )
        max_concurrency = options.get("max_concurrency", 1000 if self._meta.is_async else 1)
        groups = dict(options.get("concurrency_groups") or {})
        meta = {
            "class_name": self._meta.class_name,
            "short_name": self._meta.short_name,
            "function_prefix": self._meta.function_prefix,
            "module": self._meta.module,
            "name": name,
            "namespace": namespace,
            "max_restarts": options.get("max_restarts", 0),
            "max_task_retries": options.get("max_task_retries", 0),
            "max_concurrency": max_concurrency,
            "concurrency_groups": _check_groups(self._meta, groups),
            "max_pending_calls": options.get("max_pending_calls", -1),
            "allow_out_of_order": _out_of_order(options.get("allow_out_of_order_execution"),
                                                self._meta.is_async, max_concurrency),
            "is_async": self._meta.is_async,
            # None: the job's default_actor_lifetime (JobConfig), which the head applies
            "detached": _LIFETIMES.get(options.get("lifetime")),
            "holds_cpus": _holds_cpus(options),
            "task_events": options.get("enable_task_events", True),  # its methods' default, as Ray's
            "methods": self._meta.methods,
            "signatures": self._meta.signatures,
            "invocation_decorators": self._meta.invocation_decorators,
        }
        # The handle holds a ref to the creation task's result: the actor lives while some
        # process holds one (Ray's reference counting of actor handles; head actor_flow.py).
        existing, handle_ref = client.create_actor(spec, blob, meta, get_if_exists)
        del keep_alive
        if existing is not None:
            return ActorHandle(*existing)
        return ActorHandle(actor_id, meta, handle_ref)


_LIFETIMES = {"detached": True, "non_detached": False, None: None}


def _holds_cpus(options: Dict[str, Any]) -> bool:
    """Ray's rule: an actor that asks for nothing (or only memory) is placed with 1 CPU and holds
    none while it lives; one that asks for any CPUs, GPUs, accelerator type or custom resource
    holds them all, with 1 CPU unless num_cpus says otherwise, until it dies."""
    return any(options.get(key) is not None for key in ("num_cpus", "num_gpus", "accelerator_type")) or bool(
        options.get("resources"))


def _check_groups(meta: ActorClassMeta, groups: Dict[str, int]) -> Dict[str, int]:
    """The actor's concurrency groups; every `@method(concurrency_group=...)` must name one."""
    for method, method_options in meta.methods.items():
        group = method_options.get("concurrency_group")
        if group is not None and group not in groups:
            raise ValueError(
                f"The method {meta.class_name}.{method} is in concurrency group {group!r}, which the actor "
                f"does not define: declare it in @remote(concurrency_groups={{{group!r}: <max concurrency>, ...}}) "
                f"(defined: {sorted(groups)})")
    return groups


def _out_of_order(allowed: Optional[bool], is_async: bool, max_concurrency: int) -> bool:
    """Ray's allow_out_of_order_execution: by default an async or threaded actor's calls may
    start out of submission order (each as soon as its arguments are ready), and such an
    actor cannot promise order; a plain actor keeps each caller's order unless allowed."""
    if allowed is None:
        return is_async or max_concurrency > 1
    if is_async and not allowed:
        raise ValueError("If you're using async actors, Ray can't execute actor tasks in order. Set "
                         "`allow_out_of_order_execution=True` to allow out-of-order execution.")
    if max_concurrency > 1 and not allowed:
        raise ValueError("If you're using multi-threaded actors, Ray can't execute actor tasks in order. Set "
                         "`allow_out_of_order_execution=True` to allow out-of-order execution.")
    return allowed


def _check_name_given(options: Dict[str, Any]) -> Dict[str, Any]:
    if options.get("get_if_exists") and options.get("name") is None:
        raise ValueError("The actor name must be specified to use `get_if_exists`.")
    return options


def make_actor_class(cls: type, options: Dict[str, Any]) -> ActorClass:
    """`@remote` on a class: its ActorClass, whose type derives from both ActorClass and `cls`."""
    validated = _check_name_given(opts.validate(options, opts.ACTOR_OPTIONS, "actors"))
    try:
        derived = type(f"ActorClass({cls.__name__})", (ActorClass, cls),
                       {"__module__": cls.__module__, "__doc__": cls.__doc__})
        actor_class = object.__new__(derived)
    except TypeError:
        # A metaclass, __slots__ or builtin base the two cannot share: the plain ActorClass
        # (its attributes then come only through .remote() actors).
        actor_class = object.__new__(ActorClass)
    actor_class._setup(cls, validated)
    return actor_class


class _ActorOptions:
    def __init__(self, actor_class: ActorClass, options: Dict[str, Any]) -> None:
        self._actor_class = actor_class
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        return self._actor_class._create(args, kwargs, self._options)


class ActorHandle:
    """A reference to a live actor; `handle.method.remote(...)` calls a method."""

    def __init__(self, actor_id: bytes, meta: Dict[str, Any], ref: Optional[ObjectRef] = None) -> None:
        self._actor_id = actor_id
        self._meta = meta
        # A ref to the actor's creation result, held by handles that keep the actor alive
        # (made by .remote() and copied from one); None for get_actor's handles (as in Ray).
        self._ref = ref
        self._checks: Dict[str, Optional[signatures.ArgumentCheck]] = {}  #: by method, made at first call
        #: by method, made at its first call without .options() (not the ActorMethod itself: it
        #: points back at the handle, and the cycle would keep a dropped actor alive until a gc pass)
        self._statics: Dict[str, _CallStatic] = {}

    def _check_call(self, method: str, args: tuple, kwargs: dict) -> None:
        checks = self._checks
        if method in checks:
            check = checks[method]
        else:
            check = checks[method] = signatures.check_for(self._meta.get("signatures", {}).get(method))
        if check is not None:
            check.check(args, kwargs, f"{method}.remote()")

    def __reduce__(self) -> tuple:
        # The ref is pickled with the handle: a task or object holding the handle holds it.
        return (ActorHandle, (self._actor_id, self._meta, self._ref))

    def __getattr__(self, name: str) -> "ActorMethod":
        methods = self.__dict__.get("_meta", {}).get("methods", {})
        if name in methods or name in _BUILTIN_METHODS:
            return ActorMethod(self, name, methods.get(name, {}), self._statics)
        raise AttributeError(
            f"'{self.__dict__.get('_meta', {}).get('class_name', 'Actor')}' actor has no method {name!r}"
        )

    @property
    def _ray_actor_id(self) -> ActorID:
        return ActorID(self._actor_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __repr__(self) -> str:
        return f"Actor({self._meta['class_name']}, {self._actor_id.hex()})"


#: Methods every actor has (Ray's): __ray_ready__ returns True once it is constructed;
#: __ray_terminate__, queued behind the calls before it, ends the actor as exit_actor() does;
#: __ray_call__(fn, *args, **kwargs) returns fn(the actor's instance, *args, **kwargs).
_BUILTIN_METHODS = ("__ray_ready__", "__ray_terminate__", "__ray_call__")


class ActorMethod:
    """`handle.method`: call it with `.remote(...)`, or `.options(num_returns=...)` first."""

    def __init__(self, handle: ActorHandle, name: str, options: Dict[str, Any],
                 shared: Optional[Dict[str, "_CallStatic"]] = None) -> None:
        self._handle = handle
        self._name = name
        self._options = options
        #: what its calls share, made at the first call; kept in `shared` (the handle's, for a
        #: method without .options()) across the ActorMethods `handle.f` makes
        self._shared = shared
        self._static: Optional[_CallStatic] = shared.get(name) if shared is not None else None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of '{self._name}()', try '{self._name}.remote()'."
        )

    def _remote(self, args: Optional[tuple] = None, kwargs: Optional[dict] = None, **options: Any) -> Any:
        """Ray's spelling of `.options(**options).remote(*args, **kwargs)`."""
        return self.options(**options).remote(*(args or ()), **(kwargs or {}))

    def options(self, **options: Any) -> "ActorMethod":
        validated = opts.validate(options, opts.METHOD_OPTIONS, "actor methods")
        return ActorMethod(self._handle, self._name, {**self._options, **validated})

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        if self._static is None:
            self._static = _CallStatic(self._handle._meta, self._name, self._options)
            if self._shared is not None:
                self._shared[self._name] = self._static
        decorator = self._static.decorator
        if decorator is not None:
            # Ray's hook: the method's __ray_invocation_decorator__ wraps the call itself
            # (it may change the arguments, and return more than the call's refs).
            return decorator(self._invoke)(list(args), kwargs)
        return self._invoke(args, kwargs)

    def _invoke(self, args: Any, kwargs: Dict[str, Any]) -> Any:
        client = context.client()
        handle = self._handle
        handle._check_call(self._name, args, kwargs)
        static = self._static  # (set by remote(), the only caller, also through a decorator)
        assert static is not None
        if static.group_error is not None:
            raise ValueError(static.group_error)
        args_blob, arg_refs, borrowed, keep_alive = _serialize_args(client, args, kwargs, self._name)
        num_returns = static.num_returns
        spec = TaskSpec(
            task_id=new_task_id(handle._actor_id),
            name=static.name,
            func_name=static.func_name,
            function_id=b"",
            args=args_blob,
            arg_refs=arg_refs,
            borrowed=borrowed,
            num_returns=num_returns,
            resources={},
            max_retries=static.max_task_retries,
            retry_exceptions=static.retry_exceptions,
            max_calls=0,
            strategy=DEFAULT_STRATEGY,
            parent_task_id=client.current_task_id,
            owner=client.worker_id,
            task_type=ACTOR_TASK,
            actor_id=handle._actor_id,
            args_size=len(args_blob),
            method=self._name,
            task_events=static.task_events,
            concurrency_group=static.group,
            backpressure=static.backpressure,
        )
        limit = handle._meta["max_pending_calls"]
        if limit > 0:
            client.pending_calls.admit(
                handle._actor_id, spec.task_id, limit, lambda ids: client.state("open_tasks", ids),
                lambda: f"The task {self._name} could not be submitted to {handle!r} because more than {limit} "
                        "tasks are queued on the actor. This limit can be adjusted with the `max_pending_calls` "
                        "actor option.")
        refs = client.submit(spec, None)
        del keep_alive
        return returned_refs(refs, num_returns)


class _CallStatic:
    """What every call of one actor method with one set of options shares: worked out at its
    first call, not at every call (kept per handle for calls without .options(): ActorHandle._statics)."""

    __slots__ = ("decorator", "group", "group_error", "num_returns", "max_task_retries", "retry_exceptions",
                 "name", "func_name", "task_events", "backpressure")

    def __init__(self, meta: Dict[str, Any], method: str, options: Dict[str, Any]) -> None:
        self.decorator = meta.get("invocation_decorators", {}).get(method)
        self.group = options.get("concurrency_group") or ""
        self.group_error: Optional[str] = None
        if self.group and self.group not in meta["concurrency_groups"]:
            # (Ray's actor crashes on such a call: "Failed to look up the executor of the given
            # concurrency group"; refused here, before anything is submitted)
            self.group_error = (
                f"Failed to look up the executor of the given concurrency group {self.group!r} for "
                f"{meta['class_name']}.{method}: the actor does not define it (its groups: "
                f"{sorted(meta['concurrency_groups'])}); declare it in @remote(concurrency_groups=...)")
        self.num_returns = num_returns_code(options.get("num_returns", 1))
        self.max_task_retries = options.get("max_task_retries", meta["max_task_retries"])
        retry_exceptions = options.get("retry_exceptions", False)
        if isinstance(retry_exceptions, (list, tuple)):
            retry_exceptions = dumps_function(tuple(retry_exceptions), "retry_exceptions")
        self.retry_exceptions = retry_exceptions
        self.name = options.get("name") or f"{meta['short_name']}.{method}"
        self.func_name = f"{meta['function_prefix']}.{method}"
        self.task_events = options.get("enable_task_events", meta.get("task_events", True))
        self.backpressure = options.get("_generator_backpressure_num_objects", -1)


def exit_actor() -> None:
    """Inside an actor's method: end the actor on purpose. The call raises here; its caller
    and the calls queued behind it get ActorDiedError; the actor is not restarted; its
    atexit handlers run (as in Ray)."""
    client = context.current()
    if client is None or not context.in_worker() or client.current_actor_id is None:
        raise TypeError("exit_actor API is called on a non-actor worker: call it inside an actor's "
                        "method to end the actor; use kill(handle) to end an actor from outside")
    client.actor_exit_requested = True  # the actor exits even if its code catches the exception
    if client.actor_exit_hook is not None:
        client.actor_exit_hook(client.current_task_id)  # even from a background asyncio task
    raise AsyncioActorExit("exit_actor() is called.")


def method_names(handle: ActorHandle) -> List[str]:
    return sorted(handle._meta["methods"])
