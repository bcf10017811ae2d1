"""Recycled object files: a freed large object's pages reused by the next large write.

Writing 100 MB into fresh tmpfs pages costs about twice a memcpy: the kernel
allocates and zeroes every page first, and freeing them again (unlink) costs
~15 ms more. Ray's plasma avoids both with one arena whose memory is reused. We
keep one file per object instead, and reuse a freed object's *file* when no
process can still see it:

* the head (object_store.delete, in the head process) offers every freed
  file of at least MIN_BYTES here as it frees it; its deleter thread tries
  again the ones still mapped (`expire`). The file was already renamed away
  from its object name, so nothing can open it any more; the kernel tells
  whether anything still has it open or mapped: a write lease
  (fcntl F_SETLEASE) is refused while any other open file description of the
  file exists, and a zero-copy reader's mapping holds one even after its fd
  was closed. Refused: the file is unlinked as before (its readers keep their
  view; POSIX). Granted: the file moves to the node's free folder,
  `<store>/.free/<size>-<pid>-<n>`, a name no reader ever opens;
* a writer (object_store.write, any process of the node) claims a free file
  by renaming it to its own `<id>.tmp-<pid>` (rename is atomic: one claimer
  wins), overwrites it from offset 0 and trims it to its size, so no byte of
  the old object survives; then renames it to the object's name as usual. A
  writer that dies midway leaves only its tmp file, which the node manager
  deletes (remove_partial_writes), as for any write.

So a file visible under an object name is never written while anything maps
it. Bounds: free files are not objects and are not counted in the node's
usage; instead their total size is at most the node's spare limit (a share of
its capacity, store_spares.spare_limit), each is deleted after IDLE_SECONDS
unused, and only nodes the head registered (`allow`) get any: `forbid` (node
killed, session ending) stops it before the folder is deleted, and the free
folder goes with the node's folder.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import threading
import time
from typing import Dict, List, Optional, Tuple

MIN_BYTES = 8 << 20  #: smaller freed files are unlinked; smaller writes do not look here
IDLE_SECONDS = 2.0  #: a free file unused this long is deleted (its memory goes back)
FREE_DIR = ".free"
#: Seconds between the tries of a freed file that is still mapped (about 60 ms in all).
RETRY_DELAYS = (0.002, 0.004, 0.008, 0.016, 0.032)

_lock = threading.Lock()
_limits: Dict[str, int] = {}  #: store folder -> most bytes its free files may hold (head process)
_kept: List[Tuple[float, str]] = []  #: (when, path) of the free files this process made, oldest first
_retries: List[Tuple[float, int, str, str]] = []  #: (when, tries so far, path, store folder): still mapped
_names = itertools.count()
_leases_work = hasattr(fcntl, "F_SETLEASE")  #: Linux; set False when the file system refuses leases


def free_dir(store_dir: str) -> str:
    return os.path.join(store_dir, FREE_DIR)


def allow(store_dir: str, limit: int) -> None:
    """(head) Freed files of this node folder may be kept for reuse, up to `limit` bytes in all."""
    if limit >= MIN_BYTES:
        with _lock:
            _limits[store_dir] = limit


def forbid(store_dir: Optional[str] = None) -> None:
    """(head) The folder (None: every folder) is about to be deleted: keep no more files there.
    Once this returns no file is moved into it (moves happen under the same lock)."""
    with _lock:
        if store_dir is None:
            _limits.clear()
        else:
            _limits.pop(store_dir, None)


# ---- the deleter's side (head process) ------------------------------------------------------


def offer(path: str, store_dir: str) -> bool:
    """A freed object's file (already renamed away from its object name): keep it for reuse if
    nothing maps it and the folder has room. False: the caller unlinks it now. True: kept, or
    still mapped and tried again a few times over the next RETRY_DELAYS (a worker drops its
    arguments' maps just after its reply, which is what freed them), then unlinked here."""
    return _try(path, store_dir, 0)


def _try(path: str, store_dir: str, tries: int) -> bool:
    limit = _limits.get(store_dir)
    if limit is None or not _leases_work:
        return False
    size = _unmapped_size(path, limit)
    if size is None:
        return False
    if size < 0:
        if tries >= len(RETRY_DELAYS):
            return False
        with _lock:
            _retries.append((time.monotonic() + RETRY_DELAYS[tries], tries + 1, path, store_dir))
        return True
    with _lock:
        if _limits.get(store_dir) != limit or _free_bytes(store_dir) + size > limit:
            return False
        folder = free_dir(store_dir)
        target = os.path.join(folder, f"{size}-{os.getpid()}-{next(_names)}")
        try:
            try:
                os.rename(path, target)
            except FileNotFoundError:
                os.mkdir(folder, 0o700)  # (never makedirs: a deleted node folder stays deleted)
                os.rename(path, target)
        except OSError:
            return False
        _kept.append((time.monotonic(), target))
    return True


def _unmapped_size(path: str, limit: int) -> Optional[int]:
    """The file's size if it may be kept (large enough, within `limit`, nothing else has it open
    or mapped); -1 if it is still open or mapped somewhere; None if it may not be kept."""
    global _leases_work
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size < MIN_BYTES or size > limit:
            return None
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EBUSY):
                return -1
            _leases_work = False  # leases are off on this file system (EINVAL, ENOLCK...)
            return None
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return size
    finally:
        os.close(fd)


