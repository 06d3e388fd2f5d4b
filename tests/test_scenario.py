"""TOML scenarios: the examples load, each kind of mistake is named, flags override, weights hold."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from helpers import run_args
from servers import RunningTarget

from ballista.cli.run import config_from_args
from ballista.core.config import RunConfig, Stage
from ballista.core.errors import ConfigError
from ballista.engine.run import Run
from ballista.observe.outputs import Outputs, run_with_outputs

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))

BASE = """
name = "api"
base_url = "http://127.0.0.1:8080/v1"

[[requests]]
name = "list"
path = "/items"
"""


def load(tmp_path: Path, text: str, *flags: str, filename: str = "api.toml") -> RunConfig:
    path = tmp_path / filename
    path.write_text(text)
    return config_from_args(run_args("-f", str(path), *flags))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads(example: Path) -> None:
    config = config_from_args(run_args("-f", str(example)))
    assert config.scenario != "default"
    assert len(config.requests) >= 2
    assert config.thresholds
    assert len({r.name for r in config.requests}) == len(config.requests)


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 3


def test_a_full_scenario(tmp_path: Path) -> None:
    (tmp_path / "bodies").mkdir()
    (tmp_path / "bodies" / "order.json").write_bytes(b'{"sku": 1}')
    config = load(
        tmp_path,
        """
name = "shop"
base_url = "https://shop.example:8443/api/"

[defaults]
headers = { Accept = "application/json", X-Team = "perf" }
timeout = "2s"
protocol = "http2"
connections = 3
insecure = true

[[requests]]
name = "browse"
path = "/items?page=2"
weight = 3.5

[[requests]]
name = "order"
method = "post"
url = "https://shop.example:8443/api/orders"
headers = { Content-Type = "application/json", accept = "*/*" }
body_file = "bodies/order.json"
expect = [201, 202]

[load]
rate = 120
duration = "90s"
max_in_flight = 300
arrival = "poisson"
stages = "30s:240,1m:240"

[thresholds]
all = ["p99<300ms"]
order = ["error_rate<1%", "p95<200ms"]
""",
    )
    assert config.scenario == "shop"
    assert config.origin.url("/") == "https://shop.example:8443/"
    assert (config.protocol, config.connections, config.timeout, config.insecure) == (
        "http2",
        3,
        2.0,
        True,
    )
    browse, order = config.requests
    assert browse.target == "/api/items?page=2"
    assert browse.weight == 3.5
    assert browse.headers == (("Accept", "application/json"), ("X-Team", "perf"))
    assert browse.expected is None
    assert order.method == "POST"
    assert order.target == "/api/orders"
    assert order.body == b'{"sku": 1}'
    assert dict(order.headers) == {
        "accept": "*/*",
        "X-Team": "perf",
        "Content-Type": "application/json",
    }
    assert order.expected == frozenset({201, 202})
    assert config.load.model == "open"
    assert config.load.rate == 120
    assert config.load.max_in_flight == 300
    assert config.load.arrival == "poisson"
    assert config.load.stages == (Stage(30.0, 240.0), Stage(60.0, 240.0))
    assert tuple(t.expr for t in config.thresholds) == (
        "p99<300ms",
        "order.error_rate<1%",
        "order.p95<200ms",
    )


def test_stage_tables_and_rateless_open_ramp(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        BASE
        + """
[load]
model = "open"
stages = [{ duration = "10s", target = 100 }, { duration = 5, target = 0 }]
""",
    )
    assert config.load.model == "open"
    assert config.load.rate is None
    assert config.load.stages == (Stage(10.0, 100.0), Stage(5.0, 0.0))
    assert config.load.effective_duration == 15.0


def test_adaptive_keys(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        BASE
        + """
