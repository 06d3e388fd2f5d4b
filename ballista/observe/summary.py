"""Turning snapshots into what people read: the JSON summary, the text summary, the live line."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ballista import __version__
from ballista.core.durations import format_duration
from ballista.core.errors import ConfigError
from ballista.core.histogram import HISTOGRAM_LAYOUT
from ballista.core.runmeta import LAG_WARNING, RunMeta, iso_utc
from ballista.core.snapshot import LatencySummary, Snapshot
from ballista.core.timeline import Timeline

SCHEMA = "ballista.summary/1"


def _latency(summary: LatencySummary) -> dict[str, float]:
    return {k: round(v, 9) for k, v in summary.as_dict().items()}


def histograms_dict(snap: Snapshot) -> dict[str, Any]:
    """The summary's `histograms`: what `ballista merge` adds up exactly."""
    doc: dict[str, Any] = {"layout": HISTOGRAM_LAYOUT, "latency": snap.histogram.to_dict()}
    if snap.service_histogram is not None:
        doc["service_time"] = snap.service_histogram.to_dict()
    doc["by_name"] = {stats.name: stats.histogram.to_dict() for stats in snap.by_request}
    if snap.flows:
        # journeys: each flow's iteration durations
        doc["flows"] = {f.name: f.histogram.to_dict() for f in snap.flows}
    return doc


def summary_dict(snap: Snapshot, meta: RunMeta, timeline: Timeline | None = None) -> dict[str, Any]:
    """The `ballista.summary/1` document (docs/running-tests.md, "The JSON summary").

    With `timeline`, the run over time too: reports draw it, merges add it up."""
    names: dict[str, Any] = {}
    for stats in snap.by_request:
        names[stats.name] = {
            "method": stats.method,
            "requests": stats.requests,
            "responses": stats.responses,
            "errors": stats.errors,
            "failed": stats.failed,
            "status_codes": {str(k): v for k, v in sorted(stats.status_codes.items())},
            "latency_s": _latency(stats.latency),
        }
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "version": __version__,
        "target": meta.target,
        "model": meta.model,
        "protocol": meta.protocol,
        "started_at": iso_utc(meta.started_at),
        # the same instant to the microsecond: `ballista merge` aligns segments by it
        "started_at_unix": round(meta.started_at.timestamp(), 6),
        "duration_s": round(meta.duration_of(snap), 6),
        "requests": snap.requests,
        "responses": snap.responses,
        "errors": snap.errors,
        "failed": snap.failed,
        "error_rate": snap.error_rate,
        "rps": round(meta.rps_of(snap), 3),
        "latency_s": _latency(snap.latency),
    }
    if snap.service_time is not None:
        doc["service_time_s"] = _latency(snap.service_time)
    if meta.segment is not None:
        index, count = meta.segment
        doc["segment"] = {"index": index, "count": count, "test": meta.test}
    doc.update(
        {
            "status_codes": {str(k): v for k, v in sorted(snap.status_codes.items())},
            "errors_by_kind": dict(snap.errors_by_kind),
            "dropped": snap.dropped,
            # requests still in flight when the run ended: also in errors_by_kind
            "unfinished": snap.errors_by_kind.get("unfinished", 0),
            "concurrency": {
                "configured": meta.concurrency,
                "max_in_flight": snap.max_in_flight,
                "final_limit": meta.final_limit,
            },
            "connections_opened": snap.connections_opened,
            "connection_attempts": snap.connection_attempts,
            "retried": snap.retried,
            "bytes_sent": snap.bytes_sent,
            "bytes_received": snap.bytes_received,
            "requests_by_name": names,
            "thresholds": [dict(t) for t in meta.thresholds],
        }
    )
    if snap.flows:
        doc["flows"] = {f.name: f.as_dict() for f in snap.flows}
    if snap.service_time is not None:
        doc["scheduler_lag_max_s"] = round(snap.max_scheduler_lag, 6)
    # Ballista's own delay, part of every latency above: large, and the generator was
    # the bottleneck rather than the target.
    doc["loop_lag_s"] = {"p95": round(snap.loop_lag, 6), "max": round(snap.max_loop_lag, 6)}
    if meta.notes:
        doc["notes"] = list(meta.notes)
    doc["histograms"] = histograms_dict(snap)
    if timeline is not None:
        doc["timeline"] = timeline.to_dict()
    return doc


