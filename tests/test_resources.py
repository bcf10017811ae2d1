"""Resources beyond CPUs and GPUs, as Ray schedules them: the `memory` resource, `accelerator_type`,
`label_selector` over node labels; `object_store_memory` and `_labels`, which reserve nothing."""

import warnings

import pytest

import minicluster as ray
from minicluster import testing

pytestmark = pytest.mark.timeout(60)

MiB = 2**20


@ray.remote
def where():
    return ray.get_runtime_context().get_node_id()


@ray.remote
def assigned():
    return ray.get_runtime_context().get_assigned_resources()


@ray.remote
class Reserver:
    def ready(self):
        return True


def test_every_node_has_a_memory_resource_and_the_option_takes_from_it(cluster):
    cluster(num_cpus=2, _memory=100 * MiB)
    assert ray.cluster_resources()["memory"] == 100 * MiB
    assert ray.get(assigned.options(memory=10 * MiB).remote()) == {"CPU": 1.0, "memory": 10 * MiB}
    holder = Reserver.options(memory=60 * MiB).remote()
    assert ray.get(holder.ready.remote())
    assert ray.available_resources()["memory"] == 40 * MiB
    # the rest of the node's memory cannot hold a second one: it waits until the first is gone
    waiting = where.options(memory=60 * MiB).remote()
    assert ray.wait([waiting], timeout=0.3)[0] == []
    ray.kill(holder)
    assert ray.get(waiting, timeout=10)


def test_memory_is_there_by_default(cluster):
    cluster(num_cpus=1)
    assert ray.cluster_resources()["memory"] > 0


def test_accelerator_type_needs_a_node_with_that_accelerator(cluster, capsys):
    cluster(num_cpus=1)
    ref = assigned.options(accelerator_type="A100").remote()
    assert ray.wait([ref], timeout=0.3)[0] == []
    assert "accelerator_type:A100" in capsys.readouterr().err  # the infeasible warning names it
    testing.add_node(num_cpus=1, resources={"accelerator_type:A100": 1})
    assert ray.get(ref, timeout=10) == {"CPU": 1.0, "accelerator_type:A100": 0.001}


def test_label_selector_picks_the_nodes_whose_labels_match(cluster):
    cluster(num_cpus=1, labels={"zone": "a"})
    first = ray.get_runtime_context().get_node_id()
    second = testing.add_node(num_cpus=1, labels={"zone": "b", "disk": "ssd"})
    assert ray.get(where.options(label_selector={"zone": "b"}).remote()) == second
    assert ray.get(where.options(label_selector={"zone": "!b"}).remote()) == first
    assert ray.get(where.options(label_selector={"zone": "in(b, c)"}).remote()) == second
    assert ray.get(where.options(label_selector={"disk": "!in(ssd)"}).remote()) == first  # (no label: matches)
    assert ray.get(where.options(label_selector={"ray.io/node-id": first}).remote()) == first
    actor = Reserver.options(label_selector={"disk": "ssd"}).remote()
    assert ray.get(actor.ready.remote())


def test_a_selector_no_node_matches_waits_without_holding_up_others(cluster):
    cluster(num_cpus=1)
    pending = where.options(label_selector={"zone": "c"}).remote()
    assert ray.wait([pending], timeout=0.3)[0] == []
    assert ray.get(where.remote())  # other tasks are not stuck behind it
    added = testing.add_node(num_cpus=1, labels={"zone": "c"})
    assert ray.get(pending, timeout=10) == added


@pytest.mark.parametrize("selector, error", [
    ("zone=a", TypeError),
    ({"r!a!y.io/zone": "a"}, ValueError),
    ({"zone": "??"}, ValueError),
    ({"zone": "matches(a)"}, ValueError),
    ({"zone": "in(a,, b)"}, ValueError),
    ({"zone": "in(a, b"}, ValueError),
])
def test_bad_label_selectors_are_refused(selector, error):
    with pytest.raises(error):
        where.options(label_selector=selector)


def test_object_store_memory_reserves_nothing_so_tasks_refuse_it_and_actors_warn():
    with pytest.raises(ValueError, match="not implemented for tasks"):
        where.options(object_store_memory=MiB)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Reserver.options(object_store_memory=MiB)
    assert any("doesn't actually reserve" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="'_labels'"):
        where.options(_labels={"a": "b"})


