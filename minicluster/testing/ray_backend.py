"""The pytest plugin's real-Ray backend: the same tests, run on Ray instead of minicluster.

Runs in the driver (the pytest process), with --minicluster-backend=ray or
MINICLUSTER_BACKEND=ray, in an environment where Ray is installed:

- `import minicluster as ray` gives Ray (a module forwarding to `ray`, plus
  minicluster.testing), and minicluster.util.*, .exceptions, .cluster_utils, ...
  give Ray's modules of those names; `import ray` is Ray anyway. Ray's workers get
  the same alias at startup (runtime_env's worker_process_setup_hook: setup_worker)
  and the driver's sys.path, since they import the test modules by name.
- minicluster_cluster starts Ray: one node (ray.init) for num_nodes=1, else a
  ray.cluster_utils.Cluster of num_nodes nodes (the first is the head, the driver's).
- The on-demand controls Ray can honour act on it (RayCluster below: live_nodes,
  add_node, kill_node = remove_node without grace, worker_pids, kill_worker by pid,
  object_locations); the rest say they are minicluster-only (backend.py).
- A fault plan's faults are fired at minicluster's own event points; adding one
  skips the test with a message naming why (RayFaultPlan).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import types
from typing import Any, Dict, List, Optional

import psutil
import pytest

import minicluster
from minicluster.testing import backend, ray_alias
from minicluster.testing.fault_plan import FaultPlan
from minicluster.testing.faults import Fault

BACKEND_ENV = "MINICLUSTER_BACKEND"
#: The driver's sys.path, for Ray's workers (JSON list), set through the runtime_env.
SYS_PATH_ENV = "MINICLUSTER_RAY_SYS_PATH"
SETUP_HOOK = "minicluster.testing.ray_backend.setup_worker"
#: The Ray version .ci/run verifies the backend with.
RAY_VERSION = "2.60.0"
#: init() arguments that describe a node's resources: on a multi-node Cluster they go to every node.
NODE_ARGS = ("num_cpus", "num_gpus", "resources", "object_store_memory", "_system_config")
#: How fast a multi-node cluster's GCS notices a removed node (Ray's default: about 15 s), so that
#: kill_node returns once Ray reports the node dead, as minicluster's does.
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 250,
                   "health_check_failure_threshold": 4}
#: How long kill_node waits for Ray to report the node dead.
NODE_DEATH_TIMEOUT_S = 30.0
#: Ray's processes need longer than minicluster's to exit after shutdown.
EXIT_GRACE_S = 15.0

_saved: Dict[str, types.ModuleType] = {}  #: our sys.modules entries the alias replaced


def import_ray() -> types.ModuleType:
    """Ray and its Cluster helper; a usage error naming the fix if Ray is not installed."""
    try:
        import ray
        import ray.cluster_utils  # noqa: F401
    except ImportError as exc:
        raise pytest.UsageError(f"--minicluster-backend=ray needs Ray in this environment "
                                f"(pip install 'ray=={RAY_VERSION}'): {exc}") from None
    return ray


# ==== `import minicluster` gives Ray ======================================================


def alias_minicluster_to_ray() -> None:
    """From now on `import minicluster` (and its public submodules Ray also has) give Ray's modules."""
    ray = import_ray()
    if sys.modules.get("minicluster") is not minicluster:
        return  # done already
    proxy = types.ModuleType("minicluster", ray.__doc__)

    def forward(name: str) -> Any:
        try:
            return getattr(ray, name)
        except AttributeError:
            return importlib.import_module(f"ray.{name}")  # a submodule `import ray` does not load

    proxy.__getattr__ = forward  # type: ignore[attr-defined]
    proxy.__path__ = []  # type: ignore[attr-defined]
    proxy.testing = sys.modules["minicluster.testing"]  # type: ignore[attr-defined]
    _saved["minicluster"] = minicluster
    sys.modules["minicluster"] = proxy
    for sub in ray_alias.public_modules():
        try:
            theirs = importlib.import_module(f"ray.{sub}")
        except ImportError:
            continue  # Ray has no such module: ours stays (minicluster-only)
        _saved[f"minicluster.{sub}"] = sys.modules.get(f"minicluster.{sub}")  # type: ignore[assignment]
        sys.modules[f"minicluster.{sub}"] = theirs


def unalias() -> None:
    for name, module in _saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
    _saved.clear()


def setup_worker() -> None:
    """Ray's worker_process_setup_hook: the driver's sys.path and the minicluster -> Ray alias."""
    for path in reversed(json.loads(os.environ.get(SYS_PATH_ENV, "[]"))):
        if path not in sys.path:
            sys.path.insert(0, path)
    alias_minicluster_to_ray()


# ==== the cluster =========================================================================


