"""The adaptive controller in a closed loop: a simulated target on MockClock, then real sockets.

The simulation is the engine's closed loop in miniature (workers under a limit,
each sending its next request when the last ends, retiring when the limit
drops) around a fake target with C slots, a bounded queue answering 503 when
full, and log-normal service times. The integration test runs `ballista run
--adaptive` against hypercorn serving an app that admits K requests at a time.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ballista.core.config import AdaptiveSpec
from ballista.core.controller import AimdController, Window
from ballista.core.outcome import NO_ERROR, Sample

# --- the simulated target -------------------------------------------------------------

#: Service time: log-normal, median 50 ms, sigma 0.2 (p95 about 70 ms, mean 51 ms).
SERVICE_MEDIAN = 0.050
SERVICE_SIGMA = 0.2
SERVICE_MEAN = SERVICE_MEDIAN * math.exp(SERVICE_SIGMA**2 / 2)
#: A full queue answers 503 after this long.
REJECT_DELAY = 0.001
SLOTS = 20
QUEUE = 5
#: p95 target: above the service time's p95 plus what a queue of QUEUE costs (~15 ms).
TARGET = 0.100


class SlotTarget:
    """`capacity` requests in service at once, `queue` more waiting (FIFO), 503 beyond."""

    def __init__(self, capacity: int, queue: int, rng: random.Random) -> None:
        self.capacity = capacity
        self.queue = queue
        self.busy = 0
        self._rng = rng
        self._waiting: deque[trio.Event] = deque()

    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity
        self._admit()

    def _admit(self) -> None:
        while self._waiting and self.busy < self.capacity:
            self.busy += 1
            self._waiting.popleft().set()

    async def handle(self) -> int:
        if self.busy + len(self._waiting) >= self.capacity + self.queue:
            await trio.sleep(REJECT_DELAY)
            return 503
        if self.busy < self.capacity and not self._waiting:
            self.busy += 1
        else:
            admitted = trio.Event()
            self._waiting.append(admitted)
            await admitted.wait()  # _admit counted us as busy
        try:
            await trio.sleep(SERVICE_MEDIAN * math.exp(self._rng.gauss(0.0, SERVICE_SIGMA)))
        finally:
            self.busy -= 1
            self._admit()
        return 200


@dataclass
class ClosedLoop:
    """Workers 0..limit-1, as the engine runs them; records each closed window."""

    controller: AimdController
    target: SlotTarget
    nursery: trio.Nursery
    windows: list[Window] = field(default_factory=list)
    ok: int = 0
    stopped: bool = False
    _running: set[int] = field(default_factory=set)
    _closed: int = 0

    def start(self) -> None:
        for i in range(self.controller.limit):
            if i not in self._running:
                self._running.add(i)
                self.nursery.start_soon(self._worker, i)

    async def _worker(self, index: int) -> None:
        controller = self.controller
        try:
            while not self.stopped and index < controller.limit:
                t0 = trio.current_time()
                status = await self.target.handle()
                t1 = trio.current_time()
                self.ok += status == 200
                before = controller.limit
                controller.on_sample(t1, Sample(0, status, NO_ERROR, t1 - t0, t1 - t0, 0, 0))
                if controller.windows_closed != self._closed:
                    self._closed = controller.windows_closed
                    self.windows.append(controller.windows[-1])
                if controller.limit > before:
                    self.start()
                pause = controller.pause_after(Sample(0, status, NO_ERROR, t1 - t0, t1 - t0, 0, 0))
                if pause > 0:
                    await trio.sleep(pause)
        finally:
            self._running.discard(index)

    async def run_windows(self, n: int) -> tuple[list[Window], float]:
        """Wait for n more windows; return them and the 200s per second meanwhile."""
        first = len(self.windows)
        ok0, t0 = self.ok, trio.current_time()
        while len(self.windows) < first + n:
            await trio.sleep(0.01)
        rate = (self.ok - ok0) / (trio.current_time() - t0)
        return self.windows[first : first + n], rate


SIM_SPEC = AdaptiveSpec(
    latency_target=TARGET,
    percentile=95.0,
    initial=4,
    maximum=500,
    window_min=0.25,
    window_max=2.0,
    window_samples=20,
)


async def test_simulation_finds_tracks_and_recovers_capacity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    controller = AimdController(SIM_SPEC)
    target = SlotTarget(SLOTS, QUEUE, random.Random(4))
    async with trio.open_nursery() as nursery:
        loop = ClosedLoop(controller, target, nursery)
        loop.start()
        # Slow start to the first congestion, then 60 windows of steady state.
        while controller.in_slow_start:
            await trio.sleep(0.01)
        steady, rate = await loop.run_windows(60)
        limits = [w.limit for w in steady]
        assert min(limits) >= 0.8 * SLOTS
        assert max(limits) <= 1.3 * SLOTS + QUEUE
        assert rate >= 0.9 * SLOTS / SERVICE_MEAN
        under = sum(w.percentile <= TARGET for w in steady)
        assert under >= 0.9 * len(steady)
        settled = controller.settled_limit()
        assert SLOTS <= settled <= SLOTS + QUEUE

        # Half the capacity: the best limit is now SLOTS/2 busy + QUEUE waiting, whose
        # queueing delay (~25 ms) still keeps p95 under the target.
        target.set_capacity(SLOTS // 2)
        optimum = SLOTS // 2 + QUEUE
        after_halving, _ = await loop.run_windows(5)
        assert after_halving[-1].next_limit <= 1.1 * optimum
        assert min(w.next_limit for w in after_halving) >= 0.5 * SLOTS // 2
        halved, rate = await loop.run_windows(20)
        assert rate >= 0.9 * (SLOTS // 2) / SERVICE_MEAN
        assert max(w.limit for w in halved) <= 1.3 * (SLOTS // 2) + QUEUE

        # Full capacity again: the limit climbs back by additive increase, once the next
        # probe of the level that was rejected while halved finds it accepted.
        target.set_capacity(SLOTS)
        next_probe = trio.current_time() + controller.probe_gap
        while trio.current_time() < next_probe:
            await loop.run_windows(1)
        recovered, _ = await loop.run_windows(30)
        assert recovered[-1].limit >= SLOTS
        assert max(w.limit for w in recovered) <= 1.3 * SLOTS + QUEUE
        loop.stopped = True


# --- over real sockets ----------------------------------------------------------------

#: The integration target admits this many requests at once; each takes DELAY.
CAPACITY = 16
DELAY = 0.050


class LimitedApp:
    """ASGI app: K requests in service at once (a semaphore), each `delay` long; up to
    `queue` more wait in line (None: any number), beyond that 503 at once."""

    def __init__(self, capacity: int, *, delay: float, queue: int | None) -> None:
        self.capacity = capacity
        self.delay = delay
        self.queue = queue
        self.slots = trio.Semaphore(capacity)
        self.waiting = 0
        self.peak = 0
        self.served = 0
        self.rejected = 0

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].replace(".startup", ".startup.complete")
                kind = kind.replace(".shutdown", ".shutdown.complete")
                await send({"type": kind})
                if message["type"] == "lifespan.shutdown":
                    return
        await receive()
        status = 200
        if self.queue is not None and self.waiting >= self.queue and self.slots.value == 0:
            status = 503
            self.rejected += 1
        else:
            self.waiting += 1
            try:
                await self.slots.acquire()
            finally:
                self.waiting -= 1
            try:
                self.peak = max(self.peak, self.capacity - self.slots.value)
                await trio.sleep(self.delay)
            finally:
                self.slots.release()
            self.served += 1
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})


async def serve_limited(
    app: LimitedApp, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.loglevel = "WARNING"
    config.keep_alive_max_requests = 1_000_000
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            lambda task_status: serve(app, config, mode="asgi", task_status=task_status)  # type: ignore[arg-type]
        )
        task_status.started(int(binds[0].rsplit(":", 1)[1]))


@pytest.mark.timeout(60)
async def test_run_adaptive_settles_at_the_capacity_of_a_real_server(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # K slots and no queue: a request that finds them all busy gets 503 at once.
    app = LimitedApp(CAPACITY, delay=DELAY, queue=0)
    port: int = await nursery.start(serve_limited, app)
    out = tmp_path / "summary.json"
    argv = [
        "run",
        f"http://127.0.0.1:{port}/",
        "--adaptive",
        "-d",
        "4s",
        "--latency-target",
        "1s",  # the 503s, not the latency, tell where the capacity ends
        "--max-concurrency",
        "64",
        "--window-min",
        "100ms",
        "--json",
        str(out),
        "--quiet",
    ]
    with trio.fail_after(30):
        done = await trio.run_process([sys.executable, "-m", "ballista", *argv], check=False)
    assert done.returncode == 0
    summary = json.loads(out.read_text())
    assert summary["model"] == "adaptive"
    final = summary["concurrency"]["final_limit"]
    assert abs(final - CAPACITY) <= 0.25 * CAPACITY, (final, summary)
    assert app.peak == CAPACITY
    assert app.rejected > 0  # it did find the edge
    assert summary["status_codes"]["200"] == app.served
