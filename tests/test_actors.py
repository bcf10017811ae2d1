"""Actors through the public API: creation and options, ordered calls, handles, names, kill,
threaded and async actors, method errors, and what an actor holds of its node's resources.

Failures of actors (restarts, deaths and their reasons, owner death, node death) are in
test_actor_faults.py.

Actor and task bodies are written inline (no helpers from this module), so workers get
them by value. Tests that must keep a call running until the test lets it go use a gate
file in tmp_path: the call writes `started` and polls until the test creates `release`.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
from conftest import wait_for

import minicluster as ray
from minicluster import exceptions as rex
from minicluster import testing
from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy


class MethodError(Exception):
    pass


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, by=1):
        self.n += by
        return self.n

    def value(self):
        return self.n

    def pid(self):
        return os.getpid()

    def node(self):
        return ray.get_runtime_context().get_node_id()


@ray.remote
class Recorder:
    """Appends what it is given, in the order the calls run."""

    def __init__(self):
        self.items = []

    def append(self, item):
        self.items.append(item)
        return len(self.items)

    def items_(self):
        return list(self.items)


@ray.remote
def wait_for_file(path, value=None):
    """Keep the task busy until the test creates `path` (deadline 10 s)."""
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return value


def not_ready_within(ref, seconds: float = 0.3) -> bool:
    """True if `ref` is still not ready after `seconds` (for checking that something waits)."""
    ready, _ = ray.wait([ref], timeout=seconds)
    return not ready


# ---- creation, calls, options -------------------------------------------------------------


def test_create_and_call_returns_refs_and_keeps_state(cluster):
    cluster(num_nodes=1, num_cpus=1)
    counter = Counter.remote(10)
    ref = counter.incr.remote()
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref) == 11
    assert ray.get([counter.incr.remote(5), counter.value.remote()]) == [16, 16]
    assert "Counter" in repr(counter)


def test_constructor_takes_args_kwargs_and_object_refs(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    class Holder:
        def __init__(self, a, b=0, *, c):
            self.value = (a, b, c)

        def get(self):
            return self.value

    holder = Holder.remote(ray.put([1, 2]), c="x")
    assert ray.get(holder.get.remote()) == ([1, 2], 0, "x")
    # A ref given to a method is resolved to its value, as for tasks.
    r = Recorder.remote()
    ray.get(r.append.remote(ray.put("from-put")))
    assert ray.get(r.items_.remote()) == ["from-put"]


def test_node_affinity_places_the_actor_on_that_node(cluster):
    cluster(num_nodes=3, num_cpus=1)
    nodes = testing.live_nodes()
    assert len(nodes) == 3
    actors = [Counter.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
              for n in reversed(nodes)]
    assert ray.get([a.node.remote() for a in actors]) == list(reversed(nodes))


def test_spread_places_actors_on_different_nodes(cluster):
    cluster(num_nodes=3, num_cpus=1)
    actors = [Counter.options(scheduling_strategy="SPREAD").remote() for _ in range(3)]
    assert sorted(ray.get([a.node.remote() for a in actors])) == sorted(testing.live_nodes())


def test_custom_resources_choose_the_node(cluster):
    cluster(num_nodes=1, num_cpus=1)
    special = testing.add_node(num_cpus=1, resources={"special": 1.5})
    actor = Counter.options(resources={"special": 1}).remote()
    assert ray.get(actor.node.remote()) == special
    actor2 = Counter.options(num_cpus=0, resources={"special": 0.5}).remote()
    assert ray.get(actor2.node.remote()) == special


def test_options_are_validated(cluster):
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(ValueError):
        Counter.options(max_concurrency=0)
    with pytest.raises(ValueError):
        Counter.options(lifetime="forever")
    with pytest.raises(ValueError):
        Counter.options(not_an_option=1)
    with pytest.raises(ValueError):
        Counter.options(max_restarts=-2)


def test_method_num_returns_by_decorator_and_by_options(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    class Splitter:
        @ray.method(num_returns=2)
        def pair(self, x):
            return x, x * 2

        def triple(self, x):
            return x, x + 1, x + 2

        @ray.method(num_returns=0)
        def nothing(self):
            return None

    s = Splitter.remote()
    a, b = s.pair.remote(3)
    assert ray.get([a, b]) == [3, 6]
    refs = s.triple.options(num_returns=3).remote(1)
    assert isinstance(refs, list) and len(refs) == 3
    assert ray.get(refs) == [1, 2, 3]
    assert ray.get(s.triple.remote(1)) == (1, 2, 3)  # one return unless told otherwise
    assert s.nothing.remote() is None
    one, two = s.pair.options(num_returns=2).remote(5)
    assert ray.get([one, two]) == [5, 10]

    @ray.remote
    def through(handle):  # a passed handle keeps the per-method options
        first, second = handle.pair.remote(7)
        return ray.get([first, second])

    assert ray.get(through.remote(s)) == [7, 14]


def test_two_hundred_calls_run_in_submission_order(cluster):
    cluster(num_nodes=1, num_cpus=1)
    r = Recorder.remote()
    refs = [r.append.remote(i) for i in range(200)]
    assert ray.get(refs) == list(range(1, 201))
    assert ray.get(r.items_.remote()) == list(range(200))


def test_a_call_waiting_for_its_argument_holds_back_the_later_calls(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    release = str(tmp_path / "release")
    r = Recorder.options(num_cpus=0).remote()
    ray.get(r.items_.remote())
    slow = wait_for_file.remote(release, "first")
    first = r.append.remote(slow)
    second = r.append.remote("second")
    assert not_ready_within(second, 0.3)
    open(release, "w").close()
    assert ray.get([first, second]) == [1, 2]
    assert ray.get(r.items_.remote()) == ["first", "second"]


def test_a_call_waiting_for_its_argument_holds_back_only_its_own_callers_calls(cluster, tmp_path):
    # Ray orders calls per caller: another process's call whose argument is ready goes first.
    cluster(num_nodes=1, num_cpus=3)
    release = str(tmp_path / "release")
    r = Recorder.options(num_cpus=0).remote()
    ray.get(r.items_.remote())

    @ray.remote
    def caller(handle, make_arg, *args):
        return ray.get(handle.append.remote(make_arg.remote(*args)))

    @ray.remote
    def ready(value):
        return value

    blocked = caller.remote(r, wait_for_file, release, "slow")
    mine = r.append.remote(wait_for_file.remote(release, "driver's"))  # waits too, in its own line
    other = caller.remote(r, ready, "fast")
    assert ray.get(other, timeout=10) == 1
    assert not_ready_within(blocked, 0.2) and not_ready_within(mine, 0.1)
    open(release, "w").close()
    assert sorted(ray.get([blocked, mine], timeout=10)) == [2, 3]
    assert ray.get(r.items_.remote())[0] == "fast"


def test_calls_from_a_task_keep_their_order_too(cluster):
    cluster(num_nodes=1, num_cpus=1)
    r = Recorder.remote()
    ray.get(r.items_.remote())  # created (see test_task_queued_behind_an_actor_creation_...)

    @ray.remote
    def caller(handle, n):
        return ray.get([handle.append.remote(("task", i)) for i in range(n)])

    assert ray.get(caller.remote(r, 50)) == list(range(1, 51))
    assert ray.get(r.items_.remote()) == [("task", i) for i in range(50)]


# ---- handles passed around ------------------------------------------------------------------


def test_handle_passed_to_a_task_is_usable_there(cluster):
    cluster(num_nodes=2, num_cpus=1)
    counter = Counter.remote()

    @ray.remote
    def bump(handle, times):
        for _ in range(times):
            ray.get(handle.incr.remote())
        return ray.get(handle.value.remote())

    assert ray.get(bump.remote(counter, 5)) == 5
    assert ray.get(counter.value.remote()) == 5
    # Also inside a container.
    assert ray.get(bump.remote(counter, 1)) == 6


def test_handle_passed_to_another_actor_is_usable_there(cluster):
    cluster(num_nodes=2, num_cpus=1)
    counter = Counter.remote()

    @ray.remote
    class User:
        def __init__(self, handle):
            self.handle = handle

        def bump(self, by):
            return ray.get(self.handle.incr.remote(by))

        def bump_given(self, handles, by):
            return ray.get(handles[0].incr.remote(by))

    user = User.remote(counter)
    assert ray.get(user.bump.remote(2)) == 2
    assert ray.get(user.bump_given.remote([counter], 3)) == 5
    assert ray.get(counter.value.remote()) == 5


def test_actor_created_inside_a_task_works_from_the_driver(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    def make():
        inner = Counter.options(name="made-in-task", lifetime="detached").remote(100)
        ray.get(inner.incr.remote())
        return inner

    handle = ray.get(make.remote())
    assert ray.get(handle.incr.remote()) == 102
    assert ray.get(ray.get_actor("made-in-task").value.remote()) == 102
    ray.kill(handle)


# ---- names, namespaces, get_if_exists, kill -------------------------------------------------


def test_names_are_checked_and_remote_takes_options_as_rays_does(cluster):
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(ValueError, match="Actor name cannot be an empty string"):
        Counter.options(name="")
    with pytest.raises(ValueError, match="namespace cannot be an empty string"):
        Counter.options(name="x", namespace="")
    with pytest.raises(TypeError):
        Counter.options(name="x", namespace=2)
    first = Counter._remote(args=(5,), name="by-_remote")
    assert ray.get(first.value.remote()) == 5
    with pytest.raises(ValueError, match="Please use a different name"):
        Counter._remote(name="by-_remote")


def test_named_actor_is_found_by_get_actor(cluster):
    cluster(num_nodes=1, num_cpus=1)
    counter = Counter.options(name="counter").remote()
    ray.get(counter.incr.remote())
    found = ray.get_actor("counter")
    assert found == counter
    assert ray.get(found.incr.remote()) == 2


def test_get_actor_of_an_unknown_name_raises_value_error(cluster):
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(ValueError, match="nobody"):
        ray.get_actor("nobody")
    Counter.options(name="somebody", namespace="other").remote()
    with pytest.raises(ValueError):
        ray.get_actor("somebody")  # it lives in another namespace


def test_creating_an_actor_with_a_taken_name_raises_value_error(cluster):
    cluster(num_nodes=1, num_cpus=1)
    first = Counter.options(name="dup").remote(1)
    with pytest.raises(ValueError):
        Counter.options(name="dup").remote(2)
    assert ray.get(ray.get_actor("dup").value.remote()) == 1
    assert ray.get(first.value.remote()) == 1


def test_namespaces_separate_names(cluster):
    cluster(num_nodes=1, num_cpus=1)
    a = Counter.options(name="same", namespace="ns-a").remote(1)
    b = Counter.options(name="same", namespace="ns-b").remote(2)
    assert ray.get(ray.get_actor("same", namespace="ns-a").value.remote()) == 1
    assert ray.get(ray.get_actor("same", namespace="ns-b").value.remote()) == 2
    assert a != b


def test_get_if_exists_returns_the_live_actor(cluster):
    cluster(num_nodes=1, num_cpus=1)
    first = Counter.options(name="singleton", get_if_exists=True).remote(7)
    ray.get(first.incr.remote())
    again = Counter.options(name="singleton", get_if_exists=True).remote(0)
    assert again == first
    assert ray.get(again.value.remote()) == 8
    assert ray.get(first.pid.remote()) == ray.get(again.pid.remote())


def test_get_actor_and_get_if_exists_from_inside_a_task(cluster):
    cluster(num_nodes=1, num_cpus=1)
    keep = Counter.options(name="shared").remote(1)  # (its handle keeps it alive, as in Ray)
    ray.get(keep.value.remote())

    @ray.remote
    def use():
        handle = ray.get_actor("shared")
        same = Counter.options(name="shared", get_if_exists=True).remote(0)
        return ray.get(handle.incr.remote()), ray.get(same.incr.remote())

    assert ray.get(use.remote()) == (2, 3)


def test_taken_name_and_kill_from_inside_a_task(cluster):
    cluster(num_nodes=1, num_cpus=1)
    victim = Counter.options(name="victim").remote(1)
    ray.get(victim.value.remote())

    @ray.remote
    def meddle():
        try:
            Counter.options(name="victim").remote(2)
            taken = False
        except ValueError:
            taken = True
        ray.kill(ray.get_actor("victim"))
        return taken

    assert ray.get(meddle.remote()) is True
    with pytest.raises(rex.ActorDiedError, match="ray.kill"):
        ray.get(victim.value.remote(), timeout=5)


def test_task_finds_a_named_actor_in_the_jobs_namespace(cluster):
    cluster(num_nodes=1, num_cpus=1, namespace="job-ns")
    keep = Counter.options(name="in-job-ns").remote(1)
    ray.get(keep.value.remote())

    @ray.remote
    def use():
        return ray.get(ray.get_actor("in-job-ns").incr.remote())

    assert ray.get(use.remote()) == 2


def test_a_killed_actors_name_can_be_taken_at_once_from_a_task(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    def recreate():
        first = Counter.options(name="again", lifetime="detached").remote(1)
        ray.get(first.value.remote())
        ray.kill(ray.get_actor("again"))
        second = Counter.options(name="again", lifetime="detached").remote(2)  # no wait in between
        value = ray.get(ray.get_actor("again").value.remote())
        ray.kill(second)
        return value

    assert ray.get(recreate.remote(), timeout=20) == 2


def test_name_is_free_again_after_the_actor_is_killed(cluster):
    cluster(num_nodes=1, num_cpus=1)
    old = Counter.options(name="reused").remote(1)
    ray.get(old.value.remote())
    ray.kill(old)
    with pytest.raises(rex.ActorDiedError):
        ray.get(old.value.remote())
    with pytest.raises(ValueError):
        ray.get_actor("reused")
    new = Counter.options(name="reused").remote(2)
    assert ray.get(ray.get_actor("reused").value.remote()) == 2
    assert new != old


def test_kill_ends_the_actor_process(cluster):
    cluster(num_nodes=1, num_cpus=1)
    counter = Counter.remote()
    pid = ray.get(counter.pid.remote())
    ray.kill(counter)
    wait_for(lambda: pid not in testing.worker_pids(), 3.0, "the killed actor's process to go")
    with pytest.raises(rex.ActorDiedError):
        ray.get(counter.value.remote())
    ray.kill(counter)  # killing a dead actor is harmless
    with pytest.raises(ValueError):
        ray.kill("not a handle")


def test_detached_actor_is_usable_and_killable(cluster):
    cluster(num_nodes=1, num_cpus=1)
    d = Counter.options(name="detached-one", lifetime="detached").remote(3)
    assert ray.get(ray.get_actor("detached-one").incr.remote()) == 4
    ray.kill(d)
    with pytest.raises(rex.ActorDiedError):
        ray.get(d.value.remote())


# ---- misuse -------------------------------------------------------------------------------


def test_calling_a_method_directly_raises_type_error(cluster):
    cluster(num_nodes=1, num_cpus=1)
    counter = Counter.remote()
    with pytest.raises(TypeError, match="remote"):
        counter.incr()
    with pytest.raises(AttributeError):
        counter.no_such_method.remote()
    assert ray.get(counter.incr.remote()) == 1


def test_instantiating_the_class_directly_raises_type_error():
    with pytest.raises(TypeError, match="remote"):
        Counter()
    with pytest.raises(TypeError):
        Counter(5)


# ---- threaded and async actors ------------------------------------------------------------


def test_threaded_actor_runs_calls_concurrently(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(max_concurrency=4)
    class Meeting:
        def __init__(self):
            import threading

            self.barrier = threading.Barrier(4, timeout=5)

        def meet(self, i):
            self.barrier.wait()  # only returns once all 4 calls are running at the same time
            return i

    m = Meeting.remote()
    assert ray.get([m.meet.remote(i) for i in range(4)], timeout=10) == [0, 1, 2, 3]


def test_threaded_actor_concurrency_is_bounded_by_max_concurrency(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    class Bounded:
        def __init__(self):
            import threading

            self.lock = threading.Lock()
            self.active = 0
            self.peak = 0
            self.barrier = threading.Barrier(2, timeout=5)

        def work(self):
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            try:
                self.barrier.wait()  # pairs of calls meet: proves 2 run at once
                time.sleep(0.01)
            finally:
                with self.lock:
                    self.active -= 1
            return True

        def peak_(self):
            return self.peak

    b = Bounded.options(max_concurrency=2).remote()
    assert all(ray.get([b.work.remote() for _ in range(6)], timeout=10))
    assert ray.get(b.peak_.remote()) == 2


def test_default_actor_runs_one_call_at_a_time(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    class Serial:
        def __init__(self):
            import threading

            self.barrier = threading.Barrier(2, timeout=0.2)

        def meet(self):
            import threading

            try:
                self.barrier.wait()
                return "met"
            except threading.BrokenBarrierError:
                self.barrier.reset()
                return "alone"

    s = Serial.remote()
    assert ray.get([s.meet.remote(), s.meet.remote()], timeout=10) == ["alone", "alone"]


def test_async_actor_runs_calls_concurrently_on_its_event_loop(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    class Gathering:
        def __init__(self, n):
            self.n = n
            self.arrived = 0
            self.event = None

        async def arrive(self, i):
            import asyncio

            if self.event is None:
                self.event = asyncio.Event()
            self.arrived += 1
            if self.arrived == self.n:
                self.event.set()  # the last one lets everybody go
            await asyncio.wait_for(self.event.wait(), 5)
            return i

    g = Gathering.remote(10)
    assert ray.get([g.arrive.remote(i) for i in range(10)], timeout=10) == list(range(10))


def test_async_actor_concurrency_is_bounded_by_max_concurrency(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(max_concurrency=2)
    class Gate:
        def __init__(self):
            self.started = []
            self.event = None

        async def enter(self, i):
            import asyncio

            if self.event is None:
                self.event = asyncio.Event()
            self.started.append(i)
            await asyncio.wait_for(self.event.wait(), 5)
            return i

        def started_(self):  # plain methods run on the loop without taking a slot
            return list(self.started)

        def open(self):
            self.event.set()

    g = Gate.remote()
    refs = [g.enter.remote(i) for i in range(4)]
    wait_for(lambda: len(ray.get(g.started_.remote())) >= 2, 5.0, "two calls to start")
    assert ray.get(g.started_.remote()) == [0, 1]  # calls 2 and 3 wait for a slot
    assert not_ready_within(refs[0], 0.1)
    ray.get(g.open.remote())
    assert ray.get(refs, timeout=10) == [0, 1, 2, 3]
    assert sorted(ray.get(g.started_.remote())) == [0, 1, 2, 3]


def test_async_actor_plain_and_async_methods_and_errors(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    class Mixed:
        def __init__(self):
            self.n = 0

        async def add(self, k):
            import asyncio

            await asyncio.sleep(0)
            self.n += k
            return self.n

        def plain(self):
            return self.n

        async def fail(self):
            raise MethodError("async boom")

    m = Mixed.remote()
    assert ray.get(m.add.remote(2)) == 2
    assert ray.get(m.plain.remote()) == 2
    with pytest.raises(MethodError, match="async boom"):
        ray.get(m.fail.remote())
    assert ray.get(m.add.remote(1)) == 3


def test_async_actor_burst_of_calls_starts_in_order_and_answers_each(cluster):
    """Calls reach the loop in batches and their replies leave in batches: none is lost,
    reordered at its start, or answered with another's result, errors included."""
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    class Recorder:
        def __init__(self):
            self.started = []

        async def step(self, i):
            import asyncio

            self.started.append(i)
            await asyncio.sleep(0.001 if i % 7 == 0 else 0)
            if i % 50 == 49:
                raise MethodError(f"call {i}")
            return i * i

        def starts(self):
            return self.started

    r = Recorder.options(max_concurrency=100).remote()
    refs = [r.step.remote(i) for i in range(2000)]
    for i, ref in enumerate(refs):
        if i % 50 == 49:
            with pytest.raises(MethodError, match=f"call {i}$"):
                ray.get(ref, timeout=30)
        else:
            assert ray.get(ref, timeout=30) == i * i
    assert ray.get(r.starts.remote(), timeout=10) == list(range(2000))


