"""Spare files: store pages allocated ahead of a large write, off the writer's path.

Writing a fresh 100 MB file on tmpfs costs more than copying 100 MB: the kernel
allocates and zeroes every page first (here ~30 ms of a ~50 ms write). Ray's
plasma avoids that with a pre-faulted memory pool. We cannot reuse an object's
file (readers keep zero-copy maps of freed objects), so instead each writing
process keeps at most one *spare*: a fresh file in its node's store folder
whose pages a background thread has already allocated (posix_fallocate). The
next large write takes the spare (renames it to its tmp name), writes into it,
which is then only a copy, trims it to size and renames it to the object's name
as usual (object_store.write); the thread then prepares the next spare.

Invariants:

* a spare is always a fresh file, never one that was visible under an object
  name, so a mapped object never changes;
* spares are named `.spare-<pid>` (never an object name: those are hex ids),
  and nothing lists the store folder, so they are invisible to accounting;
* bounded instead of counted: a node has at most SLOTS spares at once (an
  flock on `.spare-slot-<k>` in its folder, released by the kernel when the
  holder dies), each at most `limit` bytes (a share of the node's capacity);
* they do not outlive their writer: dropped after IDLE_SECONDS without a large
  write, at `retire` (the head calls it before deleting a node's folder), by the
  node manager when a worker exits (`remove_spare_of`), and with the folder when
  the node or the driver dies.

Spares are made only after a write of at least MIN_BYTES, sized to the largest
such write since the spare was last idle.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from typing import Optional, Set

MIN_BYTES = 8 << 20  #: smaller writes neither use nor ask for a spare
CHUNK = 4 << 20  #: allocation step: how long a taker may wait for the thread (~1 ms)
IDLE_SECONDS = 2.0  #: a spare unused this long is deleted (its memory goes back)
SLOTS = 2  #: spares per node folder, over all processes
LIMIT_SHARE = 8  #: a spare is at most capacity // LIMIT_SHARE (so all of them <= 1/4 of it)
_PAGE = 4096


def _no_fallocate(fd: int, offset: int, length: int) -> None:
    raise OSError("posix_fallocate is not available on this platform (macOS)")


_fallocate = getattr(os, "posix_fallocate", _no_fallocate)


def spare_path(store_dir: str, pid: int) -> str:
    return os.path.join(store_dir, f".spare-{pid}")


def remove_spare_of(store_dir: str, pid: int) -> None:
    """Delete the spare of a process that exited (the node manager calls it for its workers)."""
    try:
        os.unlink(spare_path(store_dir, pid))
    except FileNotFoundError:
        pass


def spare_limit(capacity: int) -> int:
    """The largest spare a node of this store capacity allows."""
    return capacity // LIMIT_SHARE


class _Spare:
    __slots__ = ("store_dir", "path", "fd", "slot_fd", "allocated", "busy", "claimed")

    def __init__(self, store_dir: str, path: str, fd: int, slot_fd: int) -> None:
        self.store_dir = store_dir
        self.path = path
        self.fd = fd
        self.slot_fd = slot_fd
        self.allocated = 0
        self.busy = False  #: the thread is allocating a chunk of it, outside the lock
        self.claimed = False  #: a writer or `retire` waits for it: the thread must not start a chunk


class SpareKeeper:
    """This process's spare and the daemon thread that prepares it.

    The thread allocates one chunk at a time outside the lock, with the spare
    marked busy. Whoever detaches the spare (`take`, `retire`) claims it, waits
    for that chunk to finish, then renames or deletes it before releasing the
    lock: so a late fallocate never grows a file that is already someone
    else's, and the thread never makes the next spare while the name is in use.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._spare: Optional[_Spare] = None
        self._want_dir: Optional[str] = None  #: where the next spare should be (None: no demand)
        self._want_size = 0
        self._last_demand = 0.0
        self._retired: Set[str] = set()
        self._thread: Optional[threading.Thread] = None

    # ---- the writer's side ------------------------------------------------------------------

    def take(self, store_dir: str, tmp_path: str, size: int, limit: int) -> Optional[int]:
        """For a write of `size` bytes: the spare's fd, renamed to `tmp_path`, or None.

        With a spare, the next one is asked for at once: the thread allocates it
        while the caller copies (which that does not slow down). Without one, the
        caller asks (`ask`) after its write: allocating pages at the same time as
        a fresh write does slow that down (by half, for 100 MB here).
        The caller owns the returned fd and must ftruncate the file to its size.
        """
        if size < MIN_BYTES or limit < MIN_BYTES:
            return None
        with self._cond:
            spare = self._detach(store_dir)
            if spare is None:
                return None
            # Renamed before the thread may make the next spare under the same name.
            spare = _rename(spare, tmp_path)
            self._ask(store_dir, size, limit)
        return None if spare is None else spare.fd

    def ask(self, store_dir: str, size: int, limit: int) -> None:
        """Have a spare ready in `store_dir` for the next write like this one (if it qualifies)."""
        if size >= MIN_BYTES and limit >= MIN_BYTES:
            with self._cond:
                self._ask(store_dir, size, limit)

    def _detach(self, store_dir: str) -> Optional[_Spare]:
        """Take `store_dir`'s spare out of the thread's hands (under the lock). It stays
        `self._spare` while we wait for its chunk (waiting releases the lock), so that the
        thread does not make another spare under the same name meanwhile."""
        spare = self._spare
        if spare is None or spare.store_dir != store_dir or spare.claimed:
            return None  # none there, or another thread (a writer, retire) is detaching it
        spare.claimed = True
        while spare.busy:
            self._cond.wait()
        self._spare = None
        self._cond.notify_all()  # the thread may make the next one
        return spare

    def _ask(self, store_dir: str, size: int, limit: int) -> None:
        if store_dir in self._retired:
            return
        size = min(_round_up(size), _round_down(limit))
        if self._want_dir != store_dir:
            self._want_size = 0
        self._want_dir = store_dir
        self._want_size = max(self._want_size, size)
        self._last_demand = time.monotonic()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="minicluster-spares", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def retire(self, store_dir: str) -> None:
        """The folder is about to be deleted: drop its spare and never make one there again."""
        with self._cond:
            self._retired.add(store_dir)
            if self._want_dir == store_dir:
                self._want_dir = None
            spare = self._detach(store_dir)
            if spare is not None:
                _discard(spare)

    # ---- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                spare, step = self._next_chunk()
            try:
                _fallocate(spare.fd, spare.allocated, step)
                failed = False
            except OSError:  # store full, or a file system (or macOS) without it: no spare until asked again
                failed = True
            with self._cond:
                spare.busy = False
                self._cond.notify_all()
                if spare.claimed or spare is not self._spare:
                    continue  # being taken or retired: no longer ours
                if failed:
                    self._spare = None
                    self._want_dir = None
                    _discard(spare)
                else:
                    spare.allocated += step

    def _next_chunk(self) -> "tuple[_Spare, int]":
        """Under the lock: wait until the spare needs a chunk; mark it busy and return it with
        the chunk's length. Meanwhile drop a spare nobody wants and make the one that is."""
        while True:
            spare = self._spare
            if spare is not None and spare.claimed:
                self._cond.wait()  # its claimer is about to detach it
                continue
            if spare is not None and spare.store_dir != self._want_dir:
                self._spare = None  # demand moved to another folder, went idle, or was withdrawn
                _discard(spare)
                continue
            if self._want_dir is None:
                self._cond.wait()
                continue
            idle_in = self._last_demand + IDLE_SECONDS - time.monotonic()
            if idle_in <= 0:
                self._want_dir = None  # no large write for a while: give the memory back
                continue
            if spare is None:
                spare = self._spare = _create(self._want_dir)
                if spare is None:
                    self._want_dir = None  # the node's spares are taken, or its folder is gone
                    continue
            if spare.allocated < self._want_size:
                spare.busy = True
                return spare, min(CHUNK, self._want_size - spare.allocated)
            self._cond.wait(idle_in)


