"""Segments (`--segment I/N`): N shares of one test that add up to exactly the
one-process run, whatever the load model; and `--start-at`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.testing
from helpers import ORIGIN, FakeConnection, run_config, wait_until
from hypothesis import given
from hypothesis import strategies as st
from servers import RunningTarget

from ballista.cli.main import main
from ballista.core.config import AdaptiveSpec, LoadSpec, RequestSpec, RunConfig
from ballista.core.errors import ConfigError
from ballista.core.schedule import Arrivals, Ramp, constant, parse_stages
from ballista.core.segment import (
    START_AT_SLACK,
    Segment,
    arrival_seed,
    fingerprint,
    iso_instant,
    parse_segment,
    parse_start_at,
    split_config,
)
from ballista.engine.engine import Engine
from ballista.observe.summary import format_summary, summary_dict

URL = "http://127.0.0.1:9/"
BALLISTA = [sys.executable, "-m", "ballista"]


# -- dividing numbers ---------------------------------------------------------


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_shares_add_up_and_lay_end_to_end(total: int, count: int) -> None:
    segs = [Segment(i, count) for i in range(count)]
    shares = [s.share(total) for s in segs]
    assert sum(shares) == total
    # Remainders go one each to the lowest indexes.
    assert shares == sorted(shares, reverse=True)
    assert max(shares) - min(shares) <= 1
    assert [s.offset(total) for s in segs] == [sum(shares[:i]) for i in range(count)]
    # Shared round-robin, segment i's first share(L) things are its part of the first L.
    for level in range(0, min(total, 200) + 1):
        owned = sorted(s.global_index(j) for s in segs for j in range(s.share(level)))
        assert owned == list(range(level))


def test_a_zero_share_is_allowed() -> None:
    assert [Segment(i, 4).share(3) for i in range(4)] == [1, 1, 1, 0]
    assert Segment(3, 4).offset(3) == 3


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("3/3", "numbered 0 to 2"),
        ("0/0", "at least 1 segment"),
        ("-1/2", "numbered 0 to 1"),
        ("a/b", "is not I/N"),
        ("1", "is not I/N"),
        ("0/100000", "at most 10,000"),
    ],
)
def test_bad_segments_name_the_flag(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_segment(text, "--segment")
    assert str(err.value).startswith("--segment: ")
    assert needle in str(err.value)


def test_parse_segment() -> None:
    assert parse_segment("0/1") == Segment(0, 1)
    assert parse_segment(" 7 / 8 ") == Segment(7, 8)


# -- the open model's schedule --------------------------------------------------


def _times(arrivals: Arrivals, horizon: float) -> list[float]:
    out: list[float] = []
    while (t := arrivals.next()) is not None and t < horizon:
        out.append(t)
    return out


@pytest.mark.parametrize("poisson", [False, True])
@pytest.mark.parametrize("count", [1, 2, 3, 7])
@pytest.mark.parametrize("stages", ["", "2s:300,1s:300,2s:17"])
def test_segment_schedules_interleave_into_the_one_process_schedule(
    poisson: bool, count: int, stages: str
) -> None:
    ramp = Ramp(parse_stages(stages), start=50.0) if stages else constant(250.0)
    whole = _times(Arrivals(ramp, poisson=poisson, seed=42), 6.0)
    parts = [
        _times(Arrivals(ramp, poisson=poisson, seed=42, stride=count, phase=i), 6.0)
        for i in range(count)
    ]
    assert len(whole) > 500
    # Exactly: the very same floats, each once, and segment i has arrivals i, i+N, ...
    assert sorted(t for part in parts for t in part) == whole
    for i, part in enumerate(parts):
        assert part == whole[i::count]


@given(st.floats(1.0, 5000.0), st.integers(1, 9), st.floats(0.01, 3.0))
def test_constant_skips_count_the_same_arrivals(rate: float, count: int, cut: float) -> None:
    ramp = constant(rate)
    whole = _times(Arrivals(ramp), cut)
    skipped = []
    for i in range(count):
        arrivals = Arrivals(ramp, stride=count, phase=i)
        skipped.append(arrivals.skip_before(cut))
        # Past the skip, the segment goes on with its own next arrival.
        later = arrivals.next()
        assert later is not None and later >= cut
        assert Arrivals(ramp).skip_before(cut) == len(whole)
    assert sum(skipped) == len(whole)


def test_poisson_skips_keep_the_segments_share() -> None:
    # Far behind, a segment skips in O(1): its count is a draw of its share.
    rate, count, cut = 10_000.0, 4, 100.0
    n = Arrivals(constant(rate), poisson=True, seed=1, stride=count, phase=2).skip_before(cut)
    expected = rate * cut / count
    assert abs(n - expected) < 5 * (expected / count) ** 0.5 + 1


# -- splitting a configuration --------------------------------------------------


def _split(config: RunConfig, count: int) -> list[RunConfig]:
    return [split_config(config, Segment(i, count)) for i in range(count)]


def test_closed_model_shares() -> None:
    parts = [run_config(URL, "-c", "10", "-n", "1001", "--segment", f"{i}/3") for i in range(3)]
    assert [p.load.concurrency for p in parts] == [4, 3, 3]
    assert [p.load.requests for p in parts] == [334, 334, 333]
    assert [p.segment for p in parts] == [Segment(i, 3) for i in range(3)]
    tests = {p.test for p in parts}
    assert len(tests) == 1
    assert tests == {fingerprint(run_config(URL, "-c", "10", "-n", "1001"))}


def test_open_model_keeps_the_rate_and_splits_the_caps() -> None:
    whole = run_config(URL, "-r", "1000", "--max-in-flight", "10", "--connections", "5")
    parts = _split(whole, 4)
    assert {p.load.rate for p in parts} == {1000.0}
    assert [p.load.max_in_flight for p in parts] == [3, 3, 2, 2]
    assert [p.connections for p in parts] == [2, 1, 1, 1]


def test_adaptive_bounds_are_scaled() -> None:
    base = RunConfig(
        origin=ORIGIN,
        requests=(RequestSpec("default", "GET", "/"),),
        load=LoadSpec(model="adaptive", adaptive=AdaptiveSpec(initial=5, minimum=2, maximum=101)),
    )
    parts = _split(base, 4)
    specs = [p.load.adaptive for p in parts]
    assert [s.maximum for s in specs if s] == [26, 25, 25, 25]
    assert [s.minimum for s in specs if s] == [1, 1, 1, 1]
    assert [s.initial for s in specs if s] == [2, 1, 1, 1]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--segment", "3/3"], "--segment: '3/3': segments of 3 are numbered 0 to 2"),
        (["--segment", "0/0"], "--segment: '0/0': a test has at least 1 segment"),
        (["--segment=-1/2"], "--segment: '-1/2'"),
        (["--segment", "a/b"], "--segment: 'a/b' is not I/N"),
        (["-r", "9", "--max-in-flight", "3", "--segment", "0/4"], "--max-in-flight: 3 requests"),
        (["-c", "9", "--connections", "3", "--segment", "0/4"], "--connections: 3 connections"),
        (["--sequential", "--segment", "0/2"], "--sequential: the sequential model"),
        (["--start-at", "yesterday"], "--start-at: 'yesterday' is neither"),
        (["--start-at", "2020-01-01T00:00:00Z"], "in the past"),
        (["--start-at", "2099-01-01T00:00:00"], "has no time zone"),
        (["--start-at", "1e12"], "more than a year away"),
    ],
)
def test_bad_scale_out_input_is_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", URL, *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ballista: error: ")
    assert needle in lines[0]


def test_scenario_file_keys_are_named_when_they_cannot_be_split(tmp_path: object) -> None:
    import pathlib

    assert isinstance(tmp_path, pathlib.Path)
    scenario = tmp_path / "shop.toml"
    scenario.write_text(
        'base_url = "http://127.0.0.1:9"\n[defaults]\nconnections = 2\n'
        '[load]\nconcurrency = 8\n[[requests]]\nname = "home"\npath = "/"\n'
    )
    with pytest.raises(ConfigError, match=r"shop.toml: defaults.connections: 2 connections"):
        run_config("-f", str(scenario), "--segment", "1/3")


def test_fingerprints_tell_tests_apart() -> None:
    a = fingerprint(run_config(URL, "-c", "10", "-d", "5s"))
    assert a == fingerprint(run_config(URL, "-c", "10", "-d", "5s", "--threshold", "p99<1s"))
    assert len(a) == 16
    for other in (
        [URL, "-c", "11", "-d", "5s"],
        [URL, "-c", "10", "-d", "6s"],
        [URL + "x", "-c", "10", "-d", "5s"],
        [URL, "-c", "10", "-d", "5s", "-H", "X-A: 1"],
        [URL, "-c", "10", "-d", "5s", "-m", "POST"],
        [URL, "-c", "10", "-d", "5s", "--http2"],
    ):
        assert fingerprint(run_config(*other)) != a, other


# -- the engine runs its share ----------------------------------------------------


def _config(load: LoadSpec, **kw: object) -> RunConfig:
    return RunConfig(origin=ORIGIN, requests=(RequestSpec("default", "GET", "/"),), load=load, **kw)  # type: ignore[arg-type]


async def _run_all(configs: list[RunConfig], service: float) -> list[tuple[list[float], Engine]]:
    """Run the configs at once on the same (virtual) clock: their start times, relative."""
    out: list[tuple[list[float], Engine]] = []
    t0 = trio.current_time()

    async def one(config: RunConfig) -> None:
        starts: list[float] = []
        engine = Engine(config, connection_factory=lambda i: FakeConnection(starts, service))
        await engine.run()
        out.append((starts, engine))

    async with trio.open_nursery() as nursery:
        for config in configs:
            nursery.start_soon(one, config)
    return [([t - t0 for t in starts], engine) for starts, engine in out]


@pytest.mark.parametrize("arrival", ["constant", "poisson"])
async def test_open_segments_send_the_one_process_schedule(
    mock_clock: trio.testing.MockClock, arrival: str
) -> None:
    mock_clock.autojump_threshold = 0
    load = LoadSpec(
        model="open",
        rate=100.0,
        stages=parse_stages("1s:400,1s:400"),
        duration=2.5,
        arrival=arrival,  # type: ignore[arg-type]
    )
    whole = _config(load)
    runs = await _run_all(_split(whole, 3), service=0.01)
    ramp = Ramp(load.stages, start=100.0)
    expected = _times(Arrivals(ramp, poisson=arrival == "poisson", seed=arrival_seed(whole)), 2.5)
    sent = sorted(t for starts, _ in runs for t in starts)
    assert sent == pytest.approx(expected, abs=1e-9)
    assert sum(e.final.requests for _, e in runs if e.final) == len(expected)
    # Each segment's target-rate gauge is its share, so that Prometheus sums to the test's.
    for _, engine in runs:
        assert engine.final is not None
        assert engine.final.target_rate == pytest.approx(400.0 / 3)


async def test_closed_ramp_segments_add_up_at_every_level(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    load = LoadSpec(model="closed", stages=parse_stages("5s:10,2s:10,4s:0"))
    [(whole, _)] = await _run_all([_config(load)], service=0.125)
    runs = await _run_all(_split(_config(load), 4), service=0.125)
    assert sorted(t for starts, _ in runs for t in starts) == sorted(whole)
    assert sorted(e.concurrency for _, e in runs) == [2, 2, 3, 3]


async def test_closed_segments_split_the_budget_and_a_zero_share_says_so(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    load = LoadSpec(model="closed", concurrency=3, requests=50)
    runs = await _run_all(_split(_config(load), 4), service=0.1)
    by_index = sorted(runs, key=lambda r: r[1].config.segment.index if r[1].config.segment else 0)
    # The budget goes to the segments that have workers to spend it.
    assert [e.config.load.requests for _, e in by_index] == [17, 17, 16, 0]
    assert [e.final.requests for _, e in by_index if e.final] == [17, 17, 16, 0]
    idle = by_index[3][1]
    assert any("segment 3/4 has no worker" in n for n in idle.notes())


async def test_a_segment_without_workers_lasts_the_duration(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    config = split_config(_config(LoadSpec(concurrency=1, duration=3.0)), Segment(1, 2))
    engine = Engine(config, connection_factory=lambda i: FakeConnection([], 0.1))
    t0 = trio.current_time()
    final = await engine.run()
    assert final.requests == 0
    assert trio.current_time() - t0 == pytest.approx(3.0)


# -- the summary says which segment -------------------------------------------------


async def test_segment_block_in_the_json_and_text_summary(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    config = split_config(_config(LoadSpec(concurrency=5, requests=20)), Segment(1, 2))
    engine = Engine(config, connection_factory=lambda i: FakeConnection([], 0.1))
    final = await engine.run()
    meta = engine.run_meta(dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    doc = json.loads(json.dumps(summary_dict(final, meta)))
    assert doc["segment"] == {"index": 1, "count": 2, "test": config.test}
    assert doc["requests"] == 10
    assert "segment 1/2 of test " + str(config.test) in format_summary(final, meta)
    plain = summary_dict(final, dataclasses.replace(meta, segment=None, test=None))
    assert "segment" not in plain


# -- --start-at ---------------------------------------------------------------------


def test_parse_start_at() -> None:
    now = 1_800_000_000.0
    assert parse_start_at("1800000060", now=now) == 1_800_000_060.0
    assert parse_start_at(iso_instant(now + 90.5), now=now) == now + 90.5
    assert (
        parse_start_at("2027-01-15T09:00:00+01:00", now=now)
        == dt.datetime(2027, 1, 15, 8, tzinfo=dt.UTC).timestamp()
    )
    # A moment late is a process launched a moment late: allowed.
    assert parse_start_at(str(now - START_AT_SLACK + 1), now=now) == now - START_AT_SLACK + 1
    with pytest.raises(ConfigError, match=r"--start-at: '1799999990' is 10\.00s in the past"):
        parse_start_at("1799999990", now=now)


async def test_start_at_waits_and_the_duration_counts_from_it(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    wall = 1_800_000_000.0
    config = _config(LoadSpec(model="open", rate=10.0, duration=2.0), start_at=wall + 3600.0)
    starts: list[float] = []
    engine = Engine(
        config, connection_factory=lambda i: FakeConnection(starts, 0.01), wall_clock=lambda: wall
    )
    t0 = trio.current_time()
    final = await engine.run()
    rel = [t - t0 for t in starts]
    assert rel[0] == pytest.approx(3600.0)
    assert rel[-1] == pytest.approx(3601.9)
    assert final.requests == 20
    assert final.elapsed == pytest.approx(2.0, abs=0.02)


async def test_a_stop_while_waiting_ends_the_run_at_once(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    wall = 1_800_000_000.0
    config = _config(LoadSpec(concurrency=2, duration=2.0), start_at=wall + 3600.0)
    engine = Engine(
        config, connection_factory=lambda i: FakeConnection([], 0.01), wall_clock=lambda: wall
    )
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await trio.sleep(60.0)
        assert engine.waiting_until == wall + 3600.0
        engine.signal()
    assert trio.current_time() - t0 < 61.0
    assert engine.final is not None and engine.final.requests == 0
    assert "stopped early by a signal" in " ".join(engine.notes())


async def test_a_late_start_begins_at_once_and_says_so(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    wall = 1_800_000_000.0
    config = _config(LoadSpec(concurrency=1, duration=1.0), start_at=wall - 2.0)
    engine = Engine(
        config, connection_factory=lambda i: FakeConnection([], 0.25), wall_clock=lambda: wall
    )
    t0 = trio.current_time()
    final = await engine.run()
    assert trio.current_time() - t0 == pytest.approx(1.0)
    assert final.requests == 4
    assert any("started 2.00s after --start-at" in n for n in engine.notes())


async def test_ctrl_c_while_waiting_to_start_exits_cleanly(
    target: RunningTarget, tmp_path: Path
) -> None:
    out = tmp_path / "summary.json"
    at = iso_instant(time.time() + 300)
    proc = await trio.lowlevel.open_process(
        [*BALLISTA, "run", target.url, "-d", "1s", "--start-at", at, "--json", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    err = b""
    try:
        assert proc.stderr is not None
        with trio.fail_after(20):
            while b"Ctrl-C cancels" not in err:
                chunk = await proc.stderr.receive_some()
                assert chunk, err
                err += chunk
        assert f"waiting to start at {at} (in ".encode() in err
        assert b"(in 4m5" in err or b"(in 5m00s)" in err
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(15):
            code = await proc.wait()
            err += await proc.stderr.receive_some() or b""
    finally:
        if proc.returncode is None:
            proc.kill()
    assert code == 0, err
    assert b"Traceback" not in err
    doc = json.loads(out.read_text())
    assert doc["requests"] == 0 == target.stats.requests
    assert any("signal" in note for note in doc["notes"])


async def test_start_at_starts_at_that_wall_clock_instant(target: RunningTarget) -> None:
    at = time.time() + 2.0
    argv = [*BALLISTA, "run", target.url, "-n", "20", "-c", "2", "--start-at", f"{at:.3f}", "-q"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(trio.run_process, argv, capture_stdout=True))
        await wait_until(lambda: target.stats.requests > 0, "the first request", limit=20)
        # Nothing came earlier: a request before `at` would be seen before it.
        assert time.time() >= at - 0.001
    assert target.stats.requests == 20


def test_a_segment_is_held_to_one_process_bounds_on_its_share() -> None:
    assert run_config(URL, "-r", "2e6", "--segment", "3/4").load.rate == 2e6
    assert run_config(URL, "-c", "40000", "--segment", "0/4").load.concurrency == 10_000
    with pytest.raises(ConfigError, match=r"this segment's share: 1/2 of the test's"):
        run_config(URL, "-r", "4e6", "--segment", "0/2")
    with pytest.raises(ConfigError, match="add --no-limits"):
        run_config(URL, "-r", "2e6")
