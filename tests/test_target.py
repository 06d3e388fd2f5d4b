"""The embedded target over real sockets, its latency model and options; the fault servers."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import ssl
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpcore
import pytest
import servers
import trio
import trio.testing
from servers import FaultServer, RunningTarget, TargetFactory, TlsFiles

from ballista.core.errors import ConfigError, ListenError
from ballista.target.app import (
    Z99,
    TargetConfig,
    TargetStats,
    add_target_arguments,
    latency_for,
    run_target_forever,
    sample_latency,
    serve_target,
    target_config_from_args,
)


async def get(
    pool: httpcore.AsyncConnectionPool, url: str, read_timeout: float = 5.0
) -> httpcore.Response:
    with trio.fail_after(10):
        return await pool.request("GET", url, extensions={"timeout": {"read": read_timeout}})


def h1_pool(**kw: Any) -> httpcore.AsyncConnectionPool:
    return httpcore.AsyncConnectionPool(max_connections=1, **kw)


def h2_pool(**kw: Any) -> httpcore.AsyncConnectionPool:
    return httpcore.AsyncConnectionPool(http1=False, http2=True, max_connections=1, **kw)


# --- serving ------------------------------------------------------------------------


async def test_http1_answers_and_counts_one_connection(target: RunningTarget) -> None:
    async with h1_pool() as pool:
        for _ in range(5):
            r = await get(pool, target.url)
            assert r.status == 200
            assert r.extensions["http_version"] == b"HTTP/1.1"
            assert len(r.content) == target.config.body_size
    assert (target.stats.requests, target.stats.connections) == (5, 1)
    async with h1_pool() as pool:
        await get(pool, target.url)
    assert (target.stats.requests, target.stats.connections) == (6, 2)
    assert target.stats.statuses == {200: 6}
    # The client can hold the whole body before the server's task has returned.
    await trio.testing.wait_all_tasks_blocked()
    assert target.stats.in_flight == 0


async def test_h2c_prior_knowledge_streams_share_one_connection(target: RunningTarget) -> None:
    versions: list[bytes] = []
    async with h2_pool() as pool:

        async def one() -> None:
            r = await get(pool, target.url_for("/?delay=0.02"))
            assert r.status == 200
            versions.append(r.extensions["http_version"])

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(one)
    assert versions == [b"HTTP/2"] * 8
    assert (target.stats.requests, target.stats.connections) == (8, 1)


async def test_query_overrides_delay_status_size(target_factory: TargetFactory) -> None:
    # The defaults (random delays, errors) must not leak into overridden fields.
    target = await target_factory(fixed_delay=None, error_rate=1.0)
    async with h1_pool() as pool:
        start = trio.current_time()
        r = await get(pool, target.url_for("/?delay=0.1&status=200"))
        assert trio.current_time() - start >= 0.1
        assert r.status == 200
        r = await get(pool, target.url_for("/?delay=0&status=503&size=1024"))
        assert (r.status, len(r.content)) == (503, 1024)
        r = await get(pool, target.url_for("/?delay=50ms&status=404"))
        assert r.status == 404
        for bad in ("delay=soon", "delay=-1", "delay=3600", "status=abc", "status=99", "size=-1"):
            r = await get(pool, target.url_for(f"/?{bad}"))
            assert r.status == 400, bad
            assert bad.split("=")[0] in r.content.decode()
    assert target.stats.statuses[400] == 6


async def test_error_rate_injects_500_and_503(target_factory: TargetFactory) -> None:
    target = await target_factory(error_rate=1.0)
    async with h1_pool() as pool:
        statuses = {(await get(pool, target.url)).status for _ in range(30)}
        assert statuses == {500, 503}
        assert (await get(pool, target.url_for("/health"))).status == 200


async def test_health_and_stats(target: RunningTarget) -> None:
    async with h1_pool() as pool:
        r = await get(pool, target.url_for("/health"))
        assert (r.status, r.content) == (200, b"ok\n")
        await get(pool, target.url)
        for _ in range(3):  # /stats does not count itself
            r = await get(pool, target.url_for("/stats"))
            assert r.status == 200
            assert json.loads(r.content) == {
                "requests": 2,
                "connections": 1,
                "in_flight": 0,
                "bytes_received": 0,
                "statuses": {"200": 2},
                "api": {},
            }


async def test_counts_request_bodies(target: RunningTarget) -> None:
    async with h1_pool() as pool:
        r = await pool.request("POST", target.url, content=b"z" * 5000)
        assert r.status == 200
    assert target.stats.bytes_received == 5000


async def test_fixed_delay_target(fixed_delay_target: RunningTarget) -> None:
    async with h2_pool() as pool:
        start = trio.current_time()
        await get(pool, fixed_delay_target.url)
        assert trio.current_time() - start >= 0.02
    assert fixed_delay_target.config.fixed_delay == 0.02


async def test_tls_alpn_h2_and_http1(tls_target: RunningTarget, tls_files: TlsFiles) -> None:
    assert tls_target.url.startswith("https://127.0.0.1:")
    assert tls_target.ca_path == tls_files.ca_path
    async with h2_pool(ssl_context=tls_files.client_context()) as pool:
        r = await get(pool, tls_target.url)
        assert (r.status, r.extensions["http_version"]) == (200, b"HTTP/2")
    http1_only = ssl.create_default_context(cafile=tls_target.ca_path)
    http1_only.set_alpn_protocols(["http/1.1"])
    async with h1_pool(ssl_context=http1_only) as pool:
        r = await get(pool, tls_target.url_for("/health"))
        assert (r.status, r.extensions["http_version"]) == (200, b"HTTP/1.1")
    assert (tls_target.stats.requests, tls_target.stats.connections) == (2, 2)


async def test_localhost_name_verifies(tls_target: RunningTarget, tls_files: TlsFiles) -> None:
    async with h1_pool(ssl_context=tls_files.client_context()) as pool:
        r = await get(pool, f"https://localhost:{tls_target.port}/health")
        assert r.status == 200


async def test_cancellation_stops_and_frees_the_port() -> None:
    stats = TargetStats()
    with trio.move_on_after(5) as guard:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: serve_target(
                    servers.TEST_TARGET, stats=stats, task_status=task_status
                )
            )
            async with h1_pool() as pool:
                await get(pool, f"http://127.0.0.1:{port}/")
            nursery.cancel_scope.cancel()
    assert not guard.cancelled_caught
    assert stats.requests == 1
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_shutdown_trigger_returns_gracefully() -> None:
    stop = trio.Event()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def serve(*, task_status: trio.TaskStatus[int]) -> None:
                await serve_target(
                    servers.TEST_TARGET, shutdown_trigger=stop.wait, task_status=task_status
                )

            port = await nursery.start(serve)
            assert port > 0
            stop.set()


async def test_unusable_address_or_certificate_is_a_ballista_error(
    nursery: trio.Nursery, target: RunningTarget, tmp_path: Path
) -> None:
    with pytest.raises(ListenError, match=r"cannot listen on 127\.0\.0\.1:"):
        await nursery.start(serve_target, replace(servers.TEST_TARGET, port=target.port))
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="--certfile"):
        await nursery.start(
            serve_target, replace(servers.TEST_TARGET, certfile=missing, keyfile=missing)
        )


def test_run_target_forever_refuses_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ListenError, match="cannot listen"):
            run_target_forever(TargetConfig(port=busy.getsockname()[1]))


def test_run_target_forever_prints_and_stops_on_sigterm() -> None:
    code = (
        "from ballista.target.app import TargetConfig, run_target_forever\n"
        "raise SystemExit(run_target_forever(TargetConfig(port=0)))\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("ballista target listening on http://127.0.0.1:")
            assert line.rstrip().endswith("(HTTP/1.1 + h2c)")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=8) == 0
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)


# --- latency model ------------------------------------------------------------------


def test_latency_quantiles_are_the_configured_ones() -> None:
    config = TargetConfig()
    assert latency_for(config, 0.0) == pytest.approx(0.005)
    assert latency_for(config, Z99) == pytest.approx(0.040)
    assert latency_for(config, 50.0) == pytest.approx(0.4)  # capped at 10 x p99
    other = TargetConfig(latency_median=0.1, latency_p99=0.5)
    assert latency_for(other, Z99) == pytest.approx(0.5)


def test_latency_samples_match_median_and_p99() -> None:
    config = TargetConfig()
    rng = random.Random(7)
    draws = sorted(sample_latency(config, rng) for _ in range(40_000))
    assert statistics.median(draws) == pytest.approx(0.005, rel=0.05)
    assert draws[int(0.99 * len(draws))] == pytest.approx(0.040, rel=0.1)
    assert statistics.fmean(draws) == pytest.approx(0.0075, rel=0.05)
    assert draws[0] > 0 and draws[-1] <= 0.4


def test_fixed_delay_is_exact() -> None:
    config = TargetConfig(fixed_delay=0.25)
    rng = random.Random(1)
    assert {sample_latency(config, rng) for _ in range(100)} == {0.25}
    assert sample_latency(replace(config, fixed_delay=0.0), rng) == 0.0


# --- options ------------------------------------------------------------------------


def parse(*argv: str) -> TargetConfig:
    parser = argparse.ArgumentParser()
    add_target_arguments(parser)
    return target_config_from_args(parser.parse_args(list(argv)))


def test_defaults_and_values() -> None:
    assert parse() == TargetConfig(port=8080)
    c = parse(
        "--port=0",
        "--latency-median=10ms",
        "--latency-p99=0.2",
        "--error-rate=5%",
        "--body-size=0",
        "--seed=3",
    )
    assert (c.port, c.latency_median, c.latency_p99) == (0, 0.01, 0.2)
    assert (c.error_rate, c.body_size, c.seed, c.fixed_delay) == (0.05, 0, 3, None)
    assert parse("--fixed-delay=0").fixed_delay == 0.0
    assert parse("--error-rate=0.5").error_rate == 0.5


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--port=http"], "--port"),
        (["--port=70000"], "port"),
        (["--latency-median=fast"], "--latency-median"),
        (["--latency-median=0"], "--latency-median"),
        (["--latency-median=50ms", "--latency-p99=40ms"], "--latency-p99"),
        (["--fixed-delay=-1s"], "--fixed-delay"),
        (["--fixed-delay=2h"], "--fixed-delay"),
        (["--error-rate=150%"], "--error-rate"),
        (["--error-rate=-0.1"], "--error-rate"),
        (["--error-rate=nan"], "--error-rate"),
        (["--error-rate=lots"], "--error-rate"),
        (["--body-size=-1"], "--body-size"),
        (["--body-size=1e9"], "--body-size"),
        (["--certfile=cert.pem"], "--certfile"),
        (["--seed=x"], "--seed"),
    ],
)
def test_bad_values_are_one_line_config_errors(argv: list[str], names: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(*argv)
    message = str(info.value)
    assert names in message
    assert "\n" not in message


# --- fault servers do what they claim -----------------------------------------------


def chain(exc: BaseException | None) -> list[BaseException]:
    out = []
    while exc is not None:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


async def failure_of(url: str, read_timeout: float = 5.0, **kw: Any) -> list[BaseException]:
    with pytest.raises(Exception) as info:
        async with httpcore.AsyncConnectionPool(**kw) as pool:
            await get(pool, url, read_timeout)
    return chain(info.value)


async def test_closed_port_refuses(closed_port: int) -> None:
    errors = await failure_of(f"http://127.0.0.1:{closed_port}/")
    assert isinstance(errors[0], httpcore.ConnectError)


async def test_reset_server(reset_server: FaultServer) -> None:
    errors = await failure_of(reset_server.url)
    assert any(isinstance(e, ConnectionResetError) or "reset" in str(e) for e in errors)
    assert (reset_server.connections, reset_server.requests) == (1, 1)


async def test_silent_server(silent_server: FaultServer) -> None:
    errors = await failure_of(silent_server.url, read_timeout=0.1)
    assert isinstance(errors[0], httpcore.ReadTimeout)
    assert silent_server.requests == 1


async def test_garbage_server(garbage_server: FaultServer) -> None:
    errors = await failure_of(garbage_server.url)
    assert isinstance(errors[0], httpcore.RemoteProtocolError)
    assert "status line" in str(errors[0])


async def test_close_immediately_server(close_immediately_server: FaultServer) -> None:
    errors = await failure_of(close_immediately_server.url)
    assert isinstance(errors[0], httpcore.RemoteProtocolError | httpcore.ReadError)
    assert (close_immediately_server.connections, close_immediately_server.requests) == (1, 0)


async def test_tls_untrusted_server(tls_untrusted_server: FaultServer) -> None:
    errors = await failure_of(tls_untrusted_server.url)
    assert any(isinstance(e, ssl.SSLCertVerificationError) for e in errors)
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    async with h1_pool(ssl_context=insecure) as pool:
        assert (await get(pool, tls_untrusted_server.url)).status == 200


async def test_tls_plaintext_server(tls_plaintext_server: FaultServer) -> None:
    errors = await failure_of(tls_plaintext_server.url)
    assert any(isinstance(e, ssl.SSLError) for e in errors)
    assert tls_plaintext_server.url.startswith("https://")


async def test_h2_rst_server_refuses_every_other_stream(h2_rst_server: FaultServer) -> None:
    outcomes: list[int] = []
    async with h2_pool() as pool:
        for _ in range(4):
            try:
                outcomes.append((await get(pool, h2_rst_server.url)).status)
            except httpcore.RemoteProtocolError as e:
                event = e.args[0]
                assert isinstance(event, h2.events.StreamReset)
                outcomes.append(-event.error_code)
    refused = -h2.errors.ErrorCodes.REFUSED_STREAM
    assert outcomes == [200, refused, 200, refused]
    assert (h2_rst_server.connections, h2_rst_server.answered, h2_rst_server.refused) == (1, 2, 2)


async def test_h2_goaway_server_after_n_streams(nursery: trio.Nursery) -> None:
    server = await servers.start_h2_goaway_server(nursery, after_streams=2)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    conn.initiate_connection()
    for stream_id in (1, 3, 5, 7):
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1"),
            (b":path", b"/"),
        ]
        conn.send_headers(stream_id, headers, end_stream=True)
    ended: list[int] = []
    goaway: h2.events.ConnectionTerminated | None = None
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(conn.data_to_send())
            while data := await stream.receive_some(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.StreamEnded):
                        ended.append(event.stream_id)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        goaway = event
                await stream.send_all(conn.data_to_send())
    assert sorted(ended) == [1, 3]
    assert goaway is not None
    assert (goaway.error_code, goaway.last_stream_id) == (
        h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
        3,
    )
    assert (server.requests, server.answered, server.goaways) == (4, 2, 1)
    assert server.extra["ignored"] == 2
