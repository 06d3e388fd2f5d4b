"""`ballista kube`: render the Kubernetes manifests of a segmented test, and collect
its segments' summaries from the pods' logs (docs/scale-out.md)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import NoReturn

from ballista.cli.run import (
    add_request_arguments,
    add_run_arguments,
    config_from_args,
    duration_arg,
    positive_int,
)
from ballista.core.errors import EXIT_OK, EXIT_USAGE, ConfigError
from ballista.core.segment import MAX_SEGMENTS, parse_start_at
from ballista.kube.collect import Kubectl, collect
from ballista.kube.manifests import (
    DEADLINE_MARGIN,
    DEFAULT_IMAGE,
    DEFAULT_METRICS_PORT,
    KubeTest,
    check_image,
    check_name,
    check_namespace,
    name_from,
    scenario_files,
)
from ballista.kube.manifests import render as render_manifests
from ballista.observe.summary import check_output_path, write_json

#: `ballista run` flags the Job sets itself: given after `--`, they would fight it.
_SET_BY_THE_JOB = {
    "scenario": "-f/--scenario (give it to kube render)",
    "segment": "--segment (each pod's comes from its JOB_COMPLETION_INDEX)",
    "start_at": "--start-at (give it to kube render, or --start-in)",
    "metrics_port": "--metrics-port (give it to kube render)",
    "json": "--json (the pods print theirs for kube collect)",
    "workers": "--workers (a pod runs one segment: give more --segments instead)",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kube_command", metavar="COMMAND", parser_class=_Parser)
    render = sub.add_parser(
        "render",
        help="write the manifests (ConfigMap, Indexed Job, PodMonitor) of a segmented test",
        description="Everything after -- is `ballista run` arguments for every pod "
        "(a URL, -r, -c, -d, --http2, --threshold, ...).",
    )
    render.add_argument("-f", "--scenario", required=True, metavar="FILE", help="scenario file")
    render.add_argument(
        "--segments", type=positive_int, required=True, metavar="N", help="pods, one segment each"
    )
    render.add_argument(
        "--image", default=DEFAULT_IMAGE, help=f"container image (default {DEFAULT_IMAGE})"
    )
    render.add_argument("--name", default=None, help="the Job's name (default: the scenario's)")
    render.add_argument("--namespace", default=None, help="namespace of every object")
    when = render.add_mutually_exclusive_group()
    when.add_argument(
        "--start-in",
        type=duration_arg,
        default=None,
        metavar="DUR",
        help="the pods start this long after rendering (default 2m): time to apply the "
        "manifests and pull the image",
    )
    when.add_argument(
        "--start-at", default=None, metavar="TIME", help="the pods start at this instant"
    )
    render.add_argument(
        "--metrics-port",
        type=positive_int,
        default=DEFAULT_METRICS_PORT,
        help=f"each pod's /metrics port (default {DEFAULT_METRICS_PORT})",
    )
    render.add_argument("-o", "--output", default=None, metavar="FILE", help="default: stdout")
    render.add_argument(
        "run_args",
        nargs="*",
        metavar="RUN_ARGS",
        help="after --: `ballista run` arguments for every pod",
    )
    gather = sub.add_parser(
        "collect",
        help="fetch each segment's summary from its pod's log, for `ballista merge`",
    )
    gather.add_argument("job", metavar="JOB", help="the Job's name (kube render's --name)")
    gather.add_argument("--namespace", default=None)
    gather.add_argument(
        "-o", "--output", default=".", metavar="DIR", help="write segment-I.json files here"
    )
    gather.add_argument(
        "--wait",
        type=duration_arg,
        default=None,
        metavar="DUR",
        help="wait up to DUR for every pod to end first (default: collect now)",
    )
    gather.add_argument("--kubectl", default="kubectl", help="the kubectl to run")


#: How often `kube collect --wait` asks the cluster whether the pods have ended.
WAIT_POLL = 5.0
#: How long after rendering the pods start when neither --start-in nor --start-at is given.
DEFAULT_START_IN = 120.0


def _run_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ballista run")
    add_request_arguments(p)
    add_run_arguments(p)
    return p


def render(ns: argparse.Namespace) -> str:
    """The manifests as YAML, checked: every pod's command line is parsed and its
    segment's configuration built here first, so a mistake shows now, not in the pods."""
    if ns.segments > MAX_SEGMENTS:
        raise ConfigError(f"--segments: at most {MAX_SEGMENTS:,}")
    now = time.time()
    if ns.start_at is not None:
        start_at = parse_start_at(ns.start_at, now=now, where="--start-at")
    else:
        start_at = now + (DEFAULT_START_IN if ns.start_in is None else ns.start_in)
    if ns.metrics_port > 65535:
        raise ConfigError(f"--metrics-port: {ns.metrics_port} is not a port (1 to 65535)")
    check_image(ns.image)
    if ns.namespace is not None:
        check_namespace(ns.namespace)
    files = scenario_files(ns.scenario)
    scenario = Path(ns.scenario).name
    run_ns = _run_parser().parse_args(list(ns.run_args))
    for attr, flag in _SET_BY_THE_JOB.items():
        if getattr(run_ns, attr) is not None:
            raise ConfigError(f"kube render: after --, drop {flag}")
    for index in sorted({0, ns.segments - 1}):
        checked = _run_parser().parse_args(
            [*ns.run_args, "-f", ns.scenario, "--segment", f"{index}/{ns.segments}"]
        )
        config = config_from_args(checked)
    name = (
        check_name(ns.name)
        if ns.name is not None
        else name_from(config.scenario if config.scenario != "default" else Path(scenario).stem)
    )
    length = config.load.effective_duration
    test = KubeTest(
        name=name,
        segments=ns.segments,
        start_at=start_at,
        files=files,
        scenario=scenario,
        image=ns.image,
        namespace=ns.namespace,
        metrics_port=ns.metrics_port,
        run_args=tuple(ns.run_args),
        deadline=None if length is None else math.ceil(start_at - now + length + DEADLINE_MARGIN),
    )
    return render_manifests(test)


