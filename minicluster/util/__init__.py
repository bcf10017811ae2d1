"""Ray's `ray.util`: helpers beside the core API (its submodules: scheduling_strategies, state,
placement_group; the placement group functions are here too, as in Ray)."""

from __future__ import annotations

from minicluster.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)


def get_node_ip_address(address: str = "8.8.8.8:53") -> str:
    """The IP address of the node this code runs on: every virtual node is this machine, 127.0.0.1
    (Ray's `address` names a host to route toward; nothing is contacted here)."""
    return "127.0.0.1"


__all__ = ["get_node_ip_address", "PlacementGroup", "placement_group", "remove_placement_group",
           "get_placement_group", "placement_group_table", "get_current_placement_group"]
