"""TOML journeys compiled at load: templates, extractors, checks and data files as pure
functions; compiled flows against a recording session; bad input as real `ballista run`s."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import RunningTarget

from ballista.cli.main import main
from ballista.core import datafile
from ballista.core.checks import CheckError, compile_checks
from ballista.core.datafile import DataSource, inline_rows, load_rows, parse_csv, parse_jsonl
from ballista.core.errors import ConfigError
from ballista.core.extract import MISSING, ExtractError, compile_extractor, cookie_from
from ballista.core.flows import STEP_KEYS, TOO_DEEP
from ballista.core.journey import Check, DataExhausted, JourneyFailure, Journeys
from ballista.core.scenario import read_scenario_file, scenario_from_table
from ballista.core.template import Template, TemplateError
from ballista.daemon.scenarios import redact_scenario

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BALLISTA = [sys.executable, "-m", "ballista"]


@dataclass
class Answer:
    """A response as a journey sees it (core.journey.Response)."""

    status: int = 200
    body: Any = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    elapsed: float = 0.01

    @property
    def content(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()

    @property
    def text(self) -> str:
        return self.content.decode()

    def header_values(self, name: str) -> list[str]:
        value = self.headers.get(name.lower())
        return [] if value is None else [value]

    def json(self) -> Any:
        return json.loads(self.content)


@dataclass
class Scope:
    vu: int = 0
    iteration: int = 0
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sent:
    method: str
    path: str
    name: str | None
    headers: Mapping[str, str] | None
    json: Any
    data: Any
    params: Mapping[str, str] | None


class RecordingSession(Scope):
    """Answers each request with the next canned Answer and records what it was asked,
    running checks as the Session contract says (a failed one raises JourneyFailure)."""

    def __init__(self, answers: Sequence[Answer], vu: int = 0) -> None:
        super().__init__(vu=vu)
        self.answers = list(answers)
        self.sent: list[Sent] = []
        self.slept: list[float] = []

    async def request(
        self,
        method: str,
        path: str,
        *,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: bytes | str | Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        checks: Sequence[Check] = (),
        expect: Collection[int] | None = None,
    ) -> Answer:
        self.sent.append(Sent(method, path, name, headers, json, data, params))
        answer = self.answers.pop(0)
        if answer.status not in (range(200, 400) if expect is None else expect):
            raise JourneyFailure(f"status {answer.status}")
        for check in checks:
            reason = check(answer)
            if reason is not None:
                raise JourneyFailure(reason)
        return answer

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.request("GET", path, **kw)

    post = put = patch = delete = get

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


# --- templates ------------------------------------------------------------------------


def test_templates_render_variables_and_builtins() -> None:
    scope = Scope(vu=7, iteration=3, vars={"user": "ann", "n": 2, "ok": True, "doc": {"a": [1]}})
    t = Template("/u/{{user}}/{{ n }}?it={{ iteration }}&vu={{ vu }}&ok={{ ok }}&d={{ doc }}")
    assert t.render(scope) == '/u/ann/2?it=3&vu=7&ok=true&d={"a":[1]}'
    assert t.names == {"user", "n", "ok", "doc"}
    assert Template("plain").static and Template("plain").render(scope) == "plain"
    assert uuid.UUID(Template("{{ uuid }}").render(scope))
    assert Template("{{ uuid }}").render(scope) != Template("{{ uuid }}").render(scope)
    draws = {Template("{{ random_int(1, 3) }}").value(scope) for _ in range(200)}
    assert draws == {1, 2, 3}
    assert isinstance(Template("{{ now }}").value(scope), int)
    assert Template("{{ now_ms }}").value(scope) > Template("{{ now }}").value(scope) * 999
    assert Template("{{ now_iso }}").render(scope).endswith("Z")


def test_a_template_that_is_one_place_keeps_its_type() -> None:
    scope = Scope(vars={"item": 7, "name": 'say "hi"'})
    assert Template("{{ item }}").value(scope) == 7
    assert Template("#{{ item }}").value(scope) == "#7"
    assert Template("{{ name }}").value(scope) == 'say "hi"'


def test_path_values_are_percent_encoded_and_literals_kept() -> None:
    scope = Scope(vars={"user": "a b/c", "q": "é"})
    t = Template("/cart/{{ user }}?q={{ q }}", quote_values=True)
    assert t.render(scope) == "/cart/a%20b%2Fc?q=%C3%A9"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{{ }}", "empty"),
        ("/a/{{ user", "never closed"),
        ("{{ random_int(3, 1) }}", "the first is above"),
        ("{{ random_int(1) }}", "two whole numbers"),
        ("{{ rand(1, 2) }}", "unknown function 'rand'"),
        ("{{ random_int }}", "is a function"),
        ("{{ user.name }}", "not a variable name"),
    ],
)
def test_bad_templates_say_why(text: str, needle: str) -> None:
    with pytest.raises(TemplateError, match=needle.replace("(", r"\(")):
        Template(text)


_TEMPLATE_TEXT = st.text(alphabet=st.sampled_from("{} ab_(1,)-.é\n"), max_size=40)


@settings(max_examples=300)
@given(_TEMPLATE_TEXT)
def test_any_text_compiles_or_is_refused_with_a_reason(text: str) -> None:
    try:
        t = Template(text)
    except TemplateError as exc:
        assert str(exc)
        return
    scope = Scope(vu=1, iteration=2, vars=dict.fromkeys(t.names, "v"))
    rendered = t.render(scope)
    if "{{" not in text:
        assert rendered == text


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("ab{}/ é%"), max_size=8).filter(lambda t: "{{" not in t),
    st.text(alphabet=st.sampled_from("ab{}/ é%"), max_size=8).filter(lambda t: "{{" not in t),
    st.text(max_size=8) | st.integers(),
)
def test_text_around_one_variable_renders_exactly(prefix: str, suffix: str, value: Any) -> None:
    from urllib.parse import quote

    if prefix.endswith("{") or suffix.startswith("}"):
        return  # that would be another place's braces, or refused
    text = str(value)
    for quote_values, shown in ((False, text), (True, quote(text, safe="-._~"))):
        t = Template(prefix + "{{ v }}" + suffix, quote_values=quote_values)
        assert t.render(Scope(vars={"v": value})) == prefix + shown + suffix


def test_a_value_nested_too_deeply_for_text_fails_its_step() -> None:
    # A list nested past what json.dumps can write (from a deep JSON answer, kept by
    # an extraction) in a path or header template: the step's reason, not a crash.
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    text = """
base_url = "http://127.0.0.1:9"
[data]
rows = [{ v = "x" }]
[[flows]]
name = "f"
[[flows.steps]]
name = "p"
path = "/{{ v }}"
[[flows.steps]]
name = "h"
path = "/"
headers = { X = "{{ v }}" }
[[flows.steps]]
name = "q"
path = "/"
query = { q = "{{ v }}" }
"""
    flows = scenario_from_table(tomllib.loads(text)).journeys
    assert flows is not None
    for step in flows.flows[0].fn.steps:  # type: ignore[attr-defined]
        session = RecordingSession([Answer()])
        session.vars["v"] = deep
        with pytest.raises(JourneyFailure) as failure:
            trio.run(step.run, session)
        assert failure.value.reason == f"{step.name}: {TOO_DEEP}"
        assert session.sent == []


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=30), st.integers() | st.text())
def test_a_rendered_step_path_is_a_valid_target_whatever_its_values(a: str, b: Any) -> None:
    # The engine sends a TOML step's path without checking it again (H1Plan.encode's
    # `checked`): whatever a variable holds, the path is a target no check refuses.
    from ballista.transport.connect import _BAD_TARGET

    text = """
