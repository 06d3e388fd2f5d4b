"""Histogram: percentiles within 1% of the exact ones, exact counts, fixed memory."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ballista.core.histogram import Histogram
from ballista.core.snapshot import LatencySummary

QUANTILES = (0.0, 1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0)

# log-uniform from 1 us to 100 s
log_uniform = st.floats(min_value=math.log(1e-6), max_value=math.log(100.0)).map(math.exp)


@st.composite
def clustered(draw: st.DrawFn) -> list[float]:
    """A few tight clusters (the common shape: a fast path and a slow one)."""
    centres = draw(st.lists(log_uniform, min_size=1, max_size=3))
    spread = draw(st.floats(min_value=1e-4, max_value=0.05))
    offsets = draw(
        st.lists(
            st.tuples(st.integers(0, len(centres) - 1), st.floats(min_value=-1.0, max_value=1.0)),
            min_size=1,
            max_size=300,
        )
    )
    return [centres[i] * (1.0 + spread * x) for i, x in offsets]


latency_lists = st.one_of(st.lists(log_uniform, min_size=1, max_size=300), clustered())


def exact_percentile(values: list[float], q: float) -> float:
    """The value at rank ceil(q/100 * n), q taken as the decimal it is written as."""
    ordered = sorted(values)
    rank = max(1, math.ceil(Fraction(str(q)) / 100 * len(ordered)))
    return ordered[rank - 1]


def close(got: float, want: float) -> bool:
    if want < 256e-9:
        return abs(got - want) <= 1e-9
    return abs(got - want) <= 0.01 * want


def filled(values: list[float]) -> Histogram:
    h = Histogram()
    for v in values:
        h.record(v)
    return h


@settings(max_examples=300)
@given(latency_lists)
def test_percentiles_within_one_percent(values: list[float]) -> None:
    h = filled(values)
    got = h.percentiles(QUANTILES)
    for q, value in zip(QUANTILES, got, strict=True):
        want = exact_percentile(values, q)
        assert close(value, want), (q, value, want)
        assert h.percentile(q) == value
    assert h.count == len(values)
    assert h.min == min(values)
    assert h.max == max(values)
    assert math.isclose(h.mean, math.fsum(values) / len(values), rel_tol=1e-9)


@given(st.lists(st.integers(0, 300), min_size=1, max_size=100))
def test_exact_below_256ns(nanos: list[int]) -> None:
    values = [n / 1e9 for n in nanos]
    h = filled(values)
    for q in QUANTILES:
        assert abs(h.percentile(q) - exact_percentile(values, q)) <= 1e-9


@given(latency_lists, latency_lists)
def test_merge_equals_recording_everything(a: list[float], b: list[float]) -> None:
    merged = filled(a)
    merged.merge(filled(b))
    both = filled(a + b)
    assert merged.percentiles(QUANTILES) == both.percentiles(QUANTILES)
    assert merged.count == both.count
    assert merged.min == both.min
    assert merged.max == both.max
    assert math.isclose(merged.total, both.total, rel_tol=1e-9)
    assert merged.cumulative_counts([1e-5, 1e-3, 0.1, 10.0, math.inf]) == both.cumulative_counts(
        [1e-5, 1e-3, 0.1, 10.0, math.inf]
    )


@given(latency_lists, st.lists(st.floats(min_value=0.0, max_value=200.0), max_size=20))
def test_cumulative_counts(values: list[float], bounds: list[float]) -> None:
    h = filled(values)
    bounds = [*sorted(bounds), math.inf]
    counts = h.cumulative_counts(bounds)
    assert counts == sorted(counts)
    assert counts[-1] == h.count == len(values)
    for bound, n in zip(bounds, counts, strict=True):
        # By bucket: every value <= bound, and maybe some within a bucket width above it.
        assert sum(v <= bound for v in values) <= n <= sum(v <= bound * 1.008 for v in values)


def test_cumulative_counts_at_exact_values() -> None:
    h = Histogram()
    h.record_n(0.0005, 10)
    h.record_n(0.002, 5)
    assert h.cumulative_counts([0.0001, 0.0005, 0.001, 0.002, math.inf]) == [0, 10, 10, 15, 15]


def test_percentile_rank_ignores_float_noise() -> None:
    h = Histogram()
    h.record_n(1.0, 999)
    h.record(2.0)
    # 99.9 / 100 * 1000 is 999.0000000000001 in floats: still rank 999
    assert h.percentile(99.9) == pytest.approx(1.0, rel=0.004)
    assert h.percentile(99.95) == 2.0
    assert h.percentile(100.0) == 2.0
    assert h.percentile(0.0) == 1.0


def test_extreme_ranks_are_exact() -> None:
    h = filled([0.0123456, 0.05, 0.0987654])
    assert h.percentiles([0.0, 1.0, 50.0, 99.0, 100.0]) == [
        0.0123456,
        0.0123456,
        pytest.approx(0.05, rel=0.004),
        0.0987654,
        0.0987654,
    ]


def test_empty() -> None:
    h = Histogram()
    assert h.count == 0
    assert (h.min, h.max, h.mean, h.total) == (0.0, 0.0, 0.0, 0.0)
    assert h.percentile(99.0) == 0.0
    assert h.percentiles([50.0, 100.0]) == [0.0, 0.0]
    assert h.cumulative_counts([0.1, math.inf]) == [0, 0]
    assert h.summary() == LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    h.merge(Histogram())
    assert h.count == 0


def test_bad_percentile() -> None:
    h = filled([0.1])
    for q in (-0.1, 100.1, math.nan):
        with pytest.raises(ValueError, match="outside"):
            h.percentile(q)


def test_negative_clamps_to_zero() -> None:
    h = filled([-1.0, 0.001])
    assert h.min == 0.0
    assert h.percentile(0.0) == 0.0
    assert h.total == 0.001


def test_huge_values_share_the_top_bucket_and_keep_the_exact_max() -> None:
    h = filled([0.01, 1e6, 2e6])
    assert h.max == 2e6
    assert h.percentile(100.0) == 2e6
    # 2**48 ns is about 78 hours: 1e6 s lands in the top bucket, reported as its midpoint
    assert 2**47 / 1e9 < h.percentile(66.0) < 2**48 / 1e9
    assert h.cumulative_counts([1.0, 1e7]) == [1, 3]


def test_precision_from_10us_to_60s() -> None:
    value = 10e-6
    while value <= 3600.0:
        h = Histogram()
        h.record_n(value * 0.5, 1)
        h.record(value)
        h.record_n(value * 2, 1)
        assert math.isclose(h.percentile(50.0), value, rel_tol=0.005), value
        value *= 1.07


def test_record_n() -> None:
    h = Histogram()
    h.record_n(0.25, 4)
    h.record_n(0.5, 0)
    assert (h.count, h.total, h.min, h.max) == (4, 1.0, 0.25, 0.25)
    assert h.percentile(50.0) == 0.25
    with pytest.raises(ValueError):
        h.record_n(0.1, -1)


def test_copy_is_independent() -> None:
    h = filled([0.001, 0.002])
    twin = h.copy()
    h.record(5.0)
    twin.record(0.0001)
    assert (h.count, h.min, h.max) == (3, 0.001, 5.0)
    assert (twin.count, twin.min, twin.max) == (3, 0.0001, 0.002)
    assert h.percentiles([0.0, 50.0, 100.0]) == [0.001, pytest.approx(0.002, rel=0.004), 5.0]
    assert twin.percentiles([0.0, 50.0, 100.0]) == [0.0001, pytest.approx(0.001, rel=0.004), 0.002]


def test_reset() -> None:
    h = filled([0.001, 3.0])
    h.reset()
    assert h.count == 0
    assert h.percentiles([0.0, 100.0]) == [0.0, 0.0]
    h.record(0.5)
    assert h.percentiles([0.0, 100.0]) == [0.5, 0.5]
    assert sum(h._counts) == 1


def test_summary() -> None:
    h = filled([i / 1000 for i in range(1, 1001)])
    s = h.summary()
    assert s.count == 1000
    assert s.min == 0.001
    assert s.max == 1.0
    assert s.mean == pytest.approx(0.5005)
    for got, want in ((s.p50, 0.5), (s.p90, 0.9), (s.p95, 0.95), (s.p99, 0.99), (s.p999, 0.999)):
        assert got == pytest.approx(want, rel=0.005)


def test_memory_does_not_grow() -> None:
    small = filled([0.001 * (i + 1) for i in range(10)])
    big = Histogram()
    for i in range(1_000_000):
        big.record(1e-6 * 1.00002**i)  # 1 us .. ~485 ms: thousands of buckets, big counts
    assert big.count == 1_000_000
    assert big.nbytes == small.nbytes == Histogram().nbytes
    assert len(big._counts) == len(small._counts) == len(Histogram()._counts)
