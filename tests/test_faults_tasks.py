"""Planned faults aimed at tasks: worker kills at each point, attempts, nth task, application errors."""

from __future__ import annotations

import numpy as np
import pytest
from task_attempts import attempts

import minicluster as ray
from minicluster import testing
from minicluster.exceptions import RayTaskError, WorkerCrashedError

# These tests count the faults they planned: chaos from --minicluster-chaos=on would add more.
pytestmark = pytest.mark.minicluster(chaos=False)


@ray.remote(max_retries=2)
def double(x):
    return 2 * x


@ray.remote(max_retries=2)
def total(array):
    return float(array.sum())


@pytest.mark.parametrize("point", ["load_args", "start", "before_store"])
def test_kill_worker_at_each_point_is_retried(minicluster_cluster, fault_plan, fault_journal, point):
    fault_plan.kill_worker("double", attempt=0, at=point)
    assert ray.get(double.remote(21)) == 42
    [event] = fault_journal.events()
    assert (event.kind, event.task, event.attempt, event.point) == ("kill_worker", "double", 0, point)
    assert event.worker_pid and event.node in ("node-0", "node-1")
    rows = attempts("double")
    assert [(r.attempt_number, r.state, r.error_type) for r in rows] == [
        (0, "FAILED", "WORKER_DIED"), (1, "FINISHED", None)]
    assert "killed by SIGKILL" in rows[0].error_message
    assert f"[injected by minicluster.testing: kill_worker at {point}" in rows[0].error_message


def test_injected_faults_are_on_the_timeline(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.kill_worker("double", attempt=0, at="start")
    assert ray.get(double.remote(4)) == 8
    [fault] = fault_journal.events()
    events = ray.timeline()
    [instant] = [e for e in events if e.get("cat") == "fault"]
    assert instant["name"] == "injected kill_worker" and instant["ph"] == "i"
    assert instant["tid"] == fault.worker_pid and instant["args"]["task"] == "double"
    [failed] = [e for e in events if e.get("cat") == "task,failed"]
    assert failed["tid"] == fault.worker_pid and failed["pid"] == instant["pid"]  # on the killed worker's track
    assert "[injected by minicluster.testing" in failed["args"]["error_message"]


def test_kill_while_loading_a_stored_argument(minicluster_cluster, fault_plan, fault_journal):
    array = ray.put(np.ones(200_000))  # 1.6 MB: lives in the store, fetched by the worker
    fault_plan.kill_worker("total", attempt=0, at="load_args")
    assert ray.get(total.remote(array)) == 200_000.0
    assert fault_journal.count("kill_worker") == 1


def test_kill_every_attempt_exhausts_retries(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.kill_worker("double", attempt=None, at="before_store")
    with pytest.raises(WorkerCrashedError, match="killed by SIGKILL"):
        ray.get(double.remote(1))
    assert [e.attempt for e in fault_journal.events("kill_worker")] == [0, 1, 2]
    assert [r.error_type for r in attempts("double")] == ["WORKER_DIED"] * 3


def test_consecutive_attempts(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.kill_worker("double", attempt=0).kill_worker("double", attempt=1, at="before_store")
    assert ray.get(double.remote(5)) == 10
    assert [(e.attempt, e.point) for e in fault_journal] == [(0, "start"), (1, "before_store")]
    assert [r.state for r in attempts("double")] == ["FAILED", "FAILED", "FINISHED"]


@pytest.mark.minicluster(num_nodes=1, num_cpus=1)
def test_nth_task_of_a_name(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.kill_worker("double", nth=3)
    refs = [double.remote(i) for i in range(5)]
    assert ray.get(refs) == [0, 2, 4, 6, 8]
    [event] = fault_journal.events()
    assert event.task_id == refs[2].task_id().hex()


def test_every_task_of_a_name_and_by_function(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.kill_worker(double, nth=None)  # the remote function itself: every task running it
    assert ray.get([double.remote(i) for i in range(3)]) == [0, 2, 4]
    assert fault_journal.count("kill_worker") == 3
    assert {e.attempt for e in fault_journal} == {0}


class DiskHiccup(OSError):
    pass


@ray.remote(max_retries=3, retry_exceptions=[OSError])
def load(x):
    return x + 1


@ray.remote(max_retries=3)
def load_without_retry(x):
    return x + 1


def test_transient_application_error_is_retried(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.raise_in_task("load", DiskHiccup("transient"), attempts=[0, 1])
    assert ray.get(load.remote(1)) == 2
    assert [(e.kind, e.attempt) for e in fault_journal] == [("raise", 0), ("raise", 1)]
    rows = attempts("load")
    assert [(r.state, r.error_type) for r in rows] == [
        ("FAILED", "TASK_EXECUTION_EXCEPTION"), ("FAILED", "TASK_EXECUTION_EXCEPTION"), ("FINISHED", None)]
    assert "DiskHiccup: transient [injected by minicluster.testing: raise at start" in rows[0].error_message


def test_permanent_application_error_reaches_the_caller(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.raise_in_task("load", DiskHiccup("permanent"), attempts="all")
    with pytest.raises(DiskHiccup, match="permanent") as info:
        ray.get(load.remote(1))
    assert isinstance(info.value, RayTaskError)
    assert fault_journal.count("raise") == 4  # the first attempt and its 3 retries


def test_application_error_without_retry_exceptions_is_not_retried(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.raise_in_task("load_without_retry", ValueError, attempts="all")
    with pytest.raises(ValueError, match="injected by minicluster.testing"):
        ray.get(load_without_retry.remote(1))
    assert fault_journal.count("raise") == 1


@ray.remote
def wait_for_file(path):
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.005)
    return "done"


def test_kill_the_worker_running_a_task_on_demand(minicluster_cluster, tmp_path):
    marker = tmp_path / "go"
    ref = wait_for_file.options(max_retries=1).remote(str(marker))
    from conftest import wait_for

    pid = wait_for(lambda: _try_kill(ref), what="the task to be running")
    marker.touch()
    assert ray.get(ref) == "done"
    assert pid not in testing.worker_pids()
    assert [r.error_type for r in attempts("wait_for_file")][0] == "WORKER_DIED"


def _try_kill(ref):
    try:
        return testing.kill_worker_running(ref)
    except ValueError:
        return None


def test_kill_worker_running_refuses_a_finished_task(minicluster_cluster):
    ref = double.remote(1)
    ray.get(ref)
    with pytest.raises(ValueError, match="not running"):
        testing.kill_worker_running(ref)
