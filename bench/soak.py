"""Soak bench: the daemon under a steady open-model load for a long time, RSS sampled.

Starts `ballista target` and `ballista serve` (with a soak scenario given at boot)
as processes on 127.0.0.1, samples the daemon's resident memory every
`--sample-every`, and reports the growth after warm-up. Memory must be flat:
growth after warm-up under `--max-growth` (5 %) passes.

    python bench/soak.py                                  # 1 h at 500 req/s, RSS each minute
    python bench/soak.py --duration 2m --sample-every 10s --warmup 30s --json soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ballista.core.durations import parse_duration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def wait_until_up(url: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            get_json(url)
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"soak: {url} did not come up in {limit:g}s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", default="1h", help="soak length (1h)")
    p.add_argument("--rate", type=float, default=500.0, help="requests per second (500)")
    p.add_argument("--sample-every", default="60s", help="RSS sampling period (60s)")
    p.add_argument("--warmup", default="5m", help="samples before this are not judged (5m)")
    p.add_argument("--max-growth", type=float, default=0.05, help="allowed growth (0.05)")
    p.add_argument("--protocol", choices=("http1", "http2"), default="http1")
    p.add_argument("--json", default=None, help="write the samples and verdict here")
    ns = p.parse_args(argv)
    duration = parse_duration(ns.duration, what="--duration")
    every = parse_duration(ns.sample_every, what="--sample-every")
    warmup = parse_duration(ns.warmup, what="--warmup")
    if warmup >= duration:
        raise SystemExit("soak: --warmup must be shorter than --duration")

    tmp = Path(tempfile.mkdtemp(prefix="ballista-soak-"))
    target_port, api_port = free_port(), free_port()
    (tmp / "soak.toml").write_text(
        f'name = "soak"\nbase_url = "http://127.0.0.1:{target_port}"\n'
        f'[defaults]\nprotocol = "{ns.protocol}"\ntimeout = "5s"\n'
        '[[requests]]\nname = "home"\npath = "/"\n'
        f'[load]\nmodel = "open"\nrate = {ns.rate}\nmax_in_flight = 200\n'
        f'duration = "{duration + 60:g}s"\n'
    )
    (tmp / "daemon.toml").write_text('[[runs]]\nscenario = "soak.toml"\n')
    py = sys.executable
    target = subprocess.Popen(
        [py, "-m", "ballista", "target", "--port", str(target_port), "--error-rate", "0"],
        stdout=subprocess.DEVNULL,
    )
    daemon = subprocess.Popen(
        [
            py, "-m", "ballista", "serve", "--config", str(tmp / "daemon.toml"),
            "--port", str(api_port), "--live-port", "0", "--data-dir", str(tmp / "data"),
            "--log-level", "warning",
        ],
        env={k: v for k, v in os.environ.items() if k != "BALLISTA_TOKEN"},
    )  # fmt: skip
    api = f"http://127.0.0.1:{api_port}/api"
    samples: list[dict[str, Any]] = []
    try:
        wait_until_up(f"{api}/health")
        start = time.monotonic()
        while True:
            elapsed = time.monotonic() - start
            runs = get_json(f"{api}/runs")["runs"]
            soak: dict[str, Any] = next((r for r in runs if r["name"] == "soak"), {})
            sample = {
                "t_s": round(elapsed, 1),
                "rss_bytes": rss_bytes(daemon.pid),
                "requests": soak.get("requests", 0),
                "rps": soak.get("rps", 0.0),
                "error_rate": soak.get("error_rate", 0.0),
            }
            samples.append(sample)
            print(
                f"{sample['t_s']:>8.0f}s  rss {sample['rss_bytes'] / 2**20:7.1f} MiB  "
                f"requests {sample['requests']:>10,}  rps {sample['rps']:>8.1f}",
                flush=True,
            )
            if elapsed >= duration:
                break
            time.sleep(max(0.0, min(every, duration - elapsed)))
    finally:
        daemon.send_signal(signal.SIGTERM)
        target.send_signal(signal.SIGTERM)
        for proc in (daemon, target):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    judged = [s for s in samples if s["t_s"] >= warmup]
    base = judged[0]["rss_bytes"]
    peak = max(s["rss_bytes"] for s in judged)
    growth = (judged[-1]["rss_bytes"] - base) / base
    peak_growth = (peak - base) / base
    ok = peak_growth < ns.max_growth
    verdict = {
        "duration_s": duration,
        "rate": ns.rate,
        "warmup_s": warmup,
        "rss_after_warmup_bytes": base,
        "rss_end_bytes": judged[-1]["rss_bytes"],
        "rss_peak_bytes": peak,
        "growth": round(growth, 4),
        "peak_growth": round(peak_growth, 4),
        "max_growth": ns.max_growth,
        "ok": ok,
        "requests": samples[-1]["requests"],
    }
    print(
        f"soak: RSS {base / 2**20:.1f} MiB after warm-up, {judged[-1]['rss_bytes'] / 2**20:.1f} MiB "
        f"at the end (growth {growth:+.1%}, peak {peak_growth:+.1%}); "
        f"{samples[-1]['requests']:,} requests: {'ok' if ok else 'FAIL'}"
    )
    if ns.json:
        Path(ns.json).write_text(json.dumps({"verdict": verdict, "samples": samples}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
