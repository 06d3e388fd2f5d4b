"""Reading a JSON summary back (`ballista merge`, `ballista report`): checked, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ballista.core.errors import ConfigError
from ballista.core.histogram import HISTOGRAM_LAYOUT, Histogram
from ballista.core.timeline import Timeline

#: The summary schema this version writes and reads.
SUMMARY_SCHEMA = "ballista.summary/1"
#: Summaries larger than this are not read (a run of days is a few MB).
MAX_SUMMARY_BYTES = 256 * 1024 * 1024


def read_summary(path: str) -> dict[str, Any]:
    """The summary in `path`, or a ConfigError naming the file and what is wrong."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SUMMARY_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_SUMMARY_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_SUMMARY_BYTES >> 20} MiB: not a summary")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: not JSON ({_short(exc)}): not a Ballista summary") from None
    return check_summary(doc, path)


def check_summary(doc: Any, where: str) -> dict[str, Any]:
    """`doc` if it is a summary this version reads, else a ConfigError naming `where`."""
    if not isinstance(doc, dict) or "schema" not in doc:
        raise ConfigError(f"{where}: not a Ballista summary (no 'schema' key)")
    schema = doc["schema"]
    if not isinstance(schema, str) or not schema.startswith("ballista.summary/"):
        raise ConfigError(f"{where}: not a Ballista summary (schema {schema!r})")
    if schema != SUMMARY_SCHEMA:
        raise ConfigError(
            f"{where}: summary schema {schema!r} is not one this Ballista reads ({SUMMARY_SCHEMA})"
        )
    for key in ("requests", "latency_s", "status_codes"):
        if key not in doc:
            raise ConfigError(f"{where}: not a complete Ballista summary (no {key!r})")
    return doc


def histogram_of(
    doc: Mapping[str, Any], name: str | None = None, *, where: str = "summary"
) -> Histogram:
    """The latency histogram of the whole run, or of the request called `name`."""
    hists = doc.get("histograms")
    if not isinstance(hists, Mapping):
        raise ConfigError(f"{where}: the summary has no histograms (written by an older Ballista?)")
    if hists.get("layout") != HISTOGRAM_LAYOUT:
        raise ConfigError(
            f"{where}: histogram layout {hists.get('layout')!r} is not {HISTOGRAM_LAYOUT!r}"
        )
    what = "histograms.latency" if name is None else f"histograms.by_name.{name}"
    raw = hists.get("latency") if name is None else (hists.get("by_name") or {}).get(name)
    if raw is None:
        raise ConfigError(f"{where}: no {what}")
    try:
        return Histogram.from_dict(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {what}: {exc}") from None


def timeline_of(doc: Mapping[str, Any], *, where: str = "summary") -> Timeline | None:
    """The run over time, or None when the summary has none."""
    raw = doc.get("timeline")
    if raw is None:
        return None
    try:
        return Timeline.from_dict(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: timeline: {exc}") from None


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 80 else text[:77] + "..."
