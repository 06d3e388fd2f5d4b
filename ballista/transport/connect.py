"""Opening connections (TCP, TLS with ALPN) and mapping every network failure to an ErrorKind.

Connections are established with httpcore's trio network backend; the HTTP
exchanges themselves are driven by `_http1` (h11) and `_http2` (h2). This is
the one place where foreign exceptions become outcome kinds.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import h2.exceptions
import h11
import httpcore
import trio
from httpcore._backends.trio import TrioStream

from ballista import __version__
from ballista.core.config import Origin, RequestSpec
from ballista.core.errors import ConfigError, reason_of
from ballista.core.outcome import ErrorKind

USER_AGENT = f"ballista/{__version__}"
READ_SIZE = 65536

_BACKEND = httpcore.TrioBackend()


#: Responses whose Retry-After header the adaptive controller is told about.
BACKOFF_STATUSES = frozenset({429, 503})
#: Longest cooldown a Retry-After may ask for (a misconfigured server may say a day).
MAX_RETRY_AFTER = 300.0


def parse_retry_after(value: bytes) -> float | None:
    """`Retry-After: 120` or an HTTP date -> seconds from now (None if unreadable)."""
    text = value.decode("latin-1").strip()
    # isascii: "²" (a Latin-1 byte) is a digit to str.isdigit() but not to float().
    if text.isascii() and text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    # Imported here: email costs start-up time and ~0.8 MB of memory, and most runs
    # never meet a Retry-After date.
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    # An HTTP date is wall-clock time by nature: the one place the transport reads it.
    seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class PeerClosed(Exception):
    """The peer closed the connection before the response was complete."""


class ProtocolViolation(Exception):
    """The peer broke HTTP in a way the state machines did not catch themselves."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, and members of any exception group, once each."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        if e.__cause__ is not None:
            todo.append(e.__cause__)
        if e.__context__ is not None:
            todo.append(e.__context__)


class Phase(enum.Enum):
    """Where in an exchange a failure happened: it decides what a timeout means.

    The TLS handshake is part of CONNECT here: `connect()` raises its failures
    as TLSFailure, which is kind `tls` whatever the phase.
    """

    CONNECT = "connect"
    WRITE = "write"
    READ = "read"

    @property
    def timeout(self) -> ErrorKind:
        return _TIMEOUT_KINDS[self]


_TIMEOUT_KINDS = {
    Phase.CONNECT: ErrorKind.CONNECT_TIMEOUT,
    Phase.WRITE: ErrorKind.WRITE_TIMEOUT,
    Phase.READ: ErrorKind.READ_TIMEOUT,
}


class TLSFailure(Exception):
    """The TLS handshake failed (the cause says how)."""


#: Every exception the target or the network to it can cause, from every phase
#: (httpcore's trio backend maps trio's and the OS's into its own NetworkError and
#: TimeoutException; trio's streams raise Broken/ClosedResourceError; the state
#: machines raise their protocol errors). The transport catches exactly these and
#: turns them into an ErrorKind with `classify`; anything else is a bug in
#: Ballista and propagates, so that it ends the run loudly instead of being
#: counted as the target's error.
TARGET_FAILURES: tuple[type[Exception], ...] = (
    OSError,  # socket.gaierror, ConnectionError, TimeoutError and ssl.SSLError among them
    ssl.CertificateError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    httpcore.NetworkError,
    httpcore.TimeoutException,
    h11.RemoteProtocolError,
    h2.exceptions.ProtocolError,
    PeerClosed,
    ProtocolViolation,
    TLSFailure,
)

#: OS errors by errno, wherever they sit in the exception's chain.
_ERRNO_KINDS: dict[int, ErrorKind] = {
    errno.ECONNREFUSED: ErrorKind.CONNECT_REFUSED,
    errno.ECONNRESET: ErrorKind.RESET,
    errno.EPIPE: ErrorKind.RESET,
    errno.ECONNABORTED: ErrorKind.RESET,
    errno.ENOTCONN: ErrorKind.RESET,
}
#: errnos that mean "too slow": the kind then depends on the phase.
_TIMEOUT_ERRNOS = frozenset({errno.ETIMEDOUT})


