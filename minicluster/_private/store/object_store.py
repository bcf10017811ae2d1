"""A node's object store: one folder of immutable object files in shared memory.

Any process of the session may call these functions; the folder belongs to
one virtual node (`<store root>/<node id hex>/`), on tmpfs (/dev/shm) unless
that is too small, then on disk. The head decides what lives where and when
it goes; this module only moves bytes:

* write: the writer fills `<id>.tmp-<pid>` and renames it to `<id>`, so a
  reader never sees a partial object (rename is atomic). A large value
  (>= 8 MiB) reuses the pages of a freed object's file that nothing maps any
  more (store_recycle.py), else goes into the process's *spare* when it has
  one: a fresh file, `.spare-<pid>`, whose pages a background thread
  allocated ahead (store_spares.py); either way the write is only a copy. The
  invariant that keeps zero-copy readers safe: a file that was ever visible
  under an object name is never written again while any process has it open
  or mapped (the kernel's lease check, store_recycle.offer). Spares and free
  files are not counted in the node's usage; they are bounded instead (each
  kind to a share of its capacity) and removed when idle and with the folder
  (spares also when their process exits);
* read: `mmap` read-only, so values are zero-copy, read-only views;
* copy: a reader on another node copies the file into its own node's folder
  (the single-host stand-in for a network transfer), which makes the copy a
  second location of the object;
* delete: unlink. Processes that still map the file keep their view valid
  (POSIX semantics), so freeing an object never corrupts a live array.

Killing a node deletes its whole folder: that is how its objects are lost.

Spilling: when a node's store is over capacity, the head moves objects to
that node's spill folder on disk (`<session>/spill/<node id hex>/`). A copy's
*location* is the node id for its shared-memory folder, or SPILL_MARK + node
id for its spill folder; `Layout` maps a location to its folder. The two are
told apart by length, never by the first byte (a node id may start with it). A reader
restores a spilled object by copying it into its own node's store (`fetch`).
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import queue
import shutil
import threading
import time
from typing import Optional

from minicluster._private.common.ids import NODE_ID_SIZE
from minicluster._private.store import store_recycle, store_spares
from minicluster._private.store.serialization import Serialized
from minicluster.exceptions import ObjectStoreFullError

_TMP_SUFFIX = ".tmp-"
SPILL_MARK = b"~"


def spill_location(node_id: bytes) -> bytes:
    return SPILL_MARK + node_id


def node_of(location: bytes) -> bytes:
    """The node a location belongs to (a spilled copy is lost with its node too)."""
    return location[1:] if is_spilled(location) else location


def is_spilled(location: bytes) -> bool:
    return len(location) == NODE_ID_SIZE + 1


class Layout:
    """Where a session's store and spill folders are."""

    __slots__ = ("store_root", "spill_root")

    def __init__(self, store_root: str, spill_root: str) -> None:
        self.store_root = store_root
        self.spill_root = spill_root

    def dir_of(self, location: bytes) -> str:
        if is_spilled(location):
            return os.path.join(self.spill_root, location[1:].hex())
        return os.path.join(self.store_root, location.hex())


def object_path(store_dir: str, object_id: bytes) -> str:
    return os.path.join(store_dir, object_id.hex())


def write(store_dir: str, object_id: bytes, value: Serialized, spare_limit: int = 0) -> int:
    """Store a serialized value as an object file; returns its size in bytes.

    A large value goes into this process's spare file when there is one (pages
    already allocated: the write is only a copy; see store_spares.py), and asks
    for one for the next write; `spare_limit` is the largest spare this node
    allows (0: none).
    """
    final = object_path(store_dir, object_id)
    tmp = f"{final}{_TMP_SUFFIX}{os.getpid()}"
    fd = store_recycle.claim(store_dir, tmp, value.size) if spare_limit else None
    if fd is None and spare_limit:
        fd = store_spares.keeper().take(store_dir, tmp, value.size, spare_limit)
    spare = fd is not None
    if fd is None:
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        for chunk in value.chunks():
            view = memoryview(chunk).cast("B") if not isinstance(chunk, bytes) else memoryview(chunk)
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
        if spare:
            # A spare or a recycled file may be larger than the value: cut it to size (every
            # byte before that was just written, so nothing of a recycled file's old object stays).
            os.ftruncate(fd, value.size)
    except BaseException as exc:
        os.close(fd)
        _unlink(tmp)
        _raise_if_full(exc, store_dir, value.size)
        raise
    os.close(fd)
    os.rename(tmp, final)
    if spare_limit and not spare:
        store_spares.keeper().ask(store_dir, value.size, spare_limit)  # (none asked while files recycle)
    return value.size


def read(store_dir: str, object_id: bytes) -> memoryview:
    """Map an object file read-only. Raises FileNotFoundError if this node lost it."""
    fd = os.open(object_path(store_dir, object_id), os.O_RDONLY)
    try:
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    return memoryview(mapped)


