"""The engine against real servers on 127.0.0.1: exact counts, connections, latency, faults."""

from __future__ import annotations

import contextlib
import functools
import math
import random
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
import servers
import trio
from helpers import run_config, wait_until
from servers import FaultServer, RunningTarget

from ballista.core.histogram import RELATIVE_ERROR
from ballista.core.outcome import Sample
from ballista.core.snapshot import Snapshot
from ballista.engine.engine import Engine
from ballista.transport import http2
from ballista.transport.budget import ControlBudget


def engine_for(*argv: str) -> Engine:
    """An Engine built from `ballista run` flags, exactly as the CLI builds it."""
    return Engine(run_config(*argv), grace=2.0)


async def run(*argv: str) -> tuple[Engine, Snapshot]:
    engine = engine_for(*argv)
    with trio.fail_after(60):
        final = await engine.run()
    return engine, final


def kinds(snap: Snapshot) -> dict[str, int]:
    return {k: v for k, v in snap.errors_by_kind.items() if v}


# -- exact counts and connections --------------------------------------------------


async def test_http1_exact_count_and_connections(target: RunningTarget) -> None:
    engine, final = await run(target.url, "-n", "300", "-c", "10", "--http1")
    assert final.requests == 300
    assert final.responses == 300
    assert target.stats.requests == 300
    assert final.status_codes == {200: 300}
    assert target.stats.connections == 10
    assert final.connections_opened == 10
    assert engine.info is not None and engine.info.protocol == "HTTP/1.1"


async def test_http1_fewer_connections_than_workers(target: RunningTarget) -> None:
    _, final = await run(target.url, "-n", "200", "-c", "12", "--connections", "3")
    assert final.requests == target.stats.requests == 200
    assert target.stats.connections == 3
    assert final.connections_opened == 3
    assert final.errors == 0


async def test_h2c_exact_count_and_connections(target: RunningTarget) -> None:
    engine, final = await run(target.url, "--http2", "-n", "300", "-c", "20", "--connections", "3")
    assert engine.info is not None and engine.info.protocol == "HTTP/2"
    assert final.requests == target.stats.requests == 300
    assert final.errors == 0
    assert target.stats.connections == 3
    assert final.connections_opened == 3
    # 20 workers over 3 connections: streams really ran concurrently.
    assert final.max_in_flight == 20


async def test_tls_alpn_negotiates_h2(tls_target: RunningTarget) -> None:
    assert tls_target.ca_path is not None
    engine, final = await run(
        tls_target.url, "-n", "120", "-c", "8", "--connections", "2", "--cacert", tls_target.ca_path
    )
    assert engine.info is not None and engine.info.protocol == "HTTP/2"
    assert final.requests == tls_target.stats.requests == 120
    assert final.errors == 0
    # The ALPN probe connection is the first of the pool, not an extra one.
    assert tls_target.stats.connections == 2


async def test_tls_http1_forced(tls_target: RunningTarget) -> None:
    assert tls_target.ca_path is not None
    engine, final = await run(
        tls_target.url, "--http1", "-n", "60", "-c", "4", "--cacert", tls_target.ca_path
    )
    assert engine.info is not None and engine.info.protocol == "HTTP/1.1"
    assert final.requests == tls_target.stats.requests == 60
    assert tls_target.stats.connections == 4


async def test_sequential_uses_one_connection(target: RunningTarget) -> None:
    engine, final = await run(target.url, "--sequential", "-n", "50")
    assert engine.info is not None and engine.info.model == "sequential"
    assert final.requests == target.stats.requests == 50
    assert target.stats.connections == 1
    assert final.max_in_flight == 1


async def test_duration_stops_the_run(target: RunningTarget) -> None:
    start = trio.current_time()
    _, final = await run(target.url, "-d", "1s", "-c", "4")
    took = trio.current_time() - start
    assert 1.0 <= took < 3.0
    assert final.requests > 0
    assert final.requests == target.stats.requests