def check_output_path(path: str | None, flag: str) -> None:
    """Fail before the run, not after it, when a result file cannot be written."""
    if path is None or path == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{flag}: {path!r} is a directory")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{flag}: no such directory {str(parent)!r}")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ConfigError(f"{flag}: cannot write {path!r} (permission denied)")


#: A list of numbers as `json.dumps(indent=2)` spreads it, one number a line.
_NUMBER_LIST = re.compile(r"\[\s+(-?[\d.eE+-]+(?:,\s+-?[\d.eE+-]+)*)\s+\]")


def to_json(doc: Mapping[str, Any]) -> str:
    """Indented for people, with lists of numbers (histogram buckets) kept on one line."""
    text = json.dumps(doc, indent=2)
    return _NUMBER_LIST.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)


def write_json(doc: Mapping[str, Any], path: str, stdout: TextIO) -> None:
    """`--json -` writes to standard output, anything else to that file."""
    text = to_json(doc) + "\n"
    if path == "-":
        stdout.write(text)
        stdout.flush()
    else:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)


def _count(n: float) -> str:
    return f"{n:,.0f}"


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


def format_summary(snap: Snapshot, meta: RunMeta) -> str:
    """The end-of-run summary for people."""
    lines: list[str] = []
    plural = "s" if meta.connections != 1 else ""
    if meta.model == "adaptive":
        limit = f"final limit {meta.final_limit}" if meta.final_limit is not None else "limit"
        conc = f"adaptive concurrency ({limit}, at most {meta.concurrency}), "
        conns = f"up to {meta.connections} connection{plural}"
    elif meta.model == "open":
        cap = f"at most {meta.concurrency} in flight, " if meta.concurrency else ""
        conc, conns = cap, f"up to {meta.connections} connection{plural}"
    else:
        who = "virtual users" if snap.flows else "concurrent"
        conc = f"{meta.concurrency} {who}, " if meta.concurrency else ""
        conns = f"{meta.connections} connection{plural}"
    lines.append(
        f"ballista {__version__} · {meta.target} · {meta.model} model · {meta.protocol} · "
        f"{conc}{conns}"
    )
    if meta.segment is not None:
        index, count = meta.segment
        lines.append(
            f"segment {index}/{count} of test {meta.test}: these figures are its share; "
            "`ballista merge` adds the segments up"
        )
    lines.append("")
    rate = f"{meta.rps_of(snap):,.1f}/s"
    lines.append(f"  duration     {format_duration(meta.duration_of(snap))}")
    lines.append(
        f"  requests     {_count(snap.requests)} ({rate})   responses {_count(snap.responses)}"
        f"   errors {_count(snap.errors)}"
    )
    lines.append(f"  failed       {_count(snap.failed)} ({snap.error_rate * 100:.2f}%)")
    if snap.dropped:
        lines.append(f"  dropped      {_count(snap.dropped)} (could not start in time)")
    lines.append(_latency_line("latency", snap.latency))
    if snap.service_time is not None:
        lines.append(_latency_line("service", snap.service_time))
    codes = "  ".join(f"{k}: {_count(v)}" for k, v in sorted(snap.status_codes.items()))
    lines.append(f"  status codes {codes or '-'}")
    errs = "  ".join(f"{k}: {_count(v)}" for k, v in snap.errors_by_kind.items() if v)
    lines.append(f"  errors       {errs or 'none'}")
    opened = f"{snap.connections_opened} opened"
    if snap.connection_attempts > snap.connections_opened:
        opened += f" of {snap.connection_attempts} attempts"
    lines.append(f"  connections  {opened}   peak in flight {snap.max_in_flight}")
    if snap.retried:
        lines.append(
            f"  retried      {_count(snap.retried)} (sent again: the server had not processed them)"
        )
    lines.append(
        f"  bytes        sent {_bytes(snap.bytes_sent)}   received {_bytes(snap.bytes_received)}"
    )
    if len(snap.by_request) > 1:
        lines.append("")
        lines.append("  by request")
        width = max(len(s.name) for s in snap.by_request)
        for s in snap.by_request:
            lines.append(
                f"    {s.name:<{width}}  {_count(s.requests):>9} req  {_count(s.failed):>7} failed"
                f"  p50 {format_duration(s.latency.p50):>9}  p99 {format_duration(s.latency.p99):>9}"
            )
    if snap.flows:
        lines.append("")
        lines.append("  flows")
        width = max(len(f.name) for f in snap.flows)
        for f in snap.flows:
            ended = f.completed + f.failed
            rate = f"{f.failure_rate * 100:.2f}%" if ended else "-"
            cut = f"  {_count(f.interrupted)} cut by the end" if f.interrupted else ""
            lines.append(
                f"    {f.name:<{width}}  {_count(f.iterations):>9} it  "
                f"{_count(f.completed):>9} ok  {_count(f.failed):>7} failed ({rate})"
                f"  p50 {format_duration(f.duration.p50):>9}  p95 {format_duration(f.duration.p95):>9}"
                f"  max {format_duration(f.duration.max):>9}{cut}"
            )
            if f.failures_by_reason:
                reasons = sorted(f.failures_by_reason.items(), key=lambda kv: -kv[1])
                shown = ", ".join(f"{reason} {_count(n)}" for reason, n in reasons[:6])
                more = f", {len(reasons) - 6} more" if len(reasons) > 6 else ""
                lines.append(f"    {'':<{width}}  failures: {shown}{more}")
    if meta.thresholds:
        lines.append("")
        lines.append("  thresholds")
        for t in meta.thresholds:
            verdict = "ok  " if t.get("ok") else "FAIL"
            lines.append(
                f"    {verdict} {t.get('expr')}  (value {t.get('display', t.get('value'))})"
            )
    for note in meta.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines) + "\n"


