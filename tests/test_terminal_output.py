"""What the driver's terminal shows besides the program's own output: repeated worker lines folded as
Ray folds them, "Unhandled error" for failures nobody read, and one line per retry or worker death."""

from __future__ import annotations

import re

import pytest
from driver_process import DriverProcess

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
    print("DONE", flush=True)
"""


@pytest.mark.parametrize("dedup", ["1", "0"])
def test_the_driver_folds_a_line_printed_by_four_workers(tmp_path, dedup):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    driver = DriverProcess(SCRIPT, str(tmp_path / "driver.py"), [str(barrier)], env={"RAY_DEDUP_LOGS": dedup})
    try:
        driver.expect("DONE")
        assert driver.finish() == 0, "".join(driver.stderr)
    finally:
        driver.kill()
    out = "".join(driver.stdout)
    if dedup == "1":
        assert out.count("hello world") == 2, out
        assert out.count("[repeated 3x across cluster]") == 1, out
        assert out.count("RAY_DEDUP_LOGS") == 1
    else:
        assert out.count("hello world") == 4, out
        assert "repeated" not in out
