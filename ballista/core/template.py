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
#: A place of a template: its getter, and the variable's name (None: a built-in)
Place = tuple[Getter, str | None]


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


def _expression(inner: str, names: set[str]) -> tuple[Getter, str | None]:
    """`{{ inner }}` -> (its getter, the variable's name or None for a built-in)."""
    expr = inner.strip()
    source = "{{ " + expr + " }}"
    if not expr:
        raise TemplateError("{{ }} is empty: put a variable or a built-in inside")
    call = _CALL.fullmatch(expr)
    if call is not None:
        fn, args = call.groups()
        if fn == "random_int":
            return _random_int(args, source), None
        raise TemplateError(f"{source}: unknown function {fn!r} (there is random_int(a, b))")
    if not _NAME.fullmatch(expr):
        raise TemplateError(
            f"{source}: not a variable name (letters, digits, '_') or a built-in ({BUILTIN_HELP})"
        )
    if expr in FUNCTIONS:
        raise TemplateError(f"{source}: {expr} is a function: {expr}(a, b)")
    builtin = _BUILTIN_GETTERS.get(expr)
    if builtin is not None:
        return builtin, None
    names.add(expr)
    return _variable(expr), expr


_UNRESERVED = re.compile(r"[A-Za-z0-9\-._~]*").fullmatch


def quote_value(text: str) -> str:
    """A value put in a path: percent-encoded, except the common case that needs none."""
    # (Letters and digits alone, the commonest value, need no regular expression.)
    if (text.isalnum() and text.isascii()) or _UNRESERVED(text):
        return text
    return quote(text, safe="-._~")


def _as_text(getter: Getter, variable: str | None, quote_values: bool) -> Callable[[Scope], str]:
    """A place's function to text; a variable's reads `vars` itself (one call, not two)."""
    if variable is None:
        if quote_values:
            return lambda s: quote_value(text_of(getter(s)))
        return lambda s: text_of(getter(s))
    name = variable
    if quote_values:

        def quoted(s: Scope) -> str:
            v = s.vars[name]
            return quote_value(v if v.__class__ is str else text_of(v))

        return quoted

    def text(s: Scope) -> str:
        v = s.vars[name]
        return v if v.__class__ is str else text_of(v)

    return text


class Template:
    """A compiled template: `render(scope)` gives its text, `value(scope)` its value.

    `value` keeps the type of a template that is one place and nothing else
    (`"{{ item }}"` is the number 7 when the extraction found 7); any other
    template is text. `names` are the variables it uses, built-ins excluded.
    Rendering is one `str.format` over the places' texts, chosen at compile time
    (text around one variable: two concatenations).
    """

    __slots__ = ("_single", "names", "parts", "quote_values", "render", "source", "static")

    #: The text, each place replaced by its value's text (percent-encoded for paths).
    render: Callable[[Scope], str]
    #: The template in order: literal text (as sent: after `literal`), and places,
    #: each (its getter, the variable's name or None for a built-in); what `render`
    #: joins, for code that compiles a template into its own (engine.stepcode)
    parts: tuple[str | Place, ...]

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
        self.quote_values = quote_values
        names: set[str] = set()
        parts: list[str | Place] = []
        fmt: list[str] = []
        texts: list[Callable[[Scope], str]] = []
        single: Getter | None = None
        variables: list[str | None] = []
        pos = 0
        for match in _PLACE.finditer(source):
            if match.start() > pos:
                text = _transformed(source[pos : match.start()], literal)
                parts.append(text)
                fmt.append(_literal(text))
            getter, variable = _expression(match.group(1), names)
            parts.append((getter, variable))
            single = getter
            variables.append(variable)
            texts.append(_as_text(getter, variable, quote_values))
            fmt.append("{}")
            pos = match.end()
        rest = source[pos:]
        if "{{" in rest:
            raise TemplateError(
                f"{rest[rest.index('{{') :][:30]!r}: '{{{{' is never closed by '}}}}'"
            )
        if rest:
            rest = _transformed(rest, literal)
            parts.append(rest)
            fmt.append(_literal(rest))
        self.parts = tuple(parts)
        self.names = frozenset(names)
        self.static = not texts
        self._single = single if fmt == ["{}"] else None
        text = "".join(fmt)
        if len(variables) == 1 and variables[0] is not None and text != "{}":
            # The literal text before and after the one place.
            at = next(i for i, part in enumerate(parts) if not isinstance(part, str))
            before = "".join(p for p in parts[:at] if isinstance(p, str))
            after = "".join(p for p in parts[at + 1 :] if isinstance(p, str))
            self.render = _one_variable(before, after, variables[0], quote_values)
        else:
            self.render = _renderer(text, tuple(texts))

    @classmethod
    def plain(cls, text: str) -> Template:
        """Text sent as it is, `{{` included (a header given with -H)."""
        t = cls("")
        t.source = text
        t.parts = (text,)
        t.render = lambda _: text
        return t

    def value(self, scope: Scope) -> Any:
        """The value of a one-place template as it is (a number stays a number); else `render`."""
        if self._single is not None:
            return self._single(scope)
        return self.render(scope)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def _transformed(text: str, transform: Callable[[str], str] | None) -> str:
    return transform(text) if transform else text


def _literal(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")  # literal braces in a format string


def _renderer(fmt: str, texts: tuple[Callable[[Scope], str], ...]) -> Callable[[Scope], str]:
    if not texts:
        constant = fmt.format()
        return lambda _: constant
    if fmt == "{}":
        return texts[0]
    if len(texts) == 1:
        (one,) = texts
        return lambda s: fmt.format(one(s))
    if len(texts) == 2:
        first, second = texts
        return lambda s: fmt.format(first(s), second(s))
    return lambda s: fmt.format(*[t(s) for t in texts])


def _one_variable(
    prefix: str, suffix: str, name: str, quote_values: bool
) -> Callable[[Scope], str]:
    """Text around one variable (`Bearer {{ token }}`, `/cart/{{ user }}`): one call,
    two concatenations (`quote_value` inlined for paths: this runs for every step)."""
    if quote_values:

        def quoted(s: Scope) -> str:
            v = s.vars[name]
            if v.__class__ is not str:
                v = text_of(v)
            if not (v.isalnum() and v.isascii()) and _UNRESERVED(v) is None:
                v = quote(v, safe="-._~")
            return prefix + v + suffix

        return quoted

    def text(s: Scope) -> str:
        v = s.vars[name]
        return prefix + (v if v.__class__ is str else text_of(v)) + suffix

    return text


def has_places(text: str) -> bool:
    """Whether `text` needs compiling at all (plain text is sent as it is)."""
    return "{{" in text
