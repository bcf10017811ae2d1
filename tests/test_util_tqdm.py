"""minicluster.experimental.tqdm_ray: bars updated in tasks and actors are drawn by the driver;
plain lines without a terminal, redrawn below other output on one."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

from minicluster._private.observe.progress_bars import BarManager, decode_state, encode_state

SCRIPT = textwrap.dedent("""
    import minicluster as ray
    from minicluster.experimental import tqdm_ray

    ray.init(num_cpus=2)

    @ray.remote
    def work(n):
        for _ in tqdm_ray.tqdm(range(n), desc="task-bar", flush_interval_s=0):
            pass
        print("task printed")
        return n

    @ray.remote
    class Counter:
        def run(self):
            bar = tqdm_ray.tqdm(total=3, desc="actor-bar", unit="step")
            bar.update(3)
            bar.close()

    assert ray.get([work.remote(50), work.remote(40)]) == [50, 40]
    ray.get(Counter.remote().run.remote())
    bar = tqdm_ray.tqdm(total=2, desc="driver-bar")
    bar.update(2)
    bar.close()
    ray.shutdown()
""")


def test_bars_from_tasks_and_actors_come_out_as_plain_lines_without_a_terminal():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    assert "\x1b" not in text and "__minicluster_tqdm__" not in text  # no escape soup, no raw state lines
    err = done.stderr.splitlines()
    assert any("task-bar" in line and "50/50" in line and "(work pid=" in line for line in err), err
    assert any("task-bar" in line and "40/40" in line for line in err), err
    assert any("actor-bar" in line and "3/3" in line and "step" in line for line in err), err
    assert any(line.startswith("driver-bar") and "2/2" in line for line in err), err
    assert "task printed" in done.stdout


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_other_output_goes_above_the_bars():
    screen = _Tty()
    bars = BarManager(stream=screen)
    bars.update({"uuid": "a", "x": 1, "total": 4, "desc": "one"}, 1, "(w pid=1) ")
    bars.update({"uuid": "b", "x": 0, "total": None, "desc": "two"}, 2, "")
    assert bars.drawn == 2
    start = len(screen.getvalue())
    bars.write_lines(screen, ["a log line"])
    after = screen.getvalue()[start:]
    # erase the two bar lines, write the line, draw the bars again below it
    assert after.startswith("\x1b[2F\x1b[J") and after.index("a log line") < after.index("one")
    assert bars.drawn == 2
    bars.update({"uuid": "a", "x": 4, "total": 4, "desc": "one", "closed": True}, 1, "(w pid=1) ")
    assert bars.drawn == 1 and "4/4" in screen.getvalue()  # the closed bar stays as a line
    bars.finish()
    assert bars.drawn == 0 and not bars.bars


def test_state_lines_round_trip_and_other_lines_are_not_taken():
    state = {"uuid": "u", "x": 3, "desc": "d"}
    assert decode_state(encode_state(state)) == state
    assert decode_state("plain output") is None
    assert decode_state("__minicluster_tqdm__ {not json") is None


def test_bars_of_one_process_are_drawn_together_in_position_order():
    screen = _Tty()
    bars = BarManager(stream=screen)
    bars.update({"uuid": "x1", "x": 0, "desc": "x-second", "pos": 1}, 10, "")
    bars.update({"uuid": "y0", "x": 0, "desc": "y-first", "pos": 0}, 20, "")
    bars.update({"uuid": "x0", "x": 0, "desc": "x-first", "pos": 0}, 10, "")
    last_draw = screen.getvalue().rsplit("\x1b[J", 1)[-1]
    assert [line.split(":")[0] for line in last_draw.splitlines()] == ["x-first", "x-second", "y-first"]

