"""The log monitor: prints what workers write to their log files on the driver's terminal.

Runs in the driver process, on the head's I/O thread (a hub timer every
POLL_INTERVAL_S). Each worker writes its stdout and stderr to its own files in
the session's logs/ folder (log_files.py); the monitor reads what is new in
each and prints every line as Ray does, prefixed with the task that printed
it, the worker's pid and its node:

    (normalize pid=4242, node=node-1) loaded 1000 rows

stdout lines go to the driver's stdout, stderr lines to its stderr. The task
name comes from the marker lines the worker writes when its task changes, so
it is right even when one worker runs many different tasks. The folder is
listed again only when its modification time changes (a new worker started);
a file is dropped once its worker is gone and everything in it was printed.
`close()` reads everything once more after the nodes are gone, so nothing a
worker printed just before a crash or before shutdown is lost.

The same line printed by many workers is folded into one summary line, as
Ray's driver does (observe/log_dedup.py; RAY_DEDUP_LOGS=0 turns it off).
Lines carrying a tqdm_ray progress bar's state are not printed: they go to the
driver's bar manager (observe/progress_bars.py), which draws the bars and keeps
other output above them.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from typing import Callable, Dict, List, Optional, TextIO

from minicluster._private.client.session import pid_alive
from minicluster._private.common import config
from minicluster._private.observe import progress_bars
from minicluster._private.observe.log_dedup import LineFolder
from minicluster._private.observe.log_files import WorkerLogFile, prefix

POLL_INTERVAL_S = 0.1


class LogMonitor:
    def __init__(self, logs_dir: str, hub: object, node_name_of_worker: Callable[[str], Optional[str]],
                 enabled: bool = True) -> None:
        self.logs_dir = logs_dir
        self.hub = hub
        self.node_name_of_worker = node_name_of_worker
        self.enabled = enabled  #: False: files are still written, nothing is printed (log_to_driver=False)
        self.files: Dict[str, WorkerLogFile] = {}
        self.finished: set = set()  #: paths of files already read to the end of a dead worker
        self._dir_mtime = -1.0
        self._lock = threading.Lock()
        self.closed = False
        #: one folder per stream, as Ray keeps stdout and stderr apart; None: every line printed
        self.folders: Optional[Dict[str, LineFolder]] = _folders() if config.dedup_logs() else None

    def start(self) -> None:
        if self.enabled:
            self.hub.call_later(POLL_INTERVAL_S, self._tick)  # type: ignore[attr-defined]

    def _tick(self) -> None:
        if self.closed:
            return
        try:
            self.poll()
        finally:
            if not self.closed:
                self.hub.call_later(POLL_INTERVAL_S, self._tick)  # type: ignore[attr-defined]

    def poll(self, final: bool = False) -> None:
        """Print what is new in every worker's files."""
        if not self.enabled:
            return
        with self._lock:
            self._scan(force=final)
            out: List[str] = []
            err: List[str] = []
            folders = self.folders
            for path, log in list(self.files.items()):
                alive = not final and pid_alive(log.pid)
                lines = log.read_lines(final=final or not alive)
                if lines:
                    node = self.node_name_of_worker(log.worker_id)
                    target = out if log.stream == "out" else err
                    folder = folders[log.stream] if folders is not None else None
                    for task_name, text in lines:
                        bar_state = progress_bars.decode_state(text) if log.stream == "out" else None
                        if bar_state is not None:  # a tqdm_ray bar's state: drawn, not printed
                            progress_bars.manager().update(bar_state, log.pid, prefix(task_name, log.pid, node) + " ")
                            continue
                        if folder is None:
                            target.append(f"{prefix(task_name, log.pid, node)} {text}")
                        else:
                            target.extend(folder.add(log.pid, prefix(task_name, log.pid, node), text))
                elif not alive:
                    del self.files[path]
                    self.finished.add(path)
            if folders is not None:
                out.extend(folders["out"].flush() if final else folders["out"].expire())
                err.extend(folders["err"].flush() if final else folders["err"].expire())
            _write(sys.stdout, out)
            _write(sys.stderr, err)

    def _scan(self, force: bool) -> None:
        try:
            mtime = os.stat(self.logs_dir).st_mtime
        except OSError:
            return
        if mtime == self._dir_mtime and not force:
            return
        self._dir_mtime = mtime
        try:
            names = os.listdir(self.logs_dir)
        except OSError:
            return
        for name in names:
            path = os.path.join(self.logs_dir, name)
            if path in self.files or path in self.finished:
                continue
            log = WorkerLogFile.parse(path)
            if log is not None:
                self.files[path] = log

    def close(self) -> None:
        """Print whatever is left (the workers are gone by now) and stop."""
        if self.closed:
            return
        self.closed = True
        self.poll(final=True)
        bars = progress_bars.active()
        if bars is not None:
            bars.finish()


def _folders() -> Dict[str, LineFolder]:
    window = config.dedup_window_s()
    allow, skip = config.dedup_allow_regex(), config.dedup_skip_regex()
    return {stream: LineFolder(window, re.compile(allow) if allow else None, re.compile(skip) if skip else None)
            for stream in ("out", "err")}


def _write(stream: Optional[TextIO], lines: List[str]) -> None:
    if not lines or stream is None:
        return
    bars = progress_bars.active()
    if bars is not None:  # progress bars on the screen: the lines go above them
        bars.write_lines(stream, lines)
        return
    try:
        stream.write("\n".join(lines) + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass  # the driver's terminal is gone or closed: the log files still have everything
