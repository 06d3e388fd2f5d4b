"""One HTTP/2 connection that Ballista owns, driven with h2: many streams, one reader task.

Workers call `request()`; each opens a stream, flushes its frames and waits.
A single reader task per connection feeds incoming bytes to the h2 state
machine and wakes the waiting streams. Streams beyond the server's
SETTINGS_MAX_CONCURRENT_STREAMS wait for a free slot.
"""

from __future__ import annotations

import ssl

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from ballista.core.config import Origin
from ballista.core.outcome import NO_ERROR, ErrorKind
from ballista.transport.connect import (
    READ_SIZE,
    TARGET_FAILURES,
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
from ballista.transport.http1 import ConnectionEvents, Result

_WINDOW = 16 * 1024 * 1024
_CONFIG = h2.config.H2Configuration(
    client_side=True,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
)
_REFUSED = {h2.errors.ErrorCodes.REFUSED_STREAM, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM}


class _Stream:
    __slots__ = ("done", "error", "received", "status")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.status = 0
        self.error = NO_ERROR
        self.received = 0


class _Session:
    """One established HTTP/2 connection: socket, state machine, open streams."""

    def __init__(self, connected: Connected) -> None:
        #: httpcore's stream, for closing; `io` is what frames are read from and written to
        self.stream = connected.stream
        self.io = connected.io
        self.h2 = h2.connection.H2Connection(config=_CONFIG)
        self.streams: dict[int, _Stream] = {}
        #: set when h2 has frames queued; the writer task waits on it.
        self.pending = trio.Event()
        self.alive = True
        #: set once GOAWAY arrives: no new streams, finish the old ones.
        self.draining = False
        self.failure = ErrorKind.RESET
        self.window_changed = trio.Event()
        #: set when the server's first SETTINGS arrived (or the connection died first)
        self.settings_received = trio.Event()


class H2Connection:
    """A single HTTP/2 connection, multiplexing workers' requests as streams.

    Reopened lazily after it is lost or after a GOAWAY. Needs a nursery that
    outlives it for the reader task.
    """

    multiplexed = True

    def __init__(
        self,
        origin: Origin,
        ssl_context: ssl.SSLContext | None,
        events: ConnectionEvents,
        nursery: trio.Nursery,
    ) -> None:
        self._origin = origin
        self._ssl_context = ssl_context
        self._events = events
        self._nursery = nursery
        self._session: _Session | None = None
        self._connecting: trio.Event | None = None
        self._connect_error: Exception | None = None
        self._slot_freed = trio.Event()
        self.max_streams = 100
        self.active = 0
        #: seconds from the last Retry-After seen on this connection, until the engine takes it
        self.retry_after: float | None = None

    @property
    def is_open(self) -> bool:
        return self._session is not None and self._session.alive

    # -- connection lifecycle -------------------------------------------------

    async def _get_session(self) -> _Session:
        while True:
            session = self._session
            if session is not None and session.alive and not session.draining:
                return session
            if self._connecting is not None:
                # Someone else is connecting: share their outcome.
                waiting = self._connecting
                await waiting.wait()
                if self._connect_error is not None and self._session is None:
                    raise self._connect_error
                continue
            self._connecting = trio.Event()
            self._connect_error = None
            try:
                self._session = await self._open()
            except Exception as exc:
                self._connect_error = exc
                raise
            finally:
                self._connecting.set()
                self._connecting = None

    async def _open(self) -> _Session:
        return await self._start(await connect(self._origin, self._ssl_context))

    async def adopt(self, connected: Connected) -> None:
        """Take over a connection opened elsewhere (the engine's ALPN probe)."""
        self._session = await self._start(connected)

    async def _start(self, connected: Connected) -> _Session:
        if connected.alpn not in (None, "h2"):
            await close_quietly(connected.stream)
            raise ProtocolViolation(f"ALPN chose {connected.alpn!r}, not h2")
        session = _Session(connected)
        conn = session.h2
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW})
        conn.increment_flow_control_window(_WINDOW - 65535)
        try:
            await connected.io.send_all(conn.data_to_send())
        except BaseException:
            await close_quietly(connected.stream)
            raise
        self._events.connection_opened()
        self._nursery.start_soon(self._reader, session)
        self._nursery.start_soon(self._writer, session)
        # Open no stream before the server has said how many it allows: its
        # SETTINGS frame comes first, one round trip after the preface.
        await session.settings_received.wait()
        if not session.alive:
            raise PeerClosed("the HTTP/2 connection ended before the server's SETTINGS")
        return session

    async def _writer(self, session: _Session) -> None:
        """The only task that writes to the socket: frames leave in the order h2
        produced them (stream ids must only increase), batched across streams."""
        conn = session.h2
        stream = session.stream
        try:
            while session.alive:
                await session.pending.wait()
                session.pending = trio.Event()
                out = conn.data_to_send()
                if out:
                    await session.io.send_all(out)
        except TARGET_FAILURES as exc:
            self._kill(session, classify(exc, Phase.WRITE))
            await close_quietly(stream)

    async def _reader(self, session: _Session) -> None:
        stream = session.stream
        conn = session.h2
        streams = session.streams
        crashed = False
        try:
            while session.alive:
                data = await session.io.receive_some(READ_SIZE)
                if not data:
                    raise PeerClosed("server closed the HTTP/2 connection")
                for event in conn.receive_data(data):
                    cls = type(event)
                    if cls is h2.events.DataReceived:
                        st = streams.get(event.stream_id)  # type: ignore[attr-defined]
                        if st is not None:
                            st.received += len(event.data)  # type: ignore[attr-defined]
                        if event.flow_controlled_length:  # type: ignore[attr-defined]
                            conn.acknowledge_received_data(
                                event.flow_controlled_length,  # type: ignore[attr-defined]
                                event.stream_id,  # type: ignore[attr-defined]
                            )
                    elif cls is h2.events.ResponseReceived:
                        st = streams.get(event.stream_id)  # type: ignore[attr-defined]
                        if st is not None:
                            for name, value in event.headers:  # type: ignore[attr-defined]
                                st.received += len(name) + len(value)
                                if name == b":status":
                                    st.status = _status(value)
                                elif name == b"retry-after":
                                    self.retry_after = parse_retry_after(value)
                    elif cls is h2.events.StreamEnded:
                        st = streams.pop(event.stream_id, None)  # type: ignore[attr-defined]
                        if st is not None:
                            st.done.set()
                    elif cls is h2.events.StreamReset:
                        st = streams.pop(event.stream_id, None)  # type: ignore[attr-defined]
                        if st is not None:
                            code = event.error_code  # type: ignore[attr-defined]
                            st.error = (
                                ErrorKind.REFUSED_STREAM if code in _REFUSED else ErrorKind.RESET
                            )
                            st.done.set()
                    elif cls is h2.events.ConnectionTerminated:
                        self._on_goaway(session, event)  # type: ignore[arg-type]
                    elif cls is h2.events.RemoteSettingsChanged:
                        self.max_streams = conn.remote_settings.max_concurrent_streams
                        session.settings_received.set()
                        self._wake_slots()
                    elif cls is h2.events.WindowUpdated:
                        session.window_changed.set()
                        session.window_changed = trio.Event()
                if session.draining and not streams:
                    break
                session.pending.set()
        except TARGET_FAILURES as exc:
            session.failure = classify(exc, Phase.READ)
        except Exception:
            crashed = True
            raise
        finally:
            self._kill(session, session.failure, crashed=crashed)
            await close_quietly(stream)

    def _on_goaway(self, session: _Session, event: h2.events.ConnectionTerminated) -> None:
        session.draining = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        for sid in [s for s in session.streams if s > last]:
            st = session.streams.pop(sid)
            st.error = ErrorKind.GOAWAY
            st.done.set()
        if event.error_code not in (None, h2.errors.ErrorCodes.NO_ERROR):
            session.failure = ErrorKind.GOAWAY
        self._wake_slots()

    def _kill(self, session: _Session, kind: ErrorKind, *, crashed: bool = False) -> None:
        """End a session; its streams end with `kind`. When a bug in Ballista
        (`crashed`) ended it, they are left waiting: the bug cancels the nursery
        they wait in, and none of them is counted as the target's failure."""
        if not session.alive:
            return
        session.alive = False
        if crashed:
            if self._session is session:
                self._session = None
            self._events.connection_closed()
            return
        session.settings_received.set()
        for st in session.streams.values():
            st.error = kind
            st.done.set()
        session.streams.clear()
        session.window_changed.set()
        session.pending.set()
        if self._session is session:
            self._session = None
        self._events.connection_closed()
        self._wake_slots()

    def _wake_slots(self) -> None:
        self._slot_freed.set()
        self._slot_freed = trio.Event()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and session.alive:
            try:
                session.h2.close_connection()
                with trio.move_on_after(0.2):
                    await session.io.send_all(session.h2.data_to_send())
            except TARGET_FAILURES:
                pass
            self._kill(session, ErrorKind.OTHER)
            await close_quietly(session.stream)

    # -- one request ----------------------------------------------------------

    async def request(self, req: PreparedRequest, deadline: float) -> Result:
        """Send `req` on a new stream and wait for its end before `deadline`."""
        #: what running out of time means at this point of the request
        waiting = ErrorKind.POOL_TIMEOUT
        phase = Phase.CONNECT
        sent = 0
        st: _Stream | None = None
        session: _Session | None = None
        sid = 0
        acquired = False
        with trio.CancelScope(deadline=deadline):
            try:
                while True:
                    waiting = ErrorKind.CONNECT_TIMEOUT
                    session = self._session
                    if session is None or not session.alive or session.draining:
                        session = await self._get_session()
                    if self.active < self.max_streams:
                        break
                    waiting = ErrorKind.POOL_TIMEOUT
                    await self._slot_freed.wait()
                self.active += 1
                acquired = True
                waiting, phase = ErrorKind.WRITE_TIMEOUT, Phase.WRITE
                conn = session.h2
                sid = conn.get_next_available_stream_id()
                st = _Stream()
                session.streams[sid] = st
                body = req.body
                conn.send_headers(sid, req.h2_headers, end_stream=not body)
                sent = req.h2_header_bytes
                if body:
                    await self._send_body(session, sid, body)
                    sent += len(body)
                session.pending.set()
                waiting, phase = ErrorKind.READ_TIMEOUT, Phase.READ
                await st.done.wait()
                return st.status if st.error == NO_ERROR else 0, st.error, sent, st.received
            except TARGET_FAILURES as exc:
                kind = classify(exc, phase)
                if session is not None:
                    self._kill(session, kind)
                    await close_quietly(session.stream)
                return 0, kind, sent, st.received if st is not None else 0
            except BaseException:
                self._abandon(session, sid, st)
                raise
            finally:
                if acquired:
                    self.active -= 1
                    if self.active + 1 >= self.max_streams:
                        self._wake_slots()
        # Only reached when the deadline cancelled the request.
        self._abandon(session, sid, st)
        return 0, waiting, sent, st.received if st is not None else 0

    def _abandon(self, session: _Session | None, sid: int, st: _Stream | None) -> None:
        """Give up on a stream (timeout or cancellation): reset it, keep the connection."""
        if session is None or st is None or not session.alive:
            return
        if session.streams.pop(sid, None) is not None:
            try:
                session.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.H2Error:
                pass
            session.pending.set()

    async def _send_body(self, session: _Session, sid: int, body: bytes) -> None:
        conn = session.h2
        view = memoryview(body)
        while view:
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if window <= 0:
                session.pending.set()
                await session.window_changed.wait()
                if not session.alive:
                    raise PeerClosed("connection lost while sending the body")
                continue
            chunk, view = view[:window], view[window:]
            conn.send_data(sid, bytes(chunk), end_stream=not view)


def _status(value: bytes) -> int:
    """A response's :status; anything but three digits is the server's protocol error
    (inbound headers are not validated by h2, for speed)."""
    if len(value) != 3 or not value.isdigit():
        raise ProtocolViolation(f"invalid :status {value[:20]!r}")
    return int(value)
