"""Nothing leaks and nobody else gets in (SPEC section 5): processes, shared memory, session files, the socket."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import time
from typing import Iterator

import psutil
import pytest
from conftest import session_pids, short_tmpdir, wait_for

import minicluster as ray
from minicluster import testing


@ray.remote
def echo(x):
    return x


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def with_children(pids):
    """The pids plus every descendant (workers forked but not yet connected count too)."""
    found = set(pids)
    for pid in pids:
        try:
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return found


def own_shm():
    return glob.glob(f"/dev/shm/minicluster-{os.getuid()}-{os.getpid()}-*")


# ---- shutdown ----------------------------------------------------------------------------------


def test_shutdown_leaves_no_process_and_no_shared_memory(cluster):
    cluster(num_nodes=2, num_cpus=1)
    ray.get([echo.remote(i) for i in range(4)])
    ray.put(b"x" * (1 << 20))  # a store file
    store = testing.snapshot().store_root
    assert store.startswith("/dev/shm/")
    assert own_shm()
    pids = with_children(session_pids())
    assert len(pids) >= 4  # two node managers and their workers
    ray.shutdown()
    assert not ray.is_initialized()
    wait_for(lambda: not [p for p in pids if alive(p)], timeout=3, what="session processes to exit")
    assert not os.path.exists(store)
    assert not own_shm()


def test_shutdown_with_tasks_still_running(cluster, tmp_path):
    cluster(num_nodes=2, num_cpus=1)

    @ray.remote
    def forever(path):
        open(path, "w").close()
        time.sleep(60)

    refs = [forever.remote(str(tmp_path / f"started{i}")) for i in range(2)]
    wait_for(lambda: len(os.listdir(tmp_path)) == 2, timeout=10, what="both tasks to start")
    pids = with_children(session_pids())
    start = time.monotonic()
    ray.shutdown()
    assert time.monotonic() - start < 3
    wait_for(lambda: not [p for p in pids if alive(p)], timeout=3, what="session processes to exit")
    del refs


def test_init_and_shutdown_three_times(cluster):
    stores = []
    for i in range(3):
        cluster(num_nodes=2, num_cpus=1)
        assert ray.get(echo.remote(i)) == i
        stores.append(testing.snapshot().store_root)
        pids = with_children(session_pids())
        ray.shutdown()
        wait_for(lambda pids=pids: not [p for p in pids if alive(p)], timeout=3,
                 what=f"session {i}'s processes to exit")
        assert not os.path.exists(stores[-1])
    assert len(set(stores)) == 3
    assert not own_shm()


def test_session_files_are_removed_at_shutdown(cluster):
    info = cluster(num_nodes=1, num_cpus=1)
    session_dir = info.address_info["session_dir"]
    socket_path = os.path.join(session_dir, "head.sock")
    assert os.path.exists(socket_path)
    ray.shutdown()
    assert not os.path.exists(socket_path)
    assert not os.path.exists(os.path.join(session_dir, "session.json"))
    assert os.path.isdir(os.path.join(session_dir, "logs"))  # kept on purpose


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A folder short enough for a session's socket path (pytest's tmp_path is not, nor TMPDIR always)."""
    root = short_tmpdir("mc-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_only_the_newest_ended_sessions_are_kept(cluster, monkeypatch, short_tmp):
    monkeypatch.setenv("MINICLUSTER_TMPDIR", short_tmp)
    monkeypatch.setenv("MINICLUSTER_SESSIONS_KEPT", "2")
    folders = []
    for _ in range(4):
        info = cluster(num_nodes=1, num_cpus=1)
        folders.append(info.address_info["session_dir"])
        ray.shutdown()
    # Each init keeps the two newest ended sessions before it: the fourth pruned the first.
    assert [os.path.isdir(folder) for folder in folders] == [False, True, True, True]
    info = cluster(num_nodes=1, num_cpus=1)
    assert [os.path.isdir(folder) for folder in folders] == [False, False, True, True]
    assert os.path.isdir(info.address_info["session_dir"])


@pytest.mark.parametrize("config_size", ["small", "over a pipe buffer"])
def test_failed_init_leaves_nothing_behind(monkeypatch, config_size):
    """A node manager that cannot start (here: a broken Python for child processes) fails init cleanly.

    A node's configuration (it carries the driver's sys.path) larger than a pipe buffer makes
    the dying interpreter break the pipe while the driver still writes it."""
    monkeypatch.setenv("PYTHONHOME", "/nonexistent")
    if config_size != "small":
        monkeypatch.setattr(sys, "path", sys.path + [f"/nonexistent/{i:08d}" * 8 for i in range(2000)])
    with pytest.raises(RuntimeError, match="start"):
        ray.init(num_nodes=2, num_cpus=1)
    assert not ray.is_initialized()
    assert not own_shm()
    wait_for(lambda: not [p for p in psutil.Process().children(recursive=True) if alive(p.pid)],
             timeout=3, what="the failed session's processes to exit")
    monkeypatch.undo()
    ray.init(num_nodes=1, num_cpus=1)
    try:
        assert ray.get(echo.remote(1)) == 1
    finally:
        ray.shutdown()
    assert not own_shm()


def test_killed_node_manager_takes_its_workers_and_store_with_it(cluster):
    cluster(num_nodes=2, num_cpus=1)
    victim = testing.snapshot().nodes[1]
    node_pid, store_dir, worker_pids = victim.pid, victim.store_dir, victim.worker_pids
    doomed = with_children([node_pid]) | set(worker_pids)
    assert os.path.isdir(store_dir)
    os.kill(node_pid, signal.SIGKILL)  # only the node manager, not its process group
    wait_for(lambda: not [p for p in doomed if alive(p)], timeout=3, what="the node's workers to exit")
    wait_for(lambda: not os.path.exists(store_dir), timeout=3, what="the dead node's store folder to go")
    wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == 1, timeout=3, what="the node to be marked dead")
    assert ray.get([echo.remote(i) for i in range(4)], timeout=20) == [0, 1, 2, 3]


