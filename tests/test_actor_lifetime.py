"""How long an actor lives (Ray's rules): while some process holds a handle made by `.remote()`
(or a copy of one passed to tasks, actors or stored in objects); a detached actor until it
is killed; `JobConfig(default_actor_lifetime=...)` sets the lifetime of actors created
without `lifetime=`. Handles from `get_actor` do not keep an actor alive.

The actor's process is the evidence: tests wait for its pid to be gone (or check it stays).
"""

from __future__ import annotations

import gc
import os
import signal
import time

import psutil
import pytest
from conftest import wait_for

import minicluster as ray
from minicluster import exceptions as rex
from minicluster.job_config import JobConfig


@ray.remote
class Pid:
    def pid(self):
        return os.getpid()

    def slow(self, seconds, value):
        time.sleep(seconds)
        return value

    def child(self, lifetime=None):
        options = {} if lifetime is None else {"lifetime": lifetime}
        self.kept = Pid.options(**options).remote()
        return self.kept, ray.get(self.kept.pid.remote())


def exited(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_exit(pid: int, what: str = "the actor's process to exit") -> None:
    gc.collect()
    wait_for(lambda: exited(pid), timeout=10, what=what)


def still_running(pid: int, seconds: float = 0.5) -> bool:
    """True if `pid` is still there after `seconds` (for checking that something does not end).

    The round trip first makes the head take in the driver's dropped refs (they travel with
    the driver's next call): an actor that had to end is told so before the window opens,
    and then exits within milliseconds, well inside it.
    """
    gc.collect()
    ray.get(ray.put(None))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if exited(pid):
            return False
        time.sleep(0.02)
    return True


def test_the_actor_ends_when_its_last_handle_is_dropped(cluster):
    cluster(num_cpus=2)
    actor = Pid.remote()
    pid = ray.get(actor.pid.remote())
    copy = actor
    del actor
    assert still_running(pid)  # a second reference is left
    del copy
    wait_exit(pid)


def test_many_dropped_actors_all_end(cluster):
    cluster(num_cpus=2)
    actors = [Pid.options(num_cpus=0).remote() for _ in range(6)]
    pids = ray.get([a.pid.remote() for a in actors])
    del actors
    for pid in pids:
        wait_exit(pid)


def test_a_call_submitted_before_the_handle_is_dropped_still_runs(cluster):
    cluster(num_cpus=2)
    actor = Pid.remote()
    pid = ray.get(actor.pid.remote())
    result = actor.slow.remote(0.3, "done")
    del actor
    assert ray.get(result, timeout=10) == "done"
    wait_exit(pid)


def test_calling_an_actor_created_in_the_same_expression_works(cluster):
    cluster(num_cpus=2)
    assert ray.get(Pid.remote().slow.remote(0, 7), timeout=10) == 7


def test_a_handle_passed_to_a_task_keeps_the_actor_alive_until_the_task_is_done(cluster, tmp_path):
    cluster(num_cpus=2)
    gate = tmp_path / "go"

    @ray.remote
    def use_later(handle, gate):
        while not os.path.exists(gate):
            time.sleep(0.01)
        return ray.get(handle.pid.remote())

    actor = Pid.remote()
    pid = ray.get(actor.pid.remote())
    result = use_later.remote(actor, str(gate))
    del actor
    assert still_running(pid)
    gate.write_text("")
    assert ray.get(result, timeout=10) == pid
    wait_exit(pid)


def test_a_handle_kept_by_another_actor_keeps_the_actor_alive(cluster):
    cluster(num_cpus=2)

    @ray.remote
    class Keeper:
        def keep(self, handles):
            self.handles = handles

        def drop(self):
            self.handles = None

    keeper = Keeper.remote()
    actor = Pid.remote()
    pid = ray.get(actor.pid.remote())
    ray.get(keeper.keep.remote([actor]))
    del actor
    assert still_running(pid)
    ray.get(keeper.drop.remote())
    wait_exit(pid)


def test_an_actor_returned_by_a_task_lives_while_the_driver_holds_it(cluster):
    cluster(num_cpus=2)

    @ray.remote
    def make():
        return Pid.remote()

    actor = ray.get(make.remote())
    pid = ray.get(actor.pid.remote())
    assert still_running(pid)
    del actor
    wait_exit(pid)


def test_dropping_the_handle_of_a_named_actor_ends_it_and_frees_the_name(cluster):
    cluster(num_cpus=2)
    actor = Pid.options(name="solo").remote()
    pid = ray.get(actor.pid.remote())
    looked_up = ray.get_actor("solo")  # does not keep it alive (as in Ray)
    del actor
    wait_exit(pid)
    with pytest.raises(rex.RayActorError, match="all references to the actor were removed"):
        ray.get(looked_up.pid.remote(), timeout=10)
    wait_for(lambda: _name_free("solo"), what="the name to be free")


def _name_free(name: str) -> bool:
    try:
        ray.get_actor(name)
        return False
    except ValueError:
        return True


def test_a_detached_actor_outlives_its_handles_until_killed(cluster):
    cluster(num_cpus=2)
    actor = Pid.options(name="stays", lifetime="detached").remote()
    pid = ray.get(actor.pid.remote())
    del actor
    assert still_running(pid)
    ray.kill(ray.get_actor("stays"))
    wait_exit(pid)


@pytest.mark.parametrize("default, given, survives", [
    (None, None, False),
    ("detached", None, True),
    ("non_detached", None, False),
    ("detached", "non_detached", False),
    ("non_detached", "detached", True),
])
def test_an_actor_created_by_an_actor_lives_on_after_its_creator_dies_only_if_detached(
        cluster, default, given, survives):
    cluster(num_cpus=3, **({} if default is None else {"job_config": JobConfig(default_actor_lifetime=default)}))
    creator = Pid.remote()
    creator_pid = ray.get(creator.pid.remote())
    child, child_pid = ray.get(creator.child.remote(given))
    os.kill(creator_pid, signal.SIGKILL)
    wait_exit(creator_pid, "the creator to exit")
    if survives:
        assert still_running(child_pid, 1.0)
        assert ray.get(child.pid.remote(), timeout=10) == child_pid
        ray.kill(child)
    else:
        wait_for(lambda: _dead(child), what="the child to die with its creator")
        wait_exit(child_pid)


def _dead(actor) -> bool:
    """True once a call to `actor` fails because it is dead (its owner's death may be noticed
    a moment after the owner's process is gone)."""
    try:
        ray.get(actor.pid.remote(), timeout=10)
        return False
    except rex.RayActorError:
        return True


def test_job_config_rejects_what_it_cannot_honour():
    with pytest.raises(ValueError, match="default_actor_lifetime|lifetime"):
        JobConfig(default_actor_lifetime="forever")
    with pytest.raises(ValueError, match="runtime_env"):
        JobConfig(runtime_env={"pip": ["x"]})
    with pytest.raises(ValueError, match="metadata"):
        JobConfig(metadata={"a": "b"})
    with pytest.raises(ValueError, match="jvm_options"):
        JobConfig(jvm_options=["-Xmx1g"])
    assert JobConfig(ray_namespace="ns").ray_namespace == "ns"


def test_job_config_namespace_is_the_jobs_namespace(cluster):
    cluster(job_config=JobConfig(ray_namespace="from-config"))
    assert ray.get_runtime_context().namespace == "from-config"


def test_a_hanging_shutdown_hook_is_cut_short_by_the_grace_period(tmp_path):
    """Ray's actor_graceful_shutdown_timeout_ms: an actor ending on purpose whose
    __ray_shutdown__ hangs is killed once the grace period has passed."""
    started, finished = tmp_path / "started", tmp_path / "finished"
    ray.init(num_cpus=1, _system_config={"actor_graceful_shutdown_timeout_ms": 300})
    try:
        @ray.remote
        class Hangs:
            def __ray_shutdown__(self):
                started.touch()
                time.sleep(30)
                finished.touch()

            def pid(self):
                return os.getpid()

        actor = Hangs.remote()
        pid = ray.get(actor.pid.remote())
        del actor  # out of scope: it ends on purpose, its hook runs
        wait_for(started.exists, what="__ray_shutdown__ started")
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                 timeout=10, what="the process killed after the grace period")
        assert not finished.exists()
    finally:
        ray.shutdown()
    with pytest.raises(ValueError, match="actor_graceful_shutdown_timeout_ms must be"):
        ray.init(_system_config={"actor_graceful_shutdown_timeout_ms": -1})


