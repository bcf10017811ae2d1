"""The finished tasks the state API still shows: a compact, bounded history.

Runs in the driver process, under the head's lock. When a task finishes, the
head (task_flow._close_task) copies what the state API, the journal's
compaction and the timeline read about it into a TaskHistory and lets the
TaskRecord go (unless lineage.py keeps it, with its full spec, to rebuild
its results). Ray keeps up to 100,000 task events too, compactly; so do we.

What an entry holds, and why it is small (about 60 bytes per task, against
about 900 for a TaskRecord with its TaskSpec and AttemptRecords):

    the task id                         24 bytes in one bytearray
    its last attempt's state            1 byte (an index into STATES)
    its last attempt's times            3 doubles (creation, start, end; NaN for none)
    what it runs (TaskKind), its parent,
    where its last attempt ran          3 indexes into a table of shared values

A TaskKind (name, function, type, actor, resources) is shared by every task
of one function, a parent id by its children, a (node, worker) pair by every
task that worker ran; each is stored once and counted, and goes when its last
entry does. Nothing is a Python object per task, so the garbage collector has
nothing to walk either. The few tasks with several attempts, or an error,
keep a tuple of Attempts (their messages are worth keeping) next to their
entry.

Invariant: at most one entry per task id, at most `limit` entries, oldest
evicted first. A task rebuilt from lineage (recovery.py) and finished again
drops its old entry and is added anew with all its attempts, old and new.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from typing import Any, Container, Dict, Hashable, Iterator, List, NamedTuple, Optional, Tuple

from minicluster._private.common import config
from minicluster._private.common.ids import TASK_ID_SIZE
from minicluster._private.head.task_records import STATES

HISTORY_LIMIT = 100_000  # finished tasks kept for the state API (as Ray's task events)

_STATE_CODES = {state: code for code, state in enumerate(STATES)}
_EMPTY = 255  # state code of a slot with no entry (its task was rebuilt and added anew)
_GROW = 4096  # slots added to the columns at a time, so a short session stays small
_NONE = math.nan  # a time that was never set (read back as None: NaN is the one value != itself)
_new = tuple.__new__  # makes a NamedTuple from a tuple without a call to its Python-level __new__


@dataclass(frozen=True, slots=True)
class TaskKind:
    """What a task runs: shared by the history entries of every task of one function (or actor method)."""

    name: str
    func_name: str
    task_type: str
    actor_id: Optional[bytes]
    resources: Dict[str, float]  #: the spec's own dict (specs of a function share it); never mutated


class Attempt(NamedTuple):
    attempt_number: int
    state: str
    node_id: Optional[bytes]
    worker_id: Optional[bytes]
    error_type: Optional[str]
    error_message: Optional[str]
    creation_time: float
    start_time: Optional[float]
    end_time: Optional[float]


class FinishedTask(NamedTuple):
    """One history entry, as read back (made on demand; the history does not keep these)."""

    task_id: bytes
    kind: TaskKind
    parent_task_id: bytes
    attempts: Tuple[Attempt, ...]


class _Shared:
    """Values many entries point at, each stored once with a count of its users.

    Invariant: `values[i]` is live while `counts[i] > 0`; a freed index is reused. One table
    serves the three sorts of keys, which cannot collide: a TaskKind's is a 5-tuple, a
    parent's the id (bytes), a placement's a (node id, worker id) pair.
    """

    __slots__ = ("_index", "_keys", "values", "_counts", "_free")

    def __init__(self) -> None:
        self._index: Dict[Hashable, int] = {}
        self._keys: List[Hashable] = []
        self.values: List[Any] = []
        self._counts: List[int] = []
        self._free: List[int] = []

    def use(self, key: Hashable, spec: Any = None) -> int:
        """The index of `key`'s value, counting one more user. The value is the key itself,
        or, given a TaskSpec, the TaskKind of that spec (made only when first stored)."""
        index = self._index.get(key)
        if index is not None:
            self._counts[index] += 1
            return index
        value = key if spec is None else TaskKind(spec.name, spec.func_name, spec.task_type, spec.actor_id,
                                                  spec.resources)
        if self._free:
            index = self._free.pop()
            self._keys[index], self.values[index], self._counts[index] = key, value, 1
        else:
            index = len(self.values)
            self._keys.append(key)
            self.values.append(value)
            self._counts.append(1)
        self._index[key] = index
        return index

    def release(self, index: int) -> None:
        self._counts[index] -= 1
        if self._counts[index] == 0:
            del self._index[self._keys[index]]
            self._keys[index] = self.values[index] = None
            self._free.append(index)

    def __len__(self) -> int:
        return len(self._index)


class TaskHistory:
    """Finished tasks, oldest first, at most `limit` of them; see the module docstring."""

    def __init__(self, limit: Optional[int] = None) -> None:
        self.limit = max(1, config.env("task_events_max_num_task_in_gcs", HISTORY_LIMIT, int)) if limit is None \
            else limit
        self.added = 0  #: entries ever added; entry number n is in slot n % limit while n >= added - limit
        self._count = 0
        self._ids = bytearray()  # TASK_ID_SIZE bytes per slot
        self._states = bytearray()  # a state code (or _EMPTY) per slot
        self._times = array("d")  # creation, start, end of the last attempt, per slot
        self._refs = array("I")  # TaskKind, parent id, (node, worker) of the last attempt: indexes into _shared
        self._shared = _Shared()
        self._attempts: Dict[int, Tuple[Attempt, ...]] = {}  # slot -> every attempt, for the few that need it

    def __len__(self) -> int:
        return self._count

    def add(self, task: Any) -> int:
        """Record a finished TaskRecord; returns its entry number (TaskRecord.history_entry)."""
        number = self.added
        self.added += 1
        slot = number % self.limit
        if slot * TASK_ID_SIZE == len(self._ids):
            self._grow()
        elif self._states[slot] != _EMPTY:
            self._clear(slot)  # the oldest entry makes room
        self._fill(slot, task)
        self._count += 1
        return number

    def drop(self, number: int, task_id: bytes) -> None:
        """Forget entry `number` if it is still there and is `task_id`'s (a rebuilt task finishing again)."""
        if number < 0 or number < self.added - self.limit or number >= self.added:
            return
        slot = number % self.limit
        if self._states[slot] != _EMPTY and self._task_id(slot) == task_id:
            self._clear(slot)

    def entries(self, skip: Container[bytes] = ()) -> Iterator[FinishedTask]:
        """Every entry, oldest first, except those of task ids in `skip` (tasks being rebuilt).

        Under the head's lock, for list_tasks and the journal's compaction: 100,000 entries
        are read in one go, so this loop avoids calls (NamedTuples made with tuple.__new__).
        """
        states, times, refs, values = self._states, self._times, self._refs, self._shared.values
        ids = bytes(self._ids)  # one copy, so each id is one slice
        extra = self._attempts
        for number in range(max(0, self.added - self.limit), self.added):
            slot = number % self.limit
            code = states[slot]
            if code == _EMPTY:
                continue
            task_id = ids[slot * TASK_ID_SIZE:(slot + 1) * TASK_ID_SIZE]
            if task_id in skip:
                continue
            at = 3 * slot
            attempts = extra.get(slot)
            if attempts is None:
                node_id, worker_id = values[refs[at + 2]]
                start, end = times[at + 1], times[at + 2]
                attempts = (_new(Attempt, (0, STATES[code], node_id, worker_id, None, None, times[at],
                                           None if start != start else start, None if end != end else end)),)
            yield _new(FinishedTask, (task_id, values[refs[at]], values[refs[at + 1]], attempts))

    # ---- slots ----

    def _task_id(self, slot: int) -> bytes:
        return bytes(self._ids[slot * TASK_ID_SIZE:(slot + 1) * TASK_ID_SIZE])

    def _grow(self) -> None:
        """Add up to _GROW empty slots (never past `limit`)."""
        more = min(_GROW, self.limit - len(self._states))
        self._ids += bytes(TASK_ID_SIZE * more)
        self._states += bytes([_EMPTY]) * more
        self._times.extend(array("d", [_NONE]) * (3 * more))
        self._refs.extend(array("I", [0]) * (3 * more))

    def _fill(self, slot: int, task: Any) -> None:
        """Write a finished TaskRecord into `slot`. The hot path: once per task, so few calls."""
        spec = task.spec
        attempts = task.attempts
        last = attempts[-1]
        if len(spec.task_id) != TASK_ID_SIZE:  # (a longer or shorter one would shift every later slot)
            raise ValueError(f"task id of {len(spec.task_id)} bytes, expected {TASK_ID_SIZE}")
        self._ids[slot * TASK_ID_SIZE:(slot + 1) * TASK_ID_SIZE] = spec.task_id
        self._states[slot] = _STATE_CODES[last.state]
        start, end = last.start_time, last.end_time
        at = 3 * slot
        times = self._times
        times[at] = last.creation_time
        times[at + 1] = _NONE if start is None else start
        times[at + 2] = _NONE if end is None else end
        use = self._shared.use
        refs = self._refs
        kind_key = (spec.name, spec.func_name, spec.task_type, spec.actor_id, task.shape[0])
        refs[at] = use(kind_key, spec)
        refs[at + 1] = use(spec.parent_task_id)
        refs[at + 2] = use((last.node_id, last.worker_id))
        if len(attempts) > 1 or last.attempt_number or last.error_type is not None \
                or last.error_message is not None:
            self._attempts[slot] = tuple(_attempt(a) for a in attempts)

    def _clear(self, slot: int) -> None:
        refs = self._refs
        for field in range(3):
            self._shared.release(refs[3 * slot + field])
        self._states[slot] = _EMPTY
        self._attempts.pop(slot, None)
        self._count -= 1


def _attempt(record: Any) -> Attempt:
    """An AttemptRecord (task_records.py) as an immutable Attempt."""
    return Attempt(record.attempt_number, record.state, record.node_id, record.worker_id, record.error_type,
                   record.error_message, record.creation_time, record.start_time, record.end_time)
