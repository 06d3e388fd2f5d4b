"""Validated run configuration: frozen dataclasses built from flags or scenario files."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote, urlsplit

from ballista.core.errors import ConfigError
from ballista.core.journey import Journeys

if TYPE_CHECKING:
    from ballista.core.segment import Segment
    from ballista.core.thresholds import Threshold

Model = Literal["closed", "open", "adaptive", "sequential"]
Protocol = Literal["auto", "http1", "http2"]

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DEFAULT_PORTS = {"http": 80, "https": 443}

#: Defaults, in one place: every front end (flags, files, the API) leaves them to this module.
DEFAULT_TIMEOUT = 30.0
DEFAULT_INTERVAL = 1.0
#: a shorter snapshot interval would spend the run formatting snapshots
MIN_INTERVAL = 0.05
DEFAULT_CONCURRENCY = 10
#: a run with neither -d nor -n lasts this long
DEFAULT_DURATION = 10.0
#: how long in-flight requests may go on after a stop before they are abandoned
DEFAULT_GRACE = 5.0
#: statuses that mean "overloaded" to the adaptive controller
DEFAULT_CONGESTION_STATUSES = frozenset({429, 503})
#: statuses that count as success when a request names none
DEFAULT_EXPECTED = range(200, 400)

#: Characters left as they are in a request target; anything else (non-ASCII,
#: spaces are refused earlier) is percent-encoded as UTF-8, as curl and browsers do.
_TARGET_SAFE = "/?#[]@!$&'()*+,;=:-._~%"


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
    """`http://host:port/path?q` -> (Origin, request target). One-line ConfigError if bad.

    A non-ASCII host is IDNA-encoded and a non-ASCII path or query
    percent-encoded as UTF-8, as curl and browsers send them.
    """
    raw = text.strip()
    if not raw:
        raise ConfigError(f"{what}: empty URL")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise ConfigError(f"{what}: {text!r} contains white space or a control character")
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
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{what}: credentials in the URL are not sent; pass them as a header, "
            "e.g. -H 'Authorization: Basic ...'"
        )
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ConfigError(f"{what}: {parts.hostname!r} is not a valid host name") from None
    path = parts.path or "/"
    target = encode_target(path + (f"?{parts.query}" if parts.query else ""))
    origin = Origin(scheme, host, port if port is not None else _DEFAULT_PORTS[scheme])  # type: ignore[arg-type]
    return origin, target


def encode_target(target: str) -> str:
    """A request target as sent: non-ASCII characters percent-encoded as UTF-8."""
    return target if target.isascii() else quote(target, safe=_TARGET_SAFE)


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
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigError(
            f"header {text!r}: HTTP header values are ISO-8859-1 text; "
            "percent-encode or base64 other characters"
        ) from None
    return name, value


def parse_method(text: str) -> str:
    method = text.strip().upper()
    if not method or not _TOKEN.match(method):
        raise ConfigError(f"method {text!r}: not a valid HTTP method")
    return method


#: What a request, flow or step may be called: it becomes a Prometheus label
#: value and a key of the JSON summary.
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}$")


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
            return status in DEFAULT_EXPECTED
        return status in self.expected


#: Headers that frame the message: Ballista sets them from the body it sends.
_FRAMING = ("transfer-encoding",)
#: Connection-specific headers, forbidden in HTTP/2 (RFC 9113 section 8.2.2).
_HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "upgrade")


def check_request(spec: RequestSpec, *, http2: bool) -> None:
    """Refuse, before any load, headers that would make the request unsendable or a lie."""
    for name, value in spec.headers:
        lowered = name.lower()
        if lowered in _FRAMING:
            raise ConfigError(
                f"header {name!r}: Ballista frames the body itself (Content-Length); "
                "drop this header"
            )
        if lowered == "content-length" and value != str(len(spec.body)):
            raise ConfigError(
                f"header 'Content-Length: {value}': the body is {len(spec.body)} bytes; "
                "drop the header (Ballista sets it)"
            )
        if http2 and lowered in _HOP_BY_HOP:
            raise ConfigError(f"header {name!r}: not allowed in HTTP/2 (connection-specific)")


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
    congestion_statuses: frozenset[int] = DEFAULT_CONGESTION_STATUSES
    slow_start: bool = True
    #: a window is congested when its congestion signals exceed this share of its samples
    congestion_tolerance: float = 0.01


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """How much load, of which shape, for how long."""

    model: Model = "closed"
    concurrency: int = DEFAULT_CONCURRENCY
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
            return DEFAULT_DURATION
        return None


#: Open model: outstanding requests when --max-in-flight is not given. Each one is
#: a task and (HTTP/1.1) a connection: this bounds the memory and the files an
#: overload can take, and covers 10,000 req/s at 100 ms (Little's law).
DEFAULT_MAX_IN_FLIGHT = 1000

# Upper bounds on what one process is asked to do. Past the soft bounds a value
# is far more often a slip (-r 1e12 for 1e3) than a plan, yet a big machine
# could mean it: `check_bounds(..., unbounded=True)` lifts them. The hard bounds
# hold always: past them Ballista could not keep its promises at all.
#: requests per second (soft): one process sends tens of thousands at most
MAX_RATE = 1_000_000.0
#: closed-model workers, adaptive maximum, open-model --max-in-flight (soft):
#: each is a task (and on HTTP/1.1 a connection and a file) that the run loop
#: visits in turn: 30,000 busy ones already take seconds per turn on 2 cores
MAX_CONCURRENCY = 20_000
#: hard bound on rates: counted in O(1) per tick, but every figure stays exact below it
HARD_MAX_RATE = 1e9
#: hard bound on workers and in-flight requests (memory: about 10 GB of tasks)
HARD_MAX_CONCURRENCY = 2_000_000
#: connections to one target (hard): a source address has 65,535 ports at most
MAX_CONNECTIONS = 65_535
#: a run, a stage (hard): soak tests last days, not years
MAX_DURATION = 366 * 86400.0
#: stages of a ramp (hard): each tick walks them
MAX_STAGES = 10_000
#: scheduled requests in a run (hard): open-model arrivals are counted in floats
MAX_SCHEDULED = 2**50


def check_bounds(
    load: LoadSpec,
    connections: int | None = None,
    *,
    error: Callable[[str, str], ConfigError] | None = None,
    unbounded: bool = False,
    override: str = "",
    segments: int = 1,
) -> None:
    """Reject sizes that would eat the machine, with one line naming the key.

    For a segment of `segments`, `load` is the segment's (core/segment.py): its
    workers are its own, while its rate and stages are the whole test's, of
    which it sends a 1/segments share; that share is held to the bounds.

    `error(key, why)` makes the ConfigError for a canonical key (`rate`,
    `concurrency`, `max_in_flight`, `duration`, `stages`, `adaptive.max`,
    `connections`), naming it in the front end's terms: `Layer.error` does.
    By default the message starts with the key itself. `override` says how that
    front end lifts the soft bounds, for the message (e.g. "add --no-limits").
    """
    make = error or _plain_error
    soft = not unbounded
    hint = f"; {override}" if override else ""

    def above(key: str, value: float, limit: float, unit: str, why: str, lift: bool) -> None:
        if value <= limit:  # also false for NaN
            return
        tail = hint if lift else ""
        unit = f" {unit}" if unit else ""
        share = f" (this segment's share: 1/{segments:,} of the test's)" if segments > 1 else ""
        raise make(
            key,
            f"{value:,.6g}{unit}{share} is above the limit of {limit:,.0f}{unit} ({why}){tail}",
        )

    def workers(key: str, value: float) -> None:
        if soft:
            above(key, value, MAX_CONCURRENCY, "", "each is a task and maybe a connection", True)
        above(key, value, HARD_MAX_CONCURRENCY, "", "the memory of one process", False)

    def rate(key: str, value: float) -> None:
        if soft:
            above(key, value, MAX_RATE, "requests/s", "one process sends far fewer", True)
        above(key, value, HARD_MAX_RATE, "requests/s", "the most Ballista counts exactly", False)

    model = load.model
    if load.rate is not None:
        rate("rate", load.rate / segments)
    if load.max_in_flight is not None:
        workers("max_in_flight", load.max_in_flight)
    if model in ("closed", "sequential") and not load.stages:
        workers("concurrency", load.concurrency)
    if load.adaptive is not None:
        workers("adaptive.max", load.adaptive.maximum)
    if len(load.stages) > MAX_STAGES:
        raise make("stages", f"{len(load.stages):,} stages (at most {MAX_STAGES:,})")
    for stage in load.stages:
        if model == "open":
            rate("stages", stage.target / segments)
        else:
            workers("stages", stage.target / segments)
        above("stages", stage.duration, MAX_DURATION, "s", "a stage of a year", False)
    if load.duration is not None:
        above("duration", load.duration, MAX_DURATION, "s", "a run of a year", False)
    if connections is not None:
        above("connections", connections, MAX_CONNECTIONS, "", "the ports of one address", False)
    length = load.effective_duration
    if model == "open" and length is not None:
        peak = max([load.rate or 0.0, *(s.target for s in load.stages)])
        scheduled = peak * length / segments
        if not math.isfinite(scheduled) or scheduled > MAX_SCHEDULED:
            raise make(
                "rate",
                f"{scheduled:.3g} requests over the run is more than Ballista counts "
                f"exactly ({MAX_SCHEDULED:.3g}): lower the rate or the duration",
            )


def _plain_error(key: str, why: str) -> ConfigError:
    return ConfigError(f"{key}: {why}")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything the engine needs to run one test."""

    origin: Origin
    requests: tuple[RequestSpec, ...]
    load: LoadSpec = field(default_factory=LoadSpec)
    protocol: Protocol = "auto"
    connections: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    insecure: bool = False
    interval: float = DEFAULT_INTERVAL
    scenario: str = "default"
    #: parsed once, where the configuration was built
    thresholds: tuple[Threshold, ...] = ()
    #: extra CA bundle for https targets (tests use trustme's).
    ca_file: str | None = None
    #: user journeys (docs/journeys.md): when set, virtual users run these flows
    #: instead of picking from `requests`
    journeys: Journeys | None = None
    #: `--segment I/N`: this process runs that share of the test (core/segment.py:
    #: the load above is the segment's own, except the rate and the stages, which
    #: stay the test's and are shared by the engine)
    segment: Segment | None = None
    #: the whole test's fingerprint, set on a segment's config (`segment.fingerprint`)
    test: str | None = None
    #: `--start-at`: the wall-clock instant (Unix seconds) the run starts at
    start_at: float | None = None

    @property
    def url(self) -> str:
        return self.origin.url(self.requests[0].target)
