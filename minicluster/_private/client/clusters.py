"""Session addresses: the `cluster_utils.Cluster`s of this process, and what `init(address=...)` joins.

Runs in the driver. A Cluster owns a DriverClient that is not the process's
current session until something connects to it (`Cluster.connect()` or
`init(address=cluster.address)`); this registry is how `init` finds it without
the public API and cluster_utils importing each other.

A session's address is `minicluster://<session folder>`. Sessions live in the
process that started them (the head runs in it): another process can find a
running session of this user (`init(address="auto")`) but not join it, and is
told so.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from minicluster._private.client import context
from minicluster._private.client.session import pid_alive
from minicluster._private.common import config

ADDRESS_PREFIX = "minicluster://"

_clients: Dict[str, Any] = {}  # address -> the DriverClient of a live Cluster


def register(address: str, client: Any) -> None:
    _clients[address] = client


def unregister(address: str) -> None:
    _clients.pop(address, None)


def is_cluster_address(address: Optional[str]) -> bool:
    return isinstance(address, str) and address.startswith(ADDRESS_PREFIX)


def only_address() -> Optional[str]:
    """The address of the one live Cluster that has nodes (what `init()` and `init(address="auto")`
    join), or None. One without nodes has no address yet, as Ray's has none without a head."""
    started = [address for address, client in _clients.items() if client.head.nodes]
    return started[0] if len(started) == 1 else None


def address_of(session_dir: str) -> str:
    return f"{ADDRESS_PREFIX}{session_dir}"


def running_elsewhere() -> Optional[str]:
    """The folder of a running session of this user started by another process, or None."""
    root = config.session_root()
    try:
        names = sorted(os.listdir(root), reverse=True)  # newest first (names sort by start time)
    except OSError:
        return None
    for name in names:
        try:
            with open(os.path.join(root, name, "session.json")) as f:
                pid = json.load(f).get("driver_pid")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
            return os.path.join(root, name)
    return None


def not_joinable(address: str) -> ConnectionError:
    """The error for an address of a session this process cannot join."""
    folder = address[len(ADDRESS_PREFIX):] if is_cluster_address(address) else address
    if os.path.exists(os.path.join(folder, "session.json")):
        return ConnectionError(
            f"init(address={address!r}): that session runs in another process, and a minicluster "
            "session cannot be shared between processes (its head lives in the process that started "
            "it). Run this code in that process, or call init() without an address to start a session here.")
    return ConnectionError(f"init(address={address!r}): no running minicluster session or Cluster has "
                           "that address (it was shut down, or never started)")


def attach(address: str) -> None:
    """Make the Cluster at `address` this process's session."""
    client = _clients.get(address)
    if client is None:
        raise not_joinable(address)
    current = context.current()
    if current is client:
        return
    if current is not None:
        raise RuntimeError("init(address=...): another session is running in this process; shutdown() first")
    context.set_client(client)
