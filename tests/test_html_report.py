"""The HTML report (observe/report.py): `run --report`, `ballista report`, `compare
--report` and the daemon's `/api/runs/{id}/report`, made from real runs against the
embedded target; the file opened from disk in headless chromium with the network
off: nothing requested, the charts drawn, the numbers equal to the JSON, printable."""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from browser import (
    ARTIFACTS,
    in_thread,
    make_driver,
    press,
    require_chromium,
    until,
)
from helpers import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import RunningTarget, TargetFactory

from ballista.cli.main import main
from ballista.core.durations import format_duration
from ballista.core.histogram import HISTOGRAM_LAYOUT, Histogram, _bounds
from ballista.daemon.service import Daemon, ServeOptions
from ballista.observe.report import (
    REPORT_CSP,
    ReportRun,
    _bin_of,
    distribution,
    percentile_curve,
    points_from_store,
    render_report,
)

BALLISTA = [sys.executable, "-m", "ballista"]


async def ballista_run(url: str, out: Path, *args: str) -> dict[str, Any]:
    """`ballista run` in a process of its own, with --json and --report beside each other."""
    result = await trio.run_process(
        [
            *BALLISTA,
            "run",
            url,
            "-q",
            "--interval",
            "0.1s",
            "--json",
            str(out.with_suffix(".json")),
            "--report",
            str(out.with_suffix(".html")),
            *args,
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr.decode()
    doc: dict[str, Any] = json.loads(out.with_suffix(".json").read_text())
    return doc


def page_data(html: str) -> dict[str, Any]:
    """The data the page's script draws from."""
    match = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html)
    assert match is not None
    doc: dict[str, Any] = json.loads(match.group(1))
    return doc


def chart(data: dict[str, Any], chart_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in data["charts"] if c["id"] == chart_id]
    assert found, [c["id"] for c in data["charts"]]
    return found[0]


def requests_in(html: str) -> list[str]:
    """Every place a page could fetch from: src/href attributes, url(), @import."""
    return re.findall(
        r"""(?:\b(?:src|href|action|srcset)\s*=\s*["'][^"']+|url\(\s*["']?(?!data:)[^)"']+|@import)""",
        html,
        re.I,
    )


# -- the file ------------------------------------------------------------------------


async def test_run_report_is_one_offline_file_with_the_runs_numbers(
    target_factory: TargetFactory, tmp_path: Path
) -> None:
    target = await target_factory(error_rate=0.05, fixed_delay=0.002)
    doc = await ballista_run(
        target.url_for("/?api_key=k-987"), tmp_path / "run", "-c", "4", "-d", "1.5s"
    )
    html = (tmp_path / "run.html").read_text(encoding="utf-8")
    assert doc["requests"] == target.stats.requests > 0
    # the configuration, secrets hidden
    assert "<dt>timeout</dt><dd>30.00s</dd>" in html
    assert "k-987" not in html and "api_key=[redacted]" in html
    assert f'content="{REPORT_CSP}"'.replace("'", "&#x27;") in html
    assert requests_in(html) == []
    data = page_data(html)
    # the charts over time: one point per interval of the timeline, counts per second
    points = doc["timeline"]["points"]
    throughput = chart(data, "chart-throughput")
    assert throughput["x"] == [round(p["t"], 3) for p in points]
    by_label = {s["label"]: s["values"] for s in throughput["series"]}
    assert sum(round(v * p["span"]) for v, p in zip(by_label["5xx"], points, strict=True)) == sum(
        n for code, n in doc["status_codes"].items() if code.startswith("5")
    )
    latency = {s["label"]: s["values"] for s in chart(data, "chart-latency")["series"]}
    assert latency["p99"] == [
        round(p["latency_s"]["p99"] * 1e3, 6) if p["requests"] else None for p in points
    ]
    # the percentile curve is the histogram's: at 99% it is the summary's p99
    curve = chart(data, "chart-percentiles")
    at = dict(zip(curve["x"], curve["series"][0]["values"], strict=True))
    assert at[100.0] == round(doc["latency_s"]["p99"] * 1e3, 6)
    assert at[2.0] == round(doc["latency_s"]["p50"] * 1e3, 6)
    assert max(v for v in at.values() if v is not None) == round(doc["latency_s"]["max"] * 1e3, 6)
    # the tiles and tables carry the JSON's own values
    assert f'id="run0-requests" data-value="{doc["requests"]}">{doc["requests"]:,}<' in html
    p99 = doc["latency_s"]["p99"]
    assert f'id="run0-p99" data-value="{json.dumps(p99)}">{format_duration(p99)}<' in html
    for code, n in doc["status_codes"].items():
        assert re.search(rf'<tr data-code="{code}"><td>{code}</td><td data-value="{n}">', html)


def test_the_percentile_curve_and_the_distribution_come_from_the_histogram() -> None:
    hist = Histogram()
    for i in range(1, 10_001):
        hist.record(i / 1e6)  # 1 µs .. 10 ms, evenly
    xs, qs, values = percentile_curve(hist)
    assert qs[0] == 0.0 and qs[-1] == 100.0

    def ms(seconds: float) -> float:
        return round(round(seconds, 9) * 1e3, 6)  # as the summary rounds, in ms

    assert values[0] == ms(hist.min) and values[-1] == ms(hist.max)
    for q in (50.0, 90.0, 99.0, 99.9):
        assert values[qs.index(q)] == ms(hist.percentile(q))
    assert xs == sorted(xs)
    # each display bin is whole buckets of the histogram's layout
    for index in range(256, 48 << 7, 37):
        low, width = _bounds(index)
        bin_low, bin_width = _bin_of(index)
        assert bin_low <= low and low + width <= bin_low + bin_width, index
        assert bin_width == 8 * width  # sixteen bins per doubling of 128 buckets
    # as a density on a log scale: evenly spread values rise with the value (no saw-tooth)
    bx, by = distribution(hist.to_dict())
    assert bx == sorted(bx)
    levels = [y for x, y in zip(bx, by, strict=True) if 1.0 <= x < 9.0 and y]
    assert all(b >= a * 0.95 for a, b in itertools.pairwise(levels))


def test_a_summary_without_timeline_or_histograms_renders_without_those_charts() -> None:
    summary = {
        "schema": "ballista.summary/1",
        "target": "http://127.0.0.1:1/?token=abc",
        "requests": 10,
        "failed": 0,
        "latency_s": {"p50": 0.001, "p99": 0.002, "max": 0.003},
        "status_codes": {"200": 10},
        "flows": {
            "purchase": {
                "iterations": 5,
                "completed": 4,
                "failed": 1,
                "failures_by_reason": {"status 500": 1},
                "duration_s": {"p50": 0.25, "p99": 0.5, "max": 0.5},
            }
        },
    }
    html = render_report([ReportRun(label="old.json", summary=summary)])
    assert "no timeline" in html and "no latency histogram" in html
    row = re.search(r'<tr data-flow="purchase">(.*?)</tr>', html)
    assert row is not None
    assert re.findall(r'data-value="([^"]*)"', row.group(1))[:3] == ["5", "4", "1"]
    assert "250.00ms" in row.group(1) and "status 500: 1" in row.group(1)
    assert page_data(html)["charts"] == []
    assert "token=abc" not in html and "token=[redacted]" in html


def test_daemon_points_become_a_timeline() -> None:
    stored = [
        {
            "t_start": 1000.0,
            "t_end": 1001.0,
            "requests": 10,
            "failed": 1,
            "errors": 1,
            "latency_s": {"p50": 0.01, "p90": 0.02, "p99": 0.03, "max": 0.04},
            "in_flight": 2,
            "concurrency_limit": None,
            "target_rate": None,
            "status_codes": {"200": 9},
            "errors_by_kind": {"reset": 1},
        },
        {
            "t_start": 1001.0,
            "t_end": 1003.0,
            "requests": 20,
            "failed": 0,
            "errors": 0,
            "latency_s": {"p50": 0.01, "p90": 0.02, "p99": 0.03, "max": 0.04},
            "in_flight": 2,
            "concurrency_limit": 4,
            "target_rate": None,
            "status_codes": {"200": 20},
            "errors_by_kind": {},
        },
    ]
    points = points_from_store(stored)
    assert [(p["t"], p["span"], p["responses"]) for p in points] == [(1.0, 1.0, 9), (3.0, 2.0, 20)]
    data = page_data(render_report([ReportRun(label="r", summary={}, points=points)]))
    rates = {s["label"]: s["values"] for s in chart(data, "chart-throughput")["series"]}
    assert rates["2xx"] == [9.0, 10.0] and rates["errors"] == [1.0, 0.0]
    assert chart(data, "chart-errors")["series"][0]["values"] == [1.0, 0.0]


async def test_report_command_compares_runs_and_names_bad_input(
    target: RunningTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = await ballista_run(target.url, tmp_path / "a", "-c", "1", "-n", "40")
    b = await ballista_run(target.url, tmp_path / "b", "-c", "4", "-n", "80")
    assert (
        main(["report", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--label", "one"]) == 0
    )
    html = (tmp_path / "a.html").read_text(encoding="utf-8")  # beside the first input
    assert "one" in html and "b.json" in html
    data = page_data(html)
    assert [r["label"] for r in data["runs"]] == ["one", "b.json"]
    rps = chart(data, "chart-throughput")
    assert [s["label"] for s in rps["series"]] == ["one", "b.json"]
    # overlaid on one axis of elapsed time: each run's points where it has them
    times_a = [round(p["t"], 3) for p in a["timeline"]["points"]]
    times_b = [round(p["t"], 3) for p in b["timeline"]["points"]]
    assert rps["x"] == sorted(set(times_a) | set(times_b))
    # the deltas: absolute and relative, against the first run
    row = re.search(r"<tr><td>p99</td>(.*?)</tr>", html)
    assert row is not None
    p99a, p99b = a["latency_s"]["p99"], b["latency_s"]["p99"]
    assert f'data-value="{json.dumps(p99a)}"' in row.group(1)
    assert f'data-value="{json.dumps(p99b)}"' in row.group(1)
    assert f"{100 * abs(p99b - p99a) / p99a:.1f}%" in row.group(1)
    capsys.readouterr()

    bad = tmp_path / "bad.json"
    cases = [
        ("not json {", "not"),
        (json.dumps({"hello": 1}), "not a Ballista summary"),
        (json.dumps({**a, "schema": "ballista.summary/9"}), "ballista.summary/9"),
        (json.dumps({**a, "requests": "many"}), "'requests' must be a whole number"),
        (json.dumps({**a, "latency_s": {"p99": "slow"}}), "'latency_s' must be an object of"),
        (json.dumps({**a, "timeline": {"points": [{"t": 1}]}}), "timeline"),
    ]
    for text, needle in cases:
        bad.write_text(text)
        assert main(["report", str(bad), "-o", str(tmp_path / "x.html")]) == 2
        _, err = capsys.readouterr()
        assert err.count("\n") == 1 and err.startswith("ballista: error:") and needle in err, err
    for argv, needle in (
        ([str(tmp_path / "a.json"), "--label", "x", "--label", "y"], "2 labels for 1"),
        ([str(tmp_path / "a.json"), "-o", str(tmp_path / "no" / "x.html")], "no such directory"),
        ([str(tmp_path / "a.json"), "-o", str(tmp_path / "a.json")], "one of the inputs"),
        ([str(tmp_path / "missing.json")], "missing.json"),
    ):
        assert main(["report", *argv]) == 2
        _, err = capsys.readouterr()
        assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "x.html").exists()


async def test_report_is_written_when_a_signal_stops_the_run(
    target: RunningTarget, tmp_path: Path
) -> None:
    out = tmp_path / "stopped.html"
    proc = await trio.lowlevel.open_process(
        [
            *BALLISTA,
            "run",
            target.url_for("/?delay=0.05"),
            "-d",
            "60s",
            "-c",
            "2",
            "-q",
            "--report",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_until(lambda: target.stats.requests >= 10, "10 requests at the target", limit=20)
        proc.send_signal(2)
        with trio.fail_after(15):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
    html = out.read_text(encoding="utf-8")
    assert 'class="bad">interrupted: the run ended early' in html
    assert "stopped early by a signal" in html


def test_report_is_written_when_a_bug_ends_the_run(tmp_path: Path) -> None:
    out = tmp_path / "bug.html"
    script = f"""
import sys
from ballista.cli.main import main
from ballista.core.outcome import NO_ERROR
from ballista.transport.http1 import H1Connection
calls = 0
async def exchange(self, *request):
    global calls
    calls += 1
    if calls > 5:
        raise RuntimeError("injected bug")
    return 200, NO_ERROR, 10, 20
# Where the closed worker's requests go, on a connection of its own.
H1Connection.exchange_in_scope = exchange
sys.exit(main(["run", "http://127.0.0.1:9/", "--http1", "-c", "1", "-n", "50", "-q",
               "--report", {str(out)!r}]))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 3, proc.stderr
    html = out.read_text(encoding="utf-8")
    assert "interrupted: the run ended early" in html
    assert 'id="run0-requests" data-value="5"' in html


async def test_compare_writes_the_baseline_against_the_concurrent_run(
    target: RunningTarget, tmp_path: Path
) -> None:
    out = tmp_path / "compare.html"
    result = await trio.run_process(
        [
            *BALLISTA,
            "compare",
            target.url_for("/?delay=0.005"),
            "-n",
            "40",
            "-c",
            "4",
            "--report",
            str(out),
        ],
        capture_stdout=True,
        capture_stderr=True,
    )
    assert result.returncode == 0, result.stderr
    data = page_data(out.read_text(encoding="utf-8"))
    assert [r["label"] for r in data["runs"]] == ["sequential", "concurrent"]
    assert [s["label"] for s in chart(data, "chart-p99")["series"]] == ["sequential", "concurrent"]
    assert main(["compare", target.url, "--report", "-"]) == 2


# -- the daemon ----------------------------------------------------------------------


def fetch(port: int, path: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers.items()), resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers.items()), exc.read().decode()


async def test_daemon_serves_a_report_per_run_under_the_token(
    nursery: trio.Nursery, tmp_path: Path, target: RunningTarget
) -> None:
    token = "tok-report"
    d = Daemon(ServeOptions(port=0, live_port=0, data_dir=tmp_path, token=token, grace=0.5))
    await nursery.start(d.serve)
    port = d.port
    assert port is not None
    scenario = {
        "name": "nightly",
        "base_url": f"http://127.0.0.1:{target.port}",
        "defaults": {"headers": {"Authorization": "Bearer hidden-123"}, "interval": "200ms"},
        "requests": [{"name": "home", "path": "/"}],
        "load": {"concurrency": 2, "duration": "1s"},
    }

    def post() -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/runs", data=json.dumps(scenario).encode(), method="POST"
        )
        req.add_header("authorization", f"Bearer {token}")
        req.add_header("content-type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    run_id = (await trio.to_thread.run_sync(post))["id"]

    async def finished() -> Any:
        _status, _, body = await trio.to_thread.run_sync(fetch, port, f"/api/runs/{run_id}", token)
        doc = json.loads(body)
        return doc if doc["status"] == "finished" else None

    doc = await wait_until(finished, "the run finished", limit=20, poll=0.1)
    path = f"/api/runs/{run_id}/report"
    assert (await trio.to_thread.run_sync(fetch, port, path))[0] == 401
    assert (await trio.to_thread.run_sync(fetch, port, path + f"?token={token}"))[0] == 401
    assert (await trio.to_thread.run_sync(fetch, port, "/api/runs/nope/report", token))[0] == 404
    status, headers, html = await trio.to_thread.run_sync(fetch, port, path, token)
    assert status == 200
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-disposition"] == f'inline; filename="ballista-nightly-{run_id}.html"'
    assert headers["content-security-policy"] == REPORT_CSP
    summary = doc["summary"]
    assert f'id="run0-requests" data-value="{summary["requests"]}"' in html
    assert "hidden-123" not in html and "[redacted]" in html
    assert requests_in(html) == []
    data = page_data(html)
    # `ballista runs report` saves the same report; a wrong token is the daemon's one line
    from ballista.cli import runs as runs_client

    def client(*argv: str) -> tuple[int, str]:
        import argparse

        parser = argparse.ArgumentParser()
        runs_client.add_arguments(parser)
        ns = parser.parse_args(["report", run_id, "--server", f"http://127.0.0.1:{port}", *argv])
        out = io.StringIO()
        return runs_client.main(ns, out=out), out.getvalue()

    saved = tmp_path / "saved.html"
    code, printed = await trio.to_thread.run_sync(client, "--token", token, "-o", str(saved))
    assert (code, printed) == (0, f"{saved}\n")
    assert f'id="run0-requests" data-value="{summary["requests"]}"' in saved.read_text()
    assert (await trio.to_thread.run_sync(client, "--token", "wrong"))[0] == 1
    # the stored points, one per interval; the distribution from the summary's histogram
    assert len(chart(data, "chart-throughput")["x"]) >= 3
    curve = chart(data, "chart-percentiles")
    at = dict(zip(curve["x"], curve["series"][0]["values"], strict=True))
    assert at[100.0] == round(summary["latency_s"]["p99"] * 1e3, 6)


# -- in a real browser ---------------------------------------------------------------


def offline_driver(profile: Path) -> Any:
    """Headless chromium that cannot resolve any host name, logging every request."""
    return make_driver(
        profile,
        size="1400,2400",
        extra=(
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9",  # and nothing gets past a proxy that is not there
        ),
        capabilities={"goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"}},
    )


def network_requests(driver: Any) -> list[str]:
    """URLs the page asked for, from chromium's DevTools log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


PAINTED = """
const canvas = document.querySelector('#' + arguments[0] + ' canvas');
if (!canvas) return -1;
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let n = 0;
for (let i = 0; i < data.length; i += 4) {
  const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
  // a series' colour, not the black, grey and white of axes, grid and background
  if (a > 200 && Math.max(r, g, b) - Math.min(r, g, b) > 60) n++;
}
return n;
"""


COLOURED = """
const [id, r, g, b] = arguments;
const canvas = document.querySelector('#' + id + ' canvas');
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let n = 0;
for (let i = 0; i < data.length; i += 4) {
  if (data[i + 3] > 200 && Math.abs(data[i] - r) < 30 && Math.abs(data[i + 1] - g) < 30
      && Math.abs(data[i + 2] - b) < 30) n++;
}
return n;
"""
RUN_COLOURS = ((0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28))  # the first and second run's lines


def _open_comparison(html_path: Path, profile: Path) -> dict[str, Any]:
    driver = offline_driver(profile)
    try:
        driver.get(html_path.as_uri())
        charts = driver.execute_script("return Object.keys(window.ballista.charts)")
        return {
            "charts": charts,
            "by_run": {
                c: [driver.execute_script(COLOURED, c, *rgb) for rgb in RUN_COLOURS] for c in charts
            },
            "deltas": driver.find_element("id", "deltas").text,
        }
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open_in_browser(html_path: Path, profile: Path) -> dict[str, Any]:
    driver = offline_driver(profile)
    try:
        driver.get("about:blank")
        driver.get_log("performance")  # drained: what the browser did before the report
        driver.get(html_path.as_uri())  # returns after the load event: the charts are drawn
        charts = driver.execute_script("return Object.keys(window.ballista.charts)")
        out: dict[str, Any] = {
            "charts": charts,
            "painted": {c: driver.execute_script(PAINTED, c) for c in charts},
            "resources": driver.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)"
            ),
            "requests": network_requests(driver),
            "console": [e["message"] for e in driver.get_log("browser")],
            "text": {
                key: driver.find_element("id", key).text
                for key in ("run0-requests", "run0-p99", "run0-lat-p99")
            },
            "status": {
                row.get_attribute("data-code"): row.find_elements("tag name", "td")[1].text
                for row in driver.find_elements("css selector", "#run0-status tr[data-code]")
            },
        }
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / f"{html_path.stem}.png"))
        from selenium.webdriver.common.print_page_options import PrintOptions

        a4 = PrintOptions()
        a4.page_width, a4.page_height = 21.0, 29.7  # cm
        out["pdf"] = base64.b64decode(driver.print_page(a4))
        # what the printed page lays out: every chart within A4's printable width
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        out["print_widths"] = driver.execute_script(
            "return [...document.querySelectorAll('.chart canvas')].map(c => c.clientWidth)"
        )
        return out
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def test_report_opens_offline_in_chromium_draws_prints_and_shows_the_json(
    target_factory: TargetFactory, tmp_path: Path
) -> None:
    require_chromium()
    target = await target_factory(error_rate=0.05, fixed_delay=0.002)
    doc = await ballista_run(target.url, tmp_path / "report", "-c", "4", "-d", "1.5s")
    seen = await trio.to_thread.run_sync(
        _open_in_browser, tmp_path / "report.html", tmp_path / "profile"
    )
    # nothing was asked of the network: the file itself is the only request
    assert seen["requests"] == [(tmp_path / "report.html").as_uri()]
    assert seen["resources"] == []
    assert not [m for m in seen["console"] if "Refused" in m or "error" in m.lower()], seen
    # every chart drew its series
    assert set(seen["charts"]) >= {
        "chart-throughput",
        "chart-latency",
        "chart-in-flight",
        "chart-connections",
        "chart-errors",
        "chart-histogram",
        "chart-percentiles",
    }
    for name, pixels in seen["painted"].items():
        assert pixels > 50, (name, pixels)
    # the numbers shown are the JSON's
    assert seen["text"]["run0-requests"] == f"{doc['requests']:,}"
    assert seen["text"]["run0-p99"] == format_duration(doc["latency_s"]["p99"])
    assert seen["text"]["run0-lat-p99"] == format_duration(doc["latency_s"]["p99"])
    assert seen["status"] == {code: f"{n:,}" for code, n in doc["status_codes"].items()}
    # it prints: a PDF of at least one A4 page
    pdf = seen["pdf"]
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page(?!s)", pdf)) >= 1
    assert seen["print_widths"] and max(seen["print_widths"]) <= 703  # 210 mm - 2 x 12 mm


# -- damaged input never crashes -------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
#: Where a damaged file may differ from a good one: every part a report reads.
PLACES = (
    ("requests",),
    ("rps",),
    ("error_rate",),
    ("target",),
    ("latency_s",),
    ("latency_s", "p99"),
    ("status_codes",),
    ("status_codes", "200"),
    ("errors_by_kind",),
    ("concurrency",),
    ("requests_by_name",),
    ("requests_by_name", "home"),
    ("requests_by_name", "home", "latency_s"),
    ("thresholds",),
    ("notes",),
    ("flows",),
    ("flows", "buy"),
    ("segment",),
    ("histograms",),
    ("histograms", "latency"),
    ("histograms", "latency", "counts"),
    ("histograms", "layout"),
    ("timeline",),
    ("timeline", "points"),
    ("timeline", "points", 0),
    ("timeline", "points", 0, "latency_s"),
    ("timeline", "points", 0, "status_codes"),
    ("timeline", "points", 0, "latency"),
)


def good_summary() -> dict[str, Any]:
    hist = Histogram()
    for ms in (1, 2, 2, 3, 50):
        hist.record(ms / 1e3)
    lat = {k: v for k, v in hist.summary().as_dict().items()}
    point = {
        "t": 1.0,
        "span": 1.0,
        "requests": 5,
        "responses": 5,
        "errors": 0,
        "failed": 0,
        "dropped": 0,
        "status_codes": {"200": 5},
        "errors_by_kind": {},
        "in_flight": 1,
        "open_connections": 1,
        "concurrency_limit": None,
        "target_rate": None,
        "scheduler_lag": 0.0,
        "loop_lag": 0.0,
        "latency_s": {k: lat[k] for k in ("p50", "p90", "p99", "max")},
        "latency": hist.to_dict(),
    }
    return {
        "schema": "ballista.summary/1",
        "target": "http://127.0.0.1:1/",
        "requests": 5,
        "rps": 5.0,
        "error_rate": 0.0,
        "latency_s": lat,
        "status_codes": {"200": 5},
        "errors_by_kind": {},
        "concurrency": {"configured": 1},
        "requests_by_name": {"home": {"requests": 5, "latency_s": lat}},
        "thresholds": [{"expr": "p99<1s", "value": lat["p99"], "ok": True}],
        "flows": {"buy": {"iterations": 1, "duration_s": lat}},
        "histograms": {"layout": HISTOGRAM_LAYOUT, "latency": hist.to_dict()},
        "timeline": {"max_points": 720, "points": [point]},
    }


@settings(max_examples=150, deadline=None)
@given(place=st.sampled_from(PLACES), value=json_values)
def test_a_damaged_summary_is_one_line_and_exit_2_never_a_crash(
    place: tuple[str | int, ...], value: Any
) -> None:
    doc = good_summary()
    parent: Any = doc
    for key in place[:-1]:
        parent = parent[key]
    parent[place[-1]] = value
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "damaged.json"
        src.write_text(json.dumps(doc))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["report", str(src), "-o", str(Path(tmp) / "out.html")])
        assert code in (0, 2), err.getvalue()
        if code == 2:
            assert err.getvalue().count("\n") == 1 and "damaged.json" in err.getvalue()
        else:
            assert (Path(tmp) / "out.html").stat().st_size > 0


