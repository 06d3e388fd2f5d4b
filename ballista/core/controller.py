"""The adaptive concurrency controller (AIMD over windows of samples), sans-IO.

Fed every finished request as `(now, sample)`, it answers the concurrency
limit: slow start doubles it, then additive increase while windows show no
congestion, multiplicative decrease when one does. It reads no clock and
imports no trio, so tests drive it step by step.

The shape follows Netflix's concurrency-limits (WindowedLimit around
AIMDLimit: windows of about twice the recent latency, at least a floor, and
a minimum sample count) with two refinements for a load generator:
completions of requests sent before the last decrease are ignored (they
measured the old limit), and a decrease goes no lower than half the limit
but as low as the concurrency the target was seen to accept (Little's law)
or in proportion to how far latency overshot the target, so a target that
loses half its capacity is found within a window or two rather than a
dozen 10% steps.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ballista.core.config import AdaptiveSpec
from ballista.core.errors import ConfigError
from ballista.core.histogram import Histogram
from ballista.core.outcome import NO_ERROR, ErrorKind, Sample
from ballista.core.snapshot import Snapshot

#: Error kinds that say the target (or the path to it) is overloaded.
CONGESTION_ERRORS: frozenset[int] = frozenset(
    {
        ErrorKind.CONNECT_REFUSED,
        ErrorKind.CONNECT_TIMEOUT,
        ErrorKind.READ_TIMEOUT,
        ErrorKind.WRITE_TIMEOUT,
        ErrorKind.POOL_TIMEOUT,
        ErrorKind.RESET,
        ErrorKind.REFUSED_STREAM,
        ErrorKind.GOAWAY,
    }
)

#: A single decrease never cuts the limit below this fraction of it.
DEEPEST_CUT = 0.5
#: `settled_limit()` is the median of the limits of this many last windows.
SETTLE_WINDOWS = 10


@dataclass(frozen=True, slots=True)
class Window:
    """What one closed window saw and what the controller decided from it."""

    start: float
    end: float
    #: the limit in force while the window was open
    limit: int
    #: samples counted (sent after the last decrease)
    samples: int
    #: of them, congestion signals (errors of CONGESTION_ERRORS, congestion statuses)
    signals: int
    #: the chosen latency percentile of the other samples, seconds (0.0 if none)
    percentile: float
    #: their median latency, seconds
    median: float
    #: completions that were not congestion signals, per second
    throughput: float
    #: "" when not congested, else why: "latency", "signals"
    congestion: str
    #: what the controller did: "double" (slow start), "increase", "decrease", "hold"
    action: str
    #: the limit decided at the end of the window
    next_limit: int


class AimdController:
    """AIMD concurrency limit over windows of samples. Implements the engine's
    `LimitController` protocol: `limit` and `on_sample(now, sample) -> int`."""

    def __init__(self, spec: AdaptiveSpec) -> None:
        self.spec = spec
        self._limit = min(max(spec.initial, spec.minimum), spec.maximum)
        self._slow_start = spec.slow_start
        self._statuses = spec.congestion_statuses
        self._q = spec.percentile
        self._target = spec.latency_target
        # the current window
        self._start: float | None = None
        self._hist = Histogram()
        self._samples = 0
        self._signals = 0
        self._accepted_time = 0.0
        self._length = spec.window_min
        #: requests sent before this instant (the last decrease plus about one latency)
        #: measured an older, larger limit
        self._decreased_at = -math.inf
        #: no increase before this instant: the target asked for it with Retry-After
        self._cooldown_until = -math.inf
        self.windows_closed = 0
        self.decreases = 0
        #: the last windows with the latency histogram of each
        self._recent: deque[tuple[Window, Histogram]] = deque(maxlen=SETTLE_WINDOWS)

    # -- the protocol ---------------------------------------------------------

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_slow_start(self) -> bool:
        return self._slow_start

    @property
    def windows(self) -> tuple[Window, ...]:
        """The last closed windows (at most SETTLE_WINDOWS), oldest first."""
        return tuple(w for w, _ in self._recent)

    def on_sample(self, now: float, sample: Sample) -> int:
        """Account one finished request (completed at `now`); return the limit."""
        signal = (sample.error != NO_ERROR and sample.error in CONGESTION_ERRORS) or (
            sample.status in self._statuses
        )
        if not signal:
            # Work the target accepted, whenever it was sent: the sum of the latencies
            # of what completes in a window, over its length, is the concurrency the
            # target served meanwhile (Little's law).
            self._accepted_time += sample.latency
        if now - sample.latency < self._decreased_at:
            return self._limit
        start = self._start
        if start is None:
            start = self._start = now - sample.latency
        self._samples += 1
        if signal:
            self._signals += 1
        else:
            self._hist.record(sample.latency)
        elapsed = now - start
        spec = self.spec
        if (elapsed >= self._length and self._samples >= spec.window_samples) or (
            elapsed >= spec.window_max
        ):
            self._close(now)
        return self._limit

    def on_retry_after(self, now: float, seconds: float) -> None:
        """A 429/503 said `Retry-After: seconds`: hold the limit (no increase, no
        slow start) until then. The response itself already counts as a signal."""
        self._cooldown_until = max(self._cooldown_until, now + max(0.0, seconds))

    @property
    def cooling_down_until(self) -> float:
        return self._cooldown_until

    # -- windows --------------------------------------------------------------

    def _close(self, now: float) -> None:
        spec = self.spec
        start = self._start if self._start is not None else now
        duration = max(now - start, 1e-9)
        hist = self._hist
        good = hist.count
        pct, median = hist.percentiles((self._q, 50.0)) if good else (0.0, 0.0)
        limit = self._limit
        congestion = ""
        if self._signals > spec.congestion_tolerance * self._samples:
            congestion = "signals"
        elif good and pct > self._target:
            congestion = "latency"
        if congestion:
            new = self._decrease(limit, pct, self._accepted_time / duration)
            self._slow_start = False
            action = "decrease"
            if new < limit:
                # Requests still in flight were sent under the old limit and keep the
                # target busy for about one more latency: what is sent meanwhile meets
                # the old load, so it is not held against the new limit either.
                self._decreased_at = now + min(pct, spec.window_max)
                self.decreases += 1
        elif now < self._cooldown_until:
            new = limit
            action = "cooldown"
        elif self._slow_start:
            new = min(spec.maximum, limit * 2)
            action = "double"
        else:
            new = min(spec.maximum, limit + spec.increase)
            action = "increase"
        if new == limit and action != "cooldown":
            action = "hold"
        window = Window(
            start=start,
            end=now,
            limit=limit,
            samples=self._samples,
            signals=self._signals,
            percentile=pct,
            median=median,
            throughput=good / duration,
            congestion=congestion,
            action=action,
            next_limit=new,
        )
        self._recent.append((window, hist))
        self.windows_closed += 1
        self._limit = new
        if good:
            # about twice the latency, so a window sees each worker's request at least twice
            self._length = min(spec.window_max, max(spec.window_min, 2.0 * median))
        # The next window begins now: it counts only what completes from here on.
        self._start = now
        self._hist = Histogram()
        self._samples = 0
        self._signals = 0
        self._accepted_time = 0.0

    def _decrease(self, limit: int, pct: float, accepted: float) -> int:
        """The limit after a congested window.

        At least the usual multiplicative step (limit * backoff), deeper when
        the window shows the target is far below the limit: latency overshot
        the target by a factor (cut in proportion), or the requests it
        accepted kept fewer in flight than the limit (Little's law: the sum of
        their latencies over the window's length). Never below half the limit.
        """
        spec = self.spec
        level = limit * spec.backoff
        if pct > self._target:
            level = min(level, limit * self._target / pct)
        if self._signals > spec.congestion_tolerance * self._samples:
            level = min(level, accepted)
        level = max(level, limit * DEEPEST_CUT)
        new = min(math.floor(level), limit - 1)
        return max(spec.minimum, new)

    # -- results --------------------------------------------------------------

    def _settled_windows(self) -> list[tuple[Window, Histogram]]:
        recent = list(self._recent)
        # Slow start's doubling is a search, not a level: leave it out when there is more.
        steady = [(w, h) for w, h in recent if w.action != "double"]
        return steady or recent

    def settled_limit(self) -> int:
        """The limit the controller settled at: the median of the last windows' limits
        (the current limit when no window has closed yet)."""
        windows = self._settled_windows()
        if not windows:
            return self._limit
        limits = sorted(w.limit for w, _ in windows)
        mid = len(limits) // 2
        if len(limits) % 2:
            return limits[mid]
        return round((limits[mid - 1] + limits[mid]) / 2)

    def capacity_note(self, final: Snapshot) -> str:
        """One line for the summary: "sustains about N concurrent requests, X requests/s
        at p95 Y ms", from the windows the limit settled over (the whole run's figures
        when none closed)."""
        label = f"p{self._q:g}"
        windows = self._settled_windows()
        n = self.settled_limit()
        if windows:
            merged = Histogram()
            for _, h in windows:
                merged.merge(h)
            span = sum(w.end - w.start for w, _ in windows)
            good = merged.count
            rate = good / span if span > 0 else 0.0
            latency = merged.percentile(self._q)
        else:
            rate = final.rps
            latency = final.histogram.percentile(self._q)
        return (
            f"sustains about {n} concurrent requests, "
            f"{_format_rate(rate)} requests/s at {label} {_format_ms(latency)}"
        )


def _format_rate(rate: float) -> str:
    if rate >= 100:
        return f"{rate:,.0f}"
    return f"{rate:.3g}"


def _format_ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f} ms"
    return f"{ms:.3g} ms"


def build_controller(spec: AdaptiveSpec) -> AimdController:
    """The controller `ballista run --adaptive` uses. Raises ConfigError on bad parameters."""
    return AimdController(spec)


def parse_statuses(text: str, *, what: str = "--congestion-status") -> frozenset[int]:
    """`429,503` -> {429, 503}; `none` -> no status counts as congestion."""
    raw = text.strip()
    if raw.lower() == "none":
        return frozenset()
    out: set[int] = set()
    for part in raw.split(","):
        item = part.strip()
        if not item.isdigit() or not 100 <= int(item) <= 599:
            raise ConfigError(f"{what}: {item!r} is not an HTTP status")
        out.add(int(item))
    return frozenset(out)
