"""The FaultPlan API: clear errors for bad plans, install rules, unfired faults, seeds, the journal."""

from __future__ import annotations

import json
import os

import pytest

import minicluster as ray
from minicluster import testing
from minicluster.testing import FaultPlan, UnfiredFaultsError


@ray.remote
def noop(x):
    return x


@pytest.mark.parametrize("build,error,message", [
    (lambda p: p.kill_worker("f", attempt=-1), ValueError, "attempt numbers are ints >= 0"),
    (lambda p: p.kill_worker("f", at="later"), ValueError, "unknown point; points are: load_args, start"),
    (lambda p: p.kill_worker("f", nth=0), ValueError, "nth=0"),
    (lambda p: p.kill_worker("", attempt=0), ValueError, "task name is empty"),
    (lambda p: p.kill_worker(42), TypeError, "give a task name or a remote function"),
    (lambda p: p.raise_in_task("f", "oops"), TypeError, "must be an exception"),
    (lambda p: p.raise_in_task("f", ValueError, attempts=[0, -2]), ValueError, "got -2"),
    (lambda p: p.raise_in_task("f", ValueError, attempts="some"), ValueError, "attempts must be"),
    (lambda p: p.kill_node(1), ValueError, "exactly one trigger"),
    (lambda p: p.kill_node(1, after_tasks=2, when_task_starts="f"), ValueError, "exactly one trigger"),
    (lambda p: p.kill_node(None, after_tasks=2), ValueError, "name it"),
    (lambda p: p.kill_node(-1, after_tasks=2), ValueError, "indexes start at 0"),
    (lambda p: p.kill_node(1, after_tasks=0), ValueError, "after_tasks=0"),
    (lambda p: p.stop_node(1, seconds=0, after_tasks=1), ValueError, "seconds > 0"),
    (lambda p: p.kill_actor(3.5), TypeError, "name, class name or handle"),
    (lambda p: p.kill_actor("a", call=0), ValueError, "call=0"),
    (lambda p: p.delay("network", ms=(1, 2)), ValueError, "channels are: dispatch, result, transfer"),
    (lambda p: p.delay("dispatch", ms=(5, 1)), ValueError, "0 <= low <= high"),
    (lambda p: p.delay("dispatch", ms=5), ValueError, "pair"),
    (lambda p: p.chaos(), ValueError, "kill_worker_every and/or kill_node_every"),
    (lambda p: p.chaos(kill_worker_every=0), ValueError, "kill_worker_every=0"),
    (lambda p: p.chaos(kill_worker_every=5, points=["nowhere"]), ValueError, "unknown point"),
])
def test_bad_plans_fail_when_built(build, error, message):
    plan = FaultPlan(seed=1)
    with pytest.raises(error, match=message):
        build(plan)
    assert plan.faults == []


def test_unpicklable_exception_is_refused():
    import threading

    class Holding(Exception):
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()

    with pytest.raises(ValueError, match="cannot be pickled"):
        FaultPlan(seed=1).raise_in_task("f", Holding())


def test_seed_must_be_an_int():
    with pytest.raises(TypeError, match="must be an int"):
        FaultPlan(seed="7")


def test_seed_from_environment(monkeypatch):
    monkeypatch.setenv(testing.SEED_ENV, "4242")
    assert FaultPlan().seed == 4242
    monkeypatch.setenv(testing.SEED_ENV, "forty")
    with pytest.raises(ValueError, match="MINICLUSTER_TEST_SEED='forty' is not an integer"):
        FaultPlan()


def test_install_needs_a_session():
    with pytest.raises(RuntimeError, match="call init"):
        FaultPlan(seed=1).install()


def test_unknown_nodes_are_named_at_install(cluster):
    cluster(num_nodes=2)
    for node, message in [(5, "no node with index 5"), ("abcd", "no node 'abcd'")]:
        plan = FaultPlan(seed=1).kill_node(node, after_tasks=1)
        with pytest.raises(ValueError, match=message) as info:
            plan.install()
        assert "node-0" in str(info.value) and "node-1" in str(info.value)
    assert not testing.snapshot().fault_plan_installed  # nothing half-installed


def test_random_node_needs_another_node(cluster):
    cluster(num_nodes=1)
    with pytest.raises(ValueError, match="other than the driver's"):
        FaultPlan(seed=1).kill_node("random", after_tasks=1).install()


