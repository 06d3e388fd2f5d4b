"""`ballista merge`: summaries of segments merge into exactly what one process reports."""

from __future__ import annotations

import datetime as dt
import functools
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from servers import RunningTarget

from ballista.cli.main import main
from ballista.core.config import RequestSpec
from ballista.core.merge import SummaryPart, merge_summaries, merge_timelines
from ballista.core.outcome import NO_ERROR, ErrorKind, Sample
from ballista.core.recorder import Recorder
from ballista.core.runmeta import RunMeta
from ballista.core.snapshot import Snapshot
from ballista.core.timeline import Timeline
from ballista.observe.summary import summary_dict

SPECS = (
    RequestSpec("home", "GET", "/"),
    RequestSpec("cart", "POST", "/cart", expected=frozenset({201})),
    RequestSpec("search", "GET", "/search"),
)
START = dt.datetime(2026, 11, 30, 23, 0, 0, tzinfo=dt.UTC)
META = RunMeta(
    target="http://127.0.0.1:8080/",
    model="closed",
    protocol="HTTP/1.1",
    started_at=START,
    concurrency=30,
    connections=30,
    duration=6.0,
)


def _samples(n: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        request = rng.randrange(len(SPECS))
        # Latencies on a 1/4096 s grid: sums of them are exact in floating point,
        # so even the means must match to the last bit.
        latency = rng.choice((rng.randrange(1, 200), rng.randrange(1, 40_000))) / 4096
        if rng.random() < 0.05:
            kind = rng.choice((ErrorKind.READ_TIMEOUT, ErrorKind.RESET, ErrorKind.CONNECT_REFUSED))
            out.append(Sample(request, 0, kind, latency, latency, 100, 0))
        else:
            status = rng.choice((200, 200, 200, 201, 404, 503))
            out.append(Sample(request, status, NO_ERROR, latency, latency, 100, 900))
    return out


def _summaries(n: int, samples: list[Sample], intervals: int = 6) -> list[dict[str, Any]]:
    """Deal the samples round-robin to n recorders, snapshotting each second, as
    n segments of one test would see them."""
    recorders = [Recorder(SPECS, track_service_time=True, start=0.0) for _ in range(n)]
    timelines = [Timeline() for _ in recorders]
    per = len(samples) // intervals
    docs = []
    for tick in range(intervals):
        chunk = samples[tick * per : (tick + 1) * per]
        for i, sample in enumerate(chunk):
            rec = recorders[i % n]
            rec.request_started()
            rec.record(sample)
        recorders[tick % n].record_dropped(tick + 1)
        for j, (rec, timeline) in enumerate(zip(recorders, timelines, strict=True)):
            snap: Snapshot = rec.snapshot(float(tick + 1), final=tick == intervals - 1)
            timeline.add(snap)
            if snap.final:
                share = META.concurrency // n + (j < META.concurrency % n)  # type: ignore[operator]
                docs.append(summary_dict(snap, replace(META, concurrency=share), timeline))
    return docs


def _merged_doc(docs: list[dict[str, Any]]) -> dict[str, Any]:
    merged = merge_summaries([SummaryPart(f"part{i}.json", d) for i, d in enumerate(docs)])
    return summary_dict(merged.snapshot, merged.meta, merged.timeline)


def _without_bounds(doc: dict[str, Any]) -> dict[str, Any]:
    # The peak in flight of N processes is the sum of their peaks: a bound, not a merge.
    out: dict[str, Any] = json.loads(json.dumps(doc))
    del out["concurrency"]["max_in_flight"]
    return out


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_merged_summary_is_exactly_one_process(parts: int) -> None:
    samples = _samples(6_000, seed=parts)
    (whole,) = _summaries(1, samples)
    # Without the last snapshot's interval, the parts' final snapshots close an empty one.
    split = _summaries(parts, samples)
    merged = _merged_doc(split)
    assert merged["requests"] == 6_000
    assert merged["latency_s"]["p99"] > 0
    assert merged["service_time_s"]["p99"] > 0
    assert _without_bounds(merged) == _without_bounds(whole)


def test_timelines_of_different_resolutions_meet_on_the_coarser_grid() -> None:
    samples = _samples(800, seed=1)
    fine, coarse = Timeline(max_points=100), Timeline(max_points=4)
    recs = [Recorder(SPECS, start=0.0) for _ in range(2)]
    for tick in range(8):
        for i, sample in enumerate(samples[tick * 100 : (tick + 1) * 100]):
            recs[i % 2].request_started()
            recs[i % 2].record(sample)
        fine.add(recs[0].snapshot(float(tick + 1)))
        coarse.add(recs[1].snapshot(float(tick + 1)))
    assert {p.span for p in coarse.points} == {4.0}
    merged = merge_timelines([(0.0, fine), (0.0, coarse)])
    assert [(p.t, p.span) for p in merged.points] == [(4.0, 4.0), (8.0, 4.0)]
    assert sum(p.requests for p in merged.points) == 800


def _write(tmp_path: Path, name: str, doc: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def _segments(tmp_path: Path, n: int = 3, test: str = "t1") -> list[str]:
    docs = _summaries(n, _samples(900, seed=5))
    paths = []
    for i, doc in enumerate(docs):
        doc["segment"] = {"index": i, "count": n, "test": test}
        paths.append(_write(tmp_path, f"{test}-seg{i}.json", doc))
    return paths


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ballista: error:")
    return lines[0]


def test_merge_writes_one_summary_and_judges_thresholds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _segments(tmp_path)
    out = tmp_path / "merged.json"
    assert main(["merge", *paths, "--json", str(out), "--threshold", "error_rate<90%"]) == 0
    text = capsys.readouterr().out
    assert "requests     900" in text
    doc = json.loads(out.read_text())
    assert doc["requests"] == 900
    assert doc["merged"] == {
        "summaries": 3,
        "segments": [0, 1, 2],
        "count": 3,
        "test": "t1",
        "missing": [],
    }
    assert doc["thresholds"][0]["ok"] is True
    assert main(["merge", *paths, "-q", "--threshold", "p50<1ms"]) == 1
    assert capsys.readouterr().out == ""


def test_merge_refuses_what_cannot_merge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _segments(tmp_path)
    other = _segments(tmp_path, 3, "t2")
    not_json = _write(tmp_path, "x.json", {})
    (tmp_path / "garbage.json").write_text("{not json")
    old = json.loads(Path(paths[0]).read_text())
    del old["histograms"]
    old_path = _write(tmp_path, "old.json", old)
    future = dict(old, schema="ballista.summary/9")
    future_path = _write(tmp_path, "future.json", future)
    cases = [
        ([str(tmp_path / "garbage.json")], "not JSON"),
        ([not_json, paths[0]], "not a Ballista summary"),
        ([future_path, paths[0]], "summary/9"),
        ([old_path, paths[1], paths[2]], "no histograms"),
        ([paths[0], paths[1], other[2]], "another test"),
        ([paths[0], paths[0], paths[1]], "both segment 0/3"),
        ([paths[0], paths[2]], "segment 1/3 missing"),
        ([str(tmp_path / "nope.json")], "no such file"),
        ([*paths, "--json", paths[1]], "is one of the summaries merged"),
    ]
    for argv, needle in cases:
        assert main(["merge", *argv]) == 2, needle
        assert needle in _one_error(capsys)
    assert json.loads(Path(paths[1]).read_text())["segment"]["index"] == 1  # not overwritten
    whole = _write(
        tmp_path, "whole.json", json.loads(Path(paths[0]).read_text()) | {"segment": None}
    )
    assert main(["merge", whole, whole]) == 2
    assert "are the same run" in _one_error(capsys)
    assert main(["merge", paths[0], paths[2], "--partial", "--json", "-", "-q"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["merged"]["missing"] == [1]
    assert doc["requests"] == 600
    assert any("partial" in n for n in doc["notes"])


async def test_merge_of_real_processes_counts_what_the_target_saw(
    target: RunningTarget, tmp_path: Path
) -> None:
    paths = []
    async with trio.open_nursery() as nursery:
        for i, n in enumerate((150, 250)):
            path = tmp_path / f"run{i}.json"
            paths.append(str(path))
            argv = [sys.executable, "-m", "ballista", "run", target.url, "-c", "4", "-n", str(n)]
            nursery.start_soon(functools.partial(trio.run_process, [*argv, "-q", "--json", path]))
    out = tmp_path / "merged.json"
    assert main(["merge", *paths, "-q", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["requests"] == target.stats.requests == 400
    assert sum(doc["status_codes"].values()) + doc["errors"] == 400
    parts = [json.loads(await trio.Path(p).read_text()) for p in paths]
    assert doc["latency_s"]["max"] == max(p["latency_s"]["max"] for p in parts)
    assert sum(p["requests"] for p in doc["timeline"]["points"]) == 400


def test_segments_started_milliseconds_apart_share_their_points() -> None:
    recs = [Recorder(SPECS, start=0.0) for _ in range(2)]
    timelines = [Timeline(), Timeline()]
    samples = _samples(400, seed=2)
    for tick in range(4):
        for i, sample in enumerate(samples[tick * 100 : (tick + 1) * 100]):
            recs[i % 2].request_started()
            recs[i % 2].record(sample)
        # Ticks wake a little late, each process by its own amount; the last one is partial.
        for j, (rec, timeline) in enumerate(zip(recs, timelines, strict=True)):
            now = tick + 1 + 0.004 * (j + 1) - (0.6 if tick == 3 else 0.0)
            timeline.add(rec.snapshot(now, final=tick == 3))
    merged = merge_timelines([(0.0, timelines[0]), (0.003, timelines[1])])
    assert [p.requests for p in merged.points] == [100, 100, 100, 100]
    assert [round(p.t, 3) for p in merged.points] == [1.011, 2.011, 3.011, 3.411]


async def test_segments_run_as_processes_merge_to_what_the_target_saw(
    target: RunningTarget, tmp_path: Path
) -> None:
    start = f"{time.time() + 1.5:.3f}"
    paths = [str(tmp_path / f"seg{i}.json") for i in range(3)]
    async with trio.open_nursery() as nursery:
        for i, path in enumerate(paths):
            argv = [sys.executable, "-m", "ballista", "run", target.url, "-c", "5", "-n", "500"]
            argv += ["--segment", f"{i}/3", "--start-at", start, "-q", "--json", path]
            nursery.start_soon(functools.partial(trio.run_process, argv))
    out = tmp_path / "merged.json"
    assert main(["merge", *paths, "-q", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["requests"] == target.stats.requests == 500
    assert doc["concurrency"]["configured"] == 5
    assert doc["merged"]["segments"] == [0, 1, 2]
    parts = [json.loads(await trio.Path(p).read_text()) for p in paths]
    # The union of the segments' windows (a segment started late, on a busy machine,
    # makes it longer than the longest segment).
    first = min(p["started_at_unix"] for p in parts)
    end = max(p["started_at_unix"] + p["duration_s"] for p in parts)
    assert doc["duration_s"] == pytest.approx(end - first, abs=1e-5)
    assert doc["started_at_unix"] == first
