"""TOML journeys: `[[flows]]`, `[setup]` and `[data]` compiled into a `Journeys`.

Each step becomes a small object whose templates, checks and extractors were
compiled when the file was loaded; a flow becomes an async function of a
Session that runs its steps with `session.request`, carries extractions in
`session.vars` and thinks with `session.sleep`. Every variable a template
names is checked here, before any load: a data column, an extraction of an
earlier step (of the same flow, or of setup), or a built-in.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Protocol

from ballista.core.checks import CheckError, compile_checks
from ballista.core.config import NAME, Origin, RequestSpec, encode_target, parse_method
from ballista.core.datafile import (
    MODES,
    ON_EXHAUSTED,
    DataSource,
    Mode,
    inline_rows,
    load_rows,
)
from ballista.core.errors import ConfigError
from ballista.core.extract import MISSING, ExtractError, Extractor, compile_extractor
from ballista.core.journey import (
    Check,
    JourneyDef,
    JourneyFailure,
    JourneyFn,
    Journeys,
    Response,
    Session,
)
from ballista.core.template import (
    BUILTIN_HELP,
    BUILTINS,
    FUNCTIONS,
    Scope,
    Template,
    TemplateError,
)

FLOW_KEYS = ("name", "weight", "think", "headers", "steps")
SETUP_KEYS = ("think", "headers", "steps")
STEP_KEYS = (
    "name",
    "method",
    "path",
    "headers",
    "query",
    "body",
    "json",
    "extract",
    "check",
    "think",
)
DATA_KEYS = ("file", "rows", "mode", "on_exhausted")
#: Step names: as request names, and `.` too (`shop.2`, the default for an unnamed step).
STEP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACE = re.compile(r"\{\{.*?\}\}", re.DOTALL)


class Tables(Protocol):
    """The scenario reader's helpers (`scenario._File`): typed values, errors named by key."""

    label: str
    base_dir: Path | None

    def where(self, key: str) -> str: ...
    def error(self, key: str, why: str) -> ConfigError: ...
    def table(self, value: Any, key: str) -> dict[str, Any]: ...
    def known(self, table: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None: ...
    def string(self, value: Any, key: str) -> str: ...
    def positive(self, value: Any, key: str) -> float: ...
    def duration(self, value: Any, key: str, *, zero: bool = False) -> float: ...
    def headers(self, value: Any, key: str) -> tuple[tuple[str, str], ...]: ...


#: Why a step whose text holds a lone surrogate (from a JSON body's "\ud800", kept by
#: an extraction or a JSON Lines row) is not sent: its iteration fails with this.
NOT_TEXT = "a value is not Unicode text that can be sent (a lone surrogate)"
#: Why a step whose value is nested too deeply to be written as JSON text is not sent.
TOO_DEEP = "a value is nested too deeply to be written as text"

#: Think time: (shortest, longest) seconds, drawn uniformly; None: no pause.
Think = tuple[float, float] | None
#: A JSON body: a constant, or a function of the session giving the value.
JsonBody = Callable[[Scope], Any]


@dataclass(frozen=True, slots=True)
class Step:
    """One compiled step: what it sends, checks, extracts, and the pause after it."""

    name: str
    method: str
    path: Template
    headers: tuple[tuple[str, Template], ...]
    query: tuple[tuple[str, Template], ...] | None
    body: Template | None
    json: JsonBody | None
    checks: tuple[Check, ...]
    #: (variable, extractor, the reason an iteration fails with when it finds nothing)
    extract: tuple[tuple[str, Extractor, str], ...]
    think: Think
    #: the statuses `check.status` accepts (None: 200-399)
    expect: frozenset[int] | None = None
    #: no query, body or JSON: only the path and header values change per request
    simple: bool = False
    #: an extractor reads the response's headers (`header:`, or `regex:`, whose text
    #: is decoded by the Content-Type's charset); checks read none
    reads_headers: bool = True

    async def run(self, session: Session) -> None:
        """Send the step on `session`, judge it, keep its extractions in `session.vars`."""
        if self.simple:
            path, values = self.render(session)
            r = await session.request(
                self.method,
                path,
                name=self.name,
                headers=self.headers_of(values),
                checks=self.checks,
                expect=self.expect,
            )
        else:
            try:
                path = self.path.render(session)
                headers = {k: t.render(session) for k, t in self.headers} if self.headers else None
                params = {k: t.render(session) for k, t in self.query} if self.query else None
                data = self.body.render(session) if self.body is not None else None
                body = self.json(session) if self.json is not None else None
            except (KeyError, UnicodeEncodeError, RecursionError) as exc:
                raise self._unrenderable(exc) from None
            r = await session.request(
                self.method,
                path,
                name=self.name,
                headers=headers,
                json=body,
                data=data,
                params=params,
                checks=self.checks,
                expect=self.expect,
            )
        self.take(r, session.vars)

    def render(self, session: Scope) -> tuple[str, list[str]]:
        """A simple step's path and header values for `session` (JourneyFailure: a
        variable has no value, or one that cannot be put in text)."""
        try:
            path = self.path.render(session)
            values = []
            for _, t in self.headers:  # (a loop: a comprehension is a call of its own)
                values.append(t.render(session))
        except (KeyError, UnicodeEncodeError, RecursionError) as exc:
            raise self._unrenderable(exc) from None
        return path, values

    def _unrenderable(self, exc: Exception) -> JourneyFailure:
        """Why the step's templates could not be rendered, as its iteration's reason."""
        if isinstance(exc, KeyError):
            return JourneyFailure(f"{self.name}: {{{{ {exc.args[0]} }}}} has no value")
        if isinstance(exc, UnicodeEncodeError):  # a path's value, percent-encoded as UTF-8
            return JourneyFailure(f"{self.name}: path: {NOT_TEXT}")
        # RecursionError: a list or object value is written as JSON text.
        return JourneyFailure(f"{self.name}: {TOO_DEEP}")

    def take(self, response: Response, variables: dict[str, Any]) -> None:
        """Keep the step's extractions from `response` (JourneyFailure: one found nothing)."""
        for variable, extractor, reason in self.extract:
            value = extractor.find(response)
            if value is MISSING:
                raise JourneyFailure(reason)
            variables[variable] = value

    def headers_of(self, values: list[str]) -> dict[str, str] | None:
        """The step's headers with these rendered values (a simple step's), or None."""
        return {k: v for (k, _), v in zip(self.headers, values, strict=True)} or None

    def pause(self) -> float:
        """The think time after this step: drawn from its range, 0 for none."""
        think = self.think
        if think is None:
            return 0.0
        low, high = think
        return low if low == high else random.uniform(low, high)


class Flow:
    """A compiled TOML flow (or setup): its data sources and steps. Called with a
    Session, it runs them through the session's `request` and `sleep`; the engine
    runs `steps` itself to the same effect (`JourneyRunner`), with less between them."""

    __slots__ = ("data", "steps")

    def __init__(self, steps: tuple[Step, ...], data: tuple[DataSource, ...]) -> None:
        self.steps = steps
        self.data = data

    def begin(self, session: Scope) -> None:
        """An iteration begins: each data source gives the session its row."""
        for source in self.data:
            source.assign(session.vu, session.vars)

    async def __call__(self, session: Session) -> None:
        self.begin(session)
        last = self.steps[-1]
        for step in self.steps:
            await step.run(session)
            if step is not last and step.think is not None:
                await session.sleep(step.pause())


@dataclass(frozen=True, slots=True)
class Compiled:
    """What a scenario's flows become: the Journeys, and one RequestSpec per step name."""

    journeys: Journeys
    requests: tuple[RequestSpec, ...]


class _Context:
    """What one scenario's steps are compiled against."""

    def __init__(self, f: Tables, base: tuple[Origin, str], default_headers: Any) -> None:
        self.f = f
        self.base = base
        self.default_headers: tuple[tuple[str, str], ...] = default_headers
        self.data_columns: dict[str, str] = {}  # column -> the data key that defines it
        self.setup_vars: set[str] = set()
        self.specs: dict[str, RequestSpec] = {}
        self.extra_headers: tuple[tuple[str, str], ...] = ()


def compile_flows(
    f: Tables,
    data: Mapping[str, Any],
    base: tuple[Origin, str] | None,
    default_headers: tuple[tuple[str, str], ...],
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> Compiled:
    """A scenario's `[data]`, `[setup]` and `[[flows]]` -> Compiled; ConfigError names the key.

    `extra_headers` (the command line's -H) go on every step, over its own.
    """
    if base is None:
        raise f.error("base_url", "missing: flows need base_url at the top of the file")
    ctx = _Context(f, base, default_headers)
    ctx.extra_headers = extra_headers
    sources = _data(ctx, data["data"]) if "data" in data else ()
    setup: JourneyFn | None = None
    if "setup" in data:
        table = f.table(data["setup"], "setup")
        f.known(table, SETUP_KEYS, "setup")
        think = _think(f, table.get("think"), "setup.think")
        steps = _steps(ctx, table, "setup", "setup", think, ctx.setup_vars)
        setup = Flow(steps, sources)
    raw_flows = data["flows"]
    if not isinstance(raw_flows, list) or not raw_flows:
        raise f.error("flows", "must be a list of [[flows]] tables")
    flows: list[JourneyDef] = []
    for i, raw in enumerate(raw_flows):
        key = f"flows[{i}]"
        table = f.table(raw, key)
        f.known(table, FLOW_KEYS, key)
        if "name" not in table:
            raise f.error(f"{key}.name", "missing: every flow needs a name")
        name = f.string(table["name"], f"{key}.name")
        if not NAME.match(name):
            raise f.error(f"{key}.name", f"{name!r}: use letters, digits, '_' and '-' (at most 64)")
        if any(flow.name == name for flow in flows):
            raise f.error(f"{key}.name", f"{name!r} is used twice")
        weight = f.positive(table.get("weight", 1), f"{key}.weight")
        think = _think(f, table.get("think"), f"{key}.think")
        steps = _steps(ctx, table, key, name, think, set(ctx.setup_vars))
        flows.append(JourneyDef(name, Flow(steps, sources), weight))
    journeys = Journeys(
        flows=tuple(flows),
        setup=setup,
        step_names=tuple(ctx.specs),
        source=f.label,
        on_segment=tuple(source.share for source in sources),
        session_awaits_only=True,
    )
    return Compiled(journeys, tuple(ctx.specs.values()))


def _data(ctx: _Context, raw: Any) -> tuple[DataSource, ...]:
    f = ctx.f
    tables = raw if isinstance(raw, list) else [raw]
    sources: list[DataSource] = []
    for i, entry in enumerate(tables):
        key = f"data[{i}]" if isinstance(raw, list) else "data"
        table = f.table(entry, key)
        f.known(table, DATA_KEYS, key)
        if ("file" in table) == ("rows" in table):
            raise f.error(key, "give either file (CSV or JSON Lines) or rows")
        if "file" in table:
            rel = f.string(table["file"], f"{key}.file")
            if f.base_dir is None:
                raise f.error(
                    f"{key}.file", "not accepted here (give the rows inline: rows = [...])"
                )
            rows = load_rows(
                f.base_dir / rel, rel if not f.label else f"{f.label}: {key}.file: {rel}"
            )
        else:
            if not isinstance(table["rows"], list):
                raise f.error(f"{key}.rows", "must be a list of tables")
            rows = inline_rows(table["rows"], f.where(f"{key}.rows"))
        mode = f.string(table.get("mode", "per-vu"), f"{key}.mode")
        if mode not in MODES:
            raise f.error(f"{key}.mode", f"{mode!r}: use one of {', '.join(MODES)}")
        exhausted = f.string(table.get("on_exhausted", "stop"), f"{key}.on_exhausted")
        if exhausted not in ON_EXHAUSTED:
            raise f.error(
                f"{key}.on_exhausted", f"{exhausted!r}: use one of {', '.join(ON_EXHAUSTED)}"
            )
        if "on_exhausted" in table and mode != "unique":
            raise f.error(f"{key}.on_exhausted", 'applies to mode = "unique" only')
        for column in rows.columns:
            if column in ctx.data_columns:
                raise f.error(key, f"column {column!r} is also in {ctx.data_columns[column]}")
            ctx.data_columns[column] = key
        mode_t: Mode = mode  # type: ignore[assignment]
        sources.append(DataSource(rows, mode_t, recycle=exhausted == "recycle"))
    return tuple(sources)


def _think(f: Tables, raw: Any, key: str) -> Think:
    if raw is None:
        return None
    if isinstance(raw, list):
        if len(raw) != 2:
            raise f.error(key, 'a range is two durations, e.g. ["500ms", "2s"]')
        low = f.duration(raw[0], f"{key}[0]", zero=True)
        high = f.duration(raw[1], f"{key}[1]", zero=True)
        if low > high:
            raise f.error(key, "the first duration is longer than the second")
    else:
        low = high = f.duration(raw, key, zero=True)
    return None if high == 0 else (low, high)


class _Where:
    """Names one step in messages: the key path and the flow and step as the user named them."""

    def __init__(self, f: Tables, key: str, flow: str, step: str) -> None:
        self.f, self.key, self.flow, self.step = f, key, flow, step

    def error(self, sub: str, why: str, *, at: str | None = None) -> ConfigError:
        """`sub` under this step's key; `at`: a key outside it that the step uses."""
        path = at or (f"{self.key}.{sub}" if sub else self.key)
        label = "setup" if self.flow == "setup" else f"flow {self.flow!r}"
        return ConfigError(f"{self.f.where(path)} ({label}, step {self.step!r}): {why}", key=path)


def _steps(
    ctx: _Context,
    table: Mapping[str, Any],
    key: str,
    flow: str,
    think: Think,
    defined: set[str],
) -> tuple[Step, ...]:
    """A flow's (or setup's) steps; `defined` grows with each step's extractions."""
    f = ctx.f
    # Headers every step inherits: [defaults], then the flow's own, each with its key.
    inherited = {k.lower(): (k, v, f"defaults.headers.{k}") for k, v in ctx.default_headers}
    if "headers" in table:
        for k, v in f.headers(table["headers"], f"{key}.headers"):
            inherited[k.lower()] = (k, v, f"{key}.headers.{k}")
    raw = table.get("steps")
    if not isinstance(raw, list) or not raw:
        raise f.error(f"{key}.steps", "missing: add at least one [[...steps]] table")
    steps: list[Step] = []
    for i, entry in enumerate(raw):
        step_key = f"{key}.steps[{i}]"
        steps.append(_step(ctx, entry, step_key, flow, i, think, defined, inherited))
    return tuple(steps)


def _step(
    ctx: _Context,
    raw: Any,
    key: str,
    flow: str,
    index: int,
    flow_think: Think,
    defined: set[str],
    inherited: Mapping[str, tuple[str, str, str]],
) -> Step:
    f = ctx.f
    table = f.table(raw, key)
    f.known(table, STEP_KEYS, key)
    name = f"{flow}.{index + 1}"
    if "name" in table:
        name = f.string(table["name"], f"{key}.name")
        if not STEP_NAME.match(name):
            raise f.error(
                f"{key}.name",
                f"{name!r}: use letters, digits, '_', '-' and '.' (at most 64), starting with "
                "a letter, digit or '_'",
            )
        if name == "all":
            raise f.error(f"{key}.name", "'all' is reserved for the whole run in [thresholds]")
    w = _Where(f, key, flow, name)

    def template(text: Any, sub: str, *, at: str | None = None, **kw: Any) -> Template:
        if not isinstance(text, str):
            raise w.error(sub, "must be a string", at=at)
        try:
            compiled = Template(text, **kw)
        except TemplateError as exc:
            raise w.error(sub, str(exc), at=at) from None
        for variable in sorted(compiled.names):
            if variable not in defined and variable not in ctx.data_columns:
                known = defined | set(ctx.data_columns)
                raise w.error(sub, _undefined(variable, known), at=at)
        return compiled

    try:
        method = parse_method(f.string(table.get("method", "GET"), f"{key}.method"))
    except ConfigError as exc:
        raise w.error("method", str(exc)) from None
    if "path" not in table:
        raise w.error("path", "missing: every step needs a path (after base_url)")
    path_text = f.string(table["path"], f"{key}.path")
    literal = _PLACE.sub("", path_text)
    if not path_text.startswith("/") or any(
        c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in literal
    ):
        raise w.error(
            "path", f"{path_text!r} must start with '/' and have no spaces or control characters"
        )
    path = template(ctx.base[1] + path_text, "path", quote_values=True, literal=encode_target)

    own = f.headers(table["headers"], f"{key}.headers") if "headers" in table else ()
    overridden = {k.lower() for k, _ in own} | {k.lower() for k, _ in ctx.extra_headers}
    headers: dict[str, tuple[str, Template]] = {
        lower: (k, template(v, "headers", at=at))
        for lower, (k, v, at) in inherited.items()
        if lower not in overridden
    }
    for k, v in own:
        headers[k.lower()] = (k, template(v, f"headers.{k}"))
    for k, v in ctx.extra_headers:
        headers[k.lower()] = (k, Template.plain(v))  # -H: sent as given, never templated
    query: tuple[tuple[str, Template], ...] | None = None
    if "query" in table:
        q = f.table(table["query"], f"{key}.query")
        pairs = [
            (k, str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)
            for k, v in q.items()
        ]
        query = tuple((k, template(v, f"query.{k}")) for k, v in pairs)
    if "body" in table and "json" in table:
        raise w.error("", "give either body (text) or json (a table)")
    body = template(table["body"], "body") if "body" in table else None
    json_body: JsonBody | None = None
    if "json" in table:
        if not isinstance(table["json"], dict | list):
            raise w.error("json", "must be a table or an array (use body for text)")
        json_body = _json_body(table["json"], "json", template, w)
        if "content-type" not in headers:
            headers["content-type"] = ("Content-Type", Template.plain("application/json"))

    checks: tuple[Check, ...] = ()
    statuses: frozenset[int] | None = None
    if "check" in table:
        check_table = f.table(table["check"], f"{key}.check")
        try:
            check, statuses = compile_checks(name, check_table)
        except CheckError as exc:
            raise w.error(f"check.{exc.key}" if exc.key else "check", exc.why) from None
        checks = () if check is None else (check,)

    extract: list[tuple[str, Extractor, str]] = []
    if "extract" in table:
        for variable, source in f.table(table["extract"], f"{key}.extract").items():
            sub = f"extract.{variable}"
            if not _VARIABLE.match(variable):
                raise w.error(sub, f"{variable!r} is not a variable name (letters, digits, '_')")
            if variable in BUILTINS or variable in FUNCTIONS:
                raise w.error(sub, f"{variable!r} is a built-in's name")
            if not isinstance(source, str):
                raise w.error(sub, "must be a string such as json:token")
            try:
                extractor = compile_extractor(source)
            except ExtractError as exc:
                raise w.error(sub, str(exc)) from None
            extract.append((variable, extractor, f"{name}: extract {variable}: {source} not found"))
    step_think = _think(f, table["think"], f"{key}.think") if "think" in table else flow_think
    # Later steps (and, for setup, every flow) may use what this one extracts.
    defined.update(v for v, _, _ in extract)

    if name not in ctx.specs:
        static = path_text.split("{{", 1)[0].split("?", 1)[0] or "/"
        ctx.specs[name] = RequestSpec(
            name=name,
            method=method,
            target=encode_target(ctx.base[1] + static),
            expected=statuses,
        )
    return Step(
        name=name,
        method=method,
        path=path,
        headers=tuple(headers.values()),
        query=query,
        body=body,
        json=json_body,
        checks=checks,
        extract=tuple(extract),
        think=step_think,
        expect=statuses,
        simple=query is None and body is None and json_body is None,
        reads_headers=any(e.kind in ("header", "regex") for _, e, _ in extract),
    )


def _undefined(variable: str, known: set[str]) -> str:
    close = get_close_matches(variable, [*known, *BUILTINS], n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return (
        f"{{{{ {variable} }}}} is not defined: not a data column, an extraction of an earlier "
        f"step or of setup, nor a built-in ({BUILTIN_HELP}){hint}"
    )


def _json_body(value: Any, sub: str, template: Callable[..., Template], w: _Where) -> JsonBody:
    """A JSON body given as a TOML table: strings with places are templates, the rest constants.

    A string that is one place and nothing else keeps its value's type (an
    extracted number stays a number); any other templated string is text.
    """
    if isinstance(value, str):
        if "{{" not in value:
            return lambda _: value
        return template(value, sub).value
    if isinstance(value, dict):
        fields: list[tuple[str, JsonBody]] = []
        for k, v in value.items():
            if "{{" in k:
                raise w.error(f"{sub}.{k}", "keys are literal: a template is not expanded here")
            fields.append((k, _json_body(v, f"{sub}.{k}", template, w)))
        return lambda s: {k: fn(s) for k, fn in fields}
    if isinstance(value, list):
        items = [_json_body(v, f"{sub}[{i}]", template, w) for i, v in enumerate(value)]
        return lambda s: [fn(s) for fn in items]
    if isinstance(value, bool | int | float):
        return lambda _: value
    raise w.error(sub, "must be a JSON value (string, number, boolean, array, table)")