def test_dead_actor_records_are_capped_and_a_forgotten_ones_handle_still_fails(cluster, monkeypatch):
    # As Ray's GCS (RAY_maximum_gcs_destroyed_actor_cached_count): a driver that makes actors by
    # the million keeps only the records of the ones that died last.
    from minicluster.util.state import list_actors

    monkeypatch.setenv("RAY_maximum_gcs_destroyed_actor_cached_count", "3")
    cluster(num_cpus=1)

    @ray.remote(num_cpus=0)
    class Brief:
        def ping(self):
            return ray.get_runtime_context().get_actor_id()

    actors = [Brief.remote() for _ in range(6)]
    ids = ray.get([a.ping.remote() for a in actors])
    for actor in actors:
        ray.kill(actor)
    wait_for(lambda: [a["state"] for a in list_actors()] == ["DEAD"] * 3, 10,
             "only three dead actors to be listed")
    kept = {a["actor_id"] for a in list_actors()}
    assert kept < set(ids)
    for actor, actor_id in zip(actors, ids):
        # a forgotten one's handle still fails, saying why it may; a kept one says why it died
        reason = "ray.kill" if actor_id in kept else "RAY_maximum_gcs_destroyed_actor_cached_count=3"
        with pytest.raises(ray.exceptions.ActorDiedError, match=reason):
            ray.get(actor.ping.remote())
