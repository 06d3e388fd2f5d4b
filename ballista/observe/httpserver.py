"""Ballista's own HTTP endpoints (the daemon's API, /metrics, the page) as one ASGI
application served by hypercorn on trio, with the limits a hostile network needs.

Routes map a path to a handler. A handler is called as ``handler(request)`` with
a :class:`Request` (method, path, query, headers, body) and returns a
:class:`Response` ``(status, headers, body)``, either directly (a plain function)
or as an awaitable (an ``async def``). A route key ending in ``/`` (other than
``/`` itself) matches every path under it, so ``{"/static/": serve_static}``
serves ``/static/app.js``; otherwise the match is exact. HEAD gets the GET
response's head, unknown paths 404, a handler that raises 500 (logged).

Limits: a request head must arrive whole within HEAD_TIMEOUT and be at most
MAX_HEAD bytes (431 beyond); a body at most MAX_BODY bytes (413) within
BODY_TIMEOUT (408); a response that the client does not take within
SEND_TIMEOUT costs it the connection. At most MAX_CONNECTIONS connections are
held: when full, a new one pushes out the connection idle (or still sending its
head) the longest, so a flood of slow or idle clients never locks a real one out.
hypercorn's trio worker has no connection cap, so the accept loop is ours; each
connection is served by hypercorn's own TCPServer.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import trio
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope
from hypercorn.utils import wrap_app

from ballista import __version__
from ballista.core.errors import ListenError, reason_of

log = logging.getLogger("ballista.http")

#: Largest request head accepted (bytes); beyond it the client gets 431.
MAX_HEAD = 16 * 1024
#: Largest request body accepted (bytes); beyond it the client gets 413.
MAX_BODY = 64 * 1024
#: A request head must arrive whole within this many seconds of the connection
#: opening or of the previous response; an idle keep-alive connection is closed then.
HEAD_TIMEOUT = 5.0
#: A request body must arrive whole within this many seconds of its head.
BODY_TIMEOUT = 10.0
#: Sending one response may take at most this long (a client that does not read).
SEND_TIMEOUT = 10.0
#: Bytes of a refused body read and dropped before answering, so the answer is
#: not destroyed by a reset; beyond it the connection is simply closed.
DRAIN_LIMIT = 1024 * 1024
#: Connections held at once per listener; far below any file-descriptor limit.
MAX_CONNECTIONS = 256

SERVER_HEADER = f"ballista/{__version__}"

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


def head_size(scope: HTTPScope) -> int:
    """Bytes of the request line, headers and blank line as they came on the wire
    (separators counted as the shortest legal ones, ": " and CRLF)."""
    size = len(scope["method"]) + len(scope.get("raw_path") or b"") + len(b"  HTTP/1.1\r\n")
    if scope["query_string"]:
        size += 1 + len(scope["query_string"])
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4
    return size + 2


# -- connections ---------------------------------------------------------------------------


class Slot:
    """One held connection: its socket, and whether a request is being served on it."""

    __slots__ = ("busy", "close", "watch")

    def __init__(self, close: Callable[[], None]) -> None:
        self.close = close
        #: requests being answered (their bodies in): while > 0 it is never pushed out
        self.busy = 0
        #: its deadline is when the response being sent must be out (inf: none is)
        self.watch = trio.CancelScope()


#: The connection the current task serves (tasks a connection spawns inherit it).
current_slot: contextvars.ContextVar[Slot | None] = contextvars.ContextVar(
    "current_slot", default=None
)


class Slots:
    """The connections a listener holds, and which one gives way when it is full.

    Plain bookkeeping, no I/O: `admit` answers whom to push out. Order is by last
    activity, so the connection pushed out is the one idle (or dribbling its head)
    the longest; connections in the middle of a request are never pushed out."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: OrderedDict[Slot, None] = OrderedDict()
        #: connections pushed out to make room, and ones refused for lack of it
        self.evicted = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._held)

    def admit(self, slot: Slot) -> tuple[bool, Slot | None]:
        """(admitted, the slot to close to make room)."""
        victim: Slot | None = None
        if len(self._held) >= self.limit:
            victim = next((s for s in self._held if not s.busy), None)
            if victim is None:
                self.refused += 1
                return False, None
            del self._held[victim]
            self.evicted += 1
        self._held[slot] = None
        return True, victim

    def touch(self, slot: Slot) -> None:
        if slot in self._held:
            self._held.move_to_end(slot)

    def release(self, slot: Slot) -> None:
        self._held.pop(slot, None)


