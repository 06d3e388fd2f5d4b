"""Many processes' figures as one: snapshots of `--workers` children, summaries for `ballista merge`.

Sans-IO. Counts add; latency histograms merge bucket by bucket, so every
percentile is the one a single process would have reported had it seen all
the samples. The cost is O(histogram buckets) per part, never O(requests).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ballista.core.errors import ConfigError
from ballista.core.flowstats import FlowStats
from ballista.core.histogram import Histogram
from ballista.core.runmeta import RunMeta
from ballista.core.snapshot import RequestStats, Snapshot
from ballista.core.summaryfile import histogram_of, timeline_of
from ballista.core.timeline import DEFAULT_TIMELINE_POINTS, Timeline, TimelinePoint


def _add_into(into: dict[Any, int], counts: Mapping[Any, int]) -> None:
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


def _sum_opt(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _merged(hists: Iterable[Histogram | None]) -> Histogram:
    out = Histogram()
    for hist in hists:
        if hist is not None:
            out.merge(hist)
    return out


def _flows(parts: Sequence[Snapshot]) -> tuple[FlowStats, ...]:
    """Journeys' flows per name (in the order first seen): counts add, histograms merge."""
    groups: dict[str, list[FlowStats]] = {}
    for snap in parts:
        for flow in snap.flows:
            groups.setdefault(flow.name, []).append(flow)
    return tuple(_flow(name, group) for name, group in groups.items())


def _flow(name: str, group: Sequence[FlowStats]) -> FlowStats:
    """One flow's figures from several processes': counts add, histograms merge."""
    reasons: dict[str, int] = {}
    for flow in group:
        _add_into(reasons, flow.failures_by_reason)
    hist = _merged(f.histogram for f in group)
    return FlowStats(
        name=name,
        iterations=sum(f.iterations for f in group),
        completed=sum(f.completed for f in group),
        failed=sum(f.failed for f in group),
        interrupted=sum(f.interrupted for f in group),
        failures_by_reason=reasons,
        duration=hist.summary(),
        histogram=hist,
    )


def _requests(parts: Sequence[Snapshot]) -> tuple[RequestStats, ...]:
    """Per request name (in the order first seen): counts added, histograms merged."""
    groups: dict[str, list[RequestStats]] = {}
    for snap in parts:
        for stats in snap.by_request:
            groups.setdefault(stats.name, []).append(stats)
    out: list[RequestStats] = []
    for name, group in groups.items():
        statuses: dict[int, int] = {}
        kinds: dict[str, int] = {}
        for stats in group:
            _add_into(statuses, stats.status_codes)
            _add_into(kinds, stats.errors_by_kind)
        hist = _merged(s.histogram for s in group)
        out.append(
            RequestStats(
                name=name,
                method=group[0].method,
                requests=sum(s.requests for s in group),
                responses=sum(s.responses for s in group),
                errors=sum(s.errors for s in group),
                failed=sum(s.failed for s in group),
                status_codes=dict(sorted(statuses.items())),
                errors_by_kind=kinds,
                bytes_sent=sum(s.bytes_sent for s in group),
                bytes_received=sum(s.bytes_received for s in group),
                latency=hist.summary(),
                histogram=hist,
            )
        )
    return tuple(out)


