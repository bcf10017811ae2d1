"""The head's I/O thread: sockets in, sockets out, timers.

Runs in the driver process, one thread ("minicluster-hub"). It owns the
listening Unix socket and every accepted connection:

    node managers ──┐                     ┌── handler.on_messages(peer, msgs)
    workers ────────┼─► poll loop ────────┼── handler.on_close(peer)
    wake pipe ──────┘   (poller.py;       └── timers: call_later(delay, fn)
                         + timer heap)

Reads are non-blocking and parsed into frames; a connection first has to pass
the session-key handshake (protocol.ServerHandshake) before any of its frames
reach the handler. Writes are non-blocking too: `Peer.send` writes what the
socket takes at once and leaves the rest in the peer's buffer, which the loop
flushes when the socket becomes writable, so a stopped (SIGSTOPped) process can
never block the head. Handlers and timers run on this thread; an exception in
one is printed and does not stop the loop. A frame that does not decode (a task
that wrote garbage into its worker's socket, say) drops that one connection,
which the head handles as its process's death: nothing else is affected.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable, List, Optional, Protocol

from minicluster._private.wire.poller import READ as _READ
from minicluster._private.wire.poller import WRITE as _WRITE
from minicluster._private.wire.poller import Poller
from minicluster._private.wire.protocol import (
    MAX_FRAME,
    MAX_HANDSHAKE_FRAME,
    FrameDecoder,
    ProtocolError,
    ServerHandshake,
    decode,
    encode,
)

# Bytes asked of recv() at a time. Kept under glibc's mmap threshold (128 KiB):
# a larger buffer is mmapped and unmapped on every call, which costs ~40 us.
RECV_BYTES = 64 * 1024

# A connection must prove it knows the session key within this time.
HANDSHAKE_TIMEOUT_S = 5.0


class Handler(Protocol):
    def on_messages(self, peer: "Peer", messages: List[Any]) -> None: ...

    def on_close(self, peer: "Peer") -> None: ...


class Peer:
    """One accepted connection. `state` is the head's per-connection record (a node or worker)."""

    __slots__ = ("sock", "decoder", "handshake", "out", "lock", "closed", "state", "outbox", "hub", "when_sent")

    def __init__(self, sock: socket.socket, handshake: ServerHandshake, hub: "Hub") -> None:
        self.sock = sock
        self.decoder = FrameDecoder(MAX_HANDSHAKE_FRAME)
        self.handshake = handshake
        self.out = bytearray()
        self.lock = threading.Lock()
        self.closed = False
        self.state: Any = None
        self.outbox: List[Any] = []  # messages the head batches up before one send()
        self.hub = hub
        self.when_sent: List[Callable[[], None]] = []  #: run once `out` is empty (`after_sent`)

    def send(self, messages: List[Any]) -> None:
        """Send messages as one frame without ever blocking; safe from any thread."""
        self.send_raw(encode(messages))

    def send_raw(self, data: bytes) -> None:
        with self.lock:
            if self.closed:
                return
            if not self.out:
                try:
                    sent = self.sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return  # the read side notices the dead socket and closes the peer
                if sent == len(data):
                    return
                data = data[sent:]
            self.out += data
        self.hub.want_write(self)

    def after_sent(self, fn: Callable[[], None]) -> None:
        """Call fn once every byte sent so far is in the socket: at once if it is already, else
        on the hub thread when the rest is written; never if the connection closes first."""
        with self.lock:
            if self.closed:
                return
            if self.out:
                self.when_sent.append(fn)
                return
        fn()


