"""The `ballista` command: parses flags into a RunConfig, runs it, reports, sets the exit code."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib
import os
import signal
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

import trio

from ballista import __version__
from ballista.core.config import (
    AdaptiveSpec,
    LoadSpec,
    Model,
    Protocol,
    RequestSpec,
    RunConfig,
    parse_header,
    parse_method,
    parse_url,
)
from ballista.core.durations import parse_duration
from ballista.core.errors import BallistaError, ConfigError
from ballista.core.schedule import parse_stages
from ballista.core.snapshot import Snapshot
from ballista.engine.engine import Engine, SnapshotSink
from ballista.observe.summary import (
    LiveLine,
    check_output_path,
    format_summary,
    summary_dict,
    write_json,
)

#: Defaults of flags a scenario file may also set (None on the parser, so a flag
#: typed on the command line always wins over the file).
DEFAULT_TIMEOUT = 30.0
DEFAULT_INTERVAL = 1.0

EXIT_OK = 0
EXIT_THRESHOLD = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but bad input is one line on stderr and exit 2: no usage dump."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse prefixes the flag's name)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _duration(text: str) -> float:
    """argparse type: a duration longer than 0 (`500ms`, `30s`, `5m`)."""
    try:
        value = parse_duration(text, what="")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than 0, got {text!r}")
    return value


def add_request_arguments(p: argparse.ArgumentParser) -> None:
    """The flags shared by `run` and `compare`."""
    p.add_argument(
        "url", metavar="URL", nargs="?", default=None, help="target URL (http:// or https://)"
    )
    p.add_argument(
        "-c",
        "--concurrency",
        type=_positive_int,
        default=None,
        help="closed model: number of workers (default 10)",
    )
    p.add_argument(
        "-n",
        "--requests",
        type=_positive_int,
        default=None,
        help="stop after this many requests in total",
    )
    p.add_argument(
        "-d",
        "--duration",
        type=_duration,
        default=None,
        help="stop after this long (500ms, 30s, 5m, 2h); default 10s without -n",
    )
    proto = p.add_mutually_exclusive_group()
    proto.add_argument(
        "--http2",
        action="store_const",
        const="http2",
        dest="protocol",
        help="HTTP/2: prior knowledge on http://, ALPN h2 on https://",
    )
    proto.add_argument(
        "--http1", action="store_const", const="http1", dest="protocol", help="HTTP/1.1 only"
    )
    p.add_argument(
        "--connections",
        type=_positive_int,
        default=None,
        help="connections to open (default: one per worker on HTTP/1.1, "
        "one per 100 streams on HTTP/2)",
    )
    p.add_argument(
        "--timeout",
        type=_duration,
        default=None,
        help="per-request timeout (default 30s)",
    )
    p.add_argument("-m", "--method", default="GET", help="HTTP method (default GET)")
    p.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'K: V'",
        help="request header, repeatable",
    )
    body = p.add_mutually_exclusive_group()
    body.add_argument("-b", "--body", default=None, help="request body")
    body.add_argument("--body-file", default=None, help="read the request body from a file")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    p.add_argument("--cacert", default=None, help="CA bundle to verify the target with")
    p.add_argument(
        "--interval",
        type=_duration,
        default=None,
        help="snapshot interval (default 1s)",
    )


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser. The `target` sub-command's flags (which import hypercorn)
    are only added when `argv` asks for that command, to keep start-up light."""
    parser = _Parser(
        prog="ballista",
        description="HTTP load testing: closed, open and adaptive load over HTTP/1.1 and HTTP/2.",
    )
    parser.add_argument("--version", action="version", version=f"ballista {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="run one load test and print a summary")
    add_request_arguments(run)
    run.add_argument(
        "--sequential",
        action="store_true",
        help="one request at a time over one connection: the baseline",
    )
    run.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="write the JSON summary to PATH, or to stdout with '-'",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no live display, no text summary")
    open_model = run.add_argument_group("open model and ramps")
    open_model.add_argument(
        "-r",
        "--rate",
        type=_positive_float,
        default=None,
        help="open model: requests per second, scheduled in advance; latency counts "
        "from the scheduled time",
    )
    open_model.add_argument(
        "--max-in-flight",
        type=_positive_int,
        default=None,
        help="open model: cap on outstanding requests; what cannot start within "
        "--timeout of its schedule is dropped",
    )
    open_model.add_argument(
        "--arrival",
        choices=("constant", "poisson"),
        default=None,
        help="open model: constant gaps (default) or Poisson arrivals",
    )
    open_model.add_argument(
        "--stages",
        default=None,
        metavar="SPEC",
        help="ramp, e.g. 30s:100,2m:100,30s:0 (rate with -r, concurrency otherwise)",
    )
    adaptive = run.add_argument_group("adaptive concurrency")
    adaptive.add_argument(
        "--adaptive",
        action="store_true",
        help="an AIMD controller picks the concurrency that keeps latency under target",
    )
    adaptive.add_argument(
        "--latency-target",
        type=_duration,
        default=None,
        help="adaptive: the latency the controller keeps under (default 250ms)",
    )
    adaptive.add_argument(
        "--latency-percentile",
        type=float,
        default=None,
        help="adaptive: which percentile of a window to compare (default 95)",
    )
    adaptive.add_argument("--min-concurrency", type=_positive_int, default=None)
    adaptive.add_argument("--max-concurrency", type=_positive_int, default=None)
    adaptive.add_argument("--initial-concurrency", type=_positive_int, default=None)
    adaptive.add_argument(
        "--increase",
        type=_positive_int,
        default=None,
        help="adaptive: limit added after a window without congestion (default 1)",
    )
    adaptive.add_argument(
        "--backoff",
        default=None,
        metavar="RATIO",
        help="adaptive: limit multiplied by this after a congested window (default 0.9)",
    )
    adaptive.add_argument(
        "--window-min",
        type=_duration,
        default=None,
        metavar="DUR",
        help="adaptive: shortest window; windows last about 2x the median latency (500ms)",
    )
    adaptive.add_argument(
        "--window-max",
        type=_duration,
        default=None,
        metavar="DUR",
        help="adaptive: longest window, whatever the sample count (5s)",
    )
    adaptive.add_argument(
        "--window-samples",
        type=_positive_int,
        default=None,
        metavar="N",
        help="adaptive: samples a window needs before it closes (20)",
    )
    adaptive.add_argument(
        "--congestion-status",
        default=None,
        metavar="CODES",
        help="adaptive: statuses that signal overload, e.g. 429,503 (default) or none",
    )
    adaptive.add_argument(
        "--congestion-tolerance",
        default=None,
        metavar="SHARE",
        help="adaptive: share of a window's requests that may signal overload (1%%)",
    )
    adaptive.add_argument(
        "--no-slow-start",
        action="store_true",
        help="adaptive: grow by --increase from the start instead of doubling",
    )
    scenario = run.add_argument_group("scenarios and thresholds")
    scenario.add_argument(
        "-f", "--scenario", default=None, metavar="FILE", help="TOML scenario file"
    )
    scenario.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="EXPR",
        help="repeatable: p99<250ms, p95<=1s, error_rate<1%%, rps>500, checkout.p99<400ms",
    )
    scenario.add_argument(
        "--abort-on-fail",
        action="store_true",
        help="stop the run as soon as a threshold is known to fail",
    )
    outputs = run.add_argument_group("metrics and live stream")
    outputs.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port"
    )
    outputs.add_argument(
        "--metrics-addr", default="127.0.0.1", help="address for /metrics (default 127.0.0.1)"
    )
    outputs.add_argument(
        "--linger",
        type=_duration,
        default=None,
        help="keep /metrics up this long after the run (default 11s when --metrics-port)",
    )
    outputs.add_argument(
        "--live-port", type=int, default=None, help="websocket stream of snapshots on this port"
    )
    outputs.add_argument(
        "--live-addr", default="127.0.0.1", help="address for the live stream (default 127.0.0.1)"
    )
    outputs.add_argument(
        "--scenario-name", default=None, help="the `scenario` label in metrics (default: default)"
    )

    demo = sub.add_parser("demo", help="start an embedded target and run a short test against it")
    demo.add_argument("-d", "--duration", type=_duration, default=10.0)
    demo.add_argument("-c", "--concurrency", type=_positive_int, default=5)
    demo.add_argument("--http1", action="store_true", help="use HTTP/1.1 instead of h2c")
    demo.add_argument("--json", default=None, metavar="PATH")

    target = sub.add_parser("target", help="serve the demo target on its own")
    args = sys.argv[1:] if argv is None else list(argv)
    if "target" in args:
        from ballista.target.app import add_target_arguments

        add_target_arguments(target)

    # Sub-commands whose modules define their own flags; imported only when used.
    for name, module, help_text in _DELEGATED:
        sp = sub.add_parser(name, help=help_text)
        if name in args:
            importlib.import_module(module).add_arguments(sp)

    compare = sub.add_parser(
        "compare", help="sequential baseline vs the concurrent engine, same target"
    )
    add_request_arguments(compare)
    compare.add_argument(
        "--json", default=None, metavar="PATH", help="write both summaries and the ratios as JSON"
    )
    return parser


