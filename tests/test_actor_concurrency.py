"""Actor concurrency: concurrency groups, max_pending_calls, allow_out_of_order_execution.

Concurrency is measured, not timed: the calls under test hold inside the actor (on a
gate the test opens through a call in another group) while they count how many of
their group are inside at once; the test polls those counts and reads the peaks.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest
from conftest import wait_for

import minicluster as ray
from minicluster import exceptions as rex


class _Counts:
    """Per group: how many calls are inside now, the most at once, and a gate they hold on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside: dict = {}
        self.peak: dict = {}
        self.gate = threading.Event()

    def enter(self, group: str) -> None:
        with self.lock:
            self.inside[group] = self.inside.get(group, 0) + 1
            self.peak[group] = max(self.peak.get(group, 0), self.inside[group])

    def leave(self, group: str) -> None:
        with self.lock:
            self.inside[group] -= 1


@ray.remote(concurrency_groups={"io": 2, "compute": 3, "control": 1})
class Grouped:
    def __init__(self):
        self.counts = _Counts()
        self.order = []

    def _hold(self, group, i):
        self.counts.enter(group)
        self.counts.gate.wait(30)
        self.counts.leave(group)
        return i

    @ray.method(concurrency_group="io")
    def io(self, i=None):
        return self._hold("io", i)

    @ray.method(concurrency_group="compute")
    def compute(self, i=None):
        return self._hold("compute", i)

    def hold(self, i=None):  # the default group (max_concurrency)
        return self._hold("default", i)

    @ray.method(concurrency_group="io")
    def record(self, i):
        self.order.append(i)

    def open(self):
        self.counts.gate.set()

    def inside(self):
        with self.counts.lock:
            return dict(self.counts.inside)

    def peaks(self):
        return dict(self.counts.peak)

    def recorded(self):
        return list(self.order)

    def pid(self):
        return os.getpid()


def test_a_blocked_group_does_not_hold_back_another_group(cluster):
    cluster(num_cpus=1)
    actor = Grouped.remote()
    held = actor.io.remote("io")
    wait_for(lambda: ray.get(actor.inside.remote()).get("io") == 1, what="the io call to hold")
    # The default group runs while the io call blocks, and opens its gate.
    ray.get(actor.open.remote(), timeout=30)
    assert ray.get(held, timeout=30) == "io"


def test_each_group_runs_at_most_its_limit_at_once(cluster):
    cluster(num_cpus=1)
    actor = Grouped.options(max_concurrency=2).remote()
    refs = ([actor.io.remote(i) for i in range(5)] + [actor.compute.remote(i) for i in range(6)]
            + [actor.hold.remote(i) for i in range(2)])  # the default group, full with max_concurrency=2
    # Every group fills up to its limit, all at once...
    wait_for(lambda: ray.get(actor.inside.options(concurrency_group="control").remote(), timeout=30)
             == {"io": 2, "compute": 3, "default": 2}, what="every group at its limit")
    ray.get(actor.open.options(concurrency_group="control").remote(), timeout=30)
    assert ray.get(refs, timeout=60) == [*range(5), *range(6), *range(2)]
    # ...and never beyond it.
    assert ray.get(actor.peaks.remote()) == {"io": 2, "compute": 3, "default": 2}


def test_options_puts_one_call_in_another_group(cluster):
    cluster(num_cpus=1)
    actor = Grouped.remote()
    held = actor.hold.remote("default")  # the default group (max_concurrency=1) is now full
    wait_for(lambda: ray.get(actor.inside.options(concurrency_group="io").remote()).get("default") == 1,
             what="the default group's call to hold")
    ray.get(actor.open.options(concurrency_group="compute").remote(), timeout=30)
    assert ray.get(held, timeout=30) == "default"


def test_calls_in_a_group_start_in_submission_order(cluster):
    cluster(num_cpus=1)
    actor = Grouped.remote()
    ray.get([actor.record.remote(i) for i in range(30)])
    assert ray.get(actor.recorded.remote()) == list(range(30))


def test_group_names_are_checked_where_they_are_written(cluster):
    cluster(num_cpus=1)
    actor = Grouped.remote()
    with pytest.raises(ValueError, match="concurrency group 'nope'"):
        actor.io.options(concurrency_group="nope").remote()
    with pytest.raises(ValueError, match=r"Setting 'concurrency_groups' is not supported in '\.options\(\)'"):
        Grouped.options(concurrency_groups={"io": 1})

    @ray.remote(concurrency_groups={"io": 1})
    class Undeclared:
        @ray.method(concurrency_group="elsewhere")
        def f(self):
            return 1

    with pytest.raises(ValueError, match="'elsewhere', which the actor does not define"):
        Undeclared.remote()
    with pytest.raises(ValueError, match="must be a positive integer"):
        ray.remote(concurrency_groups={"io": 0})(_Counts)
    assert ray.get(actor.open.remote(), timeout=30) is None  # the actor is unharmed


