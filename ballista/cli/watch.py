"""`ballista watch WS_URL`: a terminal view of a running test, fed by its live stream.

A table of the latest snapshot and sparklines of rps and p99, redrawn in place
on a terminal, one line per snapshot otherwise; reconnects when the stream
drops; prints the summary and exits 0 when the run ends.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TextIO
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from ballista.core.durations import parse_duration
from ballista.core.errors import ConfigError
from ballista.core.runmeta import LAG_WARNING
from ballista.observe.live import LIVE_SCHEMA
from ballista.observe.summary import check_output_path, generator_bound

EXIT_OK = 0
EXIT_GAVE_UP = 1
EXIT_INTERRUPTED = 130

SPARKS = "▁▂▃▄▅▆▇█"
#: Points kept per chart, whatever --history says: memory stays bounded.
MAX_POINTS = 3600


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url",
        metavar="WS_URL",
        help="the run's live stream, e.g. ws://127.0.0.1:9100/ (http:// works too)",
    )
    parser.add_argument(
        "--history",
        default="5m",
        metavar="DUR",
        help="time span of the rps and p99 charts (default 5m)",
    )
    parser.add_argument(
        "--retry-for",
        default="60s",
        metavar="DUR",
        help="give up (exit 1) after failing to connect for this long (default 60s)",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="one line per snapshot even on a terminal (the default when not a terminal)",
    )
    parser.add_argument(
        "--json", default=None, metavar="PATH", help="also write the final summary JSON here"
    )


def ws_url(text: str) -> str:
    """`ws://host:port/path`; http(s):// is taken to mean ws(s)://. ConfigError if unusable."""
    parts = urlsplit(text.strip())
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"WS_URL: {text!r} is not a ws:// URL")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError(f"WS_URL: {text!r} has a bad port") from None
    return parts._replace(scheme=scheme).geturl()


@asynccontextmanager
async def connect(url: str, *, connect_timeout: float = 10.0) -> AsyncIterator[WebSocketConnection]:
    """A websocket client connection whose TCP socket is always closed on exit.

    (trio-websocket's own client leaves the socket open when the server closes
    first; owning the stream avoids that.)
    """
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    with trio.fail_after(connect_timeout):
        stream: trio.abc.Stream
        if tls:
            stream = await trio.open_ssl_over_tcp_stream(host, port)
        else:
            stream = await trio.open_tcp_stream(host, port)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(connect_timeout):
                ws = await wrap_client_stream(nursery, stream, host, resource)
            try:
                yield ws
            finally:
                with trio.move_on_after(2) as cleanup:
                    cleanup.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


# -- formatting -------------------------------------------------------------------------


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms >= 10_000:
        return f"{seconds:.1f}s"
    if ms >= 100:
        return f"{ms:.0f}ms"
    return f"{ms:.2f}ms" if ms < 10 else f"{ms:.1f}ms"


def fmt_num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def fmt_counts(counts: Mapping[str, int], *, grouped: bool = True) -> str:
    shown = [f"{k}:{v:,}" if grouped else f"{k}:{v}" for k, v in counts.items() if v]
    return " ".join(shown) if shown else "-"


def sparkline(values: Sequence[float], width: int) -> str:
    """The last `width` values as block characters, scaled from 0 to their max."""
    points = list(values)[-width:] if width > 0 else []
    top = max(points, default=0.0)
    if top <= 0:
        return SPARKS[0] * len(points)
    last = len(SPARKS) - 1
    return "".join(SPARKS[min(last, math.ceil(v / top * last))] for v in points)


