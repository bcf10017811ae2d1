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
unlinked); the entry itself goes too unless lineage still needs it. A
RELEASED object keeps its store copies as a cache, as Ray's store keeps
unpinned objects until it needs the room: a rebuild that needs the object
again takes them back (RELEASED -> READY) instead of re-running its task.
Only plain values are cached (no error, no refs inside: those refs may be
gone); make_room evicts cached copies before it drops or spills anything. Freed
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
from minicluster.exceptions import ObjectStoreFullError

PENDING = "PENDING"
READY = "READY"
LOST = "LOST"  #: every copy of the value is gone; rebuildable while lineage allows
RELEASED = "RELEASED"  #: value freed on purpose, entry kept for lineage

FREED_MEMORY = 100_000  # how many freed ids to remember for error messages


class Waiter:
    """A blocked get/wait: fires `on_ready` once `needed` of its objects are ready.

    A get's waiter is `fail_fast`: it also fires as soon as one of its objects turns
    out to be an error, which `failed` then names (Ray's get raises it at once).
    """

    __slots__ = ("remaining", "needed", "on_ready", "fired", "object_ids", "fail_fast", "failed")

    def __init__(self, object_ids: List[bytes], remaining: int, needed: int,
                 on_ready: Callable[["Waiter"], None], fail_fast: bool = False) -> None:
        self.object_ids = object_ids
        self.remaining = remaining  # how many are not ready yet
        self.needed = needed  # fire when remaining <= needed
        self.on_ready = on_ready
        self.fired = False
        self.fail_fast = fail_fast
        self.failed: Optional[bytes] = None  #: the error object that fired a fail_fast waiter early

    def notify(self, object_id: bytes, is_error: bool) -> None:
        self.remaining -= 1
        if self.fired:
            return
        if is_error and self.fail_fast and self.remaining > 0:
            self.failed = object_id
            self.fired = True
            self.on_ready(self)
        elif self.remaining <= self.needed:
            self.fired = True
            self.on_ready(self)


class ObjectEntry:
    __slots__ = ("state", "payload", "size", "owner", "pins", "borrowers", "nested", "waiters", "dependents",
                 "is_error", "lineage_refs", "unhandled")

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
        self.unhandled = False  #: a failed task's result nobody has read yet (announcements.py)


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
        self.spill_failed: Dict[bytes, str] = {}  #: node -> why its last spill failed (cleared by a success)
        #: called when an `unhandled` error is freed, before its value goes (set by the head)
        self.on_unhandled: Optional[Callable[[bytes, ObjectEntry], None]] = None
        #: called when a node's store passes `pressure` of its capacity (global_gc.py, set by the head)
        self.on_filling: Callable[[], None] = lambda: None
        self.pressure = 1.0

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
            # Freed meanwhile, or a rebuild produced a value we still have: drop the new copy,
            # unless it replaced (renamed over) the very file of the copy we keep on that node.
            kept = entry is not None and entry.payload is not None and entry.payload.kind == "s" \
                and node in entry.payload.data
            if kind == "s" and node is not None and not kept:
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

    def make_room(self, node: bytes, need: int = 0) -> None:
        """Bring a node's store back under capacity (with `need` bytes to spare): drop cached copies
        of released objects, then copies that exist elsewhere (on another node or spilled), then
        spill the oldest objects to disk."""
        capacity = self.capacity.get(node)
        if capacity is None:
            return
        if self.node_usage[node] + need >= self.pressure * capacity:
            self.on_filling()  # cycles holding refs may be what fills it: collect them (global_gc.py)
        if self.node_usage[node] + need <= capacity:
            return
        capacity -= need
        for object_id, entry in list(self.entries.items()):  # cached copies of released objects go first
            if self.node_usage[node] <= capacity:
                return
            if entry.state == RELEASED and entry.payload is not None and node in entry.payload.data:
                self.remove_location(object_id, node)
                if not entry.payload.data:
                    entry.payload = None
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
            object_store.copy(self._dir(node), spill_dir, object_id)  # removes its partial file if it fails
        except (OSError, ObjectStoreFullError) as exc:
            if node not in self.spill_failed:
                print(f"minicluster: warning: cannot spill to {spill_dir}: {exc}; new objects that do not "
                      "fit in the node's store fail with ObjectStoreFullError", file=sys.stderr)
            self.spill_failed[node] = str(exc)
            return False
        self.spill_failed.pop(node, None)
        entry.payload.data.append(target)
        self._count(target, entry.size)
        self.remove_location(object_id, node)
        return True

    def no_room_for(self, node: bytes, size: int) -> Optional[str]:
        """Why `size` more bytes cannot go into a node's store (spilling failed), or None if they can.

        Tries to make room first. Only a failed spill refuses: a store over capacity for
        other reasons (nothing left to spill) keeps taking objects, as before."""
        self.make_room(node, size)
        capacity = self.capacity.get(node)
        reason = self.spill_failed.get(node)
        if capacity is None or reason is None or self.node_usage[node] + size <= capacity:
            return None
        return (f"the node's object store holds {self.node_usage[node]} of its {capacity} bytes "
                f"(object_store_memory) and cannot take {size} more: spilling to disk failed ({reason})")

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
                if not self._cacheable(entry):
                    self._release_value(object_id, entry)
                entry.state = RELEASED
                self.on_unheld(object_id)
            return
        self.free(object_id)
        self.on_unheld(object_id)

    @staticmethod
    def _cacheable(entry: ObjectEntry) -> bool:
        payload = entry.payload
        return payload is not None and payload.kind == "s" and not entry.is_error and not entry.nested

    def take_back_cached(self, object_id: bytes, reachable: Callable[[ObjectEntry], bool]) -> bool:
        """A RELEASED object is needed again: make it READY from its cached copies if one is
        `reachable`; else drop them (the caller rebuilds it). True if it is READY now."""
        entry = self.entries[object_id]
        if entry.state != RELEASED or entry.payload is None:
            return False
        if entry.payload.data and reachable(entry):
            entry.state = READY
            return True
        self._release_value(object_id, entry)
        return False

    def free(self, object_id: bytes) -> None:
        entry = self.entries.pop(object_id)
        if entry.unhandled and self.on_unhandled is not None:
            self.on_unhandled(object_id, entry)
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
