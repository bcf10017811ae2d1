"""Planned actor faults: the actor's process dies at its n-th call."""

from __future__ import annotations

import pytest
from task_attempts import attempts

import minicluster as ray
from minicluster.exceptions import ActorDiedError

# These tests count the faults they planned: chaos from --minicluster-chaos=on would add more.
pytestmark = pytest.mark.minicluster(chaos=False)


@ray.remote
class Counter:
    def __init__(self):
        self.count = 0

    def incr(self):
        self.count += 1
        return self.count

    def peek(self):
        return self.count


def test_kill_actor_at_nth_call_restarts_it(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.kill_actor("counter", call=3)
    counter = Counter.options(name="counter", max_restarts=1, max_task_retries=1).remote()
    assert [ray.get(counter.incr.remote()) for _ in range(4)] == [1, 2, 1, 2]  # state lost at the restart
    [event] = fault_journal.events()
    assert (event.kind, event.task, event.point) == ("kill_actor", "Counter.incr", "start")
    rows = attempts("Counter.incr")
    [failed] = [r for r in rows if r.state == "FAILED"]
    assert failed.error_type == "ACTOR_DIED"
    assert "[injected by minicluster.testing: kill_actor at start" in failed.error_message


def test_kill_actor_by_handle_and_method_without_restarts(minicluster_cluster, fault_plan, fault_journal):
    counter = Counter.remote()
    fault_plan.kill_actor(counter, call=2, method="incr")
    assert ray.get(counter.peek.remote()) == 0
    assert ray.get(counter.incr.remote()) == 1
    with pytest.raises(ActorDiedError, match="killed by SIGKILL"):
        ray.get(counter.incr.remote())
    assert fault_journal.count("kill_actor") == 1


def test_kill_actor_by_class_name_before_storing_the_result(minicluster_cluster, fault_plan, fault_journal):
    fault_plan.kill_actor("Counter", call=1, at="before_store")
    counter = Counter.options(max_restarts=1, max_task_retries=1).remote()
    assert ray.get(counter.incr.remote()) == 1  # ran, died before its result was stored, ran again
    assert fault_journal.events()[0].point == "before_store"
