"""The live stream: batched snapshots of a run over a websocket, one message per interval.

`LiveHub` turns each Snapshot into one JSON message and keeps, per client, only
the newest unsent one; `serve_live` runs the trio-websocket server whose
handlers drain those slots. A slow or stuck client costs the engine nothing: it
only ever loses intermediate snapshots, and is disconnected when it stops
answering.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
)

from ballista import __version__
from ballista.core.config import RunConfig
from ballista.core.errors import ListenError, reason_of
from ballista.core.redact import redact_header, redact_target, redact_url
from ballista.core.runmeta import iso_utc
from ballista.core.snapshot import LatencySummary, Snapshot
from ballista.engine.engine import RunInfo
from ballista.observe.httpserver import (
    Handler,
    Request,
    Response,
    Slots,
    current_slot,
    serve_capped,
)

#: Names the `type` of the first message every client receives.
LIVE_SCHEMA = "ballista.live/1"

#: Header and query names whose values are never sent to viewers.


class _Stuck(Exception):
    """A client did not take a message, or answer a ping, in time."""


def _latency(summary: LatencySummary | None) -> dict[str, float] | None:
    if summary is None:
        return None
    return {
        "count": summary.count,
        **{k: round(v, 9) for k, v in summary.as_dict().items()},
    }


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, 6)


def snapshot_message(snap: Snapshot) -> dict[str, Any]:
    """The `snapshot` message for one Snapshot (docs/live.md lists every field)."""
    message = _snapshot_fields(snap)
    if snap.flows:
        # journeys: each flow's cumulative figures, the shape of the summary's "flows"
        message["flows"] = {f.name: f.as_dict() for f in snap.flows}
    return message


def _snapshot_fields(snap: Snapshot) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "seq": snap.seq,
        "elapsed": round(snap.elapsed, 6),
        "interval": round(snap.interval, 6),
        "final": snap.final,
        # cumulative, from the start of the run
        "requests": snap.requests,
        "responses": snap.responses,
        "errors": snap.errors,
        "failed": snap.failed,
        "error_rate": snap.error_rate,
        "mean_rps": round(snap.rps, 3),
        "status_codes": {str(k): v for k, v in sorted(snap.status_codes.items())},
        "errors_by_kind": dict(sorted(snap.errors_by_kind.items())),
        "latency_s": _latency(snap.latency),
        "dropped": snap.dropped,
        "connections_opened": snap.connections_opened,
        "open_connections": snap.open_connections,
        "connection_attempts": snap.connection_attempts,
        "retried": snap.retried,
        "bytes_sent": snap.bytes_sent,
        "bytes_received": snap.bytes_received,
        # gauges at the instant of the snapshot
        "in_flight": snap.in_flight,
        "max_in_flight": snap.max_in_flight,
        "concurrency_limit": snap.concurrency_limit,
        "target_rate": _finite(snap.target_rate),
        # this interval only
        "rps": round(snap.interval_rps, 3),
        "interval_requests": snap.interval_requests,
        "interval_failed": snap.interval_failed,
        "interval_errors": snap.interval_errors,
        "interval_latency_s": _latency(snap.interval_latency),
        "interval_status_codes": {str(k): v for k, v in sorted(snap.interval_status_codes.items())},
        "interval_errors_by_kind": dict(sorted(snap.interval_errors_by_kind.items())),
        "scheduler_lag_s": round(snap.interval_scheduler_lag, 6),
        # p95 of how late Ballista's event loop woke this interval: its own delay
        "loop_lag_s": round(snap.interval_loop_lag, 6),
    }


def public_config(config: RunConfig) -> dict[str, Any]:
    """The run's configuration as viewers see it: no secret headers, no bodies."""
    load = config.load
    adaptive = load.adaptive
    return {
        "origin": config.origin.url(""),
        "scenario": config.scenario,
        "protocol": config.protocol,
        "connections": config.connections,
        "timeout_s": config.timeout,
        "insecure": config.insecure,
        "interval_s": config.interval,
        "thresholds": [t.expr for t in config.thresholds],
        "load": {
            "model": load.model,
            "concurrency": load.concurrency,
            "rate": load.rate,
            "duration_s": load.effective_duration,
            "requests": load.requests,
            "max_in_flight": load.max_in_flight,
            "arrival": load.arrival,
            "stages": [{"duration_s": s.duration, "target": s.target} for s in load.stages],
            "adaptive": None
            if adaptive is None
            else {
                "latency_target_s": adaptive.latency_target,
                "percentile": adaptive.percentile,
                "initial": adaptive.initial,
                "minimum": adaptive.minimum,
                "maximum": adaptive.maximum,
            },
        },
        "requests": [
            {
                "name": r.name,
                "method": r.method,
                "target": redact_target(r.target),
                "headers": [[k, redact_header(k, v)] for k, v in r.headers],
                "body_bytes": len(r.body),
                "weight": r.weight,
            }
            for r in config.requests
        ],
    }


def _dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


