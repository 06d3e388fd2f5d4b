"""Facts about a run that are not statistics (target, model, start, thresholds, notes)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ballista.core.snapshot import Snapshot

#: Open model: scheduler lag (with free slots) above this is reported as Ballista's own limit.
LAG_WARNING = 0.010


@dataclass(frozen=True, slots=True)
class RunMeta:
    """Facts about a run that are not statistics."""

    target: str
    model: str
    protocol: str
    started_at: dt.datetime
    concurrency: int | None
    connections: int
    final_limit: int | None = None
    thresholds: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    notes: Sequence[str] = field(default_factory=tuple)
    #: the sending window (Engine.sending_duration); the snapshot's elapsed if None
    duration: float | None = None
    #: `--segment`: (index, count) of this segment, and the fingerprint of its test
    segment: tuple[int, int] | None = None
    test: str | None = None

    def duration_of(self, snap: Snapshot) -> float:
        return snap.elapsed if self.duration is None else self.duration

    def rps_of(self, snap: Snapshot) -> float:
        d = self.duration_of(snap)
        return snap.requests / d if d > 0 else 0.0


def iso_utc(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
