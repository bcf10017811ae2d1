"""Adding, killing, stopping and resuming virtual nodes and workers of the running session.

Runs in the driver (the head lives there); node ids are hex strings as
`get_runtime_context().get_node_id()` and `nodes()` give them. When the pytest
plugin runs the tests on real Ray (--minicluster-backend=ray), the controls Ray
can honour act on its cluster (ray_backend.RayCluster) and the others say they
are minicluster-only.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Dict, List, Optional

from minicluster._private.client import context
from minicluster._private.client.object_ref import ObjectRef
from minicluster._private.common.ids import task_of
from minicluster.testing import backend


def _on_ray(control: str) -> Any:
    """The Ray cluster's version of `control` if the tests run on Ray (None: minicluster's)."""
    cluster = backend.active()
    return None if cluster is None else getattr(cluster, control)


def _head():  # type: ignore[no-untyped-def]
    client = context.current()
    if client is None or context.in_worker():
        raise RuntimeError("minicluster.testing works in the driver of a running session (call init() first)")
    return client.head


def _node_id(node_id: str) -> bytes:
    head = _head()
    try:
        raw = bytes.fromhex(node_id)
    except (TypeError, ValueError):
        raise ValueError(f"{node_id!r} is not a node id (a hex string)") from None
    if raw not in head.nodes:
        raise ValueError(f"no node {node_id} in this session")
    return raw


def live_nodes() -> List[str]:
    """Ids of the nodes that are alive (stopped ones included), in start order."""
    on_ray = _on_ray("live_nodes")
    if on_ray is not None:
        return on_ray()
    return [n.node_id.hex() for n in _head().nodes.values() if n.alive]


def add_node(num_cpus: float = 1, resources: Optional[Dict[str, float]] = None, wait: bool = True) -> str:
    """Start a new virtual node; returns its id once it is up (unless wait=False)."""
    on_ray = _on_ray("add_node")
    if on_ray is not None:
        return on_ray(num_cpus, resources, wait)
    head = _head()
    node = head.add_node(num_cpus, resources, max(1, int(num_cpus)))
    if wait:
        head.wait_for_nodes(30.0)
    return node.node_id.hex()


def kill_node(node_id: str) -> None:
    """Power cut: SIGKILL the node's whole process group and delete its object store."""
    on_ray = _on_ray("kill_node")
    if on_ray is not None:
        return on_ray(node_id)
    _head().kill_node(_node_id(node_id), "killed by minicluster.testing.kill_node")


def stop_node(node_id: str) -> None:
    """SIGSTOP every process of the node: it hangs, as a frozen machine or a partition would."""
    backend.refuse_on_ray("stop_node")
    _head().stop_node(_node_id(node_id))


def resume_node(node_id: str) -> None:
    """SIGCONT a stopped node."""
    backend.refuse_on_ray("resume_node")
    _head().resume_node(_node_id(node_id))


def worker_pids(node_id: Optional[str] = None) -> List[int]:
    """Pids of the live workers, of one node or of all."""
    on_ray = _on_ray("worker_pids")
    if on_ray is not None:
        return on_ray(node_id)
    head = _head()
    with head.lock:
        nodes = [head.nodes[_node_id(node_id)]] if node_id else list(head.nodes.values())
        return [w.pid for n in nodes if n.alive for w in n.workers.values()]


def kill_worker(pid: int, signum: int = signal.SIGKILL) -> None:
    """Kill one worker of this session (default SIGKILL), as a crash would."""
    if pid not in worker_pids():
        raise ValueError(f"pid {pid} is not a live worker of this session")
    os.kill(pid, signum)


def kill_worker_running(ref: ObjectRef, signum: int = signal.SIGKILL) -> int:
    """Kill the worker that is running the task which makes `ref`, as a crash would; returns its pid.

    Raises ValueError when that task is not running right now (pending, finished, or unknown).
    """
    backend.refuse_on_ray("kill_worker_running")
    head = _head()
    with head.lock:
        task = head.tasks.get(task_of(ref.binary()))
        worker = task.worker if task is not None else None
        if worker is None or worker.dead or (worker.actor is None and worker.task is not task):
            state = "unknown or finished" if task is None else task.state
            raise ValueError(f"the task of {ref} is not running on a worker now (state: {state})")
        pid = worker.pid
    os.kill(pid, signum)
    return pid


def object_locations(ref: ObjectRef) -> List[str]:
    """Ids of the nodes whose stores hold a copy of the object ([] for small inline values)."""
    on_ray = _on_ray("object_locations")
    if on_ray is not None:
        return on_ray(ref)
    return [n.hex() for n in _head().object_locations(ref.binary())]
