"""`ballista serve`: a daemon running soak tests, with a JSON API, /metrics, the live page
and stream, and a SQLite history that survives restarts and kills.

One trio process: the API, /metrics and the page on `--port`, the live
websocket streams on `--live-port`, and every run's engine, each in its own
task. Each snapshot of each run goes to the run's Prometheus view, its live
hub and the store; the store is written from a worker thread, so a slow disk
never stalls an engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import ipaddress
import logging
import os
import signal
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio
from prometheus_client.core import Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from ballista import __version__
from ballista.core.build import build_config
from ballista.core.config import DEFAULT_GRACE, RunConfig
from ballista.core.errors import BallistaError, ConfigError, ListenError, reason_of
from ballista.core.redact import redact_header, redact_target, redact_url
from ballista.core.runmeta import RunMeta
from ballista.core.scenario import read_scenario_file, scenario_from_table
from ballista.core.snapshot import Snapshot
from ballista.daemon.api import ApiError, DaemonApi
from ballista.daemon.store import Point, RunRow, Store, merge_points
from ballista.engine.engine import Engine, SnapshotSink
from ballista.engine.run import Run
from ballista.observe.httpserver import serve_http
from ballista.observe.summary import summary_dict

log = logging.getLogger("ballista.daemon")

DEFAULT_PORT = 8089
DEFAULT_LIVE_PORT = 8090
#: Runs at once. Each costs its connections and one task per worker; the engine
#: shares one CPU, so more runs only split it further.
DEFAULT_MAX_RUNS = 8
#: Finished runs stay in /metrics this long, so the last values get scraped.
METRICS_LINGER = 60.0
#: Intervals waiting for the disk, per run; beyond it they merge (no figure is lost).
WRITE_QUEUE = 60
#: Keys of a scenario that belong to the daemon, not to the run.
DAEMON_KEYS = ("restart",)
#: Token environment variable.
TOKEN_ENV = "BALLISTA_TOKEN"


# -- scenarios -------------------------------------------------------------------------


def split_daemon_keys(doc: Mapping[str, Any], label: str = "") -> tuple[dict[str, Any], bool]:
    """(the scenario without daemon keys, restart flag)."""
    rest = {k: v for k, v in doc.items() if k not in DAEMON_KEYS}
    restart = doc.get("restart", False)
    if not isinstance(restart, bool):
        where = f"{label}: restart" if label else "restart"
        raise ConfigError(f"{where}: must be true or false", key="restart")
    return rest, restart


def config_from_mapping(doc: Mapping[str, Any], *, label: str = "") -> RunConfig:
    """A scenario table (POSTed or stored) -> RunConfig, through the scenario
    format's own validation; errors name the key (`load.rate`). `body_file` is
    refused: a caller of the API must not make the daemon read its own disk."""
    return build_config(scenario_from_table(doc, label=label, base_dir=None))


def config_from_file(path: Path) -> tuple[dict[str, Any], RunConfig]:
    """A scenario file named by --config: (its table, its RunConfig)."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path.name}: nested too deeply") from None
    return doc, build_config(read_scenario_file(str(path), what="--config"))


