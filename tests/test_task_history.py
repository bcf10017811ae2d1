"""The finished-task history (task_history.py): compact, bounded, and still complete for the state API.

Finished tasks are kept as compact entries, not TaskRecords: these tests pin that
every attempt's fields survive the copy, that the history stays bounded (oldest
out, their shared values freed), that it costs tens of bytes a task, and that a
task rebuilt from lineage after its entry was evicted still shows all its attempts.
"""

from __future__ import annotations

import os
import time
import tracemalloc

import numpy as np
import pytest

import minicluster as ray
from minicluster import testing
from minicluster._private.common.ids import driver_task_id, new_task_id
from minicluster._private.common.task_spec import TaskSpec
from minicluster._private.head import task_history
from minicluster._private.head.task_history import TaskHistory
from minicluster._private.head.task_records import TaskRecord
from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from minicluster.util.state import list_nodes, list_tasks, list_workers

NODE, WORKER, OTHER_WORKER = b"n" * 28, b"w" * 28, b"v" * 28
RESOURCES = {"CPU": 1.0}


def run(task: TaskRecord, worker: bytes) -> None:
    """Move a task's current attempt along its usual path to RUNNING on `worker` (states.py)."""
    task.set_state("PENDING_NODE_ASSIGNMENT")
    task.set_state("SUBMITTED_TO_WORKER", node_id=NODE)
    task.set_state("RUNNING", node_id=NODE, worker_id=worker)


def finished(name: str = "f", parent: bytes = driver_task_id(), attempts: int = 1, error: bool = False) -> TaskRecord:
    """A TaskRecord as the head leaves it when the task ends (after `attempts` attempts)."""
    spec = TaskSpec(task_id=new_task_id(), name=name, func_name=f"mod.{name}", function_id=b"fn", args=b"x" * 500,
                    arg_refs=(), borrowed=(), num_returns=1, resources=RESOURCES, max_retries=3,
                    retry_exceptions=False, max_calls=0, strategy=("DEFAULT",), parent_task_id=parent, owner=b"driver")
    task = TaskRecord(spec, 3, NODE)
    for number in range(attempts):
        if number:
            task.new_attempt()
        run(task, WORKER if number == 0 else OTHER_WORKER)
        task.record_times(time.time(), time.time())
        if number < attempts - 1:
            task.fail_attempt("WORKER_DIED", f"attempt {number} died")
    if error:
        task.close("FAILED", "TASK_EXECUTION_EXCEPTION", "ValueError: boom")
    else:
        task.close("FINISHED", None, None)
    return task


def test_an_entry_has_every_attempts_fields():
    history = TaskHistory(limit=10)
    tasks = [finished("plain"), finished("retried", attempts=2), finished("failed", error=True)]
    for task in tasks:
        task.history_entry = history.add(task)
    entries = list(history.entries())
    assert len(history) == 3 and [e.task_id for e in entries] == [t.spec.task_id for t in tasks]
    for entry, task in zip(entries, tasks):
        assert (entry.kind.name, entry.kind.func_name, entry.kind.task_type, entry.kind.actor_id) == (
            task.spec.name, task.spec.func_name, "NORMAL_TASK", None)
        assert entry.kind.resources == RESOURCES and entry.parent_task_id == task.spec.parent_task_id
        assert [tuple(a) for a in entry.attempts] == [
            (a.attempt_number, a.state, a.node_id, a.worker_id, a.error_type, a.error_message, a.creation_time,
             a.start_time, a.end_time) for a in task.attempts]
    assert [a.state for a in entries[1].attempts] == ["FAILED", "FINISHED"]
    assert entries[1].attempts[1].worker_id == OTHER_WORKER
    assert entries[2].attempts[0].error_message == "ValueError: boom"


def test_the_oldest_entries_go_first_and_take_their_shared_values_along():
    history = TaskHistory(limit=3)
    parents = [new_task_id() for _ in range(5)]
    tasks = [finished(f"f{i}", parent=parent) for i, parent in enumerate(parents)]
    for task in tasks:
        history.add(task)
    assert len(history) == 3
    assert [e.task_id for e in history.entries()] == [t.spec.task_id for t in tasks[2:]]
    # kinds, parents and placements of the two evicted tasks are gone from the shared table
    assert len(history._shared) == 3 + 3 + 1


