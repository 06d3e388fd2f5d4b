"""Reading one HTTP/1.1 response from bytes (sans-IO): llhttp through httptools on the hot
path, and h11 as the reference reader that differential tests hold it to.

Both readers answer the same questions with the same outcomes: the final
status (1xx responses are skipped), the Retry-After value, whether the
connection can carry the next request, and when the response has ended.
Malformed input raises `ProtocolViolation`; a connection that closes before
the response has ended raises `PeerClosed`.
"""

from __future__ import annotations

import re
from typing import Protocol

import h11
import httptools

from ballista.transport.connect import Captured, PeerClosed, ProtocolViolation

#: A response head longer than this is refused, as h11 refuses it by default.
MAX_HEAD = 16 * 1024

_EMPTY = b""
#: What h11 refuses in a reason phrase and llhttp lets through: control characters.
_BAD_REASON = re.compile(rb"[\x00-\x08\x0a-\x1f]").search


class ResponseReader(Protocol):
    """One connection's response parser, reused from response to response."""

    #: the final (non-1xx) status, once the head has been read
    status: int
    #: the last Retry-After header value of the final response, if any
    retry_after: bytes | None
    #: after the response ended: the connection may carry the next request
    reusable: bool

    def start(self, head: bool) -> None:
        """A new request was sent (`head`: it was a HEAD, so the response has no body)."""

    def feed(self, data: bytes | bytearray) -> bool:
        """Bytes from the peer; True once the response has ended."""

    def feed_eof(self) -> None:
        """The peer closed: fine if that ends a close-delimited body, else PeerClosed."""


def _closes(connection: bytes) -> bool:
    """A Connection header's value has the `close` token (most say keep-alive: no
    token list is made for them)."""
    lower = connection.lower()
    return b"close" in lower and b"close" in [token.strip() for token in lower.split(b",")]


class _Surplus(Exception):
    """Bytes of another message followed the response (stops llhttp mid-buffer)."""


class FastReader:
    """llhttp (C) via httptools. Headers are only looked at for framing and Retry-After."""

    __slots__ = (
        "_close",
        "_framed",
        "_head",
        "_head_bytes",
        "_headers_done",
        "_parser",
        "_retry_after",
        "done",
        "retry_after",
        "reusable",
        "status",
    )

    def __init__(self) -> None:
        self._parser = self._new_parser()
        self.status = 0
        self.retry_after: bytes | None = None
        self.reusable = False
        self.done = False
        self._head = False
        self._headers_done = False
        self._framed = False
        self._close = False
        self._head_bytes = 0
        self._retry_after: bytes | None = None

    def _new_parser(self) -> httptools.HttpResponseParser:
        parser = httptools.HttpResponseParser(self)
        # h11 reads a chunked body and ignores a Content-Length beside it; llhttp
        # refuses the pair unless told otherwise. Follow h11.
        # h11 also takes a bare LF as a line end (RFC 9112 allows it).
        # And any HTTP/d.d version: h11 reads them all (and keeps 1.1 and later alive).
        parser.set_dangerous_leniencies(
            lenient_chunked_length=True, lenient_optional_cr_before_lf=True, lenient_version=True
        )
        return parser

    def start(self, head: bool) -> None:
        self._head = head
        self.status = 0
        self.retry_after = None
        self.reusable = False
        self.done = False
        self._headers_done = False
        self._framed = False
        self._close = False
        self._head_bytes = 0
        self._retry_after = None

    # -- llhttp callbacks (names are httptools' protocol) ----------------------

    def on_message_begin(self) -> None:
        if self.done:
            raise _Surplus
        self._framed = False
        self._close = False
        self._retry_after = None

    def on_status(self, reason: bytes) -> None:
        if _BAD_REASON(reason) is not None:
            raise ProtocolViolation("control character in the reason phrase")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Lengths first: most headers are none of these three, and lower() costs more.
        n = len(name)
        if n == 14:
            if name.lower() == b"content-length":
                self._framed = True
        elif n == 17:
            if name.lower() == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    raise ProtocolViolation("only Transfer-Encoding: chunked is supported")
                self._framed = True
        elif n == 11:
            if name.lower() == b"retry-after":
                self._retry_after = value.strip(b" \t")
        elif n == 10 and name.lower() == b"connection":
            self._close = self._close or _closes(value)

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 100:
            raise ProtocolViolation(f"status {status} is not an HTTP status")
        if status < 200:
            return  # informational: the real response follows
        self.status = status
        self.retry_after = self._retry_after
        self._headers_done = True
        if self._head:
            # No body follows a HEAD, whatever the headers say; llhttp cannot be
            # told so through httptools, so it is stopped here and replaced.
            self.reusable = self._keep_alive()
            self.done = True
            raise _Surplus

    def _keep_alive(self) -> bool:
        # h11's rule: no Connection: close, and a peer of HTTP/1.1 or later.
        return not self._close and self._parser.get_http_version() >= "1.1"

    def on_message_complete(self) -> None:
        if not self._headers_done:
            return  # the end of a 1xx response
        self.reusable = self._keep_alive()
        self.done = True

    # -- input -----------------------------------------------------------------

    def feed(self, data: bytes | bytearray) -> bool:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProtocolViolation):
                raise cause from None
            if not self.done or not isinstance(cause, _Surplus):
                raise ProtocolViolation(str(exc)) from exc
            # Whatever followed the response is not ours to read: start clean.
            self._parser = self._new_parser()
            if not self._head:
                self.reusable = False
            return True
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # HttpParserUpgrade: a 101 nobody asked for (h11 refuses it too).
            if self.done:
                # The response ended; what came after it is garbage.
                self._parser = self._new_parser()
                self.reusable = False
                return True
            raise ProtocolViolation(str(exc)) from exc
        if self.done:
            return True
        if not self._headers_done:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                raise ProtocolViolation("response head too long")
        return False

    def feed_eof(self) -> None:
        if self._headers_done and not self._framed:
            # A body without Content-Length or chunked framing ends with the connection.
            self.done = True
            self.reusable = False
            self._parser = self._new_parser()
            return
        raise PeerClosed("connection closed before the response ended")


