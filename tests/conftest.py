"""Shared fixtures: a fresh session per test, and a check that nothing leaked after it.

`cluster(**init_kwargs)` starts a session; whatever the test does (even when it
fails), teardown checks the head's invariants (validate_state), shuts the session
down and then checks that every process the session started is gone and its
shared-memory folder is removed.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator, List

import psutil
import pytest

import minicluster as ray
from minicluster import testing
from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def short_tmpdir(prefix: str) -> str:
    """A new folder for sessions (MINICLUSTER_TMPDIR) under /tmp whatever TMPDIR says, so that
    the head's socket path in it stays within its 107 bytes; the caller removes it."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp" if os.path.isdir("/tmp") else None)


# The suite's sessions live in a folder of their own: another test run on the same host (CI
# runners share /tmp) must neither reap a dead driver's session a test left on purpose nor
# prune the logs of one that just ended. Set here, before any session starts, so the drivers
# tests start in subprocesses inherit it. Under /tmp (short_tmpdir): a long TMPDIR would leave
# the session's socket path no room.
if not os.environ.get("MINICLUSTER_TMPDIR"):
    os.environ["MINICLUSTER_TMPDIR"] = short_tmpdir("mc-")
    atexit.register(shutil.rmtree, os.environ["MINICLUSTER_TMPDIR"], True)


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `condition` until it is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def written(path: Any, what: str, timeout: float = 10.0) -> str:
    """The text a task writes into `path`, once written: the file exists a moment before its
    content does, and a read in between gets ''."""

    def text() -> str:
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    return wait_for(text, timeout, what)


# ---- helpers the node, lineage and ownership tests share ----------------------------------


def on(node: str, soft: bool = False) -> NodeAffinitySchedulingStrategy:
    """Run on `node` (hex id); with soft=True, elsewhere if it is gone."""
    return NodeAffinitySchedulingStrategy(node, soft=soft)


def runs(path: str) -> List[str]:
    """The words tasks appended to `path`, one line each (a node id, a marker); [] if none yet."""
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def count_lines(path: str) -> int:
    """How many lines tasks appended to `path` (0 if none yet)."""
    try:
        with open(path) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


def wait_ready(refs: List[Any], timeout: float = 10.0) -> None:
    """Wait until the tasks finished, without copying their values to the driver's node."""
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    assert len(ready) == len(refs), "tasks did not finish in time"


def session_pids() -> List[int]:
    """Pids of every node manager and worker of the running session."""
    if not ray.is_initialized():
        return []
    return list(testing.snapshot().pids())


def validate_head() -> None:
    """Check the running session's head invariants (testing.validate_state); no-op without a session."""
    if ray.is_initialized():
        testing.validate_state()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _own_shm() -> List[str]:
    return glob.glob(f"/dev/shm/minicluster-{os.getuid()}-{os.getpid()}-*")


@pytest.fixture
def cluster() -> Iterator[Callable[..., Any]]:
    """Start a session with `cluster(num_nodes=..., num_cpus=..., ...)`; torn down and leak-checked."""
    started: List[int] = []
    stores: List[str] = []

    def start(**kwargs: Any) -> Any:
        kwargs.setdefault("num_cpus", 1)
        info = ray.init(**kwargs)
        stores.append(testing.snapshot().store_root)
        return info

    yield start
    started.extend(session_pids())
    validate_head()  # the head's records must be consistent whatever the test did (head_state.py)
    ray.shutdown()
    wait_for(lambda: not [p for p in started if _alive(p)], timeout=3.0,
             what=f"session processes to exit: {[p for p in started if _alive(p)]}")
    for store in stores:
        assert not os.path.exists(store), f"store folder left behind: {store}"
    assert not _own_shm(), f"shared-memory folders left behind: {_own_shm()}"


@pytest.fixture(autouse=True)
def _always_shut_down() -> Iterator[None]:
    yield
    if ray.is_initialized():
        validate_head()
        ray.shutdown()
