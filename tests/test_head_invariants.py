"""The head's state machine and invariants (states.py, head_state.py, invariants.py).

Unit tests pin the transition tables: an illegal move raises at once, naming the
task (or actor) and both states. Scenario tests drive real faults - a worker
killed mid-task with retries left, a node killed so lineage rebuilds its
objects, an actor restarted, cancellation of pending, running and nested
tasks - and check `Head.validate_state()` while work is in flight and after it
settled (the `cluster` fixture checks it once more before shutting down).
"""

from __future__ import annotations

import os
import time
import typing

import numpy as np
import pytest
from conftest import on, runs, wait_for, wait_ready

import minicluster as ray
from minicluster import exceptions as rex
from minicluster import testing
from minicluster._private.client import context
from minicluster._private.common.ids import driver_task_id, new_task_id
from minicluster._private.common.task_spec import TaskSpec
from minicluster._private.head import states
from minicluster._private.head.actor_records import ActorRecord
from minicluster._private.head.task_records import TaskRecord

N = 200_000  # float64 elements: 1.6 MB, lives in one node's store (not inline)


def new_task(name: str = "f") -> TaskRecord:
    spec = TaskSpec(task_id=new_task_id(), name=name, func_name=f"mod.{name}", function_id=b"fn", args=b"",
                    arg_refs=(), borrowed=(), num_returns=1, resources={"CPU": 1.0}, max_retries=3,
                    retry_exceptions=False, max_calls=0, strategy=("DEFAULT",), parent_task_id=driver_task_id(),
                    owner=b"driver")
    return TaskRecord(spec, 3, b"n" * 28)


def validate() -> None:
    testing.validate_state()


# ---- the transition tables ----------------------------------------------------------------


def test_the_tables_are_closed_over_the_declared_states():
    declared = set(typing.get_args(states.TaskState))
    assert set(states.TASK_TRANSITIONS) == declared
    assert all(targets <= declared for targets in states.TASK_TRANSITIONS.values())
    assert set(states.STATES) == declared
    assert all(not states.TASK_TRANSITIONS[s] for s in states.TERMINAL)
    actor_states = set(typing.get_args(states.ActorState))
    assert set(states.ACTOR_TRANSITIONS) == actor_states
    assert all(targets <= actor_states for targets in states.ACTOR_TRANSITIONS.values())


def test_a_task_walks_its_usual_path_and_a_retry():
    task = new_task()
    for state in ("PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER", "RUNNING"):
        task.set_state(state)
        assert task.state == state and not task.finished
    task.fail_attempt("WORKER_DIED", "gone")
    task.new_attempt()
    assert (task.attempt, task.state, task.finished) == (1, "PENDING_ARGS_AVAIL", False)
    task.set_state("PENDING_NODE_ASSIGNMENT")
    task.set_state("SUBMITTED_TO_WORKER")
    task.set_state("RUNNING")
    task.close("FINISHED", None, None)
    assert task.finished and [a.state for a in task.attempts] == ["FAILED", "FINISHED"]


@pytest.mark.parametrize("path, illegal", [
    ((), "RUNNING"),  # not placed yet
    ((), "FINISHED"),  # only a running task finishes
    (("PENDING_NODE_ASSIGNMENT",), "PENDING_ARGS_AVAIL"),
    (("PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER", "RUNNING"), "SUBMITTED_TO_WORKER"),
])
def test_an_illegal_task_transition_raises_naming_task_and_states(path, illegal):
    task = new_task("victim")
    for state in path:
        task.set_state(state)
    before = task.state
    with pytest.raises(states.IllegalTransition) as info:
        if illegal in states.TERMINAL:
            task.close(illegal, None, None)
        else:
            task.set_state(illegal)
    assert isinstance(info.value, AssertionError)
    message = str(info.value)
    assert "victim" in message and task.spec.task_id.hex() in message
    assert f"{before} -> {illegal}" in message
    assert task.state == before  # nothing changed


def test_a_closed_task_cannot_close_again_nor_move_without_a_new_attempt():
    task = new_task()
    task.close("FAILED", "TASK_CANCELLED", "cancelled")
    with pytest.raises(states.IllegalTransition):
        task.close("FAILED", "TASK_CANCELLED", "again")
    with pytest.raises(states.IllegalTransition):
        task.set_state("PENDING_NODE_ASSIGNMENT")
    running = new_task()
    for state in ("PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER", "RUNNING"):
        running.set_state(state)
    with pytest.raises(states.IllegalTransition, match="RUNNING -> a new attempt"):
        running.new_attempt()


