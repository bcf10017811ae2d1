"""The `minicluster` command (also `python -m minicluster`).

Runs in its own process, separate from any driver. Except for `demo`, the
commands read a session's folder (state_journal.py), named by `--session ID`
(a session id from `minicluster sessions`, a unique part of one such as the
driver's pid, or a folder's path); without it, the session of the driver that
ran this command, else the only running one, else the last one (several
running: the command asks which; observe/sessions.py). They work while the
driver runs, after it ended, and after it crashed.

    minicluster --version
    minicluster sessions
    minicluster list tasks|objects|nodes|workers|actors [-f KEY=VALUE|KEY!=VALUE ...]
                     [--detail] [--wide] [--format table|json|yaml|parquet|arrow [-o FILE]] [--limit N]
    minicluster get task|node|worker|actor|objects ID [--format yaml|json]
    minicluster summary tasks
    minicluster status
    minicluster top [--once] [--interval S]
    minicluster timeline [-o trace.json]
    minicluster logs [WORKER_ID|PID] [--all]
    minicluster demo

Tables fit the terminal (120 columns when output is not a terminal): ids are
shortened to a unique prefix (`get` takes it) and the least useful columns are
left out; `--wide` prints Ray's whole table.

Exit codes: 0 done; 1 nothing to show or bad input (no session, no such id,
a bad filter), with a message on stderr; 2 a malformed command line.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import minicluster
from minicluster._private.common import config
from minicluster._private.observe import arrow_export, log_files, sessions, state_render, top_view
from minicluster._private.observe.state_journal import NoSessionError
from minicluster._private.observe.timeline import write_trace
from minicluster.demo import run as run_demo
from minicluster.util import state
from minicluster.util.state import trace_events

RESOURCES = ("tasks", "objects", "nodes", "workers", "actors", "placement-groups")
_SINGULAR = {"task": "tasks", "object": "objects", "node": "nodes", "worker": "workers", "actor": "actors",
             "placement-group": "placement-groups"}


class CommandError(Exception):
    """A problem to report in one line and exit 1."""


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    if args.command == "demo":
        if args.nodes < 1 or args.cpus < 1:
            parser.error("--nodes and --cpus must be at least 1")
        return run_demo(args.nodes, args.cpus)
    try:
        return _COMMANDS[args.command](args)
    except CommandError as exc:
        print(f"minicluster: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`| head`, a closed `top`): done. Before ConnectionError, its base
        # class; stdout is pointed at /dev/null so the interpreter's last flush does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ConnectionError as exc:  # no session to read
        print(f"minicluster: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    session = argparse.ArgumentParser(add_help=False)
    session.add_argument("--session", metavar="ID",
                         help="the session to read: an id from `minicluster sessions`, a unique part of one "
                              "(the driver's pid), or a session folder (default: this driver's session, else "
                              "the only running one, else the last one)")
    parser = argparse.ArgumentParser(
        prog="minicluster",
        description="Ray Core's API and fault tolerance on one machine. The state commands read a session "
                    "(--session ID; `minicluster sessions` lists them), also after its driver ended or crashed.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser("demo", help="run a short self-explaining job (a DAG with one worker crash)")
    demo.add_argument("--nodes", type=int, default=2, help="virtual nodes to start (default 2)")
    demo.add_argument("--cpus", type=int, default=2, help="CPUs per node (default 2)")

    listing = commands.add_parser("list", parents=[session], help="list tasks (one row per attempt), objects, "
                                  "nodes, workers or actors")
    listing.add_argument("resource", choices=RESOURCES + tuple(_SINGULAR), metavar="{" + ",".join(RESOURCES) + "}")
    listing.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                         help="keep rows whose KEY equals VALUE (KEY!=VALUE: differs); repeatable; "
                              "case-insensitive, as in Ray")
    listing.add_argument("--detail", action="store_true", help="every field (printed as YAML unless --format)")
    listing.add_argument("--wide", action="store_true", help="Ray's whole table: every column, whole ids "
                         "(by default the table fits the terminal, 120 columns when not a terminal)")
    listing.add_argument("--format", choices=("table", "json", "yaml") + arrow_export.FORMATS, default=None,
                         help="parquet and arrow (Arrow IPC) write every field to the file -o names")
    listing.add_argument("-o", "--output", metavar="FILE", help="the file for --format parquet or arrow")
    listing.add_argument("--limit", type=int, default=None, help="rows to show, the most recent (default 100; "
                         "a parquet or arrow file gets them all)")

    get = commands.add_parser("get", parents=[session], help="one task (all its attempts), node, worker, actor "
                              "or object, in detail")
    get.add_argument("resource", choices=RESOURCES + tuple(_SINGULAR),
                     metavar="{task,object,node,worker,actor,placement-group}")
    get.add_argument("id", help="its id (hex); a unique prefix is enough")
    get.add_argument("--format", choices=("yaml", "json"), default="yaml")

    summary = commands.add_parser("summary", parents=[session], help="task attempts counted by name and state")
    summary.add_argument("resource", choices=("tasks",))

    commands.add_parser("status", parents=[session], help="the session: nodes, their state and resources, "
                        "workers, object store usage")

    commands.add_parser("sessions", help="the sessions under the session root: id, driver pid, running or "
                        "not, start time, nodes")

    top = commands.add_parser("top", parents=[session], help="a live view of a session: nodes, workers and "
                              "what they run, tasks by state, store use; refreshed until Ctrl-C")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between frames (default 1)")

    timeline = commands.add_parser("timeline", parents=[session], help="write a Chrome trace of every task "
                                   "attempt (open it in Perfetto: ui.perfetto.dev)")
    timeline.add_argument("-o", "--output", default="trace.json", help="file to write (default trace.json)")

    logs = commands.add_parser("logs", parents=[session], help="workers' output: list the log files, or print "
                               "one worker's (by worker id or pid) or all of them")
    logs.add_argument("worker", nargs="?", help="a worker id (or unique prefix) or pid")
    logs.add_argument("--all", action="store_true", help="print every worker's output")
    return parser


# ==== list / get / summary / status ================================================================


def _filters(specs: Sequence[str]) -> List[Tuple[str, str, str]]:
    filters = []
    for spec in specs:
        if "!=" in spec:
            key, value = spec.split("!=", 1)
            predicate = "!="
        elif "=" in spec:
            key, value = spec.split("=", 1)
            predicate = "="
        else:
            raise CommandError(f"bad filter {spec!r}: write KEY=VALUE or KEY!=VALUE (the predicates are = and !=)")
        if not key.strip():
            raise CommandError(f"bad filter {spec!r}: the key is empty")
        filters.append((key.strip(), predicate, value.strip()))
    return filters


def _cmd_list(args: argparse.Namespace) -> int:

    resource = _SINGULAR.get(args.resource, args.resource).replace("-", "_")
    exporting = args.format in arrow_export.FORMATS
    limit = args.limit if args.limit is not None else (None if exporting else 100)
    if limit is not None and limit < 0:
        raise CommandError(f"--limit must be >= 0, got {limit}")
    filters = _filters(args.filter)
    source = _session_source(args.session)
    try:
        records, total = state.query(resource, source, filters, limit, args.detail or exporting)  # a file: every field
    except state.RayStateApiException as exc:
        raise CommandError(str(exc)) from None
    rows = [r.asdict() for r in records]
    _note_session(source)
    if total > len(rows):
        print(f"minicluster: showing the last {len(rows)} of {total} {resource} (use --limit for more)",
              file=sys.stderr)
    fmt = args.format or ("yaml" if args.detail else "table")
    if fmt in arrow_export.FORMATS:
        return _export(resource, rows, fmt, args.output)
    if args.output:
        raise CommandError(f"-o/--output is for --format parquet or arrow; {fmt} goes to stdout")
    if fmt == "table":
        hidden: List[str] = []
        out = state_render.list_report(resource, rows, width=None if args.wide else _width(), hidden=hidden)
        if hidden:
            print(f"minicluster: left out {', '.join(hidden)} to fit {_width()} columns (--wide: every column, "
                  "--detail: every field)", file=sys.stderr)
    elif fmt == "json":
        out = state_render.json_report(rows)
    else:
        out = state_render.yaml_report(rows)
    sys.stdout.write(out)
    return 0


def _export(resource: str, rows: List[Dict[str, Any]], fmt: str, output: Optional[str]) -> int:
    if not output:
        raise CommandError(f"--format {fmt} writes a file: name it with -o FILE")
    columns = list(state.SCHEMAS[resource].field_names())
    try:
        written = arrow_export.write(rows, columns, output, fmt)
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {exc}") from None
    print(f"wrote {written} {resource} to {output} ({fmt})")
    return 0


def _width() -> int:
    """The terminal's width; 120 columns when stdout is not a terminal (a pipe, a file), or $COLUMNS."""
    if sys.stdout.isatty():
        return shutil.get_terminal_size((120, 24)).columns
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else 120


