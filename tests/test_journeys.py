"""Journeys at run time: virtual users over real connections, their steps and flows' figures."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
import tomllib
from typing import Any

import pytest
import trio
from helpers import ORIGIN, run_config
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import JourneyService

from ballista.core.config import LoadSpec, RequestSpec, RunConfig
from ballista.core.flows import NOT_TEXT, TOO_DEEP, Step
from ballista.core.journey import JourneyDef, JourneyFailure, Journeys, Response, Session
from ballista.core.scenario import scenario_from_table
from ballista.core.schedule import parse_stages
from ballista.core.snapshot import Snapshot
from ballista.engine.engine import Engine


def config_for(url: str, journeys: Journeys, *argv: str) -> RunConfig:
    return dataclasses.replace(run_config(url, *argv), journeys=journeys)


async def run(config: RunConfig, **kw: Any) -> tuple[Engine, Snapshot]:
    engine = Engine(config, grace=2.0, **kw)
    with trio.fail_after(60):
        final = await engine.run()
    return engine, final


def flows_of(snap: Snapshot) -> dict[str, Any]:
    return {f.name: f for f in snap.flows}


def by_name(snap: Snapshot) -> dict[str, Any]:
    return {r.name: r for r in snap.by_request}


async def test_login_token_cookie_carried_per_user(journey_service: JourneyService) -> None:
    seen: list[tuple[int, str]] = []

    async def setup(s: Session) -> None:
        r = await s.post("/login", json={"user": f"u{s.vu}"}, name="login")
        s.vars["token"] = r.json()["token"]

    async def me(s: Session) -> None:
        r = await s.get("/me", headers={"Authorization": f"Bearer {s.vars['token']}"}, name="me")
        seen.append((s.vu, r.json()["user"]))

    journeys = Journeys(flows=(JourneyDef("me", me),), setup=setup)
    _, final = await run(config_for(journey_service.url, journeys, "-c", "3", "-n", "30"))
    flows = flows_of(final)
    assert flows["me"].iterations == flows["me"].completed == 30
    assert flows["setup"].completed == 3
    steps = by_name(final)
    assert steps["login"].requests == 3 and steps["me"].requests == 30
    assert final.requests == final.responses == 33 and final.failed == 0
    assert journey_service.hits == {"login": 3, "me": 30}
    # Each user's cookie and token are its own.
    assert all(user == f"u{vu}" for vu, user in seen)
    assert {vu for vu, _ in seen} == {0, 1, 2}


async def test_failures_by_reason_and_user_errors(journey_service: JourneyService) -> None:
    reports: list[str] = []

    def not_empty(r: Response) -> str | None:
        return None if r.content else "empty body"

    def broken(r: Response) -> str | None:
        return str(r.json()["missing"])  # a bug in the check: KeyError

    async def shop(s: Session) -> None:
        k = s.iteration % 4
        if k == 0:
            await s.get("/status/404", name="missing")  # unexpected status
        elif k == 1:
            await s.get("/logout", name="logout", checks=[not_empty])  # a failed check
        elif k == 2:
            await s.get("/status/404", name="expected404", expect={404})
            raise JourneyFailure("gave up")
        elif s.iteration < 4:
            await s.get("/echo", name="echo")
            _ = 1 / 0  # the journey's own bug
        else:
            await s.get("/echo", name="checked", checks=[broken])

    journeys = Journeys(flows=(JourneyDef("shop", shop),))
    engine = Engine(config_for(journey_service.url, journeys, "-c", "1", "-n", "8"), grace=2.0)
    engine.journey_report = reports.append
    with trio.fail_after(60):
        final = await engine.run()
    shop_stats = flows_of(final)["shop"]
    assert shop_stats.iterations == 8 and shop_stats.completed == 0 and shop_stats.failed == 8
    assert shop_stats.failures_by_reason == {
        "status 404": 2,
        "empty body": 2,
        "gave up": 2,
        "journey_error": 2,
    }
    steps = by_name(final)
    assert steps["missing"].failed == 2
    assert steps["logout"].failed == 2  # a 200 that failed its check counts as failed
    assert steps["expected404"].failed == 0
    assert steps["echo"].failed == 0
    assert steps["checked"].failed == 1  # its check raised: the step failed too
    assert final.requests == 8 and final.failed == 5
    # Each exception is shown once, with its traceback, and counted in a note.
    assert len(reports) == 2
    assert "ZeroDivisionError" in reports[0] and "test_journeys.py" in reports[0]
    assert "_ = 1 / 0" in reports[0]
    assert "KeyError" in reports[1] and "broken" in reports[1]
    notes = " ".join(engine.notes())
    assert "2 iterations ended with an exception" in notes
    assert "ZeroDivisionError" in notes and "KeyError" in notes


async def test_a_bad_session_call_or_sys_exit_is_placed_at_the_journeys_line(
    journey_service: JourneyService,
) -> None:
    reports: list[str] = []

    async def shop(s: Session) -> None:
        if s.iteration % 2:
            sys.exit(3)  # a journey's sys.exit() is its failure, not Ballista's end
        await s.get("http://example.com/", name="elsewhere")  # refused by the session

    journeys = Journeys(flows=(JourneyDef("shop", shop),), source="test_journeys.py")
    engine = Engine(config_for(journey_service.url, journeys, "-c", "1", "-n", "4"), grace=2.0)
    engine.journey_report = reports.append
    with trio.fail_after(60):
        final = await engine.run()
    assert flows_of(final)["shop"].failures_by_reason == {"journey_error": 4}
    assert journey_service.hits == {}
    line = shop.__code__.co_firstlineno
    assert reports[0].startswith(
        f"ballista: journey 'shop' raised ValueError at test_journeys.py:{line + 3} "
    )
    assert reports[1].startswith(
        f"ballista: journey 'shop' raised SystemExit at test_journeys.py:{line + 2} "
    )


async def test_a_value_no_request_can_carry_fails_the_step_by_name(
    journey_service: JourneyService,
) -> None:
    # Data rows and extractions reach headers: a line break (an injection) or text
    # beyond Latin-1 fails the iteration with a reason; nothing is sent.
    async def flow(s: Session) -> None:
        value = "a\r\nInjected: 1" if s.iteration % 2 else "李"
        await s.get("/echo", name="echo", headers={"X-User": value})

    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    engine = Engine(config_for(journey_service.url, journeys, "-c", "1", "-n", "4"), grace=2.0)
    reports: list[str] = []
    engine.journey_report = reports.append
    with trio.fail_after(60):
        final = await engine.run()
    assert flows_of(final)["flow"].failures_by_reason == {
        "echo: header 'X-User': a control character in its value": 2,
        "echo: header 'X-User': not ASCII (name) or Latin-1 (value) text": 2,
    }
    assert journey_service.hits == {} and final.requests == 0
    assert reports == []  # not the journey's own bug: no traceback


async def test_a_toml_iteration_lasts_from_its_first_step_to_the_end_of_its_last(
    journey_service: JourneyService,
) -> None:
    """Each user alone on its HTTP/1.1 connection: the engine exchanges a TOML flow's
    steps itself. Against a server with known delays, a flow's duration spans all
    its steps, and each step's latency is its own."""
    text = f"""
base_url = "{journey_service.url}"
[[flows]]
name = "f"
[[flows.steps]]
name = "first"
path = "/slow/80"
[[flows.steps]]
name = "second"
path = "/slow/40"
"""
    scenario = scenario_from_table(tomllib.loads(text), label="t.toml")
    assert scenario.journeys is not None
    engine, final = await run(
        config_for(journey_service.url, scenario.journeys, "-c", "2", "-n", "6", "--http1")
    )
    assert engine.runner is not None
    assert all(p is not None for steps in engine.runner._planned.values() for _, p in steps)
    flow = flows_of(final)["f"]
    assert (flow.iterations, flow.completed) == (6, 6)
    assert flow.duration.min >= 0.12 and flow.duration.max < 2.0
    steps = by_name(final)
    assert steps["first"].latency.min >= 0.08 and steps["second"].latency.min >= 0.04
    assert steps["first"].latency.max < 1.0 and steps["second"].latency.max < 1.0
    assert journey_service.hits == {"slow": 12}