async def serve_capped(
    listeners: Sequence[trio.SocketListener],
    serve_stream: Callable[[trio.SocketStream], Awaitable[None]],
    slots: Slots,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on `listeners` until cancelled; each connection is served by
    `serve_stream` in a slot of `slots` (see `Slots`), as `current_slot`."""

    async def handle(stream: trio.SocketStream) -> None:
        slot = Slot(stream.socket.close)
        admitted, victim = slots.admit(slot)
        if victim is not None:
            # Closing the socket wakes whatever task waits on it (trio's
            # notify_closing): the victim's server sees it closed and ends.
            victim.close()
        if not admitted:
            await trio.aclose_forcefully(stream)
            return
        current_slot.set(slot)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_deadline, slot)
                await serve_stream(stream)
                nursery.cancel_scope.cancel()
        except Exception:
            # One client must never end the listener (and the daemon): whatever
            # the protocol code did not survive costs that connection only.
            log.exception("a connection failed")
        finally:
            slots.release(slot)
            stream.socket.close()

    await trio.serve_listeners(handle, list(listeners), task_status=task_status)


async def _watch_deadline(slot: Slot) -> None:
    with slot.watch:
        await trio.sleep_forever()
    if slot.watch.cancelled_caught:
        log.info("a client did not take its response in time: connection closed")
        slot.close()


# -- the ASGI application ------------------------------------------------------------------


class RoutesApp:
    """The routes as an ASGI application, with the head, body and send limits.

    Served by `serve_asgi`, it marks its connection busy while it answers a
    request whose body is in (a client still sending its head or body can be
    pushed out), and gives each response a deadline."""

    def __init__(self, routes: Mapping[str, Handler]) -> None:
        self.routes = dict(routes)
        self.slots: Slots | None = None

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return  # websocket: hypercorn refuses the handshake when the app returns
        await self._http(scope, receive, send, current_slot.get())

    async def _http(
        self,
        scope: HTTPScope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        slot: Slot | None,
    ) -> None:
        method = scope["method"]
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        request = Request(
            method=method,
            path=scope["path"] or "/",
            query=scope["query_string"].decode("latin-1"),
            headers=headers,
        )
        if head_size(scope) > MAX_HEAD:
            await _respond(send, slot, text_response(431, "request head too large\n"), method)
            return
        body, refusal = await _read_body(request, receive)
        if refusal is not None:
            await _respond(send, slot, refusal, method)
            return
        request = Request(request.method, request.path, request.query, headers, body)
        if slot is None:
            await _respond(send, slot, await self._handle(request), method)
            return
        slot.busy += 1
        try:
            await _respond(send, slot, await self._handle(request), method)
        finally:
            slot.busy -= 1
            slot.watch.deadline = math.inf
            if self.slots is not None:
                self.slots.touch(slot)

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


async def _read_body(
    request: Request, receive: ASGIReceiveCallable
) -> tuple[bytes, Response | None]:
    """The body, or a refusal (413 too large, 408 too slow) after a bounded drain."""
    declared = request.header("content-length")
    too_large = declared.isdigit() and int(declared) > MAX_BODY
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(BODY_TIMEOUT) as waited:
        while True:
            message: Any = await receive()
            if message["type"] == "http.disconnect":
                break
            part = bytes(message.get("body", b""))
            size += len(part)
            if size > MAX_BODY:
                too_large = True
            if too_large:
                if size > DRAIN_LIMIT:
                    break
            else:
                chunks.append(part)
            if not message.get("more_body", False):
                break
    if too_large:
        return b"", text_response(413, f"request body over {MAX_BODY} bytes\n")
    if waited.cancelled_caught:
        return b"", text_response(408, "request body too slow\n")
    return b"".join(chunks), None


async def _respond(
    send: ASGISendCallable, slot: Slot | None, response: Response, method: str
) -> None:
    status, headers, body = response
    wire = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    names = {k for k, _ in wire}
    if b"server" not in names:
        wire.append((b"server", SERVER_HEADER.encode()))
    wire.append((b"content-length", str(len(body)).encode()))
    if status in (408, 413, 431):
        wire.append((b"connection", b"close"))
    if slot is not None:
        # hypercorn shields its writes from cancellation: a client that does not
        # read is cut off by closing its socket once this deadline passes.
        slot.watch.deadline = trio.current_time() + SEND_TIMEOUT
    start: Any = {"type": "http.response.start", "status": status, "headers": wire}
    await send(start)
    end: Any = {"type": "http.response.body", "body": body if method != "HEAD" else b""}
    await send(end)
    if slot is not None:
        slot.watch.deadline = math.inf


def _as_get(request: Request) -> Request:
    return Request("GET", request.path, request.query, request.headers, request.body)


def hypercorn_config() -> Config:
    """hypercorn's settings for Ballista's endpoints (those its trio worker honours)."""
    config = Config()
    config.h11_max_incomplete_size = MAX_HEAD
    # The trio worker's idle timer runs from the connection's start (and from each
    # response's end) until a whole request head is in: the header-read timeout.
    config.keep_alive_timeout = HEAD_TIMEOUT
    config.read_timeout = int(BODY_TIMEOUT)
    config.max_app_queue_size = 4
    config.h2_max_concurrent_streams = 16
    config.h2_max_header_list_size = MAX_HEAD
    config.graceful_timeout = 1.0
    config.include_server_header = False
    config.accesslog = None
    config.errorlog = log
    return config


async def serve_asgi(
    app: RoutesApp,
    host: str,
    port: int,
    *,
    what: str = "HTTP server",
    max_connections: int = MAX_CONNECTIONS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on host:port with hypercorn until cancelled; `task_status.started(port)`.

    Port 0 picks a free port. A port in use or an address that cannot be bound
    raises ListenError naming `what`.
    """
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:  # socket.gaierror for an address that does not resolve
        raise ListenError(what, host, port, reason_of(exc)) from exc
    bound: int = listeners[0].socket.getsockname()[1]
    config = hypercorn_config()
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    slots = Slots(max_connections)
    app.slots = slots

    async def serve_stream(stream: trio.SocketStream) -> None:
        await TCPServer(wrapped, config, context, {}, stream)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_capped, listeners, serve_stream, slots)
        task_status.started(bound)


async def serve_http(
    routes: Mapping[str, Handler],
    host: str,
    port: int,
    *,
    what: str = "HTTP server",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `routes` on host:port until cancelled (see `serve_asgi`)."""
    await serve_asgi(RoutesApp(routes), host, port, what=what, task_status=task_status)
