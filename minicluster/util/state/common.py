"""The records the state API returns, with Ray's names and fields (`ray.util.state.common`).

Plain dataclasses, made in whichever process calls `minicluster.util.state`.
Like Ray's, they allow attribute access (`t.state`) and item access
(`t["state"]`); unlike Ray's, they are also mappings (`dict(t)`, `t.keys()`).
Fields that Ray fills only with `detail=True` are None otherwise; the first
fields of each class, up to `DETAIL_FROM`, are always filled.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple


class StateSchema:
    """Attribute, item and mapping access for a state record."""

    DETAIL_FROM = ""  #: name of the first field filled only with detail=True

    def __getitem__(self, key: str) -> Any:
        if key not in self.field_names():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in self.field_names() else default

    def keys(self) -> List[str]:
        return list(self.field_names())

    def items(self) -> List[Tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self.field_names()]

    def __iter__(self) -> Iterator[str]:
        return iter(self.field_names())

    def __contains__(self, key: object) -> bool:
        return key in self.field_names()

    def asdict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        names = cls.__dict__.get("_names")
        if names is None:
            names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
            cls._names = names
        return names

    @classmethod
    def detail_fields(cls) -> Tuple[str, ...]:
        names = cls.field_names()
        return names[names.index(cls.DETAIL_FROM):] if cls.DETAIL_FROM in names else ()


@dataclass
class TaskState(StateSchema):
    """One attempt of one task (`list_tasks` returns a row per attempt)."""

    DETAIL_FROM = "language"

    task_id: str
    attempt_number: int
    name: str
    state: str  #: PENDING_ARGS_AVAIL, PENDING_NODE_ASSIGNMENT, SUBMITTED_TO_WORKER, RUNNING, FINISHED, FAILED
    job_id: str
    actor_id: Optional[str]
    type: str  #: NORMAL_TASK, ACTOR_CREATION_TASK, ACTOR_TASK, DRIVER_TASK
    func_or_class_name: str
    parent_task_id: str
    node_id: Optional[str]
    worker_id: Optional[str]
    worker_pid: Optional[int]
    error_type: Optional[str]  #: TASK_EXECUTION_EXCEPTION, WORKER_DIED, NODE_DIED, TASK_CANCELLED, ...
    language: Optional[str] = None
    required_resources: Optional[dict] = None
    runtime_env_info: Optional[dict] = None
    placement_group_id: Optional[str] = None
    events: Optional[List[dict]] = None  #: [{"state": ..., "created_ms": ...}, ...]
    profiling_data: Optional[dict] = None
    creation_time_ms: Optional[int] = None
    start_time_ms: Optional[int] = None
    end_time_ms: Optional[int] = None
    task_log_info: Optional[dict] = None  #: the worker's stdout_file and stderr_file
    error_message: Optional[str] = None
    is_debugger_paused: Optional[bool] = None
    call_site: Optional[str] = None
    label_selector: Optional[dict] = None
    fallback_strategy: Optional[dict] = None


@dataclass
class WorkerState(StateSchema):
    """One worker process (or the driver), alive or gone."""

    DETAIL_FROM = "worker_launch_time_ms"

    worker_id: str
    is_alive: bool
    worker_type: str  #: WORKER or DRIVER
    exit_type: Optional[str]  #: SYSTEM_ERROR, INTENDED_SYSTEM_EXIT, INTENDED_USER_EXIT; None while alive
    node_id: str
    ip: str
    pid: int
    exit_detail: Optional[str]
    worker_launch_time_ms: Optional[int] = None
    worker_launched_time_ms: Optional[int] = None
    start_time_ms: Optional[int] = None
    end_time_ms: Optional[int] = None
    debugger_port: Optional[int] = None
    num_paused_threads: Optional[int] = None
    stdout_file: Optional[str] = None
    stderr_file: Optional[str] = None


@dataclass
class NodeState(StateSchema):
    """One virtual node, alive or dead."""

    DETAIL_FROM = "start_time_ms"

    node_id: str
    node_ip: str
    is_head_node: bool
    state: str  #: ALIVE or DEAD
    state_message: Optional[str]
    node_name: str
    resources_total: dict
    labels: dict
    start_time_ms: Optional[int] = None
    end_time_ms: Optional[int] = None
    resources_available: Optional[dict] = None
    object_store_capacity_bytes: Optional[int] = None
    object_store_used_bytes: Optional[int] = None
    num_workers: Optional[int] = None
    pid: Optional[int] = None


@dataclass
class ActorState(StateSchema):
    """One actor (a row per actor, dead ones included)."""

    DETAIL_FROM = "serialized_runtime_env"

    actor_id: str
    class_name: str
    state: str  #: DEPENDENCIES_UNREADY, PENDING_CREATION, ALIVE, RESTARTING, DEAD
    job_id: str
    name: Optional[str]
    node_id: Optional[str]
    pid: Optional[int]
    ray_namespace: Optional[str]
    serialized_runtime_env: Optional[str] = None
    required_resources: Optional[dict] = None
    death_cause: Optional[Any] = None
    is_detached: Optional[bool] = None
    placement_group_id: Optional[str] = None
    repr_name: Optional[str] = None
    num_restarts: Optional[int] = None
    num_restarts_due_to_lineage_reconstruction: Optional[int] = None
    call_site: Optional[str] = None
    label_selector: Optional[dict] = None


@dataclass
class PlacementGroupState(StateSchema):
    """One placement group (removed ones included)."""

    DETAIL_FROM = "bundles"

    placement_group_id: str
    name: str
    creator_job_id: str
    state: str  #: PENDING, CREATED, RESCHEDULING, REMOVED
    bundles: Optional[List[dict]] = None  #: {"bundle_id", "node_id", "unit_resources"} per bundle
    is_detached: Optional[bool] = None
    stats: Optional[dict] = None


@dataclass
class ObjectState(StateSchema):
    """One live object (one row per object, with who holds it)."""

    DETAIL_FROM = "state"

    object_id: str
    object_size: Optional[int]
    task_status: str  #: the state of the task making it; NIL for put() objects
    attempt_number: Optional[int]
    reference_type: str  #: LOCAL_REFERENCE, USED_BY_PENDING_TASK, UNKNOWN_STATUS
    call_site: str
    type: str  #: DRIVER or WORKER: what kind of process owns it
    pid: Optional[int]  #: the owner's pid
    ip: str
    state: Optional[str] = None  #: PENDING, READY, LOST, RELEASED
    storage: Optional[str] = None  #: INLINE, SHARED_MEMORY, SPILLED, ERROR
    locations: Optional[List[str]] = None  #: node ids holding a copy
    owner_id: Optional[str] = None
    is_error: Optional[bool] = None
    held_by_driver: Optional[bool] = None
    borrowers: Optional[int] = None
    pins: Optional[int] = None
