"""The `cluster_utils.Cluster`s of this process, by address, so `init(address=...)` can join one.

Runs in the driver. A Cluster owns a DriverClient that is not the process's
current session until something connects to it (`Cluster.connect()` or
`init(address=cluster.address)`); this registry is how `init` finds it without
the public API and cluster_utils importing each other.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from minicluster._private.client import context

ADDRESS_PREFIX = "minicluster://"

_clients: Dict[str, Any] = {}  # address -> the DriverClient of a live Cluster


def register(address: str, client: Any) -> None:
    _clients[address] = client


def unregister(address: str) -> None:
    _clients.pop(address, None)


def is_cluster_address(address: Optional[str]) -> bool:
    return isinstance(address, str) and address.startswith(ADDRESS_PREFIX)


def only_address() -> Optional[str]:
    """The address of the one live Cluster (for `init(address="auto")`), or None."""
    return next(iter(_clients)) if len(_clients) == 1 else None


def attach(address: str) -> None:
    """Make the Cluster at `address` this process's session."""
    client = _clients.get(address)
    if client is None:
        raise ConnectionError(f"no minicluster Cluster at {address!r} in this process")
    current = context.current()
    if current is client:
        return
    if current is not None:
        raise RuntimeError("init(address=...): another session is running in this process; shutdown() first")
    context.set_client(client)
