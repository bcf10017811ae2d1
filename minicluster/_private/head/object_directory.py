"""The object directory: every live object's state, value location and holders.

Owned by the head (driver process, under the head's lock). For each object id:

* state: PENDING until its task reports, then READY (a value or an error);
* payload: where the value is (wire/messages.py Payload: inline blob, node stores, or error);
* who keeps it alive: the driver's live ObjectRefs (the driver's LocalRefCounter),
  workers that announced holding a ref (`borrowers`), and `pins` - tasks that
  take it as an argument and objects that contain its ref;
* owner: the worker (or driver) that created the ref; if the owner dies, the
  object is gone for everyone (OwnerDiedError);
* waiters: blocked `get`/`wait` calls, notified when it becomes READY;
* lineage_refs: finished tasks kept for reconstruction (lineage.py) that take
  it as an argument. They keep the entry, not the value.

States:  PENDING --value--> READY --its node died--> LOST
                              +--no holder, lineage_refs > 0--> RELEASED
         LOST and RELEASED go back to PENDING when the head rebuilds them.

When nothing holds an object any more, its value is freed (store files
unlinked); the entry itself goes too unless lineage still needs it. Freed
ids are remembered (a bounded set) so a late `get` can say
ReferenceCountingAssertionError.
"""

from __future__ import annotations

import collections
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Set

from minicluster._private.common.ids import OBJECT_ID_SIZE, RecentIds
from minicluster._private.store import object_store
from minicluster._private.wire import messages as msg

PENDING = "PENDING"
READY = "READY"
LOST = "LOST"  #: every copy of the value is gone; rebuildable while lineage allows
RELEASED = "RELEASED"  #: value freed on purpose, entry kept for lineage

FREED_MEMORY = 100_000  # how many freed ids to remember for error messages


class Waiter:
    """A blocked get/wait: fires `on_ready` once `needed` of its objects are ready."""

    __slots__ = ("remaining", "needed", "on_ready", "fired", "object_ids")

    def __init__(self, object_ids: List[bytes], remaining: int, needed: int,
                 on_ready: Callable[["Waiter"], None]) -> None:
        self.object_ids = object_ids
        self.remaining = remaining  # how many are not ready yet
        self.needed = needed  # fire when remaining <= needed
        self.on_ready = on_ready
        self.fired = False

    def notify(self) -> None:
        self.remaining -= 1
        if not self.fired and self.remaining <= self.needed:
            self.fired = True
            self.on_ready(self)


class ObjectEntry:
    __slots__ = ("state", "payload", "size", "owner", "pins", "borrowers", "nested", "waiters", "dependents",
                 "is_error", "lineage_refs")

    def __init__(self, owner: bytes) -> None:
        self.state = PENDING
        self.payload: Optional[tuple] = None
        self.size = 0
        self.owner = owner
        self.pins = 0
        self.borrowers: Optional[Set[bytes]] = None
        self.nested: tuple = ()
        self.waiters: Optional[List[Waiter]] = None
        self.dependents: Optional[List[Any]] = None
        self.is_error = False
        self.lineage_refs = 0


