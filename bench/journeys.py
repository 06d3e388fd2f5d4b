"""Benchmark: what a Python journey step costs next to a plain request, and memory over a long run.

Not a test: nothing in `scripts/test` runs it. One local nginx (bench/run.py's
config, pinned to one core) answers every request; `ballista run` is measured
as a child process (CPU from its rusage, per request it sent). Cases, in one
session so their ratios compare like with like:

- `plain`: `ballista run URL -c 50` (the floor of this comparison);
- `step`: a journey of one step, `await session.get("/", name="step")`;
- `steps`: a journey of three steps with headers, a query and the body read;
- `soak` (with `--soak S`): a journey that sets a cookie and a variable per
  iteration, run for S seconds; RSS is sampled every second, so that memory
  flat over the run (cookie jars and variables do not grow) is seen, not assumed.

    .venv/bin/python bench/journeys.py              # about a minute
    .venv/bin/python bench/journeys.py --soak 120   # and the memory over two minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from run import Nginx, memory_kib, run_measured

HERE = Path(__file__).resolve().parent

STEP = """
from ballista import journey

@journey
async def one(session):
    await session.get("/", name="step")
"""

STEPS = """
from ballista import journey

@journey
async def three(session):
    r = await session.get("/", name="home", headers={"X-User": str(session.vu)})
    session.vars["seen"] = r.text
    await session.get("/items", name="items", params={"page": str(session.iteration % 3)})
    r = await session.post("/cart", name="cart", json={"item": session.iteration % 20, "n": 2})
    assert r.status == 200
"""

SOAK = """
from ballista import journey

@journey
async def soak(session):
    # A new cookie and a new variable every iteration: the jar is bounded (64), and
    # `vars` holds what the journey keeps (one key per name, overwritten).
    session.cookies.set(f"c{session.iteration}", "x" * 40)
    r = await session.get("/", name="step")
    session.vars["last"] = r.text
    session.vars["count"] = session.vars.get("count", 0) + 1
"""


def ballista(*argv: str, core: int) -> list[str]:
    taskset = shutil.which("taskset")
    pin = [taskset, "-c", str(core)] if taskset else []
    return [*pin, sys.executable, "-m", "ballista", "run", *argv]


def measure(name: str, argv: list[str], work: Path, duration: float) -> dict[str, float | str]:
    out = work / f"{name}.json"
    usage = run_measured(
        [*argv, "--json", str(out), "-q"],
        work / f"{name}.stdout",
        work / f"{name}.stderr",
        duration + 30,
    )
    if usage.exit_code not in (0, 1) or not out.exists():
        err = (work / f"{name}.stderr").read_text()[-2000:]
        raise SystemExit(f"{name}: ballista exited {usage.exit_code}:\n{err}")
    doc = json.loads(out.read_text())
    requests = doc["requests"]
    return {
        "case": name,
        "requests": requests,
        "failed": doc["failed"],
        "cpu_s": round(usage.cpu_s, 3),
        "cpu_us_per_request": round(usage.cpu_s / requests * 1e6, 2),
        "peak_rss_mb": round(usage.peak_rss_mb, 1),
    }


def soak(argv: list[str], work: Path, seconds: float) -> list[tuple[float, float]]:
    """RSS (MiB) of the run, sampled every second."""
    proc = subprocess.Popen(
        [*argv, "-q"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    start = time.monotonic()
    samples: list[tuple[float, float]] = []
    while proc.poll() is None:
        rss, _ = memory_kib(proc.pid)
        if rss:
            samples.append((time.monotonic() - start, rss / 1024))
        time.sleep(1.0)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"soak: ballista exited {proc.returncode}")
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per case (10)")
    p.add_argument("--runs", type=int, default=3, help="runs of each case; the median is kept")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU cases (soak only)")
    p.add_argument("--soak", type=float, default=0.0, help="seconds of the memory run (off)")
    p.add_argument("-c", "--concurrency", type=int, default=50)
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--client-core", type=int, default=1)
    ns = p.parse_args(argv)
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    taskset = shutil.which("taskset") or "taskset"
    with tempfile.TemporaryDirectory(prefix="ballista-journeys-") as tmp:
        work = Path(tmp)
        for name, text in (("step", STEP), ("steps", STEPS), ("soak", SOAK)):
            (work / f"{name}.py").write_text(text)
        nginx = Nginx(nginx_bin, taskset, work, ns.server_core)
        try:
            url = f"http://127.0.0.1:{nginx.h1_port}/"
            load = ["-c", str(ns.concurrency), "-d", f"{ns.duration}s"]
            cases = {
                "plain": ballista(url, *load, core=ns.client_core),
                "step": ballista("-f", str(work / "step.py"), url, *load, core=ns.client_core),
                "steps": ballista("-f", str(work / "steps.py"), url, *load, core=ns.client_core),
            }
            results: dict[str, list[dict[str, float | str]]] = {k: [] for k in cases}
            for run in range(0 if ns.no_cpu else ns.runs):
                for name, case in cases.items():  # interleaved: drift hits every case alike
                    results[name].append(measure(f"{name}-{run}", case, work, ns.duration))
            print(
                f"nginx {nginx.version}, {ns.concurrency} connections, {ns.duration:g}s x {ns.runs}"
            )
            print(f"  {'case':<6} {'requests':>10} {'CPU µs/request (runs)':>34}  peak RSS")
            medians: dict[str, float] = {}
            for name, rows in results.items() if not ns.no_cpu else ():
                per = [float(r["cpu_us_per_request"]) for r in rows]
                medians[name] = statistics.median(per)
                runs = ", ".join(f"{v:.1f}" for v in per)
                print(
                    f"  {name:<6} {int(statistics.median(int(r['requests']) for r in rows)):>10,}"
                    f" {medians[name]:>10.1f} ({runs})".ljust(52)
                    + f" {statistics.median(float(r['peak_rss_mb']) for r in rows):.1f} MB"
                )
            if medians:
                print(f"  step / plain  x{medians['step'] / medians['plain']:.2f} CPU per request")
                print(f"  steps / plain x{medians['steps'] / medians['plain']:.2f} CPU per request")
            if ns.soak > 0:
                # The plain run first: what a run's own bounded state (the timeline
                # fills up to its 720 points) adds over time, without journeys.
                for name, extra in (("plain", []), ("journey", ["-f", str(work / "soak.py")])):
                    argv_soak = ballista(
                        *extra, url, "-c", str(ns.concurrency), "-d", f"{ns.soak}s",
                        core=ns.client_core,
                    )  # fmt: skip
                    samples = soak(argv_soak, work, ns.soak)
                    marks = [s for s in samples if s[0] >= 5]
                    every = max(1, len(marks) // 8)
                    shown = ", ".join(f"{t:.0f}s {mb:.1f}" for t, mb in marks[::every])
                    print(
                        f"  soak {name:<7} {ns.soak:g}s, RSS in MB: {shown}; last {marks[-1][1]:.1f}"
                    )
        finally:
            nginx.stop()
    return 0


if __name__ == "__main__":
    os.chdir(HERE.parent)
    sys.exit(main())
