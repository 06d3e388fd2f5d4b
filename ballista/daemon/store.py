"""The daemon's run history in SQLite: runs, their segments and per-interval figures.

Every interval is one transaction (a row of figures plus the summary so far),
so a daemon killed with SIGKILL loses at most the interval it was writing.
Interval rows are downsampled as a run gets long: each resolution level keeps
at most `points_per_level` rows, and the two oldest rows of a full level merge
into one row of the next level (twice as wide). Storage per run is bounded by
`points_per_level * levels`, and levels grow with the logarithm of run length.
Each row keeps its interval's latency histogram (sparse, packed), so a merged
row's percentiles, and those of any span a reader asks for, are real ones.
A finished run's summary is final: a trigger refuses any later change.
Writes go through one connection, reads through another (WAL mode), so a read
never waits for a write in progress. A file that is not a Ballista database is
refused, never changed.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import struct
import sys
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import compress
from operator import add
from pathlib import Path
from typing import Any, TypeVar

from ballista.core.errors import ConfigError
from ballista.core.histogram import Histogram, SparseHistogram

SCHEMA_VERSION = 1

#: Columns added to `points` since schema 1 was first written: a database of an
#: older Ballista gains them (NULL in its rows), and older versions ignore them.
_ADDED_POINT_COLUMNS = (("seq", "INTEGER"), ("histogram", "BLOB"))

#: Run states. Final states never change again; `interrupted` runs with
#: `restart = true` resume as a new segment.
ACTIVE_STATES = ("running", "stopping")
FINAL_STATES = ("finished", "stopped", "failed")
ALL_STATES = (*ACTIVE_STATES, *FINAL_STATES, "interrupted")

DEFAULT_POINTS_PER_LEVEL = 720

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,           -- 'api' or 'config'
    restart INTEGER NOT NULL DEFAULT 0,
    scenario TEXT NOT NULL,         -- the scenario as submitted (JSON), secrets included
    scenario_public TEXT NOT NULL,  -- the same with secret headers redacted
    target TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ended_at REAL,
    reason TEXT,
    summary TEXT                    -- ballista.summary/1 so far, final once the run ends
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status);
CREATE TABLE IF NOT EXISTS segments (
    run_id TEXT NOT NULL REFERENCES runs (id),
    seg INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL,
    summary TEXT,
    PRIMARY KEY (run_id, seg)
);
CREATE TABLE IF NOT EXISTS points (
    run_id TEXT NOT NULL REFERENCES runs (id),
    level INTEGER NOT NULL,
    t_start REAL NOT NULL,          -- unix time
    t_end REAL NOT NULL,
    seg INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    latency_p50 REAL NOT NULL,
    latency_p90 REAL NOT NULL,
    latency_p99 REAL NOT NULL,
    latency_max REAL NOT NULL,
    in_flight INTEGER NOT NULL,
    concurrency_limit INTEGER,
    target_rate REAL,
    status_codes TEXT NOT NULL,
    errors_by_kind TEXT NOT NULL,
    seq INTEGER,                    -- the last snapshot in it (NULL in rows of older versions)
    histogram BLOB                  -- its latency histogram, packed (NULL in older rows)
);
CREATE INDEX IF NOT EXISTS points_by_run ON points (run_id, level, t_start);
CREATE TRIGGER IF NOT EXISTS final_summary_is_final
BEFORE UPDATE ON runs
WHEN OLD.status IN ('finished', 'stopped', 'failed')
BEGIN
    SELECT RAISE(ABORT, 'a finished run is never changed');
END;
"""


