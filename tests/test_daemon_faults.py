"""Issue 12 on the daemon's side: runs that cannot start or resume never poison the
store nor keep the daemon from starting."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import wait_until
from servers import RunningTarget

from ballista.daemon import runs as runs_module
from ballista.daemon.service import Daemon, ServeOptions
from ballista.daemon.store import Store
from ballista.engine.run import Run


def http(port: int, method: str, path: str, doc: Any = None) -> tuple[int, Any]:
    body = None if doc is None else json.dumps(doc).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


async def api(port: int, method: str, path: str, doc: Any = None) -> tuple[int, Any]:
    return await trio.to_thread.run_sync(lambda: http(port, method, path, doc))


def scenario(target: RunningTarget, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": f"http://127.0.0.1:{target.port}",
        "requests": [{"name": "home", "path": "/"}],
        "load": {"concurrency": 1, "duration": "3s"},
    }


def poison(data_dir: Path, runs: dict[str, Any]) -> None:
    """Store runs as an earlier daemon that died mid-run would have left them."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(data_dir / "ballista.db")
    try:
        for run_id, doc in runs.items():
            store.create_run(
                run_id,
                name=run_id,
                source="api",
                restart=True,
                scenario=doc,
                scenario_public={},
                target="http://127.0.0.1:9/",
            )
    finally:
        store.close()


async def test_unresumable_stored_runs_are_marked_failed_and_the_daemon_starts(
    nursery: trio.Nursery, tmp_path: Path, target: RunningTarget
) -> None:
    data = tmp_path / "data"
    poison(
        data,
        {
            # what issue 12 found: refused by validation today, stored by older daemons
            "te-gzip": {
                **scenario(target, "te-gzip"),
                "defaults": {"headers": {"Transfer-Encoding": "gzip"}},
            },
            "not-a-scenario": {"requests": "many", "load": 7},
            "good": scenario(target, "good"),
        },
    )
    d = Daemon(ServeOptions(port=0, live_port=None, data_dir=data, grace=0.5))
    with trio.fail_after(10):
        await nursery.start(d.serve)
    assert d.port is not None
    for run_id in ("te-gzip", "not-a-scenario"):
        status, doc = await api(d.port, "GET", f"/api/runs/{run_id}")
        assert status == 200
        assert doc["status"] == "failed"
        assert doc["reason"].startswith("cannot resume: ")
    status, doc = await api(d.port, "GET", "/api/runs/good")
    assert doc["status"] in ("running", "finished")
    assert len(doc["segments"]) == 2  # resumed: a new segment


async def test_a_run_the_engine_refuses_is_not_stored_and_one_that_fails_is_marked(
    nursery: trio.Nursery,
    tmp_path: Path,
    target: RunningTarget,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = Daemon(ServeOptions(port=0, live_port=None, data_dir=tmp_path / "data", grace=0.5))
    await nursery.start(d.serve)
    port = d.port
    assert port is not None

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no engine for you")

    monkeypatch.setattr(runs_module, "Run", refuse)
    status, doc = await api(port, "POST", "/api/runs", scenario(target, "refused"))
    assert status == 400
    assert doc["error"] == "the run cannot start: RuntimeError: no engine for you"
    _, listed = await api(port, "GET", "/api/runs")
    assert listed["runs"] == []

    class Failing(Run):
        async def run(self) -> Any:
            raise RuntimeError("engine broke at start")

    monkeypatch.setattr(runs_module, "Run", Failing)
    status, doc = await api(port, "POST", "/api/runs", scenario(target, "fails"))
    assert status == 201
    run_id = doc["id"]

    async def failed() -> Any:
        _, shown = await api(port, "GET", f"/api/runs/{run_id}")
        return shown if shown["status"] == "failed" else None

    shown = await wait_until(failed, "the run marked failed")
    assert shown["reason"] == "RuntimeError: engine broke at start"
