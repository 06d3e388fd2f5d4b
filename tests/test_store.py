"""The SQLite run store: intervals, downsampling, interruption, segments, final summaries."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from pathlib import Path

import pytest
import trio
from disks import StallingStore
from hypothesis import given, settings
from hypothesis import strategies as st

from ballista.core.histogram import Histogram, SparseHistogram
from ballista.daemon.history import History, IntervalQueue
from ballista.daemon.store import (
    Point,
    Store,
    StoreError,
    downsample,
    merge_points,
    pack_histogram,
    unpack_histogram,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def point(t: float, *, requests: int = 10, p99: float = 0.01, seg: int = 1) -> Point:
    return Point(
        t_start=t,
        t_end=t + 1,
        seg=seg,
        requests=requests,
        failed=1,
        errors=1,
        latency_p50=0.005,
        latency_p90=0.008,
        latency_p99=p99,
        latency_max=p99 * 2,
        in_flight=3,
        concurrency_limit=None,
        target_rate=None,
        status_codes={"200": requests - 1},
        errors_by_kind={"reset": 1},
    )


def new_run(store: Store, run_id: str = "r1", *, restart: bool = False) -> None:
    store.create_run(
        run_id,
        name="soak",
        source="api",
        restart=restart,
        scenario={"url": "http://127.0.0.1:1/", "headers": {"Authorization": "Bearer s"}},
        scenario_public={"url": "http://127.0.0.1:1/", "headers": {"Authorization": "<redacted>"}},
        target="http://127.0.0.1:1/",
    )


def test_intervals_are_stored_with_the_summary_so_far(tmp_path: Path) -> None:
    store = Store(tmp_path / "runs.db")
    new_run(store)
    for i in range(5):
        store.record_interval("r1", point(1000.0 + i), {"requests": 10 * (i + 1)})
    run = store.get_run("r1")
    assert run is not None
    assert run.status == "running"
    assert run.summary == {"requests": 50}
    assert [p.t_start for p in store.points("r1")] == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    assert store.points("r1")[0].errors_by_kind == {"reset": 1}


def test_downsampling_keeps_storage_bounded_and_counts_exact(tmp_path: Path) -> None:
    per_level = 8
    store = Store(tmp_path / "runs.db", points_per_level=per_level)
    new_run(store)
    n = 2000
    for i in range(n):
        store.record_interval("r1", point(float(i), p99=0.5 if i == 3 else 0.01), None)
    points = store.points("r1")
    # log2(2000 / 8) levels of at most `per_level` rows each
    assert store.point_count("r1") <= per_level * 10
    assert sum(p.requests for p in points) == 10 * n
    assert sum(p.errors_by_kind["reset"] for p in points) == n
    assert points[0].t_start == 0.0
    assert points[-1].t_end == float(n)
    # spans never overlap and cover the run
    for a, b in itertools.pairwise(points):
        assert a.t_end == b.t_start
    # a merged row never hides a slow stretch
    assert max(p.latency_p99 for p in points) == 0.5


def sampled(t: float, values: list[float], *, seg: int = 1, seq: int = 1) -> Point:
    """An interval that saw `values`, with its histogram, as the daemon stores it."""
    hist = Histogram()
    for v in values:
        hist.record(v)
    p50, p90, p99 = hist.percentiles((50.0, 90.0, 99.0))
    return Point(
        t_start=t,
        t_end=t + 1,
        seg=seg,
        requests=len(values),
        failed=0,
        errors=0,
        latency_p50=p50,
        latency_p90=p90,
        latency_p99=p99,
        latency_max=hist.max,
        in_flight=1,
        concurrency_limit=None,
        target_rate=None,
        status_codes={"200": len(values)},
        errors_by_kind={},
        seq=seq,
        histogram=SparseHistogram.of(hist),
    )


def test_merged_percentiles_are_those_of_all_the_samples(tmp_path: Path) -> None:
    # A slow interval of few requests beside a fast one of many: its p99 is not
    # the p99 of the two together, which a max of p99s would report.
    slow = [0.100] * 10
    fast = [0.001 + i * 1e-6 for i in range(990)]
    both = Histogram()
    for v in slow + fast:
        both.record(v)
    a, b = sampled(0.0, slow), sampled(1.0, fast, seq=2)
    assert max(a.latency_p99, b.latency_p99) == pytest.approx(0.100, rel=0.01)
    merged = merge_points(a, b)
    assert merged.latency_p99 == both.percentile(99.0)
    assert merged.latency_p50 == both.percentile(50.0)
    assert merged.latency_p99 < 0.002
    assert merged.seq == 2

    # the same through the store: compaction merges rows, a query merges spans
    store = Store(tmp_path / "runs.db", points_per_level=4)
    new_run(store)
    every = Histogram()
    for i in range(40):
        values = slow if i == 5 else fast[: 50 + i]
        for v in values:
            every.record(v)
        store.record_interval("r1", sampled(float(i), values, seq=i + 1), None)
    stored = store.points("r1")
    assert all(p.histogram is not None for p in stored)
    (one,) = store.points("r1", max_points=1)
    assert one.requests == every.count
    assert one.latency_p99 == every.percentile(99.0)
    assert one.latency_p90 == every.percentile(90.0)
    assert one.latency_max == every.max
    assert one.seq == 40
    assert max(p.latency_p99 for p in stored) == pytest.approx(0.100, rel=0.01)
    assert one.latency_p99 < 0.002


def test_points_of_a_time_range_at_a_resolution(tmp_path: Path) -> None:
    store = Store(tmp_path / "runs.db")
    new_run(store)
    for i in range(100):
        store.record_interval("r1", sampled(float(i), [0.001 * (1 + i % 7)] * 5, seq=i + 1), None)
    recent = store.points("r1", start=90.0)
    assert [p.t_start for p in recent] == [float(i) for i in range(90, 100)]
    window = store.points("r1", start=10.0, end=20.0)
    assert [p.t_start for p in window] == [float(i) for i in range(10, 20)]
    coarse = store.points("r1", max_points=10)
    assert len(coarse) == 10
    assert sum(p.requests for p in coarse) == 500
    assert [p.t_start for p in coarse] == [float(i) for i in range(0, 100, 10)]
    assert coarse[-1].t_end == 100.0


def test_the_recent_past_keeps_its_resolution(tmp_path: Path) -> None:
    store = Store(tmp_path / "runs.db")
    new_run(store)
    for i in range(100):
        store.record_interval("r1", sampled(float(i), [0.001] * 5, seq=i), None)
    shown = store.points("r1", max_points=20, recent=10.0)
    # the last 10 s as stored, the 90 s before in the other 10 points
    assert [p.t_start for p in shown[-10:]] == [float(i) for i in range(90, 100)]
    assert len(shown) == 20
    assert sum(p.requests for p in shown) == 500
    assert shown[0].t_start == 0.0 and shown[9].t_end == 90.0
    # more recent points than half the budget: those are merged too
    assert len(store.points("r1", max_points=20, recent=60.0)) <= 21


def test_downsampling_never_merges_across_segments() -> None:
    points = [sampled(float(i), [0.001], seg=1 if i < 5 else 2) for i in range(10)]
    merged = downsample(points, 1)
    assert [(p.seg, p.requests) for p in merged] == [(1, 5), (2, 5)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1e4, allow_nan=False), max_size=300))
def test_packed_histograms_read_back_exactly(values: list[float]) -> None:
    hist = Histogram()
    for v in values:
        hist.record(v)
    sparse = SparseHistogram.of(hist)
    back = unpack_histogram(pack_histogram(sparse))
    assert back.to_dict() == sparse.to_dict()


def test_a_damaged_histogram_costs_only_its_point(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a packed histogram"):
        unpack_histogram(b"garbage")
    store = Store(tmp_path / "runs.db")
    new_run(store)
    store.record_interval("r1", sampled(0.0, [0.001] * 3), None)
    store._db.execute("UPDATE points SET histogram = x'00ff'")
    (p,) = store.points("r1")
    assert p.histogram is None
    assert p.requests == 3


def test_rows_of_an_older_version_are_still_served(tmp_path: Path) -> None:
    # The points table as the first version wrote it: no seq, no histogram.
    path = tmp_path / "runs.db"
    store = Store(path)
    new_run(store)
    store.close()
    db = sqlite3.connect(path)
    db.executescript(
        """
        DROP TABLE points;
        CREATE TABLE points (
            run_id TEXT NOT NULL REFERENCES runs (id), level INTEGER NOT NULL,
            t_start REAL NOT NULL, t_end REAL NOT NULL, seg INTEGER NOT NULL,
            requests INTEGER NOT NULL, failed INTEGER NOT NULL, errors INTEGER NOT NULL,
            latency_p50 REAL NOT NULL, latency_p90 REAL NOT NULL, latency_p99 REAL NOT NULL,
            latency_max REAL NOT NULL, in_flight INTEGER NOT NULL, concurrency_limit INTEGER,
            target_rate REAL, status_codes TEXT NOT NULL, errors_by_kind TEXT NOT NULL);
        INSERT INTO points VALUES ('r1', 0, 0.0, 1.0, 1, 10, 0, 0, 0.005, 0.008, 0.01, 0.02,
            1, NULL, NULL, '{"200": 10}', '{}');
        """
    )
    db.close()
    store = Store(path)
    store.record_interval("r1", sampled(1.0, [0.001] * 10, seq=5), None)
    old, new = store.points("r1")
    assert (old.seq, old.histogram, old.latency_p99) == (None, None, 0.01)
    assert new.seq == 5 and new.histogram is not None
    # merged with an old row: no histogram to add up, so the worse tail is kept
    (both,) = store.points("r1", max_points=1)
    assert both.requests == 20
    assert both.histogram is None
    assert both.latency_p99 == 0.01
    assert old.as_dict()["latency_s"]["p99"] == 0.01


def test_merge_points_adds_counts_and_keeps_the_worst_tail() -> None:
    merged = merge_points(point(0.0, requests=10, p99=0.1), point(1.0, requests=30, p99=0.2))
    assert merged.requests == 40
    assert merged.t_start == 0.0
    assert merged.t_end == 2.0
    assert merged.latency_p99 == 0.2
    assert merged.status_codes == {"200": 38}


def test_a_finished_summary_is_never_changed(tmp_path: Path) -> None:
    store = Store(tmp_path / "runs.db")
    new_run(store)
    store.record_interval("r1", point(0.0), {"requests": 10})
    assert store.end_run("r1", "finished", {"requests": 12})
    # later writes are refused or ignored
    assert not store.end_run("r1", "stopped", {"requests": 99})
    store.record_interval("r1", point(1.0), {"requests": 99})
    assert store.mark_interrupted() == []
    run = store.get_run("r1")
    assert run is not None
    assert run.status == "finished"
    assert run.summary == {"requests": 12}
    with pytest.raises(sqlite3.IntegrityError):
        store._db.execute("UPDATE runs SET summary = '{}' WHERE id = 'r1'")


def test_restart_marks_active_runs_interrupted_and_resumes_segments(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "runs.db"
    store = Store(path, clock=clock)
    new_run(store, "soak1", restart=True)
    new_run(store, "oneoff")
    store.record_interval("soak1", point(clock.now), {"requests": 10})
    store.close()  # as if killed: nothing else written

    clock.now += 60
    store = Store(path, clock=clock)
    assert sorted(store.mark_interrupted()) == ["oneoff", "soak1"]
    soak = store.get_run("soak1")
    assert soak is not None
    assert soak.status == "interrupted"
    assert soak.summary == {"requests": 10}
    assert soak.ended_at == point(clock.now - 60).t_end  # the last interval written
    assert store.resume_run("soak1") == 2
    store.record_interval("soak1", point(clock.now, seg=2), {"requests": 5})
    resumed = store.get_run("soak1")
    assert resumed is not None
    assert resumed.status == "running"
    assert resumed.segments == 2
    segs = store.segments("soak1")
    assert [(s["segment"], s["status"], s["requests"]) for s in segs] == [
        (1, "interrupted", 10),
        (2, "running", 5),
    ]
    assert [p.seg for p in store.points("soak1")] == [1, 2]
    with pytest.raises(ValueError, match="not interrupted"):
        store.resume_run("soak1")


def test_reads_see_the_last_commit_while_a_write_is_stuck(tmp_path: Path) -> None:
    store = StallingStore(tmp_path / "runs.db")
    new_run(store)
    store.record_interval("r1", point(0.0), {"requests": 10})
    store.armed = True
    writer = threading.Thread(
        target=store.record_interval, args=("r1", point(1.0), {"requests": 20})
    )
    writer.start()
    try:
        assert store.stalled.wait(10)
        # the write holds SQLite's write lock, its rows not committed: reads go on,
        # and see the state before it
        run = store.get_run("r1")
        assert run is not None
        assert run.summary == {"requests": 10}
        assert [p.t_start for p in store.points("r1")] == [0.0]
        assert [r.id for r in store.list_runs()] == ["r1"]
        assert store.segments("r1")[0]["requests"] == 10
    finally:
        store.release.set()
        writer.join(10)
    assert not writer.is_alive()
    run = store.get_run("r1")
    assert run is not None
    assert run.summary == {"requests": 20}
    assert store.point_count("r1") == 2


def test_a_database_of_another_schema_version_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"runs\.db: written by another version of Ballista"):
        Store(path)
    assert path.read_bytes() == before


def test_an_empty_file_becomes_a_new_database(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"")
    store = Store(path)
    new_run(store)
    assert [r.id for r in store.list_runs()] == ["r1"]


async def test_a_run_ending_mid_write_still_writes_every_queued_interval(tmp_path: Path) -> None:
    """The run ends (its writer is cancelled) while the disk holds one interval:
    that one and those queued behind it are written by the last flush, once each."""
    store = StallingStore(tmp_path / "runs.db")
    new_run(store)
    history = History(store)
    queue = IntervalQueue(history, "r1", lambda: {"requests": 50})
    for i in range(5):
        queue.put(point(float(i)))
    store.armed = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.write_forever)
        assert await trio.to_thread.run_sync(store.stalled.wait, 10)
        nursery.cancel_scope.cancel()
        store.armed = False
        store.release.set()
    await queue.flush()
    assert [p.t_start for p in store.points("r1")] == [0.0, 1.0, 2.0, 3.0, 4.0]
    run = store.get_run("r1")
    assert run is not None
    assert run.summary == {"requests": 50}
