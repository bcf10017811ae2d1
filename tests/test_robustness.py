"""Robustness: a junk frame, a paused node when the driver dies, full disks, a bounded journal,
a task that closes its output streams (issue 15; its stale-ref and planted-root cases are in test_bad_input.py)."""

from __future__ import annotations

import os
import struct

import psutil
import pytest
from conftest import wait_for

import minicluster as ray


def write_junk_to_own_socket() -> None:
    """From inside a task: write a well-framed but undecodable frame into the worker's head socket."""
    from minicluster._private.client import context

    fd = context.client().conn.sock.fileno()
    payload = b"\x80\x05not a pickle at all"
    os.write(fd, struct.pack("<I", len(payload)) + payload)


# ---- 1. a malformed frame drops its peer, never the head ------------------------------


def test_junk_frame_drops_only_that_worker_and_the_task_is_retried(cluster, tmp_path, capfd):
    cluster(num_nodes=1, num_cpus=2)
    marker = tmp_path / "junk-sent"

    @ray.remote(max_retries=1)
    def breaks_its_socket_once(path):
        if not os.path.exists(path):
            with open(path, "w") as file:
                file.write(str(os.getpid()))
            write_junk_to_own_socket()
            import time

            time.sleep(30)  # the head drops this worker, and kills it
        return "second attempt"

    @ray.remote
    def echo(x):
        return x

    assert ray.get(breaks_its_socket_once.remote(str(marker)), timeout=20) == "second attempt"
    # The dropped worker does not go on with its attempt unseen (it reads its socket only between tasks).
    first_pid = int(marker.read_text())
    wait_for(lambda: not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == "zombie", 10,
             "the dropped worker to be gone")
    # The head still serves: new tasks, puts, gets without a timeout.
    assert ray.get([echo.remote(i) for i in range(20)]) == list(range(20))
    assert ray.get(ray.put("still here")) == "still here"
    assert "malformed frame" in capfd.readouterr().err


