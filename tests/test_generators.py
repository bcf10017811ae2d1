"""Generator tasks: streaming items as they are yielded, dynamic and num_returns=N generators,
and Ray's fault-tolerance rules for them (retries show each item once, errors as items)."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest
from conftest import wait_for

import minicluster as ray
from minicluster.exceptions import ObjectRefStreamEndOfStreamError, RayTaskError, WorkerCrashedError


@ray.remote
def count_to(n):
    for i in range(n):
        yield i


@ray.remote(num_cpus=0)
class Attempts:
    """Counts the attempts of a task, so a crash can be aimed at the first one only."""

    def __init__(self):
        self.count = 0

    def start(self):
        self.count += 1
        return self.count

    def now(self):
        return self.count


def wait_for_file(path):
    while not path.exists():
        time.sleep(0.01)


def values(generator):
    out = []
    for ref in generator:
        try:
            out.append(ray.get(ref))
        except RayTaskError as error:
            out.append(("error", type(error.cause).__name__))
        except ray.exceptions.RayError as error:
            out.append(("error", type(error).__name__))
    return out


def test_a_generator_function_streams_its_items_by_default(cluster):
    cluster(num_cpus=2)
    generator = count_to.remote(4)
    assert isinstance(generator, ray.ObjectRefGenerator)
    assert [ray.get(ref) for ref in generator] == [0, 1, 2, 3]
    with pytest.raises(StopIteration):
        next(generator)
    assert ray.get(generator) is generator  # as Ray's get


def test_items_arrive_while_the_task_still_runs(cluster, tmp_path):
    cluster(num_cpus=2)
    gate = tmp_path / "go"

    @ray.remote
    def waits_for_gate():
        yield "first"
        wait_for_file(gate)
        yield "second"

    generator = waits_for_gate.remote()
    assert ray.get(next(generator), timeout=10) == "first"  # the task is blocked on the gate meanwhile
    assert not generator.is_finished()
    gate.touch()
    assert ray.get(next(generator), timeout=10) == "second"
    with pytest.raises(StopIteration):
        next(generator)
    assert generator.is_finished()


def test_next_with_a_timeout_returns_a_nil_ref(cluster, tmp_path):
    cluster(num_cpus=2)
    gate = tmp_path / "go"

    @ray.remote
    def slow():
        wait_for_file(gate)
        yield 1

    generator = slow.remote()
    assert generator._next_sync(timeout_s=0).is_nil()
    assert not generator.next_ready()
    gate.touch()
    ref = generator._next_sync(timeout_s=10)
    assert ray.get(ref) == 1


def test_wait_on_generators(cluster, tmp_path):
    cluster(num_cpus=2)
    gate = tmp_path / "go"

    @ray.remote
    def gated():
        wait_for_file(gate)
        yield "late"

    fast, slow = count_to.remote(1), gated.remote()
    ready, not_ready = ray.wait([fast, slow], num_returns=1, timeout=10)
    assert ready == [fast] and not_ready == [slow]
    assert ray.get(next(fast)) == 0
    ready, _ = ray.wait([fast], timeout=10)  # the stream ended: ready, next() raises StopIteration
    assert ready == [fast]
    gate.touch()
    ready, _ = ray.wait([slow], timeout=10)
    assert ready == [slow]
    assert ray.get(next(slow)) == "late"


def test_async_for_over_a_generator(cluster):
    cluster(num_cpus=2)

    async def consume():
        return [await ref async for ref in count_to.remote(3)]

    assert asyncio.run(consume()) == [0, 1, 2]


def test_an_exception_mid_stream_is_the_item_after_the_last(cluster):
    cluster(num_cpus=2)

    @ray.remote(max_retries=0)
    def fails_after_two():
        yield 1
        yield 2
        raise KeyError("third")

    assert values(fails_after_two.remote()) == [1, 2, ("error", "KeyError")]


def test_a_crash_without_retries_ends_the_stream_with_the_error(cluster):
    cluster(num_cpus=2)

    @ray.remote(max_retries=0)
    def crashes_after_two():
        yield 1
        yield 2
        os._exit(1)

    generator = crashes_after_two.remote()
    assert values(generator) == [1, 2, ("error", "WorkerCrashedError")]
    with pytest.raises(WorkerCrashedError):
        ray.get(generator.completed())


@pytest.mark.parametrize("crash_after", [0, 1, 3, 5])
@pytest.mark.parametrize("read_before_crash", [False, True])
def test_a_crash_mid_stream_is_retried_and_each_item_seen_once(cluster, crash_after, read_before_crash):
    cluster(num_cpus=2)
    attempts = Attempts.remote()

    @ray.remote(max_retries=2)
    def crashes_once(attempts, n):
        first = ray.get(attempts.start.remote()) == 1
        for i in range(n):
            if first and i == crash_after:
                os._exit(1)  # a real worker death, after `crash_after` items
            yield np.full(50_000, i)  # (some items go through the shared-memory store)

    generator = crashes_once.remote(attempts, 6)
    seen = []
    if read_before_crash and crash_after:
        seen = [int(ray.get(next(generator))[0]) for _ in range(crash_after)]
    seen += [int(ray.get(ref)[0]) for ref in generator]
    assert seen == list(range(6))
    assert ray.get(attempts.start.remote()) == 3  # two attempts ran, then this call


@ray.remote(max_retries=2)
def produce(n):
    for i in range(n):
        yield np.full(30_000, i)  # (through the shared-memory store)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("kill_after", [1, 3, 5])
def test_a_fault_plan_kill_after_item_k_shows_every_item_once(cluster, seed, kill_after):
    from minicluster.testing import FaultPlan

    cluster(num_cpus=2)
    plan = FaultPlan(seed=seed).kill_worker("produce", attempt=0, at="after_item", item=kill_after)
    with plan:
        generator = produce.remote(6)
        seen = [int(ray.get(next(generator))[0]) for _ in range(kill_after)]  # read before the crash
        seen += [int(ray.get(ref)[0]) for ref in generator]
    assert seen == list(range(6))
    [event] = plan.journal.events()
    assert (event.kind, event.point, event.attempt) == ("kill_worker", f"after_item:{kill_after}", 0)


def test_a_fault_plan_kill_after_the_last_item_does_not_repeat_items(cluster):
    from minicluster.testing import FaultPlan

    cluster(num_cpus=2)
    with FaultPlan(seed=7).kill_worker("produce", attempt=0, at="before_store") as plan:
        assert [int(ray.get(ref)[0]) for ref in produce.remote(5)] == [0, 1, 2, 3, 4]
    assert plan.journal.count("kill_worker") == 1


def test_item_is_only_for_after_item(cluster):
    from minicluster.testing import FaultPlan

    with pytest.raises(ValueError, match="`item` goes with at='after_item'"):
        FaultPlan(seed=1).kill_worker("produce", at="start", item=2)
    with pytest.raises(ValueError, match="must be an int >= 1"):
        FaultPlan(seed=1).kill_worker("produce", at="after_item")


def test_backpressure_pauses_the_producer(cluster):
    cluster(num_cpus=2)
    made = Attempts.remote()  # counts the items the producer made

    @ray.remote(_generator_backpressure_num_objects=2)
    def producer(counter):
        for i in range(6):
            ray.get(counter.start.remote())
            yield i

    generator = producer.remote(made)
    wait_for(lambda: ray.get(made.now.remote()) == 2, what="two items produced")
    time.sleep(0.3)  # room for the producer to run ahead, if it wrongly could
    assert ray.get(made.now.remote()) == 2  # paused: two items wait for the consumer
    assert ray.get(next(generator)) == 0
    wait_for(lambda: ray.get(made.now.remote()) == 3, what="one more item once one was taken")
    assert [ray.get(ref) for ref in generator] == [1, 2, 3, 4, 5]


def test_a_producer_paused_by_backpressure_goes_on_once_its_generator_is_dropped(cluster):
    cluster(num_cpus=1)  # one CPU: the paused producer would block the next task for ever

    @ray.remote(_generator_backpressure_num_objects=1)
    def producer():
        for i in range(5):
            yield i

    generator = producer.remote()
    assert ray.get(next(generator)) == 0
    del generator  # the producer is paused (one item waits); nobody will read it
    assert ray.get(count_to.remote(2).completed(), timeout=20) is None  # the CPU came back


def test_cancel_stops_a_generator_task(cluster):
    cluster(num_cpus=2)

    @ray.remote
    def endless():
        i = 0
        while True:
            time.sleep(0.01)
            yield i
            i += 1

    generator = endless.remote()
    assert ray.get(next(generator)) == 0
    ray.cancel(generator)
    last = values(generator)[-1]
    assert last == ("error", "TaskCancelledError")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_dynamic_returns_one_ref_to_all_items(cluster):
    cluster(num_cpus=2)

    @ray.remote(num_returns="dynamic")
    def dynamic(n):
        for i in range(n):
            yield i

    refs = ray.get(dynamic.remote(3))
    assert isinstance(refs, ray.DynamicObjectRefGenerator) and len(refs) == 3
    assert [ray.get(ref) for ref in refs] == [0, 1, 2]


def test_dynamic_is_deprecated_and_needs_a_generator(cluster):
    cluster(num_cpus=1)
    with pytest.warns(DeprecationWarning, match="num_returns='dynamic' is deprecated"):
        ray.remote(num_returns="dynamic")(lambda: (yield 1))

    def not_a_generator():
        return 1

    with pytest.raises(ValueError, match="can only be used with generator functions"):
        ray.remote(num_returns="streaming")(not_a_generator)


def test_a_generator_with_a_fixed_number_of_returns(cluster):
    cluster(num_cpus=2)

    @ray.remote(num_returns=3, max_retries=0)
    def three(raise_after):
        for i in range(3):
            if i == raise_after:
                raise ValueError("stop")
            yield i

    assert ray.get(three.remote(None)) == [0, 1, 2]
    first, second, third = three.remote(1)
    assert ray.get(first) == 0  # a value yielded before the error is kept, as in Ray
    for ref in (second, third):
        with pytest.raises(ValueError):
            ray.get(ref)


def test_actor_methods_that_yield(cluster):
    cluster(num_cpus=2)

    @ray.remote
    class Source:
        def items(self, n):
            for i in range(n):
                yield i

        async def async_items(self, n):
            for i in range(n):
                await asyncio.sleep(0)
                yield i

    @ray.remote(max_concurrency=2)
    class Threaded:
        def items(self, n):
            yield from range(n)

    source = Source.remote()
    assert [ray.get(ref) for ref in source.items.remote(3)] == [0, 1, 2]
    assert [ray.get(ref) for ref in source.async_items.remote(3)] == [0, 1, 2]
    assert [ray.get(ref) for ref in Threaded.remote().items.remote(2)] == [0, 1]


def test_a_generator_consumed_inside_a_task(cluster):
    cluster(num_cpus=2)

    @ray.remote
    def consumer(n):
        return sum(ray.get(ref) for ref in count_to.remote(n))

    assert ray.get(consumer.remote(5)) == 10


def test_large_items_come_back_zero_copy(cluster):
    cluster(num_cpus=2)

    @ray.remote
    def arrays():
        for i in range(3):
            yield np.full(1_000_000, i, dtype=np.int64)

    for i, ref in enumerate(arrays.remote()):
        array = ray.get(ref)
        assert array[0] == i and not array.flags.writeable  # a view of the shared-memory store


def test_a_dropped_generator_releases_its_items(cluster):
    cluster(num_cpus=2)
    from minicluster.util.state import list_objects

    @ray.remote
    def big():
        for _ in range(4):
            yield np.zeros(200_000)

    generator = big.remote()
    ray.get(generator.completed())  # every item produced, none taken
    task_hex = generator.completed().hex()[:48]
    items = {task_hex + (index + 1).to_bytes(4, "little").hex() for index in range(1, 5)}

    def items_alive():
        return items & {o.object_id for o in list_objects(limit=10_000)}

    assert items_alive() == items
    del generator
    wait_for(lambda: not items_alive(), what="the items nobody took freed")


def test_a_lost_item_is_rebuilt_by_lineage(cluster):
    from minicluster.cluster_utils import Cluster

    cluster(num_cpus=1)
    ray.shutdown()
    grid = Cluster()
    try:
        grid.add_node(num_cpus=1, resources={"head": 1})
        ray.init(address=grid.address)
        worker_node = grid.add_node(num_cpus=1, resources={"worker": 1})
        grid.wait_for_nodes()

        @ray.remote(resources={"worker": 1}, max_retries=2)
        def produce():
            for i in range(3):
                yield np.full(100_000, i)

        refs = list(produce.remote())
        assert [int(ray.get(ref)[0]) for ref in refs] == [0, 1, 2]
        grid.remove_node(worker_node, allow_graceful=False)
        grid.add_node(num_cpus=1, resources={"worker": 1})
        assert [int(ray.get(ref, timeout=30)[0]) for ref in refs] == [0, 1, 2]
    finally:
        ray.shutdown()
        grid.shutdown()


def test_the_end_of_stream_error_exists(cluster):
    assert issubclass(ObjectRefStreamEndOfStreamError, ray.exceptions.RayError)


def test_a_generator_cannot_be_passed_to_a_task(cluster):
    cluster(num_cpus=1)
    generator = count_to.remote(1)

    @ray.remote
    def take(g):
        return g

    with pytest.raises(TypeError, match="Serializing a ObjectRefGenerator is not allowed"):
        take.remote(generator)
    list(generator)
