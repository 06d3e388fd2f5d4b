"""Thresholds: pass/fail rules on a run's figures (`p99<250ms`, `checkout.error_rate<1%`,
`flow:purchase.p95<2s`).

Sans-IO: parsed once, then fed Snapshots. Nothing here reads a clock.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ballista.core.durations import format_duration, parse_duration, parse_share
from ballista.core.errors import ConfigError
from ballista.core.snapshot import LatencySummary, Snapshot

Kind = Literal["duration", "fraction", "rate", "count"]

#: metric -> what its value is
METRICS: dict[str, Kind] = {
    "p50": "duration",
    "p90": "duration",
    "p95": "duration",
    "p99": "duration",
    "p999": "duration",
    "max": "duration",
    "mean": "duration",
    "error_rate": "fraction",
    "rps": "rate",
    "dropped": "count",
}
#: what a journey's flow can be judged on (`flow:NAME.metric`): its iterations' durations
#: and the share of its ended iterations that failed
FLOW_METRICS: dict[str, Kind] = {
    **{k: v for k, v in METRICS.items() if v == "duration"},
    "failure_rate": "fraction",
}
FLOW_PREFIX = "flow:"

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

_EXPR = re.compile(
    r"^\s*(?:(?P<name>[^<>=\s]+)\.)?(?P<metric>[A-Za-z0-9_]+)\s*"
    r"(?P<op><=|>=|<|>)\s*(?P<value>\S+)\s*$"
)
_NUMBER = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")

#: --abort-on-fail judges a threshold that could still recover (a percentile, the
#: mean, the error rate) early only once it has failed at every snapshot for this
#: long, over at least SETTLE_REQUESTS requests.
SETTLE_SECONDS = 10.0
SETTLE_REQUESTS = 1000


def _number(text: str) -> float | None:
    if not _NUMBER.match(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Threshold:
    """One parsed rule: `request.metric op bound` (request None: the whole run), or
    `flow:name.metric op bound` (`flow` True, `request` the flow's name)."""

    expr: str
    request: str | None
    metric: str
    op: str
    bound: float
    flow: bool = False

    @property
    def kind(self) -> Kind:
        return FLOW_METRICS[self.metric] if self.flow else METRICS[self.metric]

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.bound)


def parse_threshold(
    expr: str,
    request_names: Sequence[str] | None = (),
    *,
    what: str = "--threshold",
    flow_names: Sequence[str] = (),
) -> Threshold:
    """`[name.]metric op value` or `flow:name.metric op value` -> Threshold. ConfigError
    names `what` and the expression. `request_names` None: any name may come (a Python
    journey names its steps as it runs)."""

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{what}: {expr!r}: {why}")

    m = _EXPR.match(expr)
    if m is None:
        raise bad("expected [request.]metric<value, e.g. p99<250ms or error_rate<1%")
    name, metric, op, text = m.group("name", "metric", "op", "value")
    flow = name is not None and name.startswith(FLOW_PREFIX)
    if flow:
        assert name is not None
        name = name.removeprefix(FLOW_PREFIX)
        kind = FLOW_METRICS.get(metric.lower())
        if kind is None:
            raise bad(f"unknown flow metric {metric!r} (use one of {', '.join(FLOW_METRICS)})")
        if name not in flow_names:
            known = ", ".join(flow_names) or "none: flows come from journeys (-f)"
            raise bad(f"no flow named {name!r} (flows: {known})")
    else:
        kind = METRICS.get(metric.lower())
        if kind is None:
            raise bad(f"unknown metric {metric!r} (use one of {', '.join(METRICS)})")
    metric = metric.lower()
    if name is not None and not flow:
        if metric == "dropped":
            raise bad("dropped counts the whole run: drop the request name")
        if request_names is not None and name not in request_names:
            known = ", ".join(request_names) or "none"
            raise bad(f"no request named {name!r} (requests: {known})")
    if kind == "duration":
        if _number(text) is not None and float(text) != 0:
            raise bad(f"{text!r} needs a unit (e.g. {text}ms or {text}s)")
        try:
            bound = parse_duration(text, what="value")
        except ConfigError:
            raise bad(f"{text!r} is not a duration (e.g. 250ms, 1.5s, 800us)") from None
    elif kind == "fraction":
        try:
            bound = parse_share(text, what="")
        except ConfigError:
            raise bad(f"{text!r} is not a rate (e.g. 1% or 0.01)") from None
        if bound > 1:
            raise bad(f"{text!r} is more than 100%")
    elif kind == "rate":
        value = _number(text.removesuffix("/s"))
        if value is None:
            raise bad(f"{text!r} is not a number of requests per second")
        bound = value
    else:
        value = _number(text)
        if value is None or value != int(value):
            raise bad(f"{text!r} is not a whole number")
        bound = value
    return Threshold(expr=expr.strip(), request=name, metric=metric, op=op, bound=bound, flow=flow)


