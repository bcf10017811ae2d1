"""What the driver's terminal shows besides the program's own output: repeated worker lines folded as
Ray folds them, "Unhandled error" for failures nobody read, and one line per retry or worker death."""

from __future__ import annotations

import re

import pytest
from driver_process import run_driver

from minicluster._private.observe.log_dedup import LineFolder, fold_key

pytestmark = pytest.mark.timeout(60)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_differing_only_in_numbers_are_the_same_line():
    assert fold_key("loaded shard 17 in 0.52s (pid 4242)") == fold_key("loaded shard 3 in 1.07s (pid 99)")
    assert fold_key("worker 0x7f3a ready") == fold_key("worker 0x11 ready")
    assert fold_key("loaded shard 17") != fold_key("skipped shard 17")
    assert fold_key("42 1.5 0x10") == ""


def test_folding_keeps_the_first_copy_and_sums_up_the_rest_after_the_window():
    clock = _Clock()
    folder = LineFolder(5.0, clock=clock)
    assert folder.add(1, "(f pid=1)", "step 1 done") == ["(f pid=1) step 1 done"]
    assert folder.add(1, "(f pid=1)", "step 2 done") == ["(f pid=1) step 2 done"]  # one worker's loop: kept
    assert folder.add(2, "(f pid=2)", "step 1 done") == []  # a second worker: held from now on
    assert folder.add(3, "(f pid=3)", "step 9 done") == []
    assert folder.add(1, "(f pid=1)", "step 3 done") == []
    assert folder.add(4, "(f pid=4)", "12345") == ["(f pid=4) 12345"]  # nothing left to compare: never folded
    clock.now += 4.9
    assert folder.expire() == []
    clock.now += 0.2
    summary = folder.expire()
    assert len(summary) == 1
    assert summary[0].startswith("(f pid=1) step 3 done [repeated 3x across cluster] (")
    assert "RAY_DEDUP_LOGS=0" in summary[0]  # the first summary says how to turn folding off
    # the line is still watched: copies in the next window are summed up again, without the hint
    assert folder.add(2, "(f pid=2)", "step 4 done") == []
    assert folder.add(3, "(f pid=3)", "step 5 done") == []
    assert folder.flush() == ["(f pid=3) step 5 done [repeated 2x across cluster]"]


def test_a_single_held_copy_is_printed_plainly_and_the_regexes_are_honoured():
    clock = _Clock()
    folder = LineFolder(1.0, allow=re.compile("keep"), skip=re.compile("noise"), clock=clock)
    assert folder.add(1, "(a pid=1)", "hello") == ["(a pid=1) hello"]
    assert folder.add(2, "(a pid=2)", "hello") == []
    clock.now += 2
    assert folder.expire() == ["(a pid=2) hello"]
    assert folder.watched == {}
    assert folder.add(1, "(a pid=1)", "keep me") == ["(a pid=1) keep me"]
    assert folder.add(2, "(a pid=2)", "keep me") == ["(a pid=2) keep me"]
    assert folder.add(1, "(a pid=1)", "noise") == []


SCRIPT = """
    import os, sys, time
    import minicluster as ray

    ray.init(num_cpus=4)

    @ray.remote
    def shout(folder):
        open(os.path.join(folder, str(os.getpid())), "w").close()
        while len(os.listdir(folder)) < 4:  # four workers at once, each prints once
            time.sleep(0.01)
        print(f"hello world, id={time.time()}")
        return os.getpid()

    pids = ray.get([shout.remote(sys.argv[1]) for _ in range(4)])
    assert len(set(pids)) == 4, pids
    ray.shutdown()
"""


@pytest.mark.parametrize("dedup", ["1", "0"])
def test_the_driver_folds_a_line_printed_by_four_workers(tmp_path, dedup):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    out, _ = run_driver(SCRIPT, str(tmp_path / "driver.py"), [str(barrier)], env={"RAY_DEDUP_LOGS": dedup})
    if dedup == "1":
        assert out.count("hello world") == 2, out
        assert out.count("[repeated 3x across cluster]") == 1, out
        assert out.count("RAY_DEDUP_LOGS") == 1
    else:
        assert out.count("hello world") == 4, out
        assert "repeated" not in out