@dataclass(slots=True)
class _Span:
    """A histogram as its buckets from `first` on, zeros included: two add up with
    one C-speed `map(add, ...)`, where a sparse form costs a Python step per bucket."""

    first: int
    counts: list[int]
    count: int
    total: float
    low: float
    high: float

    @classmethod
    def of(cls, hist: SparseHistogram) -> _Span:
        if not hist.count:
            return cls(0, [], 0, 0.0, 0.0, 0.0)
        first = hist.index[0]
        counts = [0] * (hist.index[-1] + 1 - first)
        for i, n in zip(hist.index, hist.counts, strict=True):
            counts[i - first] = n
        return cls(first, counts, hist.count, hist.total, hist.min, hist.max)

    def sparse(self) -> SparseHistogram:
        first = self.first
        return SparseHistogram(
            tuple(compress(range(first, first + len(self.counts)), self.counts)),
            tuple(filter(None, self.counts)),
            count=self.count,
            total=self.total,
            low=self.low,
            high=self.high,
        )


def _add_spans(spans: Sequence[_Span]) -> _Span:
    seen = [s for s in spans if s.count]
    if not seen:
        return _Span(0, [], 0, 0.0, 0.0, 0.0)
    low = min(s.first for s in seen)
    counts = [0] * (max(s.first + len(s.counts) for s in seen) - low)
    for s in seen:
        at = s.first - low
        end = at + len(s.counts)
        counts[at:end] = map(add, counts[at:end], s.counts)
    return _Span(
        low,
        counts,
        sum(s.count for s in seen),
        sum(s.total for s in seen),
        min(s.low for s in seen),
        max(s.high for s in seen),
    )


#: A packed histogram's head: version, count, sum, min, max, first bucket, buckets.
_HEAD = struct.Struct("<BQdddII")


def pack_histogram(hist: SparseHistogram) -> bytes:
    """A sparse histogram as a small blob: zlib over a fixed head and its buckets
    from the first non-empty one to the last as little-endian 64-bit counts, zeros
    included. Runs of zeros compress to almost nothing, and reading it back is a
    copy, not a parse: a query over a day of points decodes thousands."""
    span = _Span.of(hist)
    counts = array("Q", span.counts)
    if sys.byteorder != "little":
        counts.byteswap()
    head = _HEAD.pack(
        _PACK_VERSION, span.count, span.total, span.low, span.high, span.first, len(counts)
    )
    return zlib.compress(head + counts.tobytes(), 6)


def _unpack(blob: bytes) -> _Span:
    try:
        raw = zlib.decompress(blob)
        version, count, total, low, high, first, n = _HEAD.unpack_from(raw)
    except (zlib.error, struct.error) as exc:
        raise ValueError(f"not a packed histogram: {exc}") from None
    if version != _PACK_VERSION:
        raise ValueError(f"packed histogram of unknown version {version!r}")
    counts = array("Q")
    body = raw[_HEAD.size :]
    if len(body) != 8 * n or first + n > _BUCKETS:
        raise ValueError("not a packed histogram: its buckets do not add up")
    counts.frombytes(body)
    if sys.byteorder != "little":
        counts.byteswap()
    if sum(counts) != count:
        raise ValueError("not a packed histogram: its buckets do not add up")
    return _Span(first, counts.tolist(), count, total, low, high)


def unpack_histogram(blob: bytes) -> SparseHistogram:
    """`pack_histogram` read back; ValueError when the blob is not one."""
    return _unpack(blob).sparse()


def _bucket_count() -> int:
    # The layout's top bucket takes everything from ~78 h up: one past it is the count.
    hist = Histogram()
    hist.record(1e9)
    top: int = hist.to_dict()["index"][0]
    return top + 1


#: Buckets of the histogram layout (HISTOGRAM_LAYOUT): every index is below it.
_BUCKETS = _bucket_count()
_PACK_VERSION = 1


