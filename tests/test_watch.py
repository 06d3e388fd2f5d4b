"""`ballista watch`: in a pseudo-terminal against a real `ballista run`, and reconnecting."""

from __future__ import annotations

import datetime as dt
import fcntl
import io
import json
import os
import pty
import re
import struct
import sys
import termios
from pathlib import Path

import pytest
import trio
from helpers import free_port, run_config, wait_until
from servers import RunningTarget

from ballista.cli.watch import View, sparkline, watch, ws_url
from ballista.core.errors import ConfigError
from ballista.engine.engine import Engine
from ballista.observe.live import LiveHub, serve_live
from ballista.observe.summary import summary_dict

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


async def read_all(stream: trio.lowlevel.FdStream, into: bytearray) -> None:
    """Read a pty master until the child side is gone (EIO on Linux)."""
    try:
        while chunk := await stream.receive_some(65536):
            into += chunk
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_watch_in_a_terminal_shows_the_run_and_its_summary(
    target: RunningTarget, tmp_path: Path
) -> None:
    summary_path = tmp_path / "summary.json"
    port = free_port()  # free now; the run binds it below
    url = f"ws://127.0.0.1:{port}/"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONWARNINGS": "ignore"}
    viewer = await trio.lowlevel.open_process(
        [sys.executable, "-m", "ballista", "watch", url],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    screen = bytearray()
    terminal = trio.lowlevel.FdStream(master)
    # The viewer starts first and keeps trying until the run's stream is up.
    with trio.fail_after(20):
        while b"reconnecting" not in screen:
            screen += await terminal.receive_some(65536)
    run = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "ballista",
            "run",
            target.url,
            "-d",
            "3s",
            "-c",
            "4",
            "--interval",
            "0.25s",
            "--live-port",
            str(port),
            "-q",
            "--json",
            str(summary_path),
        ],
    )
    with trio.fail_after(40):
        await read_all(terminal, screen)
        assert await viewer.wait() == 0
        assert await run.wait() == 0

    doc = json.loads(summary_path.read_text())
    text = ANSI.sub(b"", bytes(screen)).decode()
    # the live table, redrawn in place, with its charts
    assert b"\x1b[H" in screen
    for label in ("requests", "rps", "failed", "latency", "in flight", "limit", "status"):
        assert label in text
    assert "closed · HTTP/1.1" in text
    assert "200:" in text
    assert any(c in text for c in "▂▃▄▅▆▇█"), "an rps sparkline"
    # the summary at the end, with the run's own figures
    tail = text[text.rindex("Summary") :]
    assert f"requests     {doc['requests']:,}" in tail
    assert f"200:{doc['status_codes']['200']:,}" in tail


async def test_watch_reconnects_when_the_stream_drops(
    target: RunningTarget, nursery: trio.Nursery
) -> None:
    config = run_config(target.url, "-d", "2.5s", "-c", "2", "--interval", "0.2s")
    hub = LiveHub(config, run_id="r", started_at=dt.datetime.now(dt.UTC))
    out = io.StringIO()
    result: list[int] = []

    # The stream's server runs in its own scope so the test can kill it mid-run
    # and bring it back on the same port, as a restarted proxy would.
    server_scope = trio.CancelScope()

    async def serve(port: int, *, task_status: trio.TaskStatus[int]) -> None:
        with server_scope:
            await serve_live(hub, "127.0.0.1", port, task_status=task_status)

    port: int = await nursery.start(serve, 0)
    url = f"ws://127.0.0.1:{port}/"

    async def viewer() -> None:
        result.append(await watch(url, out=out, tty=False, retry_for=10))

    nursery.start_soon(viewer)
    engine = Engine(config, sinks=[hub.publish], grace=2.0)
    engine.on_start.append(hub.on_start)

    def snapshot_lines() -> int:
        return sum(line.startswith("t=") for line in out.getvalue().splitlines())

    async def drop_and_restore() -> None:
        nonlocal server_scope
        await wait_until(lambda: snapshot_lines() >= 3, "the viewer's first 3 snapshots")
        server_scope.cancel()  # every connection dies with the server
        await trio.sleep(0.5)  # the outage itself: the viewer must ride it out
        server_scope = trio.CancelScope()
        await nursery.start(serve, port)

    nursery.start_soon(drop_and_restore)
    final = await engine.run()
    meta = engine.run_meta(hub.started_at)
    doc = summary_dict(final, meta)
    with trio.fail_after(10):
        await hub.finish(doc)
    await wait_until(lambda: result, "the viewer's exit", limit=10)
    assert result == [0]
    lines = out.getvalue().splitlines()
    snaps = [line for line in lines if line.startswith("t=")]
    assert len(snaps) >= 6
    assert hub.accepted_clients >= 2, "the viewer came back after the drop"
    assert f"requests     {doc['requests']:,}" in out.getvalue()
    # the plain lines are one per snapshot and their counts only grow
    counts = [int(re.search(r"requests=(\d+)", line).group(1)) for line in snaps]  # type: ignore[union-attr]
    assert counts == sorted(counts)
    assert counts[-1] == doc["requests"]


def test_sparkline_scales_to_the_largest_value() -> None:
    assert sparkline([0, 1, 2, 4], 10) == "▁▃▅█"
    assert sparkline([5, 5], 1) == "█"
    assert sparkline([0, 0], 5) == "▁▁"
    assert sparkline([], 5) == ""


def test_ws_url() -> None:
    assert ws_url("ws://127.0.0.1:9100/") == "ws://127.0.0.1:9100/"
    assert ws_url("http://127.0.0.1:9100/") == "ws://127.0.0.1:9100/"
    assert ws_url("https://h:1/x") == "wss://h:1/x"
    for bad in ("ftp://h/", "127.0.0.1:9100", "ws://h:99999/"):
        with pytest.raises(ConfigError):
            ws_url(bad)


def test_view_ignores_snapshots_seen_before_a_reconnect() -> None:
    view = View(60)
    view.take({"type": "hello", "run_id": "a", "interval": 1.0})
    for seq in (0, 1, 1, 2):
        view.take({"type": "snapshot", "seq": seq, "rps": 10.0 + seq})
    assert list(view.rps) == [10.0, 11.0, 12.0]
    view.take({"type": "hello", "run_id": "b", "interval": 1.0})  # a new run: fresh history
    assert list(view.rps) == []


def test_the_final_slivers_rate_is_not_shown_as_the_interval_rate() -> None:
    from ballista.cli.watch import View

    view = View(history_s=60)
    view.take({"type": "hello", "interval_s": 1.0})
    view.take({"type": "snapshot", "elapsed": 1.0, "rps": 200.0, "requests": 200})
    view.take({"type": "snapshot", "elapsed": 2.0, "rps": 210.0, "requests": 410})
    assert view.interval_rps() == 210.0
    # 2 ms after the last tick, 1 request: "500/s" would be noise.
    view.take({"type": "snapshot", "elapsed": 2.002, "rps": 500.0, "requests": 411, "final": True})
    assert view.interval_rps() == 210.0
    assert "rps=210.0" in view.line()