@ray.remote
def die_mid_write(store_dir: str, name: str) -> None:
    """As a worker SIGKILLed while writing an object leaves it: a partial `<id>.tmp-<pid>`."""
    with open(os.path.join(store_dir, f"{name}.tmp-{os.getpid()}"), "wb") as partial:
        partial.write(b"\0" * (1 << 20))
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_mid_write_leaves_no_partial_file(cluster):
    cluster(num_nodes=1, num_cpus=1)
    store = testing.snapshot().node(ray.get_runtime_context().get_node_id()).store_dir  # the driver's node's
    name = "ab" * 14
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(die_mid_write.options(max_retries=0).remote(store, name), timeout=10)
    wait_for(lambda: not [n for n in os.listdir(store) if n.startswith(name)], timeout=3,
             what="the node manager to remove the dead worker's partial write")
    assert ray.get(echo.remote(1), timeout=10) == 1


# ---- the driver dies --------------------------------------------------------------------------

DRIVER_SCRIPT = textwrap.dedent("""
    import json, time
    import minicluster as ray
    from minicluster import testing

    ray.init(num_nodes=2, num_cpus=1)

    @ray.remote
    def f(x):
        return x

    assert ray.get([f.remote(i) for i in range(4)]) == [0, 1, 2, 3]
    keep = ray.put(b"x" * (1 << 20))  # a file in the store
    deadline = time.time() + 10
    while time.time() < deadline:
        snap = testing.snapshot()
        if all(node.worker_pids for node in snap.nodes):
            break
        time.sleep(0.01)
    print(json.dumps({"pids": list(snap.pids()), "store_root": snap.store_root,
                      "session_dir": snap.session_dir}), flush=True)
    time.sleep(120)
""")


