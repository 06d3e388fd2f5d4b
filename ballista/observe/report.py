"""The HTML report: one self-contained file (data, scripts and styles inlined, no
request anywhere) with a run's plots over time, its latency distribution, tables
and verdict; given several runs, it overlays them and tabulates their deltas.

Every number is computed here, in Python, from the JSON summary (percentiles
from its histograms, with `core/histogram.py`); the page's script only draws."""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ballista import __version__
from ballista.core.config import RunConfig
from ballista.core.durations import format_duration
from ballista.core.errors import ConfigError
from ballista.core.histogram import HISTOGRAM_LAYOUT, Histogram
from ballista.core.redact import redact_header, redact_target
from ballista.core.snapshot import PERCENTILES

#: Display bins per power of two in the distribution chart (the histogram has 128:
#: too fine to read; 16 still shows every mode).
_BINS_PER_OCTAVE = 16
_SUB_BITS = 7  # the histogram's layout, "log-linear-ns/7": 128 sub-buckets per octave
_EXACT = 2 << _SUB_BITS
#: Outcome classes of the throughput chart, with their colours (as the live page).
_CLASSES = (
    ("2xx", "#2ca02c"),
    ("3xx", "#1f77b4"),
    ("4xx", "#ff7f0e"),
    ("5xx", "#d62728"),
    ("errors", "#7f3fbf"),
)
_PERCENTILE_COLOURS = (
    ("p50", "#1f77b4"),
    ("p90", "#2ca02c"),
    ("p99", "#ff7f0e"),
    ("max", "#d62728"),
)
#: One colour per run in comparisons.
_RUN_COLOURS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)
_KIND_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
#: The report asks for nothing outside itself: the browser is told to refuse any
#: request it would make (as a <meta> in the file; a header where it is served).
REPORT_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
)
#: What a table shows for a figure the summary does not have.
_NONE = "\N{EN DASH}"
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


@dataclass(frozen=True, slots=True)
class ReportRun:
    """One run as a report shows it."""

    label: str
    summary: Mapping[str, Any]
    #: timeline points (the summary's `timeline.points` shape); None: the summary's own
    points: Sequence[Mapping[str, Any]] | None = None
    #: the run was stopped early (a signal, or a bug in Ballista): say so at the top
    interrupted: bool = False
    #: settings to show beside the summary's (the daemon's scenario, the run's flags)
    config: Mapping[str, Any] | None = None
    notes: Sequence[str] = field(default_factory=tuple)

    def timeline(self) -> list[Mapping[str, Any]] | None:
        if self.points is not None:
            return list(self.points)
        timeline = self.summary.get("timeline")
        if not isinstance(timeline, Mapping):
            return None
        points = timeline.get("points")
        return list(points) if isinstance(points, list) else None


def config_facts(config: RunConfig) -> dict[str, str]:
    """What a run was asked to do, as its report's configuration shows it (secrets
    hidden: header values named like secrets, secret-looking query parameters)."""
    load = config.load
    facts: dict[str, str] = {}
    if load.rate is not None:
        facts["rate"] = f"{load.rate:g}/s ({load.arrival})"
    if load.stages:
        facts["stages"] = ", ".join(
            f"{format_duration(st.duration)}:{st.target:g}" for st in load.stages
        )
    if load.duration is not None:
        facts["duration limit"] = format_duration(load.duration)
    if load.requests is not None:
        facts["request limit"] = f"{load.requests:,}"
    if load.max_in_flight is not None:
        facts["max in flight"] = f"{load.max_in_flight:,}"
    if load.adaptive is not None and load.model == "adaptive":
        a = load.adaptive
        facts["adaptive"] = (
            f"p{a.percentile:g} under {format_duration(a.latency_target)}, "
            f"{a.minimum}..{a.maximum} workers"
        )
    facts["connections"] = "auto" if config.connections is None else str(config.connections)
    facts["timeout"] = format_duration(config.timeout)
    facts["interval"] = format_duration(config.interval)
    facts["scenario"] = config.scenario
    for spec in config.requests:
        headers = ", ".join(f"{k}: {redact_header(k, v)}" for k, v in spec.headers)
        body = f", body {len(spec.body):,} B" if spec.body else ""
        weight = f" (weight {spec.weight:g})" if len(config.requests) > 1 else ""
        facts[f"request {spec.name}"] = (
            f"{spec.method} {redact_target(spec.target)}{weight}"
            + (f" [{headers}]" if headers else "")
            + body
        )
    return facts


