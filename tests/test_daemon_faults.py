"""Issue 12 on the daemon's side: runs that cannot start or resume never poison the
store nor keep the daemon from starting; slow, idle, oversize and misdirected
clients never take its listeners down."""

from __future__ import annotations

import functools
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import wait_until
from servers import FaultServer, RunningTarget
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from ballista.cli.runs import call
from ballista.core.errors import BallistaError
from ballista.daemon import runs as runs_module
from ballista.daemon.service import Daemon, ServeOptions
from ballista.daemon.store import Store
from ballista.engine.run import Run
from ballista.observe.httpserver import HEAD_TIMEOUT, MAX_BODY, MAX_HEAD
from ballista.observe.live import HANDSHAKE_TIMEOUT


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


async def test_a_restartable_run_with_a_non_ascii_path_survives_restarts(
    nursery: trio.Nursery, tmp_path: Path, target: RunningTarget
) -> None:
    data = tmp_path / "data"
    doc = {**scenario(target, "accents"), "restart": True}
    doc["requests"] = [{"name": "home", "path": "/été/ü"}]
    async with trio.open_nursery() as first:
        d = Daemon(ServeOptions(port=0, live_port=None, data_dir=data, grace=0.5))
        await first.start(d.serve)
        port = d.port
        assert port is not None
        status, created = await api(port, "POST", "/api/runs", doc)
        # Percent-encoded as UTF-8 by validation, as curl and browsers send it.
        assert status == 201, created
        # cancelled mid-run, as a killed daemon leaves it: a run is stored running
        first.cancel_scope.cancel()
    again = Daemon(ServeOptions(port=0, live_port=None, data_dir=data, grace=0.5))
    with trio.fail_after(10):
        await nursery.start(again.serve)
    assert again.port is not None
    _, shown = await api(again.port, "GET", f"/api/runs/{created['id']}")
    assert shown["status"] == "running"
    assert len(shown["segments"]) == 2


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


# -- hostile clients -------------------------------------------------------------------------