@dataclass(frozen=True, slots=True)
class Point:
    """Figures of one interval (or of several merged intervals)."""

    t_start: float
    t_end: float
    seg: int
    requests: int
    failed: int
    errors: int
    latency_p50: float
    latency_p90: float
    latency_p99: float
    latency_max: float
    in_flight: int
    concurrency_limit: int | None
    target_rate: float | None
    status_codes: Mapping[str, int]
    errors_by_kind: Mapping[str, int]
    #: the last snapshot in it (None in rows of older versions)
    seq: int | None = None
    #: its latency histogram (None in rows of older versions)
    histogram: SparseHistogram | None = None

    def as_dict(self, *, histogram: bool = False) -> dict[str, Any]:
        width = self.t_end - self.t_start
        out = {
            # microseconds: two intervals a late tick left close together keep distinct times
            "t_start": round(self.t_start, 6),
            "t_end": round(self.t_end, 6),
            "segment": self.seg,
            "seq": self.seq,
            "requests": self.requests,
            "failed": self.failed,
            "errors": self.errors,
            "rps": round(self.requests / width, 3) if width > 0 else 0.0,
            "latency_s": {
                "p50": self.latency_p50,
                "p90": self.latency_p90,
                "p99": self.latency_p99,
                "max": self.latency_max,
            },
            "in_flight": self.in_flight,
            "concurrency_limit": self.concurrency_limit,
            "target_rate": self.target_rate,
            "status_codes": dict(self.status_codes),
            "errors_by_kind": dict(self.errors_by_kind),
        }
        if histogram:
            out["histogram"] = None if self.histogram is None else self.histogram.to_dict()
        return out


def merge_points(a: Point, b: Point) -> Point:
    """Two adjacent points as one (`b` the later): `merge_all((a, b))`."""
    return merge_all((a, b))


def merge_all(points: Sequence[Point], histogram: SparseHistogram | None = None) -> Point:
    """Adjacent points (oldest first) as one. Counts and histograms add, and the
    percentiles are those of the summed histogram: real ones. Rows of older
    versions carry no histogram: then the merged p90 and p99 are the worst of
    them (over-stating, never hiding, a slow stretch) and the median is weighted
    by requests. `histogram`: their histograms' sum, when the caller has it already."""
    if len(points) == 1 and histogram is None:
        return points[0]
    last = points[-1]
    requests = sum(p.requests for p in points)
    codes: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for p in points:
        for k, v in p.status_codes.items():
            codes[k] = codes.get(k, 0) + v
        for k, v in p.errors_by_kind.items():
            kinds[k] = kinds.get(k, 0) + v
    hists = [p.histogram for p in points if p.histogram is not None]
    hist = histogram
    if hist is None and len(hists) == len(points):
        hist = _add_spans([_Span.of(h) for h in hists]).sparse()
    if hist is not None:
        p50, p90, p99 = hist.percentiles((50.0, 90.0, 99.0)) if hist.count else (0.0,) * 3
    else:
        p50 = (
            sum(p.latency_p50 * p.requests for p in points) / requests
            if requests
            else max(p.latency_p50 for p in points)
        )
        p90 = max(p.latency_p90 for p in points)
        p99 = max(p.latency_p99 for p in points)
    seqs = [p.seq for p in points if p.seq is not None]
    return Point(
        t_start=min(p.t_start for p in points),
        t_end=max(p.t_end for p in points),
        seg=last.seg,
        requests=requests,
        failed=sum(p.failed for p in points),
        errors=sum(p.errors for p in points),
        latency_p50=p50,
        latency_p90=p90,
        latency_p99=p99,
        latency_max=max(p.latency_max for p in points),
        in_flight=max(p.in_flight for p in points),
        concurrency_limit=last.concurrency_limit,
        target_rate=last.target_rate,
        status_codes=codes,
        errors_by_kind=kinds,
        seq=seqs[-1] if seqs else None,
        histogram=hist,
    )


def downsample(points: Sequence[Point], max_points: int) -> list[Point]:
    """At most about `max_points` points over the same time: adjacent points merge
    into spans of equal width (never across segments, a daemon's downtime lies
    between them). Counts add up exactly; percentiles come from the merged
    histograms. Points already wider than a span stay as they are."""
    if len(points) <= max_points:
        return list(points)
    return [merge_all(g) for g in spans(points, max_points, lambda p: (p.t_start, p.t_end, p.seg))]


T = TypeVar("T")