def test_an_illegal_actor_transition_raises():
    record = ActorRecord(b"a" * 16, {"class_name": "Counter", "max_restarts": 0}, new_task(), b"driver")
    with pytest.raises(states.IllegalTransition, match="Counter .*PENDING_CREATION -> RESTARTING"):
        record.set_state("RESTARTING")
    record.set_state("ALIVE")
    record.set_state("DEAD")
    with pytest.raises(states.IllegalTransition, match="DEAD -> ALIVE"):
        record.set_state("ALIVE")


def test_a_transition_check_is_cheap():
    task = new_task()
    start = time.perf_counter()
    for _ in range(10_000):
        task.attempts[-1].state = "PENDING_NODE_ASSIGNMENT"
        task.set_state("SUBMITTED_TO_WORKER")
    per_call = (time.perf_counter() - start) / 10_000
    assert per_call < 20e-6  # a few hundred ns normally; generous for a loaded machine


# ---- validate_state sees broken records -----------------------------------------------------


def test_validate_state_reports_a_corrupted_record(cluster):
    cluster(num_cpus=1)
    ref = ray.put("held")
    head = context.current().head
    validate()
    with head.lock:
        entry = head.objects.entries[ref.binary()]
        entry.borrowers = {b"w" * 28}  # a borrower that is no live worker
    try:
        with pytest.raises(testing.HeadStateError, match="borrowed by worker 777777777777, which is not alive"):
            head.validate_state()
    finally:
        with head.lock:
            entry.borrowers = None


# ---- fault scenarios ------------------------------------------------------------------------


@ray.remote
def tiny(i):
    return i


@ray.remote
def crash_until(path, crashes):
    with open(path, "a") as f:
        f.write("x\n")
    with open(path) as f:
        count = len(f.read().splitlines())
    if count <= crashes:
        os._exit(1)
    return count


@ray.remote
def nested(n):
    return sum(ray.get([tiny.remote(i) for i in range(n)]))


def test_invariants_hold_while_a_burst_runs_and_workers_crash_and_retry(cluster, tmp_path):
    cluster(num_nodes=2, num_cpus=2)
    crashing = [crash_until.options(max_retries=3).remote(str(tmp_path / f"c{i}"), 2) for i in range(4)]
    burst = [tiny.remote(i) for i in range(3000)]
    blocked = [nested.remote(20) for _ in range(4)]  # tasks blocked in get lend their CPUs
    deadline = time.monotonic() + 30
    while len(ray.wait(burst, num_returns=len(burst), timeout=0)[0]) < len(burst) and time.monotonic() < deadline:
        validate()  # mid-flight: pipelined, placed and waiting tasks everywhere
        time.sleep(0.01)
    assert ray.get(burst, timeout=30) == list(range(3000))
    assert ray.get(crashing, timeout=30) == [3, 3, 3, 3]
    assert ray.get(blocked, timeout=30) == [190] * 4
    validate()


def test_invariants_hold_after_retries_run_out(cluster, tmp_path):
    cluster(num_cpus=1)
    ref = crash_until.options(max_retries=1).remote(str(tmp_path / "c"), 5)
    with pytest.raises(rex.WorkerCrashedError):
        ray.get(ref, timeout=20)
    validate()


@ray.remote
def big(log, fill=1.0):
    with open(log, "a") as f:
        f.write(ray.get_runtime_context().get_node_id() + "\n")
    return np.full(N, fill)


@ray.remote
def plus(array, amount=1.0):
    return array + amount


def test_invariants_hold_through_a_node_death_and_lineage_rebuild(cluster, tmp_path):
    cluster(num_nodes=2)
    survivor, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    a = big.options(scheduling_strategy=on(victim, soft=True)).remote(log, 2.0)
    b = plus.options(scheduling_strategy=on(victim, soft=True)).remote(a)
    wait_ready([a, b])
    validate()
    testing.kill_node(victim)
    validate()  # a and b are LOST, their lineage kept, the dead node holds nothing
    assert float(ray.get(b, timeout=20)[0]) == 3.0
    assert runs(log) == [victim, survivor]
    validate()


@ray.remote
class Phoenix:
    def __init__(self, log):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")

    def ping(self, value=None):
        return value

    def exit(self):
        os._exit(1)