@pytest.mark.parametrize("protocol", ["--http1", "--http2"])
async def test_toml_steps_send_what_they_render_and_refuse_what_no_request_carries(
    journey_service: JourneyService, protocol: str
) -> None:
    """TOML steps with no query or body are encoded once per step over HTTP/1.1 (a
    plan): the server sees the rendered path, headers and cookies, and a value no
    request can carry fails the iteration with the general path's reason."""
    text = f"""
base_url = "{journey_service.url}"
[data]
rows = [{{ v = "plain 1" }}, {{ v = "a\\r\\nInjected: 1" }}, {{ v = "李" }}, {{ v = "%s 2" }}]
mode = "per-iteration"
[setup]
[[setup.steps]]
name = "login"
method = "POST"
path = "/login"
json = {{ user = "ann" }}
[[flows]]
name = "f"
[[flows.steps]]
name = "cookies"
path = "/cookies"
[[flows.steps]]
name = "echo"
path = "/echo?i={{{{ iteration }}}}"
headers = {{ X-Value = "v={{{{ v }}}}", "X-100%" = "%d" }}
extract = {{ seen = "json:headers.x-value", type = "header:content-type" }}
"""
    scenario = scenario_from_table(tomllib.loads(text), label="t.toml")
    assert scenario.journeys is not None
    echoes: list[Any] = []
    original = Step.take

    def spy(self: Step, response: Any, variables: dict[str, Any]) -> None:
        if self.name == "echo":
            echoes.append(response.json())
        original(self, response, variables)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Step, "take", spy)
        engine, final = await run(
            config_for(journey_service.url, scenario.journeys, "-c", "1", "-n", "8", protocol)
        )
    assert engine.runner is not None
    # The step was planned over HTTP/1.1; over HTTP/2 it is built as any step is.
    plans = [p for steps in engine.runner._planned.values() for s, p in steps if s.simple]
    assert len(plans) == 2 and all((p is not None) == (protocol == "--http1") for p in plans)
    assert flows_of(final)["f"].failures_by_reason == {
        "echo: header 'X-Value': a control character in its value": 2,
        "echo: header 'X-Value': not ASCII (name) or Latin-1 (value) text": 2,
    }
    assert journey_service.hits == {"login": 1, "cookies": 8, "echo": 4}
    # (setup takes the first row: rows go 1, 2, 3, 0, ... to iterations 0, 1, 2, 3, ...)
    assert [e["query"] for e in echoes] == ["i=2", "i=3", "i=6", "i=7"]
    assert [e["headers"]["x-value"] for e in echoes] == ["v=%s 2", "v=plain 1"] * 2
    assert all(e["headers"]["x-100%"] == "%d" for e in echoes)
    # Set-Cookie of setup (a JSON step) and of a step that reads no header both count.
    jars = [e["headers"]["cookie"].split("; ") for e in echoes]
    assert all({"sid=ann", "theme=dark", "lang=fr"} <= set(jar) for jar in jars)


