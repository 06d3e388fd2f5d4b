"""Ballista against real servers with their default settings, counted at their access logs.

nginx, Apache (mod_http2), h2o and Caddy from Debian's packages, and Node's http
and http2 modules, over HTTP/1.1 and HTTP/2, in clear (h2c by prior knowledge)
and over TLS with ALPN. Every test compares what Ballista reports with what the
server logged: requests, statuses, protocol and connections (one client port
per connection), exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from helpers import run_config
from interop import (
    ECHO,
    LARGE,
    LARGE_SIZE,
    MODES,
    REDIRECT,
    SERVERS,
    SMALL,
    RealServer,
    start_server,
    tally,
)
from servers import TlsFiles

from ballista.core.snapshot import Snapshot
from ballista.engine.engine import Engine


def engine_for(server: RealServer, path: str, *argv: str, tls: TlsFiles) -> Engine:
    """An Engine built from `ballista run` flags against `path` on `server`, as the CLI does."""
    args = [server.url + path, *argv]
    if server.tls:
        args += ["--cacert", tls.ca_path]
    return Engine(run_config(*args), grace=2.0)


async def run(server: RealServer, path: str, *argv: str, tls: TlsFiles) -> Snapshot:
    with trio.fail_after(30):
        return await engine_for(server, path, *argv, tls=tls).run()


def protocol_flag(mode: str) -> str:
    return "--http2" if mode.startswith("h2") else "--http1"


def protocol_logged(mode: str) -> str:
    return "HTTP/2" if mode.startswith("h2") else "HTTP/1.1"


def errors(final: Snapshot) -> dict[str, int]:
    return {k: v for k, v in final.errors_by_kind.items() if v}


async def assert_matches_log(server: RealServer, final: Snapshot, mode: str) -> None:
    """Every response Ballista counted is a line of the server's log, and no other line is."""
    lines = await server.wait_for_lines(final.responses)
    statuses, protocols, connections = tally(lines)
    assert errors(final) == {}
    assert dict(statuses) == final.status_codes
    assert dict(protocols) == {protocol_logged(mode): final.responses}
    assert connections == final.connections_opened


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", SERVERS)
async def test_counts_match_the_access_log(
    nursery: trio.Nursery, tmp_path: Path, tls_files: TlsFiles, name: str, mode: str
) -> None:
    server = await start_server(nursery, name, mode, tmp_path, tls_files)
    # Over nginx's default keepalive_requests (1000) on HTTP/2, so its GOAWAY is met.
    n = 1100 if name == "nginx" and mode.startswith("h2") else 300
    final = await run(server, SMALL, protocol_flag(mode), "-n", str(n), "-c", "8", tls=tls_files)
    assert final.requests == final.responses == n
    assert final.status_codes == {200: n}
    await assert_matches_log(server, final, mode)


@pytest.mark.parametrize("mode", ["h2c", "h2-tls"])
async def test_nginx_graceful_goaway_under_concurrency(
    nursery: trio.Nursery, tmp_path: Path, tls_files: TlsFiles, mode: str
) -> None:
    """nginx ends each HTTP/2 connection after 1,000 requests (keepalive_requests) with
    GOAWAY(NO_ERROR): the streams it took complete, the others go to a fresh connection."""
    server = await start_server(nursery, "nginx", mode, tmp_path, tls_files)
    n = 2500
    final = await run(
        server, SMALL, "--http2", "-n", str(n), "-c", "100", "--connections", "2", tls=tls_files
    )
    assert final.requests == final.responses == n
    assert final.status_codes == {200: n}
    await assert_matches_log(server, final, mode)
    # At most 1,000 requests per connection: at least three of them.
    assert final.connections_opened >= 3


#: What each server answers to a POST of a body it does not read.
EARLY_ANSWER = {
    "nginx": (ECHO, 200),
    "apache": (SMALL, 200),
    "h2o": (SMALL, 405),
    "caddy": (ECHO, 200),
    "node": (ECHO, 200),
}


