"""Worker processes as Ray runs them: their titles in `ps`, OMP_NUM_THREADS, which tasks share a worker,
when a max_calls worker may leave, and a crash's Python stack in the worker's output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import psutil
import pytest
from conftest import wait_for
from driver_process import run_driver

import minicluster as ray

pytestmark = pytest.mark.timeout(60)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process titles are set on Linux only")


def _ps(pid: int) -> tuple:
    """(short name, command line) of a process, as `ps` prints them."""
    out = subprocess.run(["ps", "-o", "comm=", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
    comm, _, args = out.stdout.strip().partition(" ")
    return comm, args.strip()


def _pgrep(pattern: str) -> int:
    """The one process whose command line matches `pattern`."""
    pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    assert len(pids) == 1, (pattern, pids)
    return int(pids[0])


@linux_only
def test_ps_shows_the_running_task_the_actor_and_idle_workers(cluster, tmp_path):
    cluster(num_cpus=2)
    started = tmp_path / "started"

    @ray.remote
    def crunch_numbers(flag):
        open(flag, "w").close()
        while os.path.exists(flag):  # until the test has looked at ps
            pass
        return os.getpid()

    ref = crunch_numbers.remote(str(started))
    wait_for(started.exists, what="the task to start")
    pid = _pgrep("^ray::crunch_numbers")
    assert _ps(pid) == ("ray::crunch_num", "ray::crunch_numbers")  # the kernel cuts the short name at 15
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().rstrip(b"\0") == b"ray::crunch_numbers"
    os.unlink(started)
    assert ray.get(ref) == pid
    wait_for(lambda: _ps(pid) == ("ray::IDLE", "ray::IDLE"), what="the worker to show itself idle")

    @ray.remote
    class Ledger:
        def __init__(self):
            self.flag = None

        def hold(self, flag):
            open(flag, "w").close()
            while os.path.exists(flag):
                pass
            return os.getpid()

    ledger = Ledger.remote()
    ref = ledger.hold.remote(str(started))
    wait_for(started.exists, what="the actor call to start")
    actor_pid = _pgrep("^ray::Ledger.hold")
    os.unlink(started)
    assert ray.get(ref) == actor_pid
    wait_for(lambda: _ps(actor_pid)[1] == "ray::Ledger", what="the actor's worker to show its class")


def test_omp_num_threads_follows_the_tasks_cpus(cluster):
    cluster(num_cpus=4)

    @ray.remote
    def threads():
        return os.environ.get("OMP_NUM_THREADS")

    @ray.remote
    def changes_it():
        os.environ["OMP_NUM_THREADS"] = "64"
        return os.environ["OMP_NUM_THREADS"]

    @ray.remote
    class Model:
        def threads(self):
            return os.environ.get("OMP_NUM_THREADS")

    assert ray.get(threads.remote()) == "1"
    assert ray.get(threads.options(num_cpus=3).remote()) == "3"
    assert ray.get(threads.options(num_cpus=2.5).remote()) == "2"  # whole CPUs
    assert ray.get(threads.options(num_cpus=0.5).remote()) == "1"  # never below 1
    assert ray.get(threads.options(num_cpus=0).remote()) == "1"
    assert ray.get(changes_it.remote()) == "64"
    assert ray.get(threads.remote()) == "1"  # a task's own change does not leak into the next task
    assert ray.get(Model.remote().threads.remote()) == "1"
    assert ray.get(Model.options(num_cpus=2).remote().threads.remote()) == "2"


def test_omp_num_threads_set_by_the_user_is_left_alone(tmp_path):
    out, _ = run_driver("""
        import os
        import minicluster as ray
        ray.init(num_cpus=2)

        @ray.remote
        def threads():
            return os.environ.get("OMP_NUM_THREADS")

        print("THREADS", ray.get(threads.remote()), ray.get(threads.options(num_cpus=2).remote()))
        ray.shutdown()
    """, str(tmp_path / "driver.py"), env={"OMP_NUM_THREADS": "7"})
    assert "THREADS 7 7\n" in out


def test_a_segfaulting_task_shows_its_python_stack_on_the_drivers_terminal(tmp_path):
    _, err = run_driver("""
        import ctypes, sys
        import minicluster as ray
        ray.init(num_cpus=1)

        def read_address_zero():
            return ctypes.string_at(0)  # SIGSEGV in C code

        @ray.remote(max_retries=0)
        def parse_blob():
            return read_address_zero()

        try:
            ray.get(parse_blob.remote())
        except ray.exceptions.WorkerCrashedError:
            print("CRASHED", file=sys.stderr)
        ray.shutdown()
    """, str(tmp_path / "segv.py"))
    assert "CRASHED" in err
    # faulthandler's report, from the worker's log file, with the task's prefix
    assert re.search(r"\(parse_blob pid=\d+, node=node-0\) Fatal Python error: Segmentation fault", err), err
    assert re.search(r'\(parse_blob pid=\d+, node=node-0\)   File ".*segv\.py", line \d+ in read_address_zero', err)
    assert re.search(r'\(parse_blob pid=\d+, node=node-0\)   File ".*segv\.py", line \d+ in parse_blob', err)


def test_gpu_tasks_cpu_tasks_and_actors_get_workers_of_their_own(cluster):
    cluster(num_cpus=2, num_gpus=1, resources={"disk": 1})

    @ray.remote
    def pid():
        return os.getpid()

    @ray.remote
    class Holder:
        def pid(self):
            return os.getpid()

    @ray.remote
    def pid_after_a_while():
        time.sleep(0.3)  # (two at once: each of the node's two warm workers runs one)
        return os.getpid()

    cpu_workers = set(ray.get([pid_after_a_while.remote() for _ in range(2)]))
    # as in Ray, CPU counts and custom resources do not matter: the node's CPU workers run these
    assert ray.get(pid.options(num_cpus=2).remote()) in cpu_workers
    assert ray.get(pid.options(num_cpus=0, resources={"disk": 1}).remote()) in cpu_workers
    # a task that holds a GPU never shares a worker with CPU-only tasks, either way round
    gpu_worker = ray.get(pid.options(num_gpus=1).remote())
    assert gpu_worker not in cpu_workers
    assert ray.get(pid.options(num_gpus=0.5).remote()) not in cpu_workers
    assert ray.get(pid.remote()) in cpu_workers
    # an actor never takes over a worker that already ran tasks
    actor_worker = ray.get(Holder.remote().pid.remote())
    assert actor_worker not in cpu_workers | {gpu_worker}


def test_a_max_calls_worker_stays_while_objects_it_owns_are_in_use(cluster):
    cluster(num_cpus=2)

    @ray.remote
    def make_data():
        return "payload"

    @ray.remote(max_calls=1, max_retries=0)
    def submitter():
        return os.getpid(), make_data.remote()  # this worker owns make_data's result

    pid, inner = ray.get(submitter.remote())
    assert ray.get(inner) == "payload"  # its owner did not leave with max_calls (no OwnerDiedError)
    assert psutil.pid_exists(pid)
    del inner  # the last object it owns is gone: now it leaves
    wait_for(lambda: not _alive(pid), what="the max_calls worker to exit")

    # a max_calls worker that owns nothing still leaves at once
    @ray.remote(max_calls=1)
    def plain():
        return os.getpid()

    pid = ray.get(plain.remote())
    wait_for(lambda: not _alive(pid), what="the max_calls worker to exit")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_nested_calls_of_different_functions_take_turns_instead_of_starting_a_worker_each(cluster):
    # f gets g, g gets h. A task blocked in get() lends its CPU out; if the next f took it every
    # time (plain FIFO), each of the 300 f's would run, block and need a new worker before any g
    # ran. Scheduling classes take turns (Ray's fair queueing): a few workers do it all.
    from minicluster import testing

    cluster(num_cpus=1)

    @ray.remote
    def h():
        return 1

    @ray.remote
    def g():
        return ray.get(h.remote()) + 1

    @ray.remote
    def f():
        return ray.get(g.remote()) + 1

    most = 0

    def all_done(refs):
        nonlocal most
        most = max(most, len(testing.worker_pids()))
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.05)
        return len(ready) == len(refs)

    refs = [f.remote() for _ in range(300)]
    wait_for(lambda: all_done(refs), timeout=60, what="300 nested calls to finish")
    assert ray.get(refs) == [3] * 300
    assert most <= 6, f"{most} workers were started for a chain three calls deep"
