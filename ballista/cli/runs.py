"""`ballista runs`: a command-line client of a daemon's API (list, start, show, stop, report).

Plain blocking HTTP (urllib): one request per command, no trio needed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

from ballista.core.errors import BallistaError, ConfigError, reason_of
from ballista.observe.summary import check_output_path

DEFAULT_SERVER = "http://127.0.0.1:8089"
TIMEOUT = 10.0


class ApiFailure(BallistaError):
    """The daemon answered with an error, or could not be reached."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=("list", "start", "show", "stop", "report"), help="what to do"
    )
    parser.add_argument(
        "arg", nargs="?", default=None, metavar="FILE|ID", help="scenario or run id"
    )
    parser.add_argument(
        "--server",
        default=None,
        help=f"daemon URL (default $BALLISTA_SERVER or {DEFAULT_SERVER})",
    )
    parser.add_argument("--token", default=None, help="bearer token (default $BALLISTA_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON as it is")
    parser.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="OUT.html",
        help="report: where to write the run's HTML report (default ballista-ID.html)",
    )


def _server(ns: argparse.Namespace) -> str:
    url = (ns.server or os.environ.get("BALLISTA_SERVER") or DEFAULT_SERVER).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--server: {url!r} is not an http:// URL")
    return url


class NotADaemon(BallistaError):
    """Something answered at --server, but not as a Ballista daemon does."""


def call(
    server: str,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    content_type: str | None = None,
    token: str | None = None,
    timeout: float = TIMEOUT,
) -> dict[str, Any]:
    """One API request -> its JSON answer, within `timeout` seconds in all.

    ApiFailure (exit 1) with the daemon's message when it refuses; BallistaError
    (exit 2) when nothing answers in time, NotADaemon when what answers is not
    a daemon."""
    status, ctype, raw = exchange(
        server, method, path, body=body, content_type=content_type, token=token, timeout=timeout
    )
    doc = _json_object(raw) if "json" in ctype.lower() else None
    if doc is None:
        raise NotADaemon(
            f"--server {server}: not a Ballista daemon (it answered {status} "
            f"{ctype.split(';')[0].strip() or 'without a content type'})"
        )
    if status >= 400:
        message = doc.get("error")
        if not isinstance(message, str):
            raise NotADaemon(f"--server {server}: not a Ballista daemon (it answered {status})")
        raise ApiFailure(f"{server}: {status}: {' '.join(message.split())}")
    return doc


def exchange(
    server: str,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    content_type: str | None = None,
    token: str | None = None,
    timeout: float = TIMEOUT,
    accept: str = "application/json",
) -> tuple[int, str, bytes]:
    """One API request -> (status, content type, body), within `timeout` seconds in all;
    BallistaError (exit 2) when nothing answers, NotADaemon when what answers is not HTTP."""
    request = urllib.request.Request(server + path, data=body, method=method)
    request.add_header("accept", accept)
    if content_type:
        request.add_header("content-type", content_type)
    if token:
        request.add_header("authorization", f"Bearer {token}")
    answer: list[tuple[int, str, bytes] | BaseException] = []

    def one_exchange() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                answer.append((resp.status, resp.headers.get("content-type", ""), resp.read()))
        except urllib.error.HTTPError as exc:
            with exc:  # it holds the connection
                answer.append((exc.code, exc.headers.get("content-type", ""), exc.read()))
        except Exception as exc:
            answer.append(exc)

    # urllib's timeout bounds each socket operation, not the exchange: a server
    # that dribbles its answer would hold the command forever. The thread is a
    # daemon thread, so a command that gives up does not wait for it.
    worker = threading.Thread(target=one_exchange, daemon=True, name="ballista-runs")
    worker.start()
    worker.join(timeout)
    if not answer:
        raise BallistaError(f"--server {server}: no answer within {timeout:g}s")
    result = answer[0]
    if isinstance(result, BaseException) and not isinstance(result, http.client.HTTPException):
        if not isinstance(result, urllib.error.URLError | OSError):
            raise result
        # No answer at all (refused, unresolvable, timed out): the user's setup to fix,
        # exit 2; a daemon that answers with an error is ApiFailure, exit 1.
        reason = getattr(result, "reason", result)
        why = reason_of(reason) if isinstance(reason, BaseException) else str(reason)
        raise BallistaError(f"--server {server}: cannot reach the daemon: {why}") from None
    if isinstance(result, http.client.HTTPException):
        raise NotADaemon(f"--server {server}: not a Ballista daemon (not HTTP: {result!r:.80})")
    return result


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _row(run: dict[str, Any]) -> str:
    return (
        f"{run['id']:<12}  {run['name']:<20.20}  {run['status']:<11}  "
        f"{run.get('requests', 0):>10,}  {run.get('rps', 0.0):>9,.1f}/s  "
        f"{100 * run.get('error_rate', 0.0):>6.2f}%  {run.get('created_at', '')}"
    )


