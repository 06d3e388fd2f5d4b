"""One HTTP/1.1 connection that Ballista owns, driven with h11: keep-alive, lazy reconnect."""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from typing import Protocol

import h11
import trio

from ballista.core.config import Origin
from ballista.core.outcome import NO_ERROR, ErrorKind
from ballista.transport.connect import (
    BACKOFF_STATUSES,
    READ_SIZE,
    TARGET_FAILURES,
    ByteStream,
    Connected,
    PeerClosed,
    Phase,
    PreparedRequest,
    classify,
    close_quietly,
    connect,
    parse_retry_after,
)

_EOM = h11.EndOfMessage()

#: (status, error kind or NO_ERROR, bytes sent, bytes received)
Result = tuple[int, int, int, int]


class ConnectionEvents(Protocol):
    """Where connections report their lifecycle (the recorder)."""

    def connection_attempted(self) -> None: ...

    def connection_opened(self) -> None: ...

    def connection_closed(self) -> None: ...

    def request_retried(self) -> None: ...


class H1Connection:
    """A single HTTP/1.1 connection, reused with keep-alive and reopened when lost.

    Serves one request at a time; when several workers share it they take
    `lock` first (their wait is part of their latency).
    """

    multiplexed = False

    def __init__(
        self, origin: Origin, ssl_context: ssl.SSLContext | None, events: ConnectionEvents
    ) -> None:
        self._origin = origin
        self._ssl_context = ssl_context
        self._events = events
        self._conn: Connected | None = None
        self._h11 = h11.Connection(h11.CLIENT)
        self.lock = trio.Lock()
        #: True when several workers share this connection and must take `lock`.
        self.shared = False
        #: seconds from the last 429/503's Retry-After, until the engine takes it
        self.retry_after: float | None = None

    def _note_retry_after(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            if name == b"retry-after":
                self.retry_after = parse_retry_after(value)

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def adopt(self, connected: Connected) -> None:
        """Take over a connection opened elsewhere (the engine's ALPN probe)."""
        self._conn = connected
        self._h11 = h11.Connection(h11.CLIENT)
        self._events.connection_attempted()
        self._events.connection_opened()

    async def _open(self) -> Connected:
        self._events.connection_attempted()
        connected = await connect(self._origin, self._ssl_context)
        if connected.alpn not in (None, "http/1.1"):
            await close_quietly(connected.stream)
            raise PeerClosed(f"ALPN chose {connected.alpn!r} on an HTTP/1.1 connection")
        self._conn = connected
        self._h11 = h11.Connection(h11.CLIENT)
        self._events.connection_opened()
        return connected

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._events.connection_closed()
            await close_quietly(conn.stream)

    async def aclose(self) -> None:
        await self._drop()

    async def request(self, req: PreparedRequest, deadline: float) -> Result:
        """Send `req` and read the whole response before `deadline`. Never raises for
        the target's failures: they come back as an error kind."""
        if not self.shared:
            return await self._exchange(req, deadline)
        with trio.CancelScope(deadline=deadline) as scope:
            await self.lock.acquire()
        if scope.cancelled_caught:
            return 0, ErrorKind.POOL_TIMEOUT, 0, 0
        try:
            return await self._exchange(req, deadline)
        finally:
            self.lock.release()

    async def _exchange(self, req: PreparedRequest, deadline: float) -> Result:
        retried = False
        while True:
            phase = Phase.CONNECT
            sent = 0
            reading = _Reading()
            sender: _Sender | None = None
            reused = self._conn is not None
            with trio.CancelScope(deadline=deadline):
                try:
                    conn = self._conn
                    if conn is None:
                        conn = await self._open()
                    io = conn.io
                    h = self._h11
                    phase = Phase.WRITE
                    body = req.body
                    data = h.send(req.h11_request)
                    if len(body) <= _SEND_BEFORE_READING:
                        if body:
                            data += h.send(h11.Data(data=body))
                        data += h.send(_EOM)
                        await io.send_all(data)
                        sent = len(data)
                        phase = Phase.READ
                        status = await self._read_response(h, io, reading)
                        complete = True
                    else:
                        # The body goes out from the request's own bytes, never
                        # copied: a 20 MB body per worker would be two copies each.
                        parts = [data]
                        parts += h.send_with_data_passthrough(h11.Data(data=body)) or []
                        parts += h.send_with_data_passthrough(_EOM) or []
                        sender = _Sender(io, parts)
                        phase = Phase.READ
                        status = await self._send_while_reading(h, io, sender, reading)
                        sent = sender.sent
                        complete = sender.done
                    if complete and h.our_state is h11.DONE and h.their_state is h11.DONE:
                        h.start_next_cycle()
                    else:
                        # Answered before the whole body went out: what is left of
                        # the request makes the connection unusable for another.
                        await self._drop()
                    return status, NO_ERROR, sent, reading.received
                except h11.RemoteProtocolError as exc:
                    await self._drop()
                    if sender is not None:
                        sent = sender.sent
                    if not reading.eof:
                        return 0, ErrorKind.PROTOCOL, sent, reading.received
                    if reused and reading.received == 0 and not retried:
                        # The server closed an idle keep-alive connection as we reused it:
                        # open a fresh one and send again, as browsers and httpcore do.
                        retried = True
                        self._events.request_retried()
                        continue
                    return 0, classify(PeerClosed(str(exc)), phase), sent, reading.received
                except TARGET_FAILURES as exc:
                    await self._drop()
                    if sender is not None:
                        sent = sender.sent
                    if reused and reading.received == 0 and not retried and _is_stale(exc):
                        retried = True
                        self._events.request_retried()
                        continue
                    return 0, classify(exc, phase), sent, reading.received
                except BaseException:
                    # Cancelled from outside (the run is over), or a bug in Ballista:
                    # the exchange is unfinished and not the target's failure.
                    await self._drop()
                    raise
            # Only reached when the deadline cancelled the exchange.
            await self._drop()
            if sender is not None:
                sent = sender.sent
                phase = Phase.READ if sender.done else Phase.WRITE
            return 0, phase.timeout, sent, reading.received

    async def _read_response(self, h: h11.Connection, io: ByteStream, reading: _Reading) -> int:
        """Read one whole response; its status."""
        status = 0
        next_event = h.next_event
        while True:
            event = next_event()
            if event is h11.NEED_DATA:
                chunk = await io.receive_some(READ_SIZE)
                if not chunk:
                    reading.eof = True
                reading.received += len(chunk)
                # TLS streams hand out bytearrays; h11 appends them as is.
                h.receive_data(chunk)  # type: ignore[arg-type]
                continue
            cls = type(event)
            if cls is h11.Response:
                status = event.status_code  # type: ignore[union-attr]
                if status in BACKOFF_STATUSES:
                    self._note_retry_after(event.headers)  # type: ignore[union-attr]
            elif cls is h11.EndOfMessage:
                return status
            elif cls is h11.ConnectionClosed:
                raise PeerClosed("connection closed before the response ended")

    async def _send_while_reading(
        self, h: h11.Connection, io: ByteStream, sender: _Sender, reading: _Reading
    ) -> int:
        """Send a large request while reading the response: a server may answer before
        it has read the body (an error, a redirect, a handler that ignores it) and then
        stop reading, or close. Its complete answer ends the exchange (RFC 9112 §9.5)."""
        result: int | Exception
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            try:
                result = await self._read_response(h, io, reading)
            except Exception as exc:
                # Raised outside the nursery, so that it is not wrapped in a group.
                result = exc
            nursery.cancel_scope.cancel()
        if isinstance(result, Exception):
            raise result
        return result


#: Requests up to this size are written before reading: the socket buffers take
#: them at once, and no task is needed to read at the same time.
_SEND_BEFORE_READING = 64 * 1024
_SEND_CHUNK = 64 * 1024


class _Reading:
    """What reading a response has seen so far (kept when it fails, for classifying)."""

    __slots__ = ("eof", "received")

    def __init__(self) -> None:
        self.received = 0
        self.eof = False


class _Sender:
    """Writes a request in chunks, counting what went out. A failed write ends it
    quietly: the response, read meanwhile, decides how the exchange ended."""

    def __init__(self, io: ByteStream, parts: Sequence[bytes]) -> None:
        self._io = io
        self._parts = [memoryview(p) for p in parts]
        self._size = sum(len(p) for p in self._parts)
        self.sent = 0

    @property
    def done(self) -> bool:
        return self.sent == self._size

    async def run(self) -> None:
        try:
            for part in self._parts:
                for at in range(0, len(part), _SEND_CHUNK):
                    chunk = part[at : at + _SEND_CHUNK]
                    await self._io.send_all(chunk)
                    self.sent += len(chunk)
        except TARGET_FAILURES:
            pass


def _is_stale(exc: Exception) -> bool:
    return isinstance(exc, PeerClosed | trio.BrokenResourceError | trio.ClosedResourceError)
