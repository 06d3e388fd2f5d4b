"""A small HTTP/1.1 server on trio + h11 for Ballista's own endpoints (/metrics, the live page).

It runs inside the trio program beside the engine: every connection is its own
task, request heads and bodies are bounded, and a client that stalls is cut
off by timeouts, so a slow or hostile scraper costs the engine nothing but the
time it takes to render a response.

Routes map a path to a handler. A handler is called as
``handler(request)`` with a :class:`Request` (method, path, query, headers,
body) and returns a :class:`Response` ``(status, headers, body)``, either
directly (a plain function) or as an awaitable (an ``async def``). A route key
ending in ``/`` (other than ``/`` itself) matches every path under it, so
``{"/static/": serve_static}`` serves ``/static/app.js``; otherwise the match
is exact. The server answers HEAD with the GET response's head, 404 for
unknown paths and 500 (logged) when a handler raises.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import h11
import trio

from ballista import __version__
from ballista.core.errors import ListenError, reason_of

log = logging.getLogger("ballista.http")

#: Largest request head accepted (bytes); beyond it the client gets 431.
MAX_HEAD = 16 * 1024
#: Largest request body accepted (bytes); beyond it the client gets 413.
MAX_BODY = 64 * 1024
#: A client must send a whole request within this many seconds of starting it.
REQUEST_TIMEOUT = 10.0
#: An idle keep-alive connection is closed after this many seconds.
IDLE_TIMEOUT = 30.0
#: Sending one response may take at most this long (a client that does not read).
SEND_TIMEOUT = 10.0
#: Bytes read and dropped after refusing a request, before closing.
DRAIN_LIMIT = 1024 * 1024
#: Connections served at once; more are closed at once, so they cannot pile up.
MAX_CONNECTIONS = 128

SERVER_HEADER = f"ballista/{__version__}".encode()

Headers = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request as a handler sees it. Header names are lower case."""

    method: str
    path: str
    query: str
    headers: Headers = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str, default: str = "") -> str:
        """The first value of header `name` (case-insensitive), or `default`."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return default


class Response(NamedTuple):
    """What a handler returns: status code, headers (without Content-Length), body."""

    status: int
    headers: Headers
    body: bytes


Handler = Callable[[Request], Response | Awaitable[Response]]


def text_response(status: int, text: str) -> Response:
    return Response(status, [("content-type", "text/plain; charset=utf-8")], text.encode())


def find_handler(routes: Mapping[str, Handler], path: str) -> Handler | None:
    """The handler for `path`: an exact key, else the longest key ending in '/' that prefixes it."""
    handler = routes.get(path)
    if handler is not None:
        return handler
    best: str | None = None
    for key in routes:
        if (
            key != "/"
            and key.endswith("/")
            and path.startswith(key)
            and (best is None or len(key) > len(best))
        ):
            best = key
    return routes[best] if best is not None else None


async def _call(handler: Handler, request: Request) -> Response:
    result: Any = handler(request)
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, tuple) or len(result) != 3:
        raise TypeError(f"handler returned {result!r}, not (status, headers, body)")
    return Response(*result)


class _Connection:
    """One client connection: read a request, answer it, repeat while keep-alive."""

    def __init__(self, stream: trio.abc.Stream, routes: Mapping[str, Handler]) -> None:
        self.stream = stream
        self.routes = routes
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def _send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(MAX_HEAD)
            self.conn.receive_data(bytes(data))  # b"" marks the end of the stream

    async def _read_request(self) -> Request | None:
        """The next request, or None when the client closed between requests."""
        with trio.fail_after(IDLE_TIMEOUT):
            event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError("expected a request", error_status_hint=400)
        for name, value in event.headers:
            if name == b"content-length" and int(value) > MAX_BODY:
                raise h11.RemoteProtocolError("body too large", error_status_hint=413)
        chunks: list[bytes] = []
        size = 0
        with trio.fail_after(REQUEST_TIMEOUT):
            while True:
                part = await self._next_event()
                if isinstance(part, h11.Data):
                    size += len(part.data)
                    if size > MAX_BODY:
                        raise h11.RemoteProtocolError("body too large", error_status_hint=413)
                    chunks.append(bytes(part.data))
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    raise h11.RemoteProtocolError("unexpected event", error_status_hint=400)
        target = urlsplit(event.target.decode("ascii", "replace"))
        return Request(
            method=event.method.decode("ascii"),
            path=target.path or "/",
            query=target.query,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers],
            body=b"".join(chunks),
        )

    async def _respond(self, request: Request, response: Response) -> None:
        status, headers, body = response
        wire = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        names = {k.lower() for k, _ in wire}
        if b"server" not in names:
            wire.append((b"server", SERVER_HEADER))
        wire.append((b"content-length", str(len(body)).encode()))
        with trio.fail_after(SEND_TIMEOUT):
            await self._send(h11.Response(status_code=status, headers=wire))
            if request.method != "HEAD" and body:
                await self._send(h11.Data(data=body))
            await self._send(h11.EndOfMessage())

    async def _handle(self, request: Request) -> Response:
        handler = find_handler(self.routes, request.path)
        if handler is None:
            return text_response(404, f"not found: {request.path}\n")
        as_get = request if request.method != "HEAD" else _as_get(request)
        try:
            return await _call(handler, as_get)
        except Exception:
            log.exception("handler for %s failed", request.path)
            return text_response(500, "internal error\n")

    async def serve(self) -> None:
        try:
            while True:
                try:
                    request = await self._read_request()
                except h11.RemoteProtocolError as exc:
                    await self._refuse(exc.error_status_hint)
                    return
                except trio.TooSlowError:
                    await self._refuse(408)
                    return
                if request is None:
                    return
                await self._respond(request, await self._handle(request))
                if self.conn.our_state is h11.MUST_CLOSE:
                    return
                self.conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            return  # the client went away or stopped reading
        except h11.LocalProtocolError:
            return
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _refuse(self, status: int) -> None:
        """Answer a bad or slow request with `status` and close, if a response can still go out."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"{status}\n".encode()
        try:
            with trio.move_on_after(1.0):
                await self._send(
                    h11.Response(
                        status_code=status,
                        headers=[
                            (b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                        ],
                    )
                )
                await self._send(h11.Data(data=body))
                await self._send(h11.EndOfMessage())
                # Closing with unread input would reset the connection and could
                # destroy the response: half-close, then drain a bounded amount.
                if isinstance(self.stream, trio.SocketStream):
                    await self.stream.send_eof()
                drained = 0
                while drained < DRAIN_LIMIT:
                    chunk = await self.stream.receive_some(MAX_HEAD)
                    if not chunk:
                        break
                    drained += len(chunk)
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _as_get(request: Request) -> Request:
    return Request("GET", request.path, request.query, request.headers, request.body)


async def serve_http(
    routes: Mapping[str, Handler],
    host: str,
    port: int,
    *,
    what: str = "HTTP server",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `routes` on host:port until cancelled; `task_status.started(bound_port)`.

    Port 0 picks a free port (reported through `nursery.start`). A port in use
    or an address that cannot be bound raises ListenError naming `what`.
    """
    routes = dict(routes)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:  # socket.gaierror for an address that does not resolve
        raise ListenError(what, host, port, reason_of(exc)) from exc
    bound: int = listeners[0].socket.getsockname()[1]
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            await trio.aclose_forcefully(stream)
            return
        try:
            await _Connection(stream, routes).serve()
        finally:
            limiter.release()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)
