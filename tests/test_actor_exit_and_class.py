"""An actor ending itself (`minicluster.actor.exit_actor()`, `handle.__ray_terminate__`), the
built-in `__ray_ready__`, get_if_exists from many threads at once, and what an ActorClass
exposes of the user's class (Ray's rules for each).
"""

from __future__ import annotations

import atexit
import os
import threading

import pytest
from conftest import wait_for

import minicluster as ray
from minicluster import exceptions as rex
from minicluster.actor import ActorClassInheritanceException, exit_actor


@ray.remote(max_restarts=3)
class Quitter:
    def __init__(self, marker=None):
        if marker is not None:
            atexit.register(lambda: open(marker, "w").close())

    def pid(self):
        return os.getpid()

    def quit(self, swallow=False):
        if swallow:
            try:
                exit_actor()
            except SystemExit:
                return "swallowed"
        exit_actor()
        return "never"


def test_exit_actor_ends_the_actor_without_restart_and_runs_its_atexit_handlers(cluster, tmp_path):
    cluster(num_cpus=2)
    marker = str(tmp_path / "atexit-ran")
    actor = Quitter.remote(marker)
    assert ray.get(actor.__ray_ready__.remote()) is True
    first = actor.quit.remote()
    queued = actor.pid.remote()
    with pytest.raises(rex.ActorDiedError, match="exit_actor"):
        ray.get(first, timeout=10)
    with pytest.raises(rex.ActorDiedError):
        ray.get(queued, timeout=10)
    with pytest.raises(rex.ActorDiedError):  # max_restarts=3, yet it stays dead
        ray.get(actor.pid.remote(), timeout=10)
    wait_for(lambda: os.path.exists(marker), what="the actor's atexit handler")


def test_exit_actor_still_ends_the_actor_when_its_code_catches_the_exception(cluster):
    cluster(num_cpus=2)
    actor = Quitter.remote()
    with pytest.raises(rex.ActorDiedError):
        ray.get(actor.quit.remote(swallow=True), timeout=10)


def test_exit_actor_outside_an_actor_raises_type_error(cluster):
    cluster(num_cpus=1)
    with pytest.raises(TypeError, match="non-actor"):
        exit_actor()

    @ray.remote
    def task():
        exit_actor()

    with pytest.raises(TypeError, match="non-actor"):
        ray.get(task.remote(), timeout=10)


def test_ray_terminate_runs_after_the_calls_before_it_then_ends_the_actor(cluster, tmp_path):
    cluster(num_cpus=2)
    marker = str(tmp_path / "atexit-ran")
    actor = Quitter.remote(marker)
    before = actor.pid.remote()
    ended = actor.__ray_terminate__.remote()
    pid = ray.get(before, timeout=10)
    ray.wait([ended], timeout=10)
    wait_for(lambda: os.path.exists(marker), what="the actor's atexit handler")
    with pytest.raises(rex.ActorDiedError):
        ray.get(actor.pid.remote(), timeout=10)
    assert pid > 0


