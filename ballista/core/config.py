"""Validated run configuration: frozen dataclasses built from flags or scenario files."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from ballista.core.errors import ConfigError

Model = Literal["closed", "open", "adaptive", "sequential"]
Protocol = Literal["auto", "http1", "http2"]

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Origin:
    """Scheme, host and port: where connections go."""

    scheme: Literal["http", "https"]
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"

    def url(self, target: str = "/") -> str:
        return f"{self.scheme}://{self.authority}{target}"


def parse_url(text: str, *, what: str = "URL") -> tuple[Origin, str]:
    """`http://host:port/path?q` -> (Origin, request target). One-line ConfigError if bad."""
    raw = text.strip()
    if not raw:
        raise ConfigError(f"{what}: empty URL")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{what}: {text!r} is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"{what}: {text!r} must start with http:// or https://")
    host = parts.hostname
    if not host:
        raise ConfigError(f"{what}: {text!r} has no host")
    if any(c.isspace() for c in raw):
        raise ConfigError(f"{what}: {text!r} contains white space")
    path = parts.path or "/"
    target = path + (f"?{parts.query}" if parts.query else "")
    origin = Origin(scheme, host, port if port is not None else _DEFAULT_PORTS[scheme])  # type: ignore[arg-type]
    return origin, target


def parse_header(text: str) -> tuple[str, str]:
    """`Name: value` -> (name, value); names must be HTTP tokens."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(f"header {text!r}: expected 'Name: value'")
    if not _TOKEN.match(name):
        raise ConfigError(f"header {text!r}: {name!r} is not a valid header name")
    value = value.strip()
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ConfigError(f"header {text!r}: value contains a control character")
    return name, value


def parse_method(text: str) -> str:
    method = text.strip().upper()
    if not method or not _TOKEN.match(method):
        raise ConfigError(f"method {text!r}: not a valid HTTP method")
    return method


def default_expected(status: int) -> bool:
    return 200 <= status < 400


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One named request of a run. A plain `ballista run URL` has exactly one."""

    name: str
    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    weight: float = 1.0
    #: statuses that count as success; None means 200-399.
    expected: frozenset[int] | None = None

    def is_expected(self, status: int) -> bool:
        if self.expected is None:
            return 200 <= status < 400
        return status in self.expected


@dataclass(frozen=True, slots=True)
class Stage:
    """Ramp linearly to `target` over `duration` seconds."""

    duration: float
    target: float


@dataclass(frozen=True, slots=True)
class AdaptiveSpec:
    """Parameters of the AIMD controller (issue 4)."""

    latency_target: float = 0.25
    percentile: float = 95.0
    initial: int = 4
    minimum: int = 1
    maximum: int = 1000
    increase: int = 1
    backoff: float = 0.9
    window_min: float = 0.5
    window_max: float = 5.0
    window_samples: int = 20
    congestion_statuses: frozenset[int] = frozenset({429, 503})
    slow_start: bool = True
    #: a window is congested when its congestion signals exceed this share of its samples
    congestion_tolerance: float = 0.01


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """How much load, of which shape, for how long."""

    model: Model = "closed"
    concurrency: int = 10
    rate: float | None = None
    duration: float | None = None
    requests: int | None = None
    max_in_flight: int | None = None
    stages: tuple[Stage, ...] = ()
    arrival: Literal["constant", "poisson"] = "constant"
    adaptive: AdaptiveSpec | None = None

    @property
    def effective_duration(self) -> float | None:
        """The run length: explicit, else the stages' sum, else 10 s when no request count."""
        if self.duration is not None:
            return self.duration
        if self.stages:
            return sum(s.duration for s in self.stages)
        if self.requests is None:
            return 10.0
        return None


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything the engine needs to run one test."""

    origin: Origin
    requests: tuple[RequestSpec, ...]
    load: LoadSpec = field(default_factory=LoadSpec)
    protocol: Protocol = "auto"
    connections: int | None = None
    timeout: float = 30.0
    insecure: bool = False
    interval: float = 1.0
    scenario: str = "default"
    thresholds: tuple[str, ...] = ()
    #: extra CA bundle for https targets (tests use trustme's).
    ca_file: str | None = None

    @property
    def url(self) -> str:
        return self.origin.url(self.requests[0].target)
