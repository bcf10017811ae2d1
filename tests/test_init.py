"""init() as Ray 2.60 has it: its context object, Ray's harmless arguments, address="auto" (issue 11)."""

from __future__ import annotations

import pytest
from driver_process import DriverProcess

import minicluster as ray
from minicluster.cluster_utils import Cluster
from minicluster.job_config import JobConfig


def test_init_returns_rays_context_object(cluster):
    ctx = cluster()
    info = ctx.address_info
    assert {"address", "session_dir", "node_id", "node_ip_address", "gcs_address", "webui_url"} <= set(info)
    assert info["node_id"] == ray.get_runtime_context().get_node_id() and ctx.dashboard_url is None
    with pytest.warns(DeprecationWarning, match="address_info"):
        assert ctx["address"] == info["address"]
    assert ctx.python_version and ctx.ray_version
    # The address joins this session again (as Ray: only with ignore_reinit_error).
    with pytest.raises(RuntimeError, match="init twice"):
        ray.init(address=info["address"])
    assert ray.init(address=info["address"], ignore_reinit_error=True).address_info["address"] == info["address"]


def test_the_context_object_is_a_context_manager():
    with ray.init(num_cpus=1) as ctx:
        assert ray.is_initialized() and ctx.address_info["session_dir"]
    assert not ray.is_initialized()


def test_rays_harmless_arguments_are_taken(cluster):
    cluster(dashboard_port=None, include_dashboard=False, dashboard_host="127.0.0.1", logging_level="info",
            configure_logging=False, _system_config={"object_timeout_milliseconds": 200,
                                                     "health_check_initial_delay_ms": 0})
    assert ray.get(ray.put(1)) == 1


@pytest.mark.parametrize("kwargs, error, text", [
    ({"local_mode": True}, ValueError, "local mode"),
    ({"_system_config": {"automatic_object_spilling_enabled": False}}, ValueError, "automatic_object_spilling"),
    ({"runtime_env": {"pip": ["requests"]}}, ValueError, r"runtime_env\[.pip.\] is not supported"),
    ({"_temp_dir": "/tmp/elsewhere"}, TypeError, "_temp_dir"),
    ({"not_an_argument": 1}, TypeError, "not_an_argument"),
    ({"_node_ip_address": "10.0.0.7"}, ValueError, "this machine"),
])
def test_arguments_that_would_be_harmful_to_ignore_are_refused(kwargs, error, text):
    with pytest.raises(error, match=text):
        ray.init(num_cpus=1, **kwargs)
    assert not ray.is_initialized()


def test_init_labels_the_nodes_it_starts(cluster):
    cluster(labels={"zone": "east"})
    rtc = ray.get_runtime_context()
    assert rtc.get_node_labels() == {"ray.io/node-id": rtc.get_node_id(), "zone": "east"}


def test_node_ip_address_is_this_machine(cluster):
    cluster()
    assert ray.util.get_node_ip_address() == "127.0.0.1"

    @ray.remote
    def where():
        return ray.util.get_node_ip_address()

    assert ray.get(where.remote()) == "127.0.0.1"


def test_auto_address_without_a_running_session_is_a_clear_error():
    with pytest.raises(ConnectionError, match="no running minicluster session"):
        ray.init(address="auto")
    assert not ray.is_initialized()


def test_auto_address_joins_the_cluster_of_this_process():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        with pytest.raises(ValueError, match="_system_config"):  # as Ray: fixed when the cluster started
            ray.init(address="auto", _system_config={"object_timeout_milliseconds": 200})
        ctx = ray.init(address="auto")
        assert ctx.address_info["address"] == cluster.address
        assert ray.get(ray.put("here")) == "here"
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_auto_address_names_a_session_of_another_process(tmp_path):
    driver = DriverProcess("""
        import sys
        import minicluster as ray
        ctx = ray.init(num_cpus=1)
        print("ADDRESS", ctx.address_info["address"], flush=True)
        sys.stdin.readline()
        ray.shutdown()
    """, str(tmp_path / "other_driver.py"))
    try:
        address = driver.expect("ADDRESS")
        with pytest.raises(ConnectionError, match="another process"):
            ray.init(address="auto")
        with pytest.raises(ConnectionError, match="another process"):
            ray.init(address=address)
        assert not ray.is_initialized()
    finally:
        driver.send("stop")
        assert driver.finish() == 0


@pytest.mark.parametrize("switch", [{"_enable_object_reconstruction": False},
                                    {"_system_config": {"lineage_pinning_enabled": False}},
                                    {"job_config": JobConfig(_disable_job_level_lineage_reconstruction=True)}])
def test_init_can_turn_lineage_reconstruction_off(cluster, switch):
    import numpy as np

    from minicluster import testing
    from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster(num_nodes=2, **switch)
    _, victim = testing.live_nodes()

    @ray.remote(max_retries=3)
    def big():
        return np.zeros(2**20)

    ref = big.options(scheduling_strategy=NodeAffinitySchedulingStrategy(victim, soft=False)).remote()
    ray.wait([ref], timeout=10, fetch_local=False)
    testing.kill_node(victim)
    with pytest.raises(ray.exceptions.ObjectReconstructionFailedError, match="UNRECONSTRUCTABLE_LINEAGE_DISABLED"):
        ray.get(ref, timeout=10)


def test_init_memory_is_the_nodes_memory_resource_and_tracing_is_refused(cluster):
    with pytest.raises(ValueError, match="no tracing"):
        ray.init(_tracing_startup_hook="my.module:setup")
    assert not ray.is_initialized()
    cluster(num_nodes=2, _memory=2**30)
    assert ray.cluster_resources()["memory"] == 2 * 2**30


def test_cluster_wide_settings_are_refused_when_connecting():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1}, shutdown_at_exit=False)
    try:
        for setting in ({"_enable_object_reconstruction": False}, {"_memory": 2**30}):
            with pytest.raises(ValueError, match="When connecting to an existing cluster"):
                ray.init(address=cluster.address, **setting)
    finally:
        cluster.shutdown()


@pytest.mark.parametrize("preload", [True, False])
def test_preload_python_modules_are_imported_in_the_workers_before_their_first_task(cluster, capfd, preload):
    from conftest import wait_for

    modules = ["webbrowser", "no_such_module_for_minicluster"]
    cluster(num_cpus=1, _system_config={"preload_python_modules": modules} if preload else None)

    @ray.remote
    def loaded():
        import sys

        return [name in sys.modules for name in modules]

    assert ray.get(loaded.remote()) == [preload, False]
    if preload:  # as in Ray, a module that cannot be imported is reported, and the workers start anyway
        seen = []
        wait_for(lambda: seen.append(capfd.readouterr().err) or "no_such_module_for_minicluster" in "".join(seen),
                 10, "the failed preload to be reported")


@pytest.mark.parametrize("system_config, error, text", [
    ({"preload_python_modules": "webbrowser"}, TypeError, "list of module names"),
    ({"worker_cap_enabled": False}, ValueError, "worker_cap_enabled=False"),
])
def test_system_config_switches_that_cannot_be_had_are_refused(system_config, error, text):
    with pytest.raises(error, match=text):
        ray.init(num_cpus=1, _system_config=system_config)
    assert not ray.is_initialized()


def test_system_config_switches_minicluster_always_has_are_taken(cluster):
    cluster(num_cpus=1, _system_config={"worker_cap_enabled": True, "support_fork": True,
                                        "max_pending_lease_requests_per_scheduling_category": 1})
    assert ray.get(ray.put(1)) == 1
