"""`minicluster.cluster_utils.Cluster`: Ray's multi-node test helper, so Ray tests port by changing an import.

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    node = cluster.add_node(num_cpus=1, resources={"custom": 1})
    ray.init(address=cluster.address)      # or cluster.connect()
    cluster.remove_node(node, allow_graceful=False)
    cluster.shutdown()

The `make_cluster` fixture shuts every Cluster down at teardown, even when the
test fails, and then checks that none of its processes and none of its store
folders outlived it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psutil
import pytest
from conftest import wait_for

import minicluster as ray
from minicluster import exceptions as rex
from minicluster import testing
from minicluster.cluster_utils import Cluster
from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cluster_pids(cluster: Cluster) -> list[int]:
    # The leak check looks at the session's own records, as conftest does (connected or not).
    return list(testing.snapshot(cluster).pids())


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**kwargs: Any) -> Cluster:
        kwargs.setdefault("shutdown_at_exit", False)
        cluster = Cluster(**kwargs)
        made.append(cluster)
        return cluster

    yield make
    pids: list[int] = []
    stores: list[str] = []
    for cluster in made:
        pids += _cluster_pids(cluster)
        stores.append(testing.snapshot(cluster).store_root)
    try:
        if ray.is_initialized():
            ray.shutdown()
    finally:
        for cluster in made:
            cluster.shutdown()
    wait_for(lambda: not [p for p in pids if _alive(p)], timeout=3.0,
             what=f"cluster processes to exit: {[p for p in pids if _alive(p)]}")
    for store in stores:
        assert not os.path.exists(store), f"store folder left behind: {store}"


@ray.remote
def where_am_i():
    return ray.get_runtime_context().get_node_id()


def node_info(node_id: str) -> dict:
    return next(n for n in ray.nodes() if n["NodeID"] == node_id)


# ---- building and attaching ---------------------------------------------------------------------


def test_head_and_worker_nodes_attach_and_run_tasks(make_cluster):
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    assert not ray.is_initialized()  # building a cluster does not connect this process
    ray.init(address=cluster.address)
    assert ray.is_initialized()
    head = cluster.head_node
    assert [n.node_id for n in cluster.list_all_nodes()] == [head.node_id, worker.node_id]
    assert worker in cluster.worker_nodes
    assert {n["NodeID"] for n in ray.nodes()} == {head.node_id, worker.node_id}
    assert all(n["Alive"] for n in ray.nodes())
    assert ray.cluster_resources()["CPU"] == 2
    for node in (head, worker):
        strategy = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
        assert ray.get(where_am_i.options(scheduling_strategy=strategy).remote(), timeout=10) == node.node_id


def test_connect_makes_the_cluster_this_processes_session(make_cluster):
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.connect()
    assert ray.is_initialized()
    assert ray.get(where_am_i.remote(), timeout=10) == cluster.head_node.node_id


def test_constructor_can_connect(make_cluster):
    cluster = make_cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
    assert ray.is_initialized()
    assert [n["NodeID"] for n in ray.nodes()] == [cluster.head_node.node_id]


def test_init_with_address_auto_finds_the_cluster(make_cluster):
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    ray.init(address="auto")
    assert [n["NodeID"] for n in ray.nodes()] == [cluster.head_node.node_id]


def test_init_and_the_first_remote_call_without_an_address_join_the_cluster(make_cluster, capfd):
    # As Ray: no address means the cluster started last, if one runs; "local" starts a new one.
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"mine": 1}})

    @ray.remote(resources={"mine": 1})
    def on_the_cluster():
        return ray.get_runtime_context().get_node_id()

    assert ray.get(on_the_cluster.remote()) == cluster.head_node.node_id  # auto-init joined it
    assert "init() was not called; joined the Cluster of this process" in capfd.readouterr().err
    ray.shutdown()
    ray.init()
    assert [n["NodeID"] for n in ray.nodes()] == [cluster.head_node.node_id]
    ray.shutdown()
    ray.init(address="local", num_cpus=1)
    assert cluster.head_node.node_id not in [n["NodeID"] for n in ray.nodes()]


@pytest.mark.parametrize("arguments, named", [
    ({"num_cpus": 2}, "num_cpus and num_gpus"), ({"num_gpus": 1}, "num_cpus and num_gpus"),
    ({"resources": {"x": 1}}, "resources"), ({"labels": {"a": "b"}}, "labels"),
    ({"object_store_memory": 10**8}, "object_store_memory"), ({"num_nodes": 2}, "num_nodes"),
    ({"num_nodes": 1}, "num_nodes"),  # (even the default's value: the joined session has its own nodes)
])
def test_joining_a_cluster_with_node_arguments_is_refused(make_cluster, arguments, named):
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for address in (cluster.address, None):
        with pytest.raises(ValueError, match=f"When connecting to an existing cluster, {named} must not be provided"):
            ray.init(address=address, **arguments)
        assert not ray.is_initialized()


def test_first_added_node_is_the_head_like_rays_fixture(make_cluster):
    """Ray's `ray_start_cluster` fixture makes Cluster() and adds the head with add_node."""
    cluster = make_cluster()
    head = cluster.add_node(num_cpus=1)
    other = cluster.add_node(num_cpus=1)
    assert cluster.head_node is head
    assert cluster.worker_nodes == {other}
    ray.init(address=cluster.address)
    assert len(ray.nodes()) == 2


