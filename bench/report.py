"""Formatting the results: machine and version info, the comparison table, text and Markdown.

``Report`` holds everything one run produced; ``render_text`` prints it for a terminal and
``render_markdown`` writes the same content for bench/RESULTS.md.

Ratio columns compare minicluster with each peer so that **higher is better for
minicluster**: ``peer / minicluster`` for times and memory, ``minicluster / peer`` for
throughput. ``3.0x`` means minicluster is three times better; ``0.5x`` means it is worse.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import sys
from typing import Any

from bench.specs import BY_NAME, LATENCY_BENCH, Bench
from bench.systems import describe
from bench.workloads import median

Record = dict[str, Any]
VERSIONED = ["minicluster", "ray", "numpy", "pyarrow", "cloudpickle", "psutil"]
NA_WIDTH = 30  # longest n/a reason shown inside a table cell; full text goes to the notes
PUT_TARGET_X_MEMCPY = 1.5  # [put] target (issue 17; it was 2x)
RECONSTRUCT_SLACK_MS = 50.0  # [reconstruct] target: 50 ms plus the task's normal run time


class Report:
    """All the data of one run."""

    def __init__(self, command: str, quick: bool, systems: list[str], benches: list[str],
                 baselines: list[str]) -> None:
        self.command = command
        self.quick = quick
        self.systems = systems
        self.benches = benches
        self.baselines = baselines
        self.results: dict[str, dict[str, Record]] = {}  # bench -> system ("baseline") -> record
        self.notes: list[str] = []
        self.jobs: list[dict[str, Any]] = []  # one entry per subprocess: timing, noise
        self.imported_from: dict[str, str] = {}  # ray-like system -> "version from dir"
        self.machine = machine_info()
        self.versions = package_versions()
        self.started = ""
        self.elapsed_s = 0.0

    def record(self, bench: str, system: str) -> Record | None:
        return self.results.get(bench, {}).get(system)

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "quick": self.quick, "started": self.started,
                "elapsed_s": self.elapsed_s, "machine": self.machine, "versions": self.versions,
                "imported_from": self.imported_from, "configs": configs(self.systems),
                "results": self.results, "jobs": self.jobs, "notes": self.notes}


# ------------------------------------------------------------------------ environment


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"cpu_model": model, "cores": os.cpu_count(), "ram_gib": round(ram / 2**30, 1),
            "os": f"{platform.system()} {platform.release()} {platform.machine()}",
            "python": platform.python_version(), "python_executable": sys.executable,
            "loadavg_at_start": [round(x, 2) for x in load]}


def package_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def configs(systems: list[str]) -> dict[str, dict[str, str]]:
    return {
        "start, shutdown (4 worker slots)": {s: describe(s, "start") for s in systems},
        "throughput, bookkeeping, roundtrip, put, get, arg, arg_value, retry, footprint, chaos, actor_* "
        "(2 worker slots)": {s: describe(s, "warm") for s in systems},
        "cluster_start, add_node, footprint2, reconstruct, chain100 (one Cluster per system)":
            {s: describe(s, "cluster") for s in systems},
        "lineage_mem (2 worker slots, lineage capped)": {s: describe(s, "lineage") for s in systems},
    }


# ----------------------------------------------------------------------------- cells


def _num(v: float) -> str:
    """Three significant digits, thousands separators, no exponent."""
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    digits = 2
    x = abs(v)
    while x < 0.1 and digits < 8:
        x *= 10
        digits += 1
    return f"{v:.{digits}f}"


def cell(bench: str, rec: Record | None) -> str:
    if rec is None:
        return "-"
    if not rec["ok"]:
        reason = str(rec.get("reason", "failed"))
        if len(reason) > NA_WIDTH:
            reason = reason[: NA_WIDTH - 3] + "..."
        return f"n/a ({reason})"
    v = float(rec["value"])
    x = rec.get("extra", {})
    unit = BY_NAME[bench].unit
    if bench in ("roundtrip", "pipe", "actor_call"):
        return f"{_num(v)} us (p90 {_num(float(x['p90']))})"
    if bench in ("throughput", "actor_async", "pool_tiny"):
        return f"{v:,.0f}/s"
    if bench == "pool_1mb":
        return f"{_num(v)} MB/s"
    if bench == "bookkeeping":
        med = x.get("median_rates", {})
        return (f"{v:+.0f}% ({med.get('ref_arg_kept', 0):,.0f}/s vs plain "
                f"{med.get('plain', 0):,.0f}/s)")
    if bench == "reconstruct":
        return (f"{_num(v)} ms (remove_node {_num(median(x['remove_ms']))} ms; normal run "
                f"{_num(float(x['normal_ms']))} ms)")
    if bench == "lineage_mem":
        return f"+{_num(v)} MB ({x.get('tasks', 0):,} tasks)"
    if bench == "footprint2":
        return f"{_num(v)} MB ({x.get('nprocs', '?')} procs)"
    if bench == "get":
        return f"{_num(v)} ms, {'read-only' if x.get('readonly') else 'WRITABLE'}{_b2b(x)}"
    if bench == "put":
        return f"{_num(v)} ms{_b2b(x)}"
    if bench == "arg_value":
        return (f"{_num(v)} ms (later calls: median {_num(float(x['later_median_ms']))}, "
                f"worst {_num(float(x['later_worst_ms']))})")
    if bench == "retry":
        return f"{'+' if v >= 0 else ''}{_num(v)} ms"
    if bench == "footprint":
        return f"{_num(v)} MB ({x.get('nprocs', '?')} procs)"
    if bench == "chaos":
        return f"{_num(v)}x ({_num(float(median_of(x['kills'])))} kills)"
    if bench == "memcpy":
        summed = f", arr.sum() {_num(float(x['sum_ms']))} ms" if "sum_ms" in x else ""
        return f"{_num(v)} ms (arr.copy() {_num(float(x['arr_copy_ms']))} ms{summed})"
    return f"{_num(v)} {unit}"


def _b2b(x: dict) -> str:
    """The back-to-back part of the [put] / [get] cells (absent in old JSON files)."""
    if "b2b_median" not in x:
        return ""
    return f" (back-to-back {_num(float(x['b2b_median']))}, worst {_num(float(x['b2b_worst']))})"


def add_round(first: Record, again: Record) -> None:
    """Fold another round of a latency measurement into the first one's record (run.py's
    latency_rounds): the value and p90 become the medians of every round's."""
    x = first["extra"]
    rounds = x.setdefault("rounds", [{"value": float(first["value"]), "p90": float(x["p90"])}])
    rounds.append({"value": float(again["value"]), "p90": float(again["extra"]["p90"])})
    first["value"] = statistics.median(r["value"] for r in rounds)
    x["p90"] = statistics.median(r["p90"] for r in rounds)


