"""Framing and authentication for the Unix-socket connections of a session.

Every connection (node manager -> head, worker -> head) starts with a mutual
HMAC challenge over the session's secret key, so only processes that were given
the key (the session's own, forked from its node managers) can talk to the
head. After that, each frame is a 4-byte little-endian length and a pickled
*list* of messages: batching many messages into one frame is what keeps the
per-task cost low.

The messages themselves, who sends each and when, are defined in messages.py:
that module is their one definition, used by both ends, and it turns them into
the plain tuples that are pickled (`encode`, `decode`).
"""

from __future__ import annotations

import hmac
import os
import pickle
import socket
import struct
import threading
from typing import Any, List, Optional

from minicluster._private.wire.messages import from_wire, to_wire

_LEN = struct.Struct("<I")
CHALLENGE_BYTES = 32
MAX_FRAME = 1 << 31
# Before a peer has authenticated, its only frame is a 64-byte proof: anything
# announcing more is not one of ours and is dropped at once.
MAX_HANDSHAKE_FRAME = 1024


class ProtocolError(ConnectionError):
    """The peer broke the protocol or failed authentication."""


def _proof(key: bytes, challenge: bytes) -> bytes:
    return hmac.new(key, challenge, "sha256").digest()


class FrameDecoder:
    """Accumulates bytes and yields complete frames."""

    __slots__ = ("_buf", "limit")

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.limit = limit  #: frames announcing more bytes are a protocol error

    def buffered(self) -> bool:
        """Bytes of an unfinished frame are waiting for the rest."""
        return bool(self._buf)

    def feed(self, data: bytes) -> List[bytes]:
        buf = self._buf
        buf += data
        frames = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (length,) = _LEN.unpack_from(buf, pos)
            if length > self.limit:
                raise ProtocolError(f"frame of {length} bytes announced (limit {self.limit})")
            if end - pos - 4 < length:
                break
            frames.append(bytes(buf[pos + 4 : pos + 4 + length]))
            pos += 4 + length
        if pos:
            del buf[:pos]
        return frames


def frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


def encode(messages: List[Any]) -> bytes:
    return frame(pickle.dumps(to_wire(messages), protocol=5))


def decode(payload: bytes) -> List[Any]:
    """The messages of one frame's payload (what `encode` framed)."""
    return from_wire(pickle.loads(payload))


class Connection:
    """A blocking, authenticated connection; the client side of the protocol.

    `send` may be called from several threads; `recv` from one thread only.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._decoder = FrameDecoder()
        self._pending: List[bytes] = []
        self._send_lock = threading.Lock()

    @classmethod
    def connect(cls, path: str, key: bytes, timeout: float = 10.0) -> "Connection":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        conn = cls(sock)
        challenge = conn.recv_frame()
        mine = os.urandom(CHALLENGE_BYTES)
        sock.sendall(frame(_proof(key, challenge) + mine))
        answer = conn.recv_frame()
        if not hmac.compare_digest(answer, _proof(key, mine)):
            raise ProtocolError("the head failed to prove it knows the session key")
        sock.settimeout(None)
        return conn

    def recv_frame(self) -> bytes:
        """Block until a whole frame has come; return its payload. Raises ConnectionError on EOF."""
        while not self._pending:
            whole = self._take(self.sock.recv(1 << 16))
            if whole is not None:
                return whole
        return self._pending.pop(0)

    def pending(self) -> bool:
        """Whole frames have been read from the socket and not taken yet (poll() cannot tell)."""
        return bool(self._pending)

    def poll_frame(self) -> Optional[bytes]:
        """A whole frame's payload if one has come, without blocking; else None."""
        if not self._pending:
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            whole = self._take(data)
            if whole is not None:
                return whole
            if not self._pending:
                return None
        return self._pending.pop(0)

    def _take(self, data: bytes) -> Optional[bytes]:
        """Bytes read: the payload if they are exactly one frame, else queued in `_pending`."""
        if not data:
            raise ConnectionError("connection closed")
        if not self._decoder.buffered() and len(data) >= 4 and _LEN.unpack_from(data)[0] == len(data) - 4:
            # Nearly every read (a worker's next Exec, a Reply) is one whole frame:
            # taken as it is, without the decoder's buffer copies (~1 us each time).
            return data[4:]
        self._pending.extend(self._decoder.feed(data))
        return None

    def recv(self) -> List[Any]:
        """Block until a frame arrives; return its messages. Raises ConnectionError on EOF."""
        return decode(self.recv_frame())

    def send(self, *messages: Any) -> None:
        data = encode(list(messages))
        with self._send_lock:
            self.sock.sendall(data)

    def send_list(self, messages: List[Any]) -> None:
        data = encode(messages)
        with self._send_lock:
            self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class ServerHandshake:
    """The head's side of the challenge, driven by the hub's non-blocking reads."""

    __slots__ = ("key", "challenge", "done")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.challenge = os.urandom(CHALLENGE_BYTES)
        self.done = False

    def hello(self) -> bytes:
        return frame(self.challenge)

    def answer(self, payload: bytes) -> Optional[bytes]:
        """Check the client's proof; return the frame proving ourselves, or None if it failed."""
        proof, theirs = payload[:-CHALLENGE_BYTES], payload[-CHALLENGE_BYTES:]
        if len(theirs) != CHALLENGE_BYTES or not hmac.compare_digest(proof, _proof(self.key, self.challenge)):
            return None
        self.done = True
        return frame(_proof(self.key, theirs))
