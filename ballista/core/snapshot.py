"""Immutable views of a run's statistics, handed from the recorder to every consumer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ballista.core.flowstats import FlowStats
    from ballista.core.histogram import Histogram

#: The percentiles every summary reports, as (key, quantile in percent).
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("p999", 99.9),
)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency figures in seconds over some set of requests (NaN-free: 0.0 when empty)."""

    count: int
    min: float
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    p999: float
    max: float

    def as_dict(self) -> dict[str, float]:
        """The `latency_s` object of the JSON summary."""
        return {
            "min": self.min,
            "mean": self.mean,
            "p50": self.p50,
            "p90": self.p90,
            "p95": self.p95,
            "p99": self.p99,
            "p999": self.p999,
            "max": self.max,
        }


@dataclass(frozen=True, slots=True)
class RequestStats:
    """Cumulative figures of one named request (a scenario entry, or the single URL)."""

    name: str
    method: str
    requests: int
    responses: int
    errors: int
    failed: int
    status_codes: Mapping[int, int]
    errors_by_kind: Mapping[str, int]
    bytes_sent: int
    bytes_received: int
    latency: LatencySummary
    histogram: Histogram = field(repr=False)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything known about a run at one instant.

    Cumulative figures cover the run from its start; `interval_*` figures cover
    the time since the previous snapshot. Histograms are private copies: a
    consumer may keep a snapshot as long as it likes.
    """

    seq: int
    elapsed: float
    interval: float
    final: bool
    # cumulative
    requests: int
    responses: int
    errors: int
    failed: int
    status_codes: Mapping[int, int]
    errors_by_kind: Mapping[str, int]
    bytes_sent: int
    bytes_received: int
    dropped: int
    connections_opened: int
    open_connections: int
    latency: LatencySummary
    service_time: LatencySummary | None
    histogram: Histogram = field(repr=False)
    by_request: tuple[RequestStats, ...] = ()
    #: open model: the histogram behind `service_time`
    service_histogram: Histogram | None = field(default=None, repr=False)
    # gauges at the instant of the snapshot
    in_flight: int = 0
    max_in_flight: int = 0
    concurrency_limit: int | None = None
    target_rate: float | None = None
    # per interval
    interval_requests: int = 0
    interval_failed: int = 0
    interval_errors: int = 0
    interval_rps: float = 0.0
    interval_latency: LatencySummary | None = None
    #: this interval's latency histogram (a private copy): timelines, merges, stores
    interval_histogram: Histogram | None = field(default=None, repr=False)
    interval_status_codes: Mapping[int, int] = field(default_factory=dict)
    interval_errors_by_kind: Mapping[str, int] = field(default_factory=dict)
    #: open model: the largest delay, in seconds, between a request's scheduled
    #: time and the moment Ballista managed to start it, this interval.
    interval_scheduler_lag: float = 0.0
    max_scheduler_lag: float = 0.0
    #: connections tried, whether or not they were established (TCP, TLS, ALPN)
    connection_attempts: int = 0
    #: requests sent again because the server had not processed them (a GOAWAY
    #: above their stream, or a keep-alive connection it closed as it was reused)
    retried: int = 0
    #: how late Ballista's event loop woke a sleeper (p95 of a probe every 10 ms):
    #: delay of the generator's own, included in every latency. This interval...
    interval_loop_lag: float = 0.0
    #: ...and the run so far (p95, and the largest)
    loop_lag: float = 0.0
    max_loop_lag: float = 0.0
    #: journeys: each flow's figures, cumulative (configuration order)
    flows: tuple[FlowStats, ...] = ()

    @property
    def rps(self) -> float:
        """Mean requests per second over the whole run so far."""
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def error_rate(self) -> float:
        """Share of requests that failed (errors + unexpected statuses)."""
        return self.failed / self.requests if self.requests else 0.0
