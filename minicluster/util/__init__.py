"""Ray's `ray.util`: helpers beside the core API.

Submodules, Ray's names: actor_pool (ActorPool), queue (Queue, Empty, Full),
multiprocessing (Pool), joblib (register_ray), helpers (as_completed, map_unordered),
check_serialize (inspect_serializability), serialization (register_serializer),
named_actors (list_named_actors), placement_group (placement groups; its functions are
here too, as in Ray), scheduling_strategies, state.
"""

from __future__ import annotations

from minicluster.util.actor_pool import ActorPool
from minicluster.util.check_serialize import inspect_serializability
from minicluster.util.helpers import as_completed, map_unordered
from minicluster.util.named_actors import list_named_actors
from minicluster.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from minicluster.util.serialization import deregister_serializer, register_serializer


def get_node_ip_address(address: str = "8.8.8.8:53") -> str:
    """The IP address of the node this code runs on: every virtual node is this machine, 127.0.0.1
    (Ray's `address` names a host to route toward; nothing is contacted here)."""
    return "127.0.0.1"


__all__ = [
    "ActorPool",
    "PlacementGroup",
    "as_completed",
    "deregister_serializer",
    "get_current_placement_group",
    "get_node_ip_address",
    "get_placement_group",
    "inspect_serializability",
    "list_named_actors",
    "map_unordered",
    "placement_group",
    "placement_group_table",
    "register_serializer",
    "remove_placement_group",
]
