"""Real servers on 127.0.0.1 for integration tests: the embedded target and fault servers.

Every server runs in a nursery the caller owns (pytest-trio's `nursery`
fixture) and stops when it is cancelled. Each fault server provokes one error
kind for real and names it in `.kind`: a client test asserts that the
transport classifies what it sees as exactly that kind.
"""

from __future__ import annotations

import functools
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio
import trustme
from hyperframe.frame import GoAwayFrame, PingFrame, SettingsFrame

from ballista.core.outcome import ErrorKind
from ballista.target.app import TargetConfig, TargetStats, serve_target

HOST = "127.0.0.1"
#: No fault handler keeps a connection longer than this, whatever the client does.
HANDLER_CAP = 30.0
#: How long a server waits for the client to close after its own FIN.
DRAIN_CAP = 2.0
MAX_HEAD = 64 * 1024

#: The target tests run against by default: no random errors, no delay.
TEST_TARGET = TargetConfig(host=HOST, port=0, error_rate=0.0, fixed_delay=0.0, seed=1)


# --- TLS material -------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A trustme CA and a server certificate for 127.0.0.1 and localhost, on disk."""

    ca: trustme.CA
    ca_path: str  # what a client loads to verify the server
    certfile: str  # server certificate chain (PEM)
    keyfile: str  # server private key (PEM)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA and offers h2 and http/1.1."""
        ctx = ssl.create_default_context(cafile=self.ca_path)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        return ctx


def make_tls_files(directory: Path) -> TlsFiles:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    certfile = directory / "server.pem"
    keyfile = directory / "server.key"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.private_key_pem.write_to_path(str(keyfile))
    # The leaf first, then the chain: what load_cert_chain expects.
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return TlsFiles(ca=ca, ca_path=str(ca_path), certfile=str(certfile), keyfile=str(keyfile))


# --- the embedded target ------------------------------------------------------------