def test_rays_underscore_remote_spelling_takes_arguments_and_options(cluster):
    cluster(num_cpus=2, num_gpus=1, resources={"Custom": 1})

    @ray.remote
    def upto(n):
        return list(range(n))

    @ray.remote
    class Pair:
        def both(self, a, b=0):
            return a, b

    assert upto._remote([0], num_returns=0) is None
    assert ray.get(list(upto._remote(args=[2], num_returns=2))) == [0, 1]
    assert ray.get(assigned._remote(num_gpus=1, resources={"Custom": 1})) == {"CPU": 1.0, "GPU": 1.0, "Custom": 1.0}
    pair = Pair._remote(num_gpus=1)
    assert ray.get(list(pair.both._remote(args=["x"], kwargs={"b": 2}, num_returns=2))) == ["x", 2]


def test_an_actor_asking_for_any_resource_also_holds_a_cpu_for_life(cluster):
    cluster(num_cpus=2, num_gpus=1, resources={"slot": 1})
    plain = Reserver.remote()
    gpu_holder = Reserver.options(num_gpus=1).remote()
    slot_holder = Reserver.options(resources={"slot": 1}).remote()
    assert ray.get([a.ready.remote() for a in (plain, gpu_holder, slot_holder)]) == [True] * 3
    # as Ray: the plain one holds nothing, the other two one CPU each beside what they asked for
    assert ray.available_resources().get("CPU", 0.0) == 0.0

    @ray.remote(num_gpus=1)
    class Reports:
        def held(self):
            return ray.get_runtime_context().get_assigned_resources()

    ray.kill(gpu_holder)
    assert ray.get(Reports.remote().held.remote()) == {"CPU": 1.0, "GPU": 1.0}


def test_fractions_taken_and_given_back_leave_the_count_exact():
    # (the scheduler alone: no processes) these pieces used to leave 3.9999999999999996 or so
    from minicluster._private.head.scheduler import Scheduler

    scheduler = Scheduler()
    scheduler.add_node(b"n", {"CPU": 4.0, "Custom": 4.0})
    fractions = [0.1973, 0.4079, 0.6104, 0.1561, 0.0424, 0.8677, 0.3138, 0.9586]
    pieces = [{"CPU": f, "Custom": f} for f in fractions]
    for piece in pieces:
        scheduler.acquire(b"n", piece)
    for piece in pieces:  # (in the order they were taken, as tasks end)
        scheduler.release(b"n", piece)
    assert scheduler.nodes[b"n"].available == {"CPU": 4.0, "Custom": 4.0}


def test_fallback_strategy_is_tried_when_the_label_selector_matches_no_node(cluster):
    cluster(num_cpus=1, labels={"zone": "a"})
    first = ray.get_runtime_context().get_node_id()
    second = testing.add_node(num_cpus=1, labels={"zone": "b"})
    fallback = [{"label_selector": {"zone": "c"}}, {"label_selector": {"zone": "b"}}]
    assert ray.get(where.options(label_selector={"zone": "x"}, fallback_strategy=fallback).remote()) == second
    # the selector itself wins when some node matches it
    assert ray.get(where.options(label_selector={"zone": "a"}, fallback_strategy=fallback).remote()) == first
    actor = Reserver.options(label_selector={"zone": "x"}, fallback_strategy=fallback).remote()
    assert ray.get(actor.ready.remote())


@pytest.mark.parametrize("fallback, error", [
    ({"label_selector": {"zone": "a"}}, TypeError),
    (["zone=a"], ValueError),
    ([{}], ValueError),
    ([{"num_cpus": 1}], ValueError),
    ([{"label_selector": {"zone": "in(a"}}], ValueError),
])
def test_bad_fallback_strategies_are_refused(fallback, error):
    with pytest.raises(error):
        where.options(fallback_strategy=fallback)


def test_available_resources_leaves_out_what_is_all_taken_as_ray_does(cluster):
    from conftest import wait_for

    cluster(num_cpus=1, resources={"slot": 1})

    @ray.remote(num_cpus=1, resources={"slot": 1})
    class Holder:
        def ready(self):
            return True

    holder = Holder.remote()
    assert ray.get(holder.ready.remote())
    available = ray.available_resources()
    assert "CPU" not in available and "slot" not in available, available
    assert ray.cluster_resources()["CPU"] == 1.0 and ray.cluster_resources()["slot"] == 1.0
    ray.kill(holder)
    wait_for(lambda: ray.available_resources().get("slot") == 1.0, 10, "the slot to be free again")
    assert ray.available_resources()["CPU"] == 1.0