def test_custom_resources_of_added_nodes(make_cluster):
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    special = cluster.add_node(num_cpus=1, resources={"special": 2})
    ray.init(address=cluster.address)
    assert ray.cluster_resources()["special"] == 2
    assert node_info(special.node_id)["Resources"]["special"] == 2
    refs = [where_am_i.options(resources={"special": 1}).remote() for _ in range(4)]
    assert ray.get(refs, timeout=10) == [special.node_id] * 4


def test_nodes_added_after_connecting_are_used(make_cluster):
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    ray.init(address=cluster.address)
    late = cluster.add_node(num_cpus=1, resources={"late": 1})
    cluster.wait_for_nodes()
    assert ray.get(where_am_i.options(resources={"late": 1}).remote(), timeout=10) == late.node_id
    assert late.node_id in testing.live_nodes()


def test_a_second_session_while_connected_is_refused(make_cluster):
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    ray.init(address=cluster.address)
    with pytest.raises(RuntimeError):
        make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    assert ray.get(where_am_i.remote(), timeout=10) == cluster.head_node.node_id


def test_init_with_an_unknown_cluster_address_fails_clearly(make_cluster):
    make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    with pytest.raises(ConnectionError):
        ray.init(address="minicluster:///no/such/session")
    assert not ray.is_initialized()


# ---- removing nodes -------------------------------------------------------------------------------


@pytest.mark.parametrize("graceful", [True, False])
def test_remove_node_kills_it_like_a_machine_failure(make_cluster, graceful):
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    victim = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    pids = [node_info(victim.node_id)["Pid"]] + testing.worker_pids(victim.node_id)
    store = os.path.join(testing.snapshot().store_root, victim.node_id)
    assert victim.any_processes_alive()
    cluster.remove_node(victim, allow_graceful=graceful)
    wait_for(lambda: node_info(victim.node_id)["Alive"] is False, timeout=1.0, what="the node to be reported dead")
    assert node_info(victim.node_id)["DeathReason"]
    assert not victim.any_processes_alive()
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=1.0, what="the removed node's processes to exit")
    wait_for(lambda: not os.path.exists(store), timeout=1.0, what="the removed node's store folder to go")
    cluster.wait_for_nodes(timeout=5)  # a dead node does not make it wait or fail
    assert cluster.list_all_nodes() == [cluster.head_node]
    assert ray.cluster_resources()["CPU"] == 1
    assert ray.get(where_am_i.remote(), timeout=10) == cluster.head_node.node_id


def test_task_pinned_to_a_removed_node_is_unschedulable(make_cluster):
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    victim = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    cluster.remove_node(victim)
    hard = NodeAffinitySchedulingStrategy(victim.node_id, soft=False)
    with pytest.raises(rex.TaskUnschedulableError):
        ray.get(where_am_i.options(scheduling_strategy=hard).remote(), timeout=10)
    soft = NodeAffinitySchedulingStrategy(victim.node_id, soft=True)
    assert ray.get(where_am_i.options(scheduling_strategy=soft).remote(), timeout=10) == cluster.head_node.node_id


def test_running_task_on_a_removed_node_is_retried_on_a_new_node(make_cluster, tmp_path):
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    victim = cluster.add_node(num_cpus=1, resources={"pool": 1})
    ray.init(address=cluster.address)
    log, release = str(tmp_path / "log"), str(tmp_path / "release")

    @ray.remote(resources={"pool": 1})
    def gated(log, release):
        with open(log, "a") as f:
            f.write(ray.get_runtime_context().get_node_id() + "\n")
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.005)
        return ray.get_runtime_context().get_node_id()

    ref = gated.remote(log, release)
    # The file exists as soon as it is opened; its line is there once it is closed.
    wait_for(lambda: os.path.exists(log) and open(log).read().endswith("\n"), timeout=10, what="the task to start")
    cluster.remove_node(victim, allow_graceful=False)
    replacement = cluster.add_node(num_cpus=1, resources={"pool": 1})
    open(release, "w").close()
    assert ray.get(ref, timeout=10) == replacement.node_id
    with open(log) as f:
        assert f.read().split() == [victim.node_id, replacement.node_id]


