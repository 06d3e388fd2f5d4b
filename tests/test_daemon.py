"""`ballista serve` end to end: the API, signals and restarts, faults of the target,
token and redaction, and flat memory. Real daemons (in-process or as processes)
against the real embedded target on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import servers
import trio
from disks import StallingStore
from helpers import free_port, wait_until
from servers import FaultServer, RunningTarget
from trio_websocket import open_websocket_url

from ballista.cli.serve import options_from_args
from ballista.core.config import LoadSpec, RequestSpec, RunConfig, parse_url
from ballista.core.errors import ConfigError
from ballista.daemon.service import Daemon, ServeOptions
from ballista.daemon.store import Store
from ballista.engine.engine import Engine

SECRET = "s3cr3t-token-value"


def scenario(target: RunningTarget, name: str = "t", **load: Any) -> dict[str, Any]:
    load.setdefault("concurrency", 2)
    load.setdefault("duration", "2s")
    return {
        "name": name,
        "base_url": f"http://127.0.0.1:{target.port}",
        "defaults": {"headers": {"Authorization": f"Bearer {SECRET}"}, "interval": "200ms"},
        "requests": [{"name": "home", "path": "/"}],
        "load": load,
    }


def http(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    token: str | None = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    req.add_header("content-type", content_type)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            status = resp.status
            ctype = resp.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the connection
            raw = exc.read()
        status = exc.code
        ctype = exc.headers.get("content-type", "")
    return status, json.loads(raw) if "json" in ctype else raw.decode()


async def api(port: int, method: str, path: str, doc: Any = None, **kw: Any) -> tuple[int, Any]:
    body = None
    if isinstance(doc, bytes):
        body = doc
    elif doc is not None:
        body = json.dumps(doc).encode()
    return await trio.to_thread.run_sync(lambda: http(port, method, path, body, **kw))


async def wait_run(
    port: int,
    run_id: str,
    check: Callable[[dict[str, Any]], Any],
    what: str,
    *,
    points: bool = False,
    limit: float = 15.0,
    token: str | None = None,
) -> Any:
    """The run's API document (with `?points` if asked) once `check` holds for it."""
    path = f"/api/runs/{run_id}" + ("?points" if points else "")

    async def shown() -> Any:
        _, doc = await api(port, "GET", path, token=token)
        return doc if check(doc) else None

    return await wait_until(shown, f"run {run_id}: {what}", limit=limit, poll=0.1)


async def wait_status(
    port: int, run_id: str, wanted: str, limit: float = 15.0, *, token: str | None = None
) -> Any:
    return await wait_run(
        port, run_id, lambda d: d["status"] == wanted, wanted, limit=limit, token=token
    )


def recorded(doc: dict[str, Any]) -> int:
    """Requests in the run's summary so far (0 before its first interval)."""
    return int((doc["summary"] or {}).get("requests", 0))


