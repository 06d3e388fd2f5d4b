"""Snapshots as plain JSON-able data, exactly: what a `--workers` child sends its parent.

Counts as integers, histograms sparse (`Histogram.to_dict`), floats as JSON
writes them (shortest repr, read back bit for bit). Summaries (percentiles)
are not sent: they are rebuilt from the histograms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ballista.core.flowstats import FlowStats
from ballista.core.histogram import Histogram
from ballista.core.snapshot import RequestStats, Snapshot

#: Version of the messages between a parent and its workers (both are the same
#: Ballista, so this guards against a mixed installation, not old files).
WIRE_VERSION = 1


def _hist(hist: Histogram | None) -> dict[str, Any] | None:
    return None if hist is None else hist.to_dict()


def _statuses(counts: Mapping[int, int]) -> dict[str, int]:
    return {str(k): n for k, n in counts.items()}


def snapshot_to_wire(snap: Snapshot) -> dict[str, Any]:
    """The snapshot as JSON-able data; `snapshot_from_wire` reads it back equal."""
    single = len(snap.by_request) == 1
    return {
        "seq": snap.seq,
        "elapsed": snap.elapsed,
        "interval": snap.interval,
        "final": snap.final,
        "requests": snap.requests,
        "responses": snap.responses,
        "errors": snap.errors,
        "failed": snap.failed,
        "status_codes": _statuses(snap.status_codes),
        "errors_by_kind": dict(snap.errors_by_kind),
        "bytes_sent": snap.bytes_sent,
        "bytes_received": snap.bytes_received,
        "dropped": snap.dropped,
        "connections_opened": snap.connections_opened,
        "open_connections": snap.open_connections,
        # With one request, the run's histogram is that request's: sent once.
        "histogram": None if single else snap.histogram.to_dict(),
        "by_request": [
            {
                "name": s.name,
                "method": s.method,
                "requests": s.requests,
                "responses": s.responses,
                "errors": s.errors,
                "failed": s.failed,
                "status_codes": _statuses(s.status_codes),
                "errors_by_kind": dict(s.errors_by_kind),
                "bytes_sent": s.bytes_sent,
                "bytes_received": s.bytes_received,
                "histogram": s.histogram.to_dict(),
            }
            for s in snap.by_request
        ],
        "service_histogram": _hist(snap.service_histogram),
        "in_flight": snap.in_flight,
        "max_in_flight": snap.max_in_flight,
        "concurrency_limit": snap.concurrency_limit,
        "target_rate": snap.target_rate,
        "interval_requests": snap.interval_requests,
        "interval_failed": snap.interval_failed,
        "interval_errors": snap.interval_errors,
        "interval_histogram": _hist(snap.interval_histogram),
        "interval_status_codes": _statuses(snap.interval_status_codes),
        "interval_errors_by_kind": dict(snap.interval_errors_by_kind),
        "interval_scheduler_lag": snap.interval_scheduler_lag,
        "max_scheduler_lag": snap.max_scheduler_lag,
        "connection_attempts": snap.connection_attempts,
        "retried": snap.retried,
        "interval_loop_lag": snap.interval_loop_lag,
        "loop_lag": snap.loop_lag,
        "max_loop_lag": snap.max_loop_lag,
        # journeys: each flow's counts and duration histogram
        "flows": [
            {
                "name": f.name,
                "iterations": f.iterations,
                "completed": f.completed,
                "failed": f.failed,
                "interrupted": f.interrupted,
                "failures_by_reason": dict(f.failures_by_reason),
                "histogram": f.histogram.to_dict(),
            }
            for f in snap.flows
        ],
    }


def _read_hist(raw: Any) -> Histogram | None:
    return None if raw is None else Histogram.from_dict(raw)


def _read_statuses(raw: Mapping[str, int]) -> dict[int, int]:
    return {int(k): int(n) for k, n in raw.items()}


def snapshot_from_wire(doc: Mapping[str, Any]) -> Snapshot:
    """Read back `snapshot_to_wire`'s form. ValueError (or KeyError, TypeError)
    when it is not: the sender is broken, not the user's input."""
    by_request: list[RequestStats] = []
    for s in doc["by_request"]:
        hist = Histogram.from_dict(s["histogram"])
        by_request.append(
            RequestStats(
                name=str(s["name"]),
                method=str(s["method"]),
                requests=int(s["requests"]),
                responses=int(s["responses"]),
                errors=int(s["errors"]),
                failed=int(s["failed"]),
                status_codes=_read_statuses(s["status_codes"]),
                errors_by_kind=dict(s["errors_by_kind"]),
                bytes_sent=int(s["bytes_sent"]),
                bytes_received=int(s["bytes_received"]),
                latency=hist.summary(),
                histogram=hist,
            )
        )
    if doc["histogram"] is None:
        if len(by_request) != 1:
            raise ValueError("a snapshot without its histogram must have one request")
        histogram = by_request[0].histogram.copy()
    else:
        histogram = Histogram.from_dict(doc["histogram"])
    service = _read_hist(doc["service_histogram"])
    window = _read_hist(doc["interval_histogram"])
    interval = float(doc["interval"])
    limit = doc["concurrency_limit"]
    rate = doc["target_rate"]
    window_requests = int(doc["interval_requests"])
    return Snapshot(
        seq=int(doc["seq"]),
        elapsed=float(doc["elapsed"]),
        interval=interval,
        final=bool(doc["final"]),
        requests=int(doc["requests"]),
        responses=int(doc["responses"]),
        errors=int(doc["errors"]),
        failed=int(doc["failed"]),
        status_codes=_read_statuses(doc["status_codes"]),
        errors_by_kind=dict(doc["errors_by_kind"]),
        bytes_sent=int(doc["bytes_sent"]),
        bytes_received=int(doc["bytes_received"]),
        dropped=int(doc["dropped"]),
        connections_opened=int(doc["connections_opened"]),
        open_connections=int(doc["open_connections"]),
        latency=histogram.summary(),
        service_time=None if service is None else service.summary(),
        histogram=histogram,
        by_request=tuple(by_request),
        service_histogram=service,
        in_flight=int(doc["in_flight"]),
        max_in_flight=int(doc["max_in_flight"]),
        concurrency_limit=None if limit is None else int(limit),
        target_rate=None if rate is None else float(rate),
        interval_requests=window_requests,
        interval_failed=int(doc["interval_failed"]),
        interval_errors=int(doc["interval_errors"]),
        interval_rps=window_requests / interval if interval > 0 else 0.0,
        interval_latency=None if window is None else window.summary(),
        interval_histogram=window,
        interval_status_codes=_read_statuses(doc["interval_status_codes"]),
        interval_errors_by_kind=dict(doc["interval_errors_by_kind"]),
        interval_scheduler_lag=float(doc["interval_scheduler_lag"]),
        max_scheduler_lag=float(doc["max_scheduler_lag"]),
        connection_attempts=int(doc["connection_attempts"]),
        retried=int(doc["retried"]),
        interval_loop_lag=float(doc["interval_loop_lag"]),
        loop_lag=float(doc["loop_lag"]),
        max_loop_lag=float(doc["max_loop_lag"]),
        flows=tuple(_read_flow(f) for f in doc.get("flows", ())),
    )


def _read_flow(f: Mapping[str, Any]) -> FlowStats:
    hist = Histogram.from_dict(f["histogram"])
    return FlowStats(
        name=str(f["name"]),
        iterations=int(f["iterations"]),
        completed=int(f["completed"]),
        failed=int(f["failed"]),
        interrupted=int(f["interrupted"]),
        failures_by_reason={str(k): int(n) for k, n in f["failures_by_reason"].items()},
        duration=hist.summary(),
        histogram=hist,
    )
