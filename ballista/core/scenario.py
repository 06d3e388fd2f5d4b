"""TOML scenario files (`ballista run -f FILE`): named weighted requests, load, thresholds.

Validation names the file and the key path (`api.toml: requests[2].weight: ...`).
Flags given on the command line override what the file says.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ballista.core.config import (
    LoadSpec,
    Origin,
    Protocol,
    RequestSpec,
    RunConfig,
    Stage,
    parse_header,
    parse_method,
    parse_url,
)
from ballista.core.durations import parse_duration
from ballista.core.errors import ConfigError
from ballista.core.schedule import parse_stages
from ballista.core.thresholds import parse_threshold

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}$")
#: The key of `[thresholds]` that means the whole run rather than one request.
ALL = "all"
#: Parser defaults of flags that have one: a flag equal to its default does not override.
_FLAG_DEFAULTS: dict[str, object] = {"method": "GET", "no_slow_start": False}

_TOP_KEYS = ("name", "base_url", "defaults", "requests", "load", "thresholds")
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
_MODELS = ("closed", "open", "adaptive", "sequential")


class _File:
    """Error helper bound to one scenario file."""

    def __init__(self, label: str, base_dir: Path | None) -> None:
        self.label = label
        #: where `body_file` paths are relative to; None: `body_file` is refused
        self.base_dir = base_dir

    def error(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.label}: {key}: {why}" if key else f"{self.label}: {why}")

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


def _load_toml(path: Path, f: _File) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"-f/--scenario: no such file {str(path)!r}") from None
    except OSError as exc:
        raise ConfigError(f"-f/--scenario: cannot read {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{f.label}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{f.label}: not valid TOML: not UTF-8 text") from None


def _base(f: _File, data: Mapping[str, Any]) -> tuple[Origin, str] | None:
    if "base_url" not in data:
        return None
    text = f.string(data["base_url"], "base_url")
    try:
        origin, target = parse_url(text)
    except ConfigError as exc:
        raise f.error("base_url", str(exc).removeprefix("URL: ")) from None
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
    if not _NAME.match(name):
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
        if not path.startswith("/") or any(c.isspace() for c in path):
            raise f.error(f"{key}.path", f"{path!r} must start with '/' and have no spaces")
        if base is None:
            raise f.error(f"{key}.path", "a path needs base_url at the top of the file")
        origin, target = base[0], base[1] + path
    else:
        text = f.string(entry["url"], f"{key}.url")
        try:
            origin, target = parse_url(text)
        except ConfigError as exc:
            raise f.error(f"{key}.url", str(exc).removeprefix("URL: ")) from None
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


@dataclasses.dataclass
class _FileLoad:
    model: str | None = None
    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    stages: tuple[Stage, ...] = ()


def _load(f: _File, raw: Any) -> _FileLoad:
    table = f.table(raw, "load")
    f.known(table, _LOAD_KEYS, "load")
    out = _FileLoad()
    v = out.values
    if "model" in table:
        model = f.string(table["model"], "load.model")
        if model not in _MODELS:
            raise f.error("load.model", f"{model!r}: use one of {', '.join(_MODELS)}")
        out.model = model
    if "concurrency" in table:
        v["concurrency"] = f.integer(table["concurrency"], "load.concurrency")
    if "rate" in table:
        v["rate"] = f.positive(table["rate"], "load.rate")
    if "duration" in table:
        v["duration"] = f.duration(table["duration"], "load.duration")
    if "requests" in table:
        v["requests"] = f.integer(table["requests"], "load.requests")
    if "max_in_flight" in table:
        v["max_in_flight"] = f.integer(table["max_in_flight"], "load.max_in_flight")
    if "arrival" in table:
        arrival = f.string(table["arrival"], "load.arrival")
        if arrival not in ("constant", "poisson"):
            raise f.error("load.arrival", f"{arrival!r}: use constant or poisson")
        v["arrival"] = arrival
    if "stages" in table:
        out.stages = _stages(f, table["stages"])
    if "adaptive" in table:
        ad = f.table(table["adaptive"], "load.adaptive")
        f.known(ad, _ADAPTIVE_KEYS, "load.adaptive")
        if "latency_target" in ad:
            v["latency_target"] = f.duration(ad["latency_target"], "load.adaptive.latency_target")
        if "percentile" in ad:
            p = f.positive(ad["percentile"], "load.adaptive.percentile")
            if p >= 100:
                raise f.error("load.adaptive.percentile", "must be between 0 and 100")
            v["latency_percentile"] = p
        for key, flag in (
            ("initial", "initial_concurrency"),
            ("min", "min_concurrency"),
            ("max", "max_concurrency"),
        ):
            if key in ad:
                v[flag] = f.integer(ad[key], f"load.adaptive.{key}")
        # The rest map onto their flags' names: a flag typed on the command line wins.
        if "increase" in ad:
            v["increase"] = f.integer(ad["increase"], "load.adaptive.increase")
        if "backoff" in ad:
            backoff = f.positive(ad["backoff"], "load.adaptive.backoff")
            if backoff >= 1:
                raise f.error("load.adaptive.backoff", "must be between 0 and 1 (e.g. 0.9)")
            v["backoff"] = repr(backoff)
        for key in ("window_min", "window_max"):
            if key in ad:
                v[key] = f.duration(ad[key], f"load.adaptive.{key}")
        if "window_samples" in ad:
            v["window_samples"] = f.integer(ad["window_samples"], "load.adaptive.window_samples")
        if "congestion_statuses" in ad:
            raw = ad["congestion_statuses"]
            key = "load.adaptive.congestion_statuses"
            if not isinstance(raw, list) or not all(
                isinstance(x, int) and not isinstance(x, bool) and 100 <= x <= 599 for x in raw
            ):
                raise f.error(key, "must be a list of HTTP statuses, e.g. [429, 503]")
            v["congestion_status"] = ",".join(str(x) for x in raw) if raw else "none"
        if "congestion_tolerance" in ad:
            tolerance = f.positive(ad["congestion_tolerance"], "load.adaptive.congestion_tolerance")
            v["congestion_tolerance"] = repr(tolerance)
        if "slow_start" in ad:
            if not isinstance(ad["slow_start"], bool):
                raise f.error("load.adaptive.slow_start", "must be true or false")
            v["no_slow_start"] = not ad["slow_start"]
        if out.model is None:
            out.model = "adaptive"
    # The model the file means, checked against the keys it gives.
    model = out.model or ("open" if "rate" in v else "closed")
    out.model = model
    if model == "open" and "rate" not in v and not out.stages:
        raise f.error("load.rate", "the open model needs a rate (or stages)")
    if model != "open":
        for key in ("rate", "max_in_flight", "arrival"):
            if key in v:
                raise f.error(f"load.{key}", f"applies to the open model, not {model}")
    if model != "adaptive" and "adaptive" in table:
        raise f.error("load.adaptive", f"applies to the adaptive model, not {model}")
    if model in ("adaptive", "sequential") and out.stages:
        raise f.error("load.stages", f"ramps the rate or the concurrency: not with {model}")
    if model == "sequential" and "concurrency" in v:
        raise f.error("load.concurrency", "the sequential model sends one request at a time")
    return out


def _thresholds(f: _File, raw: Any, names: list[str]) -> list[str]:
    exprs: list[tuple[str, str]] = []
    if isinstance(raw, list):
        for i, e in enumerate(raw):
            exprs.append((f"thresholds[{i}]", f.string(e, f"thresholds[{i}]")))
    elif isinstance(raw, dict):
        for name, listed in raw.items():
            if name != ALL and name not in names:
                raise f.error(
                    f"thresholds.{name}",
                    f"no request named {name!r} (use {ALL!r} for the whole run, or one of: "
                    f"{', '.join(names)})",
                )
            items = [listed] if isinstance(listed, str) else listed
            if not isinstance(items, list):
                raise f.error(f"thresholds.{name}", "must be a list of expressions")
            for i, e in enumerate(items):
                text = f.string(e, f"thresholds.{name}[{i}]").strip()
                exprs.append((f"thresholds.{name}[{i}]", text if name == ALL else f"{name}.{text}"))
    else:
        raise f.error("thresholds", "must be a list of expressions or a table name -> list")
    for key, e in exprs:
        try:
            parse_threshold(e, names)
        except ConfigError as exc:
            raise f.error(key, str(exc).removeprefix("--threshold ")) from None
    return [e for _, e in exprs]


def _cli_model(ns: argparse.Namespace, sequential: bool) -> str | None:
    if sequential:
        return "sequential"
    if getattr(ns, "rate", None) is not None:
        return "open"
    if getattr(ns, "adaptive", False):
        return "adaptive"
    if getattr(ns, "concurrency", None) is not None:
        return "closed"
    return None


def _merged_load(
    f: _File, file_load: _FileLoad, ns: argparse.Namespace, sequential: bool
) -> LoadSpec:
    """The file's [load] under the flags: a flag wins; a flag that picks another
    model replaces the file's model and its keys (duration and request count stay)."""
    from ballista.cli.main import load_from_args

    cli_model = _cli_model(ns, sequential)
    values = dict(file_load.values)
    model = file_load.model or "closed"
    stages = file_load.stages
    if cli_model is not None and cli_model != model:
        values = {k: values[k] for k in ("duration", "requests") if k in values}
        stages = ()
        model = cli_model
    merged = argparse.Namespace(**vars(ns))
    for key, value in values.items():
        current = getattr(ns, key, None)
        if current is None or current == _FLAG_DEFAULTS.get(key):
            setattr(merged, key, value)
    if model == "adaptive":
        merged.adaptive = True
    sequential = sequential or model == "sequential"
    cli_stages = getattr(ns, "stages", None)
    merged.stages = cli_stages
    # An open model ramped by the file's stages alone starts from a rate of 0.
    rateless = model == "open" and merged.rate is None
    if rateless:
        merged.rate = 1.0
    try:
        load = load_from_args(merged, sequential=sequential)
    except ConfigError as exc:
        raise f.error("", f"{exc} (flags combined with the file's [load])") from None
    if rateless:
        load = dataclasses.replace(load, rate=None)
    if not cli_stages and stages:
        load = dataclasses.replace(load, stages=stages)
    return load


