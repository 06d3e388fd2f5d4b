"""`--workers N`: N segment processes, one merged run; the merging itself without processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import run_config, wait_until
from servers import RunningTarget

from ballista.cli.main import main
from ballista.core.config import RequestSpec
from ballista.core.merge import Rounds
from ballista.core.outcome import NO_ERROR, ErrorKind, Sample
from ballista.core.recorder import Recorder
from ballista.core.snapshot import Snapshot
from ballista.core.wire import snapshot_from_wire, snapshot_to_wire
from ballista.engine.workers import WorkerLost, WorkersRun

BALLISTA = [sys.executable, "-m", "ballista"]
SPECS = (RequestSpec("a", "GET", "/a"), RequestSpec("b", "POST", "/b"))


def _samples(n: int, seed: int, names: int = 2) -> list[Sample]:
    out = []
    for i in range(n):
        latency = ((i * 7919 + seed) % 5000 + 1) / 4096
        if i % 17 == 0:
            out.append(Sample(i % names, 0, ErrorKind.RESET, latency, latency, 10, 0))
        else:
            out.append(Sample(i % names, 200 if i % 5 else 503, NO_ERROR, latency, latency, 10, 90))
    return out


def _feed(rec: Recorder, n: int, seed: int, names: int = 2) -> None:
    for sample in _samples(n, seed, names):
        rec.request_started()
        rec.record(sample)


def _figures(snap: Snapshot) -> dict[str, Any]:
    """Everything a snapshot says, histograms as data (Histogram has no equality)."""
    doc = snapshot_to_wire(snap)
    doc["histogram"] = snap.histogram.to_dict()
    doc["latency"] = snap.latency
    doc["interval_latency"] = snap.interval_latency
    doc["by_request_latency"] = [s.latency for s in snap.by_request]
    return doc


def test_a_snapshot_crosses_the_pipe_unchanged() -> None:
    for specs in (SPECS, SPECS[:1]):
        rec = Recorder(specs, track_service_time=True, start=0.0)
        _feed(rec, 500, seed=3, names=len(specs))
        rec.record_dropped(4)
        snap = rec.snapshot(1.0)
        back = snapshot_from_wire(json.loads(json.dumps(snapshot_to_wire(snap))))
        assert _figures(back) == _figures(snap)


def test_rounds_merge_each_interval_as_one_recorder_would() -> None:
    one = Recorder(SPECS, start=0.0)
    parts = [Recorder(SPECS, start=0.0) for _ in range(3)]
    rounds = Rounds(3)
    merged: list[Snapshot] = []
    wholes: list[Snapshot] = []
    for tick in range(1, 5):
        for k, sample in enumerate(_samples(300, seed=tick)):
            for rec in (one, parts[k % 3]):
                rec.request_started()
                rec.record(sample)
        wholes.append(one.snapshot(float(tick), final=tick == 4))
        # The parts report in any order; a round is out once all three are in.
        for i in (2, 0, 1):
            out = rounds.add(i, parts[i].snapshot(float(tick), final=tick == 4))
            assert (len(out) == 1) == (i == 1)
            merged.extend(out)
    assert rounds.final is merged[-1]
    assert [m.final for m in merged] == [False, False, False, True]
    for got, want in zip(merged, wholes, strict=True):
        assert got.requests == want.requests
        assert got.interval_requests == want.interval_requests
        assert got.status_codes == want.status_codes
        assert got.errors_by_kind == want.errors_by_kind
        assert got.failed == want.failed
        assert got.latency == want.latency
        assert got.interval_latency == want.interval_latency
        assert [s.latency for s in got.by_request] == [s.latency for s in want.by_request]
        assert got.interval == 1.0


def test_a_part_that_dies_keeps_its_figures_and_the_others_go_on() -> None:
    parts = [Recorder(SPECS, start=0.0) for _ in range(2)]
    rounds = Rounds(2)
    _feed(parts[0], 100, seed=1)
    _feed(parts[1], 50, seed=2)
    assert rounds.add(0, parts[0].snapshot(1.0)) == []
    (first,) = rounds.add(1, parts[1].snapshot(1.0))
    assert first.requests == 150
    # Part 1 dies: part 0's rounds no longer wait for it, and its 50 stay counted.
    assert rounds.end(1) == []
    _feed(parts[0], 100, seed=3)
    (second,) = rounds.add(0, parts[0].snapshot(2.0))
    assert (second.requests, second.interval_requests, second.final) == (250, 100, False)
    (last,) = rounds.add(0, parts[0].snapshot(2.5, final=True))
    assert last.final and last.requests == 250 and last.interval == pytest.approx(0.5)
    assert rounds.end(0) == []


def test_a_run_whose_parts_all_died_ends_with_their_last_figures() -> None:
    rec = Recorder(SPECS, start=0.0)
    rounds = Rounds(2)
    _feed(rec, 10, seed=1)
    assert rounds.add(0, rec.snapshot(1.0)) == []
    assert rounds.end(1)[0].requests == 10
    (final,) = rounds.end(0)
    assert final.final and final.requests == 10
    assert Rounds(1).end(0) == []  # nothing ever reported: nothing to merge


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--workers", "0"], "--workers: must be at least 1"),
        (["--workers", "x"], "--workers: 'x' is not a whole number"),
        (["--workers", "100000"], "--workers: at most 1024 on one machine"),
        (["--workers", "2", "--segment", "0/2"], "not with --segment"),
        (["--workers", "2", "--sequential"], "not with --workers"),
        (["--workers", "4", "--connections", "3"], "--connections"),
    ],
)
def test_bad_workers_input_is_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "http://127.0.0.1:9/", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ballista: error:")
    assert needle in lines[0]


@contextlib.asynccontextmanager
async def _parent(*argv: str) -> AsyncIterator[trio.Process]:
    """`ballista ARGV` in the background, killed if the test fails before it ends
    (its workers stop when it goes: their stdin closes)."""
    proc = await trio.lowlevel.open_process([*BALLISTA, *argv], stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
            if proc.stderr is not None:
                await proc.stderr.aclose()


def _children(parent: int) -> list[tuple[int, list[str]]]:
    """The processes whose parent is `parent`, with their command lines (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            out.append((int(entry.name), cmdline))
    return out


async def _ballista(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [*BALLISTA, *argv], capture_stdout=True, capture_stderr=True, check=False
    )


async def test_workers_send_exactly_the_test_and_merge_what_the_target_saw(
    target: RunningTarget, tmp_path: Path
) -> None:
    out = tmp_path / "out.json"
    done = await _ballista(
        "run", target.url, "-c", "5", "-n", "401", "--workers", "2", "--json", str(out)
    )
    assert done.returncode == 0, done.stderr.decode()
    doc = json.loads(out.read_text())
    assert doc["requests"] == target.stats.requests == 401
    assert sum(doc["status_codes"].values()) == 401
    assert doc["workers"] == {"count": 2, "lost": []}
    assert doc["concurrency"]["configured"] == 5
    assert sum(p["requests"] for p in doc["timeline"]["points"]) == 401
    assert b"requests     401" in done.stdout


async def test_sigterm_stops_every_worker_and_gives_one_complete_summary(
    target: RunningTarget, tmp_path: Path
) -> None:
    out = tmp_path / "out.json"
    argv = ["run", target.url, "-c", "4", "-d", "60s", "--workers", "2", "--json", str(out), "-q"]
    async with _parent(*argv) as proc:
        await wait_until(lambda: target.stats.requests > 100, "requests", limit=30)
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            code = await proc.wait()
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["requests"] == target.stats.requests
    assert doc["errors"] == 0
    assert "stopped early by a signal; figures cover what was done" in doc["notes"]


async def test_a_worker_killed_is_reported_and_the_run_fails(
    target: RunningTarget, tmp_path: Path
) -> None:
    out = tmp_path / "out.json"
    argv = ["run", target.url, "-c", "4", "-d", "60s", "--workers", "2", "--json", str(out), "-q"]
    async with _parent(*argv) as proc:
        assert proc.stderr is not None
        await wait_until(lambda: target.stats.requests > 200, "requests", limit=30)
        children = [pid for pid, argv in _children(proc.pid) if "1/2" in argv]
        assert len(children) == 1
        os.kill(children[0], signal.SIGKILL)
        err = b""
        with trio.fail_after(30):
            async for chunk in proc.stderr:
                err += chunk
            code = await proc.wait()
    assert code == 3
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith(f"ballista: error: worker 1/2 (pid {children[0]}) was killed by SIGKILL")
    assert "Traceback" not in err.decode()
    doc = json.loads(out.read_text())
    (lost,) = doc["workers"]["lost"]
    assert (lost["index"], lost["pid"], lost["how"]) == (
        1,
        int(children[0]),
        "was killed by SIGKILL",
    )
    # What the dead worker sent after its last report is lost; nothing is counted twice.
    assert 0 < doc["requests"] <= target.stats.requests
    assert any("incomplete" in n for n in doc["notes"])
    # The parent stopped the other worker: no person's signal to speak of.
    assert not any("signal" in n for n in doc["notes"])


async def test_a_worker_that_hangs_is_killed_and_reported(target: RunningTarget) -> None:
    config = run_config(target.url, "-c", "2", "-d", "60s", "--interval", "200ms")
    child_args = [target.url, "-c", "2", "-d", "60s", "--interval", "200ms"]
    run = WorkersRun(config, child_args, 2, stall=2.0)
    snaps: list[Snapshot] = []
    run.add_sink(snaps.append)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_one, run, snaps)
        with trio.fail_after(60), pytest.raises(WorkerLost, match=r"worker 0/2 .* sent nothing"):
            await run.run()
    result = run.partial_result()
    assert result is not None
    assert result.final.final and result.final.requests == snaps[-1].requests > 0
    assert [w["index"] for w in result.extra["workers"]["lost"]] == [0]


