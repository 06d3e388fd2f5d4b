"""The run's statistics: cheap synchronous recording per request, one Snapshot per interval.

The hot path only touches the current interval's counters; `snapshot` folds the
interval into the cumulative figures. Memory is fixed by the number of
configured requests (plus the few distinct HTTP statuses seen), never by run
length. Time is always an argument: nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import add

from ballista.core.config import RequestSpec
from ballista.core.flowstats import FlowRecorder
from ballista.core.histogram import Histogram
from ballista.core.outcome import ERROR_KINDS, ERROR_LABELS, ErrorKind, Sample
from ballista.core.snapshot import LatencySummary, RequestStats, Snapshot

_KINDS = len(ERROR_KINDS)
#: Which percentile of the event loop's lag probes a snapshot reports.
LOOP_LAG_PERCENTILE = 95.0

# `record` indexes the error list with Sample.error as it is, so a response-less
# sample that says NO_ERROR (-1) lands on the last kind: keep that one OTHER.
if ERROR_KINDS[-1] is not ErrorKind.OTHER:  # pragma: no cover
    raise ImportError("ErrorKind.OTHER must be the last error kind")


class _Tally:
    """What one named request produced over some span of time."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "errors",
        "failed",
        "judged_failed",
        "latency",
        "statuses",
    )

    def __init__(self) -> None:
        self.latency = Histogram()
        #: responses by HTTP status
        self.statuses: dict[int, int] = {}
        #: requests without a response, indexed by ErrorKind value
        self.errors = [0] * _KINDS
        self.bytes_sent = 0
        self.bytes_received = 0
        #: kept by the cumulative tallies only: the hot path does not judge statuses
        self.failed = 0
        #: responses the caller judged failed (a journey's check), this interval
        self.judged_failed = 0

    @property
    def responses(self) -> int:
        return sum(self.statuses.values())

    @property
    def error_count(self) -> int:
        return sum(self.errors)


def _add_counts(into: dict[int, int], counts: Mapping[int, int]) -> None:
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


def _by_status(counts: Mapping[int, int]) -> dict[int, int]:
    return dict(sorted(counts.items()))


def _by_label(errors: Sequence[int]) -> dict[str, int]:
    return dict(zip(ERROR_LABELS, errors, strict=True))