async def raw_exchange(port: int, data: bytes, *, limit: float = 5.0) -> bytes:
    """Send `data`, read until the server closes (or `limit`): the raw answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = b""
    async with stream:
        await stream.send_all(data)
        with trio.move_on_after(limit):
            while chunk := await stream.receive_some(65536):
                out += chunk
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


async def health_within(port: int, limit: float) -> float:
    """Seconds one GET /api/health took; fails past `limit`."""
    start = trio.current_time()
    with trio.fail_after(limit):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
    assert status_of(answer) == 200, answer[:200]
    return trio.current_time() - start


@pytest.fixture
async def quiet_daemon(nursery: trio.Nursery, tmp_path: Path) -> Daemon:
    d = Daemon(ServeOptions(port=0, live_port=0, data_dir=tmp_path / "data", token="tok"))
    await nursery.start(d.serve)
    return d


async def test_slowloris_does_not_take_the_api_down(quiet_daemon: Daemon) -> None:
    port = quiet_daemon.port
    assert port is not None
    dribblers = 300  # more than a listener holds (MAX_CONNECTIONS)
    closed_by_server: list[tuple[bool, float]] = []
    opened = trio.Event()
    connected = 0
    head = b"POST /api/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"

    async def dribble(start: float, whole_head: bool) -> None:
        nonlocal connected
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        connected += 1
        if connected == dribblers:
            opened.set()
        async with stream:
            try:
                # half dribble their head, half a body behind a whole head
                await stream.send_all(
                    head + b"Content-Length: 1000\r\n\r\n" if whole_head else head + b"X: "
                )
                with trio.move_on_after(HEAD_TIMEOUT + 2.5):
                    while True:
                        await stream.send_all(b"a")  # one byte a second, never the end
                        with trio.move_on_after(1.0):
                            if await stream.receive_some(1024) == b"":
                                break
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            closed_by_server.append((whole_head, trio.current_time() - start))

    start = trio.current_time()
    async with trio.open_nursery() as clients:
        for i in range(dribblers):
            clients.start_soon(dribble, start, i % 2 == 1)
        with trio.fail_after(10):
            await opened.wait()
        # While every dribbler holds on, health answers each time, and fast.
        times = [await health_within(port, 2.0) for _ in range(10)]
    assert len(times) == 10
    assert len(closed_by_server) == dribblers
    # Every head dribbler was pushed out for a real client or cut at the
    # header-read timeout: within it, plus the scheduling slack of 300 tasks.
    heads = [t for whole, t in closed_by_server if not whole]
    assert len(heads) == dribblers // 2
    assert max(heads) < HEAD_TIMEOUT + 2.5


async def test_idle_connections_on_the_live_port_are_bounded_and_dropped(
    quiet_daemon: Daemon,
) -> None:
    port, live = quiet_daemon.port, quiet_daemon.live_port
    assert port is not None and live is not None
    count = 300  # more than the live port holds (MAX_LIVE_CONNECTIONS)
    dropped: list[float] = []
    start = trio.current_time()

    async def idle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.move_on_after(HANDSHAKE_TIMEOUT + 3.0):
                    while await stream.receive_some(1024):
                        pass
            except trio.BrokenResourceError:
                pass  # reset: dropped all the same
            dropped.append(trio.current_time() - start)

    async with trio.open_nursery() as clients:
        for _ in range(count):
            clients.start_soon(idle, await trio.open_tcp_stream("127.0.0.1", live))
        await health_within(port, 2.0)
        # A real viewer still gets its handshake answered (no run yet: 404).
        assert await ws_status(live, "/", "tok") == 404
    assert len(dropped) == count
    assert max(dropped) < HANDSHAKE_TIMEOUT + 2.0


async def ws_status(port: int, path: str, token: str | None = None) -> int:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{auth}\r\n"
    )
    return status_of(await raw_exchange(port, head.encode(), limit=5.0))


async def test_oversize_heads_bodies_and_url_tokens_are_refused(quiet_daemon: Daemon) -> None:
    port = quiet_daemon.port
    assert port is not None
    auth = b"Authorization: Bearer tok\r\n"
    # MAX_HEAD bytes exactly are served; one more is 431, whole or still unfinished
    line = b"GET /api/runs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth + b"X: "
    pad = MAX_HEAD - len(line) - len(b"\r\n\r\n")
    assert status_of(await raw_exchange(port, line + b"y" * pad + b"\r\n\r\n")) == 200
    assert status_of(await raw_exchange(port, line + b"y" * (pad + 1) + b"\r\n\r\n")) == 431
    assert status_of(await raw_exchange(port, line + b"y" * (pad + 100))) == 431
    big = MAX_BODY + 1
    post = (
        f"POST /api/runs HTTP/1.1\r\nHost: x\r\nContent-Length: {big}\r\n".encode()
        + auth
        + b"\r\n"
        + b"{" * big
    )
    assert status_of(await raw_exchange(port, post)) == 413
    url_token = b"GET /api/runs?token=tok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await raw_exchange(port, url_token)
    assert status_of(answer) == 401
    assert b"Authorization header" in answer
    both = b"GET /api/runs?token=tok HTTP/1.1\r\nHost: x\r\n" + auth + b"Connection: close\r\n\r\n"
    assert status_of(await raw_exchange(port, both)) == 401


# -- clients pointed at something else -------------------------------------------------------

BALLISTA = [sys.executable, "-m", "ballista"]


async def _not_ballista_websocket(request: WebSocketRequest) -> None:
    ws = await request.accept()
    await ws.send_message("hello from some other service")
    with trio.move_on_after(5):
        try:
            await ws.get_message()
        except ConnectionClosed:
            pass


async def test_runs_and_watch_at_servers_that_are_not_ballista_fail_in_one_line(
    nursery: trio.Nursery, target: RunningTarget, garbage_server: FaultServer
) -> None:
    other_ws = await nursery.start(serve_websocket, _not_ballista_websocket, "127.0.0.1", 0, None)
    cases = [
        (["runs", "list", "--server", target.url], "not a Ballista daemon"),
        (["runs", "show", "abc", "--server", target.url], "not a Ballista daemon"),
        (["runs", "list", "--server", garbage_server.url], "not a Ballista daemon"),
        (["watch", f"ws://127.0.0.1:{target.port}/"], "refused the websocket"),
        (["watch", f"ws://127.0.0.1:{other_ws.port}/"], "not a Ballista live stream"),
    ]
    problems: list[str] = []

    async def check(argv: list[str], needle: str) -> None:
        proc = await trio.run_process(
            [*BALLISTA, *argv], capture_stdout=True, capture_stderr=True, check=False
        )
        err = proc.stderr.decode()
        lines = err.strip().splitlines()
        if (
            proc.returncode != 2
            or len(lines) != 1
            or not lines[0].startswith("ballista: error: ")
            or needle not in lines[0]
        ):
            problems.append(f"{argv}: exit {proc.returncode}, stderr {err!r}")

    with trio.fail_after(20):  # each within its timeout: none waits for a retry
        async with trio.open_nursery() as checks:
            for argv, needle in cases:
                checks.start_soon(check, argv, needle)
    assert not problems, "\n".join(problems)


async def test_runs_gives_up_on_a_server_that_dribbles_its_answer(nursery: trio.Nursery) -> None:
    async def dribble(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        with trio.move_on_after(10):
            await stream.send_all(b"HTTP/1.1 200 OK\r\n")
            while True:
                await stream.send_all(b"X")  # one header byte at a time, never the end
                await trio.sleep(0.1)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, dribble, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    start = trio.current_time()
    with pytest.raises(BallistaError, match="no answer within 1s"):
        await trio.to_thread.run_sync(
            lambda: call(f"http://127.0.0.1:{port}", "GET", "/api/runs", timeout=1.0)
        )
    assert trio.current_time() - start < 2.0
