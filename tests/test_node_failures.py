"""Whole-node failures ("machine crashes"): detection, retries elsewhere, affinity to dead nodes.

A virtual node is a node manager plus its forked workers in one process group;
`testing.kill_node` SIGKILLs that group and deletes the node's store folder.
Every test here kills real processes and checks what the rest of the cluster sees.

Tasks that must be "running on node X when X dies" block on a gate file in
tmp_path: they write `<started>` (with their node id) and then wait until the
test creates `<release>` (or their node is killed).
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import psutil
import pytest
from conftest import count_lines, on, wait_for

import minicluster as ray
from minicluster import exceptions as rex
from minicluster import testing
from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def node_info(node: str) -> dict:
    return next(n for n in ray.nodes() if n["NodeID"] == node)


@ray.remote
def where_am_i():
    return ray.get_runtime_context().get_node_id()


@ray.remote
def gated(log, release, value=None):
    """Log (node id, pid) of this attempt, block until `release` exists, then return (node id, value)."""
    node = ray.get_runtime_context().get_node_id()
    with open(log, "a") as f:
        f.write(f"{node} {os.getpid()}\n")
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)
    return node, value


def started_on(log) -> list:
    try:
        with open(log) as f:
            return [line.split()[0] for line in f.read().splitlines()]
    except FileNotFoundError:
        return []


# ---- detection --------------------------------------------------------------------------------


def test_dead_node_shows_in_nodes_within_a_second(cluster):
    cluster(num_nodes=2)
    victim = testing.live_nodes()[1]
    assert node_info(victim)["Alive"] is True
    testing.kill_node(victim)
    start = time.monotonic()
    wait_for(lambda: node_info(victim)["Alive"] is False, timeout=1.0, what="ray.nodes() to show the node dead")
    assert time.monotonic() - start < 1.0
    info = node_info(victim)
    assert info["DeathReason"], "a dead node must carry a DeathReason"
    assert "kill" in info["DeathReason"].lower()
    # The survivor is untouched, and the dead node is still listed (Ray keeps dead nodes in nodes()).
    assert len(ray.nodes()) == 2
    assert node_info(testing.live_nodes()[0])["Alive"] is True
    assert victim not in testing.live_nodes()


def test_dead_node_processes_and_store_folder_are_gone(cluster):
    cluster(num_nodes=2)
    victim = testing.live_nodes()[1]
    info = node_info(victim)
    pids = [info["Pid"]] + testing.worker_pids(victim)
    assert all(_alive(p) for p in pids)
    store_dir = os.path.join(testing.snapshot().store_root, victim)
    assert os.path.isdir(store_dir)
    testing.kill_node(victim)
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=1.0, what="the node's processes to die")
    wait_for(lambda: not os.path.exists(store_dir), timeout=1.0, what="the dead node's store folder to go")


def test_node_manager_dying_alone_is_noticed_as_node_death(cluster):
    """Only the node manager is SIGKILLed (not via kill_node): the head notices its node is gone."""
    cluster(num_nodes=2)
    victim = testing.live_nodes()[1]
    worker_pids = testing.worker_pids(victim)
    os.kill(node_info(victim)["Pid"], signal.SIGKILL)
    wait_for(lambda: node_info(victim)["Alive"] is False, timeout=1.0, what="the node to be reported dead")
    assert node_info(victim)["DeathReason"]
    # Its workers do not outlive their node.
    wait_for(lambda: not any(_alive(p) for p in worker_pids), timeout=2.0, what="the node's workers to exit")
    # The rest of the cluster keeps working.
    assert ray.get(where_am_i.remote(), timeout=10) == testing.live_nodes()[0]


def test_node_killed_from_outside_is_noticed_and_cleaned_up(cluster):
    """SIGKILL to the node's whole process group from outside minicluster (a real power cut)."""
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    pids = [node_info(victim)["Pid"]] + testing.worker_pids(victim)
    store_dir = os.path.join(testing.snapshot().store_root, victim)
    os.killpg(node_info(victim)["Pid"], signal.SIGKILL)
    wait_for(lambda: node_info(victim)["Alive"] is False, timeout=1.0, what="the node to be reported dead")
    assert node_info(victim)["DeathReason"]
    assert victim not in testing.live_nodes()
    wait_for(lambda: not os.path.exists(store_dir), timeout=1.0, what="the dead node's store folder to go")
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=1.0, what="the node's processes to be gone")
    assert ray.get(where_am_i.remote(), timeout=10) == survivor


