"""The `ballista` command: the parser of every sub-command, and one exit code per outcome.

Exit codes, for every command: 0 ran; 1 a threshold was crossed; 2 bad input
or a situation the user can fix (one line on stderr naming it); 3 an internal
error, a bug in Ballista (one line, then the traceback to report).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn, Protocol

from ballista import __version__
from ballista.cli.run import (
    add_request_arguments,
    add_run_arguments,
    config_from_args,
    duration_arg,
    positive_int,
)
from ballista.cli.run import main as run_main
from ballista.core.errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, BallistaError, ConfigError
from ballista.observe.summary import check_output_path

#: What `ballista --help` says about exit codes.
EXIT_CODES_HELP = (
    "exit codes: 0 ran; 1 a threshold was crossed; 2 bad input or a situation to fix "
    "(port in use, missing file), named in one line; 3 internal error (a bug in "
    "Ballista: please report the traceback)"
)


class _Parser(argparse.ArgumentParser):
    """argparse, but bad input is one line on stderr and exit 2: no usage dump."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser. The `target` sub-command's flags (which import hypercorn)
    are only added when `argv` asks for that command, to keep start-up light."""
    parser = _Parser(
        prog="ballista",
        description="HTTP load testing: closed, open and adaptive load over HTTP/1.1 and HTTP/2.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"ballista {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run", help="run one load test and print a summary", epilog=EXIT_CODES_HELP
    )
    add_request_arguments(run)
    add_run_arguments(run)

    demo = sub.add_parser("demo", help="start an embedded target and run a short test against it")
    demo.add_argument("-d", "--duration", type=duration_arg, default=10.0)
    demo.add_argument("-c", "--concurrency", type=positive_int, default=5)
    demo.add_argument("--http1", action="store_true", help="use HTTP/1.1 instead of h2c")
    demo.add_argument("--json", default=None, metavar="PATH")
    demo.add_argument(
        "--journey",
        action="store_true",
        help="run the shopping journey (login, items, cart) instead of single requests",
    )

    target = sub.add_parser("target", help="serve the demo target on its own")
    args = sys.argv[1:] if argv is None else list(argv)
    if "target" in args:
        from ballista.target.app import add_target_arguments

        add_target_arguments(target)

    # Sub-commands whose modules define their own flags; imported only when used.
    for name, (help_text, load) in _DELEGATED.items():
        sp = sub.add_parser(name, help=help_text)
        if name in args:
            load().add_arguments(sp)

    compare = sub.add_parser(
        "compare", help="sequential baseline vs the concurrent engine, same target"
    )
    add_request_arguments(compare)
    compare.add_argument(
        "--json", default=None, metavar="PATH", help="write both summaries and the ratios as JSON"
    )
    compare.add_argument(
        "--report",
        default=None,
        metavar="OUT.html",
        help="write an HTML report comparing the two runs",
    )
    return parser


def _cmd_demo(ns: argparse.Namespace) -> int:
    from ballista.cli.demo import run_demo

    check_output_path(ns.json, "--json")
    return run_demo(
        duration=ns.duration,
        concurrency=ns.concurrency,
        http2=not ns.http1,
        json_path=ns.json,
        journey=ns.journey,
    )


def _cmd_target(ns: argparse.Namespace) -> int:
    from ballista.target.app import run_target_forever, target_config_from_args

    return run_target_forever(target_config_from_args(ns))


def _cmd_compare(ns: argparse.Namespace) -> int:
    from ballista.cli.compare import run_compare

    config_from_args(ns, sequential=False)  # validate once, before anything starts
    check_output_path(ns.json, "--json")
    if ns.report == "-":
        raise ConfigError("--report: a report is a file (give a path ending in .html)")
    check_output_path(ns.report, "--report")
    return run_compare(ns)


class _Command(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def main(self, ns: argparse.Namespace) -> int: ...


def _watch() -> _Command:
    from ballista.cli import watch

    return watch


def _serve() -> _Command:
    from ballista.cli import serve

    return serve


def _kube() -> _Command:
    from ballista.cli import kube

    return kube


def _merge() -> _Command:
    from ballista.cli import merge

    return merge


def _report() -> _Command:
    from ballista.cli import report

    return report


def _runs() -> _Command:
    from ballista.cli import runs

    return runs


#: command -> (help, its module, imported only when the command is used)
_DELEGATED: dict[str, tuple[str, Callable[[], _Command]]] = {
    "watch": ("live view of a running test in the terminal", _watch),
    "serve": ("daemon: soak tests, API, metrics, live stream", _serve),
    "runs": ("talk to a daemon: list, start, show, stop runs, get their reports", _runs),
    "kube": ("Kubernetes: render a segmented test's manifests, collect its summaries", _kube),
    "merge": ("one summary from the JSON summaries of a test's segments", _merge),
    "report": ("an HTML report of JSON summaries: one run, or several compared", _report),
}


def _delegate(load: Callable[[], _Command]) -> Callable[[argparse.Namespace], int]:
    def command(ns: argparse.Namespace) -> int:
        return load().main(ns)

    return command


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    **{name: _delegate(load) for name, (_, load) in _DELEGATED.items()},
    "run": run_main,
    "demo": _cmd_demo,
    "target": _cmd_target,
    "compare": _cmd_compare,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ballista` console script."""
    parser = build_parser(argv)
    try:
        ns = parser.parse_args(argv)
        # The command line as given: `run --workers` hands it to its children.
        ns.argv = list(sys.argv[1:] if argv is None else argv)
        if ns.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return _COMMANDS[ns.command](ns)
    except BaseException as exc:
        return _report_failure(exc)


def _report_failure(exc: BaseException) -> int:
    """One line and an exit code for an exception that ended a command.

    trio's nurseries wrap what their tasks raise in exception groups: the one
    exception inside is what is reported. Ballista's own errors are the user's
    to fix (one line, no traceback); anything else is a bug in Ballista.
    """
    leaf = _sole_leaf(exc)
    if isinstance(leaf, BallistaError):
        print(f"ballista: error: {leaf}", file=sys.stderr)
        return leaf.exit_code
    if isinstance(leaf, BrokenPipeError):
        # Output closed early (`| head`): not our failure.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    if not isinstance(exc, Exception):
        raise exc  # KeyboardInterrupt, SystemExit: not ours to turn into a code
    shown = leaf if leaf is not None else exc
    print(f"ballista: internal error: {type(shown).__name__}: {shown}", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)
    return EXIT_INTERNAL


def _sole_leaf(exc: BaseException) -> BaseException | None:
    """The exception inside nested groups when there is exactly one, else None
    (and `exc` itself when it is no group)."""
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc
