"""Actor failures: restarts (max_restarts), retried calls (max_task_retries), the reasons an
actor is dead for good, ray.kill, node death, owner death, and rebuilding actor results.

Every test kills something real: the actor's process (os._exit in a method, or SIGKILL of the
pid a method returns), its node (testing.kill_node), or its owner's process. The constructor
appends its pid to a log file in tmp_path, so a test knows how many times it ran.

Calls that must be "running when the actor dies" block on a gate file: they write `started`
and poll until the test creates `release` (or their process is killed).
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from conftest import wait_for

import minicluster as ray
from minicluster import exceptions as rex
from minicluster import testing
from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def lines(path) -> list:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def on(node: str, soft: bool = True) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node, soft=soft)


@ray.remote
class Phoenix:
    def __init__(self, log):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        self.calls = 0

    def ping(self, value=None):
        self.calls += 1
        return value

    def calls_(self):
        return self.calls

    def pid(self):
        return os.getpid()

    def node(self):
        return ray.get_runtime_context().get_node_id()

    def exit(self, code=1):
        os._exit(code)

    def crash_first(self, counter, crashes, value):
        """Crash the process on the first `crashes` calls (counted in a file), then return `value`."""
        with open(counter, "a") as f:
            f.write("x\n")
        with open(counter) as f:
            attempt = len(f.read().splitlines())
        if crashes < 0 or attempt <= crashes:
            os._exit(1)
        return value, attempt

    def block(self, started, release, value=None):
        with open(started, "a") as f:
            f.write(f"{os.getpid()}\n")
        deadline = time.monotonic() + 20
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.005)
        return value, ray.get_runtime_context().get_node_id()

    def big(self):
        return np.zeros(200_000)


def dead_error(ref, timeout=5.0) -> rex.ActorDiedError:
    with pytest.raises(rex.ActorDiedError) as info:
        ray.get(ref, timeout=timeout)
    return info.value


# ---- dead for good: the reason is in the error ----------------------------------------------


def test_exit_in_a_method_without_restarts_is_actor_died_error_with_the_exit_code(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    log = str(tmp_path / "log")
    a = Phoenix.remote(log)
    pid = ray.get(a.pid.remote())
    err = dead_error(a.exit.remote(3))
    assert isinstance(err, rex.RayActorError) and isinstance(err, rex.RayError)
    assert not err.actor_init_failed
    assert "exit code 3" in str(err)
    assert "Phoenix" in str(err) and str(pid) in str(err)
    # Every later call fails at once with the same reason.
    start = time.monotonic()
    later = dead_error(a.ping.remote(1), timeout=2)
    assert time.monotonic() - start < 1.0
    assert "exit code 3" in str(later)
    assert len(lines(log)) == 1
    wait_for(lambda: pid not in testing.worker_pids(), 3.0, "the actor's process to be gone")


def test_sigkill_of_the_actor_process_is_actor_died_error_naming_the_signal(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    a = Phoenix.remote(str(tmp_path / "log"))
    pid = ray.get(a.pid.remote())
    os.kill(pid, signal.SIGKILL)
    err = dead_error(a.ping.remote())
    assert "SIGKILL" in str(err)
    assert not err.actor_init_failed


def test_calls_running_and_queued_when_the_actor_dies_all_fail(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    a = Phoenix.remote(str(tmp_path / "log"))
    pid = ray.get(a.pid.remote())
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    running = a.block.remote(started, release)
    queued = [a.ping.remote(i) for i in range(5)]
    wait_for(lambda: lines(started), 5.0, "the blocking call to start")
    os.kill(pid, signal.SIGKILL)
    for ref in [running] + queued:
        assert "SIGKILL" in str(dead_error(ref))


def test_node_death_without_restarts_is_actor_died_error_naming_the_node(cluster, tmp_path):
    cluster(num_nodes=2, num_cpus=1)
    other = testing.live_nodes()[1]
    a = Phoenix.options(scheduling_strategy=on(other, soft=False)).remote(str(tmp_path / "log"))
    assert ray.get(a.node.remote()) == other
    testing.kill_node(other)
    err = dead_error(a.ping.remote())
    assert "node" in str(err) and "died" in str(err)
    assert not err.actor_init_failed
    # The rest of the cluster is fine.
    b = Phoenix.remote(str(tmp_path / "log2"))
    assert ray.get(b.ping.remote("alive")) == "alive"


def test_killed_actor_says_it_was_killed_and_never_restarts(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    log = str(tmp_path / "log")
    a = Phoenix.options(max_restarts=3).remote(log)
    pid = ray.get(a.pid.remote())
    ray.kill(a)
    err = dead_error(a.ping.remote())
    assert "ray.kill" in str(err)
    wait_for(lambda: pid not in testing.worker_pids(), 3.0, "the killed process to be gone")
    assert len(lines(log)) == 1


def test_kill_while_a_call_runs_fails_that_call(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    a = Phoenix.remote(str(tmp_path / "log"))
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    running = a.block.remote(started, release)
    wait_for(lambda: lines(started), 5.0, "the blocking call to start")
    ray.kill(a)
    assert "ray.kill" in str(dead_error(running))


def test_kill_before_the_constructor_finishes(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    class Slow:
        def __init__(self, started):
            open(started, "w").close()
            time.sleep(30)

        def ping(self):
            return "never"

    started = str(tmp_path / "started")
    s = Slow.remote(started)
    call = s.ping.remote()
    wait_for(lambda: os.path.exists(started), 5.0, "the constructor to start")
    ray.kill(s)
    assert "ray.kill" in str(dead_error(call))
    wait_for(lambda: ray.available_resources().get("CPU") == 1.0, 3.0, "the CPU to be free again")


def test_constructor_error_kills_the_actor_for_good_with_actor_init_failed(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    log = str(tmp_path / "log")

    @ray.remote(max_restarts=3, max_task_retries=3)
    class Broken:
        def __init__(self, log):
            with open(log, "a") as f:
                f.write("init\n")
            raise ValueError("init boom")

        def ping(self):
            return "never"

    b = Broken.remote(log)
    refs = [b.ping.remote() for _ in range(3)]
    for ref in refs:
        err = dead_error(ref)
        assert err.actor_init_failed
        assert "init boom" in str(err)
        assert "ValueError" in str(err)
    assert dead_error(b.ping.remote()).actor_init_failed
    assert lines(log) == ["init"]  # never restarted


# ---- restarts -----------------------------------------------------------------------------


def test_restart_after_exit_runs_the_constructor_again(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    log = str(tmp_path / "log")
    a = Phoenix.options(max_restarts=1).remote(log)
    first_pid = ray.get(a.pid.remote())
    ray.get(a.ping.remote())
    # The call that was running when the process died may or may not have run: not retried.
    with pytest.raises(rex.ActorUnavailableError) as info:
        ray.get(a.exit.remote(1), timeout=5)
    assert isinstance(info.value, rex.RayActorError)
    assert not isinstance(info.value, rex.ActorDiedError)
    assert ray.get(a.ping.remote("back"), timeout=5) == "back"
    assert ray.get(a.calls_.remote()) == 1  # a fresh instance
    second_pid = ray.get(a.pid.remote())
    assert second_pid != first_pid
    assert lines(log) == [str(first_pid), str(second_pid)]
    # No restart left: dead for good.
    assert "exit code 2" in str(dead_error(a.exit.remote(2)))
    assert "exit code 2" in str(dead_error(a.ping.remote()))
    assert len(lines(log)) == 2


def test_calls_made_while_the_actor_restarts_wait_for_it_and_succeed(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(max_restarts=1)
    class SlowRestart:
        """The second constructor run blocks until the test creates `release`."""

        def __init__(self, log, release):
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
            with open(log) as f:
                restarted = len(f.read().splitlines()) > 1
            while restarted and not os.path.exists(release):
                time.sleep(0.005)
            self.items = []

        def add(self, i):
            self.items.append(i)
            return i

        def items_(self):
            return list(self.items)

        def exit(self):
            os._exit(1)

    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    a = SlowRestart.remote(log, release)
    ray.get(a.add.remote(-1))
    with pytest.raises(rex.ActorUnavailableError):
        ray.get(a.exit.remote(), timeout=5)
    wait_for(lambda: len(lines(log)) == 2, 5.0, "the constructor to run again")
    calls = [a.add.remote(i) for i in range(20)]  # made while the actor restarts
    ready, _ = ray.wait(calls, timeout=0.2)
    assert ready == []
    open(release, "w").close()
    assert ray.get(calls, timeout=5) == list(range(20))
    assert ray.get(a.items_.remote()) == list(range(20))  # a fresh instance got them all, in order


def test_restart_after_sigkill_from_outside(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    log = str(tmp_path / "log")
    a = Phoenix.options(max_restarts=1).remote(log)
    pid = ray.get(a.pid.remote())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pid not in testing.worker_pids(), 3.0, "the head to see the actor's process die")
    assert ray.get(a.ping.remote("ok"), timeout=5) == "ok"
    assert ray.get(a.pid.remote()) != pid
    assert len(lines(log)) == 2


def test_max_restarts_minus_one_restarts_forever(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    log = str(tmp_path / "log")
    a = Phoenix.options(max_restarts=-1).remote(log)
    ray.get(a.ping.remote())
    for i in range(5):
        with pytest.raises(rex.ActorUnavailableError):
            ray.get(a.exit.remote(1), timeout=5)
        assert ray.get(a.ping.remote(i), timeout=5) == i
    assert len(lines(log)) == 6


def test_a_large_constructor_error_is_still_the_reason_given(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    class Broken:
        def __init__(self):
            raise ValueError("init boom " + "y" * 200_000)  # too large to travel inline: stored

        def ping(self):
            return "never"

    err = dead_error(Broken.remote().ping.remote())
    assert err.actor_init_failed
    assert "init boom yyy" in str(err)


def test_constructor_crash_is_restarted_when_restarts_remain(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    log = str(tmp_path / "log")

    @ray.remote
    class CrashesOnce:
        def __init__(self, log):
            with open(log, "a") as f:
                f.write("init\n")
            with open(log) as f:
                if len(f.read().splitlines()) == 1:
                    os._exit(1)

        def ping(self):
            return "up"

    c = CrashesOnce.options(max_restarts=1).remote(log)
    assert ray.get(c.ping.remote(), timeout=5) == "up"
    assert len(lines(log)) == 2

    log2 = str(tmp_path / "log2")
    d = CrashesOnce.remote(log2)  # no restarts
    err = dead_error(d.ping.remote())
    assert not err.actor_init_failed
    assert "exit code 1" in str(err)


def test_restarted_actor_moves_to_a_live_node_when_its_node_dies(cluster, tmp_path):
    cluster(num_nodes=2, num_cpus=1)
    first, second = testing.live_nodes()
    log = str(tmp_path / "log")
    a = Phoenix.options(max_restarts=1, scheduling_strategy=on(second)).remote(log)
    assert ray.get(a.node.remote()) == second
    testing.kill_node(second)
    assert ray.get(a.node.remote(), timeout=5) == first
    assert len(lines(log)) == 2
    # Its node's death used the only restart.
    assert "exit code 1" in str(dead_error(a.exit.remote(1)))


def test_restart_with_hard_affinity_to_the_dead_node_fails_the_calls(cluster, tmp_path):
    cluster(num_nodes=2, num_cpus=1)
    second = testing.live_nodes()[1]
    a = Phoenix.options(max_restarts=1, scheduling_strategy=on(second, soft=False)).remote(str(tmp_path / "log"))
    assert ray.get(a.node.remote()) == second
    testing.kill_node(second)
    with pytest.raises(rex.RayActorError):
        ray.get(a.ping.remote(), timeout=1.0)


def test_threaded_and_async_actors_restart_with_their_concurrency(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(max_restarts=1, max_concurrency=3)
    class Threaded:
        def __init__(self):
            import threading

            self.barrier = threading.Barrier(3, timeout=5)

        def meet(self, i):
            self.barrier.wait()
            return i

        def exit(self):
            os._exit(1)

    @ray.remote(max_restarts=1)
    class Async:
        def __init__(self):
            self.waiting = 0
            self.event = None

        async def meet(self, i):
            import asyncio

            if self.event is None:
                self.event = asyncio.Event()
            self.waiting += 1
            if self.waiting == 3:
                self.event.set()
            await asyncio.wait_for(self.event.wait(), 5)
            return i

        async def exit(self):
            os._exit(1)

    for cls in (Threaded, Async):
        actor = cls.remote()
        assert ray.get([actor.meet.remote(i) for i in range(3)], timeout=10) == [0, 1, 2]
        with pytest.raises(rex.ActorUnavailableError):
            ray.get(actor.exit.remote(), timeout=5)
        # The fresh instance runs calls concurrently again.
        assert ray.get([actor.meet.remote(i) for i in range(3)], timeout=10) == [0, 1, 2]


# ---- retried calls (max_task_retries) -------------------------------------------------------


def test_call_in_flight_is_retried_on_the_restarted_actor(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    log, counter = str(tmp_path / "log"), str(tmp_path / "counter")
    a = Phoenix.options(max_restarts=1, max_task_retries=1).remote(log)
    assert ray.get(a.crash_first.remote(counter, 1, "v"), timeout=5) == ("v", 2)
    assert len(lines(log)) == 2


def test_max_task_retries_set_per_method_call(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    log = str(tmp_path / "log")
    a = Phoenix.options(max_restarts=2).remote(log)
    retried = a.crash_first.options(max_task_retries=1).remote(str(tmp_path / "c1"), 1, "v")
    assert ray.get(retried, timeout=5) == ("v", 2)
    with pytest.raises(rex.ActorUnavailableError):
        ray.get(a.crash_first.remote(str(tmp_path / "c2"), 1, "w"), timeout=5)
    assert ray.get(a.ping.remote("up"), timeout=5) == "up"
    assert len(lines(log)) == 3


def test_max_task_retries_minus_one_retries_until_it_works(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    log, counter = str(tmp_path / "log"), str(tmp_path / "counter")
    a = Phoenix.options(max_restarts=-1, max_task_retries=-1).remote(log)
    assert ray.get(a.crash_first.remote(counter, 4, "v"), timeout=10) == ("v", 5)
    assert len(lines(log)) == 5


def test_retried_call_fails_with_actor_died_error_once_restarts_run_out(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    log, counter = str(tmp_path / "log"), str(tmp_path / "counter")
    a = Phoenix.options(max_restarts=2, max_task_retries=-1).remote(log)
    err = dead_error(a.crash_first.remote(counter, -1, "never"), timeout=10)
    assert "exit code 1" in str(err)
    assert len(lines(counter)) == 3  # the first run and one per restart
    assert len(lines(log)) == 3
    start = time.monotonic()
    dead_error(a.ping.remote(), timeout=2)
    assert time.monotonic() - start < 1.0


def test_calls_retried_after_a_restart_keep_their_order(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(max_restarts=1, max_task_retries=1, max_concurrency=1)
    class Log:
        def __init__(self, out):
            self.out = out

        def write(self, item, started=None, release=None):
            if started is not None and not os.path.exists(started):
                open(started, "w").close()
                while not os.path.exists(release):
                    time.sleep(0.005)
            with open(self.out, "a") as f:
                f.write(f"{item}\n")
            return item

        def pid(self):
            return os.getpid()

    out = str(tmp_path / "out")
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    w = Log.remote(out)
    pid = ray.get(w.pid.remote())
    refs = [w.write.remote(0), w.write.remote(1, started, release)] + [w.write.remote(i) for i in range(2, 10)]
    wait_for(lambda: os.path.exists(started), 5.0, "call 1 to block")
    os.kill(pid, signal.SIGKILL)
    open(release, "w").close()
    assert ray.get(refs, timeout=10) == list(range(10))
    assert lines(out) == [str(i) for i in range(10)]


def test_call_in_flight_when_the_node_dies_is_retried_on_another_node(cluster, tmp_path):
    cluster(num_nodes=2, num_cpus=1)
    first, second = testing.live_nodes()
    log = str(tmp_path / "log")
    a = Phoenix.options(max_restarts=1, max_task_retries=1, scheduling_strategy=on(second)).remote(log)
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    ref = a.block.remote(started, release, "done")
    wait_for(lambda: lines(started), 5.0, "the call to start")
    testing.kill_node(second)
    open(release, "w").close()
    assert ray.get(ref, timeout=5) == ("done", first)
    assert len(lines(started)) == 2
    assert len(lines(log)) == 2


def test_call_in_flight_when_the_node_dies_without_retries_is_unavailable(cluster, tmp_path):
    cluster(num_nodes=2, num_cpus=1)
    first, second = testing.live_nodes()
    a = Phoenix.options(max_restarts=1, scheduling_strategy=on(second)).remote(str(tmp_path / "log"))
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    ref = a.block.remote(started, release)
    wait_for(lambda: lines(started), 5.0, "the call to start")
    testing.kill_node(second)
    with pytest.raises(rex.ActorUnavailableError):
        ray.get(ref, timeout=5)
    assert ray.get(a.node.remote(), timeout=5) == first


# ---- ray.kill(no_restart=False) ---------------------------------------------------------------


def test_kill_with_no_restart_false_restarts_the_actor(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    log = str(tmp_path / "log")
    a = Phoenix.options(max_restarts=1).remote(log)
    pid = ray.get(a.pid.remote())
    ray.kill(a, no_restart=False)
    wait_for(lambda: pid not in testing.worker_pids(), 3.0, "the killed process to be gone")
    assert ray.get(a.ping.remote("again"), timeout=5) == "again"
    assert ray.get(a.pid.remote()) != pid
    assert len(lines(log)) == 2


def test_kill_with_no_restart_false_and_no_restarts_left_is_final(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    log = str(tmp_path / "log")
    a = Phoenix.remote(log)
    ray.get(a.ping.remote())
    ray.kill(a, no_restart=False)
    assert "ray.kill" in str(dead_error(a.ping.remote()))
    assert len(lines(log)) == 1


def test_crash_after_a_kill_restart_reports_the_crash(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    a = Phoenix.options(max_restarts=2).remote(str(tmp_path / "log"))
    pid = ray.get(a.pid.remote())
    ray.kill(a, no_restart=False)
    wait_for(lambda: pid not in testing.worker_pids(), 3.0, "the killed process to be gone")
    ray.get(a.ping.remote(), timeout=5)
    with pytest.raises(rex.ActorUnavailableError) as info:
        ray.get(a.exit.remote(7), timeout=5)
    assert "exit code 7" in str(info.value)
    assert "ray.kill" not in str(info.value)


# ---- actor results after their node dies ------------------------------------------------------


def test_actor_result_is_rebuilt_after_its_node_dies_with_max_task_retries(cluster, tmp_path):
    cluster(num_nodes=2, num_cpus=1)
    first, second = testing.live_nodes()
    log = str(tmp_path / "log")
    a = Phoenix.options(max_restarts=1, max_task_retries=1, scheduling_strategy=on(second)).remote(log)
    ref = a.big.remote()
    assert ray.wait([ref], timeout=5)[0] == [ref]  # ready, without fetching it to the driver's node
    assert testing.object_locations(ref) == [second]
    testing.kill_node(second)
    value = ray.get(ref, timeout=10)
    assert value.shape == (200_000,) and not value.any()
    assert testing.object_locations(ref) == [first]
    assert len(lines(log)) == 2


def test_actor_result_is_lost_after_its_node_dies_without_max_task_retries(cluster, tmp_path):
    cluster(num_nodes=2, num_cpus=1)
    second = testing.live_nodes()[1]
    a = Phoenix.options(max_restarts=1, scheduling_strategy=on(second)).remote(str(tmp_path / "log"))
    ref = a.big.remote()
    assert ray.wait([ref], timeout=5)[0] == [ref]
    assert testing.object_locations(ref) == [second]
    testing.kill_node(second)
    # As in Ray: a reconstruction failure that says why (the call had no max_task_retries)
    with pytest.raises(rex.ObjectReconstructionFailedError, match="OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED"):
        ray.get(ref, timeout=10)
    assert ray.get(a.ping.remote("restarted"), timeout=5) == "restarted"


# ---- owner death ------------------------------------------------------------------------------


@ray.remote
def make_actor(log, detached):
    """Create an actor owned by this task's worker; return its handle and this worker's pid."""
    options = {"lifetime": "detached", "name": "orphan"} if detached else {}
    inner = Phoenix.options(**options).remote(log)
    ray.get(inner.ping.remote())
    return inner, os.getpid()


def test_actor_dies_when_its_owner_process_dies(cluster, tmp_path):
    cluster(num_nodes=2, num_cpus=1)
    handle, owner_pid = ray.get(make_actor.remote(str(tmp_path / "log"), False))
    actor_pid = ray.get(handle.pid.remote())
    assert actor_pid != owner_pid
    os.kill(owner_pid, signal.SIGKILL)
    wait_for(lambda: actor_pid not in testing.worker_pids(), 3.0, "the owned actor's process to go")
    dead_error(handle.ping.remote())


def test_owner_death_is_the_reason_given(cluster, tmp_path):
    cluster(num_nodes=2, num_cpus=1)
    handle, owner_pid = ray.get(make_actor.remote(str(tmp_path / "log"), False))
    actor_pid = ray.get(handle.pid.remote())
    os.kill(owner_pid, signal.SIGKILL)
    wait_for(lambda: actor_pid not in testing.worker_pids(), 3.0, "the owned actor's process to go")
    err = dead_error(handle.ping.remote())
    assert "owner" in str(err)
    assert "ray.kill" not in str(err)


@ray.remote
class Maker:
    def make(self, log):
        self.made = Phoenix.remote(log)  # owned by this actor's worker
        return self.made


def test_call_made_after_kill_of_the_owner_returns_fails_with_the_owner_death(cluster, tmp_path):
    """Ray: once `kill(owner)` returned, the actors it owns are dead: no call reaches them."""
    cluster(num_nodes=1, num_cpus=2)
    for _ in range(3):  # (a race before: a call could still reach the owned actor)
        owner = Maker.remote()
        made = ray.get(owner.make.remote(str(tmp_path / "log")), timeout=10)
        assert ray.get(made.ping.remote(1), timeout=10) == 1
        ray.kill(owner)
        err = dead_error(made.ping.remote(2))
        assert "The actor is dead because its owner has died" in str(err)


def test_detached_actor_survives_its_owner(cluster, tmp_path):
    cluster(num_nodes=2, num_cpus=1)
    handle, owner_pid = ray.get(make_actor.remote(str(tmp_path / "log"), True))
    os.kill(owner_pid, signal.SIGKILL)
    wait_for(lambda: owner_pid not in testing.worker_pids(), 3.0, "the owner to be gone")
    assert ray.get(handle.ping.remote("still here"), timeout=5) == "still here"
    assert ray.get(ray.get_actor("orphan").ping.remote(1)) == 1
    ray.kill(handle)


def test_actor_owned_by_the_driver_survives_the_death_of_a_task_that_used_it(cluster, tmp_path):
    cluster(num_nodes=2, num_cpus=1)
    a = Phoenix.remote(str(tmp_path / "log"))
    ray.get(a.ping.remote())

    @ray.remote(max_retries=0)
    def use_then_die(handle):
        ray.get(handle.ping.remote())
        os._exit(1)

    with pytest.raises(rex.WorkerCrashedError):
        ray.get(use_then_die.remote(a), timeout=5)
    assert ray.get(a.ping.remote("fine"), timeout=5) == "fine"


# ---- timing sanity --------------------------------------------------------------------------


def test_actor_restart_answers_again_within_two_seconds(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    a = Phoenix.options(max_restarts=1).remote(str(tmp_path / "log"))
    ray.get(a.ping.remote())
    start = time.monotonic()
    with pytest.raises(rex.ActorUnavailableError):
        ray.get(a.exit.remote(1), timeout=5)
    assert ray.get(a.ping.remote("back"), timeout=5) == "back"
    took = time.monotonic() - start
    assert took < 2.0, f"the restarted actor answered after {took:.3f} s"
