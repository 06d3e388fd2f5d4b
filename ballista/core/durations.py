"""Parsing of the human quantities users type: durations, rates, percentages."""

from __future__ import annotations

import math
import re

from ballista.core.errors import ConfigError

_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(us|µs|ms|s|m|h|d)")


def parse_duration(text: str, *, what: str = "duration") -> float:
    """`500ms`, `30s`, `5m`, `2h`, `1h30m`, or a bare number of seconds -> seconds.

    Error messages start with `what: ` (nothing when `what` is empty).
    """
    prefix = f"{what}: " if what else ""
    s = text.strip().lower()
    if not s:
        raise ConfigError(f"{prefix}empty duration")
    try:
        value = float(s)
    except ValueError:
        pos = 0
        value = 0.0
        for m in _PART.finditer(s):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or pos == 0:
            raise ConfigError(
                f"{prefix}{text!r} is not a duration (use e.g. 500ms, 30s, 5m, 2h)"
            ) from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{prefix}{text!r} must be a finite duration >= 0")
    return value


def format_duration(seconds: float) -> str:
    """Seconds -> a short human string with a unit (`1.23ms`, `4.5s`, `2m03s`)."""
    if math.isnan(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f}ms"
    if seconds < 60.0:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def parse_share(text: str, *, what: str = "share") -> float:
    """`0.9` or `90%` -> 0.9: a share of one, finite and >= 0 (callers bound it above).

    Error messages start with `what: ` (nothing when `what` is empty).
    """
    prefix = f"{what}: " if what else ""
    raw = text.strip()
    scale = 1.0
    if raw.endswith("%"):
        raw, scale = raw[:-1].strip(), 0.01
    try:
        value = float(raw) * scale
    except ValueError:
        raise ConfigError(f"{prefix}{text!r} is not a number or a percentage") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{prefix}{text!r} must be a finite share >= 0 (e.g. 0.9 or 90%)")
    return value