async def ws_handshake_status(port: int, path: str, token: str | None = None) -> int:
    """The HTTP status a websocket handshake gets (trio-websocket's client leaks its
    socket when the server rejects it, so this one is by hand)."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{auth}\r\n"
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head.encode())
        data = b""
        with trio.fail_after(5):
            while b"\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
    return int(data.split(b" ", 2)[1])


async def ws_subprotocol_status(port: int, url: str, protocol: str) -> int:
    """The status of a handshake offering `protocol`, by hand as above."""
    path = url.split(str(port), 1)[1]
    head = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head.encode())
        with trio.fail_after(5):
            data = await stream.receive_some(4096)
    return int(data.split(b" ", 2)[1])


@pytest.fixture
async def daemon(nursery: trio.Nursery, tmp_path: Path) -> Daemon:
    d = Daemon(ServeOptions(port=0, live_port=0, data_dir=tmp_path / "data", grace=1.0))
    await nursery.start(d.serve)
    return d


# -- the API -----------------------------------------------------------------------------


async def test_api_start_list_show_stop(daemon: Daemon, target: RunningTarget) -> None:
    port = daemon.port
    assert port is not None
    status, page = await api(port, "GET", "/")
    assert status == 200
    assert f'content="{daemon.live_port}"' in page
    status, health = await api(port, "GET", "/api/health")
    assert (status, health["status"], health["runs_active"]) == (200, "ok", 0)

    status, created = await api(port, "POST", "/api/runs", scenario(target, duration="30s"))
    assert status == 201
    run_id = created["id"]
    assert created["run"]["status"] == "running"

    # a second active run with the same name is refused; another name runs beside it
    status, doc = await api(port, "POST", "/api/runs", scenario(target, duration="30s"))
    assert status == 409
    assert doc["field"] == "name"
    status, other = await api(port, "POST", "/api/runs", scenario(target, name="other"))
    assert status == 201

    for rid in (run_id, other["id"]):
        await wait_run(port, rid, recorded, "requests recorded")
    status, listed = await api(port, "GET", "/api/runs")
    assert status == 200
    assert {r["id"] for r in listed["runs"]} == {run_id, other["id"]}
    status, shown = await api(port, "GET", f"/api/runs/{run_id}")
    assert status == 200
    assert shown["summary"]["schema"] == "ballista.summary/1"
    assert shown["summary"]["requests"] > 0

    # both runs in /metrics, each under its own scenario label
    status, metrics = await api(port, "GET", "/metrics")
    assert re.search(r'ballista_requests_total\{.*scenario="t".*status="200"\} [1-9]', metrics)
    assert 'scenario="other"' in metrics
    assert metrics.count("ballista_build_info{") == 1

    status, stopped = await api(port, "POST", f"/api/runs/{run_id}/stop")
    assert (status, stopped["status"]) == (202, "stopping")
    final = await wait_status(port, run_id, "stopped")
    assert final["ended_at"] is not None
    # what the store holds is what the API said, and the intervals add up to it
    _, with_points = await api(port, "GET", f"/api/runs/{run_id}?points")
    assert sum(p["requests"] for p in with_points["points"]) == final["summary"]["requests"]
    status, _ = await api(port, "POST", f"/api/runs/{run_id}/stop")
    assert status == 409
    await wait_status(port, other["id"], "finished")


async def test_points_by_range_and_resolution_summary_and_run_figures(
    daemon: Daemon, target: RunningTarget
) -> None:
    port = daemon.port
    assert port is not None
    doc = scenario(target, name="pts", duration="1500ms")
    doc["defaults"]["interval"] = "50ms"
    status, created = await api(port, "POST", "/api/runs", doc)
    assert status == 201
    run_id = created["id"]
    final = await wait_status(port, run_id, "finished")
    _, full = await api(port, "GET", f"/api/runs/{run_id}?points&histograms")
    points = full["points"]
    assert len(points) >= 20
    total = final["summary"]["requests"]
    assert sum(p["requests"] for p in points) == total
    assert [p["seq"] for p in points] == sorted(p["seq"] for p in points)
    assert sum(p["histogram"]["count"] for p in points) == total
    # unix times (the segment's start plus the stream's elapsed time)
    assert points[-1]["t_end"] == pytest.approx(time.time(), abs=30)
    # fewer points, same counts; their p99 is that of every sample in their span
    _, coarse = await api(port, "GET", f"/api/runs/{run_id}?points&max_points=3")
    assert 1 <= len(coarse["points"]) <= 3
    assert sum(p["requests"] for p in coarse["points"]) == total
    assert "histogram" not in coarse["points"][0]
    # a range: the points that overlap it (the one across its edge in both halves)
    plain = [{k: v for k, v in p.items() if k != "histogram"} for p in points]
    middle = plain[len(plain) // 2]
    mid = (middle["t_start"] + middle["t_end"]) / 2
    _, late = await api(port, "GET", f"/api/runs/{run_id}?points&from={mid}")
    _, early = await api(port, "GET", f"/api/runs/{run_id}?points&to={mid}")
    assert late["points"][0] == early["points"][-1] == middle
    assert early["points"] + late["points"][1:] == plain
    _, mixed = await api(port, "GET", f"/api/runs/{run_id}?points&max_points=6&recent=0.2")
    assert sum(p["requests"] for p in mixed["points"]) == total
    assert mixed["points"][-1] == plain[-1]  # the newest as stored
    for query, field in (
        ("max_points=0", "max_points"),
        ("from=soon", "from"),
        ("to=inf", "to"),
        ("recent=-1", "recent"),
    ):
        status, err = await api(port, "GET", f"/api/runs/{run_id}?points&{query}")
        assert (status, err["field"]) == (400, field), query
    # the bare summary, as `ballista merge` reads it
    status, summary = await api(port, "GET", f"/api/runs/{run_id}/summary")
    assert status == 200
    assert summary == final["summary"]
    assert (await api(port, "GET", "/api/runs/nope/summary"))[0] == 404
    # what the page's list shows of a run; ?limit=N: the newest N, and the active ones
    status, err = await api(port, "GET", "/api/runs?limit=0")
    assert (status, err["field"]) == (400, "limit")
    _, listed = await api(port, "GET", "/api/runs?limit=1")
    (row,) = listed["runs"]
    assert row["model"] == "closed"
    assert row["duration_s"] == final["summary"]["duration_s"] > 1.0
    assert row["latency_p99_s"] == final["summary"]["latency_s"]["p99"]


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b'{"name": "x", "requests": []}', "requests", "requests"),
        (
            b'{"requests": [{"name": "a", "url": "http://127.0.0.1:1/", "weight": -1}]}',
            "requests[0].weight",
            "weight",
        ),
        (b'{"requests": [{"name": "a", "url": "ftp://x/"}]}', "requests[0].url", "http"),
        (
            b'{"requests": [{"name": "a", "url": "http://127.0.0.1:1/"}], "load": {"duration": "soon"}}',
            "load.duration",
            "duration",
        ),
        (
            b'{"requests": [{"name": "a", "url": "http://127.0.0.1:1/", "body_file": "/etc/passwd"}]}',
            "requests[0].body_file",
            "not accepted",
        ),
        (b'{"restart": "yes", "requests": []}', "restart", "true or false"),
        (b'{"requests": [{"name": "a", "url": "http://127.0.0.1:1/", "x": null}]}', None, "null"),
        (b"name = [", None, "not valid TOML"),
        (b"\xff\xfe", None, "UTF-8"),
        (b'{"name": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", None, "nested too deeply"),
        (b'{"name": "x", "requests": ' + b"7" * 5_000 + b"}", None, "not valid JSON"),
        (b'{"name": ' + b"[" * 100 + b"]" * 100 + b"}", None, "nested too deeply"),
    ],
)
async def test_bad_scenarios_are_400_naming_the_field(
    daemon: Daemon, body: bytes, field: str | None, needle: str
) -> None:
    assert daemon.port is not None
    ctype = "application/toml" if body.startswith(b"name") else "application/json"
    status, doc = await api(daemon.port, "POST", "/api/runs", body, content_type=ctype)
    assert status == 400, doc
    assert needle in doc["error"]
    if field is not None:
        assert doc["field"] == field


async def test_toml_scenarios_unknown_paths_methods_and_size_limit(
    daemon: Daemon, target: RunningTarget
) -> None:
    port = daemon.port
    assert port is not None
    toml = (
        f'name = "tomlrun"\nrestart = false\n[[requests]]\nname = "a"\n'
        f'url = "http://127.0.0.1:{target.port}/"\n[load]\nrequests = 20\nconcurrency = 2\n'
    ).encode()
    status, created = await api(port, "POST", "/api/runs", toml, content_type="application/toml")
    assert status == 201
    done = await wait_status(port, created["id"], "finished")
    assert done["summary"]["requests"] == 20
    assert (await api(port, "GET", "/api/runs/nope"))[0] == 404
    assert (await api(port, "POST", "/api/runs/nope/stop"))[0] == 404
    assert (await api(port, "GET", "/api/whatever"))[0] == 404
    assert (await api(port, "DELETE", "/api/runs"))[0] == 405
    status, _ = await api(port, "POST", "/api/runs", b"{" + b" " * (1 << 20) + b"}")
    assert status == 413


async def test_run_limit(nursery: trio.Nursery, tmp_path: Path, target: RunningTarget) -> None:
    d = Daemon(ServeOptions(port=0, live_port=None, data_dir=tmp_path, max_runs=1, grace=0.5))
    await nursery.start(d.serve)
    assert d.port is not None
    assert (await api(d.port, "POST", "/api/runs", scenario(target, name="a")))[0] == 201
    status, doc = await api(d.port, "POST", "/api/runs", scenario(target, name="b"))
    assert status == 429
    assert "limit is 1" in doc["error"]


# -- the disk: a stall stalls nothing else; a file that is not ours is refused ---------------


async def test_a_stalled_disk_delays_no_engine_no_read_and_loses_nothing(
    nursery: trio.Nursery, tmp_path: Path, target: RunningTarget
) -> None:
    stores: list[StallingStore] = []

    def open_store(path: Path) -> Store:
        stores.append(StallingStore(path))
        return stores[-1]

    d = Daemon(
        ServeOptions(port=0, live_port=0, data_dir=tmp_path, grace=0.5), open_store=open_store
    )
    await nursery.start(d.serve)
    (store,) = stores
    port, live_port = d.port, d.live_port
    assert port is not None and live_port is not None
    _, a = await api(port, "POST", "/api/runs", scenario(target, name="a", duration="30s"))
    _, b = await api(port, "POST", "/api/runs", scenario(target, name="b", duration="30s"))
    store.armed = True
    try:
        # a write is now stuck inside its transaction, holding the write lock
        assert await trio.to_thread.run_sync(store.stalled.wait, 10)
        # the disk stays stalled until released (60 s): each answer below comes in spite of it
        with trio.fail_after(15):
            status, health = await api(port, "GET", "/api/health")
            assert (status, health["runs_active"]) == (200, 2)
            status, listed = await api(port, "GET", "/api/runs")
            assert status == 200
            assert {r["id"] for r in listed["runs"]} == {a["id"], b["id"]}
            status, shown = await api(port, "GET", f"/api/runs/{a['id']}?points")
            assert status == 200
            assert shown["status"] == "running"
            before = shown["summary"]["requests"]
            # both engines go on: run b's intervals reach its live stream...
            snapshots = 0
            async with open_websocket_url(f"ws://127.0.0.1:{live_port}/runs/{b['id']}") as ws:
                while snapshots < 3:
                    if json.loads(await ws.get_message())["type"] == "snapshot":
                        snapshots += 1
            # ...and run a's figures keep growing, in memory while the disk is away
            _, shown = await api(port, "GET", f"/api/runs/{a['id']}")
            assert shown["summary"]["requests"] > before
            assert (await api(port, "GET", "/metrics"))[0] == 200
        assert not store.release.is_set()
    finally:
        store.release.set()
    # the disk is back: what the engines did while it was away is all written
    assert (await api(port, "POST", f"/api/runs/{a['id']}/stop"))[0] == 202
    final = await wait_status(port, a["id"], "stopped")
    _, with_points = await api(port, "GET", f"/api/runs/{a['id']}?points")
    assert sum(p["requests"] for p in with_points["points"]) == final["summary"]["requests"]
    # and no SQLite call, read or write, ran on the trio thread
    assert threading.get_ident() not in store.threads
    assert len(store.threads) >= 2


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("kind", ["random bytes", "a directory", "another database"])
async def test_a_file_that_is_not_a_ballista_database_is_refused_untouched(
    kind: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "ballista.db"
    if kind == "random bytes":
        db.write_bytes(random.Random(7).randbytes(8192))
        why = "not a Ballista database (not an SQLite file)"
    elif kind == "a directory":
        db.mkdir()
        (db / "notes.txt").write_text("mine")
        why = "not a Ballista database (it is a directory)"
    else:
        other = sqlite3.connect(db)
        other.executescript(
            "CREATE TABLE users (id INTEGER); CREATE TABLE orders (id INTEGER, runs TEXT);"
            "INSERT INTO users VALUES (1);"
        )
        other.close()
        why = "not a Ballista database (it has tables orders, users)"
    before = _tree(data)
    cmd = [sys.executable, "-m", "ballista", "serve", "--port", "0", "--live-port", "0"]
    result = await trio.run_process(
        [*cmd, "--data-dir", str(data)], capture_stderr=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.decode() == f"ballista: error: {db}: {why}\n"
    assert _tree(data) == before


# -- token and redaction ---------------------------------------------------------------------


def test_non_loopback_bind_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    from ballista.cli.main import main

    for addr in ("0.0.0.0", "192.0.2.1", "::"):
        with pytest.raises(ConfigError, match="needs a token"):
            Daemon(ServeOptions(addr=addr, data_dir=tmp_path))
    env = {k: v for k, v in os.environ.items() if k != "BALLISTA_TOKEN"}
    ns = type("NS", (), {})()
    for key, value in dict(
        config=None,
        addr="0.0.0.0",
        port="0",
        live_port="0",
        data_dir=str(tmp_path),
        token=None,
        grace="1s",
        max_runs="2",
        metrics_port=None,
        live_url=None,
    ).items():
        setattr(ns, key, value)
    with pytest.raises(ConfigError, match="needs a token"):
        options_from_args(ns, env)
    assert options_from_args(ns, {"BALLISTA_TOKEN": "t"}).token == "t"
    # through the command line: one line, exit 2
    old = os.environ.pop("BALLISTA_TOKEN", None)
    try:
        assert main(["serve", "--addr", "0.0.0.0", "--data-dir", str(tmp_path)]) == 2
    finally:
        if old is not None:
            os.environ["BALLISTA_TOKEN"] = old


async def test_token_guards_api_and_live_but_not_metrics_and_health(
    nursery: trio.Nursery, tmp_path: Path, target: RunningTarget
) -> None:
    token = "tok-123"
    d = Daemon(ServeOptions(port=0, live_port=0, data_dir=tmp_path, token=token, grace=0.5))
    await nursery.start(d.serve)
    port = d.port
    assert port is not None and d.live_port is not None
    assert (await api(port, "GET", "/api/health"))[0] == 200
    assert (await api(port, "GET", "/metrics"))[0] == 200
    status, doc = await api(port, "GET", "/api/runs")
    assert status == 401
    assert "token" in doc["error"]
    assert (await api(port, "GET", "/api/runs", token="wrong"))[0] == 401
    assert (await api(port, "POST", "/api/runs", scenario(target)))[0] == 401
    status, created = await api(port, "POST", "/api/runs", scenario(target), token=token)
    assert status == 201
    url = f"ws://127.0.0.1:{d.live_port}/runs/{created['id']}"
    assert await ws_handshake_status(d.live_port, f"/runs/{created['id']}") == 401
    assert await ws_handshake_status(d.live_port, "/runs/nope", token) == 404
    async with open_websocket_url(url + f"?token={token}") as ws:
        hello = json.loads(await ws.get_message())
    assert hello["type"] == "hello"
    # the page's way: the token as a subprotocol (browsers cannot send the header,
    # and a URL ends up in logs), answered with the stream's own subprotocol
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    async with open_websocket_url(
        url, subprotocols=["ballista.live", f"ballista.bearer.{encoded}"]
    ) as ws:
        assert ws.subprotocol == "ballista.live"
        hello = json.loads(await ws.get_message())
    assert hello["type"] == "hello" and hello["segment"] == 1
    assert hello["started_at_unix"] == pytest.approx(time.time(), abs=30)
    wrong = base64.urlsafe_b64encode(b"nope").decode().rstrip("=")
    assert await ws_subprotocol_status(d.live_port, url, f"ballista.bearer.{wrong}") == 401


async def test_secret_headers_are_redacted_everywhere(
    daemon: Daemon, target: RunningTarget, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = daemon.port
    assert port is not None and daemon.live_port is not None
    doc = scenario(target, duration="1s")
    doc["requests"][0]["headers"] = {"X-Api-Key": "key-value-xyz", "Accept": "text/plain"}
    doc["requests"][0]["path"] = "/?api_token=qs-secret-987&size=10"
    status, created = await api(port, "POST", "/api/runs", doc)
    assert status == 201
    async with open_websocket_url(f"ws://127.0.0.1:{daemon.live_port}/runs/{created['id']}") as ws:
        messages = []
        with trio.move_on_after(10):
            while True:
                text = await ws.get_message()
                messages.append(text)
                if json.loads(text)["type"] == "summary":
                    break
    assert json.loads(messages[-1])["type"] == "summary"
    final = await wait_status(port, created["id"], "finished")
    assert target.stats is not None
    _, listed = await api(port, "GET", "/api/runs")
    _, metrics = await api(port, "GET", "/metrics")
    seen = [json.dumps(final), json.dumps(listed), metrics, caplog.text, *messages]
    for text in seen:
        assert SECRET not in text
        assert "key-value-xyz" not in text
        assert "qs-secret-987" not in text
    assert final["scenario"]["defaults"]["headers"]["Authorization"] == "[redacted]"
    assert final["scenario"]["requests"][0]["headers"]["Accept"] == "text/plain"
    # the store keeps the real scenario (it must be able to resume it), under a 0700 dir
    data_dir = daemon.options.data_dir
    assert (data_dir.stat().st_mode & 0o077) == 0


# -- the target dies and comes back ------------------------------------------------------------


async def test_target_killed_and_restarted_mid_run(daemon: Daemon, nursery: trio.Nursery) -> None:
    port_ = free_port()

    # the target lives in its own nursery so that it can be killed and restarted
    async with trio.open_nursery() as tn:
        await servers.start_target(tn, port=port_)
        api_port = daemon.port
        assert api_port is not None
        doc = {
            "name": "faults",
            "requests": [{"name": "home", "url": f"http://127.0.0.1:{port_}/"}],
            "defaults": {"timeout": "1s", "interval": "200ms"},
            "load": {"model": "open", "rate": 200, "max_in_flight": 50, "duration": "4s"},
        }
        status, created = await api(api_port, "POST", "/api/runs", doc)
        assert status == 201
        await wait_run(
            api_port,
            created["id"],
            lambda d: any(p["status_codes"].get("200") for p in d["points"]),
            "an interval of answers on disk",
            points=True,
        )
        tn.cancel_scope.cancel()  # the target dies: its listener and connections close
    died_at = trio.current_time()
    await wait_run(
        api_port,
        created["id"],
        lambda d: (d["summary"] or {}).get("errors_by_kind", {}).get("connect_refused"),
        "connect_refused counted while the target is down",
    )
    await trio.sleep_until(died_at + 1.0)  # the outage itself lasts a second
    async with trio.open_nursery() as tn2:
        await servers.start_target(tn2, port=port_)
        final = await wait_status(api_port, created["id"], "finished", limit=20)
        tn2.cancel_scope.cancel()
    summary = final["summary"]
    kinds = {k: v for k, v in summary["errors_by_kind"].items() if v}
    assert kinds, summary
    assert set(kinds) <= {"connect_refused", "reset", "protocol", "other", "read_timeout"}
    assert kinds.get("connect_refused", 0) > 0
    # the run went on after the restart: responses in the last intervals, new connections
    _, with_points = await api(api_port, "GET", f"/api/runs/{created['id']}?points")
    points = with_points["points"]
    # the rate recovered: the last full interval (200 ms at 200/s) got its 40 answers
    assert points[-2]["status_codes"].get("200", 0) >= 36, points[-2]
    assert any(p["errors"] > 0 for p in points)
    # answers after the restart came over new connections: every old one had died
    first_ok = next(i for i, p in enumerate(points) if p["status_codes"].get("200"))
    first_err = next(i for i, p in enumerate(points) if p["errors"])
    assert first_ok < first_err < len(points) - 2
    assert summary["connections_opened"] >= 2


@pytest.mark.parametrize("fault", ["reset", "garbage", "close_immediately", "silent"])
async def test_misbehaving_targets_are_counted_never_fatal(
    daemon: Daemon, fault: str, nursery: trio.Nursery
) -> None:
    server: FaultServer = await getattr(servers, f"start_{fault}_server")(nursery)
    assert daemon.port is not None
    doc = {
        "name": "fault",
        "requests": [{"name": "home", "url": server.url}],
        "defaults": {"timeout": "300ms", "interval": "200ms"},
        "load": {"concurrency": 2, "duration": "1s"},
    }
    status, created = await api(daemon.port, "POST", "/api/runs", doc)
    assert status == 201
    final = await wait_status(daemon.port, created["id"], "finished")
    kinds = {k: v for k, v in final["summary"]["errors_by_kind"].items() if v}
    assert kinds.get(server.kind.label, 0) > 0, kinds
    assert final["summary"]["errors"] == final["summary"]["requests"]
    # and the daemon is still there for the next one
    assert (await api(daemon.port, "GET", "/api/health"))[0] == 200


# -- processes: SIGTERM, SIGKILL, SIGHUP -----------------------------------------------------------


class Serve:
    """`ballista serve` as a child process; its API port read from its log."""

    def __init__(self, proc: trio.Process, port: int, lines: list[str]) -> None:
        self.proc = proc
        self.port = port
        self.lines = lines


async def start_serve(
    nursery: trio.Nursery, data_dir: Path, *args: str, env: Mapping[str, str] | None = None
) -> Serve:
    cmd = [
        sys.executable,
        "-m",
        "ballista",
        "serve",
        "--port",
        "0",
        "--live-port",
        "0",
        "--data-dir",
        str(data_dir),
        "--grace",
        "1s",
        *args,
    ]
    proc = await trio.lowlevel.open_process(
        cmd, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}
    )
    lines: list[str] = []
    found = trio.Event()
    port_box: list[int] = []

    async def pump() -> None:
        assert proc.stderr is not None
        buf = b""
        async for chunk in proc.stderr:
            buf += chunk
            *done, buf = buf.split(b"\n")
            for raw in done:
                line = raw.decode(errors="replace")
                lines.append(line)
                m = re.search(r"API on http://127\.0\.0\.1:(\d+)/api", line)
                if m and not found.is_set():
                    port_box.append(int(m.group(1)))
                    found.set()

    nursery.start_soon(pump)
    with trio.fail_after(20):
        await found.wait()
    return Serve(proc, port_box[0], lines)


async def stop_process(serve: Serve, signum: int) -> int:
    serve.proc.send_signal(signum)
    with trio.fail_after(20):
        return await serve.proc.wait()


def _toml_value(value: Any, where: str) -> str:
    """One JSON value as TOML (inline tables and arrays): scenario files for these tests."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: must be a finite number")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v, f"{where}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, dict):
        items = (
            f"{json.dumps(str(k), ensure_ascii=False)} = {_toml_value(v, f'{where}.{k}')}"
            for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    if value is None:
        raise ValueError(f"{where}: null is not allowed")
    raise ValueError(f"{where}: unsupported value")


def toml_from_mapping(doc: Mapping[str, Any]) -> str:
    return "".join(
        f"{json.dumps(str(k), ensure_ascii=False)} = {_toml_value(v, str(k))}\n"
        for k, v in doc.items()
    )


def write_config(path: Path, entries: list[tuple[str, dict[str, Any], bool]]) -> Path:
    lines = []
    for file_name, doc, restart in entries:
        (path.parent / file_name).write_text(toml_from_mapping(doc))
        lines.append(
            f'[[runs]]\nscenario = "{file_name}"\nrestart = {"true" if restart else "false"}\n'
        )
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
async def proc_nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def test_sigterm_stops_runs_gracefully_and_writes_everything(
    tmp_path: Path, target: RunningTarget, proc_nursery: trio.Nursery
) -> None:
    data = tmp_path / "data"
    serve = await start_serve(proc_nursery, data)
    status, created = await api(serve.port, "POST", "/api/runs", scenario(target, duration="60s"))
    assert status == 201
    await wait_run(serve.port, created["id"], recorded, "requests recorded")
    with trio.fail_after(10):
        code = await stop_process(serve, signal.SIGTERM)
    assert code == 0
    store = Store(data / "ballista.db")
    row = store.get_run(created["id"])
    assert row is not None
    assert row.status == "interrupted"
    assert row.reason == "daemon shut down"
    assert row.summary is not None
    assert row.summary["requests"] > 0
    # every request is in the intervals, the final partial one included
    assert sum(p.requests for p in store.points(row.id)) == row.summary["requests"]
    assert not any("Traceback" in line for line in serve.lines)


async def test_sigkill_loses_at_most_the_last_interval_and_restart_resumes(
    tmp_path: Path, target: RunningTarget, proc_nursery: trio.Nursery
) -> None:
    data = tmp_path / "data"
    config = write_config(
        tmp_path / "daemon.toml",
        [("soak.toml", scenario(target, name="soak", duration="30s"), True)],
    )
    serve = await start_serve(proc_nursery, data, "--config", str(config))
    status, created = await api(
        serve.port, "POST", "/api/runs", scenario(target, name="oneoff", duration="30s")
    )
    assert status == 201

    async def soak_listed() -> str | None:
        _, runs = await api(serve.port, "GET", "/api/runs")
        return next((r["id"] for r in runs["runs"] if r["name"] == "soak"), None)

    soak_id = await wait_until(soak_listed, "the soak run from --config")
    for run_id in (soak_id, created["id"]):
        await wait_run(
            serve.port, run_id, lambda d: d["points"], "an interval on disk", points=True
        )
    _, before = await api(serve.port, "GET", f"/api/runs/{soak_id}")
    assert before["summary"]["requests"] > 0
    killed_at = time.time()
    await stop_process(serve, signal.SIGKILL)

    # what was on disk at the kill: intervals up to it, the summary of the last one
    db = sqlite3.connect(data / "ballista.db")
    (last_end,) = db.execute(
        "SELECT MAX(t_end) FROM points WHERE run_id = ?", (soak_id,)
    ).fetchone()
    # intervals are 200 ms: the newest one on disk ended at most about one interval
    # before the kill (a second of slack for a loaded machine)
    assert killed_at - last_end < 1.0
    (written,) = db.execute(
        "SELECT SUM(requests) FROM points WHERE run_id = ?", (soak_id,)
    ).fetchone()
    (summary_text,) = db.execute("SELECT summary FROM runs WHERE id = ?", (soak_id,)).fetchone()
    db.close()
    on_disk = json.loads(summary_text)["requests"]
    assert written == on_disk
    assert on_disk >= before["summary"]["requests"]

    serve2 = await start_serve(proc_nursery, data, "--config", str(config))
    _, oneoff = await api(serve2.port, "GET", f"/api/runs/{created['id']}")
    assert oneoff["status"] == "interrupted"
    assert oneoff["summary"]["requests"] > 0
    # the soak (restart = true) goes on as segment 2 of the same run, no new run
    _, soak = await api(serve2.port, "GET", f"/api/runs/{soak_id}")
    assert soak["status"] == "running"
    assert [s["segment"] for s in soak["segments"]] == [1, 2]
    assert soak["segments"][0]["status"] == "interrupted"
    assert soak["segments"][0]["requests"] == on_disk
    assert soak["totals"]["requests"] == on_disk + soak["summary"]["requests"]
    _, runs = await api(serve2.port, "GET", "/api/runs")
    assert sorted(r["name"] for r in runs["runs"]) == ["oneoff", "soak"]
    await wait_run(
        serve2.port,
        soak_id,
        lambda d: {p["segment"] for p in d["points"]} == {1, 2},
        "an interval of segment 2 on disk",
        points=True,
    )
    _, soak = await api(serve2.port, "GET", f"/api/runs/{soak_id}?points")
    assert {p["segment"] for p in soak["points"]} == {1, 2}
    assert await stop_process(serve2, signal.SIGINT) == 0


async def test_sighup_reloads_the_config(
    tmp_path: Path, target: RunningTarget, proc_nursery: trio.Nursery
) -> None:
    config = write_config(
        tmp_path / "daemon.toml", [("a.toml", scenario(target, name="a", duration="30s"), False)]
    )
    serve = await start_serve(proc_nursery, tmp_path / "data", "--config", str(config))

    async def active() -> dict[str, str]:
        _, doc = await api(serve.port, "GET", "/api/runs")
        return {r["name"]: r["status"] for r in doc["runs"]}

    assert await active() == {"a": "running"}
    # a bad file changes nothing
    config.write_text("[[runs]]\nscenario = 3\n")
    serve.proc.send_signal(signal.SIGHUP)
    await wait_until(
        lambda: any("config not reloaded" in line for line in serve.lines), "the reload refused"
    )
    assert await active() == {"a": "running"}
    assert any("config not reloaded" in line for line in serve.lines)
    # a removes, b adds
    write_config(config, [("b.toml", scenario(target, name="b", duration="30s"), False)])
    serve.proc.send_signal(signal.SIGHUP)

    async def a_stopped_b_running() -> bool:
        return await active() == {"a": "stopped", "b": "running"}

    await wait_until(a_stopped_b_running, "a stopped, b running", poll=0.1)
    # b changes: the old b stops, a new b starts; an unchanged file changes nothing
    write_config(
        config, [("b.toml", scenario(target, name="b", concurrency=1, duration="30s"), False)]
    )
    serve.proc.send_signal(signal.SIGHUP)

    async def by_status() -> list[tuple[str, str]]:
        _, doc = await api(serve.port, "GET", "/api/runs")
        return sorted((r["name"], r["status"]) for r in doc["runs"])

    wanted = [("a", "stopped"), ("b", "running"), ("b", "stopped")]

    async def b_restarted() -> bool:
        return await by_status() == wanted

    await wait_until(b_restarted, "the old b stopped, a new b running", poll=0.1)

    def reloads() -> int:
        return sum("SIGHUP: config reloaded" in line for line in serve.lines)

    # Two reloads so far (the bad file was refused): a third line means this one is done.
    await wait_until(lambda: reloads() == 2, "the log of the two reloads so far")
    serve.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: reloads() == 3, "the unchanged config reloaded")
    assert await by_status() == wanted
    assert await stop_process(serve, signal.SIGTERM) == 0


