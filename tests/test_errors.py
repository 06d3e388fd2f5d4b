"""Ballista's own failures: a user's situation is one line and exit 2; a bug is loud, exit 3.

The target's failures are data (see test_engine's fault servers); everything
here is about the other side of that line: exceptions the transport does not
map to an error kind, and listeners, files and certificates the user named.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import h2.connection
import h2.exceptions
import h11
import httpcore
import pytest
import trio
from servers import RunningTarget, TlsFiles

from ballista.cli.main import build_parser
from ballista.cli.run import config_from_args
from ballista.core.config import LoadSpec, Origin, RequestSpec, RunConfig
from ballista.core.errors import EXIT_INTERNAL, EXIT_USAGE
from ballista.core.outcome import NO_ERROR, ErrorKind
from ballista.core.snapshot import Snapshot
from ballista.engine.engine import Engine
from ballista.transport.connect import (
    TARGET_FAILURES,
    PeerClosed,
    Phase,
    PreparedRequest,
    TLSFailure,
    classify,
    prepare,
)
from ballista.transport.h1response import FastReader
from ballista.transport.http1 import H1Connection, Result
from ballista.transport.http2 import H2Connection

BALLISTA = [sys.executable, "-m", "ballista"]


def _from(outer: BaseException, *causes: BaseException) -> BaseException:
    """`outer` raised from causes[0], itself raised from causes[1], ... as wrappers chain them."""
    exc = outer
    for cause in causes:
        exc.__cause__ = cause
        exc = cause
    return outer


def _refused_by_every_address() -> BaseException:
    # trio's open_tcp_stream when every attempt fails, wrapped by httpcore's connect_tcp.
    attempts = ExceptionGroup("attempts", [ConnectionRefusedError(errno.ECONNREFUSED, "refused")])
    return _from(
        httpcore.ConnectError("all attempts failed"), OSError("all attempts failed"), attempts
    )


#: (exception as the transport sees it, phase, kind): the closed map, one row a case.
MAP = [
    (_refused_by_every_address(), Phase.CONNECT, ErrorKind.CONNECT_REFUSED),
    (
        _from(httpcore.ConnectError("x"), socket.gaierror(-2, "Name or service not known")),
        Phase.CONNECT,
        ErrorKind.DNS,
    ),
    (
        _from(httpcore.ConnectError("x"), OSError(errno.ENETUNREACH, "Network is unreachable")),
        Phase.CONNECT,
        ErrorKind.OTHER,
    ),
    (
        _from(httpcore.ConnectError("x"), TimeoutError(errno.ETIMEDOUT, "timed out")),
        Phase.CONNECT,
        ErrorKind.CONNECT_TIMEOUT,
    ),
    (trio.TooSlowError(), Phase.CONNECT, ErrorKind.CONNECT_TIMEOUT),
    (
        _from(
            TLSFailure("x"),
            httpcore.ConnectError("x"),
            trio.BrokenResourceError(),
            ssl.SSLCertVerificationError("bad cert"),
        ),
        Phase.CONNECT,
        ErrorKind.TLS,
    ),
    (
        _from(TLSFailure("x"), httpcore.ConnectError("x"), trio.BrokenResourceError()),
        Phase.CONNECT,
        ErrorKind.TLS,
    ),
    (
        _from(trio.BrokenResourceError(), BrokenPipeError(errno.EPIPE, "Broken pipe")),
        Phase.WRITE,
        ErrorKind.RESET,
    ),
    (trio.ClosedResourceError(), Phase.WRITE, ErrorKind.RESET),
    (httpcore.WriteTimeout("x"), Phase.WRITE, ErrorKind.WRITE_TIMEOUT),
    (
        _from(trio.BrokenResourceError(), ConnectionResetError(errno.ECONNRESET, "reset")),
        Phase.READ,
        ErrorKind.RESET,
    ),
    (trio.BrokenResourceError(), Phase.READ, ErrorKind.RESET),
    (httpcore.ReadTimeout("x"), Phase.READ, ErrorKind.READ_TIMEOUT),
    (OSError(errno.ETIMEDOUT, "timed out"), Phase.READ, ErrorKind.READ_TIMEOUT),
    (h11.RemoteProtocolError("bad status line"), Phase.READ, ErrorKind.PROTOCOL),
    (h2.exceptions.FlowControlError("window"), Phase.READ, ErrorKind.PROTOCOL),
    (PeerClosed("closed"), Phase.READ, ErrorKind.RESET),
]


@pytest.mark.parametrize(
    ("exc", "phase", "kind"), MAP, ids=lambda v: getattr(v, "name", None) or type(v).__name__
)
def test_network_and_protocol_failures_map_to_their_kind(
    exc: BaseException, phase: Phase, kind: ErrorKind
) -> None:
    assert isinstance(exc, TARGET_FAILURES)
    assert classify(exc, phase) is kind


@pytest.mark.parametrize(
    "bug",
    [
        RuntimeError("x"),
        AttributeError("x"),
        TypeError("x"),
        KeyError("x"),
        h11.LocalProtocolError("x"),
        AssertionError(),
    ],
)
def test_bugs_are_outside_the_map(bug: Exception) -> None:
    assert not isinstance(bug, TARGET_FAILURES)


class _Events:
    def connection_attempted(self) -> None:
        pass

    def connection_opened(self) -> None:
        pass

    def connection_closed(self) -> None:
        pass

    def request_retried(self) -> None:
        pass


class BuggyConnection:
    """Answers 200 at once `good` times, then hits a bug of Ballista's own."""

    multiplexed = False
    retry_after: float | None = None

    def __init__(self, good: int) -> None:
        self.good = good
        self.calls = 0
        self.closed = False

    async def request(self, req: PreparedRequest, deadline: float) -> Result:
        self.calls += 1
        if self.calls > self.good:
            raise RuntimeError("injected bug")
        await trio.sleep(0.01)
        return 200, NO_ERROR, 10, 20

    async def aclose(self) -> None:
        self.closed = True


