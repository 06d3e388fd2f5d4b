"""Scenario tables (a TOML file for `ballista run -f`, a JSON or TOML body for the
daemon's API) -> a `Scenario`: named weighted requests (or journeys' flows,
compiled by `flows.py`), load settings, thresholds.

Validation names the key path in the user's terms: `api.toml: requests[2].weight`
for a file, `requests[2].weight` for the API. The load settings come out as a
`Layer` that `build.build_config` merges with overrides and checks as a whole.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ballista.core.build import MODELS, Layer, Scenario
from ballista.core.config import (
    NAME,
    Origin,
    RequestSpec,
    Stage,
    encode_target,
    parse_header,
    parse_method,
    parse_url,
)
from ballista.core.durations import parse_duration
from ballista.core.errors import ConfigError
from ballista.core.flows import compile_flows
from ballista.core.journey import Journeys
from ballista.core.schedule import parse_stages

#: The key of `[thresholds]` that means the whole run rather than one request.
ALL = "all"
#: Nesting a scenario may have: deeper is refused before anything recurses into it.
MAX_DEPTH = 32

_TOP_KEYS = (
    "name",
    "base_url",
    "defaults",
    "requests",
    "flows",
    "setup",
    "data",
    "load",
    "thresholds",
)
_DEFAULT_KEYS = ("headers", "timeout", "protocol", "connections", "insecure", "interval")
_REQUEST_KEYS = (
    "name",
    "method",
    "path",
    "url",
    "headers",
    "body",
    "body_file",
    "weight",
    "expect",
)
_LOAD_KEYS = (
    "model",
    "concurrency",
    "rate",
    "duration",
    "requests",
    "max_in_flight",
    "stages",
    "arrival",
    "adaptive",
)
_ADAPTIVE_KEYS = (
    "latency_target",
    "percentile",
    "initial",
    "min",
    "max",
    "increase",
    "backoff",
    "window_min",
    "window_max",
    "window_samples",
    "congestion_statuses",
    "congestion_tolerance",
    "slow_start",
)


class _File:
    """Error helper bound to one scenario file."""

    def __init__(self, label: str, base_dir: Path | None) -> None:
        self.label = label
        #: where `body_file` paths are relative to; None: `body_file` is refused
        self.base_dir = base_dir

    def where(self, key: str) -> str:
        """`key` as the user knows it: `api.toml: load.rate`, or `load.rate` unlabelled."""
        if not self.label:
            return key
        return f"{self.label}: {key}" if key else self.label

    def error(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {why}", key=key or None)

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, "must be a table")
        return value

    def known(self, table: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
        for k in table:
            if k not in allowed:
                where = f"{prefix}.{k}" if prefix else k
                raise self.error(where, f"unknown key (expected one of: {', '.join(allowed)})")

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.error(key, "must be a string")
        return value

    def integer(self, value: Any, key: str, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"must be a whole number >= {minimum}")
        return value

    def positive(self, value: Any, key: str) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise self.error(key, "must be a number > 0")
        return float(value)

    def duration(self, value: Any, key: str, *, zero: bool = False) -> float:
        """A duration string (`30s`) or a number of seconds."""
        if isinstance(value, bool):
            raise self.error(key, "must be a duration such as 30s")
        if isinstance(value, int | float):
            seconds = float(value)
            if not math.isfinite(seconds) or seconds < 0:
                raise self.error(key, "must be a duration >= 0")
        elif isinstance(value, str):
            try:
                seconds = parse_duration(value)
            except ConfigError:
                raise self.error(
                    key, f"{value!r} is not a duration (use e.g. 500ms, 30s, 5m)"
                ) from None
        else:
            raise self.error(key, "must be a duration such as 30s")
        if seconds == 0 and not zero:
            raise self.error(key, "must be longer than 0")
        return seconds

    def headers(self, value: Any, key: str) -> tuple[tuple[str, str], ...]:
        table = self.table(value, key)
        out: list[tuple[str, str]] = []
        for name, v in table.items():
            if not isinstance(v, str):
                raise self.error(f"{key}.{name}", "must be a string")
            try:
                out.append(parse_header(f"{name}: {v}"))
            except ConfigError as exc:
                raise self.error(f"{key}.{name}", str(exc)) from None
        return tuple(out)


def _load_toml(path: Path, f: _File, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file {str(path)!r}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what}: {str(path)!r} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {str(path)!r}: {exc.strerror}") from None
    except RecursionError:
        raise ConfigError(f"{f.label}: nested too deeply (at most {MAX_DEPTH} levels)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{f.label}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{f.label}: not valid TOML: not UTF-8 text") from None


def _base(f: _File, data: Mapping[str, Any]) -> tuple[Origin, str] | None:
    if "base_url" not in data:
        return None
    text = f.string(data["base_url"], "base_url")
    try:
        origin, target = parse_url(text, what="base_url")
    except ConfigError as exc:
        raise f.error("base_url", str(exc).removeprefix("base_url: ")) from None
    if "?" in target:
        raise f.error("base_url", "must not have a query string")
    return origin, target.rstrip("/")


def _request(
    f: _File,
    i: int,
    raw: Any,
    base: tuple[Origin, str] | None,
    default_headers: tuple[tuple[str, str], ...],
) -> tuple[Origin, RequestSpec]:
    key = f"requests[{i}]"
    entry = f.table(raw, key)
    f.known(entry, _REQUEST_KEYS, key)
    if "name" not in entry:
        raise f.error(f"{key}.name", "missing: every request needs a name")
    name = f.string(entry["name"], f"{key}.name")
    if not NAME.match(name):
        raise f.error(
            f"{key}.name",
            f"{name!r}: use letters, digits, '_' and '-' (at most 64), starting with a "
            "letter, digit or '_'",
        )
    if name == ALL:
        raise f.error(f"{key}.name", f"{ALL!r} is reserved for the whole run in [thresholds]")
    try:
        method = parse_method(f.string(entry.get("method", "GET"), f"{key}.method"))
    except ConfigError as exc:
        raise f.error(f"{key}.method", str(exc)) from None
    if ("path" in entry) == ("url" in entry):
        raise f.error(key, "give either path or url")
    if "path" in entry:
        path = f.string(entry["path"], f"{key}.path")
        if not path.startswith("/") or any(c.isspace() or ord(c) < 0x20 for c in path):
            raise f.error(f"{key}.path", f"{path!r} must start with '/' and have no spaces")
        path = encode_target(path)
        if base is None:
            raise f.error(f"{key}.path", "a path needs base_url at the top of the file")
        origin, target = base[0], base[1] + path
    else:
        text = f.string(entry["url"], f"{key}.url")
        try:
            origin, target = parse_url(text, what="url")
        except ConfigError as exc:
            raise f.error(f"{key}.url", str(exc).removeprefix("url: ")) from None
        if base is not None and origin != base[0]:
            raise f.error(
                f"{key}.url",
                f"{text!r} is not on {base[0].url('')}: a run talks to one origin "
                "(scheme, host, port); use a path or one scenario per origin",
            )
    headers = dict((k.lower(), (k, v)) for k, v in default_headers)
    if "headers" in entry:
        headers.update(
            (k.lower(), (k, v)) for k, v in f.headers(entry["headers"], f"{key}.headers")
        )
    if "body" in entry and "body_file" in entry:
        raise f.error(key, "give either body or body_file")
    body = b""
    if "body" in entry:
        body = f.string(entry["body"], f"{key}.body").encode("utf-8")
    elif "body_file" in entry:
        rel = f.string(entry["body_file"], f"{key}.body_file")
        if f.base_dir is None:
            raise f.error(f"{key}.body_file", "not accepted here (use body)")
        path_on_disk = f.base_dir / rel
        try:
            body = path_on_disk.read_bytes()
        except OSError as exc:
            raise f.error(f"{key}.body_file", f"cannot read {rel!r}: {exc.strerror}") from None
    weight = f.positive(entry.get("weight", 1), f"{key}.weight")
    expected: frozenset[int] | None = None
    if "expect" in entry:
        codes = entry["expect"]
        if isinstance(codes, int) and not isinstance(codes, bool):
            codes = [codes]
        if not isinstance(codes, list) or not codes:
            raise f.error(f"{key}.expect", "must be a list of HTTP statuses, e.g. [200, 201]")
        for j, code in enumerate(codes):
            if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
                raise f.error(f"{key}.expect[{j}]", "must be an HTTP status (100-599)")
        expected = frozenset(codes)
    spec = RequestSpec(
        name=name,
        method=method,
        target=target,
        headers=tuple(headers.values()),
        body=body,
        weight=weight,
        expected=expected,
    )
    return origin, spec


def _stages(f: _File, value: Any) -> tuple[Stage, ...]:
    if isinstance(value, str):
        try:
            return parse_stages(value)
        except ConfigError as exc:
            raise f.error("load.stages", str(exc).removeprefix("--stages: ")) from None
    if not isinstance(value, list) or not value:
        raise f.error("load.stages", "must be a list of {duration, target} or '30s:100,1m:100'")
    stages: list[Stage] = []
    for i, raw in enumerate(value):
        key = f"load.stages[{i}]"
        entry = f.table(raw, key)
        f.known(entry, ("duration", "target"), key)
        for needed in ("duration", "target"):
            if needed not in entry:
                raise f.error(f"{key}.{needed}", "missing")
        duration = f.duration(entry["duration"], f"{key}.duration", zero=True)
        target = entry["target"]
        if (
            isinstance(target, bool)
            or not isinstance(target, int | float)
            or not math.isfinite(target)
            or target < 0
        ):
            raise f.error(f"{key}.target", "must be a number >= 0")
        stages.append(Stage(duration, float(target)))
    if not any(s.duration > 0 for s in stages):
        raise f.error("load.stages", "the stages last no time at all")
    return tuple(stages)


def _load(f: _File, raw: Any, out: Layer) -> None:
    """[load] -> typed values in `out`, named by their keys in the file."""
    table = f.table(raw, "load")
    f.known(table, _LOAD_KEYS, "load")

    def put(key: str, value: Any, name: str | None = None) -> None:
        path = f"load.{name or key}"
        out.set(key, value, f.where(path), path=path)

    if "model" in table:
        model = f.string(table["model"], "load.model")
        if model not in MODELS:
            raise f.error("load.model", f"{model!r}: use one of {', '.join(MODELS)}")
        put("model", model)
    if "concurrency" in table:
        put("concurrency", f.integer(table["concurrency"], "load.concurrency"))
    if "rate" in table:
        put("rate", f.positive(table["rate"], "load.rate"))
    if "duration" in table:
        put("duration", f.duration(table["duration"], "load.duration"))
    if "requests" in table:
        put("requests", f.integer(table["requests"], "load.requests"))
    if "max_in_flight" in table:
        put("max_in_flight", f.integer(table["max_in_flight"], "load.max_in_flight"))
    if "arrival" in table:
        arrival = f.string(table["arrival"], "load.arrival")
        if arrival not in ("constant", "poisson"):
            raise f.error("load.arrival", f"{arrival!r}: use constant or poisson")
        put("arrival", arrival)
    if "stages" in table:
        put("stages", _stages(f, table["stages"]))
    if "adaptive" in table:
        _adaptive(f, f.table(table["adaptive"], "load.adaptive"), out)
    if "model" not in out:
        # The model the file's keys imply.
        implied = (
            "adaptive"
            if "adaptive" in table
            else "open"
            if "rate" in table
            else "closed"
            if "concurrency" in table or "stages" in table
            else None
        )
        if implied is not None:
            out.set("model", implied, f.where("load"), path="load")


def _adaptive(f: _File, ad: dict[str, Any], out: Layer) -> None:
    f.known(ad, _ADAPTIVE_KEYS, "load.adaptive")

    def put(key: str, value: Any) -> None:
        path = f"load.adaptive.{key}"
        out.set(f"adaptive.{key}", value, f.where(path), path=path)

    def key_of(name: str) -> str:
        return f"load.adaptive.{name}"

    for name in ("latency_target", "window_min", "window_max"):
        if name in ad:
            put(name, f.duration(ad[name], key_of(name)))
    for name in ("initial", "min", "max", "increase", "window_samples"):
        if name in ad:
            put(name, f.integer(ad[name], key_of(name)))
    for name in ("percentile", "backoff"):
        if name in ad:
            put(name, f.positive(ad[name], key_of(name)))
    if "congestion_tolerance" in ad:
        value = ad["congestion_tolerance"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise f.error(key_of("congestion_tolerance"), "must be a number (e.g. 0.01)")
        put("congestion_tolerance", float(value))
    if "congestion_statuses" in ad:
        raw = ad["congestion_statuses"]
        if not isinstance(raw, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) and 100 <= x <= 599 for x in raw
        ):
            raise f.error(
                key_of("congestion_statuses"), "must be a list of HTTP statuses, e.g. [429, 503]"
            )
        put("congestion_statuses", frozenset(raw))
    if "slow_start" in ad:
        if not isinstance(ad["slow_start"], bool):
            raise f.error(key_of("slow_start"), "must be true or false")
        put("slow_start", ad["slow_start"])


def _thresholds(f: _File, raw: Any) -> list[tuple[str, str]]:
    """(expression, where) pairs; `build_config` parses them against the request names."""
    exprs: list[tuple[str, str]] = []
    if isinstance(raw, list):
        for i, e in enumerate(raw):
            key = f"thresholds[{i}]"
            exprs.append((f.string(e, key), f.where(key)))
    elif isinstance(raw, dict):
        for name, listed in raw.items():
            items = [listed] if isinstance(listed, str) else listed
            if not isinstance(items, list):
                raise f.error(f"thresholds.{name}", "must be a list of expressions")
            for i, e in enumerate(items):
                key = f"thresholds.{name}[{i}]"
                text = f.string(e, key).strip()
                exprs.append((text if name == ALL else f"{name}.{text}", f.where(key)))
    else:
        raise f.error("thresholds", "must be a list of expressions or a table name -> list")
    return exprs


def read_scenario_file(
    path: str, *, what: str = "-f/--scenario", headers: tuple[tuple[str, str], ...] = ()
) -> Scenario:
    """Read and validate a TOML scenario file; errors start with its name.

    `headers` (the command line's -H) are added to every request and step, over
    the file's own headers of the same name.
    """
    file = Path(path)
    f = _File(file.name, file.parent)
    data = _load_toml(file, f, what)
    _check_depth(f, data)
    return _scenario(f, data, headers)


def scenario_from_table(
    data: Mapping[str, Any], *, label: str = "", base_dir: Path | None = None
) -> Scenario:
    """A scenario already parsed (a TOML or JSON table) -> Scenario, with the same
    validation as a file; errors start with `label` when one is given. Without
    `base_dir`, `body_file` is refused (the daemon's API must not read its own disk)."""
    f = _File(label, base_dir)
    _check_depth(f, data)
    _check_plain(f, data, "")
    return _scenario(f, dict(data))


def _check_depth(f: _File, data: Mapping[str, Any]) -> None:
    """Refuse absurd nesting with a loop, before any recursive walk."""
    level: list[Any] = [data]
    for _ in range(MAX_DEPTH + 1):
        nxt: list[Any] = []
        for v in level:
            if isinstance(v, Mapping):
                nxt.extend(v.values())
            elif isinstance(v, list):
                nxt.extend(v)
        if not nxt:
            return
        level = nxt
    raise f.error("", f"nested too deeply (at most {MAX_DEPTH} levels)")


def _check_plain(f: _File, value: Any, where: str) -> None:
    """What JSON can say and TOML cannot (null, NaN, infinities): named, refused."""
    if value is None:
        raise f.error(where, "null is not allowed")
    if isinstance(value, float) and not math.isfinite(value):
        raise f.error(where, "must be a finite number")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_plain(f, v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(f, v, f"{where}[{i}]")


def _scenario(
    f: _File, data: dict[str, Any], extra_headers: tuple[tuple[str, str], ...] = ()
) -> Scenario:
    f.known(data, _TOP_KEYS, "")
    name = "default"
    if "name" in data:
        name = f.string(data["name"], "name")
        if not NAME.match(name):
            raise f.error("name", f"{name!r}: use letters, digits, '_' and '-' (at most 64)")
    base = _base(f, data)
    settings = Layer()
    defaults = f.table(data.get("defaults", {}), "defaults")
    f.known(defaults, _DEFAULT_KEYS, "defaults")
    default_headers = f.headers(defaults.get("headers", {}), "defaults.headers")
    for key in ("timeout", "interval"):
        if key in defaults:
            value = f.duration(defaults[key], f"defaults.{key}")
            settings.set(key, value, f.where(f"defaults.{key}"), path=f"defaults.{key}")
    if "protocol" in defaults:
        text = f.string(defaults["protocol"], "defaults.protocol")
        if text not in ("auto", "http1", "http2"):
            raise f.error("defaults.protocol", f"{text!r}: use auto, http1 or http2")
        settings.set("protocol", text, f.where("defaults.protocol"), path="defaults.protocol")
    if "connections" in defaults:
        connections = f.integer(defaults["connections"], "defaults.connections")
        where = f.where("defaults.connections")
        settings.set("connections", connections, where, path="defaults.connections")
    if "insecure" in defaults:
        if not isinstance(defaults["insecure"], bool):
            raise f.error("defaults.insecure", "must be true or false")
        insecure = defaults["insecure"]
        settings.set("insecure", insecure, f.where("defaults.insecure"), path="defaults.insecure")

    specs: list[RequestSpec] = []
    origin: Origin | None = base[0] if base else None
    journeys: Journeys | None = None
    if "flows" in data:
        if "requests" in data:
            raise f.error(
                "requests",
                "a scenario has either [[requests]] (independent requests) or [[flows]] "
                "(journeys), not both",
            )
        compiled = compile_flows(f, data, base, default_headers, extra_headers)
        journeys = compiled.journeys
        specs.extend(compiled.requests)
    else:
        for key in ("setup", "data"):
            if key in data:
                raise f.error(key, "belongs to journeys: add [[flows]] (and no [[requests]])")
        raw_requests = data.get("requests")
        if not isinstance(raw_requests, list) or not raw_requests:
            raise f.error("requests", "missing: add at least one [[requests]] table (or [[flows]])")
    for i, raw in enumerate(data.get("requests", ()) if journeys is None else ()):
        req_origin, spec = _request(f, i, raw, base, default_headers)
        if origin is None:
            origin = req_origin
        elif req_origin != origin:
            raise f.error(
                f"requests[{i}].url",
                f"{req_origin.url('')} differs from {origin.url('')}: a run talks to one origin",
            )
        if any(s.name == spec.name for s in specs):
            raise f.error(f"requests[{i}].name", f"{spec.name!r} is used twice")
        if extra_headers:
            lowered = {k.lower() for k, _ in extra_headers}
            kept = tuple(h for h in spec.headers if h[0].lower() not in lowered)
            spec = dataclasses.replace(spec, headers=kept + extra_headers)
        specs.append(spec)
    assert origin is not None
    _load(f, data.get("load", {}), settings)
    thresholds: list[tuple[str, str]] = []
    if "thresholds" in data:
        if isinstance(data["thresholds"], dict):
            names = [s.name for s in specs]
            if journeys is not None:
                # A flow's own figures: `"flow:buy" = ["p95<2s"]` (docs/journeys.md).
                names += [f"flow:{flow.name}" for flow in journeys.flows]
                names += ["flow:setup"] if journeys.setup is not None else []
            for tname in data["thresholds"]:
                if tname != ALL and tname not in names:
                    raise f.error(
                        f"thresholds.{tname}",
                        f"no {'step' if journeys else 'request'} named {tname!r} (use {ALL!r} "
                        "for the whole run, or one "
                        f"of: {', '.join(names)})",
                    )
        thresholds = _thresholds(f, data["thresholds"])
    return Scenario(
        origin=origin,
        requests=tuple(specs),
        name=name,
        settings=settings,
        thresholds=tuple(thresholds),
        journeys=journeys,
    )
