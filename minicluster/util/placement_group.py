"""Placement groups with Ray's names (`ray.util.placement_group`): reserve bundles of resources across
the virtual nodes, then run tasks and actors in them.

    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    ray.get(pg.ready())
    f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()

Runs in whichever process calls it (driver or task); the head keeps the groups
(_private/head/placement_groups.py). A group is placed all at once or stays
PENDING until nodes that fit exist; its bundles take their resources from the
nodes' pools, and a node death moves its bundles (RESCHEDULING, then CREATED).
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Dict, List, Optional, Union

from minicluster._private.client import context
from minicluster._private.common.ids import PlacementGroupID, new_placement_group_id
from minicluster._private.common.placement import STRATEGIES, check_label_selectors
from minicluster.remote_function import RemoteFunction
from minicluster.util.scheduling_strategies import PlacementGroupSchedulingStrategy

_VALID_LIFETIMES = (None, "detached")


class PlacementGroup:
    """A handle to a placement group: `ready()`, `wait()`, `bundle_specs`; pass it to tasks freely."""

    def __init__(self, id: PlacementGroupID, bundle_cache: Optional[List[Dict[str, float]]] = None) -> None:
        self.id = id
        self.bundle_cache = bundle_cache

    @staticmethod
    def empty() -> "PlacementGroup":
        return PlacementGroup(PlacementGroupID(b"\xff" * 18), [])

    def is_empty(self) -> bool:
        return self.id.binary() == b"\xff" * 18

    @property
    def bundle_specs(self) -> List[Dict[str, float]]:
        """The bundles, as created (fetched from the head once for a handle made elsewhere)."""
        if self.bundle_cache is None:
            row = _row(self.id.binary())
            self.bundle_cache = [dict(b) for b in row["bundles"].values()] if row is not None else []
        return self.bundle_cache

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> Any:
        """An ObjectRef that becomes this handle once the group is placed (a tiny task run in it)."""
        strategy = PlacementGroupSchedulingStrategy(self, placement_group_capture_child_tasks=False)
        global _ready_check
        if _ready_check is None:  # (made at first use: this module is imported while options.py loads)
            _ready_check = RemoteFunction(_ready_check_fn, {"num_cpus": 0, "max_retries": 0})
        return _ready_check.options(scheduling_strategy=strategy).remote(self)

    def wait(self, timeout_seconds: Union[float, int] = 30) -> bool:
        """Whether the group is placed (CREATED) within timeout_seconds."""
        deadline = time.monotonic() + timeout_seconds
        pause = 0.002
        while True:
            row = _row(self.id.binary())
            if row is None or row["state"] == "REMOVED":
                raise ValueError(f"Placement group {self.id} does not exist.")
            if row["state"] == "CREATED":
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.05)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and self.id == other.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id.hex()})"

    def __reduce__(self) -> tuple:
        return (PlacementGroup, (self.id, self.bundle_cache))


def _ready_check_fn(group: PlacementGroup) -> PlacementGroup:
    return group


_ready_check = None  # the RemoteFunction of _ready_check_fn, made at first use


VALID_PLACEMENT_GROUP_STRATEGIES = set(STRATEGIES)


def placement_group(bundles: List[Dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: Optional[str] = None, _soft_target_node_id: Optional[str] = None,
                    bundle_label_selector: Optional[List[Dict[str, str]]] = None,
                    topology_strategy: Optional[Dict[str, str]] = None) -> PlacementGroup:
    """Reserve `bundles` (a list of resource dicts) with `strategy`; returns at once (see ready()).
    bundle_label_selector: per bundle, the labels its node must have (`v`, `!v`, `in(a,b)`, `!in(a,b)`)."""
    validate_placement_group(bundles, strategy, lifetime, _soft_target_node_id, bundle_label_selector,
                             topology_strategy)
    if not isinstance(name, str):
        raise TypeError(f"Placement group name must be a string, got {name!r}")
    checked = _reservable(bundles)
    selectors = list(bundle_label_selector or [])
    if selectors and len(selectors) != len(checked):
        raise ValueError(f"bundle_label_selector must have one selector per bundle ({len(checked)}), "
                         f"got {len(selectors)}.")
    client = context.client()
    group_id = new_placement_group_id()
    namespace = getattr(client, "namespace", None) or "default"
    problem = client.change_placement_group(
        "create", (group_id, checked, strategy, name, namespace, lifetime == "detached", selectors))
    if problem is not None:
        raise ValueError(problem)
    return PlacementGroup(PlacementGroupID(group_id), [dict(b) for b in checked])


def validate_placement_group(bundles: List[Dict[str, float]], strategy: str = "PACK",
                             lifetime: Optional[str] = None, _soft_target_node_id: Optional[str] = None,
                             bundle_label_selector: Optional[List[Dict[str, str]]] = None,
                             topology_strategy: Optional[Dict[str, str]] = None) -> bool:
    """The checks placement_group() makes before anything is created; ValueError in Ray's words."""
    _validate_bundles(bundles)
    if strategy not in STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy}. Supported strategies are: "
                         f"{VALID_PLACEMENT_GROUP_STRATEGIES}.")
    if lifetime not in _VALID_LIFETIMES:
        raise ValueError(f"Placement group `lifetime` argument must be either `None` or 'detached'. Got {lifetime}.")
    for option, value in (("_soft_target_node_id", _soft_target_node_id), ("topology_strategy", topology_strategy)):
        if value:
            raise ValueError(f"placement_group({option}=...) is not supported by minicluster")
    if bundle_label_selector is not None:
        _validate_bundle_label_selector(bundle_label_selector)
    return True


