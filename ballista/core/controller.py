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

Three more keep a target that rejects at once (429, 503, REFUSED_STREAM)
from being flooded by its own rejections: a slot whose request was turned
away fast waits out a typical latency before its next one (`pause_after`),
so an extra slot costs one rejection per latency rather than thousands; a
window closes early once its rejections clearly exceed the tolerance; and
once a limit has been rejected, going back to it is a probe spaced in time,
the spacing doubling while probes keep failing. Finally, latency over the
target that Ballista's own event loop lag accounts for (`on_lag`) is the
generator's, not the target's: the limit holds instead of falling.
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

#: Error kinds among CONGESTION_ERRORS that are a target turning a request away at once
#: (like the congestion statuses), rather than failing to serve it.
REJECTION_ERRORS: frozenset[int] = frozenset({ErrorKind.REFUSED_STREAM})

#: A single decrease never cuts the limit below this fraction of it.
DEEPEST_CUT = 0.5
#: `settled_limit()` is the median of the limits of this many last windows.
SETTLE_WINDOWS = 10
#: A window closes before its time once it holds this many congestion signals (and they
#: are over the tolerance): enough to be a rate rather than a fluke.
EARLY_SIGNALS = 5
#: A limit that was rejected is probed again no sooner than this many windows later...
PROBE_WINDOWS = 4
#: ...nor sooner than this many typical latencies (a slow target's windows are few).
PROBE_LATENCIES = 50
#: Each failed probe doubles the spacing, up to 2**PROBE_DOUBLINGS times the first.
PROBE_DOUBLINGS = 2
#: Wake-ups of the event loop a request waits for: on a saturated loop, measured
#: latencies run 1 to 5 times the lag of one wake-up (a sleep's), 1.5 typically.
LAG_WAKEUPS = 4


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
    #: "" when not congested, else why: "latency", "signals", or "generator" (latency
    #: over the target that Ballista's own event loop lag accounts for)
    congestion: str
    #: what the controller did: "double" (slow start), "increase", "decrease", "hold",
    #: "cooldown" (Retry-After), "wait" (a rejected limit is not probed again yet)
    action: str
    #: the limit decided at the end of the window
    next_limit: int
    #: of the signals, rejections (congestion statuses, refused streams)
    rejections: int = 0
    #: the chosen percentile of Ballista's event loop lag during the window, seconds
    lag: float = 0.0
    #: what kept the limit from rising: "" (nothing), "latency", "rejections",
    #: "errors", "generator", "maximum"
    limited_by: str = ""


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
        self._rejections = 0
        self._accepted_time = 0.0
        self._lags = Histogram()
        self._length = spec.window_min
        #: the median latency of accepted requests in the last window that had any
        self._typical: float | None = None
        #: until a window has closed: a running mean of accepted latencies
        self._early_typical: float | None = None
        #: the lowest limit a window was rejected at (None: none, or a probe passed since)
        self._ceiling: int | None = None
        #: "rejections" or "errors": what the ceiling's window saw most
        self._ceiling_cause = ""
        #: no increase to the ceiling before this instant
        self._probe_at = -math.inf
        #: probes of the ceiling that failed in a row
        self._failed_probes = 0
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

    def is_signal(self, sample: Sample) -> bool:
        """Whether `sample` says the target is overloaded (a congestion error or status)."""
        return (sample.error != NO_ERROR and sample.error in CONGESTION_ERRORS) or (
            sample.status in self._statuses
        )

    def on_sample(self, now: float, sample: Sample) -> int:
        """Account one finished request (completed at `now`); return the limit."""
        signal = self.is_signal(sample)
        if not signal:
            # Work the target accepted, whenever it was sent: the sum of the latencies
            # of what completes in a window, over its length, is the concurrency the
            # target served meanwhile (Little's law).
            self._accepted_time += sample.latency
            if self._typical is None:
                typical = self._early_typical
                self._early_typical = (
                    sample.latency if typical is None else typical + (sample.latency - typical) / 8
                )
        if now - sample.latency < self._decreased_at:
            return self._limit
        start = self._start
        if start is None:
            start = self._start = now - sample.latency
        self._samples += 1
        if signal:
            self._signals += 1
            if sample.status in self._statuses or sample.error in REJECTION_ERRORS:
                self._rejections += 1
        else:
            self._hist.record(sample.latency)
        elapsed = now - start
        spec = self.spec
        if (
            (elapsed >= self._length and self._samples >= spec.window_samples)
            or elapsed >= spec.window_max
            or (signal and self._clearly_congested(elapsed))
        ):
            self._close(now)
        return self._limit

    def _clearly_congested(self, elapsed: float) -> bool:
        """Enough signals, over the tolerance, over long enough to measure what the target
        accepted: waiting for the window's end would only add rejections."""
        signals = self._signals
        return (
            signals >= EARLY_SIGNALS
            and signals > self.spec.congestion_tolerance * self._samples
            and elapsed >= min(self._length, 2.0 * self.typical_latency)
        )

    @property
    def typical_latency(self) -> float:
        """The latency of an accepted request: the last window's median (a running mean
        before the first window closes; --window-min before any was accepted)."""
        if self._typical is not None:
            return self._typical
        if self._early_typical is not None:
            return self._early_typical
        return self.spec.window_min

    def pause_after(self, sample: Sample) -> float:
        """Seconds the slot that just finished `sample` waits before its next request.

        A congestion signal that came back faster than an accepted request
        would have (an instant 429, 503 or refused stream) keeps its slot busy
        for the rest of a typical latency: a slot above the target's capacity
        then costs one rejection per latency instead of spinning through
        thousands, and rejections keep the share of the traffic their slots have.
        """
        if not self.is_signal(sample):
            return 0.0
        return max(0.0, self.typical_latency - sample.latency)

    def on_lag(self, now: float, lag: float) -> None:
        """Ballista's event loop woke `lag` seconds late (measured at `now`): delay of
        the generator's own, which every latency in the window includes too."""
        self._lags.record(max(0.0, lag))

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
        lag = self._lags.percentile(self._q) if self._lags.count else 0.0
        limit = self._limit
        congestion = ""
        if self._signals > spec.congestion_tolerance * self._samples:
            congestion = "signals"
        elif good and pct > self._target:
            # A request waits for the event loop a few times (to connect, send, read,
            # resume its worker): when that many of the window's wake-up lags account
            # for the overshoot, the generator is the bottleneck, and a lower limit
            # would not make the target any faster.
            congestion = "latency" if pct - LAG_WAKEUPS * lag > self._target else "generator"
        cause = ""
        if congestion == "signals":
            cause = "rejections" if 2 * self._rejections >= self._signals else "errors"
        elif congestion:
            cause = congestion
        if congestion in ("signals", "latency"):
            new = self._decrease(limit, pct, self._accepted_time / duration, cause)
            self._slow_start = False
            action = "decrease"
            if new < limit:
                # Requests still in flight were sent under the old limit and keep the
                # target busy for about one more latency: what is sent meanwhile meets
                # the old load, so it is not held against the new limit either.
                self._decreased_at = now + min(pct, spec.window_max)
                self.decreases += 1
            if congestion == "signals":
                self._rejected_at(now, limit, cause)
        elif congestion == "generator":
            new = limit
            action = "hold"
        elif now < self._cooldown_until:
            new = limit
            action = "cooldown"
            cause = "rejections"
        else:
            if self._ceiling is not None and limit >= self._ceiling:
                # A probe of the rejected limit went through: the capacity grew.
                self._ceiling = None
                self._failed_probes = 0
            if self._slow_start:
                new = min(spec.maximum, limit * 2)
                action = "double"
            else:
                new = min(spec.maximum, limit + spec.increase)
                action = "increase"
            ceiling = self._ceiling
            if ceiling is not None and new >= ceiling and now < self._probe_at:
                new = max(limit, ceiling - 1)
                if new == limit:
                    action = "wait"
                    cause = self._ceiling_cause
            elif new == limit:
                cause = "maximum"
        if new == limit and action not in ("cooldown", "wait"):
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
            rejections=self._rejections,
            lag=lag,
            limited_by=cause,
        )
        self._recent.append((window, hist))
        self.windows_closed += 1
        self._limit = new
        if good:
            self._typical = median
            # about twice the latency, so a window sees each worker's request at least twice
            self._length = min(spec.window_max, max(spec.window_min, 2.0 * median))
        # The next window begins now: it counts only what completes from here on.
        self._start = now
        self._hist = Histogram()
        self._samples = 0
        self._signals = 0
        self._rejections = 0
        self._accepted_time = 0.0
        self._lags.reset()

    def _rejected_at(self, now: float, limit: int, cause: str) -> None:
        """A window at `limit` was turned away: remember the level, and do not come back
        to it before a while, longer each time a probe of it fails again."""
        ceiling = self._ceiling
        if ceiling is not None and limit >= ceiling:
            self._failed_probes = min(self._failed_probes + 1, PROBE_DOUBLINGS)
        self._ceiling = limit if ceiling is None else min(ceiling, limit)
        self._ceiling_cause = cause
        self._probe_at = now + self.probe_gap

    @property
    def probe_gap(self) -> float:
        """Seconds between probes of a rejected limit: several windows and many latencies,
        doubled for each probe that failed in a row."""
        first = max(PROBE_WINDOWS * self._length, PROBE_LATENCIES * self.typical_latency)
        return first * 2.0**self._failed_probes

    def _decrease(self, limit: int, pct: float, accepted: float, cause: str) -> int:
        """The limit after a congested window.

        Rejections say how much the target takes: the limit goes to the
        concurrency it accepted meanwhile (Little's law: the sum of their
        latencies over the window's length) or to the share of slots it did
        not turn away, whichever is lower, even when that is only one below.
        Otherwise at least the usual multiplicative step (limit * backoff),
        deeper when the window shows the target is far below the limit:
        latency overshot the target by a factor (cut in proportion), or, with
        errors, the requests it accepted kept fewer in flight than the limit.
        Never below half the limit.
        """
        spec = self.spec
        level: float
        if cause == "rejections":
            # Paced, a rejected slot sends as often as an accepted one: the share of
            # rejected requests is the share of slots above the capacity. Little's law
            # says the same for a target with no queue before its limiter; with one,
            # it counts the queue too, and the share still tells.
            kept = limit * (1.0 - self._signals / max(1, self._samples))
            level = math.floor(min(accepted, kept) + 0.5)
        else:
            level = limit * spec.backoff
            if cause == "errors":
                level = min(level, accepted)
        if pct > self._target:
            level = min(level, limit * self._target / pct)
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

    def limited_by(self) -> str:
        """What kept the limit where it settled: the most frequent `Window.limited_by` of
        the settled windows (the latest of equals), "" when nothing did."""
        causes = [w.limited_by for w, _ in self._settled_windows() if w.limited_by]
        if not causes:
            return ""
        counts = {c: causes.count(c) for c in causes}
        top = max(counts.values())
        return next(c for c in reversed(causes) if counts[c] == top)

    def capacity_note(self, final: Snapshot) -> str:
        """One line for the summary: "sustains about N concurrent requests, X requests/s
        at p95 Y ms; limited by ...", from the windows the limit settled over (the whole
        run's figures when none closed)."""
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
        note = (
            f"sustains about {n} concurrent requests, "
            f"{_format_rate(rate)} requests/s at {label} {_format_ms(latency)}"
        )
        if windows:
            note += f"; {self._limit_clause(final)}"
        return note

    def _limit_clause(self, final: Snapshot) -> str:
        cause = self.limited_by()
        if cause == "latency":
            return f"limited by the latency target (p{self._q:g} under {_format_ms(self._target)})"
        if cause == "rejections":
            counts = {str(s): n for s, n in final.status_codes.items() if s in self._statuses}
            refused = ErrorKind.REFUSED_STREAM.label
            counts[refused] = final.errors_by_kind.get(refused, 0)
            return f"limited by rejections ({_shares(counts, final.requests)})"
        if cause == "errors":
            kinds = {k.label for k in map(ErrorKind, CONGESTION_ERRORS - REJECTION_ERRORS)}
            counts = {k: n for k, n in final.errors_by_kind.items() if k in kinds}
            return f"limited by errors ({_shares(counts, final.requests)})"
        if cause == "generator":
            lag = max(w.lag for w in self.windows if w.limited_by == "generator")
            return (
                "limited by Ballista itself, not the target: its event loop ran "
                f"{_format_ms(lag)} late (p{self._q:g} of a window), which accounts for "
                "the latency over the target (give it more CPU or less company)"
            )
        if cause == "maximum":
            return f"limited by --max-concurrency {self.spec.maximum}"
        return "nothing pushed back: the limit was still rising"


def _shares(counts: dict[str, int], requests: int) -> str:
    """`503, refused_stream: 1.2% of requests` from the kinds that occurred."""
    seen = {k: n for k, n in counts.items() if n}
    pct = 100 * sum(seen.values()) / requests if requests else 0.0
    names = ", ".join(sorted(seen)) or "none in the totals"
    figure = f"{pct:.1f}" if pct >= 0.1 or pct == 0 else f"{pct:.2g}"
    return f"{names}: {figure}% of requests"


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
