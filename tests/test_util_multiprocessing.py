"""minicluster.util.multiprocessing.Pool: the standard library's Pool API on actors; original
exception types, callbacks, lazy imap, process lifecycle, and a pool process dying."""

from __future__ import annotations

import os
import threading
import time

import pytest
from conftest import wait_for, written

from minicluster import testing
from minicluster.exceptions import ActorDiedError, RayError
from minicluster.util.multiprocessing import Pool, TimeoutError


class Boom(Exception):
    pass


def test_map_starmap_apply_and_the_original_exception_type(cluster):
    cluster(num_cpus=2)
    with Pool(2) as pool:
        assert pool.map(lambda x: x * x, range(10)) == [x * x for x in range(10)]
        assert pool.map(lambda x: x, range(10), chunksize=3) == list(range(10))
        assert pool.map(abs, []) == []
        assert pool.map(len, [bytes(300_000), b"ab"], chunksize=2) == [300_000, 2]  # a chunk sent by ref
        assert pool.starmap(lambda a, b: a - b, [(5, 1), (7, 2)]) == [4, 5]
        assert pool.apply(lambda a, b=0: a + b, (1,), {"b": 2}) == 3

        def fails_on_3(x):
            if x == 3:
                raise Boom(f"bad {x}")
            return x

        with pytest.raises(Boom, match="bad 3"):  # the task's own exception class, not a wrapper
            pool.map(fails_on_3, range(6))
        with pytest.raises(Boom):
            pool.apply(fails_on_3, (3,))
        with pytest.raises(ZeroDivisionError):
            pool.starmap_async(lambda a, b: a / b, [(1, 0)]).get()
        [returned] = pool.map(lambda x: Boom(x), [1])  # an exception returned, not raised: a value
        assert isinstance(returned, Boom)


def test_processes_are_spread_and_default_to_the_cluster_cpus(cluster):
    cluster(num_cpus=3)
    pool = Pool()
    pids = pool.map(lambda _: os.getpid(), range(12), chunksize=1)
    assert len(set(pids)) == 3
    pool.close()
    pool.join()
    with pytest.raises(ValueError, match="only 3 CPUs"):
        Pool(4)
    with pytest.raises(ValueError, match=">0"):
        Pool(0)


def test_async_results_callbacks_and_timeouts(cluster, tmp_path):
    cluster(num_cpus=2)
    gate = tmp_path / "go"

    def waits(x):
        while not os.path.exists(str(gate)):
            time.sleep(0.02)
        return x

    got, errors = [], []
    done = threading.Event()
    with Pool(2) as pool:
        result = pool.map_async(waits, range(4), callback=lambda v: (got.append(v), done.set()))
        assert not result.ready()
        with pytest.raises(ValueError, match="not ready"):
            result.successful()
        with pytest.raises(TimeoutError):
            result.get(timeout=0.05)
        gate.touch()
        assert result.get(timeout=30) == [0, 1, 2, 3]
        assert result.ready() and result.successful()
        assert done.wait(10) and got == [[0, 1, 2, 3]]

        def fails(x):
            raise Boom(x)

        failed = pool.apply_async(fails, (1,), error_callback=errors.append)
        failed.wait(30)
        assert failed.ready() and not failed.successful()
        assert len(errors) == 1 and isinstance(errors[0], Boom)
        single = []
        assert pool.apply_async(lambda: 5, callback=single.append).get(30) == 5
        wait_for(lambda: single == [5], what="apply_async's callback")


def test_imap_is_lazy_and_hands_back_exceptions_as_values(cluster):
    cluster(num_cpus=2)

    def maybe_fail(x):
        if x == 2:
            raise Boom("two")
        return x

    with Pool(2) as pool:
        out = list(pool.imap(maybe_fail, iter(range(5)), chunksize=2))
        assert out[:2] == [0, 1] and isinstance(out[2], Boom) and out[3:] == [3, 4]  # as Ray's imap
        assert sorted(x for x in pool.imap_unordered(maybe_fail, range(5)) if not isinstance(x, Boom)) == [0, 1, 3, 4]
        with pytest.raises(TypeError, match="not iterable"):
            pool.imap(maybe_fail, 3)
        it = pool.imap(lambda x: time.sleep(30) if x == 0 else x, range(3))
        with pytest.raises(TimeoutError):
            it.next(timeout=0.1)


def test_initializer_runs_in_each_process_and_maxtasksperchild_replaces_them(cluster, tmp_path):
    cluster(num_cpus=2)

    def init(folder):
        open(os.path.join(folder, str(os.getpid())), "w").close()

    pool = Pool(2, initializer=init, initargs=(str(tmp_path),))
    assert len(os.listdir(tmp_path)) == 2  # done before Pool() returned
    pool.terminate()
    pool.join()
    pool = Pool(2, maxtasksperchild=1)
    pids = pool.map(lambda _: os.getpid(), range(6), chunksize=1)
    assert len(set(pids)) == 6  # one chunk per process, then a new one
    pool.close()
    pool.join()
    with pytest.raises(ValueError, match="not running"):
        pool.map(abs, [1])
    with pytest.raises(ValueError, match="maxtasksperchild"):
        Pool(1, maxtasksperchild=0)
    with pytest.warns(UserWarning, match="context"):
        Pool(1, context="fork").terminate()


def test_close_lets_work_finish_and_terminate_fails_it(cluster, tmp_path):
    cluster(num_cpus=2)
    gate = tmp_path / "go"

    def waits(x):
        while not os.path.exists(str(gate)):
            time.sleep(0.02)
        return x

    pool = Pool(2)
    result = pool.map_async(waits, range(2), chunksize=1)
    pool.close()
    gate.touch()
    pool.join()
    assert result.get(timeout=30) == [0, 1]

    gate.unlink()
    pool = Pool(2)
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    result = pool.map_async(waits, range(2), chunksize=1)
    pool.terminate()
    pool.join()
    result.wait(30)
    assert result.ready() and not result.successful()
    with pytest.raises(RayError):
        result.get()


def test_a_pool_process_killed_mid_map_fails_its_chunk(cluster, tmp_path):
    cluster(num_cpus=2)

    def work(x):
        if x == 0:
            (tmp_path / "pid").write_text(str(os.getpid()))
            time.sleep(60)
        return x

    with Pool(2) as pool:
        result = pool.map_async(work, range(4), chunksize=2)
        testing.kill_worker(int(written(tmp_path / "pid", "the first chunk to start")))
        result.wait(30)
        assert not result.successful()
        with pytest.raises(ActorDiedError):  # Ray's error for the chunk whose process died
            result.get()
