"""Where a one-off run's results go (`ballista run`, `demo`): the live line, the text
and JSON summaries, /metrics and the live stream, attached to a Run and delivered at
its end. The daemon attaches its own outputs to the same Run."""

from __future__ import annotations

import functools
import math
import signal
import time
from dataclasses import dataclass
from typing import Any, TextIO

import trio

from ballista.core.config import RunConfig
from ballista.core.durations import format_duration
from ballista.core.errors import EXIT_OK, EXIT_THRESHOLD, EXIT_USAGE
from ballista.core.segment import iso_instant
from ballista.engine.run import RunLike
from ballista.observe.summary import LiveLine, format_summary, summary_dict, write_json

#: Default time /metrics stays up after a run: two scrapes at a 5 s interval.
DEFAULT_LINGER = 11.0


@dataclass(frozen=True, slots=True)
class Outputs:
    """Where a run's results go, besides the engine itself."""

    json_path: str | None = None
    report_path: str | None = None
    quiet: bool = False
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    linger: float | None = None
    live_port: int | None = None
    live_addr: str = "127.0.0.1"


async def _watch_signals(
    run: RunLike, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """First SIGINT/SIGTERM: stop sending and let in-flight requests finish; second: stop now."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            run.signal()


async def _announce_start(at: float, started: trio.Event, out: TextIO, live: bool) -> None:
    """--start-at: say when the run starts; on a terminal, count down to it."""
    wait = at - time.time()
    if wait <= 0:
        return
    out.write(
        f"ballista: waiting to start at {iso_instant(at)} (in {format_duration(wait)}); "
        "Ctrl-C cancels\n"
    )
    out.flush()
    if not live:
        return
    shown = False
    while not started.is_set():
        left = at - time.time()
        if left <= 0:
            break
        # Whole seconds, rounded up: a countdown, not a measurement.
        whole = math.ceil(left)
        shown_left = f"{whole}s" if whole < 60 else format_duration(whole)
        out.write(f"\r\x1b[Kstarting in {shown_left}")
        out.flush()
        shown = True
        with trio.move_on_after(min(1.0, left)):
            await started.wait()
    if shown:
        out.write("\r\x1b[K")
        out.flush()


def write_run_report(
    doc: dict[str, Any], path: str, *, config: RunConfig, interrupted: bool, stderr: TextIO
) -> bool:
    """The HTML report of a run that just ended (even early): False, said in one
    line, when it could not be written."""
    from ballista.observe.report import ReportRun, config_facts, render_report, write_report

    label = f"{doc.get('target', 'run')} at {doc.get('started_at', '')}"
    run = ReportRun(label=label, summary=doc, interrupted=interrupted, config=config_facts(config))
    text = render_report([run])
    try:
        write_report(text, path)
    except OSError as exc:
        # checked before the run, yet it failed (disk full, removed directory)
        print(f"ballista: error: --report: cannot write {path!r}: {exc.strerror}", file=stderr)
        return False
    return True


async def run_with_outputs(
    run: RunLike, outputs: Outputs, *, stdout: TextIO, stderr: TextIO
) -> tuple[dict[str, Any], int]:
    """Run to the end with the outputs attached: (JSON summary, exit code)."""
    config = run.config
    text_out = stderr if outputs.json_path == "-" else stdout
    if not outputs.quiet and text_out.isatty():
        run.add_sink(
            LiveLine(
                text_out,
                duration=config.load.effective_duration,
                # with journeys, -n counts iterations: no progress by requests
                total=config.load.requests if config.journeys is None else None,
            )
        )
    exit_code = EXIT_OK
    async with trio.open_nursery() as services:
        exporter = None
        hub = None
        live_port: int | None = None
        # The live stream first: the page served beside /metrics needs its bound port.
        if outputs.live_port is not None:
            from ballista.observe.live import LiveHub, serve_live

            hub = LiveHub(config, run_id=run.id, started_at=run.started_at)
            live_port = await services.start(serve_live, hub, outputs.live_addr, outputs.live_port)
            print(f"ballista: live stream on ws://{outputs.live_addr}:{live_port}/", file=stderr)
            run.add_sink(hub.publish)
            run.on_start(hub.on_start)
        if outputs.metrics_port is not None:
            from ballista.observe.live import page_routes
            from ballista.observe.metrics import MetricsExporter, serve_metrics

            exporter = MetricsExporter(config, run_id=run.id)
            routes = page_routes(live_port) if live_port is not None else None
            port = await services.start(
                functools.partial(
                    serve_metrics,
                    exporter,
                    outputs.metrics_addr,
                    outputs.metrics_port,
                    routes=routes,
                )
            )
            where = f"http://{outputs.metrics_addr}:{port}"
            print(f"ballista: metrics on {where}/metrics", file=stderr)
            if live_port is not None:
                print(f"ballista: live page on {where}/", file=stderr)
            run.add_sink(exporter.update)
            run.on_start(exporter.on_start)
        # Heard before anything says the run is coming (--start-at's wait may be long).
        await services.start(_watch_signals, run)
        if config.start_at is not None:
            started = trio.Event()
            run.on_start(lambda _info: started.set())
            live = not outputs.quiet and stderr.isatty()
            services.start_soon(_announce_start, config.start_at, started, stderr, live)
        failure: Exception | None = None
        try:
            result = await run.run()
        except Exception as exc:
            partial = run.partial_result()
            if partial is None:
                raise
            # A bug in Ballista ended the run: report what was measured, then fail loudly.
            failure, result = exc, partial
        if not result.thresholds_passed:
            exit_code = EXIT_THRESHOLD
        doc = summary_dict(result.final, result.meta, result.timeline)
        doc.update(result.extra)
        if not outputs.quiet:
            text_out.write(format_summary(result.final, result.meta))
            text_out.flush()
        if outputs.json_path is not None:
            try:
                write_json(doc, outputs.json_path, stdout)
            except OSError as exc:
                # Checked before the run, yet it failed (disk full, removed directory):
                # say so in one line and keep the figures, on stderr.
                print(
                    f"ballista: error: --json: cannot write {outputs.json_path!r}: "
                    f"{exc.strerror}; the summary follows on stderr",
                    file=stderr,
                )
                write_json(doc, "-", stderr)
                exit_code = EXIT_USAGE
        if outputs.report_path is not None and not write_run_report(
            doc,
            outputs.report_path,
            config=config,
            interrupted=run.interrupted or failure is not None,
            stderr=stderr,
        ):
            exit_code = EXIT_USAGE
        if hub is not None:
            await hub.finish(doc)
        if failure is not None:
            raise failure
        if exporter is not None:
            linger = DEFAULT_LINGER if outputs.linger is None else outputs.linger
            if linger > 0 and not run.interrupted:
                print(f"ballista: keeping /metrics up for {linger:g}s", file=stderr)
                with trio.move_on_after(linger):
                    await run.wait_for_signal()
        services.cancel_scope.cancel()
    return doc, exit_code
