"""Thresholds: parsing, verdicts on real snapshots, --abort-on-fail, exit codes end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from helpers import run_config
from hypothesis import given
from hypothesis import strategies as st
from servers import RunningTarget

from ballista.core.config import RequestSpec
from ballista.core.errors import ConfigError
from ballista.core.outcome import NO_ERROR, ErrorKind, Sample
from ballista.core.recorder import Recorder
from ballista.core.snapshot import Snapshot
from ballista.core.thresholds import SETTLE_REQUESTS, SETTLE_SECONDS, ThresholdSet, parse_threshold
from ballista.engine.run import Run
from ballista.observe.outputs import Outputs, run_with_outputs

NAMES = ["home", "checkout"]
SPECS = [RequestSpec("home", "GET", "/"), RequestSpec("checkout", "POST", "/checkout")]


def snapshot(
    samples: list[Sample],
    *,
    elapsed: float = 10.0,
    dropped: int = 0,
    recorder: Recorder | None = None,
) -> Snapshot:
    rec = recorder or Recorder(SPECS, start=0.0)
    for s in samples:
        rec.request_started()
        rec.record(s)
    if dropped:
        rec.record_dropped(dropped)
    return rec.snapshot(elapsed)


def ok(request: int, latency: float, status: int = 200) -> Sample:
    return Sample(request, status, NO_ERROR, latency, latency, 10, 10)


# -- parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "name", "metric", "op", "bound"),
    [
        ("p99<250ms", None, "p99", "<", 0.25),
        ("p95<=1s", None, "p95", "<=", 1.0),
        ("p999 < 800us", None, "p999", "<", 0.0008),
        ("max<2.5s", None, "max", "<", 2.5),
        ("mean<1m", None, "mean", "<", 60.0),
        ("error_rate<1%", None, "error_rate", "<", 0.01),
        ("error_rate<=0.005", None, "error_rate", "<=", 0.005),
        ("rps>500", None, "rps", ">", 500.0),
        ("rps>=99.5/s", None, "rps", ">=", 99.5),
        ("dropped<1", None, "dropped", "<", 1.0),
        ("checkout.p99<400ms", "checkout", "p99", "<", 0.4),
        ("home.error_rate<0.1%", "home", "error_rate", "<", 0.001),
        ("P99<1s", None, "p99", "<", 1.0),
        ("p50<0", None, "p50", "<", 0.0),
    ],
)
def test_parse(expr: str, name: str | None, metric: str, op: str, bound: float) -> None:
    t = parse_threshold(expr, NAMES)
    assert (t.request, t.metric, t.op) == (name, metric, op)
    assert t.bound == pytest.approx(bound)
    assert t.expr == expr.strip()


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        ("p99<abc", "'abc' is not a duration"),
        ("p99<250", "'250' needs a unit"),
        ("p98<1s", "unknown metric 'p98'"),
        ("p99=1s", "expected [request.]metric<value"),
        ("p99", "expected [request.]metric<value"),
        ("", "expected [request.]metric<value"),
        ("error_rate<abc", "'abc' is not a rate"),
        ("error_rate<150%", "more than 100%"),
        ("error_rate<2", "more than 100%"),
        ("rps>fast", "not a number of requests per second"),
        ("dropped<1.5", "not a whole number"),
        ("checkout.dropped<1", "dropped counts the whole run"),
        ("cart.p99<1s", "no request named 'cart' (requests: home, checkout)"),
        ("p99<-1s", "not a duration"),
        ("rps>inf", "not a number"),
    ],
)
def test_parse_errors_name_the_expression(expr: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_threshold(expr, NAMES)
    message = str(info.value)
    assert message.startswith(f"--threshold: {expr!r}: ")
    assert needle in message
    assert "\n" not in message


DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


@given(
    st.sampled_from(["p50", "p90", "p95", "p99", "p999", "max", "mean"]),
    st.sampled_from(["<", "<=", ">", ">="]),
    st.integers(min_value=1, max_value=10**6),
    st.sampled_from(sorted(DURATION_UNITS)),
    st.sampled_from([None, *NAMES]),
    st.sampled_from(["", " "]),
)
def test_duration_thresholds_round_trip(
    metric: str, op: str, n: int, unit: str, name: str | None, space: str
) -> None:
    expr = f"{name + '.' if name else ''}{metric}{space}{op}{space}{n}{unit}"
    t = parse_threshold(expr, NAMES)
    assert (t.request, t.metric, t.op) == (name, metric, op)
    assert t.bound == pytest.approx(n * DURATION_UNITS[unit])


@given(st.integers(min_value=0, max_value=10_000), st.booleans())
def test_error_rate_percent_and_fraction_agree(basis_points: int, percent: bool) -> None:
    text = f"{basis_points / 100}%" if percent else f"{basis_points / 10_000}"
    assert parse_threshold(f"error_rate<{text}").bound == pytest.approx(basis_points / 10_000)


@given(st.text(max_size=30))
def test_parser_only_raises_config_errors(text: str) -> None:
    try:
        t = parse_threshold(text, NAMES)
    except ConfigError as exc:
        assert str(exc).startswith("--threshold: ")
        assert "\n" not in str(exc).split(": ", 1)[1]
    else:
        assert t.bound >= 0


# -- verdicts ------------------------------------------------------------------------


def checks_of(exprs: list[str]) -> ThresholdSet:
    return ThresholdSet([parse_threshold(e, NAMES) for e in exprs])


def test_evaluate_reports_value_verdict_and_display() -> None:
    samples = [ok(0, 0.010)] * 90 + [ok(1, 0.300)] * 9 + [ok(1, 0.5, status=503)]
    snap = snapshot(samples, elapsed=10.0, dropped=3)
    checks = checks_of(
        [
            "p50<20ms",
            "p99<250ms",
            "max<=1s",
            "error_rate<2%",
            "rps>=10",
            "dropped<1",
            "checkout.p50<100ms",
            "home.p99<20ms",
            "checkout.error_rate<5%",
        ]
    )
    verdicts = {v["expr"]: v for v in checks.evaluate(snap)}
    assert [v["ok"] for v in verdicts.values()] == [
        True,
        False,
        True,
        True,
        True,
        False,
        False,
        True,
        False,
    ]
    assert verdicts["p50<20ms"]["value"] == pytest.approx(0.010, rel=0.01)
    assert verdicts["p99<250ms"]["value"] == pytest.approx(0.300, rel=0.01)
    assert verdicts["error_rate<2%"]["value"] == pytest.approx(0.01)
    assert verdicts["error_rate<2%"]["display"] == "1.00%"
    assert verdicts["rps>=10"]["value"] == pytest.approx(10.0)
    assert verdicts["rps>=10"]["display"] == "10.0/s"
    assert verdicts["dropped<1"] == {"expr": "dropped<1", "value": 3.0, "ok": False, "display": "3"}
    assert verdicts["checkout.error_rate<5%"]["value"] == pytest.approx(0.1)
    assert verdicts["p99<250ms"]["display"].endswith("ms")
    json.dumps(list(verdicts.values()))  # the summary's `thresholds` list is plain JSON


def test_no_data_fails_rather_than_passes() -> None:
    snap = snapshot([ok(0, 0.01)] * 10)
    verdicts = checks_of(["checkout.p99<1s", "checkout.error_rate<1%", "home.p99<1s"])
    result = verdicts.evaluate(snap)
    assert [(v["value"], v["ok"], v["display"]) for v in result[:2]] == [
        (None, False, "no data"),
        (None, False, "no data"),
    ]
    assert result[2]["ok"] is True


def test_errors_count_in_error_rate_but_not_in_latency() -> None:
    timeouts = [Sample(0, 0, ErrorKind.READ_TIMEOUT, 5.0, 5.0, 10, 0)] * 5
    snap = snapshot([ok(0, 0.01)] * 95 + timeouts)
    [rate] = checks_of(["error_rate<1%"]).evaluate(snap)
    assert rate["value"] == pytest.approx(0.05)
    assert rate["ok"] is False


# -- known_failed (--abort-on-fail) ----------------------------------------------------


def test_max_and_dropped_fail_for_good_once_crossed() -> None:
    rec = Recorder(SPECS, start=0.0)
    checks = checks_of(["max<100ms", "dropped<=2"])
    assert not checks.known_failed(snapshot([ok(0, 0.05)], elapsed=1.0, recorder=rec))
    assert not checks.known_failed(snapshot([], elapsed=2.0, dropped=2, recorder=rec))
    assert checks.known_failed(snapshot([], elapsed=3.0, dropped=1, recorder=rec))
    only_max = checks_of(["max<100ms"])
    assert only_max.known_failed(snapshot([ok(1, 0.2)], elapsed=1.0))


def test_lower_bounds_and_rps_are_judged_at_the_end_only() -> None:
    checks = checks_of(["rps>1000", "dropped>5", "max>1s"])
    rec = Recorder(SPECS, start=0.0)
    for second in range(1, 60):
        assert not checks.known_failed(snapshot([ok(0, 0.01)] * 10, elapsed=second, recorder=rec))


def test_recoverable_thresholds_settle_before_they_abort() -> None:
    """error_rate (and percentiles, mean) abort only after failing at every snapshot
    for SETTLE_SECONDS with SETTLE_REQUESTS requests behind them."""
    checks = checks_of(["error_rate<1%"])
    rec = Recorder(SPECS, start=0.0)
    per_second = SETTLE_REQUESTS // 5
    bad = [ok(0, 0.01)] * (per_second - 10) + [ok(0, 0.01, status=500)] * 10  # 5%: failing
    verdicts = []
    for second in range(1, 15):
        verdicts.append(checks.known_failed(snapshot(bad, elapsed=second, recorder=rec)))
    first = verdicts.index(True) + 1
    assert first == 1 + SETTLE_SECONDS  # failing since t=1 s, settled at t=11 s
    # A recovery resets the clock.
    checks = checks_of(["error_rate<1%"])
    rec = Recorder(SPECS, start=0.0)
    good = [ok(0, 0.01)] * (per_second * 60)  # brings the run under 1% again
    for second in range(1, 9):
        assert not checks.known_failed(snapshot(bad, elapsed=second, recorder=rec))
    assert not checks.known_failed(snapshot(good, elapsed=9, recorder=rec))
    for second in range(10, 19):
        assert not checks.known_failed(snapshot(bad, elapsed=second, recorder=rec))


def test_few_requests_never_settle() -> None:
    checks = checks_of(["p99<10ms"])
    rec = Recorder(SPECS, start=0.0)
    for second in range(1, 100):
        assert not checks.known_failed(snapshot([ok(0, 0.5)], elapsed=second, recorder=rec))


# -- end to end ------------------------------------------------------------------------


async def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "ballista", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_exit_codes_end_to_end(target: RunningTarget, tmp_path: Path) -> None:
    summary = tmp_path / "s.json"
    passing = await run_cli(
        "run", target.url, "-n", "40", "-c", "4", "-q", "--json", str(summary),
        "--threshold", "p99<10s", "--threshold", "error_rate<=100%", "--threshold", "dropped<1",
    )  # fmt: skip
    assert passing.returncode == 0, passing.stderr
    doc = json.loads(summary.read_text())
    assert [t["ok"] for t in doc["thresholds"]] == [True, True, True]
    assert doc["thresholds"][0]["expr"] == "p99<10s"

    failing = await run_cli(
        "run", target.url, "-n", "40", "-c", "4", "--json", "-", "--threshold", "p50<1us",
        "--threshold", "p99<10s",
    )  # fmt: skip
    assert failing.returncode == 1, failing.stderr
    doc = json.loads(failing.stdout)
    assert [t["ok"] for t in doc["thresholds"]] == [False, True]
    assert doc["requests"] == 40
    assert b"FAIL p50<1us" in failing.stderr  # the text summary goes to stderr with --json -

    bad = await run_cli("run", target.url, "-n", "10", "--threshold", "p99<abc")
    assert bad.returncode == 2
    assert bad.stderr.decode().strip() == (
        "ballista: error: --threshold: 'p99<abc': 'abc' is not a duration (e.g. 250ms, 1.5s, 800us)"
    )
    assert bad.stdout == b""
    assert target.stats.requests == 80  # the bad one never started


async def test_abort_on_fail_stops_early(
    fixed_delay_target: RunningTarget,
) -> None:
    config = run_config(
        fixed_delay_target.url, "-c", "2", "-d", "30s", "--threshold", "max<5ms",
        "--interval", "200ms",
    )  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    with trio.fail_after(10):
        doc, code = await run_with_outputs(
            Run(config, abort_on_fail=True), Outputs(quiet=True), stdout=out, stderr=err
        )
    assert code == 1
    assert doc["duration_s"] < 5  # stopped at the first snapshot, not after 30 s
    assert doc["thresholds"][0]["ok"] is False
    assert doc["thresholds"][0]["value"] >= 0.02


# -- journeys: steps named at run time, flows -------------------------------------------


def test_flow_thresholds_parse_and_judge_the_flow() -> None:
    from ballista.core.flowstats import FlowRecorder

    flows = FlowRecorder(["buy", "browse"])
    for i in range(100):
        flows.started(0)
        if i < 3:
            flows.failed(0, "status 503", 0.5)
        else:
            flows.completed(0, 0.1 if i < 90 else 1.5)
    recorder = Recorder((), start=0.0, dynamic=True)
    recorder.flows = flows
    snap = recorder.snapshot(10.0, final=True)
    t = parse_threshold("flow:buy.p95<2s", None, flow_names=["buy", "browse"])
    assert (t.flow, t.request, t.metric, t.bound) == (True, "buy", "p95", 2.0)
    verdicts = checks_of_flows(
        ["flow:buy.p95<2s", "flow:buy.p50<200ms", "flow:buy.failure_rate<1%", "flow:browse.p99<1s"],
        snap,
    )
    assert [(v["ok"], v["display"]) for v in verdicts] == [
        (True, "1.50s"),
        (True, "100.00ms"),
        (False, "3.00%"),
        (False, "no data"),  # no iteration of browse ended: nothing passes
    ]


def checks_of_flows(exprs: list[str], snap: Snapshot) -> list[dict[str, object]]:
    parsed = [parse_threshold(e, None, flow_names=["buy", "browse"]) for e in exprs]
    return ThresholdSet(parsed).evaluate(snap)


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        ("flow:nope.p95<1s", "no flow named 'nope' (flows: buy)"),
        ("flow:buy.rps>1", "unknown flow metric 'rps'"),
        ("flow:buy.failure_rate<2", "more than 100%"),
    ],
)
def test_flow_threshold_errors(expr: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        parse_threshold(expr, None, flow_names=["buy"])
    assert needle in str(caught.value)


def test_step_names_are_unchecked_when_journeys_name_them_at_run_time() -> None:
    assert parse_threshold("login.p99<300ms", None).request == "login"
    with pytest.raises(ConfigError):
        parse_threshold("login.p99<300ms", ["default"])
