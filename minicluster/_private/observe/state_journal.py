"""The state journal: a session's tasks, workers and nodes on disk, readable from any process.

Written by the driver (state_recorder.py, on the head's I/O thread); read by
the `minicluster` command in another shell, by `minicluster.util.state` when
it runs outside the driver, and after the session has ended. The files live
in the session's logs/ folder, which is kept after the session:

    state.journal    append-only. A header frame names the fields of each row kind;
                     then each flush appends one frame: {"task": [rows of task
                     attempts], "worker": [rows of workers]}. A row is appended
                     again whenever it changes; readers keep the last one per key.
    status.json      the session (driver pid, start and end time, clean end or not),
                     its nodes (state, resources, store usage) and actors; replaced
                     atomically (write, then rename) whenever it changes.
    objects.json     the live objects; written when a reader asks for it (by creating
                     objects.request) and at the end of the session.

A frame is a 4-byte little-endian length and a pickle of such a dict. Rows
hold only plain values (bytes, str, numbers, tuples, dicts), and the reader's
unpickler refuses anything else, so a journal can never run code. A frame cut
short (the driver was killed mid-write) is ignored.

Bounded: when the journal grows past MINICLUSTER_STATE_JOURNAL_MAX_BYTES (default
COMPACT_BYTES) the recorder rewrites it with only the last row of each worker and of
each task the head still remembers (at most RAY_task_events_max_num_task_in_gcs
finished ones, 100,000 by default, as Ray's GCS keeps), and once more at the end of
a session whose journal is over a quarter of that, so an ended session's journal is
small too. Only the newest MINICLUSTER_SESSIONS_KEPT ended sessions keep theirs.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from minicluster._private.common import config

JOURNAL = "state.journal"
STATUS = "status.json"
OBJECTS = "objects.json"
OBJECTS_REQUEST = "objects.request"
FAULTS = "faults.jsonl"  #: injected faults, one JSON line each (minicluster.testing's journal)
MAGIC = "minicluster-state-journal"
VERSION = 2
COMPACT_BYTES = 32 * 1024 * 1024  #: default journal size that triggers a compaction (100,000 tasks are ~10 MB)


def max_bytes() -> int:
    """The journal size that triggers a compaction: MINICLUSTER_STATE_JOURNAL_MAX_BYTES, else COMPACT_BYTES."""
    return max(4096, config.env("STATE_JOURNAL_MAX_BYTES", COMPACT_BYTES, int))

# Row layouts. Ids are raw bytes here; readers turn them into hex strings. A task row's
# job id is the task id's last 4 bytes.
TASK_FIELDS = (
    "task_id", "attempt_number", "name", "state", "actor_id", "type", "func_or_class_name",
    "parent_task_id", "node_id", "worker_id", "error_type", "error_message", "creation_time", "start_time",
    "end_time", "required_resources",
)
WORKER_FIELDS = ("worker_id", "node_id", "pid", "worker_type", "start_time", "end_time", "exit_type", "exit_detail")
FIELDS = {"task": TASK_FIELDS, "worker": WORKER_FIELDS}
KEYS = {"task": ("task_id", "attempt_number"), "worker": ("worker_id",)}

_LEN = struct.Struct("<I")
Batch = Dict[str, List[tuple]]  #: rows by kind ("task", "worker"), as one frame holds them


class NoSessionError(Exception):
    """There is no session to read: none was ever started here, or the path is not a session folder."""


# ==== writing (driver) ==============================================================


class JournalWriter:
    """Appends frames of rows to a session's journal; never raises (a broken disk only warns once)."""

    def __init__(self, logs_dir: str) -> None:
        self.path = os.path.join(logs_dir, JOURNAL)
        self.logs_dir = logs_dir
        self.broken: Optional[str] = None
        self._fd = -1
        self._open(os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC)

    def _open(self, flags: int) -> None:
        try:
            self._fd = os.open(self.path, flags, 0o600)
            os.write(self._fd, _frame(_header()))
        except OSError as exc:
            self._fail(exc)

    def size(self) -> int:
        try:
            return os.fstat(self._fd).st_size if self._fd >= 0 else 0
        except OSError:
            return 0

    def append(self, batch: Batch) -> None:
        if any(batch.values()):
            self.write(encode(batch))

    def write(self, frames: bytes) -> None:
        """Append frames made by `encode`."""
        if self._fd < 0 or not frames:
            return
        try:
            os.write(self._fd, frames)
        except OSError as exc:
            self._fail(exc)

    def rewrite(self, batch: Batch) -> None:
        """Replace the journal with these rows (compaction); readers holding the old file keep it."""
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                os.chmod(tmp, 0o600)
                f.write(_frame(_header()))
                for kind, rows in batch.items():
                    for start in range(0, len(rows), 10_000):
                        f.write(_frame({kind: rows[start:start + 10_000]}))
            os.replace(tmp, self.path)
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            self._fail(exc)

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def _fail(self, exc: OSError) -> None:
        if self.broken is None:
            self.broken = str(exc)
            print(f"minicluster: warning: cannot write the state journal {self.path}: {exc}; "
                  "`minicluster list` will not see this session's later changes", file=sys.stderr)
        self.close()