async def test_post_body_and_headers(target: RunningTarget) -> None:
    _, final = await run(
        target.url, "-n", "20", "-c", "2", "-m", "POST", "-b", "x" * 1000, "-H", "X-Test: 1"
    )
    assert final.requests == 20
    assert final.errors == 0
    assert target.stats.bytes_received >= 20 * 1000
    assert final.bytes_sent >= 20 * 1000


# -- latency against known delays ---------------------------------------------------


async def request_heads(stream: trio.SocketStream) -> AsyncGenerator[bytes, None]:
    """Each request head a client sends on `stream` (bodiless GETs), until it closes."""
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            yield head
    except trio.BrokenResourceError:
        return


class DelayServer:
    """A minimal HTTP/1.1 server that holds each response for `delay` seconds (plus
    up to `jitter`, so that concurrent responses do not all come back at once) and
    records, with its own clock, how long it really held each one: the truth."""

    def __init__(self, delay: float, jitter: float = 0.0) -> None:
        self.delay = delay
        self.jitter = jitter
        self.held: list[float] = []
        self.port = 0
        self._rng = random.Random(7)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        async with contextlib.aclosing(request_heads(stream)) as heads:
            async for _ in heads:
                t0 = trio.current_time()
                await trio.sleep(self.delay + self.jitter * self._rng.random())
                await stream.send_all(answer)
                self.held.append(trio.current_time() - t0)

    def percentile(self, q: float) -> float:
        values = sorted(self.held)
        rank = max(1, math.ceil(q / 100 * len(values)))
        return values[rank - 1]


async def test_percentiles_match_the_truth(nursery: trio.Nursery) -> None:
    server = DelayServer(0.05, jitter=0.01)
    port = await nursery.start(server.serve)
    # 800 samples, so that p99 (the 792nd) is not moved by the odd request during
    # which the OS took this process off the CPU (server and client share it).
    _, final = await run(f"http://127.0.0.1:{port}/", "-n", "800", "-c", "8")
    assert final.requests == len(server.held) == 800
    for q, reported in ((50, final.latency.p50), (99, final.latency.p99)):
        truth = server.percentile(q)
        # The client sees at least the server's hold time, but the histogram reports
        # its bucket's midpoint, which may lie up to RELATIVE_ERROR below the sample:
        # that is the whole of the allowed shortfall.
        assert reported >= truth * (1 - RELATIVE_ERROR), (q, reported, truth)
        assert reported - truth <= 0.001 + 0.02 * truth, (q, reported, truth)


async def test_percentiles_of_the_demo_target_delay(target: RunningTarget) -> None:
    # The demo target's ?delay= holds responses at least that long; hypercorn's own
    # processing comes on top, so only bound it from below and loosely from above.
    _, final = await run(target.url_for("/?delay=0.05"), "-n", "40", "-c", "4", "--http2")
    assert final.latency.min >= 0.05
    assert final.latency.p50 < 0.05 * 1.5


# -- every fault is counted under its kind --------------------------------------------


async def test_connect_refused(closed_port: int) -> None:
    _, final = await run(f"http://127.0.0.1:{closed_port}/", "-n", "6", "-c", "2")
    assert final.requests == 6
    assert kinds(final) == {"connect_refused": 6}
    assert final.failed == 6


async def test_reset_mid_response(reset_server: FaultServer) -> None:
    _, final = await run(reset_server.url, "-n", "6", "-c", "2")
    assert final.requests == 6
    assert kinds(final) == {"reset": 6}


async def test_close_immediately_is_a_reset(close_immediately_server: FaultServer) -> None:
    _, final = await run(close_immediately_server.url, "-n", "6", "-c", "2")
    assert kinds(final) == {"reset": 6}


async def test_silent_server_read_timeout(silent_server: FaultServer) -> None:
    _, final = await run(silent_server.url, "-n", "4", "-c", "2", "--timeout", "300ms")
    assert kinds(final) == {"read_timeout": 4}
    assert all(abs(v - 0.3) < 0.1 for v in (final.latency.min, final.latency.max))


