"""Which runtime minicluster.testing drives: minicluster (the default) or a real Ray cluster.

Runs in the driver. The pytest plugin's --minicluster-backend=ray (ray_backend.py)
registers the Ray cluster it started for the running test; the on-demand controls
(cluster_control.py) then act on it, and what only minicluster can do is refused
with an error naming why. Kept apart from ray_backend.py so the controls can ask
without importing Ray.
"""

from __future__ import annotations

from typing import Any, Optional

#: Why a control is minicluster-only, per control (the README's list says the same).
MINICLUSTER_ONLY = {
    "stop_node": "Ray cannot pause a node (SIGSTOP of a virtual node's processes)",
    "resume_node": "Ray cannot pause a node (SIGSTOP of a virtual node's processes)",
    "kill_worker_running": "Ray does not tell the driver which worker runs a task without its dashboard",
    "snapshot": "it reads minicluster's head, which a Ray cluster does not have",
    "validate_state": "it checks minicluster's head invariants, which a Ray cluster does not have",
    "FaultPlan.install": ("a fault plan is fired by minicluster's runtime at its own event points "
                          "(task dispatch, start, result; node task counts); Ray has no such hooks"),
}

_active: Optional[Any] = None  #: the running test's ray_backend.RayCluster, if the backend is Ray


def active() -> Optional[Any]:
    """The Ray cluster the plugin started for the running test, or None (minicluster)."""
    return _active


def set_active(cluster: Optional[Any]) -> None:
    global _active
    _active = cluster


class MiniclusterOnlyError(RuntimeError):
    """A minicluster.testing feature used while the tests run on real Ray (--minicluster-backend=ray)."""


def refuse_on_ray(what: str) -> None:
    """Raise MiniclusterOnlyError if the tests run on Ray: `what` needs minicluster's runtime."""
    if _active is not None:
        raise MiniclusterOnlyError(f"minicluster.testing.{what}() is minicluster-only: {MINICLUSTER_ONLY[what]} "
                                   f"(this test runs on Ray: --minicluster-backend=ray)")
