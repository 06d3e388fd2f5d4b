"""Recorder: exact counts across snapshots, interval vs cumulative, gauges, lag."""

from __future__ import annotations

import dataclasses

import pytest

from ballista.core.config import RequestSpec
from ballista.core.outcome import ERROR_LABELS, NO_ERROR, ErrorKind, Sample
from ballista.core.recorder import Recorder

HOME = RequestSpec("home", "GET", "/")
LOGIN = RequestSpec("login", "POST", "/login", expected=frozenset({200, 401}))
NO_KINDS = dict.fromkeys(ERROR_LABELS, 0)


def ok(
    request: int = 0, status: int = 200, latency: float = 0.01, service: float = 0.005
) -> Sample:
    return Sample(request, status, NO_ERROR, latency, service, 100, 1000)


def err(kind: ErrorKind, request: int = 0, latency: float = 1.0) -> Sample:
    return Sample(request, 0, kind, latency, latency, 100, 0)


def finish(rec: Recorder, *samples: Sample) -> None:
    for sample in samples:
        rec.request_started()
        rec.record(sample)


def kinds(**counts: int) -> dict[str, int]:
    return {**NO_KINDS, **counts}


def test_counts_across_snapshots() -> None:
    rec = Recorder([HOME], start=100.0)
    finish(rec, ok(), ok(), ok(status=503), err(ErrorKind.READ_TIMEOUT))
    s0 = rec.snapshot(101.0)
    assert (s0.seq, s0.elapsed, s0.interval, s0.final) == (0, 1.0, 1.0, False)
    assert (s0.requests, s0.responses, s0.errors, s0.failed) == (4, 3, 1, 2)
    assert s0.status_codes == {200: 2, 503: 1}
    assert s0.errors_by_kind == kinds(read_timeout=1)
    assert (s0.bytes_sent, s0.bytes_received) == (400, 3000)
    assert (s0.interval_requests, s0.interval_failed, s0.interval_errors) == (4, 2, 1)
    assert s0.interval_rps == 4.0
    assert s0.interval_status_codes == {200: 2, 503: 1}
    assert s0.interval_errors_by_kind == kinds(read_timeout=1)
    assert s0.latency.count == s0.histogram.count == 4
    assert s0.latency.max == 1.0
    assert s0.rps == 4.0
    assert s0.error_rate == 0.5

    finish(rec, ok(status=404), err(ErrorKind.CONNECT_REFUSED), err(ErrorKind.READ_TIMEOUT))
    s1 = rec.snapshot(103.0)
    assert (s1.seq, s1.elapsed, s1.interval) == (1, 3.0, 2.0)
    assert (s1.requests, s1.responses, s1.errors, s1.failed) == (7, 4, 3, 5)
    assert s1.status_codes == {200: 2, 404: 1, 503: 1}
    assert list(s1.status_codes) == [200, 404, 503]
    assert s1.errors_by_kind == kinds(read_timeout=2, connect_refused=1)
    assert (s1.bytes_sent, s1.bytes_received) == (700, 4000)
    assert (s1.interval_requests, s1.interval_failed, s1.interval_errors) == (3, 3, 2)
    assert s1.interval_rps == 1.5
    assert s1.interval_status_codes == {404: 1}
    assert s1.interval_errors_by_kind == kinds(read_timeout=1, connect_refused=1)
    assert s1.interval_latency is not None
    assert s1.interval_latency.count == 3
    assert s1.latency.count == s1.histogram.count == 7

    s2 = rec.snapshot(104.0, final=True)
    assert (s2.seq, s2.final, s2.requests, s2.failed) == (2, True, 7, 5)
    assert (s2.interval_requests, s2.interval_failed, s2.interval_errors) == (0, 0, 0)
    assert s2.interval_rps == 0.0
    assert s2.interval_status_codes == {}
    assert s2.interval_errors_by_kind == NO_KINDS
    assert s2.interval_latency is not None
    assert s2.interval_latency.count == 0
    assert s2.interval_latency.p99 == 0.0
    assert s2.latency.count == 7


def test_empty_snapshot() -> None:
    rec = Recorder([HOME], start=5.0)
    s = rec.snapshot(5.0)
    assert (s.requests, s.failed, s.interval, s.elapsed, s.interval_rps, s.rps) == (
        0,
        0,
        0,
        0,
        0,
        0,
    )
    assert s.errors_by_kind == NO_KINDS
    assert s.latency.p50 == 0.0
    assert s.service_time is None
    assert len(s.by_request) == 1


