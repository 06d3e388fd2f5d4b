"""The AIMD controller, one rule at a time, fed (now, sample) by hand: no trio, no clock."""

from __future__ import annotations

import dataclasses
import re

import pytest
from helpers import run_config

from ballista.cli.main import main
from ballista.core.config import AdaptiveSpec, RequestSpec
from ballista.core.controller import (
    SETTLE_WINDOWS,
    AimdController,
    Window,
    build_controller,
    parse_statuses,
)
from ballista.core.durations import parse_share
from ballista.core.errors import ConfigError
from ballista.core.outcome import NO_ERROR, ErrorKind, Sample
from ballista.core.recorder import Recorder

#: Windows of at least 1 s and 5 samples; p95 under 100 ms; no slow start; any signal counts.
SPEC = AdaptiveSpec(
    latency_target=0.100,
    percentile=95.0,
    initial=10,
    minimum=2,
    maximum=100,
    increase=1,
    backoff=0.9,
    window_min=1.0,
    window_max=5.0,
    window_samples=5,
    slow_start=False,
    congestion_tolerance=0.0,
)


def spec(**changes: object) -> AdaptiveSpec:
    return dataclasses.replace(SPEC, **changes)  # type: ignore[arg-type]


def ok(latency: float, status: int = 200) -> Sample:
    return Sample(0, status, NO_ERROR, latency, latency, 100, 200)


def failed(kind: ErrorKind, latency: float = 0.01) -> Sample:
    return Sample(0, 0, int(kind), latency, latency, 100, 0)


def window(
    c: AimdController,
    start: float,
    latency: float,
    *,
    bad: Sample | None = None,
    n_bad: int = 0,
) -> Window:
    """A closed loop at the current limit: each worker completes a request of `latency`
    every `latency` seconds, from `start` until the window closes; `n_bad` completions
    after the first are `bad`. Returns the window that closed."""
    closed = c.windows_closed
    limit = c.limit
    t = start
    i = 0
    while c.windows_closed == closed:
        t += latency / limit
        sample = bad if (bad is not None and 0 < i <= n_bad) else ok(latency)
        c.on_sample(t, sample)
        i += 1
        assert i < 100_000
    return c.windows[-1]


# --- windows -----------------------------------------------------------------------


def test_initial_limit_is_clamped_to_the_bounds() -> None:
    assert AimdController(spec(initial=10)).limit == 10
    assert AimdController(spec(initial=1, minimum=2)).limit == 2
    assert AimdController(spec(initial=500, maximum=100)).limit == 100
    assert build_controller(SPEC).limit == 10


def test_a_window_needs_both_its_minimum_time_and_its_minimum_samples() -> None:
    c = AimdController(SPEC)
    # Six samples in the first 0.5 s: enough samples, too early.
    for k in range(1, 7):
        assert c.on_sample(0.1 * k, ok(0.05)) == 10
    assert c.windows_closed == 0
    # Started at 0.05 (the first one's send time); at 1.05 it has lasted 1 s.
    assert c.on_sample(1.04, ok(0.05)) == 10
    assert c.windows_closed == 0
    assert c.on_sample(1.05, ok(0.05)) == 11
    w = c.windows[-1]
    assert (w.start, w.end, w.samples, w.limit, w.next_limit) == (0.05, 1.05, 8, 10, 11)

    # Next window: time passes with too few samples; it waits for the fifth.
    c = AimdController(SPEC)
    c.on_sample(0.1, ok(0.1))
    c.on_sample(3.0, ok(0.1))
    c.on_sample(3.1, ok(0.1))
    c.on_sample(3.2, ok(0.1))
    assert c.windows_closed == 0
    c.on_sample(3.3, ok(0.1))
    assert c.windows_closed == 1
    assert c.windows[-1].samples == 5


def test_a_window_closes_at_window_max_whatever_the_samples() -> None:
    c = AimdController(spec(window_samples=1000))
    c.on_sample(1.0, ok(0.05))
    c.on_sample(4.0, ok(0.05))
    assert c.windows_closed == 0
    c.on_sample(5.0, ok(0.05))  # started at 0.95: 4.05 s, still short of 5 s
    assert c.windows_closed == 0
    c.on_sample(5.95, ok(0.05))
    assert c.windows_closed == 1
    assert c.windows[-1].samples == 4
    assert c.limit == 11