_INT_KEYS = ("requests", "responses", "errors", "failed", "dropped", "unfinished")
_NUMBER_KEYS = ("rps", "error_rate", "duration_s", "scheduler_lag_max_s")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_figures(doc: Mapping[str, Any], where: str) -> None:
    """The summary's figures a report shows have the types it shows: a ConfigError
    naming the key otherwise (a damaged or hand-edited file is one line, no traceback)."""

    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(f"{where}: {key!r} must be {what}")

    for key in _INT_KEYS:
        if key in doc and not (isinstance(doc[key], int) and not isinstance(doc[key], bool)):
            raise bad(key, "a whole number")
    for key in _NUMBER_KEYS:
        if key in doc and not _is_number(doc[key]):
            raise bad(key, "a number")
    for key in ("latency_s", "service_time_s", "loop_lag_s"):
        value = doc.get(key)
        if value is not None and not (
            isinstance(value, Mapping) and all(_is_number(v) for v in value.values())
        ):
            raise bad(key, "an object of numbers")
    for key in ("status_codes", "errors_by_kind"):
        value = doc.get(key)
        if value is not None and not (
            isinstance(value, Mapping)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value.values())
        ):
            raise bad(key, "an object of whole numbers")
    for key in ("requests_by_name", "flows", "concurrency"):
        value = doc.get(key)
        if value is not None and not (
            isinstance(value, Mapping)
            and (key == "concurrency" or all(isinstance(v, Mapping) for v in value.values()))
        ):
            raise bad(key, "an object" if key == "concurrency" else "an object of objects")
    for name, stats in (doc.get("requests_by_name") or {}).items():
        lat = stats.get("latency_s")
        if lat is not None and not (
            isinstance(lat, Mapping) and all(_is_number(v) for v in lat.values())
        ):
            raise bad(f"requests_by_name.{name}.latency_s", "an object of numbers")
    for name, flow in (doc.get("flows") or {}).items():
        dur = flow.get("duration_s")
        if dur is not None and not (
            isinstance(dur, Mapping) and all(_is_number(v) for v in dur.values())
        ):
            raise bad(f"flows.{name}.duration_s", "an object of numbers")
    for key in ("thresholds", "notes"):
        value = doc.get(key)
        if value is not None and not isinstance(value, list):
            raise bad(key, "a list")
    if not all(isinstance(t, Mapping) for t in doc.get("thresholds") or ()):
        raise bad("thresholds", "a list of objects")


# -- figures ----------------------------------------------------------------


def _histogram(doc: Mapping[str, Any] | None, what: str) -> Histogram | None:
    if not isinstance(doc, Mapping):
        return None
    try:
        return Histogram.from_dict(doc)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{what}: {exc}") from None


def latency_histogram(run: ReportRun) -> Histogram | None:
    """The run's whole latency histogram: the summary's, else the sum of its points'
    (the daemon's store may keep them), else None (an older summary)."""
    histograms = run.summary.get("histograms")
    if isinstance(histograms, Mapping):
        layout = histograms.get("layout")
        if layout != HISTOGRAM_LAYOUT:
            raise ConfigError(
                f"{run.label}: histograms of layout {layout!r}, this Ballista reads "
                f"{HISTOGRAM_LAYOUT!r}"
            )
        found = _histogram(histograms.get("latency"), f"{run.label}: histograms.latency")
        if found is not None:
            return found
    points = run.timeline() or []
    if points and all(isinstance(p.get("latency"), Mapping) for p in points):
        total = Histogram()
        for i, p in enumerate(points):
            h = _histogram(p["latency"], f"{run.label}: timeline point {i}")
            assert h is not None
            total.merge(h)
        return total
    return None


def service_histogram(run: ReportRun) -> Histogram | None:
    """The open model's service-time histogram (from the actual send), if the summary has it."""
    histograms = run.summary.get("histograms")
    if not isinstance(histograms, Mapping) or histograms.get("layout") != HISTOGRAM_LAYOUT:
        return None
    return _histogram(histograms.get("service_time"), f"{run.label}: histograms.service_time")


def _bin_of(index: int) -> tuple[int, int]:
    """Display bin of a bucket of the "log-linear-ns/7" layout: (lowest ns, width ns)."""
    if index < _EXACT:
        # below 256 ns: one bin (nobody's latency lives there)
        return 0, _EXACT
    shift = (index >> _SUB_BITS) - 1
    group = (1 << _SUB_BITS) // _BINS_PER_OCTAVE  # buckets per display bin
    sub = (index & ((1 << _SUB_BITS) - 1)) // group * group
    return (sub + (1 << _SUB_BITS)) << shift, group << shift


