"""`ballista serve`'s process: the daemon's listeners, its history and its runs in
one trio nursery, until SIGTERM/SIGINT (graceful stop) or cancellation; SIGHUP
reloads --config.

The API, /metrics and the page listen on `--port`, the live websocket streams on
`--live-port`, every run's engine runs in its own task. No SQLite call runs on
the trio thread (see history.py), so a slow disk never stalls an engine or the API.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from ballista.core.config import DEFAULT_GRACE
from ballista.core.errors import ConfigError
from ballista.daemon.api import LIVE_SUBPROTOCOL, DaemonApi, token_ok
from ballista.daemon.history import History
from ballista.daemon.metrics import AllRuns
from ballista.daemon.runs import RunHandle, Runs
from ballista.daemon.scenarios import load_daemon_config
from ballista.daemon.store import Store
from ballista.observe.httpserver import serve_http

log = logging.getLogger("ballista.daemon")

DEFAULT_PORT = 8089
DEFAULT_LIVE_PORT = 8090
#: Runs at once. Each costs its connections and one task per worker; the engine
#: shares one CPU, so more runs only split it further.
DEFAULT_MAX_RUNS = 8
#: Token environment variable.
TOKEN_ENV = "BALLISTA_TOKEN"
#: The database's name under --data-dir.
DB_NAME = "ballista.db"


@dataclasses.dataclass(frozen=True, slots=True)
class ServeOptions:
    addr: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    live_port: int | None = DEFAULT_LIVE_PORT
    data_dir: Path = Path("ballista-data")
    config_path: Path | None = None
    token: str | None = None
    grace: float = DEFAULT_GRACE
    max_runs: int = DEFAULT_MAX_RUNS
    #: an extra listener serving /metrics alone (never behind the token)
    metrics_port: int | None = None
    #: the live stream's public URL for the page (behind a port mapping or a proxy)
    live_url: str | None = None


def is_loopback(addr: str) -> bool:
    if addr == "localhost":
        return True
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


class Daemon:
    """Runs, the history, and the listeners over them. `await serve()` until cancelled.

    `open_store` opens the database (in a worker thread): tests pass a Store whose
    disk they control."""

    def __init__(
        self, options: ServeOptions, *, open_store: Callable[[Path], Store] = Store
    ) -> None:
        if not is_loopback(options.addr) and not options.token:
            raise ConfigError(
                f"--addr {options.addr}: serving beyond loopback needs a token "
                f"(--token or {TOKEN_ENV})"
            )
        self.options = options
        self._open_store = open_store
        self.history: History | None = None
        self.runs: Runs | None = None
        self.api: DaemonApi | None = None
        self.registry = CollectorRegistry()
        self.registry.register(AllRuns(self._exporters))
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.started = time.time()
        self.port: int | None = None
        self.live_port: int | None = None
        self.metrics_port: int | None = None

    def _exporters(self) -> list[Any]:
        return [] if self.runs is None else self.runs.exporters()

    def _db_path(self) -> Path:
        data_dir = self.options.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"--data-dir: cannot create {str(data_dir)!r}: {exc.strerror}"
            ) from None
        if not os.access(data_dir, os.W_OK):
            raise ConfigError(f"--data-dir: {str(data_dir)!r} is not writable")
        return data_dir / DB_NAME

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the history, start the listeners and the boot runs; run until cancelled.

        `task_status.started(api_port)` once everything listens."""
        options = self.options
        boot = load_daemon_config(options.config_path) if options.config_path else []
        self.history = history = await History.open(self._db_path(), self._open_store)
        try:
            for run_id in await history.mark_interrupted():
                log.warning("run %s was active when the daemon stopped: marked interrupted", run_id)
            self.runs = runs = Runs(history, grace=options.grace, max_runs=options.max_runs)
            self.api = api = DaemonApi(
                runs, history, registry=self.registry, token=options.token, started=self.started
            )
            async with trio.open_nursery() as nursery:
                if options.live_port is not None:
                    self.live_port = await nursery.start(self._serve_live)
                api.live_port = self.live_port
                api.live_url = options.live_url
                self.port = await nursery.start(
                    functools.partial(
                        serve_http,
                        api.routes(),
                        options.addr,
                        options.port,
                        what="daemon API, --port",
                    )
                )
                if options.metrics_port is not None:
                    self.metrics_port = await nursery.start(
                        functools.partial(
                            serve_http,
                            {"/metrics": api.metrics},
                            options.addr,
                            options.metrics_port,
                            what="metrics, --metrics-port",
                        )
                    )
                await nursery.start(runs.serve, boot)
                # Once the boot runs are recorded and started: from this line on,
                # the API shows them.
                log.info(
                    "ballista serve: API on http://%s:%s/api, live stream on port %s, "
                    "metrics on port %s, data in %s",
                    options.addr,
                    self.port,
                    self.live_port,
                    self.metrics_port or self.port,
                    options.data_dir,
                )
                task_status.started(self.port)
        finally:
            with trio.CancelScope(shield=True):
                await history.close()

    def active_runs(self) -> list[RunHandle]:
        return [] if self.runs is None else self.runs.active_runs()

    async def shutdown(self) -> None:
        """Stop every run gracefully (bounded by the grace), write everything."""
        if self.runs is not None:
            await self.runs.shutdown()

    def stop_now(self) -> None:
        if self.runs is not None:
            self.runs.stop_now()

    async def reload(self) -> None:
        if self.runs is not None:
            await self.runs.reload(self.options.config_path)

    # -- live stream ----------------------------------------------------------------------

    async def _serve_live(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from trio_websocket import WebSocketRequest

        from ballista.observe.live import serve_websockets

        async def handler(request: WebSocketRequest) -> None:
            path, _, query = request.path.partition("?")
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers]
            offered = list(request.proposed_subprotocols)
            if not token_ok(self.options.token, headers, query, offered):
                await request.reject(401, body=b"missing or wrong bearer token\n")
                return
            handle = self._live_target(path)
            if handle is None or handle.hub is None:
                await request.reject(404, body=b"no such run\n")
                return
            # A browser that offered subprotocols closes a connection that names none.
            chosen = LIVE_SUBPROTOCOL if LIVE_SUBPROTOCOL in offered else None
            await handle.hub.handle(request, subprotocol=chosen)

        assert self.options.live_port is not None
        await serve_websockets(
            handler,
            self.options.addr,
            self.options.live_port,
            what="live stream, --live-port",
            task_status=task_status,
        )

    def _live_target(self, path: str) -> RunHandle | None:
        """`/runs/ID`: that run; `/`: the newest active run (else the newest run)."""
        if self.runs is None:
            return None
        parts = [p for p in path.split("/") if p]
        if len(parts) == 2 and parts[0] == "runs":
            return self.runs.get(parts[1])
        if parts:
            return None
        handles = sorted(self.runs.handles(), key=lambda h: h.started_at)
        active = [h for h in handles if h.active]
        chosen = active or handles
        return chosen[-1] if chosen else None


async def run_daemon(
    options: ServeOptions, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED
) -> None:
    """The daemon until SIGTERM/SIGINT (graceful stop) ; SIGHUP reloads --config."""
    daemon = Daemon(options)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            task_status.started(daemon)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    nursery.start_soon(daemon.reload)
                    continue
                log.info(
                    "signal %s: stopping runs (grace %gs)",
                    signal.Signals(signum).name,
                    options.grace,
                )
                nursery.start_soon(_second_signal, daemon, signals)
                await daemon.shutdown()
                nursery.cancel_scope.cancel()
                break
    log.info("ballista serve: stopped")


async def _second_signal(daemon: Daemon, signals: Any) -> None:
    async for signum in signals:
        if signum != signal.SIGHUP:
            daemon.stop_now()
