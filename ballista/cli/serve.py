"""`ballista serve`: its flags, checked into ServeOptions, and the daemon run until
a signal stops it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import trio

from ballista.core.config import DEFAULT_GRACE
from ballista.core.errors import BallistaError, ConfigError
from ballista.daemon.scenarios import load_daemon_config
from ballista.daemon.service import (
    DEFAULT_LIVE_PORT,
    DEFAULT_MAX_RUNS,
    DEFAULT_PORT,
    TOKEN_ENV,
    ServeOptions,
    is_loopback,
    run_daemon,
)


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
        "--live-url",
        default=None,
        metavar="URL",
        help="where browsers reach the live stream: ws(s)://... or a path such as /live/ "
        "on the page's own host (default: the page's host, --live-port)",
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


def _live_url(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    url = text.strip()
    parts = urlsplit(url)
    absolute = parts.scheme in ("ws", "wss", "http", "https") and bool(parts.netloc)
    if not absolute and not (url.startswith("/") and not url.startswith("//")):
        raise ConfigError(f"--live-url: {url!r} is neither a ws(s):// URL nor a path like /live/")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ConfigError(f"--live-url: {url!r} has spaces or control characters")
    return url


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
        live_url=_live_url(ns.live_url),
    )
    if not is_loopback(options.addr) and not options.token:
        raise ConfigError(
            f"--addr {options.addr}: serving beyond loopback needs a token (--token or {TOKEN_ENV})"
        )
    if options.config_path is not None:
        load_daemon_config(options.config_path)  # validate before anything starts
    return options


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
