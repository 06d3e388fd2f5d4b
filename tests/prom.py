"""A real Prometheus for the tests: the distribution's binary on 127.0.0.1 with a
temporary TSDB, configured from prometheus/prometheus.yml, and a tiny client of
its HTTP API. The `prometheus_factory` fixture (conftest.py) starts them."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "prometheus"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, cwd=PROM_DIR, timeout=60, check=False
    )


class Prometheus:
    """A prometheus server process on 127.0.0.1 and a tiny client of its HTTP API."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def _get(self, path: str, **params: Any) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            doc = json.loads(response.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    async def get(self, path: str, **params: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: self._get(path, **params))

    async def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=expr, time=at)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    async def scalar(self, expr: str, at: float) -> float:
        result = await self.query(expr, at)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    async def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query_range", query=expr, start=start, end=end, step=1)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def all_targets_tried(self, n: int) -> bool:
        active = (await self.get("/api/v1/targets", state="active"))["activeTargets"]
        return len(active) == n and all(t["health"] != "unknown" for t in active)

    async def ready(self) -> bool:
        def probe() -> bool:
            try:
                with urllib.request.urlopen(f"{self.base}/-/ready", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        return await trio.to_thread.run_sync(probe)


def derive_config(targets: list[str]) -> str:
    """prometheus/prometheus.yml, scraping `targets` every second, rules by absolute path."""
    text = (PROM_DIR / "prometheus.yml").read_text()
    changes = [
        ('["127.0.0.1:9464"]', json.dumps(targets)),
        ("scrape_interval: 5s", "scrape_interval: 1s"),
        ("scrape_timeout: 4s", "scrape_timeout: 1s"),
        ("evaluation_interval: 5s", "evaluation_interval: 1s"),
        ("- rules/", f"- {PROM_DIR}/rules/"),
    ]
    for old, new in changes:
        assert old in text, f"prometheus.yml no longer has {old!r}"
        text = text.replace(old, new)
    return text


async def prometheus_processes(
    tmp_path: Path,
) -> AsyncIterator[Callable[[list[str]], Awaitable[Prometheus]]]:
    """Yields `start(targets)`: a Prometheus scraping `targets` every second, ready and
    having tried each target once; every one started is stopped at the end."""
    processes: list[trio.Process] = []

    async def start(targets: list[str]) -> Prometheus:
        assert PROMETHEUS is not None
        config = tmp_path / "prometheus.yml"
        config.write_text(derive_config(targets))
        check = promtool("check", "config", str(config))
        assert check.returncode == 0, check.stdout + check.stderr
        port = free_port()
        process = await trio.lowlevel.open_process(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        server = Prometheus(port)

        async def ready() -> bool:
            assert process.poll() is None, "prometheus exited"
            return await server.ready()

        await wait_until(ready, "prometheus ready", limit=30, poll=0.1)
        # Target discovery reaches the scrape loops after up to 5 s: wait until
        # every target has been tried once, so a run is scraped from its start.
        await wait_until(
            lambda: server.all_targets_tried(len(targets)),
            "every target tried once",
            limit=30,
            poll=0.2,
        )
        return server

    yield start
    for process in processes:
        process.terminate()
        with trio.move_on_after(5):
            await process.wait()
        if process.poll() is None:
            process.kill()
            await process.wait()
