"""The SQLite run store: intervals, downsampling, interruption, segments, final summaries."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from pathlib import Path

import pytest
import trio
from disks import StallingStore

from ballista.daemon.history import History, IntervalQueue
from ballista.daemon.store import Point, Store, StoreError, merge_points


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