def _validate_bundles(bundles: Any) -> None:
    if not isinstance(bundles, list):
        raise ValueError(f"Placement group bundles must be a list, got {type(bundles)}.")
    if not bundles:
        raise ValueError("Bundles must be a non-empty list of resource dictionaries. For example: "
                         '`[{"CPU": 1.0}, {"GPU": 1.0}]`. Got empty list instead.')
    for bundle in bundles:
        if not isinstance(bundle, dict) or not all(
                isinstance(k, str) and not isinstance(v, bool) and isinstance(v, (int, float)) and v >= 0
                for k, v in bundle.items()):
            raise ValueError("Bundles must be a non-empty list of resource dictionaries (resource name to a "
                             f"non-negative number). For example: `[{{'CPU': 1.0}}, {{'GPU': 1.0}}]`. Got {bundles}.")
        if not any(v > 0 for v in bundle.values()):
            raise ValueError(f"Bundles cannot be an empty dictionary or resources with only 0 values. "
                             f"Bundles: {bundles}")


def _validate_bundle_label_selector(bundle_label_selector: Any) -> None:
    check_label_selectors(bundle_label_selector)


def _reservable(bundles: List[Dict[str, float]]) -> List[Dict[str, float]]:
    """The bundles as reserved: zero quantities dropped; the group's own marker name refused."""
    out = []
    for bundle in bundles:
        if "bundle" in bundle:
            raise ValueError("'bundle' is a resource name placement groups reserve for themselves; "
                             f"it cannot be in a bundle: {bundle}")
        if "object_store_memory" in bundle:
            warnings.warn("Setting 'object_store_memory' for bundles is deprecated since it doesn't actually "
                          "reserve the required object store memory; it is left out of the bundle.",
                          DeprecationWarning, stacklevel=3)
        out.append({k: float(v) for k, v in bundle.items() if v > 0 and k != "object_store_memory"})
    return out


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Remove the group: reservations go back to the nodes; its actors die and its tasks fail."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group takes a PlacementGroup, got {placement_group!r}")
    context.client().change_placement_group("remove", placement_group.id.binary())


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The group created with this name (in this namespace) and not removed."""
    if not placement_group_name:
        raise ValueError("Please supply a non-empty value to get_placement_group")
    client = context.client()
    namespace = getattr(client, "namespace", None) or "default"
    found = client.state("placement_group_named", (placement_group_name, namespace))
    if found is None:
        raise ValueError(f"Failed to look up placement group with name: {placement_group_name}")
    group_id, bundles = found
    return PlacementGroup(PlacementGroupID(group_id), [dict(b) for b in bundles])


def placement_group_table(placement_group: Optional[PlacementGroup] = None) -> Dict[str, Any]:
    """One group's row (Ray's fields: state, bundles, bundles_to_node_id, strategy, stats, ...),
    or every group's rows by id hex."""
    if placement_group is not None:
        return _row(placement_group.id.binary()) or {}
    return context.client().state("placement_groups", None)


def get_current_placement_group() -> Optional[PlacementGroup]:
    """The group the running task or actor was placed in, or None (also in the driver)."""
    if not context.in_worker():
        return None
    current = context.client().current_placement_group
    if current is None:
        return None
    return PlacementGroup(PlacementGroupID(current[0]))


def _row(group_id: bytes) -> Optional[Dict[str, Any]]:
    return context.client().state("placement_groups", group_id)


__all__ = ["PlacementGroup", "VALID_PLACEMENT_GROUP_STRATEGIES", "validate_placement_group", "placement_group",
           "remove_placement_group", "get_placement_group", "placement_group_table", "get_current_placement_group"]