def print_list(doc: dict[str, Any], out: TextIO) -> None:
    out.write(
        f"{'ID':<12}  {'NAME':<20}  {'STATUS':<11}  {'REQUESTS':>10}  {'RATE':>11}  "
        f"{'FAILED':>7}  CREATED\n"
    )
    for run in doc.get("runs", []):
        out.write(_row(run) + "\n")


def print_run(doc: dict[str, Any], out: TextIO) -> None:
    out.write(_row(doc) + "\n")
    out.write(f"  target     {doc.get('target')}\n")
    if doc.get("reason"):
        out.write(f"  reason     {doc['reason']}\n")
    segments = doc.get("segments") or []
    if len(segments) > 1:
        out.write(f"  segments   {len(segments)}\n")
    summary = doc.get("summary") or {}
    lat = summary.get("latency_s") or {}
    if lat:
        out.write(
            "  latency    "
            + "  ".join(f"{k} {v * 1e3:.1f}ms" for k, v in lat.items() if k != "mean")
            + "\n"
        )
    if summary.get("status_codes"):
        out.write(
            "  statuses   "
            + "  ".join(f"{k}: {v}" for k, v in summary["status_codes"].items())
            + "\n"
        )
    errors = {k: v for k, v in (summary.get("errors_by_kind") or {}).items() if v}
    if errors:
        out.write("  errors     " + "  ".join(f"{k}: {v}" for k, v in errors.items()) + "\n")


def write_run_report(
    server: str, run_id: str, path: str, *, token: str | None, out: TextIO
) -> None:
    """`runs report ID`: the daemon's HTML report of a run, saved to `path`."""
    status, ctype, raw = exchange(
        server, "GET", f"/api/runs/{quote(run_id, safe='')}/report", token=token, accept="text/html"
    )
    if status == 200 and ctype.lower().startswith("text/html"):
        with open(path, "wb") as fh:
            fh.write(raw)
        out.write(f"{path}\n")
        return
    doc = _json_object(raw) if "json" in ctype.lower() else None
    message = doc.get("error") if doc is not None else None
    if not isinstance(message, str) or status < 400:
        raise NotADaemon(f"--server {server}: not a Ballista daemon (it answered {status})")
    raise ApiFailure(f"{server}: {status}: {' '.join(message.split())}")


def main(ns: argparse.Namespace, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    server = _server(ns)
    token = ns.token or os.environ.get("BALLISTA_TOKEN") or None
    action = ns.action
    if action == "list":
        if ns.arg is not None:
            raise ConfigError("runs list: takes no argument")
    elif ns.arg is None:
        raise ConfigError(
            f"runs {action}: needs {'a scenario FILE' if action == 'start' else 'a run ID'}"
        )
    if action != "report" and ns.output is not None:
        raise ConfigError(f"-o/--output: only for `runs report`, not `runs {action}`")
    if action == "report":
        output = ns.output or f"ballista-{ns.arg}.html"
        check_output_path(output, "-o/--output")
    try:
        if action == "report":
            write_run_report(server, str(ns.arg), output, token=token, out=out)
        elif action == "list":
            doc = call(server, "GET", "/api/runs", token=token)
            if not isinstance(doc.get("runs"), list):
                raise KeyError("runs")
            if ns.json:
                out.write(json.dumps(doc, indent=2) + "\n")
            else:
                print_list(doc, out)
        elif action == "start":
            path = Path(str(ns.arg))
            try:
                body = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"runs start: cannot read {ns.arg!r}: {exc.strerror}") from None
            ctype = "application/json" if path.suffix == ".json" else "application/toml"
            doc = call(server, "POST", "/api/runs", body=body, content_type=ctype, token=token)
            if ns.json:
                out.write(json.dumps(doc, indent=2) + "\n")
            else:
                out.write(f"{doc['id']}\n")
        elif action == "show":
            doc = call(server, "GET", f"/api/runs/{ns.arg}", token=token)
            if ns.json:
                out.write(json.dumps(doc, indent=2) + "\n")
            else:
                print_run(doc, out)
        else:
            doc = call(server, "POST", f"/api/runs/{ns.arg}/stop", token=token)
            out.write(
                json.dumps(doc, indent=2) + "\n" if ns.json else f"{doc['id']} {doc['status']}\n"
            )
    except ApiFailure as exc:
        print(f"ballista: error: {exc}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, ValueError, AttributeError):
        # JSON, but not the API's shapes: something else answers at --server.
        raise NotADaemon(
            f"--server {server}: not a Ballista daemon (unexpected answer to {action})"
        ) from None
    return 0