def test_junk_frame_without_retries_fails_the_task_with_a_worker_crash(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(max_retries=0)
    def breaks_its_socket():
        write_junk_to_own_socket()
        import time

        time.sleep(30)

    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(breaks_its_socket.remote(), timeout=20)
    assert ray.get(ray.put(1)) == 1


def test_a_handler_that_raises_drops_that_peer_and_the_head_keeps_serving(cluster, monkeypatch, capfd):
    """Whatever goes wrong while one message is handled costs its sender only."""
    from minicluster._private.head import head_messages
    from minicluster._private.wire import messages as msg

    cluster(num_nodes=1, num_cpus=1)
    real = head_messages.HANDLERS[msg.Done]
    failures = []

    def fails_once(head, peer, state, message):
        if not failures:
            failures.append(message)
            raise RuntimeError("a bug in a handler")
        real(head, peer, state, message)

    monkeypatch.setitem(head_messages.HANDLERS, msg.Done, fails_once)

    @ray.remote(max_retries=2)
    def three():
        return 3

    assert ray.get(three.remote(), timeout=20) == 3
    assert ray.get([three.remote() for _ in range(5)]) == [3] * 5
    err = capfd.readouterr().err
    assert "a bug in a handler" in err and "handling its Done failed" in err


# ---- 8. a task that closes its output streams ---------------------------------------------


@pytest.mark.parametrize("how", ["python", "descriptor"])
def test_a_task_that_closes_its_output_does_not_break_later_printing_tasks(cluster, capfd, how):
    import sys

    from conftest import wait_for

    cluster(num_nodes=1, num_cpus=1)  # one worker: every task below runs on it

    @ray.remote(max_retries=0)
    def closes_output(how):
        if how == "python":
            sys.stdout.close()
            sys.stderr.close()
        else:
            os.close(1)
            os.close(2)
        return os.getpid()

    @ray.remote(max_retries=0)
    def prints(i):
        print(f"line {i} on stdout")
        print(f"line {i} on stderr", file=sys.stderr)
        return os.getpid()

    pid = ray.get(closes_output.remote(how))
    assert ray.get([prints.remote(i) for i in range(3)]) == [pid] * 3  # same worker, not a fresh one
    seen = {"out": "", "err": ""}

    def printed():
        captured = capfd.readouterr()
        seen["out"] += captured.out
        seen["err"] += captured.err
        return "line 2 on stdout" in seen["out"] and "line 2 on stderr" in seen["err"]

    wait_for(printed, timeout=10, what="the later tasks' output on the driver's terminal")


# ---- 3. the driver dies while a node is stopped ---------------------------------------------

PAUSED_NODE_DRIVER = """
import os, sys
import minicluster as ray
from minicluster import testing

ray.init(num_nodes=2, num_cpus=1)
snap = testing.snapshot()
paused = snap.nodes[1]
print("STORE", paused.store_dir, flush=True)
print("GROUP", paused.pid, flush=True)
print("OTHER", snap.nodes[0].pid, flush=True)
testing.stop_node(paused.node_id)
# The processes the stop froze: its process group as the OS has it now. (Not the head's list of
# its workers: one of those may have exited, and been reaped, between that list and the stop.)
import psutil
frozen = []
for proc in psutil.process_iter():
    try:
        if os.getpgid(proc.pid) == paused.pid and proc.status() != psutil.STATUS_ZOMBIE:
            frozen.append(proc.pid)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass
print("PIDS", " ".join(str(p) for p in frozen), flush=True)
print("STOPPED", flush=True)
sys.stdin.readline()
"""


def test_a_node_paused_when_the_driver_dies_is_reaped_by_the_next_init(tmp_path, cluster, monkeypatch):
    import shutil
    import signal
    import tempfile

    import psutil
    from conftest import short_tmpdir, wait_for
    from driver_process import DriverProcess

    # A session folder and a store folder of their own: any other driver's init() (another
    # test run on this host, say) reaps a dead driver's session too, and the point here is
    # that the node stays paused until *our* next init reaps it.
    shm = tempfile.mkdtemp(prefix="mc-test-paused-", dir=os.environ.get("MINICLUSTER_SHM_DIR", "/dev/shm"))
    sessions = short_tmpdir("mc-test-")
    private = {"MINICLUSTER_TMPDIR": sessions, "MINICLUSTER_SHM_DIR": shm}
    group = None
    try:
        driver = DriverProcess(PAUSED_NODE_DRIVER, str(tmp_path / "driver.py"), env=private)
        try:
            store = driver.expect("STORE")
            group = int(driver.expect("GROUP"))  # the paused node's process group
            other = int(driver.expect("OTHER"))
            pids = [int(p) for p in driver.expect("PIDS").split()]
            assert pids, "the stop froze no process (not even the node manager)"
            driver.expect("STOPPED")
            os.kill(driver.proc.pid, signal.SIGKILL)
            driver.proc.wait(timeout=10)  # (not finish(): the paused processes still hold its output pipes)
        finally:
            driver.kill()

        def gone(pid):
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        def described(pid):
            try:
                proc = psutil.Process(pid)
                return f"{pid} {proc.status()} {proc.cmdline()}"
            except psutil.NoSuchProcess:
                return f"{pid} gone"

        wait_for(lambda: gone(other), timeout=10, what="the running node to clean up after its driver")
        assert not any(gone(p) for p in pids), (
            f"the paused node cannot have noticed anything yet: {[described(p) for p in pids]}")
        assert os.path.isdir(store)
        for name, value in private.items():
            monkeypatch.setenv(name, value)
        cluster(num_nodes=1, num_cpus=1)  # the next session reaps what the dead one left
        wait_for(lambda: all(gone(p) for p in pids), timeout=10, what="the paused node's processes to be reaped")
        assert not os.path.exists(store)
        assert ray.get(ray.put(1)) == 1
    finally:
        ray.shutdown()  # before its store folder's parent goes
        try:  # a failed check above leaves the paused node frozen: it goes with the test
            if group is not None and "node_manager" in " ".join(psutil.Process(group).cmdline()):
                os.killpg(group, signal.SIGKILL)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(sessions, ignore_errors=True)


def test_a_dead_drivers_store_is_removed_whichever_session_folder_it_used(cluster, tmp_path):
    # A driver that ran with another MINICLUSTER_TMPDIR left no session folder where this one
    # looks, but its store is in the one shared-memory folder: its dead pid is in the name.
    import subprocess
    import sys

    shm_root = os.environ.get("MINICLUSTER_SHM_DIR", "/dev/shm")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = os.path.join(shm_root, f"minicluster-{os.getuid()}-{dead.pid}-0rphan")
    live = os.path.join(shm_root, f"minicluster-{os.getuid()}-1-1ive00")  # pid 1 is alive
    try:
        for folder in (orphan, live):
            os.makedirs(os.path.join(folder, "node"))
            with open(os.path.join(folder, "node", "object"), "wb") as f:
                f.write(b"x" * 1000)
        cluster(num_cpus=1)
        assert not os.path.exists(orphan)
        assert os.path.exists(live)
    finally:
        import shutil

        for folder in (orphan, live):
            shutil.rmtree(folder, ignore_errors=True)


# ---- 6. the state journal is bounded -------------------------------------------------------------


def test_the_state_journal_stays_bounded_and_configurable(cluster, monkeypatch):
    from minicluster.util.state import list_tasks

    monkeypatch.setenv("MINICLUSTER_STATE_JOURNAL_MAX_BYTES", "60000")
    monkeypatch.setenv("RAY_task_events_max_num_task_in_gcs", "200")  # Ray's name for the history's size
    info = cluster(num_nodes=1, num_cpus=2)
    journal = os.path.join(info.address_info["session_dir"], "logs", "state.journal")

    @ray.remote
    def tiny(i):
        return i

    sizes = []
    for start in range(0, 3000, 500):
        assert ray.get([tiny.remote(i) for i in range(start, start + 500)]) == list(range(start, start + 500))
        sizes.append(os.path.getsize(journal))
    ray.shutdown()
    final = os.path.getsize(journal)
    # Unbounded, 3,000 tasks make about 250 KB; the journal is compacted whenever it passes
    # 60 KB (to the 200 tasks remembered), and once more at the end.
    assert max(sizes) < 3 * 60000 and final < 60000, (sizes, final)
    rows = list_tasks(address=info.address_info["session_dir"], limit=10_000)
    assert 0 < len(rows) <= 200 and {r.state for r in rows} == {"FINISHED"}


# ---- 4 and 5. full disks ------------------------------------------------------------------------
# A small tmpfs stands for the full file system (mounted by the test: it needs root).

MiB = 1024 * 1024


@pytest.fixture
def small_tmpfs():
    """Mount a fresh tmpfs of the given size (in MiB) under /tmp; unmounted and removed afterwards."""
    import subprocess
    import tempfile

    if os.getuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounts = []

    def mount(mib: int) -> str:
        path = tempfile.mkdtemp(prefix="mc-fs-", dir="/tmp")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", path],
                              capture_output=True, text=True)
        if done.returncode != 0:
            os.rmdir(path)
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(path)
        return path

    yield mount
    ray.shutdown()
    for path in mounts:
        subprocess.run(["umount", "-l", path], check=False)
        os.rmdir(path)