def body_from_args(ns: argparse.Namespace) -> bytes | None:
    """-b or --body-file, or None when neither was given."""
    if ns.body_file is not None:
        try:
            return Path(ns.body_file).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"--body-file: cannot read {ns.body_file!r}: {exc.strerror}"
            ) from None
    if ns.body is not None:
        return str(ns.body).encode("utf-8")
    return None


def load_from_args(ns: argparse.Namespace, *, sequential: bool = False) -> LoadSpec:
    """The load model the flags ask for (closed, open, adaptive, sequential; stages)."""
    rate = getattr(ns, "rate", None)
    stages_text = getattr(ns, "stages", None)
    adaptive_flag = getattr(ns, "adaptive", False)
    if sequential and ns.concurrency not in (None, 1):
        raise ConfigError("--sequential sends one request at a time: drop -c/--concurrency")
    if sequential and ns.connections not in (None, 1):
        raise ConfigError("--sequential uses one connection: drop --connections")
    chosen = [
        name
        for name, on in (
            ("--sequential", sequential),
            ("-r/--rate", rate is not None),
            ("--adaptive", adaptive_flag),
        )
        if on
    ]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} are different load models: choose one")
    if rate is not None and ns.concurrency is not None:
        raise ConfigError("-r/--rate (open model) and -c/--concurrency (closed model): choose one")
    max_in_flight = getattr(ns, "max_in_flight", None)
    if max_in_flight is not None and rate is None:
        raise ConfigError("--max-in-flight applies to the open model: add -r/--rate")
    stages = parse_stages(stages_text) if stages_text else ()
    if stages and (sequential or adaptive_flag):
        raise ConfigError("--stages ramps the rate (-r) or the concurrency: not with this model")
    adaptive_spec = None
    if adaptive_flag:
        from ballista.core.controller import parse_share, parse_statuses, validate

        defaults = AdaptiveSpec()
        backoff = getattr(ns, "backoff", None)
        statuses = getattr(ns, "congestion_status", None)
        tolerance = getattr(ns, "congestion_tolerance", None)
        adaptive_spec = AdaptiveSpec(
            latency_target=ns.latency_target or defaults.latency_target,
            percentile=ns.latency_percentile or defaults.percentile,
            initial=ns.initial_concurrency or defaults.initial,
            minimum=ns.min_concurrency or defaults.minimum,
            maximum=ns.max_concurrency or ns.concurrency or defaults.maximum,
            increase=getattr(ns, "increase", None) or defaults.increase,
            backoff=defaults.backoff if backoff is None else parse_share(backoff, "--backoff"),
            window_min=getattr(ns, "window_min", None) or defaults.window_min,
            window_max=getattr(ns, "window_max", None) or defaults.window_max,
            window_samples=getattr(ns, "window_samples", None) or defaults.window_samples,
            congestion_statuses=(
                defaults.congestion_statuses if statuses is None else parse_statuses(statuses)
            ),
            congestion_tolerance=(
                defaults.congestion_tolerance
                if tolerance is None
                else parse_share(tolerance, "--congestion-tolerance")
            ),
            slow_start=not getattr(ns, "no_slow_start", False),
        )
        validate(adaptive_spec)
        if not 0 < adaptive_spec.percentile < 100:
            raise ConfigError("--latency-percentile: must be between 0 and 100")
        if adaptive_spec.minimum > adaptive_spec.maximum:
            raise ConfigError("--min-concurrency is above --max-concurrency")
    elif any(
        getattr(ns, f, None) is not None
        for f in (
            "latency_target",
            "latency_percentile",
            "min_concurrency",
            "max_concurrency",
            "initial_concurrency",
            "increase",
            "backoff",
            "window_min",
            "window_max",
            "window_samples",
            "congestion_status",
            "congestion_tolerance",
        )
    ) or getattr(ns, "no_slow_start", False):
        raise ConfigError("--latency-target and the concurrency bounds need --adaptive")
    model: Model = "closed"
    if sequential:
        model = "sequential"
    elif rate is not None:
        model = "open"
    elif adaptive_flag:
        model = "adaptive"
    return LoadSpec(
        model=model,
        concurrency=1 if sequential else (ns.concurrency or 10),
        rate=rate,
        duration=ns.duration,
        requests=ns.requests,
        max_in_flight=max_in_flight,
        stages=stages,
        arrival=getattr(ns, "arrival", None) or "constant",
        adaptive=adaptive_spec,
    )


