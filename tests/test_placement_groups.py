"""Placement groups: reserving bundles on the virtual nodes, running tasks and actors in them,
pending groups, removal, and a node death that moves a bundle and its actor."""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import wait_for
from driver_process import DriverProcess, minicluster_cmd

import minicluster as ray
from minicluster import exceptions, testing
from minicluster.cluster_utils import Cluster
from minicluster.util import state
from minicluster.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from minicluster.util.scheduling_strategies import PlacementGroupSchedulingStrategy

pytestmark = pytest.mark.timeout(60)


def in_group(pg: PlacementGroup, index: int = -1, capture: bool = False) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index,
                                            placement_group_capture_child_tasks=capture)


@ray.remote
def where() -> tuple:
    ctx = ray.get_runtime_context()
    return ctx.get_node_id(), ctx.get_assigned_resources(), ctx.get_placement_group_id()


def plain(resources: dict) -> dict:
    return {k: v for k, v in resources.items() if "_group_" not in k and not k.startswith("node:")}


def test_a_group_reserves_its_bundles_from_the_nodes_pools(cluster):
    cluster(num_nodes=2, num_cpus=2)
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK", name="pair")
    assert ray.get(pg.ready(), timeout=20) == pg
    assert pg.wait(5) is True
    assert pg.bundle_specs == [{"CPU": 1.0}, {"CPU": 1.0}] and pg.bundle_count == 2
    # Bundles take CPUs from the pool; the group's named resources appear beside them (Ray's names).
    assert plain(ray.available_resources())["CPU"] == 2.0
    assert plain(ray.cluster_resources())["CPU"] == 4.0
    hex_id = pg.id.hex()
    assert ray.cluster_resources()[f"CPU_group_{hex_id}"] == 2.0
    assert ray.cluster_resources()[f"CPU_group_0_{hex_id}"] == 1.0
    row = placement_group_table(pg)
    assert row["state"] == "CREATED" and row["strategy"] == "PACK" and row["name"] == "pair"
    snap = testing.snapshot()
    assert snap.placement_groups == {hex_id: "CREATED"}
    assert list(snap.reserved.values()) == [{"CPU": 2.0}]
    assert len(set(row["bundles_to_node_id"].values())) == 1  # PACK: both on one node when they fit
    assert get_placement_group("pair") == pg
    assert hex_id in placement_group_table()
    remove_placement_group(pg)
    assert placement_group_table(pg)["state"] == "REMOVED"
    assert ray.available_resources() == ray.cluster_resources()
    assert not [k for k in ray.cluster_resources() if "_group_" in k]
    with pytest.raises(ValueError, match="Failed to look up placement group"):
        get_placement_group("pair")


