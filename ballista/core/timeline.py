"""A run over time in bounded memory: one point per interval, halved in resolution when full.

Each point keeps what the interval produced (counts, statuses, error kinds,
gauges at its end) and its latency histogram, so percentiles of any span —
a downsampled point, the same interval seen by several segments — are real
percentiles, never a max of percentiles. The JSON summary carries it
(`timeline`); reports draw it and `ballista merge` adds segments' timelines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ballista.core.histogram import SparseHistogram
from ballista.core.snapshot import Snapshot

#: Points a timeline keeps: a day at 1 s intervals ends as 600-odd points of 2 min 24 s.
DEFAULT_TIMELINE_POINTS = 720
#: Rounding of the time keys in JSON (microseconds).
_DIGITS = 6


def _add(a: Mapping[Any, int], b: Mapping[Any, int]) -> dict[Any, int]:
    out = dict(a)
    for key, n in b.items():
        out[key] = out.get(key, 0) + n
    return out


def _sum_opt(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    """What happened over (t - span, t], seconds since the run's start."""

    t: float
    span: float
    requests: int = 0
    responses: int = 0
    errors: int = 0
    failed: int = 0
    dropped: int = 0
    status_codes: Mapping[int, int] = field(default_factory=dict)
    #: non-zero kinds only
    errors_by_kind: Mapping[str, int] = field(default_factory=dict)
    # gauges at the end of the span
    in_flight: int = 0
    open_connections: int = 0
    concurrency_limit: int | None = None
    target_rate: float | None = None
    # the largest over the span
    scheduler_lag: float = 0.0
    loop_lag: float = 0.0
    latency: SparseHistogram = field(default_factory=SparseHistogram, repr=False)

    @classmethod
    def of(cls, snap: Snapshot, *, dropped: int = 0) -> TimelinePoint:
        """The interval a snapshot closes; `dropped` is the drops within it."""
        hist = snap.interval_histogram
        return cls(
            t=snap.elapsed,
            span=snap.interval,
            requests=snap.interval_requests,
            responses=snap.interval_requests - snap.interval_errors,
            errors=snap.interval_errors,
            failed=snap.interval_failed,
            dropped=dropped,
            status_codes=dict(snap.interval_status_codes),
            errors_by_kind={k: n for k, n in snap.interval_errors_by_kind.items() if n},
            in_flight=snap.in_flight,
            open_connections=snap.open_connections,
            concurrency_limit=snap.concurrency_limit,
            target_rate=snap.target_rate,
            scheduler_lag=snap.interval_scheduler_lag,
            loop_lag=snap.interval_loop_lag,
            latency=SparseHistogram.of(hist) if hist is not None else SparseHistogram(),
        )

    @property
    def rps(self) -> float:
        return self.requests / self.span if self.span > 0 else 0.0

    def then(self, later: TimelinePoint) -> TimelinePoint:
        """This point and the one right after it, as one point (spans add)."""
        return TimelinePoint(
            t=later.t,
            span=self.span + later.span,
            requests=self.requests + later.requests,
            responses=self.responses + later.responses,
            errors=self.errors + later.errors,
            failed=self.failed + later.failed,
            dropped=self.dropped + later.dropped,
            status_codes=_add(self.status_codes, later.status_codes),
            errors_by_kind=_add(self.errors_by_kind, later.errors_by_kind),
            in_flight=later.in_flight,
            open_connections=later.open_connections,
            concurrency_limit=later.concurrency_limit,
            target_rate=later.target_rate,
            scheduler_lag=max(self.scheduler_lag, later.scheduler_lag),
            loop_lag=max(self.loop_lag, later.loop_lag),
            latency=self.latency.plus(later.latency),
        )

    def plus(self, other: TimelinePoint) -> TimelinePoint:
        """The same span as seen by another segment of the test: everything adds."""
        limit = _sum_opt(self.concurrency_limit, other.concurrency_limit)
        return TimelinePoint(
            t=max(self.t, other.t),
            span=max(self.span, other.span),
            requests=self.requests + other.requests,
            responses=self.responses + other.responses,
            errors=self.errors + other.errors,
            failed=self.failed + other.failed,
            dropped=self.dropped + other.dropped,
            status_codes=_add(self.status_codes, other.status_codes),
            errors_by_kind=_add(self.errors_by_kind, other.errors_by_kind),
            in_flight=self.in_flight + other.in_flight,
            open_connections=self.open_connections + other.open_connections,
            concurrency_limit=None if limit is None else int(limit),
            target_rate=_sum_opt(self.target_rate, other.target_rate),
            scheduler_lag=max(self.scheduler_lag, other.scheduler_lag),
            loop_lag=max(self.loop_lag, other.loop_lag),
            latency=self.latency.plus(other.latency),
        )

    def to_dict(self) -> dict[str, Any]:
        p50, p90, p99 = self.latency.percentiles((50.0, 90.0, 99.0))
        return {
            "t": round(self.t, _DIGITS),
            "span": round(self.span, _DIGITS),
            "requests": self.requests,
            "responses": self.responses,
            "errors": self.errors,
            "failed": self.failed,
            "dropped": self.dropped,
            "status_codes": {str(k): n for k, n in sorted(self.status_codes.items())},
            "errors_by_kind": dict(self.errors_by_kind),
            "in_flight": self.in_flight,
            "open_connections": self.open_connections,
            "concurrency_limit": self.concurrency_limit,
            "target_rate": self.target_rate,
            "scheduler_lag": round(self.scheduler_lag, _DIGITS),
            "loop_lag": round(self.loop_lag, _DIGITS),
            "latency_s": {
                "p50": round(p50, 9),
                "p90": round(p90, 9),
                "p99": round(p99, 9),
                "max": round(self.latency.max, 9),
            },
            "latency": self.latency.to_dict(),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TimelinePoint:
        """ValueError naming what is wrong."""
        if not isinstance(doc, Mapping):
            raise ValueError("a timeline point must be an object")
        try:
            limit = doc.get("concurrency_limit")
            rate = doc.get("target_rate")
            return cls(
                t=float(doc["t"]),
                span=float(doc["span"]),
                requests=int(doc["requests"]),
                responses=int(doc["responses"]),
                errors=int(doc["errors"]),
                failed=int(doc["failed"]),
                dropped=int(doc.get("dropped", 0)),
                status_codes={int(k): int(n) for k, n in doc.get("status_codes", {}).items()},
                errors_by_kind={str(k): int(n) for k, n in doc.get("errors_by_kind", {}).items()},
                in_flight=int(doc.get("in_flight", 0)),
                open_connections=int(doc.get("open_connections", 0)),
                concurrency_limit=None if limit is None else int(limit),
                target_rate=None if rate is None else float(rate),
                scheduler_lag=float(doc.get("scheduler_lag", 0.0)),
                loop_lag=float(doc.get("loop_lag", 0.0)),
                latency=SparseHistogram.from_dict(doc["latency"]),
            )
        except KeyError as exc:
            raise ValueError(f"a timeline point needs {exc.args[0]!r}") from None
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"a timeline point is malformed: {exc}") from None