def _latency(snap: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = snap.get(key)
    return value if isinstance(value, Mapping) else {}


class View:
    """What the viewer knows: the run's hello, the latest snapshot, chart history."""

    def __init__(self, history_s: float) -> None:
        self.history_s = history_s
        self.hello: dict[str, Any] = {}
        self.snap: dict[str, Any] | None = None
        self.rps: deque[float] = deque(maxlen=MAX_POINTS)
        self.p99: deque[float] = deque(maxlen=MAX_POINTS)
        self.status = "connecting"
        self.summary: dict[str, Any] | None = None
        self._seen_seq: int | None = None

    def interval_rps(self) -> float | None:
        """The last interval's rate. The final snapshot covers only the sliver of an
        interval since the one before it, so its rate is noise: keep the last full one."""
        s = self.snap or {}
        if s.get("final") and self.rps:
            return self.rps[-1]
        rps = s.get("rps")
        return float(rps) if rps is not None else None

    def take(self, message: Mapping[str, Any]) -> str:
        """Feed one message; returns its type."""
        kind = str(message.get("type"))
        if kind == "hello":
            if self.hello.get("run_id") != message.get("run_id"):
                self.rps.clear()
                self.p99.clear()
                self.snap = None
                self._seen_seq = None
            self.hello = dict(message)
            interval = float(message.get("interval") or 1.0)
            points = max(2, min(MAX_POINTS, round(self.history_s / interval)))
            if self.rps.maxlen != points:
                self.rps = deque(self.rps, maxlen=points)
                self.p99 = deque(self.p99, maxlen=points)
            self.status = "live"
        elif kind == "snapshot":
            seq = message.get("seq")
            if isinstance(seq, int) and self._seen_seq is not None and seq <= self._seen_seq:
                return kind  # seen before a reconnect
            self._seen_seq = seq if isinstance(seq, int) else self._seen_seq
            self.snap = dict(message)
            if not message.get("final"):
                self.rps.append(float(message.get("rps") or 0.0))
                self.p99.append(float(_latency(message, "interval_latency_s").get("p99") or 0.0))
        elif kind == "summary":
            self.summary = dict(message)
        return kind

    def screen(self, width: int) -> list[str]:
        """The full-screen table, one string per line."""
        h = self.hello
        lines = [
            f"ballista watch  {h.get('target', '?')}  "
            f"{h.get('model', '?')} · {h.get('protocol') or '?'}  [{self.status}]",
        ]
        s = self.snap
        if s is None:
            lines.append("waiting for the first snapshot…")
            return lines
        duration = h.get("duration_s")
        elapsed = float(s.get("elapsed") or 0.0)
        lines.append(
            f"elapsed    {elapsed:8.1f}s" + (f" / {float(duration):g}s" if duration else "")
        )
        lines.append(
            f"requests   {s.get('requests', 0):>12,}   rps {fmt_num(self.interval_rps()):>10}"
            f"   mean rps {fmt_num(s.get('mean_rps')):>10}"
        )
        lines.append(
            f"failed     {s.get('failed', 0):>12,}   errors {s.get('errors', 0):>7,}"
            f"   error rate {100 * float(s.get('error_rate') or 0.0):6.2f}%"
        )
        il = _latency(s, "interval_latency_s")
        cl = _latency(s, "latency_s")
        keys = ("p50", "p90", "p95", "p99", "p999", "max")
        lines.append("latency    " + "".join(f"{k:>10}" for k in keys))
        lines.append("  interval " + "".join(f"{fmt_ms(il.get(k)):>10}" for k in keys))
        lines.append("  run      " + "".join(f"{fmt_ms(cl.get(k)):>10}" for k in keys))
        limit = s.get("concurrency_limit")
        rate = s.get("target_rate")
        lines.append(
            f"in flight  {s.get('in_flight', 0):>12,}   limit {limit if limit is not None else '-':>8}"
            f"   target rate {fmt_num(rate):>10}"
        )
        loop_lag = float(s.get("loop_lag_s") or 0.0)
        if loop_lag > LAG_WARNING:
            lines.append(f"!          {generator_bound(loop_lag)}")
        lines.append(f"status     {fmt_counts(s.get('status_codes') or {})}")
        lines.append(f"errors     {fmt_counts(s.get('errors_by_kind') or {})}")
        chart = max(10, width - 24)
        top_rps = max(self.rps, default=0.0)
        top_p99 = max(self.p99, default=0.0)
        lines.append(f"rps  {fmt_num(top_rps, 0):>9} max {sparkline(self.rps, chart)}")
        lines.append(f"p99  {fmt_ms(top_p99):>9} max {sparkline(self.p99, chart)}")
        return lines

    def line(self) -> str:
        """One plain-text line for the latest snapshot."""
        s = self.snap or {}
        il = _latency(s, "interval_latency_s")
        limit = s.get("concurrency_limit")
        return (
            f"t={float(s.get('elapsed') or 0):.1f}s requests={s.get('requests', 0)}"
            f" rps={fmt_num(self.interval_rps())} failed={s.get('failed', 0)}"
            f" p50={fmt_ms(il.get('p50'))} p99={fmt_ms(il.get('p99'))}"
            f" in_flight={s.get('in_flight', 0)}"
            f" limit={limit if limit is not None else '-'}"
            f" target_rate={fmt_num(s.get('target_rate'))}"
            f" status={fmt_counts(s.get('status_codes') or {}, grouped=False)}"
            f" errors={fmt_counts(s.get('errors_by_kind') or {}, grouped=False)}"
            f" loop_lag={fmt_ms(s.get('loop_lag_s'))}"
        )


def format_summary(doc: Mapping[str, Any]) -> str:
    """The end-of-run summary from the ballista.summary/1 document."""
    lat = _latency(doc, "latency_s")
    keys = ("min", "mean", "p50", "p90", "p95", "p99", "p999", "max")
    out = [
        "",
        f"Summary  {doc.get('target', '?')}  {doc.get('model', '?')} · {doc.get('protocol', '?')}",
        f"  requests     {doc.get('requests', 0):,}  (responses {doc.get('responses', 0):,},"
        f" errors {doc.get('errors', 0):,})",
        f"  failed       {doc.get('failed', 0):,}"
        f"  ({100 * float(doc.get('error_rate') or 0.0):.2f}%)",
        f"  duration     {float(doc.get('duration_s') or 0.0):.2f}s",
        f"  rps          {fmt_num(doc.get('rps'))}",
        "  latency      " + "  ".join(f"{k} {fmt_ms(lat.get(k))}" for k in keys),
        f"  status codes {fmt_counts(doc.get('status_codes') or {})}",
        f"  errors       {fmt_counts(doc.get('errors_by_kind') or {})}",
    ]
    if doc.get("dropped"):
        out.append(f"  dropped      {doc['dropped']:,}")
    for t in doc.get("thresholds") or ():
        out.append(f"  threshold    {t.get('expr')}: {'ok' if t.get('ok') else 'FAILED'}")
    return "\n".join(out) + "\n"


# -- the loop ---------------------------------------------------------------------------

#: A Ballista stream says hello at once; anything silent this long is not one.
HELLO_TIMEOUT = 10.0
#: With no message for this long (or five intervals), reconnect.
SILENCE_TIMEOUT = 30.0


def ballista_message(url: str, raw: str | bytes, *, first: bool) -> dict[str, Any]:
    """One message of the stream as a table; ConfigError when it cannot be Ballista's
    (not a JSON object, or a first message that is not a ballista.live/1 hello)."""
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        message = None
    ok = isinstance(message, dict) and isinstance(message.get("type"), str)
    if ok and first:
        ok = message.get("type") == "hello" and message.get("schema") == LIVE_SCHEMA
    if not ok:
        raise ConfigError(f"WS_URL: {url} is not a Ballista live stream (its messages are not)")
    assert isinstance(message, dict)
    return message


def _first(group: BaseExceptionGroup[ConnectionRejected]) -> ConnectionRejected:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, ConnectionRejected)
    return exc


