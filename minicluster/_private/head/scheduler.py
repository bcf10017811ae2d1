"""Placement: which node runs a task, by resources and scheduling strategy.

Pure bookkeeping with no I/O, owned by the head (driver process, under the
head's lock), so it can be tested without processes.

Every node has resources: `CPU`, `node:<node id hex>`, and any custom ones.
A task's request must fit a node's *available* resources to be placed there;
it is *infeasible* if no live node's *total* could ever hold it (Ray then
warns and keeps it pending until a fitting node is added).

Strategies, as in Ray:
  DEFAULT  the preferred node (where the task's large arguments live, else
           the submitter's node) while it is at most half busy, else the least
           busy node that fits;
  SPREAD   round-robin over the nodes that fit;
  NODE     NodeAffinitySchedulingStrategy: that node; if it is dead or can
           never fit the task, soft=True falls back to DEFAULT and soft=False
           makes the task unschedulable.
  PG       a task in a placement group: its request names the group's resources
           (common/placement.py), which only its bundles' nodes have; while the
           group is being placed it waits instead of being infeasible, and once
           the group is removed it is unschedulable (placement_groups.py).

As in Ray (RAY_scheduler_avoid_gpu_nodes), DEFAULT places a task that needs no GPU on a node
without GPUs while one of those fits it now; GPU nodes take it only otherwise.

A task's `label_selector` (common/labels.py) narrows every strategy to the nodes whose
labels match; no live node matching is infeasible, like a resource no node has. Its
`fallback_strategy` selectors are used, in order, while no live node could match the ones before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from minicluster._private.common import config
from minicluster._private.common.labels import Selector, matches
from minicluster._private.common.placement import is_group_resource

INFEASIBLE = "INFEASIBLE"
_EPS = 1e-9
_DIGITS = 4  #: resources are exact to 0.0001, as Ray's fixed-point ones (_exact)


class Unschedulable(Exception):
    """The task can never run (hard affinity to a dead node)."""


@dataclass
class NodeResources:
    node_id: bytes
    total: Dict[str, float]
    available: Dict[str, float] = field(default_factory=dict)
    alive: bool = True
    stopped: bool = False  #: SIGSTOPped: alive, but takes no new work
    labels: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.available:
            self.available = dict(self.total)

    def fits(self, request: Dict[str, float]) -> bool:
        available = self.available
        for key, qty in request.items():
            if available.get(key, 0.0) + _EPS < qty:
                return False
        return True

    def could_fit(self, request: Dict[str, float]) -> bool:
        total = self.total
        return all(total.get(key, 0.0) + _EPS >= qty for key, qty in request.items())

    def cpu_load(self) -> float:
        total = self.total.get("CPU", 0.0)
        if total <= 0:
            return 1.0
        return 1.0 - self.available.get("CPU", 0.0) / total


class Scheduler:
    def __init__(self) -> None:
        self.nodes: Dict[bytes, NodeResources] = {}
        self._spread_next = 0
        self.avoid_gpu_nodes = config.avoid_gpu_nodes()
        #: the placement groups (placement_groups.PlacementGroups registers itself): asked about
        #: requests no node can hold, told about dead nodes
        self.groups: Any = None
        #: counts what may let a waiting placement group fit: resources given back, nodes added,
        #: removed or resumed (placement_groups.py retries only when it moved)
        self.changes = 0

    def add_node(self, node_id: bytes, total: Dict[str, float], labels: Optional[Dict[str, str]] = None) -> None:
        self.nodes[node_id] = NodeResources(node_id, dict(total), labels=dict(labels or {}))
        self.changes += 1

    def remove_node(self, node_id: bytes) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.alive = False
            self.changes += 1
            if self.groups is not None:
                self.groups.node_removed(node_id)

    def set_stopped(self, node_id: bytes, stopped: bool) -> None:
        self.nodes[node_id].stopped = stopped
        self.changes += 1

    def alive(self) -> List[NodeResources]:
        return [n for n in self.nodes.values() if n.alive]

    def feasible(self, request: Dict[str, float], selector: Optional[Selector] = None) -> bool:
        return any(n.could_fit(request) and matches(n.labels, selector) for n in self.nodes.values() if n.alive)

    def place(self, request: Dict[str, float], strategy: Tuple, preferred: Optional[bytes],
              selectors: Optional[Tuple[Optional[Selector], ...]] = None) -> Optional[bytes] | str:
        """A node id that fits now; None to wait; INFEASIBLE; raises Unschedulable.
        `selectors`: the task's label selector and its fallbacks (labels.alternatives)."""
        selector = self._selector_for(request, selectors)
        kind = strategy[0]
        if kind == "NODE":
            target = self.nodes.get(strategy[1])
            soft = strategy[2]
            if target is not None and target.alive and target.could_fit(request) and matches(target.labels, selector):
                return target.node_id if target.fits(request) and not target.stopped else None
            if not soft:
                if target is None or not target.alive:
                    raise Unschedulable(
                        f"the node {strategy[1].hex()} specified via NodeAffinitySchedulingStrategy "
                        "doesn't exist any more or is dead"
                    )
                return INFEASIBLE
            kind = "DEFAULT"
        candidates = [n for n in self.nodes.values()
                      if n.alive and not n.stopped and n.fits(request) and matches(n.labels, selector)]
        if not candidates:
            if self.feasible(request, selector) or (self.groups is not None and self.groups.claims(request)):
                return None
            return INFEASIBLE
        if kind == "DEFAULT" and self.avoid_gpu_nodes and not request.get("GPU"):
            without_gpus = [n for n in candidates if not n.total.get("GPU")]
            if without_gpus:
                candidates = without_gpus
        if kind == "SPREAD":
            # Round-robin over all nodes in order, skipping those that do not fit now.
            order = list(self.nodes)
            start = self._spread_next % len(order)
            fitting = {n.node_id for n in candidates}
            for step in range(len(order)):
                node_id = order[(start + step) % len(order)]
                if node_id in fitting:
                    self._spread_next = start + step + 1
                    return node_id
        if preferred is not None:
            node = self.nodes.get(preferred)
            if node is not None and node in candidates and node.cpu_load() < 0.5 + _EPS:
                return preferred
        best = min(candidates, key=lambda n: (n.cpu_load(), n.node_id != preferred))
        return best.node_id

    def _selector_for(self, request: Dict[str, float],
                      selectors: Optional[Tuple[Optional[Selector], ...]]) -> Optional[Selector]:
        """The first of a task's selectors that some live node could satisfy (else its own)."""
        if not selectors:
            return None
        for selector in selectors:
            if self.feasible(request, selector):
                return selector
        return selectors[0]

    def acquire(self, node_id: bytes, request: Dict[str, float]) -> None:
        available = self.nodes[node_id].available
        for key, qty in request.items():
            available[key] = round(available.get(key, 0.0) - qty, _DIGITS)  # (_exact, inlined: once per task)

    def release(self, node_id: bytes, request: Dict[str, float]) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            return
        self.changes += 1
        available, total = node.available, node.total
        for key, qty in request.items():
            cap = total.get(key)
            if cap is not None:  # (else a removed placement group's resource, gone with its group)
                available[key] = min(cap, round(available.get(key, 0.0) + qty, _DIGITS))  # (_exact)

    def totals(self) -> Dict[str, float]:
        return _sum(n.total for n in self.alive())

    def availables(self) -> Dict[str, float]:
        """What is free now; as in Ray, a resource with nothing free is left out, not 0.0."""
        return {key: qty for key, qty in _sum(n.available for n in self.alive()).items() if qty > 0}


def _is_cpu(key: str) -> bool:
    return key == "CPU" or (key.startswith("CPU_group_") and is_group_resource(key))


def lent_when_blocked(request: Dict[str, float]) -> Dict[str, float]:
    """What a task blocked in get/wait lends out while it waits: its CPUs only (in a placement
    group, the bundle's). As in Ray, its GPUs (the devices it was given), memory and custom
    resources stay held."""
    return {key: qty for key, qty in request.items() if _is_cpu(key)}


def kept_when_blocked(request: Dict[str, float]) -> Dict[str, float]:
    """The rest of a blocked task's request: still held while it waits."""
    return {key: qty for key, qty in request.items() if not _is_cpu(key)}


def _exact(quantity: float) -> float:
    """A quantity on Ray's grid of 0.0001 (its fixed-point resources): taking and giving back
    fractions such as 0.1234 leaves the count exactly where it was, not 1.9999999999999998."""
    return round(quantity, _DIGITS)


def _sum(dicts: Iterable[Dict[str, float]]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for d in dicts:
        for key, qty in d.items():
            out[key] = out.get(key, 0.0) + qty
    return {k: max(0.0, _exact(v)) for k, v in out.items()}