def _cmd_get(args: argparse.Namespace) -> int:

    resource = _SINGULAR.get(args.resource, args.resource).replace("-", "_")
    source = _session_source(args.session)
    key = state.ID_KEYS[resource]
    records, _ = state.query(resource, source, None, None, True)
    wanted = args.id.strip().lower()
    found = [r for r in records if str(r[key] or "").lower() == wanted]
    if not found and len(wanted) >= 4:
        found = [r for r in records if str(r[key] or "").lower().startswith(wanted)]
        ids = {r[key] for r in found}
        if len(ids) > 1:
            raise CommandError(f"{args.id!r} is the start of {len(ids)} {resource} ids; give more of it")
    if not found:
        raise CommandError(f"no {resource[:-1]} with id {args.id!r} in {_session_name(source)} "
                           f"(`minicluster list {resource}` shows them)")
    rows = [r.asdict() for r in found]
    _note_session(source)
    sys.stdout.write(state_render.json_report(rows) if args.format == "json" else state_render.yaml_report(rows))
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:

    source = _session_source(args.session)
    summary = state.summarize_tasks(address=source.files.dir if source.files else None)
    _note_session(source)
    sys.stdout.write(state_render.summary_report(summary))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:

    source = _session_source(args.session)
    status = state.session_status(address=source.files.dir if source.files else None)
    sys.stdout.write(state_render.status_report(status))
    return 0


