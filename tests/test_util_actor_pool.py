"""minicluster.util.ActorPool: work handed to a fixed set of actors, results in order or as
they finish, timeouts, growing and shrinking the pool, and a pool actor dying mid-map."""

from __future__ import annotations

import os
import time

import pytest
from conftest import written

import minicluster as ray
from minicluster import testing
from minicluster.exceptions import ActorDiedError
from minicluster.util import ActorPool


@ray.remote
class Doubler:
    def double(self, v):
        return 2 * v

    def slow_double(self, v, seconds):
        time.sleep(seconds)
        return 2 * v

    def gated_double(self, v, gate):
        while gate is not None and not os.path.exists(gate):
            time.sleep(0.01)
        return 2 * v

    def pid(self):
        return os.getpid()


def test_map_keeps_order_and_map_unordered_yields_every_result(cluster, tmp_path):
    cluster(num_cpus=2)
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(lambda a, v: a.double.remote(v), range(7))) == [0, 2, 4, 6, 8, 10, 12]
    # value 0 waits for a gate: map_unordered hands out the others first
    gate = str(tmp_path / "gate")
    results = pool.map_unordered(lambda a, v: a.gated_double.remote(v, gate if v == 0 else None), range(5))
    first = [next(results) for _ in range(4)]
    open(gate, "w").close()
    assert sorted(first) == [2, 4, 6, 8] and list(results) == [0]


def test_submit_beyond_the_actors_waits_in_a_backlog(cluster):
    cluster(num_cpus=1)
    a = Doubler.remote()
    pool = ActorPool([a])
    pool.submit(lambda actor, v: actor.double.remote(v), 1)
    pool.submit(lambda actor, v: actor.double.remote(v), 2)
    assert not pool.has_free() and pool.pop_idle() is None
    assert pool._pending_submits  # the second waits for the only actor
    assert [pool.get_next(), pool.get_next()] == [2, 4]
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    assert pool.pop_idle() == a and not pool.has_free()


def test_get_next_timeout_and_ignore_if_timedout(cluster):
    cluster(num_cpus=2)
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    pool.submit(lambda a, v: a.slow_double.remote(v, 30), 1)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.05)
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.05)
    assert pool.has_next()  # still there: not ignored
    with pytest.raises(TimeoutError, match="has been ignored"):
        pool.get_next(timeout=0.05, ignore_if_timedout=True)
    assert not pool.has_next() and pool.has_free()
    pool.submit(lambda a, v: a.slow_double.remote(v, 30), 2)
    with pytest.raises(TimeoutError, match="has been ignored"):  # Ray 2.60 fails here (UnboundLocalError)
        pool.get_next_unordered(timeout=0.05, ignore_if_timedout=True)
    assert not pool.has_next()


def test_get_next_after_get_next_unordered_is_refused(cluster, tmp_path):
    cluster(num_cpus=2)
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    gate = str(tmp_path / "gate")
    pool.submit(lambda a, v: a.gated_double.remote(v, gate), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    assert pool.get_next_unordered() == 4  # the second one: the first waits for the gate
    with pytest.raises(ValueError, match="get_next_unordered"):
        pool.get_next()
    open(gate, "w").close()
    assert pool.get_next_unordered() == 2


def test_push_takes_the_backlog_and_refuses_a_member(cluster):
    cluster(num_cpus=2)
    a1, a2 = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a1])
    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a1)
    pool.push(a2)
    assert not pool._pending_submits and not pool.has_free()
    assert sorted([pool.get_next_unordered(), pool.get_next_unordered()]) == [2, 4]


def test_multiple_returns_come_back_as_a_list(cluster):
    cluster(num_cpus=2)

    @ray.remote
    class Pair:
        @ray.method(num_returns=2)
        def pair(self, v):
            return v, -v

    pool = ActorPool([Pair.remote(), Pair.remote()])
    assert list(pool.map(lambda a, v: a.pair.remote(v), [1, 2, 3])) == [[1, -1], [2, -2], [3, -3]]
    assert sorted(pool.map_unordered(lambda a, v: a.pair.remote(v), [1, 2])) == [[1, -1], [2, -2]]


def test_actor_killed_mid_map_raises_from_get_next_and_leaves_the_pool(cluster, tmp_path):
    cluster(num_cpus=2)

    @ray.remote
    class Worker:
        def work(self, v, gate):
            if v == 0:  # the first item keeps its actor busy until the test kills it
                with open(os.path.join(gate, "started"), "w") as f:
                    f.write(str(os.getpid()))
                while True:
                    time.sleep(0.05)
            return v * 10

    pool = ActorPool([Worker.remote(), Worker.remote()])
    results = pool.map(lambda a, v: a.work.remote(v, str(tmp_path)), range(4))
    started = tmp_path / "started"
    testing.kill_worker(int(written(started, "the first item to start")))
    with pytest.raises(ActorDiedError):
        next(results)  # as Ray: the dead actor's item raises; the generator ends there
    rest = []
    while pool.has_next():
        rest.append(pool.get_next())
    assert rest == [10, 20, 30]  # done by the actor left
    survivor = pool.pop_idle()
    assert survivor is not None and pool.pop_idle() is None  # the dead one was not put back