async def _stop_one(run: WorkersRun, snaps: list[Snapshot]) -> None:
    await wait_until(lambda: len(snaps) >= 2, "two merged snapshots", limit=30)
    os.kill(run.pids[0], signal.SIGSTOP)


async def test_prometheus_sees_one_set_of_series_with_every_worker_in_it(
    target: RunningTarget,
) -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families

    from ballista.observe.metrics import MetricsExporter

    args = [target.url, "-c", "3", "-n", "300"]
    config = run_config(*args)
    run = WorkersRun(config, args, 3)
    exporter = MetricsExporter(config, run_id=run.id, registry=CollectorRegistry())
    run.add_sink(exporter.update)
    run.on_start(exporter.on_start)
    with trio.fail_after(60):
        result = await run.run()
    _, body = exporter.render("")
    found = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]

    def values(name: str) -> list[float]:
        return [s.value for s in found if s.name == name]

    assert result.final.requests == target.stats.requests == 300
    assert sum(values("ballista_requests_total")) == 300
    assert values("ballista_request_duration_seconds_count") == [300.0]
    labels = [tuple(sorted(s.labels.items())) for s in found if s.name == "ballista_requests_total"]
    assert len(labels) == len(set(labels))  # no series twice: one exporter, the parent's
    assert len(values("ballista_run_info")) == 1
    assert values("ballista_connections_opened_total") == [3.0]


