"""The docker-compose stack, without Docker: the file checked statically (and by the
distribution's docker-compose when installed), then its services started as plain
processes on 127.0.0.1 (demo target, `ballista serve` with the soak scenario, and
Prometheus with prometheus/) to prove the wiring: ports, scrape targets, mounted
paths, the scenario, the token."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


PROMETHEUS = shutil.which("prometheus")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(COMPOSE)
    return doc


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path, for the bind mounts of a service."""
    out: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            out[target] = ROOT / source
    return out


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a file the container reads lives in this repository."""
    for target, source in sorted(mounts(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == target or container_path.startswith(target + "/"):
            return source / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not mounted from the repository")


# -- static -----------------------------------------------------------------------------


def test_docker_compose_config_accepts_the_file() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose is not installed (scripts/test installs it)")
    env = {**os.environ, "BALLISTA_TOKEN": "test-token"}
    result = subprocess.run(
        [tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    # without a token the stack refuses to come up
    env.pop("BALLISTA_TOKEN")
    result = subprocess.run(
        [tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, env=env, check=False
    )
    assert result.returncode != 0
    assert b"BALLISTA_TOKEN" in result.stderr


def test_services_ports_and_paths_line_up(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"target", "ballista", "prometheus", "grafana"}
    # every published port is bound to loopback
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        for source in mounts(service).values():
            assert source.exists(), (name, source)

    target_cmd = services["target"]["command"]
    assert target_cmd[0] == "target"
    target_port = flag(target_cmd, "--port")

    serve = services["ballista"]["command"]
    assert serve[0] == "serve"
    assert flag(serve, "--addr") == "0.0.0.0"
    assert "BALLISTA_TOKEN" in services["ballista"]["environment"]
    # the soak scenario comes from the mounted config, and aims at the target service
    config = host_path(services["ballista"], flag(serve, "--config"))
    assert config.is_file()
    scenarios = re.findall(r'^scenario = "([^"]+)"', config.read_text(), re.M)
    assert scenarios
    soak = (config.parent / scenarios[0]).read_text()
    assert f'base_url = "http://target:{target_port}"' in soak

    # Prometheus reads the compose variant of prometheus/, which scrapes the daemon's
    # metrics port by service name
    prom = services["prometheus"]
    prom_config = next(c for c in prom["command"] if c.startswith("--config.file="))
    prom_file = host_path(prom, prom_config.split("=", 1)[1])
    prom_text = prom_file.read_text()
    assert f'"ballista:{flag(serve, "--metrics-port")}"' in prom_text
    for rule in re.findall(r"^\s+- (rules/\S+)", prom_text, re.M):
        assert (prom_file.parent / rule).is_file(), rule
    listen = next(c for c in prom["command"] if c.startswith("--web.listen-address="))
    prom_port = listen.rsplit(":", 1)[1]

    # Grafana: the datasource points at the prometheus service, the dashboards
    # provider's path is where the dashboards are mounted
    grafana = services["grafana"]
    ds_dir = host_path(grafana, "/etc/grafana/provisioning/datasources")
    ds_text = "".join(p.read_text() for p in ds_dir.glob("*.yml"))
    assert f"url: http://prometheus:{prom_port}" in ds_text
    dash_dir = host_path(grafana, "/etc/grafana/provisioning/dashboards")
    provider = "".join(p.read_text() for p in dash_dir.glob("*.yml"))
    (path,) = re.findall(r"path: (\S+)", provider)
    dashboards = host_path(grafana, path)
    assert sorted(p.name for p in dashboards.glob("*.json")) == [
        "ballista-run.json",
        "ballista-soak.json",
    ]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home).is_file()


def test_dockerfile_is_slim_non_root_with_a_healthcheck(compose: dict[str, Any]) -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    health = re.search(r"^HEALTHCHECK .*\n?.*CMD .*", text, re.M)
    assert health and "/api/health" in health.group(0)
    api_port = flag(compose["services"]["ballista"]["command"], "--port")
    assert f"127.0.0.1:{api_port}/api/health" in text


def test_systemd_unit() -> None:
    unit = (ROOT / "deploy" / "ballista.service").read_text()
    assert re.search(r"^ExecStart=.*ballista serve", unit, re.M)
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert re.search(r"^User=ballista", unit, re.M)
    assert "--addr 127.0.0.1" in unit
    tool = shutil.which("systemd-analyze")
    if tool is not None:
        result = subprocess.run(
            [tool, "verify", str(ROOT / "deploy" / "ballista.service")],
            capture_output=True,
            text=True,
            check=False,
        )
        # only the absent install path may be reported here
        problems = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if line.strip() and "/opt/ballista/bin/ballista" not in line
        ]
        assert not problems, problems


# -- the same services as processes -----------------------------------------------------------


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read()
        status = exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


@pytest.fixture
async def processes() -> AsyncIterator[list[trio.Process]]:
    procs: list[trio.Process] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        with trio.move_on_after(10):
            await p.wait()
        if p.poll() is None:
            p.kill()
            await p.wait()


async def test_the_stack_as_processes(
    compose: dict[str, Any], tmp_path: Path, processes: list[trio.Process]
) -> None:
    services = compose["services"]
    token = "compose-test-token"
    ports = {name: free_port() for name in ("target", "api", "live", "metrics", "prometheus")}

    # target: the compose command, on loopback and a free port
    cmd = list(services["target"]["command"])
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    target_port = cmd[cmd.index("--port") + 1]
    cmd[cmd.index("--port") + 1] = str(ports["target"])
    processes.append(
        await trio.lowlevel.open_process(
            [sys.executable, "-m", "ballista", *cmd], stdout=subprocess.DEVNULL
        )
    )

    # ballista: the mounted config dir, with the service names resolved as compose would
    serve = list(services["ballista"]["command"])
    etc = tmp_path / "etc"
    shutil.copytree(host_path(services["ballista"], "/etc/ballista"), etc)
    for scenario in etc.glob("*.toml"):
        text = scenario.read_text().replace(
            f"http://target:{target_port}", f"http://127.0.0.1:{ports['target']}"
        )
        scenario.write_text(text.replace("rate = 200", "rate = 50"))
    for name, value in (
        ("--config", str(etc / Path(flag(serve, "--config")).name)),
        ("--addr", "127.0.0.1"),
        ("--port", str(ports["api"])),
        ("--live-port", str(ports["live"])),
        ("--metrics-port", str(ports["metrics"])),
        ("--data-dir", str(tmp_path / "data")),
    ):
        serve[serve.index(name) + 1] = value
    processes.append(
        await trio.lowlevel.open_process(
            [sys.executable, "-m", "ballista", *serve],
            env={**os.environ, "BALLISTA_TOKEN": token},
            stderr=subprocess.DEVNULL,
        )
    )
    api = f"http://127.0.0.1:{ports['api']}"

    def soak_running() -> Any:
        try:
            _, doc = get(f"{api}/api/runs", token)
        except OSError:
            return None
        runs = [r for r in doc["runs"] if r["name"] == "soak" and r["status"] == "running"]
        return runs[0] if runs and runs[0]["requests"] > 0 else None

    run = await wait_until(
        soak_running, "the soak run from the config to start", limit=30, poll=0.2, thread=True
    )
    assert run["source"] == "config"
    assert run["restart"] is True
    assert get(f"{api}/api/runs")[0] == 401
    assert get(f"{api}/api/health")[0] == 200
    status, metrics = get(f"http://127.0.0.1:{ports['metrics']}/metrics")
    assert status == 200
    assert 'scenario="soak"' in metrics

    if PROMETHEUS is None:
        pytest.fail("prometheus is not installed (scripts/test installs it)")
    prom = services["prometheus"]
    prom_config = next(c for c in prom["command"] if c.startswith("--config.file="))
    prom_file = host_path(prom, prom_config.split("=", 1)[1])
    text = prom_file.read_text()
    metrics_port = flag(services["ballista"]["command"], "--metrics-port")
    for old, new in (
        (f"ballista:{metrics_port}", f"127.0.0.1:{ports['metrics']}"),
        ("localhost:9090", f"127.0.0.1:{ports['prometheus']}"),
        ("scrape_interval: 5s", "scrape_interval: 1s"),
        ("evaluation_interval: 5s", "evaluation_interval: 1s"),
        ("scrape_timeout: 4s", "scrape_timeout: 1s"),
        ("- rules/", f"- {prom_file.parent}/rules/"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    processes.append(
        await trio.lowlevel.open_process(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'prom'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    base = f"http://127.0.0.1:{ports['prometheus']}"

    def query(expr: str) -> Any:
        try:
            _, doc = get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        except OSError:
            return None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            return None
        return doc["data"]["result"] or None

    up = await wait_until(
        lambda: query('up{job="ballista"} == 1'),
        "prometheus to scrape ballista",
        limit=30,
        poll=0.2,
        thread=True,
    )
    assert up[0]["metric"]["instance"] == f"127.0.0.1:{ports['metrics']}"
    result = await wait_until(
        lambda: query('sum by (scenario) (ballista_requests_total{scenario="soak"}) > 0'),
        "the soak's requests in prometheus",
        limit=30,
        poll=0.2,
        thread=True,
    )
    assert float(result[0]["value"][1]) > 0
    info = await wait_until(
        lambda: query("ballista_run_info"), "ballista_run_info", limit=30, poll=0.2, thread=True
    )
    assert info[0]["metric"]["run_id"] == run["id"]