def _create(store_dir: str) -> Optional[_Spare]:
    slot_fd = _claim_slot(store_dir)
    if slot_fd is None:
        return None
    path = spare_path(store_dir, os.getpid())
    try:
        fd = _open_new(path)
    except OSError:
        os.close(slot_fd)
        return None
    return _Spare(store_dir, path, fd, slot_fd)


def _open_new(path: str) -> int:
    """Create `path` as a new file. Never opens an existing one (O_EXCL): a spare must be fresh.
    A file left under that name by a dead process of the same pid is unlinked first."""
    flags = os.O_CREAT | os.O_EXCL | os.O_RDWR
    try:
        return os.open(path, flags, 0o600)
    except FileExistsError:
        os.unlink(path)
        return os.open(path, flags, 0o600)


def _rename(spare: _Spare, tmp_path: str) -> Optional[_Spare]:
    """Turn a detached spare into a writer's tmp file (None if its folder is gone)."""
    os.close(spare.slot_fd)  # it becomes an object, counted as such: no longer a spare
    try:
        os.rename(spare.path, tmp_path)
    except OSError:  # the folder is gone (node killed): the fresh write fails the same way
        os.close(spare.fd)
        return None
    return spare


def _discard(spare: _Spare) -> None:
    try:
        os.unlink(spare.path)
    except FileNotFoundError:
        pass
    os.close(spare.fd)
    os.close(spare.slot_fd)


def _claim_slot(store_dir: str) -> Optional[int]:
    """An fd holding one of the node's spare slots (an exclusive flock), or None if all are held."""
    for k in range(SLOTS):
        try:
            fd = os.open(os.path.join(store_dir, f".spare-slot-{k}"), os.O_CREAT | os.O_RDWR, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return fd
    return None


def _round_up(size: int) -> int:
    return -(-size // _PAGE) * _PAGE


def _round_down(size: int) -> int:
    return size // _PAGE * _PAGE


_keeper: Optional[SpareKeeper] = None
_keeper_lock = threading.Lock()


def keeper() -> SpareKeeper:
    """This process's keeper, made on first use."""
    global _keeper
    if _keeper is None:
        with _keeper_lock:
            if _keeper is None:
                _keeper = SpareKeeper()
    return _keeper


def _forget_in_child() -> None:
    """A forked child starts without spares: the parent's spare and slot stay the parent's
    (the child only closes its copies of their fds, so the slot's flock is not held twice)."""
    global _keeper, _keeper_lock
    inherited = _keeper._spare if _keeper is not None else None
    if inherited is not None:
        os.close(inherited.fd)
        os.close(inherited.slot_fd)
    _keeper, _keeper_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
