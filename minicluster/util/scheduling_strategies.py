"""Scheduling strategies with Ray's names (`ray.util.scheduling_strategies`)."""

from __future__ import annotations

from typing import Any, Optional, Union


class NodeAffinitySchedulingStrategy:
    """Run on the node with `node_id` (hex string). With soft=True, run elsewhere if it is dead or full."""

    def __init__(self, node_id: Any, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False) -> None:
        if hasattr(node_id, "hex") and not isinstance(node_id, str):
            node_id = node_id.hex()
        if not isinstance(node_id, str):
            raise TypeError("NodeAffinitySchedulingStrategy: node_id must be a hex string, "
                            f"got {type(node_id).__name__}")
        if not isinstance(soft, bool):
            raise TypeError(f"NodeAffinitySchedulingStrategy: soft must be a bool, got {soft!r}")
        self.node_id = node_id
        self.soft = soft
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


class PlacementGroupSchedulingStrategy:
    """Run in a placement group (util/placement_group.py): on bundle `placement_group_bundle_index`
    (-1: any bundle), on what the bundle reserved. With placement_group_capture_child_tasks=True,
    the tasks and actors it submits without a strategy run in the group too."""

    def __init__(self, placement_group: Any, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: Optional[bool] = None) -> None:
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def __repr__(self) -> str:
        return (f"PlacementGroupSchedulingStrategy(placement_group={self.placement_group!r}, "
                f"placement_group_bundle_index={self.placement_group_bundle_index}, "
                f"placement_group_capture_child_tasks={self.placement_group_capture_child_tasks})")


SchedulingStrategyT = Union[None, str, NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy]