def classify(exc: BaseException, phase: Phase) -> ErrorKind:
    """Map one of TARGET_FAILURES, raised in `phase`, to its outcome kind.

    The most specific cause wins: httpcore and trio wrap the OS's and ssl's
    errors, so the whole chain (causes, contexts, group members) is searched.
    Failures to connect that name no known cause (unreachable network, no free
    local port) are `other`: real, but none of the named kinds.
    """
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, socket.gaierror):
            return ErrorKind.DNS
        if isinstance(e, ssl.SSLError | ssl.CertificateError | TLSFailure):
            return ErrorKind.TLS
        if isinstance(e, OSError) and e.errno == errno.ECONNREFUSED:
            return ErrorKind.CONNECT_REFUSED
    for e in chain:
        if isinstance(e, h11.RemoteProtocolError | h2.exceptions.ProtocolError | ProtocolViolation):
            return ErrorKind.PROTOCOL
        if isinstance(e, PeerClosed):
            return ErrorKind.RESET
        if isinstance(e, TimeoutError | trio.TooSlowError | httpcore.TimeoutException) or (
            isinstance(e, OSError) and e.errno in _TIMEOUT_ERRNOS
        ):
            return phase.timeout
        if isinstance(e, OSError) and e.errno in _ERRNO_KINDS:
            return _ERRNO_KINDS[e.errno]
    if phase is Phase.CONNECT:
        return ErrorKind.OTHER
    if isinstance(
        exc,
        httpcore.ReadError
        | httpcore.WriteError
        | trio.BrokenResourceError
        | trio.ClosedResourceError,
    ):
        # A broken stream with no more specific cause: the peer went away.
        return ErrorKind.RESET
    return ErrorKind.OTHER


def check_ca_file(path: str, flag: str = "--cacert") -> None:
    """Fail before any load, with one line, when a CA bundle cannot verify anything:
    missing, unreadable, or not PEM certificates (what ssl would raise mid-run)."""
    try:
        ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        raise ConfigError(f"{flag}: no such file {path!r}") from None
    except IsADirectoryError:
        raise ConfigError(f"{flag}: {path!r} is a directory") from None
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{flag}: {path!r} holds no PEM certificate ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path!r}: {reason_of(exc)}") from None


def make_ssl_context(
    *, insecure: bool, alpn: tuple[str, ...], ca_file: str | None = None
) -> ssl.SSLContext:
    """A client TLS context offering `alpn`; verification off only when asked."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    return ctx


@dataclass(slots=True)
class Connected:
    """An established connection: httpcore's stream (for closing), the byte stream
    the HTTP state machines read and write, and what ALPN chose (None on plain TCP)."""

    stream: httpcore.AsyncNetworkStream
    alpn: str | None
    io: ByteStream

    @property
    def send_before_read(self) -> Callable[[bytes], Awaitable[None]]:
        """How to send a request whose answer is read next (HTTP/1.1): for plain TCP,
        without a yield that the read's wait makes redundant."""
        io = self.io
        return io.send_before_read if isinstance(io, _SocketIO) else io.send_all


class ByteStream(Protocol):
    """What the HTTP/1.1 and HTTP/2 drivers need of a connection: trio's Stream calls."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...


class _NetworkStreamIO:
    """httpcore's stream API presented as trio's, when the trio stream is not reachable."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.write(bytes(data))

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._stream.read(max_bytes or READ_SIZE)


_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