async def test_garbage_is_a_protocol_error(garbage_server: FaultServer) -> None:
    _, final = await run(garbage_server.url, "-n", "6", "-c", "2")
    assert kinds(final) == {"protocol": 6}


async def test_untrusted_certificate_is_tls(tls_untrusted_server: FaultServer) -> None:
    _, final = await run(tls_untrusted_server.url, "-n", "4", "-c", "2")
    assert kinds(final) == {"tls": 4}


async def test_failed_handshakes_are_attempts_not_connections(
    tls_untrusted_server: FaultServer,
) -> None:
    """TCP connections were made, but none became a usable connection."""
    _, final = await run(tls_untrusted_server.url, "--http1", "-n", "5", "-c", "1")
    assert kinds(final) == {"tls": 5}
    assert tls_untrusted_server.connections == final.connection_attempts == 5
    assert final.connections_opened == 0


async def test_insecure_skips_verification(tls_untrusted_server: FaultServer) -> None:
    _, final = await run(tls_untrusted_server.url, "-n", "4", "-c", "2", "--insecure")
    assert final.errors == 0
    assert final.status_codes == {200: 4}


async def test_plaintext_on_https_is_tls(tls_plaintext_server: FaultServer) -> None:
    _, final = await run(tls_plaintext_server.url, "-n", "4", "-c", "2")
    assert kinds(final) == {"tls": 4}


async def test_http2_without_alpn_fails_at_once(tls_no_alpn_server: FaultServer) -> None:
    """The handshake selected no protocol: HTTP/2 will not happen on that connection,
    so --http2 requests fail as `protocol` at once instead of waiting for a SETTINGS
    frame until the timeout, and the summary says what the server selected."""
    engine, final = await run(
        tls_no_alpn_server.url, "--http2", "--insecure", "-n", "4", "-c", "2", "--timeout", "10s"
    )
    assert kinds(final) == {"protocol": 4}
    assert final.latency.max < 2.0
    assert 1 <= tls_no_alpn_server.connections <= 4
    # Nothing was sent on a connection that cannot carry HTTP/2.
    assert tls_no_alpn_server.requests == 0
    assert any("over ALPN (it selected no protocol)" in note for note in engine.notes())


async def test_unknown_host_is_dns() -> None:
    _, final = await run("http://nonexistent.invalid/", "-n", "3", "-c", "1")
    assert kinds(final) == {"dns": 3}


async def test_h2_refused_streams(h2_rst_server: FaultServer) -> None:
    _, final = await run(h2_rst_server.url, "--http2", "-n", "40", "-c", "4")
    assert final.requests == 40 == h2_rst_server.requests
    assert kinds(final) == {"refused_stream": h2_rst_server.refused}
    assert final.responses == h2_rst_server.answered
    assert h2_rst_server.refused == 20


async def test_h2_goaway(h2_goaway_server: FaultServer) -> None:
    _, final = await run(h2_goaway_server.url, "--http2", "-n", "30", "-c", "3")
    assert final.requests == 30
    assert final.responses == h2_goaway_server.answered
    assert h2_goaway_server.goaways >= 1
    assert set(kinds(final)) <= {"goaway", "reset"}
    assert final.errors == 30 - final.responses
    # The engine reconnected after each GOAWAY and went on.
    assert final.connections_opened >= 2


async def test_h2_malformed_status_is_a_protocol_error(h2_bad_status_server: FaultServer) -> None:
    _, final = await run(h2_bad_status_server.url, "--http2", "-n", "3", "-c", "1")
    assert kinds(final) == {"protocol": 3}
    # The malformed answer ends its connection: each request opened a new one.
    assert h2_bad_status_server.connections == 3


