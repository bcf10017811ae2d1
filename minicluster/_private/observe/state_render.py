"""Text renderings of state records, laid out as Ray's `ray list` / `ray summary` print them.

Runs in the `minicluster` command's process (cli.py). Pure functions from
records (dicts) to text: Ray's plain table (tabulate's "plain" format with an
index column: 2 spaces between columns, each column at least its header's
width plus 2, numbers right-aligned, several lines per cell for dicts and
lists), a small YAML writer for `--detail` and `get`, JSON, the tasks summary
and the `status` report.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any, Dict, List, Optional, Sequence

RULE = "-" * 30

# The columns `list` prints per resource (Ray's; the seed's table for tasks).
TABLE_COLUMNS: Dict[str, Sequence[str]] = {
    "tasks": ("task_id", "attempt_number", "name", "state", "job_id", "actor_id", "type", "func_or_class_name",
              "parent_task_id", "node_id", "worker_id", "error_type"),
    "workers": ("worker_id", "is_alive", "worker_type", "exit_type", "node_id", "ip", "pid", "exit_detail"),
    "nodes": ("node_id", "node_ip", "is_head_node", "state", "state_message", "node_name", "resources_total",
              "labels"),
    "actors": ("actor_id", "class_name", "state", "job_id", "name", "node_id", "pid", "ray_namespace"),
    "placement_groups": ("placement_group_id", "name", "creator_job_id", "state"),
    "objects": ("object_id", "object_size", "task_status", "attempt_number", "reference_type", "call_site", "type",
                "pid", "ip"),
}

_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def now_stamp() -> str:
    return str(datetime.datetime.now())


# ==== the plain table ========================================================================


def _cell_lines(value: Any) -> List[str]:
    if value is None:
        return [""]
    if isinstance(value, dict):
        return [f"{k}: {v}" for k, v in value.items()] or [""]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value] or [""]
    return str(value).split("\n")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and bool(_NUMBER.match(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numalign: str = "right") -> str:
    """tabulate(rows, headers, showindex=True, tablefmt="plain"), as Ray prints its tables."""
    columns = [[str(i) for i in range(len(rows))]] + [[row[c] for row in rows] for c in range(len(headers))]
    heads = [""] + list(headers)
    rendered: List[List[List[str]]] = []  # column -> row -> lines
    widths, right = [], []
    for head, values in zip(heads, columns):
        cells = [_cell_lines(v) for v in values]
        present = [v for v in values if v is not None and v != ""]
        numeric = bool(present) and all(_is_number(v) for v in present)
        right.append(numeric and numalign == "right")
        widths.append(max([len(head) + 2] + [len(line) for cell in cells for line in cell]))
        rendered.append(cells)

    def line(parts: Sequence[str]) -> str:
        out = []
        for i, part in enumerate(parts):
            out.append(part.rjust(widths[i]) if right[i] else part.ljust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [line(heads)]
    for r in range(len(rows)):
        height = max(len(rendered[c][r]) for c in range(len(heads)))
        for k in range(height):
            lines.append(line([rendered[c][r][k] if k < len(rendered[c][r]) else "" for c in range(len(heads))]))
    return "\n".join(lines)


def list_report(resource: str, records: List[Dict[str, Any]], stamp: Optional[str] = None,
                width: Optional[int] = None, hidden: Optional[List[str]] = None) -> str:
    """`ray list <resource>`'s output: a dated header, the total, the table.

    With `width`, the table is made to fit it (fit_table): ids shortened, then the
    columns of HIDE_FIRST left out (their names are appended to `hidden`), then long
    cells cut. Without, it is Ray's table: every column, whole ids.
    """
    columns = list(TABLE_COLUMNS[resource])
    rows = [[r.get(c) for c in columns] for r in records]
    if width is not None:
        columns, rows, dropped = fit_table(resource, columns, rows, width)
        if hidden is not None:
            hidden.extend(dropped)
    body = table([c.upper() for c in columns], rows)
    return (f"\n======== List: {stamp or now_stamp()} ========\n"
            f"Stats:\n{RULE}\nTotal: {len(records)}\n\n"
            f"Table:\n{RULE}\n{body}\n")


# Columns left out, in this order, until a table fits the terminal (the first ones repeat others,
# or matter least when reading a list).
HIDE_FIRST: Dict[str, Sequence[str]] = {
    "tasks": ("job_id", "func_or_class_name", "parent_task_id", "actor_id", "worker_id", "type"),
    "workers": ("ip", "exit_detail", "exit_type"),
    "nodes": ("labels", "node_ip", "state_message", "resources_total"),
    "actors": ("ray_namespace", "job_id", "pid"),
    "objects": ("call_site", "ip", "type", "attempt_number"),
}
MIN_ID = 8  #: a shortened id keeps at least this many hex digits
_ELLIPSIS = "..."


def short_ids(values: Sequence[Any]) -> Dict[str, str]:
    """Each id -> its shortest prefix (at least MIN_ID digits) that no other id of `values` shares."""
    ids = sorted({v for v in values if isinstance(v, str) and v})
    length = MIN_ID
    while length < max((len(i) for i in ids), default=0) and len({i[:length] for i in ids}) < len(ids):
        length += 2
    return {i: i[:length] for i in ids}


def fit_table(resource: str, columns: List[str], rows: List[List[Any]],
              width: int) -> "tuple[List[str], List[List[Any]], List[str]]":
    """The columns and rows of a table that fits `width`, and the columns left out."""
    for c, name in enumerate(columns):
        if name.endswith("_id") and name != "job_id":
            short = short_ids([row[c] for row in rows])
            for row in rows:
                row[c] = short.get(row[c], row[c])
    dropped: List[str] = []
    for name in HIDE_FIRST.get(resource, ()):
        if _table_width(columns, rows) <= width:
            break
        c = columns.index(name)
        columns = columns[:c] + columns[c + 1:]
        rows = [row[:c] + row[c + 1:] for row in rows]
        dropped.append(name)
    while _table_width(columns, rows) > width:
        widths = _column_widths(columns, rows)
        c = max(range(len(columns)), key=lambda i: widths[i])
        limit = max(len(columns[c]) + 2, widths[c] - (_table_width(columns, rows) - width), len(_ELLIPSIS) + 4)
        if limit >= widths[c]:
            break  # nothing left to cut
        for row in rows:
            row[c] = "\n".join(line if len(line) <= limit else line[:limit - len(_ELLIPSIS)] + _ELLIPSIS
                               for line in _cell_lines(row[c]))
    return columns, rows, dropped


def _column_widths(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[int]:
    return [max([len(name) + 2] + [len(line) for row in rows for line in _cell_lines(row[c])])
            for c, name in enumerate(columns)]


def _table_width(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
    index = max(2, len(str(max(len(rows) - 1, 0))))
    return index + sum(w + 2 for w in _column_widths(columns, rows))


# ==== YAML and JSON ===========================================================================

_PLAIN = re.compile(r"^[A-Za-z0-9_/][A-Za-z0-9_./:<>@()\[\]+-]*( [A-Za-z0-9_./:<>@()\[\]+-]+)*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "none", "~", "y", "n"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED and ": " not in text and not _numeric_looking(text):
        return text
    return json.dumps(text)  # a double-quoted JSON string is a valid YAML scalar


def _numeric_looking(text: str) -> bool:
    """Whether a YAML reader could take the text for a number (then it must be quoted)."""
    if text[:2].lower() in ("0x", "0o", "0b") or text.replace("_", "").isdigit():
        return True
    try:
        float(text.replace("_", ""))
    except ValueError:
        return False
    return True


def _yaml(value: Any, indent: int) -> List[str]:
    pad = " " * indent
    lines: List[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines.extend(_yaml(item, indent + (0 if isinstance(item, list) else 2)))
            elif isinstance(item, dict):
                lines.append(f"{pad}{key}: {{}}")
            elif isinstance(item, list):
                lines.append(f"{pad}{key}: []")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            nested = isinstance(item, (dict, list)) and item
            sub = _yaml(item, indent + 4) if nested else [" " * (indent + 4) + _scalar(item)]
            lines.append(f"{pad}-   {sub[0].lstrip()}")
            lines.extend(sub[1:])
    else:
        lines.append(pad + _scalar(value))
    return lines


def _readable_times(value: Any) -> Any:
    """Ray's YAML shows *_ms times as dates."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if (key.endswith("_ms") or key == "created_ms") and isinstance(item, (int, float)) and item > 1e11:
                out[key] = str(datetime.datetime.fromtimestamp(item / 1000.0))
            else:
                out[key] = _readable_times(item)
        return out
    if isinstance(value, list):
        return [_readable_times(item) for item in value]
    return value


