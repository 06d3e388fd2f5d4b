"""prometheus/ and grafana/ against a real Prometheus scraping real Ballista processes.

promtool checks the configuration, the rules and their unit tests and
Ballista's exposition. Then one Prometheus (the distribution's binary, on
127.0.0.1, a temporary TSDB, 1 s scrapes) scrapes two `ballista run`
processes at once, and every PromQL expression of the dashboards and rules
must return data; totals must agree with the runs' JSON summaries.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import free_port, run_config, wait_until
from prom import PROM_DIR, PROMETHEUS, PROMTOOL, ROOT, Prometheus, promtool
from prometheus_client.registry import CollectorRegistry
from servers import RunningTarget

from ballista.engine.engine import Engine
from ballista.observe.metrics import MetricsExporter

DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))


@pytest.fixture(autouse=True)
def _tools_are_installed() -> None:
    # Never a skip: scripts/test installs the tool, so its absence is a failure.
    if PROMETHEUS is None or PROMTOOL is None:
        pytest.fail("needs the prometheus package (scripts/test installs it)")


#: Dashboard variables, as Grafana would expand them for "All" over a short run.
VARIABLES = {
    "$__rate_interval": "4s",
    "$__interval": "1s",
    "$__range": "30s",
    "$job": ".*",
    "$instance": ".*",
    "$scenario": ".*",
    "$request": ".*",
}


def expand(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every query of every dashboard panel."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
    return found


# -- promtool ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-compose.yml"])
def test_promtool_check_config(name: str) -> None:
    result = promtool("check", "config", name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    rules = sorted(str(p.relative_to(PROM_DIR)) for p in (PROM_DIR / "rules").glob("*.yml"))
    assert len(rules) == 2
    result = promtool("check", "rules", *rules)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules_covers_every_alert() -> None:
    tests = sorted(str(p.relative_to(PROM_DIR)) for p in (PROM_DIR / "tests").glob("*.yml"))
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = set(
        re.findall(
            r"^\s*- alert: (\w+)", (PROM_DIR / "rules/ballista-alerts.yml").read_text(), re.M
        )
    )
    tested = set()
    for t in tests:
        tested |= set(re.findall(r"alertname: (\w+)", (PROM_DIR / t).read_text()))
    assert (
        alerts
        == tested
        == {
            "BallistaDown",
            "BallistaHighErrorRatio",
            "BallistaLatencyP99AboveSLO",
            "BallistaDroppingRequests",
        }
    )


async def test_promtool_check_metrics_on_a_real_exposition(target: RunningTarget) -> None:
    config = run_config(target.url, "-n", "200", "-c", "4")
    exporter = MetricsExporter(config, run_id="lint", registry=CollectorRegistry())
    engine = Engine(config, sinks=[exporter.update], grace=2.0)
    engine.on_start.append(exporter.on_start)
    with trio.fail_after(30):
        await engine.run()
    _, body = exporter.render("text/plain")
    assert b'status="200"} 200.0' in body
    result = promtool("check", "metrics", stdin=body)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == b"" and result.stderr == b""


# -- a real Prometheus ---------------------------------------------------------------


async def ballista_run(argv: list[str], json_path: Path) -> tuple[dict[str, Any], float]:
    """Run `ballista run ...` as its own process: (JSON summary, wall time it exited)."""
    cmd = [sys.executable, "-m", "ballista", "run", *argv, "--json", str(json_path), "-q"]
    with trio.fail_after(60):
        result = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(await trio.Path(json_path).read_text()), time.time()


async def test_dashboards_and_rules_against_two_scraped_runs(
    target_factory: Any, prometheus_factory: Any, tmp_path: Path
) -> None:
    fast: RunningTarget = await target_factory(fixed_delay=0.0, error_rate=0.02)
    slow: RunningTarget = await target_factory(fixed_delay=0.05)
    ports = [free_port(), free_port()]
    prom: Prometheus = await prometheus_factory([f"127.0.0.1:{p}" for p in ports])

    started = time.time()
    runs: dict[int, tuple[dict[str, Any], float]] = {}

    async def run(i: int, argv: list[str]) -> None:
        runs[i] = await ballista_run(argv, tmp_path / f"run{i}.json")

    common = ["-d", "4s", "--max-in-flight", "50", "--linger", "3s"]
    async with trio.open_nursery() as runners:
        runners.start_soon(
            run, 0, [fast.url, "-r", "300", *common, "--metrics-port", str(ports[0])]
        )
        runners.start_soon(
            run, 1, [slow.url, "-r", "100", *common, "--metrics-port", str(ports[1])]
        )

    # Prometheus has noticed both are gone (up == 0) once the rules, evaluated
    # again, hold the down alert (pending) for each of them.
    async def both_down() -> bool:
        alerts = (await prom.get("/api/v1/alerts"))["alerts"]
        names = [a["labels"]["alertname"] for a in alerts]
        return names.count("BallistaDown") == 2

    await wait_until(both_down, "BallistaDown for both processes", limit=30, poll=0.2)
    ended = time.time()
    summaries = [runs[0][0], runs[1][0]]
    requests = sum(s["requests"] for s in summaries)
    assert summaries[0]["requests"] >= 300 and summaries[1]["requests"] >= 100

    # Totals: the last values scraped from both processes agree with their summaries.
    at = ended
    last = "last_over_time({}[1m])"
    assert await prom.scalar(f"sum({last.format('ballista_requests_total')})", at) == requests
    count = f"sum({last.format('ballista_request_duration_seconds_count')})"
    assert await prom.scalar(count, at) == requests
    for i, summary in enumerate(summaries):
        instance = f'{{instance="127.0.0.1:{ports[i]}"}}'
        mine = last.format(f"ballista_requests_total{instance}")
        assert await prom.scalar(f"sum({mine})", at) == summary["requests"]

    # Quantiles over the summed buckets cover both: only the fast run is below
    # 10 ms, only the slow one above 45 ms.
    buckets = f"sum by (le) ({last.format('ballista_request_duration_seconds_bucket')})"
    assert await prom.scalar(f"histogram_quantile(0.01, {buckets})", at) <= 0.01
    assert await prom.scalar(f"histogram_quantile(0.999, {buckets})", at) >= 0.045

    # Every dashboard query returns data over the run.
    empty = []
    for where, expr in dashboard_exprs():
        series = await prom.query_range(expand(expr), started, ended)
        values = [float(v) for s in series for _, v in s["values"]]
        if not any(not math.isnan(v) for v in values):
            empty.append(f"{where}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)

    # Every rule: recording rules' expressions and their recorded series return
    # data; alert expressions do too without their bound (the bounds are
    # promtool-tested in prometheus/tests/).
    groups = (await prom.get("/api/v1/rules"))["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["type"] for r in rules} == {"recording", "alerting"}
    assert len(rules) == 18
    for rule in rules:
        assert rule["health"] == "ok", rule
        exprs = [rule["query"]]
        if rule["type"] == "recording":
            exprs.append(rule["name"])
        else:
            unbounded = re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.e+-]+\s*$", "", rule["query"])
            assert unbounded != rule["query"], rule["query"]
            exprs = [unbounded]
        for expr in exprs:
            series = await prom.query_range(expr, started, ended)
            assert series, f"rule {rule['name']}: {expr} returned nothing"

    # The down alert fires once the processes have gone (pending: `for: 1m`).
    alerts = (await prom.get("/api/v1/alerts"))["alerts"]
    assert {a["labels"]["alertname"] for a in alerts} >= {"BallistaDown"}

    # The dashboards' variable queries find both processes.
    instances = await prom.get(
        "/api/v1/label/instance/values",
        **{"match[]": "ballista_build_info"},
        start=started,
        end=ended,
    )
    assert sorted(instances) == sorted(f"127.0.0.1:{p}" for p in ports)