@pytest.mark.parametrize("flood", ["h2_ping_flood_server", "h2_settings_flood_server"])
async def test_h2_control_frame_flood_drops_the_connection(
    flood: str, nursery: trio.Nursery
) -> None:
    """Each connection is flooded with PING (or SETTINGS) frames for 2 s while the
    server reads nothing: each is dropped as flooded as soon as the budget is spent,
    and every request on it counts once as `protocol`. Without the limit the run
    would wait out the flood with the ACKs piling up in memory, then succeed."""
    server = await servers.FAULT_SERVERS[flood](nursery)
    t0 = trio.current_time()
    engine, final = await run(server.url, "--http2", "-n", "50", "-c", "5", "--timeout", "10s")
    assert trio.current_time() - t0 < 1.5
    assert final.requests == 50
    assert kinds(final) == {"protocol": 50}
    # The flood began at once on every connection, so no request was ever read.
    assert server.requests == 0
    assert final.connections_opened == server.connections
    assert any("flooded" in note for note in engine.notes())
    await wait_until(lambda: server.open == 0, "the flooded connections to be closed")


async def test_h2_empty_data_flood_drops_the_connection(nursery: trio.Nursery) -> None:
    """2,000 empty DATA frames on the stream after its headers, and no end: each
    connection is dropped as flooded, and its request counts as `protocol`."""
    server = await servers.start_h2_empty_data_flood_server(nursery)
    t0 = trio.current_time()
    engine, final = await run(server.url, "--http2", "-n", "5", "-c", "1", "--timeout", "10s")
    assert trio.current_time() - t0 < 1.5
    assert kinds(final) == {"protocol": 5}
    assert server.requests == server.connections == 5
    assert any("flooded 5 HTTP/2 connections" in note for note in engine.notes())


