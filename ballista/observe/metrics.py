"""Prometheus exposition of a run: a custom collector over the latest Snapshot, and /metrics.

The engine hands every snapshot to `MetricsExporter.update`, which only keeps
a reference to it: nothing is formatted and no prometheus-client object is
touched per request or per snapshot. A scrape reads the latest snapshot and
builds the metric families then, in the exporter's own registry (never the
global REGISTRY), beside the process and GC collectors.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import trio
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from ballista import __version__
from ballista.core.outcome import ERROR_LABELS
from ballista.core.redact import redact_url
from ballista.observe.httpserver import Handler, Request, Response, serve_http, text_response

if TYPE_CHECKING:
    from ballista.core.config import RunConfig
    from ballista.core.histogram import Histogram
    from ballista.core.snapshot import RequestStats, Snapshot
    from ballista.engine.engine import RunInfo

#: Upper bounds (seconds) of `ballista_request_duration_seconds`, 0.5 ms to 60 s.
#: The same in every process, so Prometheus can sum the buckets of many workers;
#: about four per decade, which keeps histogram_quantile within ~25% anywhere.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    60.0,
)
_BUCKET_LABELS: tuple[str, ...] = tuple(repr(b) for b in LATENCY_BUCKETS)

_REQ = ("scenario", "request")


class _Names:
    requests = "ballista_requests"
    errors = "ballista_request_errors"
    duration = "ballista_request_duration_seconds"
    in_flight = "ballista_in_flight_requests"
    limit = "ballista_concurrency_limit"
    target_rate = "ballista_target_rate_requests_per_second"
    dropped = "ballista_dropped_requests"
    connections_opened = "ballista_connections_opened"
    open_connections = "ballista_open_connections"
    request_bytes = "ballista_request_bytes"
    response_bytes = "ballista_response_bytes"
    run_info = "ballista_run_info"
    build_info = "ballista_build_info"
    flow_started = "ballista_flow_iterations_started"
    flow_iterations = "ballista_flow_iterations"
    flow_failures = "ballista_flow_failures"
    flow_duration = "ballista_flow_duration_seconds"


#: How an iteration ended, the `outcome` label of ballista_flow_iterations_total.
FLOW_OUTCOMES = ("completed", "failed", "interrupted")


class MetricsExporter(Collector):
    """Ballista's metrics for one run, as in the table of docs/metrics-and-dashboards.md.

    `update` (a snapshot sink) and `on_start` (an engine hook) are cheap and
    synchronous. `render(accept)` is what /metrics serves.

    Series exist from the start with zero values (every configured request,
    every error kind, the `error` status) so that `rate()` sees the first
    increments. `ballista_concurrency_limit` is the closed/adaptive limit, or
    the open model's `--max-in-flight`; absent when there is none.
    `ballista_target_rate_requests_per_second` is present in the open model only.
    """

    def __init__(
        self, config: RunConfig, *, run_id: str, registry: CollectorRegistry | None = None
    ) -> None:
        self.config = config
        self.run_id = run_id
        self.scenario = config.scenario
        self.info: RunInfo | None = None
        self.latest: Snapshot | None = None
        self.registry = CollectorRegistry() if registry is None else registry
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    # -- fed by the engine ---------------------------------------------------

    def update(self, snap: Snapshot) -> None:
        """Snapshot sink: keep the latest (called synchronously by the engine)."""
        self.latest = snap

    def on_start(self, info: RunInfo) -> None:
        """Engine hook: the protocol and model are known."""
        self.info = info

    # -- exposition ------------------------------------------------------------

    def render(self, accept_header: str = "") -> tuple[str, bytes]:
        """(content type, body) of a scrape: OpenMetrics when Accept asks for it, else text 0.0.4."""
        encoder, content_type = choose_encoder(accept_header)
        return content_type, encoder(self.registry)

    def describe(self) -> Iterator[Metric]:
        """The families this collector yields (names only), for the registry's duplicate check."""
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self.latest)

    def _families(self, snap: Snapshot | None) -> Iterator[Metric]:
        scenario = self.scenario
        base = [scenario]
        stats: dict[str, RequestStats] = (
            {r.name: r for r in snap.by_request} if snap is not None else {}
        )
        journeys = self.config.journeys
        if journeys is None:
            specs = [(r.name, r.method) for r in self.config.requests]
        else:
            # Steps are named as journeys run (bounded by MAX_STEP_NAMES): those seen so
            # far, and from the start those a TOML flow names.
            specs = [(r.name, r.method) for r in stats.values()]
            specs += [(n, "GET") for n in journeys.step_names if n not in stats]

        requests = CounterMetricFamily(
            _Names.requests,
            "Requests finished, by HTTP status (`error`: no response at all).",
            labels=[*_REQ, "method", "status"],
        )
        errors = CounterMetricFamily(
            _Names.errors,
            "Requests that got no HTTP response, by kind.",
            labels=[*_REQ, "kind"],
        )
        duration = HistogramMetricFamily(
            _Names.duration,
            "Request latency in seconds (open model: from the scheduled send time).",
            labels=list(_REQ),
        )
        sent = CounterMetricFamily(
            _Names.request_bytes,
            "Bytes sent to the target (request heads and bodies).",
            labels=list(_REQ),
        )
        received = CounterMetricFamily(
            _Names.response_bytes, "Bytes received from the target (responses).", labels=list(_REQ)
        )
        for name, method in specs:
            labels = [scenario, name]
            rs = stats.get(name)
            if rs is None:
                requests.add_metric([*labels, method, "error"], 0)
                for kind in ERROR_LABELS:
                    errors.add_metric([*labels, kind], 0)
                duration.add_metric(labels, _zero_buckets(), 0.0)
                sent.add_metric(labels, 0)
                received.add_metric(labels, 0)
                continue
            for status, count in sorted(rs.status_codes.items()):
                requests.add_metric([*labels, rs.method, str(status)], count)
            requests.add_metric([*labels, rs.method, "error"], rs.errors)
            by_kind = rs.errors_by_kind
            for kind in ERROR_LABELS:
                errors.add_metric([*labels, kind], by_kind.get(kind, 0))
            duration.add_metric(labels, _buckets(rs.histogram), rs.histogram.total)
            sent.add_metric(labels, rs.bytes_sent)
            received.add_metric(labels, rs.bytes_received)
        yield requests
        yield errors
        yield duration
        yield sent
        yield received
        if journeys is not None:
            yield from self._flow_families(snap)

        in_flight = GaugeMetricFamily(
            _Names.in_flight, "Requests sent and not yet finished.", labels=["scenario"]
        )
        limit = GaugeMetricFamily(
            _Names.limit,
            "Cap on requests in flight: closed/adaptive workers, open-model --max-in-flight.",
            labels=["scenario"],
        )
        rate = GaugeMetricFamily(
            _Names.target_rate,
            "Open model: the request rate being scheduled.",
            labels=["scenario"],
        )
        dropped = CounterMetricFamily(
            _Names.dropped,
            "Open model: scheduled requests that could not start in time and were not sent.",
            labels=["scenario"],
        )
        opened = CounterMetricFamily(
            _Names.connections_opened, "Connections opened to the target.", labels=["scenario"]
        )
        open_now = GaugeMetricFamily(
            _Names.open_connections, "Connections to the target open now.", labels=["scenario"]
        )
        in_flight.add_metric(base, snap.in_flight if snap is not None else 0)
        cap = snap.concurrency_limit if snap is not None else None
        if cap is None and self.config.load.model == "open":
            cap = self.config.load.max_in_flight
        if cap is not None:
            limit.add_metric(base, cap)
        if snap is not None and snap.target_rate is not None:
            rate.add_metric(base, snap.target_rate)
        dropped.add_metric(base, snap.dropped if snap is not None else 0)
        opened.add_metric(base, snap.connections_opened if snap is not None else 0)
        open_now.add_metric(base, snap.open_connections if snap is not None else 0)
        yield in_flight
        yield limit
        yield rate
        yield dropped
        yield opened
        yield open_now

        info = self.info
        run_info = GaugeMetricFamily(
            _Names.run_info,
            "Always 1: what this run is (scenario, run id, target, load model, protocol).",
            labels=["scenario", "run_id", "target", "model", "protocol"],
        )
        run_info.add_metric(
            [
                scenario,
                self.run_id,
                redact_url(self.config),  # a label others scrape: no secrets
                info.model if info is not None else self.config.load.model,
                info.protocol if info is not None else _configured_protocol(self.config),
            ],
            1,
        )
        yield run_info
        build = GaugeMetricFamily(
            _Names.build_info, "Always 1: the Ballista version.", labels=["version"]
        )
        build.add_metric([__version__], 1)
        yield build

    def _flow_families(self, snap: Snapshot | None) -> Iterator[Metric]:
        """Journeys' flows: iterations by outcome, failures by reason, durations. Labels
        are flow names (configuration) and reasons (bounded per flow by MAX_REASONS)."""
        journeys = self.config.journeys
        assert journeys is not None
        scenario = self.scenario
        started = CounterMetricFamily(
            _Names.flow_started, "Journey iterations started, by flow.", labels=["scenario", "flow"]
        )
        ended = CounterMetricFamily(
            _Names.flow_iterations,
            "Journey iterations ended, by flow and outcome (completed, failed, or "
            "interrupted by the end of the run).",
            labels=["scenario", "flow", "outcome"],
        )
        failures = CounterMetricFamily(
            _Names.flow_failures,
            "Failed journey iterations, by flow and reason (a check, a status, journey_error).",
            labels=["scenario", "flow", "reason"],
        )
        duration = HistogramMetricFamily(
            _Names.flow_duration,
            "Duration of journey iterations that ended (completed or failed), in seconds.",
            labels=["scenario", "flow"],
        )
        seen = {f.name: f for f in snap.flows} if snap is not None else {}
        names = [f.name for f in journeys.flows]
        if journeys.setup is not None:
            names.append(next((n for n in seen if n not in names), "setup"))
        for name in names:
            labels = [scenario, name]
            fs = seen.get(name)
            if fs is None:
                started.add_metric(labels, 0)
                for outcome in FLOW_OUTCOMES:
                    ended.add_metric([*labels, outcome], 0)
                duration.add_metric(labels, _zero_buckets(), 0.0)
                continue
            started.add_metric(labels, fs.iterations)
            for outcome, n in zip(
                FLOW_OUTCOMES, (fs.completed, fs.failed, fs.interrupted), strict=True
            ):
                ended.add_metric([*labels, outcome], n)
            for reason, n in sorted(fs.failures_by_reason.items()):
                failures.add_metric([*labels, reason], n)
            duration.add_metric(labels, _buckets(fs.histogram), fs.histogram.total)
        yield started
        yield ended
        yield failures
        yield duration


