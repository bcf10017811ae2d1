"""The timeline: every task attempt as a slice in a Chrome trace (opens in Perfetto or chrome://tracing).

Runs wherever it is asked for: `minicluster.timeline()` in the driver (live
records) or `minicluster timeline -o trace.json` in another shell (the
session's journal); both read the rows through minicluster.util.state. The
trace is Chrome's JSON trace format, a list of events:

    one process per virtual node        "node-0 (3f2a91c0)"
    one thread (track) per worker       "worker pid=4242 (9c01d2e3)"
    one complete ("X") slice per attempt that reached a worker, named after the
    task; a failed attempt is named "<name> [FAILED <error type>]" and its
    category is "task,failed"; args carry the ids, attempt, state and error.

Attempts that never reached a worker (cancelled or failed while pending) have
no slice: they used no worker time. Faults that a test injected
(minicluster.testing) are instant ("i") events named "injected <kind>", on the
worker's track or, for a node fault, across the node's process.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List

from minicluster._private.observe.state_journal import FAULTS


def trace_events(tasks: List[Dict[str, Any]], workers: List[Dict[str, Any]], nodes: List[Dict[str, Any]],
                 status: Dict[str, Any], logs_dir: str) -> List[Dict[str, Any]]:
    """The Chrome trace events of a session, from its state rows (minicluster.util.state's)."""
    now_us = (status.get("session", {}).get("end_time") or status.get("updated") or time.time()) * 1e6
    node_pid = {node["node_id"]: index + 1 for index, node in enumerate(nodes)}
    events: List[Dict[str, Any]] = []
    for node in nodes:
        pid = node_pid[node["node_id"]]
        events.append({"name": "process_name", "ph": "M", "pid": pid,
                       "args": {"name": f"{node['node_name']} ({node['node_id'][:8]})"}})
        events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": pid}})
    named = set()
    for worker in workers:
        pid = node_pid.get(worker["node_id"])
        if pid is None or worker["worker_type"] != "WORKER":
            continue
        named.add(worker["worker_id"])
        events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": worker["pid"],
                       "args": {"name": f"worker pid={worker['pid']} ({worker['worker_id'][:8]})"}})
    for task in tasks:
        start = task["start_time_ms"]
        if start is None or task["worker_pid"] is None or task["node_id"] not in node_pid:
            continue
        end_us = task["end_time_ms"] * 1000.0 if task["end_time_ms"] is not None else now_us
        start_us = start * 1000.0
        failed = task["state"] == "FAILED"
        name = task["name"] + (f" [FAILED {task['error_type']}]" if failed else "")
        if task["state"] not in ("FINISHED", "FAILED"):
            name += f" [{task['state']}]"
        events.append({
            "name": name,
            "cat": "task,failed" if failed else "task",
            "ph": "X",
            "ts": start_us,
            "dur": max(1.0, end_us - start_us),
            "pid": node_pid[task["node_id"]],
            "tid": task["worker_pid"],
            "cname": "terrible" if failed else "good",
            "args": {
                "task_id": task["task_id"],
                "attempt_number": task["attempt_number"],
                "state": task["state"],
                "func_or_class_name": task["func_or_class_name"],
                "error_type": task["error_type"],
                "error_message": task["error_message"],
                "node_id": task["node_id"],
                "worker_id": task["worker_id"],
            },
        })
    events.extend(_fault_events(logs_dir, node_pid))
    return events


def _fault_events(logs_dir: str, node_pid: Dict[str, int]) -> List[Dict[str, Any]]:
    """The injected faults of the session's test, if it had a fault plan, as instant events."""
    try:
        with open(os.path.join(logs_dir, FAULTS)) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            fault = json.loads(line)
        except ValueError:
            continue  # the last line of a driver that was killed mid-write
        worker_pid = fault.get("worker_pid")
        event = {"name": f"injected {fault['kind']}", "cat": "fault", "ph": "i", "ts": fault["time"] * 1e6,
                 "pid": node_pid.get(fault.get("node_id"), 0), "cname": "terrible",
                 "args": {k: v for k, v in fault.items() if v not in (None, "")}}
        if worker_pid:
            event.update(tid=worker_pid, s="t")
        else:
            event.update(tid=0, s="p")
        events.append(event)
    return events


def write_trace(events: List[Dict[str, Any]], filename: str) -> None:
    with open(filename, "w") as f:
        json.dump(events, f)
