"""The daemon's runs and their lifecycle: launch (recorded before it starts), stop,
resume an interrupted run as a new segment, start the runs of --config, reload
them on SIGHUP. Each run's snapshots go to its Prometheus view, its live hub
and the history."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import trio
from prometheus_client.registry import CollectorRegistry

from ballista.core.config import RunConfig
from ballista.core.errors import ConfigError
from ballista.core.histogram import SparseHistogram
from ballista.core.redact import redact_url
from ballista.core.runmeta import RunMeta
from ballista.core.segment import Segment, split_config
from ballista.core.snapshot import Snapshot
from ballista.daemon.history import History, IntervalQueue
from ballista.daemon.scenarios import (
    BootRun,
    config_from_mapping,
    load_daemon_config,
    redact_scenario,
    split_daemon_keys,
    workers_of,
)
from ballista.daemon.store import Point, RunRow
from ballista.engine.engine import SnapshotSink
from ballista.engine.run import Run
from ballista.engine.workers import WorkersRun
from ballista.observe.summary import summary_dict

log = logging.getLogger("ballista.daemon")

#: Finished runs stay in /metrics this long, so the last values get scraped.
METRICS_LINGER = 60.0

Refusal = Literal["busy", "full", "closing", "inactive", "invalid"]


class RunRefused(Exception):
    """A run that cannot start or stop now. `reason`: `busy` (a run of that name is
    active), `full` (the run limit), `closing` (the daemon is shutting down),
    `inactive` (stopping a run that is not active), `invalid` (the engine refused
    to build it)."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason: Refusal = reason


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
        history: History,
        workers: int = 1,
        worker_input: bytes | None = None,
    ) -> None:
        self.id = run_id
        self.config = config
        self.name = config.scenario
        self.source = source
        self.restart = restart
        self.segment = segment
        self.started_at = dt.datetime.now(dt.UTC)
        self.run: Run | WorkersRun | None = None
        #: processes the run is cut into (a scenario's `workers`), and what each is told
        self.workers = workers
        self.worker_input = worker_input
        self.exporter: Any = None
        self.hub: Any = None
        self.end_status: str | None = None
        self.end_reason: str | None = None
        self.ended_at: float | None = None
        self.done = trio.Event()
        self.summary: dict[str, Any] | None = None
        self.intervals = IntervalQueue(history, run_id, lambda: self.summary)

    @property
    def active(self) -> bool:
        return not self.done.is_set()

    @property
    def stopping(self) -> bool:
        return self.end_status is not None

    def meta(self, final: Snapshot | None = None) -> RunMeta:
        assert self.run is not None
        return self.run.meta(final)


def point_from_snapshot(snap: Snapshot, started: float, segment: int) -> Point:
    """One interval as stored. Its times are the segment's start plus the snapshot's
    elapsed time, as the live stream's `started_at_unix + elapsed`: the page joins
    stored points and live snapshots on the same clock."""
    lat = snap.interval_latency
    hist = snap.interval_histogram
    end = started + snap.elapsed
    return Point(
        t_start=end - snap.interval,
        t_end=end,
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
        seq=snap.seq,
        histogram=None if hist is None else SparseHistogram.of(hist),
    )