def write_json(logs_dir: str, name: str, data: Any) -> None:
    """Replace logs/<name> atomically with `data` as JSON (private to the user)."""
    path = os.path.join(logs_dir, name)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, default=str)
    os.replace(tmp, path)


def _header() -> Dict[str, Any]:
    return {"magic": MAGIC, "version": VERSION, "fields": {kind: list(f) for kind, f in FIELDS.items()}}


def encode(batch: Batch) -> bytes:
    """One journal frame holding `batch`."""
    return _frame(batch)


def _frame(rows: Any) -> bytes:
    payload = pickle.dumps(rows, protocol=5)
    return _LEN.pack(len(payload)) + payload


# ==== reading (any process) =========================================================


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"the state journal holds an unexpected object ({module}.{name})")


def read_frames(path: str) -> Iterator[Any]:
    """The frames of a journal, in order; stops quietly at a frame cut short."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + 4 <= len(data):
        (length,) = _LEN.unpack_from(data, pos)
        if pos + 4 + length > len(data):
            return
        yield _PlainUnpickler(io.BytesIO(data[pos + 4:pos + 4 + length])).load()
        pos += 4 + length


def rows_to_dicts(kind: str, rows: Sequence[tuple], fields: Sequence[str]) -> List[Dict[str, Any]]:
    """Rows as dicts, ids as hex strings."""
    out = []
    for row in rows:
        record = {}
        for name, value in zip(fields, row):
            record[name] = value.hex() if isinstance(value, bytes) and name.endswith("_id") else value
        out.append(record)
    return out


class SessionFiles:
    """A session's folder as seen from outside the driver: its status, journal, objects."""

    def __init__(self, session_dir: str) -> None:
        self.dir = session_dir
        self.logs_dir = os.path.join(session_dir, "logs")
        status_path = os.path.join(self.logs_dir, STATUS)
        if not os.path.isfile(status_path):
            raise NoSessionError(
                f"{session_dir} is not a minicluster session folder with a state journal "
                f"(no logs/{STATUS}; sessions of minicluster versions before the state API have none)")

    def status(self) -> Dict[str, Any]:
        path = os.path.join(self.logs_dir, STATUS)
        try:
            with open(path) as f:
                status = json.load(f)
        except (OSError, ValueError) as exc:
            raise NoSessionError(f"cannot read {path}: {exc}") from None
        status["session"]["liveness"] = liveness(status["session"])
        return status

    def rows(self) -> Dict[str, List[Dict[str, Any]]]:
        """The last row of every task attempt and every worker, in journal order."""
        path = os.path.join(self.logs_dir, JOURNAL)
        latest: Dict[str, Dict[tuple, tuple]] = {"task": {}, "worker": {}}
        fields: Dict[str, Sequence[str]] = dict(FIELDS)
        key_index = {kind: tuple(fields[kind].index(k) for k in KEYS[kind]) for kind in fields}
        try:
            frames = list(read_frames(path))
        except FileNotFoundError:
            frames = []
        except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise NoSessionError(f"cannot read the state journal {path}: {exc}") from None
        for frame in frames:
            if not isinstance(frame, dict):
                raise NoSessionError(f"{path} is not a state journal this minicluster can read")
            if "magic" in frame:
                if frame["magic"] != MAGIC:
                    raise NoSessionError(f"{path} is not a minicluster state journal")
                fields.update(frame["fields"])
                key_index = {k: tuple(fields[k].index(n) for n in KEYS[k]) for k in KEYS if k in fields}
                continue
            for kind, rows in frame.items():
                table = latest.get(kind)
                if table is None:
                    continue  # a kind from a newer writer: skip
                index = key_index[kind]
                for row in rows:
                    table[tuple(row[i] for i in index)] = row
        return {kind: rows_to_dicts(kind, list(table.values()), fields[kind]) for kind, table in latest.items()}

    def objects(self, wait_s: float = 2.0) -> Tuple[List[Dict[str, Any]], Optional[float]]:
        """The live objects (asking a running driver for a fresh list); and when the list was taken."""
        request = os.path.join(self.logs_dir, OBJECTS_REQUEST)
        if self.status()["session"]["liveness"] == "running":
            try:
                with open(request, "w"):
                    pass
                deadline = time.monotonic() + wait_s
                while os.path.exists(request) and time.monotonic() < deadline:
                    time.sleep(0.02)
            except OSError:
                pass
        path = os.path.join(self.logs_dir, OBJECTS)
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return [], None
        except (OSError, ValueError) as exc:
            raise NoSessionError(f"cannot read {path}: {exc}") from None
        return data.get("objects", []), data.get("time")