class _SocketIO:
    """A plain TCP connection's socket, read and written with trio's low-level waits.

    Per call, trio's SocketStream enters a conflict detector and a
    generator-based context manager, tries the syscall once, and yields to
    the scheduler even when the syscall succeeded at once. Here a send before
    a read (`send_before_read`) returns without yielding when the kernel takes
    it whole (the read that follows waits, and yields then), and a read waits
    for readability first (just after a request the answer is rarely there
    yet, so trying first mostly fails).
    That is about a fifth of Ballista's CPU per HTTP/1.1 request, and
    about 1 KB per connection held while a read waits. Errors come out as
    SocketStream's do (BrokenResourceError from the OSError,
    ClosedResourceError once closed), so classification does not change.
    The socket stays owned by trio's stream, which closes it.
    """

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.send_before_read(data)
        # As trio's streams do: other tasks run before this one goes on (the HTTP/2
        # writer relies on it to let streams gather before its next write).
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_before_read(self, data: bytes | bytearray | memoryview) -> None:
        """send_all without the yield at its end, for a caller that reads next: that
        read waits for the answer, and yields then."""
        sock = self._sock
        # A cancelled or timed-out request must not send.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            with memoryview(data) as view:
                total = len(view)
                sent = 0
                while sent < total:
                    try:
                        if sent:
                            with view[sent:] as remaining:
                                sent += sock.send(remaining)
                        else:
                            sent = sock.send(view)
                    except BlockingIOError:
                        _check_open(sock)
                        await trio.lowlevel.wait_writable(sock)
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        sock = self._sock
        size = max_bytes or READ_SIZE
        while True:
            try:
                _check_open(sock)
                await trio.lowlevel.wait_readable(sock)
                return sock.recv(size)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc


def _check_open(sock: socket.socket) -> None:
    # trio cannot wait on a socket closed here (fileno -1): SocketStream calls it closed.
    if sock.fileno() == -1:
        raise trio.ClosedResourceError("this socket was already closed")


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    """SocketStream's translation of a socket's OSError."""
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


def _io_of(stream: httpcore.AsyncNetworkStream) -> ByteStream:
    """The trio stream inside httpcore's TrioStream, read and written directly
    (for plain TCP, its socket).

    httpcore's read() and write() wrap every call in a cancel scope and two
    context managers (a timeout and an exception map): about a fifth of
    Ballista's CPU per request on HTTP/1.1. Ballista already bounds each request
    with one cancel scope and classifies failures itself (`classify`), so the
    hot path uses the trio stream; httpcore still opens TCP and TLS. Should a
    future httpcore keep its stream elsewhere, its own API is used instead.
    """
    raw = getattr(stream, "_stream", None)
    if isinstance(raw, trio.SocketStream):
        # trio's socket keeps the stdlib one as `_sock`; without it, the stream will do.
        std = getattr(raw.socket, "_sock", None)
        return _SocketIO(std) if isinstance(std, socket.socket) else raw
    if isinstance(raw, trio.abc.Stream):
        return raw
    return _NetworkStreamIO(stream)


def _ip_family(host: str) -> socket.AddressFamily | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