def merge_snapshots(
    parts: Sequence[Snapshot], *, seq: int, elapsed: float, interval: float, final: bool
) -> Snapshot:
    """One snapshot of the processes that each produced one of `parts` over the same time.

    Cumulative counts and interval counts add, histograms merge; gauges (in
    flight, open connections, concurrency limit, target rate) add. Two figures
    cannot be rebuilt from the parts and are bounds instead: `max_in_flight` is
    the sum of the parts' peaks (an upper bound of the peak of the sum), and the
    loop and scheduler lags are the worst part's.
    """
    if not parts:
        raise ValueError("nothing to merge")
    statuses: dict[int, int] = {}
    kinds: dict[str, int] = {}
    window_statuses: dict[int, int] = {}
    window_kinds: dict[str, int] = {}
    for snap in parts:
        _add_into(statuses, snap.status_codes)
        _add_into(kinds, snap.errors_by_kind)
        _add_into(window_statuses, snap.interval_status_codes)
        _add_into(window_kinds, snap.interval_errors_by_kind)
    hist = _merged(s.histogram for s in parts)
    services = [s.service_histogram for s in parts if s.service_histogram is not None]
    service = _merged(services) if services else None
    windows = [s.interval_histogram for s in parts if s.interval_histogram is not None]
    window = _merged(windows)
    window_requests = sum(s.interval_requests for s in parts)
    limit = _sum_opt(s.concurrency_limit for s in parts)
    return Snapshot(
        seq=seq,
        elapsed=elapsed,
        interval=interval,
        final=final,
        requests=sum(s.requests for s in parts),
        responses=sum(s.responses for s in parts),
        errors=sum(s.errors for s in parts),
        failed=sum(s.failed for s in parts),
        status_codes=dict(sorted(statuses.items())),
        errors_by_kind=kinds,
        bytes_sent=sum(s.bytes_sent for s in parts),
        bytes_received=sum(s.bytes_received for s in parts),
        dropped=sum(s.dropped for s in parts),
        connections_opened=sum(s.connections_opened for s in parts),
        open_connections=sum(s.open_connections for s in parts),
        latency=hist.summary(),
        service_time=service.summary() if service is not None else None,
        histogram=hist,
        by_request=_requests(parts),
        service_histogram=service,
        in_flight=sum(s.in_flight for s in parts),
        max_in_flight=sum(s.max_in_flight for s in parts),
        concurrency_limit=None if limit is None else int(limit),
        target_rate=_sum_opt(s.target_rate for s in parts),
        interval_requests=window_requests,
        interval_failed=sum(s.interval_failed for s in parts),
        interval_errors=sum(s.interval_errors for s in parts),
        interval_rps=window_requests / interval if interval > 0 else 0.0,
        interval_latency=window.summary(),
        interval_histogram=window,
        interval_status_codes=dict(sorted(window_statuses.items())),
        interval_errors_by_kind=window_kinds,
        interval_scheduler_lag=max(s.interval_scheduler_lag for s in parts),
        max_scheduler_lag=max(s.max_scheduler_lag for s in parts),
        connection_attempts=sum(s.connection_attempts for s in parts),
        retried=sum(s.retried for s in parts),
        interval_loop_lag=max(s.interval_loop_lag for s in parts),
        loop_lag=max(s.loop_lag for s in parts),
        max_loop_lag=max(s.max_loop_lag for s in parts),
        flows=_flows(parts),
    )


def quiet(snap: Snapshot) -> Snapshot:
    """A part that has finished, as it counts in later intervals: its totals, nothing new."""
    return replace(
        snap,
        in_flight=0,
        open_connections=0,
        interval_requests=0,
        interval_failed=0,
        interval_errors=0,
        interval_rps=0.0,
        interval_latency=None,
        interval_histogram=None,
        interval_status_codes={},
        interval_errors_by_kind={},
        interval_scheduler_lag=0.0,
        interval_loop_lag=0.0,
    )


