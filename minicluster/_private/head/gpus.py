"""Which of a node's GPUs a task or actor gets: the ids behind `get_gpu_ids()` and CUDA_VISIBLE_DEVICES.

Runs in the head (driver process, under the head's lock). The scheduler counts a node's
"GPU" resource; this module picks the devices, when a task or an actor's creation is sent
to a worker (task_placement.send_exec), as Ray's raylet assigns resource instances:

  - a whole number of GPUs: that many devices no one uses;
  - a fraction (below 1): one device with that much left, the first that fits, so fractional
    tasks share a device (two 0.5-GPU tasks run on the same GPU while the others are busy).

A worker holds its devices while it runs a GPU task (blocked in get() or not: only CPUs are
lent out then) and an actor for its whole life. A node's device ids are 0..N-1, or, if the
driver was started with CUDA_VISIBLE_DEVICES, the first N of those (as Ray's ids are a subset
of what the node may see).

A placement group's bundle with GPUs owns devices of its node from when it is placed until it
is removed or its node dies (GroupDevices): its tasks and actors get those devices, and no one
else gets a device a bundle owns whole, as in Ray, where a bundle reserves resource instances.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

from minicluster._private.common.placement import plain_resources

_EPS = 1e-9


def detect_gpus() -> int:
    """GPUs this machine has, cheaply (no nvidia-smi, no CUDA library): the devices listed in
    CUDA_VISIBLE_DEVICES if it is set, else the NVIDIA driver's /proc entries; 0 without them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def device_ids(count: float) -> List[str]:
    """The ids of a node's `count` GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    whole = int(count)
    if visible is not None:
        listed = [d.strip() for d in visible.split(",") if d.strip()]
        if len(listed) >= whole:
            return listed[:whole]
    return [str(i) for i in range(whole)]


def _holding(worker: Any) -> Tuple[Tuple[str, ...], float]:
    """The devices a worker (a WorkerRecord) holds now, and how much of each."""
    devices: Tuple[str, ...] = worker.gpus
    if not devices:
        return (), 0.0
    if worker.actor is not None:
        held = plain_resources(worker.actor.held).get("GPU", 0.0)
    elif worker.queue:
        held = plain_resources(worker.queue[0].spec.resources).get("GPU", 0.0)
    else:
        return (), 0.0
    return devices, (held if held < 1 else 1.0)


def assign(node_devices: List[str], workers: Dict[bytes, Any], worker: Any, amount: float) -> Tuple[str, ...]:
    """The devices `worker` gets for a task or actor needing `amount` GPUs on its node, chosen
    around what the node's other workers hold; recorded on the worker (its `gpus`)."""
    used = {device: 0.0 for device in node_devices}
    for other in workers.values():
        if other is worker or other.dead:
            continue
        devices, share = _holding(other)
        for device in devices:
            if device in used:
                used[device] += share
    if amount < 1:
        fitting = [d for d in node_devices if used[d] + amount <= 1 + _EPS]
        # The scheduler counted the GPU as free, so one fits unless fractions are scattered
        # over devices; then the least used one is shared.
        chosen = (fitting[0] if fitting else min(node_devices, key=lambda d: used[d]),)
    else:
        free = [d for d in node_devices if used[d] <= _EPS]
        need = int(amount)
        if len(free) < need:
            # Only when fractions pin devices that the scheduler's total counts as free.
            free += sorted((d for d in node_devices if d not in free), key=lambda d: used[d])
        chosen = tuple(free[:need])
    worker.gpus = chosen
    return chosen


class GroupDevices:
    """The devices each placement-group bundle owns (placed by placement_groups.py)."""

    def __init__(self) -> None:
        #: (group id, bundle index) -> (node id, its devices, the bundle's GPU amount)
        self.owned: Dict[Tuple[bytes, int], Tuple[bytes, Tuple[str, ...], float]] = {}

    def reserve(self, group_id: bytes, index: int, node_id: bytes, node_devices: List[str], amount: float) -> None:
        """Bundle `index` of the group was placed on the node: it takes `amount` GPUs' devices."""
        if not amount or not node_devices:
            return
        owned = self._owned_on(node_id)
        if amount < 1:
            fitting = [d for d in node_devices if owned.get(d, 0.0) + amount <= 1 + _EPS]
            chosen: Tuple[str, ...] = (fitting[0] if fitting else min(node_devices, key=lambda d: owned.get(d, 0.0)),)
        else:
            # The scheduler counted the node's GPUs: whole devices no other bundle owns are there.
            free = [d for d in node_devices if owned.get(d, 0.0) <= _EPS]
            chosen = tuple(free[:int(amount)])
        self.owned[(group_id, index)] = (node_id, chosen, amount)

    def release(self, group_id: bytes, index: int) -> None:
        self.owned.pop((group_id, index), None)

    def pool(self, strategy: Tuple, node_id: bytes, node_devices: List[str]) -> List[str]:
        """The devices a task or actor with this scheduling strategy may be given on the node: its
        bundle's (any of its group's bundles there, for bundle index -1), else those no bundle
        owns whole."""
        if strategy[0] == "PG":
            group_id, index = strategy[1], strategy[2]
            mine = {d for (group, i), (node, devices, _) in self.owned.items()
                    if group == group_id and node == node_id and (index < 0 or i == index) for d in devices}
            return [d for d in node_devices if d in mine] or node_devices
        owned = self._owned_on(node_id)
        return [d for d in node_devices if owned.get(d, 0.0) < 1 - _EPS] or node_devices

    def _owned_on(self, node_id: bytes) -> Dict[str, float]:
        """device -> how much of it the bundles on the node own."""
        owned: Dict[str, float] = {}
        for node, devices, amount in self.owned.values():
            if node == node_id:
                share = amount if amount < 1 else 1.0
                for device in devices:
                    owned[device] = owned.get(device, 0.0) + share
        return owned
