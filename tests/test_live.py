"""The live stream against real runs on 127.0.0.1: schema, cadence, counts, stuck clients."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import socket
from dataclasses import dataclass, field
from typing import Any

import trio
from helpers import run_config, wait_until
from servers import RunningTarget
from trio_websocket import ConnectionClosed

from ballista.cli.watch import connect
from ballista.core.config import RunConfig
from ballista.core.redact import REDACTED
from ballista.engine.engine import Engine
from ballista.observe.httpserver import Request, Response
from ballista.observe.live import LiveHub, page_routes, serve_live
from ballista.observe.summary import summary_dict

INTERVAL = 0.25


def make_hub(config: RunConfig, **timeouts: float) -> LiveHub:
    return LiveHub(config, run_id="test", started_at=dt.datetime.now(dt.UTC), **timeouts)


async def run_with_hub(config: RunConfig, hub: LiveHub) -> dict[str, Any]:
    """Run the engine with the hub as sink, exactly as run_and_report wires it; finish the hub."""
    engine = Engine(config, sinks=[hub.publish], grace=2.0)
    engine.on_start.append(hub.on_start)
    with trio.fail_after(30):
        final = await engine.run()
    meta = engine.run_meta(hub.started_at)
    return summary_dict(final, meta)


@dataclass
class Viewer:
    """A client that reads everything until the server closes."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    connected: trio.Event = field(default_factory=trio.Event)

    async def watch(self, url: str) -> None:
        async with connect(url) as ws:
            self.connected.set()
            try:
                while True:
                    self.messages.append(json.loads(await ws.get_message()))
            except ConnectionClosed as exc:
                self.close_code = exc.reason.code if exc.reason else None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]


async def start_hub(nursery: trio.Nursery, hub: LiveHub) -> str:
    port: int = await nursery.start(serve_live, hub, "127.0.0.1", 0)
    return f"ws://127.0.0.1:{port}/"