def test_latency_percentiles() -> None:
    rec = Recorder([HOME], start=0.0)
    finish(rec, *(ok(latency=i / 1000) for i in range(1, 1001)))
    s = rec.snapshot(1.0)
    assert s.latency.min == 0.001
    assert s.latency.max == 1.0
    assert s.latency.mean == pytest.approx(0.5005)
    assert s.latency.p50 == pytest.approx(0.5, rel=0.005)
    assert s.latency.p99 == pytest.approx(0.99, rel=0.005)
    assert s.interval_latency == s.latency
    finish(rec, ok(latency=2.0))
    s = rec.snapshot(2.0)
    assert s.interval_latency is not None
    assert s.interval_latency.p50 == s.interval_latency.min == 2.0
    assert s.latency.max == 2.0
    assert s.latency.count == 1001


def test_expected_statuses_per_request() -> None:
    rec = Recorder([HOME, LOGIN], start=0.0)
    finish(
        rec,
        ok(0, 200),
        ok(0, 302),
        ok(0, 401),  # unexpected for home (200-399)
        ok(1, 200),
        ok(1, 401),  # expected for login
        ok(1, 302),  # unexpected for login
        err(ErrorKind.TLS, request=1),
    )
    s = rec.snapshot(1.0)
    assert (s.requests, s.responses, s.errors, s.failed) == (7, 6, 1, 3)
    home, login = s.by_request
    assert (home.name, home.method, login.name, login.method) == ("home", "GET", "login", "POST")
    assert (home.requests, home.responses, home.errors, home.failed) == (3, 3, 0, 1)
    assert (login.requests, login.responses, login.errors, login.failed) == (4, 3, 1, 2)
    assert home.status_codes == {200: 1, 302: 1, 401: 1}
    assert login.status_codes == {200: 1, 302: 1, 401: 1}
    assert home.errors_by_kind == NO_KINDS
    assert login.errors_by_kind == kinds(tls=1)
    assert (home.bytes_sent, home.bytes_received) == (300, 3000)
    assert (login.bytes_sent, login.bytes_received) == (400, 3000)
    assert home.latency.count == home.histogram.count == 3
    assert login.latency.count == login.histogram.count == 4
    assert s.status_codes == {200: 2, 302: 2, 401: 2}


def test_per_request_stats_accumulate() -> None:
    rec = Recorder([HOME, LOGIN], start=0.0)
    finish(rec, ok(0, latency=0.001), ok(1, latency=0.5))
    rec.snapshot(1.0)
    finish(rec, ok(0, 500, latency=0.002))
    home, login = rec.snapshot(2.0).by_request
    assert (home.requests, home.failed, home.latency.max) == (2, 1, 0.002)
    assert (login.requests, login.failed, login.latency.max) == (1, 0, 0.5)


def test_status_zero_without_error_kind_counts_as_other() -> None:
    rec = Recorder([HOME], start=0.0)
    finish(rec, Sample(0, 0, NO_ERROR, 0.1, 0.1, 0, 0))
    s = rec.snapshot(1.0)
    assert (s.errors, s.failed) == (1, 1)
    assert s.errors_by_kind == kinds(other=1)


def test_every_error_kind() -> None:
    rec = Recorder([HOME], start=0.0)
    finish(rec, *(err(kind) for kind in ErrorKind))
    s = rec.snapshot(1.0)
    assert s.errors_by_kind == dict.fromkeys(ERROR_LABELS, 1)
    assert (s.errors, s.failed, s.responses) == (len(ErrorKind),) * 2 + (0,)


def test_in_flight() -> None:
    rec = Recorder([HOME], start=0.0)
    for _ in range(3):
        rec.request_started()
    rec.record(ok())
    rec.request_started()
    rec.record(ok())
    s = rec.snapshot(1.0)
    assert (s.in_flight, s.max_in_flight) == (2, 3)
    assert (rec.in_flight, rec.max_in_flight) == (2, 3)
    rec.record(ok())
    rec.record(ok())
    s = rec.snapshot(2.0)
    assert (s.in_flight, s.max_in_flight) == (0, 3)


