"""The `ballista` command end to end: bad input, JSON summary, signals, demo, compare."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from helpers import wait_until
from servers import RunningTarget

from ballista.cli.main import main

BALLISTA = [sys.executable, "-m", "ballista"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run"], "URL is required"),
        (["run", "ftp://example.com/"], "http:// or https://"),
        (["run", "http://"], "no host"),
        (["run", "http://127.0.0.1:99999/"], "not a valid URL"),
        (["run", "http://127.0.0.1/", "-c", "0"], "at least 1"),
        (["run", "http://127.0.0.1/", "-c", "many"], "not a whole number"),
        (["run", "http://127.0.0.1/", "-d", "5x"], "not a duration"),
        (["run", "http://127.0.0.1/", "-d", "0s"], "longer than 0"),
        (["run", "http://127.0.0.1/", "--timeout", "-1s"], "--timeout"),
        (["run", "http://127.0.0.1/", "-H", "no-colon"], "expected 'Name: value'"),
        (["run", "http://127.0.0.1/", "-H", "Bad Name: v"], "not a valid header name"),
        (["run", "http://127.0.0.1/", "-m", "GE T"], "not a valid HTTP method"),
        (["run", "http://127.0.0.1/", "--body-file", "/nonexistent/file"], "cannot read"),
        (["run", "http://127.0.0.1/", "--http1", "--http2"], "not allowed with"),
        (["run", "http://127.0.0.1/", "--sequential", "-c", "5"], "sequential model"),
        (["run", "http://127.0.0.1/", "-r", "10", "-c", "5"], "choose one"),
        (["run", "http://127.0.0.1/", "--max-in-flight", "5"], "open model"),
        (["run", "http://127.0.0.1/", "--stages", "30s"], "DURATION:TARGET"),
        (["run", "http://127.0.0.1/", "--stages", "10s:abc"], "not a number"),
        (["run", "http://127.0.0.1/", "--frobnicate"], "unrecognized arguments"),
        (["run", "http://127.0.0.1/", "--cacert", "/nonexistent.pem"], "--cacert"),
        (["run", "http://127.0.0.1/", "--json", "/nonexistent/dir/out.json"], "no such directory"),
        (["run", "http://127.0.0.1/", "--json", "/tmp"], "is a directory"),
        (["compare", "http://127.0.0.1/", "--json", "/nonexistent/out.json"], "no such directory"),
        (["watch", "ws://127.0.0.1:1/", "--json", "/nonexistent/out.json"], "no such directory"),
        (["bogus"], "invalid choice"),
        (["run", "http://127.0.0.1/", "-r", "1e12"], "-r/--rate: 1e+12 requests/s is above"),
        (["run", "http://127.0.0.1/", "-r", "1e12", "--no-limits"], "limit of 1,000,000,000"),
        (["run", "http://127.0.0.1/", "-c", "30000"], "add --no-limits if you mean it"),
        (["run", "http://127.0.0.1/", "--connections", "1e8"], "is not a whole number"),
        (["run", "http://127.0.0.1/", "--stages", "1s:1e308"], "--stages: 1e+308"),
        (["run", "http://127.0.0.1/", "--interval", "1us"], "--interval: must be at least 50ms"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ballista: error:")
    assert needle in lines[0]
    assert "Traceback" not in err


def test_bad_input_in_a_real_process() -> None:
    proc = subprocess.run(
        [*BALLISTA, "run", "http://127.0.0.1/", "-d", "soon"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert "-d/--duration" in proc.stderr


async def test_json_summary_contract(target: RunningTarget, tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    result = await trio.run_process(
        [*BALLISTA, "run", target.url, "-n", "150", "-c", "5", "--json", str(out)],
        capture_stdout=True,
        capture_stderr=True,
    )
    assert result.returncode == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "ballista.summary/1"
    for key in (
        "version",
        "target",
        "model",
        "protocol",
        "started_at",
        "duration_s",
        "requests",
        "responses",
        "errors",
        "failed",
        "error_rate",
        "rps",
        "latency_s",
        "status_codes",
        "errors_by_kind",
        "dropped",
        "concurrency",
        "connections_opened",
        "bytes_sent",
        "bytes_received",
        "requests_by_name",
        "thresholds",
    ):
        assert key in doc, key
    assert doc["requests"] == 150 == target.stats.requests
    assert doc["requests"] == doc["responses"] + doc["errors"]
    assert doc["model"] == "closed"
    assert doc["protocol"] == "HTTP/1.1"
    assert doc["concurrency"]["configured"] == 5
    assert set(doc["latency_s"]) == {"min", "mean", "p50", "p90", "p95", "p99", "p999", "max"}
    assert {
        "connect_refused",
        "connect_timeout",
        "read_timeout",
        "write_timeout",
        "pool_timeout",
        "reset",
        "protocol",
        "tls",
        "dns",
        "other",
    } <= set(doc["errors_by_kind"])
    assert doc["requests_by_name"]["default"]["requests"] == 150
    # The text summary went to stdout, with no control characters off a terminal.
    text = result.stdout.decode()
    assert "requests" in text and "latency" in text
    assert "\x1b" not in text and "\r" not in text


async def test_json_to_stdout(target: RunningTarget) -> None:
    result = await trio.run_process(
        [*BALLISTA, "run", target.url, "-n", "20", "-c", "2", "--json", "-"],
        capture_stdout=True,
        capture_stderr=True,
    )
    doc = json.loads(result.stdout)
    assert doc["requests"] == 20
    assert "latency" in result.stderr.decode()  # the text summary moved to stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_signal_mid_run_still_writes_the_summary(
    target: RunningTarget, tmp_path: Path, signum: int
) -> None:
    out = tmp_path / "summary.json"
    proc = await trio.lowlevel.open_process(
        [
            *BALLISTA,
            "run",
            target.url_for("/?delay=0.05"),
            "-d",
            "60s",
            "-c",
            "4",
            "--json",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_until(lambda: target.stats.requests >= 20, "20 requests at the target", limit=20)
        proc.send_signal(signum)
        with trio.fail_after(15):
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["duration_s"] < 30
    assert doc["requests"] > 0
    # In-flight requests were allowed to finish: everything sent was counted.
    assert doc["requests"] == target.stats.requests
    assert doc["errors"] == 0
    assert any("signal" in note for note in doc.get("notes", []))


async def test_demo_runs_and_stops() -> None:
    result = await trio.run_process(
        [*BALLISTA, "demo", "-d", "1s", "--json", "-"],
        capture_stdout=True,
        capture_stderr=True,
    )
    assert result.returncode == 0
    doc = json.loads(result.stdout)
    assert doc["protocol"] == "HTTP/2"
    assert doc["requests"] > 0
    assert doc["responses"] > 0


async def test_demo_journey_runs_the_shop_flows_without_failure() -> None:
    result = await trio.run_process(
        [*BALLISTA, "demo", "--journey", "-d", "1.5s", "--json", "-"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    doc = json.loads(result.stdout)
    flows = doc["flows"]
    assert flows.keys() == {"setup", "buy", "browse"}
    # Each virtual user logs in once, before its first iteration.
    assert flows["setup"]["completed"] == flows["setup"]["iterations"] > 0
    assert doc["requests_by_name"]["login"]["requests"] == flows["setup"]["completed"]
    for name in ("buy", "browse"):
        assert flows[name]["completed"] > 0, name
    assert all(f["failed"] == 0 and f["failures_by_reason"] == {} for f in flows.values())
    # The shop's answers are never injected failures: nothing fails.
    assert doc["failed"] == doc["errors"] == 0 and doc["status_codes"] == {"200": doc["requests"]}


async def test_compare_prints_both_sides(target: RunningTarget, tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    result = await trio.run_process(
        [
            *BALLISTA,
            "compare",
            target.url_for("/?delay=0.01"),
            "-n",
            "60",
            "-c",
            "6",
            "--json",
            str(out),
        ],
        capture_stdout=True,
        capture_stderr=True,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    for label in (
        "requests/s",
        "mean latency",
        "p99 latency",
        "peak memory",
        "connections",
        "throughput ratio",
    ):
        assert label in text
    report = json.loads(out.read_text())
    assert report["sequential"]["connections_opened"] == 1
    assert report["concurrent"]["connections_opened"] == 6
    assert report["sequential"]["requests"] == report["concurrent"]["requests"] == 60
    assert report["sequential"]["peak_rss_bytes"] > 10_000_000
    # With a 10 ms target, six workers are several times faster than one.
    assert report["throughput_ratio"] > 2.5


async def test_compare_json_to_stdout_is_json_alone(target: RunningTarget) -> None:
    result = await trio.run_process(
        [*BALLISTA, "compare", target.url, "-n", "20", "-c", "2", "--json", "-"],
        capture_stdout=True,
        capture_stderr=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # nothing but the JSON on stdout
    assert report["sequential"]["requests"] == report["concurrent"]["requests"] == 20
    assert "throughput ratio" in result.stderr.decode()
