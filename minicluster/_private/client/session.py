"""The session's files: a private folder, the head's socket, the secret key, the store root.

Created by the driver at `init()`. Layout:

    <session root>/                          /tmp/minicluster-<uid>/ (0700), MINICLUSTER_TMPDIR to move it
        session_latest -> session_<date>_<time>_<us>_<pid>
        session_<date>_<time>_<us>_<pid>/    (0700)
            head.sock                        the head's Unix socket (0600), removed at shutdown
            spill/<node id hex>/             objects spilled from a full store, removed at shutdown
            session.json                     driver pid, store root, start time; removed at shutdown
            node_pids                        the node managers' pids, one a line, for the reaper
            logs/                            kept after the session on purpose: workers' output
                                             (log_files.py) and the state journal (state_journal.py)
    /dev/shm/minicluster-<uid>-<pid>-<rand>/<node id hex>/   the nodes' object stores

The session root is shared by every driver of the user (a pytest-xdist run starts
several at once), so what init() does there -- reaping, pruning, creating its folder,
repointing `session_latest` -- happens under one lock file, `<session root>/.init.lock`
(filelock: an flock the kernel releases if the holder dies): a driver never prunes or
reaps while another is half-way through creating its session, and `session_latest`
names the session that started last.

At `init()`, sessions whose driver is dead and whose nodes could not all clean
up (the driver was SIGKILLed while a node was SIGSTOPped, say) are reaped: their
node managers' process groups are SIGKILLed (a stopped process dies of it too),
their sockets and store folders are removed. Only
the newest MINICLUSTER_SESSIONS_KEPT (20) ended sessions keep their folders;
older ones are deleted, so a test suite that starts thousands of sessions does
not fill the disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sys
import time
from typing import Optional

import filelock

from minicluster._private.common import config, runtime_envs
from minicluster._private.store import object_store, store_recycle

MAX_SOCKET_PATH = 107  # bytes in a Unix socket's path (sun_path, Linux; 103 on macOS)
INIT_LOCK = ".init.lock"  #: in the session root: held while a driver reaps, prunes and creates its session
INIT_LOCK_TIMEOUT_S = 60.0  #: cleanup of many dead sessions takes a while; a minute means the holder is stuck


def init_lock(root: str, timeout: float = INIT_LOCK_TIMEOUT_S) -> filelock.FileLock:
    """The lock a driver holds while it works in the shared session root (see the module docstring)."""
    return filelock.FileLock(os.path.join(root, INIT_LOCK), timeout=timeout, mode=0o600)


class Session:
    def __init__(self, store_bytes: Optional[int], lock_timeout: float = INIT_LOCK_TIMEOUT_S) -> None:
        root = config.session_root()
        make_private_root(root)
        lock = init_lock(root, lock_timeout)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise TimeoutError(f"minicluster: another driver has held {lock.lock_file} for over {lock_timeout:g} s "
                               "while starting its session; is a minicluster process stuck? (the lock goes when "
                               "it exits)") from None
        try:
            self._create(root, store_bytes)
        finally:
            lock.release()

    def _create(self, root: str, store_bytes: Optional[int]) -> None:
        reap_stale_sessions(root)
        reap_orphan_stores(config.shm_root())
        prune_old_sessions(root, config.sessions_kept())
        now = time.time()
        # Microseconds, as Ray's names have: a process may start several sessions a second.
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now)) + f"_{int(now % 1 * 1e6):06d}"
        self.root = root
        # Unique even for several sessions of one process within a second.
        self.dir = os.path.join(root, f"session_{stamp}_{os.getpid()}_{os.urandom(2).hex()}")
        os.makedirs(self.dir, mode=0o700)
        self.logs_dir = os.path.join(self.dir, "logs")
        os.makedirs(self.logs_dir, mode=0o700, exist_ok=True)
        self.socket_path = os.path.join(self.dir, "head.sock")
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            os.rmdir(self.logs_dir)
            os.rmdir(self.dir)
            raise ValueError(
                f"minicluster: the session folder's path is too long for a Unix socket ({self.socket_path!r} "
                f"is over {MAX_SOCKET_PATH} bytes); point MINICLUSTER_TMPDIR at a shorter folder")
        self.key = os.urandom(32)
        suffix = f"minicluster-{os.getuid()}-{os.getpid()}-{os.urandom(3).hex()}"
        shm_parent, in_shm = object_store.choose_root(store_bytes, config.shm_root(), self.dir, config.MIN_SHM_BYTES)
        if not in_shm:
            print(
                f"minicluster: warning: {config.shm_root()} has too little free space for the object store; "
                f"using a folder on disk instead ({self.dir}). Objects still work, only slower.",
                file=sys.stderr,
            )
        self.in_shm = in_shm
        self.store_root = os.path.join(shm_parent, suffix if in_shm else "store")
        os.makedirs(self.store_root, mode=0o700, exist_ok=True)
        self.spill_root = os.path.join(self.dir, "spill")
        self.layout = object_store.Layout(self.store_root, self.spill_root)
        self.start_time = time.time()
        self._write_info()
        latest = os.path.join(root, "session_latest")
        fresh = os.path.join(root, ".session_latest.new")
        try:  # replaced in one step: a reader never finds it missing
            if os.path.lexists(fresh):
                os.unlink(fresh)  # left by a driver killed right here
            os.symlink(os.path.basename(self.dir), fresh)
            os.replace(fresh, latest)
        except OSError:
            pass

    def _write_info(self) -> None:
        info = {
            "driver_pid": os.getpid(),
            "start_time": self.start_time,
            "store_root": self.store_root,
            "socket_path": self.socket_path,
        }
        path = os.path.join(self.dir, "session.json")
        with open(path, "w") as f:
            json.dump(info, f)
        os.chmod(path, 0o600)

    def record_node(self, pid: int) -> None:
        """Note a node manager's pid (it leads its own process group) for reap_stale_sessions."""
        fd = os.open(os.path.join(self.dir, "node_pids"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"{pid}\n".encode())
        finally:
            os.close(fd)

    def cleanup(self) -> None:
        """Remove everything but the logs folder."""
        store_recycle.forbid()  # first: the deleter thread moves no freed file into a folder going away
        shutil.rmtree(self.store_root, ignore_errors=True)
        shutil.rmtree(self.spill_root, ignore_errors=True)
        runtime_envs.remove_packages(self.dir)  # the copies of working_dir / py_modules
        for name in ("head.sock", "session.json", "node_pids"):
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass


def make_private_root(path: str) -> None:
    """Create the session root, or check the one there: a real folder of ours, then made 0700.

    /tmp is shared: another user may have planted a symlink (or a folder of theirs) under
    the name first, to have us chmod and write into a folder they chose. So the last
    component is opened with O_NOFOLLOW and checked through that descriptor (no race
    between the check and the chmod), as ssh-agent-style tools do; anything else is refused.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    advice = "remove it, or set MINICLUSTER_TMPDIR to a folder of yours"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        kind = "a symlink" if os.path.islink(path) else "not a folder"
        raise PermissionError(f"minicluster: refusing the session root {path}: it is {kind} ({exc.strerror}); "
                              f"{advice}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise PermissionError(f"minicluster: refusing the session root {path}: it belongs to user id "
                                  f"{st.st_uid}, not to you ({os.getuid()}); {advice}")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def reap_stale_sessions(root: str) -> None:
    """Clean up after drivers that died without cleaning up (their nodes normally do it)."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        info_path = os.path.join(root, name, "session.json")
        try:
            with open(info_path) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        pid = info.get("driver_pid")
        if not isinstance(pid, int) or pid_alive(pid):
            continue
        start_time = info.get("start_time")
        _kill_leftover_nodes(os.path.join(root, name, "node_pids"),
                             start_time if isinstance(start_time, (int, float)) else None)
        store_root = info.get("store_root")
        if isinstance(store_root, str) and "minicluster" in store_root:
            shutil.rmtree(store_root, ignore_errors=True)
        shutil.rmtree(os.path.join(root, name, "spill"), ignore_errors=True)
        runtime_envs.remove_packages(os.path.join(root, name))
        for leftover in ("head.sock", "session.json", "node_pids"):
            try:
                os.unlink(os.path.join(root, name, leftover))
            except OSError:
                pass


def reap_orphan_stores(shm_root: str) -> None:
    """Remove this user's store folders whose driver is dead, whichever session folder it used.

    reap_stale_sessions finds dead sessions through their folders, which live under the
    session root of the driver's environment (MINICLUSTER_TMPDIR); a session started under
    another root left its store in the shared-memory folder all the same. The driver's pid
    is in the folder's name (Session's `suffix`); a folder whose pid is alive is kept.
    """
    prefix = f"minicluster-{os.getuid()}-"
    try:
        names = os.listdir(shm_root)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):].split("-", 1)[0]
        if pid_text.isdigit() and not pid_alive(int(pid_text)):
            shutil.rmtree(os.path.join(shm_root, name), ignore_errors=True)