async def _connect_tcp(origin: Origin) -> httpcore.AsyncNetworkStream:
    """TCP to the origin, with failures raised as httpcore raises them.

    A name goes through httpcore (trio's open_tcp_stream: resolution, happy
    eyeballs). An IP address has one place to go: the socket connects directly.
    Happy eyeballs' nursery and tasks for each of 1,000 connections opened at
    once cost about 8 MB of peak RSS that pymalloc never gives back.
    """
    family = _ip_family(origin.host)
    if family is None:
        return await _BACKEND.connect_tcp(origin.host, origin.port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((origin.host, origin.port))
    except OSError as exc:
        sock.close()
        raise httpcore.ConnectError(str(exc)) from exc
    except BaseException:
        sock.close()
        raise
    # SocketStream sets TCP_NODELAY, as open_tcp_stream does.
    return TrioStream(trio.SocketStream(sock))


async def connect(origin: Origin, ssl_context: ssl.SSLContext | None) -> Connected:
    """Open TCP (TCP_NODELAY is trio's default) and, for https, TLS. Raises on failure."""
    stream = await _connect_tcp(origin)
    if ssl_context is None:
        return Connected(stream, None, _io_of(stream))
    try:
        tls = await stream.start_tls(ssl_context, server_hostname=origin.host)
    except TARGET_FAILURES as exc:
        await close_quietly(stream)
        if isinstance(exc, httpcore.TimeoutException | trio.TooSlowError):
            raise
        raise TLSFailure(f"TLS handshake with {origin.host}:{origin.port} failed: {exc}") from exc
    except BaseException:
        await close_quietly(stream)
        raise
    ssl_object = tls.get_extra_info("ssl_object")
    alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
    return Connected(tls, alpn, _io_of(tls))


async def close_quietly(stream: httpcore.AsyncNetworkStream | None) -> None:
    """Close without waiting on the peer and without raising."""
    if stream is None:
        return
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + 0.5
        try:
            await stream.aclose()
        except TARGET_FAILURES:
            pass


#: HTTP/1.1 requests up to this size are written whole before reading: the socket
#: buffers take them at once, and no task is needed to read at the same time.
H1_WHOLE_MAX = 64 * 1024


@dataclass(slots=True)
class PreparedRequest:
    """Everything about one named request that can be computed before the run.

    Built once per RequestSpec: the hot path never validates or encodes headers.
    Never changed once built (not frozen only because a journey builds one per
    step, and a frozen dataclass's __init__ costs three times as much).
    """

    index: int
    method: bytes
    target: bytes
    body: bytes
    #: the HTTP/1.1 request as it goes on the wire, in parts; the body is `body`
    #: itself, never copied (a 20 MB body stays one 20 MB object)
    h1_parts: tuple[bytes, ...]
    #: the same joined in one bytes object, when it is small enough to be written
    #: whole before reading (H1_WHOLE_MAX); None for a larger request
    h1_bytes: bytes | None
    #: False when the request itself asks to close the connection after it
    h1_keep_alive: bool
    #: a HEAD request: its response has no body whatever its headers say
    head: bool
    h2_headers: tuple[tuple[bytes, bytes], ...]
    h2_header_bytes: int
    spec: RequestSpec


def prepare(index: int, spec: RequestSpec, origin: Origin) -> PreparedRequest:
    """Encode a request's method, target and headers once for both protocols."""
    names = {k.lower() for k, _ in spec.headers}
    headers: list[tuple[str, str]] = []
    if "host" not in names:
        headers.append(("Host", origin.authority))
    if "user-agent" not in names:
        headers.append(("User-Agent", USER_AGENT))
    if "accept" not in names:
        headers.append(("Accept", "*/*"))
    headers.extend(spec.headers)
    if spec.body and "content-length" not in names and "transfer-encoding" not in names:
        headers.append(("Content-Length", str(len(spec.body))))
    method = spec.method.encode("ascii")
    target = spec.target.encode("ascii")
    encoded = [(k.encode("ascii"), v.encode("latin-1")) for k, v in headers]
    # h11 encodes (and validates) the request once; the hot path sends these bytes as they are.
    writer = h11.Connection(h11.CLIENT)
    parts = [writer.send(h11.Request(method=method, target=target, headers=encoded)) or b""]
    if spec.body:
        parts += writer.send_with_data_passthrough(h11.Data(data=spec.body)) or []
    parts += writer.send_with_data_passthrough(h11.EndOfMessage()) or []
    h1_parts = tuple(bytes(p) for p in parts if p)
    size = sum(len(p) for p in h1_parts)
    authority = origin.authority.encode("ascii")
    h2_headers: list[tuple[bytes, bytes]] = [
        (b":method", method),
        (b":scheme", origin.scheme.encode("ascii")),
        (b":authority", authority),
        (b":path", target),
    ]
    hop_by_hop = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
    for k, v in encoded:
        lk = k.lower()
        if lk == b"host":
            # :authority carries it; a user-supplied Host overrides the URL's.
            h2_headers[2] = (b":authority", v)
        elif lk not in hop_by_hop:
            h2_headers.append((lk, v))
    return PreparedRequest(
        index=index,
        method=method,
        target=target,
        body=spec.body,
        h1_parts=h1_parts,
        h1_bytes=b"".join(h1_parts) if size <= H1_WHOLE_MAX else None,
        h1_keep_alive=writer.our_state is h11.DONE,
        head=method == b"HEAD",
        h2_headers=tuple(h2_headers),
        h2_header_bytes=sum(len(k) + len(v) for k, v in h2_headers),
        spec=spec,
    )


#: Response body bytes a journey step keeps for its code to read (`text`, `json()`);
#: beyond it the body is counted but not kept, so a huge answer cannot take memory
#: per virtual user.
MAX_CAPTURE = 8 * 1024 * 1024


class Captured:
    """What a journey step keeps of its response: the final head's headers and the body.

    Filled by the connection as the response is read (HTTP/1.1's reader, HTTP/2's
    reader task); plain requests never carry one and keep nothing.
    """

    __slots__ = ("chunks", "keep_headers", "raw_headers", "size", "truncated")

    def __init__(self, keep_headers: bool = True) -> None:
        #: keep every header; False: only Set-Cookie (the user's cookie jar), for a
        #: step that reads no other (HTTP/1.1; HTTP/2 keeps them all either way)
        self.keep_headers = keep_headers
        #: the final head's headers as received, names lower-case
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        #: the body went past MAX_CAPTURE: what is kept is its beginning
        self.truncated = False

    def reset(self) -> None:
        """A new response begins (a retry, or an informational response was skipped)."""
        self.raw_headers = []
        self.chunks = []
        self.size = 0
        self.truncated = False

    def add_body(self, data: bytes) -> None:
        size = self.size + len(data)
        if size <= MAX_CAPTURE:
            self.chunks.append(bytes(data))
            self.size = size
        elif not self.truncated:
            self.truncated = True
            keep = MAX_CAPTURE - self.size
            if keep > 0:
                self.chunks.append(bytes(data[:keep]))
                self.size = MAX_CAPTURE

    @property
    def body(self) -> bytes:
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0]
        joined = b"".join(chunks)
        self.chunks = [joined]
        return joined


