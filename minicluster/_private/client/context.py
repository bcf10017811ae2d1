"""Which runtime this process talks to: the driver's or a worker's.

Set once per process: by `init()` in the driver (the embedded head), by
`worker_main` in a worker. The public API functions look it up here, so the
same `get`/`put`/`remote` code works in both places.
"""

from __future__ import annotations

from typing import Any, Optional

_client: Optional[Any] = None
_is_worker = False


def set_client(client: Optional[Any], is_worker: bool = False) -> None:
    global _client, _is_worker
    _client = client
    _is_worker = is_worker


def current() -> Optional[Any]:
    return _client


def in_worker() -> bool:
    return _is_worker