def liveness(session: Dict[str, Any]) -> str:
    """"running", "ended" (shut down cleanly) or "crashed" (the driver died without shutting down)."""
    if session.get("end_time") is not None:
        return "ended"
    pid = session.get("driver_pid")
    if isinstance(pid, int) and _same_process_alive(pid, session.get("start_time") or 0.0):
        return "running"
    return "crashed"


def _same_process_alive(pid: int, started_at: float) -> bool:
    """Whether `pid` is alive and is the process that started the session (not a reused pid)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return proc.create_time() <= started_at + 1.0
    except (psutil.Error, OSError):  # gone, or not ours to look at
        return False


def find_session(path: Optional[str] = None) -> str:
    """The session folder to read: `path` (a session folder or its logs/), else the latest one."""
    if path:
        path = os.path.abspath(os.path.expanduser(path))
        if os.path.basename(path.rstrip("/")) == "logs" and os.path.isfile(os.path.join(path, STATUS)):
            path = os.path.dirname(path.rstrip("/"))
        if not os.path.isdir(path):
            raise NoSessionError(f"no session folder at {path}")
        if not os.path.isfile(os.path.join(path, "logs", STATUS)):
            raise NoSessionError(f"{path} is not a minicluster session folder (it has no logs/{STATUS})")
        return path
    root = config.session_root()
    latest = os.path.join(root, "session_latest")
    target = os.path.realpath(latest) if os.path.islink(latest) else None
    if target is None or not os.path.isfile(os.path.join(target, "logs", STATUS)):
        candidates = []
        try:
            for name in os.listdir(root):
                full = os.path.join(root, name)
                status = os.path.join(full, "logs", STATUS)
                if name.startswith("session_") and name != "session_latest" and os.path.isfile(status):
                    candidates.append((os.stat(status).st_mtime, full))
        except OSError:
            pass
        if not candidates:
            raise NoSessionError(
                f"no running or previous minicluster session under {root}: start one with "
                "minicluster.init() (or `minicluster demo`), or name one with --session ID or PATH")
        target = max(candidates)[1]
    return target
