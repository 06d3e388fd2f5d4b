"""`{{ name }}` templates of TOML journeys, compiled once when the file is loaded.

A template is text with `{{ expression }}` places; an expression is a
variable (a data column, an earlier extraction) or a built-in: `vu`,
`iteration`, `uuid`, `now`, `now_ms`, `now_iso`, `random_int(a, b)`.
Compiling splits the text into literal parts and small getters, so rendering
is a join, with no parsing per request. Which variables exist is decided by
the caller (`flows.py` knows the data columns and the extractions before each
step); this module only lists the names a template uses.
"""

from __future__ import annotations

import datetime
import json
import random
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote


class Scope(Protocol):
    """What a template reads at run time: a Session has all three."""

    vu: int
    iteration: int
    vars: dict[str, Any]


class TemplateError(ValueError):
    """A template that cannot be compiled; the message says why, the caller says where."""


#: Built-in values; `random_int(a, b)` is the one built-in function.
BUILTINS = ("vu", "iteration", "uuid", "now", "now_ms", "now_iso")
FUNCTIONS = ("random_int",)
#: A template's text as shown in messages listing the built-ins.
BUILTIN_HELP = "vu, iteration, uuid, now, now_ms, now_iso, random_int(a, b)"

_PLACE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)", re.DOTALL)
_INT = re.compile(r"[+-]?\d+")

Getter = Callable[[Scope], Any]


def text_of(value: Any) -> str:
    """A variable's value as it appears in text: JSON's spelling for what is not a string."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _now_iso(_: Scope) -> str:
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_BUILTIN_GETTERS: dict[str, Getter] = {
    "vu": lambda s: s.vu,
    "iteration": lambda s: s.iteration,
    "uuid": lambda _: str(uuid.uuid4()),
    "now": lambda _: int(time.time()),
    "now_ms": lambda _: int(time.time() * 1000),
    "now_iso": _now_iso,
}


def _variable(name: str) -> Getter:
    def get(s: Scope) -> Any:
        return s.vars[name]

    return get


def _random_int(args: str, source: str) -> Getter:
    parts = [a.strip() for a in args.split(",")]
    if len(parts) != 2 or not all(_INT.fullmatch(p) for p in parts):
        raise TemplateError(
            f"{source}: random_int takes two whole numbers, e.g. random_int(1, 100)"
        )
    low, high = int(parts[0]), int(parts[1])
    if low > high:
        raise TemplateError(f"{source}: random_int({low}, {high}): the first is above the second")
    randint = random.randint
    return lambda _: randint(low, high)


def _expression(inner: str, names: set[str]) -> Getter:
    expr = inner.strip()
    source = "{{ " + expr + " }}"
    if not expr:
        raise TemplateError("{{ }} is empty: put a variable or a built-in inside")
    call = _CALL.fullmatch(expr)
    if call is not None:
        fn, args = call.groups()
        if fn == "random_int":
            return _random_int(args, source)
        raise TemplateError(f"{source}: unknown function {fn!r} (there is random_int(a, b))")
    if not _NAME.fullmatch(expr):
        raise TemplateError(
            f"{source}: not a variable name (letters, digits, '_') or a built-in ({BUILTIN_HELP})"
        )
    if expr in FUNCTIONS:
        raise TemplateError(f"{source}: {expr} is a function: {expr}(a, b)")
    builtin = _BUILTIN_GETTERS.get(expr)
    if builtin is not None:
        return builtin
    names.add(expr)
    return _variable(expr)


class Template:
    """A compiled template: `render(scope)` gives its text, `value(scope)` its value.

    `value` keeps the type of a template that is one place and nothing else
    (`"{{ item }}"` is the number 7 when the extraction found 7); any other
    template is text. `names` are the variables it uses, built-ins excluded.
    """

    __slots__ = ("_parts", "_single", "names", "source", "static")

    def __init__(
        self,
        source: str,
        *,
        quote_values: bool = False,
        literal: Callable[[str], str] | None = None,
    ) -> None:
        """`quote_values`: percent-encode each place's text (for paths); `literal`:
        how to transform the literal parts (a path's non-ASCII characters)."""
        self.source = source
        names: set[str] = set()
        parts: list[str | Getter] = []
        pos = 0
        for match in _PLACE.finditer(source):
            if match.start() > pos:
                text = source[pos : match.start()]
                parts.append(literal(text) if literal else text)
            parts.append(_expression(match.group(1), names))
            pos = match.end()
        rest = source[pos:]
        if "{{" in rest:
            raise TemplateError(
                f"{rest[rest.index('{{') :][:30]!r}: '{{{{' is never closed by '}}}}'"
            )
        if rest:
            parts.append(literal(rest) if literal else rest)
        self.names = frozenset(names)
        self.static = not names and all(isinstance(p, str) for p in parts)
        single = parts[0] if len(parts) == 1 and not isinstance(parts[0], str) else None
        self._single: Getter | None = single
        # Literal parts stay strings; each place becomes a function to text.
        as_text: Callable[[Any], str] = (
            (lambda v: quote(text_of(v), safe="-._~")) if quote_values else text_of
        )
        self._parts: tuple[str | Callable[[Scope], str], ...] = tuple(
            p if isinstance(p, str) else _texted(p, as_text) for p in parts
        )

    @classmethod
    def plain(cls, text: str) -> Template:
        """Text sent as it is, `{{` included (a header given with -H)."""
        t = cls("")
        t.source = text
        t._parts = (text,) if text else ()
        return t

    def render(self, scope: Scope) -> str:
        """The text, each place replaced by its value's text (percent-encoded for paths)."""
        parts = self._parts
        if len(parts) <= 1:
            if not parts:
                return ""
            only = parts[0]
            return only if isinstance(only, str) else only(scope)
        return "".join([p if isinstance(p, str) else p(scope) for p in parts])

    def value(self, scope: Scope) -> Any:
        """The value of a one-place template as it is (a number stays a number); else `render`."""
        if self._single is not None:
            return self._single(scope)
        return self.render(scope)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def _texted(getter: Getter, as_text: Callable[[Any], str]) -> Callable[[Scope], str]:
    return lambda s: as_text(getter(s))


def has_places(text: str) -> bool:
    """Whether `text` needs compiling at all (plain text is sent as it is)."""
    return "{{" in text
