"""Remote functions: submitting, getting, putting, waiting, placement and runtime context.

Task bodies are written inline (no helpers from this module), so workers get
them by value and never import the test module (which would import pytest).
"""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest
from conftest import wait_for

import minicluster as ray
from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote
def add(a, b):
    return a + b


@ray.remote
def identity(x):
    return x


@ray.remote
def node_id():
    return ray.get_runtime_context().get_node_id()


@ray.remote
def wait_for_file(path, value=None):
    """Keep the task busy until the test creates `path` (deadline 10 s)."""
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return value


# ---- get / put ---------------------------------------------------------------------------


def test_get_one_ref_and_a_list(cluster):
    cluster(num_nodes=1, num_cpus=1)
    assert ray.get(add.remote(1, 2)) == 3
    assert ray.get([add.remote(i, i) for i in range(5)]) == [0, 2, 4, 6, 8]
    assert ray.get([]) == []


def test_put_get_round_trip_of_plain_objects(cluster):
    cluster(num_nodes=1, num_cpus=1)
    for value in [1, "text", None, (1, 2), [1, {"a": b"bytes"}], {"nested": {"set": {1, 2}}}]:
        assert ray.get(ray.put(value)) == value


def test_put_get_numpy_array_is_equal_and_read_only(cluster):
    cluster(num_nodes=1, num_cpus=1)
    array = np.arange(300_000, dtype=np.int64)  # 2.4 MB: lives in the shared-memory store
    out = ray.get(ray.put(array))
    assert isinstance(out, np.ndarray)
    assert out.dtype == array.dtype
    np.testing.assert_array_equal(out, array)
    assert not out.flags.writeable
    with pytest.raises(ValueError):
        out[0] = 1


def test_small_numpy_array_round_trip(cluster):
    cluster(num_nodes=1, num_cpus=1)
    array = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(ray.get(ray.put(array)), array)


def test_put_ref_passed_to_a_task_is_resolved(cluster):
    cluster(num_nodes=1, num_cpus=1)
    ref = ray.put(41)
    assert ray.get(add.remote(ref, 1)) == 42


# ---- arguments ---------------------------------------------------------------------------


