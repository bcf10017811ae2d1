"""The state API, with Ray's names: what ran where, and what happened to it.

    from minicluster.util.state import list_tasks, get_task, summarize_tasks

    list_tasks(filters=[("state", "=", "FAILED")])     # one row per attempt
    get_task(ref.task_id().hex())                       # every attempt of one task, in detail

Runs in any process. In the driver of a running session it reads the head's
live records (through the state recorder, state_recorder.py); anywhere else
(a worker, another program, the `minicluster` command) it reads the journal
of a session folder (state_journal.py): `address` names the folder, else the
latest session. Records are the dataclasses of `common.py`.

`filters` are (key, predicate, value) with the predicates "=" and "!=";
string values compare case-insensitively, as in Ray. `limit` keeps the most
recent rows (default 100, as in Ray); `detail=True` fills every field.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, Union

from minicluster._private.client import context
from minicluster._private.head.task_records import attempt_events
from minicluster._private.observe import timeline
from minicluster._private.observe.log_files import log_paths
from minicluster._private.observe.sessions import find_session
from minicluster._private.observe.state_journal import NoSessionError, SessionFiles
from minicluster.util.state.common import (
    ActorState,
    NodeState,
    ObjectState,
    PlacementGroupState,
    StateSchema,
    TaskState,
    WorkerState,
)
from minicluster.util.state.exception import RayStateApiException

DEFAULT_LIMIT = 100
DEFAULT_TIMEOUT = 30
PREDICATES = ("=", "!=")
RESOURCES = ("tasks", "objects", "nodes", "workers", "actors", "placement_groups")

Filter = Tuple[str, str, Any]
S = TypeVar("S", bound=StateSchema)


# ==== where the records come from =======================================================


class SessionSource:
    """The records of one session: live in the driver, or from its folder (used by cli.py and trace_events below)."""

    def __init__(self, recorder: Any = None, files: Optional[SessionFiles] = None) -> None:
        self.recorder = recorder
        self.files = files
        self.logs_dir: str = recorder.logs_dir if recorder is not None else files.logs_dir  # type: ignore[union-attr]
        self._rows: Optional[Dict[str, List[Dict[str, Any]]]] = None
        self._status: Optional[Dict[str, Any]] = None

    def rows(self) -> Dict[str, List[Dict[str, Any]]]:
        if self._rows is None:
            self._rows = self.recorder.live_rows() if self.recorder is not None else self.files.rows()  # type: ignore[union-attr]
        return self._rows

    def status(self) -> Dict[str, Any]:
        if self._status is None:
            self._status = self.recorder.live_status() if self.recorder is not None else self.files.status()  # type: ignore[union-attr]
        return self._status

    def objects(self) -> List[Dict[str, Any]]:
        if self.recorder is not None:
            return self.recorder.live_objects()
        return self.files.objects()[0]  # type: ignore[union-attr]


def session_source(address: Optional[str]) -> SessionSource:
    """The session to read: this driver's, the folder `address`, or the latest one."""
    client = context.current()
    recorder = getattr(client, "recorder", None) if client is not None and not context.in_worker() else None
    if address in (None, "", "auto"):
        if recorder is not None and not recorder.closed:
            return SessionSource(recorder=recorder)
        if client is not None and context.in_worker():
            address = os.path.dirname(client.layout.spill_root)  # this worker's session
    try:
        session_dir = find_session(address or None)
    except NoSessionError as exc:
        raise ConnectionError(str(exc)) from None
    if recorder is not None and not recorder.closed and \
            os.path.realpath(session_dir) == os.path.realpath(recorder.session.dir):
        return SessionSource(recorder=recorder)
    try:
        return SessionSource(files=SessionFiles(session_dir))
    except NoSessionError as exc:
        raise ConnectionError(str(exc)) from None


# ==== filters, limit, detail =============================================================


def _check_filters(resource: str, schema: Type[StateSchema], filters: Optional[Sequence[Filter]]) -> List[Filter]:
    checked: List[Filter] = []
    for item in filters or ():
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise RayStateApiException(
                f"A filter must be a (key, predicate, value) tuple such as ('state', '=', 'FAILED'); got {item!r}")
        key, predicate, value = item
        if key not in schema.field_names():
            raise RayStateApiException(
                f"Invalid filter key {key!r} for resource {resource!r}. "
                f"Available filter keys are: {', '.join(schema.field_names())}")
        if predicate not in PREDICATES:
            raise RayStateApiException(
                f"Unsupported filter predicate {predicate!r} in {tuple(item)!r}; "
                f"supported predicates are {' and '.join(repr(p) for p in PREDICATES)}")
        checked.append((key, predicate, value))
    return checked


