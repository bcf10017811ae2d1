"""Run the benchmark suite and print minicluster vs Ray / ProcessPoolExecutor / Pool side by side.

Usage::

    python bench/run.py [--quick] [--only start,throughput] [--systems minicluster,ray,ppe,mp]
                        [--json out.json] [--markdown bench/RESULTS.md] [--isolate] [--keep-logs]

Every (group of benchmarks, system) is measured in a fresh ``sys.executable -m bench.child``
subprocess, one at a time, with a timeout; the child's whole process tree is killed by pid /
process group if it hangs, and anything it leaves behind is killed and reported. A system that
is missing or fails shows ``n/a (reason)`` in its cells and the run goes on. See
``bench/specs.py`` for the groups and ``bench/workloads.py`` for what exactly is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench import procs, report, specs, systems  # noqa: E402
from bench.workloads import WARM_STEPS  # noqa: E402

RAY_PROC = re.compile(r"raylet|gcs_server|ray::", re.IGNORECASE)
FOREIGN_CORES_NOTE = 0.25  # note a job during which others used more CPU than this


class Job:
    """One fresh subprocess: a system and the benchmarks of one group it measures."""

    def __init__(self, system: str, group: str, benches: list[str]) -> None:
        self.system = system
        self.group = group
        self.benches = benches

    def label(self) -> str:
        return f"{self.system:11} {self.group:9} {','.join(self.benches)}"


def _csv(value: str, allowed: list[str], what: str) -> list[str]:
    items = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated benchmarks: "
                   + ",".join(b.name for b in specs.BENCHES))
    p.add_argument("--systems", default=",".join(systems.SYSTEMS),
                   help="comma-separated systems (default: all of %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (about 3 minutes on 2 cores)")
    p.add_argument("--json", metavar="FILE", help="also write raw numbers as JSON")
    p.add_argument("--markdown", metavar="FILE", help="also write the report as Markdown")
    p.add_argument("--isolate", action="store_true",
                   help="one subprocess per warm benchmark too (slower: Ray starts each time)")
    p.add_argument("--keep-logs", action="store_true", help="keep the subprocess logs")
    return p.parse_args(argv)


def plan(benches: list[str], system_names: list[str], isolate: bool) -> tuple[list[Job], list[str]]:
    """The subprocesses to run, in order, and the baselines among the benchmarks."""
    baselines = [b for b in specs.BASELINE_BENCHES
                 if b in benches or any(specs.BASELINE_FOR.get(x) == b for x in benches)]
    jobs: list[Job] = []
    if baselines:
        jobs.append(Job("none", "baseline", baselines))
    for group in specs.GROUPS:
        names = [b for b in benches if specs.BY_NAME[b].group == group]
        if not names:
            continue
        chunks = [names]
        if isolate and group == "warm":
            chunks = [[n for n in step if n in names] for step in WARM_STEPS]
            chunks = [c for c in chunks if c]
        for s in system_names:
            for c in chunks:
                # No subprocess for a job whose every cell is n/a by design (main fills them).
                todo = [b for b in c if (s, b) not in specs.NOT_APPLICABLE]
                if todo:
                    jobs.append(Job(s, group, todo))
    return jobs, baselines


def ray_processes() -> dict[int, str]:
    """What ``ps -eo pid,args | grep -iE 'raylet|gcs_server|ray::'`` would show."""
    out: dict[int, str] = {}
    for p in psutil.process_iter(["pid", "cmdline", "name"]):
        try:
            args = " ".join(p.info["cmdline"] or [p.info["name"] or ""])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if RAY_PROC.search(args):
            out[p.info["pid"]] = args[:80]
    return out


def child_env(system: str, group: str) -> dict[str, str]:
    env = dict(os.environ)
    # Bytecode is cached, as in a default Python and in any pip-installed package (Ray's
    # .pyc came with its wheel): where PYTHONDONTWRITEBYTECODE is set, the working tree's
    # minicluster would otherwise be compiled anew by every process it starts.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(x for x in [str(ROOT), env.get("PYTHONPATH", "")] if x)
    env.update(systems.CHILD_ENV.get(system, {}))
    env.update(systems.GROUP_ENV.get((system, group), {}))
    return env


def warm_bytecode(system_names: list[str]) -> None:
    """Compile the working tree's minicluster once, before anything is timed."""
    if "minicluster" in system_names:
        subprocess.run([sys.executable, "-m", "compileall", "-q", "minicluster"], cwd=ROOT,
                       env=child_env("minicluster", "start"), check=False, timeout=120)