def test_top_level_ref_arguments_are_resolved_to_values(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    def describe(a, *, b):
        return type(a).__name__, a, type(b).__name__, b

    assert ray.get(describe.remote(add.remote(1, 1), b=ray.put("kw"))) == ("int", 2, "str", "kw")


def test_refs_nested_in_arguments_arrive_as_refs(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    def inspect_nested(items, mapping):
        assert all(isinstance(r, ray.ObjectRef) for r in items)
        assert isinstance(mapping["k"], ray.ObjectRef)
        return ray.get(items) + [ray.get(mapping["k"])]

    refs = [add.remote(1, 1), ray.put(3)]
    assert ray.get(inspect_nested.remote(refs, {"k": identity.remote(4)})) == [2, 3, 4]


# ---- nested tasks ------------------------------------------------------------------------


def test_task_submits_and_gets_tasks(cluster):
    cluster(num_nodes=2, num_cpus=1)

    @ray.remote
    def parent(n):
        return sum(ray.get([add.remote(i, 1) for i in range(n)]))

    assert ray.get(parent.remote(4)) == 1 + 2 + 3 + 4


def test_nested_tasks_on_one_cpu_do_not_deadlock(cluster):
    """The parent holds the only CPU while it blocks in get: it must lend it to its children."""
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(num_cpus=1)
    def child(x):
        return x * 10

    @ray.remote(num_cpus=1)
    def parent():
        return ray.get([child.remote(1), child.remote(2)])

    assert ray.get(parent.remote(), timeout=20) == [10, 20]


def test_three_levels_of_nesting_on_one_cpu(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(num_cpus=1)
    def leaf(x):
        return x * 10

    @ray.remote(num_cpus=1)
    def middle(x):
        return ray.get(leaf.remote(x)) + 1

    @ray.remote(num_cpus=1)
    def top():
        return ray.get([middle.remote(1), middle.remote(2)])

    assert ray.get(top.remote(), timeout=20) == [11, 21]


def test_blocking_task_does_not_hold_back_tasks_queued_behind_it(cluster, tmp_path):
    """One CPU. `b` blocks on `p`; `p` becomes ready only later, when the head may queue it behind `b`."""
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    def f(x, wait_for=None):
        if wait_for is not None:
            return ray.get(wait_for[0]) + x
        return x

    assert ray.get([f.remote(i) for i in range(200)]) == list(range(200))  # the head learns f is quick
    release = tmp_path / "release"
    q = wait_for_file.remote(str(release), 1)  # holds the CPU until released
    p = f.remote(q)  # ready when q is done
    b = f.remote(10, wait_for=[p])  # ready at once, waits for p inside
    release.touch()
    assert ray.get(b, timeout=2) == 11


def test_function_first_submitted_by_a_worker_later_runs_there(cluster):
    """Regression: the head once marked the submitting worker as knowing the function (KeyError there)."""
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    def child():
        return os.getpid()

    @ray.remote
    def parent():
        return os.getpid(), ray.get(child.remote())

    parent_pid, child_pid = ray.get(parent.remote())
    assert parent_pid != child_pid
    # Idle workers take turns: within two calls `child` runs in the worker that submitted it.
    pids = {ray.get(child.remote(), timeout=10) for _ in range(3)}
    assert parent_pid in pids


# ---- num_returns and options ---------------------------------------------------------------


def test_num_returns_two(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(num_returns=2)
    def pair():
        return "a", "b"

    a, b = pair.remote()
    assert isinstance(a, ray.ObjectRef) and isinstance(b, ray.ObjectRef)
    assert ray.get([a, b]) == ["a", "b"]


def test_num_returns_zero_returns_none(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    marker = tmp_path / "ran"

    @ray.remote(num_returns=0)
    def side_effect(path):
        open(path, "w").close()

    assert side_effect.remote(str(marker)) is None
    wait_for(marker.exists, timeout=5, what="the num_returns=0 task to run")


def test_wrong_number_of_returns_is_an_error(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(num_returns=2)
    def three():
        return 1, 2, 3

    a, b = three.remote()
    for ref in (a, b):
        with pytest.raises(ray.exceptions.RayTaskError) as info:
            ray.get(ref)
        assert isinstance(info.value, ValueError)
        assert "num_returns=2" in str(info.value)


@ray.remote
def task_name():
    return ray.get_runtime_context().get_task_name(), "second"


def test_options_num_returns_and_name(cluster):
    cluster(num_nodes=1, num_cpus=1)
    assert ray.get(task_name.remote())[0] == "task_name"  # Ray's default: the function's name
    first, second = task_name.options(num_returns=2, name="renamed").remote()
    assert ray.get([first, second]) == ["renamed", "second"]
    assert ray.get(task_name.remote())[0] == "task_name"  # .options() leaves the function as it was
    assert ray.get_runtime_context().get_task_name() is None  # the driver runs no task


# ---- get timeout and wait ---------------------------------------------------------------------


def test_get_timeout_raises_get_timeout_error(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=1)
    release = tmp_path / "release"
    ref = wait_for_file.remote(str(release), "done")
    start = time.monotonic()
    with pytest.raises(ray.exceptions.GetTimeoutError) as info:
        ray.get(ref, timeout=0.1)
    assert time.monotonic() - start < 2
    assert isinstance(info.value, TimeoutError)
    release.touch()
    assert ray.get(ref, timeout=10) == "done"


def test_get_timeout_inside_a_task(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=2)
    release = tmp_path / "release"
    slow = wait_for_file.remote(str(release))

    @ray.remote
    def try_get(ref_list):
        try:
            ray.get(ref_list[0], timeout=0.1)
        except TimeoutError as exc:
            return type(exc).__name__
        return "no timeout"

    assert ray.get(try_get.remote([slow])) == "GetTimeoutError"
    release.touch()


def in_input_order(subset, refs):
    positions = [refs.index(r) for r in subset]
    return positions == sorted(positions)


def test_wait_num_returns_and_order(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=2)
    release = tmp_path / "release"
    blocked = wait_for_file.remote(str(release), "late")
    done = [identity.remote(i) for i in range(3)]
    ray.get(done)
    refs = [done[2], blocked, done[0], done[1]]

    ready, not_ready = ray.wait(refs, num_returns=3)
    assert ready == [done[2], done[0], done[1]]  # input order is kept
    assert not_ready == [blocked]

    # Which two of the three ready ones come back is not specified (Ray's choice looks arbitrary),
    # but both lists keep the input order and split the input between them.
    ready, not_ready = ray.wait(refs, num_returns=2)
    assert len(ready) == 2 and set(ready) <= set(done)
    assert in_input_order(ready, refs) and in_input_order(not_ready, refs)
    assert sorted(map(refs.index, ready + not_ready)) == [0, 1, 2, 3]

    ready, not_ready = ray.wait(refs, num_returns=4, timeout=0)
    assert ready == [done[2], done[0], done[1]]
    assert not_ready == [blocked]

    start = time.monotonic()
    ready, not_ready = ray.wait([blocked], timeout=0.1)
    assert (ready, not_ready) == ([], [blocked])
    assert time.monotonic() - start < 2

    release.touch()
    ready, not_ready = ray.wait(refs, num_returns=4, timeout=10)
    assert ready == refs and not_ready == []


def test_wait_default_returns_one(cluster):
    cluster(num_nodes=1, num_cpus=1)
    refs = [identity.remote(i) for i in range(3)]
    ready, not_ready = ray.wait(refs)
    assert len(ready) == 1 and len(not_ready) == 2
    assert set(ready + not_ready) == set(refs)


# ---- large values ----------------------------------------------------------------------------


def test_large_results_read_in_driver_and_in_another_task(cluster):
    cluster(num_nodes=2, num_cpus=1)

    @ray.remote
    def big():
        return np.ones(10**6)  # 8 MB, far above the 100 KiB inline limit

    @ray.remote
    def total(array):
        return float(array.sum()), array.flags.writeable

    ref = big.remote()
    out = ray.get(ref)
    assert out.shape == (10**6,) and out.sum() == 10**6
    assert not out.flags.writeable
    assert ray.get(total.remote(ref)) == (10**6, False)
    nodes = [n["NodeID"] for n in ray.nodes()]
    for target in nodes:  # read on both nodes (one of them copies it from the other)
        strategy = NodeAffinitySchedulingStrategy(target, soft=False)
        assert ray.get(total.options(scheduling_strategy=strategy).remote(ref)) == (10**6, False)


def test_large_argument_by_value(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    def length(data):
        return len(data)

    assert ray.get(length.remote(b"x" * (300 * 1024))) == 300 * 1024


# ---- ids and runtime context ----------------------------------------------------------------------


def test_object_ref_ids(cluster):
    cluster(num_nodes=1, num_cpus=1)
    ref = identity.remote(1)
    assert len(ref.hex()) == 56
    assert ref.hex().startswith(ref.task_id().hex()) and len(ref.task_id().hex()) == 48
    assert ref.task_id().hex().endswith(ray.get_runtime_context().get_job_id())  # the job id
    first, second = task_name.options(num_returns=2).remote()
    assert first.task_id().hex() == second.task_id().hex() and first != second
    assert first.hex()[48:] == "01000000" and second.hex()[48:] == "02000000"  # return index 1, 2
    put = ray.put(1)
    assert len(put.hex()) == 56 and put != ray.put(1)
    assert ref == ray.ObjectRef(ref.binary()) and len({ref, ray.ObjectRef(ref.binary())}) == 1
    assert ray.get(ref) == 1


def test_runtime_context_ids(cluster):
    cluster(num_nodes=1, num_cpus=1)
    ctx = ray.get_runtime_context()
    assert len(ctx.get_job_id()) == 8  # 01000000 in a process's first session, then 02000000, ...
    assert len(ctx.get_node_id()) == 56
    int(ctx.get_node_id(), 16)
    assert len(ctx.get_worker_id()) == 56
    assert ctx.get_task_id() is None  # the driver is not a task

    @ray.remote
    def ids():
        c = ray.get_runtime_context()
        return c.get_job_id(), c.get_node_id(), c.get_task_id(), c.get_worker_id()

    ref = ids.remote()
    job, node, task, worker = ray.get(ref)
    assert job == ctx.get_job_id()
    assert node == ctx.get_node_id()
    assert task == ref.task_id().hex()
    assert worker != ctx.get_worker_id() and len(worker) == 56


# ---- cluster information and placement ----------------------------------------------------------


def test_nodes_and_cluster_resources(cluster):
    cluster(num_nodes=2, num_cpus=2)
    nodes = ray.nodes()
    assert len(nodes) == 2
    assert all(n["Alive"] for n in nodes)
    ids = {n["NodeID"] for n in nodes}
    assert len(ids) == 2 and all(len(i) == 56 for i in ids)
    resources = ray.cluster_resources()
    assert resources["CPU"] == 4
    for i in ids:
        assert resources[f"node:{i}"] == 1
    assert ray.available_resources()["CPU"] == 4


def test_the_first_node_carries_rays_head_node_resource(cluster):
    cluster(num_nodes=2, num_cpus=1)
    assert ray.cluster_resources()["node:__internal_head__"] == 1

    @ray.remote(resources={"node:__internal_head__": 0.1})
    def where():
        return ray.get_runtime_context().get_node_id()

    assert ray.get(where.remote(), timeout=10) == ray.nodes()[0]["NodeID"]


def test_available_resources_while_a_task_runs(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=2)
    release = tmp_path / "release"
    ref = wait_for_file.remote(str(release))
    wait_for(lambda: ray.available_resources().get("CPU") == 1, timeout=5, what="one CPU in use")
    assert ray.cluster_resources()["CPU"] == 2
    release.touch()
    ray.get(ref)
    wait_for(lambda: ray.available_resources().get("CPU") == 2, timeout=5, what="the CPU to be released")


def test_custom_resources_placement(cluster, tmp_path):
    cluster(num_nodes=2, num_cpus=1, resources={"x": 1})
    assert ray.cluster_resources()["x"] == 2
    release = tmp_path / "release"

    @ray.remote(resources={"x": 1})
    def uses_x():
        return ray.get_runtime_context().get_node_id()

    assert ray.get(uses_x.remote()) in {n["NodeID"] for n in ray.nodes()}
    held = wait_for_file.options(resources={"x": 1}, num_cpus=0).remote(str(release))
    wait_for(lambda: ray.available_resources().get("x") == 1, timeout=5, what="one x in use")
    release.touch()
    ray.get(held)


def test_num_cpus_two_holds_both_cpus_of_a_node(cluster, tmp_path):
    cluster(num_nodes=1, num_cpus=2)
    release = tmp_path / "release"
    ref = wait_for_file.options(num_cpus=2).remote(str(release), "wide")
    wait_for(lambda: ray.available_resources().get("CPU", 0) == 0, timeout=5, what="both CPUs in use")
    release.touch()
    assert ray.get(ref, timeout=10) == "wide"


def test_node_affinity_runs_on_that_node(cluster):
    cluster(num_nodes=2, num_cpus=1)
    for node in ray.nodes():
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        for _ in range(3):
            assert ray.get(node_id.options(scheduling_strategy=strategy).remote()) == node["NodeID"]


def test_node_affinity_to_an_unknown_node(cluster):
    cluster(num_nodes=2, num_cpus=1)
    nowhere = "ab" * 28
    hard = NodeAffinitySchedulingStrategy(nowhere, soft=False)
    with pytest.raises(ray.exceptions.TaskUnschedulableError) as info:
        ray.get(node_id.options(scheduling_strategy=hard).remote(), timeout=10)
    assert nowhere in str(info.value) or "NodeAffinitySchedulingStrategy" in str(info.value)
    soft = NodeAffinitySchedulingStrategy(nowhere, soft=True)
    assert ray.get(node_id.options(scheduling_strategy=soft).remote(), timeout=10) in \
        {n["NodeID"] for n in ray.nodes()}


def test_zero_cpu_tasks_run_beside_a_busy_cpu(cluster, tmp_path):
    """Three num_cpus=0 tasks that wait for each other all run at once on a 1-CPU node."""
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(num_cpus=0)
    def meet(folder, me, count):
        open(os.path.join(folder, str(me)), "w").close()
        deadline = time.monotonic() + 10
        while len(os.listdir(folder)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError("the others never started")
            time.sleep(0.005)
        return me

    assert ray.get([meet.remote(str(tmp_path), i, 3) for i in range(3)], timeout=20) == [0, 1, 2]


def test_spread_uses_both_nodes(cluster, tmp_path):
    """Two tasks that wait for each other: SPREAD puts them on different nodes, though one node could hold both."""
    cluster(num_nodes=2, num_cpus=2)

    @ray.remote(scheduling_strategy="SPREAD")
    def meet(folder, me, count):
        open(os.path.join(folder, str(me)), "w").close()
        deadline = time.monotonic() + 10
        while len(os.listdir(folder)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError("the other task never started")
            time.sleep(0.005)
        return ray.get_runtime_context().get_node_id()

    seen = ray.get([meet.remote(str(tmp_path), i, 2) for i in range(2)], timeout=20)
    assert set(seen) == {n["NodeID"] for n in ray.nodes()}


# ---- workers ----------------------------------------------------------------------------------


def test_workers_are_reused(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    def pid():
        return os.getpid()

    assert len({ray.get(pid.remote()) for _ in range(5)}) == 1


def test_max_calls_one_runs_each_call_in_a_new_worker(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(max_calls=1)
    def pid():
        return os.getpid()

    pids = [ray.get(pid.remote(), timeout=10) for _ in range(3)]
    assert len(set(pids)) == 3
    assert ray.get(add.remote(1, 1)) == 2  # the pool is still there


def test_max_calls_with_many_quick_tasks(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(max_calls=5, max_retries=0)
    def pid(i):
        return os.getpid()

    results = []
    for ref in [pid.remote(i) for i in range(300)]:
        try:
            results.append(ray.get(ref, timeout=20))
        except ray.exceptions.RayError as exc:
            results.append(f"{type(exc).__name__}: {exc}"[:120])
    failures = [r for r in results if isinstance(r, str)]
    assert failures == []
    assert max(results.count(p) for p in set(results)) <= 5  # each worker ran at most max_calls


def test_many_small_tasks(cluster):
    cluster(num_nodes=2, num_cpus=1)
    assert ray.get([add.remote(i, 1) for i in range(2000)], timeout=60) == list(range(1, 2001))


def test_long_dependency_chain(cluster):
    cluster(num_nodes=2, num_cpus=1)
    ref = ray.put(0)
    for _ in range(200):
        ref = add.remote(ref, 1)
    assert ray.get(ref, timeout=60) == 200


def test_get_of_the_same_ref_twice_in_one_call(cluster):
    cluster(num_nodes=1, num_cpus=1)
    ref = identity.remote("x")
    assert ray.get([ref, ref]) == ["x", "x"]


def test_task_ref_returned_inside_a_result(cluster):
    cluster(num_nodes=2, num_cpus=1)

    @ray.remote
    def make_ref():
        return [identity.remote("made by a task")]

    inner = ray.get(make_ref.remote())
    assert isinstance(inner[0], ray.ObjectRef)
    assert ray.get(inner) == ["made by a task"]


@pytest.mark.parametrize("size", [10, 200_000])
def test_put_ref_returned_inside_a_result(cluster, size):
    """Ray returns the value here (the result holds the ref, so the object must stay alive)."""
    cluster(num_nodes=2, num_cpus=1)

    @ray.remote
    def make_ref(n):
        return [ray.put(b"x" * n)]

    inner = ray.get(make_ref.remote(size))
    assert isinstance(inner[0], ray.ObjectRef)
    assert ray.get(inner[0]) == b"x" * size


def test_await_ref_in_asyncio(cluster):
    cluster(num_nodes=1, num_cpus=1)

    async def main():
        one = await add.remote(1, 2)
        many = await asyncio.gather(identity.remote("a"), identity.remote("b"))
        return one, many

    assert asyncio.run(main()) == (3, ["a", "b"])


def test_ray_underscore_remote_takes_args_kwargs_and_options(cluster):
    cluster(num_nodes=1, num_cpus=2, resources={"Custom": 1})

    @ray.remote
    def upto(n, start=0):
        return list(range(start, n))

    @ray.remote
    class Pair:
        def __init__(self, x, y=0):
            self.pair = (x, y)

        def with_(self, a, b=0):
            return [*self.pair, a, b]

    assert upto._remote([0], num_returns=0) is None
    assert ray.get(list(upto._remote(args=[3], kwargs={"start": 1}, num_returns=2))) == [1, 2]
    pair = Pair._remote(args=[0], kwargs={"y": 1}, resources={"Custom": 1})
    assert ray.get(list(pair.with_._remote(args=["t"], kwargs={"b": 2}, num_returns=4))) == [0, 1, "t", 2]
