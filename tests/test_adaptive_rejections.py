"""Adaptive concurrency against targets that reject at once beyond their capacity (issue 13).

On trio's MockClock the real engine runs the controller over fake connections
to a simulated shedder (K slots, log-normal service times, an instant 503, 429
or REFUSED_STREAM beyond them): every count is exact and a minute of virtual
time takes a second. Then a few seconds over real sockets, one per signal.
"""

from __future__ import annotations

import io
import math
import random
import subprocess
import sys
import time

import pytest
import trio
import trio.testing

from ballista.core.config import AdaptiveSpec, LoadSpec, Origin, RequestSpec, RunConfig
from ballista.core.controller import AimdController
from ballista.core.outcome import NO_ERROR, ErrorKind
from ballista.engine.engine import Engine
from ballista.observe.summary import LiveLine
from ballista.target.shedder import start_shedder
from ballista.transport.connect import PreparedRequest

ORIGIN = Origin("http", "127.0.0.1", 9)
#: A rejection comes back after this long (a round trip on a LAN).
REJECT_LATENCY = 0.0005
SIGMA = 0.2


class SimShedder:
    """`capacity` requests in service at once (log-normal, median `service`); beyond
    them, `signal` at once."""

    def __init__(self, capacity: int, service: float, signal: str, seed: int = 1) -> None:
        self.capacity = capacity
        self.service = service
        self.signal = signal
        self.busy = 0
        self.served = 0
        self.rejected = 0
        self._rng = random.Random(seed)

    @property
    def mean_service(self) -> float:
        return self.service * math.exp(SIGMA**2 / 2)

    async def handle(self) -> tuple[int, int, int, int]:
        if self.busy >= self.capacity:
            await trio.sleep(REJECT_LATENCY)
            self.rejected += 1
            if self.signal == "refused_stream":
                return 0, int(ErrorKind.REFUSED_STREAM), 40, 0
            return int(self.signal), NO_ERROR, 40, 5
        self.busy += 1
        try:
            await trio.sleep(self.service * math.exp(self._rng.gauss(0.0, SIGMA)))
        finally:
            self.busy -= 1
        self.served += 1
        return 200, NO_ERROR, 40, 3


class SimConnection:
    multiplexed = True
    retry_after: float | None = None

    def __init__(self, target: SimShedder) -> None:
        self._target = target

    async def request(self, req: PreparedRequest, deadline: float) -> tuple[int, int, int, int]:
        return await self._target.handle()

    async def aclose(self) -> None:
        pass


def adaptive_engine(
    target: SimShedder, duration: float, spec: AdaptiveSpec | None = None
) -> tuple[Engine, AimdController]:
    spec = spec or AdaptiveSpec(latency_target=1.0)  # the rejections, not latency, decide
    config = RunConfig(
        origin=ORIGIN,
        requests=(RequestSpec("default", "GET", "/"),),
        load=LoadSpec(model="adaptive", duration=duration, adaptive=spec),
        connections=4,
    )
    controller = AimdController(spec)
    engine = Engine(
        config,
        controller=controller,
        grace=1.0,
        seed=1,
        connection_factory=lambda i: SimConnection(target),
    )
    return engine, controller


@pytest.mark.parametrize(
    ("signal", "capacity", "service", "duration"),
    [
        ("503", 12, 0.020, 30.0),  # the target
        ("429", 4, 0.020, 30.0),
        ("refused_stream", 40, 0.050, 30.0),
        ("503", 3, 0.200, 120.0),  # few and slow: 15 requests a second
    ],
)
async def test_rejections_stay_a_small_share_while_the_capacity_is_found(
    autojump_clock: trio.testing.MockClock,
    signal: str,
    capacity: int,
    service: float,
    duration: float,
) -> None:
    target = SimShedder(capacity, service, signal)
    engine, controller = adaptive_engine(target, duration)
    served_at: list[tuple[float, int]] = []

    def sink(snap: object) -> None:
        served_at.append((trio.current_time(), target.served))

    engine.add_sink(sink)
    final = await engine.run()

    # Every rejection the target made is in the summary, as its status or error kind.
    if signal == "refused_stream":
        assert final.errors_by_kind["refused_stream"] == target.rejected
    else:
        assert final.status_codes[int(signal)] == target.rejected
    assert final.status_codes[200] == target.served
    share = target.rejected / final.requests
    assert share <= 0.02, (share, [(w.limit, w.action) for w in controller.windows])

    assert controller.settled_limit() == capacity
    # After the first tenth of the run, the target is kept busy: its throughput is near
    # what its slots allow (capacity / mean service time).
    t0, n0 = next((t, n) for t, n in served_at if t >= served_at[0][0] + duration / 10 - 1)
    t1, n1 = served_at[-2]
    assert (n1 - n0) / (t1 - t0) >= 0.93 * capacity / target.mean_service

    note = engine.notes()[-1]
    label = "refused_stream" if signal == "refused_stream" else signal
    assert f"limited by rejections ({label}: " in note, note
    assert note.startswith(f"sustains about {capacity} concurrent requests")


async def test_the_limit_follows_the_capacity_up_and_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    target = SimShedder(12, 0.020, "503")
    engine, _ = adaptive_engine(target, 60.0)
    limits: list[tuple[float, int]] = []
    engine.add_sink(lambda snap: limits.append((snap.elapsed, engine.limit)))

    async def change_capacity() -> None:
        await trio.sleep(20.0)
        target.capacity = 24
        await trio.sleep(20.0)
        target.capacity = 6

    async with trio.open_nursery() as nursery:
        nursery.start_soon(change_capacity)
        final = await engine.run()
    by_second = dict((round(t), limit) for t, limit in limits)
    assert by_second[19] == 12
    # Up: the next probe of the rejected limit (at most 4 x 2 s later) finds room, then
    # the limit climbs one a window.
    assert by_second[39] == 24
    assert max(limit for t, limit in limits if t < 40) <= 25
    # Down: at once, to what the target accepted.
    assert by_second[42] == 6
    assert final.status_codes[503] / final.requests <= 0.02


