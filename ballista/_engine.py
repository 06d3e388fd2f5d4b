"""The engine: runs a load model's workers in one trio nursery over Ballista's own connections.

It owns the run's lifetime (duration, request budget, graceful stop), binds
workers to connections, feeds every finished request to the recorder and
hands a snapshot to each sink once per interval.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from ._config import RunConfig
from ._http1 import H1Connection, Result
from ._http2 import H2Connection
from ._outcome import Sample
from ._recorder import Recorder
from ._snapshot import Snapshot
from ._transport import (
    Connected,
    PreparedRequest,
    close_quietly,
    connect,
    make_ssl_context,
    prepare,
)

#: How long in-flight requests may go on after a stop before they are abandoned.
DEFAULT_GRACE = 5.0
#: HTTP/2 streams per connection when --connections is not given.
STREAMS_PER_CONNECTION = 100

SnapshotSink = Callable[[Snapshot], None]


class Connection(Protocol):
    """What a worker needs of a connection (H1Connection or H2Connection)."""

    multiplexed: bool

    async def request(self, req: PreparedRequest, deadline: float) -> Result: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the engine decided at start-up, for reports."""

    protocol: str  # "HTTP/1.1" or "HTTP/2"
    connections: int
    concurrency: int
    model: str


def protocol_label(http2: bool) -> str:
    return "HTTP/2" if http2 else "HTTP/1.1"


