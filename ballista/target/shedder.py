"""A target with a hard capacity that turns away at once what is beyond it, as rate
limiters (429), load shedders (503) and HTTP/2 servers refusing streams do.

It serves `capacity` requests at a time, each `service` seconds long; a
request that finds them all busy is answered at once: a 503 or a 429
(HTTP/1.1 and h2c, through hypercorn), or RST_STREAM(REFUSED_STREAM) (h2c
only, a small server on the h2 state machine, since ASGI cannot reset a
stream). `python -m ballista.target.shedder` runs one in the foreground and
prints its URL; the benchmarks and tests of the adaptive controller use it.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import trio

from ballista.core.durations import parse_duration
from ballista.core.errors import ConfigError

#: The signals a shedder can answer with beyond its capacity.
SIGNALS = ("503", "429", "refused_stream")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class ShedderStats:
    """What the shedder did: requests served, requests turned away, the peak in service."""

    served: int = 0
    rejected: int = 0
    busy: int = 0
    peak: int = 0

    def admit(self, capacity: int) -> bool:
        if self.busy >= capacity:
            self.rejected += 1
            return False
        self.busy += 1
        self.peak = max(self.peak, self.busy)
        return True

    def done(self) -> None:
        self.busy -= 1
        self.served += 1


class ShedderApp:
    """ASGI: `capacity` requests in service at once, each `service` long; `status` at once
    to any request beyond them."""

    def __init__(self, capacity: int, service: float, status: int) -> None:
        self.capacity = capacity
        self.service = service
        self.status = status
        self.stats = ShedderStats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                done = message["type"] == "lifespan.shutdown"
                await send({"type": message["type"] + ".complete"})
                if done:
                    return
        if scope["type"] != "http":
            return
        stats = self.stats
        if stats.admit(self.capacity):
            try:
                await trio.sleep(self.service)
            finally:
                stats.done()
            status, body = 200, b"ok\n"
        else:
            status, body = self.status, b"busy\n"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def serve_asgi(
    app: ShedderApp, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve `app` with hypercorn on 127.0.0.1, a free port (HTTP/1.1 and h2c)."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.loglevel = "WARNING"
    config.keep_alive_max_requests = 10_000_000
    asgi: Any = app
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(functools.partial(serve, asgi, config, mode="asgi"))
        task_status.started(int(binds[0].rsplit(":", 1)[1]))


class RefusingH2:
    """h2c with prior knowledge: `capacity` streams in service at once across all its
    connections, each `service` long; RST_STREAM(REFUSED_STREAM) to any beyond them."""

    def __init__(self, capacity: int, service: float) -> None:
        self.capacity = capacity
        self.service = service
        self.stats = ShedderStats()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.initiate_connection()
        lock = trio.Lock()

        async def flush() -> None:
            async with lock:
                data = conn.data_to_send()
                if data:
                    await stream.send_all(data)

        async def answer(stream_id: int) -> None:
            try:
                await trio.sleep(self.service)
            finally:
                self.stats.done()
            try:
                conn.send_headers(stream_id, [(b":status", b"200"), (b"content-length", b"3")])
                conn.send_data(stream_id, b"ok\n", end_stream=True)
            except h2.exceptions.StreamClosedError:
                return  # the client gave up on it
            await flush()

        try:
            async with trio.open_nursery() as nursery:
                await flush()
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    try:
                        events = conn.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        break
                    for event in events:
                        if isinstance(event, h2.events.RequestReceived) and event.stream_id:
                            if self.stats.admit(self.capacity):
                                nursery.start_soon(answer, event.stream_id)
                            else:
                                conn.reset_stream(
                                    event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM
                                )
                        elif isinstance(event, h2.events.DataReceived) and event.stream_id:
                            conn.acknowledge_received_data(
                                event.flow_controlled_length, event.stream_id
                            )
                    await flush()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            await stream.aclose()


async def start_shedder(
    nursery: trio.Nursery, signal: str, capacity: int, service: float
) -> tuple[int, ShedderStats]:
    """Start a shedder answering `signal` (one of SIGNALS) in `nursery`; (port, its stats)."""
    if signal == "refused_stream":
        h2server = RefusingH2(capacity, service)
        port: int = await nursery.start(h2server.serve)
        return port, h2server.stats
    app = ShedderApp(capacity, service, int(signal))
    port = await nursery.start(serve_asgi, app)
    return port, app.stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ballista.target.shedder", description=__doc__)
    parser.add_argument("--capacity", type=int, default=12, help="requests served at once (12)")
    parser.add_argument("--service", default="20ms", help="how long each one takes (20ms)")
    parser.add_argument("--reject", choices=SIGNALS, default="503", help="answer beyond (503)")
    ns = parser.parse_args(argv)
    try:
        service = parse_duration(ns.service, what="--service")
    except ConfigError as exc:
        print(f"shedder: {exc}", file=sys.stderr)
        return 2
    if ns.capacity < 1:
        print("shedder: --capacity: must be at least 1", file=sys.stderr)
        return 2

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            port, _ = await start_shedder(nursery, ns.reject, ns.capacity, service)
            h2c = " (h2c: use --http2)" if ns.reject == "refused_stream" else ""
            print(f"http://127.0.0.1:{port}/{h2c}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
