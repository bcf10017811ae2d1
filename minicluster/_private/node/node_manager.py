"""A virtual node's manager process: the zygote that forks its workers and watches them.

Started by the head (virtual_nodes.launch) in a new session,
so the node manager and every worker it forks share one process group: killing
the node is one `killpg(SIGKILL)`, like pulling a machine's plug. It is
single-threaded (so forking is safe) and loops on two things:

    head socket      Spawn -> fork workers
    SIGCHLD (pipe)   reap exited workers -> WorkerExit with the exit status;
                     delete their spare files, and a crashed one's partial writes

A forked worker's stdout and stderr go to its own files in the session's
logs/ folder (log_files.py); the driver tails them onto its terminal.

The runtime modules are imported before the first fork, so a worker starts in
a millisecond or two instead of paying for a fresh interpreter.

If the head's socket closes (the driver exited or was SIGKILLed), the node
cleans up after itself: kills its workers, removes its store folder, then kills
its whole process group, itself included. The last node out (the one that finds
the store root empty) also removes the session's socket and session.json; while
another node's folder remains (a node that was SIGSTOPped when the driver died
cannot clean up), session.json stays, so the next `init()` reaps that node
(session.py, reap_stale_sessions).
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import sys
from typing import Dict

from minicluster._private.common.ids import new_worker_id, set_job_id
from minicluster._private.node import worker  # noqa: F401

# Imported here, before any fork, so workers inherit them ready to use.
from minicluster._private.observe import log_files
from minicluster._private.store import object_store, store_spares
from minicluster._private.wire import messages as msg
from minicluster._private.wire.protocol import Connection, FrameDecoder, decode


class NodeManager:
    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        set_job_id(cfg["job_id"])  # before any fork: workers inherit it
        self.node_id: bytes = cfg["node_id"]
        self.store_dir = os.path.join(cfg["store_root"], self.node_id.hex())
        self.workers: Dict[int, bytes] = {}  # pid -> worker id
        self.conn = Connection.connect(cfg["socket_path"], cfg["key"])
        self.decoder = FrameDecoder()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def run(self) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        self.conn.send(msg.NodeHello.new(node_id=self.node_id, pid=os.getpid()))
        _preload(self.cfg.get("preload_modules", ()))
        self.spawn(self.cfg["num_workers"])
        sock = self.conn.sock
        sock.setblocking(False)
        while True:
            try:
                readable, _, _ = select.select([sock, self.wake_r], [], [])
            except InterruptedError:
                continue
            if self.wake_r in readable:
                try:
                    while os.read(self.wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            self.reap()
            if sock in readable:
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.head_gone()
                for frame in self.decoder.feed(data):
                    for message in decode(frame):
                        self.handle(message)

    def handle(self, message: tuple) -> None:
        if type(message) is msg.Spawn:  # the head's only message to a node manager
            self.spawn(message.count)
        else:
            print(f"minicluster node manager: unknown message {type(message).__name__}", file=sys.stderr)

    def spawn(self, count: int) -> None:
        for _ in range(count):
            worker_id = new_worker_id()
            pid = os.fork()
            if pid == 0:
                self._become_worker(worker_id)
            self.workers[pid] = worker_id

    def _become_worker(self, worker_id: bytes) -> None:
        parent = os.getppid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
        self.conn.sock.close()
        cfg = self.cfg
        if cfg.get("logs_dir"):
            try:
                log_files.redirect_worker_output(cfg["logs_dir"], worker_id)
            except OSError as exc:
                print(f"minicluster: a worker's output stays on this terminal: cannot open its log file: {exc}",
                      file=sys.stderr)
        layout = object_store.Layout(cfg["store_root"], cfg["spill_root"])
        worker.worker_main(cfg["socket_path"], cfg["key"], worker_id, self.node_id, layout, cfg["capacity"],
                           parent)

    def reap(self) -> None:
        exits = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker_id = self.workers.pop(pid, None)
            if worker_id is not None:
                store_spares.remove_spare_of(self.store_dir, pid)  # however it ended, its spare goes
                code = os.waitstatus_to_exitcode(status)
                if code != 0:  # killed or crashed, perhaps in the middle of writing an object
                    object_store.remove_partial_writes(self.store_dir, pid)
                exits.append(msg.WorkerExit.new(pid=pid, worker_id=worker_id, exitcode=code))
        if exits:
            try:
                self.conn.send(*exits)
            except OSError:
                self.head_gone()

    def head_gone(self) -> None:
        self.kill_workers()  # first, so that none of them writes into the folder while it goes
        object_store.remove_store(self.store_dir)
        object_store.remove_store(os.path.join(self.cfg["spill_root"], self.node_id.hex()))
        try:
            os.rmdir(self.cfg["store_root"])  # the last node out removes the session's store root...
        except OSError:
            os.killpg(0, signal.SIGKILL)  # ...another node's folder is left: session.json stays for the reaper
        session_dir = os.path.dirname(self.cfg["socket_path"])
        for name in ("head.sock", "session.json", "node_pids"):  # the logs folder stays, on purpose
            try:
                os.unlink(os.path.join(session_dir, name))
            except OSError:
                pass
        os.killpg(0, signal.SIGKILL)


    def kill_workers(self) -> None:
        for pid in self.workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.workers:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _preload(names: "tuple[str, ...]") -> None:
    """_system_config's preload_python_modules: imported once here, so that every worker forked
    afterwards has them. As in Ray, a module that fails to import is reported, not fatal."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure of a user's module is reported the same way
            print(f"minicluster: preload_python_modules: cannot import {name!r} ({type(exc).__name__}: {exc}); "
                  "the workers start without it", file=sys.stderr)


def main(cfg: dict) -> None:
    """Entry point; started by virtual_nodes.launch with the driver's sys.path already set,
    so workers import user modules (scripts' folders, test files) as the driver does."""
    try:
        NodeManager(cfg).run()
    except (ConnectionError, OSError) as exc:
        print(f"minicluster node manager: cannot reach the head: {exc}", file=sys.stderr)
        os.killpg(0, signal.SIGKILL)

