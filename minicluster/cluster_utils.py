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
import sys
from typing import Any, Dict, List, Optional

from minicluster import api
from minicluster._private.client import clusters, context
from minicluster._private.client.driver import DriverClient
from minicluster._private.common import system_config

# Ray's node arguments (RayParams) that mean nothing for virtual nodes on one machine:
# addresses, ports, dashboards, sockets, log plumbing. Taken, with a warning once each.
_NO_EFFECT_HERE = frozenset({
    "redis_address", "gcs_address", "redis_port", "redis_shard_ports", "object_manager_port",
    "node_manager_port", "gcs_server_port", "node_ip_address", "node_name", "min_worker_port", "max_worker_port",
    "worker_port_list", "ray_client_server_port", "redirect_output", "log_to_stderr", "external_addresses",
    "num_redis_shards", "redis_max_clients", "redis_username", "redis_password", "include_dashboard",
    "dashboard_host", "dashboard_port", "dashboard_agent_listen_port", "runtime_env_agent_port",
    "plasma_store_socket_name", "raylet_socket_name", "include_log_monitor", "ray_debugger_external",
    "metrics_agent_port", "metrics_export_port", "no_monitor", "webui", "session_name",
})
# Ray's node arguments that would change behaviour here but are not supported: refused.
_NOT_SUPPORTED = frozenset({
    "plasma_directory", "object_spilling_directory", "worker_path", "setup_worker_path", "huge_pages",
    "temp_dir", "runtime_env_dir_name", "autoscaling_config", "tracing_startup_hook", "env_vars", "cluster_id",
    "node_id", "resource_isolation_config", "proxy_server_url",
})
_warned: set = set()


def _warn_once(what: str) -> None:
    if what not in _warned:
        _warned.add(what)
        print(f"minicluster: warning: {what}", file=sys.stderr)


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
        self._address = self._client.address
        clusters.register(self._address, self._client)
        self._nodes_added = False
        self.head_node: Optional[ClusterNode] = None
        self.worker_nodes: set = set()
        self._shut_down = False
        if initialize_head:
            self.head_node = self.add_node(**(head_node_args or {}))
        if connect:
            self.connect()
        if shutdown_at_exit:
            atexit.register(self.shutdown)

    @property
    def address(self) -> Optional[str]:
        """What `init(address=...)` joins; None until a node is added, as in Ray (whose address is
        the head node's): `init(address=None)` then starts a session of its own."""
        return self._address if self._nodes_added else None

    def add_node(self, wait: bool = True, **node_args: Any) -> ClusterNode:
        """Start a virtual node. Takes Ray's node arguments: num_cpus, num_gpus, memory, resources,
        labels, object_store_memory (this node's store), and for the first node the cluster's
        enable_object_reconstruction and _system_config; network and dashboard arguments have
        no effect here (a warning says so); the rest are refused."""
        self._check_node_args(node_args)
        num_cpus = node_args.get("num_cpus", 1)
        resources = dict(node_args.get("resources") or {})
        if node_args.get("num_gpus") is not None:  # (else the node detects the machine's GPUs)
            resources["GPU"] = float(node_args["num_gpus"])
        if node_args.get("memory"):
            resources["memory"] = float(node_args["memory"])
        head = self._client.head
        if self.head_node is None and not self.worker_nodes:
            self._apply_cluster_settings(node_args)
        record = head.add_node(num_cpus, resources, max(1, int(num_cpus)), node_args.get("object_store_memory"),
                               node_args.get("labels"))
        self._nodes_added = True  # from now on init() (no address, or "auto") joins it (clusters.only_address)
        node = ClusterNode(self, record.node_id, dict(node_args))
        if self.head_node is None:
            self.head_node = node
        else:
            self.worker_nodes.add(node)
        if wait:
            head.wait_for_nodes(30.0)
        return node

    @staticmethod
    def _check_node_args(node_args: Dict[str, Any]) -> None:
        for name in node_args:
            if name in _NOT_SUPPORTED:
                raise ValueError(f"Cluster.add_node({name}=...) is not supported by minicluster")
            if name in _NO_EFFECT_HERE:
                _warn_once(f"Cluster.add_node({name}=...) has no effect on virtual nodes (one machine, no ports)")
            elif name not in ("num_cpus", "num_gpus", "memory", "resources", "labels", "object_store_memory",
                              "enable_object_reconstruction", "_system_config"):
                raise TypeError(f"Cluster.add_node() got an unexpected keyword argument {name!r}")
        capacity = node_args.get("object_store_memory")
        if isinstance(capacity, float) and capacity.is_integer():
            node_args["object_store_memory"] = capacity = int(capacity)  # Ray's tests write 1e9
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0):
            raise ValueError(f"Cluster.add_node(object_store_memory={capacity!r}): must be a positive int (bytes)")

    def _apply_cluster_settings(self, head_args: Dict[str, Any]) -> None:
        """The first node's cluster-wide settings (Ray reads them from the head node)."""
        self._client.head.apply_settings(system_config.cluster_settings(
            "Cluster.add_node", head_args.get("_system_config"), head_args.get("enable_object_reconstruction")))

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
        """Make this cluster the session that `get`, `remote` etc. use in this process (as
        `init(address=cluster.address, namespace=..., **kwargs)`, which checks the arguments)."""
        return api.init(address=self._address, namespace=namespace, **kwargs)

    def shutdown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        clusters.unregister(self._address)
        if context.current() is self._client:
            context.set_client(None)
        self._client.shutdown()