async def test_h2c_cookies_and_bodies(journey_service: JourneyService) -> None:
    echoes: list[Any] = []

    async def flow(s: Session) -> None:
        await s.post("/login", json={"user": "ann"}, name="login")
        r = await s.post(
            "/echo", data={"a": "1 2"}, params={"q": "x"}, headers={"X-Id": str(s.vu)}, name="echo"
        )
        echoes.append(r.json())
        await s.get("/logout", name="logout")
        assert s.cookies.header() is None  # type: ignore[attr-defined]
        me = await s.get("/me", name="me", expect={401})
        assert me.status == 401

    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    _, final = await run(config_for(journey_service.url, journeys, "-c", "4", "-n", "8", "--http2"))
    assert flows_of(final)["flow"].completed == 8
    assert final.connections_opened == 1
    echo = echoes[0]
    assert echo["method"] == "POST" and echo["query"] == "q=x" and echo["body"] == "a=1+2"
    assert echo["headers"]["cookie"] == "sid=ann"
    assert echo["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert journey_service.hits == {"login": 8, "echo": 8, "logout": 8, "me": 8}


COOKIES_FLOW = """
[[flows]]
name = "prefs"
[[flows.steps]]
name = "cookies"
path = "/cookies"
extract = { theme = "cookie:theme", lang = "cookie:lang" }
[[flows.steps]]
name = "echo"
path = "/echo"
query = { theme = "{{ theme }}", lang = "{{ lang }}" }
check = { json = { query = "theme=dark&lang=fr" } }
"""


@pytest.mark.parametrize("protocol", ["--http1", "--http2"])
async def test_cookie_extractors_see_every_set_cookie_of_a_response(
    journey_service: JourneyService, protocol: str
) -> None:
    table = {"base_url": journey_service.url, **tomllib.loads(COOKIES_FLOW)}
    journeys = scenario_from_table(table).journeys
    assert journeys is not None
    _, final = await run(config_for(journey_service.url, journeys, "-c", "2", "-n", "6", protocol))
    prefs = flows_of(final)["prefs"]
    assert prefs.failures_by_reason == {}
    assert prefs.iterations == prefs.completed == 6
    assert journey_service.hits == {"cookies": 6, "echo": 6}


async def test_json_is_parsed_once_per_response(journey_service: JourneyService) -> None:
    bodies: list[Any] = []

    async def flow(s: Session) -> None:
        r = await s.get("/echo", name="echo", checks=[lambda r: None if r.json() else "empty"])
        bodies.append((r.json(), r.json()))
        bad = await s.get("/status/200", name="plain")
        for _ in range(2):
            with pytest.raises(ValueError):
                bad.json()

    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    _, final = await run(config_for(journey_service.url, journeys, "-c", "1", "-n", "1"))
    assert flows_of(final)["flow"].completed == 1
    ((first, again),) = bodies
    assert first is again and first["path"] == "/echo"


def _parsed(body: bytes) -> tuple[str, Any]:
    """("ok", value) or ("error", message): StepResponse.json() of `body`."""
    from ballista.engine.journeys import StepResponse

    response = StepResponse()
    response.add_body(body)
    response.status = 200
    try:
        return "ok", response.json()
    except ValueError as exc:
        return "error", str(exc)


def _loads(body: bytes) -> tuple[str, Any]:
    try:
        return "ok", json.loads(body)
    except ValueError as exc:
        return "error", str(exc)


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_JSON_VALUES, st.booleans(), st.sampled_from(["", " ", "\n", "\ufeff"]))
def test_json_bodies_parse_as_json_loads_parses_them(value: Any, ascii_: bool, pad: str) -> None:
    # orjson parses where it can; what json.loads takes and orjson does not (NaN,
    # Infinity, lone surrogates, a BOM, integers past 64 bits) must come out the same.
    body = (pad + json.dumps(value, ensure_ascii=ascii_) + pad.strip("\ufeff")).encode(
        "utf-8", "surrogatepass"
    )
    assert repr(_parsed(body)) == repr(_loads(body))


@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=40) | st.text(alphabet='{}[]":,0123456789.eE+-tfnrua \\\n').map(str.encode)
)
def test_any_body_parses_or_fails_as_json_loads_says(body: bytes) -> None:
    assert repr(_parsed(body)) == repr(_loads(body))


async def test_json_nested_past_any_parser_is_not_json(
    journey_service: JourneyService, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hostile body nested 100,000 deep: an extraction finds nothing (its reason),
    a journey's json() raises ValueError; no traceback, nothing counted as a bug."""
    text = f"""
base_url = "{journey_service.url}"
[[flows]]
name = "toml"
[[flows.steps]]
name = "deep"
path = "/deep/100000"
extract = {{ first = "json:0" }}
"""
    toml = scenario_from_table(tomllib.loads(text)).journeys
    assert toml is not None
    errors: list[str] = []

    async def flow(s: Session) -> None:
        r = await s.get("/deep/100000", name="deep")
        try:
            r.json()
        except ValueError as exc:
            errors.append(str(exc))

    python = Journeys(flows=(JourneyDef("python", flow),))
    for journeys in (toml, python):
        _, final = await run(config_for(journey_service.url, journeys, "-c", "1", "-n", "2"))
        stats = next(iter(flows_of(final).values()))
        if journeys is toml:
            assert stats.failures_by_reason == {"deep: extract first: json:0 not found": 2}
        else:
            assert stats.completed == 2
    assert errors == ["JSON nested too deeply to parse"] * 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["--http1", "--http2"])
