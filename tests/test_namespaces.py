"""Namespaces and actor names, as in Ray: each job's namespace (given, or its own anonymous
one), names that do not clash across namespaces, and how long a dead actor keeps its name."""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from conftest import wait_for

import minicluster as ray
from minicluster import exceptions as rex


@ray.remote
class Named:
    def pid(self):
        return os.getpid()

    def namespace(self):
        return ray.get_runtime_context().namespace


@ray.remote
def namespace_in_a_task():
    return ray.get_runtime_context().namespace


@ray.remote
def find(name, namespace=None):
    try:
        return ray.get(ray.get_actor(name, namespace=namespace).pid.remote())
    except ValueError:
        return None


def dead(handle) -> bool:
    try:
        ray.get(handle.pid.remote(), timeout=10)
    except rex.RayActorError:
        return True
    return False


def test_a_job_without_a_namespace_gets_its_own_anonymous_one(cluster):
    cluster(num_cpus=1)
    namespace = ray.get_runtime_context().namespace
    assert str(uuid.UUID(namespace)) == namespace  # a UUID, as Ray's anonymous namespaces
    assert ray.get(namespace_in_a_task.remote()) == namespace
    actor = Named.options(name="here").remote()
    assert ray.get(actor.namespace.remote()) == namespace
    pid = ray.get(actor.pid.remote())
    assert ray.get(find.remote("here")) == pid  # a task finds it in the job's namespace
    assert ray.get(find.remote("here", namespace)) == pid


def test_a_named_job_creates_and_finds_actors_in_its_namespace_from_tasks_too(cluster):
    cluster(num_cpus=1, namespace="jobs-own")
    assert ray.get(namespace_in_a_task.remote()) == "jobs-own"

    @ray.remote
    def create():
        actor = Named.options(name="made-in-a-task", lifetime="detached").remote()
        return ray.get(actor.pid.remote())

    pid = ray.get(create.remote())
    assert ray.get(ray.get_actor("made-in-a-task").pid.remote()) == pid
    assert ray.get(ray.get_actor("made-in-a-task", namespace="jobs-own").pid.remote()) == pid
    with pytest.raises(ValueError, match="namespace 'other'"):
        ray.get_actor("made-in-a-task", namespace="other")


def test_a_dead_actor_keeps_its_name_while_its_handles_live(cluster):
    cluster(num_cpus=2, namespace="ns")
    actor = Named.options(name="taken").remote()
    os.kill(ray.get(actor.pid.remote()), signal.SIGKILL)
    assert dead(actor)
    # As in Ray: the name stays taken, and get_actor finds the dead actor...
    with pytest.raises(rex.ActorAlreadyExistsError):
        Named.options(name="taken").remote()
    with pytest.raises(rex.ActorDiedError):
        ray.get(ray.get_actor("taken").pid.remote())
    # ...until its last handle is gone.
    del actor

    def create():
        try:
            return Named.options(name="taken").remote()
        except rex.ActorAlreadyExistsError:
            return None

    again = wait_for(create, what="the name to be released")
    assert ray.get(again.pid.remote())


def test_a_dead_detached_actor_or_a_killed_one_gives_up_its_name_at_once(cluster):
    cluster(num_cpus=2, namespace="ns")
    detached = Named.options(name="detached", lifetime="detached").remote()
    os.kill(ray.get(detached.pid.remote()), signal.SIGKILL)
    assert dead(detached)
    assert ray.get(Named.options(name="detached", lifetime="detached").remote().pid.remote())
    killed = Named.options(name="killed").remote()
    ray.kill(killed)
    assert ray.get(Named.options(name="killed").remote().pid.remote())


def test_get_if_exists_needs_a_name_as_in_ray(cluster):
    cluster(num_cpus=1)
    with pytest.raises(ValueError, match="The actor name must be specified to use `get_if_exists`"):
        Named.options(get_if_exists=True)

    class Plain:
        pass

    with pytest.raises(ValueError, match="The actor name must be specified"):
        ray.remote(get_if_exists=True)(Plain)
    first = Named.options(name="once", get_if_exists=True).remote()
    assert Named.options(name="once", get_if_exists=True).remote() == first
