"""One road from what a user gave to a validated RunConfig.

Every front end (flags, a TOML scenario file, the daemon's JSON) turns its
input into a `Layer`: typed values under canonical keys (`rate`,
`adaptive.backoff`, `timeout`), each carrying the name the user knows it by
(`-r/--rate`, `shop.toml: load.rate`, `load.rate`). `build_config` merges a
scenario's layer with the layer of overrides (the command line over the file)
and checks them together, so every error names the key in the user's own terms.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from ballista.core.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_INTERVAL,
    DEFAULT_TIMEOUT,
    MIN_INTERVAL,
    AdaptiveSpec,
    LoadSpec,
    Model,
    Origin,
    Protocol,
    RequestSpec,
    RunConfig,
    Stage,
    check_bounds,
    check_request,
)
from ballista.core.errors import ConfigError
from ballista.core.journey import Journeys
from ballista.core.segment import Segment, split_config
from ballista.core.thresholds import Threshold, parse_threshold

MODELS: tuple[Model, ...] = ("closed", "open", "adaptive", "sequential")

#: Keys that belong to one load model; they go when an override picks another model.
_MODEL_KEYS = ("concurrency", "rate", "max_in_flight", "stages", "arrival")
_OPEN_ONLY = ("rate", "max_in_flight", "arrival")
ADAPTIVE_KEYS = (
    "adaptive.latency_target",
    "adaptive.percentile",
    "adaptive.initial",
    "adaptive.min",
    "adaptive.max",
    "adaptive.increase",
    "adaptive.backoff",
    "adaptive.window_min",
    "adaptive.window_max",
    "adaptive.window_samples",
    "adaptive.congestion_statuses",
    "adaptive.congestion_tolerance",
    "adaptive.slow_start",
)


@dataclass(frozen=True, slots=True)
class Given:
    """A value and the name the user gave it by."""

    value: Any
    where: str
    #: the scenario key it came from (`load.rate`), for the daemon's API
    key: str | None = None


class Layer:
    """Typed values under canonical keys, each with the name the user knows it by."""

    def __init__(self) -> None:
        self._values: dict[str, Given] = {}

    def set(self, key: str, value: Any, where: str, *, path: str | None = None) -> None:
        """`path`: the scenario key the value came from, when it came from a scenario."""
        self._values[key] = Given(value, where, path)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def get(self, key: str, default: Any = None) -> Any:
        given = self._values.get(key)
        return default if given is None else given.value

    def where(self, key: str) -> str:
        return self._values[key].where

    def error(self, key: str, why: str) -> ConfigError:
        given = self._values[key]
        return ConfigError(f"{given.where}: {why}", key=given.key)

    def merged_under(self, overrides: Layer) -> Layer:
        """This layer with `overrides` on top. An override that picks another load
        model takes that model's place whole: this layer's keys of the old model
        go (its duration and request count stay)."""
        out = Layer()
        mine = self.get("model")
        theirs = overrides.get("model")
        drop_model_keys = theirs is not None and mine is not None and theirs != mine
        for key, given in self._values.items():
            if drop_model_keys and (key in _MODEL_KEYS or key.startswith("adaptive.")):
                continue
            out._values[key] = given
        out._values.update(overrides._values)
        return out


@dataclass(frozen=True, slots=True)
class Scenario:
    """What to send, before the load is decided: from a scenario file, the API, or a URL."""

    origin: Origin
    requests: tuple[RequestSpec, ...]
    name: str = "default"
    #: [defaults] and [load] of a file (empty for a bare URL)
    settings: Layer = field(default_factory=Layer)
    #: (expression, where it was written)
    thresholds: tuple[tuple[str, str], ...] = ()
    #: user journeys (Python `-f journeys.py`, TOML `[[flows]]`): virtual users run
    #: these instead of `requests` (TOML flows give one spec per step name there)
    journeys: Journeys | None = None


def build_config(
    scenario: Scenario,
    overrides: Layer | None = None,
    *,
    thresholds: Sequence[tuple[str, str]] = (),
    unbounded: bool = False,
    override: str = "",
) -> RunConfig:
    """The scenario's settings under `overrides`, checked together -> RunConfig.

    `thresholds` are added to the scenario's own. ConfigError names the key as
    the user wrote it. Sizes are held to `config.check_bounds`; `unbounded` lifts
    its soft bounds, and `override` tells the user how (e.g. "add --no-limits").
    """
    values = scenario.settings.merged_under(overrides or Layer())
    load = _load(values)

    def bound_error(key: str, why: str) -> ConfigError:
        return values.error(key, why) if key in values else ConfigError(f"{key}: {why}")

    interval = values.get("interval", DEFAULT_INTERVAL)
    if interval < MIN_INTERVAL:
        raise bound_error("interval", f"must be at least {MIN_INTERVAL * 1e3:.0f}ms")
    protocol = cast(Protocol, values.get("protocol", "auto"))
    connections: int | None = values.get("connections")
    if load.model == "sequential" and connections not in (None, 1):
        raise values.error("connections", "the sequential model uses one connection")
    for spec in scenario.requests:
        check_request(spec, http2=protocol == "http2")
    journeys = scenario.journeys
    names: list[str] | None = [r.name for r in scenario.requests]
    flow_names: list[str] = []
    if journeys is not None:
        # Steps of Python journeys are named as they run: any name may come.
        names = list(journeys.step_names) or None
        flow_names = [f.name for f in journeys.flows]
        if journeys.setup is not None:
            flow_names.append("setup")
    parsed: list[Threshold] = []
    for expr, where in (*scenario.thresholds, *thresholds):
        parsed.append(parse_threshold(expr, names, what=where, flow_names=flow_names))
    config = RunConfig(
        origin=scenario.origin,
        requests=scenario.requests,
        load=load,
        protocol=protocol,
        connections=connections,
        timeout=values.get("timeout", DEFAULT_TIMEOUT),
        insecure=bool(values.get("insecure", False)),
        interval=interval,
        scenario=values.get("name") or scenario.name,
        thresholds=tuple(parsed),
        ca_file=values.get("ca_file"),
        start_at=values.get("start_at"),
        journeys=journeys,
    )
    segment: Segment | None = values.get("segment")
    if segment is not None:
        config = split_config(config, segment, error=bound_error)
    # A segment is held to the bounds of one process on its share of the test.
    check_bounds(
        config.load,
        config.connections,
        error=bound_error,
        unbounded=unbounded,
        override=override,
        segments=1 if segment is None else segment.count,
    )
    return config


def _load(v: Layer) -> LoadSpec:
    model: Model = v.get("model") or "closed"
    if model == "open" and "rate" not in v and "stages" not in v:
        raise v.error("model", "the open model needs a rate (or stages)")
    if model != "open":
        for key in _OPEN_ONLY:
            if key in v:
                raise v.error(key, f"applies to the open model, not {model}")
    if model == "open" and "concurrency" in v:
        raise v.error("concurrency", "applies to the closed model, not open (use a rate)")
    if model == "sequential" and v.get("concurrency", 1) != 1:
        raise v.error("concurrency", "the sequential model sends one request at a time")
    if model in ("adaptive", "sequential") and "stages" in v:
        raise v.error("stages", f"ramps the rate or the concurrency: not with the {model} model")
    if model != "adaptive":
        for key in ADAPTIVE_KEYS:
            if key in v:
                raise v.error(key, f"applies to the adaptive model, not {model}")
    stages: tuple[Stage, ...] = v.get("stages", ())
    return LoadSpec(
        model=model,
        concurrency=1 if model == "sequential" else v.get("concurrency", DEFAULT_CONCURRENCY),
        rate=v.get("rate"),
        duration=v.get("duration"),
        requests=v.get("requests"),
        max_in_flight=v.get("max_in_flight"),
        stages=stages,
        arrival=v.get("arrival", "constant"),
        adaptive=_adaptive(v) if model == "adaptive" else None,
    )


def _adaptive(v: Layer) -> AdaptiveSpec:
    d = AdaptiveSpec()

    def get(key: str, default: Any) -> Any:
        return v.get(f"adaptive.{key}", default)

    spec = AdaptiveSpec(
        latency_target=get("latency_target", d.latency_target),
        percentile=get("percentile", d.percentile),
        initial=get("initial", d.initial),
        minimum=get("min", d.minimum),
        # `-c` with --adaptive is the ceiling.
        maximum=get("max", v.get("concurrency", d.maximum)),
        increase=get("increase", d.increase),
        backoff=get("backoff", d.backoff),
        window_min=get("window_min", d.window_min),
        window_max=get("window_max", d.window_max),
        window_samples=get("window_samples", d.window_samples),
        congestion_statuses=get("congestion_statuses", d.congestion_statuses),
        congestion_tolerance=get("congestion_tolerance", d.congestion_tolerance),
        slow_start=get("slow_start", d.slow_start),
    )

    def bad(key: str, why: str) -> ConfigError:
        return v.error(key, why) if key in v else ConfigError(f"{key}: {why}")

    if not 0 < spec.percentile < 100:
        raise bad("adaptive.percentile", "must be between 0 and 100")
    if not 0 < spec.backoff < 1:
        raise bad("adaptive.backoff", "must be between 0 and 1 (e.g. 0.9)")
    if not 0 <= spec.congestion_tolerance < 1:
        raise bad("adaptive.congestion_tolerance", "must be between 0% and 100%")
    if spec.minimum > spec.maximum:
        key = "adaptive.min" if "adaptive.min" in v else "adaptive.max"
        raise bad(key, f"the minimum ({spec.minimum}) is above the maximum ({spec.maximum})")
    if spec.window_max < spec.window_min:
        key = "adaptive.window_max" if "adaptive.window_max" in v else "adaptive.window_min"
        raise bad(key, "the longest window must be at least the shortest")
    if not math.isfinite(spec.latency_target) or spec.latency_target <= 0:
        raise bad("adaptive.latency_target", "must be above 0")
    return spec