async def test_a_lone_surrogate_fails_its_step_with_a_reason(
    journey_service: JourneyService, protocol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Text that cannot be sent ("\\ud800" in a JSON body or a JSON Lines row, kept in
    a variable) in a path, a query, a body: the iteration fails with a reason naming
    the step and the part, nothing is sent, no traceback (a JSON body escapes it)."""
    steps: dict[str, dict[str, Any]] = {
        "path": {"path": "/echo/{{ x }}"},
        "query": {"path": "/echo", "query": {"q": "{{ x }}"}},
        "body": {"path": "/echo", "method": "POST", "body": "{{ x }}"},
        "header": {"path": "/echo", "headers": {"X-V": "{{ x }}"}},
        "json": {"path": "/echo", "method": "POST", "json": {"v": "{{ x }}"}},
    }
    table = {
        "base_url": journey_service.url,
        "data": {"rows": [{"x": "a\ud800"}]},
        "flows": [{"name": k, "steps": [{"name": k, **v}]} for k, v in steps.items()],
    }
    journeys = scenario_from_table(table).journeys
    assert journeys is not None

    async def python(s: Session) -> None:
        await s.get("/echo/a\ud800", name="py")

    expected = {
        "path": "path: path: " + NOT_TEXT,
        "query": "query: path or query: " + NOT_TEXT,
        "body": "body: body: " + NOT_TEXT,
        "header": "header: header 'X-V': not ASCII (name) or Latin-1 (value) text",
        "python": "py: path or query: " + NOT_TEXT,
    }
    sent = 0
    for flows in (journeys, Journeys(flows=(JourneyDef("python", python),))):
        _, final = await run(
            config_for(journey_service.url, flows, "-c", "1", "-n", "20", protocol)
        )
        for name, stats in flows_of(final).items():
            if name == "json":
                assert stats.completed == stats.iterations
                sent += stats.iterations
            else:  # every iteration of the flow failed, for its one reason
                assert stats.failures_by_reason == (
                    {expected[name]: stats.iterations} if stats.iterations else {}
                )
    assert journey_service.hits == ({"echo": sent} if sent else {})  # JSON bodies alone
    assert "Traceback" not in capsys.readouterr().err


async def test_a_json_body_nested_too_deeply_fails_its_step(
    journey_service: JourneyService, capsys: pytest.CaptureFixture[str]
) -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]

    async def flow(s: Session) -> None:
        await s.post("/echo", json=deep, name="deep")

    journeys = Journeys(flows=(JourneyDef("python", flow),))
    _, final = await run(config_for(journey_service.url, journeys, "-c", "1", "-n", "3"))
    assert flows_of(final)["python"].failures_by_reason == {f"deep: body: {TOO_DEEP}": 3}
    assert journey_service.hits == {}
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["--http1", "--http2"])
async def test_open_model_iterations_on_pooled_users(
    journey_service: JourneyService, protocol: str
) -> None:
    users: set[int] = set()

    async def setup(s: Session) -> None:
        await s.post("/login", json={"user": f"u{s.vu}"}, name="login")

    async def flow(s: Session) -> None:
        users.add(s.vu)
        await s.get("/slow/20", name="slow")
        await s.get("/me", name="me")

    journeys = Journeys(flows=(JourneyDef("flow", flow),), setup=setup)
    _, final = await run(
        config_for(journey_service.url, journeys, "-r", "100", "-d", "1s", protocol)
    )
    flow_stats = flows_of(final)["flow"]
    assert flow_stats.iterations == 100 and final.dropped == 0
    # The last arrivals were still running at the end of -d: interrupted, not failed.
    assert flow_stats.completed + flow_stats.interrupted == 100
    assert flow_stats.failed == 0
    # Users are pooled (about rate x iteration time of them, so far fewer than
    # iterations), each set up once.
    assert flows_of(final)["setup"].completed == len(users) < 100
    # Every step counted is one the server saw (an iteration launched as the run
    # stopped may have sent none).
    steps = by_name(final)
    assert journey_service.hits == {
        "login": steps["login"].requests,
        "slow": steps["slow"].requests,
        "me": steps["me"].requests,
    }
    assert steps["me"].requests == flow_stats.completed
    assert by_name(final)["slow"].latency.min >= 0.02


async def test_open_model_drops_iterations_at_the_cap(journey_service: JourneyService) -> None:
    async def flow(s: Session) -> None:
        await s.get("/slow/500", name="slow")

    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    _, final = await run(
        config_for(
            journey_service.url,
            journeys,
            "-r",
            "20",
            "-d",
            "1s",
            "--max-in-flight",
            "2",
            "--timeout",
            "200ms",
        )
    )
    flow_stats = flows_of(final)["flow"]
    # Iterations that could not start within the timeout were dropped, never started.
    assert flow_stats.iterations + final.dropped == 20
    assert final.dropped > 0
    assert journey_service.hits["slow"] == flow_stats.iterations


async def test_stop_interrupts_iterations_and_counts_unfinished_steps(
    journey_service: JourneyService,
) -> None:
    async def flow(s: Session) -> None:
        await s.get("/echo", name="fast")
        await s.get("/slow/5000", name="slow")

    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    engine = Engine(config_for(journey_service.url, journeys, "-c", "3", "-d", "300ms"), grace=0.2)
    with trio.fail_after(30):
        final = await engine.run()
    flow_stats = flows_of(final)["flow"]
    assert flow_stats.iterations == 3 and flow_stats.interrupted == 3
    assert flow_stats.completed == flow_stats.failed == 0
    slow = by_name(final)["slow"]
    assert slow.requests == 3 and slow.errors_by_kind["unfinished"] == 3
    assert final.in_flight == 0


async def test_think_time_ends_at_the_stop(journey_service: JourneyService) -> None:
    async def flow(s: Session) -> None:
        await s.get("/echo", name="a")
        await s.sleep(3600)
        await s.get("/echo", name="b")

    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    with trio.fail_after(10):
        _, final = await run(config_for(journey_service.url, journeys, "-c", "2", "-d", "200ms"))
    flow_stats = flows_of(final)["flow"]
    # The sleep returned at the stop; the next step did not go out.
    assert flow_stats.iterations == flow_stats.interrupted == 2
    assert journey_service.hits == {"echo": 2}


async def test_step_names_are_bounded(journey_service: JourneyService) -> None:
    async def flow(s: Session) -> None:
        await s.get(f"/echo?i={s.iteration}", name=f"n{s.iteration}")

    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    _, final = await run(config_for(journey_service.url, journeys, "-c", "1", "-n", "130"))
    names = by_name(final)
    # 100 names of their own (MAX_STEP_NAMES), then one for all the rest.
    assert len(names) == 101
    assert names["other"].requests == 30
    assert sum(r.requests for r in final.by_request) == 130


async def test_data_exhausted_stops_the_run(journey_service: JourneyService) -> None:
    from ballista.core.journey import DataExhausted

    rows = iter(range(5))

    async def flow(s: Session) -> None:
        try:
            row = next(rows)
        except StopIteration:
            raise DataExhausted("users.csv: all 5 rows used (unique)") from None
        await s.get(f"/echo?row={row}", name="echo")

    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    with trio.fail_after(10):
        engine, final = await run(config_for(journey_service.url, journeys, "-c", "2", "-d", "30s"))
    assert final.elapsed < 10
    assert journey_service.hits == {"echo": 5}
    flow_stats = flows_of(final)["flow"]
    assert flow_stats.completed == 5 and flow_stats.failed == 0
    assert any("users.csv: all 5 rows used" in n for n in engine.notes())


async def test_a_segment_tells_the_data_files_which_it_is(
    journey_service: JourneyService,
) -> None:
    told: list[tuple[int, int]] = []

    async def flow(s: Session) -> None:
        await s.get("/echo", name="echo")

    journeys = Journeys(
        flows=(JourneyDef("flow", flow),), on_segment=(lambda i, n: told.append((i, n)),)
    )
    await run(config_for(journey_service.url, journeys, "-c", "2", "-n", "4", "--segment", "1/2"))
    assert told == [(1, 2)]


# -- on trio's MockClock: think time, schedules, the models' control ---------------------


class FakeStepConnection:
    """Answers 200 with a small JSON body after exactly `service` seconds, logging each start."""

    multiplexed = True
    retry_after: float | None = None

    def __init__(self, starts: list[tuple[float, bytes]], service: float) -> None:
        self._starts = starts
        self._service = service

    async def request(
        self, req: Any, deadline: float, capture: Any = None
    ) -> tuple[int, int, int, int]:
        self._starts.append((trio.current_time(), req.target))
        await trio.sleep(self._service)
        if capture is not None:
            capture.raw_headers = [(b"content-type", b"application/json")]
            capture.add_body(b'{"ok": true}')
        return 200, -1, 40, 100

    async def aclose(self) -> None:
        pass


def fake_engine(
    journeys: Journeys, load: LoadSpec, starts: list[tuple[float, bytes]], service: float, **kw: Any
) -> Engine:
    config = RunConfig(
        origin=ORIGIN,
        requests=(RequestSpec("default", "GET", "/"),),
        load=load,
        journeys=journeys,
    )
    return Engine(
        config,
        grace=5.0,
        connection_factory=lambda i: FakeStepConnection(starts, service),
        **kw,
    )


async def test_think_time_and_iterations_are_exact(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    starts: list[tuple[float, bytes]] = []

    async def flow(s: Session) -> None:
        await s.get("/a", name="a")
        await s.sleep(1.0)
        r = await s.get("/b", name="b")
        assert r.json() == {"ok": True}

    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    engine = fake_engine(journeys, LoadSpec(concurrency=2, duration=10.0), starts, 0.1)
    t0 = trio.current_time()
    final = await engine.run()
    # An iteration is 0.1 + 1.0 + 0.1 = 1.2 s: each user starts them at 0, 1.2, ... 9.6;
    # the last one's think time ends at the stop (10 s) and its second step never goes.
    a = sorted(round(t - t0, 6) for t, target in starts if target == b"/a")
    assert a == sorted([round(1.2 * k, 6) for k in range(9)] * 2)
    flow_stats = flows_of(final)["flow"]
    assert (flow_stats.iterations, flow_stats.completed, flow_stats.interrupted) == (18, 16, 2)
    assert flow_stats.duration.min == pytest.approx(1.2, rel=0.01)
    assert flow_stats.duration.max == pytest.approx(1.2, rel=0.01)
    assert by_name(final)["b"].requests == 16
    assert final.elapsed == pytest.approx(10.0)


async def test_open_model_arrivals_start_iterations_on_schedule(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    starts: list[tuple[float, bytes]] = []

    async def flow(s: Session) -> None:
        await s.get("/a", name="a")
        await s.sleep(0.5)
        await s.get("/b", name="b")

    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    engine = fake_engine(journeys, LoadSpec(model="open", rate=10.0, duration=3.0), starts, 0.25)
    t0 = trio.current_time()
    final = await engine.run()
    a = [round(t - t0, 6) for t, target in starts if target == b"/a"]
    assert a == [round(k / 10, 6) for k in range(30)]
    flow_stats = flows_of(final)["flow"]
    # Iterations last 1 s. At the stop (3 s) a step in flight finishes (the grace), a
    # step not yet sent is not: those whose second step began before 3 s complete.
    assert flow_stats.iterations == 30
    assert flow_stats.completed == 23 and flow_stats.interrupted == 7
    assert flow_stats.duration.max == pytest.approx(1.0, rel=0.01)
    # About rate x duration users, pooled: 10 arrivals a second, each busy 1 s.
    assert final.dropped == 0


async def test_stages_ramp_virtual_users(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    starts: list[tuple[float, bytes]] = []

    async def flow(s: Session) -> None:
        await s.get(f"/{s.vu}", name="step")

    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    # 0 -> 4 users over 4 s: user k starts at t = k + 1; each step takes 0.25 s.
    engine = fake_engine(journeys, LoadSpec(stages=parse_stages("4s:4,1s:4")), starts, 0.25)
    t0 = trio.current_time()
    await engine.run()
    first: dict[bytes, float] = {}
    for t, target in starts:
        first.setdefault(target, round(t - t0, 6))
    assert first == {b"/0": 1.0, b"/1": 2.0, b"/2": 3.0, b"/3": 4.0}


async def test_adaptive_controller_limits_virtual_users(
    mock_clock: trio.testing.MockClock,
) -> None:
    from ballista.core.config import AdaptiveSpec
    from ballista.core.controller import AimdController

    mock_clock.autojump_threshold = 0
    starts: list[tuple[float, bytes]] = []

    async def flow(s: Session) -> None:
        await s.get(f"/{s.vu}", name="step")

    spec = AdaptiveSpec(initial=2, maximum=50, latency_target=0.05)
    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    engine = fake_engine(
        journeys,
        LoadSpec(model="adaptive", duration=20.0, adaptive=spec),
        starts,
        0.01,
        controller=AimdController(spec),
    )
    final = await engine.run()
    users = {target for _, target in starts}
    # Latency stays under target, so the controller grows the users, never past the cap.
    assert 2 < len(users) <= 50
    assert final.concurrency_limit is not None and final.concurrency_limit > 2


async def test_setup_failure_fails_the_iteration(journey_service: JourneyService) -> None:
    async def setup(s: Session) -> None:
        await s.get("/status/500", name="login")

    async def flow(s: Session) -> None:
        await s.get("/echo", name="echo")

    journeys = Journeys(flows=(JourneyDef("flow", flow),), setup=setup)
    _, final = await run(config_for(journey_service.url, journeys, "-c", "2", "-n", "6"))
    flows = flows_of(final)
    # Each iteration tried the setup again; none reached its steps.
    assert flows["flow"].iterations == flows["flow"].failed == 6
    assert flows["flow"].failures_by_reason == {"setup": 6}
    assert flows["setup"].failures_by_reason == {"status 500": 6}
    assert journey_service.hits == {"status": 6}


async def test_figures_in_prometheus_json_and_live_stream(journey_service: JourneyService) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from ballista.observe.live import snapshot_message
    from ballista.observe.metrics import MetricsExporter
    from ballista.observe.summary import summary_dict

    async def flow(s: Session) -> None:
        await s.get("/echo", name="echo")
        if s.iteration % 2:
            raise JourneyFailure("odd")

    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    config = config_for(journey_service.url, journeys, "-c", "1", "-n", "10")
    engine, final = await run(config)
    exporter = MetricsExporter(config, run_id="r1")
    exporter.update(final)
    _, body = exporter.render()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"scenario": "default", **labels}.items())))]

    assert value("ballista_flow_iterations_started_total", flow="flow") == 10
    assert value("ballista_flow_iterations_total", flow="flow", outcome="completed") == 5
    assert value("ballista_flow_iterations_total", flow="flow", outcome="failed") == 5
    assert value("ballista_flow_failures_total", flow="flow", reason="odd") == 5
    assert value("ballista_flow_duration_seconds_count", flow="flow") == 10
    assert value("ballista_requests_total", request="echo", method="GET", status="200") == 10

    message = snapshot_message(final)
    assert message["flows"]["flow"]["iterations"] == 10
    assert message["flows"]["flow"]["failures_by_reason"] == {"odd": 5}
    doc = summary_dict(final, engine.run_meta(dt.datetime.now(dt.UTC)))
    assert doc["flows"] == message["flows"]
    assert doc["flows"]["flow"]["failure_rate"] == 0.5


def test_cookie_jar_is_bounded_and_follows_max_age() -> None:
    from ballista.engine.journeys import MAX_COOKIES, CookieJar

    jar = CookieJar()
    jar.take(b"sid=abc; Path=/; HttpOnly")
    jar.take(b'theme="dark"')
    assert jar.header() == b"sid=abc; theme=dark"
    jar.take(b"sid=; Max-Age=0")
    assert jar.header() == b"theme=dark"
    jar.take(b"broken")  # no '=': ignored
    for i in range(MAX_COOKIES + 10):
        jar.set(f"c{i}", "v")
    assert len(jar) == MAX_COOKIES
    assert "theme" not in jar and jar.get(f"c{MAX_COOKIES + 9}") == "v"


async def test_users_sharing_http1_connections(journey_service: JourneyService) -> None:
    async def flow(s: Session) -> None:
        await s.post("/login", json={"user": f"u{s.vu}"}, name="login")
        r = await s.get("/me", name="me")
        assert r.json()["user"] == f"u{s.vu}"

    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    _, final = await run(
        config_for(journey_service.url, journeys, "-c", "6", "--connections", "2", "-n", "30")
    )
    assert flows_of(final)["flow"].completed == 30
    assert final.connections_opened == 2
    assert journey_service.hits == {"login": 30, "me": 30}


async def test_a_named_requests_statuses_are_its_steps(journey_service: JourneyService) -> None:
    # TOML flows declare each step as a named request with the statuses it expects.
    async def flow(s: Session) -> None:
        await s.get("/status/404", name="gone")
        await s.get("/status/404", name="other")

    journeys = Journeys(flows=(JourneyDef("flow", flow),), step_names=("gone",))
    config = dataclasses.replace(
        config_for(journey_service.url, journeys, "-c", "1", "-n", "3"),
        requests=(RequestSpec("gone", "GET", "/status/404", expected=frozenset({404})),),
    )
    _, final = await run(config)
    steps = by_name(final)
    assert steps["gone"].failed == 0 and steps["other"].failed == 3
    assert flows_of(final)["flow"].failures_by_reason == {"status 404": 3}


async def test_memory_does_not_grow_with_iterations(journey_service: JourneyService) -> None:
    """Cookie jars, variables and step names are bounded: after warm-up, hundreds
    more iterations leave Ballista's own allocations flat."""
    import tracemalloc

    from test_daemon import prune_trio_deadlines

    async def flow(s: Session) -> None:
        s.cookies.set(f"c{s.iteration}", "x" * 40)  # type: ignore[attr-defined]
        r = await s.post("/login", json={"user": f"u{s.vu}"}, name="login")  # Set-Cookie
        s.vars["token"] = r.json()["token"]
        s.vars["count"] = s.vars.get("count", 0) + 1

    journeys = Journeys(flows=(JourneyDef("flow", flow),))
    config = dataclasses.replace(
        config_for(journey_service.url, journeys, "-c", "4", "-n", "1100"), interval=0.1
    )
    counts: list[int] = []
    sizes: list[int] = []
    filters = [tracemalloc.Filter(True, "*/ballista/*")]

    def measure(snap: Snapshot) -> None:
        # Warm once every jar is full (64 cookies a user), then at the end.
        iterations = sum(f.iterations for f in snap.flows)
        if (iterations >= 4 * 70 and not sizes) or snap.final:
            prune_trio_deadlines()
            current = tracemalloc.take_snapshot().filter_traces(filters)
            sizes.append(sum(s.size for s in current.statistics("filename")))
            counts.append(iterations)

    tracemalloc.start()
    try:
        engine = Engine(config, sinks=[measure], grace=2.0)
        with trio.fail_after(100):
            await engine.run()
    finally:
        tracemalloc.stop()
    assert len(sizes) == 2 and counts[1] - counts[0] >= 700, counts
    # A leak of one small object per iteration would be > 50 KiB here.
    assert sizes[1] - sizes[0] < 16 * 1024, (sizes, counts)


def test_failure_reasons_are_bounded() -> None:
    from ballista.core.flowstats import MAX_REASON_LENGTH, MAX_REASONS, FlowRecorder

    flows = FlowRecorder(["f"])
    flows.failed(0, 404, 0.1)  # type: ignore[arg-type]
    flows.failed(0, "x" * 10_000, 0.1)
    for i in range(MAX_REASONS + 5):
        flows.failed(0, f"r{i}", 0.1)
    (stats,) = flows.snapshot()
    reasons = stats.failures_by_reason
    assert len(reasons) == MAX_REASONS + 1 and reasons["other"] == 7
    assert reasons["404"] == 1 and "x" * MAX_REASON_LENGTH in reasons
    assert list(stats.as_dict()["failures_by_reason"]) == sorted(reasons)  # type: ignore[call-overload]


@pytest.mark.parametrize("keep", [False, True], ids=["python", "session-only"])
@pytest.mark.parametrize("protocol", ["--http1", "--http2"])
async def test_a_step_timeout_fails_the_iteration_and_the_user_goes_on(
    journey_service: JourneyService, protocol: str, keep: bool
) -> None:
    # Alone on its HTTP/1.1 connection a user's steps share one moving deadline; on
    # HTTP/2 each step has its own. Either way a timeout is a failed step and iteration.
    # Journeys that await only the session (TOML flows: `keep`) leave a step's
    # deadline set after it; think time still takes it off, and is not cut short.
    async def flow(s: Session) -> None:
        await s.get("/echo", name="before")
        await s.get(f"/slow/{400 if s.iteration % 2 else 0}", name="slow")
        await s.sleep(0.3)  # longer than --timeout: think time is not bounded by it
        await s.get("/echo", name="after")

    journeys = Journeys(flows=(JourneyDef("flow", flow),), session_awaits_only=keep)
    _, final = await run(
        config_for(
            journey_service.url,
            journeys,
            "-c",
            "2",
            "-n",
            "8",
            "--timeout",
            "200ms",
            protocol,
        )
    )
    flow_stats = flows_of(final)["flow"]
    assert flow_stats.iterations == 8
    assert flow_stats.completed == 4 and flow_stats.failed == 4
    assert flow_stats.failures_by_reason == {"read_timeout": 4}
    steps = by_name(final)
    assert steps["slow"].requests == 8 and steps["slow"].errors_by_kind["read_timeout"] == 4
    assert steps["before"].requests == 8 and steps["after"].requests == 4
    assert journey_service.hits["echo"] == 12


async def test_a_setup_step_timeout_fails_the_iteration(journey_service: JourneyService) -> None:
    async def setup(s: Session) -> None:
        await s.get("/slow/400", name="login")

    async def flow(s: Session) -> None:
        await s.get("/echo", name="echo")

    journeys = Journeys(flows=(JourneyDef("flow", flow),), setup=setup)
    _, final = await run(
        config_for(journey_service.url, journeys, "-c", "1", "-n", "3", "--timeout", "100ms")
    )
    flows = flows_of(final)
    assert flows["flow"].failures_by_reason == {"setup": 3} and flows["flow"].interrupted == 0
    assert flows["setup"].failures_by_reason == {"read_timeout": 3}
    assert by_name(final)["login"].errors_by_kind["read_timeout"] == 3
    assert "echo" not in journey_service.hits


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(codec="latin-1")))
def test_a_printable_value_is_one_no_check_refuses(value: str) -> None:
    # A step's request (engine.stepcode) hands H1Plan the header values it found printable as
    # `checked`: printable text has nothing the plan's own check looks for.
    from ballista.transport.connect import _BAD_VALUE

    if value.isprintable():
        assert _BAD_VALUE(value.encode("latin-1")) is None