@ray.remote(concurrency_groups={"io": 2, "control": 1})
class AsyncGrouped:
    def __init__(self):
        self.counts = _Counts()
        self.blocker = threading.Event()

    async def _hold(self, group, i):
        self.counts.enter(group)
        while not self.counts.gate.is_set():
            await asyncio.sleep(0.005)
        self.counts.leave(group)
        return i

    @ray.method(concurrency_group="io")
    async def io(self, i=None):
        return await self._hold("io", i)

    async def hold(self, i=None):
        return await self._hold("default", i)

    @ray.method(concurrency_group="io")
    async def block_loop(self):
        # Blocks its event loop's thread outright: only another group's loop can release it.
        return self.blocker.wait(30)

    async def unblock(self):
        self.blocker.set()

    async def open(self):
        self.counts.gate.set()

    async def inside(self):
        with self.counts.lock:
            return dict(self.counts.inside)

    async def peaks(self):
        return dict(self.counts.peak)

    async def thread(self):
        return threading.current_thread().name

    def sync_thread(self):
        return threading.current_thread().name


def test_async_actor_groups_have_their_own_event_loops(cluster):
    cluster(num_cpus=1)
    actor = AsyncGrouped.remote()
    blocked = actor.block_loop.remote()
    assert ray.get(actor.unblock.remote(), timeout=30) is None  # the default group's loop runs
    assert ray.get(blocked, timeout=30) is True
    assert ray.get([actor.thread.remote(), actor.thread.options(concurrency_group="io").remote(),
                    actor.sync_thread.options(concurrency_group="io").remote()], timeout=30) == [
        "AsyncIO Thread: default", "AsyncIO Thread: io", "AsyncIO Thread: io"]


def test_async_actor_groups_run_at_most_their_limit_at_once(cluster):
    cluster(num_cpus=1)
    actor = AsyncGrouped.options(max_concurrency=3).remote()
    refs = [actor.io.remote(i) for i in range(6)] + [actor.hold.remote(i) for i in range(5)]
    wait_for(lambda: ray.get(actor.inside.options(concurrency_group="control").remote(), timeout=30)
             == {"io": 2, "default": 3}, what="both groups at their limits")
    ray.get(actor.open.options(concurrency_group="control").remote(), timeout=30)
    assert ray.get(refs, timeout=60) == [*range(6), *range(5)]
    assert ray.get(actor.peaks.remote()) == {"io": 2, "default": 3}


def test_a_restarted_actor_keeps_its_groups_and_retries_the_call_that_was_running(cluster):
    cluster(num_cpus=1)
    actor = Grouped.options(max_restarts=1, max_task_retries=1).remote()
    pid = ray.get(actor.pid.remote())
    held = actor.io.remote("held")
    wait_for(lambda: ray.get(actor.inside.remote()).get("io") == 1, what="the io call to hold")
    os.kill(pid, signal.SIGKILL)
    # The io call was running: it runs again on the fresh instance, whose groups work as before.
    wait_for(lambda: ray.get(actor.pid.remote(), timeout=30) != pid, what="the restart")
    wait_for(lambda: ray.get(actor.inside.remote(), timeout=30).get("io") == 1, what="the retried io call")
    ray.get(actor.open.remote(), timeout=30)
    assert ray.get(held, timeout=30) == "held"


# ---- max_pending_calls ------------------------------------------------------------------------


@ray.remote(max_concurrency=100)
class Signal:
    def __init__(self):
        self.event = threading.Event()

    def wait(self):
        return self.event.wait(30)

    def send(self):
        self.event.set()


@ray.remote(max_pending_calls=2)
class Limited:
    def wait(self, signal, i=None):
        ray.get(signal.wait.remote())
        return i


def test_max_pending_calls_refuses_a_call_beyond_the_limit_until_calls_finish(cluster):
    cluster(num_cpus=2)
    signal = Signal.remote()
    actor = Limited.options(name="limited").remote()
    first = [actor.wait.remote(signal, i) for i in range(2)]
    with pytest.raises(rex.PendingCallsLimitExceeded) as info:
        actor.wait.remote(signal, 2)
    assert isinstance(info.value, rex.RayError)
    assert str(info.value) == (
        f"The task wait could not be submitted to {actor!r} because more than 2 tasks are queued on the actor. "
        "This limit can be adjusted with the `max_pending_calls` actor option.")
    with pytest.raises(rex.PendingCallsLimitExceeded):
        ray.get_actor("limited").wait.remote(signal, 2)  # another handle in this process: the same count
    ray.get(signal.send.remote())
    assert ray.get(first, timeout=30) == [0, 1]
    # The finished calls no longer count.
    assert ray.get([actor.wait.remote(signal, i) for i in (3, 4)], timeout=30) == [3, 4]


