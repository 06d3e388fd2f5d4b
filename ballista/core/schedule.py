"""Load shapes as plain functions of time: stage ramps and open-model arrival times.

Sans-IO: nothing here reads a clock or sleeps. Times are seconds from the
start of the run; the engine adds its own start time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from ballista.core.config import Stage
from ballista.core.durations import parse_duration
from ballista.core.errors import ConfigError


def parse_stages(text: str) -> tuple[Stage, ...]:
    """`30s:100,2m:100,30s:0` -> stages (ramp to 100 over 30 s, hold 2 min, ramp to 0)."""
    stages: list[Stage] = []
    for i, part in enumerate(p.strip() for p in text.split(",")):
        dur, sep, value = part.partition(":")
        if not sep:
            raise ConfigError(f"--stages: stage {i + 1} {part!r} must be DURATION:TARGET")
        duration = parse_duration(dur, what=f"--stages: stage {i + 1} duration")
        try:
            target = float(value)
        except ValueError:
            raise ConfigError(
                f"--stages: stage {i + 1} target {value.strip()!r} is not a number"
            ) from None
        if not math.isfinite(target) or target < 0:
            raise ConfigError(f"--stages: stage {i + 1} target must be a number >= 0")
        stages.append(Stage(duration, target))
    if not any(s.duration > 0 for s in stages):
        raise ConfigError("--stages: the stages last no time at all")
    return tuple(stages)


class Ramp:
    """A piecewise-linear value over time: starts at `start`, then follows the stages.

    After the last stage the value holds at the last target.
    """

    def __init__(self, stages: Sequence[Stage], start: float = 0.0) -> None:
        # Segments as (t0, t1, v0, v1).
        self.segments: list[tuple[float, float, float, float]] = []
        t, v = 0.0, start
        for s in stages:
            self.segments.append((t, t + s.duration, v, s.target))
            t, v = t + s.duration, s.target
        self.end = t
        self.final = v
        self.start = start

    def value(self, t: float) -> float:
        for t0, t1, v0, v1 in self.segments:
            if t < t1:
                if t1 == t0:
                    return v1
                return v0 + (v1 - v0) * (max(t, t0) - t0) / (t1 - t0)
        return self.final

    def integral(self, t: float) -> float:
        """The area under the value from 0 to t (requests, when the value is a rate)."""
        total = 0.0
        for t0, t1, v0, v1 in self.segments:
            if t <= t0:
                return total
            end = min(t, t1)
            if t1 > t0:
                v_end = v0 + (v1 - v0) * (end - t0) / (t1 - t0)
                total += (v0 + v_end) * (end - t0) / 2
            if t < t1:
                return total
        return total + self.final * (t - self.end)

    def time_of_integral(self, area: float) -> float | None:
        """The first time t with integral(t) == area, or None if it is never reached."""
        total = 0.0
        for t0, t1, v0, v1 in self.segments:
            dt = t1 - t0
            seg = (v0 + v1) * dt / 2
            if total + seg >= area and dt > 0 and seg > 0:
                need = area - total
                slope = (v1 - v0) / dt
                # v0*x + slope*x^2/2 = need, the root in [0, dt], in the form that
                # neither divides by a zero slope nor cancels when v0 is large.
                root = v0 + math.sqrt(max(v0 * v0 + 2 * slope * need, 0.0))
                x = 2 * need / root if root > 0 else 0.0
                return t0 + min(max(x, 0.0), dt)
            total += seg
        if area - total <= 1e-12 * max(1.0, abs(total)):
            # Reached at the end: integral() sums the same segments in another
            # order, so "all of it" may exceed this total by a rounding error.
            return self.end
        if self.final <= 0:
            return None
        return self.end + (area - total) / self.final

    def next_step(self, t: float, current: int) -> float | None:
        """The first time after t when floor(value) differs from `current`, or None."""
        for t0, t1, v0, v1 in self.segments:
            if t1 <= t or t1 == t0:
                continue
            lo = max(t, t0)
            v_lo = v0 + (v1 - v0) * (lo - t0) / (t1 - t0)
            if math.floor(v_lo + 1e-9) != current:
                return lo
            if v1 > v0:
                goal = current + 1
                if v1 + 1e-9 >= goal:
                    return t0 + (goal - v0) * (t1 - t0) / (v1 - v0)
            elif v1 < v0:
                goal = current  # falls below `current` when it drops under it
                if v1 < goal - 1e-9:
                    # floor drops as soon as the value goes below `current`.
                    return t0 + (goal - v0) * (t1 - t0) / (v1 - v0) + 1e-9
        if math.floor(self.final + 1e-9) != current and t < self.end:
            return self.end
        return None

    def level(self, t: float) -> int:
        """The whole number the value stands at (concurrency is counted in workers)."""
        return math.floor(self.value(t) + 1e-9)


class Arrivals:
    """The open model's send times: the k-th request is due when the rate's
    integral reaches k (constant gaps), or a Poisson process with that intensity.

    `stride` and `phase` make it one segment's part of that schedule: arrivals
    phase, phase + stride, phase + 2 * stride, ... of the one-process schedule,
    at exactly the times it gives them (a Poisson schedule draws every gap of the
    whole, so the N segments must share the seed).
    """

    def __init__(
        self,
        ramp: Ramp,
        *,
        poisson: bool = False,
        seed: int | None = None,
        stride: int = 1,
        phase: int = 0,
    ) -> None:
        if not 0 <= phase < stride:
            raise ValueError(f"arrivals: phase {phase} of stride {stride}")
        self._ramp = ramp
        self._poisson = poisson
        self._rng = random.Random(seed)
        self._stride = stride
        self._area = 0.0
        self.count = 0
        self._advance(phase)

    def _advance(self, arrivals: int) -> None:
        """Move the pending arrival `arrivals` places on in the one-process schedule."""
        if not self._poisson:
            # Whole numbers: exact in a float, so every segment's times are the
            # very floats the one-process schedule computes.
            self._area += arrivals
            return
        area, gap = self._area, self._rng.expovariate
        for _ in range(arrivals):
            area += gap(1.0)
        self._area = area

    def next(self) -> float | None:
        """The time of the next request (seconds from the start), or None if none comes."""
        t = self._ramp.time_of_integral(self._area)
        if t is None:
            return None
        self.count += 1
        self._advance(self._stride)
        return t

    def skip_before(self, t: float, limit: int | None = None) -> int:
        """Pass over every request due before `t` (at most `limit`); return how many.

        The same requests `next()` would have returned one by one, in O(1): a
        generator that fell behind a rate of 10^9/s catches up in one call.
        """
        ramp = self._ramp
        first = ramp.time_of_integral(self._area)
        if first is None or first >= t or limit == 0:
            return 0
        area = ramp.integral(t)
        stride = self._stride
        if self._poisson:
            # The pending arrival, then those a Poisson process puts in the rest of
            # the area (of the whole schedule, this segment's every stride-th); past
            # `t` the whole schedule's next gap starts afresh (memoryless), and this
            # segment's next arrival is the next one of its phase.
            whole = 1 + _poisson(self._rng, max(area - self._area, 0.0))
            n = -(-whole // stride)
            if limit is not None:
                n = min(n, limit)
            self._area = max(area, self._area)
            self._advance(max(1, n * stride - whole + 1))
        else:
            n = max(1, math.ceil((area - self._area) / stride))
            # Float rounding may put the estimate one off: settle it on the same
            # times next() computes.
            while n > 1 and not _before(ramp.time_of_integral(self._area + (n - 1) * stride), t):
                n -= 1
            while _before(ramp.time_of_integral(self._area + n * stride), t):
                n += 1
            if limit is not None:
                n = min(n, limit)
            self._area += n * stride
        self.count += n
        return n


def _before(when: float | None, t: float) -> bool:
    return when is not None and when < t


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson-distributed count, in O(1) whatever the mean."""
    if mean < 10:
        # Knuth: multiply uniforms until the product falls below e^-mean.
        floor, k, p = math.exp(-mean), 0, rng.random()
        while p > floor:
            k += 1
            p *= rng.random()
        return k
    if mean > 1e7:
        # The normal approximation is off by less than the float error of PTRS here.
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    # Hörmann's PTRS (transformed rejection with squeeze), as numpy samples it.
    slam, loglam = math.sqrt(mean), math.log(mean)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        if us <= 0:  # u was -0.5 exactly: the formula divides by it
            continue
        k = math.floor((2 * a / us + b) * u + mean + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        if math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b) <= (
            -mean + k * loglam - math.lgamma(k + 1)
        ):
            return k


def constant(rate: float) -> Ramp:
    """A flat rate from the start."""
    return Ramp((), start=rate)
