"""Which session folders there are, and which one a reader means.

Runs in the `minicluster` command's process and wherever `minicluster.util.state`
reads a session from its folder. A session is named by its folder's name
(`session_<date>_<time>_<us>_<driver pid>_<rand>`); a reader may give the
whole name, a path, or any part of the name that only one session has (the
driver's pid, the random suffix).

Without a name, the default is chosen so that a concurrent driver cannot
steal it: the session whose driver started this process (the command run from
a driver's subprocess), else the only running session, else -- several running
-- none: the reader is told to pick one with --session. With no session running,
the latest one (`session_latest`, else the newest folder) is the default.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from minicluster._private.common import config
from minicluster._private.observe import state_journal
from minicluster._private.observe.state_journal import STATUS, NoSessionError, liveness


def session_folders(root: Optional[str] = None) -> List[str]:
    """Every folder under the session root that holds a readable session, oldest first."""
    root = root or config.session_root()
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [os.path.join(root, name) for name in names
            if name.startswith("session_") and name != "session_latest"
            and os.path.isfile(os.path.join(root, name, "logs", STATUS))]


def describe(session_dir: str) -> Dict[str, Any]:
    """One session as `minicluster sessions` shows it: id, driver pid, liveness, start, nodes."""
    row: Dict[str, Any] = {"id": os.path.basename(session_dir), "driver_pid": None, "state": "unreadable",
                           "start_time": None, "end_time": None, "nodes_alive": 0, "nodes": 0, "dir": session_dir}
    try:
        with open(os.path.join(session_dir, "logs", STATUS)) as f:
            status = json.load(f)
        session = status["session"]
    except (OSError, ValueError, KeyError, TypeError):
        return row
    nodes = status.get("nodes") or []
    row.update(driver_pid=session.get("driver_pid"), state=liveness(session), start_time=session.get("start_time"),
               end_time=session.get("end_time"), nodes=len(nodes),
               nodes_alive=sum(1 for n in nodes if n.get("state") == "ALIVE"))
    if row["state"] != "running":
        row["nodes_alive"] = 0
    return row


def list_sessions(root: Optional[str] = None) -> List[Dict[str, Any]]:
    """`describe` of every session, oldest first."""
    return [describe(path) for path in session_folders(root)]


def resolve(name: str, root: Optional[str] = None) -> str:
    """The session folder `name` means: a path, a folder name, or a part of one only one session has."""
    expanded = os.path.abspath(os.path.expanduser(name))
    if os.sep in name or name.startswith(".") or os.path.isdir(expanded):
        return expanded  # a path (state_journal.find_session checks it)
    folders = session_folders(root)
    exact = [p for p in folders if os.path.basename(p) in (name, f"session_{name}")]
    if exact:
        return exact[0]
    # A part of the name: whole "_"-separated words first (a pid must not match inside a date).
    words = [p for p in folders if name in os.path.basename(p).split("_")]
    found = words or [p for p in folders if name in os.path.basename(p)]
    if len(found) == 1:
        return found[0]
    where = root or config.session_root()
    if not found:
        raise NoSessionError(f"no session {name!r} under {where} (`minicluster sessions` lists them)")
    names = ", ".join(os.path.basename(p) for p in found[-5:])
    raise NoSessionError(f"{name!r} names {len(found)} sessions ({names}); give more of the id "
                         "(`minicluster sessions` lists them)")


def default_session(root: Optional[str] = None) -> Optional[str]:
    """The session a reader means when it names none (see the module docstring); None if there is none.

    Raises NoSessionError when several sessions run and none is this process's own.
    """
    rows = list_sessions(root)
    running = [r for r in rows if r["state"] == "running"]
    ancestors = _ancestor_pids()
    own = [r for r in running if r["driver_pid"] in ancestors]
    if own:
        return own[-1]["dir"]
    if len(running) == 1:
        return running[0]["dir"]
    if len(running) > 1:
        listed = "; ".join(f"{r['id']} (driver pid {r['driver_pid']})" for r in running)
        raise NoSessionError(f"{len(running)} sessions are running: {listed}. Pick one with --session ID "
                             "(a unique part of the id, such as the driver's pid, is enough)")
    return None


def _ancestor_pids() -> List[int]:
    """This process and its ancestors (a driver that runs the command in a subprocess is one)."""
    pids = []
    pid = os.getpid()
    while pid > 1 and len(pids) < 64:
        pids.append(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat_line = f.read()
            pid = int(stat_line[stat_line.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            if pid == os.getpid():
                pid = os.getppid()
                continue
            break
    return pids


def find_session(name: Optional[str] = None) -> str:
    """The session folder to read: the one `name` means, else the default, else the latest one."""
    if name:
        return state_journal.find_session(resolve(name))
    return default_session() or state_journal.find_session(None)
