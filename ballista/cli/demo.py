"""`ballista demo`: the embedded target and a short load test against it.

The target runs as a child process (`ballista target --port 0`), so that it
has a core of its own: sharing Ballista's trio loop would add its CPU time to
every latency and hide the distribution it documents.
"""

from __future__ import annotations

import re
import subprocess
import sys

import trio

from ballista.core.config import LoadSpec, Origin, RequestSpec, RunConfig
from ballista.core.errors import BallistaError
from ballista.core.journey import Journeys
from ballista.engine.run import Run
from ballista.observe.outputs import Outputs, run_with_outputs

_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


async def _start_target() -> tuple[trio.Process, int]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "ballista", "target", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    seen = b""
    with trio.move_on_after(20):
        while (match := _LISTENING.search(seen)) is None:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                break
            seen += chunk
        if match is not None:
            return proc, int(match.group(1))
    proc.kill()
    raise BallistaError("demo: the embedded target did not start")


def demo_journeys() -> Journeys:
    """The shopping journey of `demo --journey` (cli/demojourney.py)."""
    from ballista.cli import demojourney
    from ballista.core.pyjourneys import journeys_of

    return journeys_of(demojourney, "demojourney.py")


async def _demo(
    duration: float, concurrency: int, http2: bool, json_path: str | None, journey: bool
) -> int:
    proc, port = await _start_target()
    try:
        what = "virtual users (shopping journey: login, items, cart)" if journey else "workers"
        # The shop API is never given injected failures (target/app.py): say what runs.
        faults = "its shop API fails nothing on purpose" if journey else "1% of answers 500/503"
        print(
            f"ballista demo: target on http://127.0.0.1:{port}/ (its latency: log-normal, "
            f"median 5 ms, p99 40 ms; {faults})\n"
            f"ballista demo: {concurrency} {what} over "
            f"{'h2c (HTTP/2)' if http2 else 'HTTP/1.1'} for {duration:g}s",
            file=sys.stderr,
        )
        config = RunConfig(
            origin=Origin("http", "127.0.0.1", port),
            requests=(RequestSpec(name="default", method="GET", target="/"),),
            load=LoadSpec(model="closed", concurrency=concurrency, duration=duration),
            protocol="http2" if http2 else "http1",
            timeout=10.0,
            journeys=demo_journeys() if journey else None,
        )
        _, code = await run_with_outputs(
            Run(config), Outputs(json_path=json_path), stdout=sys.stdout, stderr=sys.stderr
        )
        return code
    finally:
        proc.terminate()
        with trio.move_on_after(5) as waited:
            await proc.wait()
        if waited.cancelled_caught:
            proc.kill()


def run_demo(
    *, duration: float, concurrency: int, http2: bool, json_path: str | None, journey: bool = False
) -> int:
    """Run the demo to the end; returns the exit code."""
    return trio.run(_demo, duration, concurrency, http2, json_path, journey)