def generator_bound(loop_lag: float) -> str:
    """The live views' warning that Ballista, not the target, is the bottleneck now."""
    return f"generator-bound: event loop {loop_lag * 1e3:.0f}ms late"


def _latency_line(label: str, lat: LatencySummary) -> str:
    parts = [
        ("min", lat.min),
        ("mean", lat.mean),
        ("p50", lat.p50),
        ("p90", lat.p90),
        ("p95", lat.p95),
        ("p99", lat.p99),
        ("p99.9", lat.p999),
        ("max", lat.max),
    ]
    body = "  ".join(f"{k} {format_duration(v)}" for k, v in parts)
    return f"  {label:<12} {body}"


class LiveLine:
    """A one-line live display rewritten in place on a terminal, once per snapshot."""

    def __init__(
        self, out: TextIO, *, duration: float | None, total: int | None, width: int = 20
    ) -> None:
        self._out = out
        self._duration = duration
        self._total = total
        self._width = width
        self._shown = False

    def __call__(self, snap: Snapshot) -> None:
        if snap.final:
            self.clear()
            return
        self._out.write("\r\x1b[K" + self.render(snap))
        self._out.flush()
        self._shown = True

    def render(self, snap: Snapshot) -> str:
        progress = self._progress(snap)
        bar = ""
        if progress is not None:
            filled = round(progress * self._width)
            bar = f"[{'#' * filled}{'.' * (self._width - filled)}] "
        lat = snap.interval_latency
        p50 = format_duration(lat.p50) if lat is not None and lat.count else "-"
        p99 = format_duration(lat.p99) if lat is not None and lat.count else "-"
        total = f"/{format_duration(self._duration)}" if self._duration else ""
        text = (
            f"{bar}{format_duration(snap.elapsed)}{total}  {_count(snap.requests)} req  "
            f"{snap.interval_rps:,.0f}/s  p50 {p50}  p99 {p99}  failed {_count(snap.failed)}"
            f"  in flight {snap.in_flight}"
        )
        if snap.concurrency_limit is not None:
            text += f"  limit {snap.concurrency_limit}"
        if snap.target_rate is not None:
            text += f"  target {snap.target_rate:,.0f}/s"
        if snap.interval_scheduler_lag > LAG_WARNING:
            # Open model: requests started late with free slots: Ballista is the limit.
            text += f"  ! ballista lagging {snap.interval_scheduler_lag * 1e3:.0f}ms"
        elif snap.interval_loop_lag > LAG_WARNING:
            text += f"  ! {generator_bound(snap.interval_loop_lag)}"
        return text

    def _progress(self, snap: Snapshot) -> float | None:
        shares = []
        if self._duration:
            shares.append(snap.elapsed / self._duration)
        if self._total:
            shares.append(snap.requests / self._total)
        if not shares:
            return None
        value = max(shares)
        return min(1.0, max(0.0, value)) if math.isfinite(value) else None

    def clear(self) -> None:
        if self._shown:
            self._out.write("\r\x1b[K")
            self._out.flush()
            self._shown = False