def spans(
    items: Sequence[T], max_points: int, times: Callable[[T], tuple[float, float, int]]
) -> list[list[T]]:
    """`items` (oldest first) grouped into at most about `max_points` spans of equal
    width, by start time, never across segments. `times` gives (start, end, segment)."""
    if not items:
        return []
    first = times(items[0])[0]
    width = (times(items[-1])[1] - first) / max(1, max_points)
    if width <= 0:
        return [[item] for item in items]
    groups: list[list[T]] = []
    key: tuple[int, int] | None = None
    for item in items:
        start, _, seg = times(item)
        k = (seg, math.floor((start - first) / width))
        if k == key:
            groups[-1].append(item)
        else:
            groups.append([item])
            key = k
    return groups


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run as stored."""

    id: str
    name: str
    status: str
    source: str
    restart: bool
    scenario: Mapping[str, Any]
    scenario_public: Mapping[str, Any]
    target: str
    created_at: float
    updated_at: float
    ended_at: float | None
    reason: str | None
    summary: Mapping[str, Any] | None
    segments: int

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATES


_POINT_COLS = (
    "t_start, t_end, seg, requests, failed, errors, latency_p50, latency_p90, "
    "latency_p99, latency_max, in_flight, concurrency_limit, target_rate, "
    "status_codes, errors_by_kind, seq, histogram"
)
_POINT_PLACEHOLDERS = ", ".join("?" * 19)


def _point_from_row(row: sqlite3.Row | tuple[Any, ...], *, histogram: bool = True) -> Point:
    """A stored row as a Point; its histogram decoded only if asked (a point shown
    as it is needs its stored percentiles, not its histogram)."""
    return Point(
        t_start=row[0],
        t_end=row[1],
        seg=row[2],
        requests=row[3],
        failed=row[4],
        errors=row[5],
        latency_p50=row[6],
        latency_p90=row[7],
        latency_p99=row[8],
        latency_max=row[9],
        in_flight=row[10],
        concurrency_limit=row[11],
        target_rate=row[12],
        status_codes=json.loads(row[13]),
        errors_by_kind=json.loads(row[14]),
        seq=row[15],
        histogram=_histogram_of(row[16]) if histogram else None,
    )


def _summed(blobs: Sequence[bytes | None]) -> SparseHistogram | None:
    """The sum of stored histograms; None if any row has none (or a damaged one)."""
    try:
        if all(b is not None for b in blobs):
            return _add_spans([_unpack(b) for b in blobs if b is not None]).sparse()
    except ValueError:
        pass
    return None


def _histogram_of(blob: bytes | None) -> SparseHistogram | None:
    if blob is None:
        return None
    try:
        return unpack_histogram(blob)
    except ValueError:
        # A damaged blob costs that point its real percentiles, not the whole run.
        return None


def _point_values(run_id: str, level: int, p: Point) -> tuple[Any, ...]:
    return (
        run_id,
        level,
        p.t_start,
        p.t_end,
        p.seg,
        p.requests,
        p.failed,
        p.errors,
        p.latency_p50,
        p.latency_p90,
        p.latency_p99,
        p.latency_max,
        p.in_flight,
        p.concurrency_limit,
        p.target_rate,
        json.dumps(dict(p.status_codes), sort_keys=True),
        json.dumps(dict(p.errors_by_kind), sort_keys=True),
        p.seq,
        None if p.histogram is None else pack_histogram(p.histogram),
    )


def _statements(script: str) -> Iterator[str]:
    """A script's statements one by one: `executescript` would commit the
    transaction they must run in."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""


class StoreError(ConfigError):
    """The database file cannot be used: one line naming the file and why."""


def _inspect(db: sqlite3.Connection, path: Path) -> None:
    """Refuse a file that is not (or not yet) a Ballista database, before anything
    writes to it: a file with tables but not ours, or of another schema version."""
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        version = None
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            version = None if row is None else row[0]
    except sqlite3.OperationalError as exc:
        raise StoreError(f"{path}: cannot open: {exc}") from None
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise StoreError(f"{path}: not a Ballista database (not an SQLite file)") from None
        raise StoreError(f"{path}: damaged database: {exc}") from None
    if version is None:
        if tables:
            names = ", ".join(sorted(tables)[:8]) + (", ..." if len(tables) > 8 else "")
            raise StoreError(f"{path}: not a Ballista database (it has tables {names})")
        return
    if str(version) != str(SCHEMA_VERSION):
        raise StoreError(
            f"{path}: written by another version of Ballista "
            f"(schema {version}; this one knows {SCHEMA_VERSION})"
        )