def test_cluster_resources_drop_the_dead_node(cluster):
    cluster(num_nodes=3)
    assert ray.cluster_resources()["CPU"] == 3
    victim = testing.live_nodes()[2]
    testing.kill_node(victim)
    wait_for(lambda: ray.cluster_resources().get("CPU") == 2, timeout=1.0, what="CPU total to drop to 2")
    assert f"node:{victim}" not in ray.cluster_resources()
    assert f"node:{victim}" not in ray.available_resources()


def test_kill_node_twice_is_harmless_and_bad_ids_are_refused(cluster):
    cluster(num_nodes=2)
    victim = testing.live_nodes()[1]
    testing.kill_node(victim)
    testing.kill_node(victim)  # already dead: nothing happens
    assert node_info(victim)["Alive"] is False
    with pytest.raises(ValueError):
        testing.kill_node("00" * 28)
    with pytest.raises(ValueError):
        testing.kill_node("not a node id")


def test_testing_helpers_describe_the_cluster(cluster):
    cluster(num_nodes=2)
    first, second = testing.live_nodes()
    assert [n["NodeID"] for n in ray.nodes()] == [first, second]
    assert ray.get(where_am_i.options(scheduling_strategy=on(second)).remote(), timeout=10) == second
    pids = testing.worker_pids(second)
    assert pids and set(pids) <= set(testing.worker_pids())
    assert not set(pids) & set(testing.worker_pids(first))
    with pytest.raises(ValueError):
        testing.kill_worker(os.getpid())  # not a worker of this session: refused, nothing killed
    testing.kill_worker(pids[0])
    wait_for(lambda: pids[0] not in testing.worker_pids(), timeout=2.0, what="the worker to be noticed dead")
    # The node replaces its worker and stays alive.
    assert ray.get(where_am_i.options(scheduling_strategy=on(second)).remote(), timeout=10) == second
    assert testing.live_nodes() == [first, second]


def test_survivors_keep_working_and_new_nodes_can_join(cluster):
    cluster(num_nodes=2)
    first, victim = testing.live_nodes()
    testing.kill_node(victim)
    assert ray.get([where_am_i.remote() for _ in range(10)], timeout=20) == [first] * 10
    fresh = testing.add_node(num_cpus=1)
    assert fresh in testing.live_nodes() and fresh != victim
    assert ray.get(where_am_i.options(scheduling_strategy=on(fresh)).remote(), timeout=10) == fresh
    assert ray.cluster_resources()["CPU"] == 2


def test_killing_the_drivers_node_moves_the_driver_to_a_live_node(cluster):
    """The head node dies; the driver keeps working (its puts go to the next live node)."""
    cluster(num_nodes=2)
    head, other = testing.live_nodes()
    testing.kill_node(head)
    ref = ray.put(np.arange(200_000))
    assert testing.object_locations(ref) == [other]
    assert ray.get(ref)[-1] == 199_999
    assert ray.get(where_am_i.remote(), timeout=10) == other


# ---- tasks on a dying node ---------------------------------------------------------------------


def test_running_task_is_retried_on_another_node(cluster, tmp_path):
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    ref = gated.options(scheduling_strategy=on(victim, soft=True)).remote(log, release, "v")
    wait_for(lambda: started_on(log) == [victim], timeout=10, what="the task to start on the victim")
    open(release, "w").close()  # the retry may finish at once; the first attempt dies first
    testing.kill_node(victim)
    node, value = ray.get(ref, timeout=10)
    assert (node, value) == (survivor, "v")
    # Either the first attempt had already finished before the kill, or it was retried on the survivor.
    assert started_on(log) in ([victim], [victim, survivor])


