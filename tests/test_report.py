"""What people read: the live line, the text summary and the JSON summary."""

from __future__ import annotations

import datetime as dt
import io

from ballista.core.config import RequestSpec
from ballista.core.outcome import NO_ERROR, ErrorKind, Sample
from ballista.core.recorder import Recorder
from ballista.core.runmeta import LAG_WARNING, RunMeta
from ballista.core.snapshot import Snapshot
from ballista.observe.summary import LiveLine, format_summary, summary_dict

SPECS = (RequestSpec(name="home", method="GET", target="/"),)
STARTED = dt.datetime(2026, 11, 27, 5, 0, tzinfo=dt.UTC)


def snapshot_after(samples: list[Sample], *, now: float, lag: float = 0.0) -> Snapshot:
    recorder = Recorder(SPECS, track_service_time=True, start=0.0)
    for sample in samples:
        recorder.request_started()
        recorder.record(sample)
    if lag:
        recorder.record_lag(lag)
    return recorder.snapshot(now, final=False)


def meta(**changes: object) -> RunMeta:
    base: dict[str, object] = {
        "target": "http://127.0.0.1:8080/",
        "model": "closed",
        "protocol": "HTTP/1.1",
        "started_at": STARTED,
        "concurrency": 4,
        "connections": 4,
    }
    base.update(changes)
    return RunMeta(**base)  # type: ignore[arg-type]


OK = Sample(0, 200, NO_ERROR, 0.010, 0.010, 100, 200)
SLOW = Sample(0, 503, NO_ERROR, 0.500, 0.400, 100, 50)
REFUSED = Sample(0, 0, ErrorKind.CONNECT_REFUSED, 0.001, 0.001, 0, 0)


def test_live_line_shows_progress_rates_and_latency() -> None:
    out = io.StringIO()
    line = LiveLine(out, duration=10.0, total=None)
    snap = snapshot_after([OK] * 99 + [SLOW], now=5.0)
    text = line.render(snap)
    assert text.startswith("[##########..........] ")
    assert "5.00s/10.00s" in text
    assert "100 req" in text
    assert "20/s" in text  # 100 requests over the 5 s interval
    assert "p50 10.00ms" in text
    assert "failed 1" in text
    line(snap)
    assert out.getvalue().startswith("\r\x1b[K")


def test_live_line_warns_when_ballista_lags() -> None:
    line = LiveLine(io.StringIO(), duration=None, total=None)
    assert "lagging" not in line.render(snapshot_after([OK], now=1.0, lag=LAG_WARNING / 2))
    lagging = line.render(snapshot_after([OK], now=1.0, lag=0.050))
    assert "ballista lagging 50ms" in lagging


def test_text_summary_has_every_figure_and_no_control_characters() -> None:
    snap = snapshot_after([OK] * 8 + [SLOW, REFUSED], now=2.0)
    text = format_summary(snap, meta(duration=2.0))
    assert "\x1b" not in text and "\r" not in text
    for needle in (
        "closed model · HTTP/1.1 · 4 concurrent, 4 connections",
        "requests     10 (5.0/s)   responses 9   errors 1",
        "failed       2 (20.00%)",
        "p99.9",
        "status codes 200: 8  503: 1",
        "errors       connect_refused: 1",
        "sent 900 B",
    ):
        assert needle in text, needle


def test_adaptive_and_open_headers() -> None:
    snap = snapshot_after([OK], now=1.0)
    adaptive = format_summary(
        snap, meta(model="adaptive", concurrency=500, connections=500, final_limit=31)
    )
    assert "adaptive concurrency (final limit 31, at most 500), up to 500 connections" in adaptive
    opened = format_summary(snap, meta(model="open", concurrency=0, connections=1000))
    assert "open model · HTTP/1.1 · up to 1000 connections" in opened


def test_json_rates_are_over_the_sending_window() -> None:
    snap = snapshot_after([OK] * 300, now=3.4)  # 3 s of sending, 0.4 s of draining
    doc = summary_dict(snap, meta(duration=3.0))
    assert doc["duration_s"] == 3.0
    assert doc["rps"] == 100.0
    assert doc["requests"] == doc["responses"] + doc["errors"] == 300
    assert doc["started_at"] == "2026-11-27T05:00:00Z"
    assert doc["service_time_s"]["p50"] > 0
    without_window = summary_dict(snap, meta())
    assert without_window["duration_s"] == 3.4
