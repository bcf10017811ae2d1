"""`get_runtime_context()`: where the calling code runs (job, node, worker, task, actor), as Ray has it.

Runs in the driver and in workers. Ids and names come from this process's runtime
client; what only the head knows (a task's assigned resources, the running actor's
handle and restarts, a node's labels) is asked of it when the user asks.

Ray's answers outside a worker are kept: in the driver, task and actor ids are None,
and get_assigned_resources() / was_current_actor_reconstructed / current_actor fail.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional

from minicluster._private.client import context
from minicluster._private.common import runtime_envs
from minicluster._private.common.ids import ActorID, JobID, NodeID, PlacementGroupID, TaskID, WorkerID
from minicluster.actor import ActorHandle
from minicluster.runtime_env import RuntimeEnv

_NOT_IN_WORKER = "This method is only available when the process is a worker. Current mode: driver"


def _deprecated(replacement: str) -> None:
    # Ray's ids as properties are deprecated in favour of the get_*_id() methods (hex strings).
    warnings.warn(f"Use {replacement}() instead", DeprecationWarning, stacklevel=3)


class RuntimeContext:
    """Ids and facts of the code that calls `get_runtime_context()`."""

    def __init__(self, client: Any) -> None:
        self._client = client

    # ---- ids (hex strings, Ray's lengths: job 8, task 48, actor 32, node and worker 56) ----

    def get_job_id(self) -> str:
        return self._client.job_id.hex()

    def get_node_id(self) -> str:
        return self._client.node_id.hex()

    def get_worker_id(self) -> str:
        return self._client.worker_id.hex()

    def get_task_id(self) -> Optional[str]:
        """The running task's id; None in the driver (as Ray)."""
        task_id = self._task_id()
        return task_id.hex() if task_id else None

    def get_actor_id(self) -> Optional[str]:
        """The running actor's id; None outside an actor."""
        actor_id = self._client.current_actor_id
        return actor_id.hex() if actor_id else None

    def _task_id(self) -> Optional[bytes]:
        if not context.in_worker():
            return None
        return self._client.current_task_id or None

    @property
    def job_id(self) -> JobID:
        _deprecated("get_job_id")
        return JobID(self._client.job_id)

    @property
    def node_id(self) -> NodeID:
        _deprecated("get_node_id")
        return NodeID(self._client.node_id)

    @property
    def worker_id(self) -> WorkerID:
        _deprecated("get_worker_id")
        return WorkerID(self._client.worker_id)

    @property
    def task_id(self) -> Optional[TaskID]:
        _deprecated("get_task_id")
        task_id = self._task_id()
        return TaskID(task_id) if task_id else None

    @property
    def actor_id(self) -> Optional[ActorID]:
        _deprecated("get_actor_id")
        actor_id = self._client.current_actor_id
        return ActorID(actor_id) if actor_id else None

    def get(self) -> Dict[str, Any]:
        """Ray's dict of ids: job, node and namespace; task_id in a worker; actor_id in an actor."""
        warnings.warn("Use get_xxx_id() methods to get relevant ids instead", DeprecationWarning, stacklevel=2)
        client = self._client
        found: Dict[str, Any] = {"job_id": JobID(client.job_id), "node_id": NodeID(client.node_id),
                                 "namespace": self.namespace}
        task_id = self._task_id()
        if task_id:
            found["task_id"] = TaskID(task_id)
        if client.current_actor_id:
            found["actor_id"] = ActorID(client.current_actor_id)
        return found

    # ---- names --------------------------------------------------------------------

    def get_task_name(self) -> Optional[str]:
        """The running task's name: its `name` option, else the function's __name__ ("Class.method"
        for actor calls); None in the driver."""
        return self._client.current_task_name if context.in_worker() else None

    def get_task_function_name(self) -> Optional[str]:
        """The running task's function, module-qualified ("module.function", "module.Class.method")."""
        return self._client.current_function_name if context.in_worker() else None

    def get_actor_name(self) -> Optional[str]:
        """The running actor's name ("" when it has none); None outside an actor."""
        actor = self._actor()
        if actor is None:
            return None
        return actor[1].get("name") or ""

    def get_session_name(self) -> str:
        return self._client.session_name

    @property
    def namespace(self) -> str:
        """The job's namespace: `init(namespace=...)`, else its own anonymous one (a UUID), as in Ray."""
        namespace = self._client.namespace
        return namespace if namespace is not None else self._client.state("namespace")

    @property
    def gcs_address(self) -> str:
        return "127.0.0.1"

    def is_canceled(self) -> bool:
        """Whether cancel() was called on the task running in this thread (in a task or a
        sync actor's call; RuntimeError in the driver and in async actors, as in Ray)."""
        if not context.in_worker():
            raise RuntimeError("is_canceled() is only available in a task or actor, not in the driver")
        return self._client.is_canceled()

    # ---- what the head knows about the running task ----------------------------------

    def _task_context(self) -> Dict[str, Any]:
        task_id = self._task_id()
        if task_id is None:
            return {"resources": {}, "actor": None}
        return self._client.state("task_context", task_id)

    def _actor(self) -> Optional[tuple]:
        """(actor id, handle metadata, restarts) of the running actor, or None."""
        if not context.in_worker() or not self._client.current_actor_id:
            return None
        return self._task_context()["actor"]

    def get_assigned_resources(self) -> Dict[str, float]:
        """The resources the running task (or its actor) holds: {"CPU": 1.0} for a default task,
        {} for an actor placed without num_cpus (it holds no CPU while it lives)."""
        if not context.in_worker():
            raise AssertionError(_NOT_IN_WORKER)
        return self._task_context()["resources"]

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """True in an actor that was restarted after its process died (max_restarts)."""
        if not context.in_worker():
            raise AssertionError(_NOT_IN_WORKER)
        actor = self._actor()
        if actor is None:
            raise AssertionError("This method shouldn't be called inside Ray tasks.")
        return actor[2] > 0

    @property
    def current_actor(self) -> Any:
        """A handle to the actor this code runs in."""
        actor = self._actor()
        if actor is None:
            raise RuntimeError("This method is only available in an actor.")
        return ActorHandle(actor[0], actor[1])

    def get_node_labels(self) -> Dict[str, str]:
        """The labels of the node this code runs on: "ray.io/node-id" and those it was started with."""
        return self._client.state("node_labels", self._client.node_id)

    def get_placement_group_id(self) -> Optional[str]:
        """The hex id of the placement group the running task or actor is in; None outside one."""
        current = self._client.current_placement_group if context.in_worker() else None
        return current[0].hex() if current is not None else None

    @property
    def current_placement_group_id(self) -> Any:
        """Deprecated: the PlacementGroupID of get_placement_group_id() (nil outside a group)."""
        _deprecated("get_placement_group_id")
        current = self._client.current_placement_group if context.in_worker() else None
        return PlacementGroupID(current[0] if current is not None else b"\xff" * 18)

    @property
    def runtime_env(self) -> RuntimeEnv:
        """The runtime_env this code runs in: the job's in the driver, the task's or actor's
        (merged over its parent's) in a worker. working_dir and py_modules show as the URIs of
        their copies in the session folder, as Ray shows its uploaded packages."""
        return RuntimeEnv.deserialize(self.get_runtime_env_string())

    def get_runtime_env_string(self) -> str:
        return runtime_envs.user_visible(self._client.runtime_env)

    def get_accelerator_ids(self) -> Dict[str, List[str]]:
        """The accelerators given to the running task or actor, by resource: {"GPU": ["0"]}.
        Empty lists in the driver and for tasks without any."""
        return {"GPU": [str(i) for i in self._client.gpu_ids]}


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(context.client())