def _cmd_timeline(args: argparse.Namespace) -> int:

    source = _session_source(args.session)
    events = trace_events(address=source.files.dir if source.files else None)
    try:
        write_trace(events, args.output)
    except OSError as exc:
        raise CommandError(f"cannot write {args.output}: {exc}") from None
    slices = sum(1 for e in events if e.get("ph") == "X")
    _note_session(source)
    print(f"wrote {slices} task attempts to {args.output}; open it in Perfetto (https://ui.perfetto.dev) "
          "or chrome://tracing")
    return 0


def _cmd_sessions(args: argparse.Namespace) -> int:

    rows = sessions.list_sessions()
    if not rows:
        raise CommandError(f"no minicluster session under {config.session_root()}: start one with "
                           "minicluster.init() (or `minicluster demo`)")
    try:
        default = sessions.find_session(None)
    except NoSessionError:
        default = None
    table = [["*" if row["dir"] == default else "", row["id"], row["driver_pid"], row["state"],
              _stamp(row["start_time"]), f"{row['nodes_alive']}/{row['nodes']}"] for row in rows]
    print(state_render.table(["", "ID", "DRIVER_PID", "STATE", "STARTED", "NODES_ALIVE"], table))
    print(f"\n{config.session_root()}; * marks the default session; pick another with --session ID "
          "(a unique part of the id, such as the driver's pid, is enough)")
    return 0


