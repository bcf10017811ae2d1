"""cancel(): pending tasks are dropped, running ones interrupted, force=True kills the worker (SPEC 3).

Every case goes through the public API; what happened is checked in the state
API's records too (one attempt, FAILED with TASK_CANCELLED, never retried).
"""

from __future__ import annotations

import os
import random
import time

import pytest
from conftest import wait_for

import minicluster as ray
from minicluster import testing
from minicluster.exceptions import GetTimeoutError, RayTaskError, TaskCancelledError
from minicluster.util.state import get_task, list_tasks, list_workers


@ray.remote
def sleeper(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@ray.remote
def looper(seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "done"


def _state(ref: ray.ObjectRef) -> str:
    attempts = get_task(ref) or []
    return attempts[-1].state if attempts else ""


def _running(ref: ray.ObjectRef, timeout: float = 10.0) -> None:
    wait_for(lambda: _state(ref) == "RUNNING", timeout, "the task to be RUNNING")


def _only_attempt_cancelled(ref: ray.ObjectRef) -> None:
    attempts = get_task(ref)
    assert attempts is not None
    assert [(a.attempt_number, a.state, a.error_type) for a in attempts] == [(0, "FAILED", "TASK_CANCELLED")]


def test_pending_task_is_dropped_and_get_raises_plain_cancelled_error_at_once(cluster):
    cluster(num_cpus=1)
    busy = sleeper.remote(3)
    _running(busy)
    pending = sleeper.remote(0)
    assert _state(pending) == "PENDING_NODE_ASSIGNMENT"
    ray.cancel(pending)
    start = time.monotonic()
    with pytest.raises(TaskCancelledError) as info:
        ray.get(pending, timeout=2)
    assert time.monotonic() - start < 1.0
    assert not isinstance(info.value, RayTaskError)
    _only_attempt_cancelled(pending)
    ray.cancel(busy, force=True)


def test_task_waiting_for_its_arguments_is_dropped(cluster):
    cluster(num_cpus=2)
    upstream = sleeper.remote(3)
    downstream = sleeper.options(name="downstream").remote(upstream)
    wait_for(lambda: _state(downstream) == "PENDING_ARGS_AVAIL", 5, "downstream to wait for its argument")
    ray.cancel(downstream)
    with pytest.raises(TaskCancelledError):
        ray.get(downstream, timeout=2)
    ray.cancel(upstream, force=True)


def test_running_task_in_a_long_sleep_is_interrupted(cluster):
    cluster(num_cpus=1)
    ref = sleeper.remote(100)
    _running(ref)
    start = time.monotonic()
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError) as info:
        ray.get(ref, timeout=10)
    assert time.monotonic() - start < 5.0, "the interrupt must reach a task blocked in time.sleep"
    assert isinstance(info.value, RayTaskError)
    assert "TaskCancelledError" in str(info.value)  # as Ray words it, not the KeyboardInterrupt behind it
    _only_attempt_cancelled(ref)
    # The worker survived the interrupt and runs the next task.
    assert ray.get(sleeper.remote(0), timeout=10) == "done"


def test_running_task_blocked_in_get_is_interrupted(cluster):
    cluster(num_cpus=2)

    @ray.remote
    def waits_for(refs: list) -> str:
        return ray.get(refs[0])

    inner = sleeper.remote(100)
    outer = waits_for.remote([inner])
    _running(outer)
    wait_for(lambda: _state(inner) == "RUNNING", 10, "the inner task to run")
    # A task blocked in get lends its CPU out: then it is really waiting inside get.
    wait_for(lambda: ray.available_resources().get("CPU") == 1.0, 10, "the outer task to block in get")
    ray.cancel(outer, recursive=False)
    with pytest.raises(TaskCancelledError) as info:
        ray.get(outer, timeout=10)
    assert isinstance(info.value, RayTaskError)
    assert _state(inner) == "RUNNING", "recursive=False leaves what the task did not submit alone"
    ray.cancel(inner, force=True)
    with pytest.raises(TaskCancelledError):
        ray.get(inner, timeout=10)


def test_force_kills_the_worker_which_is_replaced(cluster):
    cluster(num_cpus=1)
    ref = sleeper.remote(100)
    _running(ref)
    pid = get_task(ref)[-1].worker_pid
    assert pid in testing.worker_pids()
    ray.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError) as info:
        ray.get(ref, timeout=10)
    assert not isinstance(info.value, RayTaskError)
    wait_for(lambda: testing.worker_pids() and pid not in testing.worker_pids(), 10, "a replacement worker")
    assert ray.get(sleeper.remote(0), timeout=10) == "done"
    killed = [w for w in list_workers() if w.pid == pid]
    assert len(killed) == 1 and not killed[0].is_alive
    assert killed[0].exit_type == "INTENDED_USER_EXIT"
    assert "cancel(force=True)" in killed[0].exit_detail
    _only_attempt_cancelled(ref)