class Hub:
    def __init__(self, listen_path: str, key: bytes, handler: Handler) -> None:
        self.key = key
        self.handler = handler
        self.listen_path = listen_path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(listen_path)  # inside the 0700 session folder: private from the start
        os.chmod(listen_path, 0o600)
        self.listener.listen(256)
        self.listener.setblocking(False)
        self.poller = Poller()
        self.poller.register(self.listener.fileno(), _READ, "listen")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.poller.register(self._wake_r, _READ, "wake")
        self._lock = threading.Lock()
        self._timers: List[tuple] = []
        self._seq = itertools.count()
        self._want_write: set = set()
        self._due: Optional[float] = None  #: when the first timer is due, as of the last _next_timeout
        self._woken = False
        self._stopping = False
        self.peers: set = set()
        self.thread = threading.Thread(target=self._run, name="minicluster-hub", daemon=True)

    # ---- API for other threads -------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        if not self._woken:
            self._woken = True
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass

    def want_write(self, peer: Peer) -> None:
        with self._lock:
            self._want_write.add(peer)
        self.wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> list:
        """Run fn on the hub thread after `delay` seconds; returns a handle for cancel_timer."""
        entry = [time.monotonic() + delay, next(self._seq), fn]
        with self._lock:
            heapq.heappush(self._timers, entry)
        self.wake()
        return entry

    @staticmethod
    def cancel_timer(handle: list) -> None:
        handle[2] = None

    def stop(self) -> None:
        self._stopping = True
        self.wake()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout=2.0)
        for peer in list(self.peers):
            self._close(peer, notify=False)
        try:
            self.poller.close()
        except OSError:
            pass
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.listener.close()
        try:
            os.unlink(self.listen_path)
        except OSError:
            pass

    # ---- the loop ------------------------------------------------------------

    def _run(self) -> None:
        # A round trip's reply is one turn of this loop: the turn looks at writers only when
        # there are some, and runs timers only when one is due.
        poll = self.poller.poll
        while not self._stopping:
            timeout = self._next_timeout()
            try:
                events = poll(timeout)
            except OSError:
                if self._stopping:
                    return
                raise
            for data, mask in events:
                self._guard(self._event, data, mask)
            if self._due is not None and self._due <= time.monotonic():
                self._run_timers()
            if self._want_write:
                self._guard(self._register_writers)

    def _event(self, data: Any, mask: int) -> None:
        if data == "listen":
            self._accept()
        elif data == "wake":
            self._woken = False
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        else:
            if mask & _READ:
                self._read(data)
            if mask & _WRITE and not data.closed:
                self._flush(data)

    def _next_timeout(self) -> Optional[float]:
        """How long the loop may sleep: until the first timer is due (also noted in `_due`)."""
        with self._lock:
            while self._timers and self._timers[0][2] is None:
                heapq.heappop(self._timers)
            if not self._timers:
                self._due = None
                return None
            self._due = self._timers[0][0]
        return max(0.0, self._due - time.monotonic())

    def _run_timers(self) -> None:
        now = time.monotonic()
        due = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                entry = heapq.heappop(self._timers)
                if entry[2] is not None:
                    due.append(entry[2])
        for fn in due:
            self._guard(fn)

    def _register_writers(self) -> None:
        with self._lock:
            peers, self._want_write = self._want_write, set()
        for peer in peers:
            if not peer.closed:
                try:
                    self.poller.modify(peer.sock.fileno(), _READ | _WRITE)
                except (KeyError, ValueError, OSError):
                    pass

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            handshake = ServerHandshake(self.key)
            peer = Peer(sock, handshake, self)
            self.peers.add(peer)
            self.poller.register(sock.fileno(), _READ, peer)
            peer.send_raw(handshake.hello())
            self.call_later(HANDSHAKE_TIMEOUT_S, lambda p=peer: self._drop_if_silent(p))

    def _drop_if_silent(self, peer: Peer) -> None:
        if not peer.closed and not peer.handshake.done:
            print("minicluster: dropped a connection that did not authenticate in time", file=sys.stderr)
            self._close(peer, notify=False)

    def _read(self, peer: Peer) -> None:
        if peer.closed:
            return
        try:
            data = peer.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(peer)
            return
        try:
            frames = peer.decoder.feed(data)
            if not frames:
                return
            if not peer.handshake.done:
                proof = peer.handshake.answer(frames.pop(0))
                if proof is None:
                    raise ProtocolError("authentication failed")
                peer.send_raw(proof)
                peer.decoder.limit = MAX_FRAME
                frames.extend(peer.decoder.feed(b""))  # frames that came with the proof
        except ProtocolError as exc:
            if not peer.handshake.done:
                print(f"minicluster: rejected a connection: {exc}", file=sys.stderr)
                self._close(peer, notify=False)
            else:
                print(f"minicluster: dropping a connection that broke the protocol: {exc}", file=sys.stderr)
                self._close(peer)
            return
        messages: List[Any] = []
        for frame in frames:
            try:
                messages.extend(decode(frame))
            except Exception as exc:  # noqa: BLE001 - any garbage a peer sends must not reach the loop
                # Its earlier messages are handled first: they were well-formed and may be a result.
                if messages:
                    self._guard(self.handler.on_messages, peer, messages)
                self.drop_peer(peer, f"it sent a malformed frame of {len(frame)} bytes "
                                     f"({type(exc).__name__}: {exc})")
                return
        if messages:
            self._guard(self.handler.on_messages, peer, messages)

    def _flush(self, peer: Peer) -> None:
        with peer.lock:
            if peer.out:
                try:
                    sent = peer.sock.send(peer.out)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    sent = len(peer.out)
                del peer.out[:sent]
            empty = not peer.out
            ready: List[Callable[[], None]] = []
            if empty and peer.when_sent:
                ready, peer.when_sent = peer.when_sent, []
        for fn in ready:
            self._guard(fn)
        if empty:
            try:
                self.poller.modify(peer.sock.fileno(), _READ)
            except (KeyError, ValueError, OSError):
                pass

    def _close(self, peer: Peer, notify: bool = True) -> None:
        with peer.lock:
            if peer.closed:
                return
            peer.closed = True
            peer.when_sent = []
        self.peers.discard(peer)
        try:
            self.poller.unregister(peer.sock.fileno())
        except (KeyError, ValueError, OSError):
            pass
        peer.sock.close()
        if notify and peer.handshake.done:
            self._guard(self.handler.on_close, peer)

    def drain(self, peer: Peer) -> List[Any]:
        """Everything a peer whose process has exited still left in its socket (hub thread only).

        A worker's last messages (its final "done") can still be unread when the
        node manager's exit report arrives on another socket; reading them first
        keeps a finished task from being taken for one that died.
        """
        messages: List[Any] = []
        if peer.closed or not peer.handshake.done:
            return messages
        while True:
            try:
                data = peer.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError, OSError):
                break
            if not data:
                break
            try:
                frames = peer.decoder.feed(data)
            except ProtocolError:
                break
            for frame in frames:
                messages.extend(decode(frame))
        return messages

    def drop_peer(self, peer: Peer, reason: str) -> None:
        """Close a connection that broke the protocol, say why on stderr, and tell the handler
        (hub thread only): the head then treats its process as dead, as if it had exited."""
        if peer.closed:
            return
        print(f"minicluster: dropping a connection to the head because {reason}", file=sys.stderr)
        self._close(peer)

    def close_peer(self, peer: Peer) -> None:
        """Drop a connection from the hub thread (for example: a worker we killed)."""
        self._close(peer, notify=False)

    @staticmethod
    def _guard(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - one bad message must not kill the I/O thread
            print("minicluster: internal error in the head's I/O thread:", file=sys.stderr)
            traceback.print_exc()
