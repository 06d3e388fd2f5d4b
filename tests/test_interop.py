"""Ballista against real servers with their default settings, counted at their access logs.

nginx, Apache (mod_http2), h2o and Caddy from Debian's packages, over HTTP/1.1 and
HTTP/2, in clear (h2c by prior knowledge) and over TLS with ALPN. Every test
compares what Ballista reports with what the server logged: requests, statuses,
protocol and connections (one client port per connection), exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from interop import (
    MODES,
    SERVERS,
    SMALL,
    RealServer,
    start_server,
    tally,
)
from servers import TlsFiles

from ballista.cli.main import build_parser, config_from_args
from ballista.core.snapshot import Snapshot
from ballista.engine.engine import Engine


async def run(server: RealServer, path: str, *argv: str, tls: TlsFiles) -> Snapshot:
    """Run Ballista as the CLI would, against `path` on `server`."""
    args = ["run", server.url + path, *argv]
    if server.tls:
        args += ["--cacert", tls.ca_path]
    ns = build_parser(args).parse_args(args)
    engine = Engine(config_from_args(ns, sequential=ns.sequential), grace=2.0)
    with trio.fail_after(30):
        return await engine.run()


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


def _known_broken(name: str, mode: str) -> pytest.MarkDecorator | tuple[()]:
    if name == "nginx" and mode.startswith("h2"):
        return pytest.mark.xfail(reason="issue 11: nginx's graceful GOAWAY", strict=True)
    return ()


@pytest.mark.parametrize(
    ("name", "mode"),
    [pytest.param(n, m, marks=_known_broken(n, m)) for n in SERVERS for m in MODES],
)
async def test_counts_match_the_access_log(
    nursery: trio.Nursery, tmp_path: Path, tls_files: TlsFiles, name: str, mode: str
) -> None:
    server = await start_server(nursery, name, mode, tmp_path, tls_files)
    # Over nginx's default keepalive_requests (1000) on HTTP/2, so its GOAWAY is met.
    n = 1100 if mode.startswith("h2") else 300
    final = await run(server, SMALL, protocol_flag(mode), "-n", str(n), "-c", "8", tls=tls_files)
    assert final.requests == final.responses == n
    assert final.status_codes == {200: n}
    await assert_matches_log(server, final, mode)