def config_from_scenario(
    path: str, ns: argparse.Namespace, *, sequential: bool = False
) -> RunConfig:
    """Read, validate and build a scenario file's RunConfig; flags in `ns` override it."""
    file = Path(path)
    f = _File(file.name, file.parent)
    return _build(f, _load_toml(file, f), ns, sequential=sequential)


def config_from_table(
    data: Mapping[str, Any],
    ns: argparse.Namespace,
    *,
    label: str = "scenario",
    base_dir: Path | None = None,
    sequential: bool = False,
) -> RunConfig:
    """A scenario already parsed (a TOML or JSON table) -> RunConfig, with the same
    validation as a file; errors start with `label`. Without `base_dir`,
    `body_file` is refused (the daemon's API must not read its own disk)."""
    f = _File(label, base_dir)
    _check_plain(f, data, "")
    return _build(f, dict(data), ns, sequential=sequential)


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


def _build(
    f: _File, data: dict[str, Any], ns: argparse.Namespace, *, sequential: bool
) -> RunConfig:
    f.known(data, _TOP_KEYS, "")
    name = "default"
    if "name" in data:
        name = f.string(data["name"], "name")
        if not _NAME.match(name):
            raise f.error("name", f"{name!r}: use letters, digits, '_' and '-' (at most 64)")
    base = _base(f, data)
    defaults = f.table(data.get("defaults", {}), "defaults")
    f.known(defaults, _DEFAULT_KEYS, "defaults")
    default_headers = f.headers(defaults.get("headers", {}), "defaults.headers")
    timeout = 30.0
    if "timeout" in defaults:
        timeout = f.duration(defaults["timeout"], "defaults.timeout")
    interval = 1.0
    if "interval" in defaults:
        interval = f.duration(defaults["interval"], "defaults.interval")
    protocol: Protocol = "auto"
    if "protocol" in defaults:
        text = f.string(defaults["protocol"], "defaults.protocol")
        if text not in ("auto", "http1", "http2"):
            raise f.error("defaults.protocol", f"{text!r}: use auto, http1 or http2")
        protocol = text  # type: ignore[assignment]
    connections: int | None = None
    if "connections" in defaults:
        connections = f.integer(defaults["connections"], "defaults.connections")
    insecure = False
    if "insecure" in defaults:
        if not isinstance(defaults["insecure"], bool):
            raise f.error("defaults.insecure", "must be true or false")
        insecure = defaults["insecure"]

    raw_requests = data.get("requests")
    if not isinstance(raw_requests, list) or not raw_requests:
        raise f.error("requests", "missing: add at least one [[requests]] table")
    specs: list[RequestSpec] = []
    origin: Origin | None = base[0] if base else None
    for i, raw in enumerate(raw_requests):
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
        specs.append(spec)
    assert origin is not None
    names = [s.name for s in specs]

    file_load = _load(f, data.get("load", {}))
    thresholds: list[str] = []
    if "thresholds" in data:
        thresholds = _thresholds(f, data["thresholds"], names)

    # -- flags override the file ------------------------------------------------
    if getattr(ns, "url", None):
        origin, url_target = parse_url(ns.url)
        if url_target != "/":
            raise ConfigError(
                f"URL {ns.url!r}: with -f give only the origin (scheme://host:port); "
                "the scenario's base_url and paths name the requests"
            )
    if getattr(ns, "body", None) is not None or getattr(ns, "body_file", None) is not None:
        raise ConfigError("-b/--body-file: the scenario file defines each request's body")
    if getattr(ns, "method", "GET").upper() != "GET":
        raise ConfigError("-m/--method: the scenario file defines each request's method")
    extra = [parse_header(h) for h in getattr(ns, "header", [])]
    if extra:
        lowered = {k.lower() for k, _ in extra}
        specs = [
            dataclasses.replace(
                s, headers=tuple(h for h in s.headers if h[0].lower() not in lowered) + tuple(extra)
            )
            for s in specs
        ]
    if getattr(ns, "protocol", None):
        protocol = ns.protocol
    if getattr(ns, "connections", None) is not None:
        connections = ns.connections
    if getattr(ns, "timeout", None) is not None:
        timeout = ns.timeout
    if getattr(ns, "interval", None) is not None:
        interval = ns.interval
    if getattr(ns, "insecure", False):
        insecure = True
    ca_file = getattr(ns, "cacert", None)
    if ca_file is not None and not Path(ca_file).is_file():
        raise ConfigError(f"--cacert: no such file {ca_file!r}")
    load = _merged_load(f, file_load, ns, sequential)
    return RunConfig(
        origin=origin,
        requests=tuple(specs),
        load=load,
        protocol=protocol,
        connections=connections,
        timeout=timeout,
        insecure=insecure,
        interval=interval,
        scenario=getattr(ns, "scenario_name", None) or name,
        thresholds=tuple(thresholds) + tuple(getattr(ns, "threshold", None) or ()),
        ca_file=ca_file,
    )