def test_a_rejected_slot_waits_out_a_typical_latency() -> None:
    from ballista.core.outcome import Sample

    c = AimdController(AdaptiveSpec(window_min=0.5))
    rejected = Sample(0, 503, NO_ERROR, 0.001, 0.001, 40, 5)
    refused = Sample(0, 0, int(ErrorKind.REFUSED_STREAM), 0.002, 0.002, 40, 0)
    timed_out = Sample(0, 0, int(ErrorKind.READ_TIMEOUT), 30.0, 30.0, 40, 0)
    # Nothing accepted yet: --window-min.
    assert c.pause_after(rejected) == pytest.approx(0.499)
    c.on_sample(0.05, Sample(0, 200, NO_ERROR, 0.05, 0.05, 40, 3))
    assert c.typical_latency == 0.05
    assert c.pause_after(rejected) == pytest.approx(0.049)
    assert c.pause_after(refused) == pytest.approx(0.048)
    # Accepted requests, and signals slower than a typical request, do not wait.
    assert c.pause_after(Sample(0, 200, NO_ERROR, 0.001, 0.001, 40, 3)) == 0.0
    assert c.pause_after(Sample(0, 500, NO_ERROR, 0.001, 0.001, 40, 3)) == 0.0
    assert c.pause_after(timed_out) == 0.0


# --- over real sockets ----------------------------------------------------------------


@pytest.mark.parametrize("signal", ["503", "429", "refused_stream"])
@pytest.mark.timeout(60)
async def test_real_shedder_for_each_signal(nursery: trio.Nursery, signal: str) -> None:
    capacity, service = 8, 0.020
    port, stats = await start_shedder(nursery, signal, capacity, service)
    spec = AdaptiveSpec(latency_target=1.0, window_min=0.2)
    config = RunConfig(
        origin=Origin("http", "127.0.0.1", port),
        requests=(RequestSpec("default", "GET", "/"),),
        load=LoadSpec(model="adaptive", duration=5.0, adaptive=spec),
        protocol="http2" if signal == "refused_stream" else "http1",
        connections=2 if signal == "refused_stream" else None,
    )
    controller = AimdController(spec)
    engine = Engine(config, controller=controller)
    with trio.fail_after(30):
        final = await engine.run()
    assert final.status_codes[200] == stats.served
    rejected = (
        final.errors_by_kind["refused_stream"]
        if signal == "refused_stream"
        else final.status_codes.get(int(signal), 0)
    )
    assert rejected == stats.rejected
    assert stats.peak == capacity  # it did reach the capacity
    assert stats.rejected > 0  # and found its edge
    # Slow start and a probe or two, in a 5 s run: a few percent at most.
    assert stats.rejected / final.requests <= 0.05, (stats, controller.windows)
    assert abs(controller.settled_limit() - capacity) <= 1, controller.windows
    assert "limited by rejections" in engine.notes()[-1]


# --- Ballista's own lag ---------------------------------------------------------------


async def _hog(busy: float) -> None:
    """CPU work that yields only between slices of `busy` seconds: every turn of the
    event loop takes that long, as on a saturated machine."""
    while True:
        end = time.perf_counter() + busy
        while time.perf_counter() < end:
            pass
        await trio.lowlevel.checkpoint()


@pytest.mark.timeout(60)
async def test_a_saturated_generator_holds_the_limit_and_says_so(nursery: trio.Nursery) -> None:
    # The target runs in its own process and answers in about 1 ms; in this one, a task
    # that yields only every 30 ms makes the event loop wake everything else that late.
    server = await trio.lowlevel.open_process(
        [sys.executable, "-m", "ballista.target.shedder", "--capacity", "1000", "--service", "1ms"],
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        with trio.fail_after(20):
            url = (await server.stdout.receive_some(200)).decode().split()[0]
        port = int(url.rsplit(":", 1)[1].strip("/"))
        spec = AdaptiveSpec(latency_target=0.050, window_min=0.3, initial=4, slow_start=False)
        config = RunConfig(
            origin=Origin("http", "127.0.0.1", port),
            requests=(RequestSpec("default", "GET", "/"),),
            load=LoadSpec(model="adaptive", duration=3.0, adaptive=spec),
            protocol="http1",
        )
        controller = AimdController(spec)
        lines: list[str] = []
        live = LiveLine(io.StringIO(), duration=3.0, total=None)
        engine = Engine(
            config, controller=controller, sinks=[lambda s: lines.append(live.render(s))]
        )
        async with trio.open_nursery() as hogs:
            hogs.start_soon(_hog, 0.030)
            with trio.fail_after(30):
                final = await engine.run()
            hogs.cancel_scope.cancel()
    finally:
        server.kill()
        await server.wait()
    windows = controller.windows
    assert final.latency.p95 > spec.latency_target  # the latency is over the target...
    assert final.loop_lag > spec.latency_target  # ...because the event loop is late
    assert controller.decreases == 0, windows  # so the limit holds
    assert controller.limited_by() == "generator", windows
    assert "limited by Ballista itself, not the target" in engine.notes()[-1]
    assert any("generator-bound: event loop" in line for line in lines), lines
