"""Ballista's memory against an HTTP/2 server flooding PING or SETTINGS frames (issue 12).

A flood server from tests/servers.py (h2c: it answers requests and writes the
flood frames as fast as the client reads them) runs in its own process;
`ballista run --http2` runs against it in another for --duration, and this
script samples that process's RSS every 0.25 s. It prints the RSS after the
first second, at the end, the growth per second between them, and the run's
counts by kind. Load goes only to 127.0.0.1.

    .venv/bin/python bench/h2_flood.py [--frame ping|settings] [--duration 10s] [-c 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def serve(frame: str) -> None:
    """Child process: one flood server, its port on stdout, until killed."""
    sys.path.insert(0, str(ROOT / "tests"))
    import servers
    import trio

    start = {
        "ping": servers.start_h2_ping_flood_server,
        "settings": servers.start_h2_settings_flood_server,
    }[frame]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await start(nursery, seconds=servers.HANDLER_CAP)
            print(server.port, flush=True)

    trio.run(main)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame", choices=("ping", "settings"), default="ping")
    parser.add_argument("--duration", default="10s")
    parser.add_argument("-c", "--concurrency", default="5")
    parser.add_argument("--serve", choices=("ping", "settings"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", args.frame], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        run = subprocess.Popen(
            [
                *(sys.executable, "-m", "ballista", "run", f"http://127.0.0.1:{port}/"),
                *("--http2", "-d", args.duration, "-c", args.concurrency, "--json", "-"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        t0 = time.monotonic()
        samples: list[tuple[float, float]] = []
        while run.poll() is None:
            samples.append((time.monotonic() - t0, rss_mb(run.pid)))
            time.sleep(0.25)
        summary = json.loads(run.stdout.read() if run.stdout else "{}")
    finally:
        server.kill()
        server.wait()
    # The last sample may be taken while the process exits: drop the zeros.
    samples = [s for s in samples if s[1] > 0]
    first = next((s for s in samples if s[0] >= 1.0), samples[0])
    last = samples[-1]
    rate = (last[1] - first[1]) / max(last[0] - first[0], 1e-9)
    kinds = {k: v for k, v in summary.get("errors_by_kind", {}).items() if v}
    print(
        f"{args.frame} flood, -c {args.concurrency}, -d {args.duration}: "
        f"RSS {first[1]:.1f} MB at {first[0]:.1f} s -> {last[1]:.1f} MB at {last[0]:.1f} s "
        f"({rate:+.2f} MB/s); peak {max(s[1] for s in samples):.1f} MB"
    )
    print(
        f"requests {summary.get('requests')} responses {summary.get('responses')} "
        f"errors {kinds} connections_opened {summary.get('connections_opened')}"
    )


if __name__ == "__main__":
    main()
