"""Stages on trio's MockClock: requests started in each second follow the ramp exactly.

The engine runs with fake connections (its `connection_factory` seam): no
sockets, so virtual time can jump and every count is exact.
"""

from __future__ import annotations

import math
from collections import Counter

import trio
import trio.testing
from helpers import ORIGIN, FakeConnection

from ballista.core.config import LoadSpec, RequestSpec, RunConfig
from ballista.core.schedule import Ramp, parse_stages
from ballista.engine.engine import Engine, RunInfo


async def run_engine(load: LoadSpec, service: float) -> tuple[list[float], Engine]:
    """Run the engine on fake connections; request start times relative to the run start."""
    starts: list[float] = []
    config = RunConfig(
        origin=ORIGIN,
        requests=(RequestSpec("default", "GET", "/"),),
        load=load,
        connections=4,
    )
    began: list[float] = []

    def on_start(info: RunInfo) -> None:
        began.append(trio.current_time())

    engine = Engine(
        config, grace=1.0, seed=3, connection_factory=lambda i: FakeConnection(starts, service)
    )
    engine.on_start.append(on_start)
    await engine.run()
    return [t - began[0] for t in starts], engine


def per_second(starts: list[float], seconds: int) -> list[int]:
    # Schedule times sit on whole seconds at most a few ulps away: 1e-6 absorbs them.
    counts = Counter(math.floor(t + 1e-6) for t in starts)
    assert set(counts) <= set(range(seconds)), counts
    return [counts.get(s, 0) for s in range(seconds)]


async def test_open_model_ramp_starts_requests_on_schedule(
    mock_clock: trio.testing.MockClock,
) -> None:
    # Rate 0 -> 100/s over 10 s (integral 5t²: 5(2s+1) in second s), hold 5 s, 100 -> 0 over 5 s.
    mock_clock.autojump_threshold = 0
    load = LoadSpec(model="open", stages=parse_stages("10s:100,5s:100,5s:0"))
    starts, engine = await run_engine(load, service=0.05)
    ramp_up = [5 * (2 * s + 1) for s in range(10)]
    hold = [100] * 5
    ramp_down = [90, 70, 50, 30, 10]
    assert per_second(starts, 20) == ramp_up + hold + ramp_down
    assert engine.final is not None
    assert engine.final.requests == 1250
    assert engine.final.dropped == 0
    # Latency counts from the schedule; with no queueing it is the service time.
    assert engine.final.latency.max < 0.051


async def test_open_model_ramp_starts_from_the_rate(mock_clock: trio.testing.MockClock) -> None:
    # -r 20 --stages 10s:120: 20 + 10t per second, so 20 + 5(2s+1) in second s.
    mock_clock.autojump_threshold = 0
    load = LoadSpec(model="open", rate=20.0, stages=parse_stages("10s:120"))
    starts, _ = await run_engine(load, service=0.01)
    assert per_second(starts, 10) == [20 + 5 * (2 * s + 1) for s in range(10)]


async def test_open_model_constant_rate_is_exact(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    load = LoadSpec(model="open", rate=250.0, duration=4.0)
    starts, engine = await run_engine(load, service=0.5)  # slow target: the schedule ignores it
    assert per_second(starts, 4) == [250] * 4
    assert engine.final is not None
    # 0.5 s x 250/s; one more when a start and an end fall on the same instant.
    assert engine.final.max_in_flight in (125, 126)


async def test_concurrency_ramp_up_hold_and_down(mock_clock: trio.testing.MockClock) -> None:
    # Concurrency 0 -> 10 over 10 s, hold 2 s, 10 -> 0 over 5 s. Each request takes
    # 0.125 s (exact in binary), so one worker starts 8 requests a second.
    mock_clock.autojump_threshold = 0
    load = LoadSpec(model="closed", stages=parse_stages("10s:10,2s:10,5s:0"))
    starts, engine = await run_engine(load, service=0.125)
    # Worker k starts when the ramp reaches k + 1, at t = k + 1: s workers in second s.
    ramp_up = [8 * s for s in range(10)]
    hold = [80, 80]

    # Ramping down, the level falls below k + 1 just after t = 12 + (9 - k) * 0.5:
    # worker k still starts a request at a grid time g <= that instant, then retires.
    def down(second: int) -> int:
        n = 0
        for k in range(10):
            last = 12 + (9 - k) * 0.5
            n += sum(1 for j in range(8) if second + j * 0.125 <= last)
        return n

    assert per_second(starts, 17) == ramp_up + hold + [down(s) for s in range(12, 17)]
    assert engine.final is not None
    assert engine.final.requests == len(starts)
    # Lowering the limit never cancels a request: every started request got its 200.
    assert engine.final.status_codes == {200: len(starts)}
    assert engine.final.errors == 0


async def test_concurrency_ramp_never_exceeds_its_level(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    load = LoadSpec(model="closed", stages=parse_stages("4s:4,2s:4,4s:0"))
    limits: list[tuple[float, int]] = []
    starts: list[float] = []
    config = RunConfig(origin=ORIGIN, requests=(RequestSpec("default", "GET", "/"),), load=load)
    engine = Engine(config, connection_factory=lambda i: FakeConnection(starts, 0.25))

    async def watch() -> None:
        while True:
            await trio.sleep(0.1)
            limits.append((trio.current_time(), engine.limit))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await engine.run()
        nursery.cancel_scope.cancel()
    ramp = Ramp(load.stages)
    for t, limit in limits:
        # Sampled off the step instants, the limit is exactly the ramp's level.
        if abs(t - round(t)) > 1e-3 and abs(t * 2 - round(t * 2)) > 1e-3:
            assert limit == ramp.level(t), (t, limit)
    assert max(limit for _, limit in limits) == 4
    assert engine.final is not None
    assert engine.final.max_in_flight == 4


class _SlowToClose(FakeConnection):
    """Closes as a server that takes its time over the last FIN would: 2.5 s."""

    async def aclose(self) -> None:
        await trio.sleep(2.5)


async def test_nothing_follows_the_final_snapshot(mock_clock: trio.testing.MockClock) -> None:
    # The final snapshot is the last word: a tick falling while the connections close
    # (here for 2.5 s, five intervals) must not deliver another after it. A --workers
    # parent refuses a snapshot after a part's final one and counts that worker lost.
    mock_clock.autojump_threshold = 0
    config = RunConfig(
        origin=ORIGIN,
        requests=(RequestSpec("default", "GET", "/"),),
        load=LoadSpec(model="closed", concurrency=2, duration=2.0),
        connections=2,
        interval=0.5,
    )
    starts: list[float] = []
    engine = Engine(config, grace=1.0, connection_factory=lambda i: _SlowToClose(starts, 0.1))
    snaps: list[bool] = []
    engine.add_sink(lambda snap: snaps.append(snap.final))
    await engine.run()
    assert snaps[-1] is True and snaps.count(True) == 1
    assert len(snaps) == 4 + 1  # ticks at 0.5, 1.0, 1.5, 2.0 s; then the final one
