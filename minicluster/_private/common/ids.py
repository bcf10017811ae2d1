"""Ray-shaped identifiers: job, task, object, node, worker and actor ids.

Ids are raw `bytes` inside the runtime (cheap to hash and pickle); the small
`BaseID` classes below wrap them for the public API (`.hex()`, `.binary()`).
Layout follows Ray so the hex strings look familiar:

    JobID     4 bytes                       01000000
    ActorID   12 unique + job               (16 bytes)
    TaskID    8 unique + 12 actor part + job  (24 bytes; actor part is ff.. for normal tasks)
    ObjectID  TaskID + 4-byte return index  (28 bytes; puts use indexes with the top bit set)
    NodeID, WorkerID  28 random bytes
    PlacementGroupID  14 unique + job       (18 bytes)

Any process may make ids: uniqueness comes from a random per-process prefix
plus a counter, so no coordination is needed.

The job id is the session's: each `init()` in a process starts a new job (1, 2, ...,
little-endian as in Ray, so the first is 01000000) and its node managers (and, by
fork, their workers) are told it. Every task, actor and object id ends in it, so no
id of one session can name something of a later one: a ref kept across
`shutdown()`/`init()` is recognised as stale (`job_of`) instead of silently
reading the new session's object with the same counter.
"""

from __future__ import annotations

import itertools
import os
import threading

JOB_ID_SIZE = 4
_job_id = (1).to_bytes(JOB_ID_SIZE, "little")
_jobs_started = 0
NIL_ACTOR_PART = b"\xff" * 12
PUT_INDEX_FLAG = 1 << 31

_lock = threading.Lock()
_prefix = os.urandom(4)
_counter = itertools.count(1)


def _unique8() -> bytes:
    return _prefix + (next(_counter) & 0xFFFFFFFF).to_bytes(4, "little")


def _new_sequence() -> None:
    """In a forked child: never reuse the parent's sequence (os.fork calls this in the child)."""
    global _prefix, _counter
    _prefix, _counter = os.urandom(4), itertools.count(1)


os.register_at_fork(after_in_child=_new_sequence)


def job_id() -> bytes:
    """The current session's job id (4 bytes)."""
    return _job_id


def start_job() -> bytes:
    """In a driver, at `init()`: a job id no earlier session of this process had."""
    global _job_id, _jobs_started
    with _lock:
        _jobs_started += 1
        _job_id = _jobs_started.to_bytes(JOB_ID_SIZE, "little")
    return _job_id


def set_job_id(value: bytes) -> None:
    """In a node manager, before it forks workers: the session's job id, as the driver chose it."""
    global _job_id
    if len(value) != JOB_ID_SIZE:
        raise ValueError(f"a job id is {JOB_ID_SIZE} bytes, got {len(value)}")
    _job_id = value


def job_of(id_bytes: bytes) -> bytes:
    """The job a task or object id belongs to (its bytes 20..24)."""
    return id_bytes[20:24]


def new_task_id(actor_id: bytes | None = None) -> bytes:
    actor_part = actor_id[:12] if actor_id else NIL_ACTOR_PART
    return _unique8() + actor_part + _job_id


def new_actor_id() -> bytes:
    return os.urandom(4) + _unique8() + _job_id


def new_placement_group_id() -> bytes:
    """A placement group id: 14 bytes, the last 4 the job's (18 bytes, as Ray's)."""
    return os.urandom(6) + _unique8() + _job_id


def object_id_for_return(task_id: bytes, index: int) -> bytes:
    """Id of the `index`-th (1-based) return value of a task."""
    return task_id + index.to_bytes(4, "little")


def object_id_for_put(task_id: bytes, put_index: int) -> bytes:
    return task_id + (put_index | PUT_INDEX_FLAG).to_bytes(4, "little")


def is_put_object(object_id: bytes) -> bool:
    return bool(int.from_bytes(object_id[24:28], "little") & PUT_INDEX_FLAG)


def task_of(object_id: bytes) -> bytes:
    return object_id[:24]


NODE_ID_SIZE = 28
TASK_ID_SIZE = 24
OBJECT_ID_SIZE = 28  # a task id and a 4-byte return (or put) index


def new_node_id() -> bytes:
    return os.urandom(NODE_ID_SIZE)


def new_worker_id() -> bytes:
    return os.urandom(28)


def driver_task_id() -> bytes:
    """The id Ray gives the driver's own (pseudo) task: no unique part, job suffix."""
    return b"\xff" * 20 + _job_id


class BaseID:
    """A public, hashable wrapper around an id's bytes."""

    __slots__ = ("_bytes",)

    def __init__(self, id_bytes: bytes) -> None:
        self._bytes = id_bytes

    def binary(self) -> bytes:
        return self._bytes

    def hex(self) -> str:
        return self._bytes.hex()

    def is_nil(self) -> bool:
        return all(b == 0xFF for b in self._bytes)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._bytes == self._bytes  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hex()})"

    __str__ = hex


class JobID(BaseID):
    pass


class TaskID(BaseID):
    pass


class NodeID(BaseID):
    pass


class WorkerID(BaseID):
    pass


class ActorID(BaseID):
    pass


class PlacementGroupID(BaseID):
    pass


class RecentIds:
    """The last `limit` ids of one width, remembered only to word an error message.

    Invariant: holds at most `limit` ids, all `width` bytes long, oldest overwritten first.
    They live in one bytearray used as a ring, with no Python object per id: 100,000 object
    ids cost 2.8 MB here against about 16 MB as the keys of an OrderedDict. Membership is a
    scan of the ring (bytearray.find, a few milliseconds at most), which suits the error
    paths that ask; adding is the hot path (one per freed object) and costs a slice copy.
    """

    __slots__ = ("width", "limit", "_ring", "_next", "_count")

    def __init__(self, width: int, limit: int) -> None:
        self.width = width
        self.limit = limit
        self._ring = bytearray()  # grows to width * limit, then wraps
        self._next = 0  # slot the next id goes to once the ring is full
        self._count = 0

    def add(self, id_bytes: bytes) -> None:
        if len(id_bytes) != self.width:
            raise ValueError(f"expected a {self.width}-byte id, got {len(id_bytes)} bytes")
        if self._count < self.limit:
            self._ring += id_bytes
            self._count += 1
            return
        start = self._next * self.width
        self._ring[start:start + self.width] = id_bytes
        self._next = (self._next + 1) % self.limit

    def __contains__(self, id_bytes: object) -> bool:
        if not isinstance(id_bytes, bytes) or len(id_bytes) != self.width:
            return False
        ring, width = self._ring, self.width
        at = ring.find(id_bytes)
        while at >= 0:
            if at % width == 0:  # a match across two neighbouring ids is no match
                return True
            at = ring.find(id_bytes, at + 1)
        return False

    def __len__(self) -> int:
        return self._count
