"""Workers' stdout/stderr log files: naming, redirecting a worker into them, reading them back.

Used by three kinds of processes:

* a worker, right after its fork (node_manager.py): `redirect_worker_output`
  points its file descriptors 1 and 2 at its own two files with dup2, so
  everything it prints lands there, C-level output included; then, whenever
  the task it runs has a different name than the last one, `mark_task` writes
  a marker line (`:task_name:<name>`, as Ray's workers do) into both files;
* the driver's log monitor (log_monitor.py), which tails the files and prints
  new lines on the driver's terminal with a `(name pid=.., node=..)` prefix;
* the `minicluster logs` command, which reads them after the fact.

The files live in the session's logs/ folder, which is kept after the session:

    logs/worker-<worker id hex>-<job id hex>-<pid>.out     (Ray's names)
    logs/worker-<worker id hex>-<job id hex>-<pid>.err

Why markers rather than a prefix on every line: the worker's own output goes
straight to the file descriptor (Python is unbuffered in workers, C code
writes to fd 1/2 directly), so nothing sits between the task and the file
that could add a prefix; a marker costs two small writes per change of task
name (none for a stream of tasks of one function) and keeps the files
identical to what the task printed.
"""

from __future__ import annotations

import ctypes
import io
import os
import re
import select
import sys
import threading
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from minicluster._private.common import ids

TASK_MARKER = b":task_name:"
ACTOR_MARKER = b":actor_name:"
_NAME_RE = re.compile(r"^worker-([0-9a-f]+)-([0-9a-f]+)-(\d+)\.(out|err)$")
MAX_LINE_BYTES = 64 * 1024  # a longer line without a newline is printed in pieces

_last_name: Optional[str] = None
_libc: Optional[ctypes.CDLL] = None
_own_files: Optional[Tuple[str, str]] = None  #: this worker's (stdout, stderr) files, once redirected
_fd_polls = threading.local()  #: .poll: fds 1 and 2, to see after a task whether it closed them


def log_paths(logs_dir: str, worker_id: bytes, pid: int) -> Tuple[str, str]:
    """The (stdout, stderr) files of one worker."""
    stem = os.path.join(logs_dir, f"worker-{worker_id.hex()}-{ids.job_id().hex()}-{pid}")
    return stem + ".out", stem + ".err"


def redirect_worker_output(logs_dir: str, worker_id: bytes) -> None:
    """In a freshly forked worker: send fds 1 and 2 to its own log files (private to the user)."""
    global _own_files
    _own_files = log_paths(logs_dir, worker_id, os.getpid())
    for path, target in zip(_own_files, (1, 2)):
        _open_onto(path, target)


def _open_onto(path: str, target: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    if fd != target:
        os.dup2(fd, target)
        os.close(fd)


def restore_output() -> None:
    """After each task in a worker: flush stdout/stderr, and mend them if the task closed them.

    A task may close sys.stdout (or os.close(1)); without this, every later task on the
    worker that prints would fail. A closed descriptor is pointed at the worker's log
    file again (at /dev/null when its output was never redirected), and a closed Python
    stream is replaced by a new one on the descriptor.
    """
    # One poll() syscall sees both descriptors: a closed one reports POLLNVAL (an fstat of
    # each costs two syscalls, and this runs after every task). A poll object is one per
    # thread: a threaded actor's calls end on several at once, and poll() is not reentrant.
    fd_poll = getattr(_fd_polls, "poll", None)
    if fd_poll is None:
        fd_poll = _fd_polls.poll = select.poll()
        for fd in (1, 2):
            fd_poll.register(fd, 0)
    for fd, events in fd_poll.poll(0):
        if events & select.POLLNVAL:  # the task closed the descriptor itself
            _open_onto(_own_files[fd - 1] if _own_files else os.devnull, fd)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = getattr(sys, name)
        if stream is None or stream.closed:
            setattr(sys, name, io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), errors="backslashreplace",
                                                line_buffering=True, write_through=True))
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def mark_task(name: str, marker: bytes = TASK_MARKER) -> None:
    """Before a task runs in this worker: note its name in the log files when it changed."""
    global _last_name
    if name == _last_name and marker is TASK_MARKER:
        return  # the common case, a stream of tasks of one function: nothing to write
    flush_output()  # output of the previous task goes before the marker
    _last_name = name if marker is TASK_MARKER else None
    line = marker + name.replace("\n", " ").encode("utf-8", "replace") + b"\n"
    for fd in (1, 2):
        try:
            os.write(fd, line)
        except OSError:
            pass


def flush_output() -> None:
    """Flush Python's and C's buffered output (before a marker, and before the worker exits)."""
    global _libc
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None)
        _libc.fflush(None)
    except (OSError, AttributeError):
        pass


@dataclass
class WorkerLogFile:
    """One worker's .out or .err file, read incrementally from where the last read stopped."""

    path: str
    worker_id: str  #: hex
    pid: int
    stream: str  #: "out" or "err"
    offset: int = 0
    task_name: Optional[str] = None  #: the name of the task that printed the next line
    _partial: bytes = field(default=b"", repr=False)

    @classmethod
    def parse(cls, path: str) -> Optional["WorkerLogFile"]:
        match = _NAME_RE.match(os.path.basename(path))
        if match is None:
            return None
        return cls(path, match.group(1), int(match.group(3)), match.group(4))

    def read_lines(self, final: bool = False) -> List[Tuple[Optional[str], str]]:
        """New complete lines as (task name, text); with final=True also an unfinished last line."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            data = b""
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if self._partial and (final or len(self._partial) > MAX_LINE_BYTES):
            lines.append(self._partial)
            self._partial = b""
        out: List[Tuple[Optional[str], str]] = []
        for raw in lines:
            if raw.startswith(TASK_MARKER):
                self.task_name = raw[len(TASK_MARKER):].decode("utf-8", "replace")
                continue
            if raw.startswith(ACTOR_MARKER):
                self.task_name = raw[len(ACTOR_MARKER):].decode("utf-8", "replace")
                continue
            out.append((self.task_name, raw.decode("utf-8", "replace")))
        return out


def list_worker_logs(logs_dir: str) -> List[WorkerLogFile]:
    """Every worker log file in a logs folder, oldest first."""
    try:
        names = os.listdir(logs_dir)
    except OSError:
        return []
    files = [f for f in (WorkerLogFile.parse(os.path.join(logs_dir, n)) for n in names) if f is not None]
    files.sort(key=lambda f: (_mtime(f.path), f.worker_id, f.stream))
    return files


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_ctime
    except OSError:
        return 0.0


def prefix(task_name: Optional[str], pid: int, node_name: Optional[str]) -> str:
    """Ray's `(name pid=123)` prefix, with the virtual node's name."""
    parts = f"{task_name} pid={pid}" if task_name else f"pid={pid}"
    if node_name:
        parts += f", node={node_name}"
    return f"({parts})"