base_url = "http://127.0.0.1:9/b%41se/ü"
[data]
rows = [{ a = "x", b = "y" }]
[[flows]]
name = "f"
[[flows.steps]]
path = "/p/é/{{ a }}?q={{ b }}&t={{ now_iso }}&u={{ uuid }}"
[[flows.steps]]
path = "/{{ b }}"
"""
    flows = scenario_from_table(tomllib.loads(text)).journeys
    assert flows is not None
    for step in flows.flows[0].fn.steps:  # type: ignore[attr-defined]
        path, _ = step.render(Scope(vars={"a": a, "b": b}))
        target = path.encode("ascii")
        assert target.startswith(b"/") and _BAD_TARGET(target) is None, target


# --- extractors -----------------------------------------------------------------------


def find(source: str, answer: Answer) -> Any:
    return compile_extractor(source).find(answer)


def test_json_paths_with_list_indices() -> None:
    doc = {"token": "t1", "cart": {"items": 3}, "items": [{"id": 5}, {"id": 6}], "n": None}
    answer = Answer(body=doc)
    assert find("json:token", answer) == "t1"
    assert find("json:cart.items", answer) == 3
    assert find("json:items.0.id", answer) == 5
    assert find("json:items.-1.id", answer) == 6
    assert find("json:items.*.id", answer) in (5, 6)
    assert find("json:n", answer) is None  # present, null
    for missing in ("json:nope", "json:items.2.id", "json:token.x", "json:cart.items.0"):
        assert find(missing, answer) is MISSING, missing
    assert find("json:0.id", Answer(body=[{"id": 9}])) == 9
    assert find("json:token", Answer(body=b"<html>")) is MISSING
    assert find("json:0", Answer(body=[])) is MISSING
    assert find("json:*", Answer(body=[])) is MISSING


def test_header_regex_and_cookie_extractors() -> None:
    answer = Answer(
        body=b"order id=A17 placed",
        headers={
            "x-request-id": "r-1",
            "set-cookie": "theme=dark; Expires=Wed, 09 Jun 2027 10:18:14 GMT, session=abc; Path=/",
        },
    )
    assert find("header:X-Request-Id", answer) == "r-1"
    assert find("header:x-missing", answer) is MISSING
    assert find(r"regex:id=(\w+)", answer) == "A17"
    assert find(r"regex:A\d+", answer) == "A17"
    assert find(r"regex:total=(\d+)", answer) is MISSING
    assert find("cookie:session", answer) == "abc"
    assert find("cookie:theme", answer) == "dark"
    assert find("cookie:Expires", answer) is MISSING
    assert cookie_from('a="quoted"; HttpOnly', "a") == "quoted"


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("token", "use json:<path>"),
        ("xml:token", "use json:<path>"),
        ("json:", "dotted path"),
        ("json:a..b", "dotted path"),
        ("regex:(unclosed", "not a valid pattern"),
        ("regex:", "needs a pattern"),
        ("header:bad name", "not a header name"),
        ("cookie:", "not a cookie name"),
    ],
)
def test_bad_extractors_say_why(source: str, needle: str) -> None:
    with pytest.raises(ExtractError, match=needle.replace("(", r"\(")):
        compile_extractor(source)


# --- checks ---------------------------------------------------------------------------


def check_of(table: dict[str, Any]) -> Check:
    check = compile_checks("cart", table)[0]
    assert check is not None
    return check


def test_checks_pass_or_name_their_reason() -> None:
    ok = Answer(status=201, body={"cart": {"items": 3}, "token": "t", "flag": True}, elapsed=0.1)
    check, statuses = compile_checks(
        "cart",
        {
            "status": [200, 201],
            "body_contains": "items",
            "json": {"cart.items": 3, "flag": True},
            "json_exists": ["token"],
            "latency_under": "300ms",
        },
    )
    assert statuses == frozenset({200, 201})
    assert check is not None and check(ok) is None
    # The status is what the session expects: it fails another before any check.
    assert compile_checks("cart", {"status": 204}) == (None, frozenset({204}))
    assert check_of({"latency_under": "50ms"})(ok) == "cart: latency over 50.00ms"
    assert check_of({"body_contains": "nope"})(ok) == "cart: body does not contain 'nope'"
    assert check_of({"json": {"cart.items": 4}})(ok) == "cart: json cart.items is not 4"
    assert check_of({"json": {"flag": 1}})(ok) == "cart: json flag is not 1"  # true is not 1
    assert check_of({"json": {"token": "u"}})(ok) == "cart: json token is not 'u'"
    assert check_of({"json_exists": ["cart.total"]})(ok) == "cart: json cart.total missing"
    assert check_of({"json_exists": ["token"]})(Answer(body=b"not json")) == (
        "cart: json token missing"
    )
    assert check_of({"json": {"cart.items": 3.0}})(ok) is None


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"stauts": 200}, "stauts"),
        ({"status": []}, "status"),
        ({"status": [200, 99]}, "status[1]"),
        ({"latency_under": "soon"}, "latency_under"),
        ({"latency_under": 0.3}, "latency_under"),
        ({"body_contains": ""}, "body_contains"),
        ({"json": {"a..b": 1}}, "json.a..b"),
        ({"json": {"user": "{{ user }}"}}, "json.user"),
        ({"json_exists": "token"}, None),
        ({}, ""),
    ],
)
def test_bad_checks_name_the_key(table: dict[str, Any], key: str | None) -> None:
    if key is None:  # a single path is accepted as a list of one
        compile_checks("s", table)
        return
    with pytest.raises(CheckError) as caught:
        compile_checks("s", table)
    assert caught.value.key == key


# --- data files -----------------------------------------------------------------------


def test_csv_and_json_lines_rows() -> None:
    rows = parse_csv('user,password\nann,"s,1"\n\nbob,s2\n', "u.csv")
    assert rows.columns == ("user", "password")
    assert rows.rows == (("ann", "s,1"), ("bob", "s2"))
    lines = parse_jsonl('{"user": "ann", "n": 1}\n\n{"n": 2, "user": "bob"}\n', "u.jsonl")
    assert lines.columns == ("user", "n") and lines.rows == (("ann", 1), ("bob", 2))
    inline = inline_rows([{"user": "ann"}, {"user": "bob"}], "data.rows")
    assert inline.rows == (("ann",), ("bob",))


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("u.csv", "", "u.csv: empty"),
        ("u.csv", "user,password\n", "u.csv: no rows after the header"),
        ("u.csv", "user,password\nann,s1\nbob\n", "u.csv: line 3: 1 fields where the header has 2"),
        ("u.csv", "user,user\nann,bob\n", "line 1: column 'user' appears twice"),
        ("u.csv", "user name\nann\n", "line 1: column 'user name' is not a variable name"),
        ("u.csv", "vu\n1\n", "column 'vu' is a built-in's name"),
        ("u.csv", 'user\n"ann\n', "not valid CSV"),
        ("u.jsonl", '{"user": "ann"}\n{"user": \n', "u.jsonl: line 2: not JSON"),
        ("u.jsonl", '{"user": "ann"}\n{"name": "bob"}\n', "line 2: keys differ"),
        ("u.jsonl", "[1, 2]\n", "line 1: not a JSON object"),
        ("u.jsonl", "\n\n", "u.jsonl: empty"),
        ("u.txt", "user\nann\n", "use a .csv or .jsonl"),
    ],
)
def test_bad_data_files_name_file_and_line(
    tmp_path: Path, name: str, text: str, needle: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_rows(path, name)


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from('ab,"\n\r {}:[]1'), max_size=60))
def test_any_data_file_loads_or_is_refused_with_one_line(text: str) -> None:
    for parse in (parse_csv, parse_jsonl):
        try:
            rows = parse(text, "d")
        except ConfigError as exc:
            assert str(exc).startswith("d: ") and "\n" not in str(exc).strip()
            continue
        assert rows.rows and all(len(r) == len(rows.columns) for r in rows.rows)


def test_data_files_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "u.csv"
    path.write_text("user\n" + "ann\n" * 50)
    monkeypatch.setattr(datafile, "MAX_DATA_ROWS", 10)
    with pytest.raises(ConfigError, match="more than 10 rows"):
        load_rows(path, "u.csv")
    monkeypatch.setattr(datafile, "MAX_DATA_BYTES", 100)
    with pytest.raises(ConfigError, match="MiB a data file may have"):
        load_rows(path, "u.csv")
    (tmp_path / "bin.csv").write_bytes(b"user\nann\n\xff\n")
    with pytest.raises(ConfigError, match="line 3: not UTF-8"):
        load_rows(tmp_path / "bin.csv", "bin.csv")
    with pytest.raises(ConfigError, match="no such file"):
        load_rows(tmp_path / "none.csv", "none.csv")


def test_modes_hand_out_rows_without_copying_them() -> None:
    rows = inline_rows([{"user": f"u{i}"} for i in range(3)], "data")
    per_vu = DataSource(rows, "per-vu")
    assert [per_vu.row(vu)[0] for vu in (0, 1, 2, 3, 4)] == ["u0", "u1", "u2", "u0", "u1"]
    assert per_vu.row(4) is rows.rows[1]
    round_robin = DataSource(rows, "per-iteration")
    assert [round_robin.row(0)[0] for _ in range(5)] == ["u0", "u1", "u2", "u0", "u1"]
    recycle = DataSource(rows, "unique", recycle=True)
    assert [recycle.row(0)[0] for _ in range(4)] == ["u0", "u1", "u2", "u0"]
    unique = DataSource(rows, "unique")
    assert [unique.row(9)[0] for _ in range(3)] == ["u0", "u1", "u2"]
    with pytest.raises(DataExhausted, match="every row has been used once"):
        unique.row(9)
    variables: dict[str, Any] = {"token": "t"}
    per_vu.assign(2, variables)
    assert variables == {"token": "t", "user": "u2"}


def test_unique_rows_are_shared_out_between_segments_never_used_twice() -> None:
    rows = inline_rows([{"user": f"u{i}"} for i in range(5)], "data")
    seen: list[str] = []
    for index in range(3):
        unique = DataSource(rows, "unique")
        unique.share(index, 3)
        with pytest.raises(DataExhausted, match="every row has been used once"):
            while True:
                seen.append(unique.row(0)[0])
    assert sorted(seen) == ["u0", "u1", "u2", "u3", "u4"]
    recycle = DataSource(rows, "unique", recycle=True)
    recycle.share(1, 3)
    assert [recycle.row(0)[0] for _ in range(4)] == ["u1", "u4", "u1", "u4"]
    # A segment past the last row recycles the whole file rather than running nothing.
    spare = DataSource(rows, "unique", recycle=True)
    spare.share(7, 8)
    assert [spare.row(0)[0] for _ in range(2)] == ["u0", "u1"]
    # The other modes are the same in every segment.
    per_iteration = DataSource(rows, "per-iteration")
    per_iteration.share(1, 3)
    assert [per_iteration.row(0)[0] for _ in range(2)] == ["u0", "u1"]


# --- compiled flows -------------------------------------------------------------------

SHOP = """
name = "shop"
base_url = "http://127.0.0.1:8080/v1"