def _matches(value: Any, wanted: Any) -> bool:
    if value is None:
        return wanted is None or (isinstance(wanted, str) and wanted.lower() in ("", "none", "null"))
    if isinstance(value, bool) or isinstance(wanted, bool):
        return str(value).lower() == str(wanted).lower()
    if isinstance(value, (int, float)) and not isinstance(wanted, str):
        return value == wanted
    return str(value).lower() == str(wanted).lower()


def _apply(records: List[Dict[str, Any]], filters: List[Filter]) -> List[Dict[str, Any]]:
    for key, predicate, wanted in filters:
        keep = predicate == "="
        records = [r for r in records if _matches(r.get(key), wanted) == keep]
    return records


def _finish(schema: Type[S], resource: str, records: List[Dict[str, Any]], limit: Optional[int], detail: bool,
            warn: bool = True) -> List[S]:
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise RayStateApiException(f"limit must be an int >= 0, got {limit!r}")
        if len(records) > limit:
            if warn:
                warnings.warn(f"{len(records)} {resource} match; returning the last {limit} "
                              f"(pass limit= for more)", stacklevel=3)
            records = records[len(records) - limit:] if limit else []
    blank = () if detail else schema.detail_fields()
    out = []
    for record in records:
        for name in blank:
            record[name] = None
        out.append(schema(**{name: record.get(name) for name in schema.field_names()}))
    return out