def _collect(ns: argparse.Namespace) -> int:
    out = Path(ns.output)
    if not out.is_dir():
        raise ConfigError(f"-o/--output: no such directory {ns.output!r}")
    kubectl = Kubectl(ns.namespace, ns.kubectl)
    segments = kubectl.segments(ns.job)
    pods = kubectl.pods(ns.job)
    if ns.wait is not None:
        deadline = time.monotonic() + ns.wait
        while any(p.phase in ("Pending", "Running") for p in pods):
            if time.monotonic() >= deadline:
                break
            time.sleep(min(WAIT_POLL, max(0.0, deadline - time.monotonic())))
            pods = kubectl.pods(ns.job)
    found = collect(segments, pods, kubectl.log)
    written = []
    for index, doc in sorted(found.summaries.items()):
        path = out / f"segment-{index}.json"
        write_json(doc, str(path), sys.stdout)
        written.append(str(path))
    for problem in found.problems:
        print(f"ballista: {problem}", file=sys.stderr)
    print(
        f"ballista: {len(found.summaries)} of {segments} segment summaries written to {out}",
        file=sys.stderr,
    )
    if not found.complete:
        missing = segments - len(found.summaries)
        raise ConfigError(
            f"job {ns.job}: {missing} of {segments} segments have no usable summary "
            "(above): merged, the others would be a partial run"
        )
    print(f"ballista: merge them with: ballista merge {out}/segment-*.json", file=sys.stderr)
    return EXIT_OK


def main(ns: argparse.Namespace) -> int:
    if ns.kube_command == "render":
        check_output_path(ns.output, "-o/--output")
        text = render(ns)
        if ns.output is None:
            sys.stdout.write(text)
        else:
            Path(ns.output).write_text(text, encoding="utf-8")
        return EXIT_OK
    if ns.kube_command == "collect":
        return _collect(ns)
    print("ballista kube: render or collect (see ballista kube --help)", file=sys.stderr)
    return EXIT_USAGE