def test_service_time_only_when_tracked() -> None:
    plain = Recorder([HOME], start=0.0)
    finish(plain, ok(latency=0.5, service=0.1))
    assert plain.snapshot(1.0).service_time is None

    rec = Recorder([HOME], track_service_time=True, start=0.0)
    finish(rec, ok(latency=0.5, service=0.1), ok(latency=0.7, service=0.3))
    s = rec.snapshot(1.0)
    assert s.service_time is not None
    assert (s.service_time.count, s.service_time.min, s.service_time.max) == (2, 0.1, 0.3)
    assert (s.latency.min, s.latency.max) == (0.5, 0.7)
    finish(rec, ok(latency=0.9, service=0.05))
    s = rec.snapshot(2.0)
    assert s.service_time is not None
    assert (s.service_time.count, s.service_time.min, s.service_time.max) == (3, 0.05, 0.3)


def test_counters_and_gauges() -> None:
    rec = Recorder([HOME], start=0.0)
    rec.record_dropped()
    rec.record_dropped(4)
    for _ in range(3):
        rec.connection_opened()
    rec.connection_closed()
    rec.concurrency_limit = 12
    rec.target_rate = 250.0
    s = rec.snapshot(1.0)
    assert (s.dropped, s.connections_opened, s.open_connections) == (5, 3, 2)
    assert (s.concurrency_limit, s.target_rate) == (12, 250.0)
    rec.concurrency_limit = None
    s = rec.snapshot(2.0)
    assert (s.dropped, s.connections_opened, s.concurrency_limit) == (5, 3, None)


def test_connection_attempts_and_retries_are_cumulative() -> None:
    rec = Recorder([HOME], start=0.0)
    for _ in range(4):
        rec.connection_attempted()
    rec.connection_opened()
    rec.request_retried()
    s = rec.snapshot(1.0)
    assert (s.connection_attempts, s.connections_opened, s.retried) == (4, 1, 1)
    rec.request_retried()
    s = rec.snapshot(2.0)
    assert (s.connection_attempts, s.retried) == (4, 2)


def test_scheduler_lag() -> None:
    rec = Recorder([HOME], start=0.0)
    s = rec.snapshot(1.0)
    assert (s.interval_scheduler_lag, s.max_scheduler_lag) == (0.0, 0.0)
    for lag in (0.001, 0.02, 0.005):
        rec.record_lag(lag)
    s = rec.snapshot(2.0)
    assert (s.interval_scheduler_lag, s.max_scheduler_lag) == (0.02, 0.02)
    rec.record_lag(0.003)
    s = rec.snapshot(3.0)
    assert (s.interval_scheduler_lag, s.max_scheduler_lag) == (0.003, 0.02)
    s = rec.snapshot(4.0)
    assert (s.interval_scheduler_lag, s.max_scheduler_lag) == (0.0, 0.02)


def test_snapshots_are_immutable_and_independent() -> None:
    rec = Recorder([HOME], track_service_time=True, start=0.0)
    finish(rec, ok(latency=0.01), err(ErrorKind.RESET))
    s = rec.snapshot(1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.requests = 0  # type: ignore[misc]

    def contents() -> tuple[object, ...]:
        return (
            s.histogram.count,
            s.histogram.max,
            s.by_request[0].histogram.count,
            dict(s.status_codes),
            dict(s.errors_by_kind),
            dict(s.by_request[0].status_codes),
            dict(s.interval_status_codes),
        )

    before = contents()
    finish(rec, ok(latency=5.0), ok(status=500), err(ErrorKind.RESET))
    later = rec.snapshot(2.0)
    after = contents()
    assert before == after == (2, 1.0, 2, {200: 1}, kinds(reset=1), {200: 1}, {200: 1})
    assert later.histogram.count == 5
    # the snapshot's histograms are copies: a consumer changing them changes nothing else
    later.histogram.record(100.0)
    later.by_request[0].histogram.record(100.0)
    assert rec.snapshot(3.0).latency.max == 5.0
    assert later.histogram is not later.by_request[0].histogram


def test_request_index_out_of_range_is_a_bug() -> None:
    rec = Recorder([HOME], start=0.0)
    with pytest.raises(IndexError):
        rec.record(ok(request=1))


def test_memory_is_bounded_by_configuration() -> None:
    rec = Recorder([HOME], start=0.0)
    statuses = (200, 201, 404, 500, 503)
    for i in range(20_000):
        finish(rec, ok(status=statuses[i % 5], latency=1e-4 * (1 + i % 977)))
        if i % 1000 == 999:
            rec.snapshot(i / 1000)
    s = rec.snapshot(100.0)
    assert s.requests == 20_000
    assert len(s.status_codes) == 5
    assert len(rec._interval[0].statuses) == 0
    assert s.histogram.nbytes == type(s.histogram)().nbytes