#: lengths of the header names a reader looks at: content-length, transfer-encoding,
#: retry-after, connection and set-cookie
_LOOKED_AT = frozenset({14, 17, 11, 10})


class CapturingReader(FastReader):
    """FastReader that also keeps the final response's headers and body in `capture`
    (journeys read them). Plain requests use FastReader: llhttp then never calls
    back per body chunk."""

    __slots__ = ("capture",)

    def __init__(self) -> None:
        super().__init__()
        self.capture: Captured | None = None

    def on_message_begin(self) -> None:
        # FastReader's, inlined (a super() call per response costs), and a fresh start
        # of what is kept: an informational response's headers are not the answer's.
        if self.done:
            raise _Surplus
        self._framed = False
        self._close = False
        self._retry_after = None
        capture = self.capture
        if capture is not None and capture.raw_headers:
            capture.reset()

    def on_header(self, name: bytes, value: bytes) -> None:
        capture = self.capture
        n = len(name)
        if capture is not None and capture.keep_headers:
            lower = name.lower()
            capture.raw_headers.append((lower, value))
        elif n in _LOOKED_AT:
            lower = name.lower()
            if n == 10 and capture is not None and lower == b"set-cookie":
                capture.raw_headers.append((lower, value))
        else:
            return
        # FastReader's checks, on the name already lowered (lengths first: most
        # headers are none of these).
        if n == 14:
            if lower == b"content-length":
                self._framed = True
        elif n == 17:
            if lower == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    raise ProtocolViolation("only Transfer-Encoding: chunked is supported")
                self._framed = True
        elif n == 11:
            if lower == b"retry-after":
                self._retry_after = value.strip(b" \t")
        elif n == 10 and lower == b"connection":
            self._close = self._close or _closes(value)

    def on_body(self, body: bytes) -> None:
        capture = self.capture
        if capture is not None:
            capture.add_body(body)


class H11Reader:
    """The reference: h11's client state machine (what Ballista used before llhttp)."""

    def __init__(self) -> None:
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.status = 0
        self.retry_after: bytes | None = None
        self.reusable = False
        self._started = False

    def start(self, head: bool) -> None:
        h = self._h11
        if self._started:
            h.start_next_cycle()
        self._started = True
        # h11 learns the framing of the response from the request it sent.
        method = b"HEAD" if head else b"GET"
        h.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
        h.send(h11.EndOfMessage())
        self.status = 0
        self.retry_after = None
        self.reusable = False

    def feed(self, data: bytes | bytearray) -> bool:
        self._h11.receive_data(bytes(data))
        return self._drain()

    def feed_eof(self) -> None:
        self._h11.receive_data(_EMPTY)
        try:
            ended = self._drain()
        except ProtocolViolation as exc:
            raise PeerClosed(str(exc)) from exc
        if not ended:
            raise PeerClosed("connection closed before the response ended")

    def _drain(self) -> bool:
        h = self._h11
        try:
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return False
                if isinstance(event, h11.Response):
                    self.status = event.status_code
                    for name, value in event.headers:
                        if name == b"retry-after":
                            self.retry_after = value
                elif isinstance(event, h11.EndOfMessage):
                    # A body that ended with the connection leaves nothing to reuse.
                    self.reusable = (
                        h.our_state is h11.DONE
                        and h.their_state is h11.DONE
                        and not h.they_are_waiting_for_100_continue
                        and h.trailing_data[1] is False
                    )
                    return True
                elif isinstance(event, h11.ConnectionClosed):
                    raise PeerClosed("connection closed before the response ended")
        except h11.RemoteProtocolError as exc:
            raise ProtocolViolation(str(exc)) from exc