class Screen:
    """Redraws in place on a terminal; one line per snapshot otherwise."""

    def __init__(self, out: TextIO, *, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self._drawn = False

    def show(self, view: View, kind: str) -> None:
        if self.tty:
            width = shutil.get_terminal_size((100, 24)).columns
            lines = view.screen(width)
            text = "".join(f"{line[:width]}\x1b[K\n" for line in lines)
            self.out.write("\x1b[H" + text + "\x1b[J")
            self._drawn = True
        elif kind == "snapshot":
            self.out.write(view.line() + "\n")
        elif kind == "note":
            print(f"ballista watch: {view.status}", file=sys.stderr)
        self.out.flush()

    def start(self) -> None:
        if self.tty:
            self.out.write("\x1b[2J\x1b[H")
            self.out.flush()

    def finish(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


async def watch(
    url: str,
    *,
    out: TextIO,
    tty: bool,
    history_s: float = 300.0,
    retry_for: float = 60.0,
    json_path: str | None = None,
) -> int:
    """Follow the stream at `url` until its summary; reconnect when it drops."""
    view = View(history_s)
    screen = Screen(out, tty=tty)
    screen.start()
    backoff = 0.1
    last_ok = trio.current_time()
    while True:
        try:
            async with connect(url) as ws:
                backoff = 0.1
                wait = HELLO_TIMEOUT
                first = True
                while True:
                    with trio.fail_after(wait):
                        raw = await ws.get_message()
                    message = ballista_message(url, raw, first=first)
                    first = False
                    last_ok = trio.current_time()
                    kind = view.take(message)
                    # Snapshots come every interval: a stream silent for several
                    # is stuck, and a new connection is the way to find out.
                    wait = max(SILENCE_TIMEOUT, 5 * float(view.hello.get("interval") or 1.0))
                    if kind == "summary":
                        break
                    screen.show(view, kind)
        except* ConnectionRejected as group:
            status = _first(group).status_code
            raise ConfigError(
                f"WS_URL: {url} refused the websocket ({status}): "
                + (
                    "wrong or missing token"
                    if status == 401
                    else "not a Ballista live stream, or no such run"
                )
            ) from None
        except* (OSError, HandshakeError, ConnectionClosed, trio.TooSlowError):
            pass  # dropped, refused or silent: reconnect below
        if view.summary is not None:
            break
        if trio.current_time() - last_ok > retry_for:
            print(
                f"ballista watch: no stream at {url} for {retry_for:g}s: giving up", file=sys.stderr
            )
            return EXIT_GAVE_UP
        view.status = "reconnecting"
        screen.show(view, "note")
        await trio.sleep(backoff)
        backoff = min(1.0, backoff * 2)
    view.status = "finished"
    if view.snap is not None and tty:
        screen.show(view, "snapshot")
    summary = {k: v for k, v in view.summary.items() if k != "type"}
    screen.finish(format_summary(summary))
    if json_path is not None:
        await trio.Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
    return EXIT_OK


def main(ns: argparse.Namespace) -> int:
    url = ws_url(ns.url)
    history = parse_duration(ns.history, what="--history")
    retry_for = parse_duration(ns.retry_for, what="--retry-for")
    if history <= 0:
        raise ConfigError("--history: must be longer than 0")
    check_output_path(ns.json, "--json")
    tty = sys.stdout.isatty() and not ns.plain
    try:
        return trio.run(
            lambda: watch(
                url,
                out=sys.stdout,
                tty=tty,
                history_s=history,
                retry_for=retry_for,
                json_path=ns.json,
            )
        )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
