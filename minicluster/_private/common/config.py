"""Tunables and environment variables, read when a session starts.

Ray's variables work with either prefix: `MINICLUSTER_<name>` wins, else
`RAY_<name>` is honoured, so a Ray job's environment carries over unchanged.
Module constants are the knobs tests may monkeypatch.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Callable, Optional, Tuple, TypeVar

T = TypeVar("T")

# Values up to this many serialized bytes travel inside messages; larger ones go
# to the node's shared-memory store. Ray uses 100 KiB: large enough that tiny
# task results never touch a file, small enough that messages stay cheap.
INLINE_THRESHOLD = 100 * 1024

# A worker that died is reported by its node manager (with its exit status)
# right after the socket closes; this bounds how long the head waits for that
# report before handling the death without a reason.
DEATH_REPORT_GRACE_S = 1.0

# Where a session can start. Linux has all the runtime is built on: /dev/shm (tmpfs) for the
# stores, /proc (reaping a dead driver's nodes), prctl(PR_SET_PDEATHSIG) so workers die with their
# node, fork() without exec for the warm zygote, posix_fallocate for spare store files. macOS is
# not broken by design (SPEC): each of these has a fallback there, but it is not tested, so a
# session there says what it does without. Anything else (Windows: no fork) is refused.
SUPPORTED_PLATFORMS = ("linux",)
UNTESTED_PLATFORMS = ("darwin",)
_MACOS_WITHOUT = (
    "minicluster on macOS is untested (Linux is the supported platform): the object stores are folders on "
    "disk (no /dev/shm), workers outlive a SIGKILLed node manager (no PR_SET_PDEATHSIG), the nodes of a "
    "SIGKILLed driver are not reaped (no /proc), and fork() without exec can abort in libraries built on "
    "Apple's frameworks")
_warned_platform = False


def check_platform() -> None:
    """Refuse to start a session where the runtime cannot work, saying why (at init, before anything runs);
    on macOS, say once what the session does without."""
    global _warned_platform
    if sys.platform.startswith(SUPPORTED_PLATFORMS):
        return
    if sys.platform.startswith(UNTESTED_PLATFORMS):
        if not _warned_platform:
            _warned_platform = True
            warnings.warn(_MACOS_WITHOUT, UserWarning, stacklevel=3)
        return
    raise RuntimeError(
        f"minicluster runs on Linux (and, untested, macOS), and this is {sys.platform!r}: its virtual nodes "
        "need fork() without exec, Unix sockets, /dev/shm and /proc. Run it in a Linux container or VM "
        "(Docker Desktop, WSL 2), or switch the import back to ray, which runs here.")


# Below this many bytes free in /dev/shm the store falls back to a disk folder.
MIN_SHM_BYTES = 64 * 1024 * 1024

# Default store size: this share of free /dev/shm, split among the nodes.
DEFAULT_STORE_SHARE = 0.3


def env(name: str, default: T, cast: Callable[[str], T]) -> T:
    """The value of MINICLUSTER_<name>, else RAY_<name>, else `default`."""
    for prefix in ("MINICLUSTER_", "RAY_"):
        raw = os.environ.get(prefix + name)
        if raw is not None and raw != "":
            try:
                return cast(raw)
            except ValueError as exc:
                raise ValueError(f"environment variable {prefix + name}={raw!r} is not a valid value: {exc}") from None
    return default


def _flag(raw: str) -> bool:
    """Ray's reading of a boolean variable: "1" or "true" (any case) is on, anything else off."""
    return raw.strip().lower() in ("1", "true")


def dedup_logs() -> bool:
    """RAY_DEDUP_LOGS: fold repeated worker lines on the driver's terminal (observe/log_dedup.py)."""
    return env("DEDUP_LOGS", True, _flag)


def avoid_gpu_nodes() -> bool:
    """RAY_scheduler_avoid_gpu_nodes (Ray's default: on): tasks and actors without GPUs go to nodes
    without GPUs while one of those has room, keeping GPU nodes free for GPU work."""
    return env("scheduler_avoid_gpu_nodes", True, _flag)


def tqdm_patch_print() -> bool:
    """RAY_TQDM_PATCH_PRINT: once tqdm_ray bars are shown, the driver's print() writes above them."""
    return env("TQDM_PATCH_PRINT", True, _flag)


def dedup_window_s() -> float:
    return env("DEDUP_LOGS_AGG_WINDOW_S", 5.0, float)


def dedup_allow_regex() -> Optional[str]:
    """Lines matching it are never folded."""
    return env("DEDUP_LOGS_ALLOW_REGEX", None, str)  # type: ignore[arg-type]


def dedup_skip_regex() -> Optional[str]:
    """Lines matching it are not printed at all."""
    return env("DEDUP_LOGS_SKIP_REGEX", None, str)  # type: ignore[arg-type]


def task_max_retries() -> int:
    return env("TASK_MAX_RETRIES", 3, int)


def max_lineage_bytes() -> int:
    return env("max_lineage_bytes", 1024**3, int)


def function_size_thresholds() -> Tuple[int, int]:
    """(warn, error) sizes of a pickled remote function or actor class, Ray's defaults:
    one that big almost always captured a large object from its scope by mistake."""
    return (env("FUNCTION_SIZE_WARN_THRESHOLD", 10**7, int), env("FUNCTION_SIZE_ERROR_THRESHOLD", 10**8, int))


def fetch_fail_timeout_s() -> float:
    return env("fetch_fail_timeout_milliseconds", 600_000, int) / 1000.0


def sessions_kept() -> int:
    """How many ended sessions keep their folders (logs, state journal) for `minicluster list`."""
    return max(1, env("SESSIONS_KEPT", 20, int))


def object_store_memory() -> Optional[int]:
    value = env("OBJECT_STORE_MEMORY", None, int)  # type: ignore[arg-type]
    return env("object_store_memory", value, int)  # type: ignore[arg-type]


def default_store_capacity(in_shm: bool, num_nodes: int) -> int:
    """A node's store capacity when object_store_memory is not given: a share of free /dev/shm."""
    configured = object_store_memory()
    if configured:
        return configured
    import shutil

    try:
        free = shutil.disk_usage(shm_root()).free if in_shm else 4 * 1024**3
    except OSError:
        free = 4 * 1024**3
    return max(MIN_SHM_BYTES, int(free * DEFAULT_STORE_SHARE / num_nodes))


#: Ray's share of a machine's memory that its memory resource offers (the rest: the system).
NODE_MEMORY_SHARE = 0.7


def default_node_memory(store_capacity: int) -> int:
    """A node's `memory` resource when none is given, as Ray sizes it: a share of the machine's
    memory, less the object store's. Every virtual node gets it, as every node of Ray's Cluster
    on one machine does."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 8 * 1024**3
    return max(0, int(physical * NODE_MEMORY_SHARE) - store_capacity)


def session_root() -> str:
    """Where session folders live: MINICLUSTER_TMPDIR / RAY_TMPDIR, else /tmp/minicluster-<uid>."""
    base = env("TMPDIR", "", str)
    if base:
        return os.path.join(base, f"minicluster-{os.getuid()}")
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"minicluster-{os.getuid()}")


def shm_root() -> str:
    """The folder whose filesystem holds object stores (tmpfs on Linux)."""
    return env("SHM_DIR", "/dev/shm", str)
