"""The head's records of virtual nodes and their workers, and the node processes' birth and death.

Runs in the driver process (the head), under the head's lock. A node is a
node manager process (node_manager.py), leader of its own process group, plus
the workers it forks; its store is the folder `<store root>/<node id hex>`.

Each worker also has a small WorkerInfo: its life as the state API shows it
(`list_workers`): when it started and ended, and whether its exit was a failure
or on purpose (retired after max_calls, killed by cancel(force=True), ...).
Infos that changed are collected in their node's `worker_changes` set for the
state recorder (state_recorder.py) to journal.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional, Set

from minicluster._private.common.placement import plain_resources
from minicluster._private.common.task_spec import ACTOR_CREATION_TASK
from minicluster._private.store import object_store, store_recycle, store_spares

# Ray's worker exit types (WorkerState.exit_type).
SYSTEM_ERROR = "SYSTEM_ERROR"  #: crashed, was killed, or its node died
INTENDED_SYSTEM_EXIT = "INTENDED_SYSTEM_EXIT"  #: the runtime retired it (max_calls, idle, shutdown)
INTENDED_USER_EXIT = "INTENDED_USER_EXIT"  #: the user ended it (cancel(force=True))

# What a worker serves, fixed by its first task. As in Ray, a worker that ran a GPU task
# never runs a CPU-only one and the other way round, and an actor gets a worker that ran
# no task before; tasks of different CPU counts or custom resources do share workers.
# A worker runs in one runtime_env for life (it sets its variables, cwd and sys.path once),
# so the environment is part of the kind: workers of different environments are never shared.
CPU_TASKS = "cpu"
GPU_TASKS = "gpu"
ACTOR = "actor"


def worker_kind(spec: Any, as_task: bool = False) -> Any:
    """The kind of worker a task needs (see CPU_TASKS): a string, or (string, runtime_env) for a
    task with an environment. `as_task`: the kind of a failed actor's worker, back in the pool."""
    if spec.task_type == ACTOR_CREATION_TASK and not as_task:
        base = ACTOR
    else:  # (in a placement group a GPU is the bundle's: GPU_group_...)
        base = GPU_TASKS if plain_resources(spec.resources).get("GPU") else CPU_TASKS
    return base if spec.runtime_env is None else (base, spec.runtime_env)


@dataclass(eq=False)
class WorkerInfo:
    """One worker's life, as `list_workers` reports it (kept after the worker is gone)."""

    worker_id: bytes
    node_id: bytes
    pid: int
    start_time: float
    end_time: Optional[float] = None
    exit_type: Optional[str] = None  #: None while alive
    exit_detail: Optional[str] = None
    intended_exit: Optional[tuple] = None  #: (exit type, detail) once its exit is expected


class WorkerRecord:
    """What the head knows about one worker process."""

    __slots__ = ("worker_id", "node", "pid", "peer", "queue", "functions", "blocked", "dead", "retiring",
                 "borrowed", "owned", "requests", "tasks_done", "actor", "info", "kind", "gpus")

    def __init__(self, worker_id: bytes, node: "NodeRecord", pid: int, peer: Any) -> None:
        self.worker_id = worker_id
        self.node = node
        self.pid = pid
        self.peer = peer
        #: TaskRecords sent to it, in order; the first is running. More than one only
        #: when tiny tasks are pipelined (head.py, PIPELINE_DEPTH); they share one
        #: resource lease, taken when the first was placed.
        self.queue: Deque[Any] = collections.deque()
        self.functions: Set[bytes] = set()  #: function ids it has been sent
        self.blocked = 0  #: >0 while its task waits in get/wait (its CPU is lent out)
        self.dead = False
        self.retiring = False  #: leaving after max_calls; its exit is not a failure
        self.borrowed: Set[bytes] = set()  #: object ids it announced holding
        self.owned: Set[bytes] = set()  #: object ids it created (task returns, puts)
        self.requests: Dict[int, Any] = {}  #: its blocked get/wait requests (Waiters)
        self.tasks_done = 0
        self.actor: Any = None  #: the ActorRecord it is dedicated to, if any
        self.kind: Any = None  #: what it serves (worker_kind); None until its first task
        self.gpus: tuple = ()  #: the node's GPU ids it was last given (gpus.py)
        self.info = WorkerInfo(worker_id, node.node_id, pid, time.time())
        node.worker_changes.add(self.info)

    @property
    def task(self) -> Any:
        """The task running now, or None when idle."""
        return self.queue[0] if self.queue else None

    def retire(self, why: str) -> None:
        """It leaves on the runtime's request (max_calls, idle surplus): a clean exit, not a failure."""
        self.retiring = True
        self.info.intended_exit = (INTENDED_SYSTEM_EXIT, why)

    def expect_exit(self, exit_type: str, why: str) -> None:
        """It is about to be killed on purpose (for example by cancel(force=True))."""
        self.info.intended_exit = (exit_type, why)

    def mark_dead(self, exitcode: Optional[int], node_death: Optional[str] = None) -> None:
        self.dead = True
        info = self.info
        info.end_time = time.time()
        if node_death is not None:
            info.exit_type, info.exit_detail = SYSTEM_ERROR, f"its node {self.node.name} died: {node_death}"
        elif info.intended_exit is not None:
            info.exit_type, info.exit_detail = info.intended_exit
        else:
            info.exit_type, info.exit_detail = SYSTEM_ERROR, f"the worker process died ({exit_reason(exitcode)})"
        self.node.worker_changes.add(info)


