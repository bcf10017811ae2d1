"""Ray's `_system_config` table and reconstruction switch, as `init()` and `Cluster.add_node()` take them.

Runs in the driver. Ray's `_system_config` is an internal tuning table; here a key is
either honoured (lineage_pinning_enabled, actor_graceful_shutdown_timeout_ms,
preload_python_modules), harmless (it tunes timing, health checks, batching or logging,
none of which exist here, or turns on what minicluster always does), or refused with the
list of what is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

# _system_config keys that only tune timing, health checks, batching or logging in Ray.
HARMLESS_KEYS = frozenset({
    "object_timeout_milliseconds", "health_check_initial_delay_ms", "health_check_period_ms",
    "health_check_timeout_ms", "health_check_failure_threshold", "object_store_full_delay_ms",
    "local_gc_min_interval_s", "task_retry_delay_ms", "worker_lease_timeout_milliseconds",
    "timeout_ms_task_wait_for_death_info", "fetch_warn_timeout_milliseconds", "metrics_report_interval_ms",
    "task_events_report_interval_ms", "raylet_death_check_interval_milliseconds",
    "gcs_rpc_server_reconnect_timeout_s", "gcs_server_request_timeout_seconds", "worker_register_timeout_seconds",
    "max_io_workers", "min_spilling_size", "max_direct_call_object_size", "num_heartbeats_timeout",
    "raylet_heartbeat_period_milliseconds", "enable_autoscaler_v2", "kill_idle_workers_interval_ms",
    "idle_worker_killing_time_threshold_ms", "record_ref_creation_sites", "free_objects_period_milliseconds",
    "debug_dump_period_milliseconds", "worker_cap_initial_backoff_delay_ms", "worker_cap_max_backoff_delay_ms",
    # no worker leases here (a task goes straight to a worker), so nothing to batch or limit
    "max_pending_lease_requests_per_scheduling_category",
    # fork() in a task works in any worker here (no gRPC threads to break)
    "support_fork",
})
#: Ray switches for what minicluster always does: taken when on, refused when asked to turn them off
ALWAYS_ON_KEYS = frozenset({
    "worker_cap_enabled",  # scheduling classes take turns (task_flow.schedule), so blocked calls start few workers
})
#: keys honoured here: lineage_pinning_enabled=False turns lineage reconstruction off;
#: actor_graceful_shutdown_timeout_ms bounds an ending actor's __ray_shutdown__
#: preload_python_modules is imported by each node manager before it forks workers
HONOURED_KEYS = frozenset({"lineage_pinning_enabled", "actor_graceful_shutdown_timeout_ms",
                           "preload_python_modules"})
#: Ray's default: an actor ending on purpose is killed if it has not exited after this long
ACTOR_SHUTDOWN_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class ClusterSettings:
    """What the cluster-wide settings of init() / the first Cluster node change here."""

    reconstruction: bool = True
    actor_shutdown_timeout_s: float = ACTOR_SHUTDOWN_TIMEOUT_MS / 1000
    #: modules every worker has imported before its first task (node managers import them before forking)
    preload_modules: Tuple[str, ...] = ()


def cluster_settings(where: str, system_config: Optional[Dict[str, Any]],
                     enable_object_reconstruction: Optional[bool]) -> ClusterSettings:
    """Check a `_system_config` table (ValueError/TypeError naming the first bad key) and
    return the settings it makes."""
    timeout_ms = (system_config or {}).get("actor_graceful_shutdown_timeout_ms", ACTOR_SHUTDOWN_TIMEOUT_MS)
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or timeout_ms < 0:
        raise ValueError(f"{where}(_system_config): actor_graceful_shutdown_timeout_ms must be a number of "
                         f"milliseconds >= 0, got {timeout_ms!r}")
    preload = (system_config or {}).get("preload_python_modules", [])
    if not isinstance(preload, (list, tuple)) or not all(isinstance(name, str) and name for name in preload):
        raise TypeError(f"{where}(_system_config): preload_python_modules must be a list of module names, "
                        f"got {preload!r}")
    for key in ALWAYS_ON_KEYS & set(system_config or {}):
        if not system_config[key]:  # type: ignore[index]
            raise ValueError(f"{where}(_system_config): {key}=False cannot be had here: minicluster always "
                             "works that way")
    return ClusterSettings(reconstruction=_reconstruction_enabled(where, system_config, enable_object_reconstruction),
                           actor_shutdown_timeout_s=timeout_ms / 1000, preload_modules=tuple(preload))


def _reconstruction_enabled(where: str, system_config: Optional[Dict[str, Any]],
                            enable_object_reconstruction: Optional[bool]) -> bool:
    enabled = True if enable_object_reconstruction is None else bool(enable_object_reconstruction)
    if system_config is None:
        return enabled
    if not isinstance(system_config, dict):
        raise TypeError(f"{where}(_system_config={system_config!r}): must be a dict")
    refused = sorted(set(system_config) - HARMLESS_KEYS - HONOURED_KEYS - ALWAYS_ON_KEYS)
    if refused:
        taken = ", ".join(sorted(HONOURED_KEYS | HARMLESS_KEYS | ALWAYS_ON_KEYS))
        raise ValueError(f"{where}(_system_config): {refused[0]!r} is a Ray setting minicluster does not have; "
                         f"it takes lineage_pinning_enabled and timing and health-check settings, which change "
                         f"nothing here: {taken}")
    return enabled and bool(system_config.get("lineage_pinning_enabled", True))