def test_removing_the_head_node_leaves_the_driver_working(make_cluster):
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    other = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    cluster.remove_node(cluster.head_node)
    assert cluster.head_node is None
    assert ray.get(where_am_i.remote(), timeout=10) == other.node_id
    ref = ray.put(np.ones(200_000))
    assert testing.object_locations(ref) == [other.node_id]


# ---- a Ray test, ported by changing the import ----------------------------------------------


@pytest.mark.parametrize("retries", [0, 1])
def test_a_multi_node_script_written_for_ray_runs_unchanged(make_cluster, retries):
    """The shape of a Ray multi-node fault test: a head without CPUs, two nodes told apart by
    custom resources, a node removed without grace and replaced; the lost value comes back by
    lineage when its task may run again, and is an ObjectLostError when it may not."""
    cluster = make_cluster()
    cluster.add_node(num_cpus=0, _system_config={"object_timeout_milliseconds": 200})
    ray.init(address=cluster.address)
    doomed = cluster.add_node(num_cpus=1, resources={"doomed": 1}, object_store_memory=10**8)
    cluster.add_node(num_cpus=1, resources={"spare": 1}, object_store_memory=10**8)
    cluster.wait_for_nodes()

    @ray.remote(max_retries=retries)
    def payload():
        return np.ones(5 * 10**6, dtype=np.uint8)

    @ray.remote
    def checksum(array):
        return int(array.sum())

    ref = payload.options(resources={"doomed": 1}).remote()
    assert ray.get(checksum.options(resources={"doomed": 1}).remote(ref), timeout=20) == 5 * 10**6
    cluster.remove_node(doomed, allow_graceful=False)
    cluster.add_node(num_cpus=1, resources={"doomed": 1}, object_store_memory=10**8)
    if retries:
        assert ray.get(checksum.remote(ref), timeout=20) == 5 * 10**6
    else:
        with pytest.raises(ray.exceptions.RayTaskError):
            ray.get(checksum.remote(ref), timeout=20)
        with pytest.raises(ray.exceptions.ObjectLostError):
            ray.get(ref, timeout=20)


# ---- Ray's node arguments -----------------------------------------------------------------------


