"""Segments: one test cut into N equal shares that run in N processes and together
send exactly what one process would have sent (docs/scale-out.md).

A segment's RunConfig holds its own share of the closed model's workers, of the
request budget, of --max-in-flight, --connections and the adaptive bounds. The
rate and the stages stay the test's whole figures: the engine takes its share
of them (the open model's arrivals i, i+N, i+2N, ... of the one-process
schedule; a closed ramp's level L as `share(L)` workers), so the N segments add
up to the one-process run at every instant, not only on average.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ballista.core.config import MAX_DURATION, LoadSpec, RunConfig
from ballista.core.durations import format_duration
from ballista.core.errors import ConfigError

_SEGMENT = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")
#: A segment count past this is a slip, not a plan: the open model walks N gaps per arrival.
MAX_SEGMENTS = 10_000
#: How far in the past --start-at may be and still start (at once): a process
#: launched a moment late; further back it is a mistake, or a pod started too late.
START_AT_SLACK = 5.0
#: Version of what `fingerprint` hashes: bumped when the definition changes shape.
_FINGERPRINT_SCHEMA = "ballista.test/1"


@dataclass(frozen=True, slots=True)
class Segment:
    """Segment `index` (from 0, as Kubernetes' JOB_COMPLETION_INDEX) of `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 < self.count <= MAX_SEGMENTS or not 0 <= self.index < self.count:
            raise ValueError(f"no segment {self.index}/{self.count}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def share(self, total: int) -> int:
        """This segment's part of `total` whole things: the N parts add up to it,
        the remainder going one each to the lowest indexes. May be 0."""
        base, extra = divmod(total, self.count)
        return base + (1 if self.index < extra else 0)

    def offset(self, total: int) -> int:
        """Where this segment's part of `total` starts when the parts are laid end
        to end (segment 0 first): the parts are [offset, offset + share)."""
        base, extra = divmod(total, self.count)
        return self.index * base + min(self.index, extra)

    def owns(self, k: int) -> bool:
        """Whether the k-th (from 0) of a sequence shared round-robin is this segment's."""
        return k % self.count == self.index

    def global_index(self, local: int) -> int:
        """The test-wide number of this segment's `local`-th thing shared round-robin
        (a worker, a virtual user, an arrival): index + local * count. The first
        `share(L)` of a segment are exactly its part of the first L test-wide."""
        return self.index + local * self.count


def parse_segment(text: str, where: str = "--segment") -> Segment:
    """`I/N` -> Segment(I, N), with 0 <= I < N. ConfigError naming `where` otherwise."""
    m = _SEGMENT.match(text)
    if m is None:
        raise ConfigError(f"{where}: {text!r} is not I/N (e.g. 0/4: the first of 4 segments)")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1:
        raise ConfigError(f"{where}: {text!r}: a test has at least 1 segment")
    if count > MAX_SEGMENTS:
        raise ConfigError(f"{where}: {text!r}: at most {MAX_SEGMENTS:,} segments")
    if not 0 <= index < count:
        raise ConfigError(
            f"{where}: {text!r}: segments of {count} are numbered 0 to {count - 1}, from 0"
        )
    return Segment(index, count)


def split_config(
    config: RunConfig,
    seg: Segment,
    *,
    error: Callable[[str, str], ConfigError] | None = None,
) -> RunConfig:
    """This segment's share of the whole test `config` (see the module docstring).

    `error(key, why)` names a canonical key (`max_in_flight`, `connections`,
    `adaptive.max`, `model`) in the front end's terms, as `Layer.error` does.
    A share that cannot be cut (fewer connections than segments) is refused;
    a closed model's segment of zero workers or zero requests is allowed: it
    sends nothing and says so (`zero_share`).
    """
    if config.segment is not None:
        raise ValueError("split_config: this configuration is a segment already")
    make = error or _plain_error
    load = config.load
    if load.model == "sequential":
        raise make(
            "model", "the sequential model is one request at a time: it cannot be cut in segments"
        )
    n = seg.count

    def part(key: str, total: int, what: str) -> int:
        # Refused in every segment alike, not only in those that would get none.
        if total < n:
            raise make(key, f"{total:,} {what} cannot be split into {n:,} segments: at least {n:,}")
        return seg.share(total)

    connections = config.connections
    if connections is not None:
        connections = part("connections", connections, "connections")
    max_in_flight = load.max_in_flight
    if max_in_flight is not None:
        max_in_flight = part("max_in_flight", max_in_flight, "requests in flight")
    adaptive = load.adaptive
    if adaptive is not None:
        maximum = part("adaptive.max", adaptive.maximum, "workers (the adaptive maximum)")
        minimum = min(max(1, seg.share(adaptive.minimum)), maximum)
        initial = min(max(minimum, seg.share(adaptive.initial)), maximum)
        adaptive = dataclasses.replace(adaptive, maximum=maximum, minimum=minimum, initial=initial)
    new_load = dataclasses.replace(
        load,
        # The open model's concurrency is unused; a closed ramp's comes from its stages.
        concurrency=seg.share(load.concurrency) if load.model == "closed" else load.concurrency,
        requests=None if load.requests is None else _budget(load, seg, load.requests),
        max_in_flight=max_in_flight,
        adaptive=adaptive,
    )
    return dataclasses.replace(
        config,
        load=new_load,
        connections=connections,
        segment=seg,
        test=fingerprint(config),
    )


def _budget(load: LoadSpec, seg: Segment, total: int) -> int:
    """This segment's part of the -n budget: shared among the segments that send.
    A closed model's segment without workers could not spend a part."""
    takers = seg.count
    if load.model == "closed":
        top = load.concurrency
        if load.stages:
            top = max(1, math.ceil(max(s.target for s in load.stages)))
        takers = min(takers, top)
    if seg.index >= takers:
        return 0
    return Segment(seg.index, takers).share(total)


def _plain_error(key: str, why: str) -> ConfigError:
    return ConfigError(f"{key}: {why}")


def zero_share(config: RunConfig) -> str | None:
    """Why this segment sends nothing, when it does not; None otherwise."""
    seg = config.segment
    if seg is None:
        return None
    load = config.load
    if load.model == "closed" and closed_workers(config) == 0:
        return (
            f"segment {seg} has no worker: the test has fewer workers than its {seg.count} segments"
        )
    if load.requests == 0:
        return f"segment {seg} has no request of the -n budget (it is smaller than {seg.count})"
    return None


def closed_workers(config: RunConfig) -> int:
    """The most workers a closed model runs at once: -c, or the top of its ramp
    (this segment's share of it, for a segment)."""
    load = config.load
    if not load.stages:
        return load.concurrency
    top = max(1, math.ceil(max(s.target for s in load.stages)))
    return top if config.segment is None else config.segment.share(top)


def fingerprint(config: RunConfig) -> str:
    """A stable hash of the test's definition: what is sent, to where, with which
    load, sampled how often. Two segments of one test agree (a segment carries its
    test's); different tests differ. Not part of it: the segment, the start time,
    thresholds (verdicts on the figures, not the figures) and TLS trust settings."""
    if config.test is not None:
        return config.test
    load = config.load
    definition: dict[str, Any] = {
        "schema": _FINGERPRINT_SCHEMA,
        "origin": [config.origin.scheme, config.origin.host, config.origin.port],
        "requests": [
            {
                "name": r.name,
                "method": r.method,
                "target": r.target,
                "headers": [list(h) for h in r.headers],
                "body": hashlib.sha256(r.body).hexdigest(),
                "weight": r.weight,
                "expected": None if r.expected is None else sorted(r.expected),
            }
            for r in config.requests
        ],
        "load": {
            "model": load.model,
            "concurrency": load.concurrency,
            "rate": load.rate,
            "duration": load.duration,
            "requests": load.requests,
            "max_in_flight": load.max_in_flight,
            "stages": [[s.duration, s.target] for s in load.stages],
            "arrival": load.arrival,
            "adaptive": None
            if load.adaptive is None
            else {
                k: (sorted(v) if isinstance(v, frozenset) else v)
                for k, v in _fields(load.adaptive).items()
            },
        },
        "protocol": config.protocol,
        "connections": config.connections,
        "timeout": config.timeout,
        "interval": config.interval,
        "scenario": config.scenario,
        "journeys": None
        if config.journeys is None
        else {
            "flows": [[f.name, f.weight] for f in config.journeys.flows],
            "setup": config.journeys.setup is not None,
            "steps": list(config.journeys.step_names),
            "source": config.journeys.source,
        },
    }
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def arrival_seed(config: RunConfig) -> int:
    """The seed of Poisson arrivals every segment of one test shares, so that their
    schedules interleave into the one-process schedule."""
    return int(fingerprint(config), 16)


def parse_start_at(text: str, *, now: float, where: str = "--start-at") -> float:
    """`2026-12-01T10:00:00Z` (ISO 8601 with a zone) or Unix seconds -> Unix seconds.

    `now` is the wall clock (Unix seconds). An instant more than START_AT_SLACK
    seconds before it, or further ahead than a run may last, is refused.
    """
    raw = text.strip()
    try:
        when = float(raw)
    except ValueError:
        when = _iso_instant(raw, text, where)
    if not math.isfinite(when) or when <= 0:
        raise ConfigError(f"{where}: {text!r} is not a time")
    if when < now - START_AT_SLACK:
        raise ConfigError(
            f"{where}: {text!r} is {format_duration(now - when)} in the past "
            f"(at most {START_AT_SLACK:g}s is allowed): give a time to come"
        )
    if when > now + MAX_DURATION:
        raise ConfigError(
            f"{where}: {text!r} is more than a year away (Unix seconds, not milliseconds?)"
        )
    return when


def _iso_instant(raw: str, text: str, where: str) -> float:
    try:
        instant = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ConfigError(
            f"{where}: {text!r} is neither an ISO 8601 time (2026-12-01T10:00:00Z) nor Unix seconds"
        ) from None
    if instant.tzinfo is None:
        raise ConfigError(
            f"{where}: {text!r} has no time zone: add Z (UTC) or an offset such as +01:00, "
            "so that every machine reads the same instant"
        )
    return instant.timestamp()


def iso_instant(when: float) -> str:
    """Unix seconds as ISO 8601 in UTC, to the millisecond: what --start-at reads back."""
    instant = dt.datetime.fromtimestamp(when, dt.UTC)
    return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")