def test_running_task_is_retried_after_its_node_dies_before_finishing(cluster, tmp_path):
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    ref = gated.options(scheduling_strategy=on(victim, soft=True), max_retries=1).remote(log, release, 7)
    wait_for(lambda: started_on(log) == [victim], timeout=10, what="the task to start on the victim")
    testing.kill_node(victim)
    wait_for(lambda: len(started_on(log)) == 2, timeout=5, what="the retry to start")
    assert started_on(log) == [victim, survivor]
    open(release, "w").close()
    assert ray.get(ref, timeout=10) == (survivor, 7)


def test_exhausted_retries_raise_node_died_error_naming_the_node(cluster, tmp_path):
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    ref = gated.options(scheduling_strategy=on(victim, soft=True), max_retries=0).remote(log, release)
    wait_for(lambda: started_on(log) == [victim], timeout=10, what="the task to start on the victim")
    testing.kill_node(victim)
    start = time.monotonic()
    with pytest.raises(rex.NodeDiedError) as info:
        ray.get(ref, timeout=10)
    assert time.monotonic() - start < 2.0
    assert isinstance(info.value, rex.RayError)
    assert victim in str(info.value)
    assert started_on(log) == [victim]  # never retried


def test_task_on_a_node_killed_from_outside_fails_with_node_died_error(cluster, tmp_path):
    """Killed by a signal from outside (not kill_node): still a node death, not a worker crash."""
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    ref = gated.options(scheduling_strategy=on(victim, soft=True), max_retries=0).remote(log, release)
    wait_for(lambda: started_on(log) == [victim], timeout=10, what="the task to start on the victim")
    os.killpg(node_info(victim)["Pid"], signal.SIGKILL)
    with pytest.raises(rex.NodeDiedError) as info:
        ray.get(ref, timeout=10)
    assert victim in str(info.value)


def test_node_death_uses_up_retries_one_node_at_a_time(cluster, tmp_path):
    """max_retries=1: the first node death is retried, the second is final (NodeDiedError)."""
    cluster(num_nodes=1)
    a = testing.add_node(num_cpus=1, resources={"r": 1})
    b = testing.add_node(num_cpus=1, resources={"r": 1})
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    ref = gated.options(resources={"r": 1}, max_retries=1).remote(log, release)
    wait_for(lambda: len(started_on(log)) == 1, timeout=10, what="the first attempt")
    first = started_on(log)[0]
    assert first in (a, b)
    second_node = b if first == a else a
    testing.kill_node(first)
    wait_for(lambda: len(started_on(log)) == 2, timeout=5, what="the retry")
    assert started_on(log)[1] == second_node
    testing.kill_node(second_node)
    with pytest.raises(rex.NodeDiedError) as info:
        ray.get(ref, timeout=10)
    assert second_node in str(info.value)


def test_queued_tasks_on_a_dead_node_run_elsewhere(cluster, tmp_path):
    """Tasks placed on the node but still waiting for its only CPU are re-placed when it dies."""
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    running = gated.options(scheduling_strategy=on(victim, soft=True)).remote(log, release, 0)
    wait_for(lambda: started_on(log) == [victim], timeout=10, what="the first task to start")
    queued = [gated.options(scheduling_strategy=on(victim, soft=True)).remote(log, release, i) for i in (1, 2, 3)]
    assert ray.wait(queued, timeout=0.2)[0] == []  # the victim's single CPU is busy: they wait
    testing.kill_node(victim)
    open(release, "w").close()
    results = ray.get([running] + queued, timeout=20)
    assert results == [(survivor, i) for i in range(4)]
    assert started_on(log).count(victim) == 1  # only the first ever started there


@ray.remote
def tiny(i, log):
    with open(log, "a") as f:
        f.write(f"{i}\n")
    return i


