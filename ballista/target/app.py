"""The embedded demo target: an ASGI app served by hypercorn on trio, with realistic latency.

It answers on one plain port in HTTP/1.1 and in HTTP/2 with prior knowledge
(h2c), or with TLS when given a certificate (ALPN offers `h2` and `http/1.1`).

Latency distribution. Every response to `/` waits a delay drawn from a
log-normal distribution fitted to two figures: the median (`--latency-median`,
default 5ms) and the 99th percentile (`--latency-p99`, default 40ms). With
`m` the median and `p` the p99, ln(delay) is normal with mean ln(m) and
standard deviation ln(p / m) / 2.3263 (2.3263 is the standard normal 99th
percentile), so with the defaults half the requests wait under 5ms, 1 in 100
waits over 40ms, the mean is about 7.5ms and 1 in 10,000 waits over about
140ms. Draws are capped at 10 x p99 so that no request stalls forever.
`--fixed-delay DUR` replaces the distribution by one exact delay (`0` for
none). Errors: a share of responses (`--error-rate`, default 1%) is a 500 or
a 503 (half each), after the same delay. Bodies are `--body-size` bytes
(default 256).

Paths and per-request overrides:

- `/` and any other path: the behaviour above. Query parameters override it
  for one request: `?delay=0.05` (seconds, or a duration such as `50ms`;
  exact, no draw), `?status=503` (200-599; no random error), `?size=1024`
  (body bytes, at most 16 MiB). A bad value gets a 400 naming it.
- `/health`: 200 `ok`, at once, never an injected error.
- `/api/login`, `/api/items`, `/api/cart/U`, `/api/me`: a small shop for
  journeys (`shop.py` has the rules). Its answers wait the configured delay but are never injected
  errors: a journey's correlation is what they test.
- `/stats`: JSON `{"requests", "connections", "in_flight", "bytes_received",
  "statuses", "api"}` (`api`: requests per shop route, such as `login`).
  Requests to `/stats` are not counted, so polling it does not disturb what
  it reports.

`connections` counts distinct client addresses (host, port): each TCP
connection has its own, while HTTP/2 streams share their connection's.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import signal
import socket
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework

from ballista.core.durations import parse_duration, parse_share
from ballista.core.errors import ConfigError, ListenError, reason_of
from ballista.target.shop import MAX_API_BODY, Shop

#: Standard normal quantile at 0.99: a log-normal's p99 is median * exp(Z99 * sigma).
Z99 = 2.3263478740408408
MAX_DELAY = 600.0
MAX_BODY_SIZE = 16 * 1024 * 1024
#: Client addresses remembered to tell a new connection from a known one. Big enough
#: for any number of concurrently active connections a test opens; small enough that
#: an ephemeral port reused much later counts as a new connection again.
_REMEMBERED_CLIENTS = 16384

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class TargetConfig:
    """How the target behaves. Durations are seconds."""

    host: str = "127.0.0.1"
    port: int = 0
    latency_median: float = 0.005
    latency_p99: float = 0.040
    #: One exact delay for every response instead of the distribution.
    fixed_delay: float | None = None
    error_rate: float = 0.01
    body_size: int = 256
    certfile: str | None = None
    keyfile: str | None = None
    #: Seed of the delay and error draws (None: unpredictable).
    seed: int | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


def _validate(c: TargetConfig) -> None:
    if not 0 <= c.port <= 65535:
        raise ConfigError(f"target port: {c.port} is not between 0 and 65535")
    if not c.host:
        raise ConfigError("target host: empty")
    if c.fixed_delay is not None and not 0 <= c.fixed_delay <= MAX_DELAY:
        raise ConfigError(f"--fixed-delay: must be between 0 and {MAX_DELAY:g}s")
    if not 0 < c.latency_median <= MAX_DELAY:
        raise ConfigError(f"--latency-median: must be above 0 and at most {MAX_DELAY:g}s")
    if not c.latency_median < c.latency_p99 <= MAX_DELAY:
        raise ConfigError(
            f"--latency-p99: must be above the median ({c.latency_median:g}s)"
            f" and at most {MAX_DELAY:g}s"
        )
    if not (math.isfinite(c.error_rate) and 0 <= c.error_rate <= 1):
        raise ConfigError(f"--error-rate: {c.error_rate:g} is not between 0 and 1 (or 0%-100%)")
    if not 0 <= c.body_size <= MAX_BODY_SIZE:
        raise ConfigError(f"--body-size: must be between 0 and {MAX_BODY_SIZE} bytes")
    if (c.certfile is None) != (c.keyfile is None):
        raise ConfigError("--certfile and --keyfile go together")


def latency_sigma(config: TargetConfig) -> float:
    """The log-normal's shape: the standard deviation of ln(delay)."""
    return math.log(config.latency_p99 / config.latency_median) / Z99


