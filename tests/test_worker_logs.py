"""Workers' output: kept in per-worker log files, forwarded to the driver's terminal with Ray's prefix."""

from __future__ import annotations

import os
import re

from driver_process import DriverProcess, minicluster_cmd

SCRIPT = """
    import ctypes, os, sys, time
    import minicluster as ray

    ray.init(num_cpus=1, log_to_driver=sys.argv[2] == "1")

    @ray.remote
    def greet(who):
        print(f"hello {who}")
        print(f"warning about {who}", file=sys.stderr)
        return os.getpid()

    @ray.remote
    def other():
        print("from other")
        os.write(1, b"straight to fd 1\\n")
        libc = ctypes.CDLL(None)
        libc.printf(b"from C printf\\n")  # buffered by C's stdio: flushed before the next marker
        return os.getpid()

    @ray.remote(max_retries=1)
    def dies(marker):
        if not os.path.exists(marker):
            open(marker, "w").close()
            print("last words before the crash", flush=False)
            os._exit(1)
        return "retried"

    @ray.remote
    def just_before_shutdown():
        print("printed right before shutdown")
        return 1

    info = ray.init(ignore_reinit_error=True)
    pids = ray.get([greet.remote("a"), other.remote(), greet.remote("b")])
    assert ray.get(dies.remote(sys.argv[1])) == "retried"
    ray.get(just_before_shutdown.remote())
    print("SESSION", info.address_info["session_dir"], flush=True)
    print("PIDS", *pids, flush=True)
    ray.shutdown()
"""


def _run(tmp_path, log_to_driver: bool = True) -> tuple:
    driver = DriverProcess(SCRIPT, str(tmp_path / "driver.py"),
                           [str(tmp_path / "marker"), "1" if log_to_driver else "0"])
    try:
        session = driver.expect("SESSION")
        pids = [int(p) for p in driver.expect("PIDS").split()]
        assert driver.finish() == 0, "".join(driver.stderr)
    finally:
        driver.kill()
    return session, pids, "".join(driver.stdout), "".join(driver.stderr)


def test_output_reaches_the_driver_prefixed_with_the_right_task(tmp_path):
    session, pids, out, err = _run(tmp_path)
    pid = pids[0]
    assert pids == [pid, pid, pid], "num_cpus=1: one worker ran all three"
    assert f"(greet pid={pid}, node=node-0) hello a\n" in out
    assert f"(greet pid={pid}, node=node-0) hello b\n" in out
    assert f"(greet pid={pid}, node=node-0) warning about a\n" in err
    assert f"(other pid={pid}, node=node-0) from other\n" in out
    assert f"(other pid={pid}, node=node-0) straight to fd 1\n" in out  # C-level writes are caught too
    assert f"(other pid={pid}, node=node-0) from C printf\n" in out
    assert "hello a" not in err and "warning about a" not in out
    assert re.search(r"\(dies pid=\d+, node=node-0\) last words before the crash\n", out)
    assert re.search(r"\(just_before_shutdown pid=\d+, node=node-0\) printed right before shutdown\n", out)
    assert ":task_name:" not in out + err  # the markers stay in the files


def test_log_files_are_kept_and_the_logs_command_reads_them(tmp_path):
    session, pids, out, err = _run(tmp_path, log_to_driver=False)
    assert "hello a" not in out and "warning about a" not in err  # log_to_driver=False: nothing printed
    logs = os.path.join(session, "logs")
    names = os.listdir(logs)
    mine = [n for n in names if n.endswith(f"-{pids[0]}.out")]
    assert len(mine) == 1 and re.fullmatch(r"worker-[0-9a-f]{56}-01000000-\d+\.out", mine[0])
    with open(os.path.join(logs, mine[0])) as f:
        text = f.read()
    assert ":task_name:greet\nhello a\n" in text

    listing = minicluster_cmd("logs", "--session", session)
    assert listing.returncode == 0, listing.stderr
    assert str(pids[0]) in listing.stdout and "OUT_BYTES" in listing.stdout
    assert max(len(line) for line in listing.stdout.splitlines()[:-2]) <= 120  # short worker ids
    short_id = next(line.split()[1] for line in listing.stdout.splitlines() if str(pids[0]) in line.split())
    by_short_id = minicluster_cmd("logs", short_id, "--session", session)
    assert f"(greet pid={pids[0]}, node=node-0) hello a" in by_short_id.stdout

    one = minicluster_cmd("logs", str(pids[0]), "--session", session)
    assert one.returncode == 0, one.stderr
    assert f"(greet pid={pids[0]}, node=node-0) hello a" in one.stdout
    assert f"(other pid={pids[0]}, node=node-0) from C printf" in one.stdout
    assert f"(greet pid={pids[0]}, node=node-0) warning about a" in one.stderr

    everything = minicluster_cmd("logs", "--all", "--session", session)
    assert "last words before the crash" in everything.stdout and "hello b" in everything.stdout

    nobody = minicluster_cmd("logs", "999999999", "--session", session)
    assert nobody.returncode == 1 and "no worker" in nobody.stderr
