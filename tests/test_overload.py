"""Overload and absurd sizes: the open model keeps its accounts, its time and its memory.

Scheduler accounting runs on trio's MockClock over fake connections, so every
count is exact: whatever the rate, requests + dropped = scheduled. Requests
still in flight at the end are counted on real sockets; a signal during an
overload is sent to a real `ballista run`.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import signal
import subprocess
import sys
import tracemalloc

import pytest
import trio
import trio.testing
from helpers import ORIGIN, FakeConnection
from servers import HOST, FaultServer, RunningTarget, TargetFactory

from ballista.core.config import (
    DEFAULT_MAX_IN_FLIGHT,
    LoadSpec,
    RequestSpec,
    RunConfig,
    parse_url,
)
from ballista.core.outcome import ErrorKind
from ballista.core.recorder import Recorder
from ballista.core.snapshot import Snapshot
from ballista.engine.engine import Engine, _IdlePool
from ballista.observe.summary import summary_dict
from ballista.transport.http1 import H1Connection

BALLISTA = [sys.executable, "-m", "ballista"]
UNFINISHED = ErrorKind.UNFINISHED.label
FOR_A_MINUTE = ("-d", "60s", "--json", "-", "-q")


def fake_config(load: LoadSpec, *, timeout: float = 30.0, connections: int | None = 4) -> RunConfig:
    return RunConfig(
        origin=ORIGIN,
        requests=(RequestSpec("default", "GET", "/"),),
        load=load,
        timeout=timeout,
        connections=connections,
    )


async def run_fake(
    load: LoadSpec, service: float, *, request_timeout: float = 30.0, seed: int | None = None
) -> tuple[Engine, Snapshot, float]:
    """Run on fake connections answering after `service` s: (engine, final, virtual run time)."""
    starts: list[float] = []
    engine = Engine(
        fake_config(load, timeout=request_timeout),
        grace=1.0,
        seed=seed,
        connection_factory=lambda i: FakeConnection(starts, service),
    )
    t0 = trio.current_time()
    final = await engine.run()
    assert final.requests == len(starts)
    return engine, final, trio.current_time() - t0


# -- scheduler accounting on virtual time -------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "duration", "cap", "service", "scheduled"),
    [
        # -r 1e9 --max-in-flight 10 -d 1s: was 18 s of counting drops one by one.
        (1e9, 1.0, 10, 0.01, 1_000_000_000),
        # 20,000/s against a 200 ms target needs 4,000 in flight: the default cap is 1,000.
        (20_000.0, 1.0, None, 0.2, 20_000),
        # far beyond any machine (the hard bound), with no cap given
        (1e9, 0.5, None, 0.25, 500_000_000),
    ],
)
async def test_overload_accounts_for_every_scheduled_request(
    mock_clock: trio.testing.MockClock,
    rate: float,
    duration: float,
    cap: int | None,
    service: float,
    scheduled: int,
) -> None:
    mock_clock.autojump_threshold = 0
    load = LoadSpec(model="open", rate=rate, duration=duration, max_in_flight=cap)
    engine, final, took = await run_fake(load, service)
    limit = DEFAULT_MAX_IN_FLIGHT if cap is None else cap
    assert final.requests + final.dropped == scheduled
    assert final.max_in_flight == limit  # memory: at most `limit` requests at once
    # Slots turn over every `service` seconds; the last round may end at the stop.
    rounds = duration / service
    assert limit * rounds <= final.requests <= limit * (rounds + 1)
    assert final.errors == 0  # everything started finished within the grace
    assert engine.sending_duration == pytest.approx(duration)
    assert duration <= took <= duration + service + 1e-9  # on time: no drawn-out tail
    assert any("the target could not keep up" in note for note in engine.notes())


async def test_requests_that_cannot_start_in_time_are_dropped_as_the_run_goes(
    mock_clock: trio.testing.MockClock,
) -> None:
    # 10^6/s, 10 in flight answered in 50 ms, timeout 100 ms: drops happen during
    # the run (not only at the stop), in bulk, and still add up exactly.
    mock_clock.autojump_threshold = 0
    load = LoadSpec(model="open", rate=1e6, duration=2.0, max_in_flight=10)
    _, final, took = await run_fake(load, 0.05, request_timeout=0.1)
    assert final.requests + final.dropped == 2_000_000
    assert 400 <= final.requests <= 410
    assert final.latency.max <= 0.1 + 0.05 + 1e-9  # none waited for a slot past its timeout
    assert 2.0 <= took <= 2.05 + 1e-9


async def test_poisson_overload_adds_up(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    load = LoadSpec(model="open", rate=1e6, duration=2.0, max_in_flight=10, arrival="poisson")
    _, final, _ = await run_fake(load, 0.05, request_timeout=0.1, seed=7)
    scheduled = final.requests + final.dropped
    # A Poisson count of mean 2e6: standard deviation ~1,414.
    assert abs(scheduled - 2_000_000) <= 5 * math.sqrt(2_000_000)


async def test_request_budget_bounds_bulk_drops(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    load = LoadSpec(model="open", rate=1e9, requests=5000, max_in_flight=10)
    _, final, _ = await run_fake(load, 0.01, request_timeout=0.1)
    assert final.requests + final.dropped == 5000


@pytest.mark.parametrize(
    ("rate", "duration", "requests"),
    [(1.0, 3.0, 3), (0.2, 15.0, 3), (10.0, 2.0, 20)],
)
async def test_the_open_model_lasts_the_duration(
    mock_clock: trio.testing.MockClock, rate: float, duration: float, requests: int
) -> None:
    # -r 1 -d 3s sends at 0, 1 and 2 s, and lasts 3 s: rps 1.0, not 3 / 2.003.
    mock_clock.autojump_threshold = 0
    load = LoadSpec(model="open", rate=rate, duration=duration)
    engine, final, took = await run_fake(load, 0.01)
    assert final.requests == requests
    assert final.dropped == 0
    assert engine.sending_duration == duration
    assert took == pytest.approx(duration)
    meta = engine.run_meta(dt.datetime.now(dt.UTC))
    assert meta.rps_of(final) == pytest.approx(rate)


async def test_a_stop_is_heard_at_once_under_overload(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    load = LoadSpec(model="open", rate=1e9, duration=3600.0, max_in_flight=10)
    engine = Engine(
        fake_config(load), grace=1.0, connection_factory=lambda i: FakeConnection([], 0.01)
    )
    async with trio.open_nursery() as nursery:

        async def stop_later() -> None:
            await trio.sleep(0.5)
            engine.stop()

        nursery.start_soon(stop_later)
        t0 = trio.current_time()
        final = await engine.run()
    assert 0.5 <= trio.current_time() - t0 <= 0.51 + 1e-6
    assert final.requests + final.dropped == 500_000_000


async def test_a_stop_wakes_a_scheduler_waiting_for_its_next_request(
    mock_clock: trio.testing.MockClock,
) -> None:
    # 1 request every 100 s: a stop at 1 s ends the run then, not at the next schedule.
    mock_clock.autojump_threshold = 0
    load = LoadSpec(model="open", rate=0.01, duration=1000.0)
    engine = Engine(
        fake_config(load), grace=1.0, connection_factory=lambda i: FakeConnection([], 0.01)
    )
    async with trio.open_nursery() as nursery:

        async def stop_later() -> None:
            await trio.sleep(1.0)
            engine.stop()

        nursery.start_soon(stop_later)
        t0 = trio.current_time()
        final = await engine.run()
    assert trio.current_time() - t0 == pytest.approx(1.0)
    assert (final.requests, final.dropped) == (1, 0)


class FailingConnection:
    """Fails every request at once without blocking, as a connect does with no
    file descriptor left (EMFILE)."""

    multiplexed = False
    retry_after: float | None = None

    async def request(self, req: object, deadline: float) -> tuple[int, int, int, int]:
        return 0, ErrorKind.OTHER, 0, 0

    async def aclose(self) -> None:
        pass


async def test_workers_failing_without_blocking_still_stop_on_time() -> None:
    load = LoadSpec(model="closed", concurrency=50, duration=0.3)
    engine = Engine(fake_config(load), connection_factory=lambda i: FailingConnection())
    t0 = trio.current_time()
    with trio.fail_after(5):
        final = await engine.run()
    assert trio.current_time() - t0 < 1.5
    assert final.errors == final.requests > 0


# -- the idle pool: a FIFO of waiters ------------------------------------------------------


def _connections(n: int) -> list[H1Connection]:
    # The pool never opens them: a recorder takes the events they would report.
    events = Recorder((RequestSpec("default", "GET", "/"),), start=0.0)
    return [H1Connection(ORIGIN, None, events) for _ in range(n)]


async def test_idle_pool_serves_waiters_in_arrival_order(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    (conn,) = _connections(1)
    pool = _IdlePool([conn])
    got: list[tuple[int, float]] = []

    async def user(i: int, hold: float, patience: float) -> None:
        await trio.sleep(i * 0.001)  # arrive in order
        c = await pool.acquire(trio.current_time() + patience)
        if c is None:
            got.append((i, -1.0))
            return
        got.append((i, trio.current_time()))
        await trio.sleep(hold)
        pool.release(c)

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(5):
            # waiter 2 gives up at 1.5 s, before its turn comes at 2 s: it is passed by
            nursery.start_soon(user, i, 1.0, 1.5 if i == 2 else 100.0)
    assert [i for i, _ in got] == [0, 1, 2, 3, 4]
    assert [round(t - t0, 6) if t >= 0 else t for _, t in got] == [0.0, 1.0, -1.0, 2.0, 3.0]


async def test_idle_pool_keeps_a_connection_handed_to_a_cancelled_waiter() -> None:
    (conn,) = _connections(1)
    pool = _IdlePool([conn])
    assert await pool.acquire(math.inf) is conn
    with trio.CancelScope() as scope:

        async def cancel_then_hand_over() -> None:
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()  # the waiter below is cancelled...
            pool.release(conn)  # ...and handed the connection before it runs

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_then_hand_over)
            await pool.acquire(math.inf)
    assert scope.cancelled_caught
    with trio.fail_after(1):
        assert await pool.acquire(math.inf) is conn  # back in the pool, not lost


# -- requests in flight when the grace ends (real sockets) ----------------------------------


@pytest.mark.parametrize("model", ["open", "closed"])
async def test_requests_in_flight_at_the_end_are_counted(
    target_factory: TargetFactory, model: str
) -> None:
    # The target answers after 10 s; the run sends for 0.5 s, then waits 0.3 s.
    slow = await target_factory(fixed_delay=10.0)
    origin, path = parse_url(slow.url)
    if model == "open":
        load = LoadSpec(model="open", rate=10.0, duration=0.5)
    else:
        load = LoadSpec(model="closed", concurrency=5, duration=0.5)
    config = RunConfig(origin=origin, requests=(RequestSpec("default", "GET", path),), load=load)
    engine = Engine(config, grace=0.3)
    t0 = trio.current_time()
    final = await engine.run()
    assert trio.current_time() - t0 < 0.5 + 0.3 + 1.0
    assert final.requests == final.errors == 5
    assert final.errors_by_kind[UNFINISHED] == 5
    assert final.responses == final.dropped == final.in_flight == 0
    assert final.max_in_flight == 5
    # Their age at the end is their latency, a lower bound: from 0.3 s up to 0.8 s.
    assert final.latency.min >= 0.3
    assert final.latency.max <= 0.8 + 0.5
    meta = engine.run_meta(dt.datetime.now(dt.UTC))
    doc = summary_dict(final, meta)
    assert doc["unfinished"] == 5 and doc["requests"] == 5
    assert any("still in flight when the run ended" in note for note in doc["notes"])


# -- a signal during an overload (subprocess) ----------------------------------------------


async def test_sigint_during_an_absurd_rate_ends_at_once_with_a_summary(
    target: RunningTarget,
) -> None:
    proc = await trio.lowlevel.open_process(
        [
            *BALLISTA,
            "run",
            target.url,
            "-r",
            "1e9",
            "--no-limits",
            "--max-in-flight",
            "20",
            *FOR_A_MINUTE,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        with trio.fail_after(20):
            while target.stats.requests < 50:
                await trio.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        signalled = trio.current_time()
        out = b""
        with trio.fail_after(10):
            while chunk := await proc.stdout.receive_some():
                out += chunk
            code = await proc.wait()
        took = trio.current_time() - signalled
    finally:
        if proc.returncode is None:
            proc.kill()
    assert code == 0
    assert took < 2.0, took
    doc = json.loads(out)
    assert doc["requests"] == target.stats.requests  # everything sent was counted
    assert doc["dropped"] > 1e6  # a billion a second, scheduled and not sent
    assert any("signal" in note for note in doc["notes"])


# -- request bodies are not copied per request -----------------------------------------------


async def test_a_large_body_is_not_copied_per_request(nursery: trio.Nursery) -> None:
    size = 8_000_000
    received: list[int] = []

    async def sink(stream: trio.SocketStream) -> None:
        # Reads one request with its Content-Length body, answers, and again.
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, rest = buffer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            got = len(rest)
            while got < length:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                got += len(chunk)
            received.append(got)
            buffer = b""
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    listeners = await nursery.start(functools.partial(trio.serve_tcp, sink, 0, host=HOST))
    port = listeners[0].socket.getsockname()[1]
    body = b"x" * size
    config = RunConfig(
        origin=parse_url(f"http://{HOST}:{port}/")[0],
        requests=(RequestSpec("default", "POST", "/", body=body),),
        load=LoadSpec(model="closed", concurrency=4, requests=8),
    )
    tracemalloc.start()
    try:
        final = await Engine(config).run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert final.status_codes == {200: 8}
    assert received == [size] * 8
    # Four requests at once: one copy each would be 32 MB.
    assert peak < size / 2, peak


async def test_a_stop_while_asking_the_target_its_protocol_ends_the_run(
    silent_server: FaultServer,
) -> None:
    # https with the protocol left to ALPN: the engine asks first, and this server
    # never completes the handshake. A signal then must not wait out --timeout (30 s).
    origin, path = parse_url(f"https://{HOST}:{silent_server.port}/")
    config = RunConfig(
        origin=origin,
        requests=(RequestSpec("default", "GET", path),),
        load=LoadSpec(model="closed", concurrency=2, duration=60.0),
    )
    engine = Engine(config)
    async with trio.open_nursery() as nursery:

        async def stop_soon() -> None:
            await trio.sleep(0.3)
            engine.signal()

        nursery.start_soon(stop_soon)
        t0 = trio.current_time()
        with trio.fail_after(5):
            final = await engine.run()
    assert trio.current_time() - t0 < 1.0
    assert final.requests == 0
    assert engine.interrupted


async def test_no_request_starts_after_the_duration_however_busy_the_loop() -> None:
    # 5,000 workers whose requests take 10 ms keep trio's run loop busy: the
    # timer that ends -d fires a batch late, yet nothing may start after the end.
    starts: list[float] = []
    load = LoadSpec(model="closed", concurrency=5000, duration=0.3)
    engine = Engine(
        fake_config(load, connections=100),
        grace=1.0,
        connection_factory=lambda i: FakeConnection(starts, 0.01),
    )
    began: list[float] = []
    engine.on_start.append(lambda info: began.append(trio.current_time()))
    final = await engine.run()
    assert final.requests == len(starts) > 0
    assert max(starts) - began[0] < 0.3
    assert engine.sending_duration == pytest.approx(0.3, abs=1e-6)