@ray.remote
def array_of(megabytes: int, fill: float):
    return np.full(megabytes * 2**20 // 8, fill)


def test_object_store_memory_is_per_node(make_cluster):
    cluster = make_cluster()
    cluster.add_node(num_cpus=0)
    small = cluster.add_node(num_cpus=1, resources={"small": 1}, object_store_memory=3 * 2**20)
    large = cluster.add_node(num_cpus=1, resources={"large": 1}, object_store_memory=64.0 * 2**20)  # (a float, as
    ray.init(address=cluster.address)                                                                # Ray's 1e9)
    held = [array_of.options(resources={where: 1}).remote(2, 1.0) for where in ("small", "large") for _ in range(3)]
    ready, _ = ray.wait(held, num_returns=len(held), timeout=20, fetch_local=False)
    assert len(ready) == len(held)
    snapshot = testing.snapshot(cluster)

    def spilled(node) -> list:
        folder = snapshot.node(node.node_id).spill_dir
        return os.listdir(folder) if os.path.isdir(folder) else []

    assert len(spilled(small)) == 2  # a 3 MB store holds one 2 MB array; the others went to disk
    assert spilled(large) == []


@pytest.mark.parametrize("head_args", [{"enable_object_reconstruction": False},
                                       {"_system_config": {"lineage_pinning_enabled": False}}])
def test_reconstruction_can_be_turned_off_for_the_cluster(make_cluster, head_args):
    cluster = make_cluster()
    cluster.add_node(num_cpus=0, **head_args)
    victim = cluster.add_node(num_cpus=1, resources={"victim": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    ref = array_of.options(resources={"victim": 1}, max_retries=3).remote(2, 1.0)
    ray.wait([ref], timeout=10, fetch_local=False)
    cluster.remove_node(victim, allow_graceful=False)
    with pytest.raises(rex.ObjectReconstructionFailedError) as info:
        ray.get(ref, timeout=10)
    assert info.value.reason == "OBJECT_UNRECONSTRUCTABLE_LINEAGE_DISABLED"
    assert "lineage reconstruction is disabled" in str(info.value)


def test_node_arguments_are_honoured_warned_about_or_refused(make_cluster, capsys):
    cluster = make_cluster()
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_cpu'"):
        cluster.add_node(num_cpu=1)
    with pytest.raises(ValueError, match="plasma_directory=...\\) is not supported"):
        cluster.add_node(plasma_directory="/mnt/fast")
    with pytest.raises(ValueError, match="object_store_memory"):
        cluster.add_node(object_store_memory=-5)
    with pytest.raises(ValueError, match="'max_lineage_bytes' is a Ray setting minicluster does not have"):
        cluster.add_node(num_cpus=1, _system_config={"max_lineage_bytes": 100})
    cluster.add_node(num_cpus=1, dashboard_port=8265, _system_config={"health_check_period_ms": 100})
    assert "dashboard_port=...) has no effect" in capsys.readouterr().err
    node = cluster.add_node(num_cpus=1, memory=2**30)
    ray.init(address=cluster.address)
    memory = {n["NodeID"]: n["Resources"]["memory"] for n in ray.nodes()}
    assert memory[node.node_id] == 2**30  # (the other node has the default: the machine's)


# ---- shutting down -----------------------------------------------------------------------------


def test_shutdown_stops_every_process_and_removes_the_stores(make_cluster):
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    assert ray.get([where_am_i.remote() for _ in range(3)], timeout=10)
    # A node's worker registers with the head on its own schedule; the three tasks may all have
    # run before the last one said hello, so wait for three node managers and three workers.
    wait_for(lambda: len(_cluster_pids(cluster)) >= 6, timeout=5.0, what="every worker to register")
    pids = _cluster_pids(cluster)
    store_root = testing.snapshot().store_root
    assert all(_alive(p) for p in pids)
    cluster.shutdown()
    assert not ray.is_initialized()
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=2.0, what="every cluster process to exit")
    wait_for(lambda: not os.path.exists(store_root), timeout=1.0, what="the store folders to go")
    cluster.shutdown()  # twice is harmless
    # The process can start a new session afterwards.
    ray.init(num_cpus=1)
    assert ray.get(where_am_i.remote(), timeout=10) in testing.live_nodes()
    ray.shutdown()


def test_shutdown_of_a_cluster_never_connected(make_cluster):
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    pids = _cluster_pids(cluster)
    cluster.shutdown()
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=2.0, what="every cluster process to exit")


def test_driver_can_disconnect_and_reconnect(make_cluster):
    """In Ray, ray.shutdown() disconnects the driver; the Cluster runs on until cluster.shutdown()."""
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    assert ray.get(where_am_i.remote(), timeout=10)
    ray.shutdown()
    assert worker.any_processes_alive()
    ray.init(address=cluster.address)
    assert {n["NodeID"] for n in ray.nodes() if n["Alive"]} == {cluster.head_node.node_id, worker.node_id}
    assert ray.get(where_am_i.remote(), timeout=10)


def test_each_job_joining_a_cluster_has_its_namespace(make_cluster):
    cluster = make_cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.connect(namespace="first")

    @ray.remote
    class Named:
        def ping(self):
            return "pong"

    @ray.remote
    def namespace_in_a_task():
        return ray.get_runtime_context().namespace

    assert ray.get(namespace_in_a_task.remote(), timeout=10) == "first"
    Named.options(name="kept", lifetime="detached").remote()
    ray.shutdown()
    # A job that names no namespace has its own: the first job's names are not in it.
    ray.init(address=cluster.address)
    anonymous = ray.get_runtime_context().namespace
    assert anonymous != "first" and ray.get(namespace_in_a_task.remote(), timeout=10) == anonymous
    with pytest.raises(ValueError):
        ray.get_actor("kept")
    assert ray.get(ray.get_actor("kept", namespace="first").ping.remote(), timeout=10) == "pong"
    ray.shutdown()
    ray.init(address=cluster.address, namespace="first")  # the workers started earlier follow
    assert ray.get(namespace_in_a_task.remote(), timeout=10) == "first"
    assert ray.get(ray.get_actor("kept").ping.remote(), timeout=10) == "pong"


def test_a_cluster_without_nodes_has_no_address_and_init_starts_its_own_session():
    cluster = Cluster()
    try:
        assert cluster.address is None  # as Ray's: the address is the head node's
        ray.init(address=cluster.address, num_cpus=1)  # a session of its own, as in Ray

        @ray.remote
        def one():
            return 1

        assert ray.get(one.remote()) == 1
        ray.shutdown()
        cluster.add_node(num_cpus=1)
        assert cluster.address is not None
    finally:
        ray.shutdown()
        cluster.shutdown()