class Rounds:
    """The snapshots of N processes of one run, merged one round at a time.

    Round k is the k-th snapshot of every process (they tick together, on the
    same interval from the same start). It is merged once every process still
    running has sent its k-th; a process that has ended (its final snapshot,
    or it died) counts in later rounds with its last figures and nothing new,
    so its counts so far are kept. The round that leaves every process ended
    is the final one. Sans-IO: `add` and `end` return the merged snapshots now
    ready, in order.
    """

    def __init__(self, parts: int) -> None:
        if parts < 1:
            raise ValueError("a run has at least one part")
        self._pending: list[deque[Snapshot]] = [deque() for _ in range(parts)]
        self._last: list[Snapshot | None] = [None] * parts
        self._ended = [False] * parts
        self._seq = 0
        self._elapsed = 0.0
        #: the final merged snapshot, once every part has ended
        self.final: Snapshot | None = None
        #: the last merged snapshot emitted
        self.latest: Snapshot | None = None

    def add(self, part: int, snap: Snapshot) -> list[Snapshot]:
        """Part `part`'s next snapshot (its final one ends it)."""
        if self._ended[part]:
            raise ValueError(f"part {part} has ended: no more snapshots")
        self._pending[part].append(snap)
        if snap.final:
            self._ended[part] = True
        return self._ready()

    def end(self, part: int) -> list[Snapshot]:
        """Part `part` will send nothing more (it died, or its final snapshot came)."""
        self._ended[part] = True
        return self._ready()

    def ended(self, part: int) -> bool:
        return self._ended[part]

    def last(self, part: int) -> Snapshot | None:
        """The last snapshot of `part` merged so far."""
        return self._last[part]

    def _ready(self) -> list[Snapshot]:
        out: list[Snapshot] = []
        pending, ended = self._pending, self._ended
        while self.final is None:
            if any(not e and not p for e, p in zip(ended, pending, strict=True)):
                break  # a running part has not sent this round yet
            # When every part has ended with nothing pending, this round is the
            # final one: each part's last figures, nothing new.
            fresh = [p.popleft() if p else None for p in pending]
            taken: list[Snapshot] = []
            for i, f in enumerate(fresh):
                if f is not None:
                    self._last[i] = f
                    taken.append(f)
                else:
                    last = self._last[i]
                    if last is not None:
                        taken.append(quiet(last))
            final = all(ended) and not any(pending)
            if not taken:
                break  # no part ever reported: there is nothing to merge
            elapsed = max([self._elapsed, *(f.elapsed for f in fresh if f is not None)])
            merged = merge_snapshots(
                taken,
                seq=self._seq,
                elapsed=elapsed,
                interval=elapsed - self._elapsed,
                final=final,
            )
            self._seq += 1
            self._elapsed = elapsed
            self.latest = merged
            out.append(merged)
            if final:
                self.final = merged
        return out


# -- summaries (`ballista merge`) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class SummaryPart:
    """One summary read for merging, and where it came from (a file name)."""

    where: str
    doc: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Merged:
    """What a merge of summaries produced: feed it to the summary writers."""

    snapshot: Snapshot
    meta: RunMeta
    timeline: Timeline | None
    #: the summary's `merged` object: what was merged, and what is missing
    merged: dict[str, Any]
    #: the summary's `flows` object, when the parts had flows
    flows: dict[str, Any] | None = None


def _int(doc: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: {key!r} is not a count")
    return value


def _float(doc: Mapping[str, Any], key: str, where: str, default: float | None = None) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: {key!r} is not a number")
    return float(value)


def _counts(raw: Any, where: str, what: str) -> dict[str, int]:
    if not isinstance(raw, Mapping) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in raw.values()
    ):
        raise ConfigError(f"{where}: {what!r} is not an object of counts")
    return {str(k): n for k, n in raw.items()}


def _statuses(raw: Any, where: str, what: str) -> dict[int, int]:
    try:
        return {int(k): n for k, n in _counts(raw, where, what).items()}
    except ValueError:
        raise ConfigError(f"{where}: {what!r} has a key that is not an HTTP status") from None