async def test_a_comparison_overlays_both_runs_in_chromium(
    target_factory: TargetFactory, tmp_path: Path
) -> None:
    require_chromium()
    fast = await target_factory(fixed_delay=0.002)
    slow = await target_factory(fixed_delay=0.02)
    await ballista_run(fast.url, tmp_path / "fast", "-c", "2", "-d", "1s")
    await ballista_run(slow.url, tmp_path / "slow", "-c", "2", "-d", "1s")
    out = tmp_path / "both.html"
    assert (
        main(["report", str(tmp_path / "fast.json"), str(tmp_path / "slow.json"), "-o", str(out)])
        == 0
    )
    seen = await trio.to_thread.run_sync(_open_comparison, out, tmp_path / "profile")
    assert {"chart-throughput", "chart-p99", "chart-histogram", "chart-percentiles"} <= set(
        seen["charts"]
    )
    # each run drew its own line where they differ (2 ms against 20 ms per request)
    for name in (
        "chart-throughput",
        "chart-p50",
        "chart-p99",
        "chart-histogram",
        "chart-percentiles",
    ):
        first, second = seen["by_run"][name]
        assert first > 20 and second > 20, (name, first, second)
    assert "fast.json (baseline)" in seen["deltas"] and "slow.json" in seen["deltas"]