class RayCluster:
    """A Ray cluster started for one test, and the controls Ray can honour on it."""

    def __init__(self, settings: Dict[str, Any]) -> None:
        ray = self.ray = import_ray()
        settings = dict(settings)
        num_nodes = settings.pop("num_nodes", 1)
        node_args = {k: settings.pop(k) for k in NODE_ARGS if k in settings}
        runtime_env = dict(settings.pop("runtime_env", None) or {})
        if "worker_process_setup_hook" in runtime_env:
            raise pytest.UsageError("--minicluster-backend=ray: the plugin sets the runtime_env's "
                                    "worker_process_setup_hook itself (to alias minicluster to Ray in workers)")
        runtime_env["worker_process_setup_hook"] = SETUP_HOOK
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), SYS_PATH_ENV: json.dumps(sys.path)}
        self.cluster: Any = None
        self.node_objects: List[Any] = []  #: ray._private.node.Node of each node, in start order
        try:
            if num_nodes == 1:
                ray.init(address="local", include_dashboard=False, runtime_env=runtime_env, **node_args, **settings)
                self.node_objects.append(ray._private.worker.global_worker.node)
            else:
                self.node_args = node_args
                head_args = {"include_dashboard": False, **node_args,
                             "_system_config": {**FAST_NODE_DEATH, **node_args.get("_system_config", {})}}
                self.cluster = ray.cluster_utils.Cluster(initialize_head=True, head_node_args=head_args)
                self.node_objects.append(self.cluster.head_node)
                for _ in range(num_nodes - 1):
                    self.node_objects.append(self.cluster.add_node(wait=False, **node_args))
                self.cluster.wait_for_nodes()
                ray.init(address=self.cluster.address, runtime_env=runtime_env, **settings)
        except BaseException:
            ray.shutdown()  # whatever started must not outlive the failed start
            if self.cluster is not None:
                self.cluster.shutdown()
            raise
        self.nodes = [n.node_id for n in self.node_objects]
        self.address = self.node_objects[0].gcs_address

    def pids(self) -> List[int]:
        """Every process of the cluster's nodes: services, raylets and their workers."""
        pids = set()
        for node in self.node_objects:
            for infos in node.all_processes.values():
                for info in infos:
                    pids.add(info.process.pid)
        for pid in list(pids):
            try:
                pids.update(p.pid for p in psutil.Process(pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return sorted(pids)

    def shutdown(self) -> None:
        self.ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
        # Ray writes the latest cluster's address (ray_current_cluster) for a later bare init() to
        # connect to: it must not find this dead one.
        address_file = self.ray._private.utils.get_ray_address_file(None)
        try:
            with open(address_file) as f:
                ours = f.read().strip() == self.address
            if ours:
                os.remove(address_file)
        except FileNotFoundError:
            pass

    # ---- the controls (cluster_control.py forwards here) -------------------------------

    def live_nodes(self) -> List[str]:
        alive = {n["NodeID"] for n in self.ray.nodes() if n["Alive"]}
        return [n for n in self.nodes if n in alive]

    def _multi(self, what: str) -> Any:
        if self.cluster is None:
            raise backend.MiniclusterOnlyError(
                f"minicluster.testing.{what}(): on Ray this test runs on one node (ray.init); mark it with "
                f"num_nodes >= 2 to get a ray.cluster_utils.Cluster, whose nodes can be added and removed")
        return self.cluster

    def add_node(self, num_cpus: float = 1, resources: Optional[Dict[str, float]] = None, wait: bool = True) -> str:
        cluster = self._multi("add_node")
        args = {**self.node_args, "num_cpus": num_cpus}
        if resources is not None:
            args["resources"] = resources
        node = cluster.add_node(wait=wait, **args)
        self.node_objects.append(node)
        self.nodes.append(node.node_id)
        return node.node_id

    def kill_node(self, node_id: str) -> None:
        cluster = self._multi("kill_node")
        if node_id not in self.nodes:
            raise ValueError(f"no node {node_id} in this cluster")
        if node_id == self.nodes[0]:
            raise backend.MiniclusterOnlyError(
                "minicluster.testing.kill_node(): on Ray the first node is the head (GCS) and the driver's; "
                "killing it ends the cluster. Kill another node")
        cluster.remove_node(self.node_objects[self.nodes.index(node_id)], allow_graceful=False)
        deadline = time.monotonic() + NODE_DEATH_TIMEOUT_S
        while node_id in self.live_nodes():
            if time.monotonic() > deadline:
                raise TimeoutError(f"kill_node({node_id}): Ray still reports the node alive "
                                   f"{NODE_DEATH_TIMEOUT_S} s after its processes were killed")
            time.sleep(0.05)

    def worker_pids(self, node_id: Optional[str] = None) -> List[int]:
        if node_id is not None and node_id not in self.nodes:
            raise ValueError(f"no node {node_id} in this cluster")
        pids = []
        for node_hex, node in zip(self.nodes, self.node_objects):
            if node_id is not None and node_hex != node_id:
                continue
            for info in node.all_processes.get("raylet", []):
                try:
                    children = psutil.Process(info.process.pid).children()
                except psutil.NoSuchProcess:
                    continue
                for child in children:
                    try:
                        if child.name().startswith("ray::") or child.cmdline()[0].startswith("ray::"):
                            pids.append(child.pid)
                    except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                        continue
        return pids

    def object_locations(self, ref: Any) -> List[str]:
        return list(self.ray.experimental.get_object_locations([ref])[ref]["node_ids"])


# ==== fault plans: skipped on Ray ==========================================================


class RayFaultPlan(FaultPlan):
    """fault_plan on Ray: adding a fault skips the test (only minicluster's runtime can fire it)."""

    def _add(self, fault: Fault) -> "FaultPlan":
        raise pytest.skip.Exception(
            f"minicluster-only: {fault.kind}(...) -- {backend.MINICLUSTER_ONLY['FaultPlan.install']}; "
            f"this test runs on Ray (--minicluster-backend=ray)", _use_item_location=True)

    def install(self) -> "FaultPlan":
        return self  # nothing can fire it; a fault added to it skips the test

    def uninstall(self) -> None:
        return None