@pytest.mark.parametrize("method", [b"GET", b"POST", b"DELETE", b"HEAD", b"X-M%s"])
def test_a_planned_step_sends_the_bytes_prepare_dynamic_sends(method: bytes) -> None:
    """A TOML step's plan (its method and header names encoded once) fills in the
    same request prepare_dynamic builds, and takes nothing prepare_dynamic refuses."""
    from ballista.transport.connect import H1Plan, prepare_dynamic

    spec = RequestSpec(name="s", method="GET", target="/")
    names = [b"Authorization", b"X-100%s", b"x-trace"]
    plan = H1Plan(3, spec, method, names, b"127.0.0.1:9")
    for target, values, cookie in [
        (b"/api/items/u1", [b"Bearer t-1", b"%d %s", b""], None),
        (b"/a?b=%25s&c=1", [b"x", b"y", b"z"], b"sid=1; theme=dark"),
    ]:
        head = plan.encode(target, values, cookie)
        assert head is not None
        planned = plan.prepared(head)
        headers = list(zip(names, values, strict=True))
        if cookie is not None:
            headers.append((b"cookie", cookie))
        built = prepare_dynamic(
            3, spec, method, target, headers, b"", ORIGIN, b"127.0.0.1:9", http2=False
        )
        assert planned is not None
        for field in dataclasses.fields(built):
            assert getattr(planned, field.name) == getattr(built, field.name), field.name
    # What prepare_dynamic refuses, the plan leaves to it (None), to be refused there.
    for target, values, cookie in [
        (b"/a b", [b"x", b"y", b"z"], None),
        (b"no-slash", [b"x", b"y", b"z"], None),
        (b"/a", [b"x\r\nX-Evil: 1", b"y", b"z"], None),
        (b"/a", [b"x", b"y", b"z\x00"], None),
        (b"/a", [b"x", b"y", b"z"], b"a=1\r\nX-Evil: 1"),
    ]:
        assert plan.encode(target, values, cookie) is None
    # Headers the general path defaults, frames or closes, and Cookie, are not planned.
    for name in (b"Host", b"user-agent", b"Accept", b"Content-Length", b"Connection", b"Cookie"):
        with pytest.raises(ValueError):
            H1Plan(0, spec, b"GET", [name], b"127.0.0.1:9")
    with pytest.raises(ValueError):
        H1Plan(0, spec, b"GET", [b"bad name"], b"127.0.0.1:9")