class Recorder:
    """Aggregates Samples; hands out immutable Snapshots.

    Call `request_started` when a request begins and `record` when it ends
    (with a response or an error): `in_flight` is the difference. A Sample
    with a status > 0 is a response, whatever its `error`; one with status 0 is
    an error of kind `sample.error` (NO_ERROR there counts as OTHER).
    """

    def __init__(
        self,
        requests: Sequence[RequestSpec],
        *,
        track_service_time: bool = False,
        start: float,
        dynamic: bool = False,
    ) -> None:
        """`dynamic`: requests may be added during the run (`add_request`: journeys'
        steps, named as they first appear)."""
        self._specs = list(requests)
        self._start = start
        self._last = start
        self._seq = 0
        # per request: this interval, and the run until the previous snapshot
        self._interval = [_Tally() for _ in self._specs]
        self._totals = [_Tally() for _ in self._specs]
        # the whole run, all requests together (with one request, that request's)
        self._single = len(self._specs) == 1 and not dynamic
        self._latency = self._totals[0].latency if self._single else Histogram()
        self._window = Histogram()
        self._service: Histogram | None = Histogram() if track_service_time else None
        self._service_total: Histogram | None = Histogram() if track_service_time else None
        self._statuses: dict[int, int] = {}
        self._errors = [0] * _KINDS
        self._failed = 0
        self._bytes_sent = 0
        self._bytes_received = 0
        self._dropped = 0
        self._connections_opened = 0
        self._connections_closed = 0
        self._connection_attempts = 0
        self._retried = 0
        self._lag = 0.0
        self._max_lag = 0.0
        self._loop_lag = Histogram()
        self._loop_lag_total = Histogram()
        #: requests started and not yet recorded
        self.in_flight = 0
        #: the largest `in_flight` of the run
        self.max_in_flight = 0
        #: the current concurrency limit (closed and adaptive models), for snapshots
        self.concurrency_limit: int | None = None
        #: the current target rate in requests per second (open model), for snapshots
        self.target_rate: float | None = None
        #: journeys: the flows' own figures, handed out in each snapshot
        self.flows: FlowRecorder | None = None

    def add_request(self, spec: RequestSpec) -> int:
        """A named request first seen during the run (a dynamic recorder only): its index."""
        assert not self._single, "add_request needs Recorder(dynamic=True)"
        self._specs.append(spec)
        self._interval.append(_Tally())
        self._totals.append(_Tally())
        return len(self._specs) - 1

    # -- hot path ----------------------------------------------------------

    def request_started(self) -> None:
        in_flight = self.in_flight + 1
        self.in_flight = in_flight
        if in_flight > self.max_in_flight:  # noqa: PLR1730 (hot path: no builtin call)
            self.max_in_flight = in_flight

    def record(self, sample: Sample) -> None:
        """One finished request (it must have been announced by `request_started`)."""
        request, status, error, latency, service_time, sent, received = sample
        tally = self._interval[request]
        self.in_flight -= 1
        tally.latency.record(latency)
        if self._service is not None:
            self._service.record(service_time)
        if status > 0:
            statuses = tally.statuses
            statuses[status] = statuses.get(status, 0) + 1
        else:
            tally.errors[error] += 1
        tally.bytes_sent += sent
        tally.bytes_received += received

    def judged_failed(self, request: int) -> None:
        """A response just recorded for `request` failed a check of its caller's
        (a journey's): it counts as failed whatever its status."""
        self._interval[request].judged_failed += 1

    def record_dropped(self, n: int = 1) -> None:
        """Open model: `n` scheduled requests could not start (max in flight reached)."""
        self._dropped += n

    def connection_opened(self) -> None:
        self._connections_opened += 1

    def connection_closed(self) -> None:
        self._connections_closed += 1

    def connection_attempted(self) -> None:
        """A connection is being opened; `connection_opened` follows if it works out."""
        self._connection_attempts += 1

    def request_retried(self) -> None:
        """A request is sent again: the server said it had not processed it."""
        self._retried += 1

    def record_lag(self, seconds: float) -> None:
        """Open model: a request started `seconds` after its scheduled time."""
        self._lag = max(self._lag, seconds)

    def record_loop_lag(self, seconds: float) -> None:
        """The event loop woke a sleeper `seconds` late: Ballista's own delay."""
        self._loop_lag.record(max(0.0, seconds))

    # -- snapshots ---------------------------------------------------------

    def snapshot(self, now: float, *, final: bool = False) -> Snapshot:
        """Close the current interval at `now` and describe the run so far.

        Everything in the Snapshot is a private copy: later records do not
        change it.
        """
        interval = now - self._last
        self._last = now

        window_statuses: dict[int, int] = {}
        window_errors = [0] * _KINDS
        window_failed = 0
        by_request: list[RequestStats] = []
        for spec, tally, total in zip(self._specs, self._interval, self._totals, strict=True):
            failed = (
                sum(tally.errors)
                + sum(n for status, n in tally.statuses.items() if not spec.is_expected(status))
                + tally.judged_failed
            )
            tally.judged_failed = 0
            window_failed += failed
            total.failed += failed
            _add_counts(window_statuses, tally.statuses)
            _add_counts(total.statuses, tally.statuses)
            window_errors = list(map(add, window_errors, tally.errors))
            total.errors = list(map(add, total.errors, tally.errors))
            total.bytes_sent += tally.bytes_sent
            total.bytes_received += tally.bytes_received
            self._bytes_sent += tally.bytes_sent
            self._bytes_received += tally.bytes_received
            total.latency.merge(tally.latency)

            tally.statuses.clear()
            tally.errors = [0] * _KINDS
            tally.bytes_sent = tally.bytes_received = 0

            responses, errors = total.responses, total.error_count
            by_request.append(
                RequestStats(
                    name=spec.name,
                    method=spec.method,
                    requests=responses + errors,
                    responses=responses,
                    errors=errors,
                    failed=total.failed,
                    status_codes=_by_status(total.statuses),
                    errors_by_kind=_by_label(total.errors),
                    bytes_sent=total.bytes_sent,
                    bytes_received=total.bytes_received,
                    latency=total.latency.summary(),
                    histogram=total.latency.copy(),
                )
            )

        _add_counts(self._statuses, window_statuses)
        self._errors = list(map(add, self._errors, window_errors))
        self._failed += window_failed
        if self._single:
            window = self._interval[0].latency
            latency = by_request[0].latency
        else:
            window = self._window
            window.reset()
            for tally in self._interval:
                window.merge(tally.latency)
            self._latency.merge(window)
            latency = self._latency.summary()
        window_requests = window.count
        window_latency = window.summary()
        window_histogram = window.copy()
        for tally in self._interval:
            tally.latency.reset()
        service: LatencySummary | None = None
        service_histogram: Histogram | None = None
        if self._service is not None and self._service_total is not None:
            self._service_total.merge(self._service)
            self._service.reset()
            service = self._service_total.summary()
            service_histogram = self._service_total.copy()

        lag = self._lag
        self._lag = 0.0
        self._max_lag = max(self._max_lag, lag)
        loop_lag = self._loop_lag.percentile(LOOP_LAG_PERCENTILE) if self._loop_lag.count else 0.0
        self._loop_lag_total.merge(self._loop_lag)
        self._loop_lag.reset()
        total_lag = self._loop_lag_total
        loop_lag_run = total_lag.percentile(LOOP_LAG_PERCENTILE) if total_lag.count else 0.0
        responses = sum(self._statuses.values())
        errors = sum(self._errors)
        seq = self._seq
        self._seq += 1
        return Snapshot(
            seq=seq,
            elapsed=now - self._start,
            interval=interval,
            final=final,
            requests=responses + errors,
            responses=responses,
            errors=errors,
            failed=self._failed,
            status_codes=_by_status(self._statuses),
            errors_by_kind=_by_label(self._errors),
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            dropped=self._dropped,
            connections_opened=self._connections_opened,
            open_connections=self._connections_opened - self._connections_closed,
            latency=latency,
            service_time=service,
            histogram=self._latency.copy(),
            by_request=tuple(by_request),
            service_histogram=service_histogram,
            in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            concurrency_limit=self.concurrency_limit,
            target_rate=self.target_rate,
            interval_requests=window_requests,
            interval_failed=window_failed,
            interval_errors=sum(window_errors),
            interval_rps=window_requests / interval if interval > 0 else 0.0,
            interval_latency=window_latency,
            interval_histogram=window_histogram,
            interval_status_codes=_by_status(window_statuses),
            interval_errors_by_kind=_by_label(window_errors),
            interval_scheduler_lag=lag,
            max_scheduler_lag=self._max_lag,
            connection_attempts=self._connection_attempts,
            retried=self._retried,
            interval_loop_lag=loop_lag,
            loop_lag=loop_lag_run,
            max_loop_lag=total_lag.max,
            flows=self.flows.snapshot() if self.flows is not None else (),
        )