def test_tasks_run_on_their_bundles_node_and_hold_the_bundles_resources(cluster):
    cluster(num_nodes=3, num_cpus=1)
    pg = placement_group([{"CPU": 1}, {"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    ray.get(pg.ready(), timeout=20)
    nodes = placement_group_table(pg)["bundles_to_node_id"]
    assert len(set(nodes.values())) == 3
    for index in range(3):
        node, assigned, group = ray.get(where.options(scheduling_strategy=in_group(pg, index)).remote(), timeout=20)
        assert node == nodes[index] and assigned == {"CPU": 1.0} and group == pg.id.hex()
    # The legacy options work too.
    node, _, _ = ray.get(where.options(placement_group=pg, placement_group_bundle_index=1).remote(), timeout=20)
    assert node == nodes[1]
    # Every CPU of the cluster is reserved: a task outside the group cannot run, one inside can.
    assert ray.available_resources().get("CPU", 0) == 0
    outside = where.remote()
    assert ray.wait([outside], timeout=0.5)[0] == []
    ray.get(where.options(scheduling_strategy=in_group(pg)).remote(), timeout=20)
    remove_placement_group(pg)
    ray.get(outside, timeout=20)


def test_a_request_larger_than_any_bundle_is_refused_at_submission(cluster):
    cluster(num_nodes=1, num_cpus=4)
    pg = placement_group([{"CPU": 1}, {"CPU": 2}])
    with pytest.raises(ValueError, match="cannot fit into any bundles"):
        where.options(num_cpus=2, scheduling_strategy=in_group(pg, 0)).remote()
    with pytest.raises(ValueError, match="bundle index 2 is invalid"):
        where.options(scheduling_strategy=in_group(pg, 2)).remote()
    ray.get(where.options(num_cpus=2, scheduling_strategy=in_group(pg)).remote(), timeout=20)


def test_bad_groups_are_refused_with_rays_words(cluster):
    cluster(num_nodes=1)
    with pytest.raises(ValueError, match="Invalid placement group strategy"):
        placement_group([{"CPU": 1}], strategy="TIGHT")
    with pytest.raises(ValueError, match="non-empty list"):
        placement_group([])
    with pytest.raises(ValueError, match="only 0 values"):
        placement_group([{"CPU": 0}])
    with pytest.raises(ValueError, match="lifetime"):
        placement_group([{"CPU": 1}], lifetime="forever")
    with pytest.raises(TypeError):  # Ray 2.60 dropped it too
        placement_group([{"CPU": 1}], _max_cpu_fraction_per_node=0.5)
    with pytest.raises(ValueError, match="reserve for themselves"):
        placement_group([{"bundle": 1}])
    with pytest.raises(ValueError, match="Invalid label selector"):
        placement_group([{"CPU": 1}], bundle_label_selector=[{"bad key!": "a"}])
    with pytest.raises(ValueError, match="not supported"):
        placement_group([{"CPU": 1}], _soft_target_node_id="00" * 28)
    placement_group([{"CPU": 1}], name="taken")
    with pytest.raises(ValueError, match="already exists"):
        placement_group([{"CPU": 1}], name="taken")


@ray.remote(num_cpus=0)
def zone() -> str:
    return ray.get_runtime_context().get_node_labels()["zone"]


def test_bundle_label_selectors_choose_the_nodes():
    ray_cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "labels": {"zone": "a"}})
    try:
        ray_cluster.add_node(num_cpus=1, labels={"zone": "b"})
        ray_cluster.add_node(num_cpus=1, labels={"zone": "c"})
        ray.init(address=ray_cluster.address)
        pg = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="PACK",
                             bundle_label_selector=[{"zone": "!a"}, {"zone": "in(a,c)"}])
        ray.get(pg.ready(), timeout=20)
        zones = [ray.get(zone.options(scheduling_strategy=in_group(pg, i)).remote(), timeout=20) for i in (0, 1)]
        assert zones[0] in ("b", "c") and zones[1] in ("a", "c")
        exact = placement_group([{"CPU": 0.1}], bundle_label_selector=[{"zone": "b"}])
        assert ray.get(zone.options(scheduling_strategy=in_group(exact)).remote(), timeout=20) == "b"
        never = placement_group([{"CPU": 0.1}], bundle_label_selector=[{"zone": "d"}])
        assert never.wait(0.3) is False
        testing.validate_state()
    finally:
        ray.shutdown()
        ray_cluster.shutdown()


def test_a_group_that_does_not_fit_stays_pending_until_a_node_is_added(cluster):
    cluster(num_nodes=1, num_cpus=1)
    pg = placement_group([{"CPU": 2}])
    assert pg.wait(0.3) is False
    assert placement_group_table(pg)["state"] == "PENDING"
    ready = pg.ready()
    assert ray.wait([ready], timeout=0.3)[0] == []
    testing.add_node(num_cpus=2)
    assert ray.get(ready, timeout=20) == pg
    assert placement_group_table(pg)["state"] == "CREATED"


def test_an_actor_placed_on_a_node_before_it_said_hello_gets_its_own_worker(cluster):
    cluster(num_nodes=1, num_cpus=0)
    pg = placement_group([{"CPU": 1}])
    ready = pg.ready()

    @ray.remote(num_cpus=1)
    class Member:
        def ping(self) -> str:
            return ray.get_runtime_context().get_placement_group_id()

    member = Member.options(scheduling_strategy=in_group(pg)).remote()
    # Both are placed on the new node as it is added, before its node manager is up; its first
    # (and only) worker goes to the ready() task, so the actor needs one more.
    testing.add_node(num_cpus=1)
    assert ray.get(ready, timeout=20) == pg
    assert ray.get(member.ping.remote(), timeout=20) == pg.id.hex()