def run_driver_and_kill_it():
    """Start a driver script, read its session's pids and folders, SIGKILL it. Returns the info."""
    proc = subprocess.Popen([sys.executable, "-c", DRIVER_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, f"the driver script printed nothing (exit code {proc.poll()})"
        info = json.loads(line)
        info["pids"] = sorted(with_children(info["pids"]))
        assert len(info["pids"]) >= 4
        assert all(alive(p) for p in info["pids"])
        assert os.path.isdir(info["store_root"])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        info["killed_at"] = time.monotonic()
        return info
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_driver_sigkill_ends_every_session_process_and_removes_the_store():
    info = run_driver_and_kill_it()
    wait_for(lambda: not [p for p in info["pids"] if alive(p)], timeout=3,
             what=f"node managers and workers to exit after the driver died: {info['pids']}")
    wait_for(lambda: not os.path.exists(info["store_root"]), timeout=3, what="the store folder to be removed")
    assert time.monotonic() - info["killed_at"] < 3
    assert not os.path.exists(os.path.join(info["session_dir"], "head.sock"))


def test_driver_sigkill_leaves_no_session_file():
    info = run_driver_and_kill_it()
    wait_for(lambda: not [p for p in info["pids"] if alive(p)], timeout=3, what="session processes to exit")
    leftovers = sorted(set(os.listdir(info["session_dir"])) - {"logs"})
    assert leftovers == []


# ---- privacy and authentication ---------------------------------------------------------------------


def test_session_folder_socket_and_store_are_private(cluster):
    info = cluster(num_nodes=1, num_cpus=1)
    session_dir = info.address_info["session_dir"]
    assert os.stat(session_dir).st_mode & 0o077 == 0
    assert os.stat(os.path.dirname(session_dir)).st_mode & 0o077 == 0  # the root of all sessions
    socket_path = os.path.join(session_dir, "head.sock")
    assert stat.S_ISSOCK(os.stat(socket_path).st_mode)
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
    store = testing.snapshot().store_root
    assert os.stat(store).st_mode & 0o077 == 0
    ray.put(b"x" * (1 << 20))
    for path in glob.glob(os.path.join(store, "*", "*")):
        assert os.stat(path).st_mode & 0o077 == 0, path


def _connect(session_dir):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(3)
    sock.connect(os.path.join(session_dir, "head.sock"))
    return sock


def _closed_by_peer(sock, deadline_s=3.0):
    """True once the head closes the connection (recv returns EOF); False if it stays open."""
    sock.settimeout(0.05)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
        if not data:
            return True
    return False


def _read_challenge(sock):
    header = sock.recv(4)
    (length,) = struct.unpack("<I", header)
    challenge = b""
    while len(challenge) < length:
        challenge += sock.recv(length - len(challenge))
    return challenge


def test_wrong_hmac_is_rejected_and_the_cluster_keeps_working(cluster, capfd):
    info = cluster(num_nodes=1, num_cpus=1)
    sock = _connect(info.address_info["session_dir"])
    try:
        challenge = _read_challenge(sock)
        assert len(challenge) >= 16
        wrong_proof = b"\0" * 32 + os.urandom(32)
        sock.sendall(struct.pack("<I", len(wrong_proof)) + wrong_proof)
        assert _closed_by_peer(sock)
    finally:
        sock.close()
    assert ray.get(echo.remote("fine")) == "fine"
    assert "rejected" in capfd.readouterr().err


def test_short_garbage_frame_is_rejected(cluster):
    info = cluster(num_nodes=1, num_cpus=1)
    sock = _connect(info.address_info["session_dir"])
    try:
        _read_challenge(sock)
        sock.sendall(struct.pack("<I", 5) + b"hello")
        assert _closed_by_peer(sock)
    finally:
        sock.close()
    assert ray.get(echo.remote(1)) == 1


def test_pickled_message_before_authentication_is_not_executed(cluster, tmp_path):
    """A frame that is a valid pickle of a message must not reach the head before the handshake."""
    import pickle

    info = cluster(num_nodes=1, num_cpus=1)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps([Evil()], protocol=5)
    sock = _connect(info.address_info["session_dir"])
    try:
        _read_challenge(sock)
        sock.sendall(struct.pack("<I", len(payload)) + payload)
        assert _closed_by_peer(sock)
    finally:
        sock.close()
    assert not marker.exists()
    assert ray.get(echo.remote(2)) == 2


def test_unframed_garbage_is_rejected(cluster):
    """Before authentication the head must not buffer an announced frame of any length."""
    info = cluster(num_nodes=1, num_cpus=1)
    sock = _connect(info.address_info["session_dir"])
    try:
        _read_challenge(sock)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # reads as a 542 MB frame length
        assert _closed_by_peer(sock, deadline_s=1.0)
    finally:
        sock.close()
    assert ray.get(echo.remote(3)) == 3
