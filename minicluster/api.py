"""The public functions of `import minicluster as ray`, with Ray's names and signatures.

Runs in the driver and in workers alike: each call finds this process's
runtime client (_private/client/context.py) and validates its input before anything happens,
so bad input fails fast with a message naming the problem and changes nothing.
"""

from __future__ import annotations

import atexit
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from minicluster._private.client import clusters, context
from minicluster._private.common import config, system_config
from minicluster._private.common import options as opts
from minicluster._private.observe.timeline import write_trace
from minicluster.actor import ActorHandle, make_actor_class
from minicluster.exceptions import RayError
from minicluster.job_config import JobConfig
from minicluster.object_ref import ObjectRef, ObjectRefGenerator
from minicluster.remote_function import RemoteFunction
from minicluster.runtime_context import RuntimeContext, get_runtime_context  # noqa: F401 - re-exported

_init_lock = context.init_lock


# ==== init / shutdown ====================================================================


class RayContext(Mapping):
    """What `init()` returns, as Ray's: `ctx.address_info` (a dict with Ray's keys: "address",
    "session_dir", "node_id", ...), `ctx["address"]` (deprecated in Ray, so it warns),
    `ctx.dashboard_url`, and a context manager whose exit shuts the session down."""

    def __init__(self, address_info: Dict[str, Any]) -> None:
        self.address_info = address_info
        self.dashboard_url: Optional[str] = None  # minicluster has no dashboard
        self.python_version = "{}.{}.{}".format(*sys.version_info[:3])
        self.ray_version = sys.modules["minicluster"].__version__
        self.ray_commit = ""

    def __getitem__(self, key: str) -> Any:
        warnings.warn(f'Accessing values through ctx["{key}"] is deprecated. '
                      f'Use ctx.address_info["{key}"] instead.', DeprecationWarning, stacklevel=2)
        return self.address_info[key]

    def __len__(self) -> int:
        return len(self.address_info)

    def __iter__(self) -> Any:
        return iter(self.address_info)

    def __repr__(self) -> str:
        return f"RayContext(address={self.address_info.get('address')!r})"

    def __enter__(self) -> "RayContext":
        return self

    def __exit__(self, *exc: Any) -> None:
        shutdown()

    def disconnect(self) -> None:
        shutdown()


# Ray's init() arguments taken beyond the named ones. Most change nothing here: there is no
# dashboard, logging setup or metrics port, and the node's address is always this machine's.
# _memory (the nodes' "memory" resource), _enable_object_reconstruction and _system_config
# (common/system_config.py) are honoured. Any other argument is refused (TypeError), and so
# are values of these that would ask for something minicluster does not do (_refuse_harmful);
# one of _NO_EFFECT given a value other than Ray's default warns once, saying why (_warn_no_effect).
_HARMLESS_ARGS = frozenset({
    "include_dashboard", "dashboard_host", "dashboard_port", "configure_logging", "logging_level",
    "logging_format", "logging_config", "local_mode", "enable_resource_isolation", "_system_config",
    "_metrics_export_port", "_node_ip_address", "_node_name", "_skip_env_hook", "_memory",
    "_tracing_startup_hook", "_enable_object_reconstruction", "_plasma_directory",
})


# init() arguments with no effect here -> (Ray's default values, which say nothing; why the argument does nothing).
_NO_EFFECT: Dict[str, Tuple[Any, str]] = {
    "include_dashboard": (None, "there is no dashboard (`minicluster status`, `minicluster top` and the state API "
                                "show the session)"),
    "dashboard_host": (("127.0.0.1", "localhost"), "there is no dashboard"),
    "dashboard_port": (None, "there is no dashboard"),
    "_metrics_export_port": (None, "minicluster exports no metrics"),
    "configure_logging": (True, "minicluster sets up no loggers: its few messages go to stderr"),
    "logging_level": ((20, "info", "INFO"), "minicluster sets up no loggers: its few messages go to stderr"),
    "logging_format": (None, "minicluster sets up no loggers: its few messages go to stderr"),
    "logging_config": (None, "minicluster sets up no loggers: its few messages go to stderr"),
    "_node_name": (None, "virtual nodes are named node-0, node-1, ... (list_nodes' node_name)"),
    "_skip_env_hook": (False, "minicluster runs no RAY_RUNTIME_ENV_HOOK"),
}
_warned_args: set = set()


