"""The state journal on disk: readable after the session, tolerant of a torn end, never runs code."""

from __future__ import annotations

import os
import pickle
import struct
import time

import pytest
from conftest import wait_for
from driver_process import minicluster_cmd

import minicluster as ray
from minicluster._private.observe import state_journal, state_recorder
from minicluster.util.state import list_objects, list_tasks, list_workers


@ray.remote
def ok(x: int) -> int:
    return x


@ray.remote
def sleeper(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def _journal(session_dir: str) -> str:
    return os.path.join(session_dir, "logs", state_journal.JOURNAL)


def test_after_shutdown_the_api_reads_the_sessions_folder(cluster):
    info = cluster(num_cpus=2)
    ray.get([ok.remote(i) for i in range(3)])
    held = ray.put("still here at the end")
    ray.shutdown()
    session = info.address_info["session_dir"]
    rows = list_tasks(address=session)
    assert [(r.name, r.state) for r in rows] == [("ok", "FINISHED")] * 3
    assert all(not w.is_alive for w in list_workers(address=session))
    assert held.hex() in {o.object_id for o in list_objects(address=session)}  # alive when it ended
    del held


def test_a_task_pending_or_running_for_a_while_is_journaled_before_it_ends(cluster):
    info = cluster(num_cpus=1)
    running = sleeper.remote(5)
    pending = ok.remote(1)
    session = info.address_info["session_dir"]

    def journaled() -> dict:
        return {r["name"]: r["state"] for r in state_journal.SessionFiles(session).rows()["task"]}

    states = wait_for(lambda: len(journaled()) == 2 and journaled(), 5, "both unfinished tasks in the journal")
    assert states == {"sleeper": "RUNNING", "ok": "PENDING_NODE_ASSIGNMENT"}
    ray.cancel(running, force=True)
    assert ray.get(pending, timeout=10) == 1


def test_a_torn_last_frame_is_ignored_and_foreign_objects_are_refused(tmp_path, cluster):
    info = cluster(num_cpus=1)
    ray.get(ok.remote(1))
    ray.shutdown()
    path = _journal(info.address_info["session_dir"])
    with open(path, "ab") as f:
        f.write(struct.pack("<I", 1000) + b"only part of a frame")
    assert [r.name for r in list_tasks(address=info.address_info["session_dir"])] == ["ok"]

    class Evil:
        def __reduce__(self):  # would run code if unpickled
            return (os.system, ("echo pwned",))

    payload = pickle.dumps({"task": [Evil()]})
    with open(path, "ab") as f:
        f.truncate(os.path.getsize(path) - len(b"only part of a frame") - 4)
        f.write(struct.pack("<I", len(payload)) + payload)
    result = minicluster_cmd("list", "tasks", "--session", info.address_info["session_dir"])
    assert result.returncode == 1
    assert "unexpected object" in result.stderr and "pwned" not in result.stdout


def test_the_journal_is_compacted_when_it_grows_too_big(cluster, monkeypatch):
    monkeypatch.setattr(state_journal, "COMPACT_BYTES", 20_000)
    rewrites = []
    rewrite = state_journal.JournalWriter.rewrite
    monkeypatch.setattr(state_journal.JournalWriter, "rewrite",
                        lambda self, batch: (rewrites.append(len(batch["task"])), rewrite(self, batch)))
    info = cluster(num_cpus=2)
    for _ in range(4):
        ray.get([ok.remote(i) for i in range(100)])
        time.sleep(state_recorder.FLUSH_INTERVAL_S * 1.5)  # one flush per batch, so rows add up
    ray.shutdown()
    assert rewrites, "the journal passed COMPACT_BYTES and should have been rewritten"
    rows = list_tasks(address=info.address_info["session_dir"], limit=1000)
    assert len(rows) == 400 and {r.state for r in rows} == {"FINISHED"}


def test_a_session_folder_from_before_the_state_api_is_named_as_such(tmp_path):
    old = tmp_path / "session_2020-01-01_00-00-00_1"
    (old / "logs").mkdir(parents=True)
    result = minicluster_cmd("list", "tasks", "--session", str(old))
    assert result.returncode == 1 and "not a minicluster session folder" in result.stderr


def test_too_long_a_session_root_is_refused_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("MINICLUSTER_TMPDIR", str(tmp_path / ("x" * 60)))
    with pytest.raises(ValueError) as info:
        ray.init(num_cpus=1)
    assert "MINICLUSTER_TMPDIR" in str(info.value)
    assert not ray.is_initialized()
