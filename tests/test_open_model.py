"""The open model: requests on a schedule, latency from the schedule (no coordinated omission)."""

from __future__ import annotations

import trio
import trio.testing
from helpers import ORIGIN, FakeConnection
from servers import HOST, RunningTarget

from ballista.core.config import LoadSpec, RequestSpec, RunConfig, parse_url
from ballista.engine.engine import Engine

MAX_HEAD = 64 * 1024
#: Upper slack for the stall test: time to work through 200 responses released at once.
BURST = 0.4
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"


class StallServer:
    """HTTP/1.1 keep-alive server that answers at once, except that every
    response due in [stall_from, stall_until) waits until stall_until."""

    def __init__(self) -> None:
        self.port = 0
        self.stall_from = float("inf")
        self.stall_until = float("inf")
        self.received: list[float] = []

    async def serve(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host=HOST, backlog=1024)
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = await stream.receive_some(MAX_HEAD)
                    if not chunk:
                        return
                    buffer += chunk
                _, _, buffer = buffer.partition(b"\r\n\r\n")  # GETs: no body
                now = trio.current_time()
                self.received.append(now)
                if self.stall_from <= now < self.stall_until:
                    await trio.sleep_until(self.stall_until)
                await stream.send_all(RESPONSE)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)


def open_config(url: str, *, rate: float, duration: float, **load: object) -> RunConfig:
    origin, target = parse_url(url)
    return RunConfig(
        origin=origin,
        requests=(RequestSpec("default", "GET", target),),
        load=LoadSpec(model="open", rate=rate, duration=duration, **load),  # type: ignore[arg-type]
        timeout=10.0,
    )


async def test_a_stall_is_reported_as_users_feel_it(nursery: trio.Nursery) -> None:
    """100 req/s for 10 s; every response is held from t=4 s to t=6 s.

    The 200 requests scheduled during the stall go out on schedule, and each
    one's latency is the time from its schedule to the end of the stall: 20% of
    requests spread evenly over 0-2 s, so p90 is about 1.0 s and p99 about 1.9 s.
    A closed-loop tool would report a few milliseconds.
    """
    server = StallServer()
    await nursery.start(server.serve)
    config = open_config(f"http://{HOST}:{server.port}/", rate=100.0, duration=10.0)
    engine = Engine(config)
    start = trio.current_time()
    server.stall_from, server.stall_until = start + 4.0, start + 6.0
    final = await engine.run()

    lat = final.latency
    seen = (final.max_scheduler_lag, lat, final.service_time)
    sent_in_stall = sum(1 for t in server.received if start + 4.0 <= t < start + 6.0)
    assert 190 <= sent_in_stall <= 205, seen
    assert 990 <= final.requests <= 1001
    assert final.errors == 0
    assert final.dropped == 0
    assert final.max_in_flight >= 190
    # From below, the bounds are the stall itself, less the histogram's error and
    # the few ms between `start` and the engine's first schedule. From above they
    # allow BURST: the 200 held responses all come back at t=6 s, and this one
    # process (the server's side too) works through them while it goes on sending.
    assert 0.9 <= lat.p90 <= 1.0 + BURST, seen
    assert 1.8 <= lat.p99 <= 1.9 + BURST, seen
    assert lat.max <= 2.0 + BURST, seen
    # Service time is measured from the actual send: it sees the same stall,
    # because requests were sent on schedule, not held back behind slow ones.
    assert final.service_time is not None
    assert 1.8 <= final.service_time.p99 <= 1.9 + BURST, seen


async def test_achieved_rate_is_within_one_percent(target: RunningTarget) -> None:
    rate, duration = 300.0, 3.0
    config = open_config(target.url, rate=rate, duration=duration)
    engine = Engine(config)
    final = await engine.run()
    expected = rate * duration
    assert abs(target.stats.requests - expected) <= 0.01 * expected
    assert abs(final.requests - expected) <= 0.01 * expected
    # Sending lasted the duration (the in-flight tail after it is not part of the
    # rate), and the achieved rate over it is R.
    window = engine.sending_duration
    assert window is not None and abs(window - duration) < 0.05
    assert abs(final.requests / window - rate) <= 0.01 * rate
    assert final.failed == 0


async def test_poisson_rate_against_a_real_target(target: RunningTarget) -> None:
    rate, duration = 200.0, 3.0
    config = open_config(target.url, rate=rate, duration=duration, arrival="poisson")
    final = await Engine(config, seed=5).run()
    expected = rate * duration
    # Poisson count: standard deviation sqrt(600) ~ 24.5; allow 4 of them.
    assert abs(final.requests - expected) <= 4 * expected**0.5
    assert final.failed == 0


async def test_max_in_flight_drops_what_cannot_start_in_time(
    mock_clock: trio.testing.MockClock,
) -> None:
    # 100 req/s for 5 s, each request takes 3 s, at most 50 outstanding, timeout 1 s.
    # 0.0-0.49 s: 50 requests start on time. Slots free at 3.0-3.49 s: too late for
    # those scheduled before 2.0 s (they waited out their 1 s: dropped); those of
    # 2.0-2.49 s start then, after waiting 1 s. Everything later finds the cap full
    # until the run ends at 5 s: dropped too, including those still waiting then.
    mock_clock.autojump_threshold = 0
    starts: list[float] = []
    config = RunConfig(
        origin=ORIGIN,
        requests=(RequestSpec("default", "GET", "/"),),
        load=LoadSpec(model="open", rate=100.0, duration=5.0, max_in_flight=50),
        timeout=1.0,
        connections=2,
    )
    engine = Engine(config, grace=5.0, connection_factory=lambda i: FakeConnection(starts, 3.0))
    t0 = trio.current_time()
    final = await engine.run()
    rel = sorted(t - t0 for t in starts)
    assert final.max_in_flight == 50
    assert final.requests == len(starts) == 100
    assert final.dropped == 400
    # The first 50 on schedule; nothing else until a slot frees at 3 s.
    assert rel[49] < 0.5
    assert rel[50] >= 3.0
    # A request that waited for a slot has that wait in its latency (up to the 1 s timeout).
    assert final.latency.max > 3.5
    assert final.latency.max <= 4.0 + 1e-6
    # Waiting for a slot is the target's doing, not Ballista's: no scheduler lag.
    assert final.max_scheduler_lag == 0.0