# -- flat memory -------------------------------------------------------------------------------------


def prune_trio_deadlines() -> None:
    """trio forgets the deadlines of finished cancel scopes lazily (it keeps up to
    1,000 stale heap entries, ~135 KiB): drop them now, so that they do not pass for
    Ballista's growth. A no-op if trio's internals have moved."""
    from trio._core import _run

    runner = getattr(_run.GLOBAL_RUN_CONTEXT, "runner", None)
    prune = getattr(getattr(runner, "deadlines", None), "_prune", None)
    if prune is not None:
        prune()


async def test_engine_tracked_memory_does_not_grow_with_requests(target: RunningTarget) -> None:
    """After warm-up, thousands more requests leave Ballista's own allocations flat."""
    origin, path = parse_url(target.url)
    config = RunConfig(
        origin=origin,
        requests=(RequestSpec(name="home", method="GET", target=path),),
        load=LoadSpec(concurrency=4, requests=1200, duration=60.0),
        interval=0.1,
    )
    counts: list[int] = []
    sizes: list[int] = []
    # Ballista's own allocations; the in-process target is not under test
    filters = [
        tracemalloc.Filter(True, "*/ballista/*"),
        tracemalloc.Filter(False, "*/ballista/target/app.py"),
    ]

    def measure(snap: Any) -> None:
        # warm after 150 requests; then the end, 1,050 requests later
        if (snap.requests >= 150 and not sizes) or snap.final:
            prune_trio_deadlines()
            current = tracemalloc.take_snapshot().filter_traces(filters)
            sizes.append(sum(s.size for s in current.statistics("filename")))
            counts.append(snap.requests)

    tracemalloc.start()
    try:
        engine = Engine(config, sinks=[measure])
        await engine.run()
    finally:
        tracemalloc.stop()
    assert len(sizes) == 2
    assert counts[1] - counts[0] >= 900, counts
    growth = sizes[1] - sizes[0]
    # a few KiB of noise (requests in flight at the instant, histogram buckets first
    # touched); a leak of one small object per request would be > 50 KiB here
    assert growth < 16 * 1024, (sizes, counts)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--port", "abc"], "--port: 'abc' is not a port number"),
        (["--live-port", "70000"], "--live-port: 70000 is not a TCP port"),
        (["--config", "nope.toml"], "--config: no such file"),
        (["--grace", "soon"], "--grace"),
        (["--max-runs", "0"], "--max-runs: must be at least 1"),
        (["--data-dir", "{file}/x"], "--data-dir: cannot create"),
        (["--config", "{bad}"], "runs[0].scenario: must be the path"),
        (["--live-url", "live"], "--live-url: 'live' is neither a ws(s):// URL nor a path"),
    ],
)
def test_bad_serve_flags_are_one_line_and_exit_2(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ballista.cli.main import main

    (tmp_path / "file").write_text("")
    (tmp_path / "bad.toml").write_text("[[runs]]\nscenario = 1\n")
    args = [a.format(file=tmp_path / "file", bad=tmp_path / "bad.toml") for a in args]
    assert main(["serve", "--port", "0", "--live-port", "0", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


async def test_a_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    with trio.socket.socket() as busy:
        await busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = [sys.executable, "-m", "ballista", "serve", "--port", str(port)]
        cmd += ["--live-port", "0", "--data-dir", str(tmp_path)]
        result = await trio.run_process(cmd, capture_stderr=True, check=False)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.startswith("ballista: error: cannot listen on 127.0.0.1")
    assert "Address already in use" in err
    assert "Traceback" not in err


async def test_runs_client_against_a_daemon(
    daemon: Daemon, target: RunningTarget, tmp_path: Path
) -> None:
    import argparse
    import io

    from ballista.cli import runs as _runs_client

    server = f"http://127.0.0.1:{daemon.port}"

    async def runs(*argv: str) -> tuple[int, str]:
        parser = argparse.ArgumentParser()
        _runs_client.add_arguments(parser)
        ns = parser.parse_args([*argv, "--server", server])
        out = io.StringIO()
        code = await trio.to_thread.run_sync(lambda: _runs_client.main(ns, out=out))
        return code, out.getvalue()

    path = tmp_path / "s.json"
    path.write_text(json.dumps(scenario(target, name="cli", duration="30s")))
    code, out = await runs("start", str(path))
    assert code == 0
    run_id = out.strip()
    assert re.fullmatch(r"[0-9a-f]{12}", run_id)
    code, out = await runs("list")
    assert code == 0
    assert run_id in out
    assert "running" in out
    await wait_run(
        daemon.port or 0,
        run_id,
        lambda d: (d["summary"] or {}).get("status_codes", {}).get("200"),
        "a 200 recorded",
    )
    code, out = await runs("show", run_id)
    assert code == 0
    assert "statuses   200:" in out
    code, out = await runs("stop", run_id)
    assert (code, out) == (0, f"{run_id} stopping\n")
    await wait_status(daemon.port or 0, run_id, "stopped")
    code, out = await runs("show", run_id, "--json")
    assert json.loads(out)["status"] == "stopped"
    assert (await runs("stop", run_id))[0] == 1
    assert (await runs("show", "nope"))[0] == 1


@pytest.mark.parametrize("load", [{"rate": 1e308}, {"concurrency": 10**9}])
async def test_absurd_sizes_are_refused_and_the_daemon_stays_up(
    daemon: Daemon, target: RunningTarget, load: dict[str, Any]
) -> None:
    assert daemon.port is not None
    doc = scenario(target)
    doc["load"] = {**load, "duration": "1s"}
    with trio.fail_after(5):
        status, body = await api(daemon.port, "POST", "/api/runs", doc)
        assert status == 400, body
        assert "is above the limit" in body["error"]
        status, health = await api(daemon.port, "GET", "/api/health")
        assert status == 200 and health["status"] == "ok"
        # refused before the store heard of it: no run left "running" forever
        status, runs = await api(daemon.port, "GET", "/api/runs")
    assert runs["runs"] == []
    assert target.stats.requests == 0


# -- journeys ------------------------------------------------------------------------------


async def test_a_journey_posted_to_the_api_runs_and_is_shown_redacted(
    daemon: Daemon, target: RunningTarget
) -> None:
    port = daemon.port
    assert port is not None
    auth = {"Authorization": "Bearer {{ token }}"}
    doc = {
        "name": "shop",
        "base_url": f"http://127.0.0.1:{target.port}",
        "data": {"rows": [{"user": f"u{i}", "password": f"secret-u{i}"} for i in range(2)]},
        "setup": {
            "steps": [
                {
                    "name": "login",
                    "method": "POST",
                    "path": "/api/login",
                    "json": {"user": "{{ user }}", "password": "{{ password }}"},
                    "extract": {"token": "json:token"},
                }
            ]
        },
        "flows": [
            {
                "name": "buy",
                "headers": auth,
                "steps": [
                    {"name": "items", "path": "/api/items", "extract": {"item": "json:0.id"}},
                    {
                        "name": "add",
                        "method": "POST",
                        "path": "/api/cart/{{ user }}",
                        "json": {"item": "{{ item }}"},
                        "check": {"status": 200, "json_exists": ["items"]},
                    },
                ],
            }
        ],
        "load": {"concurrency": 2, "duration": "1s"},
    }
    status, created = await api(port, "POST", "/api/runs", doc)
    assert status == 201, created
    final = await wait_status(port, created["id"], "finished")
    by_name = final["summary"]["requests_by_name"]
    api_counts = target.stats.api
    assert by_name["login"]["requests"] == api_counts["login"] == 2
    assert by_name["items"]["requests"] == api_counts["items"] > 0
    assert by_name["add"]["requests"] == api_counts["cart_add"] > 0
    assert final["summary"]["failed"] == 0
    shown = json.dumps(final["scenario"])
    assert "secret-u0" not in shown and "<2 rows>" in shown
    status, refused = await api(port, "POST", "/api/runs", {**doc, "data": {"file": "/etc/passwd"}})
    assert status == 400 and "data.file: not accepted here" in json.dumps(refused)