def test_window_length_is_twice_the_median_latency_between_the_bounds() -> None:
    # Many workers, so completions come often and a window ends close to its length.
    c = AimdController(spec(latency_target=10.0, initial=200, maximum=1000))
    w = window(c, 0.0, 0.8)  # median 0.8 s: the next window lasts 1.6 s
    assert w.median == pytest.approx(0.8, rel=0.01)
    w = window(c, w.end, 0.01)
    assert w.end - w.start == pytest.approx(1.6, abs=0.01)
    w = window(c, w.end, 4.0)  # median 0.01 s: the floor, 1 s
    assert w.end - w.start == pytest.approx(1.0, abs=0.025)
    w = window(c, w.end, 0.5)  # median 4 s: 8 s, capped at 5 s
    assert w.end - w.start == pytest.approx(5.0, abs=0.01)


# --- increase ----------------------------------------------------------------------


def test_additive_increase_after_each_window_without_congestion() -> None:
    c = AimdController(spec(increase=3))
    t = 0.0
    for expected in (13, 16, 19):
        w = window(c, t, 0.05)
        assert (w.congestion, w.action, c.limit) == ("", "increase", expected)
        t = w.end


def test_slow_start_doubles_until_the_first_congestion_then_adds() -> None:
    c = AimdController(spec(slow_start=True, initial=4, maximum=20))
    assert c.in_slow_start
    limits = []
    t = 0.0
    for _ in range(4):
        w = window(c, t, 0.05)
        limits.append((w.action, c.limit))
        t = w.end
    assert limits == [("double", 8), ("double", 16), ("double", 20), ("hold", 20)]
    w = window(c, t, 0.5)  # over the target
    assert (w.action, c.limit) == ("decrease", 10)
    assert not c.in_slow_start
    w = window(c, w.end + 1, 0.05)
    assert (w.action, c.limit) == ("increase", 11)


def test_the_limit_never_exceeds_the_maximum() -> None:
    c = AimdController(spec(initial=99, increase=5))
    w = window(c, 0.0, 0.05)
    assert (w.action, c.limit) == ("increase", 100)
    w = window(c, w.end, 0.05)
    assert (w.action, c.limit) == ("hold", 100)


# --- decrease ----------------------------------------------------------------------


def test_latency_just_over_the_target_backs_off_multiplicatively() -> None:
    c = AimdController(spec(initial=50))
    w = window(c, 0.0, 0.105)
    assert w.congestion == "latency"
    assert w.percentile == pytest.approx(0.105, rel=0.01)
    assert c.limit == 45  # 50 * 0.9
    assert c.decreases == 1


def test_latency_far_over_the_target_cuts_in_proportion_but_at_most_by_half() -> None:
    c = AimdController(spec(initial=50))
    window(c, 0.0, 0.125)  # target / p95 = 0.8
    assert c.limit == 40
    c = AimdController(spec(initial=50))
    window(c, 0.0, 1.0)  # 0.1: limited to half
    assert c.limit == 25


def _label(s: Sample) -> str:
    return ErrorKind(s.error).label if s.error != NO_ERROR else str(s.status)


@pytest.mark.parametrize(
    "bad",
    [
        failed(ErrorKind.READ_TIMEOUT, 30.0),
        failed(ErrorKind.WRITE_TIMEOUT),
        failed(ErrorKind.POOL_TIMEOUT),
        failed(ErrorKind.CONNECT_TIMEOUT),
        failed(ErrorKind.CONNECT_REFUSED),
        failed(ErrorKind.RESET),
        failed(ErrorKind.GOAWAY),
    ],
    ids=_label,
)
def test_congestion_errors_back_off(bad: Sample) -> None:
    c = AimdController(spec(initial=20))
    w = window(c, 0.0, 0.05, bad=bad, n_bad=1)
    assert (w.congestion, w.signals, w.rejections, w.limited_by) == ("signals", 1, 0, "errors")
    assert c.limit == 18  # 20 * 0.9: the target still served about 20 at once


@pytest.mark.parametrize(
    "bad", [failed(ErrorKind.REFUSED_STREAM), ok(0.001, 503), ok(0.001, 429)], ids=_label
)
def test_rejections_cut_to_what_the_target_accepted_even_one_below(bad: Sample) -> None:
    c = AimdController(spec(initial=20))
    w = window(c, 0.0, 0.05, bad=bad, n_bad=1)
    assert (w.congestion, w.signals, w.rejections) == ("signals", 1, 1)
    assert w.limited_by == "rejections"
    # The target served about 20 at once (Little's law): one below the limit, not 10% below.
    assert c.limit == 19