[load]
duration = "1h"
[load.adaptive]
latency_target = "80ms"
percentile = 99
initial = 5
min = 2
max = 50
increase = 3
backoff = 0.7
""",
    )
    spec = config.load.adaptive
    assert spec is not None
    assert config.load.model == "adaptive"
    assert (spec.latency_target, spec.percentile, spec.initial, spec.minimum, spec.maximum) == (
        0.08,
        99.0,
        5,
        2,
        50,
    )
    assert (spec.increase, spec.backoff) == (3, 0.7)


ADAPTIVE_WINDOWS = (
    BASE
    + """
[load]
duration = "1h"
[load.adaptive]
backoff = 0.7
increase = 3
window_min = "200ms"
window_max = "3s"
window_samples = 40
congestion_statuses = [429]
congestion_tolerance = 0.05
slow_start = false
"""
)


def test_adaptive_window_and_signal_keys(tmp_path: Path) -> None:
    spec = load(tmp_path, ADAPTIVE_WINDOWS).load.adaptive
    assert spec is not None
    assert (spec.window_min, spec.window_max, spec.window_samples) == (0.2, 3.0, 40)
    assert spec.congestion_statuses == frozenset({429})
    assert spec.congestion_tolerance == 0.05
    assert spec.slow_start is False


def test_adaptive_flags_win_over_the_file(tmp_path: Path) -> None:
    spec = load(
        tmp_path, ADAPTIVE_WINDOWS, "--backoff", "0.5", "--increase", "2", "--window-samples", "10"
    ).load.adaptive
    assert spec is not None
    assert (spec.backoff, spec.increase, spec.window_samples) == (0.5, 2, 10)
    assert spec.window_max == 3.0  # not given as a flag: the file's


def test_timeout_flag_wins_even_at_its_default_value(tmp_path: Path) -> None:
    text = BASE.replace("[[requests]]", '[defaults]\ntimeout = "5s"\n\n[[requests]]', 1)
    assert load(tmp_path, text).timeout == 5.0
    assert load(tmp_path, text, "--timeout", "30s").timeout == 30.0


def test_flags_override_the_file(tmp_path: Path) -> None:
    text = (
        'thresholds = ["p99<1s"]\n'
        + BASE
        + '[defaults]\ntimeout = "2s"\nconnections = 2\n'
        + '[load]\nconcurrency = 5\nduration = "1m"\n'
    )
    config = load(
        tmp_path,
        text,
        "http://10.0.0.1:9000",
        "-c", "7", "-d", "5s", "--timeout", "3s", "--connections", "4", "--http1",
        "-H", "X-Run: 1", "--threshold", "error_rate<1%", "--scenario-name", "night",
    )  # fmt: skip
    assert config.origin.url("/") == "http://10.0.0.1:9000/"
    assert config.requests[0].target == "/v1/items"
    assert config.requests[0].headers == (("X-Run", "1"),)
    assert (config.load.concurrency, config.load.duration) == (7, 5.0)
    assert (config.timeout, config.connections, config.protocol) == (3.0, 4, "http1")
    assert config.scenario == "night"
    assert tuple(t.expr for t in config.thresholds) == ("p99<1s", "error_rate<1%")


def test_a_flag_that_picks_another_model_replaces_the_files(tmp_path: Path) -> None:
    text = BASE + '\n[load]\nconcurrency = 5\nduration = "1m"\nstages = "10s:5"\n'
    config = load(tmp_path, text, "-r", "50")
    assert config.load.model == "open"
    assert config.load.rate == 50
    assert config.load.stages == ()
    assert config.load.duration == 60.0
    seq = config_from_args(run_args("-f", str(tmp_path / "api.toml")), sequential=True)
    assert seq.load.model == "sequential"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = [", "api.toml: not valid TOML: "),
        ('nme = "x"\n' + BASE, "api.toml: nme: unknown key (expected one of: name, base_url,"),
        ('name = "a b"\n', "api.toml: name: 'a b': use letters"),
        (
            'base_url = "ftp://x/"\n[[requests]]\nname="a"\npath="/"',
            "api.toml: base_url: 'ftp://x/' must start with http:// or https://",
        ),
        (
            'base_url = "http://x/?a=1"\n[[requests]]\nname="a"\npath="/"',
            "api.toml: base_url: must not have a query string",
        ),
        (
            'base_url = "http://x/"\n',
            "api.toml: requests: missing: add at least one [[requests]] table",
        ),
        (BASE + "[[requests]]\npath = '/b'\n", "api.toml: requests[1].name: missing"),
        (
            BASE + "[[requests]]\nname = 'list'\npath = '/b'\n",
            "api.toml: requests[1].name: 'list' is used twice",
        ),
        (
            BASE + "[[requests]]\nname = 'a/b'\npath = '/b'\n",
            "api.toml: requests[1].name: 'a/b': use letters",
        ),
        (
            BASE + "[[requests]]\nname = 'all'\npath = '/b'\n",
            "api.toml: requests[1].name: 'all' is reserved",
        ),
        (
            BASE + "[[requests]]\nname = 'b'\npath = '/b'\nweight = 0\n",
            "api.toml: requests[1].weight: must be a number > 0",
        ),
        (
            BASE + "[[requests]]\nname = 'b'\npath = '/b'\nweight = '2'\n",
            "api.toml: requests[1].weight: must be a number > 0",
        ),
        (
            BASE + "[[requests]]\nname = 'b'\npath = '/b'\nweight = true\n",
            "api.toml: requests[1].weight: must be a number > 0",
        ),
        (BASE + "[[requests]]\nname = 'b'\n", "api.toml: requests[1]: give either path or url"),
        (
            BASE + "[[requests]]\nname = 'b'\npath = '/b'\nurl = 'http://127.0.0.1:8080/b'\n",
            "api.toml: requests[1]: give either path or url",
        ),
        (
            BASE + "[[requests]]\nname = 'b'\npath = 'b'\n",
            "api.toml: requests[1].path: 'b' must start with '/'",
        ),
        (
            BASE + "[[requests]]\nname = 'b'\nurl = 'http://other:8080/b'\n",
            "api.toml: requests[1].url: 'http://other:8080/b' is not on http://127.0.0.1:8080: a run talks to one origin",
        ),
        (
            BASE + "[[requests]]\nname = 'b'\nurl = 'https://127.0.0.1:8080/b'\n",
            "is not on http://127.0.0.1:8080",
        ),
        (
            '[[requests]]\nname = "a"\npath = "/"\n',
            "api.toml: requests[0].path: a path needs base_url",
        ),
        (
            '[[requests]]\nname = "a"\nurl = "http://a/"\n[[requests]]\nname = "b"\nurl = "http://b/"\n',
            "api.toml: requests[1].url: http://b differs from http://a",
        ),
        (
            BASE + "[[requests]]\nname = 'b'\npath = '/b'\nmethod = 'GE T'\n",
            "api.toml: requests[1].method: method 'GE T': not a valid HTTP method",
        ),
        (
            BASE + "[[requests]]\nname = 'b'\npath = '/b'\nheaders = { 'Bad Name' = 'x' }\n",
            "api.toml: requests[1].headers.Bad Name: header",
        ),
        (
            BASE + "[[requests]]\nname = 'b'\npath = '/b'\nheaders = { X = 1 }\n",
            "api.toml: requests[1].headers.X: must be a string",
        ),
        (
            BASE + "[[requests]]\nname = 'b'\npath = '/b'\nbody = 'x'\nbody_file = 'y'\n",
            "api.toml: requests[1]: give either body or body_file",
        ),
        (
            BASE + "[[requests]]\nname = 'b'\npath = '/b'\nbody_file = 'missing.json'\n",
            "api.toml: requests[1].body_file: cannot read 'missing.json'",
        ),
        (
            BASE + "[[requests]]\nname = 'b'\npath = '/b'\nexpect = [200, 700]\n",
            "api.toml: requests[1].expect[1]: must be an HTTP status (100-599)",
        ),
        (
            BASE + "[[requests]]\nname = 'b'\npath = '/b'\nexpect = []\n",
            "api.toml: requests[1].expect: must be a list of HTTP statuses",
        ),
        (
            BASE + "[[requests]]\nname = 'b'\npath = '/b'\ntimeout = '1s'\n",
            "api.toml: requests[1].timeout: unknown key",
        ),
        (
            BASE + "[defaults]\ntimeout = 'soon'\n",
            "api.toml: defaults.timeout: 'soon' is not a duration",
        ),
        (BASE + "[defaults]\ntimeout = 0\n", "api.toml: defaults.timeout: must be longer than 0"),
        (
            BASE + "[defaults]\nprotocol = 'h3'\n",
            "api.toml: defaults.protocol: 'h3': use auto, http1 or http2",
        ),
        (
            BASE + "[defaults]\nconnections = 0\n",
            "api.toml: defaults.connections: must be a whole number >= 1",
        ),
        (
            BASE + "[defaults]\ninsecure = 'yes'\n",
            "api.toml: defaults.insecure: must be true or false",
        ),
        (BASE + "[defaults]\nretries = 3\n", "api.toml: defaults.retries: unknown key"),
        (
            BASE + "[load]\nmodel = 'burst'\n",
            "api.toml: load.model: 'burst': use one of closed, open, adaptive, sequential",
        ),
        (BASE + "[load]\nrat = 5\n", "api.toml: load.rat: unknown key"),
        (BASE + "[load]\nrate = -5\n", "api.toml: load.rate: must be a number > 0"),
        (
            BASE + "[load]\nconcurrency = 2.5\n",
            "api.toml: load.concurrency: must be a whole number >= 1",
        ),
        (BASE + "[load]\nrequests = 0\n", "api.toml: load.requests: must be a whole number >= 1"),
        (
            BASE + "[load]\nduration = '5 parsecs'\n",
            "api.toml: load.duration: '5 parsecs' is not a duration",
        ),
        (BASE + "[load]\nmodel = 'open'\n", "api.toml: load.model: the open model needs a rate"),
        (
            BASE + "[load]\nmax_in_flight = 5\n",
            "api.toml: load.max_in_flight: applies to the open model, not closed",
        ),
        (
            BASE + "[load]\nrate = 5\narrival = 'bursty'\n",
            "api.toml: load.arrival: 'bursty': use constant or poisson",
        ),
        (
            BASE + "[load]\nstages = '10s'\n",
            "api.toml: load.stages: stage 1 '10s' must be DURATION:TARGET",
        ),
        (
            BASE + "[load]\nstages = [{ duration = '10s' }]\n",
            "api.toml: load.stages[0].target: missing",
        ),
        (
            BASE + "[load]\nstages = [{ duration = '10s', target = -1 }]\n",
            "api.toml: load.stages[0].target: must be a number >= 0",
        ),
        (
            BASE + "[load]\nstages = [{ duration = 'x', target = 1 }]\n",
            "api.toml: load.stages[0].duration: 'x' is not a duration",
        ),
        (
            BASE + "[load]\nstages = 5\n",
            "api.toml: load.stages: must be a list of {duration, target}",
        ),
        (
            BASE + "[load]\nmodel = 'sequential'\nstages = '1s:1'\n",
            "api.toml: load.stages: ramps the rate or the concurrency: not with the sequential model",
        ),
        (
            BASE + "[load.adaptive]\nbackoff = 1.5\n",
            "api.toml: load.adaptive.backoff: must be between 0 and 1",
        ),
        (
            BASE + "[load.adaptive]\npercentile = 100\n",
            "api.toml: load.adaptive.percentile: must be between 0 and 100",
        ),
        (
            BASE + "[load.adaptive]\nmin = 0\n",
            "api.toml: load.adaptive.min: must be a whole number >= 1",
        ),
        (
            BASE + "[load]\nmodel = 'closed'\n[load.adaptive]\nmin = 2\n",
            "api.toml: load.adaptive.min: applies to the adaptive model, not closed",
        ),
        (
            BASE + "[thresholds]\nall = ['p99<abc']\n",
            "api.toml: thresholds.all[0]: 'p99<abc': 'abc' is not a duration",
        ),
        (
            BASE + "[thresholds]\ncart = ['p99<1s']\n",
            "api.toml: thresholds.cart: no request named 'cart'",
        ),
        (BASE + "[thresholds]\nlist = [5]\n", "api.toml: thresholds.list[0]: must be a string"),
        (
            BASE + "[thresholds]\nlist = 5\n",
            "api.toml: thresholds.list: must be a list of expressions",
        ),
        (
            'thresholds = ["nope.p99<1s"]\n' + BASE,
            "api.toml: thresholds[0]: 'nope.p99<1s': no request named 'nope'",
        ),
        (
            'thresholds = "p99<1s"\n' + BASE,
            "api.toml: thresholds: must be a list of expressions or a table",
        ),
    ],
)
def test_validation_names_file_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert message in str(info.value)
    assert str(info.value).startswith("api.toml: ")
    assert "\n" not in str(info.value)


def test_missing_file_and_conflicting_flags(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^-f/--scenario: no such file '.*nope.toml'$"):
        config_from_args(run_args("-f", str(tmp_path / "nope.toml")))
    with pytest.raises(ConfigError, match="-m/--method: the scenario file defines"):
        load(tmp_path, BASE, "-m", "POST")
    with pytest.raises(ConfigError, match="with -f give only the origin"):
        load(tmp_path, BASE, "http://127.0.0.1:9000/v2")
    with pytest.raises(ConfigError, match="-b/--body-file: the scenario file defines"):
        load(tmp_path, BASE, "-b", "x")
    with pytest.raises(ConfigError, match=r"^--max-in-flight: applies to the open model"):
        load(tmp_path, BASE + "[load]\nconcurrency = 3\n", "--max-in-flight", "5")


async def test_weights_hold_at_the_server_and_every_name_is_reported(
    target: RunningTarget, tmp_path: Path
) -> None:
    # Distinct statuses tell the requests apart at the target (it counts statuses).
    weights = {"often": (6, 200), "sometimes": (3, 201), "rarely": (1, 202)}
    entries = "\n".join(
        f'[[requests]]\nname = "{name}"\npath = "/?status={status}"\nweight = {w}\n'
        + ('method = "POST"\nbody = "hello"\nexpect = [202]\n' if name == "rarely" else "")
        for name, (w, status) in weights.items()
    )
    scenario = tmp_path / "mix.toml"
    scenario.write_text(
        f'name = "mix"\nbase_url = "{target.url}"\n{entries}\n'
        "[load]\nconcurrency = 8\nrequests = 3000\n"
        '[thresholds]\nall = ["error_rate<1%"]\nrarely = ["p99<5s"]\n'
    )
    config = config_from_args(run_args("-f", str(scenario)))
    doc, code = await run_with_outputs(
        Run(config), Outputs(quiet=True), stdout=io.StringIO(), stderr=io.StringIO()
    )
    assert code == 0
    n = 3000
    assert doc["requests"] == n
    statuses = target.stats.statuses
    assert sum(statuses.values()) == n
    total_weight = sum(w for w, _ in weights.values())
    by_name = doc["requests_by_name"]
    assert set(by_name) == set(weights)
    for name, (w, status) in weights.items():
        p = w / total_weight
        # Binomial: within 4.5 standard deviations (a false alarm about once in 150,000 runs).
        assert abs(statuses[status] - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)), (name, statuses)
        assert by_name[name]["requests"] == statuses[status]
        assert by_name[name]["status_codes"] == {str(status): statuses[status]}
        assert by_name[name]["failed"] == 0
        assert by_name[name]["latency_s"]["p50"] > 0
    assert by_name["rarely"]["method"] == "POST"
    assert target.stats.bytes_received == 5 * statuses[202]
    assert [t["expr"] for t in doc["thresholds"]] == ["error_rate<1%", "rarely.p99<5s"]
    assert all(t["ok"] for t in doc["thresholds"])
