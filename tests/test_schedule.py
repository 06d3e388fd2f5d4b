"""Sans-IO schedule: stage parsing, ramps, and open-model arrival times (constant and Poisson)."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ballista.core.config import Stage
from ballista.core.errors import ConfigError
from ballista.core.schedule import Arrivals, Ramp, constant, parse_stages


def test_parse_stages_units_and_targets() -> None:
    assert parse_stages("30s:100, 2m:100,500ms:0") == (
        Stage(30.0, 100.0),
        Stage(120.0, 100.0),
        Stage(0.5, 0.0),
    )
    assert parse_stages("1h30m:2.5") == (Stage(5400.0, 2.5),)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("30s", "stage 1 '30s' must be DURATION:TARGET"),
        ("30s:100,abc:5", "stage 2 duration"),
        ("30s:x", "stage 1 target 'x' is not a number"),
        ("30s:-1", "stage 1 target must be a number >= 0"),
        ("30s:inf", "stage 1 target must be a number >= 0"),
        ("0s:10,0s:0", "the stages last no time at all"),
        ("", "stage 1"),
    ],
)
def test_parse_stages_errors_name_the_stage(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=r"^--stages: ") as info:
        parse_stages(text)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=100_000),
            st.sampled_from(sorted(UNITS)),
            st.integers(min_value=0, max_value=1_000_000),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_parse_stages_round_trips(parts: list[tuple[int, str, int]]) -> None:
    text = ",".join(f"{n}{unit}:{target}" for n, unit, target in parts)
    stages = parse_stages(text)
    assert len(stages) == len(parts)
    for stage, (n, unit, target) in zip(stages, parts, strict=True):
        assert stage.duration == pytest.approx(n * UNITS[unit])
        assert stage.target == target


@given(st.text(alphabet="0123456789smh:,.-x ", max_size=20))
def test_parse_stages_never_fails_otherwise(text: str) -> None:
    try:
        stages = parse_stages(text)
    except ConfigError as exc:
        assert str(exc).startswith("--stages: ")
    else:
        assert all(s.duration >= 0 and s.target >= 0 for s in stages)
        assert any(s.duration > 0 for s in stages)


def test_ramp_values_and_hold_after_the_end() -> None:
    ramp = Ramp(parse_stages("10s:100,5s:100,5s:0"), start=0.0)
    assert ramp.value(0) == 0
    assert ramp.value(5) == 50
    assert ramp.value(12) == 100
    assert ramp.value(17.5) == 50
    assert ramp.value(100) == 0
    assert ramp.integral(10) == 500
    assert ramp.integral(20) == 1250
    assert ramp.time_of_integral(1250.5) is None  # the rate is 0 for ever after


segments = st.lists(
    st.tuples(st.floats(min_value=0.1, max_value=100), st.floats(min_value=0.0, max_value=1000)),
    min_size=1,
    max_size=6,
)


@given(segments, st.floats(min_value=0.0, max_value=1000), st.floats(min_value=0.0, max_value=1.0))
# Found by hypothesis: the whole area, summed in another order, was a rounding error
# above time_of_integral's total, so a ramp ending at 0 said "never".
@example(
    parts=[(1.0, 1.9650484561746424), (9.0, 115.83976313242223), (1.0, 0.0)], start=0.0, share=1.0
)
def test_time_of_integral_inverts_integral(
    parts: list[tuple[float, float]], start: float, share: float
) -> None:
    ramp = Ramp([Stage(d, v) for d, v in parts], start=start)
    total = ramp.integral(ramp.end)
    area = total * share
    t = ramp.time_of_integral(area)
    if total == 0:
        return
    assert t is not None
    assert 0 <= t <= ramp.end + 1e-9
    assert ramp.integral(t) == pytest.approx(area, rel=1e-6, abs=1e-6)


def take(arrivals: Arrivals, n: int) -> list[float]:
    times: list[float] = []
    for _ in range(n):
        t = arrivals.next()
        assert t is not None
        times.append(t)
    return times


def test_constant_arrivals_are_evenly_spaced() -> None:
    arrivals = Arrivals(constant(200.0))
    times = take(arrivals, 2001)
    assert times[0] == 0.0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) == pytest.approx(0.005, abs=1e-9)
    assert max(gaps) == pytest.approx(0.005, abs=1e-9)
    assert times[-1] == pytest.approx(10.0)


def test_poisson_gaps_have_the_right_mean_and_spread() -> None:
    rate = 100.0
    n = 40_000
    arrivals = Arrivals(constant(rate), poisson=True, seed=7)
    times = take(arrivals, n + 1)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = statistics.fmean(gaps)
    sd = statistics.stdev(gaps)
    # Exponential gaps: mean 1/R, standard deviation 1/R. Over 40,000 gaps the
    # standard error of the mean is 0.5%: 2% is four of them.
    assert mean == pytest.approx(1 / rate, rel=0.02)
    assert sd / mean == pytest.approx(1.0, rel=0.03)
    # Memorylessness, seen in the tail: P(gap > mean) = 1/e.
    share_long = sum(g > 1 / rate for g in gaps) / n
    assert share_long == pytest.approx(math.exp(-1), abs=0.01)
    # Counts per second are Poisson: variance about equal to the mean.
    per_second = [0] * int(times[-1])
    for t in times:
        if int(t) < len(per_second):
            per_second[int(t)] += 1
    assert statistics.fmean(per_second) == pytest.approx(rate, rel=0.03)
    assert statistics.variance(per_second) / rate == pytest.approx(1.0, abs=0.25)


def test_poisson_follows_a_ramp() -> None:
    # Rate 0 -> 1000/s over 10 s: the expected count by time t is 50 t².
    arrivals = Arrivals(Ramp([Stage(10.0, 1000.0)]), poisson=True, seed=11)
    times: list[float] = []
    while (t := arrivals.next()) is not None and t < 10:
        times.append(t)
    for t_check in (2.0, 5.0, 8.0):
        expected = 50 * t_check**2
        got = sum(1 for t in times if t < t_check)
        assert abs(got - expected) < 5 * math.sqrt(expected)


def test_arrivals_stop_when_the_rate_ends_at_zero() -> None:
    arrivals = Arrivals(Ramp(parse_stages("1s:10,1s:0")))
    times = []
    while (t := arrivals.next()) is not None:
        times.append(t)
    assert len(times) == 11  # area 10 over the two seconds, k = 0..10
    assert times[-1] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "stages",
    ["10s:100,5s:100,5s:0", "1s:10,1s:0", "3s:7"],
)
@pytest.mark.parametrize("cut", [0.0, 0.3, 1.0, 2.5, 7.3, 10.0, 17.0, 19.999, 25.0])
def test_skip_before_passes_over_what_next_would_return(stages: str, cut: float) -> None:
    one_by_one = Arrivals(Ramp(parse_stages(stages)))
    at_once = Arrivals(Ramp(parse_stages(stages)))
    count = 0
    while (t := one_by_one.next()) is not None and t < cut:
        count += 1
    assert at_once.skip_before(cut) == count
    assert at_once.count == count
    # and both go on from the same request
    assert at_once.next() == t


@pytest.mark.parametrize("rate", [0.2, 3.0, 250.0, 1e6, 1e9, 1e12])
def test_skip_before_counts_a_constant_rate_exactly(rate: float) -> None:
    arrivals = Arrivals(constant(rate))
    assert arrivals.skip_before(1.0) == math.ceil(rate)
    assert arrivals.skip_before(1.0) == 0  # nothing is due twice
    assert arrivals.next() == pytest.approx(math.ceil(rate) / rate)


def test_skip_before_respects_a_limit() -> None:
    arrivals = Arrivals(constant(1e9))
    assert arrivals.skip_before(1.0, 5000) == 5000
    assert arrivals.next() == pytest.approx(5000 / 1e9)
    assert arrivals.skip_before(1.0, 0) == 0


@pytest.mark.parametrize("rate", [2.0, 50.0, 5000.0, 1e9])
def test_skip_before_poisson_counts_have_the_poisson_mean_and_spread(rate: float) -> None:
    # Skipping one second at a time, 400 times: counts of mean R and variance R.
    arrivals = Arrivals(constant(rate), poisson=True, seed=3)
    counts = [arrivals.skip_before(s + 1.0) for s in range(400)]
    assert statistics.fmean(counts) == pytest.approx(rate, rel=5 / math.sqrt(400 * rate))
    assert statistics.variance(counts) / rate == pytest.approx(1.0, abs=0.3)
