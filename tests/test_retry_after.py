"""Retry-After on 429/503: parsed at the transport, a cooldown for the adaptive controller."""

from __future__ import annotations

import email.utils
import functools
import time
from typing import Any

import pytest
import trio

from ballista.core.config import AdaptiveSpec, LoadSpec, Origin, RequestSpec, RunConfig
from ballista.core.controller import AimdController
from ballista.core.outcome import NO_ERROR, Sample
from ballista.engine.engine import Engine
from ballista.transport.connect import MAX_RETRY_AFTER, parse_retry_after


def test_parse_delta_seconds() -> None:
    assert parse_retry_after(b"120") == 120.0
    assert parse_retry_after(b" 0 ") == 0.0
    assert parse_retry_after(b"999999") == MAX_RETRY_AFTER


def test_parse_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True).encode()
    seconds = parse_retry_after(when)
    assert seconds is not None and 28 <= seconds <= 31
    past = email.utils.formatdate(time.time() - 30, usegmt=True).encode()
    assert parse_retry_after(past) == 0.0


@pytest.mark.parametrize(
    "value", [b"soon", b"-5", b"", b"1.5", b"Mon, 99 Foo 2026", "²".encode("latin-1")]
)
def test_unreadable_values_are_ignored(value: bytes) -> None:
    assert parse_retry_after(value) is None


SPEC = AdaptiveSpec(
    latency_target=0.1, initial=10, window_min=1.0, window_samples=1, slow_start=False
)


def feed_clean_window(c: AimdController, clock: list[float]) -> None:
    """Fast 200s, 0.1 s apart, until the controller closes a window."""
    closed = c.windows_closed
    while c.windows_closed == closed:
        clock[0] += 0.1
        c.on_sample(clock[0], Sample(0, 200, NO_ERROR, 0.01, 0.01, 0, 0))


def test_controller_holds_during_the_cooldown_then_grows_again() -> None:
    c = AimdController(SPEC)
    clock = [0.0]
    feed_clean_window(c, clock)
    assert c.limit == 11  # additive increase
    c.on_retry_after(clock[0], 2.5)
    until = clock[0] + 2.5
    feed_clean_window(c, clock)
    feed_clean_window(c, clock)
    assert clock[0] < until
    assert [w.action for w in c.windows[-2:]] == ["cooldown", "cooldown"]
    assert c.limit == 11
    while clock[0] < until:
        feed_clean_window(c, clock)
    assert c.windows[-1].action == "increase"
    assert c.limit == 12


def test_a_later_shorter_retry_after_does_not_shorten_the_cooldown() -> None:
    c = AimdController(SPEC)
    c.on_retry_after(0.0, 10.0)
    c.on_retry_after(1.0, 1.0)
    assert c.cooling_down_until == 10.0


class BusyApp:
    """503 with Retry-After for the first `busy` requests, 200 after."""

    def __init__(self, busy: int, retry_after: str) -> None:
        self.busy = busy
        self.retry_after = retry_after
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                done = message["type"] == "lifespan.shutdown"
                await send({"type": message["type"] + ".complete"})
                if done:
                    return
        self.requests += 1
        if self.requests <= self.busy:
            status, headers = 503, [(b"retry-after", self.retry_after.encode())]
        else:
            status, headers = 200, []
        await trio.sleep(0.005)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("protocol", ["http1", "http2"])
async def test_retry_after_reaches_the_controller(nursery: trio.Nursery, protocol: str) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    app = BusyApp(busy=5, retry_after="3")
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.loglevel = "WARNING"
    asgi: Any = app
    binds = await nursery.start(functools.partial(serve, asgi, config, mode="asgi"))
    port = int(binds[0].rsplit(":", 1)[1])
    spec = AdaptiveSpec(latency_target=1.0, initial=2, window_min=0.2, window_samples=5)
    run_config = RunConfig(
        origin=Origin("http", "127.0.0.1", port),
        requests=(RequestSpec(name="default", method="GET", target="/"),),
        load=LoadSpec(model="adaptive", requests=200, adaptive=spec),
        protocol="http2" if protocol == "http2" else "http1",
    )
    controller = AimdController(spec)
    engine = Engine(run_config, controller=controller)
    with trio.fail_after(30):
        start = trio.current_time()
        final = await engine.run()
    assert final.status_codes[503] == 5
    # The 503s asked for 3 s; the cooldown runs from when they arrived.
    assert 2.5 <= controller.cooling_down_until - start <= 3.5
    assert "cooldown" in {w.action for w in controller.windows}