def _events(row: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Ray's events: the attempt's creation, start and end (task_records.attempt_events)."""
    return [{"state": state, "created_ms": None if at is None else at * 1000.0}
            for state, at in attempt_events(row["state"], row["creation_time"], row["start_time"], row["end_time"])]


def _ms(seconds: Optional[float]) -> Optional[int]:
    return None if seconds is None else int(seconds * 1000)


# ==== record builders =====================================================================


def task_records(source: SessionSource) -> List[Dict[str, Any]]:
    rows = source.rows()
    workers = {w["worker_id"]: w for w in rows["worker"]}
    records = []
    submitted: Dict[str, float] = {}  # a task's first attempt's creation: the rows' order
    for row in rows["task"]:
        created = row["creation_time"] or 0.0
        if created < submitted.get(row["task_id"], float("inf")):
            submitted[row["task_id"]] = created
    for row in sorted(rows["task"], key=lambda r: (submitted[r["task_id"]], r["task_id"], r["attempt_number"])):
        worker = workers.get(row["worker_id"]) if row["worker_id"] else None
        log_info = None
        if worker is not None and worker["worker_type"] == "WORKER":
            out, err = log_paths(source.logs_dir, bytes.fromhex(worker["worker_id"]), worker["pid"])
            log_info = {"stdout_file": out, "stderr_file": err}
        records.append({
            "task_id": row["task_id"],
            "attempt_number": row["attempt_number"],
            "name": row["name"],
            "state": row["state"],
            "job_id": row["task_id"][-8:],
            "actor_id": row["actor_id"],
            "type": row["type"],
            "func_or_class_name": row["func_or_class_name"],
            "parent_task_id": row["parent_task_id"],
            "node_id": row["node_id"],
            "worker_id": row["worker_id"],
            "worker_pid": worker["pid"] if worker is not None else None,
            "error_type": row["error_type"],
            "language": "PYTHON",
            "required_resources": dict(row["required_resources"] or {}),
            "events": _events(row),
            "creation_time_ms": _ms(row["creation_time"]),
            "start_time_ms": _ms(row["start_time"]),
            "end_time_ms": _ms(row["end_time"]),
            "task_log_info": log_info,
            "error_message": row["error_message"],
        })
    return records


def worker_records(source: SessionSource) -> List[Dict[str, Any]]:
    records = []
    for row in sorted(source.rows()["worker"], key=lambda r: (r["start_time"] or 0.0)):
        out = err = None
        if row["worker_type"] == "WORKER":
            out, err = log_paths(source.logs_dir, bytes.fromhex(row["worker_id"]), row["pid"])
        records.append({
            "worker_id": row["worker_id"],
            "is_alive": row["exit_type"] is None,
            "worker_type": row["worker_type"],
            "exit_type": row["exit_type"],
            "node_id": row["node_id"],
            "ip": "127.0.0.1",
            "pid": row["pid"],
            "exit_detail": row["exit_detail"],
            "worker_launch_time_ms": _ms(row["start_time"]),
            "worker_launched_time_ms": _ms(row["start_time"]),
            "start_time_ms": _ms(row["start_time"]),
            "end_time_ms": _ms(row["end_time"]),
            "stdout_file": out,
            "stderr_file": err,
        })
    return records


def node_records(source: SessionSource) -> List[Dict[str, Any]]:
    records = []
    for node in source.status()["nodes"]:
        records.append({
            "node_id": node["node_id"],
            "node_ip": "127.0.0.1",
            "is_head_node": node["is_head_node"],
            "state": node["state"],
            "state_message": node["state_message"],
            "node_name": node["name"],
            "resources_total": node["resources_total"],
            "labels": {"minicluster.io/node-name": node["name"]},
            "start_time_ms": _ms(node["start_time"]),
            "end_time_ms": _ms(node["end_time"]),
            "resources_available": node["resources_available"],
            "object_store_capacity_bytes": node["store_capacity"],
            "object_store_used_bytes": node["store_used"],
            "num_workers": node["num_workers"],
            "pid": node["pid"],
        })
    return records


def actor_records(source: SessionSource) -> List[Dict[str, Any]]:
    return [dict(actor) for actor in source.status().get("actors", [])]


def placement_group_records(source: SessionSource) -> List[Dict[str, Any]]:
    return [dict(group) for group in source.status().get("placement_groups", [])]


def object_records(source: SessionSource) -> List[Dict[str, Any]]:
    return [dict(obj) for obj in source.objects()]


_RESOURCES: Dict[str, Tuple[Type[StateSchema], Callable[[SessionSource], List[Dict[str, Any]]]]] = {
    "tasks": (TaskState, task_records),
    "workers": (WorkerState, worker_records),
    "nodes": (NodeState, node_records),
    "actors": (ActorState, actor_records),
    "objects": (ObjectState, object_records),
    "placement_groups": (PlacementGroupState, placement_group_records),
}


SCHEMAS: Dict[str, Type[StateSchema]] = {resource: schema for resource, (schema, _) in _RESOURCES.items()}


def query(resource: str, source: SessionSource, filters: Optional[Sequence[Filter]], limit: Optional[int],
          detail: bool) -> Tuple[List[Any], int]:
    """The records of `resource` that pass `filters`, the last `limit` of them; and how many passed.

    For the command line (cli.py), which reports what `limit` left out itself.
    """
    if resource not in _RESOURCES:
        raise RayStateApiException(f"unknown resource {resource!r}; choose from {', '.join(RESOURCES)}")
    schema, build = _RESOURCES[resource]
    checked = _check_filters(resource, schema, filters)
    records = _apply(build(source), checked)
    return _finish(schema, resource, records, limit, detail, warn=False), len(records)


def _list(resource: str, address: Optional[str], filters: Optional[Sequence[Filter]], limit: Optional[int],
          detail: bool) -> List[Any]:
    schema, build = _RESOURCES[resource]
    checked = _check_filters(resource, schema, filters)
    records = _apply(build(session_source(address)), checked)
    return _finish(schema, resource, records, limit, detail)


# ==== the public functions =================================================================


def list_tasks(address: Optional[str] = None, filters: Optional[List[Filter]] = None, limit: int = DEFAULT_LIMIT,
               timeout: int = DEFAULT_TIMEOUT, detail: bool = False, raise_on_missing_output: bool = True,
               _explain: bool = False) -> List[TaskState]:
    """Every attempt of every task (the last `limit`), oldest first."""
    return _list("tasks", address, filters, limit, detail)


def list_workers(address: Optional[str] = None, filters: Optional[List[Filter]] = None, limit: int = DEFAULT_LIMIT,
                 timeout: int = DEFAULT_TIMEOUT, detail: bool = False, raise_on_missing_output: bool = True,
                 _explain: bool = False) -> List[WorkerState]:
    """Every worker process, alive or gone, and the driver."""
    return _list("workers", address, filters, limit, detail)


def list_nodes(address: Optional[str] = None, filters: Optional[List[Filter]] = None, limit: int = DEFAULT_LIMIT,
               timeout: int = DEFAULT_TIMEOUT, detail: bool = False, raise_on_missing_output: bool = True,
               _explain: bool = False) -> List[NodeState]:
    """Every virtual node, alive or dead."""
    return _list("nodes", address, filters, limit, detail)


def list_actors(address: Optional[str] = None, filters: Optional[List[Filter]] = None, limit: int = DEFAULT_LIMIT,
                timeout: int = DEFAULT_TIMEOUT, detail: bool = False, raise_on_missing_output: bool = True,
                _explain: bool = False) -> List[ActorState]:
    """Every actor of the session, dead ones included."""
    return _list("actors", address, filters, limit, detail)


def list_objects(address: Optional[str] = None, filters: Optional[List[Filter]] = None, limit: int = DEFAULT_LIMIT,
                 timeout: int = DEFAULT_TIMEOUT, detail: bool = False, raise_on_missing_output: bool = True,
                 _explain: bool = False) -> List[ObjectState]:
    """Every live object (after the session: those alive when it ended)."""
    return _list("objects", address, filters, limit, detail)


def list_placement_groups(address: Optional[str] = None, filters: Optional[List[Filter]] = None,
                          limit: int = DEFAULT_LIMIT, timeout: int = DEFAULT_TIMEOUT, detail: bool = False,
                          raise_on_missing_output: bool = True, _explain: bool = False) -> List[PlacementGroupState]:
    """Every placement group of the session, removed ones included."""
    return _list("placement_groups", address, filters, limit, detail)


def get_placement_group(id: str, address: Optional[str] = None, timeout: int = DEFAULT_TIMEOUT,
                        _explain: bool = False) -> Optional[PlacementGroupState]:
    found = _get("placement_groups", id, address)
    return found[0] if found else None


def get_task(id: Union[str, Any], address: Optional[str] = None, timeout: int = DEFAULT_TIMEOUT,
             _explain: bool = False) -> Optional[List[TaskState]]:
    """Every attempt of one task, in detail; None if there is no such task.

    `id` is a task id (hex), or an ObjectRef of one of the task's results.
    """
    return _get("tasks", _task_id_of(id), address)


def get_node(id: str, address: Optional[str] = None, timeout: int = DEFAULT_TIMEOUT,
             _explain: bool = False) -> Optional[NodeState]:
    found = _get("nodes", id, address)
    return found[0] if found else None


def get_worker(id: str, address: Optional[str] = None, timeout: int = DEFAULT_TIMEOUT,
               _explain: bool = False) -> Optional[WorkerState]:
    found = _get("workers", id, address)
    return found[0] if found else None


def get_actor(id: str, address: Optional[str] = None, timeout: int = DEFAULT_TIMEOUT,
              _explain: bool = False) -> Optional[ActorState]:
    found = _get("actors", id, address)
    return found[0] if found else None


def get_objects(id: str, address: Optional[str] = None, timeout: int = DEFAULT_TIMEOUT,
                _explain: bool = False) -> List[ObjectState]:
    return _get("objects", id, address) or []


ID_KEYS = {"tasks": "task_id", "nodes": "node_id", "workers": "worker_id", "actors": "actor_id",
            "objects": "object_id", "placement_groups": "placement_group_id"}


def _get(resource: str, id: Any, address: Optional[str]) -> Optional[List[Any]]:
    if not isinstance(id, str) or not id:
        raise RayStateApiException(f"get {resource}: the id must be a hex string, got {id!r}")
    found = _list(resource, address, [(ID_KEYS[resource], "=", id)], None, True)
    return found or None


def _task_id_of(id: Any) -> Any:
    task_id = getattr(id, "task_id", None)
    if callable(task_id):
        return task_id().hex()
    return id


def summarize_tasks(address: Optional[str] = None, timeout: int = DEFAULT_TIMEOUT,
                    raise_on_missing_output: bool = True, _explain: bool = False) -> Dict[str, Any]:
    """Attempts counted by task name and state, as Ray's `summarize_tasks` does."""
    summary: Dict[str, Dict[str, Any]] = {}
    totals = {"NORMAL_TASK": 0, "ACTOR_TASK": 0, "ACTOR_CREATION_TASK": 0}
    for record in task_records(session_source(address)):
        key = record["name"]
        group = summary.setdefault(key, {"func_or_class_name": key, "state_counts": {}, "type": record["type"]})
        counts = group["state_counts"]
        counts[record["state"]] = counts.get(record["state"], 0) + 1
        totals[record["type"]] = totals.get(record["type"], 0) + 1
    return {"cluster": {
        "summary": dict(sorted(summary.items())),
        "summary_by": "func_name",
        "total_actor_scheduled": totals["ACTOR_CREATION_TASK"],
        "total_actor_tasks": totals["ACTOR_TASK"],
        "total_tasks": totals["NORMAL_TASK"],
    }}


def trace_events(address: Optional[str] = None) -> List[Dict[str, Any]]:
    """The session's task attempts as Chrome trace events (this driver's, the folder `address`, or the latest)."""
    source = session_source(address)
    return timeline.trace_events(task_records(source), worker_records(source), node_records(source),
                                 source.status(), source.logs_dir)


def session_status(address: Optional[str] = None) -> Dict[str, Any]:
    """minicluster's own: the session (running, ended or crashed), its nodes, resources and workers."""
    source = session_source(address)
    status = dict(source.status())
    status["workers"] = worker_records(source)
    status["logs_dir"] = source.logs_dir
    return status


__all__ = [
    "ActorState", "NodeState", "ObjectState", "PlacementGroupState", "RayStateApiException", "TaskState",
    "WorkerState", "get_actor", "get_node", "get_objects", "get_placement_group", "get_task", "get_worker",
    "list_actors", "list_nodes", "list_objects", "list_placement_groups", "list_tasks", "list_workers",
    "summarize_tasks",
]
