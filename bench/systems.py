"""How each compared system is configured, started and stopped.

Systems:

- ``minicluster``  ``import minicluster as ray``; ``init(num_nodes=N, num_cpus=C)``
- ``ray``          ``import ray``; ``init(num_cpus=..., include_dashboard=False,
                   logging_level=WARNING)`` (the subprocess also gets RAY_USAGE_STATS_ENABLED=0)
- ``ppe``          ``concurrent.futures.ProcessPoolExecutor(max_workers=...)``
- ``mp``           ``multiprocessing.Pool(processes=...)``

Two configurations ("profiles"), with the same number of worker slots for every system:

- ``start``  4 slots: minicluster 2 nodes x 2 CPUs, Ray num_cpus=4, PPE/Pool 4 workers
- ``warm``   2 slots: minicluster 1 node x 2 CPUs, Ray num_cpus=2, PPE/Pool 2 workers
             (used by the throughput/latency/object benchmarks, [retry], [footprint],
             [lineage_mem] and the actor benchmarks)

and, for the node benchmarks, each system's ``cluster_utils.Cluster`` test helper (profile
``cluster``): a head node with 1 CPU, worker nodes of 1 CPU added and removed, the driver
attached with ``init(address=cluster.address)``.

Nothing heavy is imported at module level: [start] measures the import itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from bench.specs import LINEAGE_CAP_BYTES

SYSTEMS: list[str] = ["minicluster", "ray", "ppe", "mp"]
RAYLIKE: set[str] = {"minicluster", "ray"}
PROFILES: list[str] = ["start", "warm"]
LOGGING_WARNING = 30  # logging.WARNING; not imported here so [start] times Ray's own import of it

# Environment given to every measurement subprocess of the system.
CHILD_ENV: dict[str, dict[str, str]] = {
    "ray": {"RAY_USAGE_STATS_ENABLED": "0"},
}

# Extra environment of the subprocess of one (system, group).
GROUP_ENV: dict[tuple[str, str], dict[str, str]] = {
    ("minicluster", "lineage"): {"MINICLUSTER_max_lineage_bytes": str(LINEAGE_CAP_BYTES)},
}

# The Cluster helper (profile "cluster"), the same arguments for both systems; minicluster
# ignores include_dashboard (it has no dashboard).
CLUSTER_HEAD_ARGS: dict[str, Any] = {"num_cpus": 1, "include_dashboard": False}
CLUSTER_NODE_ARGS: dict[str, Any] = {"num_cpus": 1}


class Unavailable(Exception):
    """The system cannot be used here (not installed, import error, init error)."""


def slots(profile: str) -> int:
    return 4 if profile == "start" else 2


def init_kwargs(system: str, profile: str) -> dict[str, Any]:
    """Keyword arguments of ``init`` for the Ray-like systems."""
    if system == "minicluster":
        return {"num_nodes": 2, "num_cpus": 2} if profile == "start" else {"num_nodes": 1, "num_cpus": 2}
    if system == "ray":
        return {"num_cpus": slots(profile), "include_dashboard": False, "logging_level": LOGGING_WARNING}
    raise ValueError(f"{system} is not Ray-like")


def attach_kwargs(system: str) -> dict[str, Any]:
    """Keyword arguments of ``init(address=cluster.address, ...)`` (profile "cluster")."""
    return {"logging_level": LOGGING_WARNING}


def describe(system: str, profile: str) -> str:
    """The exact configuration, as printed in the report."""
    if profile == "cluster":
        if system not in RAYLIKE:
            return "n/a (no nodes)"
        env = " ".join(f"{k}={v}" for k, v in CHILD_ENV.get(system, {}).items())
        return (f"{system}.cluster_utils.Cluster(initialize_head=True, head_node_args="
                f"{CLUSTER_HEAD_ARGS}); init(address=cluster.address, logging_level=logging.WARNING); "
                f"add_node(**{CLUSTER_NODE_ARGS})" + (f" [{env}]" if env else ""))
    if profile == "lineage":
        if system == "minicluster":
            env = " ".join(f"{k}={v}" for k, v in GROUP_ENV[("minicluster", "lineage")].items())
            return describe(system, "warm") + f" [{env}]"
        if system == "ray":
            return describe(system, "warm") + " (skipped: too slow, see the n/a reasons)"
        return "n/a (no lineage)"
    n = slots(profile)
    if system == "minicluster":
        kw = init_kwargs(system, profile)
        return f"minicluster.init(num_nodes={kw['num_nodes']}, num_cpus={kw['num_cpus']})"
    if system == "ray":
        env = " ".join(f"{k}={v}" for k, v in CHILD_ENV["ray"].items())
        return f"ray.init(num_cpus={n}, include_dashboard=False, logging_level=logging.WARNING) [{env}]"
    if system == "ppe":
        return f"concurrent.futures.ProcessPoolExecutor(max_workers={n})"
    if system == "mp":
        return f"multiprocessing.Pool(processes={n})"
    raise ValueError(system)


def import_raylike(system: str) -> ModuleType:
    """Import ``ray`` or ``minicluster``; raise Unavailable with a short reason if it can't be."""
    if importlib.util.find_spec(system) is None:
        raise Unavailable("not installed")
    try:
        return importlib.import_module(system)
    except Exception as e:  # any import-time failure makes the column n/a, not the run
        raise Unavailable(f"import failed: {type(e).__name__}: {e}") from e