def distribution(hist_doc: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """The histogram as a density on a log scale: (each display bin's lowest value in
    ms, the % of requests per sixteenth of a doubling there). A bin's share is divided
    by its width in doublings, since linear sub-buckets make bins early in a doubling
    wider on a log scale than those late in it: without it the chart would saw-tooth."""
    bins: dict[int, int] = {}
    width_of: dict[int, int] = {}
    for index, count in zip(hist_doc["index"], hist_doc["counts"], strict=True):
        low, width = _bin_of(int(index))
        bins[low] = bins.get(low, 0) + int(count)
        width_of[low] = width
    total = sum(bins.values())
    xs: list[float] = []
    ys: list[float] = []
    for low in sorted(bins):
        end = low + width_of[low]
        doublings = math.log2(end / max(low, 1)) * _BINS_PER_OCTAVE
        density = 100.0 * bins[low] / total / doublings if total else 0.0
        # a step chart: the bin's level from its low edge to the next one
        xs.append(max(low, 1) / 1e6)
        ys.append(round(density, 4))
        if end not in bins:
            xs.append(end / 1e6)
            ys.append(0.0)
    return xs, ys


def percentile_curve(hist: Histogram) -> tuple[list[float], list[float], list[float]]:
    """Latency at percentiles from 0 to 100, spaced evenly in 1/(1-q): (x = 1/(1-q),
    q in %, latency in ms). The last point is the max (x = the count)."""
    if not hist.count:
        return [], [], []
    # the summary's own percentiles exactly, so the curve passes through its figures
    wanted = {0.0, 100.0, *(q for _, q in PERCENTILES)}
    step = 1
    while (tail := 10 ** (-step / 20)) * hist.count >= 1:  # 1 - q, twenty per decade
        wanted.add(round(100.0 * (1.0 - tail), 6))
        step += 1
    qs = sorted(wanted)
    values = hist.percentiles(qs)
    xs = [1.0 / (1.0 - q / 100.0) for q in qs[:-1]]
    # the max sits one step to the right of the last percentile before it
    xs.append(max(float(hist.count), xs[-1] * 10 ** (1 / 20)))
    return (
        [round(x, 6) for x in xs],
        [round(q, 6) for q in qs],
        # rounded as the summary rounds its seconds, then to ms: the same numbers
        [round(round(v, 9) * 1e3, 6) for v in values],
    )


def _rate(count: float, span: float) -> float:
    return round(count / span, 3) if span > 0 else 0.0


def _class_of(code: str) -> str:
    return f"{code[:1]}xx" if code[:1] in "2345" and len(code) == 3 else "errors"


def time_series(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The per-point series the charts draw, keyed by what they show."""
    t: list[float] = []
    by_class: dict[str, list[float]] = {name: [] for name, _ in _CLASSES}
    latency: dict[str, list[float | None]] = {name: [] for name, _ in _PERCENTILE_COLOURS}
    kinds: dict[str, list[float]] = {}
    out: dict[str, list[Any]] = {
        "rps": [],
        "failed": [],
        "dropped": [],
        "in_flight": [],
        "limit": [],
        "target_rate": [],
        "connections": [],
        "scheduler_lag": [],
        "loop_lag": [],
    }
    for i, p in enumerate(points):
        span = float(p.get("span") or 0.0)
        t.append(round(float(p["t"]), 3))
        requests = int(p.get("requests", 0))
        codes: Mapping[str, int] = p.get("status_codes") or {}
        sums = dict.fromkeys(by_class, 0)
        for code, n in codes.items():
            name = _class_of(str(code))
            sums[name] = sums.get(name, 0) + int(n)
        sums["errors"] += int(p.get("errors", 0))
        for name, rates in by_class.items():
            rates.append(_rate(sums[name], span))
        lat = p.get("latency_s") or {}
        for name, values in latency.items():
            # an interval without a response has no latency: a gap, not a zero
            value = lat.get(name)
            values.append(round(float(value) * 1e3, 6) if requests and value is not None else None)
        point_kinds: Mapping[str, int] = p.get("errors_by_kind") or {}
        for kind in point_kinds:
            kinds.setdefault(kind, [0.0] * i)
        for kind, rates in kinds.items():
            rates.append(_rate(int(point_kinds.get(kind, 0)), span))
        out["rps"].append(_rate(requests, span))
        out["failed"].append(_rate(int(p.get("failed", 0)), span))
        out["dropped"].append(_rate(int(p.get("dropped", 0)), span))
        out["in_flight"].append(p.get("in_flight"))
        out["limit"].append(p.get("concurrency_limit"))
        out["target_rate"].append(p.get("target_rate"))
        out["connections"].append(p.get("open_connections"))
        for key in ("scheduler_lag", "loop_lag"):
            value = p.get(key)
            out[key].append(round(float(value) * 1e3, 3) if value is not None else None)
    return {"t": t, "by_class": by_class, "latency": latency, "kinds": kinds, **out}


def points_from_store(stored: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The daemon store's points (`t_start`/`t_end` in Unix time, oldest first) as
    timeline points, their time counted from the first one's start. A point's
    histogram (`latency`, or the API's `histogram`) is kept when the store has one."""
    if not stored:
        return []
    start = float(stored[0]["t_start"])
    out = []
    for p in stored:
        t_start, t_end = float(p["t_start"]), float(p["t_end"])
        requests, errors = int(p.get("requests", 0)), int(p.get("errors", 0))
        point: dict[str, Any] = {
            "t": round(t_end - start, 3),
            "span": round(t_end - t_start, 6),
            "requests": requests,
            "responses": int(p.get("responses", requests - errors)),
            "errors": errors,
            "failed": int(p.get("failed", 0)),
            "dropped": int(p.get("dropped", 0)),
            "status_codes": dict(p.get("status_codes") or {}),
            "errors_by_kind": dict(p.get("errors_by_kind") or {}),
            "in_flight": p.get("in_flight"),
            "open_connections": p.get("open_connections"),
            "concurrency_limit": p.get("concurrency_limit"),
            "target_rate": p.get("target_rate"),
            "scheduler_lag": p.get("scheduler_lag"),
            "loop_lag": p.get("loop_lag"),
            "latency_s": dict(p.get("latency_s") or {}),
        }
        hist = p.get("latency", p.get("histogram"))
        if isinstance(hist, Mapping):
            point["latency"] = hist
        out.append(point)
    return out


# -- charts -------------------------------------------------------------------


def _chart(
    chart_id: str,
    title: str,
    x: list[float],
    series: list[dict[str, Any]],
    *,
    y_label: str,
    x_kind: str = "time",
    log_y: bool = False,
) -> dict[str, Any]:
    return {
        "id": chart_id,
        "title": title,
        "x": x,
        "x_kind": x_kind,
        "y_label": y_label,
        "log_y": log_y,
        "series": series,
    }


def _line(label: str, colour: str, values: Sequence[Any], **extra: Any) -> dict[str, Any]:
    return {"label": label, "colour": colour, "values": list(values), **extra}


def _any(values: Iterable[Any]) -> bool:
    return any(v not in (None, 0, 0.0) for v in values)


def single_charts(run: ReportRun, series: dict[str, Any]) -> list[dict[str, Any]]:
    """The charts over time of one run."""
    t = series["t"]
    charts = [
        _chart(
            "chart-throughput",
            "throughput by outcome (per second)",
            t,
            [
                _line(name, colour, series["by_class"][name])
                for name, colour in _CLASSES
                if name == "2xx" or _any(series["by_class"][name])
            ],
            y_label="per second",
        ),
        _chart(
            "chart-latency",
            "latency of each interval: p50, p90, p99, max (ms, log scale)",
            t,
            [_line(name, colour, series["latency"][name]) for name, colour in _PERCENTILE_COLOURS],
            y_label="ms",
            log_y=True,
        ),
    ]
    load = [_line("in flight", "#1f77b4", series["in_flight"])]
    if _any(series["limit"]):
        load.append(_line("concurrency limit", "#d62728", series["limit"], dash=True))
    charts.append(
        _chart("chart-in-flight", "in flight and concurrency limit", t, load, y_label="requests")
    )
    if _any(series["target_rate"]):
        charts.append(
            _chart(
                "chart-rate",
                "target and achieved rate (requests/s)",
                t,
                [
                    _line("target", "#d62728", series["target_rate"], dash=True),
                    _line("achieved", "#1f77b4", series["rps"]),
                    *(
                        [_line("dropped", "#7f7f7f", series["dropped"])]
                        if _any(series["dropped"])
                        else []
                    ),
                ],
                y_label="per second",
            )
        )
    charts.append(
        _chart(
            "chart-connections",
            "open connections",
            t,
            [_line("open", "#8c564b", series["connections"])],
            y_label="connections",
        )
    )
    kinds = series["kinds"]
    charts.append(
        _chart(
            "chart-errors",
            "errors by kind (per second)" + ("" if kinds else ": none in this run"),
            t,
            [
                _line(kind, _KIND_COLOURS[i % len(_KIND_COLOURS)], values)
                for i, (kind, values) in enumerate(sorted(kinds.items()))
            ]
            or [_line("errors", "#d62728", series["by_class"]["errors"])],
            y_label="per second",
        )
    )
    if _any(series["scheduler_lag"]) or _any(series["loop_lag"]):
        lags = [_line("event loop lag", "#9467bd", series["loop_lag"])]
        if _any(series["scheduler_lag"]):
            lags.insert(0, _line("scheduler lag", "#ff7f0e", series["scheduler_lag"]))
        charts.append(
            _chart(
                "chart-lag",
                "Ballista's own delay: scheduler and event-loop lag (ms)",
                t,
                lags,
                y_label="ms",
            )
        )
    return charts


def _aligned(
    per_run: Sequence[tuple[list[float], list[Any]]],
) -> tuple[list[float], list[list[Any]]]:
    """Series of several runs on one x axis (elapsed time): the union of their
    times, each run's value where it has one and a gap elsewhere."""
    xs = sorted({x for times, _ in per_run for x in times})
    out = []
    for times, values in per_run:
        at = dict(zip(times, values, strict=True))
        out.append([at.get(x) for x in xs])
    return xs, out


def compare_charts(
    runs: Sequence[ReportRun], series: Sequence[dict[str, Any] | None]
) -> list[dict[str, Any]]:
    """Charts over time with one line per run (aligned by elapsed time)."""
    present = [(i, s) for i, s in enumerate(series) if s is not None]
    if not present:
        return []
    charts = []
    picks: list[tuple[str, str, Callable[[dict[str, Any]], list[Any]], str, bool]] = [
        ("chart-throughput", "throughput (requests/s)", lambda s: s["rps"], "per second", False),
        ("chart-p50", "latency p50 (ms, log scale)", lambda s: s["latency"]["p50"], "ms", True),
        ("chart-p99", "latency p99 (ms, log scale)", lambda s: s["latency"]["p99"], "ms", True),
        ("chart-failed", "failed (per second)", lambda s: s["failed"], "per second", False),
        ("chart-in-flight", "in flight", lambda s: s["in_flight"], "requests", False),
    ]
    for chart_id, title, pick, y_label, log_y in picks:
        x, columns = _aligned([(s["t"], pick(s)) for _, s in present])
        charts.append(
            _chart(
                chart_id,
                title,
                x,
                [
                    # runs' points fall at different times: join each run's own points
                    _line(runs[i].label, _RUN_COLOURS[i % len(_RUN_COLOURS)], column, span=True)
                    for (i, _), column in zip(present, columns, strict=True)
                ],
                y_label=y_label,
                log_y=log_y,
            )
        )
    return charts


def distribution_charts(
    curves: Sequence[tuple[str, str, Histogram]], *, fill: bool
) -> list[dict[str, Any]]:
    """The latency histogram and the percentile curve: one line per (label, colour,
    histogram) given."""
    have = [(label, colour, h) for label, colour, h in curves if h.count]
    if not have:
        return []
    x, columns = _aligned([distribution(h.to_dict()) for _, _, h in have])
    hist_chart = _chart(
        "chart-histogram",
        "latency distribution: % of requests per sixteenth of a doubling (ms, log scale)",
        x,
        [
            _line(label, colour, column, stepped=True, fill=fill and n == 0, span=True)
            for n, ((label, colour, _), column) in enumerate(zip(have, columns, strict=True))
        ],
        y_label="% of requests",
        x_kind="ms",
    )
    points = [percentile_curve(h) for _, _, h in have]
    x2, columns2 = _aligned([(c[0], c[2]) for c in points])
    pct_chart = _chart(
        "chart-percentiles",
        "latency by percentile (ms, log scales)",
        x2,
        [
            _line(label, colour, column, span=True)
            for (label, colour, _), column in zip(have, columns2, strict=True)
        ],
        y_label="ms",
        x_kind="percentile",
        log_y=True,
    )
    return [hist_chart, pct_chart]


# -- HTML ---------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _count(n: Any) -> str:
    return f"{int(n):,}" if isinstance(n, int | float) else _NONE


def _ms(seconds: Any) -> str:
    return format_duration(float(seconds)) if isinstance(seconds, int | float) else _NONE


def _cell(text: str, value: Any = None, *, cls: str = "", cell_id: str = "") -> str:
    attrs = ""
    if cell_id:
        attrs += f' id="{_e(cell_id)}"'
    if value is not None:
        attrs += f' data-value="{_e(json.dumps(value))}"'
    if cls:
        attrs += f' class="{_e(cls)}"'
    return f"<td{attrs}>{_e(text)}</td>"


def _table(caption: str, head: Sequence[str], rows: Sequence[str], table_id: str = "") -> str:
    attrs = f' id="{_e(table_id)}"' if table_id else ""
    heads = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(rows) or f'<tr><td colspan="{len(head)}" class="muted">none</td></tr>'
    return (
        f"<table{attrs}><caption>{_e(caption)}</caption><thead><tr>{heads}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _share(n: int, total: int) -> str:
    return f"{100.0 * n / total:.2f}%" if total else _NONE


_LATENCY_KEYS = ("p50", "p90", "p95", "p99", "p999", "max")


def _latency_cells(lat: Mapping[str, Any], prefix: str = "") -> str:
    return "".join(
        _cell(_ms(lat.get(k)), lat.get(k), cell_id=f"{prefix}{k}" if prefix else "")
        for k in _LATENCY_KEYS
    )


def _header(run: ReportRun, n: int) -> str:
    s = run.summary
    p = f"run{n}-"
    facts = [
        ("target", redact_target(str(s.get("target", _NONE)))),
        ("model", s.get("model", _NONE)),
        ("protocol", s.get("protocol", _NONE)),
        ("started", s.get("started_at", _NONE)),
        ("duration", _ms(s.get("duration_s"))),
        ("Ballista", s.get("version", _NONE)),
    ]
    segment = s.get("segment")
    if isinstance(segment, Mapping):
        facts.append(("segment", f"{segment.get('index')}/{segment.get('count')}"))
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    conc = s.get("concurrency") or {}
    config: list[tuple[str, Any]] = [
        ("concurrency", conc.get("configured")),
        ("peak in flight", conc.get("max_in_flight")),
        ("final limit", conc.get("final_limit")),
        ("connections opened", s.get("connections_opened")),
    ]
    if run.config:
        config.extend(run.config.items())
    config_dl = "".join(
        f"<dt>{_e(k)}</dt><dd>{_e(v if isinstance(v, str) else json.dumps(v))}</dd>"
        for k, v in config
        if v is not None
    )
    lat = s.get("latency_s") or {}
    tiles = [
        ("requests", _count(s.get("requests")), s.get("requests"), "requests"),
        ("requests/s", f"{float(s.get('rps', 0.0)):,.1f}", s.get("rps"), "rps"),
        ("failed", _count(s.get("failed")), s.get("failed"), "failed"),
        (
            "error rate",
            f"{100.0 * float(s.get('error_rate', 0.0)):.2f}%",
            s.get("error_rate"),
            "error-rate",
        ),
        ("p50", _ms(lat.get("p50")), lat.get("p50"), "p50"),
        ("p99", _ms(lat.get("p99")), lat.get("p99"), "p99"),
        ("max", _ms(lat.get("max")), lat.get("max"), "max"),
    ]
    tile_html = "".join(
        f'<div class="tile"><h3>{_e(name)}</h3>'
        f'<output id="{p}{key}" data-value="{_e(json.dumps(value))}">{_e(text)}</output></div>'
        for name, text, value, key in tiles
    )
    return (
        f'<dl class="facts">{dl}</dl>'
        f'<div class="tiles">{tile_html}</div>'
        f'<details class="config" open><summary>configuration</summary>'
        f'<dl class="facts">{config_dl}</dl></details>'
    )


def _verdict(run: ReportRun, n: int) -> str:
    thresholds = run.summary.get("thresholds") or []
    if not thresholds:
        return f'<p class="verdict none" id="run{n}-verdict">no thresholds set</p>'
    ok = all(t.get("ok") for t in thresholds)
    rows = "".join(
        "<tr>"
        + _cell(
            "ok" if t.get("ok") else "FAIL", bool(t.get("ok")), cls="ok" if t.get("ok") else "bad"
        )
        + _cell(str(t.get("expr", "")))
        + _cell(str(t.get("display", t.get("value"))), t.get("value"))
        + "</tr>"
        for t in thresholds
    )
    word = "PASSED" if ok else "FAILED"
    return (
        f'<div class="verdict {"ok" if ok else "bad"}" id="run{n}-verdict">'
        f"<p><strong>{word}</strong>: {sum(1 for t in thresholds if t.get('ok'))} of "
        f"{len(thresholds)} thresholds met</p>"
        + _table("thresholds", ("verdict", "threshold", "value"), [rows])
        + "</div>"
    )


def _tables(run: ReportRun, n: int) -> str:
    s = run.summary
    requests = int(s.get("requests", 0))
    codes: Mapping[str, int] = s.get("status_codes") or {}
    status_rows = [
        f'<tr data-code="{_e(code)}">'
        + _cell(code)
        + _cell(_count(v), v)
        + _cell(_share(v, requests))
        + "</tr>"
        for code, v in sorted(codes.items())
    ]
    kinds: Mapping[str, int] = s.get("errors_by_kind") or {}
    kind_rows = [
        f'<tr data-kind="{_e(kind)}">'
        + _cell(kind)
        + _cell(_count(v), v)
        + _cell(_share(v, requests))
        + "</tr>"
        for kind, v in sorted(kinds.items(), key=lambda kv: -kv[1])
        if v
    ]
    names: Mapping[str, Mapping[str, Any]] = s.get("requests_by_name") or {}
    name_rows = [
        f'<tr data-name="{_e(name)}">'
        + _cell(name)
        + _cell(str(r.get("method", "")))
        + _cell(_count(r.get("requests")), r.get("requests"))
        + _cell(_count(r.get("failed")), r.get("failed"))
        + _latency_cells(r.get("latency_s") or {})
        + "</tr>"
        for name, r in names.items()
    ]
    parts = [
        '<div class="tables">',
        _table("status codes", ("status", "count", "share"), status_rows, f"run{n}-status"),
        _table("error kinds", ("kind", "count", "share"), kind_rows, f"run{n}-errors"),
        "</div>",
        _table(
            "latency, all requests",
            ("", "requests", *_LATENCY_KEYS),
            [
                "<tr>"
                + _cell("latency")
                + _cell(_count(s.get("requests")), s.get("requests"))
                + _latency_cells(s.get("latency_s") or {}, f"run{n}-lat-")
                + "</tr>"
            ]
            + (
                [
                    "<tr>"
                    + _cell("service time")
                    + _cell(_count(s.get("requests")), s.get("requests"))
                    + _latency_cells(s["service_time_s"])
                    + "</tr>"
                ]
                if isinstance(s.get("service_time_s"), Mapping)
                else []
            ),
            f"run{n}-latency",
        ),
        _table(
            "by request name",
            ("name", "method", "requests", "failed", *_LATENCY_KEYS),
            name_rows,
            f"run{n}-names",
        ),
    ]
    flows = s.get("flows")
    if isinstance(flows, Mapping) and flows:
        flow_rows = [
            f'<tr data-flow="{_e(name)}">'
            + _cell(name)
            + _cell(_count(f.get("iterations")), f.get("iterations"))
            + _cell(_count(f.get("completed")), f.get("completed"))
            + _cell(_count(f.get("failed")), f.get("failed"))
            + _cell(_count(f.get("interrupted", 0)), f.get("interrupted", 0))
            + _latency_cells(f.get("duration_s") or {})
            + _cell(
                ", ".join(f"{k}: {v:,}" for k, v in (f.get("failures_by_reason") or {}).items())
                or _NONE
            )
            + "</tr>"
            for name, f in flows.items()
            if isinstance(f, Mapping)
        ]
        parts.append(
            _table(
                "flows (duration of an iteration)",
                (
                    "flow",
                    "iterations",
                    "completed",
                    "failed",
                    "interrupted",
                    *_LATENCY_KEYS,
                    "failures",
                ),
                flow_rows,
                f"run{n}-flows",
            )
        )
    return "".join(parts)


def run_notes(run: ReportRun, *, has_timeline: bool, has_histogram: bool) -> list[str]:
    """What a reader must know before trusting the figures."""
    s = run.summary
    notes: list[str] = []
    if run.interrupted:
        notes.append("interrupted: the run ended early; the figures cover what was done until then")
    notes.extend(run.notes)
    if s.get("dropped"):
        notes.append(
            f"{int(s['dropped']):,} requests were dropped: they could not start within the "
            "timeout of their schedule (the generator or --max-in-flight was the limit)"
        )
    if s.get("unfinished"):
        notes.append(f"{int(s['unfinished']):,} requests were still in flight when the run ended")
    lag = s.get("scheduler_lag_max_s")
    if isinstance(lag, int | float) and lag > 0:
        notes.append(f"open model: the largest scheduler lag was {format_duration(lag)}")
    loop = s.get("loop_lag_s")
    if isinstance(loop, Mapping) and loop.get("max"):
        notes.append(
            f"Ballista's event loop lag: p95 {format_duration(float(loop.get('p95', 0.0)))}, "
            f"max {format_duration(float(loop['max']))} (included in every latency)"
        )
    notes.extend(str(x) for x in s.get("notes") or ())
    if not has_timeline:
        notes.append(
            "the run ended before its first interval: no charts over time"
            if isinstance(s.get("timeline"), Mapping) or run.points is not None
            else "this summary has no timeline (written by an older Ballista): no charts over time"
        )
    if not has_histogram:
        notes.append(
            "this summary has no latency histogram (written by an older Ballista): "
            "no distribution charts"
        )
    return notes


def _notes_html(notes: Sequence[str], n: int) -> str:
    if not notes:
        return ""
    items = "".join(
        f'<li class="{"bad" if note.startswith("interrupted") else ""}">{_e(note)}</li>'
        for note in notes
    )
    return f'<section class="notes" id="run{n}-notes"><h3>notes</h3><ul>{items}</ul></section>'


def _delta_rows(runs: Sequence[ReportRun]) -> list[str]:
    base = runs[0].summary

    def figures(s: Mapping[str, Any]) -> list[tuple[str, float | None, str]]:
        lat = s.get("latency_s") or {}
        return [
            ("throughput (requests/s)", s.get("rps"), "rate"),
            ("p50", lat.get("p50"), "latency"),
            ("p90", lat.get("p90"), "latency"),
            ("p99", lat.get("p99"), "latency"),
            ("max", lat.get("max"), "latency"),
            ("error rate", s.get("error_rate"), "share"),
        ]

    def show(value: float | None, kind: str) -> str:
        if value is None:
            return _NONE
        if kind == "latency":
            return _ms(value)
        if kind == "share":
            return f"{100 * value:.2f}%"
        return f"{value:,.1f}"

    def delta(a: float | None, b: float | None, kind: str) -> tuple[str, str]:
        if a is None or b is None:
            return _NONE, _NONE
        d = b - a
        sign = "+" if d > 0 else ("\N{MINUS SIGN}" if d < 0 else "±")
        if kind == "latency":
            absolute = f"{sign}{format_duration(abs(d))}"
        elif kind == "share":
            absolute = f"{sign}{100 * abs(d):.2f} pp"
        else:
            absolute = f"{sign}{abs(d):,.1f}"
        percent = f"{sign}{100 * abs(d) / a:.1f}%" if a else _NONE
        return absolute, percent

    rows = []
    base_figures = figures(base)
    for k, (name, value, kind) in enumerate(base_figures):
        cells = [_cell(name), _cell(show(value, kind), value)]
        for run in runs[1:]:
            other = figures(run.summary)[k][1]
            absolute, percent = delta(value, other, kind)
            cells += [_cell(show(other, kind), other), _cell(absolute), _cell(percent)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return rows


def _deltas(runs: Sequence[ReportRun]) -> str:
    head = [runs[0].label + " (baseline)"]
    for run in runs[1:]:
        head += [run.label, "Δ", "Δ %"]
    return _table("deltas against the first run", ("", *head), _delta_rows(runs), "deltas")


def _static(name: str) -> str:
    return (resources.files("ballista.observe") / "static" / name).read_text(encoding="utf-8")


def _script_json(doc: Any) -> str:
    """JSON safe inside a <script> element: nothing in it can close the element."""
    return (
        json.dumps(doc, separators=(",", ":"), allow_nan=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _inline_script(text: str) -> str:
    # A script element ends at the first "</script": the shipped scripts never hold
    # one, but a change to them must not silently break the page.
    if re.search(r"</script", text, re.I):
        raise ValueError("an inlined script contains </script")
    return text


def render_report(runs: Sequence[ReportRun], *, title: str | None = None) -> str:
    """The report of one run, or the comparison of several, as one HTML document."""
    if not runs:
        raise ValueError("a report needs at least one run")
    hists = [latency_histogram(run) for run in runs]
    timelines = [run.timeline() for run in runs]
    series = [time_series(points) if points else None for points in timelines]
    single = len(runs) == 1
    if single:
        charts = single_charts(runs[0], series[0]) if series[0] is not None else []
    else:
        charts = compare_charts(runs, series)
    if single:
        curves = [("latency", _RUN_COLOURS[0], hists[0])] if hists[0] is not None else []
        service = service_histogram(runs[0])
        if curves and service is not None:
            # the open model: from the actual send, beside latency from the schedule
            curves.append(("service time", "#ff7f0e", service))
        charts += distribution_charts(curves, fill=True)
    else:
        charts += distribution_charts(
            [
                (run.label, _RUN_COLOURS[n % len(_RUN_COLOURS)], h)
                for n, (run, h) in enumerate(zip(runs, hists, strict=True))
                if h is not None
            ],
            fill=False,
        )
    body: list[str] = []
    for n, run in enumerate(runs):
        notes = run_notes(
            run,
            has_timeline=bool(timelines[n]),
            has_histogram=hists[n] is not None,
        )
        colour = _RUN_COLOURS[n % len(_RUN_COLOURS)]
        heading = (
            f'<h2><span class="swatch" style="background:{colour}"></span>{_e(run.label)}</h2>'
            if not single
            else ""
        )
        body.append(
            f'<section class="run" id="run{n}">{heading}'
            + _verdict(run, n)
            + _header(run, n)
            + _notes_html(notes, n)
            + "</section>"
        )
    top = "".join(body)
    deltas = "" if single else f'<section class="deltas">{_deltas(runs)}</section>'
    details = "".join(
        f'<section class="run-tables" id="run{n}-tables">'
        f"<h2>{_e('tables' if single else 'tables: ' + run.label)}</h2>{_tables(run, n)}</section>"
        for n, run in enumerate(runs)
    )
    over_time = [c for c in charts if c["x_kind"] == "time"]
    dist = [c for c in charts if c["x_kind"] != "time"]

    def figures(group: list[dict[str, Any]]) -> str:
        return "".join(
            f"<figure><figcaption>{_e(c['title'])}</figcaption>"
            f'<div class="chart" id="{_e(c["id"])}"></div></figure>'
            for c in group
        )

    sections = ""
    if over_time:
        sections += f'<section class="charts"><h2>over time</h2>{figures(over_time)}</section>'
    if dist:
        sections += f'<section class="charts"><h2>distribution</h2>{figures(dist)}</section>'
    if title is None:
        title = (
            f"Ballista report: {runs[0].label}"
            if single
            else "Ballista comparison: " + " vs ".join(r.label for r in runs)
        )
    data = {
        "charts": charts,
        "runs": [
            {"label": r.label, "colour": _RUN_COLOURS[i % len(_RUN_COLOURS)]}
            for i, r in enumerate(runs)
        ],
    }
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = {
        "CSP": _e(REPORT_CSP),
        "TITLE": _e(title),
        "UPLOT_CSS": _static("uPlot.min.css"),
        "STYLE": _static("report.css"),
        "UPLOT_JS": _inline_script(_static("uPlot.iife.min.js")),
        "SCRIPT": _inline_script(_static("report.js")),
        "DATA": _script_json(data),
        "HEADLINE": _e(title),
        "RUNS": top,
        "DELTAS": deltas,
        "CHARTS": sections,
        "TABLES": details,
        "FOOTER": _e(f"written by Ballista {__version__} on {generated}"),
    }
    # one pass: text put in is never searched for placeholders again
    return _PLACEHOLDER.sub(lambda m: parts[m.group(1)], _static("report.html"))


def default_report_path(first_input: str) -> str:
    """`RUN.json` -> `RUN.html`, beside it."""
    path = Path(first_input)
    return str(
        path.with_suffix(".html") if path.suffix.lower() == ".json" else Path(f"{path}.html")
    )


def write_report(text: str, path: str) -> None:
    """Write the report whole or not at all: a reader never opens half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