class Timeline:
    """Per-interval points of a run, at most `max_points` of them.

    `add` is a snapshot sink. When the timeline is full, each pair of adjacent
    points becomes one, so memory stays bounded whatever the run's length and
    the whole run stays covered, at a coarser resolution the longer it runs.
    """

    def __init__(self, max_points: int = DEFAULT_TIMELINE_POINTS) -> None:
        if max_points < 2:
            raise ValueError("a timeline needs room for at least 2 points")
        self.max_points = max_points
        self._points: list[TimelinePoint] = []
        #: consecutive points folded into one before it is appended (1, 2, 4, ...)
        self._fold = 1
        self._pending: TimelinePoint | None = None
        self._pending_n = 0
        self._dropped_before = 0

    @property
    def points(self) -> list[TimelinePoint]:
        """The points so far (a partly folded last interval included)."""
        if self._pending is None:
            return list(self._points)
        return [*self._points, self._pending]

    def add(self, snap: Snapshot) -> None:
        """Take the interval a snapshot closes."""
        dropped = snap.dropped - self._dropped_before
        self._dropped_before = snap.dropped
        self.append(TimelinePoint.of(snap, dropped=dropped))

    def append(self, point: TimelinePoint) -> None:
        """Add the next interval (its t after every earlier point's)."""
        self._pending = point if self._pending is None else self._pending.then(point)
        self._pending_n += 1
        if self._pending_n < self._fold:
            return
        self._points.append(self._pending)
        self._pending = None
        self._pending_n = 0
        if len(self._points) >= self.max_points:
            self._halve()

    def _halve(self) -> None:
        pts = self._points
        joined = [pts[i].then(pts[i + 1]) for i in range(0, len(pts) - 1, 2)]
        if len(pts) % 2:
            # The odd one out becomes the start of the next folded point.
            self._pending = pts[-1]
            self._pending_n = self._fold
        self._points = joined
        self._fold *= 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_points": self.max_points,
            "points": [p.to_dict() for p in self.points],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Timeline:
        """ValueError naming what is wrong."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("points"), list):
            raise ValueError("a timeline must be an object with a 'points' list")
        max_points = doc.get("max_points", DEFAULT_TIMELINE_POINTS)
        if not isinstance(max_points, int) or max_points < 2:
            raise ValueError("timeline 'max_points' must be an integer >= 2")
        timeline = cls(max(max_points, len(doc["points"]) + 1))
        timeline.max_points = max_points
        timeline._points = [TimelinePoint.from_dict(p) for p in doc["points"]]
        return timeline
