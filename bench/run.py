"""Benchmark: ballista, the floors of its own stack (bench/floor.py) and its peers (wrk,
h2load, locust, hey) against one local nginx: requests/s, CPU µs per request, peak RSS.

Run it with the project's venv: `.venv/bin/python bench/run.py [--duration 10] [--only ...]`.
See bench/README.md for what it measures and how to read the ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "latest.json"
GENERATORS = ("ballista", "floor-raw", "floor-h11", "floor-h2", "wrk", "h2load", "locust", "hey")
#: Ballista's own stack without Ballista (bench/floor.py): trio with canned bytes, bare h11, bare h2.
FLOORS = {"floor-raw": "raw", "floor-h11": "h11", "floor-h2": "h2"}
FLOOR_SCRIPT = Path(__file__).resolve().parent / "floor.py"
CASES = ("h1", "h2c", "mem", "startup")
CASE_TITLES = {
    "h1": "HTTP/1.1, 50 connections",
    "h2c": "h2c, 10 connections x 10 streams",
    "mem": "HTTP/1.1, 1,000 connections (memory)",
    "startup": "start-up: ballista run URL -n 1",
}
# Figures issue 14 asks ballista to reach; checked at the end.
TARGET_H1_CPU_RATIO_TO_RAW = 2.0
TARGET_H1_CPU_RATIO_TO_LOCUST = 0.4
TARGET_H2C_CPU_RATIO_TO_BARE_H2 = 0.6
TARGET_MEM_RSS_MB = 40.0
TARGET_STARTUP_CPU_S = 0.5
STARTUP_RUNS = 3
BODY = "ok\n"  # the small 200 body nginx returns
# A generator gets this long past its own duration before it is killed.
GRACE_S = 30.0
FD_LIMIT = 65536

HINTS = {
    "nginx": "apt-get install nginx",
    "taskset": "apt-get install util-linux",
    "wrk": "apt-get install wrk",
    "h2load": "apt-get install nghttp2-client",
    "locust": ".venv/bin/pip install -e '.[bench]'",
    "hey": "apt-get install hey (optional)",
    "ballista": "scripts/test (it sets up .venv with ballista installed)",
    **{name: "scripts/test (bench/floor.py runs in the project's .venv)" for name in FLOORS},
}

LOCUSTFILE = """\
from locust import FastHttpUser, constant, task


class Bench(FastHttpUser):
    wait_time = constant(0)

    @task
    def get(self) -> None:
        self.client.get("/")
"""


class BenchError(Exception):
    """The benchmark itself cannot go on (nginx will not start, no free core...)."""


@dataclass
class Result:
    """One generator's run in one case."""

    case: str
    generator: str
    command: list[str]
    ok: bool = False
    requests: int = 0
    failed: int = 0
    rps: float = 0.0
    cpu_s: float = 0.0
    cpu_us_per_request: float | None = None
    peak_rss_mb: float = 0.0
    wait4_maxrss_mb: float = 0.0
    wall_s: float = 0.0
    exit_code: int | None = None
    note: str = ""
    runs: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Usage:
    """What os.wait4 reports for a finished child (and the children it waited for)."""

    exit_code: int
    cpu_s: float
    peak_rss_mb: float
    wait4_maxrss_mb: float
    wall_s: float
    timed_out: bool


@dataclass(frozen=True)
class Parsed:
    """Figures read from a generator's own output."""

    requests: int
    failed: int
    rps: float | None


@dataclass(frozen=True)
class Ratio:
    """ballista's figure divided by a peer's in the same case (None: not comparable)."""

    peer: str
    cpu_per_request: float | None
    peak_rss: float | None
    rps: float | None


@dataclass(frozen=True)
class Target:
    """One of the issue's targets and whether ballista met it (None: not measured)."""

    target: str
    limit: str
    value: float | None
    ok: bool | None


@dataclass(frozen=True)
class Tools:
    nginx: str
    taskset: str
    found: dict[str, list[str]]  # generator -> command prefix