def _display(kind: Kind, value: float | None) -> str:
    if value is None:
        return "no data"
    if kind == "duration":
        return format_duration(value)
    if kind == "fraction":
        return f"{value * 100:.2f}%"
    if kind == "rate":
        return f"{value:,.1f}/s"
    return f"{value:,.0f}"


class ThresholdSet:
    """The run's thresholds (parsed with its configuration): `evaluate` at the end,
    `known_failed` on every snapshot for --abort-on-fail."""

    def __init__(self, thresholds: Sequence[Threshold]) -> None:
        self.thresholds: tuple[Threshold, ...] = tuple(thresholds)
        # For the settle rule: when each threshold began failing without a break.
        self._failing_since: list[float | None] = [None] * len(self.thresholds)

    def __len__(self) -> int:
        return len(self.thresholds)

    def value(self, t: Threshold, snap: Snapshot) -> tuple[float | None, int]:
        """The figure a threshold judges (None when there is no data), and the
        number of requests behind it."""
        if t.metric == "dropped":
            return float(snap.dropped), snap.requests
        latency: LatencySummary
        if t.flow:
            flow = next((f for f in snap.flows if f.name == t.request), None)
            ended = 0 if flow is None else flow.completed + flow.failed
            if flow is None or ended == 0:
                return None, 0
            if t.metric == "failure_rate":
                return flow.failure_rate, ended
            return float(getattr(flow.duration, t.metric)), ended
        if t.request is None:
            requests, failed, latency = snap.requests, snap.failed, snap.latency
        else:
            stats = next((s for s in snap.by_request if s.name == t.request), None)
            if stats is None:
                return None, 0
            requests, failed, latency = stats.requests, stats.failed, stats.latency
        if t.metric == "rps":
            return (requests / snap.elapsed if snap.elapsed > 0 else 0.0), requests
        if requests == 0:
            return None, 0
        if t.metric == "error_rate":
            return failed / requests, requests
        if latency.count == 0:
            return None, 0
        return float(getattr(latency, t.metric)), requests

    def evaluate(self, snap: Snapshot) -> list[dict[str, Any]]:
        """Each threshold's verdict: {"expr", "value", "ok", "display"}.

        A latency or error-rate threshold without any request to judge fails
        (value None, display "no data"): a run that measured nothing passes nothing.
        """
        out: list[dict[str, Any]] = []
        for t in self.thresholds:
            value, _ = self.value(t, snap)
            ok = value is not None and t.holds(value)
            out.append(
                {"expr": t.expr, "value": value, "ok": ok, "display": _display(t.kind, value)}
            )
        return out

    def known_failed(self, snap: Snapshot) -> bool:
        """True when a threshold has failed in a way the rest of the run cannot undo.

        Certain: `max` and `dropped` only grow, so `max<X` / `dropped<N` (and `<=`)
        fail for good once crossed. Percentiles, the mean and the error rate could
        still recover: they count as failed once they have failed at every snapshot
        for SETTLE_SECONDS over at least SETTLE_REQUESTS requests. `rps` and lower
        bounds on `max`/`dropped` are judged at the end only.
        """
        failed = False
        for i, t in enumerate(self.thresholds):
            value, requests = self.value(t, snap)
            if value is None or t.holds(value):
                self._failing_since[i] = None
                continue
            if t.metric in ("max", "dropped"):
                if t.op in ("<", "<="):
                    failed = True
                continue
            if t.metric == "rps":
                continue
            since = self._failing_since[i]
            if since is None:
                self._failing_since[i] = since = snap.elapsed
            if snap.elapsed - since >= SETTLE_SECONDS and requests >= SETTLE_REQUESTS:
                failed = True
        return failed
