"""GPUs: counted per node (given or detected), each task or actor given device ids (get_gpu_ids,
CUDA_VISIBLE_DEVICES, get_accelerator_ids), fractions sharing a device, held while a task waits."""

import os

import pytest

import minicluster as ray
from minicluster import testing
from minicluster.util.placement_group import placement_group
from minicluster.util.scheduling_strategies import PlacementGroupSchedulingStrategy

pytestmark = pytest.mark.timeout(60)


@ray.remote
def devices():
    context = ray.get_runtime_context()
    return (ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"), context.get_accelerator_ids()["GPU"],
            context.get_assigned_resources())


@ray.remote
class Holder:
    def devices(self):
        return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_a_task_gets_as_many_devices_as_it_asks_for(cluster):
    cluster(num_cpus=2, num_gpus=2)
    assert ray.get(devices.options(num_gpus=1).remote()) == ([0], "0", ["0"], {"CPU": 1.0, "GPU": 1.0})
    assert ray.get(devices.options(num_gpus=2).remote()) == ([0, 1], "0,1", ["0", "1"], {"CPU": 1.0, "GPU": 2.0})
    assert ray.get(devices.remote()) == ([], None, [], {"CPU": 1.0})
    assert ray.get_gpu_ids() == [] and ray.get_runtime_context().get_accelerator_ids() == {"GPU": []}
    assert ray.cluster_resources()["GPU"] == 2


def test_actors_hold_distinct_devices_and_fractions_share_one(cluster):
    cluster(num_cpus=4, num_gpus=2)
    whole = Holder.options(num_gpus=1).remote()
    assert ray.get(whole.devices.remote()) == ([0], "0")
    halves = [Holder.options(num_gpus=0.5).remote() for _ in range(2)]
    # device 0 is taken: both halves share device 1, as Ray packs fractions on one device
    assert [ray.get(h.devices.remote()) for h in halves] == [([1], "1"), ([1], "1")]
    assert ray.available_resources().get("GPU", 0.0) == 0.0
    ray.kill(whole)
    assert ray.get(Holder.options(num_gpus=1).remote().devices.remote()) == ([0], "0")


def test_a_task_blocked_in_get_keeps_its_gpu_and_lends_only_its_cpu(cluster):
    cluster(num_cpus=2, num_gpus=1)

    @ray.remote
    def slow():
        import time

        time.sleep(0.5)
        return 1

    @ray.remote(num_gpus=1)
    def waits():
        return ray.get(slow.remote()), ray.get_gpu_ids()

    ref = waits.remote()
    # while it waits, a second GPU task cannot start: the device is still its own
    second = devices.options(num_gpus=1).remote()
    ready, _ = ray.wait([second], timeout=0.3)
    assert not ready
    assert ray.get(ref) == (1, [0])
    assert ray.get(second)[0] == [0]


def test_devices_come_from_cuda_visible_devices_when_set_and_none_are_detected_here(cluster, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    cluster(num_cpus=1)  # num_gpus not given: the visible devices are the node's
    assert ray.cluster_resources()["GPU"] == 2
    assert ray.get(devices.options(num_gpus=1).remote())[:2] == ([3], "3")
    ray.shutdown()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    if not os.path.isdir("/proc/driver/nvidia/gpus"):
        cluster(num_cpus=1)
        assert "GPU" not in ray.cluster_resources()


def test_fractions_above_one_are_refused_and_zero_gpus_can_empty_the_variable(cluster, monkeypatch):
    with pytest.raises(ValueError, match="GPU resource quantities >1 must be whole numbers"):
        devices.options(num_gpus=1.5)
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")  # Ray's switch, read by the workers
    cluster(num_cpus=1, num_gpus=1)
    assert ray.get(devices.options(num_gpus=0).remote())[1] == ""


def test_work_without_gpus_stays_off_gpu_nodes_while_others_have_room(cluster):
    cluster(num_cpus=2, num_gpus=1)  # the driver's node has the GPU
    gpu_node = ray.get_runtime_context().get_node_id()
    cpu_node = testing.add_node(num_cpus=2)

    @ray.remote
    def where():
        return ray.get_runtime_context().get_node_id()

    assert ray.get(where.remote()) == cpu_node  # (not the submitter's node, which has the GPU)
    assert ray.get(where.options(num_gpus=1).remote()) == gpu_node


def test_a_gpu_actor_restarted_on_another_node_gets_that_nodes_device(cluster):
    cluster(num_cpus=1, num_gpus=1)
    other = testing.add_node(num_cpus=1, resources={"GPU": 1})

    @ray.remote(num_gpus=1, max_restarts=1)
    class Placed:
        def where(self):
            return ray.get_runtime_context().get_node_id(), ray.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    actor = Placed.remote()
    first_node, ids, visible = ray.get(actor.where.remote())
    assert (ids, visible) == ([0], "0")
    survivor = other if first_node != other else ray.get_runtime_context().get_node_id()
    testing.kill_node(first_node)
    node, ids, visible = ray.get(actor.where.remote(), timeout=20)
    assert (node, ids, visible) == (survivor, [0], "0")
    assert ray.available_resources().get("GPU", 0.0) == 0.0  # the survivor's device is the actor's now


def test_a_task_in_a_placement_group_gets_the_bundles_gpu(cluster):
    cluster(num_cpus=2, num_gpus=1)
    group = placement_group([{"CPU": 1, "GPU": 1}])
    ray.get(group.ready(), timeout=10)
    in_group = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)
    ids, visible, accelerators, held = ray.get(devices.options(num_gpus=1, scheduling_strategy=in_group).remote())
    assert (ids, visible, accelerators) == ([0], "0", ["0"])
    assert held == {"CPU": 1.0, "GPU": 1.0}


def test_each_placement_group_bundle_owns_its_devices(cluster):
    # As in Ray, a bundle reserves device instances: tasks of two one-GPU groups run one after
    # the other yet see different devices, and a task outside the groups never gets theirs.
    from minicluster.util.placement_group import remove_placement_group

    cluster(num_cpus=2, num_gpus=3)
    first, second = placement_group([{"GPU": 1}]), placement_group([{"GPU": 1}])
    assert first.wait(10) and second.wait(10)

    def in_group(group, **options):
        strategy = PlacementGroupSchedulingStrategy(group)
        return ray.get(devices.options(num_gpus=1, num_cpus=0, scheduling_strategy=strategy, **options).remote())[1]

    a, b = in_group(first), in_group(second)
    assert a != b
    assert in_group(first) == a and in_group(second) == b  # the same device every time
    outside = ray.get(devices.options(num_gpus=1).remote())[1]
    assert outside not in (a, b)
    remove_placement_group(first)
    assert ray.get(devices.options(num_gpus=2).remote())[1].split(",") == sorted({"0", "1", "2"} - {b})