@pytest.mark.parametrize(
    "harmless",
    [ok(0.05, 500), ok(0.05, 404), failed(ErrorKind.PROTOCOL), failed(ErrorKind.TLS)],
)
def test_other_failures_are_not_congestion(harmless: Sample) -> None:
    c = AimdController(spec(initial=20))
    w = window(c, 0.0, 0.05, bad=harmless, n_bad=3)
    assert (w.congestion, w.signals, c.limit) == ("", 0, 21)


def test_congestion_statuses_are_configurable() -> None:
    c = AimdController(spec(initial=20, congestion_statuses=frozenset({502})))
    w = window(c, 0.0, 0.05, bad=ok(0.001, 503), n_bad=5)
    assert (w.congestion, c.limit) == ("", 21)
    w = window(c, w.end, 0.05, bad=ok(0.001, 502), n_bad=1)
    assert (w.congestion, w.rejections, c.limit) == ("signals", 1, 20)


def test_signals_within_the_tolerance_are_ignored() -> None:
    # 1 signal in ~400 samples is under 1%; 10 are over.
    c = AimdController(spec(initial=20, congestion_tolerance=0.01))
    w = window(c, 0.0, 0.05, bad=failed(ErrorKind.RESET), n_bad=1)
    assert (w.signals, w.congestion, c.limit) == (1, "", 21)
    w = window(c, w.end, 0.05, bad=failed(ErrorKind.RESET), n_bad=10)
    assert (w.signals, w.congestion, c.limit) == (10, "signals", 18)


def test_signals_cut_to_the_concurrency_the_target_accepted() -> None:
    # Limit 40, but the target serves 20.5 at once (205 requests of 100 ms a second)
    # and times the rest out: the limit goes to 20, not to 36.
    c = AimdController(spec(initial=40, window_samples=250))
    t = 0.0
    k = 0
    while c.windows_closed == 0:
        k += 1
        t = k / 205
        c.on_sample(t, ok(0.1) if k > 1 else ok(t))  # the first one sets the start: 0
        if k % 4 == 0:
            c.on_sample(t, failed(ErrorKind.READ_TIMEOUT, 0.0))
    w = c.windows[-1]
    # Signals well over the tolerance close the window early, once it has lasted two
    # typical latencies (0.2 s), short of its second: waiting would only add failures.
    assert (w.start, w.congestion, w.signals) == (0.0, "signals", 11)
    assert w.end == pytest.approx(0.2, abs=0.02)
    assert c.limit == 20


def test_a_window_closes_early_only_on_enough_signals_over_the_tolerance() -> None:
    # 1% tolerance; 100 accepted of 50 ms a second, and a 503 every 25 ms (20% of all).
    c = AimdController(spec(initial=10, congestion_tolerance=0.01))
    t = 0.0
    while c.windows_closed == 0:
        t += 0.01
        c.on_sample(t, ok(0.05))
        if round(t * 100) % 4 == 0:
            c.on_sample(t, ok(0.001, 503))
    w = c.windows[-1]
    # At 0.2 s with 5 rejections: over 1%, enough to be a rate, and over two typical
    # latencies (enough to measure what the target accepted).
    assert (w.signals, w.rejections, w.samples) == (5, 5, 25)
    assert w.end == pytest.approx(0.2)
    assert c.limit == 5  # what the target accepted: 100/s x 50 ms; no deeper than half

    # The same signals under the tolerance: the window runs its full second.
    c = AimdController(spec(initial=10, congestion_tolerance=0.3))
    t = 0.0
    while c.windows_closed == 0:
        t += 0.01
        c.on_sample(t, ok(0.05))
        if round(t * 100) % 4 == 0:
            c.on_sample(t, ok(0.001, 503))
    w = c.windows[-1]
    assert w.congestion == ""
    assert w.end - w.start == pytest.approx(1.0)


def test_a_decrease_never_goes_below_the_minimum() -> None:
    c = AimdController(spec(initial=3, minimum=2))
    window(c, 0.0, 1.0)
    assert c.limit == 2
    w = window(c, 10.0, 1.0)
    assert (w.congestion, w.action, c.limit) == ("latency", "hold", 2)


