"""`Cluster`: Ray's multi-node test helper (`ray.cluster_utils.Cluster`), on virtual nodes.

Runs in the driver. Ray's version starts real raylets; this one starts
virtual nodes of an in-process session, so a Ray multi-node test ports by
changing its import:

    from minicluster.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address)        # or cluster.connect()
    ...
    cluster.remove_node(worker)               # the node dies, with its objects
    cluster.shutdown()
"""

from __future__ import annotations

import atexit
from typing import Any, Dict, List, Optional

from minicluster import api
from minicluster._private.client import clusters, context
from minicluster._private.client.driver import DriverClient


class ClusterNode:
    """A node of a Cluster, as Ray's `add_node` returns it."""

    def __init__(self, cluster: "Cluster", node_id: bytes, args: Dict[str, Any]) -> None:
        self._cluster = cluster
        self._node_id = node_id
        self.node_args = args

    @property
    def node_id(self) -> str:
        return self._node_id.hex()

    unique_id = node_id

    @property
    def address(self) -> str:
        return self._cluster.address

    @property
    def node_ip_address(self) -> str:
        return "127.0.0.1"

    def any_processes_alive(self) -> bool:
        node = self._cluster._client.head.nodes.get(self._node_id)
        return bool(node is not None and node.alive)

    def __repr__(self) -> str:
        return f"ClusterNode(node_id={self.node_id[:12]}...)"


class Cluster:
    def __init__(
        self,
        initialize_head: bool = False,
        connect: bool = False,
        head_node_args: Optional[Dict[str, Any]] = None,
        shutdown_at_exit: bool = True,
    ) -> None:
        if context.current() is not None:
            raise RuntimeError("Cluster(): a minicluster session is already running in this process; "
                               "call shutdown() first")
        self._client = DriverClient(0, 1, None, None, None)
        self._client.cluster_owned = True  # shutdown() in the driver only disconnects from it
        self.address = self._client.address
        clusters.register(self.address, self._client)
        self.head_node: Optional[ClusterNode] = None
        self.worker_nodes: set = set()
        self._shut_down = False
        if initialize_head:
            self.head_node = self.add_node(**(head_node_args or {}))
        if connect:
            self.connect()
        if shutdown_at_exit:
            atexit.register(self.shutdown)

    def add_node(self, wait: bool = True, **node_args: Any) -> ClusterNode:
        """Start a virtual node. Takes Ray's node arguments: num_cpus, num_gpus, resources, labels
        (others ignored)."""
        num_cpus = node_args.get("num_cpus", 1)
        resources = dict(node_args.get("resources") or {})
        if node_args.get("num_gpus"):
            resources["GPU"] = float(node_args["num_gpus"])
        head = self._client.head
        record = head.add_node(num_cpus, resources, max(1, int(num_cpus)), node_args.get("labels"))
        node = ClusterNode(self, record.node_id, dict(node_args))
        if self.head_node is None:
            self.head_node = node
        else:
            self.worker_nodes.add(node)
        if wait:
            head.wait_for_nodes(30.0)
        return node

    def remove_node(self, node: ClusterNode, allow_graceful: bool = True) -> None:
        """Kill the node: its processes die and the objects stored only there are lost."""
        reason = "removed by Cluster.remove_node" + ("" if allow_graceful else " (not graceful)")
        self._client.head.kill_node(node._node_id, reason)
        self.worker_nodes.discard(node)
        if node is self.head_node:
            self.head_node = None

    def wait_for_nodes(self, timeout: float = 30) -> None:
        self._client.head.wait_for_nodes(timeout)

    def list_all_nodes(self) -> List[ClusterNode]:
        nodes = [self.head_node] if self.head_node is not None else []
        return nodes + sorted(self.worker_nodes, key=lambda n: n.node_id)

    def connect(self, namespace: Optional[str] = None, **kwargs: Any) -> Any:
        """Make this cluster the session that `get`, `remote` etc. use in this process."""
        return api.init(address=self.address)

    def shutdown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        clusters.unregister(self.address)
        if context.current() is self._client:
            context.set_client(None)
        self._client.shutdown()