def config_from_args(ns: argparse.Namespace, *, sequential: bool = False) -> RunConfig:
    """Validate flags into a RunConfig. Raises ConfigError naming the problem."""
    if getattr(ns, "scenario", None):
        from ballista.core.scenario import config_from_scenario

        return config_from_scenario(ns.scenario, ns, sequential=sequential)
    if ns.url is None:
        raise ConfigError("a URL is required (or a scenario file with -f)")
    origin, target = parse_url(ns.url)
    headers = tuple(parse_header(h) for h in ns.header)
    method = parse_method(ns.method)
    body = body_from_args(ns) or b""
    load = load_from_args(ns, sequential=sequential)
    if ns.cacert is not None and not Path(ns.cacert).is_file():
        raise ConfigError(f"--cacert: no such file {ns.cacert!r}")
    protocol: Protocol = ns.protocol or "auto"
    return RunConfig(
        origin=origin,
        requests=(
            RequestSpec(name="default", method=method, target=target, headers=headers, body=body),
        ),
        load=load,
        protocol=protocol,
        connections=ns.connections,
        timeout=DEFAULT_TIMEOUT if ns.timeout is None else ns.timeout,
        insecure=ns.insecure,
        interval=DEFAULT_INTERVAL if ns.interval is None else ns.interval,
        scenario=getattr(ns, "scenario_name", None) or "default",
        thresholds=tuple(getattr(ns, "threshold", ())),
        ca_file=ns.cacert,
    )