def started_at(doc: Mapping[str, Any], where: str) -> dt.datetime:
    raw = doc.get("started_at")
    try:
        return dt.datetime.strptime(str(raw), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ConfigError(f"{where}: 'started_at' {raw!r} is not a UTC time") from None


def snapshot_of_summary(doc: Mapping[str, Any], where: str) -> Snapshot:
    """A summary's figures as the final snapshot of its run (what merging adds up).

    ConfigError naming the file when a figure is missing or malformed, or when
    the summary carries no histograms (written before they existed)."""
    hist = histogram_of(doc, where=where)
    hists = doc["histograms"]
    service: Histogram | None = None
    if hists.get("service_time") is not None:
        try:
            service = Histogram.from_dict(hists["service_time"])
        except ValueError as exc:
            raise ConfigError(f"{where}: histograms.service_time: {exc}") from None
    names = doc.get("requests_by_name")
    if not isinstance(names, Mapping):
        raise ConfigError(f"{where}: 'requests_by_name' is not an object")
    by_request: list[RequestStats] = []
    for name, stats in names.items():
        if not isinstance(stats, Mapping):
            raise ConfigError(f"{where}: requests_by_name.{name} is not an object")
        what = f"requests_by_name.{name}"
        h = histogram_of(doc, name, where=where)
        by_request.append(
            RequestStats(
                name=name,
                method=str(stats.get("method", "GET")),
                requests=_int(stats, "requests", f"{where}: {what}"),
                responses=_int(stats, "responses", f"{where}: {what}"),
                errors=_int(stats, "errors", f"{where}: {what}"),
                failed=_int(stats, "failed", f"{where}: {what}"),
                status_codes=_statuses(stats.get("status_codes", {}), where, what),
                errors_by_kind={},
                bytes_sent=0,
                bytes_received=0,
                latency=h.summary(),
                histogram=h,
            )
        )
    concurrency = doc.get("concurrency") or {}
    loop_lag = doc.get("loop_lag_s") or {}
    timeline = timeline_of(doc, where=where)
    points = timeline.points if timeline is not None else []
    elapsed = points[-1].t if points else _float(doc, "duration_s", where)
    return Snapshot(
        seq=0,
        elapsed=elapsed,
        interval=0.0,
        final=True,
        requests=_int(doc, "requests", where),
        responses=_int(doc, "responses", where),
        errors=_int(doc, "errors", where),
        failed=_int(doc, "failed", where),
        status_codes=_statuses(doc.get("status_codes"), where, "status_codes"),
        errors_by_kind=_counts(doc.get("errors_by_kind", {}), where, "errors_by_kind"),
        bytes_sent=_int(doc, "bytes_sent", where, 0),
        bytes_received=_int(doc, "bytes_received", where, 0),
        dropped=_int(doc, "dropped", where, 0),
        connections_opened=_int(doc, "connections_opened", where, 0),
        open_connections=0,
        latency=hist.summary(),
        service_time=service.summary() if service is not None else None,
        histogram=hist,
        by_request=tuple(by_request),
        service_histogram=service,
        max_in_flight=_int(concurrency, "max_in_flight", where, 0),
        max_scheduler_lag=_float(doc, "scheduler_lag_max_s", where, 0.0),
        connection_attempts=_int(doc, "connection_attempts", where, 0),
        retried=_int(doc, "retried", where, 0),
        loop_lag=_float(loop_lag, "p95", where, 0.0),
        max_loop_lag=_float(loop_lag, "max", where, 0.0),
    )


def check_segments(parts: Sequence[SummaryPart], *, partial: bool) -> dict[str, Any]:
    """Refuse parts that are not one test's segments, each once; say which are missing.

    Summaries without a `segment` object (whole runs, e.g. on several machines
    without --segment) merge as they are, provided they ran the same target and
    model. The answer is the merged summary's `merged` object.
    """
    segments = [p.doc.get("segment") for p in parts]
    with_segment = [p for p, s in zip(parts, segments, strict=True) if s is not None]
    first = parts[0]
    for part in parts[1:]:
        for key in ("target", "model"):
            if part.doc.get(key) != first.doc.get(key):
                raise ConfigError(
                    f"{part.where}: {key} {part.doc.get(key)!r} differs from "
                    f"{first.where}'s {first.doc.get(key)!r}: not the same test"
                )
    merged: dict[str, Any] = {"summaries": len(parts)}
    if not with_segment:
        # The same run given twice would count twice: refuse it as a segment twice is.
        seen_runs: dict[tuple[Any, ...], str] = {}
        for part in parts:
            run_key = tuple(
                json.dumps(part.doc.get(k), sort_keys=True)
                for k in ("started_at_unix", "started_at", "duration_s", "requests", "histograms")
            )
            if run_key in seen_runs:
                raise ConfigError(
                    f"{part.where} and {seen_runs[run_key]} are the same run: each run counts once"
                )
            seen_runs[run_key] = part.where
        return merged
    if len(with_segment) != len(parts):
        lone = next(p for p, s in zip(parts, segments, strict=True) if s is None)
        raise ConfigError(
            f"{lone.where} is a whole run, {with_segment[0].where} a segment of a test: "
            "merge the segments of one test, or whole runs"
        )
    seen: dict[int, str] = {}
    count: int | None = None
    test: str | None = None
    for part, seg in zip(parts, segments, strict=True):
        if not isinstance(seg, Mapping):
            raise ConfigError(f"{part.where}: 'segment' is not an object")
        index, n, fp = seg.get("index"), seg.get("count"), seg.get("test")
        if not (isinstance(index, int) and isinstance(n, int) and 0 <= index < n):
            raise ConfigError(f"{part.where}: 'segment' {dict(seg)!r} is malformed")
        if count is None:
            count, test = n, fp
        elif fp != test:
            raise ConfigError(
                f"{part.where} is a segment of another test than {parts[0].where} "
                f"(test {fp!r}, not {test!r}): refusing to merge different tests"
            )
        elif n != count:
            raise ConfigError(
                f"{part.where} is segment {index}/{n}, {parts[0].where} one of {count}: "
                "refusing to merge different cuts of a test"
            )
        if index in seen:
            raise ConfigError(
                f"{part.where} and {seen[index]} are both segment {index}/{n}: "
                "each segment counts once"
            )
        seen[index] = part.where
    assert count is not None
    missing = [i for i in range(count) if i not in seen]
    if missing and not partial:
        listed = ", ".join(f"{i}/{count}" for i in missing)
        raise ConfigError(
            f"segment{'s' if len(missing) > 1 else ''} {listed} missing "
            f"({len(seen)} of {count} given): add them, or --partial to merge what there is"
        )
    merged.update({"segments": sorted(seen), "count": count, "test": test, "missing": missing})
    return merged


def merge_timelines(
    timelines: Sequence[tuple[float, Timeline]], *, max_points: int = DEFAULT_TIMELINE_POINTS
) -> Timeline:
    """Timelines of runs that started `offset` seconds after the earliest, as one.

    Points are placed on one grid of the coarsest span among them, by the time
    they end; a run's points within one grid step are joined, then the runs'
    points of that step added (`TimelinePoint.plus`). Spans are each run's
    interval doubled as its timeline filled, so they nest on a common grid when
    the runs shared an interval and a start.
    """
    spans = [p.span for _, tl in timelines for p in tl.points[:-1]] or [
        p.span for _, tl in timelines for p in tl.points
    ]
    step = max(spans) if spans else 0.0
    slack = min(spans) / 4 if spans else 0.0
    buckets: dict[int, TimelinePoint] = {}
    for offset, timeline in timelines:
        mine: dict[int, TimelinePoint] = {}
        for point in timeline.points:
            moved = replace(point, t=point.t + offset)
            # A point belongs to the grid step it ends in; one ending up to a quarter
            # of an interval past a grid line (a tick a little late, segments started
            # milliseconds apart) belongs to the step that line closes.
            key = math.ceil((moved.t - slack) / step) if step > 0 else 0
            mine[key] = mine[key].then(moved) if key in mine else moved
        for key, point in mine.items():
            buckets[key] = buckets[key].plus(point) if key in buckets else point
    out = Timeline(max_points)
    for key in sorted(buckets):
        out.append(buckets[key])
    return out


def flow_stats_of(parts: Sequence[SummaryPart]) -> tuple[FlowStats, ...]:
    """The flows whose duration histogram (`histograms.flows`) every part that ran
    them carried, merged exactly: counts added, histograms merged."""
    groups: dict[str, list[FlowStats]] = {}
    missing: set[str] = set()
    for part in parts:
        raw = part.doc.get("flows")
        if not isinstance(raw, Mapping):
            continue
        hists = (part.doc.get("histograms") or {}).get("flows") or {}
        for name, flow in raw.items():
            doc = hists.get(name) if isinstance(hists, Mapping) else None
            if not isinstance(flow, Mapping) or not isinstance(doc, Mapping):
                missing.add(name)
                continue
            where = f"{part.where}: flows.{name}"
            try:
                hist = Histogram.from_dict(doc)
            except ValueError as exc:
                raise ConfigError(f"{part.where}: histograms.flows.{name}: {exc}") from None
            groups.setdefault(name, []).append(
                FlowStats(
                    name=name,
                    iterations=_int(flow, "iterations", where, 0),
                    completed=_int(flow, "completed", where, 0),
                    failed=_int(flow, "failed", where, 0),
                    interrupted=_int(flow, "interrupted", where, 0),
                    failures_by_reason=_counts(
                        flow.get("failures_by_reason", {}), where, "failures_by_reason"
                    ),
                    duration=hist.summary(),
                    histogram=hist,
                )
            )
    return tuple(_flow(name, g) for name, g in groups.items() if name not in missing)


def merge_flows(parts: Sequence[SummaryPart]) -> tuple[dict[str, Any] | None, list[str]]:
    """The parts' `flows`: counts add. A summary's flow durations are figures
    without a histogram behind them: min and max merge exactly, the mean is
    weighted by completed iterations, percentiles cannot be merged (null, and a
    note says so)."""
    flows: dict[str, dict[str, Any]] = {}
    durations: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for part in parts:
        raw = part.doc.get("flows")
        if raw is None:
            continue
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{part.where}: 'flows' is not an object")
        for name, flow in raw.items():
            where = f"{part.where}: flows.{name}"
            if not isinstance(flow, Mapping):
                raise ConfigError(f"{where} is not an object")
            into = flows.setdefault(
                name, {"iterations": 0, "completed": 0, "failed": 0, "failures_by_reason": {}}
            )
            for key in ("iterations", "completed", "failed"):
                into[key] += _int(flow, key, where, 0)
            reasons = _counts(flow.get("failures_by_reason", {}), where, "failures_by_reason")
            _add_into(into["failures_by_reason"], reasons)
            d = flow.get("duration_s")
            if isinstance(d, Mapping) and d.get("max") is not None:
                durations.setdefault(name, []).append((_int(flow, "completed", where, 0), d))
    if not flows:
        return None, []
    exact = {f.name: f for f in flow_stats_of(parts)}
    merged_percentiles = False
    for name, into in flows.items():
        stats = exact.get(name)
        if stats is not None:
            # Every part carried this flow's histogram: its durations merge exactly.
            into.update(
                {k: v for k, v in stats.as_dict().items() if k not in ("failures_by_reason",)}
            )
            continue
        seen = durations.get(name, [])
        if not seen:
            continue
        if len(seen) == 1:
            into["duration_s"] = dict(seen[0][1])
            continue
        merged_percentiles = True
        weight = sum(w for w, _ in seen)
        into["duration_s"] = {
            "min": min(float(d.get("min") or 0.0) for _, d in seen),
            "mean": sum(float(d.get("mean") or 0.0) * w for w, d in seen) / weight
            if weight
            else 0.0,
            **dict.fromkeys(("p50", "p90", "p95", "p99", "p999")),
            "max": max(float(d.get("max") or 0.0) for _, d in seen),
        }
    notes = (
        [
            "flow durations: min, mean and max are merged exactly; percentiles are not "
            "(a summary's flows carry no histogram) and are null"
        ]
        if merged_percentiles
        else []
    )
    return flows, notes


def merge_summaries(parts: Sequence[SummaryPart], *, partial: bool = False) -> Merged:
    """Many summaries of one test as one: exact counts and percentiles.

    The merged run starts at the earliest start and ends at the latest end,
    on the summaries' clocks (`started_at`, to the second): its duration is
    that union, and rates are per it. Segments started together with
    --start-at share their start, so the union is the longest segment.
    ConfigError (one line, naming the file) for anything that cannot merge.
    """
    if not parts:
        raise ConfigError("nothing to merge: give two summaries or more")
    merged_info = check_segments(parts, partial=partial)
    snaps = [snapshot_of_summary(p.doc, p.where) for p in parts]
    starts = [started_at(p.doc, p.where) for p in parts]
    first = min(starts)
    offsets = [(s - first).total_seconds() for s in starts]
    precise = [p.doc.get("started_at_unix") for p in parts]
    if all(isinstance(x, int | float) and not isinstance(x, bool) for x in precise):
        # To the microsecond: segments started together differ by milliseconds.
        unix = [float(x) for x in precise]  # type: ignore[arg-type]
        offsets = [x - min(unix) for x in unix]
        first = dt.datetime.fromtimestamp(min(unix), dt.UTC)
    durations = [_float(p.doc, "duration_s", p.where) for p in parts]
    duration = max(o + d for o, d in zip(offsets, durations, strict=True))
    elapsed = max(o + s.elapsed for o, s in zip(offsets, snaps, strict=True))
    snapshot = merge_snapshots(snaps, seq=0, elapsed=elapsed, interval=0.0, final=True)
    # A summary carries its run's figures, not the last interval's.
    snapshot = replace(snapshot, interval_latency=None, interval_histogram=None)

    timelines = [
        (o, timeline_of(p.doc, where=p.where)) for o, p in zip(offsets, parts, strict=True)
    ]
    present = [(o, t) for o, t in timelines if t is not None]
    timeline = None
    if len(present) == len(parts):
        timeline = merge_timelines(present, max_points=max(t.max_points for _, t in present))

    notes: list[str] = []
    for part in parts:
        seg = part.doc.get("segment")
        who = f"segment {seg['index']}/{seg['count']}" if seg is not None else part.where
        for note in part.doc.get("notes") or ():
            notes.append(f"{who}: {note}")
    if merged_info.get("missing"):
        listed = ", ".join(f"{i}/{merged_info['count']}" for i in merged_info["missing"])
        notes.append(f"partial: segments {listed} are missing; figures cover the others only")
    if timeline is None and len(present) != len(parts):
        notes.append("not every summary has a timeline: the merged one has none")
    flows, flow_notes = merge_flows(parts)
    notes.extend(flow_notes)
    exact_flows = flow_stats_of(parts)
    if exact_flows:
        # Flow thresholds and the summary's histograms read them from the snapshot.
        snapshot = replace(snapshot, flows=exact_flows)

    concurrency = [(p.doc.get("concurrency") or {}) for p in parts]
    configured = _sum_opt(c.get("configured") for c in concurrency)
    final_limit = _sum_opt(c.get("final_limit") for c in concurrency)
    protocols = list(dict.fromkeys(str(p.doc.get("protocol")) for p in parts))
    meta = RunMeta(
        target=str(parts[0].doc.get("target")),
        model=str(parts[0].doc.get("model")),
        protocol=" + ".join(protocols),
        started_at=first,
        concurrency=None if configured is None else int(configured),
        connections=snapshot.connections_opened,
        final_limit=None if final_limit is None else int(final_limit),
        notes=tuple(notes),
        duration=duration,
    )
    return Merged(
        snapshot=snapshot,
        meta=meta,
        timeline=timeline,
        merged=merged_info,
        flows=flows,
    )