def find_tools(only: Sequence[str]) -> Tools:
    """Locate nginx, taskset and every selected generator; say what is missing and how to get it."""
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    taskset = shutil.which("taskset")
    fatal = [name for name, path in (("nginx", nginx), ("taskset", taskset)) if path is None]
    if fatal:
        for name in fatal:
            print(f"missing: {name} (install: {HINTS[name]})", file=sys.stderr)
        raise BenchError("cannot run without " + ", ".join(fatal))
    assert nginx is not None and taskset is not None
    venv_bin = Path(sys.executable).parent
    found: dict[str, list[str]] = {}
    for name in only:
        if name in FLOORS:
            found[name] = [sys.executable, str(FLOOR_SCRIPT), FLOORS[name]]
            continue
        if name in ("ballista", "locust"):
            beside = venv_bin / name
            in_repo = REPO / ".venv" / "bin" / name
            path = next(
                (str(p) for p in (beside, in_repo) if os.access(p, os.X_OK)), shutil.which(name)
            )
        else:
            path = shutil.which(name)
        if path is None:
            print(f"missing: {name} (install: {HINTS[name]}); skipping it", file=sys.stderr)
        else:
            found[name] = [path]
    return Tools(nginx=nginx, taskset=taskset, found=found)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def nginx_version(nginx: str) -> tuple[int, ...]:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise BenchError(f"cannot read nginx's version from {out.strip()!r}")
    return tuple(int(g) for g in match.groups())


def nginx_config(
    workdir: Path, h1_port: int, h2_port: int, core: int, version: Sequence[int]
) -> str:
    """One worker pinned to `core`, no logging, a tiny 200 on both ports."""
    # `listen ... http2` became the `http2 on;` directive in nginx 1.25.1.
    if tuple(version) >= (1, 25, 1):
        h2_listen, h2_directive = f"listen 127.0.0.1:{h2_port};", "http2 on;"
    else:
        h2_listen, h2_directive = f"listen 127.0.0.1:{h2_port} http2;", ""
    mask = "1" + "0" * core
    temp = "\n".join(
        f"    {kind}_temp_path {workdir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    location = f"""\
        location / {{
            default_type text/plain;
            return 200 "{BODY.strip()}\\n";
        }}"""
    return f"""\
daemon off;
worker_processes 1;
worker_cpu_affinity {mask};
worker_rlimit_nofile {FD_LIMIT};
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;

events {{
    worker_connections 8192;
    multi_accept on;
}}

http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{temp}

    server {{
        listen 127.0.0.1:{h1_port};
{location}
    }}

    server {{
        {h2_listen}
        {h2_directive}
        http2_max_concurrent_streams 128;
{location}
    }}
}}
"""


class Nginx:
    """nginx in the foreground as our child, on a config written to a temp dir."""

    def __init__(self, nginx: str, taskset: str, workdir: Path, core: int) -> None:
        self.workdir = workdir
        self.h1_port = free_port()
        self.h2_port = free_port()
        conf = workdir / "nginx.conf"
        version = nginx_version(nginx)
        conf.write_text(nginx_config(workdir, self.h1_port, self.h2_port, core, version))
        self.version = ".".join(map(str, version))
        base = [nginx, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise BenchError(f"nginx rejects the config {conf}:\n{check.stderr.strip()}")
        self.proc = subprocess.Popen(
            [taskset, "-c", str(core), *base],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10.0
        for port in (self.h1_port, self.h2_port):
            while True:
                if self.proc.poll() is not None:
                    raise BenchError(f"nginx exited at start:\n{self.error_log()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                    break
                except OSError as e:
                    if time.monotonic() > deadline:
                        raise BenchError(
                            f"nginx not listening on {port}:\n{self.error_log()}"
                        ) from e
                    time.sleep(0.05)

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no error log)"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def process_tree(pid: int) -> list[int]:
    """pid and its live descendants, from /proc/PID/task/TID/children."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except OSError:
            continue  # exited meanwhile
    return tree


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of pid in KiB; (0, 0) once it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, hwm