def _config(**load: object) -> RunConfig:
    return RunConfig(
        origin=Origin("http", "127.0.0.1", 9),
        requests=(RequestSpec(name="default", method="GET", target="/"),),
        load=LoadSpec(**load),  # type: ignore[arg-type]
        protocol="http1",
    )


async def test_a_bug_ends_the_run_loudly_and_keeps_what_was_measured(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    conn = BuggyConnection(good=5)
    seen: list[Snapshot] = []
    engine = Engine(
        _config(model="closed", concurrency=1, requests=100),
        sinks=[seen.append],
        connection_factory=lambda i: conn,
    )
    with pytest.RaisesGroup(
        pytest.RaisesExc(RuntimeError, match="injected bug"), flatten_subgroups=True
    ):
        await engine.run()
    final = engine.final
    assert final is not None and final.final
    assert seen[-1] is final  # the sinks (live stream, metrics) saw the end too
    assert final.requests == final.responses == 5
    assert final.errors == 0
    assert not any(final.errors_by_kind.values())  # the bug is not the target's `other`
    assert engine.failed
    assert conn.closed
    assert any("internal error" in note for note in engine.notes())


@pytest.fixture
def injected_reader_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: FastReader, data: bytes | bytearray) -> bool:
        raise RuntimeError("injected bug in the HTTP/1.1 exchange")

    monkeypatch.setattr(FastReader, "feed", boom)


async def test_the_http1_transport_does_not_count_a_bug_as_an_error(
    target: RunningTarget, injected_reader_bug: None
) -> None:
    origin = Origin("http", "127.0.0.1", target.port)
    req = prepare(0, RequestSpec(name="default", method="GET", target="/"), origin)
    conn = H1Connection(origin, None, _Events())
    with pytest.raises(RuntimeError, match="injected bug"):
        await conn.request(req, trio.current_time() + 10)
    assert not conn.is_open  # the half-done exchange is not reused
    assert target.stats.requests == 1