_TOKEN_BYTES = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$").match
_BAD_VALUE = re.compile(rb"[\x00\r\n]").search
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]").search
_HOP_BY_HOP = frozenset({b"host", b"connection", b"keep-alive", b"transfer-encoding", b"upgrade"})
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
#: methods already found valid (bounded: a journey could make up any)
_METHODS_SEEN: set[bytes] = set()
#: the default header lines of a request to an authority
_DEFAULT_HEADS: dict[bytes, bytes] = {}
#: header names prepare_dynamic treats apart: defaulted, framing, or closing
_SPECIAL_NAMES = frozenset(
    {b"host", b"user-agent", b"accept", b"content-length", b"transfer-encoding", b"connection"}
)
#: header names (as given) found valid and not special (bounded: a journey could
#: make up any): their step skips the general path's checks
_ORDINARY_NAMES: set[bytes] = set()


def _default_head(authority: bytes) -> bytes:
    """Host, User-Agent and Accept as a request to `authority` sends them, kept in
    _DEFAULT_HEADS (for a few authorities) for `prepare_dynamic` to find."""
    defaults = b"host: " + authority + b"\r\nuser-agent: " + _USER_AGENT + b"\r\naccept: */*\r\n"
    if len(_DEFAULT_HEADS) < 16:
        _DEFAULT_HEADS[authority] = defaults
    return defaults


def _escape(part: bytes) -> bytes:
    return part.replace(b"%", b"%%")