class NodeRecord:
    """What the head knows about one virtual node."""

    def __init__(self, node_id: bytes, index: int, resources: Dict[str, float], num_workers: int, store_dir: str,
                 spill_dir: str, capacity: int) -> None:
        self.node_id = node_id
        self.index = index
        self.resources = resources
        self.target_workers = num_workers  #: pool size kept warm
        self.store_dir = store_dir
        self.spill_dir = spill_dir  #: where its store spills when over capacity (on disk)
        self.capacity = capacity  #: store bytes before spilling (object_store_memory)
        self.process: Optional[subprocess.Popen] = None
        self.pid = 0
        self.peer: Any = None
        self.workers: Dict[bytes, WorkerRecord] = {}
        self.idle: Deque[WorkerRecord] = collections.deque()
        self.waiting: Deque[Any] = collections.deque()  #: tasks placed here, holding resources, waiting for a worker
        self.pending_spawn = 0  #: workers asked for and not yet connected
        self.alive = True
        self.death_reason = ""
        self.stopped = False  #: SIGSTOPped (hung) on purpose
        self.hello = threading.Event()
        self.start_time = 0.0
        self.end_time = 0.0
        self.worker_changes: Set[WorkerInfo] = set()  #: infos changed since the state recorder looked
        self.labels: Dict[str, str] = {}  #: Ray's node labels ("ray.io/node-id" and the user's)
        self.gpu_ids: List[str] = []  #: its GPUs' device ids (gpus.py)

    @property
    def name(self) -> str:
        return f"node-{self.index}"

    def take_idle(self, kind: Any) -> Optional[WorkerRecord]:
        """An idle worker that may run a task of this kind (worker_kind), taken out of the idle list.

        The most recently idle first, as in Ray: its caches are warm, the same worker serves a
        sequence of tasks, and surplus workers stay idle long enough to be retired."""
        idle = self.idle
        if not idle:
            return None
        last = idle[-1]
        if last.kind is None or last.kind == kind:  # nearly always: one kind of work at a time
            return idle.pop()
        for worker in reversed(idle):
            if worker.kind is None or worker.kind == kind:
                idle.remove(worker)
                return worker
        return None

    def pool_size(self) -> int:
        """Workers available for tasks: actors' dedicated workers and retiring ones do not count."""
        return sum(1 for w in self.workers.values() if w.actor is None and not w.retiring)


def launch(cfg: Dict[str, Any], log_path: Optional[str]) -> subprocess.Popen:
    """Start a node manager in a new session (so: its own process group); cfg goes over stdin."""
    os.makedirs(os.path.join(cfg["store_root"], cfg["node_id"].hex()), mode=0o700, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # -S skips site initialisation (~15 ms); the driver's sys.path, sent in cfg,
    # replaces it before anything else is imported.
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", _BOOTSTRAP],
        stdin=subprocess.PIPE,
        start_new_session=True,
        env=env,
        close_fds=True,
    )
    assert proc.stdin is not None
    # If the interpreter dies before reading its cfg (a broken PYTHONHOME, say), the pipe
    # breaks; the caller's wait for the node's hello reports the exit with its code.
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(pickle.dumps(cfg))
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    return proc


_BOOTSTRAP = (
    "import sys, pickle; cfg = pickle.load(sys.stdin.buffer); sys.stdin.close(); "
    "sys.path[:] = cfg['sys_path']; "
    "from minicluster._private.node.node_manager import main; main(cfg)"
)


def kill(node: NodeRecord) -> None:
    """Power cut: SIGKILL the node's whole process group and delete its store folder."""
    if node.pid:
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    store_spares.keeper().retire(node.store_dir)  # this process's spare there, and no new one
    store_recycle.forbid(node.store_dir)  # no freed file kept there either
    if node.process is not None:
        # Reaped first, so no call of its in flight can put a file back after the folder
        # is gone. SIGKILL makes this quick; the bound only guards against a kernel stall.
        try:
            node.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    object_store.remove_store(node.store_dir)
    object_store.remove_store(node.spill_dir)  # a dead machine's disk is gone too


def exit_reason(exitcode: Optional[int]) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}"
    return f"exit code {exitcode}"