def _started(path: str) -> None:
    # The head says RUNNING once it sent the task; the task itself says when it is inside its try.
    wait_for(lambda: os.path.exists(path), 10, "the task to reach its try block")


def test_task_that_catches_the_interrupt_keeps_going_until_forced(cluster, tmp_path):
    cluster(num_cpus=1)

    @ray.remote
    def stubborn(started: str, caught: str) -> int:
        interrupts = 0
        while True:
            try:
                if not os.path.exists(started):
                    open(started, "w").close()
                time.sleep(0.05)
            except KeyboardInterrupt:
                interrupts += 1
                with open(caught, "w") as f:  # last in the handler: the test waits for it
                    f.write(str(interrupts))

    started, caught = str(tmp_path / "started"), str(tmp_path / "caught")

    def interrupts() -> int:
        try:
            with open(caught) as f:
                return int(f.read() or 0)
        except (OSError, ValueError):
            return 0

    ref = stubborn.remote(started, caught)
    _started(started)
    ray.cancel(ref)
    wait_for(lambda: interrupts() == 1, 10, "the task to catch the first interrupt")
    ray.cancel(ref)  # a second plain cancel is just another interrupt
    wait_for(lambda: interrupts() == 2, 10, "the task to catch the second interrupt")
    with pytest.raises(GetTimeoutError):
        ray.get(ref, timeout=0.5)
    assert _state(ref) == "RUNNING"
    ray.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError) as info:
        ray.get(ref, timeout=10)
    assert not isinstance(info.value, RayTaskError)
    _only_attempt_cancelled(ref)


def test_task_that_catches_the_interrupt_and_returns_keeps_its_value(cluster, tmp_path):
    cluster(num_cpus=1)

    @ray.remote
    def catcher(started: str) -> int:
        try:
            open(started, "w").close()
            time.sleep(100)
        except KeyboardInterrupt:
            return 42
        return 0

    started = str(tmp_path / "started")
    ref = catcher.remote(started)
    _started(started)
    ray.cancel(ref)
    assert ray.get(ref, timeout=10) == 42
    assert [a.state for a in get_task(ref)] == ["FINISHED"]


@pytest.mark.parametrize("force", [False, True])
def test_cancelled_task_is_never_retried(cluster, force):
    cluster(num_cpus=1)

    @ray.remote(max_retries=5, retry_exceptions=True)
    def retried_if_it_could_be(seconds: float) -> str:
        time.sleep(seconds)
        return "done"

    ref = retried_if_it_could_be.remote(100)
    _running(ref)
    ray.cancel(ref, force=force)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=10)
    # Give a wrongful retry the time to show up; then there must still be one attempt.
    assert ray.get(sleeper.remote(0), timeout=10) == "done"
    _only_attempt_cancelled(ref)


def test_recursive_cancel_reaches_the_tasks_it_submitted(cluster):
    cluster(num_cpus=3)

    @ray.remote
    def parent(child_seconds: float) -> str:
        child = sleeper.options(name="child").remote(child_seconds)
        return ray.get(child)

    ref = parent.remote(100)
    child_running = lambda: [t for t in list_tasks(filters=[("name", "=", "child")]) if t.state == "RUNNING"]  # noqa: E731
    child = wait_for(child_running, 10, "the child task to run")[0]
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=10)
    wait_for(lambda: get_task(child.task_id)[-1].state == "FAILED", 10, "the child to be cancelled too")
    assert get_task(child.task_id)[-1].error_type == "TASK_CANCELLED"


