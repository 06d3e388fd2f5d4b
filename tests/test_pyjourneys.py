"""Python journeys from the command line: loading `-f journeys.py`, its bad input, a whole run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio
from servers import JourneyService

from ballista.cli.main import main
from ballista.core.errors import ConfigError
from ballista.core.pyjourneys import load_journeys

BALLISTA = [sys.executable, "-m", "ballista"]

JOURNEYS = """
from ballista import journey, setup


@setup
async def login(session):
    r = await session.post("/login", json={"user": f"u{session.vu}"}, name="login")
    session.vars["token"] = r.json()["token"]


@journey(weight=3)
async def browse(session):
    await session.get("/echo?page=1", name="echo")


@journey(name="account")
async def me(session):
    auth = {"Authorization": "Bearer " + session.vars["token"]}
    await session.get("/me", headers=auth, name="me")
    await session.get("/status/503", name="flaky")
"""


def write(tmp_path: Path, text: str, name: str = "journeys.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_loads_journeys_weights_names_and_setup(tmp_path: Path) -> None:
    journeys = load_journeys(write(tmp_path, JOURNEYS))
    assert [(f.name, f.weight) for f in journeys.flows] == [("browse", 3.0), ("account", 1.0)]
    assert journeys.setup is not None and journeys.setup.__name__ == "login"
    assert journeys.source == "journeys.py"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("def broken(:\n", "journeys.py:1: SyntaxError"),
        ("import os\nimport no_such_module_here\n", "journeys.py:2: ModuleNotFoundError"),
        ("x = 1\n\nraise RuntimeError('boom')\n", "journeys.py:3: RuntimeError: boom"),
        ("import sys\nsys.exit(0)\n", "journeys.py:2: sys.exit(0) while being imported"),
        ("from ballista import journey\n", "journeys.py: defines no journey"),
        (
            "from ballista import journey\n@journey\ndef sync(session):\n    pass\n",
            "@journey 'sync' must be an `async def`",
        ),
        (
            "from ballista import journey\n@journey\nasync def two(session, other):\n    pass\n",
            "@journey 'two' must take one argument",
        ),
        (
            "from ballista import journey\n@journey\nasync def none():\n    pass\n",
            "@journey 'none' must take one argument",
        ),
        (
            "from ballista import journey\n@journey(weight=0)\nasync def w(s):\n    pass\n",
            "journey 'w': weight must be a number above 0",
        ),
        (
            "from ballista import journey, setup\n@journey\nasync def a(s): pass\n"
            "@setup\nasync def b(s): pass\n@setup\nasync def c(s): pass\n",
            "more than one @setup",
        ),
        (
            "from ballista import journey\n@journey(name='x')\nasync def a(s): pass\n"
            "@journey(name='x')\nasync def b(s): pass\n",
            "both named 'x'",
        ),
    ],
)
def test_bad_journeys_fail_in_one_line_before_any_load(
    tmp_path: Path, text: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=None) as caught:
        load_journeys(path)
    assert needle in str(caught.value)
    # Through the command line: one line, exit 2, nothing sent (port 9 is never dialled).
    assert main(["run", "-f", path, "http://127.0.0.1:9/"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("ballista: error:")
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ([], "need the target's URL"),
        (["http://127.0.0.1:9/api"], "give only the origin"),
        (["http://127.0.0.1:9/", "-m", "POST"], "-m/--method"),
        (["http://127.0.0.1:9/", "--threshold", "flow:nope.p95<1s"], "no flow named 'nope'"),
        (["http://127.0.0.1:9/", "--threshold", "flow:browse.rps>1"], "unknown flow metric"),
    ],
)
def test_bad_flags_with_journeys(
    tmp_path: Path, extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, JOURNEYS)
    assert main(["run", "-f", path, *extra]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and needle in err, err


async def test_a_python_journeys_run_end_to_end(
    journey_service: JourneyService, tmp_path: Path
) -> None:
    path = write(tmp_path, JOURNEYS)
    result = await trio.run_process(
        [
            *BALLISTA,
            "run",
            "-f",
            path,
            journey_service.url,
            "-c",
            "4",
            "-n",
            "40",
            "--json",
            "-",
            "--threshold",
            "me.p99<5s",
            "--threshold",
            "flow:browse.p95<5s",
            "--threshold",
            "flow:account.failure_rate<1%",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    err = result.stderr.decode()
    assert result.returncode == 1, err  # account fails on its 503: its threshold is crossed
    doc = json.loads(result.stdout)
    flows = doc["flows"]
    assert set(flows) == {"browse", "account", "setup"}
    assert flows["setup"]["completed"] == 4
    assert flows["browse"]["iterations"] + flows["account"]["iterations"] == 40
    assert flows["account"]["failed"] == flows["account"]["iterations"] > 0
    assert flows["account"]["failures_by_reason"] == {"status 503": flows["account"]["failed"]}
    assert set(flows["browse"]["duration_s"]) == {
        "min",
        "mean",
        "p50",
        "p90",
        "p95",
        "p99",
        "p999",
        "max",
    }
    # Each flow's durations as a histogram that merges exactly.
    browse = flows["browse"]
    assert doc["histograms"]["flows"]["browse"]["count"] == browse["completed"] + browse["failed"]
    steps = doc["requests_by_name"]
    assert steps["login"]["requests"] == 4
    assert (
        steps["echo"]["requests"] == flows["browse"]["iterations"] == journey_service.hits["echo"]
    )
    assert steps["flaky"]["failed"] == steps["flaky"]["requests"]
    verdicts = {t["expr"]: t["ok"] for t in doc["thresholds"]}
    assert verdicts == {
        "me.p99<5s": True,
        "flow:browse.p95<5s": True,
        "flow:account.failure_rate<1%": False,
    }
    # The text summary (on stderr with --json -) has the flows.
    assert "flows" in err and "browse" in err and "status 503" in err


async def test_journeys_with_workers_merge_their_flows(
    journey_service: JourneyService, tmp_path: Path
) -> None:
    path = write(tmp_path, JOURNEYS)
    result = await trio.run_process(
        [*BALLISTA, "run", "-f", path, journey_service.url, "-c", "4", "-n", "40",
         "--workers", "2", "-q", "--json", "-"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    doc = json.loads(result.stdout)
    flows = doc["flows"]
    # Two segments of 2 users and 20 iterations each: one summary of the whole test.
    assert flows["setup"]["completed"] == 4
    assert flows["browse"]["iterations"] + flows["account"]["iterations"] == 40
    steps = doc["requests_by_name"]
    assert steps["login"]["requests"] == journey_service.hits["login"] == 4
    assert steps["echo"]["requests"] == journey_service.hits["echo"]
    assert doc["histograms"]["flows"]["browse"]["count"] == flows["browse"]["completed"]


async def test_segments_of_journeys_merge_exactly(
    journey_service: JourneyService, tmp_path: Path
) -> None:
    path = write(tmp_path, JOURNEYS)
    outs = []
    for i in range(2):
        out = tmp_path / f"seg{i}.json"
        result = await trio.run_process(
            [*BALLISTA, "run", "-f", path, journey_service.url, "-c", "4", "-n", "20",
             "--segment", f"{i}/2", "-q", "--json", str(out)],
            capture_stderr=True,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        outs.append(json.loads(out.read_text()))
    merged = await trio.run_process(
        [*BALLISTA, "merge", str(tmp_path / "seg0.json"), str(tmp_path / "seg1.json"),
         "-q", "--json", "-", "--threshold", "flow:browse.p95<5s"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )  # fmt: skip
    assert merged.returncode == 0, merged.stderr.decode()[-2000:]
    doc = json.loads(merged.stdout)
    browse = doc["flows"]["browse"]
    parts = [o["flows"]["browse"] for o in outs]
    assert browse["iterations"] == sum(p["iterations"] for p in parts)
    assert doc["flows"]["setup"]["completed"] == 4
    # The parts' histograms merged: exact percentiles, not nulls.
    assert browse["duration_s"]["p95"] is not None
    assert doc["histograms"]["flows"]["browse"]["count"] == sum(
        o["histograms"]["flows"]["browse"]["count"] for o in outs
    )
    assert [(t["expr"], t["ok"]) for t in doc["thresholds"]] == [("flow:browse.p95<5s", True)]