def redact_scenario(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The scenario as the API shows it: secret header values and query values hidden,
    bodies left out."""

    def headers(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {k: redact_header(str(k), v) if isinstance(v, str) else v for k, v in value.items()}

    def url(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        head, sep, tail = value.partition("://")
        if not sep:
            return redact_target(value)
        host, slash, rest = tail.partition("/")
        return f"{head}://{host}{slash}{redact_target(rest)}" if slash else value

    out = dict(doc)
    if isinstance(out.get("defaults"), dict):
        d = dict(out["defaults"])
        if "headers" in d:
            d["headers"] = headers(d["headers"])
        out["defaults"] = d
    if "base_url" in out:
        out["base_url"] = url(out["base_url"])
    if isinstance(out.get("requests"), list):
        reqs = []
        for entry in out["requests"]:
            if isinstance(entry, dict):
                e = dict(entry)
                if "headers" in e:
                    e["headers"] = headers(e["headers"])
                for key in ("url", "path"):
                    if key in e:
                        e[key] = url(e[key])
                if "body" in e:
                    e["body"] = f"<{len(str(e['body']).encode())} bytes>"
                reqs.append(e)
            else:
                reqs.append(entry)
        out["requests"] = reqs
    return out


# -- the daemon's own config file ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class BootRun:
    """One run the --config file asks for."""

    name: str
    path: Path
    restart: bool
    doc: dict[str, Any]
    config: RunConfig


def load_daemon_config(path: Path) -> list[BootRun]:
    """`--config FILE`: `[[runs]]` tables, each `scenario = "file.toml"` (relative to
    FILE) and optionally `restart = true`. Every scenario is validated now."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config: no such file {str(path)!r}") from None
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {str(path)!r}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from None
    unknown = [k for k in data if k != "runs"]
    if unknown:
        raise ConfigError(f"{path.name}: {unknown[0]}: unknown key (expected: runs)")
    runs = data.get("runs", [])
    if not isinstance(runs, list):
        raise ConfigError(f"{path.name}: runs: must be an array of tables ([[runs]])")
    out: list[BootRun] = []
    for i, entry in enumerate(runs):
        where = f"{path.name}: runs[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        extra = [k for k in entry if k not in ("scenario", "restart")]
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: unknown key (expected: scenario, restart)")
        scenario = entry.get("scenario")
        if not isinstance(scenario, str) or not scenario:
            raise ConfigError(f"{where}.scenario: must be the path of a scenario file")
        restart = entry.get("restart", False)
        if not isinstance(restart, bool):
            raise ConfigError(f"{where}.restart: must be true or false")
        spath = (path.parent / scenario).resolve()
        if not spath.is_file():
            raise ConfigError(f"{where}.scenario: no such file {scenario!r}")
        doc, config = config_from_file(spath)
        if any(r.name == config.scenario for r in out):
            raise ConfigError(f"{where}: scenario name {config.scenario!r} is used twice")
        out.append(BootRun(config.scenario, spath, restart, doc, config))
    return out


# -- metrics for every run ------------------------------------------------------------------


class AllRuns(Collector):
    """One collector over every run's exporter: their families merged by name, so one
    registry serves all runs, each under its own `scenario` label."""

    def __init__(self, exporters: Callable[[], Sequence[Any]]) -> None:
        self._exporters = exporters

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for exporter in self._exporters():
            for family in exporter.collect():
                into = merged.get(family.name)
                if into is None:
                    into = Metric(family.name, family.documentation, family.type, family.unit)
                    merged[family.name] = into
                for s in family.samples:
                    key = (s.name, tuple(sorted(s.labels.items())))
                    if key in seen:
                        continue
                    seen.add(key)
                    into.samples.append(s)
        if "ballista_build_info" not in merged:
            build = Metric("ballista_build_info", "Always 1: the Ballista version.", "gauge")
            build.add_sample("ballista_build_info", {"version": __version__}, 1)
            merged["ballista_build_info"] = build
        yield from merged.values()


# -- one run ---------------------------------------------------------------------------------


class RunHandle:
    """A run the daemon is running (or has just finished): its engine and outputs."""

    def __init__(
        self,
        run_id: str,
        config: RunConfig,
        *,
        source: str,
        restart: bool,
        segment: int,
    ) -> None:
        self.id = run_id
        self.config = config
        self.name = config.scenario
        self.source = source
        self.restart = restart
        self.segment = segment
        self.started_at = dt.datetime.now(dt.UTC)
        self.run: Run | None = None
        self.engine: Engine | None = None
        self.exporter: Any = None
        self.hub: Any = None
        self.end_status: str | None = None
        self.end_reason: str | None = None
        self.ended_at: float | None = None
        self.done = trio.Event()
        self.summary: dict[str, Any] | None = None
        self._queue: list[Point] = []
        self._queued = trio.Event()

    @property
    def active(self) -> bool:
        return not self.done.is_set()

    def meta(self, final: Snapshot | None = None) -> RunMeta:
        assert self.run is not None
        return self.run.meta(final)

    def queue_point(self, point: Point) -> None:
        if len(self._queue) >= WRITE_QUEUE:
            # The disk is far behind: fold into the newest queued point.
            self._queue[-1] = merge_points(self._queue[-1], point)
        else:
            self._queue.append(point)
        self._queued.set()

    async def wait_for_points(self) -> None:
        await self._queued.wait()

    def take_points(self) -> list[Point]:
        points, self._queue = self._queue, []
        self._queued = trio.Event()
        return points