def yaml_report(records: Any) -> str:
    """A YAML document, as `ray list --detail` and `ray get` print."""
    return "\n".join(["---"] + _yaml(_readable_times(records), 0) + ["..."]) + "\n"


def json_report(records: Any) -> str:
    return json.dumps(records, indent=2, default=str) + "\n"


# ==== summary and status ======================================================================


def summary_report(summary: Dict[str, Any], stamp: Optional[str] = None) -> str:
    """`ray summary tasks`'s output."""
    cluster = summary["cluster"]
    rule = "-" * 36
    rows = [[group["func_or_class_name"], group["state_counts"], group["type"]]
            for group in cluster["summary"].values()]
    body = table(["FUNC_OR_CLASS_NAME", "STATE_COUNTS", "TYPE"], rows, numalign="left")
    return (f"\n======== Tasks Summary: {stamp or now_stamp()} ========\n"
            f"Stats:\n{rule}\n"
            f"total_actor_scheduled: {cluster['total_actor_scheduled']}\n"
            f"total_actor_tasks: {cluster['total_actor_tasks']}\n"
            f"total_tasks: {cluster['total_tasks']}\n\n\n"
            f"Table (group by {cluster['summary_by']}):\n{rule}\n{body}\n")


def size(nbytes: Optional[float]) -> str:
    if nbytes is None:
        return "?"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.2f}{unit}"
        value /= 1024
    return f"{value}B"


