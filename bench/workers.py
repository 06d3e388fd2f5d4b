"""`--workers`: what running a test as N processes costs, against one process.

    python bench/workers.py cpu --rate 3000 -d 20s        # --workers 2 vs one process, one nginx
    python bench/workers.py cpu -c 50 -n 60000            # the same, closed model
    python bench/workers.py merge                          # the parent's merge cost per interval

`cpu` runs the same open-model test (same total rate, same duration) against
one local nginx as one process and as `--workers 2`, three times each in
turns, and reports CPU (user + sys of the whole process tree, from os.wait4:
the parent and every worker it reaped) per request, the start-up CPU of each
(a run of `-n 1`), and the parent's peak RSS (VmHWM, sampled from /proc).
`merge` times what the parent does each interval, per worker: decode one
message (`snapshot_from_wire`) and merge the round (`Rounds.add`), for
histograms of a given number of non-empty buckets and for request counts a
thousand times apart. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import Nginx, find_tools, memory_kib

from ballista.core.config import RequestSpec
from ballista.core.merge import Rounds
from ballista.core.outcome import NO_ERROR, Sample
from ballista.core.recorder import Recorder
from ballista.core.wire import snapshot_from_wire, snapshot_to_wire

BALLISTA = [sys.executable, "-m", "ballista"]


def measured(argv: list[str]) -> dict[str, Any]:
    """Run to the end: CPU of the tree (wait4), the top process's peak RSS (VmHWM)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    hwm = 0
    own = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        hwm = max(hwm, memory_kib(proc.pid)[1])
        own = max(own, own_cpu(proc.pid))
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {proc.returncode}")
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "wall_s": time.monotonic() - start,
        "parent_peak_rss_mb": hwm / 1024,
        "parent_cpu_s": own,
    }


def own_cpu(pid: int) -> float:
    """CPU seconds (user + sys) of the process itself, not of its children; 0 once gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5), in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu(args: argparse.Namespace) -> None:
    tools = find_tools(["ballista"])
    with tempfile.TemporaryDirectory() as tmp:
        nginx = Nginx(tools.nginx, tools.taskset, Path(tmp), args.server_core)
        try:
            url = f"http://127.0.0.1:{nginx.h1_port}/"
            runs: dict[str, list[dict[str, Any]]] = {"one process": [], "--workers 2": []}
            for _ in range(args.repeat):
                for label, extra in (("one process", []), ("--workers 2", ["--workers", "2"])):
                    out = Path(tmp) / "out.json"
                    base = [*BALLISTA, "run", url, "-q", "--json", str(out), *extra]
                    fixed = measured([*base, "-n", "1"])
                    if args.concurrency:
                        load = ["-c", str(args.concurrency), "-n", str(args.requests)]
                    else:
                        load = ["-r", str(args.rate), "-d", args.duration]
                    run = measured([*base, *load])
                    doc = json.loads(out.read_text())
                    run["requests"] = doc["requests"]
                    run["failed"] = doc["failed"]
                    run["startup_cpu_s"] = fixed["cpu_s"]
                    run["us_per_request"] = run["cpu_s"] / doc["requests"] * 1e6
                    run["us_per_request_after_startup"] = (
                        (run["cpu_s"] - fixed["cpu_s"]) / doc["requests"] * 1e6
                    )
                    runs[label].append(run)
                    print(label, json.dumps(run), flush=True)
        finally:
            nginx.stop()
    print()
    shape = (
        f"-c {args.concurrency} -n {args.requests}"
        if args.concurrency
        else f"-r {args.rate} -d {args.duration}"
    )
    print(f"{shape}, {args.repeat} runs each (medians)")
    keys = (
        "requests",
        "cpu_s",
        "startup_cpu_s",
        "us_per_request",
        "us_per_request_after_startup",
        "parent_peak_rss_mb",
        "parent_cpu_s",
    )
    medians = {
        label: {k: statistics.median(r[k] for r in rs) for k in keys} for label, rs in runs.items()
    }
    for label, m in medians.items():
        print(f"  {label:<12} " + "  ".join(f"{k} {m[k]:,.2f}" for k in keys))
    one, two = medians["one process"], medians["--workers 2"]
    for key in ("us_per_request", "us_per_request_after_startup"):
        print(f"  --workers 2 / one process, {key}: {two[key] / one[key]:.3f}")


def _snapshot_line(buckets: int, per_bucket: int, names: int) -> bytes:
    """One worker's snapshot message with `buckets` non-empty buckets per histogram."""
    specs = tuple(RequestSpec(f"r{i}", "GET", "/") for i in range(names))
    rec = Recorder(specs, start=0.0)
    # Values 0.5% apart land in distinct buckets (they are 1/128 of a power of two wide).
    values = [0.001 * 1.008**k for k in range(buckets)]
    for name in range(names):
        for v in values:
            for _ in range(per_bucket):
                rec.request_started()
                rec.record(Sample(name, 200, NO_ERROR, v, v, 0, 0))
    snap = rec.snapshot(1.0)
    assert len(snap.histogram.to_dict()["index"]) == buckets
    return json.dumps({"snapshot": snapshot_to_wire(snap)}).encode()


def merge(args: argparse.Namespace) -> None:
    workers = args.workers
    print(f"per interval, {workers} workers, {args.names} request name(s): decode + merge")
    for buckets in (10, 100, 500, 2000):
        for per_bucket in (1, 1000):
            line = _snapshot_line(buckets, per_bucket, args.names)
            rounds = Rounds(workers)
            n = args.rounds
            # Best of 5: the machine is shared, and the fastest is the cost itself.
            per_round = math.inf
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(n):
                    for w in range(workers):
                        rounds.add(w, snapshot_from_wire(json.loads(line)["snapshot"]))
                per_round = min(per_round, (time.perf_counter() - t0) / n)
            requests = buckets * per_bucket * args.names * workers
            print(
                f"  {buckets:>5} buckets, {requests:>12,} requests/interval: "
                f"{per_round * 1e3:7.2f} ms per interval ({len(line):,} bytes per message)"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cpu")
    c.add_argument("--rate", type=int, default=3000)
    c.add_argument("-d", "--duration", default="20s")
    c.add_argument("-c", "--concurrency", type=int, default=None, help="closed model instead")
    c.add_argument("-n", "--requests", type=int, default=60000, help="with -c")
    c.add_argument("--repeat", type=int, default=3)
    c.add_argument("--server-core", type=int, default=0)
    m = sub.add_parser("merge")
    m.add_argument("--workers", type=int, default=2)
    m.add_argument("--names", type=int, default=1)
    m.add_argument("--rounds", type=int, default=50)
    args = p.parse_args()
    cpu(args) if args.what == "cpu" else merge(args)


if __name__ == "__main__":
    main()
