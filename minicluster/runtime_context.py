"""`get_runtime_context()`: the ids of the current job, node, worker, task and actor (Ray's names)."""

from __future__ import annotations

from typing import Any, Dict, Optional

from minicluster._private.client import context
from minicluster._private.common.ids import ActorID, JobID, NodeID, TaskID, WorkerID


class RuntimeContext:
    """Ids of the current job, node, worker, task and actor (`get_runtime_context()`)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def get_job_id(self) -> str:
        return self._client.job_id.hex()

    @property
    def job_id(self) -> JobID:
        return JobID(self._client.job_id)

    def get_node_id(self) -> str:
        return self._client.node_id.hex()

    @property
    def node_id(self) -> NodeID:
        return NodeID(self._client.node_id)

    def get_worker_id(self) -> str:
        return self._client.worker_id.hex()

    @property
    def worker_id(self) -> WorkerID:
        return WorkerID(self._client.worker_id)

    def get_task_id(self) -> Optional[str]:
        if not context.in_worker():
            return None
        task_id = self._client.current_task_id
        return task_id.hex() if task_id else None

    @property
    def task_id(self) -> Optional[TaskID]:
        task_id = self.get_task_id()
        return TaskID(bytes.fromhex(task_id)) if task_id else None

    def get_task_name(self) -> Optional[str]:
        return self._client.current_task_name if context.in_worker() else None

    def get_task_function_name(self) -> Optional[str]:
        return self._client.current_function_name if context.in_worker() else None

    def get_actor_id(self) -> Optional[str]:
        actor_id = self._client.current_actor_id
        return actor_id.hex() if actor_id else None

    @property
    def actor_id(self) -> Optional[ActorID]:
        actor_id = self._client.current_actor_id
        return ActorID(actor_id) if actor_id else None

    @property
    def namespace(self) -> str:
        return getattr(self._client, "namespace", "default")

    @property
    def gcs_address(self) -> str:
        return "127.0.0.1"

    def is_canceled(self) -> bool:
        """Whether cancel() was called on the task running in this thread (in a task or a
        sync actor's call; RuntimeError in the driver and in async actors, as in Ray)."""
        if not context.in_worker():
            raise RuntimeError("is_canceled() is only available in a task or actor, not in the driver")
        return self._client.is_canceled()

    def get_assigned_resources(self) -> Dict[str, float]:
        return dict(getattr(self._client, "assigned_resources", {}) or {})

    def get(self) -> Dict[str, Any]:
        return {"job_id": self.job_id, "node_id": self.node_id, "namespace": self.namespace,
                "task_id": self.task_id, "actor_id": self.actor_id}


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(context.client())