def test_a_task_finishing_again_replaces_its_entry():
    history = TaskHistory(limit=3)
    task = finished("rebuilt")
    task.history_entry = history.add(task)
    others = [finished("other") for _ in range(2)]
    for other in others:
        history.add(other)
    task.new_attempt()  # rebuilt from lineage (recovery.py), then finished again
    run(task, OTHER_WORKER)
    task.close("FINISHED", None, None)
    history.drop(task.history_entry, task.spec.task_id)
    task.history_entry = history.add(task)
    entries = list(history.entries())
    assert [e.task_id for e in entries] == [o.spec.task_id for o in others] + [task.spec.task_id]
    assert [(a.attempt_number, a.worker_id) for a in entries[-1].attempts] == [(0, WORKER), (1, OTHER_WORKER)]
    assert list(history.entries(skip={task.spec.task_id: task})) == entries[:2]


def test_a_finished_task_costs_tens_of_bytes():
    """100,000 finished tasks (the limit) must cost well under 20 MB: under 100 bytes each."""
    count = 20_000
    history = TaskHistory(limit=count)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(count):
            history.add(finished())
        per_task = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert len(history) == count
    assert per_task < 100, f"{per_task:.0f} bytes per finished task"


# ---- through the state API, in a session ------------------------------------------------------


@ray.remote
def ok(x: int) -> int:
    return x


@ray.remote
def bad() -> None:
    raise ValueError("boom")


@ray.remote(max_retries=1)
def crash_once(marker: str) -> str:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return "second time lucky"


@ray.remote
def big() -> np.ndarray:
    return np.full(200_000, 7.0)  # 1.6 MB: lives in one node's store, so it is lost with the node


def test_after_many_finished_tasks_the_state_api_shows_each_attempts_fields(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(task_history, "HISTORY_LIMIT", 1000)
    cluster(num_cpus=2)
    assert ray.get([ok.remote(i) for i in range(1500)]) == list(range(1500))
    assert ray.get(crash_once.remote(str(tmp_path / "crashed"))) == "second time lucky"
    with pytest.raises(ValueError):
        ray.get(bad.remote())

    rows = list_tasks(detail=True, limit=10_000)
    assert len({row.task_id for row in rows}) == 1000  # the newest 1000 finished tasks
    node_ids = {n.node_id for n in list_nodes()}
    worker_ids = {w.worker_id for w in list_workers()}
    for row in rows:
        assert row.node_id in node_ids and row.worker_id in worker_ids and row.worker_pid > 0
        assert row.creation_time_ms <= row.start_time_ms <= row.end_time_ms
        assert row.required_resources == {"CPU": 1.0} and row.type == "NORMAL_TASK"
        assert row.func_or_class_name == row.name
    crashed = [r for r in rows if r.name == "crash_once"]
    assert [(r.attempt_number, r.state, r.error_type) for r in crashed] == [
        (0, "FAILED", "WORKER_DIED"), (1, "FINISHED", None)]
    assert crashed[0].worker_id != crashed[1].worker_id
    failed = [r for r in rows if r.name == "bad"]
    assert [(r.state, r.error_type) for r in failed] == [("FAILED", "TASK_EXECUTION_EXCEPTION")]
    assert "ValueError: boom" in failed[0].error_message
    assert sum(1 for r in rows if r.name == "ok" and r.state == "FINISHED") == 1000 - 2


@pytest.mark.parametrize("later_tasks", [0, 100], ids=["entry-kept", "entry-evicted"])
def test_an_old_task_with_kept_lineage_is_rebuilt_and_shows_all_its_attempts(cluster, monkeypatch, later_tasks):
    """Its history entry may be long gone; lineage kept its full spec, so it re-runs."""
    monkeypatch.setattr(task_history, "HISTORY_LIMIT", 50)
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    ref = big.options(scheduling_strategy=NodeAffinitySchedulingStrategy(victim, soft=True)).remote()
    assert len(ray.wait([ref], timeout=10)[0]) == 1  # (wait does not copy it to the driver's node)
    assert ray.get([ok.remote(i) for i in range(later_tasks)]) == list(range(later_tasks))
    testing.kill_node(victim)
    assert ray.get(ref, timeout=10)[0] == 7.0
    rows = list_tasks(filters=[("name", "=", "big")], detail=True)
    assert [(r.attempt_number, r.state, r.node_id) for r in rows] == [
        (0, "FINISHED", victim), (1, "FINISHED", survivor)]
