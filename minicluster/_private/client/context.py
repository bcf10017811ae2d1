"""Which runtime this process talks to: the driver's or a worker's.

Set once per process: by `init()` in the driver (the embedded head), by
`worker_main` in a worker. The public API looks the client up here, so the
same `get`/`put`/`remote` code works in both places.

`client()` starts a session with default settings when none runs, as Ray's
API functions do (its auto-init hook). The public `init` registers itself as
that starter (`set_auto_init`), so this module never imports the public API.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Optional

_client: Optional[Any] = None
_is_worker = False
_auto_init: Optional[Callable[[], None]] = None
#: Held by init() and shutdown() too: a session starts or stops under it, never both at once.
init_lock = threading.RLock()


def set_client(client: Optional[Any], is_worker: bool = False) -> None:
    global _client, _is_worker
    _client = client
    _is_worker = is_worker


def set_auto_init(start: Callable[[], None]) -> None:
    """Register how `client()` starts a default session (the public `init()`)."""
    global _auto_init
    _auto_init = start


def current() -> Optional[Any]:
    """This process's runtime client, or None when no session runs."""
    return _client


def client() -> Any:
    """This process's runtime client; starts a local session with default settings if none runs."""
    found = _client
    if found is not None:
        return found
    with init_lock:
        if _client is None:
            if _auto_init is None:
                raise RuntimeError("minicluster: no session is running; call minicluster.init() first")
            _auto_init()
            if _client is not None:  # (as Ray says which it did: joined a cluster, or started one)
                joined = getattr(_client, "cluster_owned", False)
                print("minicluster: init() was not called; " + (
                    "joined the Cluster of this process." if joined
                    else "started a local session with default settings."), file=sys.stderr)
        if _client is None:
            raise RuntimeError("minicluster: init() did not start a session")
        return _client


def in_worker() -> bool:
    return _is_worker