class Runs:
    """Every run of the daemon, active or lingering for /metrics. `await serve(boot)`
    resumes interrupted runs, starts the boot runs, and keeps every run's task."""

    def __init__(self, history: History, *, grace: float, max_runs: int) -> None:
        self.history = history
        self.grace = grace
        self.max_runs = max_runs
        self.runs: dict[str, RunHandle] = {}
        self.shutting_down = False
        self._nursery: trio.Nursery | None = None
        self._boot: dict[str, BootRun] = {}
        #: names of runs being recorded, not yet running: they count as active
        self._starting: set[str] = set()

    async def serve(
        self,
        boot: Sequence[BootRun],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Resume and boot, then report started; every run's task lives here."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._resume_and_boot(boot)
            nursery.start_soon(self._forget_finished)
            task_status.started()

    # -- what the API and the listeners read ----------------------------------------------

    def get(self, run_id: str) -> RunHandle | None:
        return self.runs.get(run_id)

    def handles(self) -> list[RunHandle]:
        return list(self.runs.values())

    def active_runs(self) -> list[RunHandle]:
        return [h for h in self.runs.values() if h.active]

    def exporters(self) -> list[Any]:
        return [h.exporter for h in self.runs.values() if h.exporter is not None]

    # -- boot and resume ----------------------------------------------------------------------

    async def _resume_and_boot(self, boot: Sequence[BootRun]) -> None:
        boot_names = {b.name: b for b in boot}
        resumed: set[str] = set()
        for row in await self.history.list_runs(status="interrupted", limit=1000):
            if not row.restart:
                continue
            try:
                name = await self._resume(row, boot_names, resumed)
            except RunRefused as exc:
                log.error("run %s cannot resume now: %s", row.id, exc)
                continue
            except Exception as exc:
                # A stored run the daemon cannot run again must never keep the
                # daemon from starting: it is marked, once, and left behind.
                reason = f"cannot resume: {_reason(exc)}"
                log.error("run %s %s", row.id, reason)
                with trio.CancelScope(shield=True):
                    await self.history.fail_interrupted(row.id, reason)
                continue
            if name is not None:
                resumed.add(name)
                log.info("run %s (%s) resumed as a new segment", row.id, row.name)
        for b in boot:
            self._boot[b.name] = b
            if b.name in resumed:
                continue
            try:
                await self._start_boot(b)
            except RunRefused as exc:
                log.error("run %s from --config not started: %s", b.name, exc)
            except Exception as exc:
                log.error("run %s from --config not started: %s", b.name, _reason(exc))

    async def _resume(
        self, row: RunRow, boot_names: Mapping[str, BootRun], resumed: set[str]
    ) -> str | None:
        """Resume one interrupted run; its name, or None when it is not to resume now."""
        if row.source == "config":
            b = boot_names.get(row.name)
            if b is None or not b.restart or b.name in resumed:
                return None
            config = b.config
        else:
            config = config_from_mapping(split_daemon_keys(row.scenario)[0])
        if any(h.name == config.scenario and h.active for h in self.runs.values()):
            return None
        remaining = await self._remaining(row, config)
        if remaining is None:
            return None
        boot = boot_names.get(row.name) if row.source == "config" else None
        await self._launch(
            row.id,
            remaining,
            row.scenario,
            row.source,
            restart=True,
            resume=True,
            base_dir=None if boot is None else boot.path.parent,
        )
        return config.scenario

    async def _start_boot(self, b: BootRun) -> RunHandle:
        doc = {**b.doc, "restart": b.restart, "workers": b.workers}
        return await self._launch(
            uuid.uuid4().hex[:12],
            b.config,
            doc,
            "config",
            restart=b.restart,
            base_dir=b.path.parent,
        )

    async def _remaining(self, row: RunRow, config: RunConfig) -> RunConfig | None:
        """What is left of an interrupted run: its duration (or request count) minus
        what its segments did. None when nothing is left."""
        done_s = 0.0
        done_n = 0
        for seg in await self.history.segments(row.id):
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

    # -- start and stop -----------------------------------------------------------------------

    async def start_run(self, doc: Mapping[str, Any]) -> RunHandle:
        """Validate a scenario table and start it. ConfigError / RunRefused when it cannot."""
        if self.shutting_down:
            raise RunRefused("closing", "the daemon is shutting down")
        scenario, restart = split_daemon_keys(doc)
        config = config_from_mapping(scenario)
        return await self._launch(uuid.uuid4().hex[:12], config, dict(doc), "api", restart=restart)

    async def _launch(
        self,
        run_id: str,
        config: RunConfig,
        doc: Mapping[str, Any],
        source: str,
        *,
        restart: bool,
        resume: bool = False,
        base_dir: Path | None = None,
    ) -> RunHandle:
        nursery = self._nursery
        assert nursery is not None
        name = config.scenario
        active = self.active_runs()
        if name in self._starting or any(h.name == name for h in active):
            raise RunRefused("busy", f"a run named {name!r} is already active")
        if len(active) + len(self._starting) >= self.max_runs:
            raise RunRefused(
                "full",
                f"{len(active) + len(self._starting)} runs active: the limit is {self.max_runs}",
            )
        # Built before it is stored: whatever the engine refuses is refused here,
        # and nothing is left on disk marked running that never ran.
        workers = workers_of(doc)
        worker_input = None
        if workers > 1:
            worker_input = _worker_input(doc, config, base_dir, workers)
        handle = RunHandle(
            run_id,
            config,
            source=source,
            restart=restart,
            segment=1,
            history=self.history,
            workers=workers,
            worker_input=worker_input,
        )
        try:
            self._build(handle)
        except ConfigError:
            raise
        except Exception as exc:
            log.exception("run %s could not be built", run_id)
            raise RunRefused("invalid", f"the run cannot start: {_reason(exc)}") from None
        # The run is on disk before it starts; while the disk is written, its name
        # and its place under the limit are held.
        self._starting.add(name)
        try:
            if resume:
                segment = await self.history.resume_run(run_id)
            else:
                await self.history.create_run(
                    run_id,
                    name=name,
                    source=source,
                    restart=restart,
                    scenario=dict(doc),
                    scenario_public=redact_scenario(doc),
                    target=_public_url(config),
                )
                segment = 1
        finally:
            self._starting.discard(name)
        if self.shutting_down:
            # Recorded while the daemon began to stop: it ends before it starts.
            with trio.CancelScope(shield=True):
                await self.history.end_run(run_id, "interrupted", None, reason="daemon shut down")
            raise RunRefused("closing", "the daemon is shutting down")
        handle.segment = segment
        handle.hub.segment = segment
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
        run: Run | WorkersRun
        if handle.workers > 1:
            run = WorkersRun(
                config,
                ["--worker-scenario"],
                handle.workers,
                run_id=handle.id,
                stdin_data=handle.worker_input,
            )
        else:
            run = Run(config, run_id=handle.id, started_at=handle.started_at)
        handle.run = run
        # Its own throwaway registry: the daemon's AllRuns collects it.
        handle.exporter = MetricsExporter(config, run_id=handle.id, registry=CollectorRegistry())
        handle.hub = LiveHub(config, run_id=handle.id, started_at=handle.started_at)
        for sink in (handle.exporter.update, handle.hub.publish, self._store_sink(handle)):
            run.add_sink(sink)
        run.on_start(handle.exporter.on_start)
        run.on_start(handle.hub.on_start)

    def _store_sink(self, handle: RunHandle) -> SnapshotSink:
        started = handle.started_at.timestamp()

        def sink(snap: Snapshot) -> None:
            handle.summary = summary_dict(snap, handle.meta())
            if not snap.final or (snap.interval > 0 and snap.interval_requests):
                handle.intervals.put(point_from_snapshot(snap, started, handle.segment))

        return sink

    async def _run(self, handle: RunHandle) -> None:
        run = handle.run
        assert run is not None
        status = "failed"
        reason: str | None = None
        summary: dict[str, Any] | None = None
        try:
            async with trio.open_nursery() as side:
                side.start_soon(handle.intervals.write_forever)
                try:
                    result = await run.run()
                except Exception as exc:
                    log.exception("run %s failed", handle.id)
                    reason = _reason(exc)
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
                    await handle.intervals.flush()
                    await self.history.end_run(handle.id, status, summary, reason=reason)
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
        if handle is None or not handle.active or handle.run is None:
            raise RunRefused("inactive", f"run {run_id} is not active")
        if handle.end_status is None:
            handle.end_status, handle.end_reason = status, reason
            handle.run.stop(grace=self.grace)
        else:
            handle.run.stop(grace=0)

    async def shutdown(self) -> None:
        """Stop every run gracefully (bounded by the grace), write everything."""
        self.shutting_down = True
        active = self.active_runs()
        for h in active:
            self.stop_run(h.id, status="interrupted", reason="daemon shut down")
        with trio.move_on_after(self.grace + 5.0):
            for h in active:
                await h.done.wait()

    def stop_now(self) -> None:
        """A second signal: in-flight requests are not waited for."""
        for h in self.active_runs():
            if h.run is not None:
                h.run.stop(grace=0)

    async def reload(self, path: Path | None) -> None:
        """SIGHUP: re-read --config. New scenarios start, removed ones stop, changed
        ones restart; a bad file changes nothing."""
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
            old_boot = self._boot.get(name, b)
            if (
                b is None
                or old_boot is None
                or (b.doc, b.restart, b.workers)
                != (
                    old_boot.doc,
                    h.restart,
                    old_boot.workers,
                )
            ):
                self.stop_run(h.id, reason="config reloaded")
        for name, b in wanted.items():
            old = self._boot.get(name)
            running = by_name.get(name)
            changed = old is None or (old.doc, old.restart, old.workers) != (
                b.doc,
                b.restart,
                b.workers,
            )
            if not changed:
                continue
            if running is not None:
                await running.done.wait()
            try:
                await self._start_boot(b)
            except RunRefused as exc:
                log.error("SIGHUP: %s not started: %s", name, exc)
                continue
            except Exception as exc:
                log.error("SIGHUP: %s not started: %s", name, _reason(exc))
                continue
        self._boot = dict(wanted)
        log.info("SIGHUP: config reloaded (%d runs)", len(wanted))


def _worker_input(
    doc: Mapping[str, Any], config: RunConfig, base_dir: Path | None, workers: int
) -> bytes:
    """What each worker of a daemon run reads on its stdin: the scenario table, where
    its files are, and what the daemon changed (a resumed run's remaining duration or
    requests). ConfigError now, once, if the test cannot be cut in `workers`."""
    if config.load.model == "sequential":
        raise ConfigError(
            "workers: the sequential model is one request at a time: it runs in one process",
            key="workers",
        )
    split_config(config, Segment(workers - 1, workers))
    table = split_daemon_keys(doc)[0]
    line = {
        "scenario": table,
        "base_dir": None if base_dir is None else str(base_dir),
        "duration": config.load.duration,
        "requests": config.load.requests,
    }
    return (json.dumps(line) + "\n").encode()


def _reason(exc: BaseException) -> str:
    """One line for a run's `reason`: the exception's type and message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _public_url(config: RunConfig) -> str:
    return redact_url(config)