def copy(src_dir: str, dst_dir: str, object_id: bytes) -> int:
    """Copy an object from another node's folder into this node's; returns its size."""
    src = object_path(src_dir, object_id)
    final = object_path(dst_dir, object_id)
    tmp = f"{final}{_TMP_SUFFIX}{os.getpid()}"
    size = 0
    with open(src, "rb") as fin:
        size = os.fstat(fin.fileno()).st_size
        try:
            with open(tmp, "wb") as fout:
                os.chmod(tmp, 0o600)
                sent = 0
                while sent < size:
                    sent += os.sendfile(fout.fileno(), fin.fileno(), sent, size - sent)
        except BaseException as exc:
            _unlink(tmp)  # never leave a half-written copy (a full disk stops a spill midway)
            _raise_if_full(exc, dst_dir, size)
            raise
    os.rename(tmp, final)
    return size


def _raise_if_full(exc: BaseException, folder: str, size: int) -> None:
    """A write that failed for lack of space becomes ObjectStoreFullError, with the numbers."""
    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return
    try:
        usage = shutil.disk_usage(folder)
        room = f"{usage.free} of {usage.total} bytes free"
    except OSError:
        room = "free space unknown"
    raise ObjectStoreFullError(
        f"cannot store an object of {size} bytes in {folder}: its file system is full ({room}; "
        f"{exc.strerror}); free some objects or space there, or lower object_store_memory") from None


def delete(store_dir: str, object_id: bytes) -> None:
    """Remove an object file. The name goes at once (a rename: a new copy under the same id,
    from a rebuild or a restore, is never touched). A large file nothing maps any more is
    kept for reuse at once (store_recycle.py: a few system calls), so that a write right
    after this one finds it; freeing the pages otherwise, which takes ~15 ms per 100 MB on
    tmpfs, happens on a background thread, off the caller's path."""
    path = object_path(store_dir, object_id)
    trash = f"{path}.del-{next(_trash_ids)}"
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    # Kept (or to be tried again): the thread only needs to look at its timers again.
    _deleter().put("" if store_recycle.offer(trash, store_dir) else trash)


_trash_ids = itertools.count()
_deleter_queue: "Optional[queue.SimpleQueue[str]]" = None
_deleter_lock = threading.Lock()


def _deleter() -> "queue.SimpleQueue[str]":
    global _deleter_queue
    if _deleter_queue is None:
        with _deleter_lock:
            if _deleter_queue is None:
                pending: "queue.SimpleQueue[str]" = queue.SimpleQueue()
                threading.Thread(target=_delete_loop, args=(pending,), name="minicluster-deleter", daemon=True).start()
                _deleter_queue = pending
    return _deleter_queue


def _delete_loop(pending: "queue.SimpleQueue[str]") -> None:
    """Unlink freed files; try again the large ones still mapped when they were freed, and
    delete the kept ones nobody reused in time (store_recycle.expire)."""
    wait: Optional[float] = None
    while True:
        try:
            trash = pending.get(timeout=wait)
        except queue.Empty:
            trash = ""
        if trash:
            _unlink(trash)
        wait = store_recycle.expire(time.monotonic())


def remove_partial_writes(store_dir: str, pid: int) -> None:
    """Delete what a process that died mid-write left in the folder (its `<id>.tmp-<pid>`)."""
    suffix = f"{_TMP_SUFFIX}{pid}"
    try:
        with os.scandir(store_dir) as entries:
            partial = [entry.path for entry in entries if entry.name.endswith(suffix)]
    except FileNotFoundError:
        return
    for path in partial:
        _unlink(path)


def exists(store_dir: str, object_id: bytes) -> bool:
    return os.path.exists(object_path(store_dir, object_id))


def remove_store(store_dir: str) -> None:
    shutil.rmtree(store_dir, ignore_errors=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def choose_root(requested_bytes: Optional[int], shm_dir: str, disk_dir: str, min_shm: int) -> tuple[str, bool]:
    """Pick the folder for this session's stores: (root, is_shared_memory).

    Shared memory when it has room for the requested size (or `min_shm` when
    nothing was requested); else a folder on disk, which still works, only slower.
    """
    try:
        free = shutil.disk_usage(shm_dir).free if os.path.isdir(shm_dir) else 0
    except OSError:
        free = 0
    need = requested_bytes or min_shm
    if free >= need and free >= min_shm:
        return shm_dir, True
    return disk_dir, False


def fetch(layout: Layout, local_node: bytes, object_id: bytes, locations: list) -> tuple[memoryview, int]:
    """Map an object that lives at `locations`, copying it to `local_node`'s store first if needed.

    Returns (view, copied) where copied is the size of a new local copy, or 0 if
    the object was already local. Raises FileNotFoundError when no listed copy
    is left (its node died, or it was freed or spilled meanwhile).
    """
    local_dir = layout.dir_of(local_node)
    if local_node in locations:
        try:
            return read(local_dir, object_id), 0
        except FileNotFoundError:
            pass
    for location in locations:
        if location == local_node:
            continue
        try:
            size = copy(layout.dir_of(location), local_dir, object_id)
        except FileNotFoundError:
            continue
        return read(local_dir, object_id), size
    raise FileNotFoundError(object_id.hex())