async def test_h2_unread_acks_are_bounded_within_the_budget(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PINGs in small bursts with no limit on their rate, from a server that reads
    nothing (and keeps its receive buffer small): once the writer cannot write, the
    ACKs would queue in h2 without end. More than MAX_UNSENT_ACKS unwritten is a
    flood too, so the connection is dropped after a few thousand frames, not at
    the timeout (after the flood the server would answer: the requests would pass)."""
    monkeypatch.setattr(
        http2, "ControlBudget", lambda now: ControlBudget(now, burst=10**9, rate=0.0)
    )
    server = await servers.start_h2_ping_flood_server(nursery, burst=100, pause=0.0005, rcvbuf=4096)
    t0 = trio.current_time()
    engine, final = await run(server.url, "--http2", "-n", "5", "-c", "5", "--timeout", "10s")
    assert trio.current_time() - t0 < 1.5
    assert kinds(final) == {"protocol": 5}
    assert server.connections == 1
    # What the kernel's buffers held, plus MAX_UNSENT_ACKS: far from unbounded.
    assert server.extra["frames"] < 50_000
    assert any("flooded 1 HTTP/2 connection " in note for note in engine.notes())


async def test_h2_a_ping_with_every_response_is_not_a_flood(nursery: trio.Nursery) -> None:
    """More PINGs than the budget's burst, but one per response (and their ACKs read):
    what our own requests explain is never a flood."""
    server = await servers.start_h2_pinging_server(nursery)
    engine, final = await run(server.url, "--http2", "-n", "1500", "-c", "10")
    assert final.status_codes == {200: 1500}
    assert server.extra["pings"] == 1500
    assert final.connections_opened == server.connections == 1
    assert not any("flooded" in note for note in engine.notes())


async def test_h2_server_that_never_sends_settings_keeps_no_connection(
    silent_server: FaultServer,
) -> None:
    """h2c to a server that never sends its SETTINGS: each attempt waits --timeout
    and is closed then, not left open (read by nobody's request) until the run ends."""
    _, final = await run(silent_server.url, "--http2", "-n", "4", "-c", "1", "--timeout", "300ms")
    assert kinds(final) == {"connect_timeout": 4}
    assert silent_server.connections == 4
    # One closing while the next one opens, at most; never one per timeout.
    assert silent_server.most_open <= 2
    await wait_until(lambda: silent_server.open == 0, "the timed-out connections to be closed")


async def test_h2_graceful_goaway_finishes_and_retries(h2_drain_server: FaultServer) -> None:
    """GOAWAY(NO_ERROR) read together with the answers that follow it: the streams the
    server took end well, the ones it ignored are sent again, and nothing is an error."""
    server = h2_drain_server
    _, final = await run(server.url, "--http2", "-n", "30", "-c", "5")
    assert kinds(final) == {}
    assert final.requests == final.responses == server.answered == 30
    assert final.status_codes == {200: 30}
    # Five workers, three streams a connection: all but the last ignored two.
    assert server.extra["ignored"] >= 2 * (server.goaways - 1)
    assert final.connections_opened == server.connections == server.goaways == 10
    # Sent again and counted as such: every stream the server ignored, and those
    # it never read before closing.
    assert final.retried >= server.extra["ignored"]
    assert server.requests == 30 + server.extra["ignored"]


async def test_target_errors_are_failed_not_errors(target: RunningTarget) -> None:
    _, final = await run(target.url_for("/?status=503"), "-n", "10", "-c", "2")
    assert final.responses == 10
    assert final.errors == 0
    assert final.failed == 10
    assert final.status_codes == {503: 10}


# -- snapshots and stopping ---------------------------------------------------------


async def test_snapshots_each_interval(target: RunningTarget) -> None:
    seen: list[Snapshot] = []
    config = run_config(target.url, "-d", "1s", "-c", "2", "--interval", "200ms")
    engine = Engine(config, sinks=[seen.append])
    final = await engine.run()
    assert seen[-1] is final and final.final
    periodic = [s for s in seen if not s.final]
    assert 4 <= len(periodic) <= 5
    assert [s.seq for s in seen] == list(range(len(seen)))
    assert sum(s.interval_requests for s in seen) == final.requests
    for s in periodic:
        assert abs(s.interval - 0.2) < 0.05


async def test_stop_lets_in_flight_finish(target: RunningTarget) -> None:
    engine = engine_for(target.url_for("/?delay=0.3"), "-d", "30s", "-c", "5")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        # Stop with the second round of 5 requests all held by the target.
        await wait_until(
            lambda: target.stats.requests >= 10 and target.stats.in_flight == 5,
            "a second round of 5 requests in flight",
        )
        engine.stop()
    final = engine.final
    assert final is not None
    # Every request the target received was completed and recorded.
    assert final.requests == target.stats.requests
    assert final.errors == 0
    assert final.elapsed < 2.0


# -- HTTP/2 respects the server's SETTINGS_MAX_CONCURRENT_STREAMS --------------------


class StreamCountingApp:
    """An ASGI app that holds each response and records the peak of concurrent requests."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.requests += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await trio.sleep(0.02)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        finally:
            self.active -= 1


async def test_h2_never_exceeds_max_concurrent_streams(nursery: trio.Nursery) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    app = StreamCountingApp()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.h2_max_concurrent_streams = 3
    config.loglevel = "WARNING"
    asgi: Any = app
    binds = await nursery.start(functools.partial(serve, asgi, config, mode="asgi"))
    port = int(binds[0].rsplit(":", 1)[1])
    _, final = await run(
        f"http://127.0.0.1:{port}/", "--http2", "-n", "60", "-c", "12", "--connections", "1"
    )
    assert final.requests == app.requests == 60
    assert final.errors == 0
    assert final.connections_opened == 1
    # 12 workers on one connection, but never more than the 3 streams the server allows.
    assert app.peak == 3


class FixedLimit:
    """A LimitController that always answers the same limit."""

    def __init__(self, limit: int) -> None:
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, now: float, sample: Sample) -> int:
        return self._limit

    def settled_limit(self) -> int:
        return self._limit

    def capacity_note(self, final: Snapshot) -> str:
        return f"fixed at {self._limit}"

    def on_retry_after(self, now: float, seconds: float) -> None:
        pass

    def pause_after(self, sample: Sample) -> float:
        return 0.0

    def on_lag(self, now: float, lag: float) -> None:
        pass


async def test_adaptive_h2_opens_connections_only_as_streams_need_them(
    target: RunningTarget,
) -> None:
    # Up to 40 streams over at most 4 connections: 10 streams fill one connection
    # before the next opens, so a limit of 12 needs exactly 2 of them.
    config = run_config(
        target.url,
        "--adaptive",
        "--http2",
        "--max-concurrency",
        "40",
        "--connections",
        "4",
        "-n",
        "300",
    )
    engine = Engine(config, controller=FixedLimit(12))
    final = await engine.run()
    assert final.requests == target.stats.requests == 300
    assert final.max_in_flight == 12
    assert final.connections_opened == target.stats.connections == 2


# -- HTTP/1.1 framings the target may choose ----------------------------------------

FRAMINGS = {
    # chunked transfer coding, keep-alive
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    # Content-Length, then the server closes: one connection per request
    "close": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    # no length at all: the body ends when the connection does (HTTP/1.0 style)
    "eof": b"HTTP/1.0 200 OK\r\n\r\nhello world",
}


async def serve_framing(
    nursery: trio.Nursery, answer: bytes, closes: bool, seen: dict[str, int]
) -> int:

    async def handle(stream: trio.SocketStream) -> None:
        seen["connections"] += 1
        async with contextlib.aclosing(request_heads(stream)) as heads:
            async for _ in heads:
                seen["requests"] += 1
                await stream.send_all(answer)
                if closes:
                    await stream.aclose()
                    return

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handle, listeners)
    port: int = listeners[0].socket.getsockname()[1]
    return port


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
async def test_http1_framings(nursery: trio.Nursery, framing: str) -> None:
    seen = {"connections": 0, "requests": 0}
    port = await serve_framing(nursery, FRAMINGS[framing], framing != "chunked", seen)
    _, final = await run(f"http://127.0.0.1:{port}/", "-n", "30", "-c", "3")
    assert final.requests == seen["requests"] == 30
    assert final.errors == 0
    assert final.status_codes == {200: 30}
    if framing == "chunked":
        assert seen["connections"] == 3  # kept alive
    else:
        assert seen["connections"] == 30  # a new connection for every request
        assert final.connections_opened == 30


@pytest.mark.parametrize("protocol", ["--http1", "--http2"])
async def test_large_bodies_both_ways(target: RunningTarget, tmp_path: Path, protocol: str) -> None:
    # 1 MB up is far beyond HTTP/2's initial 64 KiB window: the sender must wait
    # for WINDOW_UPDATEs; 2 MB down needs Ballista's own window updates.
    body = tmp_path / "body.bin"
    body.write_bytes(b"x" * 1_000_000)
    _, up = await run(
        target.url, protocol, "-m", "POST", "--body-file", str(body), "-n", "8", "-c", "4"
    )
    assert up.status_codes == {200: 8}
    assert target.stats.bytes_received == 8 * 1_000_000
    _, down = await run(target.url_for("/?size=2000000"), protocol, "-n", "8", "-c", "4")
    assert down.status_codes == {200: 8}
    assert down.bytes_received >= 8 * 2_000_000


async def test_http1_body_the_server_never_reads_is_a_write_timeout(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The body is written while the response is read; when neither ends, what was
    stuck was the writing."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)  # never read: the client's writes fill the socket buffers
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, hold, listeners)
    body = tmp_path / "body.bin"
    body.write_bytes(b"x" * 32_000_000)
    _, final = await run(
        f"http://127.0.0.1:{port}/", "--http1", "-m", "POST", "--body-file", str(body),
        "-n", "2", "-c", "1", "--timeout", "500ms",
    )  # fmt: skip
    assert kinds(final) == {"write_timeout": 2}
    assert 0 < final.bytes_sent < 2 * 32_000_000
    assert len(held) == 2
