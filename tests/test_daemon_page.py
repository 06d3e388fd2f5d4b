"""The daemon's page in a real headless browser (Debian's chromium, driven by Selenium),
as an operator uses it: the runs listed, each drawn from its start (stored points
through the API, then the live stream, joined without a gap or a double point),
stopped from the page, the token entered once, and the history back after the
daemon restarts. Real daemons in-process against the real embedded target."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from browser import ARTIFACTS, in_thread, make_driver, press, require_chromium, until
from interop import start_nginx_proxy
from servers import RunningTarget
from test_daemon import api, scenario, wait_run, wait_status

from ballista.core.histogram import Histogram, SparseHistogram
from ballista.daemon.service import DB_NAME, Daemon, ServeOptions
from ballista.daemon.store import Point, Store

TOKEN = "page-token-123"
DOCS_IMAGES = Path(__file__).parent.parent / "docs" / "images"

#: What the page drew, in order: {x, seq, segment, from: "history" | "live"}.
PLOTTED = "return window.ballista.plotted;"
STATE = (
    "return {runId: window.ballista.runId, loads: window.ballista.historyLoads,"
    " history: window.ballista.historyPoints, snapshots: window.ballista.snapshots,"
    " drops: window.ballista.streamDrops, reconnects: window.ballista.reconnects};"
)


@pytest.fixture(autouse=True)
def _tools_are_installed() -> None:
    require_chromium()


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    d = make_driver(tmp_path / "chromium-profile", size="1400,1800")
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def fast(target: RunningTarget, name: str, interval: str, **load: Any) -> dict[str, Any]:
    doc = scenario(target, name=name, **load)
    doc["defaults"]["interval"] = interval
    return doc


def seams(plotted: list[dict[str, Any]], segment: int) -> list[int]:
    return [p["seq"] for p in plotted if p["segment"] == segment]


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def text(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


async def test_runs_are_listed_each_opens_from_its_start_and_stops_from_the_page(
    nursery: trio.Nursery, tmp_path: Path, target: RunningTarget, driver: Any
) -> None:
    d = Daemon(
        ServeOptions(port=0, live_port=0, data_dir=tmp_path / "data", token=TOKEN, grace=0.5)
    )
    await nursery.start(d.serve)
    port = d.port
    assert port is not None
    ids = {}
    for name in ("checkout", "search"):
        doc = fast(target, name, "50ms", duration="10m")
        status, created = await api(port, "POST", "/api/runs", doc, token=TOKEN)
        assert status == 201
        ids[name] = created["id"]
    # the checkout run has 2 s (40 intervals) of history before the page opens
    before = await wait_run_points(port, ids["checkout"], 40)

    await in_thread(driver.get, f"http://127.0.0.1:{port}/")
    # no token yet: the page asks for it, once; then lists both runs
    await until(lambda: driver.find_element("id", "token-form").is_displayed(), "token form")
    field = driver.find_element("id", "token-input")
    await in_thread(field.send_keys, TOKEN)
    await in_thread(press, driver, "#token-form button")
    rows = await until(
        lambda: (
            len(driver.find_elements("css selector", "#runs-body tr")) == 2
            and driver.find_elements("css selector", "#runs-body tr")
        ),
        "both runs listed",
    )
    listed = {r.get_attribute("data-id"): r.text for r in rows}
    assert set(listed) == set(ids.values())
    assert "checkout" in listed[ids["checkout"]] and "running" in listed[ids["checkout"]]
    assert "closed" in listed[ids["search"]]
    assert f"127.0.0.1:{target.port}" in listed[ids["search"]]
    assert js(driver, "return sessionStorage.getItem('ballista.token')") == TOKEN
    assert TOKEN not in driver.current_url

    # open the checkout run: its history from the start, at once
    await in_thread(click_run, driver, ids["checkout"])
    first = await until(
        lambda: (s := js(driver, STATE))["runId"] == ids["checkout"] and s["loads"] >= 1 and s,
        "the checkout run's history drawn",
    )
    assert first["history"] >= len(before)
    plotted = await in_thread(js, driver, PLOTTED)
    assert plotted[0]["from"] == "history" and plotted[0]["seq"] == 0
    assert plotted[0]["x"] == pytest.approx(before[0]["t_end"], abs=0.002)
    # then live snapshots, joined at the seam: every interval once, none missing
    await until(
        lambda: sum(p["from"] == "live" for p in js(driver, PLOTTED)) >= 5, "live points appended"
    )
    plotted = await in_thread(js, driver, PLOTTED)
    seqs = seams(plotted, 1)
    assert seqs == list(range(len(seqs))), [
        (i, p) for i, p in enumerate(plotted) if i == 0 or p["seq"] != plotted[i - 1]["seq"] + 1
    ]
    xs = [p["x"] for p in plotted]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    assert await in_thread(text, driver, "state") == "live"
    assert int((await in_thread(text, driver, "requests")).replace(",", "")) > 0

    # the time range and zoom: 5 min reloads the (whole, short) history, drag zooms
    await in_thread(press, driver, '#ranges [data-range="300"]')
    await until(lambda: js(driver, STATE)["loads"] >= 2, "the 5 min range loaded")
    await drag_across(driver, "chart-latency")
    zoom = await until(lambda: js(driver, "return window.ballista.zoom"), "a zoom on drag")
    scale = js(driver, "return window.ballista.charts['chart-status'].plot.scales.x")
    assert (scale["min"], scale["max"]) == pytest.approx((zoom["min"], zoom["max"]))
    await in_thread(press, driver, "#unzoom")
    assert js(driver, "return window.ballista.zoom") is None

    # the other run opens as well, and is stopped from the page
    await in_thread(click_run, driver, ids["search"])
    await until(
        lambda: (s := js(driver, STATE))["runId"] == ids["search"] and s["snapshots"] >= 2,
        "the search run followed",
    )
    assert seams(await in_thread(js, driver, PLOTTED), 1)[0] == 0
    ARTIFACTS.mkdir(exist_ok=True)
    await in_thread(driver.save_screenshot, str(ARTIFACTS / "daemon-page.png"))
    await in_thread(press, driver, "#stop")
    final = await wait_status(port, ids["search"], "stopped", token=TOKEN)
    await until(lambda: text(driver, "state") == "stopped", "the page says stopped")
    assert final["reason"] == "stopped"
    await until(lambda: driver.find_element("id", "summary").is_displayed(), "the summary")
    shown = await in_thread(text, driver, "summary-requests")
    assert int(shown.replace(",", "")) == final["summary"]["requests"]
    # the other run was not touched
    _, other = await api(port, "GET", f"/api/runs/{ids['checkout']}", token=TOKEN)
    assert other["status"] == "running"
    # the merge command carries the summary's URL, never the token
    await in_thread(press, driver, "#copy-merge")
    command = await until(
        lambda: driver.find_element("id", "copy-text").get_attribute("value"), "merge command"
    )
    assert f"/api/runs/{ids['search']}/summary" in command and "ballista merge" in command
    assert TOKEN not in command and "$BALLISTA_TOKEN" in command


def click_run(driver: Any, run_id: str) -> None:
    press(driver, f'#runs-body tr[data-id="{run_id}"] td')


async def wait_run_points(port: int, run_id: str, n: int) -> list[dict[str, Any]]:
    doc = await wait_run(
        port,
        run_id,
        lambda d: len(d.get("points", [])) >= n,
        f"{n} stored points",
        points=True,
        token=TOKEN,
    )
    points: list[dict[str, Any]] = doc["points"]
    return points


async def drag_across(driver: Any, chart: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    over = driver.find_element("css selector", f"#{chart} .u-over")

    def drag() -> None:
        width = over.size["width"]
        ActionChains(driver).move_to_element_with_offset(
            over, -width // 4, 0
        ).click_and_hold().move_by_offset(width // 3, 0).release().perform()

    await in_thread(drag)


def stored_point(t: float, seq: int, latency: float) -> Point:
    hist = Histogram()
    hist.record_n(latency, 20)
    return Point(
        t_start=t - 0.1,
        t_end=t,
        seg=1,
        requests=20,
        failed=0,
        errors=0,
        latency_p50=latency,
        latency_p90=latency,
        latency_p99=latency,
        latency_max=latency,
        in_flight=2,
        concurrency_limit=None,
        target_rate=None,
        status_codes={"200": 20},
        errors_by_kind={},
        seq=seq,
        histogram=SparseHistogram.of(hist),
    )


async def test_half_a_minute_of_history_at_once_and_again_after_the_daemon_restarts(
    tmp_path: Path, target: RunningTarget, driver: Any
) -> None:
    # A run whose first 30 s are on disk (written as the daemon writes them: 300
    # intervals of 100 ms), interrupted, with restart = true: the daemon resumes it
    # as segment 2 when it starts, and the page must show those 30 s at once.
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    began = time.time() - 30.0
    doc = {**fast(target, "soak", "100ms", duration="10m"), "restart": True}
    store = Store(data / DB_NAME, clock=lambda: began)
    store.create_run(
        "soak0000",
        name="soak",
        source="api",
        restart=True,
        scenario=doc,
        scenario_public=doc,
        target=f"http://127.0.0.1:{target.port}/",
    )
    for i in range(300):
        summary = {"requests": 20 * (i + 1), "duration_s": 0.1 * (i + 1)} if i == 299 else None
        store.record_interval(
            "soak0000", stored_point(began + 0.1 * (i + 1), i + 1, 0.002), summary
        )
    store.close()

    async with trio.open_nursery() as outer:
        first = Daemon(ServeOptions(port=0, live_port=0, data_dir=data, grace=0.5))
        scope = trio.CancelScope()

        async def serve(daemon: Daemon, scope: trio.CancelScope, *, task_status: Any) -> None:
            with scope:
                await daemon.serve(task_status=task_status)

        await outer.start(serve, first, scope)
        port, live_port = first.port, first.live_port
        assert port is not None and live_port is not None
        await wait_status(port, "soak0000", "running")

        await in_thread(driver.get, f"http://127.0.0.1:{port}/#run=soak0000")
        opened = await until(lambda: (s := js(driver, STATE))["loads"] >= 1 and s, "history")
        assert opened["history"] >= 300
        plotted = await in_thread(js, driver, PLOTTED)
        history = [p for p in plotted if p["from"] == "history"]
        assert history[0]["x"] == pytest.approx(began + 0.1, abs=0.002)
        assert history[-1]["x"] - history[0]["x"] >= 29.0
        assert seams(plotted, 1) == list(range(1, 301))
        await until(
            lambda: sum(p["from"] == "live" for p in js(driver, PLOTTED)) >= 3, "live segment 2"
        )
        plotted = await in_thread(js, driver, PLOTTED)
        seg2 = seams(plotted, 2)
        assert seg2 == list(range(seg2[0], seg2[0] + len(seg2))), seg2
        assert seg2[0] == 0  # segment 2 drawn from its start: stored, then live

        # the daemon dies: the page says so, and keeps trying
        scope.cancel()
        await until(lambda: text(driver, "state") == "reconnecting", "the page notices the drop")
        assert "Live stream lost" in await in_thread(text, driver, "banner")
        loads = js(driver, STATE)["loads"]

        # ...and comes back on the same ports: the run resumes as segment 3, and
        # the page shows the whole history again, then follows the new segment
        second = Daemon(ServeOptions(port=port, live_port=live_port, data_dir=data, grace=0.5))
        second_scope = trio.CancelScope()
        await outer.start(serve, second, second_scope)
        back = await until(
            lambda: (s := js(driver, STATE))["reconnects"] >= 1 and s["loads"] > loads and s,
            "reconnected and reloaded",
            limit_s=30,
        )
        assert back["drops"] >= 1
        await until(
            lambda: any(p["segment"] == 3 and p["from"] == "live" for p in js(driver, PLOTTED)),
            "live points of segment 3",
        )
        plotted = await in_thread(js, driver, PLOTTED)
        assert seams(plotted, 1) == list(range(1, 301))
        assert plotted[0]["x"] == pytest.approx(began + 0.1, abs=0.002)
        assert {p["segment"] for p in plotted} >= {1, 2, 3}
        assert await in_thread(text, driver, "state") == "live"
        await in_thread(driver.save_screenshot, str(ARTIFACTS / "daemon-page-restart.png"))

        # a graceful restart this time: the run ends interrupted (its stream sends
        # the summary and closes), then resumes as segment 4, which the page
        # finds on its own (the runs list says it is running again) and follows
        await second.shutdown()
        await until(lambda: driver.find_element("id", "summary").is_displayed(), "the summary")
        second_scope.cancel()
        third = Daemon(ServeOptions(port=port, live_port=live_port, data_dir=data, grace=0.5))
        await outer.start(serve, third, trio.CancelScope())
        await until(
            lambda: any(p["segment"] == 4 and p["from"] == "live" for p in js(driver, PLOTTED)),
            "live points of segment 4",
            limit_s=30,
        )
        plotted = await in_thread(js, driver, PLOTTED)
        assert seams(plotted, 1) == list(range(1, 301))
        assert {p["segment"] for p in plotted} >= {1, 2, 3, 4}
        assert await in_thread(text, driver, "state") == "live"
        assert not driver.find_element("id", "summary").is_displayed()
        outer.cancel_scope.cancel()


async def test_behind_a_reverse_proxy_under_a_path_the_token_never_reaches_a_log(
    nursery: trio.Nursery, tmp_path: Path, target: RunningTarget, driver: Any
) -> None:
    # nginx serves the daemon under /ballista/ and its streams under /ballista/live/,
    # as docs/daemon.md says; the page finds both from its own location.
    d = Daemon(
        ServeOptions(
            port=0,
            live_port=0,
            data_dir=tmp_path / "data",
            token=TOKEN,
            grace=0.5,
            live_url="live/",
        )
    )
    await nursery.start(d.serve)
    proxy, access_log = await start_nginx_proxy(
        nursery,
        tmp_path / "nginx",
        f"""
        location /ballista/live/ {{
            proxy_pass http://127.0.0.1:{d.live_port}/;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection upgrade;
        }}
        location /ballista/ {{ proxy_pass http://127.0.0.1:{d.port}/; }}
        """,
    )
    assert d.port is not None
    status, created = await api(
        d.port, "POST", "/api/runs", fast(target, "proxied", "100ms", duration="30s"), token=TOKEN
    )
    assert status == 201
    await wait_run_points(d.port, created["id"], 5)
    await in_thread(driver.get, f"http://127.0.0.1:{proxy}/ballista/#run={created['id']}")
    await until(lambda: driver.find_element("id", "token-form").is_displayed(), "token form")
    await in_thread(driver.find_element("id", "token-input").send_keys, TOKEN)
    await in_thread(press, driver, "#token-form button")
    await until(
        lambda: (s := js(driver, STATE))["loads"] >= 1 and s["snapshots"] >= 2,
        "history and live snapshots through the proxy",
    )
    assert js(driver, STATE)["history"] >= 5
    assert text(driver, "ws-url") == (f"ws://127.0.0.1:{proxy}/ballista/live/runs/{created['id']}")
    assert await in_thread(text, driver, "state") == "live"
    # (the snapshots came through nginx: the page knows no other way to the stream)
    logged = access_log.read_text()
    assert f"GET /ballista/api/runs/{created['id']}?points" in logged
    assert "GET /ballista/static/app.js" in logged
    assert TOKEN not in logged


async def test_a_stream_named_in_the_pages_url_never_gets_the_token(
    nursery: trio.Nursery, tmp_path: Path, target: RunningTarget, driver: Any
) -> None:
    from trio_websocket import WebSocketRequest, serve_websocket

    offered: list[list[str]] = []

    async def elsewhere(request: WebSocketRequest) -> None:
        offered.append(list(request.proposed_subprotocols))
        await request.reject(404)

    listener = await nursery.start(serve_websocket, elsewhere, "127.0.0.1", 0, None)
    d = Daemon(
        ServeOptions(port=0, live_port=0, data_dir=tmp_path / "data", token=TOKEN, grace=0.5)
    )
    await nursery.start(d.serve)
    assert d.port is not None and d.live_port is not None
    status, created = await api(
        d.port, "POST", "/api/runs", fast(target, "own", "100ms", duration="30s"), token=TOKEN
    )
    assert status == 201
    await in_thread(
        driver.get,
        f"http://127.0.0.1:{d.port}/?ws=ws://127.0.0.1:{listener.port}/#run={created['id']}",
    )
    await until(lambda: driver.find_element("id", "token-form").is_displayed(), "token form")
    await in_thread(driver.find_element("id", "token-input").send_keys, TOKEN)
    await in_thread(press, driver, "#token-form button")
    await until(lambda: offered, "the page tried the stream of its URL")
    assert all(not p.startswith("ballista.bearer.") for protos in offered for p in protos)
    # ...while the daemon's own stream, as configured, does get it
    await in_thread(driver.get, f"http://127.0.0.1:{d.port}/#run={created['id']}")
    await until(lambda: js(driver, STATE)["snapshots"] >= 1, "the daemon's own stream")
