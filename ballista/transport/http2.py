"""One HTTP/2 connection that Ballista owns, driven with h2: many streams, one reader task.

Workers call `request()`; each opens a stream, flushes its frames and waits.
A single reader task per connection feeds incoming bytes to the h2 state
machine and wakes the waiting streams. Streams beyond the server's
SETTINGS_MAX_CONCURRENT_STREAMS wait for a free slot, in arrival order.
A graceful GOAWAY drains the connection: streams the server took finish, the
ones it never processed are sent again on a fresh connection. A server that
floods control frames (PING, SETTINGS, empty DATA) past `budget`'s limits loses
the connection, as a protocol error.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio
from hyperframe.frame import RstStreamFrame

from ballista.core.config import Origin
from ballista.core.outcome import NO_ERROR, ErrorKind
from ballista.transport.budget import MAX_UNSENT_ACKS, ControlBudget
from ballista.transport.connect import (
    READ_SIZE,
    TARGET_FAILURES,
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
from ballista.transport.hpack_cache import CachingDecoder, CachingEncoder
from ballista.transport.http1 import ConnectionEvents, Result
from ballista.transport.slots import StreamSlots

if TYPE_CHECKING:
    # h2's own frame types (hyperframe comes with h2); only named in a signature.
    from hyperframe.frame import Frame, GoAwayFrame

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
#: How often one request is sent again after GOAWAYs said it was never processed: a
#: server that drains every connection at once must not make it reconnect without end.
MAX_GOAWAY_RETRIES = 10


class AlpnRefused(ProtocolViolation):
    """TLS was set up but ALPN did not select h2: the server will not speak HTTP/2 here."""

    def __init__(self, selected: str | None) -> None:
        self.selected = selected
        said = f"selected {selected!r}" if selected else "selected no protocol (it ignores ALPN)"
        super().__init__(f"the server did not agree to HTTP/2 over ALPN: it {said}")


class Flooded(ProtocolViolation):
    """The server sent more control frames than the budget allows: the connection is dropped."""


class _ClientH2(h2.connection.H2Connection):
    """h2's connection, except that a GOAWAY does not end reception, and that
    repeated header blocks are neither encoded nor decoded again.

    RFC 9113 §6.8: streams up to the GOAWAY's last_stream_id are still being
    answered. h2 closes its state machine on GOAWAY, so every later frame of
    those streams would raise ProtocolError (and a GOAWAY read together with
    them would be lost), and it drops frames not yet written, request bodies
    and WINDOW_UPDATEs of those very streams among them. Here the GOAWAY is only
    reported; the connection refuses new streams itself (`_Session.draining`).

    HPACK was a third of Ballista's CPU per HTTP/2 request; `hpack_cache` says
    when a block can be reused.
    """

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self.encoder = CachingEncoder()
        self.decoder = CachingDecoder(self.decoder.max_header_list_size)

    def _receive_frame(self, frame: Frame) -> list[h2.events.Event]:
        # h2's own, less its first line: logger.trace("Received frame: %s",
        # repr(frame)) formats every frame for a log that is never written.
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except h2.exceptions.StreamClosedError as e:
            # Closed by RST_STREAM: a stream error, answered with RST_STREAM.
            if not self._stream_is_closed_by_reset(e.stream_id):
                raise
            f = RstStreamFrame(e.stream_id)
            f.error_code = e.error_code
            self._prepare_for_sending([f])
            events = e._events
        except h2.exceptions.StreamIDTooLowError as e:
            # A frame for a stream closed and cleaned up, or closed implicitly.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = h2.errors.ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise h2.exceptions.StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events  # type: ignore[no-any-return]

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = h2.errors.ErrorCodes(frame.error_code)
        except ValueError:
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class _Stream:
    __slots__ = ("capture", "done", "error", "received", "sending", "status", "unprocessed")

    def __init__(self, capture: Captured | None = None) -> None:
        #: a journey's step keeps its response here (plain requests: None)
        self.capture = capture
        self.done = trio.Event()
        self.status = 0
        self.error = NO_ERROR
        self.received = 0
        #: the request body is still going out: wake the sender when the stream ends
        self.sending = False
        #: above a GOAWAY's last_stream_id: the server never processed it, send it again
        self.unprocessed = False


class _Waiter:
    """A request waiting for a stream slot; `granted` tells whether it got one."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.granted = False