class Engine:
    """One run of one configuration. Create, then `await run()` once."""

    def __init__(
        self,
        config: RunConfig,
        *,
        sinks: Sequence[SnapshotSink] = (),
        grace: float | None = None,
    ) -> None:
        self.config = config
        self._sinks = list(sinks)
        self._grace = DEFAULT_GRACE if grace is None else grace
        load = config.load
        self.concurrency = 1 if load.model == "sequential" else load.concurrency
        self._prepared = [prepare(i, spec, config.origin) for i, spec in enumerate(config.requests)]
        self._remaining: int | None = load.requests
        self._stop_sending = False
        self._stop_event = trio.Event()
        self._workers_scope: trio.CancelScope | None = None
        self._started_at = 0.0
        self.recorder: Recorder | None = None
        self.info: RunInfo | None = None
        self.final: Snapshot | None = None
        self._pick = self._make_picker()

    # -- control from outside -------------------------------------------------

    def stop(self, *, grace: float | None = None) -> None:
        """Stop sending now; in-flight requests get `grace` seconds to finish."""
        if not self._stop_sending:
            self._stop_sending = True
            self._stop_event.set()
        scope = self._workers_scope
        if scope is not None:
            g = self._grace if grace is None else grace
            scope.deadline = min(scope.deadline, trio.current_time() + g)

    @property
    def stopping(self) -> bool:
        return self._stop_sending

    # -- the run --------------------------------------------------------------

    async def run(self) -> Snapshot:
        """Run to the end (duration, request count or stop()) and return the final snapshot."""
        config = self.config
        load = config.load
        async with trio.open_nursery() as background:
            http2, ssl_context, probe = await self._negotiate()
            n_conn = self._connection_count(http2)
            self._started_at = start = trio.current_time()
            recorder = Recorder(
                config.requests, track_service_time=load.model == "open", start=start
            )
            self.recorder = recorder
            recorder.concurrency_limit = self.concurrency
            self.info = RunInfo(
                protocol=protocol_label(http2),
                connections=n_conn,
                concurrency=self.concurrency,
                model=load.model,
            )
            connections = await self._open_pool(
                http2, n_conn, ssl_context, probe, recorder, background
            )
            background.start_soon(self._ticker, recorder, start)
            duration = load.effective_duration
            with trio.CancelScope() as workers_scope:
                self._workers_scope = workers_scope
                if duration is not None:
                    background.start_soon(self._stop_at, start + duration)
                async with trio.open_nursery() as workers:
                    self._start_workers(workers, connections, recorder)
            self._stop_sending = True
            final = recorder.snapshot(trio.current_time(), final=True)
            self.final = final
            self._emit(final)
            with trio.CancelScope(shield=True):
                for conn in connections:
                    await conn.aclose()
            background.cancel_scope.cancel()
        return final

    async def _stop_at(self, when: float) -> None:
        await trio.sleep_until(when)
        self.stop()

    async def _ticker(self, recorder: Recorder, start: float) -> None:
        interval = self.config.interval
        tick = 1
        while True:
            await trio.sleep_until(start + tick * interval)
            tick += 1
            self._emit(recorder.snapshot(trio.current_time()))

    def _emit(self, snapshot: Snapshot) -> None:
        for sink in self._sinks:
            sink(snapshot)

    # -- connections ----------------------------------------------------------

    async def _negotiate(self) -> tuple[bool, ssl.SSLContext | None, Connected | None]:
        """Decide the protocol. On https without a forced protocol, ALPN decides:
        one connection is opened to ask, and kept as the first of the pool."""
        config = self.config
        origin = config.origin
        if not origin.tls:
            return config.protocol == "http2", None, None
        offer = {"http1": ("http/1.1",), "http2": ("h2",)}.get(config.protocol, ("h2", "http/1.1"))
        ctx = make_ssl_context(insecure=config.insecure, alpn=offer, ca_file=config.ca_file)
        if config.protocol != "auto":
            return config.protocol == "http2", ctx, None
        try:
            with trio.fail_after(config.timeout):
                probe = await connect(origin, ctx)
        except (Exception, trio.TooSlowError):
            # The target cannot be reached now: speak HTTP/1.1 and let every
            # request record its own failure.
            ctx = make_ssl_context(
                insecure=config.insecure, alpn=("http/1.1",), ca_file=config.ca_file
            )
            return False, ctx, None
        http2 = probe.alpn == "h2"
        ctx = make_ssl_context(
            insecure=config.insecure,
            alpn=("h2",) if http2 else ("http/1.1",),
            ca_file=config.ca_file,
        )
        return http2, ctx, probe

    def _connection_count(self, http2: bool) -> int:
        if self.config.load.model == "sequential":
            return 1
        if self.config.connections is not None:
            return self.config.connections
        if http2:
            return max(1, math.ceil(self.concurrency / STREAMS_PER_CONNECTION))
        return self.concurrency

    async def _open_pool(
        self,
        http2: bool,
        n: int,
        ssl_context: ssl.SSLContext | None,
        probe: Connected | None,
        recorder: Recorder,
        nursery: trio.Nursery,
    ) -> list[Connection]:
        origin = self.config.origin
        pool: list[Connection] = []
        for i in range(n):
            if http2:
                h2c = H2Connection(origin, ssl_context, recorder, nursery)
                if i == 0 and probe is not None:
                    await h2c.adopt(probe)
                pool.append(h2c)
            else:
                h1c = H1Connection(origin, ssl_context, recorder)
                if i == 0 and probe is not None:
                    h1c.adopt(probe)
                h1c.shared = self.concurrency > n
                pool.append(h1c)
        if probe is not None and n == 0:
            await close_quietly(probe.stream)
        return pool

    # -- workers --------------------------------------------------------------

    def _make_picker(self) -> Callable[[], PreparedRequest]:
        prepared = self._prepared
        if len(prepared) == 1:
            only = prepared[0]
            return lambda: only
        import bisect
        import itertools
        import random

        weights = [p.spec.weight for p in prepared]
        cumulative = list(itertools.accumulate(weights))
        total = cumulative[-1]
        rnd = random.random
        choose = bisect.bisect_right
        last = len(prepared) - 1
        return lambda: prepared[min(choose(cumulative, rnd() * total), last)]

    def _start_workers(
        self, nursery: trio.Nursery, connections: Sequence[Connection], recorder: Recorder
    ) -> None:
        n = len(connections)
        for i in range(self.concurrency):
            nursery.start_soon(self._closed_worker, connections[i % n], recorder)

    async def _closed_worker(self, conn: Connection, recorder: Recorder) -> None:
        """Closed model: send the next request when the last one has ended."""
        timeout = self.config.timeout
        pick = self._pick
        now = trio.current_time
        record = recorder.record
        started = recorder.request_started
        while not self._stop_sending:
            if self._remaining is not None:
                if self._remaining <= 0:
                    return
                self._remaining -= 1
            req = pick()
            t0 = now()
            started()
            status, error, sent, received = await conn.request(req, t0 + timeout)
            elapsed = now() - t0
            record(Sample(req.index, status, error, elapsed, elapsed, sent, received))
