"""`minicluster top`: one frame of the live view of a session, as text.

Runs in the `minicluster` command's process (cli.py redraws a frame every
interval). Pure functions from the records the state API builds (the session's
status, its workers and task attempts) to lines: the session, its nodes (CPU,
store use, workers), the tasks by state, and each live worker with what it
runs and for how long.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

from minicluster._private.observe.state_render import short_ids, size, table

ACTIVE = ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER", "RUNNING")


def frame(status: Dict[str, Any], tasks: List[Dict[str, Any]], width: int = 120,
          now: Optional[float] = None) -> str:
    """The view: `status` as util.state.session_status returns it, `tasks` as task_records does."""
    now = time.time() if now is None else now
    session = status["session"]
    name = session.get("name") or os.path.basename(str(session.get("dir") or ""))
    state = session.get("liveness")
    if state == "running":
        state = f"running, driver pid {session.get('driver_pid')}"
    out = [f"minicluster top  {time.strftime('%H:%M:%S', time.localtime(now))}  session {name} ({state})", ""]
    out += _nodes(status)
    out += ["", _task_counts(tasks), ""]
    out += _workers(status, tasks, now)
    return "\n".join(line[:width] for line in "\n".join(out).split("\n")) + "\n"


def _nodes(status: Dict[str, Any]) -> List[str]:
    rows = []
    short = short_ids([n["node_id"] for n in status["nodes"]])
    for node in status["nodes"]:
        total, available = node.get("resources_total") or {}, node.get("resources_available") or {}
        alive = node["state"] == "ALIVE"
        cpu = f"{total.get('CPU', 0.0) - available.get('CPU', 0.0):g}/{total.get('CPU', 0.0):g}" if alive else "-"
        store = f"{size(node.get('store_used'))}/{size(node.get('store_capacity'))}" if alive else "-"
        state = "STOPPED" if alive and node.get("state_message") else node["state"]
        workers = f"{node.get('num_workers', 0)} ({node.get('busy_workers', 0)} busy)" if alive else "-"
        rows.append([node["name"], short[node["node_id"]], state, node.get("pid"), cpu, store, workers])
    return ["Nodes", table(["NAME", "NODE_ID", "STATE", "PID", "CPU", "STORE", "WORKERS"], rows)]


def _task_counts(tasks: List[Dict[str, Any]]) -> str:
    latest: Dict[str, Dict[str, Any]] = {}
    for task in tasks:  # the last attempt of each task says where it stands
        latest[task["task_id"]] = task
    counts: Dict[str, int] = {}
    for task in latest.values():
        counts[task["state"]] = counts.get(task["state"], 0) + 1
    order = list(ACTIVE) + ["FINISHED", "FAILED"]
    parts = [f"{counts[s]} {s}" for s in order if counts.get(s)]
    parts += [f"{n} {s}" for s, n in sorted(counts.items()) if s not in order]
    retried = sum(1 for t in tasks if t["attempt_number"] > 0)
    return f"Tasks: {', '.join(parts) or 'none yet'}" + (f"  (retries: {retried})" if retried else "")


def _workers(status: Dict[str, Any], tasks: List[Dict[str, Any]], now: float) -> List[str]:
    running = {t["worker_id"]: t for t in tasks if t["state"] == "RUNNING" and t["worker_id"]}
    names = {n["node_id"]: n["name"] for n in status["nodes"]}
    live = [w for w in status.get("workers", []) if w["is_alive"] and w["worker_type"] == "WORKER"]
    rows = []
    for worker in live:
        task = running.get(worker["worker_id"])
        if task is None:
            rows.append([worker["pid"], names.get(worker["node_id"], "?"), "IDLE", "", ""])
            continue
        started = (task.get("start_time_ms") or 0) / 1000.0
        seconds = f"{max(0.0, now - started):.1f}" if started else ""
        rows.append([worker["pid"], names.get(worker["node_id"], "?"), task["name"], task["task_id"][:16], seconds])
    rows.sort(key=lambda r: (r[2] == "IDLE", r[1], r[0]))
    title = f"Workers: {len(live)} alive, {len(running)} running a task"
    return [title, table(["PID", "NODE", "RUNNING", "TASK_ID", "FOR_S"], rows)] if rows else [title]
