"""get_runtime_context() and task names, as Ray 2.60 gives them (issue 11)."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import wait_for

import minicluster as ray
from minicluster.cluster_utils import Cluster
from minicluster.util.state import list_tasks


def test_driver_context_has_no_task_or_actor(cluster):
    cluster()
    rtc = ray.get_runtime_context()
    assert len(rtc.get_job_id()) == 8 and len(rtc.get_node_id()) == 56 and len(rtc.get_worker_id()) == 56
    assert rtc.get_task_id() is None and rtc.get_actor_id() is None and rtc.get_actor_name() is None
    assert rtc.get_task_name() is None and rtc.get_task_function_name() is None
    with pytest.warns(DeprecationWarning):
        ids = rtc.get()
    assert "task_id" not in ids and "actor_id" not in ids
    assert ids["node_id"].hex() == rtc.get_node_id()
    with pytest.raises(AssertionError):
        rtc.get_assigned_resources()
    with pytest.raises(RuntimeError, match="only available in an actor"):
        rtc.current_actor  # noqa: B018 - the property raises
    assert rtc.runtime_env == {}
    assert rtc.get_node_labels() == {"ray.io/node-id": rtc.get_node_id()}
    assert rtc.get_session_name() and rtc.get_session_name() in ray.testing.snapshot().session_dir


def test_ids_as_properties_warn_toward_the_get_methods(cluster):
    cluster()
    rtc = ray.get_runtime_context()
    with pytest.warns(DeprecationWarning, match="Use get_node_id"):
        assert rtc.node_id.hex() == rtc.get_node_id()
    with pytest.warns(DeprecationWarning, match="Use get_job_id"):
        assert rtc.job_id.hex() == rtc.get_job_id()


def test_a_task_sees_its_id_name_and_assigned_resources(cluster):
    cluster(num_cpus=2, resources={"gadget": 2})

    def make():  # defined inside a function: names must not carry "<locals>"
        @ray.remote
        def inspect_me():
            rtc = ray.get_runtime_context()
            return (rtc.get_task_id(), rtc.get_task_name(), rtc.get_task_function_name(),
                    rtc.get_assigned_resources(), rtc.get_actor_id(), sorted(rtc.get()))

        return inspect_me

    inspect_me = make()
    task_id, name, function, assigned, actor_id, keys = ray.get(inspect_me.remote())
    assert len(task_id) == 48 and name == "inspect_me" and function == f"{__name__}.inspect_me"
    assert assigned == {"CPU": 1.0} and actor_id is None
    assert keys == ["job_id", "namespace", "node_id", "task_id"]
    _, name, _, assigned, _, _ = ray.get(inspect_me.options(num_cpus=0.5, resources={"gadget": 1},
                                                            name="custom").remote())
    assert name == "custom" and assigned == {"CPU": 0.5, "gadget": 1.0}
    assert ray.get(inspect_me.options(num_cpus=0).remote())[3] == {}
    wait_for(lambda: {t.name for t in list_tasks()} >= {"inspect_me", "custom"}, what="the tasks' rows")


def test_an_actor_sees_itself(cluster):
    cluster(num_cpus=2)

    def make():
        @ray.remote
        class Probe:
            def look(self):
                rtc = ray.get_runtime_context()
                return (rtc.get_task_name(), rtc.get_task_function_name(), rtc.get_assigned_resources(),
                        rtc.get_actor_id(), rtc.get_actor_name(), rtc.was_current_actor_reconstructed)

            def me(self):
                return ray.get_runtime_context().current_actor

            def echo(self, value):
                return value

        return Probe

    Probe = make()
    plain = Probe.remote()
    name, function, assigned, actor_id, actor_name, reconstructed = ray.get(plain.look.remote())
    assert name == "Probe.look" and function == f"{__name__}.Probe.look"
    assert assigned == {} and actor_id == plain._ray_actor_id.hex() and actor_name == ""
    assert reconstructed is False
    named = Probe.options(name="probe", num_cpus=1).remote()
    assert ray.get(named.look.remote())[2:5:2] == ({"CPU": 1.0}, "probe")
    handle = ray.get(plain.me.remote())
    assert handle == plain and ray.get(handle.echo.remote(7)) == 7
    wait_for(lambda: "Probe.look" in {t.name for t in list_tasks()}, what="the actor call's row")
    assert {t.name for t in list_tasks() if t.type == "ACTOR_CREATION_TASK"} == {"Probe.__init__"}


def test_async_actor_calls_have_their_own_task_ids(cluster):
    cluster()

    @ray.remote
    class Waiter:
        async def whoami(self):
            rtc = ray.get_runtime_context()
            return rtc.get_task_id(), rtc.get_task_name(), rtc.get_task_function_name()

    waiter = Waiter.remote()
    first, second = ray.get([waiter.whoami.remote(), waiter.whoami.remote()])
    assert first[0] != second[0] and first[1] == "Waiter.whoami"
    # Ray keeps an async actor's qualified class name in the function name.
    assert first[2] == f"{__name__}.test_async_actor_calls_have_their_own_task_ids.<locals>.Waiter.whoami"
    wait_for(lambda: {first[0], second[0]} <= {t.task_id for t in list_tasks(filters=[("name", "=", "Waiter.whoami")])},
             what="both calls listed under the actor's task name")


def test_a_restarted_actor_knows_it_was_reconstructed(cluster):
    cluster()

    @ray.remote(max_restarts=1)
    class Phoenix:
        def __init__(self):
            self.at_start = ray.get_runtime_context().was_current_actor_reconstructed

        def report(self):
            return os.getpid(), self.at_start, ray.get_runtime_context().was_current_actor_reconstructed

    phoenix = Phoenix.remote()
    pid, at_start, now = ray.get(phoenix.report.remote())
    assert (at_start, now) == (False, False)
    os.kill(pid, signal.SIGKILL)

    def report_after_restart():
        try:
            found = ray.get(phoenix.report.remote())
        except ray.exceptions.RayActorError:  # the call reached the process that was killed
            return None
        return found if found[0] != pid else None

    assert wait_for(report_after_restart, what="the restarted actor's answer")[1:] == (True, True)

    @ray.remote
    def plain_task():
        return ray.get_runtime_context().was_current_actor_reconstructed

    with pytest.raises(AssertionError):
        ray.get(plain_task.remote())


def test_a_failed_constructor_leaves_no_actor_id_on_the_pooled_worker(cluster):
    cluster()

    @ray.remote
    class Broken:
        def __init__(self):
            raise ValueError("no")

        def ping(self):
            return 1

    broken = Broken.remote()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(broken.ping.remote())

    @ray.remote
    def actor_id_here():
        return ray.get_runtime_context().get_actor_id()

    assert ray.get(actor_id_here.remote()) is None


def test_node_labels_given_to_a_cluster_node():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        labelled = cluster.add_node(num_cpus=1, resources={"here": 1}, labels={"zone": "west"})
        ray.init(address=cluster.address)

        @ray.remote(resources={"here": 1})
        def labels():
            return ray.get_runtime_context().get_node_labels()

        assert ray.get(labels.remote()) == {"ray.io/node-id": labelled.node_id, "zone": "west"}
    finally:
        ray.shutdown()
        cluster.shutdown()