def run_measured(argv: list[str], stdout: Path, stderr: Path, limit_s: float) -> Usage:
    """Run argv to its end; CPU from its rusage (os.wait4: it and every child it waited for).

    Peak memory: wait4's ru_maxrss never reads below the high-water mark of the
    process that forked the child (an exec'd program inherits it: here Python's,
    ~17 MB), which would hide what a small C generator really uses. So the tree
    is also sampled from /proc: each sample takes the largest VmHWM (a
    high-water mark misses no spike between samples) or the sum of VmRSS over
    the tree, whichever is larger. ru_maxrss above our own high-water mark is the
    child's own and exact (it catches a spike after the last sample, such as
    h2load's statistics at exit), so it wins when it is there. The child is
    killed (SIGTERM, then SIGKILL) if it runs past `limit_s`.
    """
    start = time.monotonic()
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    timed_out = False
    term_sent_at: float | None = None
    peak_kib = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid != 0:
            break
        samples = [memory_kib(p) for p in process_tree(proc.pid)]
        peak_kib = max(peak_kib, sum(rss for rss, _ in samples), *(hwm for _, hwm in samples))
        now = time.monotonic()
        if term_sent_at is None and now - start > limit_s:
            timed_out = True
            proc.send_signal(signal.SIGTERM)
            term_sent_at = now
        elif term_sent_at is not None and now - term_sent_at > 5.0:
            proc.send_signal(signal.SIGKILL)
        time.sleep(0.05)
    wall = time.monotonic() - start
    exit_code = os.waitstatus_to_exitcode(status)
    proc.returncode = exit_code  # reaped here: keep Popen from waiting again
    inherited_floor_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if usage.ru_maxrss > inherited_floor_kib:
        peak_kib = max(peak_kib, usage.ru_maxrss)
    return Usage(
        exit_code=exit_code,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=peak_kib / 1024.0,
        wait4_maxrss_mb=usage.ru_maxrss / 1024.0,
        wall_s=wall,
        timed_out=timed_out,
    )


def parse_wrk(stdout: str, _files: Path) -> Parsed:
    done = re.search(r"(\d+) requests in", stdout)
    if done is None:
        raise ValueError("no 'N requests in' line")
    failed = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", stdout
    )
    if socket_errors:
        failed += sum(int(g) for g in socket_errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", stdout)
    if non2xx:
        failed += int(non2xx.group(1))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", stdout)
    return Parsed(int(done.group(1)), failed, float(rps.group(1)) if rps else None)


def parse_h2load(stdout: str, _files: Path) -> Parsed:
    line = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        stdout,
    )
    if line is None:
        raise ValueError("no 'requests: ... done' line")
    if "h2c" not in stdout:
        raise ValueError("h2load did not speak h2c")
    rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", stdout)
    failed = int(line.group(2)) + int(line.group(3)) + int(line.group(4))
    return Parsed(int(line.group(1)), failed, float(rps.group(1)) if rps else None)


def parse_hey(stdout: str, _files: Path) -> Parsed:
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", stdout)
    if not codes:
        raise ValueError("no status code distribution")
    errors = re.search(r"Error distribution:\n((?:\s+\[\d+\].*\n?)+)", stdout)
    error_count = sum(int(n) for n in re.findall(r"\[(\d+)\]", errors.group(1))) if errors else 0
    responses = sum(int(n) for _, n in codes)
    bad = sum(int(n) for code, n in codes if not 200 <= int(code) < 400)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", stdout)
    return Parsed(responses + error_count, bad + error_count, float(rps.group(1)) if rps else None)


def parse_locust(_stdout: str, files: Path) -> Parsed:
    with (files / "locust_stats.csv").open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("Name") == "Aggregated"]
    if not rows:
        raise ValueError("no Aggregated row in locust_stats.csv")
    row = rows[0]
    return Parsed(int(row["Request Count"]), int(row["Failure Count"]), float(row["Requests/s"]))