async def test_the_http2_transport_does_not_count_a_bug_as_an_error(
    target: RunningTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(self: h2.connection.H2Connection, size: int, stream_id: int) -> None:
        raise RuntimeError("injected bug in the HTTP/2 reader")

    monkeypatch.setattr(h2.connection.H2Connection, "acknowledge_received_data", boom)
    origin = Origin("http", "127.0.0.1", target.port)
    req = prepare(0, RequestSpec(name="default", method="GET", target="/"), origin)
    results: list[Result] = []
    with pytest.RaisesGroup(
        pytest.RaisesExc(RuntimeError, match="injected bug"), flatten_subgroups=True
    ):
        async with trio.open_nursery() as nursery:
            conn = H2Connection(origin, None, _Events(), nursery)
            results.append(await conn.request(req, trio.current_time() + 10))
    assert results == []  # the request never came back as an error kind


def test_cli_internal_error_is_exit_3_with_traceback_and_keeps_the_summary(
    tmp_path: Path,
) -> None:
    # A real `ballista run` process whose HTTP/1.1 connection has a bug after 5 requests.
    out = tmp_path / "out.json"
    script = textwrap.dedent(
        f"""
        import sys
        from ballista.cli.main import main
        from ballista.core.outcome import NO_ERROR, ErrorKind
        from ballista.transport.http1 import H1Connection

        calls = 0

        async def exchange(self, *request):
            global calls
            calls += 1
            if calls > 5:
                raise RuntimeError("injected bug")
            return 200, NO_ERROR, 10, 20

        # Where the closed worker's requests go, on a connection of its own.
        H1Connection.exchange_in_scope = exchange
        sys.exit(main(["run", "http://127.0.0.1:9/", "--http1", "-c", "1", "-n", "50",
                       "--json", {str(out)!r}]))
        """
    )
    proc = _run([sys.executable, "-c", script])
    assert proc.returncode == EXIT_INTERNAL
    lines = proc.stderr.splitlines()
    assert lines[0] == "ballista: internal error: RuntimeError: injected bug", proc.stderr
    assert "Traceback" in proc.stderr
    doc = json.loads(out.read_text())
    assert doc["requests"] == doc["responses"] == 5
    assert doc["errors"] == 0
    assert not any(doc["errors_by_kind"].values())
    assert "5" in proc.stdout  # the text summary was printed too


# -- a user's situation: one line, exit 2, never a traceback ------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _assert_one_line(argv: list[str], needle: str) -> None:
    proc = _run([*BALLISTA, *argv])
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ballista: error: "), lines[0]
    assert needle in lines[0], lines[0]


URL = "http://127.0.0.1:9/"


#: (argv, what the one line must say), with {busy}, {closed} and {tmp} filled in.
SITUATIONS: list[tuple[list[str], str]] = [
    (
        ["run", URL, "-n", "1", "--metrics-port", "{busy}"],
        "127.0.0.1:{busy} (metrics endpoint): Address already in use",
    ),
    (
        ["run", URL, "-n", "1", "--live-port", "{busy}"],
        "127.0.0.1:{busy} (live stream): Address already in use",
    ),
    (
        ["run", URL, "-n", "1", "--metrics-port", "0", "--metrics-addr", "999.1.1.1"],
        "cannot listen on 999.1.1.1:0 (metrics endpoint)",
    ),
    (
        ["run", URL, "-n", "1", "--live-port", "0", "--live-addr", "999.1.1.1"],
        "cannot listen on 999.1.1.1:0 (live stream)",
    ),
    (
        ["serve", "--port", "{busy}", "--live-port", "0", "--data-dir", "{tmp}/d"],
        "127.0.0.1:{busy} (daemon API, --port)",
    ),
    (
        ["serve", "--port", "0", "--live-port", "{busy}", "--data-dir", "{tmp}/d2"],
        "127.0.0.1:{busy} (live stream, --live-port)",
    ),
    (
        [
            "serve",
            "--port",
            "0",
            "--metrics-port",
            "{busy}",
            "--live-port",
            "0",
            "--data-dir",
            "{tmp}/d3",
        ],
        "127.0.0.1:{busy} (metrics, --metrics-port)",
    ),
    (["target", "--port", "{busy}"], "127.0.0.1:{busy} (target): Address already in use"),
    (
        ["run", "https://127.0.0.1:9/", "-n", "1", "--cacert", "{tmp}/not.pem"],
        "holds no PEM certificate",
    ),
    (
        ["compare", "https://127.0.0.1:9/", "-n", "1", "--cacert", "{tmp}/not.pem"],
        "holds no PEM certificate",
    ),
    (["demo", "--json", "/nonexistent/out.json"], "--json: no such directory"),
    (["runs", "list", "--server", "http://127.0.0.1:{closed}"], "cannot reach the daemon"),
]


async def test_user_situations_are_one_line_and_exit_2(
    busy_port: int, closed_port: int, tmp_path: Path
) -> None:
    # One real process per case, run side by side: each pays Python's start-up.
    (tmp_path / "not.pem").write_text("not a certificate\n")
    fill = {"busy": busy_port, "closed": closed_port, "tmp": tmp_path}
    problems: list[str] = []

    async def check(argv: list[str], needle: str) -> None:
        argv = [a.format(**fill) for a in argv]
        needle = needle.format(**fill)
        proc = await trio.run_process(
            [*BALLISTA, *argv], capture_stdout=True, capture_stderr=True, check=False
        )
        err = proc.stderr.decode()
        lines = err.strip().splitlines()
        if (
            proc.returncode != EXIT_USAGE
            or "Traceback" in err
            or len(lines) != 1
            or not lines[0].startswith("ballista: error: ")
            or needle not in lines[0]
        ):
            problems.append(f"{argv}: exit {proc.returncode}, stderr {err!r}")

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for argv, needle in SITUATIONS:
                nursery.start_soon(check, argv, needle)
    assert not problems, "\n".join(problems)


def test_privileged_port_is_one_line_and_exit_2() -> None:
    # Root may bind port 1: run as `nobody` without capabilities, as a user would.
    unprivileged: list[str] = []
    if os.geteuid() == 0:
        unprivileged = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        unprivileged += ["--inh-caps=-all", "--bounding-set=-all"]
    proc = _run([*unprivileged, *BALLISTA, "run", URL, "-n", "1", "--metrics-port", "1"])
    assert proc.returncode == EXIT_USAGE, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ballista: error: "), lines[0]
    assert "Permission denied" in lines[0], lines[0]


async def test_an_alpn_probe_that_dies_before_http2_begins_is_counted_not_fatal(
    nursery: trio.Nursery, tls_files: TlsFiles
) -> None:
    # TLS with ALPN h2, then the server hangs up before its SETTINGS: the probe the
    # engine opened to learn the protocol dies while being adopted.
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_files.certfile, tls_files.keyfile)
    ctx.set_alpn_protocols(["h2"])
    listeners = await trio.open_ssl_over_tcp_listeners(0, ctx, host="127.0.0.1")
    tcp = listeners[0].transport_listener
    assert isinstance(tcp, trio.SocketListener)
    port = tcp.socket.getsockname()[1]
    accepted = 0

    async def hang_up(stream: trio.SSLStream[trio.SocketStream]) -> None:
        nonlocal accepted
        accepted += 1
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.do_handshake()
        await trio.aclose_forcefully(stream)

    await nursery.start(trio.serve_listeners, hang_up, listeners)
    argv = ["run", f"https://127.0.0.1:{port}/", "-n", "3", "-c", "1"]
    argv += ["--cacert", tls_files.ca_path, "--timeout", "2s"]
    ns = build_parser(argv).parse_args(argv)
    engine = Engine(config_from_args(ns))
    with trio.fail_after(20):
        final = await engine.run()
    assert final.requests == final.errors == 3
    assert {k: v for k, v in final.errors_by_kind.items() if v} == {"reset": 3}
    assert accepted == 4  # the probe, then one connection per request
