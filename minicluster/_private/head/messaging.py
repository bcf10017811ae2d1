"""How the head talks out: outgoing messages batched per connection, and timers under its lock.

Runs in the driver process, under the head's lock (head.py). A flow `post`s a
message to a peer (a worker or node manager connection); the entry point that
took the lock calls `flush` as it leaves, so a burst of work costs one frame,
one syscall, per peer. Timers set through `LockedTimers` run their function on
the hub thread with the head's lock held and flush what it posted.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable, List, Optional, Tuple

from minicluster._private.wire.hub import Hub, Peer


class Outbox:
    """Messages posted under the lock, sent per peer when the entry point leaves."""

    __slots__ = ("dirty", "signals")

    def __init__(self) -> None:
        self.dirty: List[Peer] = []  #: peers whose outbox is not empty, each once
        self.signals: List[Tuple[Peer, int]] = []  #: (peer, its worker's pid) to signal once sent

    def post(self, peer: Optional[Peer], message: Any) -> None:
        if peer is None:
            return
        if not peer.outbox:
            self.dirty.append(peer)
        peer.outbox.append(message)

    def post_urgent(self, peer: Optional[Peer], message: Any, pid: int) -> None:
        """Post a message that a worker busy in its task's code must read now (a CancelTask): once
        it is in the worker's socket, the worker is sent SIGINT, which makes it read (node/inbox.py)."""
        if peer is None:
            return
        self.post(peer, message)
        self.signals.append((peer, pid))

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for peer in dirty:
            messages, peer.outbox = peer.outbox, []
            if messages:
                peer.send(messages)
        if self.signals:
            signals, self.signals = self.signals, []
            for peer, pid in signals:
                peer.after_sent(lambda pid=pid: _interrupt(pid))


def _interrupt(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGINT)
    except (ProcessLookupError, PermissionError):
        pass  # it is gone already: its connection's close tells the head


class LockedTimers:
    """The hub's timers and connections, as the flows use them (the `Timers` interface)."""

    __slots__ = ("hub", "lock", "outbox")

    def __init__(self, hub: Hub, lock: threading.RLock, outbox: Outbox) -> None:
        self.hub = hub
        self.lock = lock
        self.outbox = outbox

    def call_later(self, seconds: float, fn: Callable[[], None]) -> Any:
        """Run fn on the hub thread after `seconds`, under the head's lock; flush what it posts."""
        def run() -> None:
            with self.lock:
                fn()
                self.outbox.flush()
        return self.hub.call_later(seconds, run)

    def cancel_timer(self, timer: Any) -> None:
        self.hub.cancel_timer(timer)

    def close_peer(self, peer: Peer) -> None:
        self.hub.close_peer(peer)