@pytest.mark.parametrize("max_retries", [0, 3])
def test_many_tiny_tasks_on_a_dying_node(cluster, tmp_path, max_retries):
    """Tiny tasks are queued behind each other at a worker; only the one running when the node dies
    can fail (with max_retries=0), the rest run elsewhere without using a retry."""
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    log = str(tmp_path / "log")
    strategy = on(victim, soft=True)
    refs = [tiny.options(scheduling_strategy=strategy, max_retries=max_retries).remote(i, log) for i in range(300)]
    wait_for(lambda: count_lines(log) >= 50, timeout=10, what="some tasks to run")
    testing.kill_node(victim)
    failed = []
    for i, ref in enumerate(refs):
        try:
            assert ray.get(ref, timeout=10) == i
        except rex.NodeDiedError:
            failed.append(i)
    assert len(failed) <= (1 if max_retries == 0 else 0), failed


def test_task_submitted_by_a_task_survives_the_death_of_its_childs_node(cluster, tmp_path):
    """A nested task whose node dies is retried; the parent (on a live node) gets the result."""
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    log, release = str(tmp_path / "log"), str(tmp_path / "release")

    @ray.remote
    def parent(victim, log, release):
        child = gated.options(scheduling_strategy=NodeAffinitySchedulingStrategy(victim, soft=True)).remote(
            log, release, "child")
        return ray.get(child)

    ref = parent.options(scheduling_strategy=on(survivor)).remote(victim, log, release)
    wait_for(lambda: started_on(log) == [victim], timeout=10, what="the child to start on the victim")
    testing.kill_node(victim)
    wait_for(lambda: len(started_on(log)) == 2, timeout=5, what="the child's retry")
    open(release, "w").close()
    assert ray.get(ref, timeout=10) == (survivor, "child")


# ---- node affinity and dead nodes -------------------------------------------------------------


def test_hard_affinity_to_a_dead_node_is_unschedulable(cluster):
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    testing.kill_node(victim)
    start = time.monotonic()
    with pytest.raises(rex.TaskUnschedulableError) as info:
        ray.get(where_am_i.options(scheduling_strategy=on(victim, soft=False)).remote(), timeout=10)
    assert time.monotonic() - start < 2.0
    assert isinstance(info.value, rex.RayError)


def test_soft_affinity_to_a_dead_node_runs_elsewhere(cluster):
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    testing.kill_node(victim)
    assert ray.get(where_am_i.options(scheduling_strategy=on(victim, soft=True)).remote(), timeout=10) == survivor


def test_hard_affinity_task_running_when_its_node_dies_cannot_be_retried(cluster, tmp_path):
    """Its retry would have to run on the dead node: it fails instead of hanging."""
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    ref = gated.options(scheduling_strategy=on(victim, soft=False), max_retries=3).remote(log, release)
    wait_for(lambda: started_on(log) == [victim], timeout=10, what="the task to start on the victim")
    testing.kill_node(victim)
    with pytest.raises((rex.TaskUnschedulableError, rex.NodeDiedError)):
        ray.get(ref, timeout=10)
    assert started_on(log) == [victim]


def test_hard_affinity_task_queued_behind_a_busy_node_fails_when_the_node_dies(cluster, tmp_path):
    cluster(num_nodes=2)
    _, victim = testing.live_nodes()
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    blocker = gated.options(scheduling_strategy=on(victim, soft=True), max_retries=0).remote(log, release)
    wait_for(lambda: started_on(log) == [victim], timeout=10, what="the blocker to start")
    waiting = where_am_i.options(scheduling_strategy=on(victim, soft=False)).remote()
    assert ray.wait([waiting], timeout=0.2)[0] == []
    testing.kill_node(victim)
    with pytest.raises(rex.TaskUnschedulableError):
        ray.get(waiting, timeout=10)
    with pytest.raises(rex.NodeDiedError):
        ray.get(blocker, timeout=10)
