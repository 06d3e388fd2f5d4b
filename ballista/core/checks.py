"""Checks of TOML journeys: one step's `check = {...}` table compiled into one `Check`.

`body_contains`, `json`, `json_exists` and `latency_under`, each turned into
a test of a response with a fixed reason (`cart: json cart.items is not 3`),
so failure reasons are a small set named by the configuration, never text
seen at run time. The step's checks run in one function, which parses a JSON
body at most once. `status` is not a test here: it is the set of statuses
the session expects (`Session.request(expect=...)`), which fails any other
with reason `status <code>` before the checks run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ballista.core.durations import format_duration, parse_duration
from ballista.core.errors import ConfigError
from ballista.core.extract import MISSING, ExtractError, JsonPath, json_path, walker
from ballista.core.journey import Check, Response
from ballista.core.template import text_of

KEYS = ("status", "body_contains", "json", "json_exists", "latency_under")


class CheckError(ValueError):
    """A check that cannot be compiled: `key` is the key under `check` at fault."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(why)
        self.key = key
        self.why = why


def _same(found: Any, expected: Any) -> bool:
    """JSON equality that keeps true apart from 1 (Python's == does not)."""
    if isinstance(expected, bool) or isinstance(found, bool):
        return type(found) is type(expected) and found == expected
    if isinstance(expected, int | float) and isinstance(found, int | float):
        return found == expected
    if isinstance(expected, list) and isinstance(found, list):
        return len(found) == len(expected) and all(map(_same, found, expected))
    if isinstance(expected, dict) and isinstance(found, dict):
        return found.keys() == expected.keys() and all(
            _same(found[k], expected[k]) for k in expected
        )
    return type(found) is type(expected) and found == expected


def _plain(value: Any, key: str) -> None:
    """Check values are literals: TOML dates, and templates, are refused by name."""
    if isinstance(value, str):
        if "{{" in value:
            raise CheckError(
                key, "checks compare with literal values: a template is not expanded here"
            )
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain(v, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            _plain(v, f"{key}.{k}")
    elif not isinstance(value, bool | int | float) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        raise CheckError(key, "must be a JSON value (string, number, boolean, array, table)")


def statuses_of(value: Any) -> frozenset[int]:
    codes = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(codes, list) or not codes:
        raise CheckError("status", "must be an HTTP status or a list of them, e.g. [200, 201]")
    for j, code in enumerate(codes):
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise CheckError(f"status[{j}]", "must be an HTTP status (100-599)")
    return frozenset(codes)


Test = Callable[[Response, list[Any]], str | None]


def compile_checks(
    step: str, table: Mapping[str, Any]
) -> tuple[Check | None, frozenset[int] | None]:
    """The `check` table of step `step` -> (one Check or None, the statuses it expects or None).

    CheckError names the key at fault. The reasons start with the step's name.
    """
    for k in table:
        if k not in KEYS:
            raise CheckError(k, f"unknown check (expected one of: {', '.join(KEYS)})")
    tests: list[Test] = []
    statuses: frozenset[int] | None = None
    if "status" in table:
        statuses = statuses_of(table["status"])
    if "latency_under" in table:
        raw = table["latency_under"]
        try:
            if not isinstance(raw, str):
                raise ConfigError("not a string")
            limit = parse_duration(raw)
        except ConfigError:
            raise CheckError("latency_under", "must be a duration such as 300ms") from None
        if limit <= 0:
            raise CheckError("latency_under", "must be longer than 0")
        reason_late = f"{step}: latency over {format_duration(limit)}"
        tests.append(lambda r, _: None if r.elapsed < limit else reason_late)
    if "body_contains" in table:
        raw = table["body_contains"]
        needles = [raw] if isinstance(raw, str) else raw
        if (
            not isinstance(needles, list)
            or not needles
            or not all(isinstance(n, str) and n for n in needles)
        ):
            raise CheckError("body_contains", "must be a non-empty string or a list of them")
        _plain(needles, "body_contains")
        for needle in needles:
            tests.append(_contains(step, needle))
    if "json_exists" in table:
        raw = table["json_exists"]
        paths = [raw] if isinstance(raw, str) else raw
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise CheckError("json_exists", 'must be a list of dotted paths, e.g. ["token"]')
        for j, path in enumerate(paths):
            tests.append(_exists(step, path, f"json_exists[{j}]"))
    if "json" in table:
        raw = table["json"]
        if not isinstance(raw, dict) or not raw:
            raise CheckError(
                "json", 'must be a table of dotted path = value, e.g. { "cart.items" = 3 }'
            )
        for path, expected in raw.items():
            _plain(expected, f"json.{path}")
            tests.append(_equals(step, path, expected, f"json.{path}"))
    if not tests and statuses is None:
        raise CheckError("", f"is empty (give one of: {', '.join(KEYS)})")
    return (_combined(tuple(tests)) if tests else None), statuses


def _contains(step: str, needle: str) -> Test:
    reason = f"{step}: body does not contain {needle!r}"
    encoded = needle.encode()
    return lambda r, _: None if encoded in r.content else reason


def _segments(path: str, key: str) -> JsonPath:
    try:
        return json_path(path)
    except ExtractError as exc:
        raise CheckError(key, str(exc).removeprefix("json:")) from None


def _document(r: Response, doc: list[Any]) -> Any:
    """The parsed body, parsed once for all the step's JSON checks (`doc` holds it)."""
    if not doc:
        try:
            doc.append(r.json())
        except ValueError:
            doc.append(MISSING)
    return doc[0]


def _exists(step: str, path: str, key: str) -> Test:
    walk = walker(_segments(path, key))
    reason = f"{step}: json {path} missing"

    def test(r: Response, doc: list[Any]) -> str | None:
        body = _document(r, doc)
        return reason if body is MISSING or walk(body) is MISSING else None

    return test


def _equals(step: str, path: str, expected: Any, key: str) -> Test:
    walk = walker(_segments(path, key))
    reason = f"{step}: json {path} is not {text_of(expected) if not isinstance(expected, str) else repr(expected)}"

    def test(r: Response, doc: list[Any]) -> str | None:
        body = _document(r, doc)
        found = MISSING if body is MISSING else walk(body)
        return None if found is not MISSING and _same(found, expected) else reason

    return test


def _combined(tests: tuple[Test, ...]) -> Check:
    def check(r: Response) -> str | None:
        doc: list[Any] = []
        for test in tests:
            reason = test(r, doc)
            if reason is not None:
                return reason
        return None

    return check