class ObjectDirectory:
    def __init__(self, driver_counts: Dict[bytes, int], layout: object_store.Layout,
                 on_deleted: Callable[[bytes, "ObjectEntry"], None], on_unheld: Callable[[bytes], None]) -> None:
        self.entries: Dict[bytes, ObjectEntry] = {}
        self.on_deleted = on_deleted  # the head drops lineage that only this entry needed, and owner links
        self.on_unheld = on_unheld  # nothing holds it any more (freed or released): an actor's handles are gone
        self.driver_counts = driver_counts  # the driver's LocalRefCounter.counts (read-only here)
        self.layout = layout
        #: ids of recently freed objects, so a late use says "freed" rather than "lost" (compact ring)
        self.freed = RecentIds(OBJECT_ID_SIZE, FREED_MEMORY)
        self.node_usage: Dict[bytes, int] = collections.defaultdict(int)  #: shared-memory bytes per node
        self.capacity: Dict[bytes, int] = {}  #: store capacity per node
        self.spilled_bytes = 0

    # ---- creation and values ---------------------------------------------------------

    def create(self, object_id: bytes, owner: bytes) -> ObjectEntry:
        entry = self.entries.get(object_id)
        if entry is None:
            entry = self.entries[object_id] = ObjectEntry(owner)
        return entry

    def set_value(self, object_id: bytes, kind: str, data: Any, nested: List[bytes], node: Optional[bytes],
                  is_error: bool) -> Optional[ObjectEntry]:
        """Record a produced value; returns the entry (None if the object was freed meanwhile)."""
        entry = self.entries.get(object_id)
        if entry is None or entry.state == READY:
            # Freed meanwhile, or a rebuild produced a value we still have: drop the new copy.
            if kind == "s" and node is not None:
                object_store.delete(self._dir(node), object_id)
            return None
        if kind == "s":
            entry.payload = msg.Payload.new(kind="s", data=[node], size=data)
            entry.size = data
            self._count(node, data)
        else:
            entry.payload = msg.Payload.new(kind=kind, data=data)
            entry.size = len(data)
        entry.is_error = is_error
        entry.state = READY
        if nested:
            entry.nested = tuple(nested)
            for ref in nested:
                self.pin(ref)
        return entry

    def add_location(self, object_id: bytes, node: bytes, size: int) -> None:
        entry = self.entries.get(object_id)
        if entry is None or entry.payload is None or entry.payload.kind != "s":
            object_store.delete(self._dir(node), object_id)  # freed meanwhile: drop the stray copy
            return
        if node not in entry.payload.data:
            entry.payload.data.append(node)
            self._count(node, size)

    def drop_node(self, node: bytes) -> List[bytes]:
        """Forget every copy on a dead node (spilled ones too); objects with no copy left become LOST."""
        lost = []
        spilled = object_store.spill_location(node)
        for object_id, entry in self.entries.items():
            payload = entry.payload
            if payload is not None and payload.kind == "s" and (node in payload.data or spilled in payload.data):
                for location in (node, spilled):
                    if location in payload.data:
                        payload.data.remove(location)
                        self._count(location, -entry.size)
                if not payload.data:
                    self.mark_lost(object_id)
                    lost.append(object_id)
        self.node_usage.pop(node, None)
        for object_id in lost:
            self.maybe_free(object_id)
        return lost

    def remove_location(self, object_id: bytes, node: bytes) -> None:
        """Forget (and delete) one copy, for example on a node that stopped answering."""
        entry = self.entries.get(object_id)
        if entry is None or entry.payload is None or entry.payload.kind != "s" or node not in entry.payload.data:
            return
        entry.payload.data.remove(node)
        self._count(node, -entry.size)
        object_store.delete(self._dir(node), object_id)

    def _count(self, location: bytes, size: int) -> None:
        if object_store.is_spilled(location):
            self.spilled_bytes += size
        else:
            self.node_usage[location] += size

    def make_room(self, node: bytes) -> None:
        """Bring a node's store back under capacity: drop copies that exist elsewhere (on
        another node or spilled) first, then spill the oldest objects to disk."""
        capacity = self.capacity.get(node)
        if capacity is None or self.node_usage[node] <= capacity:
            return
        for spill in (False, True):
            for object_id, entry in list(self.entries.items()):
                if self.node_usage[node] <= capacity:
                    return
                payload = entry.payload
                if payload is None or payload.kind != "s" or node not in payload.data:
                    continue
                if not spill and len(payload.data) > 1:
                    self.remove_location(object_id, node)  # another copy (or a spilled one) remains
                elif spill and len(payload.data) == 1:
                    if not self._spill(object_id, entry, node):
                        return

    def _spill(self, object_id: bytes, entry: ObjectEntry, node: bytes) -> bool:
        target = object_store.spill_location(node)
        spill_dir = self._dir(target)
        try:
            os.makedirs(spill_dir, mode=0o700, exist_ok=True)
            object_store.copy(self._dir(node), spill_dir, object_id)
        except OSError as exc:
            print(f"minicluster: warning: cannot spill to {spill_dir}: {exc}; the store stays over capacity",
                  file=sys.stderr)
            return False
        entry.payload.data.append(target)
        self._count(target, entry.size)
        self.remove_location(object_id, node)
        return True

    def mark_lost(self, object_id: bytes) -> None:
        entry = self.entries[object_id]
        entry.payload = None
        entry.state = LOST

    # ---- reference counting ---------------------------------------------------------

    def pin(self, object_id: bytes) -> bool:
        entry = self.entries.get(object_id)
        if entry is None:
            return False
        entry.pins += 1
        return True

    def unpin(self, object_id: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is not None:
            entry.pins -= 1
            if entry.pins <= 0:
                self.maybe_free(object_id)

    def add_borrower(self, object_id: bytes, worker_id: bytes) -> bool:
        entry = self.entries.get(object_id)
        if entry is None:
            return False
        if entry.borrowers is None:
            entry.borrowers = set()
        entry.borrowers.add(worker_id)
        return True

    def remove_borrower(self, object_id: bytes, worker_id: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is not None and entry.borrowers:
            entry.borrowers.discard(worker_id)
            self.maybe_free(object_id)

    def add_lineage_ref(self, object_id: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is not None:
            entry.lineage_refs += 1

    def release_lineage_ref(self, object_id: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is not None:
            entry.lineage_refs -= 1
            self.maybe_free(object_id)

    def maybe_free(self, object_id: bytes) -> None:
        """Free the value, and the entry unless lineage needs it, once nothing holds the object."""
        entry = self.entries.get(object_id)
        if (
            entry is None
            or entry.state == PENDING
            or entry.pins > 0
            or entry.borrowers
            or object_id in self.driver_counts
            or entry.waiters
            or entry.dependents
        ):
            return
        if entry.lineage_refs > 0:
            if entry.state != RELEASED:
                self._release_value(object_id, entry)
                entry.state = RELEASED
                self.on_unheld(object_id)
            return
        self.free(object_id)
        self.on_unheld(object_id)

    def free(self, object_id: bytes) -> None:
        entry = self.entries.pop(object_id)
        self._release_value(object_id, entry)
        self.freed.add(object_id)
        self.on_deleted(object_id, entry)

    def _release_value(self, object_id: bytes, entry: ObjectEntry) -> None:
        self._delete_files(object_id, entry)
        entry.payload = None
        nested, entry.nested = entry.nested, ()
        for ref in nested:
            self.unpin(ref)

    def _delete_files(self, object_id: bytes, entry: ObjectEntry) -> None:
        payload = entry.payload
        if payload is not None and payload.kind == "s":
            for location in payload.data:
                object_store.delete(self._dir(location), object_id)
                self._count(location, -entry.size)
            payload.data.clear()

    def replace_with_error(self, object_id: bytes, error_blob: bytes) -> Optional[ObjectEntry]:
        """Drop the value (and its files) and store an error instead (owner died, lost...)."""
        entry = self.entries.get(object_id)
        if entry is None:
            return None
        self._release_value(object_id, entry)
        entry.payload = msg.Payload.new(kind="e", data=error_blob)
        entry.size = len(error_blob)
        entry.is_error = True
        entry.state = READY
        return entry

    def _dir(self, location: bytes) -> str:
        return self.layout.dir_of(location)
