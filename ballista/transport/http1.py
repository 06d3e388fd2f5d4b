"""One HTTP/1.1 connection that Ballista owns: keep-alive, lazy reconnect; responses read by llhttp."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Protocol

import trio

from ballista.core.config import Origin
from ballista.core.outcome import NO_ERROR, ErrorKind
from ballista.transport.connect import (
    BACKOFF_STATUSES,
    READ_SIZE,
    TARGET_FAILURES,
    ByteStream,
    Captured,
    Connected,
    PeerClosed,
    Phase,
    PreparedRequest,
    ProtocolViolation,
    classify,
    close_quietly,
    connect,
    parse_retry_after,
)
from ballista.transport.h1response import CapturingReader, FastReader

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
    a lock first (their wait is part of their latency).
    """

    multiplexed = False

    def __init__(
        self,
        origin: Origin,
        ssl_context: ssl.SSLContext | None,
        events: ConnectionEvents,
        *,
        capture: bool = False,
    ) -> None:
        self._origin = origin
        self._ssl_context = ssl_context
        self._events = events
        self._conn: Connected | None = None
        #: journeys read responses: a reader that keeps them (see `request(capture=)`)
        self._reader_class: type[FastReader] = CapturingReader if capture else FastReader
        self._reader = self._reader_class()
        #: where the last exchange stood when it was cancelled: (phase, sent, received)
        self._cut: tuple[Phase, int, int] = (Phase.CONNECT, 0, 0)
        # Made only for a shared connection: 1,000 unshared ones would carry 1,000 idle locks.
        self._lock: trio.Lock | None = None
        #: True when several workers share this connection and must take its lock.
        self.shared = False
        #: seconds from the last 429/503's Retry-After, until the engine takes it
        self.retry_after: float | None = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def adopt(self, connected: Connected) -> None:
        """Take over a connection opened elsewhere (the engine's ALPN probe)."""
        self._conn = connected
        self._reader = self._reader_class()
        self._events.connection_attempted()
        self._events.connection_opened()

    async def _open(self) -> Connected:
        self._events.connection_attempted()
        connected = await connect(self._origin, self._ssl_context)
        if connected.alpn not in (None, "http/1.1"):
            await close_quietly(connected.stream)
            raise PeerClosed(f"ALPN chose {connected.alpn!r} on an HTTP/1.1 connection")
        self._conn = connected
        self._reader = self._reader_class()
        self._events.connection_opened()
        return connected

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._events.connection_closed()
            await close_quietly(conn.stream)

    async def aclose(self) -> None:
        await self._drop()

    async def request(
        self, req: PreparedRequest, deadline: float | None, capture: Captured | None = None
    ) -> Result:
        """Send `req` and read the whole response before `deadline`. Never raises for
        the target's failures: they come back as an error kind.

        `deadline` None (unshared connections only): the caller's cancel scope
        bounds the exchange instead of one of its own, so that a worker moving
        one scope's deadline from request to request spares trio a scope per
        request. When that scope cancels the exchange, Cancelled propagates and
        `timed_out()` gives its result.

        `capture` (a connection made with capture=True): where the response's
        headers and body are kept."""
        if not self.shared:
            if deadline is None:
                return await self.exchange_in_scope(
                    req.head, req.h1_bytes, req.h1_parts, req.h1_keep_alive, capture
                )
            return await self._exchange(req, deadline, capture)
        assert deadline is not None, "a shared connection bounds its own lock wait"
        lock = self._lock
        if lock is None:
            lock = self._lock = trio.Lock()
        with trio.CancelScope(deadline=deadline) as scope:
            await lock.acquire()
        if scope.cancelled_caught:
            return 0, ErrorKind.POOL_TIMEOUT, 0, 0
        try:
            return await self._exchange(req, deadline, capture)
        finally:
            lock.release()

    async def _exchange(
        self, req: PreparedRequest, deadline: float, capture: Captured | None = None
    ) -> Result:
        with trio.CancelScope(deadline=deadline):
            return await self.exchange_in_scope(
                req.head, req.h1_bytes, req.h1_parts, req.h1_keep_alive, capture
            )
        # Only reached when the deadline cancelled the exchange.
        return self.timed_out()

    def timed_out(self) -> Result:
        """The result of the exchange a caller's deadline cancelled: the phase it was in."""
        phase, sent, received = self._cut
        return 0, phase.timeout, sent, received

    async def exchange_in_scope(
        self,
        head: bool,
        whole: bytes | None,
        parts: tuple[bytes, ...],
        keep_alive: bool,
        capture: Captured | None = None,
    ) -> Result:
        """`request` with no deadline of its own, the request given by its wire parts
        (a PreparedRequest's `head`, `h1_bytes`, `h1_parts`, `h1_keep_alive`): for an
        unshared connection whose caller's cancel scope bounds the exchange, and a
        journey step that fills in its request's bytes without a PreparedRequest."""
        retried = False
        while True:
            phase = Phase.CONNECT
            sent = 0
            reading = _Reading()
            sender: _Sender | None = None
            reused = self._conn is not None
            try:
                conn = self._conn
                if conn is None:
                    conn = await self._open()
                io = conn.io
                reader = self._reader
                reader.start(head)
                if isinstance(reader, CapturingReader):
                    reader.capture = capture
                    if capture is not None and (capture.raw_headers or capture.size):
                        capture.reset()  # a retry: what the first try kept goes
                phase = Phase.WRITE
                if whole is not None:
                    await conn.send_before_read(whole)
                    sent = len(whole)
                    phase = Phase.READ
                    await _read_response(reader, io, reading)
                    complete = True
                else:
                    # The body goes out from the request's own bytes, never copied.
                    sender = _Sender(io, parts)
                    phase = Phase.READ
                    await self._send_while_reading(reader, io, sender, reading)
                    sent = sender.sent
                    complete = sender.done
                status = reader.status
                if status in BACKOFF_STATUSES and reader.retry_after is not None:
                    self.retry_after = parse_retry_after(reader.retry_after)
                if not (complete and reader.reusable and keep_alive):
                    # Also when answered before the whole body went out: what is
                    # left of the request makes the connection unusable for another.
                    await self._drop()
                return status, NO_ERROR, sent, reading.received
            except ProtocolViolation:
                await self._drop()
                if sender is not None:
                    sent = sender.sent
                return 0, ErrorKind.PROTOCOL, sent, reading.received
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
                # Cancelled (by the caller's deadline, see timed_out, or because the run is
                # over), or a bug in Ballista: unfinished, and not the target's failure.
                if sender is not None:
                    sent = sender.sent
                    phase = Phase.READ if sender.done else Phase.WRITE
                self._cut = (phase, sent, reading.received)
                await self._drop()
                raise

    async def _send_while_reading(
        self, reader: FastReader, io: ByteStream, sender: _Sender, reading: _Reading
    ) -> None:
        """Send a large request while reading the response: a server may answer before
        it has read the body (an error, a redirect, a handler that ignores it) and then
        stop reading, or close. Its complete answer ends the exchange (RFC 9112 §9.5)."""
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            try:
                await _read_response(reader, io, reading)
            except Exception as exc:
                # Raised outside the nursery, so that it is not wrapped in a group.
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure


async def _read_response(reader: FastReader, io: ByteStream, reading: _Reading) -> None:
    """Read one whole response into `reader` (ProtocolViolation if malformed, PeerClosed
    if the connection ends first)."""
    receive_some = io.receive_some
    feed = reader.feed
    while True:
        chunk = await receive_some(READ_SIZE)
        if not chunk:
            reading.eof = True
            reader.feed_eof()
            return
        reading.received += len(chunk)
        if feed(chunk):
            return


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