async def _watch_signals(engine: Engine) -> None:
    """First SIGINT/SIGTERM: stop sending and let in-flight requests finish; second: stop now."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            engine.signal()


@dataclass(frozen=True, slots=True)
class Outputs:
    """Where a run's results go, besides the engine itself."""

    json_path: str | None = None
    quiet: bool = False
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    linger: float | None = None
    live_port: int | None = None
    live_addr: str = "127.0.0.1"
    abort_on_fail: bool = False


#: Default time /metrics stays up after a run: two scrapes at a 5 s interval.
DEFAULT_LINGER = 11.0


def outputs_from_args(ns: argparse.Namespace) -> Outputs:
    check_output_path(ns.json, "--json")
    for flag, port in (("--metrics-port", ns.metrics_port), ("--live-port", ns.live_port)):
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"{flag}: {port} is not a TCP port (0-65535)")
    if ns.linger is not None and ns.metrics_port is None:
        raise ConfigError("--linger keeps /metrics up after the run: add --metrics-port")
    return Outputs(
        json_path=ns.json,
        quiet=ns.quiet,
        metrics_port=ns.metrics_port,
        metrics_addr=ns.metrics_addr,
        linger=ns.linger,
        live_port=ns.live_port,
        live_addr=ns.live_addr,
        abort_on_fail=ns.abort_on_fail,
    )


def execute(
    config: RunConfig, outputs: Outputs, *, stdout: TextIO, stderr: TextIO
) -> tuple[dict[str, Any], int]:
    """Run a configuration to the end and report it: (JSON summary, exit code)."""
    return trio.run(lambda: run_and_report(config, outputs, stdout=stdout, stderr=stderr))