def test_max_pending_calls_is_counted_per_calling_process(cluster):
    cluster(num_cpus=2)
    signal = Signal.remote()
    actor = Limited.remote()
    first = [actor.wait.remote(signal, i) for i in range(2)]

    @ray.remote
    def caller(handle, signal):
        # This process has its own count: two calls go, the third is refused.
        refs = [handle.wait.remote(signal, i) for i in (10, 11)]
        with pytest.raises(rex.PendingCallsLimitExceeded):
            handle.wait.remote(signal, 12)
        return refs

    theirs = ray.get(caller.remote(actor, signal), timeout=30)
    ray.get(signal.send.remote())
    assert ray.get(first + theirs, timeout=30) == [0, 1, 10, 11]


def test_max_pending_calls_minus_one_is_unlimited(cluster):
    cluster(num_cpus=2)
    signal = Signal.remote()
    actor = Limited.options(max_pending_calls=-1).remote()
    refs = [actor.wait.remote(signal, i) for i in range(50)]
    ray.get(signal.send.remote())
    assert ray.get(refs, timeout=60) == list(range(50))


# ---- allow_out_of_order_execution -------------------------------------------------------------


@ray.remote
class Recorder:
    def __init__(self):
        self.order = []

    def record(self, i, _arg=None):
        self.order.append(i)
        return i

    def recorded(self):
        return list(self.order)


def test_out_of_order_execution_lets_a_ready_call_overtake_one_waiting_for_its_argument(cluster):
    cluster(num_cpus=2)
    signal = Signal.remote()
    actor = Recorder.options(allow_out_of_order_execution=True).remote()
    waiting = actor.record.remote(1, signal.wait.remote())  # its argument is not ready
    assert ray.get(actor.record.remote(2), timeout=30) == 2  # goes first
    ray.get(signal.send.remote())
    assert ray.get(waiting, timeout=30) == 1
    assert ray.get(actor.recorded.remote()) == [2, 1]


def test_in_order_by_default_for_a_plain_actor(cluster):
    cluster(num_cpus=2)
    signal = Signal.remote()
    actor = Recorder.remote()
    refs = [actor.record.remote(1, signal.wait.remote()), actor.record.remote(2)]
    ray.get(signal.send.remote())
    assert ray.get(refs, timeout=30) == [1, 2]
    assert ray.get(actor.recorded.remote()) == [1, 2]


def test_async_and_threaded_actors_refuse_in_order_execution(cluster):
    cluster(num_cpus=1)
    with pytest.raises(ValueError, match="multi-threaded actors, Ray can't execute actor tasks in order"):
        Recorder.options(max_concurrency=2, allow_out_of_order_execution=False).remote()
    with pytest.raises(ValueError, match="async actors, Ray can't execute actor tasks in order"):
        AsyncGrouped.options(allow_out_of_order_execution=False).remote()


# ---- ending an actor with groups --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["threaded", "async"])
def test_exit_actor_from_a_group_ends_the_actor_while_another_group_holds_a_call(cluster, tmp_path, kind):
    cluster(num_cpus=1)
    marker = tmp_path / "atexit"

    class Base:
        def __init__(self, marker):
            import atexit

            atexit.register(lambda: marker.write_text("ran"))
            self.gate = threading.Event()

        def pid(self):
            return os.getpid()

    @ray.remote(concurrency_groups={"io": 1})
    class Threaded(Base):
        @ray.method(concurrency_group="io")
        def hold(self):
            self.gate.wait(30)

        def exit(self):
            self.gate.set()  # (the call held in "io" ends too: the worker waits for running calls)
            ray.actor.exit_actor()

    @ray.remote(concurrency_groups={"io": 1})
    class Async(Base):
        @ray.method(concurrency_group="io")
        async def hold(self):
            while True:  # never ends: an async actor's exit does not wait for it
                await asyncio.sleep(1)

        async def exit(self):
            ray.actor.exit_actor()

    actor = (Threaded if kind == "threaded" else Async).remote(marker)
    pid = ray.get(actor.pid.remote())
    actor.hold.remote()
    with pytest.raises(rex.RayActorError):
        ray.get(actor.exit.remote(), timeout=30)
    wait_for(lambda: marker.exists(), what="the actor's atexit handler")
    wait_for(lambda: not _alive(pid), what="the actor's process to exit")
    with pytest.raises(rex.RayActorError):
        ray.get(actor.pid.remote(), timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_exit_actor_of_many_grouped_actors_leaves_them_dead_in_the_state_api(cluster):
    from minicluster.util.state import list_actors

    cluster(num_cpus=1)

    @ray.remote(concurrency_groups={"io": 1})
    class Quitter:
        def exit(self):
            ray.actor.exit_actor()

    name = Quitter.__ray_metadata__.class_name  # Ray's spelling of the class's name
    actors = [Quitter.remote() for _ in range(5)]
    ray.get([actor.__ray_ready__.remote() for actor in actors], timeout=30)
    ray.wait([actor.exit.remote() for actor in actors], num_returns=5, timeout=30)

    def states():
        return sorted(row.state for row in list_actors(filters=[("class_name", "=", name)]))

    wait_for(lambda: states() == ["DEAD"] * 5, what="every actor dead")