class Store:
    """SQLite under the data dir. Synchronous: each call is one short transaction
    or one query. Callers on an event loop call it from worker threads (the
    daemon's History does); writes take turns on one connection, reads take turns
    on another and see the last committed state, whatever a write is doing."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        points_per_level: int = DEFAULT_POINTS_PER_LEVEL,
        clock: Any = time.time,
    ) -> None:
        self.path = Path(path)
        self.points_per_level = max(2, points_per_level)
        self._clock = clock
        if self.path.exists() and not self.path.is_file():
            kind = "a directory" if self.path.is_dir() else "not a regular file"
            raise StoreError(f"{self.path}: not a Ballista database (it is {kind})")
        self._db = self._connect()
        try:
            _inspect(self._db, self.path)
            self._setup()
            self._reader = self._connect()
            self._reader.execute("PRAGMA query_only=ON")
            self._reader.execute("PRAGMA cache_size=-512")
        except BaseException:
            self._db.close()
            raise
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open: {exc}") from None

    def _setup(self) -> None:
        db = self._db
        try:
            # WAL + synchronous=NORMAL: a committed interval survives a killed
            # process (only a power loss may drop the newest transactions), and
            # readers see the last commit while a write is in progress.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            # A small page cache (512 KiB): writes touch the newest rows only, and the
            # daemon's memory must not grow with the database (SQLite's default is 2 MiB).
            db.execute("PRAGMA cache_size=-512")
            db.execute("BEGIN IMMEDIATE")
            try:
                # Checked again under the write lock: another process may have
                # created tables since the first look.
                _inspect(db, self.path)
                for statement in _statements(_DDL):
                    db.execute(statement)
                have = {r[1] for r in db.execute("PRAGMA table_info(points)")}
                for name, kind in _ADDED_POINT_COLUMNS:
                    if name not in have:
                        db.execute(f"ALTER TABLE points ADD COLUMN {name} {kind}")
                db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                    (str(SCHEMA_VERSION),),
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open: {exc}") from None

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        with self._lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._commit(db)

    def _commit(self, db: sqlite3.Connection) -> None:
        # Where a write meets the disk (the WAL append and, with it, any fsync):
        # the step a slow or stalled disk makes slow.
        db.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    # -- runs -----------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        *,
        name: str,
        source: str,
        restart: bool,
        scenario: Mapping[str, Any],
        scenario_public: Mapping[str, Any],
        target: str,
    ) -> None:
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (id, name, status, source, restart, scenario, scenario_public,"
                " target, created_at, updated_at) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    name,
                    source,
                    int(restart),
                    json.dumps(scenario),
                    json.dumps(scenario_public),
                    target,
                    now,
                    now,
                ),
            )
            db.execute(
                "INSERT INTO segments (run_id, seg, started_at, status) VALUES (?, 1, ?, 'running')",
                (run_id, now),
            )

    def resume_run(self, run_id: str) -> int:
        """An interrupted run goes on as a new segment; returns its number."""
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row[0] != "interrupted":
                raise ValueError(f"run {run_id} is not interrupted")
            (last,) = db.execute(
                "SELECT COALESCE(MAX(seg), 0) FROM segments WHERE run_id = ?", (run_id,)
            ).fetchone()
            seg = int(last) + 1
            db.execute(
                "INSERT INTO segments (run_id, seg, started_at, status) VALUES (?, ?, ?, 'running')",
                (run_id, seg, now),
            )
            db.execute(
                "UPDATE runs SET status = 'running', ended_at = NULL, reason = NULL,"
                " updated_at = ? WHERE id = ?",
                (now, run_id),
            )
        return seg

    def record_interval(self, run_id: str, point: Point, summary: Mapping[str, Any] | None) -> None:
        """One interval: its figures, downsampling if a level is full, and the
        summary so far, in one transaction."""
        with self._tx() as db:
            db.execute(
                f"INSERT INTO points (run_id, level, {_POINT_COLS}) VALUES ({_POINT_PLACEHOLDERS})",
                _point_values(run_id, 0, point),
            )
            self._compact(db, run_id)
            if summary is not None:
                text = json.dumps(summary)
                now = self._clock()
                db.execute(
                    "UPDATE runs SET summary = ?, updated_at = ? WHERE id = ? AND status IN"
                    " ('running', 'stopping')",
                    (text, now, run_id),
                )
                db.execute(
                    "UPDATE segments SET summary = ? WHERE run_id = ? AND status = 'running'",
                    (text, run_id),
                )

    def _compact(self, db: sqlite3.Connection, run_id: str) -> None:
        level = 0
        while True:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM points WHERE run_id = ? AND level = ?", (run_id, level)
            ).fetchone()
            if count <= self.points_per_level:
                return
            rows = db.execute(
                f"SELECT rowid, {_POINT_COLS} FROM points WHERE run_id = ? AND level = ?"
                " ORDER BY t_start LIMIT 2",
                (run_id, level),
            ).fetchall()
            merged = merge_points(_point_from_row(rows[0][1:]), _point_from_row(rows[1][1:]))
            db.execute("DELETE FROM points WHERE rowid IN (?, ?)", (rows[0][0], rows[1][0]))
            db.execute(
                f"INSERT INTO points (run_id, level, {_POINT_COLS}) VALUES ({_POINT_PLACEHOLDERS})",
                _point_values(run_id, level + 1, merged),
            )
            level += 1

    def end_run(
        self,
        run_id: str,
        status: str,
        summary: Mapping[str, Any] | None,
        *,
        reason: str | None = None,
    ) -> bool:
        """The run's last write: its status, its final summary. False if it had already
        ended (a final summary is never replaced)."""
        if status not in (*FINAL_STATES, "interrupted"):
            raise ValueError(f"not an end state: {status!r}")
        now = self._clock()
        text = None if summary is None else json.dumps(summary)
        with self._tx() as db:
            cur = db.execute(
                "UPDATE runs SET status = ?, summary = COALESCE(?, summary), reason = ?,"
                " ended_at = ?, updated_at = ? WHERE id = ? AND status IN ('running', 'stopping')",
                (status, text, reason, now, now, run_id),
            )
            db.execute(
                "UPDATE segments SET status = ?, ended_at = ?, summary = COALESCE(?, summary)"
                " WHERE run_id = ? AND status = 'running'",
                (status, now, text, run_id),
            )
            return cur.rowcount == 1

    def fail_interrupted(self, run_id: str, reason: str) -> bool:
        """An interrupted run that cannot be resumed becomes `failed`, with the reason,
        so no later start tries it again. False if it was not interrupted."""
        now = self._clock()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE runs SET status = 'failed', reason = ?, updated_at = ?"
                " WHERE id = ? AND status = 'interrupted'",
                (reason, now, run_id),
            )
            return cur.rowcount == 1

    def mark_interrupted(self) -> list[str]:
        """At start-up: runs still marked active belonged to a daemon that died.
        They keep their data up to the kill and become `interrupted`."""
        now = self._clock()
        with self._tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM runs WHERE status IN ('running', 'stopping') ORDER BY created_at"
                )
            ]
            for run_id in ids:
                (last,) = db.execute(
                    "SELECT MAX(t_end) FROM points WHERE run_id = ?", (run_id,)
                ).fetchone()
                db.execute(
                    "UPDATE runs SET status = 'interrupted', reason = 'daemon died while it ran',"
                    " ended_at = ?, updated_at = ? WHERE id = ?",
                    (last or now, now, run_id),
                )
                db.execute(
                    "UPDATE segments SET status = 'interrupted', ended_at = ? WHERE run_id = ?"
                    " AND status = 'running'",
                    (last or now, run_id),
                )
        return ids

    # -- reading --------------------------------------------------------------

    def _row(self, r: tuple[Any, ...]) -> RunRow:
        return RunRow(
            id=r[0],
            name=r[1],
            status=r[2],
            source=r[3],
            restart=bool(r[4]),
            scenario=json.loads(r[5]),
            scenario_public=json.loads(r[6]),
            target=r[7],
            created_at=r[8],
            updated_at=r[9],
            ended_at=r[10],
            reason=r[11],
            summary=None if r[12] is None else json.loads(r[12]),
            segments=r[13],
        )

    _SELECT = (
        "SELECT id, name, status, source, restart, scenario, scenario_public, target,"
        " created_at, updated_at, ended_at, reason, summary,"
        " (SELECT COUNT(*) FROM segments s WHERE s.run_id = runs.id) FROM runs"
    )

    def get_run(self, run_id: str) -> RunRow | None:
        rows = self._read(f"{self._SELECT} WHERE id = ?", (run_id,))
        return self._row(rows[0]) if rows else None

    def list_runs(self, *, status: str | None = None, limit: int = 100) -> list[RunRow]:
        if status is None:
            rows = self._read(f"{self._SELECT} ORDER BY created_at DESC LIMIT ?", (limit,))
        else:
            rows = self._read(
                f"{self._SELECT} WHERE status = ? ORDER BY created_at DESC LIMIT ?",
                (status, limit),
            )
        return [self._row(r) for r in rows]

    def segments(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT seg, started_at, ended_at, status, summary FROM segments WHERE run_id = ?"
            " ORDER BY seg",
            (run_id,),
        )
        return [
            {
                "segment": r[0],
                "started_at": r[1],
                "ended_at": r[2],
                "status": r[3],
                "requests": None if r[4] is None else json.loads(r[4]).get("requests"),
                "duration_s": None if r[4] is None else json.loads(r[4]).get("duration_s"),
            }
            for r in rows
        ]

    def points(
        self,
        run_id: str,
        *,
        start: float | None = None,
        end: float | None = None,
        max_points: int | None = None,
        recent: float | None = None,
        histograms: bool = True,
    ) -> list[Point]:
        """The run's figures over time, oldest first, at whatever resolution survives:
        those ending after `start` and starting before `end` (unix times), merged
        down to about `max_points` if there are more. With `recent`, the points of
        the last `recent` seconds keep their stored resolution (up to half of
        `max_points`) and the rest is merged in the remaining budget: the recent
        past fine, the long past coarse. Without `histograms`, only merged points
        carry one (decoding is most of a query's time)."""
        rows = self._read(
            f"SELECT {_POINT_COLS} FROM points WHERE run_id = ? AND t_end > ? AND t_start < ?"
            " ORDER BY t_start",
            (run_id, -math.inf if start is None else start, math.inf if end is None else end),
        )
        if max_points is None or len(rows) <= max_points:
            return [_point_from_row(r, histogram=histograms) for r in rows]
        if recent is None or recent <= 0:
            return self._merged(rows, max_points, histograms)
        cut = rows[-1][1] - recent
        split = next((i for i, r in enumerate(rows) if r[0] >= cut), len(rows))
        fine = self._merged(rows[split:], max(1, max_points // 2), histograms)
        return self._merged(rows[:split], max(1, max_points - len(fine)), histograms) + fine

    @staticmethod
    def _merged(rows: Sequence[Any], max_points: int, histograms: bool) -> list[Point]:
        if len(rows) <= max_points:
            return [_point_from_row(r, histogram=histograms) for r in rows]
        out = []
        for group in spans(rows, max_points, lambda r: (r[0], r[1], r[2])):
            if len(group) == 1:
                out.append(_point_from_row(group[0], histogram=histograms))
                continue
            out.append(
                merge_all(
                    [_point_from_row(r, histogram=False) for r in group],
                    _summed([r[16] for r in group]),
                )
            )
        return out

    def point_count(self, run_id: str) -> int:
        ((n,),) = self._read("SELECT COUNT(*) FROM points WHERE run_id = ?", (run_id,))
        return int(n)