def _configured_protocol(config: RunConfig) -> str:
    """The protocol before the engine has negotiated it."""
    return {"http1": "HTTP/1.1", "http2": "HTTP/2"}.get(config.protocol, "auto")


def _zero_buckets() -> list[tuple[str, float]]:
    return [*((le, 0) for le in _BUCKET_LABELS), ("+Inf", 0)]


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    counts = histogram.cumulative_counts(LATENCY_BUCKETS)
    return [*zip(_BUCKET_LABELS, counts, strict=False), ("+Inf", histogram.count)]


# -- serving -------------------------------------------------------------------


def metrics_handler(exporter: MetricsExporter) -> Handler:
    """The /metrics route: GET (and HEAD) render the exporter, content-negotiated."""

    def handle(request: Request) -> Response:
        if request.method != "GET":
            return Response(
                405, [("allow", "GET, HEAD"), ("content-type", "text/plain")], b"GET only\n"
            )
        content_type, body = exporter.render(request.header("accept"))
        return Response(200, [("content-type", content_type)], body)

    return handle


def _index(request: Request) -> Response:
    return Response(
        200,
        [("content-type", "text/html; charset=utf-8")],
        b'<!doctype html><title>Ballista</title><p><a href="/metrics">/metrics</a></p>\n',
    )


def _ready(request: Request) -> Response:
    return text_response(200, "ok\n")


async def serve_metrics(
    exporter: MetricsExporter,
    host: str,
    port: int,
    *,
    routes: Mapping[str, Handler] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics (and `routes`, e.g. the live page's `/` and `/static/`) until cancelled.

    `task_status.started(bound_port)`; port 0 picks a free one. `routes` win
    over the defaults (`/` links to /metrics, `/-/ready` answers ok).
    """
    table: dict[str, Handler] = {
        "/": _index,
        "/-/ready": _ready,
        "/metrics": metrics_handler(exporter),
    }
    table.update(routes or {})
    await serve_http(table, host, port, what="metrics endpoint", task_status=task_status)


__all__ = [
    "LATENCY_BUCKETS",
    "MetricsExporter",
    "metrics_handler",
    "serve_metrics",
]