UNHANDLED_SCRIPT = """
    import os
    import minicluster as ray

    ray.init(num_cpus=1)  # one worker: tasks run in submission order

    @ray.remote(max_retries=0)
    def fails(tag):
        raise ValueError(f"nobody reads {tag}")

    @ray.remote
    def after():
        return None  # once it ran, every earlier task has finished

    ref = fails.remote("dropped-at-once")
    del ref  # dropped before it even failed: announced once it has
    ref = fails.remote("read-by-get")
    try:
        ray.get(ref)
    except ray.exceptions.RayTaskError:
        pass
    del ref  # read: nothing to say
    ref = fails.remote("seen-by-wait")
    ray.wait([ref])
    del ref  # seen ready by wait: handled too, as in Ray
    ref = fails.remote("dropped-later")
    ray.get(after.remote())
    del ref  # failed a while ago, dropped now
    ray.get(after.remote())  # (the driver's dropped refs reach the head with its next call)

    @ray.remote
    class Broken:
        def __init__(self):
            raise RuntimeError("no constructor-failed-unread line")

        def ping(self):
            return None

    broken = Broken.remote()
    try:
        ray.get(broken.ping.remote())
    except ray.exceptions.ActorDiedError:
        pass
    del broken  # the failed creation task's own result is internal: never announced
    ray.get(after.remote())
    os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
    ref = fails.remote("suppressed")
    del ref
    ray.get(after.remote())
    ray.shutdown()
"""


def test_a_failed_result_dropped_unread_prints_rays_unhandled_error_line(tmp_path):
    _, err = run_driver(UNHANDLED_SCRIPT, str(tmp_path / "driver.py"))
    assert err.count("Unhandled error (suppress with 'RAY_IGNORE_UNHANDLED_ERRORS=1'): ray::fails()") == 2, err
    assert "ValueError: nobody reads dropped-at-once" in err and "ValueError: nobody reads dropped-later" in err
    for handled in ("read-by-get", "seen-by-wait", "constructor-failed-unread", "suppressed"):
        assert handled not in err


RETRIES_SCRIPT = """
    import os, sys
    import minicluster as ray

    ray.init(num_cpus=1)

    @ray.remote(max_retries=2, retry_exceptions=True)
    def flaky():
        raise KeyError("not yet")

    @ray.remote(max_retries=1)
    def crashes():
        os._exit(3)

    for fn in (flaky, crashes):
        try:
            ray.get(fn.remote())
        except ray.exceptions.RayError as exc:
            print("FAILED", type(exc).__name__, flush=True)
    ray.shutdown()
"""


def test_retries_and_worker_deaths_are_announced_one_line_each(tmp_path):
    _, err = run_driver(RETRIES_SCRIPT, str(tmp_path / "driver.py"))
    assert "minicluster: Task flaky failed. There are 2 retries remaining, so the task will be retried. " \
           "Error: KeyError: 'not yet'\n" in err
    assert "minicluster: Task flaky failed. There are 1 retries remaining" in err
    assert err.count("Task flaky failed") == 2  # the last attempt's failure is the program's to report
    deaths = re.findall(r"minicluster: A worker died or was killed while executing task crashes "
                        r"\(pid=\d+, node=node-0\): exit code 3\n", err)
    assert len(deaths) == 2
    assert err.count("Task crashes failed. There are 1 retries remaining") == 1


class _Timers:
    def __init__(self) -> None:
        self.pending: list = []

    def call_later(self, seconds: float, fn) -> object:
        self.pending.append(fn)
        return fn

    def cancel_timer(self, timer: object) -> None:
        self.pending.remove(timer)

    def close_peer(self, peer: object) -> None:
        pass


def test_announcements_are_rate_limited_with_a_summary_of_the_rest(capsys):
    from minicluster._private.head import announcements

    timers = _Timers()
    announcer = announcements.Announcer(timers, lambda object_id, entry: b"")
    for i in range(announcements.LIMIT + 25):
        announcer.retry(f"task{i}", 1, "boom")
    shown = capsys.readouterr().err.splitlines()
    assert len(shown) == announcements.LIMIT
    assert len(timers.pending) == 1  # one summary at the window's end
    timers.pending.pop()()
    summary = capsys.readouterr().err
    assert summary.startswith("minicluster: 25 more task retries, worker deaths or unhandled errors in the last")
