"""Placement groups as resources: the names a reserved bundle adds to its node, and a task's request in a group.

Pure functions, used by whichever process submits (the request of a task in a
group) and by the head (what a placed bundle adds to its node). As in Ray, a
bundle {"CPU": 2} of group G placed on a node takes 2 CPU from the node's pool
and adds `CPU_group_G` and `CPU_group_<i>_G` (2 each) plus the `bundle_group_..`
markers; a task in the group asks for the renamed resources, so it can only
run where the bundle is, on what the bundle reserved.

The strategy of a task in a group is the tuple ("PG", group id, bundle index,
capture child tasks), beside ("DEFAULT",), ("SPREAD",) and ("NODE", ...) of
task_spec.py.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Dict, List, Optional, Tuple

from minicluster.util.scheduling_strategies import PlacementGroupSchedulingStrategy

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
#: what each bundle offers of the `bundle` marker; a task in the group takes a thousandth of one
BUNDLE_MARKER_TOTAL = 1000.0
BUNDLE_MARKER_REQUEST = 0.001
_GROUP = "_group_"
#: a group's resource name: <resource>_group_[<bundle index>_]<group id hex (18 bytes)>; a user's
#: own resource with "_group_" in its name does not look like this
_GROUP_NAME = re.compile(r"^(.+)_group_(?:\d+_)?[0-9a-f]{36}$")


def group_strategy(group_id: bytes, bundle_index: int, capture_child_tasks: bool) -> Tuple:
    return ("PG", group_id, bundle_index, bool(capture_child_tasks))


def bundle_resources(group_id: bytes, index: int, bundle: Dict[str, float]) -> Dict[str, float]:
    """What bundle `index` of the group adds to the node it is placed on."""
    hex_id = group_id.hex()
    added: Dict[str, float] = {}
    for key, qty in bundle.items():
        added[f"{key}{_GROUP}{hex_id}"] = qty
        added[f"{key}{_GROUP}{index}_{hex_id}"] = qty
    added[f"bundle{_GROUP}{hex_id}"] = BUNDLE_MARKER_TOTAL
    added[f"bundle{_GROUP}{index}_{hex_id}"] = BUNDLE_MARKER_TOTAL
    return added


def request_in_group(resources: Dict[str, float], group_id: bytes, index: int) -> Dict[str, float]:
    """A task's request renamed onto the group's bundle `index` (-1: any bundle)."""
    # A task on a given bundle asks for the group-wide names too, so they always count what
    # is free in the whole group (the group-wide name is what a task on any bundle asks for).
    suffixes = [group_id.hex()] if index < 0 else [group_id.hex(), f"{index}_{group_id.hex()}"]
    renamed: Dict[str, float] = {}
    for suffix in suffixes:
        for key, qty in resources.items():
            renamed[f"{key}{_GROUP}{suffix}"] = qty
        renamed[f"bundle{_GROUP}{suffix}"] = BUNDLE_MARKER_REQUEST
    return renamed


def plain_resources(resources: Dict[str, float]) -> Dict[str, float]:
    """A request with the group names taken off: what the task holds, as get_assigned_resources shows it."""
    for key in resources:
        if _GROUP in key:
            break
    else:  # (nearly every task, and several times per task: no regex then)
        return dict(resources)
    plain: Dict[str, float] = {}
    for key, qty in resources.items():
        named = _GROUP_NAME.match(key)
        if named is None:
            plain[key] = qty
        elif named.group(1) != "bundle":
            plain[named.group(1)] = qty
    return plain


def group_of(resources: Dict[str, float]) -> Optional[bytes]:
    """The group a request names (its bundle marker), or None for a request outside groups."""
    for key in resources:
        if key.startswith("bundle" + _GROUP) and _GROUP_NAME.match(key):
            return bytes.fromhex(key.rpartition("_")[2])
    return None


def is_group_resource(key: str) -> bool:
    return _GROUP_NAME.match(key) is not None


def check_bundle_index(index: int, bundle_count: int) -> None:
    if not isinstance(index, int) or isinstance(index, bool):
        raise TypeError(f"placement_group_bundle_index must be an int, got {index!r}")
    if index < -1 or index >= bundle_count:
        # (Ray's words, including its range)
        raise ValueError(f"placement group bundle index {index} is invalid. Valid placement group indexes: "
                         f"0-{bundle_count}")


def check_fits(task_name: str, resources: Dict[str, float], bundles: List[Dict[str, float]], index: int) -> None:
    """Ray refuses at submission a request no bundle it may use could ever hold."""
    if not resources:
        return
    usable = bundles if index < 0 else [bundles[index]]
    for bundle in usable:
        if all(bundle.get(key, 0.0) + 1e-9 >= qty for key, qty in resources.items()):
            return
    shown = {k: (int(v) if float(v).is_integer() else v) for k, v in resources.items()}
    raise ValueError(f"Cannot schedule {task_name} with the placement group because the resource request "
                     f"{shown} cannot fit into any bundles for the placement group, {bundles}.")


def explicit_group(options: Dict[str, Any]) -> Optional[Tuple[Any, int, bool]]:
    """(group handle, bundle index, capture child tasks) the options name, else None; ValueError
    for both ways at once (Ray's rule: the scheduling strategy, or the legacy options)."""
    strategy = options.get("scheduling_strategy")
    group = options.get("placement_group", "default")
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        if group != "default":
            raise ValueError("Placement groups should be specified via the scheduling_strategy option. "
                             "The placement_group option is deprecated.")
        return (strategy.placement_group, strategy.placement_group_bundle_index,
                bool(strategy.placement_group_capture_child_tasks))
    if group in ("default", None):  # (None: explicitly in no group, nor in a capturing parent's)
        index = options.get("placement_group_bundle_index", -1)
        if index != -1:
            raise ValueError(f"placement_group_bundle_index={index} without a placement group: the bundle index "
                             "must be -1 when no placement group is given")
        return None
    if strategy is not None:
        raise ValueError("Scheduling strategy and placement_group option cannot be both set: use "
                         "PlacementGroupSchedulingStrategy")
    warnings.warn("placement_group parameter is deprecated. Use scheduling_strategy=PlacementGroupSchedulingStrategy"
                  "(...) instead, see the usage at https://docs.ray.io/en/latest/ray-core/package-ref.html"
                  "#ray-util-scheduling-strategies-placementgroupschedulingstrategy.", DeprecationWarning,
                  stacklevel=4)
    return (group, options.get("placement_group_bundle_index", -1),
            bool(options.get("placement_group_capture_child_tasks", False)))


def in_group(task_name: str, resources: Dict[str, float], group_id: bytes, bundles: List[Dict[str, float]],
             index: int, capture: bool) -> Tuple[Tuple, Dict[str, float]]:
    """(strategy, request) of a task in the group, checked as Ray checks at submission."""
    check_bundle_index(index, len(bundles))
    check_fits(task_name, resources, bundles, index)
    return group_strategy(group_id, index, capture), request_in_group(resources, group_id, index)


def may_capture(options: Dict[str, Any]) -> bool:
    """Whether a submission with these options joins the submitting task's group when that task
    captures its children: only with no strategy and no group of its own (Ray's rule)."""
    return options.get("scheduling_strategy") is None and "placement_group" not in options


_bundles_of_group: Dict[bytes, List[Dict[str, float]]] = {}  #: this process's cache: bundles never change


def captured(client: Any, task_name: str, resources: Dict[str, float]) -> Optional[Tuple[Tuple, Dict[str, float]]]:
    """(strategy, request) in the running task's group if it captures its children, else None."""
    current = client.current_placement_group
    if current is None or not current[2]:
        return None
    group_id = current[0]
    bundles = _bundles_of_group.get(group_id)
    if bundles is None:
        row = client.state("placement_groups", group_id)
        bundles = _bundles_of_group[group_id] = [dict(b) for b in row["bundles"].values()] if row else []
    return in_group(task_name, resources, group_id, bundles, -1, True)


def explicit_in_group(task_name: str, options: Dict[str, Any],
                      resources: Dict[str, float]) -> Optional[Tuple[Tuple, Dict[str, float]]]:
    """(strategy, request) for options that name a group (None: they name none)."""
    explicit = explicit_group(options)
    if explicit is None:
        return None
    group, index, capture = explicit
    if group is None or (hasattr(group, "is_empty") and group.is_empty()):
        return None
    return in_group(task_name, resources, group.id.binary(), group.bundle_specs, index, capture)


# ---- bundle_label_selector: which nodes' labels a bundle may be placed on -------------------------

_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_IN = re.compile(r"^in\((.*)\)$")


def check_label_selectors(selectors: Any) -> List[Dict[str, str]]:
    """A list of {label key: selector} dicts, one per bundle; a selector is `value`, `!value`,
    `in(a,b)` or `!in(a,b)` (Ray's syntax). ValueError in Ray's words otherwise."""
    if not isinstance(selectors, list):
        raise ValueError(f"bundle_label_selector must be a list, got {type(selectors)}.")
    for selector in selectors:
        if not isinstance(selector, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
            raise ValueError(f"bundle_label_selector must be a list of string dictionary, got {selectors}.")
        for key, wanted in selector.items():
            problem = _key_problem(key) or _selector_problem(wanted)
            if problem:
                raise ValueError(f"Invalid label selector provided in bundle_label_selector list. "
                                 f"Detailed error: '{problem}'")
    return [dict(s) for s in selectors]


def _key_problem(key: str) -> Optional[str]:
    prefix, _, name = key.rpartition("/")
    if (prefix and not re.match(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", prefix)) or not _LABEL_NAME.match(name):
        return (f"Invalid label key name `{key}`. Name must be 63 chars or less beginning and ending with an "
                "alphanumeric character ([a-z0-9A-Z]) with dashes (-), underscores (_), dots (.), and "
                "alphanumerics between.")
    return None


def _selector_problem(wanted: str) -> Optional[str]:
    values = _selector_values(wanted)[1]
    if values is None or not all(_LABEL_VALUE.match(v) for v in values):
        return (f"Invalid label selector value `{wanted}`. The label selector value should contain optional "
                "operators (!, in(...)) and a label value of 63 chars or less, beginning and ending with an "
                "alphanumeric character.")
    return None


def _selector_values(wanted: str) -> Tuple[bool, Optional[List[str]]]:
    """(negated, the values it names); None values for a malformed `in(...)`."""
    negated = wanted.startswith("!")
    body = wanted[1:] if negated else wanted
    found = _IN.match(body)
    if found is None:
        return negated, [body]
    values = [v.strip() for v in found.group(1).split(",")]
    return negated, (values if all(values) else None)


def labels_match(labels: Dict[str, str], selector: Dict[str, str]) -> bool:
    """Whether a node with these labels satisfies a bundle's label selector."""
    for key, wanted in selector.items():
        negated, values = _selector_values(wanted)
        if (labels.get(key) in (values or ())) == negated:
            return False
    return True