@dataclass
class RunningTarget:
    """A target serving in a test's nursery."""

    config: TargetConfig
    port: int
    stats: TargetStats
    #: The CA file a client needs to verify it (TLS targets only).
    ca_path: str | None = None

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT/` (https for TLS)."""
        return self.url_for("/")

    def url_for(self, path_and_query: str) -> str:
        return f"{self.config.scheme}://{self.host}:{self.port}{path_and_query}"


#: The `target_factory` fixture: `await target_factory(fixed_delay=0.05, tls=...)`.
TargetFactory = Callable[..., Awaitable[RunningTarget]]


async def start_target(
    nursery: trio.Nursery,
    config: TargetConfig = TEST_TARGET,
    *,
    tls: TlsFiles | None = None,
    **changes: Any,
) -> RunningTarget:
    """Start the target on a free port; `changes` override TargetConfig fields.

    `start_target(nursery, fixed_delay=0.02)` is a target with a known fixed delay.
    """
    if tls is not None:
        changes.update(certfile=tls.certfile, keyfile=tls.keyfile)
    config = replace(config, **changes)
    stats = TargetStats()
    port: int = await nursery.start(functools.partial(serve_target, config, stats=stats))
    return RunningTarget(
        config=config, port=port, stats=stats, ca_path=None if tls is None else tls.ca_path
    )


# --- fault servers ------------------------------------------------------------------


@dataclass
class FaultServer:
    """A raw server that misbehaves in one way. Counters are what it saw."""

    name: str
    kind: ErrorKind  # what a client must classify the failure as
    port: int = 0
    scheme: str = "http"
    connections: int = 0  # TCP connections accepted
    open: int = 0  # accepted and not yet closed
    most_open: int = 0  # the most connections open at once
    requests: int = 0  # HTTP/1.1 request heads read, or HTTP/2 streams opened
    answered: int = 0  # HTTP/2 servers: streams answered normally
    refused: int = 0  # h2_rst_server: streams reset with REFUSED_STREAM
    goaways: int = 0  # h2_goaway_server: GOAWAY frames sent
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}/"


Handler = Callable[[trio.abc.Stream], Awaitable[None]]


async def _listen(
    nursery: trio.Nursery,
    server: FaultServer,
    handler: Handler,
    ssl_context: ssl.SSLContext | None = None,
) -> FaultServer:
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    server.port = listeners[0].socket.getsockname()[1]

    async def bounded(stream: trio.abc.Stream) -> None:
        server.connections += 1
        server.open += 1
        server.most_open = max(server.most_open, server.open)
        try:
            with trio.move_on_after(HANDLER_CAP):
                try:
                    await handler(stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the client went away: nothing to provoke any more
            await trio.aclose_forcefully(stream)
        finally:
            server.open -= 1

    if ssl_context is None:
        serving: Callable[..., Awaitable[None]] = functools.partial(
            trio.serve_listeners, bounded, listeners
        )
    else:
        tls_listeners = [trio.SSLListener(lst, ssl_context) for lst in listeners]
        serving = functools.partial(trio.serve_listeners, bounded, tls_listeners)
    await nursery.start(serving)
    return server


async def _read_head(stream: trio.abc.Stream) -> bytes:
    """Read up to the end of one HTTP/1.1 request head (b"" if the client closed first)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < MAX_HEAD:
        chunk = await stream.receive_some(MAX_HEAD)
        if not chunk:
            return b""
        data += chunk
    return data


async def _close_gracefully(stream: trio.abc.Stream) -> None:
    """FIN, then drain until the client closes: closing a socket with unread data would
    send an RST instead, and the client could lose what it was sent."""
    if isinstance(stream, trio.SocketStream):
        await stream.send_eof()
    with trio.move_on_after(DRAIN_CAP):
        while await stream.receive_some(MAX_HEAD):
            pass
    await stream.aclose()


async def start_reset_server(nursery: trio.Nursery) -> FaultServer:
    """Reads the request, sends a status line, headers and part of the promised body,
    then aborts with a TCP RST (SO_LINGER 0): the client's read fails with
    ECONNRESET in the middle of the body -> `reset`."""
    server = FaultServer("reset_server", ErrorKind.RESET)

    async def handle(stream: trio.abc.Stream) -> None:
        if not await _read_head(stream):
            return
        server.requests += 1
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\npartial"
        )
        # Let the partial response reach the client before the RST does.
        await trio.sleep(0.02)
        assert isinstance(stream, trio.SocketStream)
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()

    return await _listen(nursery, server, handle)


async def start_silent_server(nursery: trio.Nursery) -> FaultServer:
    """Accepts and reads the request, never answers (holds the connection open for
    HANDLER_CAP at most): the client's read times out -> `read_timeout`."""
    server = FaultServer("silent_server", ErrorKind.READ_TIMEOUT)

    async def handle(stream: trio.abc.Stream) -> None:
        if await _read_head(stream):
            server.requests += 1
        # Keep reading so that we notice the client giving up; never write.
        while await stream.receive_some(MAX_HEAD):
            pass

    return await _listen(nursery, server, handle)


GARBAGE = b"\x00\x17\xfe garbage, not HTTP \xff\r\n\r\n"


async def start_garbage_server(nursery: trio.Nursery) -> FaultServer:
    """Reads the request, answers bytes that are not an HTTP response, then closes
    gracefully: the client's parser rejects them -> `protocol`."""
    server = FaultServer("garbage_server", ErrorKind.PROTOCOL)

    async def handle(stream: trio.abc.Stream) -> None:
        if not await _read_head(stream):
            return
        server.requests += 1
        await stream.send_all(GARBAGE)
        await _close_gracefully(stream)

    return await _listen(nursery, server, handle)


async def start_close_immediately_server(nursery: trio.Nursery) -> FaultServer:
    """Accepts and closes at once, without reading or writing a byte -> `reset`.

    The client's connect succeeds (the kernel completed the handshake), its
    request write usually succeeds too, then its read sees EOF before any
    response byte (h11: "Server disconnected without sending a response"). If
    the request reached the closed socket first, the kernel answers with an RST
    and the client may see ECONNRESET (on read) or EPIPE (on write) instead.
    All of these are the peer abandoning the connection: `reset`, not
    `protocol` (no byte violated HTTP).
    """
    server = FaultServer("close_immediately_server", ErrorKind.RESET)

    async def handle(stream: trio.abc.Stream) -> None:
        await stream.aclose()

    return await _listen(nursery, server, handle)


def _foreign_tls_context() -> ssl.SSLContext:
    """A server context whose certificate comes from a CA no test client trusts."""
    cert = trustme.CA().issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def start_tls_untrusted_server(nursery: trio.Nursery) -> FaultServer:
    """HTTPS with a certificate from an unknown CA: a verifying client fails the
    handshake (certificate verify failed) -> `tls`. A client with --insecure gets
    `200 ok` over HTTP/1.1 (ALPN offers http/1.1 only); `requests` counts those."""
    server = FaultServer("tls_untrusted_server", ErrorKind.TLS, scheme="https")

    async def handle(stream: trio.abc.Stream) -> None:
        if not await _read_head(stream):  # a failed handshake raises BrokenResourceError
            return
        server.requests += 1
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
        )

    return await _listen(nursery, server, handle, _foreign_tls_context())


async def start_tls_no_alpn_server(nursery: trio.Nursery) -> FaultServer:
    """HTTPS that ignores ALPN (selects nothing) and then waits in silence, as an
    HTTP/1.1 server waiting for a request head would (its certificate needs
    --insecure). A client that insists on HTTP/2 knows from the handshake that it
    will not get it -> `protocol` at once, not a timeout."""
    server = FaultServer("tls_no_alpn_server", ErrorKind.PROTOCOL, scheme="https")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1", "localhost").configure_cert(ctx)

    async def handle(stream: trio.abc.Stream) -> None:
        while await stream.receive_some(MAX_HEAD):
            server.requests += 1

    return await _listen(nursery, server, handle, ctx)


async def start_tls_plaintext_server(nursery: trio.Nursery) -> FaultServer:
    """Plain TCP on a port the client treats as https: it reads the ClientHello and
    answers a plaintext HTTP 400, so the client's handshake fails at once
    (ssl: wrong version number / record layer failure) -> `tls`. Its `url` is https."""
    server = FaultServer("tls_plaintext_server", ErrorKind.TLS, scheme="https")

    async def handle(stream: trio.abc.Stream) -> None:
        if not await stream.receive_some(MAX_HEAD):
            return
        server.requests += 1
        await stream.send_all(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        await _close_gracefully(stream)

    return await _listen(nursery, server, handle)


# --- HTTP/2 fault servers (h2c, prior knowledge) ------------------------------------

H2_OK_HEADERS = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"3")]


async def _serve_h2(
    stream: trio.abc.Stream,
    server: FaultServer,
    on_request: Callable[[h2.connection.H2Connection, int], bool],
    on_answered: Callable[[h2.connection.H2Connection, int], bool],
    before_send: Callable[[], bytes] = bytes,
    *,
    status: bytes = b"200",
) -> None:
    """Drive one h2c server connection with the h2 state machine.

    `on_request(conn, stream_id)` runs when a request's headers arrive and returns
    True to answer it; `on_answered(conn, stream_id)` runs after a stream was
    answered and returns True to end the connection (after sending what the
    connection queued, e.g. a GOAWAY). Answers carry `status`, sent unchecked.
    `before_send()` gives raw bytes to put before what h2 queued, in the same
    write (frames h2 itself would refuse).
    """
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False
        )
    )
    answer = [(b":status", status), *H2_OK_HEADERS[1:]]
    conn.initiate_connection()
    await stream.send_all(conn.data_to_send())
    wanted: set[int] = set()
    while True:
        data = await stream.receive_some(MAX_HEAD)
        if not data:
            return
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            await stream.send_all(conn.data_to_send())
            return
        finish = False
        for event in events:
            if isinstance(event, h2.events.RequestReceived) and event.stream_id is not None:
                server.requests += 1
                if on_request(conn, event.stream_id):
                    wanted.add(event.stream_id)
            if isinstance(event, h2.events.DataReceived) and event.stream_id is not None:
                try:
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                except h2.exceptions.StreamClosedError:
                    pass  # data still in flight on a stream we reset
            if isinstance(event, h2.events.StreamEnded) and event.stream_id in wanted:
                wanted.discard(event.stream_id)
                conn.send_headers(event.stream_id, answer)
                conn.send_data(event.stream_id, b"ok\n", end_stream=True)
                server.answered += 1
                finish = on_answered(conn, event.stream_id)
        await stream.send_all(before_send() + conn.data_to_send())
        if finish:
            await _close_gracefully(stream)
            return


async def start_h2_bad_status_server(nursery: trio.Nursery) -> FaultServer:
    """h2c server that answers every stream with `:status: abc`: a malformed response
    (h2 leaves inbound headers unvalidated for speed; Ballista must not) -> `protocol`."""
    server = FaultServer("h2_bad_status_server", ErrorKind.PROTOCOL)

    async def handle(stream: trio.abc.Stream) -> None:
        await _serve_h2(
            stream, server, lambda conn, sid: True, lambda conn, sid: False, status=b"abc"
        )

    return await _listen(nursery, server, handle)


async def start_h2_rst_server(nursery: trio.Nursery, *, refuse_every: int = 2) -> FaultServer:
    """h2c server that answers `200 ok` to most streams and resets every
    `refuse_every`-th stream it sees (counted in arrival order across all its
    connections: with the default, the 2nd, 4th, ...) with RST_STREAM
    REFUSED_STREAM -> `refused_stream`. The connection stays up."""
    server = FaultServer("h2_rst_server", ErrorKind.REFUSED_STREAM)

    def on_request(conn: h2.connection.H2Connection, stream_id: int) -> bool:
        if server.requests % refuse_every == 0:
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            server.refused += 1
            return False
        return True

    async def handle(stream: trio.abc.Stream) -> None:
        await _serve_h2(stream, server, on_request, lambda conn, sid: False)

    return await _listen(nursery, server, handle)


async def start_h2_goaway_server(
    nursery: trio.Nursery,
    *,
    after_streams: int = 3,
    error_code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
) -> FaultServer:
    """h2c server that answers the first `after_streams` streams of each connection
    with `200 ok`, then sends GOAWAY(`error_code`, last_stream_id = the last one it
    answered) and closes the connection. Streams the client opened after that id
    were never processed -> `goaway` (retrying them is safe, on a new connection).
    Streams it ignored are counted in `extra["ignored"]`."""
    server = FaultServer("h2_goaway_server", ErrorKind.GOAWAY)
    server.extra["ignored"] = 0

    async def handle(stream: trio.abc.Stream) -> None:
        accepted: list[int] = []
        answered_here = 0

        def on_request(conn: h2.connection.H2Connection, stream_id: int) -> bool:
            if len(accepted) >= after_streams:
                server.extra["ignored"] += 1
                return False
            accepted.append(stream_id)
            return True

        def on_answered(conn: h2.connection.H2Connection, stream_id: int) -> bool:
            nonlocal answered_here
            answered_here += 1
            if answered_here < after_streams:
                return False
            conn.close_connection(error_code, last_stream_id=max(accepted))
            server.goaways += 1
            return True

        await _serve_h2(stream, server, on_request, on_answered)

    return await _listen(nursery, server, handle)


async def start_h2_drain_server(nursery: trio.Nursery, *, after_streams: int = 3) -> FaultServer:
    """h2c server that drains each connection as nginx does at keepalive_requests:
    once `after_streams` requests arrived it sends GOAWAY(NO_ERROR, last_stream_id =
    the last of them) and then, in the same write, answers those streams; then it
    closes. Streams it ignored (`extra["ignored"]`) were never processed: a client
    sends them again on a new connection, and nothing is an error."""
    server = FaultServer("h2_drain_server", ErrorKind.GOAWAY)
    server.extra["ignored"] = 0

    async def handle(stream: trio.abc.Stream) -> None:
        accepted: list[int] = []
        goaway = bytearray()
        answered_here = 0

        def on_request(conn: h2.connection.H2Connection, stream_id: int) -> bool:
            if len(accepted) >= after_streams:
                server.extra["ignored"] += 1
                return False
            accepted.append(stream_id)
            if len(accepted) == after_streams:
                # h2 would close its state machine on close_connection(): the frame
                # is written by hand so that the answers can follow it.
                goaway.extend(GoAwayFrame(0, last_stream_id=stream_id, error_code=0).serialize())
                server.goaways += 1
            return True

        def on_answered(conn: h2.connection.H2Connection, stream_id: int) -> bool:
            nonlocal answered_here
            answered_here += 1
            return answered_here == after_streams

        def before_send() -> bytes:
            out = bytes(goaway)
            goaway.clear()
            return out

        await _serve_h2(stream, server, on_request, on_answered, before_send)

    return await _listen(nursery, server, handle)


#: What the flood servers send: a PING (the client must answer each with an ACK) and a
#: SETTINGS frame that changes nothing (the client must ACK it too).
PING_FRAME = PingFrame(0, opaque_data=b"flooding").serialize()
SETTINGS_FRAME = SettingsFrame(
    0, settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100}
).serialize()
#: Frames a flood server writes at once.
FLOOD_BURST = 512
#: How long a flood server floods each connection by default: a test's run is over sooner.
FLOOD_SECONDS = 2.0


async def _flood_h2(
    stream: trio.abc.Stream,
    server: FaultServer,
    frame: bytes,
    seconds: float,
    *,
    burst: int = FLOOD_BURST,
    pause: float = 0.0,
    rcvbuf: int | None = None,
) -> None:
    """Send h2c's preface, then `frame` as fast as the client reads for `seconds`
    (`burst` frames a write, `pause` seconds between writes) without reading a
    byte, then serve: every request it finds is answered `200 ok`.

    A server that does not read the ACKs it demands is the hard case: the client
    cannot write them, so whatever it queues stays in its memory. `rcvbuf` shrinks
    the server's receive buffer, so that the client's writes stall sooner.
    `extra["frames"]` counts the flood frames sent.
    """
    if rcvbuf is not None:
        assert isinstance(stream, trio.SocketStream)
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    conn.initiate_connection()
    await stream.send_all(conn.data_to_send())
    frames = frame * burst
    with trio.move_on_after(seconds):
        while True:
            await stream.send_all(frames)
            server.extra["frames"] += burst
            if pause:
                await trio.sleep(pause)
    while data := await stream.receive_some(MAX_HEAD):
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                server.requests += 1
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id is not None:
                conn.send_headers(event.stream_id, H2_OK_HEADERS)
                conn.send_data(event.stream_id, b"ok\n", end_stream=True)
                server.answered += 1
        await stream.send_all(conn.data_to_send())


async def start_h2_ping_flood_server(
    nursery: trio.Nursery,
    *,
    seconds: float = FLOOD_SECONDS,
    burst: int = FLOOD_BURST,
    pause: float = 0.0,
    rcvbuf: int | None = None,
) -> FaultServer:
    """h2c server that sends PING frames as fast as the client reads them for
    `seconds` on each connection, reading nothing (requests are answered after the
    flood): the client must drop that connection as flooded -> `protocol`
    (nghttp2 and Go's server do the same to clients). `burst`, `pause` and
    `rcvbuf`: see `_flood_h2`."""
    server = FaultServer("h2_ping_flood_server", ErrorKind.PROTOCOL)
    server.extra["frames"] = 0

    async def handle(stream: trio.abc.Stream) -> None:
        await _flood_h2(
            stream, server, PING_FRAME, seconds, burst=burst, pause=pause, rcvbuf=rcvbuf
        )

    return await _listen(nursery, server, handle)


async def start_h2_settings_flood_server(
    nursery: trio.Nursery, *, seconds: float = FLOOD_SECONDS
) -> FaultServer:
    """As the PING flood server, with SETTINGS frames (each one must be ACKed) -> `protocol`."""
    server = FaultServer("h2_settings_flood_server", ErrorKind.PROTOCOL)
    server.extra["frames"] = 0

    async def handle(stream: trio.abc.Stream) -> None:
        await _flood_h2(stream, server, SETTINGS_FRAME, seconds)

    return await _listen(nursery, server, handle)


async def start_h2_empty_data_flood_server(
    nursery: trio.Nursery, *, frames: int = 2000
) -> FaultServer:
    """h2c server that answers each request's headers, then sends `frames` empty DATA
    frames on its stream (each costs the client a parse, and carries nothing) and
    never ends it: the client must drop the connection as flooded -> `protocol`."""
    server = FaultServer("h2_empty_data_flood_server", ErrorKind.PROTOCOL)
    server.extra["frames"] = 0

    def on_request(conn: h2.connection.H2Connection, stream_id: int) -> bool:
        conn.send_headers(stream_id, H2_OK_HEADERS)
        for _ in range(frames):
            conn.send_data(stream_id, b"")
        server.extra["frames"] += frames
        return False

    async def handle(stream: trio.abc.Stream) -> None:
        await _serve_h2(stream, server, on_request, lambda conn, sid: False)

    return await _listen(nursery, server, handle)


async def start_h2_pinging_server(nursery: trio.Nursery) -> FaultServer:
    """h2c server that answers every stream `200 ok` and sends a PING with each answer
    (as servers measuring the round trip do), reading the ACKs. Not a fault: a client
    must never report these PINGs as a flood, however many requests it sends; `kind`
    is what it would wrongly report. `extra["pings"]` counts the PINGs sent."""
    server = FaultServer("h2_pinging_server", ErrorKind.PROTOCOL)
    server.extra["pings"] = 0

    def on_answered(conn: h2.connection.H2Connection, stream_id: int) -> bool:
        conn.ping(server.extra["pings"].to_bytes(8, "big"))
        server.extra["pings"] += 1
        return False

    async def handle(stream: trio.abc.Stream) -> None:
        await _serve_h2(stream, server, lambda conn, sid: True, on_answered)

    return await _listen(nursery, server, handle)


#: Every fault server starter, by fixture name (the `closed_port` fixture is `helpers.free_port`).
FAULT_SERVERS: dict[str, Callable[[trio.Nursery], Awaitable[FaultServer]]] = {
    "reset_server": start_reset_server,
    "silent_server": start_silent_server,
    "garbage_server": start_garbage_server,
    "close_immediately_server": start_close_immediately_server,
    "tls_untrusted_server": start_tls_untrusted_server,
    "tls_plaintext_server": start_tls_plaintext_server,
    "tls_no_alpn_server": start_tls_no_alpn_server,
    "h2_rst_server": start_h2_rst_server,
    "h2_goaway_server": start_h2_goaway_server,
    "h2_drain_server": start_h2_drain_server,
    "h2_ping_flood_server": start_h2_ping_flood_server,
    "h2_settings_flood_server": start_h2_settings_flood_server,
    "h2_empty_data_flood_server": start_h2_empty_data_flood_server,
}


# --- a service for journeys --------------------------------------------------------


@dataclass
class JourneyService:
    """A small stateful ASGI service for journey tests (HTTP/1.1 and h2c on one port):

    - `POST /login` JSON {"user"} -> {"token": "t-<user>"}, and cookie `sid=<user>`
    - `GET /me` -> 200 {"user"} with cookie sid, else 401; `Authorization: Bearer
      t-<user>` must match it when given (else 403)
    - `GET /logout` -> deletes the cookie (Max-Age=0)
    - `GET /cookies` -> sets two cookies in one response: `theme=dark`, `lang=fr`
    - `GET /echo?...` -> JSON {"method", "path", "query", "headers", "body"}
    - `GET /status/<code>` -> that status; `GET /slow/<ms>` -> 200 after that long
    `hits` counts requests per first path segment, as the server saw them.
    """

    port: int = 0
    hits: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rpartition(".")[2]
                await send({"type": f"{message['type']}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        path: str = scope["path"]
        head = path.split("/")[1] if path != "/" else ""
        self.hits[head] = self.hits.get(head, 0) + 1
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        cookies = dict(
            c.strip().partition("=")[::2] for c in headers.get("cookie", "").split(";") if c.strip()
        )
        status, out, extra = 200, b"", []
        if path == "/login":
            import json

            user = json.loads(body)["user"]
            out = json.dumps({"token": f"t-{user}"}).encode()
            extra.append((b"set-cookie", f"sid={user}; Path=/; HttpOnly".encode()))
        elif path == "/me":
            user = cookies.get("sid")
            auth = headers.get("authorization")
            if user is None:
                status = 401
            elif auth is not None and auth != f"Bearer t-{user}":
                status = 403
            else:
                out = b'{"user": "%s"}' % user.encode()
        elif path == "/logout":
            extra.append((b"set-cookie", b"sid=; Max-Age=0"))
        elif path == "/cookies":
            extra.append((b"set-cookie", b"theme=dark; Path=/"))
            extra.append((b"set-cookie", b"lang=fr; Path=/; HttpOnly"))
        elif path == "/echo":
            import json

            out = json.dumps(
                {
                    "method": scope["method"],
                    "path": path,
                    "query": scope["query_string"].decode(),
                    "headers": headers,
                    "body": body.decode("latin-1"),
                }
            ).encode()
        elif head == "status":
            status = int(path.split("/")[2])
        elif head == "deep":  # a hostile body: JSON nested N deep
            depth = int(path.split("/")[2])
            out = b"[" * depth + b"]" * depth
        elif head == "slow":
            await trio.sleep(int(path.split("/")[2]) / 1000)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(out)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": out})


async def start_journey_service(nursery: trio.Nursery) -> JourneyService:
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    service = JourneyService()
    hc = HypercornConfig()
    hc.bind = [f"{HOST}:0"]
    hc.loglevel = "WARNING"
    hc.keep_alive_max_requests = 1_000_000
    binds: list[str] = await nursery.start(functools.partial(serve, service, hc))
    service.port = int(binds[0].rsplit(":", 1)[1])
    return service
