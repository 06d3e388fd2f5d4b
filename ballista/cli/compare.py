"""`ballista compare`: the sequential baseline, then the concurrent engine, side by side.

Each phase runs in a child process of its own, so that its peak memory (the
child's maximum resident set) belongs to that phase alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from ballista.core.durations import format_duration
from ballista.core.errors import EXIT_OK, EXIT_THRESHOLD, EXIT_USAGE, BallistaError


@dataclass(frozen=True, slots=True)
class Phase:
    """One side of the comparison: its JSON summary and the child's resources."""

    label: str
    summary: dict[str, Any]
    peak_rss_bytes: int
    cpu_s: float


def _passthrough(ns: argparse.Namespace) -> list[str]:
    """The request and load flags both phases share."""
    args = [ns.url, "-m", ns.method]
    if ns.timeout is not None:
        args += ["--timeout", str(ns.timeout)]
    if ns.interval is not None:
        args += ["--interval", str(ns.interval)]
    if ns.requests is not None:
        args += ["-n", str(ns.requests)]
    if ns.duration is not None:
        args += ["-d", str(ns.duration)]
    if ns.protocol == "http2":
        args.append("--http2")
    elif ns.protocol == "http1":
        args.append("--http1")
    for h in ns.header:
        args += ["-H", h]
    if ns.body is not None:
        args += ["-b", ns.body]
    if ns.body_file is not None:
        args += ["--body-file", ns.body_file]
    if ns.insecure:
        args.append("--insecure")
    if ns.cacert is not None:
        args += ["--cacert", ns.cacert]
    return args


def _run_phase(label: str, args: list[str]) -> Phase:
    """Run one phase in a child process; its own peak RSS and CPU come from wait4."""
    cmd = [sys.executable, "-m", "ballista", "run", *args, "--json", "-", "-q"]
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errfile)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        errfile.seek(0)
        err = errfile.read().decode(errors="replace").strip().splitlines()
    if proc.returncode == EXIT_USAGE and err:
        # The child named the problem in one line: say it once, as ours.
        raise BallistaError(f"{label} phase: {err[0].removeprefix('ballista: error: ')}")
    if proc.returncode not in (EXIT_OK, EXIT_THRESHOLD):
        # An internal error (or a crash): the child's report is the one to read.
        sys.stderr.write("\n".join(err) + "\n")
        raise RuntimeError(f"{label} phase: `ballista run` exited {proc.returncode}")
    return Phase(
        label=label,
        summary=json.loads(out),
        peak_rss_bytes=usage.ru_maxrss * 1024,
        cpu_s=usage.ru_utime + usage.ru_stime,
    )


def run_compare(ns: argparse.Namespace) -> int:
    shared = _passthrough(ns)
    if ns.requests is None and ns.duration is None:
        shared += ["-d", "10s"]
    baseline = _run_phase("sequential", [*shared, "--sequential"])
    concurrent_args = list(shared)
    if ns.concurrency is not None:
        concurrent_args += ["-c", str(ns.concurrency)]
    if ns.connections is not None:
        concurrent_args += ["--connections", str(ns.connections)]
    concurrent = _run_phase("concurrent", concurrent_args)
    report = comparison(baseline, concurrent)
    # With `--json -` stdout carries the JSON alone: the table goes to stderr.
    (sys.stderr if ns.json == "-" else sys.stdout).write(format_comparison(report))
    if ns.json is not None:
        text = json.dumps(report, indent=2) + "\n"
        if ns.json == "-":
            sys.stdout.write(text)
        else:
            with open(ns.json, "w", encoding="utf-8") as fh:
                fh.write(text)
    if ns.report is not None:
        write_comparison_report(baseline, concurrent, ns.report)
    return 0


def write_comparison_report(baseline: Phase, concurrent: Phase, path: str) -> None:
    """The HTML report of both phases, the sequential baseline first."""
    from ballista.observe.report import ReportRun, render_report, write_report

    target = baseline.summary.get("target", "")
    text = render_report(
        [ReportRun(label=p.label, summary=p.summary) for p in (baseline, concurrent)],
        title=f"Ballista compare: {target}, sequential baseline vs concurrent",
    )
    try:
        write_report(text, path)
    except OSError as exc:
        raise BallistaError(f"--report: cannot write {path!r}: {exc.strerror}") from None


def comparison(baseline: Phase, concurrent: Phase) -> dict[str, Any]:
    def side(p: Phase) -> dict[str, Any]:
        s = p.summary
        return {
            "requests": s["requests"],
            "failed": s["failed"],
            "rps": s["rps"],
            "mean_s": s["latency_s"]["mean"],
            "p99_s": s["latency_s"]["p99"],
            "peak_rss_bytes": p.peak_rss_bytes,
            "cpu_s": round(p.cpu_s, 3),
            "connections_opened": s["connections_opened"],
            "concurrency": s["concurrency"]["configured"],
            "summary": s,
        }

    b, c = side(baseline), side(concurrent)
    ratio = c["rps"] / b["rps"] if b["rps"] else None
    return {"sequential": b, "concurrent": c, "throughput_ratio": ratio}


def format_comparison(report: dict[str, Any]) -> str:
    b, c = report["sequential"], report["concurrent"]
    target = b["summary"]["target"]
    rows = [
        ("requests/s", f"{b['rps']:,.1f}", f"{c['rps']:,.1f}"),
        ("requests", f"{b['requests']:,}", f"{c['requests']:,}"),
        ("failed", f"{b['failed']:,}", f"{c['failed']:,}"),
        ("mean latency", format_duration(b["mean_s"]), format_duration(c["mean_s"])),
        ("p99 latency", format_duration(b["p99_s"]), format_duration(c["p99_s"])),
        (
            "peak memory",
            f"{b['peak_rss_bytes'] / 1e6:.1f} MB",
            f"{c['peak_rss_bytes'] / 1e6:.1f} MB",
        ),
        ("connections", str(b["connections_opened"]), str(c["connections_opened"])),
        ("concurrency", str(b["concurrency"]), str(c["concurrency"])),
    ]
    lines = [f"ballista compare · {target}", ""]
    lines.append(f"  {'':<14}{'sequential':>14}{'concurrent':>14}")
    lines.extend(f"  {name:<14}{left:>14}{right:>14}" for name, left, right in rows)
    ratio = report["throughput_ratio"]
    lines.append("")
    lines.append(
        f"  throughput ratio: {ratio:.2f}x" if ratio is not None else "  throughput ratio: -"
    )
    return "\n".join(lines) + "\n"