def _when(seconds: Optional[float]) -> str:
    return str(datetime.datetime.fromtimestamp(seconds)) if seconds else "?"


def session_line(session: Dict[str, Any]) -> str:
    """One line saying which session this is and whether it is running."""
    liveness = session.get("liveness")
    if liveness == "running":
        state = f"running (driver pid {session.get('driver_pid')})"
    elif liveness == "ended":
        state = f"ended {_when(session.get('end_time'))} (shut down cleanly)"
    else:
        state = (f"ended: crashed (driver pid {session.get('driver_pid')} is gone and never shut the session "
                 "down; what it journaled is shown)")
    return f"Session: {session.get('dir')}  started {_when(session.get('start_time'))}, {state}"


def status_report(status: Dict[str, Any], stamp: Optional[str] = None) -> str:
    """`minicluster status`: the session, its nodes and their resources, workers and stores."""
    rule = "-" * 60
    out = [f"======== Cluster status: {stamp or now_stamp()} ========", session_line(status["session"])]
    if status["session"].get("liveness") != "running":
        out.append("(the session is over: what follows is how it stood at its last record)")
    out.append("")
    nodes = status["nodes"]
    workers = status.get("workers", [])
    alive = [n for n in nodes if n["state"] == "ALIVE"]
    dead = [n for n in nodes if n["state"] != "ALIVE"]
    out += ["Node status", rule, "Active:" if alive else "Active:\n (no live nodes)"]
    for node in alive:
        stopped = "  STOPPED (SIGSTOP)" if node.get("state_message") else ""
        out.append(f" {node['name']}  {node['node_id'][:12]}  pid {node['pid']}  "
                   f"workers {node['num_workers']} ({node['busy_workers']} busy){stopped}")
    out.append("Dead:" if dead else "Dead:\n (none)")
    for node in dead:
        out.append(f" {node['name']}  {node['node_id'][:12]}  {node.get('state_message') or 'dead'}")
    out += ["", "Resources", rule, "Usage:"]
    total, avail = status.get("cluster_resources", {}), status.get("available_resources", {})
    for key in sorted(k for k in total if not k.startswith("node:")):
        out.append(f" {total[key] - avail.get(key, 0.0):.1f}/{total[key]:.1f} {key}")
    if alive:
        used = sum(n["store_used"] for n in alive)
        capacity = sum(n["store_capacity"] for n in alive)
        out.append(f" {size(used)}/{size(capacity)} object_store_memory ({status.get('num_objects', 0)} objects, "
                   f"{size(status.get('spilled_bytes', 0))} spilled to disk)")
    else:
        out.append(" object_store_memory: none (no live node holds a store)")
    out += ["", "Per node:"]
    for node in alive:
        total, available = node["resources_total"], node["resources_available"]
        resources = ", ".join(f"{k} {total[k] - available.get(k, 0.0):.1f}/{total[k]:.1f}"
                              for k in sorted(total) if not k.startswith("node:"))
        out.append(f" {node['name']}: {resources}; store {size(node['store_used'])}/{size(node['store_capacity'])}")
    live_workers = [w for w in workers if w["is_alive"] and w["worker_type"] == "WORKER"]
    gone = [w for w in workers if not w["is_alive"] and w["worker_type"] == "WORKER"]
    failed = [w for w in gone if w["exit_type"] == "SYSTEM_ERROR"]
    out += ["", "Workers", rule,
            f" {len(live_workers)} alive, {len(gone)} exited ({len(failed)} of them failures)"]
    tasks = status.get("live_tasks") or {}
    out += ["", "Tasks not finished", rule]
    out += [f" {count} {state}" for state, count in sorted(tasks.items())] or [" (none)"]
    out.append(f"\nLogs: {status.get('logs_dir')}")
    return "\n".join(out) + "\n"
