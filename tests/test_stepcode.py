"""A TOML step's request compiled into Python (engine.stepcode) answers exactly what
the general way does (render the templates, encode them part by part), whatever the
values; a JSON path compiled into Python (core.extract.walker) finds what a plain
walk of the document finds."""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ballista.core.config import RequestSpec
from ballista.core.errors import ConfigError
from ballista.core.extract import MISSING, json_path, walker
from ballista.core.flows import Step
from ballista.core.journey import JourneyFailure
from ballista.core.scenario import scenario_from_table
from ballista.engine import stepcode
from ballista.transport.connect import H1Plan

AUTHORITY = b"127.0.0.1:9"

SCENARIO = """
base_url = "http://127.0.0.1:9/b%41se/ü"
[data]
rows = [{ a = "x", b = "y" }]
[defaults]
headers = { X-Default = "d%sd" }
[[flows]]
name = "f"
[[flows.steps]]
name = "one"
path = "/items/{{ a }}"
headers = { Authorization = "Bearer {{ b }}" }
[[flows.steps]]
name = "many"
method = "POST"
path = "/p/é/{{ a }}/{{ vu }}/%25s?q={{ b }}&i={{ iteration }}"
headers = { X-Two = "{{ a }}-{{ b }}%s", X-Static = "s", X-Uuid = "{{ uuid }}" }
[[flows.steps]]
name = "bare"
method = "HEAD"
path = "/"
[[flows.steps]]
name = "latin"
path = "/{{ b }}"
headers = { X-L = "é {{ a }}", X-Trace = "{{ b }}" }
[[flows.steps]]
name = "tab"
path = "/"
headers = { X-N = "a\tb {{ a }}" }
"""


@dataclass
class Jar:
    cookie: bytes | None = None

    def header(self) -> bytes | None:
        return self.cookie


@dataclass
class User:
    vu: int = 3
    iteration: int = 7
    vars: dict[str, Any] = field(default_factory=dict)
    cookies: Jar = field(default_factory=Jar)


def steps() -> list[Step]:
    journeys = scenario_from_table(tomllib.loads(SCENARIO)).journeys
    assert journeys is not None
    return list(journeys.flows[0].fn.steps)  # type: ignore[attr-defined]


def plan_of(step: Step) -> H1Plan:
    """The step's plan, as the runner makes it."""
    method = step.method.upper()
    spec = RequestSpec(name=step.name, method=method, target="/")
    return H1Plan(0, spec, method.encode(), [k.encode() for k, _ in step.headers], AUTHORITY)


def outcome(fill: stepcode.Fill, user: User) -> Any:
    """What a fill answers, or the reason it fails with."""
    try:
        return fill(user)
    except JourneyFailure as exc:
        return ("failed", exc.reason)


def test_the_steps_that_can_be_compiled_are() -> None:
    compiled = {
        s.name: stepcode._compiled(s, plan_of(s), stepcode._general(s, plan_of(s))) is not None
        for s in steps()
    }
    # A header's literal text that is not printable is left to the general way.
    assert compiled == {"one": True, "many": True, "bare": True, "latin": True, "tab": False}


def test_a_compiled_step_sends_the_request_the_general_way_sends() -> None:
    user = User(vars={"a": "u1", "b": "t-1"})
    for step in steps():
        plan = plan_of(step)
        fill = stepcode.request_filler(step, plan)
        general = stepcode._general(step, plan)
        if step.name == "many":
            continue  # a uuid: different each time (the property test below compares it)
        assert fill(user) == general(user), step.name
    one = steps()[0]
    head = stepcode.request_filler(one, plan_of(one))(user)
    assert head is not None
    assert head.startswith(b"GET /b%41se/%C3%BC/items/u1 HTTP/1.1\r\nhost: 127.0.0.1:9\r\n")
    assert head.endswith(b"\r\nX-Default: d%sd\r\nAuthorization: Bearer t-1\r\n\r\n")