def store_bytes(folder: str) -> int:
    """Bytes in a store folder's object files (what counts against its capacity)."""
    return sum(e.stat().st_size for e in os.scandir(folder) if e.is_file() and "." not in e.name)


def test_when_spilling_fails_the_cap_holds_and_partial_spill_files_go(cluster, small_tmpfs, monkeypatch, capfd):
    from minicluster import testing

    session_fs = small_tmpfs(3)  # the session folder, so its spill folder, on a 3 MiB disk
    monkeypatch.setenv("MINICLUSTER_TMPDIR", session_fs)
    cluster(num_nodes=1, num_cpus=1, object_store_memory=4 * MiB)
    snap = testing.snapshot()
    node = snap.nodes[0]
    kept = []
    with pytest.raises(ray.exceptions.ObjectStoreFullError, match="spilling to disk failed") as failed:
        for i in range(12):  # 12 MiB through a 4 MiB store and a 3 MiB spill disk
            kept.append(ray.put(bytes([i]) * MiB))
    assert "No space left" in str(failed.value)
    assert store_bytes(node.store_dir) <= 4 * MiB  # the cap held
    leftovers = [n for n in os.listdir(node.spill_dir) if ".tmp-" in n]
    assert leftovers == [], "a half-written spill file was left behind"

    @ray.remote(max_retries=0)
    def makes_a_big_result():
        return b"r" * MiB

    with pytest.raises(ray.exceptions.ObjectStoreFullError, match="spilling to disk failed"):
        ray.get(makes_a_big_result.remote())
    assert store_bytes(node.store_dir) <= 4 * MiB
    for i, ref in enumerate(kept):  # what was stored is all still readable
        assert ray.get(ref) == bytes([i]) * MiB
    del kept
    assert "cannot spill" in capfd.readouterr().err


def test_a_full_shared_memory_file_system_gives_object_store_full_error(cluster, small_tmpfs, monkeypatch):
    from minicluster._private.common import config

    shm = small_tmpfs(8)
    monkeypatch.setenv("MINICLUSTER_SHM_DIR", shm)
    monkeypatch.setattr(config, "MIN_SHM_BYTES", MiB)
    cluster(num_nodes=1, num_cpus=1, object_store_memory=6 * MiB)
    with open(os.path.join(shm, "ballast"), "wb") as f:  # someone else fills the file system
        f.write(b"\0" * (6 * MiB))
    kept = []  # (a dropped ref's object is freed before the next put: each one is kept)
    with pytest.raises(ray.exceptions.ObjectStoreFullError, match=r"file system is full \(\d+ of \d+ bytes free"):
        for _ in range(3):
            kept.append(ray.put(b"p" * MiB))
    del kept

    @ray.remote(max_retries=0)
    def big_result():
        return b"r" * (3 * MiB)

    with pytest.raises(ray.exceptions.ObjectStoreFullError, match="file system is full"):
        ray.get(big_result.remote())
    os.unlink(os.path.join(shm, "ballast"))
    assert ray.get(big_result.remote()) == b"r" * (3 * MiB)  # room again: it works
    leftovers = [n for d in os.listdir(shm) for _, _, files in os.walk(os.path.join(shm, d)) for n in files
                 if ".tmp-" in n]
    assert leftovers == []
