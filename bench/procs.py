"""Running the measurement subprocesses with a timeout, and leaving nothing behind.

Each child is started in its own session / process group (``start_new_session=True``).
``run.py`` makes itself a *child subreaper* (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``), so
any process a child leaves behind (a Ray raylet or gcs_server, a pool worker) is
re-parented to ``run.py`` instead of init and can be found and killed by pid. After each
child:

1. on timeout: SIGKILL the child's descendants (by pid, via psutil) and its process group;
2. give orphans a short grace period to exit on their own, then SIGKILL survivors by pid
   and reap them; their names are reported as leftovers.

Nothing is ever killed by name.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

PR_SET_CHILD_SUBREAPER = 36
ORPHAN_GRACE_S = 3.0


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux only). Returns whether it worked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


class ChildOutcome:
    """How one measurement subprocess ended.

    ``foreign_cores``: average number of cores kept busy by processes that are not ours
    while the child ran (see ForeignCpuWatch), a noise gauge.
    """

    def __init__(self, returncode: int | None, timed_out: bool, elapsed_s: float,
                 leftovers: list[str], log_tail: str, foreign_cores: float) -> None:
        self.returncode = returncode
        self.timed_out = timed_out
        self.elapsed_s = elapsed_s
        self.leftovers = leftovers
        self.log_tail = log_tail
        self.foreign_cores = foreign_cores


def _kill(procs: list[psutil.Process]) -> list[str]:
    """SIGKILL the given processes (psutil checks the pid was not reused) and reap them."""
    names: list[str] = []
    for p in procs:
        try:
            names.append(f"{p.name()}[{p.pid}]")
            p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    psutil.wait_procs(procs, timeout=5)
    return names


class ForeignCpuWatch:
    """Noise gauge: CPU time used by processes that are not ours while a child runs.

    A background thread reads ``/proc/<pid>/stat`` once per ``interval_s`` and adds up the
    CPU-time growth of every process outside this process's tree (keyed by pid and start
    time; a process first seen mid-run counts from its start). Foreign processes that start
    and end between two samples are missed, so it is a lower bound. (Child rusage cannot be
    used instead: Ray's raylet auto-reaps its workers, whose CPU time then vanishes.)
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = 0.0
        self.wall_s = 0.0

    def __enter__(self) -> ForeignCpuWatch:
        self._t0 = time.monotonic()
        if os.path.isdir("/proc"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.wall_s = time.monotonic() - self._t0

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def _snapshot(self) -> dict[tuple[int, int], float]:
        """(pid, start time) -> CPU seconds, for processes outside our tree."""
        stats: dict[int, tuple[int, int, float]] = {}  # pid -> (ppid, start, cpu_s)
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            rest = raw[raw.rfind(b")") + 2:].split()
            stats[int(name)] = (int(rest[1]), int(rest[19]), (int(rest[11]) + int(rest[12])) / self.tick)
        me = os.getpid()
        ours: set[int] = {me}
        changed = True
        while changed:  # close the set of our descendants
            changed = False
            for pid, (ppid, _, _) in stats.items():
                if ppid in ours and pid not in ours:
                    ours.add(pid)
                    changed = True
        return {(pid, st): cpu for pid, (_, st, cpu) in stats.items() if pid not in ours}

    def _loop(self) -> None:
        last = self._snapshot()
        while not self._stop.wait(self.interval_s):
            cur = self._snapshot()
            for key, cpu in cur.items():
                self.cpu_s += cpu - last.get(key, 0.0)
            last = cur


def is_ours(pid: int) -> bool:
    """Whether ``pid`` is this process or one of its descendants."""
    me = os.getpid()
    try:
        p = psutil.Process(pid)
        return pid == me or any(a.pid == me for a in p.parents())
    except psutil.NoSuchProcess:
        return False


def _own_descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def reap_orphans(grace_s: float = ORPHAN_GRACE_S) -> list[str]:
    """Wait up to ``grace_s`` for adopted orphans to exit, then kill what is left."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = [p for p in _own_descendants() if _is_running(p)]
        if not alive:
            break
        if time.monotonic() >= deadline:
            return _kill(alive)
        time.sleep(0.1)
    # reap zombies (exited orphans adopted by us)
    psutil.wait_procs(_own_descendants(), timeout=1)
    return []


def _is_running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def run_child(argv: list[str], *, cwd: Path, env: dict[str, str], timeout_s: float,
              log_path: Path) -> ChildOutcome:
    """Run ``sys.executable argv...`` to completion or ``timeout_s``; clean up after it."""
    t0 = time.monotonic()
    timed_out = False
    with open(log_path, "wb") as log, ForeignCpuWatch() as watch:
        proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        except BaseException:  # Ctrl-C in run.py: still kill the child's tree, then re-raise
            _kill_tree(proc)
            raise
        if timed_out:
            _kill_tree(proc)
    elapsed = time.monotonic() - t0
    leftovers = reap_orphans()
    return ChildOutcome(proc.returncode, timed_out, elapsed, leftovers, _tail(log_path), watch.cores)


def _kill_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the child, all its descendants (by pid) and its process group."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.kill()
    proc.wait()
    _kill(descendants)
