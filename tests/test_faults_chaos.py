"""Chaos: random worker kills at a rate counted in tasks, reproducible from the seed."""

from __future__ import annotations

import pytest
from task_attempts import attempts

import minicluster as ray
from minicluster.testing import FaultPlan

# These tests count the faults they planned: chaos from --minicluster-chaos=on would add more.
pytestmark = pytest.mark.minicluster(chaos=False)


@ray.remote(max_retries=-1)
def square(x):
    return x * x


def test_chaos_kills_workers_at_a_rate(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.chaos(kill_worker_every=10)
    assert ray.get([square.remote(i) for i in range(200)]) == [i * i for i in range(200)]
    kills = fault_journal.events("kill_worker")
    assert 10 <= len(kills) <= 40  # every 5 to 15 dispatches; retries are dispatches too
    assert {e.point for e in kills} <= {"load_args", "start", "before_store"}
    failed = [r for r in attempts("square") if r.state == "FAILED"]
    assert len(failed) == len(kills)
    assert all("[injected by minicluster.testing: chaos kill_worker" in r.error_message for r in failed)


def chaos_run(seed):
    """Tasks one at a time (a deterministic dispatch order): which ones chaos kills, where."""
    plan = FaultPlan(seed=seed).chaos(kill_worker_every=4)
    with plan:
        refs = []
        for i in range(30):
            refs.append(square.remote(i))
            assert ray.get(refs[-1]) == i * i
    index = {ref.task_id().hex(): i for i, ref in enumerate(refs)}
    return [(index[e.task_id], e.attempt, e.point) for e in plan.journal]


def test_same_seed_replays_the_same_faults(cluster):
    cluster(num_nodes=2)
    first = chaos_run(11)
    assert len(first) >= 3
    assert chaos_run(11) == first
    assert chaos_run(12) != first


def test_chaos_switched_off(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.chaos(kill_worker_every=1)
    fault_plan.chaos_enabled = False
    assert ray.get([square.remote(i) for i in range(10)]) == [i * i for i in range(10)]
    assert len(fault_journal) == 0  # chaos is optional: nothing fired, nothing failed


def test_chaos_leaves_actors_alone_unless_asked(minicluster_cluster, fault_plan, fault_journal):
    @ray.remote
    class Box:
        def get(self, x):
            return x

    fault_plan.chaos(kill_worker_every=1)
    box = Box.remote()
    assert ray.get([box.get.remote(i) for i in range(5)]) == list(range(5))
    assert len(fault_journal) == 0