@ray.remote
class Batcher:
    """Its first call blocks the loop, so the calls behind it start, and end, in one go."""

    async def block(self, seconds):
        time.sleep(seconds)

    async def make(self, i):
        return [ray.put(i)]  # a ref this actor owns, returned inside the value

    async def other(self):
        ray.put(0)  # any send from the actor between a call's end and its reply

    async def f(self):
        return "f done"

    async def g(self, box):
        return ray.get(box[0])  # a blocking get, on the loop, of a call that already ended

    async def die(self):
        sys.exit(1)


def test_async_actor_refs_returned_inside_values_outlive_the_batched_reply(cluster):
    cluster(num_nodes=1, num_cpus=1)
    a = Batcher.options(max_concurrency=50).remote()
    for trial in range(3):
        a.block.remote(0.2)
        made = [a.make.remote(100 * trial + i) for i in range(50)]
        ray.get(a.other.remote(), timeout=10)
        inner = [ray.get(ref, timeout=10)[0] for ref in made]
        assert ray.get(inner, timeout=10) == [100 * trial + i for i in range(50)]


def test_async_actor_blocking_get_of_a_finished_calls_result_does_not_deadlock(cluster):
    cluster(num_nodes=1, num_cpus=1)
    a = Batcher.remote()
    a.block.remote(0.3)
    first = a.f.remote()
    assert ray.get(a.g.remote([first]), timeout=10) == "f done"