def _warn_no_effect(extra: Dict[str, Any]) -> None:
    """Warn once per argument given a value that asks for something minicluster does not do."""
    for name, value in extra.items():
        quiet, why = _NO_EFFECT.get(name, ((value,), ""))
        if value is None or value is False or value in (quiet if isinstance(quiet, tuple) else (quiet,)) \
                or name in _warned_args:
            continue  # (False asks for nothing: no dashboard, no logging setup, as here)
        _warned_args.add(name)
        warnings.warn(f"init({name}={value!r}) has no effect in minicluster: {why}", UserWarning, stacklevel=3)


def _refuse_harmful(extra: Dict[str, Any], connecting: bool) -> None:
    """Refuse arguments that would be harmful to ignore, each with the reason."""
    unknown = sorted(set(extra) - _HARMLESS_ARGS)
    if unknown:
        raise TypeError(f"init() got an unexpected keyword argument {unknown[0]!r} (minicluster takes "
                        f"Ray's init arguments but not this one)")
    if extra.get("local_mode"):
        raise ValueError("init(local_mode=True): minicluster has no local mode; tasks always run in "
                         "worker processes")
    if extra.get("_node_ip_address") not in (None, "127.0.0.1", "localhost"):
        raise ValueError(f"init(_node_ip_address={extra['_node_ip_address']!r}): minicluster runs on this "
                         "machine only (127.0.0.1)")
    if extra.get("enable_resource_isolation"):
        raise ValueError("init(enable_resource_isolation=True): minicluster does not isolate resources "
                         "with cgroups")
    for fixed in ("_system_config", "_enable_object_reconstruction", "_memory"):
        if extra.get(fixed) is not None and connecting:  # as Ray: fixed when the cluster starts
            raise ValueError(f"When connecting to an existing cluster, {fixed} must not be provided.")
    if extra.get("_tracing_startup_hook") is not None:
        raise ValueError("init(_tracing_startup_hook=...): minicluster has no tracing (OpenTelemetry) support")
    if extra.get("_plasma_directory") is not None:
        raise ValueError("init(_plasma_directory=...): minicluster's object store is always in /dev/shm "
                         "(MINICLUSTER_SHM_DIR moves it)")


