"""The engine: runs a load model's workers in one trio nursery over Ballista's own connections.

It owns the run's lifetime (duration, request budget, graceful stop), binds
workers to connections, feeds every finished request to the recorder and
hands a snapshot to each sink once per interval.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import itertools
import math
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ballista.core.config import DEFAULT_GRACE, DEFAULT_MAX_IN_FLIGHT, RunConfig, check_bounds
from ballista.core.errors import ConfigError
from ballista.core.journey import DataExhausted
from ballista.core.outcome import ErrorKind, Sample
from ballista.core.recorder import Recorder
from ballista.core.runmeta import LAG_WARNING, RunMeta
from ballista.core.schedule import Arrivals, Ramp, constant
from ballista.core.segment import arrival_seed, closed_workers, fingerprint, zero_share
from ballista.core.snapshot import Snapshot
from ballista.engine.journeys import JourneyRunner, StepConnection, VirtualUser
from ballista.transport.connect import (
    TARGET_FAILURES,
    Connected,
    PreparedRequest,
    close_quietly,
    connect,
    make_ssl_context,
    prepare,
)
from ballista.transport.http1 import H1Connection, Result
from ballista.transport.http2 import H2Connection

#: HTTP/2 streams per connection when --connections is not given.
STREAMS_PER_CONNECTION = 100

#: How often the event loop's lag is measured (a sleep of this long, and how late it woke).
LAG_PROBE_PERIOD = 0.010
#: Open model: requests the scheduler may start or drop before it yields to the
#: rest of the run (workers, the ticker, a stop or a signal), however far behind it is.
SCHEDULER_BATCH = 64

#: --start-at: a run that began later than this after the instant says so in a note
LATE_START_NOTE = 0.05

SnapshotSink = Callable[[Snapshot], None]


class LimitController(Protocol):
    """Adaptive concurrency (sans-IO): fed every finished request, answers the limit."""

    @property
    def limit(self) -> int: ...

    def on_sample(self, now: float, sample: Sample) -> int: ...

    def settled_limit(self) -> int: ...

    def capacity_note(self, final: Snapshot) -> str: ...

    def on_retry_after(self, now: float, seconds: float) -> None: ...

    def pause_after(self, sample: Sample) -> float: ...

    def on_lag(self, now: float, lag: float) -> None: ...


class Connection(Protocol):
    """What a worker needs of a connection (H1Connection or H2Connection)."""

    multiplexed: bool
    #: seconds a 429/503 response asked the client to wait (Retry-After), until taken
    retry_after: float | None

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


class _Waiter:
    __slots__ = ("conn", "event", "gone")

    def __init__(self) -> None:
        self.conn: H1Connection | None = None
        self.event = trio.Event()
        #: gave up (deadline or cancellation): release() passes it by
        self.gone = False


class _IdlePool:
    """HTTP/1.1 connections for the open model: take an idle one, or queue for one.

    O(1) per request: a stack of idle connections (the most recently used, and
    so already open, first) and a FIFO of waiters. A released connection goes
    straight to the oldest waiter, which alone wakes: no herd, no overtaking.
    """

    def __init__(self, connections: Sequence[H1Connection]) -> None:
        self._idle = list(connections)
        self._waiters: deque[_Waiter] = deque()

    async def acquire(self, deadline: float) -> H1Connection | None:
        """An idle connection, or None when none came before `deadline`."""
        if self._idle:
            return self._idle.pop()
        waiter = _Waiter()
        self._waiters.append(waiter)
        try:
            with trio.move_on_at(deadline):
                await waiter.event.wait()
        except BaseException:
            waiter.gone = True
            if waiter.conn is not None:  # handed over as the run was cancelled
                self.release(waiter.conn)
            raise
        waiter.gone = True
        # A connection handed over just as the deadline passed is still taken.
        return waiter.conn

    def release(self, conn: H1Connection) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.gone:
                waiter.conn = conn
                waiter.event.set()
                return
        self._idle.append(conn)


#: Files a run needs besides its connections: standard streams, trio's own,
#: listeners for /metrics and the live stream, the daemon's database and clients.
FD_RESERVE = 64


def fit_fd_limit(connections: int) -> int:
    """Raise this process's soft limit on open files to what `connections` need, up
    to the hard limit (as Locust does at start-up); return how many connections fit."""
    try:
        import resource
    except ImportError:  # pragma: no cover (not POSIX)
        return connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = connections + FD_RESERVE
    infinite = resource.RLIM_INFINITY
    if soft != infinite and soft < need:
        raised = need if hard == infinite else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == infinite:
        return connections
    return max(0, min(connections, soft - FD_RESERVE))


def check_fd_limit(config: RunConfig) -> None:
    """Before a run: fail in one line when its connections cannot all be open at
    once under the open-file limit (`ulimit -n`). The open model is exempt: its
    pool opens connections only as the load needs them, and shrinks to fit."""
    load = config.load
    if load.model == "open":
        return
    http2 = config.protocol == "http2" or (config.protocol == "auto" and config.origin.tls)
    if load.model == "sequential":
        wanted = 1
    elif config.connections is not None:
        wanted = config.connections
    else:
        workers = load.adaptive.maximum if load.adaptive is not None else closed_workers(config)
        wanted = math.ceil(workers / STREAMS_PER_CONNECTION) if http2 else workers
    fits = fit_fd_limit(wanted)
    if fits < wanted:
        flags = "--connections" if config.connections is not None else "-c/--concurrency"
        raise ConfigError(
            f"{flags}: {wanted:,} connections need {wanted + FD_RESERVE:,} open files, but "
            f"this process may open {fits + FD_RESERVE:,} (ulimit -n): raise the limit "
            f"(ulimit -n {wanted + FD_RESERVE}) or open fewer connections"
        )


class Engine:
    """One run of one configuration. Create, then `await run()` once."""

    def __init__(
        self,
        config: RunConfig,
        *,
        sinks: Sequence[SnapshotSink] = (),
        grace: float | None = None,
        controller: LimitController | None = None,
        seed: int | None = None,
        connection_factory: Callable[[int], Connection] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        # Past the hard bounds no run can keep its promises (or its memory): whatever
        # front end built this config, refuse it here too.
        seg = config.segment
        check_bounds(
            config.load,
            config.connections,
            unbounded=True,
            segments=1 if seg is None else seg.count,
        )
        self.config = config
        #: test seam: builds connection i instead of the transport (no sockets)
        self._connection_factory = connection_factory
        #: reads the wall clock (Unix seconds) that --start-at is given in
        self._wall_clock = wall_clock
        #: --start-at: the instant (Unix seconds) the run is waiting for, while it waits
        self.waiting_until: float | None = None
        #: --start-at: how late the run began after that instant (it had passed)
        self.late_start = 0.0
        self._sinks = list(sinks)
        self._grace = DEFAULT_GRACE if grace is None else grace
        self._controller = controller
        load = config.load
        self.model = load.model
        if controller is not None:
            self.model = "adaptive"
        self._ramp: Ramp | None = None
        if load.stages:
            start = (load.rate or 0.0) if self.model == "open" else 0.0
            self._ramp = Ramp(load.stages, start=start)
        if self.model == "sequential":
            self.concurrency = 1
        elif self.model == "adaptive":
            self.concurrency = load.adaptive.maximum if load.adaptive else load.concurrency
        elif self.model == "open":
            self.concurrency = (
                DEFAULT_MAX_IN_FLIGHT if load.max_in_flight is None else load.max_in_flight
            )
        else:
            self.concurrency = closed_workers(config)
        #: how many workers may run now (closed models)
        self._limit = self._initial_limit()
        self._prepared = [prepare(i, spec, config.origin) for i, spec in enumerate(config.requests)]
        self._remaining: int | None = load.requests
        self._stop_sending = False
        self._workers_scope: trio.CancelScope | None = None
        self._workers_nursery: trio.Nursery | None = None
        self._running_workers: set[int] = set()
        self._rng = random.Random(seed)
        self.recorder: Recorder | None = None
        self.info: RunInfo | None = None
        self.final: Snapshot | None = None
        self._pick = self._make_picker()
        #: the pool of the run (closed models bind workers to it)
        self._connections: list[Connection] = []
        #: every connection of the run, whatever the model (closed after a failure;
        #: notes read them at the end)
        self._pool: list[Connection] = []
        #: set when a bug in Ballista ended the run (run() raised)
        self.failed = False
        #: ALPN probes that failed before the recorder existed: connection attempts too
        self._failed_probes = 0
        #: open model: set and replaced whenever a request ends (or the run stops)
        self._slot_freed = trio.Event()
        #: when -d ends, once the run has started
        self._end_at = math.inf
        #: the set-up step under way (asking the target its protocol): a stop cuts it short
        self._setup_scope: trio.CancelScope | None = None
        #: open model: requests dropped because the cap stayed full (the rest of
        #: `dropped` are those Ballista itself fell too far behind on)
        self._dropped_at_cap = 0
        #: the connections the open-file limit let the run have, when fewer than asked
        self._fd_clamped: tuple[int, int] | None = None
        #: called with the RunInfo once the protocol and connections are decided
        self.on_start: list[Callable[[RunInfo], None]] = []
        self._started_at: float | None = None
        self._sending_ended_at: float | None = None
        #: set by signal handling: a person asked the run to stop
        self.interrupted = False
        self._signalled = trio.Event()
        #: set by stop(): wakes workers pausing after a rejection, and an open-model
        #: scheduler waiting for the next due time
        self._stopped = trio.Event()
        #: journeys: what runs their iterations (made with the recorder), and the
        #: closed models' virtual users by worker index (kept while they retire)
        self.runner: JourneyRunner | None = None
        self._users: dict[int, VirtualUser] = {}
        #: journeys: where an exception from a journey's code is shown (stderr if None)
        self.journey_report: Callable[[str], None] | None = None

    def _initial_limit(self) -> int:
        if self._controller is not None:
            return self._controller.limit
        if self._ramp is not None and self.model != "open":
            return self._share(self._ramp.level(0.0))
        return self.concurrency

    def _share(self, level: int) -> int:
        """This process's part of a closed ramp's level: all of it, or its segment's."""
        seg = self.config.segment
        return level if seg is None else seg.share(level)

    # -- control from outside -------------------------------------------------

    def add_sink(self, sink: SnapshotSink) -> None:
        """Deliver every snapshot from now on to `sink` too (called synchronously)."""
        self._sinks.append(sink)

    def stop(self, *, grace: float | None = None) -> None:
        """Stop sending now; in-flight requests get `grace` seconds to finish."""
        if not self._stop_sending and self._started_at is not None:
            # A stop heard late (a busy loop) still ends sending at the end of -d.
            self._sending_ended_at = min(trio.current_time(), self._end_at)
        self._stop_sending = True
        # Wake an open-model scheduler waiting for a due time or a free slot: it
        # counts its backlog as dropped and returns.
        self._stopped.set()
        self._slot_freed.set()
        if self._setup_scope is not None:
            self._setup_scope.cancel()
        scope = self._workers_scope
        if scope is not None:
            g = self._grace if grace is None else grace
            scope.deadline = min(scope.deadline, trio.current_time() + g)

    @property
    def stopping(self) -> bool:
        return self._stop_sending

    @property
    def sending_duration(self) -> float | None:
        """Seconds from the start until sending stopped (the end of -d, or a stop());
        the whole run when it ended by itself (-n). Requests still in flight at the
        stop finish after it, but were sent within it: rates are per this window."""
        if self._started_at is None or self.final is None:
            return None
        if self._sending_ended_at is None:
            return self.final.elapsed
        return min(self._sending_ended_at - self._started_at, self.final.elapsed)

    def signal(self) -> None:
        """A person asked to stop (SIGINT/SIGTERM): first time graceful, then at once."""
        if self.interrupted:
            self.stop(grace=0)
        else:
            self.interrupted = True
            self.stop()
        self._signalled.set()

    async def wait_for_signal(self) -> None:
        await self._signalled.wait()

    def notes(self) -> list[str]:
        """Warnings about the run itself, for the summary (e.g. Ballista was the bottleneck)."""
        notes: list[str] = []
        final = self.final
        if final is None:
            return notes
        if self.model == "open" and final.max_scheduler_lag > LAG_WARNING:
            notes.append(
                f"Ballista started requests up to {final.max_scheduler_lag * 1e3:.0f} ms later "
                "than scheduled while slots were free: this machine, not the target, limited "
                "the rate (fewer workers elsewhere, more CPU, or a lower -r)"
            )
        refused = {c.alpn_refused for c in self._pool if isinstance(c, H2Connection)} - {None}
        if refused:
            said = ", ".join(
                sorted(repr(p) if p else "no protocol" for p in refused if p is not None)
            )
            notes.append(
                f"the server did not agree to HTTP/2 over ALPN (it selected {said}): "
                "HTTP/2 requests failed at once as protocol errors; drop --http2 to let ALPN choose"
            )
        floods = sum(c.floods for c in self._pool if isinstance(c, H2Connection))
        if floods:
            notes.append(
                f"the server flooded {floods:,} HTTP/2 connection{'s' if floods > 1 else ''} "
                "with PING, SETTINGS or empty DATA frames: Ballista dropped them (as servers "
                "drop such clients) and counted their requests as protocol errors"
            )
        if final.dropped and self.runner is not None:
            iterations = sum(f.iterations for f in final.flows)
            notes.append(
                f"{final.dropped:,} of {iterations + final.dropped:,} scheduled iterations were "
                f"dropped, never started: {self.concurrency:,} iterations were running "
                "(--max-in-flight) or Ballista fell behind until too late"
            )
        elif final.dropped:
            scheduled = final.requests + final.dropped
            at_cap = self._dropped_at_cap
            causes = []
            if at_cap:
                causes.append(
                    f"{at_cap:,} found {self.concurrency:,} requests in flight (--max-in-flight) "
                    "until too late: the target could not keep up with the rate"
                )
            if final.dropped > at_cap:
                causes.append(
                    f"{final.dropped - at_cap:,} fell due faster than Ballista could start "
                    "them: this machine could not keep up"
                )
            notes.append(
                f"{final.dropped:,} of {scheduled:,} scheduled requests were dropped, never "
                f"sent: {'; '.join(causes)}"
            )
        unfinished = final.errors_by_kind.get(ErrorKind.UNFINISHED.label, 0)
        if unfinished:
            notes.append(
                f"{unfinished:,} requests were still in flight when the run ended (grace "
                f"{self._grace:g}s): counted as errors of kind 'unfinished', their age then "
                "as latency"
            )
        if self._fd_clamped is not None:
            wanted, fits = self._fd_clamped
            notes.append(
                f"the open-file limit (ulimit -n) lets this process hold {fits:,} of the "
                f"{wanted:,} connections asked for: "
                + (
                    "requests beyond them waited for one (pool_timeout)"
                    if self.model == "open"
                    else "connecting beyond it fails (errors of kind 'other')"
                )
            )
        if self.runner is not None:
            notes.extend(self.runner.notes())
        if self._controller is not None:
            notes.append(self._controller.capacity_note(final))
        if self.late_start > LATE_START_NOTE:
            notes.append(
                f"started {self.late_start:.2f}s after --start-at (the instant had passed when "
                "the run was ready): this segment's figures are shifted by that much"
            )
        idle = zero_share(self.config)
        if idle is not None:
            notes.append(f"{idle}: it sent nothing")
        if self.interrupted:
            notes.append("stopped early by a signal; figures cover what was done")
        if self.failed:
            notes.append(
                "ended early by an internal error in Ballista; figures cover what was done"
            )
        return notes

    def run_meta(
        self,
        started_at: dt.datetime,
        *,
        target: str | None = None,
        thresholds: Sequence[Mapping[str, Any]] = (),
    ) -> RunMeta:
        """What reports need besides the statistics, once the run has started."""
        info = self.info
        assert info is not None, "run_meta() before the run started"
        controller = self._controller
        seg = self.config.segment
        return RunMeta(
            target=self.config.url if target is None else target,
            model=info.model,
            protocol=info.protocol,
            started_at=started_at,
            concurrency=info.concurrency,
            connections=info.connections,
            final_limit=controller.settled_limit() if controller is not None else None,
            thresholds=thresholds,
            notes=tuple(self.notes()),
            duration=self.sending_duration,
            segment=None if seg is None else (seg.index, seg.count),
            test=None if seg is None else fingerprint(self.config),
        )

    @property
    def limit(self) -> int:
        """The number of workers allowed to run now (closed and adaptive models)."""
        return self._limit

    # -- the run --------------------------------------------------------------

    async def run(self) -> Snapshot:
        """Run to the end (duration, request count or stop()) and return the final snapshot.

        A bug in Ballista (any exception the transport does not map to an error
        kind) ends the run and propagates; what was measured until then is kept
        as `final` and delivered to the sinks first, so nothing measured is lost.
        """
        try:
            return await self._run()
        except Exception:
            self.failed = True
            recorder = self.recorder
            if recorder is not None and self.final is None:
                if self._sending_ended_at is None and self._started_at is not None:
                    self._sending_ended_at = trio.current_time()
                self.final = recorder.snapshot(trio.current_time(), final=True)
                self._emit(self.final)
            with trio.CancelScope(shield=True):
                for conn in self._pool:
                    await conn.aclose()
            raise

    async def _run(self) -> Snapshot:
        config = self.config
        load = config.load
        async with trio.open_nursery() as background:
            negotiated: tuple[bool, ssl.SSLContext | None, Connected | None] = (False, None, None)
            with self._stoppable():
                negotiated = await self._negotiate()
            # Stopped before the target answered: nothing will be sent on these.
            http2, ssl_context, probe = negotiated
            if await self._wait_for_start() and probe is not None:
                # Kept idle that long, the server may have closed it: open afresh.
                await close_quietly(probe.stream)
                probe = None
            n_conn = self._connection_count(http2)
            if self._connection_factory is None:
                n_conn = self._fit_fd_limit(n_conn)
            start = trio.current_time()
            self._started_at = start
            journeys = config.journeys
            if journeys is None:
                recorder = Recorder(
                    config.requests, track_service_time=self.model == "open", start=start
                )
            else:
                # Steps are recorded from their actual send, in every model.
                recorder = Recorder((), start=start, dynamic=True)
                self.runner = JourneyRunner(
                    journeys,
                    origin=config.origin,
                    recorder=recorder,
                    timeout=config.timeout,
                    stopping=lambda: self._stop_sending,
                    stopped=self._stopped,
                    feed=self._feed if self._controller is not None else None,
                    pause=self._pause,
                    report=self.journey_report,
                    seed=self._rng.getrandbits(64),
                    segment=(
                        (config.segment.index, config.segment.count)
                        if config.segment is not None
                        else (0, 1)
                    ),
                    requests=config.requests,
                )
            self.recorder = recorder
            for _ in range(self._failed_probes):
                recorder.connection_attempted()
            if self.model == "open":
                recorder.target_rate = self._rate_at(0.0)
            else:
                recorder.concurrency_limit = self._limit
            if self.runner is not None:
                self.runner.http2 = http2
            self.info = RunInfo(
                protocol=protocol_label(http2),
                connections=n_conn,
                concurrency=self.concurrency,
                model=self.model,
            )
            for hook in self.on_start:
                hook(self.info)
            connections = await self._open_pool(
                http2, n_conn, ssl_context, probe, recorder, background
            )
            self._pool = connections
            background.start_soon(self._ticker, recorder, start)
            background.start_soon(self._lag_probe, recorder)
            duration = load.effective_duration
            with trio.CancelScope() as workers_scope:
                self._workers_scope = workers_scope
                if self._stop_sending:  # stopped before it began
                    workers_scope.deadline = trio.current_time() + self._grace
                if duration is not None:
                    self._end_at = start + duration
                    background.start_soon(self._stop_at, self._end_at)
                async with trio.open_nursery() as workers:
                    self._workers_nursery = workers
                    if self.model == "open":
                        workers.start_soon(self._scheduler, connections, recorder, start)
                    else:
                        self._connections = connections
                        self._spawn_up_to_limit()
                        if self._ramp is not None:
                            workers.start_soon(self._follow_ramp, start)
                        elif self._limit == 0 and duration is not None:
                            # A segment without workers still lasts -d, as its
                            # siblings do: its figures cover the same window.
                            workers.start_soon(self._stopped.wait)
            self._stop_sending = True
            final = recorder.snapshot(trio.current_time(), final=True)
            self.final = final
            self._emit(final)
            with trio.CancelScope(shield=True):
                for conn in connections:
                    await conn.aclose()
            background.cancel_scope.cancel()
        return final

    async def _wait_for_start(self) -> bool:
        """--start-at: sleep until that wall-clock instant (a stop cuts it short);
        whether the run waited at all. The run starts at once when it has passed."""
        at = self.config.start_at
        if at is None or self._stop_sending:
            return False
        delay = at - self._wall_clock()
        if delay <= 0:
            self.late_start = -delay
            return False
        self.waiting_until = at
        try:
            with self._stoppable():
                await trio.sleep(delay)
        finally:
            self.waiting_until = None
        return True

    @contextlib.contextmanager
    def _stoppable(self) -> Iterator[trio.CancelScope]:
        """A set-up step that a stop (a signal) cuts short."""
        with trio.CancelScope() as scope:
            if self._stop_sending:
                scope.cancel()
            self._setup_scope = scope
            try:
                yield scope
            finally:
                self._setup_scope = None

    async def _stop_at(self, when: float) -> None:
        await trio.sleep_until(when)
        self.stop()

    async def _ticker(self, recorder: Recorder, start: float) -> None:
        interval = self.config.interval
        tick = 1
        while True:
            await trio.sleep_until(start + tick * interval)
            if self.final is not None:
                # The final snapshot is the last word, even while connections close.
                return
            tick += 1
            now = trio.current_time()
            if self.model == "open":
                recorder.target_rate = self._rate_at(now - start)
            self._emit(recorder.snapshot(now))

    async def _lag_probe(self, recorder: Recorder) -> None:
        """Measure how late the event loop wakes a sleeper: Ballista's own delay, which
        every measured latency includes too. The controller tells it from the target's."""
        controller = self._controller
        now = trio.current_time
        while True:
            due = now() + LAG_PROBE_PERIOD
            await trio.sleep_until(due)
            woke = now()
            recorder.record_loop_lag(woke - due)
            if controller is not None:
                controller.on_lag(woke, woke - due)

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
        # --http2 offers http/1.1 too: a server without h2 then says so by selecting
        # it (some select it even when not offered, failing the handshake obscurely).
        offer = {"http1": ("http/1.1",)}.get(config.protocol, ("h2", "http/1.1"))
        ctx = make_ssl_context(insecure=config.insecure, alpn=offer, ca_file=config.ca_file)
        if config.protocol != "auto":
            return config.protocol == "http2", ctx, None
        try:
            with trio.fail_after(config.timeout):
                probe = await connect(origin, ctx)
        except TARGET_FAILURES:  # trio.TooSlowError included
            # The target cannot be reached now: speak HTTP/1.1 and let every
            # request record its own failure.
            self._failed_probes += 1
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
        if self.model == "sequential":
            return 1
        if self.config.connections is not None:
            return self.config.connections
        if http2:
            return max(1, math.ceil(self.concurrency / STREAMS_PER_CONNECTION))
        return self.concurrency

    def _fit_fd_limit(self, wanted: int) -> int:
        """Raise the open-file limit toward what the connections need; the open
        model's pool (connections open only as the load needs them) shrinks to
        what fits, other models are told in a note that connections will fail."""
        fits = fit_fd_limit(wanted)
        if fits >= wanted:
            return wanted
        self._fd_clamped = (wanted, fits)
        return max(1, fits) if self.model == "open" else wanted

    async def _open_pool(
        self,
        http2: bool,
        n: int,
        ssl_context: ssl.SSLContext | None,
        probe: Connected | None,
        recorder: Recorder,
        nursery: trio.Nursery,
    ) -> list[Connection]:
        """Create the connection objects; each connects on its first request."""
        if self._connection_factory is not None:
            return [self._connection_factory(i) for i in range(n)]
        origin = self.config.origin
        pool: list[Connection] = []
        for i in range(n):
            if i % 1024 == 1023:
                await trio.lowlevel.checkpoint()  # tens of thousands: keep signals heard
            if http2:
                h2c = H2Connection(origin, ssl_context, recorder, nursery)
                if i == 0 and probe is not None:
                    try:
                        # SETTINGS within --timeout, and no waiting past a stop (a signal)
                        with (
                            self._stoppable() as setup,
                            trio.fail_after(self.config.timeout),
                        ):
                            await h2c.adopt(probe)
                        if setup.cancelled_caught:
                            await close_quietly(probe.stream)
                    except TARGET_FAILURES:
                        # The probe died (or the server never sent SETTINGS) before
                        # HTTP/2 began: this connection opens afresh on its first request.
                        await close_quietly(probe.stream)
                pool.append(h2c)
            else:
                h1c = H1Connection(
                    origin, ssl_context, recorder, capture=self.config.journeys is not None
                )
                if i == 0 and probe is not None:
                    h1c.adopt(probe)
                h1c.shared = self.model != "open" and self.concurrency > n
                pool.append(h1c)
        if probe is not None and n == 0:
            await close_quietly(probe.stream)
        return pool

    def _connection_for(self, worker: int) -> Connection:
        """Workers are bound to connections. HTTP/1.1 spreads them round-robin; HTTP/2
        fills each connection before the next one opens, so that a growing limit
        (ramps, adaptive) adds connections only as streams need them."""
        pool = self._connections
        n = len(pool)
        if n and pool[0].multiplexed and self.concurrency > n:
            per = math.ceil(self.concurrency / n)
            return pool[min(worker // per, n - 1)]
        return pool[worker % n]

    # -- request choice -------------------------------------------------------

    def _make_picker(self) -> Callable[[], PreparedRequest]:
        prepared = self._prepared
        if len(prepared) == 1:
            only = prepared[0]
            return lambda: only
        cumulative = list(itertools.accumulate(p.spec.weight for p in prepared))
        total = cumulative[-1]
        rnd = self._rng.random
        choose = bisect.bisect_right
        last = len(prepared) - 1
        return lambda: prepared[min(choose(cumulative, rnd() * total), last)]

    def _take_budget(self) -> bool:
        """Claim one request of the -n budget; False when it is spent."""
        if self._remaining is None:
            return True
        if self._remaining <= 0:
            return False
        self._remaining -= 1
        return True

    # -- closed models: workers under a limit ----------------------------------

    def set_limit(self, limit: int) -> None:
        """Change how many workers may run. Extra workers retire after their current
        request; new ones start at once. Never cancels a request."""
        limit = max(0, min(limit, self.concurrency))
        if limit == self._limit:
            return
        self._limit = limit
        if self.recorder is not None:
            self.recorder.concurrency_limit = limit
        self._spawn_up_to_limit()

    def _spawn_up_to_limit(self) -> None:
        nursery = self._workers_nursery
        if nursery is None or self._stop_sending:
            return
        for i in range(self._limit):
            if i not in self._running_workers:
                self._running_workers.add(i)
                if self.runner is not None:
                    nursery.start_soon(self._user_worker, i)
                else:
                    nursery.start_soon(self._closed_worker, i)

    async def _follow_ramp(self, start: float) -> None:
        ramp = self._ramp
        assert ramp is not None
        # The test's level: a segment runs its share of it (`_share`), so that
        # the segments' workers add up to it at every step.
        current = ramp.level(0.0)
        while not self._stop_sending:
            t = trio.current_time() - start
            when = ramp.next_step(t, current)
            if when is None:
                if self._limit == 0 and self.config.segment is not None:
                    await self._stopped.wait()  # a segment left without workers lasts -d
                return
            await trio.sleep_until(start + max(when, t))
            level = ramp.level(trio.current_time() - start + 1e-9)
            if level == current and when <= t:
                # Guard against rounding at a boundary: move past it.
                await trio.sleep_until(start + t + 1e-6)
                continue
            current = level
            self.set_limit(self._share(level))

    async def _closed_worker(self, index: int) -> None:
        """Closed model: send the next request when the last one has ended."""
        conn = self._connection_for(index)
        recorder = self.recorder
        assert recorder is not None
        timeout = self.config.timeout
        pick = self._pick
        now = trio.current_time
        record = recorder.record
        started = recorder.request_started
        controller = self._controller

        def finish(req: PreparedRequest, t0: float, result: Result) -> float:
            """Record a finished request; the pause the controller asks for after it."""
            status, error, sent, received = result
            t1 = now()
            sample = Sample(req.index, status, error, t1 - t0, t1 - t0, sent, received)
            record(sample)
            if controller is None:
                return 0.0
            if conn.retry_after is not None:
                controller.on_retry_after(t1, conn.retry_after)
                conn.retry_after = None
            limit = controller.on_sample(t1, sample)
            if limit != self._limit:
                self.set_limit(limit)
            return controller.pause_after(sample)

        # An HTTP/1.1 connection of its own: one cancel scope whose deadline moves
        # from request to request costs trio less than a scope per request.
        own = conn if isinstance(conn, H1Connection) and not conn.shared else None
        #: the request in flight (recorded as unfinished if the run cancels it)
        flying: PreparedRequest | None = None
        t0 = 0.0
        try:
            while True:
                pause = 0.0
                with trio.CancelScope() as scope:
                    while not self._stop_sending and index < self._limit and self._take_budget():
                        t0 = now()
                        if t0 >= self._end_at:
                            # -d is over though its timer has not fired yet (a loop busy
                            # with many workers): no request starts after the end.
                            self.stop()
                            return
                        req = flying = pick()
                        started()
                        if own is not None:
                            scope.deadline = t0 + timeout
                            # `own.request(req, None)` without the coroutine around it.
                            result = await own.exchange_in_scope(
                                req.head, req.h1_bytes, req.h1_parts, req.h1_keep_alive
                            )
                        else:
                            result = await conn.request(req, t0 + timeout)
                        flying = None
                        pause = finish(req, t0, result)
                        if scope.cancel_called:
                            break  # the deadline passed as the response came: a fresh scope
                        if result[0] == 0 or pause > 0.0:
                            scope.deadline = math.inf  # what follows is not the request's
                            await self._after_request(result[0], pause)
                            pause = 0.0
                    else:
                        return
                if flying is not None and own is not None:
                    # Only this scope's deadline ends up here: the request timed out.
                    result = own.timed_out()
                    pause = finish(flying, t0, result)
                    flying = None
                    await self._after_request(result[0], pause)
                elif pause > 0.0:
                    await self._pause(pause)
        except trio.Cancelled:
            if flying is not None:
                _record_unfinished(recorder, flying.index, t0, t0)
            raise
        finally:
            self._running_workers.discard(index)

    async def _user_worker(self, index: int) -> None:
        """Closed models with journeys: a virtual user runs one iteration after another."""
        runner = self.runner
        assert runner is not None
        user = self._users.get(index)
        if user is None:
            conn: StepConnection = self._connection_for(index)  # type: ignore[assignment]
            user = self._users[index] = runner.user(index, conn)
        checkpoint = trio.lowlevel.checkpoint
        #: the run's clock, without trio.current_time's two calls around it
        now = trio.lowlevel.current_clock().current_time
        # A user on an HTTP/1.1 connection of its own bounds its steps with one cancel
        # scope whose deadline moves from step to step (as a closed worker does), not
        # a scope per step. Only a step's timeout cancels it: then a fresh one.
        own = user.conn if isinstance(user.conn, H1Connection) and not user.conn.shared else None
        try:
            while True:
                user.timed_out = None
                with trio.CancelScope() as scope:
                    user.scope = scope if own is not None else None
                    user.own = own
                    while not self._stop_sending and index < self._limit and self._take_budget():
                        t0 = now()
                        if t0 >= self._end_at:
                            self.stop()
                            return
                        sent = runner.sent
                        await runner.iteration(user, t0)
                        if runner.sent == sent:
                            # A journey that sent nothing may not have waited: yield, or
                            # it would starve the run (a stop would never be heard).
                            runner.off_deadline(user)
                            await checkpoint()
                    return
                # Only a step's own deadline ends up here: its iteration is counted.
        except DataExhausted:
            self.stop()
        finally:
            user.scope = user.own = None
            self._running_workers.discard(index)

    def _feed(self, conn: StepConnection, sample: Sample) -> float:
        """A journey step's sample for the adaptive controller; the pause it asks for."""
        controller = self._controller
        assert controller is not None
        now = trio.current_time()
        if conn.retry_after is not None:
            controller.on_retry_after(now, conn.retry_after)
            conn.retry_after = None
        limit = controller.on_sample(now, sample)
        if limit != self._limit:
            self.set_limit(limit)
        return controller.pause_after(sample)

    async def _after_request(self, status: int, pause: float) -> None:
        if status == 0:
            # Some failures (no file descriptor left, say) return without ever
            # blocking: yield, or a stop is never heard.
            await trio.lowlevel.checkpoint()
        if pause > 0.0:
            await self._pause(pause)

    async def _pause(self, seconds: float) -> None:
        # A fast rejection: the slot stays taken, as a served request's would.
        with trio.move_on_after(seconds):
            await self._stopped.wait()

    # -- open model: requests on a schedule ------------------------------------

    def _rate_at(self, t: float) -> float:
        """The rate this process is to send at: a segment's share of the test's."""
        rate = self._ramp.value(t) if self._ramp is not None else self.config.load.rate or 0.0
        seg = self.config.segment
        return rate if seg is None else rate / seg.count

    async def _scheduler(
        self, connections: Sequence[Connection], recorder: Recorder, start: float
    ) -> None:
        """Start each request at its scheduled time, whatever earlier ones are doing.

        The backlog is never a list: the schedule is generated one time at a
        time. A request that cannot start within the timeout of its scheduled
        time (the cap on requests in flight is full, or Ballista itself is that
        far behind) is dropped, together with every other one as late, in one
        step: work per turn is bounded whatever the rate, and the scheduler
        yields at least every SCHEDULER_BATCH requests, so a stop is heard.
        Every request scheduled before the end is either started or dropped.
        """
        load = self.config.load
        ramp = self._ramp or constant(load.rate or 0.0)
        seg = self.config.segment
        arrivals = Arrivals(
            ramp,
            poisson=load.arrival == "poisson",
            # Every segment of a test draws the same Poisson schedule and takes its
            # own arrivals of it.
            seed=self._rng.getrandbits(64) if seg is None else arrival_seed(self.config),
            stride=1 if seg is None else seg.count,
            phase=0 if seg is None else seg.index,
        )
        cap = self.concurrency
        timeout = self.config.timeout
        nursery = self._workers_nursery
        assert nursery is not None
        multiplexed = bool(connections) and connections[0].multiplexed
        idle = (
            None
            if multiplexed
            else _IdlePool([c for c in connections if isinstance(c, H1Connection)])
        )
        rr = itertools.cycle(connections) if multiplexed else None
        runner = self.runner
        #: what the cap counts: requests in flight, or (journeys) iterations running
        gauge: Recorder | JourneyRunner = recorder if runner is None else runner
        if runner is not None:
            if idle is not None:
                runner.acquire = idle.acquire
                runner.release = idle.release  # type: ignore[assignment]
            else:
                assert rr is not None
                cycle = rr

                async def next_connection(deadline: float) -> StepConnection:
                    return next(cycle)  # type: ignore[return-value]

                runner.acquire = next_connection
        end = load.effective_duration
        horizon = math.inf if end is None else end
        checkpoint = trio.lowlevel.checkpoint
        batch = 0
        #: when the scheduler last got a slot after waiting for one: requests that
        #: fell due while it waited are late by the target's doing, not Ballista's
        slot_at = -math.inf
        while not self._stop_sending:
            batch += 1
            if batch >= SCHEDULER_BATCH:
                batch = 0
                await checkpoint()
                if self._stop_sending:
                    break
            offset = arrivals.next()
            if offset is None or offset >= horizon:
                if end is not None:
                    # The schedule is over, the run is not: it lasts what was asked.
                    await self._stopped.wait()
                return
            if not self._take_budget():
                return
            due = start + offset
            now = trio.current_time()
            if due > now:
                batch = 0
                with trio.move_on_at(due):
                    await self._stopped.wait()
                if self._stop_sending:
                    self._drop_backlog(arrivals, start, end, recorder, pending=offset)
                    return
                now = trio.current_time()
            elif now >= due + timeout:  # the same sum as the deadlines below: no float gap
                self._drop_late(arrivals, start, now - timeout, recorder)
                continue
            if gauge.in_flight >= cap:
                batch = 0
                while gauge.in_flight >= cap and now < due + timeout:
                    with trio.move_on_at(due + timeout):
                        await self._slot_freed.wait()
                    now = trio.current_time()
                    if self._stop_sending:
                        self._drop_backlog(
                            arrivals, start, end, recorder, pending=offset, at_cap=True
                        )
                        return
                if gauge.in_flight >= cap:
                    # Out of time, and so is every request that falls due before a
                    # slot frees: wait for one, then drop them all in one step
                    # rather than waking for each of their deadlines.
                    recorder.record_dropped()
                    self._dropped_at_cap += 1
                    while gauge.in_flight >= cap:
                        await self._slot_freed.wait()
                        if self._stop_sending:
                            self._drop_backlog(
                                arrivals, start, end, recorder, pending=None, at_cap=True
                            )
                            return
                    slot_at = trio.current_time()
                    late = self._skip(arrivals, slot_at - timeout - start)
                    if late:
                        recorder.record_dropped(late)
                        self._dropped_at_cap += late
                    continue
                slot_at = now
            # Late with a free slot: Ballista itself could not keep up.
            recorder.record_lag(max(0.0, now - max(due, slot_at)))
            if runner is not None:
                runner.in_flight += 1
                nursery.start_soon(self._open_iteration, runner, due)
                continue
            recorder.request_started()
            conn = next(rr) if rr is not None else None
            nursery.start_soon(self._open_request, due, conn, idle, recorder)
        self._drop_backlog(arrivals, start, end, recorder, pending=None)

    def _skip(self, arrivals: Arrivals, before: float) -> int:
        """Pass over the requests due before `before` (seconds from the start) that
        the -n budget allows, counting them against it."""
        n = arrivals.skip_before(before, self._remaining)
        if self._remaining is not None:
            self._remaining -= n
        return n

    def _drop_late(
        self, arrivals: Arrivals, start: float, oldest: float, recorder: Recorder
    ) -> None:
        """The request in hand is too late to start: so is every other one scheduled
        before `oldest` (a clock time). All of them are dropped at once."""
        recorder.record_dropped(1 + self._skip(arrivals, oldest - start))

    def _drop_backlog(
        self,
        arrivals: Arrivals,
        start: float,
        end: float | None,
        recorder: Recorder,
        *,
        pending: float | None,
        at_cap: bool = False,
    ) -> None:
        """At a stop, requests that were already due but never started (the one in
        hand, due at `pending`, and any a lagging scheduler had not reached) count
        as dropped, so that requests + dropped = what was scheduled until the stop.
        `at_cap`: the scheduler was waiting for a slot, not behind by itself."""
        stopped_at = self._sending_ended_at
        horizon = (trio.current_time() if stopped_at is None else stopped_at) - start
        if end is not None:
            horizon = min(horizon, end)
        dropped = 0
        if pending is not None and pending < horizon:
            dropped = 1 + self._skip(arrivals, horizon)
        elif pending is None:
            dropped = self._skip(arrivals, horizon)
        if dropped:
            recorder.record_dropped(dropped)
            if at_cap:
                self._dropped_at_cap += dropped

    async def _open_iteration(self, runner: JourneyRunner, due: float) -> None:
        """Open model with journeys: one arrival, one iteration, on an idle virtual user."""
        user = runner.take_user()
        try:
            await runner.iteration(user, began=due)
        except DataExhausted:
            self.stop()
        finally:
            runner.in_flight -= 1
            runner.give_back(user)
            self._slot_freed.set()
            self._slot_freed = trio.Event()

    async def _open_request(
        self,
        due: float,
        conn: Connection | None,
        idle: _IdlePool | None,
        recorder: Recorder,
    ) -> None:
        req = self._pick()
        deadline = due + self.config.timeout
        h1: H1Connection | None = None
        sent_at: float | None = None
        try:
            if conn is None:
                assert idle is not None
                h1 = await idle.acquire(deadline)
                if h1 is None:
                    now = trio.current_time()
                    recorder.record(
                        Sample(req.index, 0, ErrorKind.POOL_TIMEOUT, now - due, 0.0, 0, 0)
                    )
                    return
                conn = h1
            sent_at = trio.current_time()
            status, error, sent, received = await conn.request(req, deadline)
            now = trio.current_time()
            recorder.record(
                Sample(req.index, status, error, now - due, now - sent_at, sent, received)
            )
        except trio.Cancelled:
            _record_unfinished(recorder, req.index, due, sent_at)
            raise
        finally:
            if h1 is not None and idle is not None:
                idle.release(h1)
            self._slot_freed.set()
            self._slot_freed = trio.Event()


def _record_unfinished(recorder: Recorder, index: int, began: float, sent_at: float | None) -> None:
    """A request still going when the run ended (its grace over): counted, not lost.
    Its age at the end is a lower bound of its latency."""
    now = trio.current_time()
    service = 0.0 if sent_at is None else now - sent_at
    recorder.record(Sample(index, 0, ErrorKind.UNFINISHED, now - began, service, 0, 0))
