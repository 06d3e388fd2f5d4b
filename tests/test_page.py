"""The live web page in a real headless browser (Debian's chromium, driven by Selenium).

The page is served by the metrics listener (`serve_metrics(routes=page_routes(...))`),
exactly as a run serves it, and follows a real run against the embedded target.
Selenium blocks, so every browser call runs in a worker thread while the
engine keeps running in the trio loop.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
from browser import (  # noqa: F401 (CHROMIUM, CHROMEDRIVER: the harness, importable from here too)
    ARTIFACTS,
    CHROMEDRIVER,
    CHROMIUM,
    in_thread,
    make_driver,
    require_chromium,
    until,
)
from helpers import run_config
from servers import TargetFactory

from ballista.engine.engine import Engine
from ballista.observe.live import LiveHub, page_routes, serve_live
from ballista.observe.metrics import MetricsExporter, serve_metrics
from ballista.observe.summary import summary_dict


@pytest.fixture(autouse=True)
def _tools_are_installed() -> None:
    require_chromium()


# Pixels of a colour near `rgb` on a chart's canvas: a series was drawn there.
COUNT_PIXELS = """
const [id, r, g, b] = arguments;
const canvas = document.querySelector('#' + id + ' canvas');
if (!canvas) return -1;
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let n = 0;
for (let i = 0; i < data.length; i += 4) {
  if (data[i + 3] > 200 && Math.abs(data[i] - r) < 40 && Math.abs(data[i + 1] - g) < 40
      && Math.abs(data[i + 2] - b) < 40) n++;
}
return n;
"""
CANVAS_IMAGE = "return document.querySelector('#' + arguments[0] + ' canvas').toDataURL();"
CHART_POINTS = "return window.ballista.charts[arguments[0]].data[0].length;"
GREEN_2XX = (0x2C, 0xA0, 0x2C)  # the 2xx series of #chart-status
BLUE_P50 = (0x1F, 0x77, 0xB4)  # the p50 series of #chart-latency


async def test_live_page_follows_a_run_and_shows_the_summary(
    target_factory: TargetFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    target = await target_factory(error_rate=0.05, fixed_delay=0.004)
    config = run_config(target.url, "-d", "4s", "-c", "4", "--interval", "0.25s")
    started_at = dt.datetime.now(dt.UTC)
    hub = LiveHub(config, run_id="pagetest", started_at=started_at)
    live_port: int = await nursery.start(serve_live, hub, "127.0.0.1", 0)
    exporter = MetricsExporter(config, run_id="pagetest")
    http_port: int = await nursery.start(
        lambda task_status: serve_metrics(
            exporter, "127.0.0.1", 0, routes=page_routes(live_port), task_status=task_status
        )
    )
    driver = await in_thread(make_driver, tmp_path / "chromium-profile")
    try:
        await in_thread(driver.get, f"http://127.0.0.1:{http_port}/")
        assert "Ballista" in await in_thread(lambda: driver.title)

        summary: dict[str, Any] = {}

        async def run() -> None:
            engine = Engine(config, sinks=[hub.publish, exporter.update], grace=2.0)
            engine.on_start.extend([hub.on_start, exporter.on_start])
            final = await engine.run()
            meta = engine.run_meta(started_at)
            summary.update(summary_dict(final, meta))
            await hub.finish(summary)

        def text(element_id: str) -> str:
            return str(driver.find_element("id", element_id).text)

        def count(element_id: str) -> int:
            return int(text(element_id).replace(",", "") or 0)

        def pixels(chart: str, rgb: tuple[int, int, int]) -> int:
            return int(driver.execute_script(COUNT_PIXELS, chart, *rgb))

        nursery.start_soon(run)
        # during the run: the numbers change and the charts draw
        await until(
            lambda: driver.execute_script("return window.ballista.snapshots") >= 3,
            "three snapshots on the page",
        )
        assert await in_thread(text, "state") == "live"
        assert await in_thread(text, "protocol") == "HTTP/1.1"
        first = await in_thread(count, "requests")
        green_first = await in_thread(pixels, "chart-status", GREEN_2XX)
        image_first = await in_thread(driver.execute_script, CANVAS_IMAGE, "chart-status")
        points_first = await in_thread(driver.execute_script, CHART_POINTS, "chart-status")
        # more snapshots drawn: the count and the chart both move on
        await until(
            lambda: (
                count("requests") > first
                and driver.execute_script(CHART_POINTS, "chart-status") > points_first
            ),
            "more requests and chart points",
        )
        second = await in_thread(count, "requests")
        assert 0 < first < second
        assert float((await in_thread(text, "rps")).replace(",", "")) > 0
        assert (await in_thread(text, "p99")).endswith("ms")
        assert await in_thread(text, "limit") == "4"
        # the 2xx line is drawn, and the chart is redrawn as snapshots come in
        assert green_first > 0
        assert await in_thread(pixels, "chart-status", GREEN_2XX) > 0
        assert await in_thread(driver.execute_script, CHART_POINTS, "chart-status") > points_first
        assert await in_thread(driver.execute_script, CANVAS_IMAGE, "chart-status") != image_first
        assert await in_thread(pixels, "chart-latency", BLUE_P50) > 0
        points = await in_thread(
            driver.execute_script, "return window.ballista.charts['chart-rate'].data[0].length"
        )
        assert points >= 3

        # at the end: the summary, whose total is the JSON summary's `requests`
        await until(lambda: driver.find_element("id", "summary").is_displayed(), "the summary", 20)
        assert summary["requests"] > second
        shown = await in_thread(count, "summary-requests")
        assert shown == summary["requests"]
        assert await in_thread(count, "requests") == summary["requests"]
        assert await in_thread(text, "state") == "finished"
        assert "500" in await in_thread(text, "summary-status")
        assert "200" in await in_thread(text, "status-table")
        ARTIFACTS.mkdir(exist_ok=True)
        await in_thread(driver.save_screenshot, str(ARTIFACTS / "live-page.png"))
    finally:
        await in_thread(driver.quit)
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


async def _forward(nursery: trio.Nursery, to_port: int) -> int:
    """A port mapping, as Docker's -p makes: TCP on a new port, piped to `to_port`."""

    async def pipe(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
        try:
            while data := await a.receive_some(65536):
                await b.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await trio.aclose_forcefully(b)

    async def handle(client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", to_port)
        async with trio.open_nursery() as pipes:
            pipes.start_soon(pipe, client, upstream)
            pipes.start_soon(pipe, upstream, client)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_the_page_finds_the_stream_at_its_configured_public_url(
    target_factory: TargetFactory, nursery: trio.Nursery, tmp_path: Path, closed_port: int
) -> None:
    target = await target_factory(fixed_delay=0.004)
    config = run_config(target.url, "-d", "2s", "-c", "2", "--interval", "0.25s")
    hub = LiveHub(config, run_id="mapped", started_at=dt.datetime.now(dt.UTC))
    live_port: int = await nursery.start(serve_live, hub, "127.0.0.1", 0)
    mapped = await _forward(nursery, live_port)
    exporter = MetricsExporter(config, run_id="mapped")
    # The port the daemon listens on is not the one browsers reach: only the
    # configured URL leads to the stream.
    routes = page_routes(closed_port, f"ws://127.0.0.1:{mapped}/")
    http_port: int = await nursery.start(
        lambda task_status: serve_metrics(
            exporter, "127.0.0.1", 0, routes=routes, task_status=task_status
        )
    )
    driver = await in_thread(make_driver, tmp_path / "chromium-profile")
    try:
        await in_thread(driver.get, f"http://127.0.0.1:{http_port}/")
        engine = Engine(config, sinks=[hub.publish], grace=1.0)
        engine.on_start.append(hub.on_start)
        nursery.start_soon(engine.run)
        await until(
            lambda: driver.execute_script("return window.ballista.snapshots") >= 2,
            "snapshots through the mapped port",
        )
    finally:
        await in_thread(driver.quit)


async def test_flows_of_a_journey_run_are_shown_as_a_table(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # A stream that speaks ballista.live/1 with the `flows` object journeys add to
    # snapshots: the page renders it as a table, and hides the table without it.
    from trio_websocket import WebSocketRequest, serve_websocket

    from ballista.observe.httpserver import serve_http

    flows = {
        "checkout": {
            "iterations": 120,
            "completed": 117,
            "failed": 3,
            "failures_by_reason": {"status 503 at pay": 2, "timeout at cart": 1},
            "duration_s": {
                "min": 0.05,
                "mean": 0.09,
                "p50": 0.081,
                "p90": 0.12,
                "p95": 0.15,
                "p99": 0.31,
                "p999": 0.4,
                "max": 0.42,
            },
        }
    }
    hello = {
        "type": "hello",
        "schema": "ballista.live/1",
        "run_id": "flows",
        "target": "http://127.0.0.1:9/",
        "model": "closed",
        "started_at": "2026-11-30T00:00:00Z",
        "started_at_unix": 1796000000.0,
        "interval": 1.0,
    }
    snapshot = {
        "type": "snapshot",
        "seq": 0,
        "elapsed": 1.0,
        "interval": 1.0,
        "final": False,
        "requests": 240,
        "failed": 3,
        "error_rate": 0.0125,
        "rps": 240.0,
        "in_flight": 2,
        "interval_status_codes": {"200": 237, "503": 3},
        "interval_errors": 0,
        "interval_latency_s": {"count": 240, "p50": 0.01, "p90": 0.02, "p99": 0.03, "max": 0.04},
        "status_codes": {"200": 237, "503": 3},
        "flows": flows,
    }

    async def stream(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message(json.dumps(hello))
        await ws.send_message(json.dumps(snapshot))
        await trio.sleep_forever()

    listener = await nursery.start(serve_websocket, stream, "127.0.0.1", 0, None)
    ws_port = listener.port
    http_port: int = await nursery.start(
        functools.partial(serve_http, page_routes(ws_port), "127.0.0.1", 0)
    )
    driver = await in_thread(make_driver, tmp_path / "chromium-profile")
    try:
        await in_thread(driver.get, f"http://127.0.0.1:{http_port}/")
        row = await until(
            lambda: (
                driver.find_element("id", "flows").is_displayed()
                and driver.find_element("css selector", '#flows-body tr[data-flow="checkout"]')
            ),
            "the flows table",
        )
        cells = [td.text for td in row.find_elements("css selector", "td")]
        assert cells[:4] == ["checkout", "120", "117", "3"]
        assert cells[4] == "81.0 ms" and cells[6] == "310 ms"
        assert "status 503 at pay: 2" in cells[8] and "timeout at cart: 1" in cells[8]
    finally:
        await in_thread(driver.quit)
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