[defaults]
headers = { X-Team = "perf" }

[data]
rows = [{ user = "ann", password = "secret-ann" }, { user = "bob b", password = "secret-bob" }]

[setup]
[[setup.steps]]
name = "login"
method = "POST"
path = "/api/login"
json = { user = "{{ user }}", password = "{{ password }}", remember = true }
extract = { token = "json:token" }
check = { status = 200 }

[[flows]]
name = "buy"
think = ["1s", "1s"]

[[flows.steps]]
path = "/api/items"
extract = { item = "json:2.id", trace = "header:x-trace" }

[[flows.steps]]
name = "add"
method = "POST"
path = "/api/cart/{{ user }}"
headers = { Authorization = "Bearer {{ token }}" }
json = { item = "{{ item }}", note = 'for "{{ user }}"', lines = [{ n = "{{ random_int(2, 2) }}" }] }
check = { json = { items = 2 } }
think = 0

[[flows.steps]]
name = "cart"
path = "/api/cart/{{ user }}"
query = { trace = "{{ trace }}", page = 1 }
body = "vu={{ vu }}"

[thresholds]
add = ["p99<250ms"]
"buy.1" = ["p99<250ms"]
"""


def journeys_of(text: str) -> Journeys:
    scenario = scenario_from_table(tomllib.loads(text), label="shop.toml")
    assert scenario.journeys is not None
    return scenario.journeys


async def test_a_compiled_flow_sends_renders_and_extracts() -> None:
    journeys = journeys_of(SHOP)
    assert [f.name for f in journeys.flows] == ["buy"]
    assert journeys.step_names == ("login", "buy.1", "add", "cart")
    assert journeys.setup is not None
    session = RecordingSession(
        [
            Answer(body={"token": "T1"}),
            Answer(body=[{"id": 1}, {"id": 2}, {"id": 3}], headers={"x-trace": "tr 9"}),
            Answer(body={"items": 2}),
            Answer(body={"items": [], "count": 2}),
        ],
        vu=1,
    )
    await journeys.setup(session)
    await journeys.flows[0].fn(session)
    login, items, add, cart = session.sent
    assert (login.method, login.path, login.name) == ("POST", "/v1/api/login", "login")
    assert login.json == {"user": "bob b", "password": "secret-bob", "remember": True}
    assert login.headers == {"X-Team": "perf", "Content-Type": "application/json"}
    assert (items.name, items.path) == ("buy.1", "/v1/api/items")
    assert add.path == "/v1/api/cart/bob%20b"
    assert add.headers is not None and add.headers["Authorization"] == "Bearer T1"
    assert add.json == {"item": 3, "note": 'for "bob b"', "lines": [{"n": 2}]}
    assert cart.params == {"trace": "tr 9", "page": "1"}
    assert cart.data == "vu=1"
    assert session.vars["token"] == "T1" and session.vars["item"] == 3
    assert session.slept == [1.0]  # between steps only; `think = 0` on "add" turns it off


async def test_failures_end_the_iteration_with_their_reason() -> None:
    journeys = journeys_of(SHOP)
    flow = journeys.flows[0].fn
    session = RecordingSession([Answer(body={"items": []})])
    session.vars.update(token="T", user="ann")
    with pytest.raises(JourneyFailure) as caught:
        await flow(session)
    assert caught.value.reason == "buy.1: extract item: json:2.id not found"
    session = RecordingSession([Answer(body=[{"id": 1}] * 3, headers={"x-trace": "t"}), Answer()])
    session.vars.update(token="T")
    with pytest.raises(JourneyFailure) as caught:
        await flow(session)
    assert caught.value.reason == "add: json items is not 2"
    # check.status is what the session expects: login wants 200 and got 201.
    setup = journeys.setup
    assert setup is not None
    with pytest.raises(JourneyFailure, match=r"^status 201$"):
        await setup(RecordingSession([Answer(status=201, body={"token": "T"})]))


async def test_command_line_headers_go_on_every_step_untemplated(tmp_path: Path) -> None:
    path = tmp_path / "shop.toml"
    path.write_text(SHOP)
    extra = (("x-team", "cli"), ("X-Raw", "{{ not a template }}"))
    journeys = read_scenario_file(str(path), headers=extra).journeys
    assert journeys is not None and journeys.setup is not None
    session = RecordingSession([Answer(body={"token": "T"})])
    await journeys.setup(session)
    assert session.sent[0].headers == {
        "x-team": "cli",
        "Content-Type": "application/json",
        "X-Raw": "{{ not a template }}",
    }


def test_the_daemon_shows_flows_without_secrets() -> None:
    shown = redact_scenario(tomllib.loads(SHOP.replace("X-Team", "X-Api-Key")))
    assert shown["defaults"]["headers"]["X-Api-Key"] == "[redacted]"
    step = shown["flows"][0]["steps"][1]
    assert step["headers"]["Authorization"] == "[redacted]"
    assert step["json"] == "<JSON body>"
    assert shown["setup"]["steps"][0]["json"] == "<JSON body>"
    assert shown["data"]["rows"] == "<2 rows>"
    assert "secret-ann" not in json.dumps(shown)


async def test_several_data_tables_each_by_its_mode() -> None:
    journeys = journeys_of(
        """