def not_applicable(system: str, bench: str) -> dict[str, Any] | None:
    """The n/a record of a cell that is n/a by design (specs.NOT_APPLICABLE), else None."""
    why = specs.NOT_APPLICABLE.get((system, bench))
    if why is None:
        return None
    return {"ok": False, "reason": why[0], "extra": {"detail": why[1]}}


def run_job(job: Job, quick: bool, logs: Path, index: int) -> tuple[dict[str, Any], list[str], bool]:
    """Run one job; return its records (missing ones filled with n/a), notes, and success."""
    out = logs / f"{index:02d}-{job.system}-{job.group}.json"
    log = logs / f"{index:02d}-{job.system}-{job.group}.log"
    argv = ["-m", "bench.child", "--system", job.system, "--benches", ",".join(job.benches),
            "--out", str(out)] + (["--quick"] if quick else [])
    timeout = specs.TIMEOUTS[job.group][0 if quick else 1]
    outcome = procs.run_child(argv, cwd=ROOT, env=child_env(job.system, job.group), timeout_s=timeout,
                              log_path=log)
    data: dict[str, Any] = {}
    try:
        data = json.loads(out.read_text())
    except (OSError, ValueError):
        pass  # no (readable) result file: every benchmark of the job becomes n/a below
    records: dict[str, Any] = data.get("results", {})
    notes: list[str] = []
    good = not outcome.timed_out and outcome.returncode == 0
    if outcome.timed_out:
        reason = f"timeout after {timeout:.0f} s"
        notes.append(f"{job.system} {job.group}: killed after its {timeout:.0f} s timeout")
    elif outcome.returncode != 0:
        last = outcome.log_tail.splitlines()[-1] if outcome.log_tail else ""
        reason = f"child exit {outcome.returncode}: {last}"
    else:
        reason = "no result"
    for b in job.benches:
        records.setdefault(b, {"ok": False, "reason": reason, "extra": {}})
    if outcome.foreign_cores > FOREIGN_CORES_NOTE:
        notes.append(f"{job.system} {job.group}: other processes kept about "
                     f"{outcome.foreign_cores:.1f} of {os.cpu_count()} cores busy meanwhile "
                     f"(numbers are noisy)")
    if outcome.leftovers:
        notes.append(f"{job.system} {job.group}: killed {len(outcome.leftovers)} process(es) it "
                     f"left behind: {', '.join(outcome.leftovers)}")
    return {"records": records, "meta": data.get("meta", {}), "elapsed": outcome.elapsed_s,
            "foreign_cores": outcome.foreign_cores}, notes, good