def point_from_snapshot(snap: Snapshot, now: float, segment: int) -> Point:
    lat = snap.interval_latency
    return Point(
        t_start=now - snap.interval,
        t_end=now,
        seg=segment,
        requests=snap.interval_requests,
        failed=snap.interval_failed,
        errors=snap.interval_errors,
        latency_p50=lat.p50 if lat is not None else 0.0,
        latency_p90=lat.p90 if lat is not None else 0.0,
        latency_p99=lat.p99 if lat is not None else 0.0,
        latency_max=lat.max if lat is not None else 0.0,
        in_flight=snap.in_flight,
        concurrency_limit=snap.concurrency_limit,
        target_rate=snap.target_rate,
        status_codes={str(k): v for k, v in snap.interval_status_codes.items()},
        errors_by_kind={k: v for k, v in snap.interval_errors_by_kind.items() if v},
    )


# -- the daemon --------------------------------------------------------------------------------


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


def is_loopback(addr: str) -> bool:
    if addr == "localhost":
        return True
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


class Daemon:
    """Runs, the store, and the API over them. `await serve()` until cancelled or signalled."""

    def __init__(self, options: ServeOptions) -> None:
        if not is_loopback(options.addr) and not options.token:
            raise ConfigError(
                f"--addr {options.addr}: serving beyond loopback needs a token "
                f"(--token or {TOKEN_ENV})"
            )
        self.options = options
        self.runs: dict[str, RunHandle] = {}
        self.store: Store | None = None
        #: the HTTP face: /api/, /metrics, the live page, token checks
        self.api = DaemonApi(self)
        self.registry = CollectorRegistry()
        self.registry.register(AllRuns(self._exporters))
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.started = time.time()
        self.port: int | None = None
        self.live_port: int | None = None
        self.metrics_port: int | None = None
        self.shutting_down = False
        self._nursery: trio.Nursery | None = None
        self._db_lock = trio.Lock()
        self._boot: dict[str, BootRun] = {}

    # -- lifecycle ----------------------------------------------------------------

    def _open_store(self) -> Store:
        data_dir = self.options.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"--data-dir: cannot create {str(data_dir)!r}: {exc.strerror}"
            ) from None
        if not os.access(data_dir, os.W_OK):
            raise ConfigError(f"--data-dir: {str(data_dir)!r} is not writable")
        return Store(data_dir / "ballista.db")

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the store, start the listeners and the boot runs; run until cancelled.

        `task_status.started(api_port)` once everything listens.
        """
        boot = load_daemon_config(self.options.config_path) if self.options.config_path else []
        self.store = store = self._open_store()
        try:
            interrupted = store.mark_interrupted()
            for run_id in interrupted:
                log.warning("run %s was active when the daemon stopped: marked interrupted", run_id)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.options.live_port is not None:
                    self.live_port = await nursery.start(self._serve_live)
                self.port = await nursery.start(
                    functools.partial(
                        serve_http,
                        self.api.routes(),
                        self.options.addr,
                        self.options.port,
                        what="daemon API, --port",
                    )
                )
                if self.options.metrics_port is not None:
                    self.metrics_port = await nursery.start(
                        functools.partial(
                            serve_http,
                            {"/metrics": self.api.metrics},
                            self.options.addr,
                            self.options.metrics_port,
                            what="metrics, --metrics-port",
                        )
                    )
                log.info(
                    "ballista serve: API on http://%s:%s/api, live stream on port %s, "
                    "metrics on port %s, data in %s",
                    self.options.addr,
                    self.port,
                    self.live_port,
                    self.metrics_port or self.port,
                    self.options.data_dir,
                )
                self._resume_and_boot(boot)
                nursery.start_soon(self._forget_finished)
                task_status.started(self.port)
        finally:
            store.close()

    def _resume_and_boot(self, boot: Sequence[BootRun]) -> None:
        store = self.store
        assert store is not None
        boot_names = {b.name: b for b in boot}
        resumed: set[str] = set()
        for row in store.list_runs(status="interrupted", limit=1000):
            if not row.restart:
                continue
            if row.source == "config":
                b = boot_names.get(row.name)
                if b is None or not b.restart or b.name in resumed:
                    continue
                config = b.config
            else:
                try:
                    config = config_from_mapping(split_daemon_keys(row.scenario)[0])
                except ConfigError as exc:
                    log.error("run %s cannot resume: %s", row.id, exc)
                    continue
            if any(h.name == config.scenario and h.active for h in self.runs.values()):
                continue
            remaining = self._remaining(row, config)
            if remaining is None:
                continue
            try:
                self._launch(row.id, remaining, row.scenario, row.source, restart=True, resume=True)
            except ApiError as exc:
                log.error("run %s cannot resume: %s", row.id, exc)
                continue
            resumed.add(config.scenario)
            log.info("run %s (%s) resumed as a new segment", row.id, row.name)
        for b in boot:
            self._boot[b.name] = b
            if b.name in resumed:
                continue
            try:
                self._start_boot(b)
            except ApiError as exc:
                log.error("run %s from --config not started: %s", b.name, exc)

    def _start_boot(self, b: BootRun) -> RunHandle:
        doc = {**b.doc, "restart": b.restart}
        return self._launch(uuid.uuid4().hex[:12], b.config, doc, "config", restart=b.restart)

    def _remaining(self, row: RunRow, config: RunConfig) -> RunConfig | None:
        """What is left of an interrupted run: its duration (or request count) minus
        what its segments did. None when nothing is left."""
        store = self.store
        assert store is not None
        done_s = 0.0
        done_n = 0
        for seg in store.segments(row.id):
            done_s += float(seg["duration_s"] or 0.0)
            done_n += int(seg["requests"] or 0)
        load = config.load
        if load.requests is not None and load.duration is None:
            left_n = load.requests - done_n
            if left_n <= 0:
                return None
            return dataclasses.replace(config, load=dataclasses.replace(load, requests=left_n))
        total = load.effective_duration
        if total is None:
            return config
        left = total - done_s
        if left <= config.interval:
            return None
        return dataclasses.replace(config, load=dataclasses.replace(load, duration=left))

    async def _forget_finished(self) -> None:
        """Finished runs leave memory (and /metrics) after METRICS_LINGER."""
        while True:
            await trio.sleep(5.0)
            now = time.time()
            for run_id, h in list(self.runs.items()):
                if h.ended_at is not None and now - h.ended_at > METRICS_LINGER:
                    del self.runs[run_id]

    def _exporters(self) -> list[Any]:
        return [h.exporter for h in self.runs.values() if h.exporter is not None]

    # -- runs ---------------------------------------------------------------------

    def active_runs(self) -> list[RunHandle]:
        return [h for h in self.runs.values() if h.active]

    def start_run(self, doc: Mapping[str, Any]) -> RunHandle:
        """Validate a scenario table and start it. ConfigError / ApiError when it cannot."""
        if self.shutting_down:
            raise ApiError(503, "the daemon is shutting down")
        scenario, restart = split_daemon_keys(doc)
        config = config_from_mapping(scenario)
        return self._launch(uuid.uuid4().hex[:12], config, dict(doc), "api", restart=restart)

    def _launch(
        self,
        run_id: str,
        config: RunConfig,
        doc: Mapping[str, Any],
        source: str,
        *,
        restart: bool,
        resume: bool = False,
    ) -> RunHandle:
        store = self.store
        nursery = self._nursery
        assert store is not None and nursery is not None
        active = self.active_runs()
        if any(h.name == config.scenario for h in active):
            raise ApiError(409, f"a run named {config.scenario!r} is already active", field="name")
        if len(active) >= self.options.max_runs:
            raise ApiError(429, f"{len(active)} runs active: the limit is {self.options.max_runs}")
        public = redact_scenario(doc)
        if resume:
            segment = store.resume_run(run_id)
        else:
            store.create_run(
                run_id,
                name=config.scenario,
                source=source,
                restart=restart,
                scenario=dict(doc),
                scenario_public=public,
                target=_public_url(config),
            )
            segment = 1
        handle = RunHandle(run_id, config, source=source, restart=restart, segment=segment)
        self._build(handle)
        self.runs[run_id] = handle
        nursery.start_soon(self._run, handle)
        log.info(
            "run %s (%s) started: %s, %s model",
            run_id,
            config.scenario,
            _public_url(config),
            config.load.model,
        )
        return handle

    def _build(self, handle: RunHandle) -> None:
        """The run (assembled as for `ballista run`) and the daemon's outputs of it."""
        from ballista.observe.live import LiveHub
        from ballista.observe.metrics import MetricsExporter

        config = handle.config
        run = Run(config, run_id=handle.id, started_at=handle.started_at)
        handle.run = run
        handle.engine = run.engine
        # Its own throwaway registry: the daemon's AllRuns collects it.
        handle.exporter = MetricsExporter(config, run_id=handle.id, registry=CollectorRegistry())
        handle.hub = LiveHub(config, run_id=handle.id, started_at=handle.started_at)
        for sink in (handle.exporter.update, handle.hub.publish, self._store_sink(handle)):
            run.add_sink(sink)
        run.on_start(handle.exporter.on_start)
        run.on_start(handle.hub.on_start)

    def _store_sink(self, handle: RunHandle) -> SnapshotSink:
        def sink(snap: Snapshot) -> None:
            now = time.time()
            handle.summary = summary_dict(snap, handle.meta())
            if not snap.final or (snap.interval > 0 and snap.interval_requests):
                handle.queue_point(point_from_snapshot(snap, now, handle.segment))

        return sink

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        async with self._db_lock:
            return await trio.to_thread.run_sync(fn, *args)

    async def _writer(self, handle: RunHandle) -> None:
        store = self.store
        assert store is not None
        while True:
            await handle.wait_for_points()
            try:
                await self._flush(handle, store)
            except Exception:
                # A full or failing disk must not end the run: log and go on.
                log.exception("run %s: could not write an interval", handle.id)
                await trio.sleep(1.0)

    async def _flush(self, handle: RunHandle, store: Store) -> None:
        points = handle.take_points()
        summary = handle.summary
        for i, point in enumerate(points):
            last = i == len(points) - 1
            await self._write(store.record_interval, handle.id, point, summary if last else None)

    async def _run(self, handle: RunHandle) -> None:
        store = self.store
        run = handle.run
        assert store is not None and run is not None
        status = "failed"
        reason: str | None = None
        summary: dict[str, Any] | None = None
        try:
            async with trio.open_nursery() as side:
                side.start_soon(self._writer, handle)
                try:
                    result = await run.run()
                except Exception as exc:
                    log.exception("run %s failed", handle.id)
                    reason = f"{type(exc).__name__}: {exc}"
                else:
                    summary = summary_dict(result.final, result.meta)
                    handle.summary = summary
                    if handle.end_status is not None:
                        status, reason = handle.end_status, handle.end_reason
                    else:
                        status = "finished"
                side.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                try:
                    await self._flush(handle, store)
                    await self._write(
                        functools.partial(store.end_run, reason=reason), handle.id, status, summary
                    )
                except Exception:
                    # The disk failed us: the run is over all the same; the daemon goes on.
                    log.exception("run %s: could not write its end", handle.id)
                if summary is not None and handle.hub is not None:
                    with trio.move_on_after(2.0):
                        await handle.hub.finish(summary)
        finally:
            handle.ended_at = time.time()
            handle.done.set()
            log.info("run %s (%s) %s", handle.id, handle.name, status)

    def stop_run(self, run_id: str, *, status: str = "stopped", reason: str = "stopped") -> None:
        handle = self.runs.get(run_id)
        if handle is None or not handle.active or handle.engine is None:
            raise ApiError(409, f"run {run_id} is not active")
        if handle.end_status is None:
            handle.end_status, handle.end_reason = status, reason
            handle.engine.stop(grace=self.options.grace)
        else:
            handle.engine.stop(grace=0)

    async def shutdown(self) -> None:
        """Stop every run gracefully (bounded by the grace), write everything."""
        self.shutting_down = True
        active = self.active_runs()
        for h in active:
            self.stop_run(h.id, status="interrupted", reason="daemon shut down")
        with trio.move_on_after(self.options.grace + 5.0):
            for h in active:
                await h.done.wait()

    async def reload(self) -> None:
        """SIGHUP: re-read --config. New scenarios start, removed ones stop, changed
        ones restart; a bad file changes nothing."""
        path = self.options.config_path
        if path is None:
            log.info("SIGHUP: no --config to reload")
            return
        try:
            boot = load_daemon_config(path)
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded: %s", exc)
            return
        wanted = {b.name: b for b in boot}
        by_name = {h.name: h for h in self.active_runs() if h.source == "config"}
        for name, h in by_name.items():
            b = wanted.get(name)
            if b is None or b.doc != self._boot.get(name, b).doc or b.restart != h.restart:
                self.stop_run(h.id, reason="config reloaded")
        for name, b in wanted.items():
            old = self._boot.get(name)
            running = by_name.get(name)
            changed = old is None or old.doc != b.doc or old.restart != b.restart
            if not changed:
                continue
            if running is not None:
                await running.done.wait()
            try:
                self._start_boot(b)
            except ApiError as exc:
                log.error("SIGHUP: %s not started: %s", name, exc)
                continue
        self._boot = dict(wanted)
        log.info("SIGHUP: config reloaded (%d runs)", len(wanted))

    # -- live stream ----------------------------------------------------------------------

    async def _serve_live(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from trio_websocket import WebSocketRequest, serve_websocket

        async def handler(request: WebSocketRequest) -> None:
            path, _, query = request.path.partition("?")
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers]
            if not self.api.authorized(headers, query):
                await request.reject(401, body=b"missing or wrong bearer token\n")
                return
            handle = self._live_target(path)
            if handle is None or handle.hub is None:
                await request.reject(404, body=b"no such run\n")
                return
            await handle.hub.handle(request)

        assert self.options.live_port is not None
        addr, port = self.options.addr, self.options.live_port
        async with trio.open_nursery() as nursery:
            try:
                server = await nursery.start(serve_websocket, handler, addr, port, None)
            except OSError as exc:  # only binding happens before started()
                raise ListenError("live stream, --live-port", addr, port, reason_of(exc)) from exc
            task_status.started(server.port)

    def _live_target(self, path: str) -> RunHandle | None:
        """`/runs/ID`: that run; `/`: the newest active run (else the newest run)."""
        parts = [p for p in path.split("/") if p]
        if len(parts) == 2 and parts[0] == "runs":
            return self.runs.get(parts[1])
        if parts:
            return None
        handles = sorted(self.runs.values(), key=lambda h: h.started_at)
        active = [h for h in handles if h.active]
        chosen = active or handles
        return chosen[-1] if chosen else None