def test_requests_sent_before_the_last_decrease_are_not_held_against_it() -> None:
    c = AimdController(spec(initial=20))
    w = window(c, 0.0, 0.2)  # p95 0.2 s: halved at w.end
    assert c.limit == 10
    end = w.end
    # In flight across the decrease, or sent within one latency (0.2 s) of it while
    # the old load drains: not counted, whatever they saw.
    c.on_sample(end + 0.5, ok(0.001, 503)._replace(latency=0.6))
    c.on_sample(end + 0.3, failed(ErrorKind.READ_TIMEOUT, 0.15))
    c.on_sample(end + 0.19, ok(0.3))
    w = window(c, end + 0.3, 0.05)
    assert (w.signals, w.congestion, c.limit) == (0, "", 11)
    assert w.percentile == pytest.approx(0.05, rel=0.01)
    # Sent after that: counted.
    end = w.end
    c.on_sample(end + 0.1, ok(0.001, 503))
    w = window(c, end + 0.1, 0.05)
    assert (w.signals, w.congestion) == (1, "signals")


# --- results -----------------------------------------------------------------------


def test_settled_limit_is_the_median_of_the_last_windows() -> None:
    c = AimdController(SPEC)
    assert c.settled_limit() == 10  # no window yet: the current limit
    t = 0.0
    for latency in (0.05, 0.05, 0.5, 0.05, 0.05):  # 10 -> 11 -> 12 -> 6 -> 7 -> 8
        t = window(c, t, latency).end
    assert [w.limit for w in c.windows] == [10, 11, 12, 6, 7]
    assert c.settled_limit() == 10
    # Only the last SETTLE_WINDOWS count.
    for _ in range(SETTLE_WINDOWS):
        t = window(c, t, 0.05).end
    assert [w.limit for w in c.windows] == list(range(8, 8 + SETTLE_WINDOWS))
    assert c.settled_limit() == round((12 + 13) / 2)


def test_settled_limit_leaves_out_slow_start() -> None:
    c = AimdController(spec(slow_start=True, initial=4))
    t = 0.0
    for latency in (0.05, 0.05, 0.5, 0.05):  # 4 -> 8 -> 16 -> 8 -> 9
        t = window(c, t, latency).end
    assert [w.action for w in c.windows] == ["double", "double", "decrease", "increase"]
    assert c.settled_limit() == 12  # median of 16 and 8


def _final_snapshot(samples: int, latency: float, elapsed: float) -> object:
    recorder = Recorder((RequestSpec("default", "GET", "/"),), start=0.0)
    for _ in range(samples):
        recorder.record(ok(latency))
    return recorder.snapshot(elapsed, final=True)


def test_capacity_note_in_plain_words() -> None:
    c = AimdController(spec(initial=20, percentile=99.0))
    t = 0.0
    for _ in range(3):
        t = window(c, t, 0.05).end  # 20, 21, 22 workers at 50 ms: 400-440 requests/s
    note = c.capacity_note(_final_snapshot(1, 0.05, t))  # type: ignore[arg-type]
    match = re.fullmatch(
        r"sustains about 21 concurrent requests, (\d+) requests/s at p99 50 ms; "
        r"nothing pushed back: the limit was still rising",
        note,
    )
    assert match is not None, note
    assert int(match[1]) == pytest.approx(420, rel=0.03)


def test_capacity_note_before_any_window_uses_the_whole_run() -> None:
    c = AimdController(SPEC)
    final = _final_snapshot(30, 0.0123, 2.0)
    note = c.capacity_note(final)  # type: ignore[arg-type]
    assert note == "sustains about 10 concurrent requests, 15 requests/s at p95 12.3 ms"


