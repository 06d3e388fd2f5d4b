"""Histograms and timelines as data: round trips, exact merges, bounded downsampling, reading back."""

from __future__ import annotations

import json
import random
import re
from itertools import pairwise
from pathlib import Path

import pytest

from ballista.core.config import RequestSpec
from ballista.core.errors import ConfigError
from ballista.core.histogram import Histogram, SparseHistogram
from ballista.core.outcome import NO_ERROR, ErrorKind, Sample
from ballista.core.recorder import Recorder
from ballista.core.snapshot import LatencySummary
from ballista.core.summaryfile import histogram_of, read_summary, timeline_of
from ballista.core.timeline import Timeline, TimelinePoint
from ballista.observe.summary import to_json

SPECS = (
    RequestSpec(name="home", method="GET", target="/"),
    RequestSpec(name="cart", method="POST", target="/cart"),
)


def _same(a: LatencySummary, b: LatencySummary) -> None:
    """Equal figures; the mean up to the order floats were added in."""
    assert a.count == b.count
    assert a.as_dict() == pytest.approx(b.as_dict(), rel=1e-12)
    assert {k: v for k, v in a.as_dict().items() if k != "mean"} == {
        k: v for k, v in b.as_dict().items() if k != "mean"
    }


def _hist(values: list[float]) -> Histogram:
    h = Histogram()
    for v in values:
        h.record(v)
    return h


def test_histogram_round_trips_exactly_through_json() -> None:
    rng = random.Random(7)
    h = _hist([rng.lognormvariate(-4, 1) for _ in range(5000)])
    back = Histogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back.summary() == h.summary()
    assert back.to_dict() == h.to_dict()
    empty = Histogram.from_dict(Histogram().to_dict())
    assert empty.count == 0 and empty.summary() == Histogram().summary()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "must be an object"),
        ({"count": 1}, "needs 'index'"),
        (
            {"count": 2, "sum_s": 0, "min_s": 0, "max_s": 0, "index": [3], "counts": [1]},
            "hold 1 values, not 2",
        ),
        (
            {"count": 2, "sum_s": 0, "min_s": 0, "max_s": 0, "index": [4, 3], "counts": [1, 1]},
            "out of order",
        ),
        (
            {"count": 1, "sum_s": 0, "min_s": 0, "max_s": 0, "index": [10**9], "counts": [1]},
            "out of order or range",
        ),
        (
            {"count": 1, "sum_s": 0, "min_s": 0, "max_s": 0, "index": [1], "counts": [True]},
            "positive integers",
        ),
    ],
)
def test_a_malformed_histogram_is_named(doc: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Histogram.from_dict(doc)  # type: ignore[arg-type]


def test_sparse_histograms_add_up_to_the_histogram_of_all_values() -> None:
    rng = random.Random(3)
    a = [rng.expovariate(50) for _ in range(3000)]
    b = [rng.expovariate(5) for _ in range(1000)]
    summed = SparseHistogram.of(_hist(a)).plus(SparseHistogram.of(_hist(b)))
    _same(summed.summary(), _hist(a + b).summary())
    merged, whole = summed.to_dict(), _hist(a + b).to_dict()
    assert merged.pop("sum_s") == pytest.approx(whole.pop("sum_s"), rel=1e-12)
    assert merged == whole
    # a few hundred buckets, not 5,376 of them
    assert len(summed.index) < 1500


def _recorder_with_intervals(n: int) -> tuple[Recorder, Timeline]:
    rec = Recorder(SPECS, start=0.0)
    timeline = Timeline(max_points=8)
    for i in range(n):
        for j in range(10):
            rec.request_started()
            if j == 9:
                rec.record(Sample(1, 0, ErrorKind.READ_TIMEOUT, 0.5, 0.5, 10, 0))
            else:
                rec.record(
                    Sample(0, 200 if j else 503, NO_ERROR, 0.001 * (j + 1) * (i + 1), 0, 1, 1)
                )
        timeline.add(rec.snapshot(float(i + 1)))
    return rec, timeline


def test_a_timeline_stays_bounded_and_covers_the_whole_run() -> None:
    rec, timeline = _recorder_with_intervals(37)
    points = timeline.points
    assert len(points) <= 8
    # every interval is in exactly one point, in order, with nothing lost or doubled
    assert sum(p.span for p in points) == pytest.approx(37.0)
    assert points[-1].t == pytest.approx(37.0)
    assert all(a.t < b.t for a, b in pairwise(points))
    assert sum(p.requests for p in points) == 370
    assert sum(p.errors for p in points) == 37
    assert sum(p.status_codes.get(503, 0) for p in points) == 37
    assert sum(p.errors_by_kind.get("read_timeout", 0) for p in points) == 37
    # a downsampled point's percentiles are those of all its samples
    whole = points[0].latency.to_histogram()
    assert whole.count == sum(p.latency.count for p in points[:1])
    total = SparseHistogram()
    for p in points:
        total = total.plus(p.latency)
    _same(total.summary(), rec.snapshot(38.0).histogram.summary())


def test_a_timeline_round_trips_through_the_summary_json() -> None:
    _, timeline = _recorder_with_intervals(5)
    text = to_json({"timeline": timeline.to_dict()})
    back = Timeline.from_dict(json.loads(text)["timeline"])
    assert [p.to_dict() for p in back.points] == [p.to_dict() for p in timeline.points]
    # bucket lists stay on one line each: a day's report stays a few MB
    assert '"index": [' in text and '"counts": [' in text


def test_points_of_two_segments_add_up() -> None:
    a = TimelinePoint(
        t=1.0,
        span=1.0,
        requests=3,
        responses=3,
        status_codes={200: 3},
        in_flight=2,
        target_rate=50.0,
        latency=SparseHistogram.of(_hist([0.1] * 3)),
    )
    b = TimelinePoint(
        t=1.0,
        span=1.0,
        requests=2,
        responses=1,
        errors=1,
        status_codes={200: 1},
        errors_by_kind={"reset": 1},
        in_flight=1,
        target_rate=50.0,
        latency=SparseHistogram.of(_hist([0.2] * 2)),
    )
    both = a.plus(b)
    assert (both.requests, both.errors, both.in_flight, both.target_rate) == (5, 1, 3, 100.0)
    assert both.status_codes == {200: 4} and both.errors_by_kind == {"reset": 1}
    assert both.latency.count == 5 and both.latency.max == pytest.approx(0.2)


def _write(tmp_path: Path, doc: object, name: str = "s.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


def test_reading_back_a_summary_refuses_what_is_not_one(tmp_path: Path) -> None:
    cases = {
        "not JSON": "{nope",
        "no 'schema' key": {"requests": 1},
        "not a Ballista summary (schema 'k6/1')": {"schema": "k6/1"},
        "is not one this Ballista reads": {"schema": "ballista.summary/9"},
        "no 'latency_s'": {"schema": "ballista.summary/1", "requests": 1},
    }
    for message, doc in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            read_summary(_write(tmp_path, doc))
    with pytest.raises(ConfigError, match="no such file"):
        read_summary(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="is a directory"):
        read_summary(str(tmp_path))
    older = {"schema": "ballista.summary/1", "requests": 1, "latency_s": {}, "status_codes": {}}
    doc = read_summary(_write(tmp_path, older))
    with pytest.raises(ConfigError, match="no histograms"):
        histogram_of(doc, where="s.json")
    assert timeline_of(doc) is None