def test_removal_fails_queued_tasks_and_kills_the_groups_actors(cluster):
    cluster(num_nodes=1, num_cpus=2)
    pg = placement_group([{"CPU": 1}])
    ray.get(pg.ready(), timeout=20)

    @ray.remote(num_cpus=1)
    class Holder:
        def ping(self) -> int:
            return os.getpid()

    actor = Holder.options(scheduling_strategy=in_group(pg, 0)).remote()
    ray.get(actor.ping.remote(), timeout=20)
    assert state.list_actors(detail=True)[0].placement_group_id == pg.id.hex()
    queued = where.options(scheduling_strategy=in_group(pg, 0)).remote()  # the actor holds the bundle's CPU
    assert ray.wait([queued], timeout=0.3)[0] == []
    remove_placement_group(pg)
    with pytest.raises(exceptions.TaskPlacementGroupRemoved):
        ray.get(queued, timeout=20)
    with pytest.raises(exceptions.ActorDiedError, match=f"placement group was removed.*{pg.id.hex()}"):
        ray.get(actor.ping.remote(), timeout=20)
    with pytest.raises(exceptions.TaskPlacementGroupRemoved):
        ray.get(where.options(scheduling_strategy=in_group(pg)).remote(), timeout=20)
    wait_for(lambda: plain(ray.available_resources()) == plain(ray.cluster_resources()), timeout=10,
             what="the group's CPU to come back")


def test_removal_kills_a_running_task_which_then_fails(cluster):
    cluster(num_nodes=1, num_cpus=2)
    pg = placement_group([{"CPU": 1}])

    @ray.remote(max_retries=1)
    def sleeper() -> None:
        time.sleep(60)

    ref = sleeper.options(scheduling_strategy=in_group(pg)).remote()
    wait_for(lambda: any(t.state == "RUNNING" for t in state.list_tasks(filters=[("name", "=", "sleeper")])),
             timeout=20, what="the task to run")
    remove_placement_group(pg)
    with pytest.raises(exceptions.TaskPlacementGroupRemoved):
        ray.get(ref, timeout=20)


def test_child_tasks_join_the_group_only_when_captured(cluster):
    cluster(num_nodes=2, num_cpus=2)
    pg = placement_group([{"CPU": 1}])
    ray.get(pg.ready(), timeout=20)

    @ray.remote(num_cpus=0)
    def parent() -> tuple:
        current = get_current_placement_group()
        child = ray.get(where.options(num_cpus=0.5).remote())
        return (current.id.hex() if current else None), child[2]

    assert ray.get(parent.options(scheduling_strategy=in_group(pg)).remote(), timeout=20) == (pg.id.hex(), None)
    captured = parent.options(scheduling_strategy=in_group(pg, capture=True)).remote()
    assert ray.get(captured, timeout=20) == (pg.id.hex(), pg.id.hex())
    assert get_current_placement_group() is None  # the driver is in no group


def test_a_node_death_moves_the_bundle_and_its_actor_restarts_there(cluster):
    cluster(num_nodes=3, num_cpus=1)
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    ray.get(pg.ready(), timeout=20)

    @ray.remote(num_cpus=1, max_restarts=1)
    class Keeper:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    actor = Keeper.options(scheduling_strategy=in_group(pg, 1)).remote()
    first = ray.get(actor.node.remote(), timeout=20)
    before = placement_group_table(pg)["bundles_to_node_id"]
    assert first == before[1]
    testing.kill_node(first)
    # The group goes back to creating while its bundle moves to the one node left that fits.
    wait_for(lambda: placement_group_table(pg)["state"] == "CREATED"
             and placement_group_table(pg)["bundles_to_node_id"][1] not in ("", first), timeout=20,
             what="the bundle to be placed again")
    after = placement_group_table(pg)["bundles_to_node_id"]
    assert after[0] == before[0]  # the surviving bundle stays where it was
    assert len({after[0], after[1]}) == 2  # still STRICT_SPREAD
    second = wait_for(lambda: _try(lambda: ray.get(actor.node.remote(), timeout=5)), timeout=30,
                      what="the actor to answer again")
    assert second == after[1]
    assert ray.get(where.options(num_cpus=0, scheduling_strategy=in_group(pg, 1)).remote(), timeout=20)[0] == after[1]


def test_a_group_whose_node_died_waits_for_a_node_that_fits(cluster):
    cluster(num_nodes=1, num_cpus=1)
    testing.add_node(num_cpus=2)
    pg = placement_group([{"CPU": 2}])
    ray.get(pg.ready(), timeout=20)
    holder = placement_group_table(pg)["bundles_to_node_id"][0]
    testing.kill_node(holder)
    wait_for(lambda: placement_group_table(pg)["state"] == "RESCHEDULING", timeout=10, what="rescheduling")
    assert pg.wait(0.2) is False
    testing.add_node(num_cpus=2)
    assert pg.wait(20) is True