def _stamp(seconds: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "?"


def _cmd_top(args: argparse.Namespace) -> int:

    if args.interval <= 0:
        raise CommandError(f"--interval must be > 0, got {args.interval}")
    # Pinned once: the view does not jump to another session while it runs.
    files = _session_source(args.session).files
    pinned = files.dir if files is not None else None
    try:
        while True:
            source = _session_source(pinned)
            status = dict(source.status())
            status["workers"] = state.worker_records(source)
            view = top_view.frame(status, state.task_records(source), width=_width())
            if args.once:
                sys.stdout.write(view)
                return 0
            sys.stdout.write("\x1b[H\x1b[2J" + view + f"\n(every {args.interval:g} s; Ctrl-C to quit)\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _version() -> str:
    return (f"minicluster {minicluster.__version__} (Python {platform.python_version()}, "
            f"{os.path.dirname(minicluster.__file__)})")


# ==== logs ==========================================================================================


def _cmd_logs(args: argparse.Namespace) -> int:

    source = _session_source(args.session)
    files = log_files.list_worker_logs(source.logs_dir)
    workers = {w["worker_id"]: w for w in state.worker_records(source)}
    node_names = {n["node_id"]: n["node_name"] for n in state.node_records(source)}

    def node_of(worker_id: str) -> Optional[str]:
        worker = workers.get(worker_id)
        return node_names.get(worker["node_id"]) if worker else None

    if args.worker is None and not args.all:
        by_worker: Dict[str, Dict[str, Any]] = {}
        for log in files:
            row = by_worker.setdefault(log.worker_id, {"worker_id": log.worker_id, "pid": log.pid,
                                                       "node": node_of(log.worker_id), "alive": None,
                                                       "out_bytes": 0, "err_bytes": 0})
            row[f"{log.stream}_bytes"] = _size_of(log.path)
            worker = workers.get(log.worker_id)
            row["alive"] = worker["is_alive"] if worker else None
        if not by_worker:
            raise CommandError(f"no worker log files in {source.logs_dir}")
        columns = ("worker_id", "pid", "node", "alive", "out_bytes", "err_bytes")
        short = state_render.short_ids(list(by_worker))  # whole ids made a 300-column table; a prefix is taken
        rows = [[short[r["worker_id"]]] + [r[c] for c in columns[1:]] for r in by_worker.values()]
        print(state_render.table([c.upper() for c in columns], rows))
        print(f"\nThe files: {source.logs_dir}/worker-<worker id>-<job id>-<pid>.{{out,err}}\n"
              "`minicluster logs <worker id or pid>` prints one worker's output; --all prints everyone's.")
        return 0
    if args.worker is not None:
        wanted = args.worker.strip().lower()
        chosen = [f for f in files if str(f.pid) == wanted or f.worker_id == wanted]
        if not chosen and len(wanted) >= 4:
            chosen = [f for f in files if f.worker_id.startswith(wanted)]
        if len({f.worker_id for f in chosen}) > 1:
            raise CommandError(f"{args.worker!r} matches several workers; give more of the id")
        if not chosen:
            raise CommandError(f"no worker {args.worker!r} has log files in {source.logs_dir} "
                               "(`minicluster logs` lists them)")
        files = chosen
    for log in files:
        stream = sys.stdout if log.stream == "out" else sys.stderr
        for task_name, text in log.read_lines(final=True):
            stream.write(f"{log_files.prefix(task_name, log.pid, node_of(log.worker_id))} {text}\n")
    sys.stdout.flush()
    return 0


def _size_of(path: str) -> int:

    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# ==== sessions ======================================================================================


def _session_source(name: Optional[str]) -> Any:

    return state.session_source(name)


def _session_name(source: Any) -> str:
    return source.status()["session"].get("dir") or source.logs_dir


def _note_session(source: Any) -> None:
    """Say on stderr which session was read, and whether it is over."""

    session = source.status()["session"]
    if session.get("liveness") != "running" or source.files is not None:
        print(f"minicluster: {state_render.session_line(session)}", file=sys.stderr)


_COMMANDS = {
    "list": _cmd_list,
    "get": _cmd_get,
    "summary": _cmd_summary,
    "status": _cmd_status,
    "sessions": _cmd_sessions,
    "top": _cmd_top,
    "timeline": _cmd_timeline,
    "logs": _cmd_logs,
}


if __name__ == "__main__":
    sys.exit(main())
