"""Figures of journeys' flows: iterations started, completed, failed (by reason), durations.

Sans-IO and bounded: one tally per configured flow, at most MAX_REASONS
distinct failure reasons each (later ones share `other`), one duration
histogram each. Time is an argument; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ballista.core.histogram import Histogram
from ballista.core.snapshot import LatencySummary

#: Distinct failure reasons kept per flow: reasons come from check names and step
#: names (configuration), but a Python journey may make up its own.
MAX_REASONS = 32
OTHER_REASON = "other"
#: Longer reasons are cut to this many characters (they become metric labels).
MAX_REASON_LENGTH = 120
#: The reason an iteration failed when the journey's own code raised an exception.
JOURNEY_ERROR = "journey_error"
#: The flow name under which `setup` runs are counted.
SETUP_FLOW = "setup"


@dataclass(frozen=True, slots=True)
class FlowStats:
    """Cumulative figures of one flow.

    `iterations` = `completed` + `failed` + `interrupted` + those still running.
    An interrupted iteration was cut short by the end of the run: neither a
    success nor a failure of the target.
    """

    name: str
    iterations: int
    completed: int
    failed: int
    interrupted: int
    failures_by_reason: Mapping[str, int]
    #: durations of the iterations that ended (completed or failed)
    duration: LatencySummary
    histogram: Histogram = field(repr=False)

    @property
    def running(self) -> int:
        return self.iterations - self.completed - self.failed - self.interrupted

    @property
    def failure_rate(self) -> float:
        """Share of the iterations that ended which failed."""
        ended = self.completed + self.failed
        return self.failed / ended if ended else 0.0

    def as_dict(self) -> dict[str, object]:
        """The flow's object under `"flows"` in the JSON summary and the live stream."""
        return {
            "iterations": self.iterations,
            "completed": self.completed,
            "failed": self.failed,
            "interrupted": self.interrupted,
            "failure_rate": self.failure_rate,
            "failures_by_reason": dict(sorted(self.failures_by_reason.items())),
            "duration_s": {k: round(v, 9) for k, v in self.duration.as_dict().items()},
        }


class _FlowTally:
    __slots__ = ("completed", "failed", "histogram", "interrupted", "reasons", "started")

    def __init__(self) -> None:
        self.started = 0
        self.completed = 0
        self.failed = 0
        self.interrupted = 0
        self.reasons: dict[str, int] = {}
        self.histogram = Histogram()


class FlowRecorder:
    """Counts iterations per flow (by index, in configuration order)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._tallies = [_FlowTally() for _ in self.names]

    def started(self, flow: int) -> None:
        self._tallies[flow].started += 1

    def completed(self, flow: int, seconds: float) -> None:
        tally = self._tallies[flow]
        tally.completed += 1
        tally.histogram.record(seconds)

    def failed(self, flow: int, reason: str, seconds: float) -> None:
        if not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH:
            # A Python journey may give any object, or a whole response body.
            reason = str(reason)[:MAX_REASON_LENGTH]
        tally = self._tallies[flow]
        tally.failed += 1
        tally.histogram.record(seconds)
        reasons = tally.reasons
        if reason not in reasons and len(reasons) >= MAX_REASONS:
            reason = OTHER_REASON
        reasons[reason] = reasons.get(reason, 0) + 1

    def interrupted(self, flow: int) -> None:
        self._tallies[flow].interrupted += 1

    def snapshot(self) -> tuple[FlowStats, ...]:
        return tuple(
            FlowStats(
                name=name,
                iterations=t.started,
                completed=t.completed,
                failed=t.failed,
                interrupted=t.interrupted,
                failures_by_reason=dict(t.reasons),
                duration=t.histogram.summary(),
                histogram=t.histogram.copy(),
            )
            for name, t in zip(self.names, self._tallies, strict=True)
        )
