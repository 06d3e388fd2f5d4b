"""Adaptive concurrency against targets that reject at once beyond their capacity (issue 13).

For each signal (503, 429, REFUSED_STREAM) and capacity, a shedder
(`python -m ballista.target.shedder`: K requests at a time, each --service
long, the signal at once beyond them) runs in its own process, and
`ballista run --adaptive --latency-target 1s` runs against it in another. The
table compares the limit the controller settled at with the true capacity,
its throughput (200s per second) with the capacity's maximum (K / service
time, and what a closed model at exactly `-c K` gets on this machine), and
gives the share of rejected requests. Load goes only to 127.0.0.1.

    .venv/bin/python bench/adaptive_rejections.py [--duration 20] [--cases 12@20ms,48@100ms]

Each case is a capacity and a service time; keep K / service within what this
machine's hypercorn can serve (the `-c K` column shows it), or the table
measures the shedder's CPU rather than its capacity.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ballista.core.durations import parse_duration

SIGNALS = ("503", "429", "refused_stream")


def start_shedder(signal: str, capacity: int, service: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ballista.target.shedder",
            "--capacity",
            str(capacity),
            "--service",
            service,
            "--reject",
            signal,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().split()[0]
    return proc, url


def ballista(url: str, signal: str, duration: float, *load: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        protocol = ["--http2", "--connections", "4"] if signal == "refused_stream" else ["--http1"]
        argv = [
            sys.executable,
            "-m",
            "ballista",
            "run",
            url,
            *load,
            *protocol,
            "-d",
            f"{duration:g}s",
            "--json",
            str(out),
            "--quiet",
        ]
        subprocess.run(argv, check=True, timeout=duration + 60)
        doc: dict[str, Any] = json.loads(out.read_text())
        return doc


def rejected(doc: dict[str, Any], signal: str) -> int:
    if signal == "refused_stream":
        return int(doc["errors_by_kind"].get("refused_stream", 0))
    return int(doc["status_codes"].get(signal, 0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run (20)")
    parser.add_argument(
        "--cases", default="12@20ms,48@100ms", help="capacity@service pairs (12@20ms,48@100ms)"
    )
    parser.add_argument("--signals", default=",".join(SIGNALS), help="503,429,refused_stream")
    parser.add_argument("--no-baseline", action="store_true", help="skip the -c K runs")
    ns = parser.parse_args()
    cases = []
    for case in ns.cases.split(","):
        k, _, service = case.partition("@")
        cases.append((int(k), service, parse_duration(service, what="--cases")))
    rows = []
    header = (
        f"{'signal':<15}{'K':>4}{'S':>7}{'settled':>9}{'ok/s':>9}{'-c K ok/s':>11}"
        f"{'K/S':>8}{'of -c K':>9}{'rejected':>10}{'requests':>10}"
    )
    print(header, flush=True)
    for signal in ns.signals.split(","):
        for capacity, service, service_s in cases:
            proc, url = start_shedder(signal, capacity, service)
            try:
                adaptive = ballista(
                    url, signal, ns.duration, "--adaptive", "--latency-target", "1s"
                )
                base = (
                    None
                    if ns.no_baseline
                    else ballista(url, signal, ns.duration, "-c", str(capacity))
                )
            finally:
                proc.kill()
                proc.wait()
            ok = adaptive["status_codes"].get("200", 0) / adaptive["duration_s"]
            base_ok = base["status_codes"].get("200", 0) / base["duration_s"] if base else None
            share = rejected(adaptive, signal) / max(1, adaptive["requests"])
            ceiling = capacity / service_s
            row = (
                f"{signal:<15}{capacity:>4}{service:>7}{adaptive['concurrency']['final_limit']:>9}"
                f"{ok:>9.0f}{(f'{base_ok:.0f}' if base_ok else '-'):>11}{ceiling:>8.0f}"
                f"{(f'{ok / base_ok:.0%}' if base_ok else '-'):>9}{share:>10.2%}"
                f"{adaptive['requests']:>10,}"
            )
            print(row, flush=True)
            rows.append((row, adaptive.get("notes", [])))
    print()
    for row, notes in rows:
        print(*row.split()[:3], "|", notes[-1] if notes else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