async def test_schema_cadence_and_counts_match_the_summary(
    target: RunningTarget, nursery: trio.Nursery
) -> None:
    config = run_config(target.url, "-d", "2s", "-c", "4", "--interval", f"{INTERVAL}s")
    hub = make_hub(config)
    url = await start_hub(nursery, hub)
    viewers = [Viewer() for _ in range(3)]
    async with trio.open_nursery() as clients:
        for v in viewers:
            clients.start_soon(v.watch, url)
            await v.connected.wait()
        doc = await run_with_hub(config, hub)
        await hub.finish(doc)
    first = viewers[0]
    # hello first, then snapshots, then the summary, then a normal close.
    types = [m["type"] for m in first.messages]
    assert types[0] == "hello"
    assert types[-1] == "summary"
    assert set(types[1:-1]) == {"snapshot"}
    assert first.close_code == 1000
    hello = first.messages[0]
    assert hello["schema"] == "ballista.live/1"
    assert hello["target"] == target.url
    assert hello["model"] == "closed"
    assert hello["protocol"] == "HTTP/1.1"
    assert hello["interval"] == INTERVAL
    assert hello["started_at"] == doc["started_at"]
    # one snapshot per interval: ~2 s / 0.25 s, plus the final one; batched, not per request
    snaps = first.of_type("snapshot")
    assert [s["seq"] for s in snaps] == list(range(len(snaps)))
    assert 7 <= len(snaps) <= 10
    ticks = [s for s in snaps if not s["final"]]
    for a, b in itertools.pairwise(ticks):
        assert abs((b["elapsed"] - a["elapsed"]) - INTERVAL) < 0.1
    assert doc["requests"] > 10 * len(snaps)
    for s in snaps:
        for key in (
            "elapsed",
            "requests",
            "rps",
            "failed",
            "interval_latency_s",
            "status_codes",
            "errors_by_kind",
            "in_flight",
            "concurrency_limit",
            "target_rate",
        ):
            assert key in s
        assert s["concurrency_limit"] == 4
        assert s["target_rate"] is None
        assert 0 <= s["in_flight"] <= 4
    middle = snaps[len(snaps) // 2]
    assert middle["rps"] > 0
    assert middle["interval_requests"] > 0
    assert set(middle["interval_latency_s"]) >= {"p50", "p90", "p95", "p99", "p999", "max"}
    assert 0 < middle["interval_latency_s"]["p50"] <= middle["interval_latency_s"]["p99"]
    # interval figures add up to the cumulative ones
    assert sum(s["interval_requests"] for s in snaps) == snaps[-1]["requests"]
    # the last snapshot's cumulative counts are the summary's
    last = snaps[-1]
    assert last["final"] is True
    for key in ("requests", "responses", "errors", "failed", "status_codes", "errors_by_kind"):
        assert last[key] == doc[key], key
    summary = first.of_type("summary")[0]
    assert summary == {"type": "summary", **doc}
    # every client saw the same stream
    for other in viewers[1:]:
        assert other.messages == first.messages
        assert other.close_code == 1000
    assert hub.clients == 0


async def test_a_stuck_client_slows_nothing_and_is_disconnected(
    target: RunningTarget, nursery: trio.Nursery
) -> None:
    argv = (target.url, "-d", "2.5s", "-c", "4", "--interval", f"{INTERVAL}s")
    # baseline: the same run with one well-behaved viewer
    config = run_config(*argv)
    base_hub = make_hub(config)
    base_url = await start_hub(nursery, base_hub)
    base_viewer = Viewer()
    nursery.start_soon(base_viewer.watch, base_url)
    await base_viewer.connected.wait()
    baseline = await run_with_hub(config, base_hub)
    await base_hub.finish(baseline)

    hub = make_hub(config, ping_interval=0.25, pong_timeout=1.0, send_timeout=1.0)
    url = await start_hub(nursery, hub)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    # A client that completes the handshake and then never reads a byte, with
    # a tiny receive buffer so the server's sends back up early.
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    await sock.connect(("127.0.0.1", port))
    stuck = trio.SocketStream(sock)
    await stuck.send_all(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    viewer = Viewer()
    nursery.start_soon(viewer.watch, url)
    await viewer.connected.wait()
    await wait_until(lambda: hub.accepted_clients >= 2, "both clients accepted", limit=5)
    doc = await run_with_hub(config, hub)
    # dropped while the run went on (ping every 0.25 s, 1 s to answer; the run lasts 2.5 s)
    assert hub.dropped_clients == 1
    assert hub.clients == 1
    with trio.fail_after(10):
        await hub.finish(doc)
    await wait_until(lambda: viewer.close_code is not None, "the viewer's close", limit=10)

    # the run did as much as without the stuck client
    assert doc["requests"] > 0.5 * baseline["requests"]
    # the other viewer got every snapshot, on time, and the summary
    snaps = viewer.of_type("snapshot")
    assert [s["seq"] for s in snaps] == list(range(len(snaps)))
    assert len(snaps) >= 10
    for s in snaps:
        if not s["final"]:
            assert abs(s["elapsed"] - (s["seq"] + 1) * INTERVAL) < 0.15
    assert snaps[-1]["requests"] == doc["requests"]
    assert viewer.of_type("summary")[0]["requests"] == doc["requests"]
    assert viewer.close_code == 1000
    # the stuck client's connection was closed by the server: it reads what was
    # buffered, then end of stream (or a reset), never a summary.
    received = b""
    with trio.fail_after(5):
        try:
            while chunk := await stuck.receive_some(65536):
                received += chunk
        except trio.BrokenResourceError:
            pass
    assert received.startswith(b"HTTP/1.1 101")
    assert b'"type":"summary"' not in received
    await stuck.aclose()


async def test_a_client_that_connects_after_the_end_gets_the_summary(
    target: RunningTarget, nursery: trio.Nursery
) -> None:
    config = run_config(target.url, "-n", "50", "-c", "2", "--interval", f"{INTERVAL}s")
    hub = make_hub(config)
    url = await start_hub(nursery, hub)
    doc = await run_with_hub(config, hub)
    await hub.finish(doc)
    late = Viewer()
    with trio.fail_after(5):
        await late.watch(url)
    assert [m["type"] for m in late.messages] == ["hello", "snapshot", "summary"]
    assert late.messages[1]["final"] is True
    assert late.messages[1]["requests"] == late.messages[2]["requests"] == 50
    assert late.close_code == 1000


async def test_a_client_that_leaves_is_forgotten(
    target: RunningTarget, nursery: trio.Nursery
) -> None:
    config = run_config(target.url, "-d", "1s", "-c", "2", "--interval", "0.1s")
    hub = make_hub(config)
    url = await start_hub(nursery, hub)
    async with connect(url) as ws:
        await wait_until(lambda: hub.clients >= 1, "the client counted", limit=5)
        await ws.aclose()
    await wait_until(lambda: hub.clients == 0, "the client forgotten", limit=5)
    doc = await run_with_hub(config, hub)
    with trio.fail_after(2):
        await hub.finish(doc)


def test_hello_hides_secrets() -> None:
    config = run_config(
        "http://127.0.0.1:9/api?token=abc123&page=2&api_key=k9",
        "-H",
        "Authorization: Bearer s3cr3t",
        "-H",
        "Cookie: sid=c00kie",
        "-H",
        "X-Api-Key: apikeyvalue",
        "-H",
        "X-Auth-Token: t0kval",
        "-H",
        "X-Client-Secret: shh",
        "-H",
        "X-Trace: visible",
        "-b",
        "password=hunter2",
    )
    hub = make_hub(config)
    text = json.dumps(hub.hello())
    for secret in ("abc123", "k9", "s3cr3t", "c00kie", "apikeyvalue", "t0kval", "shh", "hunter2"):
        assert secret not in text
    hello = hub.hello()
    assert hello["target"] == f"http://127.0.0.1:9/api?token={REDACTED}&page=2&api_key={REDACTED}"
    headers = dict(hello["config"]["requests"][0]["headers"])
    assert headers["Authorization"] == REDACTED
    assert headers["X-Trace"] == "visible"
    assert hello["config"]["requests"][0]["body_bytes"] == len("password=hunter2")


def test_page_routes_serve_the_page_and_its_files() -> None:
    routes = page_routes(4321)
    status, headers, body = routes["/"](Request("GET", "/", ""))  # type: ignore[misc]
    assert status == 200
    assert ("content-type", "text/html; charset=utf-8") in headers
    assert b'content="4321"' in body and b"{{LIVE_PORT}}" not in body
    assert b'name="ballista-live-url" content=""' in body
    _, _, proxied = page_routes(4321, '/live/"><script>')["/"](Request("GET", "/", ""))  # type: ignore[misc]
    assert b'content="/live/&quot;&gt;&lt;script&gt;"' in proxied
    # relative: the page works under a reverse proxy's path prefix too
    for src in (b"static/uPlot.iife.min.js", b"static/app.js", b"static/style.css"):
        assert b'"' + src in body and b'"/' + src not in body
    # a run's page has no API; the daemon's names it, relative to the page
    assert b'name="ballista-api" content=""' in body
    _, _, daemon_page = page_routes(4321, api="api/")["/"](Request("GET", "/", ""))  # type: ignore[misc]
    assert b'name="ballista-api" content="api/"' in daemon_page
    js = routes["/static/"](Request("GET", "/static/uPlot.iife.min.js", ""))
    assert isinstance(js, Response) and js.status == 200
    assert js.body.startswith(b"/*! https://github.com/leeoniya/uPlot")
    assert ("content-type", "text/javascript; charset=utf-8") in js.headers
    for path in ("/static/nope.js", "/static/../live.py", "/static/"):
        missing = routes["/static/"](Request("GET", path, ""))
        assert isinstance(missing, Response) and missing.status == 404
    post = routes["/"](Request("POST", "/", ""))
    assert isinstance(post, Response) and post.status == 405