def test_async_actor_exit_reports_the_calls_that_finished_before_it(cluster):
    cluster(num_nodes=1, num_cpus=1)
    a = Batcher.remote()
    a.block.remote(0.3)
    finished = a.f.remote()
    dying = a.die.remote()
    assert ray.get(finished, timeout=10) == "f done"
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(dying, timeout=10)


def test_async_actor_awaits_object_refs_and_other_actors(cluster):
    cluster(num_nodes=1, num_cpus=1)
    counter = Counter.remote(5)
    ray.get(counter.value.remote())

    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    class Awaiter:
        async def run(self, handle, x):
            squared = await square.remote(x)
            bumped = await handle.incr.remote(squared)
            return squared, bumped

    w = Awaiter.remote()
    assert ray.get(w.run.remote(counter, 3), timeout=10) == (9, 14)


# ---- errors from methods ----------------------------------------------------------------------


def test_method_exception_is_a_ray_task_error_and_the_actor_keeps_running(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    class Fragile:
        def __init__(self):
            self.calls = 0

        def maybe_fail(self, fail):
            self.calls += 1
            if fail:
                raise MethodError(f"failed on call {self.calls}")
            return self.calls

        def pid(self):
            return os.getpid()

    f = Fragile.remote()
    pid = ray.get(f.pid.remote())
    ref = f.maybe_fail.remote(True)
    with pytest.raises(rex.RayTaskError) as info:
        ray.get(ref)
    assert isinstance(info.value, MethodError)
    assert isinstance(info.value.cause, MethodError)
    assert "failed on call 1" in str(info.value)
    assert "maybe_fail" in str(info.value)
    with pytest.raises(MethodError):
        ray.get(ref)
    assert ray.get(f.maybe_fail.remote(False)) == 2  # same instance, state kept
    assert ray.get(f.pid.remote()) == pid


def test_method_error_passes_to_dependent_tasks(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    class Bad:
        def fail(self):
            raise MethodError("upstream")

    @ray.remote
    def consume(x):
        return x

    b = Bad.remote()
    with pytest.raises(MethodError, match="upstream"):
        ray.get(consume.remote(b.fail.remote()))


def test_threaded_actor_method_errors_are_task_errors(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(max_concurrency=3)
    class T:
        def fail(self, i):
            raise MethodError(f"thread {i}")

        def ok(self):
            return "ok"

    t = T.remote()
    for i, ref in enumerate([t.fail.remote(i) for i in range(3)]):
        with pytest.raises(MethodError, match=f"thread {i}"):
            ray.get(ref)
    assert ray.get(t.ok.remote()) == "ok"


# ---- resources an actor holds --------------------------------------------------------------


def test_default_actor_needs_a_cpu_to_start_but_holds_none(cluster):
    cluster(num_nodes=1, num_cpus=1)
    actors = []
    for i in range(3):
        a = Counter.remote(i)
        assert ray.get(a.value.remote()) == i  # created one after another on the 1-CPU node
        actors.append(a)
    assert ray.available_resources().get("CPU") == 1.0
    assert ray.get(wait_for_file.remote(__file__, "task ran"), timeout=10) == "task ran"
    assert ray.get([a.incr.remote() for a in actors]) == [1, 2, 3]


def test_task_queued_behind_an_actor_creation_runs_once_the_actor_is_up(cluster):
    cluster(num_nodes=1, num_cpus=1)
    a = Counter.remote(1)  # takes the only CPU while its constructor runs
    task = wait_for_file.remote(__file__, "ran")  # queued for that CPU
    assert ray.get(a.value.remote(), timeout=10) == 1
    assert ray.get(task, timeout=1) == "ran"


def test_default_actor_waits_for_a_free_cpu_to_be_created(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    release = str(tmp_path / "release")
    busy = wait_for_file.remote(release, "done")
    a = Counter.remote(1)
    first = a.value.remote()
    assert not_ready_within(first, 0.3)
    open(release, "w").close()
    assert ray.get(busy) == "done"
    assert ray.get(first, timeout=10) == 1


def test_actor_with_num_cpus_zero_starts_on_a_busy_node(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    release = str(tmp_path / "release")
    busy = wait_for_file.remote(release, "done")
    a = Counter.options(num_cpus=0).remote(1)
    assert ray.get(a.value.remote(), timeout=10) == 1
    open(release, "w").close()
    assert ray.get(busy) == "done"


def test_actor_with_num_cpus_holds_its_cpu_until_killed(cluster):
    cluster(num_nodes=1, num_cpus=1)
    a = Counter.options(num_cpus=1).remote()
    ray.get(a.value.remote())
    assert ray.available_resources().get("CPU", 0.0) == 0.0
    task = wait_for_file.remote(__file__, "ran")
    try:
        assert not_ready_within(task, 0.3)
    finally:
        ray.kill(a)
    assert ray.get(task, timeout=10) == "ran"


def test_actor_holds_its_custom_resources_until_killed(cluster):
    cluster(num_nodes=1, num_cpus=1, resources={"slot": 1})
    a = Counter.options(resources={"slot": 1}).remote()
    ray.get(a.value.remote())
    assert ray.available_resources().get("slot", 0.0) == 0.0
    task = wait_for_file.options(num_cpus=0, resources={"slot": 1}).remote(__file__, "ran")
    try:
        assert not_ready_within(task, 0.3)
    finally:
        ray.kill(a)
    assert ray.get(task, timeout=10) == "ran"


def test_actor_creation_never_frees_resources_another_task_holds(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1, resources={"slot": 2})
    started, release = str(tmp_path / "started"), str(tmp_path / "release")

    @ray.remote(num_cpus=0, resources={"slot": 1})
    def holder(started, release):
        open(started, "w").close()
        while not os.path.exists(release):
            time.sleep(0.005)
        return "held"

    held = holder.remote(started, release)
    wait_for(lambda: os.path.exists(started), 5.0, "the holder to run")
    assert ray.available_resources().get("slot") == 1.0
    a = Counter.options(resources={"slot": 1}).remote()  # default num_cpus
    ray.get(a.value.remote())
    try:
        # At most the actor's own share may come back; the holder's must stay taken.
        assert ray.available_resources().get("slot", 0.0) <= 1.0
    finally:
        open(release, "w").close()
    assert ray.get(held, timeout=5) == "held"


def test_killed_actor_resources_are_all_back(cluster):
    # Two CPUs: `a` holds one while it lives, and `b` needs one free to be placed (as in Ray).
    cluster(num_nodes=1, num_cpus=2)
    a = Counter.options(num_cpus=1).remote()
    ray.get(a.value.remote())
    b = Counter.remote()
    ray.get(b.value.remote())
    ray.kill(a)
    ray.kill(b)
    wait_for(lambda: ray.available_resources().get("CPU") == 2.0, 3.0, "the CPUs to be free")
    assert ray.get(wait_for_file.remote(__file__, "ok"), timeout=10) == "ok"


# ---- runtime context, timing -------------------------------------------------------------------


def test_runtime_context_inside_an_actor_names_the_actor(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    class WhoAmI:
        def ids(self):
            ctx = ray.get_runtime_context()
            return ctx.get_actor_id(), ctx.get_node_id()

    w = WhoAmI.remote()
    actor_id, node = ray.get(w.ids.remote())
    assert node in testing.live_nodes()
    assert actor_id == w._ray_actor_id.hex()
    assert ray.get_runtime_context().get_actor_id() is None


def test_creating_an_actor_and_getting_a_call_back_is_quick(cluster):
    cluster(num_nodes=1, num_cpus=1)
    ray.get(wait_for_file.remote(__file__))  # the node is warm
    start = time.monotonic()
    a = Counter.remote(41)
    assert ray.get(a.incr.remote()) == 42
    took = time.monotonic() - start
    assert took < 1.0, f"actor creation plus one call took {took:.3f} s"


def test_a_method_invocation_decorator_wraps_the_call(cluster):
    """Ray's `__ray_invocation_decorator__`: it rewrites a call's arguments before submission
    and may return more than the ref, in the caller's process and in tasks holding the handle."""
    cluster(num_cpus=1)

    def invocation(submit):
        def call(args, kwargs):
            return submit([args[0], args[0]], {}), kwargs

        return call

    def doubled(method):
        def execute(self, b, c):
            return method(self, b + c)

        execute.__ray_invocation_decorator__ = invocation
        return execute

    @ray.remote
    class Adder:
        @doubled
        def add_one(self, x):
            return x + 1

    @ray.remote
    def through_a_task(adder):
        ref, _ = adder.add_one.remote(5)
        return ray.get(ref)

    adder = Adder.remote()
    ref, extra = adder.add_one.remote(3, note="kept by the caller")
    assert extra == {"note": "kept by the caller"}
    assert ray.get(ref) == 7
    assert ray.get(through_a_task.remote(adder)) == 11
