"""Seeded delays per channel: task dispatch, result return, object transfer between nodes."""

from __future__ import annotations

import time

import numpy as np
import pytest

import minicluster as ray
from minicluster.testing import FaultPlan
from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# These tests count the faults they planned: chaos from --minicluster-chaos=on would add more.
pytestmark = pytest.mark.minicluster(chaos=False)


@ray.remote
def echo(x):
    return x


@ray.remote
def first(array):
    return float(array[0])


@ray.remote
def make(n):
    return np.arange(n, dtype=np.float64)


def timed(ref):
    started = time.monotonic()
    value = ray.get(ref)
    return value, time.monotonic() - started


@pytest.mark.parametrize("channel,kind", [("dispatch", "delay_dispatch"), ("result", "delay_result")])
def test_task_delays(minicluster_cluster, fault_plan, fault_journal, channel, kind):
    ray.get(echo.remote(0))  # warm
    fault_plan.delay(channel, ms=(60, 80))
    value, took = timed(echo.remote(1))
    assert value == 1 and took >= 0.06
    [event] = fault_journal.events()
    assert event.kind == kind and event.task == "echo"
    assert 60 <= float(event.detail.split()[0]) <= 80


def test_delay_only_for_one_task_name(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.delay("result", ms=(1, 2), task="first")
    ray.get([echo.remote(i) for i in range(5)])
    assert len(fault_journal) == 0
    ray.get(first.remote(np.ones(3)))
    assert fault_journal.count("delay_result") == 1


@pytest.mark.minicluster(num_nodes=2, num_cpus=1)
def test_transfer_delays_in_workers_and_driver(minicluster_cluster, fault_plan, fault_journal):
    node0, node1 = minicluster_cluster.nodes
    fault_plan.delay("transfer", ms=(40, 50))
    array = ray.put(np.ones(100_000))  # on the driver's node (node-0)
    ref = first.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node1, soft=False)).remote(array)
    assert ray.get(ref) == 1.0
    [worker_copy] = fault_journal.events("delay_transfer")
    assert worker_copy.node == "node-1" and worker_copy.task == "first" and array.hex() in worker_copy.detail
    made = make.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node1, soft=False)).remote(100_000)
    ray.wait([made])
    value, took = timed(made)  # the driver copies it to its node
    assert value[-1] == 99_999 and took >= 0.04
    driver_copy = fault_journal.events("delay_transfer")[-1]
    assert driver_copy.node == "node-0" and "(driver)" in driver_copy.detail


def run_with_delays(seed):
    plan = FaultPlan(seed=seed).delay("dispatch", ms=(0, 5)).delay("result", ms=(0, 5))
    with plan:
        for i in range(6):
            ray.get(echo.remote(i))  # one at a time: the same dispatches in the same order
    return [(e.kind, e.detail) for e in plan.journal]


def test_same_seed_same_delays(cluster):
    cluster(num_nodes=1)
    assert run_with_delays(3) == run_with_delays(3)
    assert run_with_delays(3) != run_with_delays(4)