def parse_ballista(_stdout: str, files: Path) -> Parsed:
    summary = json.loads((files / "ballista.json").read_text())
    if not isinstance(summary, dict) or not isinstance(summary.get("requests"), int):
        raise ValueError("summary has no integer 'requests'")
    failed = summary.get("failed", 0)
    rps = summary.get("rps")
    return Parsed(
        summary["requests"],
        failed if isinstance(failed, int) else 0,
        float(rps) if isinstance(rps, int | float) else None,
    )


def parse_floor(stdout: str, _files: Path) -> Parsed:
    done = re.search(r"requests: (\d+)", stdout)
    if done is None:
        raise ValueError("no 'requests: N' line")
    return Parsed(int(done.group(1)), 0, None)


PARSERS: dict[str, Callable[[str, Path], Parsed]] = {
    "ballista": parse_ballista,
    "floor-raw": parse_floor,
    "floor-h11": parse_floor,
    "floor-h2": parse_floor,
    "wrk": parse_wrk,
    "h2load": parse_h2load,
    "locust": parse_locust,
    "hey": parse_hey,
}


class Bench:
    def __init__(self, tools: Tools, nginx: Nginx, workdir: Path, args: argparse.Namespace) -> None:
        self.tools = tools
        self.nginx = nginx
        self.workdir = workdir
        self.duration: int = args.duration
        self.client_core: int = args.client_core
        self.locustfile = workdir / "locustfile.py"
        self.locustfile.write_text(LOCUSTFILE)

    def h1_url(self) -> str:
        return f"http://127.0.0.1:{self.nginx.h1_port}/"

    def h2_url(self) -> str:
        return f"http://127.0.0.1:{self.nginx.h2_port}/"

    def command(self, generator: str, case: str, files: Path) -> list[str] | None:
        """The command line of `generator` for `case`, or None if it does not take part."""
        d = self.duration
        h1, h2 = self.h1_url(), self.h2_url()
        tool = self.tools.found[generator]
        conns = {"h1": 50, "mem": 1000}.get(case)
        if generator == "ballista":
            out = ["--json", str(files / "ballista.json")]
            if case == "h2c":
                return [
                    *tool,
                    "run",
                    h2,
                    "--http2",
                    "-c",
                    "100",
                    "--connections",
                    "10",
                    "-d",
                    f"{d}s",
                    *out,
                ]
            if case == "startup":
                return [*tool, "run", h1, "-n", "1", *out]
            assert conns is not None
            return [
                *tool,
                "run",
                h1,
                "-c",
                str(conns),
                "--connections",
                str(conns),
                "-d",
                f"{d}s",
                *out,
            ]
        if case == "startup":
            return None
        if generator in FLOORS:
            mode = FLOORS[generator]
            if case == "h2c" and mode == "h2":
                return [*tool, h2, "-c", "10", "-m", "10", "-d", str(d)]
            if case == "h1" and mode in ("raw", "h11"):
                return [*tool, h1, "-c", "50", "-d", str(d)]
            if case == "mem" and mode == "h11":
                return [*tool, h1, "-c", "1000", "-d", str(d)]
            return None
        if generator == "h2load":
            if case != "h2c":
                return None
            return [*tool, "-c", "10", "-m", "10", "-t", "1", "-D", str(d), h2]
        if conns is None:  # the rest speak HTTP/1.1 only
            return None
        if generator == "wrk":
            return [*tool, "-t", "1", "-c", str(conns), "-d", f"{d}s", h1]
        if generator == "locust":
            return [
                *tool,
                "-f",
                str(self.locustfile),
                "--headless",
                "-H",
                h1.rstrip("/"),
                "-u",
                str(conns),
                "-r",
                str(conns),
                "--run-time",
                f"{d}s",
                "--only-summary",
                "--loglevel",
                "WARNING",
                "--csv",
                str(files / "locust"),
            ]
        if generator == "hey":
            if case == "mem":
                return None
            return [*tool, "-z", f"{d}s", "-c", str(conns), h1]
        raise AssertionError(generator)

    def run_one(self, case: str, generator: str) -> Result | None:
        files = self.workdir / f"{case}-{generator}"
        files.mkdir(exist_ok=True)
        cmd = self.command(generator, case, files)
        if cmd is None:
            return None
        result = Result(case=case, generator=generator, command=cmd)
        runs = STARTUP_RUNS if case == "startup" else 1
        print(f"  {generator:<9} {' '.join(cmd)}", flush=True)
        usages: list[Usage] = []
        parsed: Parsed | None = None
        for _ in range(runs):
            usage = run_measured(
                [self.tools.taskset, "-c", str(self.client_core), *cmd],
                files / "stdout",
                files / "stderr",
                limit_s=self.duration + GRACE_S,
            )
            usages.append(usage)
            result.exit_code = usage.exit_code
            stdout = (files / "stdout").read_text(errors="replace")
            if usage.timed_out:
                result.note = f"killed after {self.duration + GRACE_S:.0f} s"
                break
            try:
                parsed = PARSERS[generator](stdout, files)
            except (OSError, ValueError, KeyError) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                result.note = f"exit {usage.exit_code}, no figures ({why})"
                break
        if not self.nginx.alive():
            raise BenchError(f"nginx died during {generator}/{case}:\n{self.nginx.error_log()}")
        if parsed is None or len(usages) < runs:
            stderr = (files / "stderr").read_text(errors="replace").strip()
            print(f"  {generator} failed: {result.note}", file=sys.stderr)
            if stderr:
                print("    " + "\n    ".join(stderr.splitlines()[-15:]), file=sys.stderr)
            return result
        # Several runs (start-up): the median one by CPU stands for them.
        usage = sorted(usages, key=lambda u: u.cpu_s)[len(usages) // 2]
        result.ok = True
        result.requests = parsed.requests
        result.failed = parsed.failed
        result.cpu_s = usage.cpu_s
        result.wall_s = usage.wall_s
        result.peak_rss_mb = max(u.peak_rss_mb for u in usages)
        result.wait4_maxrss_mb = max(u.wait4_maxrss_mb for u in usages)
        result.runs = [u.cpu_s for u in usages] if runs > 1 else []
        result.rps = parsed.rps if parsed.rps is not None else parsed.requests / usage.wall_s
        if parsed.requests > 0:
            result.cpu_us_per_request = usage.cpu_s / parsed.requests * 1e6
        if usage.exit_code != 0:
            result.note = f"exit {usage.exit_code}"
        if parsed.failed:
            result.note = (result.note + "; " if result.note else "") + f"{parsed.failed} failed"
        return result


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(case: str, results: list[Result]) -> None:
    print(f"\n{CASE_TITLES[case]}")
    if case == "startup":
        print(f"  {'generator':<9} {'CPU s':>7} {'peak RSS MB':>12}  CPU s of each run")
    else:
        print(
            f"  {'generator':<9} {'requests':>10} {'req/s':>10} {'CPU µs/req':>11} "
            f"{'peak RSS MB':>12}  note"
        )
    for r in results:
        if not r.ok:
            print(f"  {r.generator:<9} failed: {r.note}")
        elif case == "startup":
            runs = ", ".join(f"{c:.3f}" for c in r.runs)
            print(
                f"  {r.generator:<9} {r.cpu_s:>7.3f} {r.peak_rss_mb:>12.1f}  {runs}  {r.note}".rstrip()
            )
        else:
            print(
                f"  {r.generator:<9} {r.requests:>10,} {r.rps:>10,.0f} "
                f"{fmt(r.cpu_us_per_request, '>11,.1f')} {r.peak_rss_mb:>12.1f}  {r.note}".rstrip()
            )


def ratios(results: list[Result]) -> list[Ratio]:
    """ballista / peer for CPU per request, peak RSS and requests/s (CPU, RSS: lower is better)."""
    ours = next((r for r in results if r.generator == "ballista" and r.ok), None)
    if ours is None:
        return []
    return [
        Ratio(
            peer=peer.generator,
            cpu_per_request=divide(ours.cpu_us_per_request, peer.cpu_us_per_request),
            peak_rss=divide(ours.peak_rss_mb, peer.peak_rss_mb),
            rps=divide(ours.rps, peer.rps),
        )
        for peer in results
        if peer.generator != "ballista" and peer.ok
    ]


def divide(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def print_ratios(rows: list[Ratio]) -> None:
    for row in rows:
        print(
            f"  ballista / {row.peer:<7} CPU per request x{fmt(row.cpu_per_request, '.2f')}   "
            f"peak RSS x{fmt(row.peak_rss, '.2f')}   req/s x{fmt(row.rps, '.2f')}"
        )


def check_targets(by_case: dict[str, list[Result]]) -> list[Target]:
    """The issue's targets for ballista, each with the measured value (None: not measured)."""

    def get(case: str, generator: str) -> Result | None:
        return next((r for r in by_case.get(case, []) if r.generator == generator and r.ok), None)

    def target(name: str, limit: str, value: float | None, ok: Callable[[float], bool]) -> Target:
        return Target(name, limit, value, None if value is None else ok(value))

    ours, raw, locust, h2c, bare_h2, mem, start = (
        get("h1", "ballista"),
        get("h1", "floor-raw"),
        get("h1", "locust"),
        get("h2c", "ballista"),
        get("h2c", "floor-h2"),
        get("mem", "ballista"),
        get("startup", "ballista"),
    )

    def cpu_ratio(a: Result | None, b: Result | None) -> float | None:
        return divide(a.cpu_us_per_request if a else None, b.cpu_us_per_request if b else None)

    return [
        target(
            "HTTP/1.1 CPU/request, ballista/raw floor",
            f"<= {TARGET_H1_CPU_RATIO_TO_RAW}",
            cpu_ratio(ours, raw),
            lambda v: v <= TARGET_H1_CPU_RATIO_TO_RAW,
        ),
        target(
            "HTTP/1.1 CPU/request, ballista/locust",
            f"<= {TARGET_H1_CPU_RATIO_TO_LOCUST}",
            cpu_ratio(ours, locust),
            lambda v: v <= TARGET_H1_CPU_RATIO_TO_LOCUST,
        ),
        target(
            "h2c 10x10 CPU/request, ballista/bare h2",
            f"<= {TARGET_H2C_CPU_RATIO_TO_BARE_H2}",
            cpu_ratio(h2c, bare_h2),
            lambda v: v <= TARGET_H2C_CPU_RATIO_TO_BARE_H2,
        ),
        target(
            "peak RSS MB at 1,000 connections",
            f"<= {TARGET_MEM_RSS_MB:g}",
            mem.peak_rss_mb if mem else None,
            lambda v: v <= TARGET_MEM_RSS_MB,
        ),
        target(
            "start-up CPU s (median)",
            f"< {TARGET_STARTUP_CPU_S:g}",
            start.cpu_s if start else None,
            lambda v: v < TARGET_STARTUP_CPU_S,
        ),
    ]


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (inherited by nginx and the generators); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for new_hard in (max(hard, wanted), hard):
        try:
            new_soft = wanted if new_hard == resource.RLIM_INFINITY else min(wanted, new_hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, new_soft), new_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tool_versions(tools: Tools) -> dict[str, str]:
    probes = {"wrk": ["-v"], "h2load": ["--version"], "locust": ["--version"], "hey": None}
    out: dict[str, str] = {}
    for name, cmd in tools.found.items():
        flags = probes.get(name)
        if flags is None:
            continue
        proc = subprocess.run([*cmd, *flags], capture_output=True, text=True, check=False)
        text = (proc.stdout + proc.stderr).strip().splitlines()
        out[name] = text[0] if text else ""
    return out


def parse_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in items if s not in allowed]
    if unknown or not items:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}"
        )
    return items


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="ballista vs wrk, h2load, locust (and hey) on a local nginx: "
        "req/s, CPU µs per request, peak RSS."
    )
    p.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    p.add_argument(
        "--only",
        type=lambda s: parse_list(s, GENERATORS, "generator"),
        default=list(GENERATORS),
        help="comma-separated generators (default: all of " + ",".join(GENERATORS) + ")",
    )
    p.add_argument(
        "--cases",
        type=lambda s: parse_list(s, CASES, "case"),
        default=list(CASES),
        help="comma-separated cases (default: " + ",".join(CASES) + ")",
    )
    p.add_argument("--server-core", type=int, default=0, help="core for nginx (default 0)")
    p.add_argument("--client-core", type=int, default=1, help="core for generators (default 1)")
    p.add_argument("--output", type=Path, default=RESULTS, help=f"JSON (default {RESULTS})")
    args = p.parse_args(argv)
    if not 1 <= args.duration <= 600:
        p.error("--duration must be between 1 and 600 seconds")
    cores = os.sched_getaffinity(0)
    for flag, core in (("--server-core", args.server_core), ("--client-core", args.client_core)):
        if core not in cores:
            p.error(f"{flag} {core}: not an available core (available: {sorted(cores)})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.server_core == args.client_core:
        print("warning: nginx and the generators share one core", file=sys.stderr)
    try:
        tools = find_tools(args.only)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    fd_limit = raise_fd_limit(FD_LIMIT)
    if fd_limit < 2500 and "mem" in args.cases:
        print(
            f"warning: only {fd_limit} file descriptors: 1,000 connections may fail",
            file=sys.stderr,
        )
    # pip compiles an installed package's bytecode; an editable checkout run with
    # PYTHONDONTWRITEBYTECODE would compile ballista's sources again at every start.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "ballista"), str(FLOOR_SCRIPT)],
        check=False,
    )
    # The harness itself sleeps on the server's core, leaving the client's core to generators.
    os.sched_setaffinity(0, {args.server_core})

    by_case: dict[str, list[Result]] = {}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="ballista-bench-") as tmp:
        workdir = Path(tmp)
        try:
            nginx = Nginx(tools.nginx, tools.taskset, workdir, args.server_core)
        except BenchError as e:
            print(f"bench: {e}", file=sys.stderr)
            return 2
        try:
            print(
                f"nginx {nginx.version}: HTTP/1.1 on {nginx.h1_port}, h2c on {nginx.h2_port}, "
                f"core {args.server_core}; generators on core {args.client_core}, "
                f"{args.duration} s each"
            )
            bench = Bench(tools, nginx, workdir, args)
            for case in args.cases:
                print(f"\n== {CASE_TITLES[case]}", flush=True)
                results: list[Result] = []
                for generator in args.only:
                    if generator not in tools.found:
                        continue
                    result = bench.run_one(case, generator)
                    if result is not None:
                        results.append(result)
                    time.sleep(0.5)  # let closed connections drain between generators
                by_case[case] = results
        except BenchError as e:
            print(f"bench: {e}", file=sys.stderr)
            return 1
        finally:
            nginx.stop()

    print("\n" + "=" * 78)
    report: dict[str, object] = {
        "schema": "ballista.bench/1",
        "started_at": started,
        "duration_s": args.duration,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "server_core": args.server_core,
            "client_core": args.client_core,
        },
        "nginx": nginx.version,
        "tools": tool_versions(tools),
        "cases": {},
    }
    cases: dict[str, object] = {}
    for case, results in by_case.items():
        if not results:
            continue
        print_table(case, results)
        rows = ratios(results)
        print_ratios(rows)
        cases[case] = {
            "results": [asdict(r) for r in results],
            "ratios": [asdict(r) for r in rows],
        }
    report["cases"] = cases
    checks = check_targets(by_case)
    report["targets"] = [asdict(c) for c in checks]
    print("\nTargets for ballista (issue 14)")
    for c in checks:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[c.ok]
        print(f"  {c.target:<40} {c.limit:>7}  measured {fmt(c.value, '>8.3g')}  {verdict}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
