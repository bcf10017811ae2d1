"""The `minicluster` state commands, run from another process against a running, ended or crashed session."""

from __future__ import annotations

import json
import re
import shutil
import tempfile

from conftest import wait_for
from driver_process import DriverProcess, minicluster_cmd

SEED_HEADER = ["TASK_ID", "ATTEMPT_NUMBER", "NAME", "STATE", "JOB_ID", "ACTOR_ID", "TYPE", "FUNC_OR_CLASS_NAME",
               "PARENT_TASK_ID", "NODE_ID", "WORKER_ID", "ERROR_TYPE"]

# The seed's job: a task whose worker dies on its first attempt and that succeeds on its second,
# and one that raises. The driver then waits for a line: "" to shut down, "crash" to SIGKILL itself.
SCRIPT = """
    import os, signal, sys
    import minicluster as ray

    info = ray.init(num_cpus=2)

    @ray.remote(max_retries=1)
    def potentially_fail(marker):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        print("made it on the second attempt")
        return 1

    @ray.remote
    def f():
        raise ValueError("boom")

    ref = potentially_fail.remote(sys.argv[1])
    assert ray.get(ref) == 1
    try:
        ray.get(f.remote())
    except ValueError:
        pass
    print("SESSION", info.address_info["session_dir"], flush=True)
    print("TASK", ref.task_id().hex(), flush=True)
    if sys.stdin.readline().strip() == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    ray.shutdown()
    print("DONE", flush=True)
"""


def _start(tmp_path, env=None) -> DriverProcess:
    return DriverProcess(SCRIPT, str(tmp_path / "driver.py"), [str(tmp_path / "marker")], env=env)


def _rows(output: str) -> list:
    """The table rows of a `list` report, split into columns (no column here has spaces)."""
    lines = output.splitlines()
    table = lines.index("Table:")
    return [line.split() for line in lines[table + 3:] if line.strip()]


def _list_json(session: str, *args: str) -> list:
    result = minicluster_cmd("list", *args, "--format", "json", "--session", session)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_list_tasks_while_the_driver_runs_and_after_it_ended(tmp_path):
    driver = _start(tmp_path)
    try:
        session = driver.expect("SESSION")
        task_id = driver.expect("TASK")
        wait_for(lambda: len(_list_json(session, "tasks")) == 3, 10, "the journal to hold the three attempts")

        # --wide: Ray's own table, every column and whole ids (test_cli_list.py: the table fitted to a terminal).
        result = minicluster_cmd("list", "tasks", "-f", f"task_id={task_id}", "--session", session, "--wide")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == ""
        assert re.fullmatch(r"======== List: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ ========", lines[1])
        assert lines[2:9] == ["Stats:", "-" * 30, "Total: 2", "", "Table:", "-" * 30, lines[8]]
        assert lines[8].split() == SEED_HEADER
        assert lines[8].startswith("    TASK_ID  ")
        rows = _rows(result.stdout)
        assert [row[:5] for row in rows] == [["0", task_id, "0", "potentially_fail", "FAILED"],
                                             ["1", task_id, "1", "potentially_fail", "FINISHED"]]
        assert rows[0][-1] == "WORKER_DIED"
        assert rows[0][5:8] == ["01000000", "NORMAL_TASK", "potentially_fail"]
        # Columns line up under their headers, as in Ray's table.
        header = lines[8]
        for line in lines[9:11]:
            assert line[header.index("NODE_ID"):].split()[0] == rows[0][9]
        live = minicluster_cmd("status", "--session", session).stdout
        assert "running" in live and "object_store_memory (" in live  # used/capacity of the live stores

        driver.send("")
        driver.expect("DONE")
        assert driver.finish() == 0
    finally:
        driver.kill()
    status = minicluster_cmd("status", "--session", session)
    assert status.returncode == 0, status.stderr
    assert "shut down cleanly" in status.stdout
    assert "object_store_memory: none (no live node holds a store)" in status.stdout
    after = _list_json(session, "tasks")
    assert sorted((r["name"], r["attempt_number"], r["state"], r["error_type"]) for r in after) == [
        ("f", 0, "FAILED", "TASK_EXECUTION_EXCEPTION"),
        ("potentially_fail", 0, "FAILED", "WORKER_DIED"),
        ("potentially_fail", 1, "FINISHED", None),
    ]
    workers = _list_json(session, "workers")
    assert {w["worker_type"] for w in workers} == {"DRIVER", "WORKER"}
    assert not [w for w in workers if w["is_alive"]]
    assert [w["exit_type"] for w in workers].count("SYSTEM_ERROR") == 1  # the one os._exit(1) killed