def test_one_plan_at_a_time_and_clean_uninstall(cluster):
    cluster(num_nodes=1)
    assert not testing.snapshot().fault_plan_installed  # no plan: the runtime's hooks are off
    plan = FaultPlan(seed=1).install()
    assert testing.snapshot().fault_plan_installed
    with pytest.raises(RuntimeError, match="another fault plan is installed"):
        FaultPlan(seed=2).install()
    with pytest.raises(RuntimeError, match="installed already"):
        plan.install()
    plan.uninstall()
    plan.uninstall()
    assert not testing.snapshot().fault_plan_installed


def test_unfired_faults_fail_unless_optional(cluster):
    cluster(num_nodes=1)
    plan = FaultPlan(seed=9).kill_worker("never_runs").kill_worker("also_never", optional=True)
    with pytest.raises(UnfiredFaultsError, match=r"1 planned fault\(s\) never fired \(seed 9\)") as info:
        with plan:
            ray.get(noop.remote(1))
    assert "#1 kill_worker(task='never_runs'" in str(info.value)
    assert "also_never" not in str(info.value)


def test_faults_added_while_installed_take_effect(cluster):
    cluster(num_nodes=1)
    plan = FaultPlan(seed=1)
    with plan:
        ray.get(noop.remote(0))
        plan.kill_worker("noop")
        assert ray.get(noop.options(max_retries=1).remote(1)) == 1
    assert [f.fault_id for f in plan.faults] == [1]
    assert plan.journal.count("kill_worker") == 1


def test_journal_queries_and_file(cluster):
    cluster(num_nodes=1)
    plan = FaultPlan(seed=1).kill_worker("noop")
    with plan:
        ray.get(noop.options(max_retries=1).remote(1))
    assert plan.journal.count() == 1 and len(plan.journal.events(task="noop", node="node-0")) == 1
    with pytest.raises(ValueError, match="unknown fault event kind 'explode'"):
        plan.journal.events(kind="explode")
    [trace] = plan.journal.trace_events()
    assert trace["ph"] == "i" and trace["name"] == "injected kill_worker"
    logs = testing.snapshot().logs_dir
    with open(os.path.join(logs, "faults.jsonl")) as f:
        [line] = [json.loads(x) for x in f]
    assert line["kind"] == "kill_worker" and line["task"] == "noop"
    assert "fired 1x" in plan.describe()


@ray.remote(max_retries=1)
def wait_for_file(path):
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.005)
    return "done"


def test_order_of_an_uninstalled_plan_still_fires_but_is_not_journalled(cluster, tmp_path):
    from conftest import wait_for

    cluster(num_nodes=1)
    first = FaultPlan(seed=1).kill_worker("wait_for_file", at="before_store").install()
    marker = tmp_path / "go"
    ref = wait_for_file.remote(str(marker))
    wait_for(lambda: testing.worker_pids() and _running(ref), what="the task to run")
    first.uninstall()
    with FaultPlan(seed=2) as second:
        marker.touch()
        assert ray.get(ref) == "done"  # the order it carried killed it once; the retry went through
    assert len(first.journal) == 0 and len(second.journal) == 0


def _running(ref):
    task = testing.snapshot().task(ref)
    return task is not None and task.state == "RUNNING"


def test_uninstall_sends_held_tasks(cluster):
    import time

    cluster(num_nodes=1)
    plan = FaultPlan(seed=1).delay("dispatch", ms=(20_000, 20_000)).install()
    ref = noop.remote(1)
    from conftest import wait_for

    wait_for(lambda: plan.journal.count("delay_dispatch") == 1, what="the dispatch to be held")
    started = time.monotonic()
    plan.uninstall()
    assert ray.get(ref, timeout=5) == 1 and time.monotonic() - started < 5


def test_uninstall_resumes_stopped_nodes(cluster):
    from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster(num_nodes=2)
    node1 = testing.live_nodes()[1]
    on_node1 = noop.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node1, soft=False))
    plan = FaultPlan(seed=1).stop_node(1, seconds=30, after_tasks=1).install()
    assert ray.get(on_node1.remote(1)) == 1
    assert [n["Stopped"] for n in ray.nodes()] == [False, True]
    plan.uninstall()
    assert [n["Stopped"] for n in ray.nodes()] == [False, False]
    assert ray.get(on_node1.remote(2), timeout=5) == 2
    assert [e.kind for e in plan.journal] == ["stop_node", "resume_node"]
