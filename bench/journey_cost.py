"""What a TOML journey step costs against a plain request: CPU per request of `ballista run`.

Three runs against one local nginx (one worker on its own core) that answers
every path with the same small JSON body, each `ballista run` alone on another
core, CPU from its rusage divided by the requests its JSON summary counts:

- `plain`: `ballista run URL -c C -d D`, one request over and over;
- `flow`: a one-step `[[flows]]` file: an untemplated GET, no extraction
  (what running a journey costs by itself);
- `templated`: the same step with a templated path and header (a data
  column and an earlier extraction) and one `json:` extraction.

Issue 16 asks `templated` to cost at most 1.5x `plain`. Not a test: nothing
in `scripts/test` runs it. Load goes only to 127.0.0.1, each run bounded.

    .venv/bin/python bench/journey_cost.py [--duration 10] [--concurrency 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
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

BODY = '{"token": "t-8f14e45f", "items": [{"id": 7, "name": "anvil"}]}'
CASES = ("plain", "flow", "templated")


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
        + '[[flows]]\nname = "f"\n[[flows.steps]]\nname = "get"\n'
        + 'path = "/api/items/{{ user }}"\n'
        + 'headers = { Authorization = "Bearer {{ token }}" }\n'
        + 'extract = { item = "json:items.0.id" }\n'
    )


def measure(argv: list[str], summary: Path, limit_s: float) -> tuple[float, int]:
    """(CPU seconds of the process and its children, requests in its summary)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start = time.monotonic()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid != 0:
            break
        if time.monotonic() - start > limit_s:
            proc.send_signal(signal.SIGKILL)
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{err}")
    doc = json.loads(summary.read_text())
    if doc["failed"]:
        raise SystemExit(f"{argv[-1]}: {doc['failed']} failed requests: not a fair comparison")
    return usage.ru_utime + usage.ru_stime, int(doc["requests"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--concurrency", type=int, default=50, help="virtual users (50)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case (3)")
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
            per_request: dict[str, list[float]] = {case: [] for case in CASES}
            for round_ in range(args.repeat):
                for case in CASES:
                    summary = work / f"{case}.json"
                    common = ["-c", str(args.concurrency), "-d", f"{args.duration}s"]
                    command = [*pin(args.client_core), sys.executable, "-m", "ballista", "run"]
                    if case == "plain":
                        command += [f"{base}/api/items", *common]
                    else:
                        toml = work / f"{case}.toml"
                        toml.write_text(scenario(case, base, users))
                        command += ["-f", str(toml), *common]
                    cpu, requests = measure(
                        [*command, "--json", str(summary)], summary, args.duration + 60
                    )
                    per_request[case].append(cpu / requests * 1e6)
                    print(
                        f"round {round_ + 1} {case:>9}: {requests:>7} requests, "
                        f"{cpu:.2f}s CPU, {cpu / requests * 1e6:.1f} µs/request",
                        flush=True,
                    )
        finally:
            server.send_signal(signal.SIGQUIT)
            server.wait(timeout=10)
    median = {case: statistics.median(v) for case, v in per_request.items()}
    print()
    for case in CASES:
        ratio = median[case] / median["plain"]
        print(f"{case:>9}: {median[case]:6.1f} µs CPU/request (median), {ratio:.2f}x plain")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
