"""minicluster.util.queue: a FIFO queue in an actor, shared by the driver, tasks and actors;
blocking and non-blocking put/get, batches, asyncio, shutdown, and its actor restarting."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import wait_for

import minicluster as ray
from minicluster import testing
from minicluster.exceptions import GetTimeoutError, RayActorError
from minicluster.util import state
from minicluster.util.queue import Empty, Full, Queue


def test_put_get_in_order_with_sizes(cluster):
    cluster(num_cpus=1)
    q = Queue()
    assert q.empty() and q.qsize() == 0 and len(q) == 0
    for i in range(5):
        q.put(i)
    assert q.size() == 5 and not q.full()
    assert [q.get() for _ in range(5)] == list(range(5))
    assert q.empty()


def test_bounded_queue_raises_full_and_empty(cluster):
    cluster(num_cpus=1)
    q = Queue(maxsize=1)
    q.put_nowait("a")
    assert q.full()
    with pytest.raises(Full):
        q.put_nowait("b")
    with pytest.raises(Full):
        q.put("b", timeout=0.05)
    with pytest.raises(ValueError):
        q.put("b", timeout=-1)
    assert q.get(block=False) == "a"
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(timeout=0.05)
    import queue as stdlib_queue

    assert issubclass(Empty, stdlib_queue.Empty) and issubclass(Full, stdlib_queue.Full)


def test_batches_are_all_or_nothing(cluster):
    cluster(num_cpus=1)
    q = Queue(maxsize=3)
    with pytest.raises(Full):
        q.put_nowait_batch([1, 2, 3, 4])
    assert q.qsize() == 0
    q.put_nowait_batch([1, 2, 3])
    with pytest.raises(Empty):
        q.get_nowait_batch(4)
    assert q.get_nowait_batch(2) == [1, 2] and q.get_nowait_batch(1) == [3]
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)


def test_a_task_blocked_in_get_is_woken_by_a_put_and_an_actor_puts_into_the_same_queue(cluster):
    cluster(num_cpus=2)

    @ray.remote
    def consume(queue):
        return queue.get(timeout=30)

    @ray.remote
    class Producer:
        def produce(self, queue, item):
            queue.put(item)

    q = Queue()
    waiting = consume.remote(q)
    with pytest.raises(GetTimeoutError):
        ray.get(waiting, timeout=0.2)  # blocked in the queue's actor, not failed
    ray.get(Producer.remote().produce.remote(q, "hello"))
    assert ray.get(waiting) == "hello"


def test_a_blocked_put_completes_when_a_get_makes_room(cluster):
    cluster(num_cpus=2)

    @ray.remote
    def produce(queue, item):
        queue.put(item)
        return "put"

    q = Queue(maxsize=1)
    q.put(1)
    putting = produce.remote(q, 2)
    with pytest.raises(GetTimeoutError):
        ray.get(putting, timeout=0.2)
    assert q.get() == 1
    assert ray.get(putting) == "put"
    assert q.get() == 2


def test_async_put_and_get(cluster):
    cluster(num_cpus=1)
    q = Queue(maxsize=1)

    async def run():
        await q.put_async(7)
        with pytest.raises(Full):
            await q.put_async(8, block=False)
        with pytest.raises(Full):
            await q.put_async(8, timeout=0.05)
        got = await q.get_async()
        with pytest.raises(Empty):
            await q.get_async(timeout=0.05)
        with pytest.raises(ValueError):
            await q.get_async(timeout=-1)
        return got

    assert asyncio.run(run()) == 7


def test_shutdown_ends_the_actor_and_actor_options_apply(cluster):
    cluster(num_cpus=1)
    q = Queue()
    q.put(1)
    assert ray.available_resources()["CPU"] == 1.0  # the default queue actor holds no CPU once up
    actor = q.actor
    q.shutdown()
    assert q.actor is None
    with pytest.raises(RayActorError):
        ray.get(actor.empty.remote())
    q2 = Queue(actor_options={"num_cpus": 1})
    q2.put(1)
    assert ray.available_resources().get("CPU", 0) == 0
    q2.shutdown(force=True)
    wait_for(lambda: ray.available_resources().get("CPU") == 1.0, what="the CPU to come back")


def test_a_restarted_queue_actor_starts_empty(cluster):
    cluster(num_cpus=1)
    q = Queue(actor_options={"max_restarts": 1})
    q.put_nowait_batch([1, 2, 3])
    pid = state.get_actor(q.actor._actor_id.hex()).pid
    testing.kill_worker(pid)
    # as Ray: the constructor runs again and the items put before the crash are gone
    wait_for(lambda: state.get_actor(q.actor._actor_id.hex()).pid not in (None, pid), what="the restart")
    deadline = time.monotonic() + 10
    while True:
        try:
            assert q.qsize() == 0
            break
        except RayActorError:
            if time.monotonic() > deadline:
                raise
    q.put(4)
    assert q.get() == 4
