"""The `minicluster` command's output fits a terminal: `--version`, `list` at 120 columns with short
ids, `--wide`, exports to Parquet and Arrow, and `top`'s live view."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from conftest import wait_for
from driver_process import DriverProcess, minicluster_cmd

import minicluster

# Tasks with long names, retries, an actor and a failure: the table that used to be ~320 columns.
# A task then runs until the file named by argv[1] exists, so `top` sees it running.
SCRIPT = """
    import os, sys, time
    import minicluster as ray

    info = ray.init(num_nodes=2, num_cpus=2)

    @ray.remote(max_retries=1)
    def a_task_with_a_rather_long_descriptive_name(i, marker):
        if i == 0 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return i

    @ray.remote
    def fails():
        raise ValueError("boom")

    @ray.remote
    class Accumulator:
        def add(self, x):
            return x

    @ray.remote
    def waits_for_the_test(path):
        while not os.path.exists(path):
            time.sleep(0.02)
        return 1

    ray.get([a_task_with_a_rather_long_descriptive_name.remote(i, sys.argv[1] + ".once") for i in range(30)])
    acc = Accumulator.remote()
    ray.get([acc.add.remote(i) for i in range(3)])
    try:
        ray.get(fails.remote())
    except ValueError:
        pass
    print("SESSION", info.address_info["session_dir"], flush=True)
    ref = waits_for_the_test.remote(sys.argv[1])
    print("WAITING", ref.task_id().hex(), flush=True)
    ray.get(ref)
    sys.stdin.readline()
    ray.shutdown()
"""


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A session folder holding the script's tasks, and the running driver until the module's end."""
    tmp = tmp_path_factory.mktemp("cli-list")
    release = str(tmp / "release")
    driver = DriverProcess(SCRIPT, str(tmp / "driver.py"), [release])
    try:
        folder = driver.expect("SESSION", timeout=60)
        waiting = driver.expect("WAITING")
        yield {"dir": folder, "release": release, "waiting": waiting, "driver": driver}
        open(release, "w").close()
        driver.send("")
        assert driver.finish() == 0
    finally:
        driver.kill()


def _table(output: str) -> list:
    lines = output.splitlines()
    return [line for line in lines[lines.index("Table:") + 2:] if line.strip()]


def test_version():
    result = minicluster_cmd("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"minicluster {minicluster.__version__} (Python ")


def test_list_tasks_fits_120_columns_with_short_ids_that_get_takes(session):
    wait_for(lambda: "RUNNING" in minicluster_cmd("list", "tasks", "--session", session["dir"]).stdout, 20,
             "the waiting task to run")
    result = minicluster_cmd("list", "tasks", "--session", session["dir"], "--limit", "1000")
    assert result.returncode == 0, result.stderr
    table = _table(result.stdout)
    assert max(len(line) for line in table) <= 120, "\n".join(table)
    header = table[0].split()
    assert header[:4] == ["TASK_ID", "ATTEMPT_NUMBER", "NAME", "STATE"] and "ERROR_TYPE" in header
    assert "left out" in result.stderr and "--wide" in result.stderr  # says what it hid
    rows = [line.split() for line in table[1:]]
    ids = [row[1] for row in rows]
    assert all(8 <= len(i) < 48 for i in ids)
    assert len(set(ids)) == 30 + 1 + 3 + 1 + 1  # one per task: the retried one has two rows
    assert any("WORKER_DIED" in row for row in rows) and any("TASK_EXECUTION_EXCEPTION" in row for row in rows)
    failed = next(row for row in rows if "TASK_EXECUTION_EXCEPTION" in row)
    got = minicluster_cmd("get", "task", failed[1], "--session", session["dir"], "--format", "json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)[0]["name"] == "fails"

    wide = minicluster_cmd("list", "tasks", "--session", session["dir"], "--limit", "1000", "--wide")
    assert max(len(line) for line in _table(wide.stdout)) > 120 and "left out" not in wide.stderr
    assert "PARENT_TASK_ID" in wide.stdout and session["waiting"] in wide.stdout
    narrow = minicluster_cmd("list", "tasks", "--session", session["dir"], env={"COLUMNS": "80"})
    assert max(len(line) for line in _table(narrow.stdout)) <= 80
    for resource in ("workers", "nodes", "actors", "objects"):
        listed = minicluster_cmd("list", resource, "--session", session["dir"])
        assert listed.returncode == 0, listed.stderr
        assert max(len(line) for line in _table(listed.stdout)) <= 120, listed.stdout


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_list_exports_every_field_to_parquet_and_arrow(session, tmp_path, fmt):
    path = str(tmp_path / f"tasks.{fmt}")
    result = minicluster_cmd("list", "tasks", "--session", session["dir"], "--format", fmt, "-o", path)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(path) if fmt == "parquet" else feather.read_table(path)
    as_json = json.loads(minicluster_cmd("list", "tasks", "--session", session["dir"], "--limit", "1000",
                                         "--format", "json", "--detail").stdout)
    assert table.num_rows == len(as_json) >= 36
    assert table.column_names == list(as_json[0])
    rows = table.to_pylist()
    assert [r["task_id"] for r in rows] == [r["task_id"] for r in as_json]
    assert {r["error_type"] for r in rows} >= {"WORKER_DIED", "TASK_EXECUTION_EXCEPTION"}
    assert str(table.schema.field("attempt_number").type) == "int64"
    assert all(r["events"] and r["events"][0]["state"] for r in rows)

    unnamed = minicluster_cmd("list", "tasks", "--session", session["dir"], "--format", fmt)
    assert unnamed.returncode == 1 and "-o FILE" in unnamed.stderr
    stray = minicluster_cmd("list", "tasks", "--session", session["dir"], "-o", path)
    assert stray.returncode == 1 and "parquet or arrow" in stray.stderr


def test_top_once_shows_nodes_workers_and_the_running_task(session):
    def frame():
        result = minicluster_cmd("top", "--once", "--session", session["dir"])
        assert result.returncode == 0, result.stderr
        return result.stdout if "waits_for_the_test" in result.stdout else None

    out = wait_for(frame, 20, "the waiting task to show as running")
    assert "\x1b" not in out  # one plain frame
    assert re.search(r"session session_\S+ \(running, driver pid \d+\)", out)
    assert "node-0" in out and "node-1" in out and "ALIVE" in out
    assert "STORE" in out and "CPU" in out
    assert re.search(r"Tasks: 1 RUNNING, \d+ FINISHED, 1 FAILED", out), out
    running = next(line for line in out.splitlines() if "waits_for_the_test" in line)
    assert session["waiting"][:16] in running
    assert max(len(line) for line in out.splitlines()) <= 120
    bad = minicluster_cmd("top", "--once", "--interval", "0", "--session", session["dir"])
    assert bad.returncode == 1 and "--interval" in bad.stderr
    assert os.path.isdir(session["dir"])


def test_a_reader_that_goes_away_ends_the_command_quietly(session):
    # `minicluster top | head -3`: the live view stops when its reader does, with no error.
    top = subprocess.Popen([sys.executable, "-m", "minicluster", "top", "--interval", "0.05", "--session",
                            session["dir"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "minicluster top" in top.stdout.readline()
        top.stdout.close()
        assert top.wait(timeout=20) == 0
        assert top.stderr.read() == ""
    finally:
        top.kill()
        top.wait(timeout=10)
