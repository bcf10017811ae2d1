"""The `minicluster` command (also `python -m minicluster`).

Runs in its own process, separate from any driver. Except for `demo`, the
commands read a session's folder (state_journal.py): the running session or
the last one (`session_latest`), or the one named by `--session PATH`. They
work while the driver runs, after it ended, and after it crashed.

    minicluster list tasks|objects|nodes|workers|actors [-f KEY=VALUE|KEY!=VALUE ...]
                     [--detail] [--format table|json|yaml] [--limit N]
    minicluster get task|node|worker|actor|objects ID [--format yaml|json]
    minicluster summary tasks
    minicluster status
    minicluster timeline [-o trace.json]
    minicluster logs [WORKER_ID|PID] [--all]
    minicluster demo

Exit codes: 0 done; 1 nothing to show or bad input (no session, no such id,
a bad filter), with a message on stderr; 2 a malformed command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from minicluster._private.observe import log_files, state_render
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
    except ConnectionError as exc:  # no session to read
        print(f"minicluster: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


def _parser() -> argparse.ArgumentParser:
    session = argparse.ArgumentParser(add_help=False)
    session.add_argument("--session", metavar="PATH",
                         help="a session folder (default: the running or last session, session_latest)")
    parser = argparse.ArgumentParser(
        prog="minicluster",
        description="Ray Core's API and fault tolerance on one machine. The state commands read the running "
                    "or last session (or --session PATH), also after its driver ended or crashed.",
    )
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
    listing.add_argument("--format", choices=("table", "json", "yaml"), default=None)
    listing.add_argument("--limit", type=int, default=100, help="rows to show, the most recent (default 100)")

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
    if args.limit < 0:
        raise CommandError(f"--limit must be >= 0, got {args.limit}")
    filters = _filters(args.filter)
    source = _session_source(args.session)
    try:
        records, total = state.query(resource, source, filters, args.limit, args.detail)
    except state.RayStateApiException as exc:
        raise CommandError(str(exc)) from None
    rows = [r.asdict() for r in records]
    _note_session(source)
    if total > len(rows):
        print(f"minicluster: showing the last {len(rows)} of {total} {resource} (use --limit for more)",
              file=sys.stderr)
    fmt = args.format or ("yaml" if args.detail else "table")
    if fmt == "table":
        out = state_render.list_report(resource, rows)
    elif fmt == "json":
        out = state_render.json_report(rows)
    else:
        out = state_render.yaml_report(rows)
    sys.stdout.write(out)
    return 0


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
                                                       "out_bytes": 0, "err_bytes": 0, "file": None})
            row[f"{log.stream}_bytes"] = _size_of(log.path)
            row["file"] = log.path[: -len(".out")] + ".{out,err}"
            worker = workers.get(log.worker_id)
            row["alive"] = worker["is_alive"] if worker else None
        if not by_worker:
            raise CommandError(f"no worker log files in {source.logs_dir}")
        columns = ("worker_id", "pid", "node", "alive", "out_bytes", "err_bytes", "file")
        print(state_render.table([c.upper() for c in columns], [[r[c] for c in columns] for r in by_worker.values()]))
        print("\n`minicluster logs <worker id or pid>` prints one worker's output; --all prints everyone's.")
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


def _session_source(path: Optional[str]) -> Any:

    source = state.session_source(path)
    return source


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
    "timeline": _cmd_timeline,
    "logs": _cmd_logs,
}


if __name__ == "__main__":
    sys.exit(main())