@pytest.mark.parametrize("mode", ["h2c", "h2-tls", "http1", "http1-tls"])
@pytest.mark.parametrize("name", SERVERS)
async def test_large_body_answered_early(
    nursery: trio.Nursery, tmp_path: Path, tls_files: TlsFiles, name: str, mode: str
) -> None:
    """A body larger than the flow-control window, answered before it was all sent:
    the response ends the exchange (RFC 9113 §8.1), at once, on the same connection."""
    server = await start_server(nursery, name, mode, tmp_path, tls_files)
    body = tmp_path / "body.bin"
    body.write_bytes(b"x" * 300_000)
    path, status = EARLY_ANSWER[name]
    n = 20
    argv = ["-m", "POST", "--body-file", str(body), "-n", str(n), "-c", "2", "--timeout", "10s"]
    final = await run(server, path, protocol_flag(mode), *argv, tls=tls_files)
    assert final.requests == final.responses == n
    assert final.status_codes == {status: n}
    await assert_matches_log(server, final, mode)
    # Nobody waited for a window the server would never open.
    assert final.latency.max < 2.0


async def test_waiters_for_a_stream_slot_are_served_in_turn(
    nursery: trio.Nursery, tmp_path: Path, tls_files: TlsFiles
) -> None:
    """h2o allows 100 streams a connection: with 101 workers on one connection one
    always waits for a slot, and takes the next one that frees; none waits the run out."""
    server = await start_server(nursery, "h2o", "h2c", tmp_path, tls_files)
    final = await run(
        server, SMALL, "--http2", "-c", "101", "--connections", "1", "-d", "2s", tls=tls_files
    )
    await assert_matches_log(server, final, "h2c")
    assert final.connections_opened == 1
    assert final.responses > 101
    assert final.latency.max < 1.0


async def test_http2_refused_by_alpn_fails_at_once(
    nursery: trio.Nursery, tmp_path: Path, tls_files: TlsFiles
) -> None:
    """Apache without h2 in its Protocols selects http/1.1 from what --http2 offers
    (h2, then http/1.1): HTTP/2 will not happen, so each request fails at once, with
    nothing sent, and the summary says what the server selected."""
    server = await start_server(nursery, "apache", "http1-tls", tmp_path, tls_files)
    engine = engine_for(
        server, SMALL, "--http2", "-n", "6", "-c", "2", "--timeout", "10s", tls=tls_files
    )
    with trio.fail_after(30):
        final = await engine.run()
    assert errors(final) == {"protocol": 6}
    assert final.latency.max < 2.0
    assert server.lines() == []
    assert any(
        "did not agree to HTTP/2 over ALPN (it selected 'http/1.1')" in n for n in engine.notes()
    )


@pytest.mark.parametrize("mode", ["h2c", "h2-tls", "http1"])
@pytest.mark.parametrize("name", SERVERS)
async def test_large_responses(
    nursery: trio.Nursery, tmp_path: Path, tls_files: TlsFiles, name: str, mode: str
) -> None:
    """1 MB files, several streams at once: flow control keeps them coming, every byte counted."""
    server = await start_server(nursery, name, mode, tmp_path, tls_files)
    n = 12
    final = await run(server, LARGE, protocol_flag(mode), "-n", str(n), "-c", "4", tls=tls_files)
    assert final.requests == final.responses == n
    assert final.status_codes == {200: n}
    await assert_matches_log(server, final, mode)
    assert final.bytes_received >= n * LARGE_SIZE


@pytest.mark.parametrize("mode", ["h2-tls", "http1"])
@pytest.mark.parametrize("name", SERVERS)
async def test_redirects_are_counted_not_followed(
    nursery: trio.Nursery, tmp_path: Path, tls_files: TlsFiles, name: str, mode: str
) -> None:
    server = await start_server(nursery, name, mode, tmp_path, tls_files)
    n = 100
    final = await run(server, REDIRECT, protocol_flag(mode), "-n", str(n), "-c", "4", tls=tls_files)
    assert final.requests == final.responses == n
    assert final.status_codes == {301: n}
    assert final.failed == 0
    await assert_matches_log(server, final, mode)
    assert {line.path for line in server.lines()} == {REDIRECT}
