"""Extractors of TOML journeys: `json:<path>`, `header:<name>`, `regex:<pattern>`, `cookie:<name>`.

Each is compiled once, when the file is loaded (a bad pattern or path is
refused then), into a function of a response that answers the value found or
`MISSING`. The step that extracts turns `MISSING` into a failed iteration
with a fixed reason, so reasons stay a small set named by the configuration.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ballista.core.journey import Response

#: What an extractor answers when the response does not hold what it looks for.
MISSING: Final = object()
KINDS = ("json", "header", "regex", "cookie")

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_INDEX = re.compile(r"-?\d+")
# Several Set-Cookie headers joined into one value: split at a comma that starts
# a new `name=` (an Expires date has a comma followed by a day number, not `=`).
_COOKIE_SPLIT = re.compile(r",(?=\s*[^;,=\s]+=)")


class ExtractError(ValueError):
    """An extractor that cannot be compiled; the message says why, the caller says where."""


@dataclass(frozen=True, slots=True)
class Extractor:
    """One compiled extractor: `find(response)` -> the value, or MISSING."""

    source: str
    kind: str
    find: Callable[[Response], Any]


#: A compiled JSON path: per segment, the key and, for a segment of digits, its
#: index (a segment applies to an object as a key, to a list as an index or `*`)
JsonPath = tuple[tuple[str, int | None], ...]


def json_path(path: str) -> JsonPath:
    """`items.0.id` -> its compiled segments; ExtractError for an empty one."""
    segments = tuple(path.split("."))
    if not path or any(not s for s in segments):
        raise ExtractError(
            f"json:{path}: a dotted path such as token, cart.items or items.0.id (no empty part)"
        )
    return tuple((s, int(s) if _INDEX.fullmatch(s) else None) for s in segments)


def walker(path: JsonPath) -> Callable[[Any], Any]:
    """The function that answers the value at `path` in a parsed JSON document, or
    MISSING.

    A segment is a key of an object, or an index of a list (from 0; -1 is the
    last; `*` is one element picked at random). The path is compiled into
    Python, one `if` a segment and no loop (this runs for every extraction of
    every step); its keys and indices are the generated code's constants, never
    its text.
    """
    lines = ["def walk(value):"]
    constants: dict[str, Any] = {"MISSING": MISSING, "choice": random.choice}
    for i, (key, index) in enumerate(path):
        constants[f"K{i}"] = key
        lines += [
            "    if value.__class__ is dict:",
            f"        value = value.get(K{i}, MISSING)",
            "        if value is MISSING:",
            "            return MISSING",
        ]
        if index is not None:
            constants[f"I{i}"] = index
            bound = f"len(value) <= I{i}" if index >= 0 else f"len(value) < -I{i}"
            lines += [
                "    elif value.__class__ is list:",
                f"        if {bound}:",
                "            return MISSING",
                f"        value = value[I{i}]",
            ]
        elif key == "*":
            lines += [
                "    elif value.__class__ is list and value:",
                "        value = choice(value)",
            ]
        lines += ["    else:", "        return MISSING"]
    lines.append("    return value")
    exec("\n".join(lines), constants)  # the text is ours; keys and indices are constants
    walk: Callable[[Any], Any] = constants["walk"]
    return walk


def _json(path: str) -> Callable[[Response], Any]:
    walk = walker(json_path(path))

    def find(r: Response) -> Any:
        try:
            doc = r.json()
        except ValueError:  # not JSON (json.JSONDecodeError and UnicodeDecodeError are both)
            return MISSING
        return walk(doc)

    return find


def _header(name: str) -> Callable[[Response], Any]:
    if not _TOKEN.match(name):
        raise ExtractError(f"header:{name}: {name!r} is not a header name")
    lower = name.lower()

    def find(r: Response) -> Any:
        value = r.headers.get(lower)
        return MISSING if value is None else value

    return find


def _regex(pattern: str) -> Callable[[Response], Any]:
    if not pattern:
        raise ExtractError("regex: needs a pattern, e.g. regex:id=(\\d+)")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ExtractError(f"regex:{pattern}: not a valid pattern: {exc}") from None
    group = 1 if compiled.groups else 0

    def find(r: Response) -> Any:
        match = compiled.search(r.text)
        if match is None:
            return MISSING
        value = match.group(group)
        return MISSING if value is None else value

    return find


def cookie_from(set_cookie: str, name: str) -> str | None:
    """The value `name` gets in a Set-Cookie value (or several joined by commas:
    the last that sets it)."""
    found = None
    for one in _COOKIE_SPLIT.split(set_cookie):
        key, sep, value = one.split(";", 1)[0].strip().partition("=")
        if sep and key.strip() == name:
            found = value.strip().strip('"')
    return found


def _cookie(name: str) -> Callable[[Response], Any]:
    if not _TOKEN.match(name):
        raise ExtractError(f"cookie:{name}: {name!r} is not a cookie name")

    def find(r: Response) -> Any:
        # Every Set-Cookie of the response (a login often sets several); the last
        # to set the name wins, as in a browser's jar.
        value = None
        for header in r.header_values("set-cookie"):
            found = cookie_from(header, name)
            if found is not None:
                value = found
        return MISSING if value is None else value

    return find


_COMPILERS: dict[str, Callable[[str], Callable[[Response], Any]]] = {
    "json": _json,
    "header": _header,
    "regex": _regex,
    "cookie": _cookie,
}


def compile_extractor(source: str) -> Extractor:
    """`json:token` (or `header:`, `regex:`, `cookie:`) -> Extractor; ExtractError if malformed."""
    kind, sep, arg = source.partition(":")
    compiler = _COMPILERS.get(kind.strip())
    if not sep or compiler is None:
        raise ExtractError(
            f"{source!r}: use json:<path>, header:<name>, regex:<pattern> or cookie:<name>"
        )
    return Extractor(source, kind.strip(), compiler(arg if kind == "regex" else arg.strip()))
