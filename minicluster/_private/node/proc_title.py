"""A worker's process title, as `ps` and `top` show it: `ray::IDLE`, `ray::<task name>`, `ray::<Actor>`.

Runs in worker processes (worker.py sets the title when a task starts and when
the worker goes idle), with Ray's names, so tools and habits built on Ray's
titles (`ps aux | grep ray::`, `pgrep -f ray::IDLE`) work here too:

    ray::IDLE             a task worker with nothing to do
    ray::square           running the task `square` (its `name` option if given)
    ray::Counter          an actor's worker between calls
    ray::Counter.incr     an actor's worker running a method

Linux only, without a dependency (setproctitle is not worth one for this):

* the command line (`ps -o args`, `ps aux`, /proc/<pid>/cmdline): the bytes
  of the process's original argv area are overwritten in place through
  /proc/self/mem, the rest of the area filled with NULs, as setproctitle does.
  Workers are forked from their node manager, started as `python -S -c <its
  bootstrap>`, so the area has room for some 200 characters; longer titles are
  cut.
* the short name (`ps -o comm`, `top`, /proc/<pid>/comm): prctl(PR_SET_NAME),
  which the kernel cuts to 15 characters.

Elsewhere, or if the kernel refuses a write, titles are simply not set.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import Dict, Optional, Tuple

IDLE = "ray::IDLE"
_PR_SET_NAME = 15


class ProcTitle:
    """This process's title; `set` writes only when it changes (tiny tasks of one function set it once)."""

    def __init__(self) -> None:
        self.current: Optional[str] = None
        self._mem_fd = -1
        self._area: Tuple[int, int] = (0, 0)  #: (address, length) of the argv area
        self._prctl = None
        self._encoded: Dict[str, Tuple[bytes, bytes]] = {}  #: title -> (argv area bytes, short name)
        if not sys.platform.startswith("linux"):
            return
        try:
            self._area = _argv_area()
            self._mem_fd = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)
        except (OSError, ValueError, IndexError):
            self._mem_fd = -1
        try:
            self._prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            self._prctl = None

    def set(self, title: str) -> None:
        if title == self.current:
            return
        self.current = title
        encoded = self._encoded.get(title)
        if encoded is None:
            encoded = self._encode(title)
        area, short = encoded
        if self._mem_fd >= 0:
            try:
                os.pwrite(self._mem_fd, area, self._area[0])
            except OSError:
                os.close(self._mem_fd)
                self._mem_fd = -1  # refused (a hardened kernel): keep the short name only
        if self._prctl is not None:
            self._prctl(_PR_SET_NAME, short, 0, 0, 0)

    def _encode(self, title: str) -> Tuple[bytes, bytes]:
        """The bytes for the argv area (NUL-padded) and the short name; kept, as a worker has few titles."""
        data = title.encode("utf-8", "replace")
        length = self._area[1]
        # The last byte stays NUL: the kernel then reports the whole area as the command line.
        text = data[: max(length - 1, 0)]
        if len(self._encoded) >= 64:
            self._encoded.clear()
        encoded = self._encoded[title] = (text + b"\0" * (length - len(text)), data[:15])
        return encoded


def _argv_area() -> Tuple[int, int]:
    """The address and size of this process's argv strings (fields 48 and 49 of /proc/self/stat)."""
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    # Field 2 (the name, in parentheses) may hold spaces: count the fields after its end.
    fields = stat[stat.rindex(b")") + 2:].split()
    start, end = int(fields[45]), int(fields[46])  # fields 48 and 49; this list starts at field 3
    if start <= 0 or end <= start:
        raise ValueError("no argv area in /proc/self/stat")
    return start, end - start


@functools.lru_cache(maxsize=256)  # called as each task starts; a worker sees few names
def task_title(name: str) -> str:
    """`ray::<name>`; a class defined in a function is named as Ray names it (`Ledger.pid`, not
    `test_x.<locals>.Ledger.pid`)."""
    return "ray::" + name.rpartition("<locals>.")[2].replace("\n", " ")


def actor_title(class_name: str) -> str:
    """An actor's worker between calls: `ray::<class __name__>`."""
    return "ray::" + class_name.rpartition(".")[2]
