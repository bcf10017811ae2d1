"""Actor methods that raise, under `retry_exceptions` and `max_task_retries` (Ray's rules).

A call whose exception `retry_exceptions` covers runs again on the same actor, at most
`max_task_retries` more times; then its caller gets the user's exception. The method's own
options win over the class's. A retry spent on an exception is not given back when the
actor's process dies later: both kinds of retry share one budget.
"""

from __future__ import annotations

import os
import sys

import pytest

import minicluster as ray
from minicluster import exceptions as rex


class Flaky(Exception):
    pass


@ray.remote
class Tally:
    def __init__(self):
        self.n = 0

    def next(self):
        self.n += 1
        return self.n - 1

    def total(self):
        return self.n


@ray.remote(max_task_retries=2)
class Unreliable:
    @ray.method(max_task_retries=4, retry_exceptions=[Flaky])
    def fail_first(self, tally, failures):
        seen = ray.get(tally.next.remote())
        if seen < failures:
            raise Flaky(f"attempt {seen}")
        return seen

    @ray.method(retry_exceptions=True)
    def act(self, tally, actions):
        seen = ray.get(tally.next.remote())
        action = actions[seen] if seen < len(actions) else "return"
        if action == "raise":
            raise Flaky(f"attempt {seen}")
        if action == "exit":
            sys.exit(1)
        return seen

    def pid(self):
        return os.getpid()


def test_a_retried_method_succeeds_on_its_last_allowed_attempt(cluster):
    cluster()
    tally, actor = Tally.remote(), Unreliable.remote()
    assert ray.get(actor.fail_first.remote(tally, 4), timeout=30) == 4
    assert ray.get(tally.total.remote()) == 5


def test_a_method_out_of_retries_raises_the_users_exception_and_is_not_run_again(cluster):
    cluster()
    tally, actor = Tally.remote(), Unreliable.remote()
    with pytest.raises(Flaky):
        ray.get(actor.fail_first.remote(tally, 5), timeout=30)
    assert ray.get(tally.total.remote()) == 5  # the first run and its 4 retries


def test_retry_exceptions_false_in_options_runs_the_method_once(cluster):
    cluster()
    tally, actor = Tally.remote(), Unreliable.remote()
    with pytest.raises(Flaky):
        ray.get(actor.fail_first.options(retry_exceptions=False).remote(tally, 1), timeout=30)
    assert ray.get(tally.total.remote()) == 1


def test_max_task_retries_given_at_the_call_overrides_the_methods_and_the_classs(cluster):
    cluster()
    tally, actor = Tally.remote(), Unreliable.remote()
    assert ray.get(actor.fail_first.options(max_task_retries=7).remote(tally, 7), timeout=30) == 7
    with pytest.raises(Flaky):
        ray.get(actor.fail_first.options(max_task_retries=1).remote(tally, 100), timeout=30)
    assert ray.get(tally.total.remote()) == 8 + 2


def test_a_method_without_its_own_max_task_retries_takes_the_classs(cluster):
    cluster()
    tally, actor = Tally.remote(), Unreliable.remote()
    with pytest.raises(Flaky):
        ray.get(actor.act.remote(tally, ["raise"] * 10), timeout=30)
    assert ray.get(tally.total.remote()) == 3  # the class's max_task_retries=2


def test_exceptions_and_process_exits_share_one_retry_budget_and_exits_use_restarts(cluster):
    cluster()
    tally = Tally.remote()
    actor = Unreliable.options(max_restarts=1).remote()
    # raise (retry 1), exit (retry 2, restart 1), exit: no restart left, so the actor is dead
    with pytest.raises(rex.RayActorError):
        ray.get(actor.act.options(max_task_retries=5).remote(tally, ["raise", "exit", "exit"]), timeout=30)
    assert ray.get(tally.total.remote()) == 3


def test_later_calls_still_run_in_order_after_a_retried_one(cluster):
    cluster()
    tally, actor = Tally.remote(), Unreliable.remote()
    first = actor.fail_first.remote(tally, 2)
    after = [actor.pid.remote() for _ in range(3)]
    assert ray.get(first, timeout=30) == 2
    assert len(set(ray.get(after, timeout=30))) == 1
