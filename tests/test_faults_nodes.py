"""Planned node faults: power cuts after N tasks or when a task starts there, hangs (SIGSTOP) for a while."""

from __future__ import annotations

import time

import numpy as np
import pytest
from task_attempts import attempts

import minicluster as ray
from minicluster import testing
from minicluster.testing import FaultPlan
from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# These tests count the faults they planned: chaos from --minicluster-chaos=on would add more.
pytestmark = pytest.mark.minicluster(chaos=False)


@ray.remote(max_retries=3)
def block(seed):
    return np.full(100_000, seed)  # 800 kB: stored in its node's store, lost with the node


@ray.remote(max_retries=3)
def victim(x):
    return x


def on(node_id):
    return NodeAffinitySchedulingStrategy(node_id, soft=True)


@pytest.mark.minicluster(num_nodes=3, num_cpus=1)
def test_kill_node_after_n_tasks_finished_there(minicluster_cluster, fault_plan, fault_journal):
    target = minicluster_cluster.nodes[1]
    fault_plan.kill_node(1, after_tasks=3)
    refs = [block.options(scheduling_strategy=on(target)).remote(i) for i in range(3)]
    ray.wait(refs, num_returns=3)
    [event] = fault_journal.events("kill_node")
    assert (event.node, event.node_id) == ("node-1", target)
    assert event.detail == "after 3 tasks finished on it"
    assert target not in testing.live_nodes()
    assert not [n for n in ray.nodes() if n["NodeID"] == target][0]["Alive"]
    # Their results were stored only there: rebuilt elsewhere from lineage when needed.
    assert [int(a[0]) for a in ray.get(refs)] == [0, 1, 2]
    assert all(r.state == "FINISHED" for r in attempts("block") if r.attempt_number > 0)
    assert len(attempts("block")) == 6


@pytest.mark.minicluster(num_nodes=2, num_cpus=1)
def test_kill_node_when_a_task_starts_there(minicluster_cluster, fault_plan, fault_journal):
    target = minicluster_cluster.nodes[1]
    fault_plan.kill_node(target, when_task_starts="victim")
    assert ray.get(victim.options(scheduling_strategy=on(target)).remote(7)) == 7
    [event] = fault_journal.events()
    assert (event.kind, event.node_id, event.task, event.attempt, event.point) == (
        "kill_node", target, "victim", 0, "start")
    rows = attempts("victim")
    assert [(r.attempt_number, r.error_type) for r in rows] == [(0, "NODE_DIED"), (1, None)]
    assert "node node-1 died: killed by minicluster.testing" in rows[0].error_message
    assert rows[1].node_id == minicluster_cluster.head_node


@pytest.mark.minicluster(num_nodes=2, num_cpus=1)
def test_kill_node_wherever_a_task_starts(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.kill_node(when_task_starts="victim")
    assert ray.get(victim.options(scheduling_strategy=on(minicluster_cluster.nodes[1])).remote(1)) == 1
    assert fault_journal.events()[0].node == "node-1"


@ray.remote
def slow_step(x):
    return x


@pytest.mark.minicluster(num_nodes=2, num_cpus=1)
def test_stop_node_for_a_while_when_a_task_starts(minicluster_cluster, fault_plan, fault_journal):
    target = minicluster_cluster.nodes[1]
    fault_plan.stop_node(target, seconds=0.3, when_task_starts="slow_step")
    started = time.monotonic()
    assert ray.get(slow_step.options(scheduling_strategy=on(target)).remote(3)) == 3
    assert time.monotonic() - started >= 0.3
    assert [e.kind for e in fault_journal] == ["stop_node", "resume_node"]
    assert fault_journal.events()[1].elapsed_s - fault_journal.events()[0].elapsed_s >= 0.29
    assert target in testing.live_nodes()
    assert [r.state for r in attempts("slow_step")] == ["FINISHED"]  # a hang is not a failure


@pytest.mark.minicluster(num_nodes=2, num_cpus=1)
def test_stop_node_after_n_tasks_holds_its_objects_back(minicluster_cluster, fault_plan, fault_journal):
    target = minicluster_cluster.nodes[1]
    fault_plan.stop_node(1, seconds=0.3, after_tasks=1)
    ref = block.options(scheduling_strategy=on(target)).remote(5)
    started = time.monotonic()
    assert int(ray.get(ref)[0]) == 5  # its only copy is on the hung node: wait for it to resume
    assert time.monotonic() - started >= 0.2
    assert [e.kind for e in fault_journal] == ["stop_node", "resume_node"]


@pytest.mark.minicluster(num_nodes=4, num_cpus=1, chaos=False)
def test_random_node_is_seeded_and_never_the_drivers(minicluster_cluster, fault_plan):
    fault_plan.uninstall()  # one plan at a time: try others
    picks = {}
    for seed in range(12):
        for _ in range(2):
            plan = FaultPlan(seed=seed).kill_node("random", after_tasks=1000, optional=True)
            plan.install()
            node_id = plan.faults[0].node_id.hex()
            plan.uninstall()
            assert picks.setdefault(seed, node_id) == node_id  # same seed, same node
    assert minicluster_cluster.head_node not in picks.values()
    assert len(set(picks.values())) > 1  # different seeds spread over the other nodes


@pytest.mark.minicluster(num_nodes=3, num_cpus=1)
def test_chaos_kills_a_node(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.chaos(kill_node_every=4)
    assert ray.get([victim.remote(i) for i in range(20)]) == list(range(20))
    [event] = fault_journal.events("kill_node")
    assert event.node in ("node-1", "node-2")
    assert len(testing.live_nodes()) == 2