def latency_for(config: TargetConfig, z: float) -> float:
    """The delay at standard normal deviate `z` (z=0: median, z=Z99: p99), capped.

    `sample_latency` feeds it a random normal; tests can feed it quantiles.
    """
    if config.fixed_delay is not None:
        return config.fixed_delay
    delay = config.latency_median * math.exp(latency_sigma(config) * z)
    return min(delay, 10 * config.latency_p99, MAX_DELAY)


def sample_latency(config: TargetConfig, rng: random.Random) -> float:
    """One draw of the configured delay."""
    if config.fixed_delay is not None:
        return config.fixed_delay
    return latency_for(config, rng.gauss(0.0, 1.0))


@dataclass
class TargetStats:
    """What the target saw, for in-process readers (tests, `ballista demo`).

    `requests` counts every request but those to `/stats`; `connections` counts
    distinct client addresses (see the module docstring).
    """

    requests: int = 0
    connections: int = 0
    in_flight: int = 0
    bytes_received: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    #: requests per shop route (`login`, `items`, `cart_add`, ...; see shop.py)
    api: dict[str, int] = field(default_factory=dict)
    _clients: OrderedDict[tuple[str, int], None] = field(default_factory=OrderedDict, repr=False)

    def _saw(self, client: tuple[str, int] | None) -> None:
        self.requests += 1
        if client is None:
            return
        key = (client[0], client[1])
        if key in self._clients:
            self._clients.move_to_end(key)
            return
        self.connections += 1
        self._clients[key] = None
        if len(self._clients) > _REMEMBERED_CLIENTS:
            self._clients.popitem(last=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "connections": self.connections,
            "in_flight": self.in_flight,
            "bytes_received": self.bytes_received,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "api": dict(sorted(self.api.items())),
        }


class _BadQuery(Exception):
    pass


