"""What a TOML journey step costs against a plain request: CPU per request of `ballista run`.

Runs against one local nginx (one worker on its own core) that answers every
path with the same small JSON body. Each case's `ballista run` runs at the same
time as a plain one, both pinned to the client's core, and is quoted against
it: CPU from each process's rusage (less that of a one-request run: start-up)
divided by the requests its JSON summary counts, the ratio of the two, and the
median of `--repeat` such pairs with its quartiles. This shared VM's speed
drifts by a third from minute to minute; two runs at the same moment on the
same core share it, runs one after the other do not. `plain` beside `plain`
is the control: it shows what the method itself gives (1.00, quartiles within
about 0.01). The cases:

- `plain`: `ballista run URL -c C -d D`, one request over and over;
- `flow`: a one-step `[[flows]]` file: an untemplated GET, no extraction
  (what running a journey costs by itself);
- `templated`: the same step with a templated path and header (a data
  column and an earlier extraction) and one `json:` extraction;
- `steps`: a flow of five such steps: what a step costs once the iteration's
  own work (its accounts, its data row, its duration) is shared by five.

Then the compiled steps alone, in this process, against a session that
answers at once with the same body (no I/O): what templating and extracting
add to a step, whatever the machine's load. And whole runs of the three
cases in this process over connections that answer at once: the engine's
and the runtime's own work, without the kernel's and the parser's.

Issue 16 asks a templated step with one extraction to cost at most 1.5x
`plain`: `steps` measures the step, `templated` the step and its iteration.
Not a test: nothing in `scripts/test` runs it. Load goes only to 127.0.0.1,
each run bounded.

    .venv/bin/python bench/journey_cost.py [--duration 10] [--concurrency 50] [--repeat 3]
        [--rate 4000]

With `--rate R` every pair also runs in the open model at R requests a second
each (the `steps` flow's iterations at R/5): the CPU a request costs at a rate
the machine keeps up with, where the event loop wakes for each request rather
than finding many ready at once.

With `--instructions` every case also runs under valgrind (cachegrind, no cache
simulation) against the same nginx, twice (`-n 2000` and `-n 6000` requests'
worth): the machine instructions the client executes per request, from the
difference of the two runs (start-up cancels out). Unlike CPU time, that count
does not drift with the VM's neighbours: the same code gives the same figure
within about 1 %. It counts user space only (the kernel's share of a request,
its system calls, is the same for every case), and an instruction of journey
code need not take as long as one of the plain loop (fewer of them run per
cycle when more code is touched): it is a second figure, not the CPU figure.
Needs valgrind (`apt install valgrind`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BODY = '{"token": "t-8f14e45f", "items": [{"id": 7, "name": "anvil"}]}'
CASES = ("plain", "flow", "templated", "steps")
#: templated steps in the `steps` case's one flow
STEPS = 5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_nginx(nginx: str, workdir: Path, port: int, pin: list[str]) -> subprocess.Popen[bytes]:
    temp = "\n".join(
        f"    {kind}_temp_path {workdir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    body = BODY.replace('"', '\\"')
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
{temp}
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type application/json; return 200 "{body}"; }}
    }}
}}
"""
    )
    proc = subprocess.Popen(
        [*pin, nginx, "-p", str(workdir), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log = (workdir / "error.log").read_text()
                raise SystemExit(f"nginx did not start: {log}") from None
            time.sleep(0.05)


def scenario(case: str, base: str, users: Path) -> str:
    head = f'name = "{case}"\nbase_url = "{base}"\n'
    if case == "flow":
        return head + '[[flows]]\nname = "f"\n[[flows.steps]]\nname = "get"\npath = "/api/items"\n'
    return (
        head
        + f'[data]\nfile = "{users.name}"\n'
        + '[setup]\n[[setup.steps]]\nname = "login"\npath = "/api/login"\n'
        + 'extract = { token = "json:token" }\n'
        + '[[flows]]\nname = "f"\n'
        + "".join(
            f'[[flows.steps]]\nname = "get{i}"\n'
            + 'path = "/api/items/{{ user }}"\n'
            + 'headers = { Authorization = "Bearer {{ token }}" }\n'
            + 'extract = { item = "json:items.0.id" }\n'
            for i in range(STEPS if case == "steps" else 1)
        )
    )


def run_command(case: str, base: str, users: Path, summary: Path) -> list[str]:
    """`ballista run` for `case` against `base`, its JSON summary to `summary` (a
    flow's TOML file is written beside the users' data file)."""
    command = [sys.executable, "-m", "ballista", "run"]
    if case == "plain":
        command += [f"{base}/api/items"]
    else:
        toml = users.parent / f"{case}.toml"
        toml.write_text(scenario(case, base, users))
        command += ["-f", str(toml)]
    return [*command, "--json", str(summary)]


def measure(runs: list[tuple[list[str], Path]], limit_s: float) -> list[tuple[float, int]]:
    """Start every (command, its JSON summary) at once; when all have ended, each one's
    (CPU seconds of the process and its children, requests in its summary)."""
    procs = [
        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for argv, _ in runs
    ]
    usages: dict[int, tuple[int, Any]] = {}
    start = time.monotonic()
    while len(usages) < len(procs):
        for proc in procs:
            if proc.pid in usages:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid != 0:
                usages[proc.pid] = (status, usage)
            elif time.monotonic() - start > limit_s:
                proc.send_signal(signal.SIGKILL)
        time.sleep(0.05)
    out = []
    for proc, (argv, summary) in zip(procs, runs, strict=True):
        status, usage = usages[proc.pid]
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{err}")
        doc = json.loads(summary.read_text())
        if doc["failed"]:
            raise SystemExit(f"{summary}: {doc['failed']} failed requests: not a fair comparison")
        if doc.get("dropped"):
            print(f"  ({doc['dropped']} arrivals dropped: more than this run kept up with)")
        out.append((usage.ru_utime + usage.ru_stime, int(doc["requests"])))
    return out


class _Answer:
    """The response an in-process session gives every step (core.journey.Response)."""

    status = 200
    error = None
    elapsed = 0.001
    headers: dict[str, str] = {"content-type": "application/json"}
    content = BODY.encode()
    text = BODY

    def header_values(self, name: str) -> list[str]:
        value = self.headers.get(name.lower())
        return [] if value is None else [value]

    def json(self) -> Any:
        return json.loads(self.content)


class _Session:
    """Answers at once: what is left is the compiled step's own work."""

    vu = 0
    iteration = 0

    def __init__(self) -> None:
        self.vars: dict[str, Any] = {}
        self.answer = _Answer()

    async def request(self, method: str, path: str, **kw: Any) -> _Answer:
        return self.answer

    async def sleep(self, seconds: float) -> None:
        return None


def in_process(users: Path, rounds: int = 7, n: int = 20_000) -> dict[str, float]:
    """CPU µs per iteration of the `flow` and `templated` steps with no I/O (best of rounds)."""
    import trio

    from ballista.core.scenario import read_scenario_file

    best: dict[str, float] = {}

    async def main() -> None:
        for _ in range(rounds):
            for case in ("flow", "templated", "steps"):
                toml = users.parent / f"{case}-in-process.toml"
                toml.write_text(scenario(case, "http://127.0.0.1:9", users))
                journeys = read_scenario_file(str(toml)).journeys
                assert journeys is not None
                session = _Session()
                if journeys.setup is not None:
                    await journeys.setup(session)  # type: ignore[arg-type]
                flow = journeys.flows[0].fn
                start = time.process_time()
                for _ in range(n):
                    await flow(session)  # type: ignore[arg-type]
                cost = (time.process_time() - start) / n * 1e6
                best[case] = min(best.get(case, cost), cost)

    trio.run(main)
    return best


#: the response headers nginx sends in the runs above, kept by the runtime's capture
_NGINX_HEADERS = (
    (b"server", b"nginx"),
    (b"date", b"Tue, 01 Dec 2026 00:00:00 GMT"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
    (b"connection", b"keep-alive"),
)


class _AtOnce:
    """A connection that answers every request at once (one checkpoint), filling a
    step's capture as a connection would: what is left is the engine's own work."""

    multiplexed = False
    shared = False
    retry_after = None

    async def request(self, req: Any, deadline: Any, capture: Any = None) -> tuple[int, ...]:
        import trio

        await trio.lowlevel.checkpoint()
        if capture is not None:
            capture.reset()
            capture.raw_headers.extend(_NGINX_HEADERS)
            capture.add_body(BODY.encode())
        return 200, 0, 100, 200

    async def aclose(self) -> None:
        return None


def runtime_alone(users: Path, rounds: int = 3, n: int = 40_000) -> dict[str, float]:
    """CPU µs per request of whole runs (engine, runtime, recorder) over connections
    that answer at once: the three cases with no I/O (best of rounds)."""
    import dataclasses

    import trio

    from ballista.cli.main import build_parser
    from ballista.cli.run import config_from_args
    from ballista.core.scenario import read_scenario_file
    from ballista.engine.engine import Engine

    base = "http://127.0.0.1:9"
    argv = ["run", f"{base}/api/items", "-c", "50", "-n", str(n)]
    config = config_from_args(build_parser(["run"]).parse_args(argv))
    best: dict[str, float] = {}
    for _ in range(rounds):
        for case in CASES:
            run_config = config
            if case != "plain":
                toml = users.parent / f"{case}-at-once.toml"
                toml.write_text(scenario(case, base, users))
                journeys = read_scenario_file(str(toml)).journeys
                run_config = dataclasses.replace(config, journeys=journeys)
            engine = Engine(run_config, connection_factory=lambda _: _AtOnce())  # type: ignore[arg-type,return-value]
            start = time.process_time()
            final = trio.run(engine.run)
            cost = (time.process_time() - start) / final.requests * 1e6
            best[case] = min(best.get(case, cost), cost)
    return best


def instructions(pin: list[str], command: list[str], summary: Path, case: str) -> tuple[int, int]:
    """(instructions a request, requests of the longer run): `command` under valgrind
    at two sizes, the difference of the two runs' counts over that of their requests."""
    counts: list[tuple[int, int]] = []
    # A `steps` iteration is five requests: -n counts iterations for flows.
    per = STEPS if case == "steps" else 1
    for n in (2000, 6000):
        argv = [
            *pin,
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            *command,
            "-n",
            str(n // per),
            "--timeout",
            "60s",
            # Snapshots come once a second of wall time, and a run under valgrind
            # lasts fifty times longer: one at the end, as in a real run's share.
            "--interval",
            "1h",
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        found = re.search(r"I\s+refs:\s+([\d,]+)", proc.stderr)
        if proc.returncode not in (0, 1) or found is None:
            raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        doc = json.loads(summary.read_text())
        if doc["failed"]:
            raise SystemExit(f"{case}: {doc['failed']} failed requests under valgrind")
        counts.append((int(found.group(1).replace(",", "")), int(doc["requests"])))
    (small, small_n), (large, large_n) = counts
    return (large - small) // (large_n - small_n), large_n


def report(runs: list[tuple[str, float, float]]) -> None:
    """Each case's median CPU per request, and the median (with quartiles) of its
    ratios to the plain run beside it (`plain` beside `plain`: the method's own
    error)."""
    for case in CASES:
        mine = [(cost, beside) for c, cost, beside in runs if c == case]
        if not mine:
            continue
        ratios = [cost / beside for cost, beside in mine]
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        print(
            f"{case:>9}: {statistics.median(c for c, _ in mine):6.1f} µs CPU/request (median), "
            f"{statistics.median(ratios):.2f}x the plain run beside it (median of "
            f"{len(ratios)}; quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--concurrency", type=int, default=50, help="virtual users (50)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each case, each beside a plain run (3)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="also run every case at this many requests/s (open model); 0: do not",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count each case's instructions a request under valgrind",
    )
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    args = parser.parse_args(argv)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    taskset = shutil.which("taskset")

    def pin(core: int) -> list[str]:
        return [taskset, "-c", str(core)] if taskset else []

    with tempfile.TemporaryDirectory(prefix="ballista-journey-bench-") as tmp:
        work = Path(tmp)
        port = free_port()
        server = start_nginx(nginx, work, port, pin(args.server_core))
        try:
            base = f"http://127.0.0.1:{port}"
            users = work / "users.csv"
            users.write_text(
                "user,password\n" + "".join(f"u{i},p{i}\n" for i in range(args.concurrency))
            )
            # Every case runs at the same time as a plain run, both on the client's
            # core, and is quoted against it: this VM's speed drifts by a third from
            # minute to minute, and only runs at the same moment share it. `plain`
            # beside `plain` is the control: what the method itself gives.
            loads = [("saturated", ["-c", str(args.concurrency)])]
            if args.rate:
                loads.append((f"{args.rate:g}/s", []))
            costs: dict[str, list[tuple[str, float, float]]] = {label: [] for label, _ in loads}

            def client(case: str, summary: Path) -> list[str]:
                return [*pin(args.client_core), *run_command(case, base, users, summary)]

            # Start-up (imports, parsing, connecting) is the same whatever the run's
            # length: one-request runs measure it (the least of three), to take it away.
            start: dict[str, tuple[float, int]] = {}
            for case in CASES:
                summary = work / f"{case}-start.json"
                tries = [
                    measure([([*client(case, summary), "-c", "1", "-n", "1"], summary)], 60)[0]
                    for _ in range(3)
                ]
                start[case] = min(tries)
            pairs = [(slot, case) for slot in range(args.repeat) for case in CASES]
            for n, (slot, case) in enumerate(pairs):
                for label, saturated in loads:
                    # The open model at one rate of requests for every case: the
                    # `steps` flow's iterations come at a fifth of it.
                    rate = args.rate / STEPS if case == "steps" else args.rate
                    runs = []
                    for who, name in (("plain", "plain-beside"), (case, case)):
                        summary = work / f"{name}.json"
                        mine = rate if who == case else args.rate
                        load = saturated or ["-r", f"{mine:g}"]
                        runs.append(
                            ([*client(who, summary), *load, "-d", f"{args.duration}s"], summary)
                        )
                    if slot % 2:
                        runs.reverse()  # which starts first alternates
                    measured = measure(runs, args.duration + 60)
                    if slot % 2:
                        measured.reverse()
                    (plain_cpu, plain_requests), (cpu, requests) = measured
                    cost = (cpu - start[case][0]) / (requests - start[case][1]) * 1e6
                    beside = (
                        (plain_cpu - start["plain"][0]) / (plain_requests - start["plain"][1]) * 1e6
                    )
                    costs[label].append((case, cost, beside))
                    print(
                        f"pair {n + 1:>2}/{len(pairs)} {case:>9} {label:>9}: {requests:>7} "
                        f"requests, {cost:.1f} µs/request; plain beside it {plain_requests:>7}, "
                        f"{beside:.1f} µs/request: {cost / beside:.3f}x",
                        flush=True,
                    )
            counted: dict[str, tuple[int, int]] = {}
            if args.instructions:
                if shutil.which("valgrind") is None:
                    raise SystemExit("--instructions needs valgrind: apt install valgrind")
                for case in CASES:
                    summary = work / f"{case}-counted.json"
                    command = [
                        *run_command(case, base, users, summary),
                        *("-c", str(args.concurrency)),
                    ]
                    counted[case] = instructions(pin(args.client_core), command, summary, case)
                    print(
                        f"counted {case:>9}: {counted[case][0]:,} instructions/request", flush=True
                    )
        finally:
            server.send_signal(signal.SIGQUIT)
            server.wait(timeout=10)
        steps = in_process(users)
        alone = runtime_alone(users)
    print()
    print(f"saturated: {args.concurrency} virtual users (closed model), as fast as they go:")
    report(costs["saturated"])
    if args.rate:
        print(f"at {args.rate:g} requests/s for every case (open model):")
        report(costs[f"{args.rate:g}/s"])
    if counted:
        print("instructions a request (valgrind; user space; difference of -n 2000 and 6000):")
        for case, (count, _) in counted.items():
            print(f"{case:>9}: {count:8,} instructions, {count / counted['plain'][0]:.2f}x plain")
    print("compiled steps alone, no I/O (best of 7 x 20,000):")
    for case, cost in steps.items():
        print(f"{case:>9}: {cost:6.1f} µs CPU/iteration")
    print("whole runs over connections that answer at once, no I/O (best of 3 x 40,000):")
    for case, cost in alone.items():
        print(f"{case:>9}: {cost:6.1f} µs CPU/request, {cost / alone['plain']:.2f}x plain")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