class H1Plan:
    """One journey step's HTTP/1.1 request with its varying parts left open.

    A TOML step sends the same method and header names every time: they and the
    default headers are encoded once, into one format; each request fills in the
    target, the header values and the user's Cookie line. The bytes are
    `prepare_dynamic`'s for the same request, and checked as it checks them:
    `encode` answers None for a target or value it would refuse, so that the
    caller takes `prepare_dynamic` and its error; `prepared` makes its bytes a
    PreparedRequest, where one is wanted.
    """

    __slots__ = (
        "_before",
        "_defaults",
        "_fmt",
        "_length",
        "_method",
        "_names",
        "_spec",
        "head",
        "index",
    )

    def __init__(
        self,
        index: int,
        spec: RequestSpec,
        method: bytes,
        names: Sequence[bytes],
        authority: bytes,
    ) -> None:
        """ValueError for what only the general path sends: a method or header name
        that is not a token, a header it defaults, frames or closes, or a Cookie."""
        if not _TOKEN_BYTES(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        for name in names:
            lower = name.lower()
            if not _TOKEN_BYTES(name) or lower in _SPECIAL_NAMES or lower == b"cookie":
                raise ValueError(f"header {name!r} takes the general path")
        #: the recorder's index of the step's name
        self.index = index
        self._spec = spec
        self._method = method
        #: a HEAD request: its response has no body whatever its headers say
        self.head = method == b"HEAD"
        # `%` is a token character (and may be in an authority): escaped in the
        # format's own parts.
        self._before = _escape(method) + b" "
        self._defaults = b" HTTP/1.1\r\n" + _escape(_default_head(authority))
        self._names = [_escape(name) + b": " for name in names]
        self._length = b"content-length: 0\r\n" if method in _BODY_METHODS else b""
        self._fmt = self.format_with(b"%s", [b"%s"] * len(names))

    def format_with(self, target: bytes, values: Sequence[bytes]) -> bytes:
        """The request's head as a `%` format of the target's and the values' own
        formats (`%` escaped in their literal text), then the Cookie line (`%s`):
        `format_with(b"%s", [b"%s", ...])` is the format `encode` fills in."""
        return (
            self._before
            + target
            + self._defaults
            + b"".join(
                name + value + b"\r\n" for name, value in zip(self._names, values, strict=True)
            )
            + b"%s"
            + self._length
            + b"\r\n"
        )

    @staticmethod
    def cookie_line(cookie: bytes) -> bytes | None:
        """The Cookie line of a request with this cookie, or None where
        `prepare_dynamic` would refuse it."""
        if _BAD_VALUE(cookie) is not None:
            return None
        return b"cookie: " + cookie + b"\r\n"

    def encode(
        self,
        target: bytes,
        values: Sequence[bytes],
        cookie: bytes | None,
        checked: bool = False,
    ) -> bytes | None:
        """The request's head with these parts (its whole request: it has no body), or
        None where `prepare_dynamic` would raise. `checked`: the caller made sure that
        neither the target nor a value can be refused (a TOML step's path:
        percent-encoded values in checked text; header values it found printable, so
        without NUL, CR or LF)."""
        if not checked:
            if not target.startswith(b"/") or _BAD_TARGET(target) is not None:
                return None
            for value in values:
                if _BAD_VALUE(value) is not None:
                    return None
        line = b"" if cookie is None else self.cookie_line(cookie)
        if line is None:
            return None
        return self._fmt % (target, *values, line)

    def prepared(self, head: bytes) -> PreparedRequest:
        """The PreparedRequest of `head`, a request this plan encoded."""
        start = len(self._method) + 1  # the target follows the method and a space
        return PreparedRequest(
            self.index,
            self._method,
            head[start : head.index(b" ", start)],
            b"",
            (head,),
            head if len(head) <= H1_WHOLE_MAX else None,
            True,
            self.head,
            (),
            0,
            self._spec,
        )


def prepare_dynamic(
    index: int,
    spec: RequestSpec,
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
    origin: Origin,
    authority: bytes,
    *,
    http2: bool,
) -> PreparedRequest:
    """A request built at run time (a journey's step): `prepare` without h11, checked
    by hand, since it runs once per request rather than once per run. Only the
    encoding of the run's protocol is made (`http2`), the other is left empty.

    ValueError (in the journey's code: counted, never sent) for a method, target or
    header that would put something other than the request on the wire.
    """
    if method not in _METHODS_SEEN:
        if not _TOKEN_BYTES(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        if len(_METHODS_SEEN) < 64:
            _METHODS_SEEN.add(method)
    if not target.startswith(b"/") or _BAD_TARGET(target):
        raise ValueError(f"invalid request target {target!r}")
    if not http2:
        # The common step: headers whose names were found ordinary before (valid,
        # none of those framed or defaulted here), or none. Host, User-Agent and
        # Accept are encoded once per authority; the bytes are the general path's.
        lines_of_own = b""
        for name, value in headers:
            if name not in _ORDINARY_NAMES or _BAD_VALUE(value) is not None:
                break
            lines_of_own += b"%s: %s\r\n" % (name, value)
        else:
            defaults = _DEFAULT_HEADS.get(authority) or _default_head(authority)
            if body or method in _BODY_METHODS:
                head = b"%s %s HTTP/1.1\r\n%s%scontent-length: %d\r\n\r\n" % (
                    method,
                    target,
                    defaults,
                    lines_of_own,
                    len(body),
                )
            else:
                head = b"%s %s HTTP/1.1\r\n%s%s\r\n" % (
                    method,
                    target,
                    defaults,
                    lines_of_own,
                )
            size = len(head) + len(body)
            return PreparedRequest(
                index,
                method,
                target,
                body,
                (head, body) if body else (head,),
                head + body if size <= H1_WHOLE_MAX else None,
                True,
                method == b"HEAD",
                (),
                0,
                spec,
            )
    given: set[bytes] = set()
    keep_alive = True
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    h2_headers: list[tuple[bytes, bytes]] = (
        [
            (b":method", method),
            (b":scheme", b"https" if origin.tls else b"http"),
            (b":authority", authority),
            (b":path", target),
        ]
        if http2
        else []
    )
    own: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if not _TOKEN_BYTES(name):
            raise ValueError(f"invalid header name {name!r}")
        if _BAD_VALUE(value):
            raise ValueError(f"header {name.decode()!r}: a control character in its value")
        lower = name.lower()
        given.add(lower)
        if lower not in _SPECIAL_NAMES and len(_ORDINARY_NAMES) < 256:
            _ORDINARY_NAMES.add(name)
        if lower in (b"content-length", b"transfer-encoding"):
            raise ValueError(f"header {name.decode()!r}: Ballista frames the body itself")
        own.append((name, value))
        if lower == b"connection" and b"close" in value.lower():
            keep_alive = False
        if not http2:
            continue
        if lower == b"host":
            h2_headers[2] = (b":authority", value)
        elif lower not in _HOP_BY_HOP:
            h2_headers.append((lower, value))
    for name, value in (
        (b"host", authority),
        (b"user-agent", _USER_AGENT),
        (b"accept", b"*/*"),
    ):
        if name not in given:
            lines += (name, b": ", value, b"\r\n")
            if http2 and name != b"host":
                h2_headers.append((name, value))
    if http2:
        if body or method in _BODY_METHODS:
            h2_headers.append((b"content-length", str(len(body)).encode()))
        header_bytes = 0
        for k, v in h2_headers:
            header_bytes += len(k) + len(v)
        return PreparedRequest(
            index=index,
            method=method,
            target=target,
            body=body,
            h1_parts=(),
            h1_bytes=None,
            h1_keep_alive=keep_alive,
            head=method == b"HEAD",
            h2_headers=tuple(h2_headers),
            h2_header_bytes=header_bytes,
            spec=spec,
        )
    for name, value in own:
        lines += (name, b": ", value, b"\r\n")
    if body or method in _BODY_METHODS:
        lines += (b"content-length: ", str(len(body)).encode(), b"\r\n")
    lines.append(b"\r\n")
    head = b"".join(lines)
    h1_parts = (head, body) if body else (head,)
    size = len(head) + len(body)
    return PreparedRequest(
        index=index,
        method=method,
        target=target,
        body=body,
        h1_parts=h1_parts,
        h1_bytes=head + body if size <= H1_WHOLE_MAX else None,
        h1_keep_alive=keep_alive,
        head=method == b"HEAD",
        h2_headers=(),
        h2_header_bytes=0,
        spec=spec,
    )


_USER_AGENT = USER_AGENT.encode("ascii")