class _Session:
    """One established HTTP/2 connection: socket, state machine, open streams."""

    def __init__(self, connected: Connected) -> None:
        #: httpcore's stream, for closing; `io` is what frames are read from and written to
        self.stream = connected.stream
        self.io = connected.io
        self.h2 = _ClientH2(config=_CONFIG)
        self.streams: dict[int, _Stream] = {}
        #: none until the server's SETTINGS say how many streams it allows
        self.slots: StreamSlots[_Waiter] = StreamSlots(0)
        #: set when h2 has frames queued; the writer task waits on it.
        self.pending = trio.Event()
        #: aclose(): the writer flushes what is queued (the GOAWAY last) and stops
        self.closing = False
        self.writer_done = trio.Event()
        self.alive = True
        #: set once GOAWAY arrives: no new streams, finish the old ones.
        self.draining = False
        self.failure = ErrorKind.RESET
        self.window_changed = trio.Event()
        #: set when the server's first SETTINGS arrived (or the connection died first)
        self.settings_received = trio.Event()
        #: control frames the server may still send (see `budget`)
        self.budget = ControlBudget(trio.current_time())
        #: PING and SETTINGS ACKs h2 has queued that the writer has not written yet
        self.unsent_acks = 0


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
        #: connections that received GOAWAY and are finishing their streams
        self._draining: set[_Session] = set()
        #: what ALPN selected when it did not select h2 ("" for nothing), for the summary
        self.alpn_refused: str | None = None
        #: seconds from the last Retry-After seen on this connection, until the engine takes it
        self.retry_after: float | None = None
        #: connections dropped because the server flooded them with control frames
        self.floods = 0

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
        self._events.connection_attempted()
        return await self._start(await connect(self._origin, self._ssl_context))

    async def adopt(self, connected: Connected) -> None:
        """Take over a connection opened elsewhere (the engine's ALPN probe)."""
        self._events.connection_attempted()
        self._session = await self._start(connected)

    async def _start(self, connected: Connected) -> _Session:
        if self._ssl_context is not None and connected.alpn != "h2":
            # Without h2 selected the server speaks HTTP/1.1 here: its SETTINGS
            # would never come, and every request would wait for its timeout.
            await close_quietly(connected.stream)
            self.alpn_refused = connected.alpn or ""
            raise AlpnRefused(connected.alpn)
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
        try:
            await session.settings_received.wait()
        except BaseException:
            # Out of time (or stopped) before the SETTINGS: nobody will use this
            # connection, so it must not stay open, read by its reader, until the run ends.
            self._kill(session, ErrorKind.CONNECT_TIMEOUT)
            await close_quietly(session.stream)
            raise
        if not session.alive:
            if session.failure is ErrorKind.PROTOCOL:
                # e.g. a flood read with the SETTINGS: the server's fault, not a hang-up
                raise ProtocolViolation("the HTTP/2 connection failed as the server broke HTTP/2")
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
                acks = session.unsent_acks
                out = conn.data_to_send()
                if out:
                    await session.io.send_all(out)
                session.unsent_acks -= acks
                if session.closing:
                    break
        except TARGET_FAILURES as exc:
            self._kill(session, classify(exc, Phase.WRITE))
            await close_quietly(stream)
        finally:
            session.writer_done.set()

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
                #: frames of this read that cost work and carry nothing, those that demand an ACK
                control = acks = responses = 0
                for event in conn.receive_data(data):
                    cls = type(event)
                    if cls is h2.events.DataReceived:
                        if not event.data and not event.stream_ended:  # type: ignore[attr-defined]
                            control += 1
                        st = streams.get(event.stream_id)  # type: ignore[attr-defined]
                        if st is not None:
                            st.received += len(event.data)  # type: ignore[attr-defined]
                            if st.capture is not None:
                                st.capture.add_body(event.data)  # type: ignore[attr-defined]
                        if event.flow_controlled_length:  # type: ignore[attr-defined]
                            conn.acknowledge_received_data(
                                event.flow_controlled_length,  # type: ignore[attr-defined]
                                event.stream_id,  # type: ignore[attr-defined]
                            )
                    elif cls is h2.events.ResponseReceived:
                        responses += 1
                        st = streams.get(event.stream_id)  # type: ignore[attr-defined]
                        if st is not None:
                            if st.capture is not None:
                                st.capture.raw_headers = [
                                    (bytes(k), bytes(v))
                                    for k, v in event.headers  # type: ignore[attr-defined]
                                    if not k.startswith(b":")
                                ]
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
                            if st.sending:
                                self._wake_senders(session)
                    elif cls is h2.events.StreamReset:
                        st = streams.pop(event.stream_id, None)  # type: ignore[attr-defined]
                        if st is not None:
                            code = event.error_code  # type: ignore[attr-defined]
                            st.error = (
                                ErrorKind.REFUSED_STREAM if code in _REFUSED else ErrorKind.RESET
                            )
                            st.done.set()
                            if st.sending:
                                self._wake_senders(session)
                    elif cls is h2.events.ConnectionTerminated:
                        self._on_goaway(session, event)  # type: ignore[arg-type]
                    elif cls is h2.events.RemoteSettingsChanged:
                        acks += 1
                        limit = conn.remote_settings.max_concurrent_streams
                        _grant(session.slots.set_limit(limit))
                        session.settings_received.set()
                    elif cls is h2.events.WindowUpdated:
                        self._wake_senders(session)
                    elif cls is h2.events.PingReceived:
                        acks += 1
                if acks or control:
                    self._check_flood(session, acks, control, responses)
                elif responses:
                    session.budget.credit(responses)
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

    def _check_flood(self, session: _Session, acks: int, control: int, responses: int) -> None:
        """Charge one read's control frames to the budget; raise Flooded past it."""
        budget = session.budget
        budget.credit(responses)
        session.unsent_acks += acks
        if not budget.spend(trio.current_time(), acks + control):
            why = "more PING, SETTINGS or empty DATA frames than its budget allows"
        elif session.unsent_acks > MAX_UNSENT_ACKS:
            why = f"more than {MAX_UNSENT_ACKS} PING or SETTINGS frames it has not read the ACKs of"
        else:
            return
        self.floods += 1
        raise Flooded(f"the server flooded the HTTP/2 connection: {why}")

    def _on_goaway(self, session: _Session, event: h2.events.ConnectionTerminated) -> None:
        session.draining = True
        self._draining.add(session)
        if self._session is session:
            # New requests open a fresh connection; this one only finishes its streams.
            self._session = None
        last = event.last_stream_id if event.last_stream_id is not None else 0
        for sid in [s for s in session.streams if s > last]:
            st = session.streams.pop(sid)
            st.error = ErrorKind.GOAWAY
            st.unprocessed = True
            st.done.set()
        if event.error_code not in (None, h2.errors.ErrorCodes.NO_ERROR):
            # Streams it took may still end well; if the connection dies first, say why.
            session.failure = ErrorKind.GOAWAY
        _refuse(session.slots.close())
        self._wake_senders(session)

    def _kill(self, session: _Session, kind: ErrorKind, *, crashed: bool = False) -> None:
        """End a session; its streams end with `kind`. When a bug in Ballista
        (`crashed`) ended it, they are left waiting: the bug cancels the nursery
        they wait in, and none of them is counted as the target's failure."""
        if not session.alive:
            return
        session.alive = False
        self._draining.discard(session)
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
        _refuse(session.slots.close())

    @staticmethod
    def _wake_senders(session: _Session) -> None:
        """Wake requests waiting to send body: the window grew or a stream ended."""
        session.window_changed.set()
        session.window_changed = trio.Event()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and session.alive:
            # The writer sends the GOAWAY: a second sender on the stream would be
            # trio's BusyResourceError while it is still flushing request bodies.
            session.closing = True
            try:
                session.h2.close_connection()
            except h2.exceptions.ProtocolError:
                pass
            session.pending.set()
            with trio.move_on_after(0.2):
                await session.writer_done.wait()
            self._kill(session, ErrorKind.OTHER)
            await close_quietly(session.stream)
        for draining in list(self._draining):
            self._kill(draining, ErrorKind.OTHER)
            await close_quietly(draining.stream)

    # -- one request ----------------------------------------------------------

    async def request(
        self, req: PreparedRequest, deadline: float, capture: Captured | None = None
    ) -> Result:
        """Send `req` on a new stream and wait for its end before `deadline`
        (`capture`: where to keep the response's headers and body, for a journey).

        A request the server never processed (above a GOAWAY's last_stream_id)
        is sent again on a fresh connection: it counts once, with its whole wait.
        """
        #: what running out of time means at this point of the request
        waiting = ErrorKind.POOL_TIMEOUT
        phase = Phase.CONNECT
        sent = received = 0
        st: _Stream | None = None
        session: _Session | None = None
        sid = 0
        retries = 0
        with trio.CancelScope(deadline=deadline):
            try:
                while True:
                    waiting, phase = ErrorKind.CONNECT_TIMEOUT, Phase.CONNECT
                    st = None
                    session = self._session
                    if session is None or not session.alive or session.draining:
                        session = await self._get_session()
                    waiting = ErrorKind.POOL_TIMEOUT
                    slots = session.slots
                    if not slots.try_acquire() and not await _wait_for_slot(slots):
                        continue  # that connection stopped taking streams: another one
                    try:
                        if not session.alive or session.draining:
                            continue
                        waiting, phase = ErrorKind.WRITE_TIMEOUT, Phase.WRITE
                        if capture is not None:
                            capture.reset()
                        st = _Stream(capture)
                        sid = session.h2.get_next_available_stream_id()
                        session.streams[sid] = st
                        body = req.body
                        session.h2.send_headers(sid, req.h2_headers, end_stream=not body)
                        sent += req.h2_header_bytes
                        if body:
                            sent += await self._send_body(session, sid, st, body)
                        session.pending.set()
                        waiting, phase = ErrorKind.READ_TIMEOUT, Phase.READ
                        await st.done.wait()
                    finally:
                        _grant(slots.release())
                    received += st.received
                    if st.unprocessed and retries < MAX_GOAWAY_RETRIES:
                        retries += 1
                        self._events.request_retried()
                        continue
                    return st.status if st.error == NO_ERROR else 0, st.error, sent, received
            except TARGET_FAILURES as exc:
                kind = classify(exc, phase)
                if st is not None:
                    received += st.received
                if session is not None:
                    self._kill(session, kind)
                    await close_quietly(session.stream)
                return 0, kind, sent, received
            except BaseException:
                self._abandon(session, sid, st)
                raise
        # Only reached when the deadline cancelled the request.
        self._abandon(session, sid, st)
        return 0, waiting, sent, received + (st.received if st is not None else 0)

    def _abandon(self, session: _Session | None, sid: int, st: _Stream | None) -> None:
        """Give up on a stream (timeout or cancellation): reset it, keep the connection."""
        if session is None or st is None or not session.alive:
            return
        if session.streams.pop(sid, None) is not None:
            _reset(session, sid)

    async def _send_body(self, session: _Session, sid: int, st: _Stream, body: bytes) -> int:
        """Send the body as flow control allows; the bytes sent.

        RFC 9113 §8.1: a complete response (or a reset) ends the exchange even if
        the body is not all sent: stop sending and reset the stream, so that
        neither side keeps it open. That is not a failure of the request.
        """
        conn = session.h2
        view = memoryview(body)
        sent = 0
        st.sending = True
        try:
            while view:
                if st.done.is_set():
                    _reset(session, sid)
                    break
                if not session.alive:
                    raise PeerClosed("connection lost while sending the body")
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    session.pending.set()
                    await session.window_changed.wait()
                    continue
                chunk, view = view[:window], view[window:]
                conn.send_data(sid, bytes(chunk), end_stream=not view)
                sent += len(chunk)
        except h2.exceptions.StreamClosedError:
            # The server reset the stream; the reader reports how it ended.
            pass
        finally:
            st.sending = False
        return sent


async def _wait_for_slot(slots: StreamSlots[_Waiter]) -> bool:
    """Queue for a slot; True once granted, False if the connection stopped granting."""
    waiter = _Waiter()
    if not slots.enqueue(waiter):
        return False
    try:
        await waiter.event.wait()
    except BaseException:
        if not slots.withdraw(waiter) and waiter.granted:
            # Granted while being cancelled: pass the slot on.
            _grant(slots.release())
        raise
    return waiter.granted


def _grant(waiters: list[_Waiter]) -> None:
    for waiter in waiters:
        waiter.granted = True
        waiter.event.set()


def _refuse(waiters: list[_Waiter]) -> None:
    for waiter in waiters:
        waiter.event.set()


def _reset(session: _Session, sid: int) -> None:
    """RST_STREAM(CANCEL) unless the stream is closed already."""
    try:
        session.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    except h2.exceptions.H2Error:
        return
    session.pending.set()


def _status(value: bytes) -> int:
    """A response's :status; anything but three digits is the server's protocol error
    (inbound headers are not validated by h2, for speed)."""
    if len(value) != 3 or not value.isdigit():
        raise ProtocolViolation(f"invalid :status {value[:20]!r}")
    return int(value)