async def run_and_report(
    config: RunConfig, outputs: Outputs, *, stdout: TextIO, stderr: TextIO
) -> tuple[dict[str, Any], int]:
    """Inside trio: run a configuration to the end and report it: (summary, exit code).

    Builds the pieces a run may carry (threshold checks, the adaptive
    controller, the Prometheus exporter, the live stream), runs the engine and
    delivers the summary to each of them.
    """
    run_id = uuid.uuid4().hex[:12]
    sinks: list[SnapshotSink] = []
    text_out = stderr if outputs.json_path == "-" else stdout
    if not outputs.quiet and text_out.isatty():
        sinks.append(
            LiveLine(text_out, duration=config.load.effective_duration, total=config.load.requests)
        )
    thresholds = None
    if config.thresholds:
        from ballista.core.thresholds import ThresholdSet

        thresholds = ThresholdSet(config.thresholds, [r.name for r in config.requests])
    controller = None
    if config.load.model == "adaptive":
        from ballista.core.controller import build_controller

        assert config.load.adaptive is not None
        controller = build_controller(config.load.adaptive)

    engine = Engine(config, sinks=sinks, controller=controller)
    if thresholds is not None and outputs.abort_on_fail:
        checker = thresholds

        def abort_when_failed(snap: Snapshot) -> None:
            if not snap.final and checker.known_failed(snap):
                engine.stop()

        engine.add_sink(abort_when_failed)
    started_at = dt.datetime.now(dt.UTC)
    exit_code = EXIT_OK
    async with trio.open_nursery() as services:
        exporter = None
        hub = None
        live_port: int | None = None
        # The live stream first: the page served beside /metrics needs its bound port.
        if outputs.live_port is not None:
            from ballista.observe.live import LiveHub, serve_live

            hub = LiveHub(config, run_id=run_id, started_at=started_at)
            live_port = await services.start(serve_live, hub, outputs.live_addr, outputs.live_port)
            print(f"ballista: live stream on ws://{outputs.live_addr}:{live_port}/", file=stderr)
            engine.add_sink(hub.publish)
            engine.on_start.append(hub.on_start)
        if outputs.metrics_port is not None:
            from ballista.observe.live import page_routes
            from ballista.observe.metrics import MetricsExporter, serve_metrics

            exporter = MetricsExporter(config, run_id=run_id)
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
            engine.add_sink(exporter.update)
            engine.on_start.append(exporter.on_start)
        services.start_soon(_watch_signals, engine)
        final = await engine.run()
        verdicts: list[dict[str, Any]] = []
        if thresholds is not None:
            verdicts = thresholds.evaluate(final)
            if not all(v["ok"] for v in verdicts):
                exit_code = EXIT_THRESHOLD
        meta = engine.run_meta(started_at, thresholds=verdicts)
        doc = summary_dict(final, meta)
        if not outputs.quiet:
            text_out.write(format_summary(final, meta))
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
        if hub is not None:
            await hub.finish(doc)
        if exporter is not None:
            linger = DEFAULT_LINGER if outputs.linger is None else outputs.linger
            if linger > 0 and not engine.interrupted:
                print(f"ballista: keeping /metrics up for {linger:g}s", file=stderr)
                with trio.move_on_after(linger):
                    await engine.wait_for_signal()
        services.cancel_scope.cancel()
    return doc, exit_code


def _cmd_run(ns: argparse.Namespace) -> int:
    config = config_from_args(ns, sequential=ns.sequential)
    outputs = outputs_from_args(ns)
    if config.thresholds:
        from ballista.core.thresholds import ThresholdSet

        ThresholdSet(config.thresholds, [r.name for r in config.requests])  # validates
    _, code = execute(config, outputs, stdout=sys.stdout, stderr=sys.stderr)
    return code


def _cmd_demo(ns: argparse.Namespace) -> int:
    from ballista.cli.demo import run_demo

    return run_demo(
        duration=ns.duration,
        concurrency=ns.concurrency,
        http2=not ns.http1,
        json_path=ns.json,
    )


def _cmd_target(ns: argparse.Namespace) -> int:
    from ballista.target.app import run_target_forever, target_config_from_args

    return run_target_forever(target_config_from_args(ns))


def _cmd_compare(ns: argparse.Namespace) -> int:
    from ballista.cli.compare import run_compare

    config_from_args(ns)  # validate once, before anything starts
    check_output_path(ns.json, "--json")
    try:
        return run_compare(ns)
    except BallistaError as exc:
        print(f"ballista: {exc}", file=sys.stderr)
        return EXIT_USAGE


#: (command, module, help): the module has add_arguments(parser) and main(ns) -> int.
_DELEGATED: tuple[tuple[str, str, str], ...] = (
    ("watch", "ballista.cli.watch", "live view of a running test in the terminal"),
    ("serve", "ballista.daemon.daemon", "daemon: soak tests, API, metrics, live stream"),
    ("runs", "ballista.cli.runs", "talk to a daemon: list, start, show, stop runs"),
)


def _delegate(module: str) -> Callable[[argparse.Namespace], int]:
    def command(ns: argparse.Namespace) -> int:
        main_fn: Callable[[argparse.Namespace], int] = importlib.import_module(module).main
        return main_fn(ns)

    return command


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    **{name: _delegate(module) for name, module, _ in _DELEGATED},
    "run": _cmd_run,
    "demo": _cmd_demo,
    "target": _cmd_target,
    "compare": _cmd_compare,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ballista` console script."""
    parser = build_parser(argv)
    try:
        ns = parser.parse_args(argv)
        if ns.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return _COMMANDS[ns.command](ns)
    except ConfigError as exc:
        print(f"ballista: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # Output closed early (`| head`): not our failure.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