def test_a_step_with_known_header_names_is_encoded_as_the_first_one_was() -> None:
    """The first step with a header name takes the checked path; later ones the fast
    one: the same bytes on the wire, and a bad value is still refused."""
    import h11

    from ballista.transport.connect import prepare_dynamic

    spec = RequestSpec(name="s", method="GET", target="/")

    def encode(method: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
        req = prepare_dynamic(
            0, spec, method, b"/a?b=1", headers, body, ORIGIN, b"127.0.0.1:9", http2=False
        )
        assert req.h1_bytes is not None
        return req.h1_bytes

    headers = [(b"X-Fast-Path-Test", b"v 1"), (b"cookie", b"a=1")]
    for method, body in ((b"GET", b""), (b"POST", b'{"n":1}')):
        first = encode(method, headers, body)
        assert encode(method, headers, body) == first
        parser = h11.Connection(h11.SERVER)
        parser.receive_data(first)
        request = parser.next_event()
        assert isinstance(request, h11.Request)
        sent = list(request.headers)
        assert [k for k, _ in sent[:3]] == [b"host", b"user-agent", b"accept"]
        assert (b"x-fast-path-test", b"v 1") in sent and (b"cookie", b"a=1") in sent
    with pytest.raises(ValueError, match="control character"):
        encode(b"GET", [(b"X-Fast-Path-Test", b"v\r\nX-Evil: 1")])
