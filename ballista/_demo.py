"""`ballista demo`: the embedded target and a short load test against it, in one process."""

from __future__ import annotations

import sys

import trio

from ._config import LoadSpec, Origin, RequestSpec, RunConfig
from ._target import TargetConfig, serve_target


async def _demo(duration: float, concurrency: int, http2: bool, json_path: str | None) -> None:
    from ._cli import Outputs, run_and_report

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_target, TargetConfig(host="127.0.0.1", port=0))
        print(
            f"ballista demo: target on http://127.0.0.1:{port}/ "
            f"({'h2c' if http2 else 'HTTP/1.1'}); {concurrency} workers for {duration:g}s",
            file=sys.stderr,
        )
        config = RunConfig(
            origin=Origin("http", "127.0.0.1", port),
            requests=(RequestSpec(name="default", method="GET", target="/"),),
            load=LoadSpec(model="closed", concurrency=concurrency, duration=duration),
            protocol="http2" if http2 else "http1",
            timeout=10.0,
        )
        await run_and_report(
            config, Outputs(json_path=json_path), stdout=sys.stdout, stderr=sys.stderr
        )
        nursery.cancel_scope.cancel()


def run_demo(*, duration: float, concurrency: int, http2: bool, json_path: str | None) -> int:
    """Run the demo to the end; returns the exit code."""
    trio.run(_demo, duration, concurrency, http2, json_path)
    return 0