def median_of(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def ratio(bench: Bench, mc: Record | None, peer: Record | None) -> str:
    """How many times better minicluster is than ``peer`` (> 1 = minicluster better)."""
    if not mc or not peer or not mc["ok"] or not peer["ok"]:
        return "-"
    m, p = float(mc["value"]), float(peer["value"])
    if bench.unit == "%" or m <= 0 or p <= 0:  # a percentage cost has no meaningful ratio
        return "-"
    r = m / p if bench.higher_is_better else p / m
    return f"{r:,.1f}x" if r < 100 else f"{r:,.0f}x"


def target(report: Report, bench: Bench) -> str:
    """Target text plus, when minicluster was measured, MET / MISSED."""
    text = bench.target_text
    limit = bench.target
    mc = report.record(bench.name, "minicluster")
    if bench.name == "put":
        mem = report.record("memcpy", "baseline")
        if mem and mem["ok"]:
            limit = PUT_TARGET_X_MEMCPY * float(mem["value"])
            text = f"<= {PUT_TARGET_X_MEMCPY}x memcpy = {_num(limit)} ms"
    if bench.name == "roundtrip":
        ppe = report.record("roundtrip", "ppe")
        if ppe and ppe["ok"]:  # first goal: no slower than ProcessPoolExecutor in the same run
            limit = float(ppe["value"])
            text = f"<= PPE in this run = {_num(limit)} us (then <= 150 us)"
    if bench.name == "reconstruct" and mc and mc["ok"]:
        limit = RECONSTRUCT_SLACK_MS + float(mc["extra"]["normal_ms"])
        text = f"<= 50 ms + task run = {_num(limit)} ms"
    if bench.name == "lineage_mem" and mc and mc["ok"] and "cap_mb" in mc["extra"]:
        limit = float(mc["extra"]["cap_mb"])
        text = f"<= cap ({_num(limit)} MB)"
    ray = report.record(bench.name, "ray")
    if bench.name == "gen_tiny" and ray and ray["ok"]:
        limit = 10 * float(ray["value"])
        text = f">= 10x Ray = {_num(limit)} items/s"
    if "minicluster" not in report.systems or limit is None or not mc or not mc["ok"]:
        return text
    v = float(mc["value"])
    met = v >= limit if bench.higher_is_better else v <= limit
    if bench.name == "get":
        met = met and bool(mc.get("extra", {}).get("readonly"))
    return f"{text}: {'MET' if met else 'MISSED'}"


def table(report: Report) -> tuple[list[str], list[list[str]]]:
    peers = [s for s in report.systems if s != "minicluster"]
    with_ratios = "minicluster" in report.systems
    header = ["benchmark", *report.systems]
    if with_ratios:
        header += [f"{p}/mc" for p in peers]
    header += ["minicluster target", "Ray ref"]
    rows: list[list[str]] = []
    for name in report.benches:
        b = BY_NAME[name]
        row = [f"[{name}] {b.title}"]
        row += [cell(name, report.record(name, s)) for s in report.systems]
        if with_ratios:
            mc = report.record(name, "minicluster")
            row += [ratio(b, mc, report.record(name, p)) for p in peers]
        row += [target(report, b), b.ray_ref]
        rows.append(row)
    return header, rows


def baseline_rows(report: Report) -> list[list[str]]:
    return [[f"[{n}] {BY_NAME[n].title}", cell(n, report.record(n, "baseline")), BY_NAME[n].ray_ref]
            for n in report.baselines]


def details(report: Report) -> list[str]:
    """Per-cell extras worth reading: start-up breakdown, footprint processes, retry times."""
    out: list[str] = []
    for s in report.systems:
        st = report.record("start", s)
        if st and st["ok"]:
            x = st["extra"]
            parts = [f"{k.removesuffix('_s')} {_num(float(x[k]))} s"
                     for k in ("import_s", "init_s", "pool_s", "first_task_s") if k in x]
            pre = " (module was imported before the clock!)" if x.get("preimported") else ""
            out.append(f"start {s}: " + ", ".join(parts) + pre)
    for s in report.systems:
        fp = report.record("footprint", s)
        if fp and fp["ok"]:
            procs = ", ".join(f"{k} x{v}" for k, v in fp["extra"].get("processes", {}).items())
            out.append(f"footprint {s}: PSS {_num(float(fp['value']))} MB, RSS sum "
                       f"{_num(float(fp['extra']['rss_mb']))} MB; {procs}")
    for s in report.systems:
        rt = report.record("retry", s)
        if rt and rt["ok"]:
            x = rt["extra"]
            out.append(f"retry {s}: crashing call {', '.join(_num(v) for v in x['crash_ms'])} ms; "
                       f"same call without crash {', '.join(_num(v) for v in x['base_ms'])} ms")
    for s in report.systems:
        for name in ("put", "get"):
            rec = report.record(name, s)
            if rec and rec["ok"]:
                x = rec["extra"]
                b2b = f"; back-to-back {_ms(x['b2b_runs'])} ms" if "b2b_runs" in x else ""
                out.append(f"{name} {s}: runs {_ms(x['runs'])} ms{b2b}")
    for s in report.systems:
        av = report.record("arg_value", s)
        if av and av["ok"]:
            x = av["extra"]
            out.append(f"arg_value {s}: first call {_num(float(x['first_ms']))} ms, then {_ms(x['later_runs'])} ms")
    for s in report.systems:
        ag = report.record("arg", s)
        if ag and ag["ok"] and "by_value_ms" in ag["extra"]:
            out.append(f"arg {s}: with the array itself as the argument (implicit put per call) "
                       f"{_num(float(ag['extra']['by_value_ms']))} ms per call")
        elif ag and ag["ok"] and "by_value_error" in ag["extra"]:
            out.append(f"arg {s}: the array itself as the argument failed: "
                       f"{ag['extra']['by_value_error'][:200]}")
    out += _recovery_details(report)
    out += _actor_details(report)
    for s in report.systems:
        ch = report.record("chaos", s)
        if ch and ch["ok"]:
            x = ch["extra"]
            out.append(f"chaos {s}: {x['tasks']:,} tasks, a worker killed every {x['every']}: chaos "
                       f"{', '.join(_num(v) for v in x['chaos_s'])} s vs fault-free "
                       f"{', '.join(_num(v) for v in x['base_s'])} s; kills {x['kills']}")
    for s in report.systems:
        lat = report.record(LATENCY_BENCH, s)
        if lat and lat["ok"] and "rounds" in lat["extra"]:
            rounds = lat["extra"]["rounds"]
            out.append(f"{LATENCY_BENCH} {s}: {len(rounds)} rounds, the systems taking turns, each in a fresh "
                       f"process: {', '.join(_num(r['value']) for r in rounds)} us (the cell is their median)")
    for s in report.systems:
        tp = report.record("throughput", s)
        if tp and tp["ok"]:
            runs = ", ".join(f"{v:,.0f}" for v in tp["extra"]["runs"])
            out.append(f"throughput {s}: {tp['extra']['tasks']:,} tasks per run, runs {runs} tasks/s")
    return out


def _ms(values: list[float]) -> str:
    return ", ".join(_num(v) for v in values)


def _recovery_details(report: Report) -> list[str]:
    out: list[str] = []
    for s in report.systems:
        cs = report.record("cluster_start", s)
        if cs and cs["ok"]:
            x = cs["extra"]
            out.append(f"cluster_start {s}: Cluster(head) {_num(float(x['cluster_s']))} s, "
                       f"init(address) {_num(float(x['init_s']))} s, first task "
                       f"{_num(float(x['first_task_s']))} s")
    for s in report.systems:
        an = report.record("add_node", s)
        if an and an["ok"]:
            x = an["extra"]
            out.append(f"add_node {s}: runs {_ms(x['runs'])} s; then the first task pinned to the "
                       f"new node took {_ms(x['first_task_s'])} s")
    for s in report.systems:
        fp = report.record("footprint2", s)
        if fp and fp["ok"]:
            procs = ", ".join(f"{k} x{v}" for k, v in fp["extra"].get("processes", {}).items())
            out.append(f"footprint2 {s}: PSS {_num(float(fp['value']))} MB, RSS sum "
                       f"{_num(float(fp['extra']['rss_mb']))} MB; {procs}")
    for s in report.systems:
        rc = report.record("reconstruct", s)
        if rc and rc["ok"]:
            x = rc["extra"]
            out.append(f"reconstruct {s}: get after remove_node {_ms(x['runs'])} ms (remove_node "
                       f"itself {_ms(x['remove_ms'])} ms); the same task normally (submit to "
                       f"result, on the head) {_ms(x['normal_runs'][1:])} ms after a warm-up of "
                       f"{_num(x['normal_runs'][0])} ms; copies before the removal (as the "
                       f"system reported them): {', '.join(x.get('copies', []))}")
    for s in report.systems:
        ch = report.record("chain100", s)
        if ch and ch["ok"]:
            x = ch["extra"]
            out.append(f"chain100 {s}: building the chain of {x['tasks']} took "
                       f"{_num(float(x['build_ms']))} ms; rebuilding it {_num(float(ch['value']))} ms; "
                       f"copies of the last result before the removal: {x.get('copies')}")
    for s in report.systems:
        bk = report.record("bookkeeping", s)
        if bk and bk["ok"]:
            x = bk["extra"]
            med = x["median_rates"]
            out.append(f"bookkeeping {s}: {x['tasks']:,} tasks per run, median tasks/s: plain "
                       f"{med['plain']:,.0f}, with a ref argument {med['ref_arg']:,.0f} "
                       f"({x['ref_arg_cost_pct']:+.0f}%), with a ref argument and every ref kept "
                       f"{med['ref_arg_kept']:,.0f} ({float(bk['value']):+.0f}%; "
                       f"{x['kept_refs']:,} refs kept at the end)")
    for s in report.systems:
        lm = report.record("lineage_mem", s)
        if lm and lm["ok"]:
            x = lm["extra"]
            out.append(f"lineage_mem {s}: driver RSS {_num(float(x['base_rss_mb']))} MB after warm-up; "
                       f"lineage cap {_num(float(x['cap_mb']))} MB")
            for phase, what in (("plain", "independent tasks, last batch's refs kept"),
                                ("dependent", "dependent tasks (each takes the previous batch's "
                                              "ref), last batch's refs kept")):
                ph = x[phase]
                curve = ", ".join(f"{n // 1000:,}k {mb:+.0f}" for n, mb in ph["samples"])
                inner = _internals(x.get(f"internals_after_{phase}", {}))
                out.append(f"lineage_mem {s}, {ph['tasks']:,} {what}: {ph['rate']:,.0f} tasks/s "
                           f"({_num(float(ph['elapsed_s']))} s); RSS growth over the baseline (MB) "
                           f"by tasks done: {curve}; at the end {ph['end_mb']:+.0f} MB, "
                           f"{ph['second_half_mb']:+.0f} MB of it in the second half"
                           + (f"; then {inner}" if inner else ""))
    return out


def _internals(x: dict[str, Any]) -> str:
    """minicluster's own counts (lineage records and bytes, remembered ids, task history)."""
    keys = ("lineage_records", "lineage_bytes_mb", "evicted_ids_remembered", "task_history",
            "freed_ids_remembered", "object_entries")
    parts = [f"{k} {x[k]:,.1f}" if isinstance(x[k], float) else f"{k} {x[k]:,}" for k in keys if k in x]
    if "internals_error" in x:
        parts.append(f"internals unreadable: {x['internals_error']}")
    return ", ".join(parts)


def _actor_details(report: Report) -> list[str]:
    out: list[str] = []
    for s in report.systems:
        ac = report.record("actor_create", s)
        if ac and ac["ok"]:
            out.append(f"actor_create {s}: runs {_ms(ac['extra']['runs'])} ms")
    for s in report.systems:
        aa = report.record("actor_async", s)
        if aa and aa["ok"]:
            runs = ", ".join(f"{v:,.0f}" for v in aa["extra"]["runs"])
            out.append(f"actor_async {s}: {aa['extra']['calls']:,} calls per run, runs {runs} calls/s")
    for s in report.systems:
        ar = report.record("actor_restart", s)
        if ar and ar["ok"]:
            x = ar["extra"]
            errs = ", ".join(sorted(set(x["crash_errors"])))
            out.append(f"actor_restart {s}: crash to answered ping {_ms(x['runs'])} ms; the crashing "
                       f"call failed after {_ms(x['crash_call_ms'])} ms with {errs}; pings refused "
                       f"while restarting: {x['failed_pings']}")
    return out


def na_reasons(report: Report) -> list[str]:
    """Full n/a reasons, one line per (system, reason) with the benchmarks it hit."""
    seen: dict[tuple[str, str], list[str]] = {}
    for bench, by_sys in report.results.items():
        for s, rec in by_sys.items():
            if not rec["ok"]:
                detail = rec.get("extra", {}).get("detail")
                reason = str(rec.get("reason")) + (f" ({detail})" if detail else "")
                seen.setdefault((s, reason), []).append(bench)
    return [f"{s}: {reason}  [{', '.join(b)}]" for (s, reason), b in seen.items()]


# ---------------------------------------------------------------------------- render


def _header_lines(report: Report) -> list[tuple[str, str]]:
    m = report.machine
    v = report.versions
    return [
        ("command", report.command),
        ("started", f"{report.started} (took {report.elapsed_s:.0f} s)"),
        ("machine", f"{m['cpu_model']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}; "
                    f"load average at start {m['loadavg_at_start']}"),
        ("python", f"{m['python']} ({m['python_executable']})"),
        ("versions", ", ".join(f"{k} {v[k]}" for k in VERSIONED)),
        ("imported", "; ".join(f"{k} {v}" for k, v in report.imported_from.items()) or "-"),
    ]


RATIO_NOTE = ("ratios: peer/mc (mc = minicluster) = how many times better minicluster is than that peer "
              "(peer time / minicluster time, peer MB / minicluster MB, minicluster tasks/s / "
              "peer tasks/s); > 1x means minicluster is better.")


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        cells = enumerate(zip(r, widths, strict=True))
        return " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in cells)

    return [fmt(header), "-+-".join("-" * w for w in widths), *[fmt(r) for r in rows]]


def render_text(report: Report) -> str:
    lines = [f"minicluster benchmarks{' (--quick)' if report.quick else ''}", ""]
    lines += [f"{k:9} {v}" for k, v in _header_lines(report)]
    lines.append("configs:")
    for what, by_sys in configs(report.systems).items():
        lines.append(f"  {what}:")
        lines += [f"    {s:12} {d}" for s, d in by_sys.items()]
    lines += ["", RATIO_NOTE, ""]
    if report.benches:
        lines += _text_table(*table(report))
    if report.baselines:
        lines += ["", "system-independent baselines:"]
        lines += _text_table(["baseline", "measured", "reference"], baseline_rows(report))
    for title, items in (("details", details(report)), ("n/a reasons", na_reasons(report)),
                         ("notes", report.notes)):
        if items:
            lines += ["", f"{title}:", *[f"  - {i}" for i in items]]
    return "\n".join(lines) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[c.replace("|", "\\|") for c in r] for r in [header, *rows]]
    out = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return out


def render_markdown(report: Report) -> str:
    lines = ["# minicluster benchmark results", ""]
    lines += [f"Produced by `{report.command}`"
              + (" (quick mode: fewer repetitions)." if report.quick else "."), ""]
    lines += [f"- **{k}**: {v}" for k, v in _header_lines(report) if k != "command"]
    lines += ["", "## Configurations", ""]
    for what, by_sys in configs(report.systems).items():
        lines.append(f"- {what}:")
        lines += [f"  - {s}: `{d}`" for s, d in by_sys.items()]
    lines += ["", "## Results", "", RATIO_NOTE, ""]
    if report.benches:
        lines += _md_table(*table(report))
    if report.baselines:
        lines += ["", "### System-independent baselines", ""]
        lines += _md_table(["baseline", "measured", "reference"], baseline_rows(report))
    for title, items in (("Details", details(report)), ("n/a reasons", na_reasons(report)),
                         ("Notes", report.notes)):
        if items:
            lines += ["", f"### {title}", "", *[f"- {i}" for i in items]]
    lines += ["", "See bench/README.md for what each benchmark measures and how.", ""]
    return "\n".join(lines)