def test_get_if_exists_from_many_threads_at_once_gives_one_actor(cluster):
    cluster(num_cpus=2)
    handles = []
    start = threading.Barrier(8)

    def get_or_create():
        start.wait()
        handles.append(Quitter.options(name="one", get_if_exists=True).remote())

    threads = [threading.Thread(target=get_or_create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(handles) == 8
    assert len({h._actor_id for h in handles}) == 1
    assert len(set(ray.get([h.pid.remote() for h in handles], timeout=10))) == 1


def test_get_if_exists_from_many_tasks_at_once_gives_one_actor(cluster):
    cluster(num_nodes=2, num_cpus=2)

    @ray.remote
    def get_or_create():
        handle = Quitter.options(name="shared", get_if_exists=True, lifetime="detached").remote()
        return ray.get(handle.pid.remote())

    assert len(set(ray.get([get_or_create.remote() for _ in range(8)], timeout=30))) == 1
    ray.kill(ray.get_actor("shared"))


class Grandparent:
    LEVEL = "grandparent"

    @staticmethod
    def static_one():
        return 1


class Parent(Grandparent):
    PARENT = 6


@ray.remote
class Child(Parent):
    OWN = 3

    def __init__(self, value=0):
        self.value = value

    @classmethod
    def build(cls, value):
        return cls(value)

    @staticmethod
    def static_two():
        return 2

    def sums(self):
        return Child.OWN + Child.PARENT + Child.static_one() + Child.static_two() + self.value

    def get(self):
        return self.value


def test_the_actor_class_exposes_attributes_static_and_class_methods_and_mro():
    assert (Child.OWN, Child.PARENT, Child.LEVEL) == (3, 6, "grandparent")
    assert Child.static_one() == 1 and Child.static_two() == 2
    local = Child.build(5)  # a class method calling cls(...) makes a plain local instance
    assert local.get() == 5
    assert Parent in type(Child).__mro__ and isinstance(Child, Grandparent)
    with pytest.raises(TypeError, match="remote"):
        Child()


def test_an_actor_class_cannot_be_subclassed_and_remote_needs_no_empty_parentheses():
    """Ray refuses `class D(SomeActorClass)` (ActorClassInheritanceException, a TypeError) and
    `@remote()` with empty parentheses; a user class with its own __new__ still builds local
    instances through it."""
    with pytest.raises(ActorClassInheritanceException, match="Inheriting from actor classes is not currently"):

        class Derived(Child):  # noqa: F841
            pass

    with pytest.raises(TypeError, match="no parentheses"):
        ray.remote()

    @ray.remote
    class OwnNew:
        def __new__(cls, *args):
            made = super().__new__(cls)
            made.via_new = True
            return made

        def __init__(self, value=1):
            self.value = value

        @classmethod
        def build(cls, value):
            return cls(value)

    local = OwnNew.build(5)
    assert (local.via_new, local.value) == (True, 5)


def test_ray_call_runs_the_given_function_on_the_actors_instance(cluster):
    """Ray's built-in `handle.__ray_call__.remote(fn, *args, **kwargs)`: fn(instance, ...), in
    the actor's process and in its call order; sync and async actors alike."""
    cluster(num_cpus=1)

    @ray.remote
    class Plain:
        def __init__(self):
            self.value = 3

    @ray.remote
    class Async:
        def __init__(self):
            self.value = 4

        async def ping(self):
            return "pong"

    for actor, value in ((Plain.remote(), 3), (Async.remote(), 4)):
        assert ray.get(actor.__ray_call__.remote(lambda self: (self.value, os.getpid())), timeout=10)[1] != os.getpid()
        assert ray.get(actor.__ray_call__.remote(lambda self, x: self.value * x, x=2), timeout=10) == value * 2
        with pytest.raises(TypeError):
            actor.__ray_call__()


def test_methods_reach_the_class_attributes_through_the_actor_class(cluster):
    cluster(num_cpus=1)
    assert ray.get(Child.remote(10).sums.remote(), timeout=10) == 3 + 6 + 1 + 2 + 10


def test_exit_actor_from_a_background_asyncio_task_ends_the_actor(cluster, tmp_path):
    cluster(num_cpus=2)
    marker = str(tmp_path / "atexit-ran")

    @ray.remote
    class Background:
        def __init__(self, marker):
            atexit.register(lambda: open(marker, "w").close())

        async def start(self):
            import asyncio

            async def later():
                await asyncio.sleep(0.05)
                exit_actor()

            self.task = asyncio.get_running_loop().create_task(later())
            return "started"

        async def ping(self):
            return "pong"

    actor = Background.remote(marker)
    assert ray.get(actor.start.remote(), timeout=10) == "started"
    wait_for(lambda: os.path.exists(marker), what="the actor's atexit handler")
    with pytest.raises(rex.ActorDiedError):
        ray.get(actor.ping.remote(), timeout=10)


def test_async_actor_constructor_runs_on_the_actors_event_loop(cluster, tmp_path):
    """Ray runs an async actor's __init__ on its event loop: it may start asyncio tasks, and one
    of them calling exit_actor() ends the actor (its atexit handlers run, nothing after it)."""
    cluster(num_cpus=2)
    marker, after = str(tmp_path / "atexit-ran"), str(tmp_path / "after-exit")

    @ray.remote
    class StartsTasks:
        def __init__(self, leave: bool):
            import asyncio

            atexit.register(lambda: open(marker, "w").close())
            self.greeting = asyncio.get_running_loop().create_future()
            asyncio.create_task(self.leave() if leave else self.greet())

        async def greet(self):
            self.greeting.set_result("hello from a task of __init__")

        async def leave(self):
            exit_actor()
            open(after, "w").close()

        async def hello(self):
            return await self.greeting

    assert ray.get(StartsTasks.remote(False).hello.remote(), timeout=10) == "hello from a task of __init__"
    leaving = StartsTasks.remote(True)
    wait_for(lambda: os.path.exists(marker), what="the actor's atexit handler")
    with pytest.raises(rex.ActorDiedError):
        ray.get(leaving.hello.remote(), timeout=10)
    assert not os.path.exists(after)


def test_kill_before_the_constructor_ran_says_it_was_killed(cluster):
    cluster(num_cpus=1)
    actor = Quitter.remote()
    ray.kill(actor)
    with pytest.raises(rex.ActorDiedError, match="killed by `ray.kill`"):
        ray.get(actor.pid.remote(), timeout=10)