def latency_rounds(rep: report.Report, selected: list[str], system_names: list[str], quick: bool,
                   logs: Path, index: int) -> bool:
    """Measure [roundtrip] again, the systems taking turns (specs.LATENCY_ROUNDS): each cell
    becomes the median of its system's rounds, so that "<= PPE in this run" compares the two
    over the same minutes, not over two windows minutes apart. False if a round failed."""
    turns = [s for s in specs.LATENCY_SYSTEMS if s in system_names]
    if specs.LATENCY_BENCH not in selected or "minicluster" not in turns or len(turns) < 2:
        return True
    bench = specs.LATENCY_BENCH
    good = True
    for round_number in range(1, specs.LATENCY_ROUNDS[0 if quick else 1] + 1):
        for s in turns:
            first = rep.results.get(bench, {}).get(s)
            if not first or not first["ok"]:
                continue
            index += 1
            job = Job(s, specs.BY_NAME[bench].group, [bench])
            print(f"[{bench} round {round_number}] {job.label()} ...", end="", file=sys.stderr, flush=True)
            res, notes, ok = run_job(job, quick, logs, index)
            good &= ok
            print(f" {res['elapsed']:.1f} s (others' CPU: {res['foreign_cores']:.2f} cores)",
                  file=sys.stderr, flush=True)
            rep.notes += notes
            rec = res["records"].get(bench)
            if rec and rec["ok"]:
                report.add_round(first, rec)
    return good


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    all_names = [b.name for b in specs.BENCHES]
    selected = _csv(args.only, all_names, "benchmark") if args.only else all_names
    selected = [b for b in all_names if b in selected]  # canonical order
    system_names = _csv(args.systems, systems.SYSTEMS, "system")
    system_names = [s for s in systems.SYSTEMS if s in system_names]  # canonical order
    jobs, baselines = plan(selected, system_names, args.isolate)

    command = shlex.join(["python", "bench/run.py", *argv])
    rep = report.Report(command, args.quick, system_names,
                        [b for b in selected if b in specs.SYSTEM_BENCHES], baselines)
    rep.started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if not procs.become_subreaper():
        rep.notes.append("could not become a child subreaper: orphans of a killed child "
                         "may escape the cleanup")
    foreign_ray = ray_processes()
    if foreign_ray:
        rep.notes.append(f"{len(foreign_ray)} Ray process(es) of someone else were running at start "
                         f"(left alone; they share the machine): pids "
                         + ", ".join(str(pid) for pid in sorted(foreign_ray)))

    for b in selected:
        for s in system_names:
            rec = not_applicable(s, b)
            if rec is not None:
                rep.results.setdefault(b, {})[s] = rec

    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        rep.notes.append("PYTHONDONTWRITEBYTECODE is set here: unset for the measurement subprocesses, "
                         "so the working tree's bytecode is cached as a normal install's is")
    warm_bytecode(system_names)

    logs = Path(tempfile.mkdtemp(prefix="minicluster-bench-logs-"))
    t_start = time.monotonic()
    all_good = True
    try:
        for i, job in enumerate(jobs, 1):
            print(f"[{i:2}/{len(jobs)}] {job.label()} ...", end="", file=sys.stderr, flush=True)
            res, notes, good = run_job(job, args.quick, logs, i)
            all_good &= good
            print(f" {res['elapsed']:.1f} s (others' CPU: {res['foreign_cores']:.2f} cores)",
                  file=sys.stderr, flush=True)
            rep.jobs.append({"system": job.system, "group": job.group, "benches": job.benches,
                             "elapsed_s": res["elapsed"], "foreign_cores": res["foreign_cores"]})
            rep.notes += [n.replace("none baseline:", "baselines:", 1) for n in notes]
            key = "baseline" if job.system == "none" else job.system
            for b, rec in res["records"].items():
                rep.results.setdefault(b, {})[key] = rec
            if job.system in systems.RAYLIKE:
                start_extra = res["records"].get("start", {}).get("extra", {})
                origin = res["meta"].get("origin") or start_extra.get("origin")
                version = res["meta"].get("version") or start_extra.get("version")
                if origin:
                    rep.imported_from[job.system] = f"{version or '?'} from {origin}"
        all_good &= latency_rounds(rep, selected, system_names, args.quick, logs, len(jobs))
    finally:
        leftovers = procs.reap_orphans(grace_s=0)
        if leftovers:
            rep.notes.append(f"killed at exit: {', '.join(leftovers)}")
    rep.elapsed_s = time.monotonic() - t_start
    for s in system_names:
        if s in systems.RAYLIKE and s not in rep.imported_from and rep.versions[s] != "not installed":
            rep.versions[s] += " (package metadata found, but not importable: see n/a reasons)"

    new_ray = {pid: a for pid, a in ray_processes().items() if pid not in foreign_ray}
    ours = {pid: a for pid, a in new_ray.items() if procs.is_ours(pid)}
    others = len(new_ray) - len(ours)
    rep.notes.append("leftover check (ps -eo pid,args | grep -iE 'raylet|gcs_server|ray::'): "
                     + ("none of ours" if not ours else
                        "OURS STILL RUNNING: " + ", ".join(f"{p} {a}" for p, a in ours.items()))
                     + (f"; {others} Ray process(es) of someone else appeared meanwhile (left alone)"
                        if others else ""))
    if args.keep_logs or not all_good:
        rep.notes.append(f"subprocess logs kept in {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)

    print(report.render_text(rep))
    if args.json:
        Path(args.json).write_text(json.dumps(rep.to_json(), indent=2, default=repr) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(report.render_markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