def _kill_leftover_nodes(pids_path: str, session_start: Optional[float]) -> None:
    """SIGKILL the process groups of a dead session's node managers that are still there.

    A pid is only trusted while it still names that node manager: the leader of its own
    process group, running our node manager's bootstrap, started after the session
    did (a recycled pid fails one of these; where /proc is missing, nothing is killed).
    """
    try:
        with open(pids_path) as f:
            pids = [int(word) for word in f.read().split() if word.isdigit()]
    except OSError:
        return
    for pid in pids:
        if _is_our_node_manager(pid, session_start):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _is_our_node_manager(pid: int, session_start: Optional[float]) -> bool:
    try:
        if os.getpgid(pid) != pid:
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"minicluster._private.node.node_manager" not in f.read():
                return False
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return False
        if session_start is not None and _process_start(pid) < session_start - 2.0:
            return False  # older than the session: the pid was recycled
    except (OSError, ValueError, IndexError):
        return False
    return True


def _process_start(pid: int) -> float:
    """When a process started (Unix time), from /proc: boot time plus its start in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        stat_line = f.read()
    ticks = int(stat_line[stat_line.rindex(")") + 2:].split()[19])  # field 22, starttime
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def prune_old_sessions(root: str, keep: int) -> None:
    """Delete the folders of ended sessions but the newest `keep` (names sort by start time)."""
    try:
        names = sorted(name for name in os.listdir(root) if name.startswith("session_") and name != "session_latest")
    except OSError:
        return
    ended = [name for name in names if not os.path.exists(os.path.join(root, name, "session.json"))]
    for name in ended[:-keep]:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
