"""Scheduling strategies with Ray's names (`ray.util.scheduling_strategies`)."""

from __future__ import annotations

from typing import Any, Union


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
    """Accepted for import compatibility; placement groups are not supported by minicluster."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("minicluster does not support placement groups")


SchedulingStrategyT = Union[None, str, NodeAffinitySchedulingStrategy]