# --- parameters --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--latency-percentile", "100"], "--latency-percentile: must be between 0 and 100"),
        (["--latency-percentile", "nan"], "--latency-percentile: must be between 0 and 100"),
        (
            ["--min-concurrency", "200", "--max-concurrency", "100"],
            "--min-concurrency: the minimum (200) is above the maximum (100)",
        ),
        (["--backoff", "1.0"], "--backoff: must be between 0 and 1 (e.g. 0.9)"),
        (
            ["--window-min", "2s", "--window-max", "1s"],
            "--window-max: the longest window must be at least the shortest",
        ),
        (["--congestion-status", "99"], "--congestion-status: '99' is not an HTTP status"),
        (["--congestion-tolerance", "100%"], "--congestion-tolerance: must be between"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        run_config("http://127.0.0.1:1/", "--adaptive", *flags)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_share_and_status_parsers() -> None:
    assert parse_share("0.8", what="--backoff") == 0.8
    assert parse_share("80%", what="--backoff") == pytest.approx(0.8)
    assert parse_statuses("429, 503,502") == frozenset({429, 502, 503})
    assert parse_statuses("none") == frozenset()
    with pytest.raises(ConfigError, match="--backoff: 'x' is not a number"):
        parse_share("x", what="--backoff")
    with pytest.raises(ConfigError, match="--congestion-status: '5o3' is not an HTTP status"):
        parse_statuses("429,5o3")


def _adaptive(*flags: str) -> AdaptiveSpec:
    load = run_config("http://127.0.0.1:1/", *flags).load
    assert load.adaptive is not None
    return load.adaptive


def test_flags_build_the_spec_with_documented_defaults() -> None:
    assert _adaptive("--adaptive") == AdaptiveSpec()
    assert AdaptiveSpec() == AdaptiveSpec(
        latency_target=0.25,
        percentile=95.0,
        initial=4,
        minimum=1,
        maximum=1000,
        increase=1,
        backoff=0.9,
        window_min=0.5,
        window_max=5.0,
        window_samples=20,
        congestion_statuses=frozenset({429, 503}),
        slow_start=True,
        congestion_tolerance=0.01,
    )
    got = _adaptive(
        "--adaptive",
        "--latency-target=80ms",
        "--latency-percentile=99",
        "--initial-concurrency=8",
        "--min-concurrency=2",
        "--max-concurrency=300",
        "--increase=2",
        "--backoff=75%",
        "--window-min=200ms",
        "--window-max=2s",
        "--window-samples=50",
        "--congestion-status=429,503,502",
        "--congestion-tolerance=0",
        "--no-slow-start",
    )
    assert got == AdaptiveSpec(
        latency_target=0.08,
        percentile=99.0,
        initial=8,
        minimum=2,
        maximum=300,
        increase=2,
        backoff=0.75,
        window_min=0.2,
        window_max=2.0,
        window_samples=50,
        congestion_statuses=frozenset({429, 502, 503}),
        slow_start=False,
        congestion_tolerance=0.0,
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--adaptive", "--backoff", "1.5"], "--backoff: must be between 0 and 1"),
        (["--adaptive", "--congestion-status", "42"], "--congestion-status: '42' is not"),
        (["--adaptive", "--window-min", "2s", "--window-max", "1s"], "--window-max: the longest"),
        (["--backoff", "0.5"], "--backoff: applies to the adaptive model, not closed"),
        (["--no-slow-start"], "--no-slow-start: applies to the adaptive model, not closed"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "http://127.0.0.1:1/", "-d", "1s", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


# --- rejections: probes of a rejected limit, spaced in time --------------------------


def _rejected_window(c: AimdController, start: float) -> Window:
    """A window at the current limit in which a few requests (half the limit) are
    turned away at once: over the 1% tolerance."""
    return window(c, start, 0.05, bad=ok(0.001, 503), n_bad=c.limit // 2)


def test_a_rejected_limit_is_probed_again_only_after_the_probe_gap() -> None:
    c = AimdController(spec(initial=12, congestion_tolerance=0.01))
    w = _rejected_window(c, 0.0)
    assert (w.limited_by, c.limit) == ("rejections", 11)
    gap = c.probe_gap
    # Four windows (of 1 s) at least, and 50 typical latencies (2.5 s) at least.
    assert gap == pytest.approx(4.0)
    probe_at = w.end + gap
    t = w.end
    actions = []
    while t < probe_at:
        w = window(c, t, 0.05)
        actions.append((w.limit, w.action, w.limited_by))
        t = w.end
    # Clean windows below the rejected limit wait; the window that ends after the gap
    # goes back to it: the probe.
    assert actions[:-1] == [(11, "wait", "rejections")] * (len(actions) - 1)
    assert actions[-1] == (11, "increase", "")
    assert c.limit == 12
    # The probe is rejected again: the gap doubles, and doubles once more, no further.
    gaps = []
    for _ in range(4):
        w = _rejected_window(c, t)
        gaps.append(c.probe_gap)
        t = w.end
        while c.limit < 12:
            t = window(c, t, 0.05).end
    assert gaps == [pytest.approx(g) for g in (8.0, 16.0, 16.0, 16.0)]


def test_a_probe_that_passes_forgets_the_rejected_limit() -> None:
    c = AimdController(spec(initial=12, congestion_tolerance=0.01))
    t = _rejected_window(c, 0.0).end
    while c.limit < 12:
        t = window(c, t, 0.05).end
    # The capacity grew: the probe at 12 is clean, and the limit keeps climbing a window
    # at a time, with no more waiting.
    actions = []
    for _ in range(3):
        w = window(c, t, 0.05)
        actions.append((w.limit, w.action))
        t = w.end
    assert actions == [(12, "increase"), (13, "increase"), (14, "increase")]


# --- the generator's own lag ---------------------------------------------------------


def _lagging_window(c: AimdController, start: float, latency: float, lag: float) -> Window:
    closed = c.windows_closed
    t = start
    while c.windows_closed == closed:
        t += latency / c.limit
        c.on_lag(t, lag)
        c.on_sample(t, ok(latency))
    return c.windows[-1]


def test_latency_that_the_event_loop_lag_explains_does_not_cut_the_limit() -> None:
    # Target 100 ms; requests take 180 ms while the event loop wakes sleepers 20 ms late:
    # four wake-ups of a request account for 80 ms, leaving 100 ms to the target.
    c = AimdController(spec(initial=20))
    w = _lagging_window(c, 0.0, 0.180, 0.020)
    assert (w.congestion, w.action, w.limited_by, c.limit) == ("generator", "hold", "generator", 20)
    assert w.lag == pytest.approx(0.020, rel=0.01)
    # The same latency with 15 ms of lag: 120 ms are the target's, over 100 ms: cut.
    w = _lagging_window(c, w.end, 0.180, 0.015)
    assert (w.congestion, w.action, w.limited_by) == ("latency", "decrease", "latency")
    assert c.limit < 20


def test_capacity_note_says_the_generator_limited_the_run() -> None:
    c = AimdController(spec(initial=20))
    t = 0.0
    for _ in range(3):
        t = _lagging_window(c, t, 0.180, 0.020).end
    note = c.capacity_note(_final_snapshot(1, 0.18, t))  # type: ignore[arg-type]
    assert note.endswith(
        "; limited by Ballista itself, not the target: its event loop ran 20 ms late "
        "(p95 of a window), which accounts for the latency over the target "
        "(give it more CPU or less company)"
    ), note


def _final_with(statuses: dict[int, int], errors: dict[ErrorKind, int]) -> object:
    recorder = Recorder((RequestSpec("default", "GET", "/"),), start=0.0)
    for status, n in statuses.items():
        for _ in range(n):
            recorder.request_started()
            recorder.record(ok(0.05, status))
    for kind, n in errors.items():
        for _ in range(n):
            recorder.request_started()
            recorder.record(failed(kind))
    return recorder.snapshot(10.0, final=True)


def test_capacity_note_says_what_limited_the_run() -> None:
    # Latency.
    c = AimdController(spec(initial=20))
    t = 0.0
    for _ in range(3):
        t = window(c, t, 0.2).end
    final = _final_with({200: 100}, {})
    assert c.capacity_note(final).endswith("; limited by the latency target (p95 under 100 ms)")  # type: ignore[arg-type]
    # Rejections, with their share of the whole run.
    c = AimdController(spec(initial=20))
    _rejected_window(c, 0.0)
    final = _final_with({200: 985, 503: 10}, {ErrorKind.REFUSED_STREAM: 5})
    note = c.capacity_note(final)  # type: ignore[arg-type]
    assert note.endswith("; limited by rejections (503, refused_stream: 1.5% of requests)")
    # Errors.
    c = AimdController(spec(initial=20))
    window(c, 0.0, 0.05, bad=failed(ErrorKind.READ_TIMEOUT), n_bad=3)
    final = _final_with({200: 997}, {ErrorKind.READ_TIMEOUT: 3})
    note = c.capacity_note(final)  # type: ignore[arg-type]
    assert note.endswith("; limited by errors (read_timeout: 0.3% of requests)")
    # The maximum.
    c = AimdController(spec(initial=100))
    window(c, 0.0, 0.05)
    assert c.capacity_note(final).endswith("; limited by --max-concurrency 100")  # type: ignore[arg-type]