def test_state_api_lists_placement_groups(cluster):
    cluster(num_nodes=1, num_cpus=2)
    pg = placement_group([{"CPU": 1}], name="listed", lifetime="detached")
    ray.get(pg.ready(), timeout=20)
    rows = state.list_placement_groups()
    assert [r.placement_group_id for r in rows] == [pg.id.hex()]
    row = rows[0]
    assert row.name == "listed" and row.state == "CREATED" and row.is_detached is None  # (a detail field)
    assert state.list_placement_groups(detail=True)[0].is_detached is True
    assert state.get_placement_group(pg.id.hex()).name == "listed"
    assert state.list_placement_groups(filters=[("state", "=", "REMOVED")]) == []


def _try(fn):
    try:
        return fn()
    except (exceptions.RayActorError, exceptions.GetTimeoutError):
        return None


CLI_SCRIPT = """
    import minicluster as ray
    from minicluster.util.placement_group import placement_group, remove_placement_group

    info = ray.init(num_cpus=2)
    kept = placement_group([{"CPU": 1}], name="kept")
    ray.get(kept.ready())
    gone = placement_group([{"CPU": 1}], name="gone")
    remove_placement_group(gone)
    print("SESSION", info.address_info["session_dir"], flush=True)
    print("KEPT", kept.id.hex(), flush=True)
    ray.shutdown()
"""


def test_the_cli_lists_placement_groups_of_an_ended_session(tmp_path):
    driver = DriverProcess(CLI_SCRIPT, str(tmp_path / "driver.py"), [])
    try:
        session = driver.expect("SESSION")
        kept = driver.expect("KEPT")
        assert driver.finish() == 0
    finally:
        driver.kill()
    listed = minicluster_cmd("list", "placement-groups", "--session", session, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["kept"]["placement_group_id"] == kept and rows["kept"]["state"] == "CREATED"
    assert rows["gone"]["state"] == "REMOVED"
    table = minicluster_cmd("list", "placement-groups", "--session", session)
    assert "PLACEMENT_GROUP_ID" in table.stdout and kept[:8] in table.stdout  # ids shortened to fit the terminal
    wide = minicluster_cmd("list", "placement-groups", "--session", session, "--wide")
    assert kept in wide.stdout
    got = minicluster_cmd("get", "placement-group", kept[:10], "--session", session, "--format", "json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)[0]["bundles"][0]["unit_resources"] == {"CPU": 1.0}


def test_an_actors_groups_go_with_its_process_unless_detached(cluster):
    cluster(num_nodes=1, num_cpus=3)

    @ray.remote(num_cpus=0, max_restarts=1)
    class Creator:
        def make(self, detached: bool) -> PlacementGroup:
            pg = placement_group([{"CPU": 1}], lifetime="detached" if detached else None)
            ray.get(pg.ready())
            return pg

    creator = Creator.remote()
    owned = ray.get(creator.make.remote(False), timeout=20)
    kept = ray.get(creator.make.remote(True), timeout=20)
    assert plain(ray.available_resources())["CPU"] == 1.0
    ray.kill(creator, no_restart=False)  # its process goes (it restarts): Ray removes what it created
    wait_for(lambda: placement_group_table(owned)["state"] == "REMOVED", timeout=20, what="the group to go")
    assert placement_group_table(kept)["state"] == "CREATED"
    assert plain(ray.available_resources())["CPU"] == 2.0
    # A group the driver created lives as long as the session.
    mine = placement_group([{"CPU": 1}])
    assert mine.wait(20) is True


def test_a_gpu_task_in_a_group_keeps_its_worker_apart_from_cpu_tasks(cluster):
    cluster(num_nodes=1, num_cpus=2, num_gpus=1)
    pg = placement_group([{"CPU": 1, "GPU": 1}])
    ray.get(pg.ready(), timeout=20)

    @ray.remote
    def pid() -> int:
        return os.getpid()

    gpu_pid = ray.get(pid.options(num_gpus=1, scheduling_strategy=in_group(pg)).remote(), timeout=20)
    # As in Ray, a worker that ran a GPU task never runs a CPU-only one (its GPU is the bundle's here).
    cpu_pids = {ray.get(pid.remote(), timeout=20) for _ in range(5)}
    assert gpu_pid not in cpu_pids


def test_a_users_resource_named_like_a_group_is_left_alone(cluster):
    cluster(num_nodes=1, num_cpus=1, resources={"disk_group_a": 2})
    got = ray.get(where.options(resources={"disk_group_a": 1}).remote(), timeout=20)[1]
    assert got == {"CPU": 1.0, "disk_group_a": 1.0}
    testing.validate_state()