async def test_open_model_report_shows_the_target_rate_and_the_service_time(
    target: RunningTarget, tmp_path: Path
) -> None:
    doc = await ballista_run(target.url, tmp_path / "open", "-r", "100", "-d", "1s")
    data = page_data((tmp_path / "open.html").read_text(encoding="utf-8"))
    rate = {s["label"]: s["values"] for s in chart(data, "chart-rate")["series"]}
    assert {v for v in rate["target"] if v is not None} == {100.0}
    curves = chart(data, "chart-percentiles")
    assert [s["label"] for s in curves["series"]] == ["latency", "service time"]
    at = dict(zip(curves["x"], curves["series"][1]["values"], strict=True))
    assert at[100.0] == round(doc["service_time_s"]["p99"] * 1e3, 6)


@pytest.mark.parametrize(
    ("flag", "needle"),
    [
        ("/nonexistent/dir/r.html", "--report: no such directory"),
        ("-", "--report: a report is a file"),
        ("/tmp", "--report: '/tmp' is a directory"),
        ("out.json", "--report: 'out.json' is also --json"),
    ],
)
def test_run_report_path_is_checked_before_the_run(
    flag: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # port 9 on 127.0.0.1: nothing listens; the run must not even start
    argv = ["run", "http://127.0.0.1:9/", "-n", "1", "--report", flag, "--json", "out.json"]
    assert main(argv) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and needle in err, err


def test_names_from_the_summary_cannot_inject_markup_or_requests() -> None:
    evil = "</script><img src=http://example.com/x onerror=alert(1)>"
    summary = {
        "schema": "ballista.summary/1",
        "target": "http://127.0.0.1:1/",
        "requests": 1,
        "latency_s": {"p50": 0.001},
        "status_codes": {"200": 1},
        "requests_by_name": {evil: {"requests": 1, "latency_s": {"p50": 0.001}}},
        "notes": [evil],
        "timeline": {
            "points": [{"t": 1.0, "span": 1.0, "requests": 1, "errors_by_kind": {evil: 1}}]
        },
    }
    html = render_report([ReportRun(label=evil, summary=summary)], title=evil)
    assert "<img" not in html and evil not in html
    assert requests_in(html) == []
    assert html.count("</script>") == 3  # the data, uPlot and the page's script
    assert page_data(html)["runs"][0]["label"] == evil  # intact, as data


async def test_the_daemons_page_opens_a_runs_report_with_the_token(
    nursery: trio.Nursery, tmp_path: Path, target: RunningTarget
) -> None:
    require_chromium()
    token = "page-report-token"
    d = Daemon(ServeOptions(port=0, live_port=0, data_dir=tmp_path / "data", token=token))
    await nursery.start(d.serve)
    port = d.port
    assert port is not None
    doc = {
        "name": "paged",
        "base_url": f"http://127.0.0.1:{target.port}",
        "defaults": {"interval": "100ms"},
        "requests": [{"name": "home", "path": "/"}],
        "load": {"concurrency": 2, "duration": "1s"},
    }

    def post() -> str:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/runs", data=json.dumps(doc).encode(), method="POST"
        )
        req.add_header("authorization", f"Bearer {token}")
        req.add_header("content-type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(json.loads(resp.read())["id"])

    run_id = await trio.to_thread.run_sync(post)

    async def finished() -> Any:
        _, _, body = await trio.to_thread.run_sync(fetch, port, f"/api/runs/{run_id}", token)
        shown = json.loads(body)
        return shown if shown["status"] == "finished" else None

    summary = (await wait_until(finished, "the run finished", limit=20, poll=0.1))["summary"]
    driver = await in_thread(make_driver, tmp_path / "profile")
    try:
        await in_thread(driver.get, f"http://127.0.0.1:{port}/#run={run_id}")
        await until(lambda: driver.find_element("id", "token-form").is_displayed(), "token form")
        await in_thread(driver.find_element("id", "token-input").send_keys, token)
        await in_thread(press, driver, "#token-form button")
        await until(lambda: driver.find_element("id", "report").is_displayed(), "report button")
        await in_thread(press, driver, "#report")
        await until(lambda: len(driver.window_handles) == 2, "the report's tab")
        await in_thread(driver.switch_to.window, driver.window_handles[1])
        shown = await until(
            lambda: driver.execute_script(
                "const e = document.getElementById('run0-requests');"
                " return e && window.ballista && window.ballista.charts ? e.textContent : null"
            ),
            "the report drawn in its tab",
        )
        assert shown == f"{summary['requests']:,}"
        assert driver.execute_script("return Object.keys(window.ballista.charts).length") >= 4
    finally:
        await in_thread(driver.quit)
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