class _Client:
    """One viewer: a slot for the newest unsent snapshot, and a bell."""

    __slots__ = ("pending", "wake")

    def __init__(self, pending: str | None) -> None:
        self.pending = pending
        self.wake = trio.Event()

    def offer(self, message: str) -> None:
        self.pending = message  # latest wins: an unsent older snapshot is dropped
        self.wake.set()


class LiveHub:
    """Fans snapshots of one run out to any number of websocket clients.

    `publish` is the engine's snapshot sink: synchronous, O(clients), never
    blocks. Each client's handler (`handle`) sends `hello`, then whatever
    snapshot is newest when it is ready to send, then `summary`, then closes
    with code 1000.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        run_id: str,
        started_at: dt.datetime,
        send_timeout: float = 5.0,
        ping_interval: float = 5.0,
        pong_timeout: float = 10.0,
        close_timeout: float = 2.0,
        finish_timeout: float = 5.0,
    ) -> None:
        self.config = config
        self.run_id = run_id
        self.started_at = started_at
        self.send_timeout = send_timeout
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.close_timeout = close_timeout
        self.finish_timeout = finish_timeout
        self.info: RunInfo | None = None
        #: the daemon's segment of the run this hub streams (None outside the daemon)
        self.segment: int | None = None
        self._clients: set[_Client] = set()
        self._latest: str | None = None
        self._summary: str | None = None
        self._ready = trio.Event()  # the hello can be written (run started, or over)
        self._idle = trio.Event()  # no client is connected
        self._idle.set()
        #: snapshots published so far
        self.published = 0
        #: clients disconnected because they stopped reading
        self.dropped_clients = 0
        #: clients that connected, ever
        self.accepted_clients = 0

    # -- engine side (synchronous, cheap) ----------------------------------------

    def on_start(self, info: RunInfo) -> None:
        """Engine hook: protocol, connections and concurrency are now known."""
        self.info = info
        self._ready.set()

    def publish(self, snap: Snapshot) -> None:
        """Snapshot sink: encode once, offer to every client, return at once."""
        message = _dumps(snapshot_message(snap))
        self._latest = message
        self.published += 1
        for client in self._clients:
            client.offer(message)

    @property
    def clients(self) -> int:
        """Clients connected now."""
        return len(self._clients)

    def hello(self) -> dict[str, Any]:
        """The first message of every connection: what is being run, and how."""
        info = self.info
        config = self.config
        return {
            "type": "hello",
            "schema": LIVE_SCHEMA,
            "version": __version__,
            "run_id": self.run_id,
            "target": redact_url(config),
            "scenario": config.scenario,
            "model": info.model if info else config.load.model,
            "protocol": info.protocol if info else None,
            "connections": info.connections if info else config.connections,
            "concurrency": info.concurrency if info else config.load.concurrency,
            "started_at": iso_utc(self.started_at),
            # snapshots happen at started_at_unix + elapsed: the daemon's stored points
            # are on the same clock, so the page joins them without a gap or a double
            "started_at_unix": round(self.started_at.timestamp(), 6),
            "segment": self.segment,
            "interval": config.interval,
            "duration_s": config.load.effective_duration,
            "config": public_config(config),
        }

    async def finish(self, summary: Mapping[str, Any]) -> None:
        """Send `summary` to every client, close each with 1000; bounded by finish_timeout.

        Clients that connect afterwards (while the server still runs) get the
        hello, the final snapshot and the summary at once.
        """
        self._summary = _dumps({"type": "summary", **summary})
        self._ready.set()
        for client in self._clients:
            client.wake.set()
        with trio.move_on_after(self.finish_timeout):
            await self._idle.wait()

    # -- one connection ------------------------------------------------------------

    async def handle(self, request: WebSocketRequest, *, subprotocol: str | None = None) -> None:
        """trio-websocket handler: one viewer, from hello to close."""
        ws = await request.accept(subprotocol=subprotocol)
        client = _Client(self._latest)
        self._clients.add(client)
        self._idle = trio.Event() if len(self._clients) == 1 else self._idle
        self.accepted_clients += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._discard_incoming, ws, nursery.cancel_scope)
                nursery.start_soon(self._keepalive, ws)
                await self._send_all(ws, client)
                nursery.cancel_scope.cancel()
            with trio.move_on_after(self.close_timeout):
                await ws.aclose(1000)
        except* _Stuck:
            self.dropped_clients += 1
            await _abort(ws)
        except* ConnectionClosed:
            pass  # the viewer left
        finally:
            self._clients.discard(client)
            if not self._clients:
                self._idle.set()

    async def _send(self, ws: WebSocketConnection, message: str) -> None:
        try:
            with trio.fail_after(self.send_timeout):
                await ws.send_message(message)
        except trio.TooSlowError:
            raise _Stuck from None

    async def _send_all(self, ws: WebSocketConnection, client: _Client) -> None:
        with trio.move_on_after(self.send_timeout + self.pong_timeout) as waited:
            await self._ready.wait()
        if waited.cancelled_caught:
            raise _Stuck  # cannot happen unless the engine never starts: do not hold the socket
        await self._send(ws, _dumps(self.hello()))
        while True:
            message = client.pending
            if message is not None:
                client.pending = None
                await self._send(ws, message)
                continue
            if self._summary is not None:
                await self._send(ws, self._summary)
                return
            await client.wake.wait()
            client.wake = trio.Event()

    async def _keepalive(self, ws: WebSocketConnection) -> None:
        """A client that does not answer a ping in time has stopped reading: drop it."""
        while True:
            await trio.sleep(self.ping_interval)
            try:
                with trio.fail_after(self.pong_timeout):
                    await ws.ping()
            except trio.TooSlowError:
                raise _Stuck from None

    @staticmethod
    async def _discard_incoming(ws: WebSocketConnection, scope: trio.CancelScope) -> None:
        """Viewers have nothing to say; reading keeps pongs and closes flowing."""
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed:
            scope.cancel()  # the viewer closed: stop sending to it


async def _abort(ws: WebSocketConnection) -> None:
    """Close the TCP connection now, without waiting for a client that does not read."""
    with trio.CancelScope() as scope:
        scope.cancel()
        await ws.aclose(1008)


#: A websocket client must finish its handshake within this many seconds of connecting.
HANDSHAKE_TIMEOUT = 5.0
#: Connections the live port holds at once; a new one pushes out the oldest that
#: has not finished its handshake, and established viewers are never pushed out.
MAX_LIVE_CONNECTIONS = 256


async def serve_websockets(
    handler: Callable[[WebSocketRequest], Awaitable[None]],
    host: str,
    port: int,
    *,
    what: str = "live stream",
    close_timeout: float = 2.0,
    max_connections: int = MAX_LIVE_CONNECTIONS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """trio-websocket on host:port (0: a free port) until cancelled, with a
    handshake timeout and a connection cap, so idle or unauthenticated
    connections cannot pile up. `task_status.started(bound_port)`; ListenError
    when host:port cannot be bound."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:  # socket.gaierror for an address that does not resolve
        raise ListenError(what, host, port, reason_of(exc)) from exc
    bound: int = listeners[0].socket.getsockname()[1]

    async def established(request: WebSocketRequest) -> None:
        slot = current_slot.get()
        if slot is not None:
            slot.busy += 1  # past the handshake: a viewer, never pushed out
        await handler(request)

    server = WebSocketServer(
        established,
        listeners,  # for its `port`; the accept loop is serve_capped's
        connect_timeout=HANDSHAKE_TIMEOUT,
        disconnect_timeout=close_timeout,
    )
    async with trio.open_nursery() as nursery:
        # The server's own accept loop has no cap: ours admits, then hands each
        # connection to the server's per-connection code.
        await nursery.start(
            serve_capped, listeners, server._handle_connection, Slots(max_connections)
        )
        task_status.started(bound)


