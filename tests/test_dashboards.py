"""grafana/: dashboards load, have unique uids, units and descriptions, and query real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import run_config
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from ballista.observe.metrics import MetricsExporter

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_UID = "ballista-prometheus"

#: PromQL words that look like metric names but are not.
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "or",
    "and",
    "unless",
    "le",
    "bool",
    "offset",
}


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in doc["panels"] if p["type"] != "row"]


def exposed_names() -> set[str]:
    """Every family and sample name of Ballista's exposition, open and closed model alike."""
    names: set[str] = set()
    for argv in (["http://127.0.0.1:9/", "-r", "10"], ["http://127.0.0.1:9/"]):
        config = run_config(*argv)
        _, body = MetricsExporter(config, run_id="r", registry=CollectorRegistry()).render("")
        for family in text_string_to_metric_families(body.decode()):
            names.add(family.name)
            names.update(s.name for s in family.samples)
    return names


def recorded_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "prometheus" / "rules").glob("*.yml"):
        names.update(re.findall(r"^\s*- record:\s*(\S+)", path.read_text(), re.M))
    return names


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that name series (not functions, labels, keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals
    text = re.sub(r"\{[^}]*\}", "{}", text)  # drop matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # drop ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        after = text[match.end() :].lstrip()
        if after.startswith("(") or word in _KEYWORDS:
            continue  # a function call or a keyword
        names.add(word)
    return names


def test_there_are_the_two_dashboards() -> None:
    titles = {load(p)["title"] for p in DASHBOARDS}
    assert titles == {"Ballista — run", "Ballista — soak"}


def test_uids_are_unique() -> None:
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert all(uids) and len(set(uids)) == len(uids)
    for path in DASHBOARDS:
        ids = [p["id"] for p in load(path)["panels"]]
        assert len(set(ids)) == len(ids), path.name


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_has_a_unit_a_description_and_queries(path: Path) -> None:
    for panel in panels(load(path)):
        where = f"{path.name}: {panel['title']}"
        assert panel["fieldConfig"]["defaults"].get("unit"), where
        assert len(panel.get("description", "")) > 20, where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["datasource"]["uid"] == "${datasource}", where


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_variables(path: Path) -> None:
    variables = {v["name"]: v for v in load(path)["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance", "scenario", "request"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["current"]["value"] == DATASOURCE_UID
    for name in ("job", "instance", "scenario", "request"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_ranges_use_rate_interval(path: Path) -> None:
    """Rates over $__rate_interval (or, for long-range trends, 1 h and $__range)."""
    for panel in panels(load(path)):
        for target in panel["targets"]:
            for window in re.findall(r"\[([^\]]+)\]", re.sub(r'"[^"]*"', "", target["expr"])):
                assert window in ("$__rate_interval", "$__range", "1h"), (panel["title"], window)


def test_every_metric_a_query_names_exists() -> None:
    known = exposed_names() | recorded_names()
    assert "ballista_target_rate_requests_per_second" in known
    assert "process_resident_memory_bytes" in known
    used: set[str] = set()
    for path in DASHBOARDS:
        doc = load(path)
        for panel in panels(doc):
            for target in panel["targets"]:
                names = metric_names(target["expr"])
                assert names, target["expr"]
                missing = names - known
                assert not missing, (path.name, panel["title"], missing)
                used |= names
        for variable in doc["templating"]["list"][1:]:
            match = re.match(r"label_values\((\w+)", variable["query"]["query"])
            assert match and match.group(1) in known, variable["query"]
    # the contract metrics all appear on some dashboard
    contract = {
        "ballista_requests_total",
        "ballista_request_errors_total",
        "ballista_request_duration_seconds_bucket",
        "ballista_in_flight_requests",
        "ballista_concurrency_limit",
        "ballista_target_rate_requests_per_second",
        "ballista_dropped_requests_total",
        "ballista_connections_opened_total",
        "ballista_open_connections",
        "ballista_request_bytes_total",
        "ballista_response_bytes_total",
        "ballista_run_info",
    }
    assert contract <= used, contract - used


def test_quantiles_sum_buckets_by_le() -> None:
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            for target in panel["targets"]:
                expr = target["expr"]
                for match in re.finditer(r"histogram_quantile\(([^,]+),\s*(.*)", expr):
                    assert re.match(r"sum by \([^)]*\ble\b[^)]*\)", match.group(2)), expr


def test_provisioning() -> None:
    datasource = (GRAFANA / "provisioning/datasources/ballista.yml").read_text()
    assert f"uid: {DATASOURCE_UID}" in datasource
    assert "type: prometheus" in datasource
    provider = (GRAFANA / "provisioning/dashboards/ballista.yml").read_text()
    assert "type: file" in provider
    assert "path: /var/lib/grafana/dashboards/ballista" in provider


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(ballista_request_duration_seconds_bucket{a=~"x|y"}[5m])))'
        " / ignoring(kind) group_left scenario:ballista_requests:rate1m or vector(0)"
    )
    assert metric_names(expr) == {
        "ballista_request_duration_seconds_bucket",
        "scenario:ballista_requests:rate1m",
    }
