"""Hostile sizes: bounds on what one process is asked to do, and the open-file limit."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable

import pytest
import trio
from servers import RunningTarget

from ballista.core.config import (
    MAX_CONCURRENCY,
    MAX_CONNECTIONS,
    MAX_RATE,
    AdaptiveSpec,
    LoadSpec,
    Stage,
    check_bounds,
)
from ballista.core.errors import ConfigError

BALLISTA = [sys.executable, "-m", "ballista"]
FLAGS = {"rate": "-r/--rate", "concurrency": "-c/--concurrency", "stages": "--stages"}


def flag(key: str, why: str) -> ConfigError:
    return ConfigError(f"{FLAGS.get(key, '--' + key.replace('_', '-'))}: {why}")


@pytest.mark.parametrize(
    ("load", "connections", "names"),
    [
        (LoadSpec(model="open", rate=1e12, duration=1.0), None, "-r/--rate: 1e+12 requests/s"),
        (LoadSpec(model="open", rate=float("nan")), None, "-r/--rate: nan"),
        (LoadSpec(concurrency=10**9), None, "-c/--concurrency: 1e+09 is above"),
        (LoadSpec(model="open", rate=10.0, max_in_flight=10**8), None, "--max-in-flight: 1e+08"),
        (LoadSpec(model="open", stages=(Stage(1.0, 1e308),)), None, "--stages: 1e+308"),
        (LoadSpec(stages=(Stage(1.0, 1e7),)), None, "--stages: 1e+07 is above"),
        (LoadSpec(stages=(Stage(1e12, 10.0),)), None, "--stages: 1e+12 s"),
        (LoadSpec(duration=1e10), None, "--duration: 1e+10 s"),
        (LoadSpec(), 10**8, "--connections: 1e+08 is above the limit of 65,535"),
        (
            LoadSpec(model="adaptive", adaptive=AdaptiveSpec(maximum=10**9)),
            None,
            "--adaptive.max: 1e+09",
        ),
    ],
)
def test_absurd_sizes_are_one_line_naming_the_key(
    load: LoadSpec, connections: int | None, names: str
) -> None:
    with pytest.raises(ConfigError) as info:
        check_bounds(load, connections, error=flag)
    message = str(info.value)
    assert message.startswith(names), message
    assert "\n" not in message


def test_sane_and_boundary_sizes_pass() -> None:
    check_bounds(LoadSpec(model="open", rate=MAX_RATE, duration=86400.0, max_in_flight=1000))
    check_bounds(LoadSpec(concurrency=MAX_CONCURRENCY), MAX_CONNECTIONS)
    check_bounds(LoadSpec(model="open", stages=(Stage(60.0, 5000.0), Stage(3600.0, 5000.0))))


def test_the_override_lifts_soft_bounds_only() -> None:
    big = LoadSpec(model="open", rate=5e6, duration=10.0)
    with pytest.raises(ConfigError, match=r"; add --no-limits$"):
        check_bounds(big, override="add --no-limits")
    check_bounds(big, unbounded=True)
    check_bounds(LoadSpec(concurrency=MAX_CONCURRENCY + 1), unbounded=True)
    # past the hard bounds, nothing helps (and the message offers nothing)
    for load, connections in [
        (LoadSpec(model="open", rate=1e12, duration=1.0), None),
        (LoadSpec(), MAX_CONNECTIONS + 1),
        (LoadSpec(model="open", rate=1e9, duration=86400.0 * 30), None),
    ]:
        with pytest.raises(ConfigError) as info:
            check_bounds(load, connections, unbounded=True, override="add --no-limits")
        assert "--no-limits" not in str(info.value)


def _ulimit(n: int) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return limit


async def test_more_connections_than_open_files_is_one_line_before_the_run(
    target: RunningTarget,
) -> None:
    result = await trio.run_process(
        [*BALLISTA, "run", target.url, "-c", "5000", "-d", "1s"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        preexec_fn=_ulimit(256),
    )
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "ulimit -n" in err and "5,000 connections" in err
    assert target.stats.requests == 0


async def test_the_open_model_pool_shrinks_to_the_open_file_limit(target: RunningTarget) -> None:
    result = await trio.run_process(
        [*BALLISTA, "run", target.url, "-r", "50", "-d", "0.5s", "--json", "-", "-q"],
        capture_stdout=True,
        stderr=subprocess.DEVNULL,
        preexec_fn=_ulimit(256),
    )
    doc = json.loads(result.stdout)
    assert doc["requests"] == 25
    assert doc["failed"] == 0
    assert any("lets this process hold 192 of the 1,000 connections" in n for n in doc["notes"])