def init_raylike(rt: ModuleType, system: str, profile: str) -> None:
    try:
        rt.init(**init_kwargs(system, profile))
    except Exception as e:
        raise Unavailable(f"init failed: {type(e).__name__}: {e}") from e


class PoolSystem:
    """Common face of ProcessPoolExecutor and multiprocessing.Pool.

    ``submit`` returns a zero-argument-or-timeout waiter (``Future.result`` /
    ``AsyncResult.get``); ``call`` is the synchronous form (``submit().result()`` for PPE,
    ``Pool.apply`` for mp).
    """

    def __init__(self, system: str, workers: int) -> None:
        self.system = system
        if system == "ppe":
            import concurrent.futures

            self.ex = concurrent.futures.ProcessPoolExecutor(max_workers=workers)
        elif system == "mp":
            import multiprocessing

            self.pool = multiprocessing.Pool(processes=workers)
        else:
            raise ValueError(system)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Callable[..., Any]:
        if self.system == "ppe":
            return self.ex.submit(fn, *args).result
        return self.pool.apply_async(fn, args).get

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.system == "ppe":
            return self.ex.submit(fn, *args).result()
        return self.pool.apply(fn, args)

    def shutdown(self) -> None:
        """Graceful stop, waiting for the workers (comparable to ``ray.shutdown()``)."""
        if self.system == "ppe":
            self.ex.shutdown(wait=True)
        else:
            self.pool.close()
            self.pool.join()

    def terminate(self) -> None:
        """Hard stop, for a pool left in a broken state."""
        if self.system == "ppe":
            self.ex.shutdown(wait=True, cancel_futures=True)
        else:
            self.pool.terminate()
            self.pool.join()


class Handle:
    """A started system: ``rt`` (the ray/minicluster module) or ``pool``."""

    def __init__(self, system: str, profile: str, rt: ModuleType | None = None,
                 pool: PoolSystem | None = None) -> None:
        self.system = system
        self.profile = profile
        self.rt = rt
        self.pool = pool

    def shutdown(self) -> None:
        if self.rt is not None:
            self.rt.shutdown()
        elif self.pool is not None:
            self.pool.shutdown()

    def version(self) -> str | None:
        return getattr(self.rt, "__version__", None) if self.rt is not None else None

    def origin(self) -> str | None:
        """The directory the module was imported from."""
        f = getattr(self.rt, "__file__", None) if self.rt is not None else None
        return os.path.dirname(f) if f else None


def start(system: str, profile: str) -> Handle:
    """Start ``system`` in ``profile``; raise Unavailable if it can't be."""
    if system in RAYLIKE:
        rt = import_raylike(system)
        init_raylike(rt, system, profile)
        return Handle(system, profile, rt=rt)
    return Handle(system, profile, pool=PoolSystem(system, slots(profile)))
