"""The head's answers to state queries: nodes, resources, a running task's context, named things.

Runs in the driver process, under the head's lock (Head.state): the driver asks directly
(ray.nodes(), cluster_resources(), get_runtime_context(), ...), a worker's code through a
QueryState message. Read only: nothing here changes a record.
"""

from __future__ import annotations

import os
from typing import Any, Dict

from minicluster._private.common.placement import plain_resources
from minicluster._private.head import placement_groups
from minicluster._private.head.actor_flow import ActorFlow
from minicluster._private.head.head_state import HeadState
from minicluster._private.head.virtual_nodes import NodeRecord


def answer(state: HeadState, actors: ActorFlow, what: str, about: Any = None) -> Any:
    """The answer to query `what` (about: its argument); ValueError for an unknown query."""
    if what == "nodes":
        return [_node_info(state, node) for node in state.nodes.values()]
    if what == "cluster_resources":
        return state.scheduler.totals()
    if what == "available_resources":
        return state.scheduler.availables()
    if what == "task_context":
        return _task_context(state, about)
    if what == "namespace":  # the job's (a worker's get_runtime_context().namespace)
        return state.namespace
    if what == "open_tasks":  # which of these tasks are not finished (max_pending_calls)
        return [task_id for task_id in about if task_id in state.tasks]
    if what == "node_labels":
        node = state.nodes.get(about)
        return dict(node.labels) if node is not None else {}
    if what == "placement_groups":  # about: a group id, or None for all
        return placement_groups.table(state.groups, about)
    if what == "placement_group_named":  # about: (name, namespace)
        return state.groups.lookup(*about)
    if what == "named_actors":  # list_named_actors(): (namespace, name) of each live one
        return actors.named_actors()
    raise ValueError(f"unknown state query {what!r}")


def _task_context(state: HeadState, task_id: bytes) -> Dict[str, Any]:
    """What get_runtime_context() asks about a running task: the resources it was given and,
    in an actor, the actor's handle metadata and how often it restarted."""
    task = state.tasks.get(task_id)
    spec = task.spec if task is not None else None
    actor = state.actors.get(spec.actor_id) if spec is not None and spec.actor_id else None
    if actor is None:
        return {"resources": plain_resources(spec.resources) if spec is not None else {}, "actor": None}
    resources = plain_resources(actor.creation.spec.resources)
    if not actor.meta["holds_cpus"]:
        resources.pop("CPU", None)  # the implicit CPU an actor is placed with is not held (Ray)
    return {"resources": resources, "actor": (actor.actor_id, actor.meta, actor.num_restarts)}


def _node_info(state: HeadState, node: NodeRecord) -> Dict[str, Any]:
    """A node as ray.nodes() lists it (Ray's keys), with minicluster's own beside them."""
    return {
        "NodeID": node.node_id.hex(),
        "Alive": node.alive,
        "alive": node.alive,
        "NodeName": node.name,
        "NodeManagerAddress": "127.0.0.1",
        "NodeManagerHostname": os.uname().nodename,
        "Resources": dict(node.resources) if node.alive else {},
        "DeathReason": node.death_reason,
        "Pid": node.pid,
        "NumWorkers": len(node.workers),
        "StoreDir": node.store_dir,
        "ObjectStoreMemory": node.capacity,
        "ObjectStoreUsed": state.objects.node_usage.get(node.node_id, 0),
        "Stopped": node.stopped,
        "StartTime": node.start_time,
        "EndTime": node.end_time,
    }