def _public_url(config: RunConfig) -> str:
    return redact_url(config)


# -- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="FILE", help="runs to start at boot")
    parser.add_argument("--addr", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument(
        "--port", default=str(DEFAULT_PORT), help=f"API, /metrics, page ({DEFAULT_PORT})"
    )
    parser.add_argument(
        "--live-port",
        default=str(DEFAULT_LIVE_PORT),
        help=f"live websocket stream ({DEFAULT_LIVE_PORT})",
    )
    parser.add_argument(
        "--metrics-port",
        default=None,
        help="also serve /metrics alone on this port (it is always on --port too)",
    )
    parser.add_argument(
        "--data-dir", default=None, metavar="DIR", help="run history (./ballista-data)"
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"bearer token for the API and live stream (or {TOKEN_ENV}); required off loopback",
    )
    parser.add_argument(
        "--grace", default=str(DEFAULT_GRACE), metavar="DUR", help="stop grace for runs (5s)"
    )
    parser.add_argument(
        "--max-runs", default=str(DEFAULT_MAX_RUNS), help=f"runs at once ({DEFAULT_MAX_RUNS})"
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )


def _port(flag: str, text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{flag}: {port} is not a TCP port (0-65535)")
    return port


def options_from_args(
    ns: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> ServeOptions:
    from ballista.core.durations import parse_duration

    try:
        max_runs = int(ns.max_runs)
    except ValueError:
        raise ConfigError(f"--max-runs: {ns.max_runs!r} is not a whole number") from None
    if max_runs < 1:
        raise ConfigError("--max-runs: must be at least 1")
    token = ns.token or environ.get(TOKEN_ENV) or None
    config_path = Path(ns.config) if ns.config else None
    if config_path is not None and not config_path.is_file():
        raise ConfigError(f"--config: no such file {ns.config!r}")
    data_dir = ns.data_dir or environ.get("BALLISTA_DATA_DIR") or "ballista-data"
    options = ServeOptions(
        addr=str(ns.addr).strip(),
        port=_port("--port", ns.port),
        live_port=_port("--live-port", ns.live_port),
        data_dir=Path(data_dir),
        config_path=config_path,
        token=token,
        grace=parse_duration(str(ns.grace), what="--grace"),
        max_runs=max_runs,
        metrics_port=None if ns.metrics_port is None else _port("--metrics-port", ns.metrics_port),
    )
    if not is_loopback(options.addr) and not options.token:
        raise ConfigError(
            f"--addr {options.addr}: serving beyond loopback needs a token (--token or {TOKEN_ENV})"
        )
    if options.config_path is not None:
        load_daemon_config(options.config_path)  # validate before anything starts
    return options


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
            for h in daemon.active_runs():
                if h.engine is not None:
                    h.engine.stop(grace=0)


def main(ns: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, str(ns.log_level).upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    options = options_from_args(ns)
    try:
        trio.run(run_daemon, options)
    except BaseExceptionGroup as group:
        leaf = _first_leaf(group)
        if isinstance(leaf, BallistaError):
            raise leaf from None
        if isinstance(leaf, OSError):
            raise ConfigError(
                f"cannot listen on {options.addr} (--port/--live-port/--metrics-port): "
                f"{leaf.strerror or leaf}"
            ) from None
        raise
    except OSError as exc:
        raise ConfigError(f"cannot listen on {options.addr}: {exc.strerror or exc}") from None
    return 0


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
