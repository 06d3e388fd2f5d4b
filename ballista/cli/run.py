"""`ballista run`: its flags, turned into a Layer of overrides and a RunConfig through
the one road in `ballista.core.build`, then run with its outputs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import trio

from ballista.core.build import Layer, Scenario, build_config
from ballista.core.config import RequestSpec, RunConfig, parse_header, parse_method, parse_url
from ballista.core.controller import parse_statuses
from ballista.core.durations import parse_duration, parse_share
from ballista.core.errors import ConfigError
from ballista.core.pyjourneys import is_python_journeys, load_journeys
from ballista.core.scenario import read_scenario_file, scenario_from_table
from ballista.core.segment import parse_segment, parse_start_at
from ballista.daemon.scenarios import MAX_WORKERS
from ballista.engine.engine import check_fd_limit
from ballista.engine.run import Run
from ballista.engine.workers import WorkersRun, report_to_parent, usable_cores
from ballista.observe.outputs import Outputs, run_with_outputs
from ballista.observe.summary import check_output_path
from ballista.transport.connect import check_ca_file


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse prefixes the flag's name)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def workers_arg(text: str) -> int:
    """argparse type of --workers: a whole number >= 1, or `auto` (one per usable core)."""
    if text.strip().lower() == "auto":
        return usable_cores()
    value = positive_int(text)
    if value > MAX_WORKERS:
        # Each worker is a whole Python process: a typo must not fork thousands.
        raise argparse.ArgumentTypeError(f"at most {MAX_WORKERS} on one machine, got {value}")
    return value


def duration_arg(text: str) -> float:
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
        type=positive_int,
        default=None,
        help="closed model: number of workers (default 10)",
    )
    p.add_argument(
        "-n",
        "--requests",
        type=positive_int,
        default=None,
        help="stop after this many requests in total",
    )
    p.add_argument(
        "-d",
        "--duration",
        type=duration_arg,
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
        type=positive_int,
        default=None,
        help="connections to open (default: one per worker on HTTP/1.1, "
        "one per 100 streams on HTTP/2)",
    )
    p.add_argument(
        "--timeout",
        type=duration_arg,
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
        type=duration_arg,
        default=None,
        help="snapshot interval (default 1s)",
    )


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """`ballista run`'s own flags, beside the request flags."""
    p.add_argument(
        "--sequential",
        action="store_true",
        help="one request at a time over one connection: the baseline",
    )
    p.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="write the JSON summary to PATH, or to stdout with '-'",
    )
    p.add_argument(
        "--report",
        default=None,
        metavar="OUT.html",
        help="write the HTML report (one self-contained file) at the end",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no live display, no text summary")
    open_model = p.add_argument_group("open model and ramps")
    open_model.add_argument(
        "-r",
        "--rate",
        type=positive_float,
        default=None,
        help="open model: requests per second, scheduled in advance; latency counts "
        "from the scheduled time",
    )
    open_model.add_argument(
        "--max-in-flight",
        type=positive_int,
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
    adaptive = p.add_argument_group("adaptive concurrency")
    adaptive.add_argument(
        "--adaptive",
        action="store_true",
        help="an AIMD controller picks the concurrency that keeps latency under target",
    )
    adaptive.add_argument(
        "--latency-target",
        type=duration_arg,
        default=None,
        help="adaptive: the latency the controller keeps under (default 250ms)",
    )
    adaptive.add_argument(
        "--latency-percentile",
        type=float,
        default=None,
        help="adaptive: which percentile of a window to compare (default 95)",
    )
    adaptive.add_argument("--min-concurrency", type=positive_int, default=None)
    adaptive.add_argument("--max-concurrency", type=positive_int, default=None)
    adaptive.add_argument("--initial-concurrency", type=positive_int, default=None)
    adaptive.add_argument(
        "--increase",
        type=positive_int,
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
        type=duration_arg,
        default=None,
        metavar="DUR",
        help="adaptive: shortest window; windows last about 2x the median latency (500ms)",
    )
    adaptive.add_argument(
        "--window-max",
        type=duration_arg,
        default=None,
        metavar="DUR",
        help="adaptive: longest window, whatever the sample count (5s)",
    )
    adaptive.add_argument(
        "--window-samples",
        type=positive_int,
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
    scenario = p.add_argument_group("scenarios and thresholds")
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
        "--no-limits",
        action="store_true",
        help="lift the soft bounds on rate (1e6/s) and workers (20,000) for a machine that "
        "can take more",
    )
    scenario.add_argument(
        "--abort-on-fail",
        action="store_true",
        help="stop the run as soon as a threshold is known to fail",
    )
    scale = p.add_argument_group("scale out (docs/scale-out.md)")
    scale.add_argument(
        "--segment",
        default=None,
        metavar="I/N",
        help="run segment I (from 0) of N equal shares of the test: its workers, its "
        "arrivals of the schedule, its part of -n",
    )
    scale.add_argument(
        "--start-at",
        default=None,
        metavar="TIME",
        help="start at this instant (ISO 8601 with a zone, or Unix seconds), so that "
        "segments start together; -d counts from it",
    )
    scale_out = p.add_argument_group("workers (docs/scale-out.md)")
    scale_out.add_argument(
        "--workers",
        type=workers_arg,
        default=None,
        metavar="N|auto",
        help="run the test as N processes on this machine (auto: one per usable core), "
        "with one live view, one summary and one /metrics",
    )
    # A --workers child: its segment's figures go to its parent on this file descriptor.
    scale_out.add_argument("--worker-fd", type=int, default=None, help=argparse.SUPPRESS)
    # ...and a daemon run's child reads its scenario table on stdin.
    scale_out.add_argument("--worker-scenario", action="store_true", help=argparse.SUPPRESS)
    outputs = p.add_argument_group("metrics and live stream")
    outputs.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port"
    )
    outputs.add_argument(
        "--metrics-addr", default="127.0.0.1", help="address for /metrics (default 127.0.0.1)"
    )
    outputs.add_argument(
        "--linger",
        type=duration_arg,
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


#: Flags as the user knows them, by the canonical key they set.
FLAG_NAMES = {
    "concurrency": "-c/--concurrency",
    "requests": "-n/--requests",
    "duration": "-d/--duration",
    "rate": "-r/--rate",
    "max_in_flight": "--max-in-flight",
    "arrival": "--arrival",
    "stages": "--stages",
    "adaptive.latency_target": "--latency-target",
    "adaptive.percentile": "--latency-percentile",
    "adaptive.min": "--min-concurrency",
    "adaptive.max": "--max-concurrency",
    "adaptive.initial": "--initial-concurrency",
    "adaptive.increase": "--increase",
    "adaptive.window_min": "--window-min",
    "adaptive.window_max": "--window-max",
    "adaptive.window_samples": "--window-samples",
    "connections": "--connections",
    "timeout": "--timeout",
    "interval": "--interval",
    "ca_file": "--cacert",
    "name": "--scenario-name",
}
#: Namespace attribute of each canonical key, where they differ.
_ATTRS = {
    "adaptive.latency_target": "latency_target",
    "adaptive.percentile": "latency_percentile",
    "adaptive.min": "min_concurrency",
    "adaptive.max": "max_concurrency",
    "adaptive.initial": "initial_concurrency",
    "adaptive.increase": "increase",
    "adaptive.window_min": "window_min",
    "adaptive.window_max": "window_max",
    "adaptive.window_samples": "window_samples",
    "ca_file": "cacert",
    "name": "scenario_name",
}


def flags_layer(ns: argparse.Namespace, *, sequential: bool = False) -> Layer:
    """The flags typed on the command line, as overrides named by their flags."""
    layer = Layer()
    for key, flag in FLAG_NAMES.items():
        value = getattr(ns, _ATTRS.get(key, key), None)
        if key == "stages" and value is not None:
            from ballista.core.schedule import parse_stages

            value = parse_stages(value)
        if value is not None:
            layer.set(key, value, flag)
    if getattr(ns, "protocol", None):
        layer.set("protocol", ns.protocol, f"--{ns.protocol}")
    if getattr(ns, "insecure", False):
        layer.set("insecure", True, "--insecure")
    if getattr(ns, "segment", None) is not None:
        layer.set("segment", parse_segment(ns.segment, "--segment"), "--segment")
    if getattr(ns, "start_at", None) is not None:
        layer.set(
            "start_at",
            parse_start_at(ns.start_at, now=time.time(), where="--start-at"),
            "--start-at",
        )
    if getattr(ns, "no_slow_start", False):
        layer.set("adaptive.slow_start", False, "--no-slow-start")
    for attr, key, parse in (
        ("backoff", "adaptive.backoff", parse_share),
        ("congestion_tolerance", "adaptive.congestion_tolerance", parse_share),
        ("congestion_status", "adaptive.congestion_statuses", parse_statuses),
    ):
        text = getattr(ns, attr, None)
        if text is not None:
            flag = "--" + attr.replace("_", "-")
            layer.set(key, parse(text, what=flag), flag)
    models = [
        (model, flag)
        for model, flag, on in (
            ("sequential", "--sequential", sequential),
            ("open", "-r/--rate", getattr(ns, "rate", None) is not None),
            ("adaptive", "--adaptive", getattr(ns, "adaptive", False)),
        )
        if on
    ]
    if len(models) > 1:
        raise ConfigError(
            f"{' and '.join(f for _, f in models)} are different load models: choose one"
        )
    if models:
        layer.set("model", *models[0])
    elif "concurrency" in layer:
        layer.set("model", "closed", "-c/--concurrency")
    if "concurrency" in layer and layer.get("model") == "open":
        raise ConfigError("-r/--rate (open model) and -c/--concurrency (closed model): choose one")
    return layer


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


def scenario_from_args(ns: argparse.Namespace) -> Scenario:
    """What to send: the -f file (with -H added and the URL's origin), or the URL and -m/-H/-b."""
    headers = tuple(parse_header(h) for h in ns.header)
    path = getattr(ns, "scenario", None)
    if path and is_python_journeys(path):
        return _python_journeys(ns, path, headers)
    if path:
        scenario = read_scenario_file(ns.scenario, headers=headers)
        origin = scenario.origin
        if ns.url:
            origin, url_target = parse_url(ns.url)
            if url_target != "/":
                raise ConfigError(
                    f"URL {ns.url!r}: with -f give only the origin (scheme://host:port); "
                    "the scenario's base_url and paths name the requests"
                )
        if ns.body is not None or ns.body_file is not None:
            raise ConfigError("-b/--body-file: the scenario file defines each request's body")
        if ns.method.upper() != "GET":
            raise ConfigError("-m/--method: the scenario file defines each request's method")
        return dataclasses.replace(scenario, origin=origin)
    if ns.url is None:
        raise ConfigError("a URL is required (or a scenario file with -f)")
    origin, target = parse_url(ns.url)
    spec = RequestSpec(
        name="default",
        method=parse_method(ns.method),
        target=target,
        headers=headers,
        body=body_from_args(ns) or b"",
    )
    return Scenario(origin=origin, requests=(spec,))


def _python_journeys(
    ns: argparse.Namespace, path: str, headers: tuple[tuple[str, str], ...]
) -> Scenario:
    """`-f journeys.py URL`: the journeys, sent to the URL's origin."""
    if ns.url is None:
        raise ConfigError(
            f"-f {path}: Python journeys need the target's URL (ballista run -f {path} URL)"
        )
    origin, target = parse_url(ns.url)
    if target != "/":
        raise ConfigError(
            f"URL {ns.url!r}: with -f {path} give only the origin (scheme://host:port); "
            "the journeys name their paths"
        )
    for given, flag in (
        (ns.body is not None or ns.body_file is not None, "-b/--body-file"),
        (ns.method.upper() != "GET", "-m/--method"),
        (bool(headers), "-H/--header"),
    ):
        if given:
            raise ConfigError(f"{flag}: the journeys in {path} define each request")
    journeys = load_journeys(path)
    spec = RequestSpec(name="default", method="GET", target="/")
    return Scenario(origin=origin, requests=(spec,), journeys=journeys, name="default")


def config_from_args(ns: argparse.Namespace, *, sequential: bool | None = None) -> RunConfig:
    """Validate flags (and the -f file they name) into a RunConfig. ConfigError names the flag."""
    if sequential is None:
        sequential = bool(getattr(ns, "sequential", False))
    scenario = scenario_from_args(ns)
    overrides = flags_layer(ns, sequential=sequential)
    thresholds = [(t, "--threshold") for t in getattr(ns, "threshold", None) or ()]
    config = build_config(
        scenario,
        overrides,
        thresholds=thresholds,
        unbounded=bool(getattr(ns, "no_limits", False)),
        override="add --no-limits if you mean it",
    )
    if config.ca_file is not None:
        # A bundle ssl cannot load fails here, in one line, not at the first connection.
        check_ca_file(config.ca_file)
    return config


def outputs_from_args(ns: argparse.Namespace) -> Outputs:
    check_output_path(ns.json, "--json")
    if ns.report == "-":
        raise ConfigError("--report: a report is a file (give a path ending in .html)")
    check_output_path(ns.report, "--report")
    same = ns.report is not None and ns.json not in (None, "-")
    if same and os.path.abspath(ns.report) == os.path.abspath(ns.json):
        raise ConfigError(f"--report: {ns.report!r} is also --json: give each its own file")
    for flag, port in (("--metrics-port", ns.metrics_port), ("--live-port", ns.live_port)):
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"{flag}: {port} is not a TCP port (0-65535)")
    if ns.linger is not None and ns.metrics_port is None:
        raise ConfigError("--linger keeps /metrics up after the run: add --metrics-port")
    return Outputs(
        json_path=ns.json,
        report_path=ns.report,
        quiet=ns.quiet,
        metrics_port=ns.metrics_port,
        metrics_addr=ns.metrics_addr,
        linger=ns.linger,
        live_port=ns.live_port,
        live_addr=ns.live_addr,
    )


def _read_line(fd: int) -> bytes:
    """One line from `fd`, read byte by byte: nothing after it is taken from the pipe."""
    out = bytearray()
    while not out.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            break
        out += byte
    return bytes(out)


def _daemon_worker_config(ns: argparse.Namespace) -> RunConfig:
    """A daemon run's worker: the scenario table comes on stdin (one JSON line, with
    what the daemon changed: a resumed run's remaining duration or requests)."""
    doc = json.loads(_read_line(0))
    base_dir = doc.get("base_dir")
    scenario = scenario_from_table(
        doc["scenario"], base_dir=Path(base_dir) if base_dir is not None else None
    )
    layer = Layer()
    layer.set("segment", parse_segment(ns.segment), "--segment")
    layer.set("start_at", parse_start_at(ns.start_at, now=time.time()), "--start-at")
    for key in ("duration", "requests"):
        if doc.get(key) is not None:
            layer.set(key, doc[key], key)
    return build_config(scenario, layer)


def _worker_main(ns: argparse.Namespace) -> int:
    """A --workers child: its segment, reported to the parent; no outputs of its own."""
    config = _daemon_worker_config(ns) if ns.worker_scenario else config_from_args(ns)
    fd = ns.worker_fd

    async def go() -> int:
        return await report_to_parent(Run(config), fd)

    return trio.run(go)


def _workers_main(ns: argparse.Namespace) -> int:
    """--workers N: the parent of N segment processes, with the outputs of one run."""
    workers: int = ns.workers
    if getattr(ns, "segment", None) is not None:
        raise ConfigError(
            "--workers runs the segments of the test itself: not with --segment "
            "(run one process per segment instead)"
        )
    if ns.sequential:
        raise ConfigError(
            "--sequential is one request at a time over one connection: not with --workers"
        )
    config = config_from_args(ns)
    # Refused here, in one line, rather than by every child: a share that cannot be
    # cut (the last segment's is the smallest) or does not fit (the first's is the largest).
    seg = argparse.Namespace(**vars(ns))
    for index in sorted({0, workers - 1}):
        seg.segment = f"{index}/{workers}"
        check_fd_limit(config_from_args(seg))
    outputs = outputs_from_args(ns)
    argv: list[str] = list(getattr(ns, "argv", None) or sys.argv[1:])
    child_args = argv[argv.index("run") + 1 :] if "run" in argv else argv

    async def go() -> int:
        run = WorkersRun(config, child_args, workers, abort_on_fail=ns.abort_on_fail)
        _, code = await run_with_outputs(run, outputs, stdout=sys.stdout, stderr=sys.stderr)
        return code

    return trio.run(go)


def main(ns: argparse.Namespace) -> int:
    if ns.worker_fd is not None:
        return _worker_main(ns)
    if ns.workers is not None:
        return _workers_main(ns)
    config = config_from_args(ns)
    check_fd_limit(config)
    outputs = outputs_from_args(ns)

    async def go() -> int:
        run = Run(config, abort_on_fail=ns.abort_on_fail)
        _, code = await run_with_outputs(run, outputs, stdout=sys.stdout, stderr=sys.stderr)
        return code

    return trio.run(go)