values = (
    st.text(max_size=8)
    | st.text(alphabet=st.characters(codec="latin-1"), max_size=8)
    | st.text(alphabet=st.characters(categories=["Cs", "Cc", "Zs", "Lo"]), max_size=4)
    | st.integers()
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
    | st.lists(st.integers(), max_size=2)
)
cookies = st.none() | st.sampled_from([b"sid=1", b"sid=1; theme=dark", b"a=\r\nb", b"x=\x00"])


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["a", "b"]), values),
    cookies,
    st.integers(-5, 10**20),
    st.integers(0, 10**6),
)
def test_compiled_and_general_agree_whatever_the_values(
    variables: dict[str, Any], cookie: bytes | None, vu: int, iteration: int
) -> None:
    for step in steps():
        plan = plan_of(step)
        fill = stepcode.request_filler(step, plan)
        general = stepcode._general(step, plan)
        user = User(vu=vu, iteration=iteration, vars=variables, cookies=Jar(cookie))
        got, want = outcome(fill, user), outcome(general, user)
        if step.name == "many" and isinstance(got, bytes) and isinstance(want, bytes):
            # The uuids differ; everything else is the same.
            got, want = (h.split(b"X-Uuid: ")[0] for h in (got, want))
        assert got == want, (step.name, variables, cookie)


def test_a_value_that_fails_the_general_way_fails_the_compiled_one_the_same() -> None:
    one = steps()[0]
    fill = stepcode.request_filler(one, plan_of(one))
    assert outcome(fill, User(vars={"a": "x"})) == ("failed", "one: {{ b }} has no value")
    assert outcome(fill, User(vars={"a": "\ud800", "b": "t"}))[0] == "failed"
    # A header value with CR LF is not sent by this path (the general path says why).
    assert fill(User(vars={"a": "x", "b": "t\r\nInjected: 1"})) is None
    assert fill(User(vars={"a": "x", "b": "t"}, cookies=Jar(b"a=\r\nb"))) is None


# --- JSON paths ---------------------------------------------------------------


def follow(doc: Any, path: str) -> Any:
    """A plain walk of `doc`, the rule the compiled path keeps."""
    value = doc
    for key in path.split("."):
        if type(value) is dict:
            if key not in value:
                return MISSING
            value = value[key]
        elif type(value) is list:
            if key == "*":
                if not value:
                    return MISSING
                value = random.choice(value)
                continue
            try:
                index = int(key)
            except ValueError:
                return MISSING
            if not -len(value) <= index < len(value):
                return MISSING
            value = value[index]
        else:
            return MISSING
    return value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=2),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "0", "1", "-1", "*"]), inner, max_size=3)
    ),
    max_leaves=12,
)
paths = st.lists(
    st.sampled_from(["a", "b", "0", "1", "2", "-1", "-2", "-4", "*"]), min_size=1, max_size=4
)


@settings(max_examples=500, deadline=None)
@given(json_values, paths, st.integers(0, 1000))
def test_a_compiled_json_path_finds_what_a_walk_finds(
    doc: Any, segments: list[str], seed: int
) -> None:
    path = ".".join(segments)
    walk = walker(json_path(path))
    random.seed(seed)
    want = follow(doc, path)
    random.seed(seed)
    assert walk(doc) == want


@pytest.mark.parametrize("bad", ["", "a..b", ".a", "a."])
def test_an_empty_json_path_segment_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="no empty part"):
        json_path(bad)


literal = st.lists(st.sampled_from([*"ab/%-._~?=&é ü", "%25", "%s", "%%"]), max_size=6).map("".join)
place = st.sampled_from(["{{ a }}", "{{ b }}", "{{ vu }}", "{{ iteration }}"])
template_text = st.lists(literal | place, max_size=5).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    template_text,
    template_text,
    st.dictionaries(st.sampled_from(["a", "b"]), values, min_size=2),
    cookies,
)
def test_any_template_compiles_to_what_the_general_way_sends(
    path: str, header: str, variables: dict[str, Any], cookie: bytes | None
) -> None:
    text = (
        'base_url = "http://127.0.0.1:9/b%41se/ü"\n[data]\nrows = [{ a = "x", b = "y" }]\n'
        '[[flows]]\nname = "f"\n[[flows.steps]]\n'
        f'name = "s"\npath = "/{path}"\nheaders = {{ X-H = "{header}" }}\n'
    )
    try:
        journeys = scenario_from_table(tomllib.loads(text)).journeys
    except ConfigError:  # a path or header the loader refuses (a space, say): not a step
        return
    assert journeys is not None
    (step,) = journeys.flows[0].fn.steps  # type: ignore[attr-defined]
    plan = plan_of(step)
    user = User(vars=variables, cookies=Jar(cookie))
    got = outcome(stepcode.request_filler(step, plan), user)
    assert got == outcome(stepcode._general(step, plan), user), (path, header, variables)