def test_cancelling_a_finished_task_changes_nothing(cluster):
    cluster(num_cpus=1)
    ref = sleeper.remote(0)
    assert ray.get(ref, timeout=10) == "done"
    ray.cancel(ref)
    ray.cancel(ref, force=True)
    assert ray.get(ref, timeout=10) == "done"
    assert [(a.state, a.error_type) for a in get_task(ref)] == [("FINISHED", None)]
    put = ray.put(1)
    ray.cancel(put)  # a put object has no task: nothing happens
    assert ray.get(put) == 1
    with pytest.raises(TypeError):
        ray.cancel(1)  # type: ignore[arg-type]


def test_cancelling_a_task_queued_behind_another_on_a_worker_is_immediate(cluster, monkeypatch):
    """Tiny tasks are pipelined to a busy worker; cancelling one that has not started drops it at once."""
    from minicluster._private.head import task_placement

    monkeypatch.setattr(task_placement, "PIPELINE_QUICK_S", 0.1)  # "quick" even on a loaded machine
    cluster(num_cpus=1)

    @ray.remote
    def quick(seconds: float) -> float:  # known to be quick after its first call, so it gets pipelined
        time.sleep(seconds)
        return seconds

    assert ray.get(quick.remote(0), timeout=10) == 0
    blocker = sleeper.remote(0.3)
    first, second, third = (quick.remote(0.8) for _ in range(3))
    wait_for(lambda: _state(first) == "RUNNING" and _state(third) == "SUBMITTED_TO_WORKER", 10,
             "the quick tasks to be queued at the worker")
    ray.cancel(third)
    start = time.monotonic()
    with pytest.raises(TaskCancelledError) as info:
        ray.get(third, timeout=0.6)
    assert time.monotonic() - start < 0.5
    assert not isinstance(info.value, RayTaskError)
    assert ray.get([blocker, first, second], timeout=10) == ["done", 0.8, 0.8]
    assert ray.get(quick.remote(0), timeout=10) == 0  # the worker's queue is still in step
    _only_attempt_cancelled(third)


def test_max_calls_recycling_is_a_clean_retirement(cluster):
    cluster(num_cpus=1)

    @ray.remote(max_calls=2)
    def pid() -> int:
        return os.getpid()

    pids = [ray.get(pid.remote(), timeout=10) for _ in range(4)]
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[0] != pids[2]
    wait_for(lambda: [w for w in list_workers() if w.pid == pids[0] and not w.is_alive], 10,
             "the first worker to be recorded as gone")
    retired = [w for w in list_workers() if w.pid == pids[0]][0]
    assert retired.exit_type == "INTENDED_SYSTEM_EXIT"
    assert "max_calls" in retired.exit_detail
    attempts = list_tasks(filters=[("name", "=", "pid")])
    assert [(a.state, a.error_type) for a in attempts] == [("FINISHED", None)] * 4
    assert not [w for w in list_workers() if w.exit_type == "SYSTEM_ERROR"]


# ---- actor calls (Ray's rules: queued calls are cancelled, a running sync call is not) ----------


