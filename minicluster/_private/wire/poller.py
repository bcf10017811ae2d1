"""Which of the hub's connections are ready: epoll on Linux, the selectors module elsewhere.

Used by the hub thread (hub.py) only. A round trip's reply is one wake-up of
that thread, so the wake-up costs as few Python calls as it can: on Linux the
hub asks epoll directly and gets back the object it registered for each file
descriptor; `selectors` would build a key tuple per event and convert every
mask on the way. Elsewhere (macOS, untested) the selectors module does it.

Masks are READ and WRITE; a hang-up or error reports both, so whichever
handler is interested sees the closed socket.
"""

from __future__ import annotations

import select
import selectors
from typing import Any, Dict, List, Optional, Tuple

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class Poller:
    """fd -> registered object, and a poll that returns (object, mask) pairs."""

    def __init__(self) -> None:
        self._objects: Dict[int, Any] = {}
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._selector = selectors.DefaultSelector() if self._epoll is None else None

    def register(self, fd: int, mask: int, obj: Any) -> None:
        if self._epoll is not None:
            self._epoll.register(fd, _epoll_mask(mask))
        else:
            self._selector.register(fd, mask, obj)  # type: ignore[union-attr]
        self._objects[fd] = obj

    def modify(self, fd: int, mask: int) -> None:
        if fd not in self._objects:
            return  # (unregistered meanwhile: its peer was closed)
        if self._epoll is not None:
            self._epoll.modify(fd, _epoll_mask(mask))
        else:
            self._selector.modify(fd, mask, self._objects[fd])  # type: ignore[union-attr]

    def unregister(self, fd: int) -> None:
        if self._objects.pop(fd, None) is None:
            return
        if self._epoll is not None:
            self._epoll.unregister(fd)
        else:
            self._selector.unregister(fd)  # type: ignore[union-attr]

    def poll(self, timeout: Optional[float]) -> List[Tuple[Any, int]]:
        """Wait up to `timeout` seconds (None: no limit) for readiness."""
        if self._epoll is None:
            return [(key.data, mask) for key, mask in self._selector.select(timeout)]  # type: ignore[union-attr]
        objects = self._objects
        ready = []
        for fd, events in self._epoll.poll(-1 if timeout is None else timeout):
            obj = objects.get(fd)
            if obj is None:
                continue
            mask = 0
            if events & ~select.EPOLLOUT:  # in, hang-up, error
                mask |= READ
            if events & ~select.EPOLLIN:  # out, hang-up, error
                mask |= WRITE
            ready.append((obj, mask))
        return ready

    def close(self) -> None:
        self._objects.clear()
        if self._epoll is not None:
            self._epoll.close()
        else:
            self._selector.close()  # type: ignore[union-attr]


def _epoll_mask(mask: int) -> int:
    return (select.EPOLLIN if mask & READ else 0) | (select.EPOLLOUT if mask & WRITE else 0)
