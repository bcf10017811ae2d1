"""Which session the `minicluster` command reads: `sessions`, `--session ID`, and a default that a
second driver running at the same time cannot take over."""

from __future__ import annotations

import json
import shutil
import tempfile

import pytest
from conftest import wait_for
from driver_process import DriverProcess, minicluster_cmd

# A driver that runs one task named after its argument, then obeys lines on stdin:
# "cli ARGS" runs the command from inside the driver (as a child of it), "" shuts down.
SCRIPT = """
    import os, subprocess, sys
    import minicluster as ray

    info = ray.init(num_cpus=1)
    tag = sys.argv[1]
    ray.get(ray.remote(lambda: 1).options(name=tag).remote())
    print("SESSION", info.address_info["session_dir"], flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line.startswith("cli"):
            break
        out = subprocess.run([sys.executable, "-m", "minicluster", *line.split()[1:]], capture_output=True,
                             text=True)
        print("CLI", out.returncode, out.stdout.replace("\\n", " "), out.stderr.replace("\\n", " "), flush=True)
    ray.shutdown()
    print("DONE", flush=True)
"""


@pytest.fixture
def root():
    path = tempfile.mkdtemp(prefix="mc-", dir="/tmp")  # short: the session's socket path must fit
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _names(result) -> set:
    assert result.returncode == 0, result.stderr
    return {row["name"] for row in json.loads(result.stdout)}


@pytest.mark.timeout(120)
def test_two_drivers_at_once_neither_takes_over_the_default(tmp_path, root):
    env = {"MINICLUSTER_TMPDIR": root}
    first = DriverProcess(SCRIPT, str(tmp_path / "a.py"), ["task_of_a"], env=env)
    second = None
    try:
        session_a = first.expect("SESSION")
        # One driver running: it is the default (the journal is written a moment after the task ends).
        wait_for(lambda: _names(minicluster_cmd("list", "tasks", "--format", "json", env=env)) == {"task_of_a"},
                 10, "the first driver's task in the default session's journal")

        second = DriverProcess(SCRIPT, str(tmp_path / "b.py"), ["task_of_b"], env=env)
        session_b = second.expect("SESSION")
        pid_a, pid_b = first.proc.pid, second.proc.pid

        def both_listed_running():
            listed = minicluster_cmd("sessions", env=env)
            assert listed.returncode == 0, listed.stderr
            rows = [next((line.split() for line in listed.stdout.splitlines() if session.rsplit("/", 1)[1] in line),
                         []) for session in (session_a, session_b)]
            if all(str(pid) in row and "running" in row and "1/1" in row for pid, row in zip((pid_a, pid_b), rows)):
                return listed.stdout
            return None

        listed = wait_for(both_listed_running, 10, "both sessions listed as running with their node")
        assert "*" not in listed.split("\n\n")[0]  # no default while two run

        # Two running, none named: the command asks instead of guessing.
        ambiguous = minicluster_cmd("list", "tasks", env=env)
        assert ambiguous.returncode == 1
        assert "2 sessions are running" in ambiguous.stderr and "--session ID" in ambiguous.stderr
        assert str(pid_a) in ambiguous.stderr and str(pid_b) in ambiguous.stderr

        # --session takes the id, a unique part of it (the driver's pid), or the folder.
        by_id = session_a.rsplit("/", 1)[1]
        assert _names(minicluster_cmd("list", "tasks", "--format", "json", "--session", by_id, env=env)) == \
            {"task_of_a"}
        wait_for(lambda: _names(minicluster_cmd("list", "tasks", "--format", "json", "--session", str(pid_b),
                                                env=env)) == {"task_of_b"}, 10, "the second driver's task journaled")
        assert _names(minicluster_cmd("list", "tasks", "--format", "json", "--session", session_b, env=env)) == \
            {"task_of_b"}
        for command in (["status"], ["summary", "tasks"], ["top", "--once"], ["logs"]):
            result = minicluster_cmd(*command, "--session", str(pid_a), env=env)
            assert result.returncode == 0, (command, result.stderr)
        missing = minicluster_cmd("list", "tasks", "--session", "no-such-session", env=env)
        assert missing.returncode == 1 and "no session 'no-such-session'" in missing.stderr

        # Run from inside a driver, the command reads that driver's session.
        first.send("cli list tasks --format json")
        answer = first.expect("CLI")
        assert answer.startswith("0 ") and "task_of_a" in answer and "task_of_b" not in answer
        second.send("cli list tasks --format json")
        answer = second.expect("CLI")
        assert answer.startswith("0 ") and "task_of_b" in answer and "task_of_a" not in answer

        # The second driver ends: the first is the only one running, the default again.
        second.send("")
        second.expect("DONE")
        assert second.finish() == 0
        assert _names(minicluster_cmd("list", "tasks", "--format", "json", env=env)) == {"task_of_a"}
        after = minicluster_cmd("sessions", env=env).stdout
        default_row = next(line for line in after.splitlines() if line.split()[1:2] == ["*"])
        assert session_a.rsplit("/", 1)[1] in default_row
        first.send("")
        first.expect("DONE")
        assert first.finish() == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()


def test_sessions_with_none_says_how_to_start_one(tmp_path):
    result = minicluster_cmd("sessions", env={"MINICLUSTER_TMPDIR": str(tmp_path / "empty")})
    assert result.returncode == 1
    assert "no minicluster session" in result.stderr and "Traceback" not in result.stderr