def init(
    address: Optional[str] = None,
    *,
    num_cpus: Optional[float] = None,
    num_gpus: Optional[float] = None,
    num_nodes: Optional[int] = None,
    resources: Optional[Dict[str, float]] = None,
    labels: Optional[Dict[str, str]] = None,
    object_store_memory: Optional[int] = None,
    ignore_reinit_error: bool = False,
    namespace: Optional[str] = None,
    log_to_driver: bool = True,
    runtime_env: Optional[dict] = None,
    job_config: Optional[JobConfig] = None,
    **kwargs: Any,
) -> RayContext:
    """Start a session of `num_nodes` virtual nodes (default 1), each with `num_cpus` CPUs, `resources` and
    `labels`; or, with `address`, join a Cluster of this process ("auto": the running one).

    `num_cpus` defaults to this machine's cores divided among the nodes (at least 1 each).
    `job_config` (minicluster.job_config.JobConfig): the job's namespace and default actor lifetime.
    """
    config.check_platform()  # first: elsewhere the imports below fail on their own, less clearly
    if address is None and not context.in_worker():
        # As Ray: without an address, init() joins the cluster started last, if one runs (here:
        # the Cluster of this process that has nodes), else starts one. "local" always starts one.
        address = clusters.only_address()
    connecting = address not in (None, "local")
    _refuse_harmful(kwargs, connecting)
    _warn_no_effect(kwargs)
    if runtime_env:
        # As Ray: the argument becomes the job's runtime_env (over the job_config's, if any).
        job_config = job_config if job_config is not None else JobConfig()
        if isinstance(job_config, JobConfig):  # (anything else is refused just below)
            job_config.set_runtime_env(runtime_env)
    if job_config is not None:
        if not isinstance(job_config, JobConfig):
            raise TypeError(f"init(job_config=...) must be a minicluster.job_config.JobConfig, got {job_config!r}")
        if namespace is not None and job_config.ray_namespace not in (None, namespace):
            raise ValueError(f"init(namespace={namespace!r}) and JobConfig(ray_namespace="
                             f"{job_config.ray_namespace!r}) disagree; give one of them")
        namespace = namespace or job_config.ray_namespace
    if address == "auto":
        address = _auto_address()
    if clusters.is_cluster_address(address):
        _refuse_node_arguments(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources, labels=labels,
                               object_store_memory=object_store_memory, num_nodes=num_nodes)
        with _init_lock:
            current = context.current()
            if current is not None and getattr(current, "address", None) == address:
                return _already_running(ignore_reinit_error)
            clusters.attach(address)
            context.current().set_namespace(namespace)  # each job its own settings
            context.current().set_job_config(job_config or JobConfig())
            atexit.register(_atexit_shutdown)
            return _context_info()
    if connecting:
        raise ValueError(
            f"init(address={address!r}): minicluster runs on this machine only; "
            "leave address unset (or switch the import back to ray to join a cluster)"
        )
    if context.in_worker():
        return _context_info()
    with _init_lock:
        if context.current() is not None:
            return _already_running(ignore_reinit_error)
        num_nodes = _check_int("num_nodes", 1 if num_nodes is None else num_nodes, minimum=1)
        if num_cpus is None:
            num_cpus = max(1, (os.cpu_count() or 1) // num_nodes)
        elif isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or num_cpus < 0:
            raise ValueError(f"init(num_cpus={num_cpus!r}): num_cpus must be a number >= 0")
        if resources is not None:
            if not isinstance(resources, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                for k, v in resources.items()
            ):
                raise ValueError(f"init(resources={resources!r}): must be a dict of name -> quantity >= 0")
            if "CPU" in resources or "GPU" in resources:
                raise ValueError("init(): use num_cpus/num_gpus instead of 'CPU'/'GPU' in resources")
        if labels is not None and not (isinstance(labels, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
            raise ValueError(f"init(labels={labels!r}): must be a dict of str -> str")
        resources = dict(resources or {})
        if num_gpus is not None:  # (else each node detects the machine's GPUs)
            if isinstance(num_gpus, bool) or not isinstance(num_gpus, (int, float)) or num_gpus < 0:
                raise ValueError(f"init(num_gpus={num_gpus!r}): num_gpus must be a number >= 0")
            resources["GPU"] = float(num_gpus)
        if kwargs.get("_memory"):
            resources["memory"] = float(kwargs["_memory"])  # Ray's memory resource of each node
        if object_store_memory is not None:
            object_store_memory = _check_int("object_store_memory", object_store_memory, minimum=1)
        # Not at the top: `import minicluster` in a worker must not load the head (startup time).
        from minicluster._private.client.driver import DriverClient

        settings = system_config.cluster_settings(
            "init", kwargs.get("_system_config"), kwargs.get("_enable_object_reconstruction"))
        client = DriverClient(num_nodes, num_cpus, resources, object_store_memory, namespace,
                              log_to_driver=bool(log_to_driver), labels=labels, settings=settings)
        if job_config is not None:
            client.set_job_config(job_config)
        context.set_client(client)
        atexit.register(_atexit_shutdown)
        return _context_info()


def _refuse_node_arguments(**given: Any) -> None:
    """As Ray: a session that is joined has its nodes already; init() may not describe them."""
    if given["num_cpus"] is not None or given["num_gpus"] is not None:
        raise ValueError("When connecting to an existing cluster, num_cpus and num_gpus must not be provided.")
    for name in ("resources", "labels", "object_store_memory", "num_nodes"):
        if given[name] is not None:
            raise ValueError(f"When connecting to an existing cluster, {name} must not be provided.")


def _auto_address() -> str:
    """What `init(address="auto")` joins: the one Cluster of this process, or its running session."""
    only = clusters.only_address()
    if only is not None:
        return only
    current = context.current()
    if current is not None:
        return current.address
    elsewhere = clusters.running_elsewhere()
    if elsewhere is not None:
        raise clusters.not_joinable(clusters.address_of(elsewhere))
    raise ConnectionError("Could not find any running Ray instance: init(address='auto') found no running "
                          "minicluster session of this user. Call init() without an address to start one.")


def _already_running(ignore_reinit_error: bool) -> RayContext:
    if ignore_reinit_error:
        print("minicluster: init() called again; ignoring (ignore_reinit_error=True)", file=sys.stderr)
        return _context_info()
    raise RuntimeError(
        "Maybe you called init twice by accident? This error can be suppressed by passing in "
        "'ignore_reinit_error=True' or by calling 'shutdown()' prior to 'init()'."
    )


def _context_info() -> RayContext:
    client = context.current()
    if context.in_worker():
        return RayContext({"node_id": client.node_id.hex(), "node_ip_address": "127.0.0.1"})
    session_dir = client.session.dir
    return RayContext({
        "node_ip_address": "127.0.0.1",
        "redis_address": None,
        "object_store_address": client.store_dir(),
        "raylet_socket_name": client.session.socket_path,
        "webui_url": None,
        "session_dir": session_dir,
        "metrics_export_port": None,
        "gcs_address": client.address,
        "address": client.address,
        "dashboard_agent_listen_port": None,
        "node_id": client.node_id.hex(),
    })


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"init({name}={value!r}): {name} must be an int >= {minimum}")
    return value


def shutdown() -> None:
    """Stop the session: kill every node's processes and remove its shared memory."""
    if context.in_worker():
        return
    with _init_lock:
        client = context.current()
        if client is None:
            return
        context.set_client(None)
        if getattr(client, "cluster_owned", False):
            return  # attached to a Cluster: disconnect only; Cluster.shutdown() stops it
        client.shutdown()


def _atexit_shutdown() -> None:
    try:
        shutdown()
    except Exception:  # noqa: BLE001 - never fail interpreter exit
        pass


def is_initialized() -> bool:
    return context.current() is not None


# ==== remote ===========================================================================


def remote(*args: Any, **kwargs: Any) -> Any:
    """Declare a remote function or actor class: `@remote` or `@remote(num_cpus=..., ...)`."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], {})
    if args or not kwargs:  # (`@remote()`, empty parentheses, is refused as in Ray)
        raise TypeError(
            "The @remote decorator takes either a function or class alone, with no parentheses, or "
            "keyword options: @remote or @remote(num_cpus=1, ...)"
        )

    def decorator(target: Any) -> Any:
        return _make_remote(target, kwargs)

    return decorator


def _make_remote(target: Any, options: Dict[str, Any]) -> Any:
    if isinstance(target, type):
        return make_actor_class(target, options)
    if not callable(target):
        raise TypeError(f"@remote needs a function or a class, got {type(target).__name__}")
    return RemoteFunction(target, options)


def method(*args: Any, **kwargs: Any) -> Any:
    """Per-method options on actor classes: `@method(num_returns=2)`."""
    if args:
        raise TypeError("@method takes keyword options only, e.g. @method(num_returns=2)")
    validated = opts.validate(kwargs, opts.METHOD_OPTIONS, "actor methods")

    def decorator(fn: Any) -> Any:
        fn.__minicluster_method_options__ = validated
        return fn

    return decorator


# ==== objects ============================================================================


def _as_ids(object_refs: Any, what: str) -> Tuple[List[bytes], bool]:
    if isinstance(object_refs, ObjectRef):
        return [object_refs._id], True
    if isinstance(object_refs, (list, tuple)):
        ids = []
        for i, ref in enumerate(object_refs):
            if not isinstance(ref, ObjectRef):
                raise TypeError(
                    f"{what}: element {i} is a {type(ref).__name__}, not an ObjectRef. "
                    f"'object_refs' must be an ObjectRef or a list of ObjectRefs."
                )
            ids.append(ref._id)
        return ids, False
    raise ValueError(
        f"Invalid type of object refs, {type(object_refs)}, is given. "
        "'object_refs' must either be an ObjectRef or a list of ObjectRefs."
    )


def _check_timeout(timeout: Any) -> Optional[float]:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"'timeout' must be a non-negative number, got {timeout}")
    return float(timeout)


def get(object_refs: Union[ObjectRef, Sequence[ObjectRef]], *, timeout: Optional[float] = None) -> Any:
    """The value(s) of one ref or a list of refs; raises the task's error, or GetTimeoutError."""
    if isinstance(object_refs, ObjectRefGenerator):
        return object_refs  # as Ray's get: a streaming task's generator is its own value
    ids, single = _as_ids(object_refs, "get")
    timeout = _check_timeout(timeout)
    values = context.client().get(ids, timeout)
    return values[0] if single else values


def put(value: Any, *, _owner: Any = None) -> ObjectRef:
    """Store a value in the object store; returns its ref."""
    if isinstance(value, ObjectRef):
        raise TypeError(
            "Calling 'put' on an ObjectRef is not allowed. If you really want to do this, "
            "you can wrap the ObjectRef in a list and call 'put' on it."
        )
    return context.client().put(value)


def wait(
    object_refs: Sequence[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: Optional[float] = None,
    fetch_local: bool = True,
) -> Tuple[List[ObjectRef], List[ObjectRef]]:
    """Split refs into (ready, not ready) once `num_returns` are ready or `timeout` passes."""
    if isinstance(object_refs, ObjectRef) or not isinstance(object_refs, (list, tuple)):
        raise TypeError(f"wait() expected a list of ObjectRefs, got {type(object_refs).__name__}")
    # A generator is ready when next() would not block: wait() watches its next item.
    watched = [r._watched() if isinstance(r, ObjectRefGenerator) else r for r in object_refs]
    ids, _ = _as_ids(watched, "wait")
    if not ids:
        return [], []  # as in Ray, whatever num_returns says
    if len(set(ids)) != len(ids):
        raise ValueError("Wait requires a list of unique object refs.")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns <= 0:
        raise ValueError(f"Invalid number of objects to return {num_returns!r}: must be a positive int.")
    if num_returns > len(ids):
        raise ValueError("num_returns cannot be greater than the number of objects provided to wait.")
    timeout = _check_timeout(timeout)
    ready_ids = set(context.client().wait(ids, num_returns, timeout, fetch_local))
    ready = [r for r, i in zip(object_refs, ids) if i in ready_ids]
    not_ready = [r for r, i in zip(object_refs, ids) if i not in ready_ids]
    return ready, not_ready


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that makes `object_ref` (see SPEC: pending, running, force)."""
    if isinstance(object_ref, ObjectRefGenerator):
        object_ref = object_ref.completed()  # a generator task is cancelled through its completion
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() expected an ObjectRef, got {type(object_ref).__name__}")
    context.client().cancel(object_ref._id, bool(force), bool(recursive))


# ==== actors ============================================================================


def get_actor(name: str, namespace: Optional[str] = None) -> Any:
    """The handle of the live actor named `name` (in `namespace`, default: this session's)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"get_actor() needs an actor name (a non-empty string), got {name!r}")
    client = context.client()
    namespace = namespace or client.namespace  # (None in a worker: the head knows the job's)
    found = client.actor_lookup(name, namespace)
    if found is None:
        where = f"namespace {namespace!r}" if namespace is not None else "the job's namespace"
        raise ValueError(
            f"Failed to look up actor with name {name!r}: no live actor has that name in {where} (it was "
            "never created, or it was killed; a named actor is in its creator's namespace unless "
            "`namespace=` says otherwise)."
        )
    return ActorHandle(*found)


def kill(actor: Any, *, no_restart: bool = True) -> None:
    """End an actor now (its process is killed); with no_restart=False it may restart (max_restarts)."""
    if not isinstance(actor, ActorHandle):
        raise ValueError(f"kill() only works on actor handles, got {type(actor).__name__}; use cancel() for tasks")
    context.client().kill_actor(actor._actor_id, bool(no_restart))


# ==== cluster information ===============================================================


def nodes() -> List[Dict[str, Any]]:
    """One dict per node (alive or dead), with Ray's keys."""
    return context.client().state("nodes")


def get_gpu_ids() -> List[Any]:
    """The GPUs given to the running task or actor, as Ray numbers them (ints; strings when the
    node's ids came from a CUDA_VISIBLE_DEVICES holding UUIDs); [] in the driver and in tasks
    without GPUs."""
    ids = context.client().gpu_ids
    return [int(i) if i.isdigit() else i for i in ids]


def cluster_resources() -> Dict[str, float]:
    return context.client().state("cluster_resources")


def available_resources() -> Dict[str, float]:
    return context.client().state("available_resources")


__all__ = [
    "init", "shutdown", "is_initialized", "remote", "method", "get", "put", "wait", "cancel", "kill", "get_actor",
    "nodes", "cluster_resources", "available_resources", "get_runtime_context", "RuntimeContext", "get_gpu_ids",
    "RayError",
]


def timeline(filename: Optional[str] = None) -> Optional[List[Dict[str, Any]]]:
    """Ray's `ray.timeline`: the session's task attempts as Chrome trace events.

    With `filename`, writes them there as JSON (load it in Perfetto, ui.perfetto.dev,
    or chrome://tracing) and returns None; otherwise returns the events.
    """
    # Not at the top: the state API's readers cost every `import minicluster` ~20 ms otherwise.
    from minicluster.util import state

    events = state.trace_events()
    if filename is None:
        return events
    write_trace(events, filename)
    return None


# Ray's API functions start a default session when none runs; context.client() does it through init().
context.set_auto_init(init)