async def test_the_daemon_runs_a_scenario_with_workers(
    nursery: trio.Nursery, tmp_path: Path, target: RunningTarget
) -> None:
    from test_daemon import api, wait_status

    from ballista.daemon.service import Daemon, ServeOptions

    daemon = Daemon(ServeOptions(port=0, live_port=0, data_dir=tmp_path / "data", grace=1.0))
    await nursery.start(daemon.serve)
    port = daemon.port
    assert port is not None
    doc = {
        "name": "w",
        "workers": 2,
        "base_url": f"http://127.0.0.1:{target.port}",
        "defaults": {"interval": "200ms"},
        "requests": [{"name": "home", "path": "/"}],
        "load": {"concurrency": 3, "requests": 301},
    }
    status, bad = await api(port, "POST", "/api/runs", {**doc, "workers": 0})
    assert (status, bad["field"]) == (400, "workers")
    status, created = await api(port, "POST", "/api/runs", doc)
    assert status == 201, created
    final = await wait_status(port, created["id"], "finished", limit=60)
    summary = final["summary"]
    assert summary["requests"] == target.stats.requests == 301
    assert summary["concurrency"]["configured"] == 3
    _, with_points = await api(port, "GET", f"/api/runs/{created['id']}?points")
    assert sum(p["requests"] for p in with_points["points"]) == 301


async def test_abort_on_fail_stops_every_worker_and_exits_1(
    target: RunningTarget, tmp_path: Path
) -> None:
    out = tmp_path / "out.json"
    argv = ["run", target.url, "-c", "4", "-d", "60s", "--workers", "2", "-q"]
    with trio.fail_after(45):
        done = await _ballista(
            *argv, "--threshold", "max<1us", "--abort-on-fail", "--json", str(out)
        )
    assert done.returncode == 1, done.stderr.decode()
    doc = json.loads(out.read_text())
    assert doc["requests"] == target.stats.requests > 0
    assert doc["thresholds"][0]["ok"] is False
    assert doc["workers"]["lost"] == []
    assert doc["duration_s"] < 30


async def test_open_model_workers_send_the_one_process_schedule(
    target: RunningTarget, tmp_path: Path
) -> None:
    out = tmp_path / "out.json"
    argv = ["run", target.url, "-r", "300", "-d", "2s", "--workers", "3", "--json", str(out), "-q"]
    done = await _ballista(*argv)
    assert done.returncode == 0, done.stderr.decode()
    doc = json.loads(out.read_text())
    # 300/s for 2 s: 600 arrivals, 200 for each worker, none twice, none missing.
    assert doc["requests"] + doc["dropped"] == 600
    assert doc["requests"] == target.stats.requests
    assert doc["model"] == "open"
    assert doc["service_time_s"]["p50"] > 0