def test_get_summary_timeline_and_other_lists(tmp_path):
    driver = _start(tmp_path)
    try:
        session = driver.expect("SESSION")
        task_id = driver.expect("TASK")
        driver.send("")
        assert driver.finish() == 0
    finally:
        driver.kill()

    got = minicluster_cmd("get", "task", task_id, "--session", session)
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("---\n") and got.stdout.rstrip().endswith("...")
    assert got.stdout.count(f'task_id: "{task_id}"') + got.stdout.count(f"task_id: {task_id}") == 2
    assert "attempt_number: 0" in got.stdout and "attempt_number: 1" in got.stdout
    assert "error_message:" in got.stdout and "WORKER_DIED" in got.stdout
    prefix = minicluster_cmd("get", "task", task_id[:12], "--session", session, "--format", "json")
    assert [a["attempt_number"] for a in json.loads(prefix.stdout)] == [0, 1]

    summary = minicluster_cmd("summary", "tasks", "--session", session)
    assert summary.returncode == 0, summary.stderr
    assert "======== Tasks Summary: " in summary.stdout
    assert "total_tasks: 3" in summary.stdout
    assert re.search(r"potentially_fail\s+FAILED: 1\s+NORMAL_TASK\n\s+FINISHED: 1", summary.stdout)

    trace = tmp_path / "trace.json"
    made = minicluster_cmd("timeline", "-o", str(trace), "--session", session)
    assert made.returncode == 0, made.stderr
    with open(trace) as f:
        events = json.load(f)
    slices = [e for e in events if e["ph"] == "X"]
    assert sorted((e["args"]["task_id"] == task_id, e["args"]["attempt_number"], "failed" in e["cat"])
                  for e in slices) == [(False, 0, True), (True, 0, True), (True, 1, False)]
    assert all(isinstance(e["ts"], float) and e["dur"] > 0 for e in slices)

    for resource, first_column in (("nodes", "NODE_ID"), ("workers", "WORKER_ID"), ("objects", "OBJECT_ID"),
                                   ("actors", "ACTOR_ID")):
        listed = minicluster_cmd("list", resource, "--session", session)
        assert listed.returncode == 0, listed.stderr
        assert "Table:" in listed.stdout and first_column in listed.stdout
    detail = minicluster_cmd("list", "tasks", "--detail", "--session", session)
    assert detail.stdout.startswith("---\n") and "events:" in detail.stdout
    status = minicluster_cmd("status", "--session", session)
    for words in ("Node status", "node-0", "Resources", "CPU", "object_store_memory", "Workers"):
        assert words in status.stdout


def test_a_crashed_driver_leaves_a_readable_session_reported_as_crashed(tmp_path):
    driver = _start(tmp_path)
    try:
        session = driver.expect("SESSION")
        wait_for(lambda: len(_list_json(session, "tasks")) == 3, 10, "the journal to hold the attempts")
        driver.send("crash")
        assert driver.finish() == -9
    finally:
        driver.kill()
    status = minicluster_cmd("status", "--session", session)
    assert status.returncode == 0, status.stderr
    assert "crashed" in status.stdout and "never shut the session down" in status.stdout
    listed = minicluster_cmd("list", "tasks", "--session", session)
    assert listed.returncode == 0
    assert "Total: 3" in listed.stdout
    assert "crashed" in listed.stderr  # which session was read, and that it is over


def test_the_latest_session_is_the_default(tmp_path):
    root = tempfile.mkdtemp(prefix="mc-", dir="/tmp")  # short: the session's socket path must fit
    env = {"MINICLUSTER_TMPDIR": root}
    driver = _start(tmp_path, env=env)
    try:
        session = driver.expect("SESSION")
        assert session.startswith(root)
        driver.send("")
        assert driver.finish() == 0
        listed = minicluster_cmd("list", "tasks", env=env)
        assert listed.returncode == 0, listed.stderr
        assert "Total: 3" in listed.stdout
        assert session in listed.stderr
    finally:
        driver.kill()
        shutil.rmtree(root, ignore_errors=True)


def test_bad_input_gets_a_clear_message_and_exit_code_1(tmp_path):
    empty = {"MINICLUSTER_TMPDIR": str(tmp_path / "nothing-here")}
    for args in (["list", "tasks"], ["status"], ["summary", "tasks"], ["get", "task", "ab" * 24],
                 ["timeline", "-o", str(tmp_path / "t.json")], ["logs"]):
        result = minicluster_cmd(*args, env=empty)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "no running or previous minicluster session" in result.stderr
        assert "Traceback" not in result.stderr
    not_a_session = minicluster_cmd("list", "tasks", "--session", str(tmp_path))
    assert not_a_session.returncode == 1 and "not a minicluster session folder" in not_a_session.stderr
    missing = minicluster_cmd("list", "tasks", "--session", str(tmp_path / "missing"))
    assert missing.returncode == 1 and "no session folder" in missing.stderr

    driver = _start(tmp_path)
    try:
        session = driver.expect("SESSION")
        driver.send("")
        assert driver.finish() == 0
    finally:
        driver.kill()
    bogus = minicluster_cmd("list", "tasks", "-f", "bogus=1", "--session", session)
    assert bogus.returncode == 1
    assert "Invalid filter key 'bogus'" in bogus.stderr and "task_id, attempt_number" in bogus.stderr
    for spec in ("state", "state>FAILED", "=FAILED"):
        bad = minicluster_cmd("list", "tasks", "-f", spec, "--session", session)
        assert bad.returncode == 1, spec
        assert "filter" in bad.stderr and "Traceback" not in bad.stderr
    unknown = minicluster_cmd("get", "task", "ab" * 24, "--session", session)
    assert unknown.returncode == 1 and "no task with id" in unknown.stderr
    negated = _list_json(session, "tasks", "-f", "state!=FINISHED")
    assert {r["state"] for r in negated} == {"FAILED"}
    assert len(_list_json(session, "tasks", "--limit", "1")) == 1
