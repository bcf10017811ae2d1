"""The state recorder: turns the head's records into state rows, and journals them in batches.

Runs in the driver process. Every FLUSH_INTERVAL_S, on the head's I/O thread
(a hub timer), it takes the head's lock just long enough to collect what
changed since the last flush and turn it into rows:

    head.task_changes        tasks whose attempt ended (task_records.py)   -> "task" rows, one per attempt
    head.tasks, once a second  tasks pending or running for UNFINISHED_DELAY_S -> "task" rows
    node.worker_changes      WorkerInfos born or dead (virtual_nodes.py)    -> "worker" rows
    nodes, resources, store  a small snapshot, once a second                -> status.json (when it changed)

then pickles and appends the rows to the journal (state_journal.py) outside
the lock. A finished task is journaled at the next flush; one still pending
or running only once it has stayed in its state for UNFINISHED_DELAY_S (and
again when it has stayed in a later state as long), so the tiny tasks of a
burst cost one row each and nothing while they wait, while a task that waits
or runs for a while still shows up. `close()` flushes once more after the
nodes are gone and marks the session's clean end.

In the driver, `minicluster.util.state` reads the live records through
`live_rows`, `live_status` and `live_objects` instead of the journal, so what
it returns is never behind. Finished tasks are read from the head's compact
history (task_history.py), live ones from their TaskRecords; both give the
same rows.

Actors: each of the head's actor records (actor_flow.py) gives its own
`list_actors` row (`ActorRecord.state_row`).
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from minicluster._private.common import ids
from minicluster._private.head import placement_groups
from minicluster._private.head.object_directory import READY
from minicluster._private.head.task_history import FinishedTask
from minicluster._private.head.virtual_nodes import INTENDED_SYSTEM_EXIT, WorkerInfo
from minicluster._private.observe import state_journal
from minicluster._private.observe.state_journal import FIELDS, JournalWriter, rows_to_dicts, write_json
from minicluster._private.store import object_store

FLUSH_INTERVAL_S = 0.2
UNFINISHED_DELAY_S = 1.0  # how long a task stays pending/running before that state is journaled
SLOW_EVERY = 5  # flushes between scans of unfinished tasks and status snapshots (5 x 0.2 s = 1 s)
WORKER_HISTORY = 10_000  # worker infos kept for list_workers (all live ones, plus this many in all)
OBJECTS_LIMIT = 100_000  # objects written per snapshot
ENCODE_CHUNK = 200  # tasks whose rows are made and pickled together (see _encode)


class StateRecorder:
    def __init__(self, head: Any, session: Any, driver_worker_id: bytes) -> None:
        self.head = head
        self.session = session
        self.logs_dir: str = session.logs_dir
        self.journal = JournalWriter(self.logs_dir)
        self.journal_limit = state_journal.max_bytes()
        self._compact_at = self.journal_limit  #: journal size that triggers the next compaction
        #: unfinished tasks journaled by the scan -> (attempts, events) then, so an unchanged one is not
        #: journaled again; an entry goes when the task's attempt ends
        self.scanned: Dict[Any, tuple] = {}
        self._flushes = 0
        self.workers: "collections.OrderedDict[bytes, WorkerInfo]" = collections.OrderedDict()
        first = next(iter(head.nodes), b"")
        self.driver = WorkerInfo(driver_worker_id, first, os.getpid(), session.start_time)
        self.end_time: Optional[float] = None
        self.closed = False
        self._status_text = ""
        self._display_names: Dict[str, str] = {}
        self._flush_lock = threading.Lock()
        self._request_path = os.path.join(self.logs_dir, state_journal.OBJECTS_REQUEST)

    # ==== the timer ==================================================================

    def start(self) -> None:
        self.journal.append({"worker": [self._worker_row(self.driver, "DRIVER")]})
        self.flush()
        self.head.hub.call_later(FLUSH_INTERVAL_S, self._tick)

    def _tick(self) -> None:
        if self.closed or self.head.closed:
            return
        try:
            self.flush()
        finally:
            if not self.closed:
                self.head.hub.call_later(FLUSH_INTERVAL_S, self._tick)

    def flush(self, final: bool = False) -> None:
        """Journal what changed; rewrite status.json if it changed; answer an objects request."""
        with self._flush_lock:
            head = self.head
            self._flushes += 1
            slow = final or self._flushes % SLOW_EVERY == 1
            with head.lock:
                tasks, workers = self._changed(final, slow)
                frames = self._encode(tasks, workers)
                status = self._status() if slow else None
                objects = self._objects() if final or os.path.exists(self._request_path) else None
            self.journal.write(frames)
            size = self.journal.size()
            if size > self._compact_at or (final and size > self.journal_limit // 4):
                self._compact()
                # If what is remembered alone is near the limit, compacting again soon would
                # only rewrite the same rows: wait until the journal has doubled instead.
                self._compact_at = max(self.journal_limit, 2 * self.journal.size())
            if status is not None:
                self._write_status(status, force=final)
            if objects is not None:
                self._write_objects(objects)

    def close(self) -> None:
        """After the head shut down: close the workers' records, flush, and mark a clean end."""
        if self.closed:
            return
        self.closed = True
        self.end_time = time.time()
        self.flush(final=True)
        self.journal.close()

    # ==== rows ======================================================================

    def _encode(self, tasks: List[Any], workers: List[tuple]) -> bytes:
        """Journal frames for these tasks' attempts and these worker rows.

        Rows are made and pickled ENCODE_CHUNK tasks at a time, so few of them are alive at
        once: thousands of live row tuples would set off the garbage collector's young
        collections and be promoted into its older generations (which makes full
        collections come sooner), all for objects that are gone a moment later.
        """
        frames = []
        for start in range(0, len(tasks), ENCODE_CHUNK):
            rows: List[tuple] = []
            self.add_task_rows(tasks[start:start + ENCODE_CHUNK], rows)
            frames.append(state_journal.encode({"task": rows}))
        if workers:
            frames.append(state_journal.encode({"worker": workers}))
        return b"".join(frames)

    def _changed(self, final: bool, slow: bool) -> Tuple[List[Any], List[tuple]]:
        """The tasks to journal now, and the worker rows that changed."""
        head = self.head
        workers: List[tuple] = []
        ready = list(head.task_changes)
        head.task_changes.clear()
        scanned = self.scanned
        if scanned:
            for task in ready:
                scanned.pop(task, None)
        if slow:
            # Tasks pending or running for a while: journal the state they have been in.
            settled_before = time.time() - UNFINISHED_DELAY_S
            for task in head.tasks.values():
                attempt = task.attempts[-1]
                if final or (attempt.start_time or attempt.creation_time) <= settled_before:
                    seen = (len(task.attempts), attempt.state)
                    if scanned.get(task) != seen:
                        scanned[task] = seen
                        ready.append(task)
        if not self.driver.node_id and head.nodes:  # (a Cluster() starts with no node)
            self.driver.node_id = next(iter(head.nodes))
            workers.append(self._worker_row(self.driver, "DRIVER"))
        self._drain_workers(workers)
        if final:
            # Workers still alive at the end (the driver too) exit with the session.
            for info in list(self.workers.values()) + [self.driver]:
                if info.exit_type is None:
                    info.end_time = self.end_time or time.time()
                    info.exit_type, info.exit_detail = INTENDED_SYSTEM_EXIT, "the session shut down"
                    if info is not self.driver:
                        workers.append(self._worker_row(info, "WORKER"))
            workers.append(self._worker_row(self.driver, "DRIVER"))
        return ready, workers

    def _drain_workers(self, rows: List[tuple]) -> None:
        for node in self.head.nodes.values():
            if not node.worker_changes:
                continue
            infos, node.worker_changes = node.worker_changes, set()
            for info in infos:
                self.workers[info.worker_id] = info
                self.workers.move_to_end(info.worker_id)
                rows.append(self._worker_row(info, "WORKER"))
        excess = len(self.workers) - WORKER_HISTORY
        while excess > 0:
            worker_id, info = self.workers.popitem(last=False)
            if info.exit_type is None:
                self.workers[worker_id] = info  # still alive: keep it
            excess -= 1

    def add_history_rows(self, entries: Iterable[FinishedTask], rows: List[tuple]) -> None:
        """The rows of finished tasks from the head's compact history (task_history.py), in the
        same order and layout as add_task_rows makes them from live TaskRecords."""
        names = self._display_names
        append = rows.append
        for task_id, kind, parent, attempts in entries:
            name = names.get(kind.func_name)
            if name is None:
                name = names[kind.func_name] = _without_module(kind.func_name)
            for a in attempts:
                append((task_id, a.attempt_number, kind.name, a.state, kind.actor_id, kind.task_type, name,
                        parent, a.node_id, a.worker_id, a.error_type, a.error_message,
                        a.creation_time, a.start_time, a.end_time, kind.resources))

    def all_task_rows(self) -> List[tuple]:
        """A row per attempt of every task the head remembers: finished ones (its history), then
        live ones. Under the head's lock. A task being rebuilt is in both; its live record,
        which has every attempt, wins."""
        head = self.head
        rows: List[tuple] = []
        self.add_history_rows(head.history.entries(skip=head.tasks), rows)
        self.add_task_rows(list(head.tasks.values()), rows)
        return rows

    def task_rows(self, task: Any) -> List[tuple]:
        rows: List[tuple] = []
        self.add_task_rows([task], rows)
        return rows

    def add_task_rows(self, tasks: List[Any], rows: List[tuple]) -> None:
        """One row per attempt, in state_journal.TASK_FIELDS order. The hot path of recording:
        a row per tiny task, so it is one loop with no calls but the tuple's."""
        names = self._display_names
        append = rows.append
        for task in tasks:
            spec = task.spec
            if not spec.task_events:
                continue  # enable_task_events=False, as Ray: no task events, so no row
            name = names.get(spec.func_name)
            if name is None:
                name = names[spec.func_name] = _without_module(spec.func_name)
            for a in task.attempts:
                append((spec.task_id, a.attempt_number, spec.name, a.state, spec.actor_id, spec.task_type, name,
                        spec.parent_task_id, a.node_id, a.worker_id, a.error_type, a.error_message,
                        a.creation_time, a.start_time, a.end_time, spec.resources))

    @staticmethod
    def _worker_row(info: WorkerInfo, worker_type: str) -> tuple:
        return (info.worker_id, info.node_id, info.pid, worker_type, info.start_time, info.end_time,
                info.exit_type, info.exit_detail)

    def _compact(self) -> None:
        """The journal grew past its limit (state_journal.max_bytes): rewrite it with one row per key."""
        head = self.head
        with head.lock:
            rows = self.all_task_rows()
            workers = [self._worker_row(i, "WORKER") for i in self.workers.values()]
            workers.append(self._worker_row(self.driver, "DRIVER"))
        self.journal.rewrite({"task": rows, "worker": workers})

    # ==== snapshots ==================================================================

    def _status(self) -> Dict[str, Any]:
        head = self.head
        nodes = []
        for node in head.nodes.values():
            scheduled = head.scheduler.nodes.get(node.node_id)
            nodes.append({
                "node_id": node.node_id.hex(),
                "name": node.name,
                "is_head_node": node.index == 0,
                "state": "ALIVE" if node.alive else "DEAD",
                "state_message": node.death_reason or ("stopped (SIGSTOP): takes no work until resumed"
                                                       if node.stopped and node.alive else None)
                or (None if node.alive else "shut down with the session"),
                "pid": node.pid,
                "resources_total": dict(node.resources),
                "resources_available": dict(scheduled.available) if node.alive and scheduled else {},
                "store_capacity": node.capacity,
                "store_used": head.objects.node_usage.get(node.node_id, 0) if node.alive else 0,
                "num_workers": len(node.workers),
                "busy_workers": sum(1 for w in node.workers.values() if w.queue),
                "start_time": node.start_time,
                "end_time": node.end_time or None,
            })
        counts: Dict[str, int] = collections.Counter(task.state for task in head.tasks.values())
        return {
            "format": state_journal.VERSION,
            "session": {
                "dir": self.session.dir,
                "name": os.path.basename(self.session.dir),
                "driver_pid": os.getpid(),
                "start_time": self.session.start_time,
                "end_time": self.end_time,
            },
            "nodes": nodes,
            "cluster_resources": head.scheduler.totals(),
            "available_resources": head.scheduler.availables(),
            "spilled_bytes": head.objects.spilled_bytes,
            "live_tasks": dict(counts),
            "num_objects": len(head.objects.entries),
            "actors": self._actors(),
            "placement_groups": placement_groups.state_rows(head.head_state.groups),
        }

    def _write_status(self, status: Dict[str, Any], force: bool) -> None:
        text = json.dumps(status, sort_keys=True, default=str)
        if text == self._status_text and not force:
            return
        self._status_text = text
        status["updated"] = time.time()
        try:
            write_json(self.logs_dir, state_journal.STATUS, status)
        except OSError as exc:
            if self.journal.broken is None:
                print(f"minicluster: warning: cannot write {state_journal.STATUS}: {exc}", file=sys.stderr)

    def _objects(self) -> List[Dict[str, Any]]:
        head = self.head
        objects = head.objects
        driver_counts = objects.driver_counts
        driver_pid = os.getpid()
        rows = []
        for object_id, entry in objects.entries.items():
            if len(rows) >= OBJECTS_LIMIT:
                break
            task = head.tasks.get(ids.task_of(object_id))
            if ids.is_put_object(object_id):
                task_status, attempt = "NIL", None
            elif task is not None:
                task_status, attempt = task.state, task.attempt
            else:
                task_status, attempt = ("FAILED" if entry.is_error else "FINISHED"), None
            held_by_driver = object_id in driver_counts
            if held_by_driver or entry.borrowers:
                reference_type = "LOCAL_REFERENCE"
            elif entry.pins > 0:
                reference_type = "USED_BY_PENDING_TASK"
            else:
                reference_type = "UNKNOWN_STATUS"  # kept only as lineage for a rebuild
            payload = entry.payload
            where: Optional[str] = None
            copies: List[str] = []
            if payload is not None:
                kind = payload.kind
                where = {"i": "INLINE", "e": "ERROR"}.get(kind, "SHARED_MEMORY")
                if kind == "s":
                    locations = payload.data
                    copies = [loc.hex() for loc in locations]
                    if locations and all(object_store.is_spilled(loc) for loc in locations):
                        where = "SPILLED"
            owner = entry.owner
            if owner == b"driver":
                owner_type, pid = "DRIVER", driver_pid
            else:
                owner_type = "WORKER"
                info = self.workers.get(owner) or getattr(head.workers.get(owner), "info", None)
                pid = info.pid if info is not None else None
            rows.append({
                "object_id": object_id.hex(),
                "object_size": entry.size if entry.state == READY else None,
                "task_status": task_status,
                "attempt_number": attempt,
                "reference_type": reference_type,
                "call_site": "disabled",
                "type": owner_type,
                "pid": pid,
                "ip": "127.0.0.1",
                "state": entry.state,
                "storage": where,
                "locations": copies,
                "owner_id": owner.hex() if owner != b"driver" else self.driver.worker_id.hex(),
                "is_error": entry.is_error,
                "held_by_driver": held_by_driver,
                "borrowers": len(entry.borrowers or ()),
                "pins": entry.pins,
            })
        return rows

    def _write_objects(self, objects: List[Dict[str, Any]]) -> None:
        try:
            write_json(self.logs_dir, state_journal.OBJECTS, {"time": time.time(), "objects": objects})
        except OSError as exc:
            print(f"minicluster: warning: cannot write {state_journal.OBJECTS}: {exc}", file=sys.stderr)
        try:
            os.unlink(self._request_path)
        except OSError:
            pass

    def _actors(self) -> List[Dict[str, Any]]:
        return [actor.state_row() for actor in list(self.head.actors.values())]

    # ==== live views for minicluster.util.state in the driver =======================

    def live_rows(self) -> Dict[str, List[Dict[str, Any]]]:
        head = self.head
        with head.lock:
            tasks = self.all_task_rows()
            infos: Dict[bytes, WorkerInfo] = dict(self.workers)
            for node in head.nodes.values():
                for info in node.worker_changes:
                    infos[info.worker_id] = info
            workers = [self._worker_row(self.driver, "DRIVER")]
            workers += [self._worker_row(info, "WORKER") for info in infos.values()]
        return {"task": rows_to_dicts("task", tasks, FIELDS["task"]),
                "worker": rows_to_dicts("worker", workers, FIELDS["worker"])}

    def live_status(self) -> Dict[str, Any]:
        with self.head.lock:
            status = self._status()
        status["session"]["liveness"] = "ended" if self.end_time is not None else "running"
        status["updated"] = time.time()
        return status

    def live_objects(self) -> List[Dict[str, Any]]:
        with self.head.lock:
            return self._objects()

    def node_name_of_worker(self, worker_id_hex: str) -> Optional[str]:
        """For the log monitor's prefixes: the name of the node a worker runs (ran) on."""
        try:
            worker_id = bytes.fromhex(worker_id_hex)
        except ValueError:
            return None
        head = self.head
        with head.lock:
            info = self.workers.get(worker_id)
            if info is None:
                record = head.workers.get(worker_id)
                info = record.info if record is not None else None
            if info is None:  # born or gone since the last flush
                for node in head.nodes.values():
                    if any(i.worker_id == worker_id for i in node.worker_changes):
                        return node.name
                return None
            node = head.nodes.get(info.node_id)
            return node.name if node is not None else None


def _without_module(func_name: str) -> str:
    """`module.qualname` -> `qualname`, as Ray's func_or_class_name shows it (when the module is known)."""
    dot = func_name.rfind(".")
    while dot > 0:
        if func_name[:dot] in sys.modules:
            return func_name[dot + 1:]
        dot = func_name.rfind(".", 0, dot)
    return func_name