@ray.remote
class Gate:
    def wait_for(self, path: str) -> str:
        open(path + ".started", "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.005)
        return "opened"

    def ping(self) -> str:
        return "pong"


def gate_with_two_calls(tmp_path) -> tuple:
    """A Gate, the path that opens it, a call waiting for that path and one queued behind it."""
    gate = Gate.remote()
    assert ray.get(gate.ping.remote()) == "pong"
    release = str(tmp_path / "release")
    return gate, release, gate.wait_for.remote(release), gate.ping.remote()


def test_cancel_of_actor_calls(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    gate, release, running, queued = gate_with_two_calls(tmp_path)
    with pytest.raises(ValueError, match="force=True is not supported for actor tasks"):
        ray.cancel(running, force=True)
    ray.cancel(queued)
    with pytest.raises(TaskCancelledError):
        ray.get(queued, timeout=10)
    wait_for(lambda: os.path.exists(release + ".started"), 10, "the first call to start")
    ray.cancel(running)  # a running call of a sync actor is not interrupted
    open(release, "w").close()
    assert ray.get(running, timeout=10) == "opened"
    assert ray.get(gate.ping.remote(), timeout=10) == "pong"  # the actor lives on


@ray.remote
class AsyncGate:
    async def wait(self, path: str) -> str:
        import asyncio

        open(path + ".started", "w").close()
        for _ in range(6000):
            await asyncio.sleep(0.005)
        return "never cancelled"

    async def ping(self) -> str:
        return "pong"


def test_cancel_of_a_running_async_actor_call_cancels_its_coroutine(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    gate = AsyncGate.remote()
    marker = str(tmp_path / "m")
    running = gate.wait.remote(marker)
    wait_for(lambda: os.path.exists(marker + ".started"), 10, "the call to start")
    ray.cancel(running)
    with pytest.raises(TaskCancelledError):
        ray.get(running, timeout=10)
    assert ray.get(gate.ping.remote(), timeout=10) == "pong"  # the actor lives on
    [row] = [r for r in list_tasks(detail=True) if r.name.endswith("wait")]
    assert (row.state, row.error_type) == ("FAILED", "TASK_CANCELLED")


@ray.remote
def cancel_from_a_task(ref_in_list: list, force: bool) -> str:
    try:
        ray.cancel(ref_in_list[0], force=force)
    except ValueError as exc:
        return f"ValueError: {exc}"
    return "cancelled"


def test_cancel_of_an_actor_call_from_a_task_follows_the_same_rules(cluster, tmp_path):
    """Inside a task, cancel(force=True) of an actor call raises there, as it does in the driver."""
    cluster(num_nodes=1, num_cpus=2)
    _, release, running, queued = gate_with_two_calls(tmp_path)
    answer = ray.get(cancel_from_a_task.remote([running], True), timeout=10)
    assert answer.startswith("ValueError: force=True is not supported for actor tasks")
    assert ray.get(cancel_from_a_task.remote([queued], False), timeout=10) == "cancelled"
    with pytest.raises(TaskCancelledError):
        ray.get(queued, timeout=10)
    open(release, "w").close()
    assert ray.get(running, timeout=10) == "opened"


def test_cancelling_a_task_placed_on_a_node_frees_its_cpu_for_the_next_one(cluster):
    # A task placed on a node but still waiting there for a worker holds the node's CPU;
    # cancelling it must hand that CPU to the next task in line, not leave it unused
    # (the line used to wait forever with a free CPU and an idle worker).
    cluster(num_cpus=1)
    first = looper.remote(60)
    _running(first)
    second = looper.remote(60)
    third = sleeper.remote(0)
    ray.cancel(first, force=True)  # its worker dies: `second` is placed and waits for a new worker
    wait_for(lambda: _state(second) in ("SUBMITTED_TO_WORKER", "RUNNING"), 10, "the second task to be placed")
    ray.cancel(second, force=True)
    assert ray.get(third, timeout=10) == "done"


def test_cancel_storm_with_force_leaves_no_task_stranded(cluster):
    # Ray's own stress pattern: many tasks on one CPU, half never ending, cancelled at
    # random while queued, placed or running; every other task must still finish.
    cluster(num_cpus=1)
    rng = random.Random(7)
    endless = [rng.random() < 0.5 for _ in range(60)]
    refs = [looper.remote(600 if forever else 0) for forever in endless]
    cancelled = {i for i in range(len(refs)) if rng.random() < 0.5}
    for i in sorted(cancelled):
        ray.cancel(refs[i], force=True)
    for i, forever in enumerate(endless):
        if forever and i not in cancelled:
            ray.cancel(refs[i], force=True)
            cancelled.add(i)
    for i, ref in enumerate(refs):
        if i in cancelled:
            with pytest.raises((TaskCancelledError, ray.exceptions.WorkerCrashedError)):
                ray.get(ref, timeout=30)
        else:
            assert ray.get(ref, timeout=30) == "done"


@ray.remote
def polls_is_canceled(marker: str) -> str:
    try:
        open(marker, "w").close()  # (inside the try: the cancel may come as soon as the marker exists)
        while True:
            time.sleep(0.01)
    except KeyboardInterrupt:
        return "saw cancel" if ray.get_runtime_context().is_canceled() else "interrupted, not cancelled"


@ray.remote
class Poller:
    def poll(self, marker: str) -> str:
        assert not ray.get_runtime_context().is_canceled()
        open(marker, "w").close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # a running sync actor call is not interrupted: it looks
            if ray.get_runtime_context().is_canceled():
                return "saw cancel"
            time.sleep(0.01)
        return "never saw cancel"

    def fresh(self) -> bool:
        return ray.get_runtime_context().is_canceled()


@ray.remote
class AsyncPoller:
    async def ask(self) -> str:
        try:
            ray.get_runtime_context().is_canceled()
        except RuntimeError as exc:
            return str(exc)
        return "no error"


def test_is_canceled_tells_a_task_and_an_actor_call_that_cancel_was_called(cluster, tmp_path):
    cluster(num_cpus=2)
    with pytest.raises(RuntimeError, match="only available in a task or actor"):
        ray.get_runtime_context().is_canceled()
    marker = str(tmp_path / "task")
    ref = polls_is_canceled.remote(marker)
    wait_for(lambda: os.path.exists(marker), 10, "the task to start")
    ray.cancel(ref)
    assert ray.get(ref, timeout=10) == "saw cancel"  # it caught the interrupt and returned

    poller = Poller.remote()
    marker = str(tmp_path / "actor")
    call = poller.poll.remote(marker)
    wait_for(lambda: os.path.exists(marker), 10, "the actor call to start")
    ray.cancel(call)
    assert ray.get(call, timeout=10) == "saw cancel"
    assert ray.get(poller.fresh.remote(), timeout=10) is False  # the next call starts uncancelled

    assert "not supported in an async actor" in ray.get(AsyncPoller.remote().ask.remote(), timeout=10)


def test_non_recursive_cancel_leaves_the_child_running_to_its_end(cluster, tmp_path):
    cluster(num_cpus=3)
    marker = str(tmp_path / "child")

    @ray.remote
    def child(path: str) -> str:
        open(path + ".started", "w").close()
        wait_for(lambda: os.path.exists(path + ".go"), 30, "the test's go-ahead")
        open(path + ".finished", "w").close()
        return "child done"

    @ray.remote
    def parent(path: str) -> list:
        ref = child.options(name="child").remote(path)
        return [ray.get(ref)]

    ref = parent.remote(marker)
    wait_for(lambda: os.path.exists(marker + ".started"), 10, "the child to start")
    ray.cancel(ref, recursive=False)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=10)
    open(marker + ".go", "w").close()
    wait_for(lambda: os.path.exists(marker + ".finished"), 10, "the child to finish")
    [row] = list_tasks(filters=[("name", "=", "child")])
    wait_for(lambda: get_task(row.task_id)[-1].state == "FINISHED", 10, "the child's record to say FINISHED")


def test_a_task_interrupted_by_cancel_fails_with_its_frames_and_task_cancelled_error(cluster, tmp_path):
    # Ray: the error of a running task that cancel() interrupted is a RayTaskError that is also
    # TaskCancelledError; its text shows where the task was and ends with TaskCancelledError
    # (not the KeyboardInterrupt that carried the cancel).
    cluster(num_cpus=1)
    marker = str(tmp_path / "started")

    @ray.remote
    def stuck_in_user_code(path: str) -> None:
        open(path, "w").close()
        while True:
            time.sleep(0.01)

    ref = stuck_in_user_code.remote(marker)
    wait_for(lambda: os.path.exists(marker), 10, "the task to start")
    ray.cancel(ref)
    with pytest.raises(RayTaskError) as info:
        ray.get(ref, timeout=10)
    assert isinstance(info.value, TaskCancelledError)
    text = str(info.value)
    assert "in stuck_in_user_code" in text
    assert text.rstrip().splitlines()[-1].endswith(f"TaskCancelledError: Task {ref.task_id().hex()} was cancelled.")
    assert "KeyboardInterrupt" not in text
