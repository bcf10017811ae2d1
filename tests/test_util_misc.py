"""minicluster.util's smaller helpers: list_named_actors, as_completed / map_unordered,
inspect_serializability, register_serializer / deregister_serializer."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest
from conftest import wait_for

import minicluster as ray
from minicluster.util import (
    as_completed,
    deregister_serializer,
    inspect_serializability,
    list_named_actors,
    map_unordered,
    register_serializer,
)


@ray.remote
def identity(x):
    return x


@ray.remote
class Named:
    def ping(self):
        return "pong"


def test_list_named_actors_in_this_namespace_or_all_of_them(cluster):
    cluster(num_cpus=1)
    assert list_named_actors() == []
    a = Named.options(name="a").remote()
    Named.options(name="b", namespace="other").remote()
    Named.remote()  # unnamed: not listed
    ray.get(a.ping.remote())
    assert list_named_actors() == ["a"]
    assert sorted(list_named_actors(all_namespaces=True), key=lambda d: d["name"]) == [
        {"name": "a", "namespace": ray.get_runtime_context().namespace}, {"name": "b", "namespace": "other"}]

    @ray.remote
    def from_a_task():
        from minicluster.util import list_named_actors as names

        return names()

    assert ray.get(from_a_task.remote()) == ["a"]
    ray.kill(a)
    wait_for(lambda: list_named_actors() == [], what="the killed actor's name to go")


def test_as_completed_and_map_unordered_yield_every_result_as_it_finishes(cluster, tmp_path):
    cluster(num_cpus=2)
    gate = str(tmp_path / "gate")

    @ray.remote
    def until(x, gate):
        while gate is not None and not os.path.exists(gate):
            time.sleep(0.01)
        return x

    refs = [until.remote("last", gate), until.remote("a", None), until.remote("b", None)]
    results = as_completed(refs, chunk_size=1)
    first = [next(results), next(results)]
    open(gate, "w").close()
    assert sorted(first) == ["a", "b"] and list(results) == ["last"]
    assert set(as_completed(refs, chunk_size=2, yield_obj_refs=True)) == set(refs)
    assert sorted(map_unordered(identity, range(7), backpressure_size=2, chunk_size=1)) == list(range(7))
    with pytest.raises(ValueError):
        list(as_completed(refs, chunk_size=0))
    with pytest.raises(ValueError):
        list(as_completed(refs, num_returns=1))
    with pytest.raises(ValueError):
        list(map_unordered(identity, [1], backpressure_size=0))


def test_inspect_serializability_names_the_part_that_cannot_be_pickled():
    lock = threading.Lock()

    class Holder:
        def __init__(self):
            self.fine = [1, 2]
            self.bad = lock

    report = io.StringIO()
    ok, failures = inspect_serializability(Holder(), name="holder", print_file=report)
    assert not ok
    [failure] = failures
    assert failure.obj is lock and failure.path == ("holder", "bad")
    assert "FAIL" in report.getvalue()

    def uses_lock():
        return lock

    ok, failures = inspect_serializability(uses_lock, print_file=io.StringIO())
    assert not ok and [f.obj for f in failures] == [lock]
    assert inspect_serializability([1, "x"], print_file=io.StringIO()) == (True, set())


class Point:
    def __init__(self, x):
        self.x = x
        self.lock = threading.Lock()  # not picklable as it is


def _to_plain(p):
    return p.x


def _from_plain(x):
    return Point(x)


def test_register_serializer_applies_in_this_process(cluster):
    cluster(num_cpus=1)

    @ray.remote
    def get_x(p):
        return p.x

    @ray.remote
    def make(x):
        return Point(x)

    with pytest.raises(TypeError):
        ray.put(Point(1))
    register_serializer(Point, serializer=_to_plain, deserializer=_from_plain)
    try:
        assert ray.get(ray.put(Point(2))).x == 2
        assert ray.get(get_x.remote(Point(3))) == 3  # the worker rebuilds it without registering
        with pytest.raises(TypeError):  # as in Ray: the worker did not register it, so cannot pickle one
            ray.get(make.remote(4))
    finally:
        deregister_serializer(Point)
    with pytest.raises(TypeError):
        ray.put(Point(4))
    deregister_serializer(Point)  # nothing registered: no error