def expire(now: float) -> Optional[float]:
    """Try again the freed files that were still mapped, and delete the free files this process
    kept that went unused for IDLE_SECONDS (a claimed one is gone already). Returns the seconds
    until the next of these is due, or None if there is none."""
    while True:
        with _lock:
            due = [entry for entry in _retries if entry[0] <= now]
            _retries[:] = [entry for entry in _retries if entry[0] > now]
        for _, tries, path, store_dir in due:
            if not _try(path, store_dir, tries):
                _unlink(path)
        with _lock:
            if _kept and _kept[0][0] + IDLE_SECONDS <= now:
                path = _kept.pop(0)[1]
            else:
                waits = [when - now for when, _, _, _ in _retries]
                if _kept:
                    waits.append(_kept[0][0] + IDLE_SECONDS - now)
                return max(0.0, min(waits)) if waits else None
        _unlink(path)  # outside the lock: freeing 100 MB takes ~15 ms (a claimed one is gone already)
        now = time.monotonic()


def _free_bytes(store_dir: str) -> int:
    return sum(size for size, _ in _listing(store_dir))


def _listing(store_dir: str) -> List[Tuple[int, str]]:
    """(size, name) of the node's free files; a writer may claim any of them meanwhile."""
    try:
        names = os.listdir(free_dir(store_dir))
    except OSError:
        return []
    out = []
    for name in names:
        head, _, _ = name.partition("-")
        if head.isdigit():
            out.append((int(head), name))
    return out


# ---- the writer's side (any process of the node) --------------------------------------------


def claim(store_dir: str, tmp_path: str, size: int) -> Optional[int]:
    """For a write of `size` bytes: a free file renamed to `tmp_path`, opened for writing, or None.

    The smallest free file that holds `size` bytes, else the largest one (the rest of the value
    extends it). The caller overwrites it from offset 0 and must ftruncate it to `size`."""
    if size < MIN_BYTES:
        return None
    candidates = _listing(store_dir)
    if not candidates:
        return None
    big_enough = sorted(c for c in candidates if c[0] >= size)
    order = big_enough + sorted((c for c in candidates if c[0] < size), reverse=True)
    folder = free_dir(store_dir)
    for _, name in order:
        try:
            os.rename(os.path.join(folder, name), tmp_path)
        except OSError:
            continue  # another writer claimed it first (or its expiry deleted it)
        try:
            return os.open(tmp_path, os.O_WRONLY)
        except OSError:
            _unlink(tmp_path)
            return None
    return None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
