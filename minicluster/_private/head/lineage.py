"""Lineage: the finished tasks kept so that their lost results can be rebuilt.

Owned by the head (driver process, under the head's lock). A task that
finished is kept here while any of its results still exists (is referenced,
or is needed to rebuild something that is). Its arguments are held by
*lineage references* (object_directory.py: `lineage_refs`), which keep their metadata
but not their values: a value nobody holds is freed, and rebuilt from its own
lineage if a downstream rebuild needs it (recursive reconstruction, as in Ray).

The memory kept records cost is capped by `max_lineage_bytes` (argument bytes
plus a measured per-record overhead); past it, the oldest records are evicted,
and their results become impossible to rebuild
(OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED).
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, Iterable, List, Optional

from minicluster._private.common.ids import TASK_ID_SIZE, RecentIds, is_put_object, task_of

# Driver memory one kept record costs beyond its argument bytes: its TaskRecord, spec,
# attempt record, dict slots and the object entries it keeps alive, as tracemalloc
# measured for a tiny task (Python 3.11). Ray's cap counts spec bytes only; counting
# this makes `max_lineage_bytes` bound what lineage really costs the driver.
RECORD_OVERHEAD_BYTES = 1300
EVICTED_MEMORY = 1_000_000  # evicted task ids remembered, for the error's reason (24 bytes each)
NOT_KEPT_MEMORY = 100_000  # ids of finished actor calls kept out of lineage (no max_task_retries)


class Lineage:
    def __init__(self, max_bytes: int, release_args: Callable[[Any], None]) -> None:
        self.max_bytes = max_bytes
        self.records: "collections.OrderedDict[bytes, Any]" = collections.OrderedDict()  # task id -> TaskRecord
        self.bytes = 0
        #: ids of evicted tasks, so a lost result says LINEAGE_EVICTED; a compact ring (ids.RecentIds)
        #: because a long job evicts one per task past the cap
        self.evicted = RecentIds(TASK_ID_SIZE, EVICTED_MEMORY)
        self._release_args = release_args  # drops the lineage refs a record holds on its arguments
        #: False: nothing is kept and nothing is rebuilt. The cluster's switch (Ray's
        #: enable_object_reconstruction) and the running job's (JobConfig), set separately.
        self.cluster_enabled = True
        self.job_enabled = True
        #: finished actor calls without max_task_retries (never kept), so their lost results
        #: say RETRIES_DISABLED, as Ray's do
        self.retries_disabled = RecentIds(TASK_ID_SIZE, NOT_KEPT_MEMORY)

    @property
    def enabled(self) -> bool:
        return self.cluster_enabled and self.job_enabled

    @staticmethod
    def size_of(task: Any) -> int:
        return len(task.spec.args) + RECORD_OVERHEAD_BYTES

    def keep(self, task: Any, live_returns: int) -> None:
        """Keep a finished task while `live_returns` of its results exist; evict the oldest if over the cap."""
        task.live_returns = live_returns
        self.records[task.spec.task_id] = task
        self.bytes += self.size_of(task)
        while self.bytes > self.max_bytes and self.records:
            task_id, oldest = self.records.popitem(last=False)
            self.bytes -= self.size_of(oldest)
            self.evicted.add(task_id)
            self._release_args(oldest)

    def get(self, task_id: bytes) -> Optional[Any]:
        return self.records.get(task_id)

    def take(self, task_id: bytes) -> Optional[Any]:
        """Remove a record to re-run it; its argument refs stay with the task."""
        task = self.records.pop(task_id, None)
        if task is not None:
            self.bytes -= self.size_of(task)
        return task

    def result_deleted(self, object_id: bytes) -> None:
        """One result of a kept task is gone for good; drop the record with its last one."""
        task = self.records.get(task_of(object_id))
        if task is None:
            return
        task.live_returns -= 1
        if task.live_returns <= 0:
            del self.records[task.spec.task_id]
            self.bytes -= self.size_of(task)
            self._release_args(task)

    def why_not_rebuildable(self, object_id: bytes) -> Optional[str]:
        """Ray's reason the object cannot be rebuilt, or None if it can be."""
        if is_put_object(object_id):
            return "OBJECT_UNRECONSTRUCTABLE_PUT"
        if not self.enabled:
            return "OBJECT_UNRECONSTRUCTABLE_LINEAGE_DISABLED"
        task_id = task_of(object_id)
        task = self.records.get(task_id)
        if task is None:
            if task_id in self.evicted:
                return "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED"
            if task_id in self.retries_disabled:
                return "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED"
            return "OBJECT_UNRECONSTRUCTABLE_BORROWED"
        if task.cancelled:
            return "OBJECT_UNRECONSTRUCTABLE_TASK_CANCELLED"
        if task.spec.max_retries == 0:
            return "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED"
        if task.retries_left == 0:
            return "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED"
        return None


def arguments_of(task: Any) -> Iterable[bytes]:
    spec = task.spec
    return spec.arg_refs + spec.borrowed


__all__ = ["Lineage", "arguments_of", "List", "Dict"]