def test_invariants_hold_through_an_actor_restart_and_its_death(cluster, tmp_path):
    cluster(num_cpus=1)
    log = str(tmp_path / "log")
    actor = Phoenix.options(max_restarts=1, max_task_retries=0).remote(log)
    assert ray.get(actor.ping.remote(1), timeout=10) == 1
    validate()
    dying = actor.exit.remote()
    queued = [actor.ping.remote(i) for i in range(5)]  # wait for the restart, then run
    with pytest.raises(rex.ActorUnavailableError):
        ray.get(dying, timeout=10)
    validate()
    assert ray.get(queued, timeout=10) == list(range(5))
    validate()
    with pytest.raises(rex.RayActorError):
        ray.get(actor.exit.remote(), timeout=10)  # no restart left: dead for good
    wait_for(lambda: _actor_state(actor) == "DEAD", 10, "the actor to be DEAD")
    validate()
    with pytest.raises(rex.ActorDiedError):
        ray.get(actor.ping.remote(), timeout=10)
    validate()


def _actor_state(actor) -> str:
    head = context.current().head  # (the snapshot counts actors by state; this one's is wanted)
    with head.lock:
        return head.actors[actor._actor_id].state


@ray.remote
def sleeper(seconds, started=None):
    if started is not None:
        open(started, "w").close()  # its own code runs: a cancel now interrupts the sleep
    time.sleep(seconds)
    return "done"


@ray.remote
def parent_of_sleepers(n):
    refs = [sleeper.remote(30) for _ in range(n)]
    return ray.get(refs)


def test_invariants_hold_through_cancellation(cluster, tmp_path):
    cluster(num_cpus=1)
    started = str(tmp_path / "started")
    running = sleeper.remote(30, started)
    pending = [sleeper.remote(30) for _ in range(3)]
    wait_for(lambda: os.path.exists(started), 10, "the first task to run")
    validate()
    for ref in pending:
        ray.cancel(ref)
    validate()
    ray.cancel(running)  # interrupted in its sleep
    for ref in [running] + pending:
        with pytest.raises(rex.TaskCancelledError):
            ray.get(ref, timeout=10)
    validate()
    forced = sleeper.remote(30)
    wait_for(lambda: _head_state(forced) == "RUNNING", 10, "the forced task to run")
    ray.cancel(forced, force=True)
    with pytest.raises(rex.TaskCancelledError):
        ray.get(forced, timeout=10)
    validate()
    parent = parent_of_sleepers.remote(3)
    wait_for(lambda: _head_state(parent) == "RUNNING", 10, "the parent to run")
    wait_for(lambda: sum(t.name == "sleeper" for t in testing.snapshot().tasks) == 3, 10,
             "its children to be submitted")  # (one runs on the CPU it lends while blocked)
    validate()
    ray.cancel(parent, recursive=True)
    with pytest.raises(rex.TaskCancelledError):
        ray.get(parent, timeout=10)
    validate()


def _head_state(ref) -> str:
    task = testing.snapshot().task(ref)
    return task.state if task is not None else "closed"


@ray.remote
class Reader:
    def first(self, array):
        return float(array[0])


def test_an_actor_call_whose_argument_vanishes_before_it_is_read_waits_for_the_rebuild(cluster, tmp_path):
    """ARG_LOST for an actor call: it goes back to the front of its actor's queue (it used to hang)."""
    cluster(num_nodes=3)
    _, actor_node, victim = testing.live_nodes()
    log = str(tmp_path / "big")
    arg = big.options(scheduling_strategy=on(victim, soft=True)).remote(log, 7.0)
    wait_ready([arg])
    reader = Reader.options(scheduling_strategy=on(actor_node, soft=False)).remote()
    assert ray.get(reader.first.remote(1.0 * np.ones(2)), timeout=10) == 1.0
    plan = testing.FaultPlan(seed=1).delay("transfer", ms=(1500, 1500), task="Reader.first")
    with plan:
        ref = reader.first.remote(arg)  # its worker waits 1.5 s before copying `arg` from the victim
        wait_for(lambda: plan.journal.count("delay_transfer") == 1, 10, "the copy of `arg` to be delayed")
        testing.kill_node(victim)
        validate()
        assert ray.get(ref, timeout=20) == 7.0
    assert len(runs(log)) == 2  # rebuilt once, on a surviving node
    validate()