async def serve_live(
    hub: LiveHub,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `hub` over websocket on host:port (0: a free port) until cancelled.

    Reports the bound port through `task_status.started`; raises ListenError
    when host:port cannot be bound.
    """
    await serve_websockets(
        hub.handle, host, port, close_timeout=hub.close_timeout, task_status=task_status
    )


# -- the web page ----------------------------------------------------------------------

#: Static files of the page: name -> content type.
STATIC_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}


def static_file(name: str) -> bytes:
    return resources.files("ballista.observe").joinpath("static", name).read_bytes()


def page_routes(
    live_port: int, live_url: str | None = None, *, api: str | None = None
) -> dict[str, Handler]:
    """Routes for the page: `/` and `/static/...`. One page for both places: beside
    /metrics of `ballista run --live-port` (one run, its stream) and in the daemon,
    which passes `api` (the API's path relative to the page, `api/`): then the page
    lists the runs and draws each from its stored points on.

    `/` is index.html told where the stream is: `live_url` when given (absolute,
    or relative to the page's own location, as behind a reverse proxy), else
    ws://<the page's host>:<live_port>/. The files are read once, here.
    """
    files = {name: static_file(name) for name in STATIC_FILES}
    index = (
        files["index.html"]
        .replace(b"{{LIVE_PORT}}", str(live_port).encode())
        .replace(b"{{LIVE_URL}}", html.escape(live_url or "", quote=True).encode())
        .replace(b"{{API}}", html.escape(api or "", quote=True).encode())
    )

    def headers(content_type: str) -> list[tuple[str, str]]:
        return [
            ("content-type", content_type),
            ("cache-control", "no-cache"),
            ("x-content-type-options", "nosniff"),
        ]

    def page(request: Request) -> Response:
        if request.method != "GET":
            return Response(405, [("allow", "GET, HEAD")], b"")
        return Response(200, headers(STATIC_FILES["index.html"]), index)

    def static(request: Request) -> Response:
        name = request.path.removeprefix("/static/")
        if request.method != "GET":
            return Response(405, [("allow", "GET, HEAD")], b"")
        if name not in files:  # a fixed set: no path ever reaches the file system
            return Response(404, headers("text/plain; charset=utf-8"), b"not found\n")
        return Response(200, headers(STATIC_FILES[name]), files[name])

    return {"/": page, "/static/": static}