base_url = "http://127.0.0.1:8080"
[[data]]
rows = [{ user = "ann" }, { user = "bob" }]
[[data]]
rows = [{ sku = "A" }, { sku = "B" }, { sku = "C" }]
mode = "unique"
[[flows]]
name = "buy"
[[flows.steps]]
path = "/{{ user }}/{{ sku }}"
"""
    )
    flow = journeys.flows[0].fn
    session = RecordingSession([Answer()] * 3, vu=3)
    for _ in range(3):
        await flow(session)
    assert [s.path for s in session.sent] == ["/bob/A", "/bob/B", "/bob/C"]
    with pytest.raises(DataExhausted):
        await flow(session)
    assert len(session.sent) == 3  # the iteration that found no row sent nothing
    with pytest.raises(ConfigError, match=r"data\[1\]: column 'user' is also in data\[0\]"):
        scenario_from_table(
            {
                "base_url": "http://h",
                "data": [{"rows": [{"user": "a"}]}, {"rows": [{"user": "b"}]}],
                "flows": [{"name": "f", "steps": [{"path": "/"}]}],
            }
        )


async def test_flow_headers_apply_to_its_steps_after_setup_defined_them() -> None:
    text = """
base_url = "http://h"
[defaults]
headers = { Authorization = "Bearer {{ token }}" }
[setup]
[[setup.steps]]
name = "login"
path = "/login"
headers = { Authorization = "none" }
extract = { token = "json:token" }
[[flows]]
name = "buy"
headers = { X-User = "{{ vu }}" }
[[flows.steps]]
path = "/cart"
"""
    journeys = journeys_of(text)
    assert journeys.setup is not None
    session = RecordingSession([Answer(body={"token": "T"}), Answer()], vu=4)
    await journeys.setup(session)
    await journeys.flows[0].fn(session)
    assert [s.headers for s in session.sent] == [
        {"Authorization": "none"},
        {"Authorization": "Bearer T", "X-User": "4"},
    ]
    with pytest.raises(ConfigError) as caught:
        journeys_of(text.replace('headers = { Authorization = "none" }\n', ""))
    assert str(caught.value).startswith(
        "shop.toml: defaults.headers.Authorization (setup, step 'login'): {{ token }} is not"
    )


_LEAF = st.one_of(
    st.booleans(),
    st.integers(-5, 700),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["/a/{{ user }}", "json:x.0", "regex:(", "{{ nope }}", "1s", "GET", ""]),
    st.text(max_size=8),
)
_VALUE = st.recursive(
    _LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


# Generation, not the code under test, is what a loaded machine slows down.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from([*STEP_KEYS, "bogus"]), _VALUE, max_size=6),
    st.dictionaries(st.sampled_from(["file", "rows", "mode", "on_exhausted"]), _VALUE, max_size=3),
)
def test_any_flow_table_compiles_or_is_refused_by_name(
    step: dict[str, Any], data: dict[str, Any]
) -> None:
    doc: dict[str, Any] = {
        "base_url": "http://127.0.0.1:1",
        "flows": [{"name": "f", "steps": [{"path": "/", **step}]}],
    }
    if data:
        doc["data"] = data
    try:
        scenario_from_table(doc)
    except ConfigError as exc:
        assert "\n" not in str(exc)


def test_the_examples_compile() -> None:
    scenario = read_scenario_file(str(EXAMPLES / "journey.toml"))
    assert scenario.journeys is not None
    assert [f.name for f in scenario.journeys.flows] == ["buy", "browse"]
    assert {r.name for r in scenario.requests} == {
        "login", "items", "clear", "add", "cart", "items-page", "me",
    }  # fmt: skip


def test_the_api_body_gives_rows_inline_never_a_file() -> None:
    table = tomllib.loads(SHOP)
    assert scenario_from_table(table).journeys is not None
    table["data"] = {"file": "/etc/passwd"}
    with pytest.raises(ConfigError, match=r"^data.file: not accepted here"):
        scenario_from_table(table)
    table["data"] = {"rows": [{"user": "ann"}], "mode": "unique", "on_exhausted": "never"}
    with pytest.raises(ConfigError, match=r"data\.on_exhausted: 'never': use one of stop, rec"):
        scenario_from_table(table)
    table["data"] = {"rows": [{"user": "ann"}], "on_exhausted": "recycle"}
    with pytest.raises(ConfigError, match="applies to mode"):
        scenario_from_table(table)
    table["thresholds"] = {"checkout": ["p99<1s"]}
    table["data"] = {"rows": [{"user": "ann", "password": "p"}]}
    with pytest.raises(ConfigError, match="no step named 'checkout'"):
        scenario_from_table(table)


# --- bad input ------------------------------------------------------------------------

FLOW = """
name = "s"
base_url = "http://127.0.0.1:9"
[data]
file = "users.csv"
[[flows]]
name = "buy"
[[flows.steps]]
name = "login"
path = "/login"
"""

BAD_INPUT = [
    (
        FLOW + 'headers = { Authorization = "Bearer {{ tokn }}" }\n',
        "shop.toml: flows[0].steps[0].headers.Authorization (flow 'buy', step 'login'): "
        "{{ tokn }} is not defined",
    ),
    (
        FLOW + 'extract = { id = "regex:(" }\n',
        "shop.toml: flows[0].steps[0].extract.id (flow 'buy', step 'login'): regex:(: "
        "not a valid pattern",
    ),
    (FLOW + "retries = 3\n", "shop.toml: flows[0].steps[0].retries: unknown key"),
    (
        FLOW.replace('"/login"', '"/log\\u007fin"'),
        "flows[0].steps[0].path (flow 'buy', step 'login'): '/log\\x7fin' must start with '/' "
        "and have no spaces or control characters",
    ),
    (FLOW + 'check = { status = "ok" }\n', "flows[0].steps[0].check.status"),
    (FLOW + '[[requests]]\nname = "x"\npath = "/"\n', "either [[requests]]"),
    (FLOW.replace("users.csv", "ragged.csv"), "ragged.csv: line 3: 1 fields"),
    (
        FLOW + '[[flows.steps]]\nname = "c"\npath = "/c/{{ token }}"\n[[flows]]\nname = "b"\n'
        '[[flows.steps]]\npath = "/"\nextract = { token = "json:t" }\n',
        "flows[0].steps[1].path (flow 'buy', step 'c'): {{ token }} is not defined",
    ),
]


def write_case(directory: Path, text: str) -> Path:
    directory.mkdir()
    (directory / "users.csv").write_text("user\nann\n")
    (directory / "ragged.csv").write_text("user,password\nann,s\nbob\n")
    (directory / "shop.toml").write_text(text)
    return directory / "shop.toml"


@pytest.mark.parametrize(("text", "needle"), BAD_INPUT)
def test_bad_journeys_are_one_line_and_exit_2(
    tmp_path: Path, text: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "-f", str(write_case(tmp_path / "case", text)), "-n", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("ballista: error: "), err
    assert needle in err, err


def test_bad_journeys_in_real_processes_exit_2_before_any_load(tmp_path: Path) -> None:
    """The undefined variable and the ragged data file, as a user meets them."""
    procs = []
    for i in (0, 5):
        path = write_case(tmp_path / str(i), BAD_INPUT[i][0])
        procs.append(
            subprocess.Popen(
                [*BALLISTA, "run", "-f", str(path), "-n", "1"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc, i in zip(procs, (0, 5), strict=True):
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, out) == (2, "")
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert BAD_INPUT[i][1] in err, err


# --- end to end -----------------------------------------------------------------------


async def test_the_toml_journey_against_the_shop_counts_what_the_target_saw(
    target: RunningTarget, tmp_path: Path
) -> None:
    out = tmp_path / "summary.json"
    command = [*BALLISTA, "run", "-f", str(EXAMPLES / "journey.toml"), target.url_for("")]
    result = await trio.run_process(
        [*command, "-c", "5", "-d", "2s", "--json", str(out)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    doc = json.loads(out.read_text())
    sent = {name: figures["requests"] for name, figures in doc["requests_by_name"].items()}
    api = target.stats.api
    assert sent["login"] == api["login"] == 5  # setup: once per virtual user
    assert sent["items"] + sent["items-page"] == api["items"]
    assert (sent["clear"], sent["add"], sent["cart"], sent["me"]) == (
        api["cart_clear"],
        api["cart_add"],
        api["cart_get"],
        api["me"],
    )
    assert sent["add"] > 0 and sent["me"] > 0
    assert doc["failed"] == 0 and target.stats.statuses.keys() == {200}
    for flow in ("buy", "browse"):
        assert doc["flows"][flow]["failed"] == 0
        assert doc["flows"][flow]["completed"] > 0