class TargetApp:
    """The ASGI application. One instance per served target; it owns the stats."""

    def __init__(self, config: TargetConfig, stats: TargetStats | None = None) -> None:
        self.config = config
        self.stats = stats if stats is not None else TargetStats()
        self._rng = random.Random(config.seed)
        self._body = b"x" * config.body_size
        self.shop = Shop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        # websocket: not served; hypercorn answers a refusal when the app returns.

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        stats = self.stats
        path: str = scope["path"]
        if path == "/stats":
            await self._drain(receive)
            body = json.dumps(stats.as_json()).encode()
            await _respond(send, 200, body, b"application/json")
            return
        stats._saw(scope.get("client"))
        stats.in_flight += 1
        try:
            if path.startswith("/api/") and self.shop.owns(path):
                await self._api(scope, receive, send)
                return
            await self._drain(receive)
            if path == "/health":
                stats.statuses[200] = stats.statuses.get(200, 0) + 1
                await _respond(send, 200, b"ok\n")
                return
            try:
                delay, status, body = self._plan(scope["query_string"])
            except _BadQuery as bad:
                stats.statuses[400] = stats.statuses.get(400, 0) + 1
                await _respond(send, 400, f"{bad}\n".encode())
                return
            if delay > 0:
                await trio.sleep(delay)
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            await _respond(send, status, body, b"application/octet-stream")
        finally:
            stats.in_flight -= 1

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> None:
        stats = self.stats
        body = await self._read(receive, MAX_API_BODY)
        if body is None:
            stats.statuses[413] = stats.statuses.get(413, 0) + 1
            await _respond(send, 413, f"body: over {MAX_API_BODY} bytes\n".encode())
            return
        delay = sample_latency(self.config, self._rng)
        if delay > 0:
            await trio.sleep(delay)
        answer = self.shop.handle(scope["method"], scope["path"], scope["headers"], body)
        if answer.route is not None:
            stats.api[answer.route] = stats.api.get(answer.route, 0) + 1
        stats.statuses[answer.status] = stats.statuses.get(answer.status, 0) + 1
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [
                    *answer.headers,
                    (b"content-length", str(len(answer.body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})

    async def _read(self, receive: Receive, limit: int) -> bytes | None:
        """The request body, or None past `limit` bytes (the rest is drained)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk: bytes = message.get("body", b"")
            self.stats.bytes_received += len(chunk)
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks) if size <= limit else None

    async def _drain(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                return
            self.stats.bytes_received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _plan(self, query_string: bytes) -> tuple[float, int, bytes]:
        """(delay, status, body) of one request to `/`: the query, else the config."""
        delay: float | None = None
        status: int | None = None
        size: int | None = None
        for name, value in parse_qsl(query_string.decode("latin-1")):
            if name == "delay":
                try:
                    delay = parse_duration(value, what="delay")
                except ConfigError as e:
                    raise _BadQuery(str(e)) from None
                if delay > MAX_DELAY:
                    raise _BadQuery(f"delay: at most {MAX_DELAY:g}s")
            elif name == "status":
                status = _int_param(name, value, 200, 599)
            elif name == "size":
                size = _int_param(name, value, 0, MAX_BODY_SIZE)
        if delay is None:
            delay = sample_latency(self.config, self._rng)
        if status is None:
            status = 200
            if self.config.error_rate > 0 and self._rng.random() < self.config.error_rate:
                status = 500 if self._rng.random() < 0.5 else 503
        if size is not None:
            body = b"x" * size
        elif status >= 500:
            body = b"error injected by the ballista target\n"
        else:
            body = self._body
        return delay, status, body


def _int_param(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _BadQuery(f"{name}: {value!r} is not an integer") from None
    if not low <= number <= high:
        raise _BadQuery(f"{name}: {number} is not between {low} and {high}")
    return number


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes = b"text/plain"
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _hypercorn_config(config: TargetConfig) -> HypercornConfig:
    hc = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hc.bind = [f"{host}:{config.port}"]
    hc.certfile = config.certfile
    hc.keyfile = config.keyfile
    hc.alpn_protocols = ["h2", "http/1.1"]
    # A load target must not close busy connections: hypercorn's default closes an
    # HTTP/1.1 connection (and GOAWAYs an HTTP/2 one) after 1000 requests.
    hc.keep_alive_max_requests = sys.maxsize
    # Open-model tests at low rates leave connections idle for a while (nginx: 75s).
    hc.keep_alive_timeout = 75.0
    hc.h2_max_concurrent_streams = 1000
    hc.graceful_timeout = 2.0
    hc.backlog = 1024
    hc.accesslog = None
    hc.loglevel = "WARNING"  # hypercorn's "Running on ..." line would double ours
    hc.include_server_header = False
    return hc


def _preflight(config: TargetConfig, hc: HypercornConfig) -> None:
    """Fail with one clear ConfigError on what hypercorn would raise as a nested
    exception group: unreadable certificate or key, an address that cannot be bound."""
    if hc.ssl_enabled:
        try:
            hc.create_ssl_context()
        except OSError as e:  # ssl.SSLError is one too
            raise ConfigError(f"--certfile/--keyfile: cannot load: {e.strerror or e}") from None
    # The same bind hypercorn will do (its own create_sockets leaks the socket when
    # bind fails). Bound but never listened on: closing leaves no TIME_WAIT.
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.host, config.port))
        except OSError as e:
            raise ListenError("target", config.host, config.port, reason_of(e)) from None


def _port_of(bind: str) -> int:
    # hypercorn reports binds as "http://127.0.0.1:PORT" or "https://[::1]:PORT".
    return int(bind.rsplit(":", 1)[1])


async def serve_target(
    config: TargetConfig,
    *,
    stats: TargetStats | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the target until cancelled (or until `shutdown_trigger` returns: graceful).

    `port = await nursery.start(serve_target, config)` returns once the port is
    bound and listening; with `config.port == 0` it is a free port. Pass `stats`
    to read the counts from outside. Raises ConfigError (from `nursery.start`)
    if the address cannot be bound or the certificate cannot be loaded.
    """
    app = TargetApp(config, stats)
    hc = _hypercorn_config(config)
    _preflight(config, hc)
    serving = functools.partial(
        serve,
        cast(ASGIFramework, app),  # our loose dict-typed ASGI signature
        hc,
        shutdown_trigger=shutdown_trigger,
        mode="asgi",
    )
    async with trio.open_nursery() as nursery:
        # hypercorn's serve() calls started() with the addresses it bound
        # ("http://127.0.0.1:PORT"), after listen(): relay the port.
        binds: list[str] = await nursery.start(serving)
        task_status.started(_port_of(binds[0]))


def describe(config: TargetConfig, port: int) -> str:
    """The one line `ballista target` prints once it listens."""
    host = f"[{config.host}]" if ":" in config.host else config.host
    protocols = "HTTP/1.1 + h2 via ALPN" if config.tls else "HTTP/1.1 + h2c"
    return f"ballista target listening on {config.scheme}://{host}:{port} ({protocols})"


def run_target_forever(config: TargetConfig) -> int:
    """`ballista target`: serve until Ctrl-C or SIGTERM, then stop gracefully. Returns 0.

    Raises ConfigError (before serving) if the address or the certificate is unusable.
    """
    _preflight(config, _hypercorn_config(config))

    async def main() -> None:
        stop = trio.Event()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                serving = functools.partial(serve_target, config, shutdown_trigger=stop.wait)
                port = await nursery.start(serving)
                print(describe(config, port), flush=True)
                async for _ in signals:
                    # Graceful: hypercorn stops accepting and lets requests in
                    # flight finish, for at most its graceful_timeout.
                    stop.set()
                    break

    trio.run(main)
    return 0


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `ballista target` (and of the target `ballista demo` starts)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", default="8080", help="port to bind; 0 picks a free one (8080)")
    parser.add_argument("--latency-median", default="5ms", metavar="DUR", help="median delay (5ms)")
    parser.add_argument(
        "--latency-p99", default="40ms", metavar="DUR", help="99th percentile delay (40ms)"
    )
    parser.add_argument(
        "--fixed-delay",
        default=None,
        metavar="DUR",
        help="one exact delay for every response instead of the distribution",
    )
    parser.add_argument(
        "--error-rate",
        default="1%",
        metavar="RATE",
        help="share of responses that are 500/503: 0.01 or 1%% (1%%)",
    )
    parser.add_argument(
        "--body-size", default="256", metavar="BYTES", help="response body size (256)"
    )
    parser.add_argument("--certfile", default=None, help="PEM certificate: serve TLS")
    parser.add_argument("--keyfile", default=None, help="PEM private key of --certfile")
    parser.add_argument("--seed", default=None, help="seed of the delay/error draws")


def target_config_from_args(ns: argparse.Namespace) -> TargetConfig:
    """The namespace filled by `add_target_arguments` -> a validated TargetConfig."""
    fixed = ns.fixed_delay
    return TargetConfig(
        host=str(ns.host).strip(),
        port=_int_arg("--port", ns.port),
        latency_median=parse_duration(str(ns.latency_median), what="--latency-median"),
        latency_p99=parse_duration(str(ns.latency_p99), what="--latency-p99"),
        fixed_delay=None if fixed is None else parse_duration(str(fixed), what="--fixed-delay"),
        error_rate=_rate_arg("--error-rate", ns.error_rate),
        body_size=_int_arg("--body-size", ns.body_size),
        certfile=ns.certfile,
        keyfile=ns.keyfile,
        seed=None if ns.seed is None else _int_arg("--seed", ns.seed),
    )


def _int_arg(flag: str, value: object) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{flag}: {value!r} is not an integer") from None


def _rate_arg(flag: str, value: object) -> float:
    try:
        rate = parse_share(str(value), what="")
    except ConfigError:
        raise ConfigError(f"{flag}: {value!r} is not a rate (use e.g. 0.01 or 1%)") from None
    if rate > 1:
        raise ConfigError(f"{flag}: {value!r} is not between 0 and 1 (or 0% and 100%)")
    return rate
