"""The daemon's HTTP face: the JSON API under /api/, /metrics and the live page,
with bearer-token checks. It answers from the runs (through `RunControl`) and the
history; it owns no state of its own, and never waits for the disk on the trio
thread."""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import logging
import math
import re
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs

import trio
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from ballista import __version__
from ballista.core.errors import ConfigError
from ballista.core.runmeta import iso_utc
from ballista.daemon.history import History
from ballista.daemon.runs import RunRefused
from ballista.daemon.store import ACTIVE_STATES, RunRow
from ballista.observe.httpserver import Request, Response
from ballista.observe.report import REPORT_CSP, ReportRun, points_from_store, render_report

log = logging.getLogger("ballista.daemon")


class LiveRun(Protocol):
    """A run as the API sees it while the daemon holds it."""

    @property
    def id(self) -> str: ...
    @property
    def active(self) -> bool: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def summary(self) -> Mapping[str, Any] | None: ...


class RunControl(Protocol):
    """What the API asks of the runs: all it may see and do."""

    @property
    def max_runs(self) -> int: ...
    def get(self, run_id: str) -> LiveRun | None: ...
    def active_runs(self) -> Sequence[LiveRun]: ...
    async def start_run(self, doc: Mapping[str, Any]) -> LiveRun: ...
    def stop_run(self, run_id: str) -> None: ...


class ApiError(Exception):
    """An API request that cannot be served: status and a one-line message."""

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


#: A refused run as HTTP: (status, the field it is about).
_REFUSED: dict[str, tuple[int, str | None]] = {
    "busy": (409, "name"),
    "full": (429, None),
    "closing": (503, None),
    "inactive": (409, None),
    "invalid": (400, None),
}


#: The live stream's websocket subprotocol: the page offers it, the daemon answers it.
LIVE_SUBPROTOCOL = "ballista.live"
#: A subprotocol carrying the token (base64url, unpadded): browsers cannot give a
#: websocket an Authorization header, and a token in its URL ends up in logs.
BEARER_SUBPROTOCOL = "ballista.bearer."


def bearer_subprotocol_token(subprotocols: Sequence[str]) -> str | None:
    """The token a client offered as a `ballista.bearer.` subprotocol, if any."""
    for proto in subprotocols:
        if proto.startswith(BEARER_SUBPROTOCOL):
            encoded = proto.removeprefix(BEARER_SUBPROTOCOL)
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                return None
    return None


def token_ok(
    token: str | None,
    headers: Sequence[tuple[str, str]],
    query: str = "",
    subprotocols: Sequence[str] = (),
) -> bool:
    """Whether a request carries the bearer token (the Authorization header, a
    `ballista.bearer.` websocket subprotocol or `?token=`); True without one."""
    if not token:
        return True
    offered = bearer_subprotocol_token(subprotocols)
    if offered is not None and hmac.compare_digest(offered.encode(), token.encode()):
        return True
    for name, value in headers:
        if name.lower() == "authorization":
            scheme, _, given = value.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode(), token.encode()
            ):
                return True
    for given in parse_qs(query).get("token", []):
        if hmac.compare_digest(given.encode(), token.encode()):
            return True
    return False


def parse_scenario_body(body: bytes, content_type: str) -> dict[str, Any]:
    """A POSTed scenario, JSON or TOML, as a table. ConfigError names what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("scenario: body is not UTF-8 text") from None
    is_json = "json" in content_type.lower() or text.lstrip().startswith("{")
    if is_json:
        try:
            doc = json.loads(text)
        except RecursionError:
            raise ConfigError("scenario: nested too deeply") from None
        except ValueError as exc:
            # JSONDecodeError, and integers past Python's digit limit
            raise ConfigError(f"scenario: not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError("scenario: must be a JSON object")
        return doc
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigError("scenario: nested too deeply") from None
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"scenario: not valid TOML: {exc}") from None


class DaemonApi:
    """Routes for the daemon's HTTP listener."""

    def __init__(
        self,
        runs: RunControl,
        history: History,
        *,
        registry: CollectorRegistry,
        token: str | None,
        started: float,
    ) -> None:
        self.runs = runs
        self.history = history
        self.registry = registry
        self.token = token
        self.started = started
        #: the live stream's port once it listens (the page and run links name it)
        self.live_port: int | None = None
        #: where browsers find the stream, when not at the page's host and live port
        self.live_url: str | None = None

    def authorized(self, headers: Sequence[tuple[str, str]], query: str = "") -> bool:
        """The API takes the token in the Authorization header only: a token in a
        URL ends up in logs and browser history, so `?token=` is refused outright
        (it exists for the websocket alone, which browsers cannot give headers)."""
        if self.token and "token" in parse_qs(query, keep_blank_values=True):
            return False
        return token_ok(self.token, headers)

    def routes(self) -> dict[str, Any]:
        routes: dict[str, Any] = {"/api/": self._api, "/metrics": self.metrics}
        if self.live_port is not None:
            from ballista.observe.live import page_routes

            try:
                routes.update(page_routes(self.live_port, self.live_url, api="api/"))
            except OSError:
                log.warning("live page files are missing: / is not served")
        return routes

    def metrics(self, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.header("accept"))
        return Response(200, [("content-type", content_type)], encoder(self.registry))

    async def _api(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except ApiError as exc:
            return _json(exc.status, _error(str(exc), exc.field))
        except RunRefused as exc:
            status, field = _REFUSED[exc.reason]
            return _json(status, _error(str(exc), field))
        except ConfigError as exc:
            return _json(400, _error(str(exc), exc.key))

    async def _dispatch(self, request: Request) -> Response:
        parts = [p for p in request.path.split("/") if p][1:]  # after "api"
        method = request.method
        if parts == ["health"]:
            _allow(method, "GET")
            return _json(200, self.health())
        if not self.authorized(request.headers, request.query):
            message = "missing or wrong bearer token"
            if "token" in parse_qs(request.query, keep_blank_values=True):
                message = "the API takes its token in the Authorization header, not ?token="
            return _json(401, _error(message), [("www-authenticate", "Bearer")])
        if parts == ["runs"]:
            if method == "GET":
                limit = runs_limit(parse_qs(request.query, keep_blank_values=True))
                rows = await self.history.list_runs(limit=limit)
                if len(rows) == limit:
                    # Active runs are always listed, however many newer ones ended.
                    listed = {r.id for r in rows}
                    for status in ACTIVE_STATES:
                        more = await self.history.list_runs(status=status, limit=MAX_RUNS_LISTED)
                        rows += [r for r in more if r.id not in listed]
                    rows.sort(key=lambda r: r.created_at, reverse=True)
                return _json(200, {"runs": [self.brief(r) for r in rows]})
            _allow(method, "POST")
            doc = parse_scenario_body(request.body, request.header("content-type"))
            handle = await self.runs.start_run(doc)
            return _json(201, {"id": handle.id, "run": await self.describe(handle.id)})
        if len(parts) == 2 and parts[0] == "runs":
            _allow(method, "GET")
            query = parse_qs(request.query, keep_blank_values=True)
            window = points_window(query) if "points" in query else None
            described = await self.describe(parts[1], points=window)
            if described is None:
                raise ApiError(404, f"no run {parts[1]!r}", field="id")
            return _json(200, described)
        if len(parts) == 3 and parts[0] == "runs" and parts[2] == "summary":
            _allow(method, "GET")
            row = await self.history.get_run(parts[1])
            if row is None:
                raise ApiError(404, f"no run {parts[1]!r}", field="id")
            live = self.runs.get(parts[1])
            summary = row.summary
            if live is not None and live.active:
                summary = live.summary or summary
            if summary is None:
                raise ApiError(404, f"run {parts[1]} has no summary yet", field="id")
            return _json(
                200,
                summary,
                [("content-disposition", f'attachment; filename="ballista-{row.id}.json"')],
            )
        if len(parts) == 3 and parts[0] == "runs" and parts[2] == "report":
            _allow(method, "GET")
            return await self.report(parts[1])
        if len(parts) == 3 and parts[0] == "runs" and parts[2] == "stop":
            _allow(method, "POST")
            if await self.history.get_run(parts[1]) is None:
                raise ApiError(404, f"no run {parts[1]!r}", field="id")
            self.runs.stop_run(parts[1])
            return _json(202, {"id": parts[1], "status": "stopping"})
        raise ApiError(404, f"no such endpoint: {request.path}")

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 3),
            "runs_active": len(self.runs.active_runs()),
            "max_runs": self.runs.max_runs,
        }

    def brief(self, row: RunRow) -> dict[str, Any]:
        handle = self.runs.get(row.id)
        status = row.status
        summary = row.summary
        if handle is not None and handle.active:
            status = "stopping" if handle.stopping else "running"
            summary = handle.summary or summary
        return {
            "id": row.id,
            "name": row.name,
            "status": status,
            "source": row.source,
            "restart": row.restart,
            "target": row.target,
            "created_at": _iso(row.created_at),
            "ended_at": None
            if row.ended_at is None or status in ACTIVE_STATES
            else _iso(row.ended_at),
            "reason": row.reason,
            "segments": row.segments,
            "requests": (summary or {}).get("requests", 0),
            "rps": (summary or {}).get("rps", 0.0),
            "error_rate": (summary or {}).get("error_rate", 0.0),
            "model": (summary or {}).get("model") or _model_of(row.scenario_public),
            "duration_s": (summary or {}).get("duration_s", 0.0),
            "latency_p99_s": ((summary or {}).get("latency_s") or {}).get("p99"),
        }

    async def describe(
        self, run_id: str, *, points: PointsWindow | None = None
    ) -> dict[str, Any] | None:
        row = await self.history.get_run(run_id)
        if row is None:
            return None
        out = self.brief(row)
        handle = self.runs.get(run_id)
        summary = row.summary
        if handle is not None and handle.active:
            summary = handle.summary or summary
        out["scenario"] = row.scenario_public
        out["summary"] = summary
        segments = await self.history.segments(run_id)
        if handle is not None and handle.active and summary is not None:
            segments[-1]["requests"] = summary.get("requests")
            segments[-1]["duration_s"] = summary.get("duration_s")
        out["segments"] = segments
        # A resumed run's summary covers its current segment; these cover them all.
        out["totals"] = {
            "requests": sum(s["requests"] or 0 for s in segments),
            "duration_s": round(sum(s["duration_s"] or 0.0 for s in segments), 3),
        }
        if self.live_port is not None:
            out["live"] = f"/runs/{run_id}"
        if points is not None:
            stored = await self.history.points(
                run_id,
                start=points.start,
                end=points.end,
                max_points=points.max_points,
                recent=points.recent,
                histograms=points.histograms,
            )
            out["points"] = [p.as_dict(histogram=points.histograms) for p in stored]
        return out

    async def report(self, run_id: str) -> Response:
        """The run's HTML report, from what the store has: the summary so far (final
        once the run ended) and its points over time, at the resolution kept."""
        row = await self.history.get_run(run_id)
        if row is None:
            raise ApiError(404, f"no run {run_id!r}", field="id")
        handle = self.runs.get(run_id)
        summary = row.summary
        active = handle is not None and handle.active
        if active and handle is not None:
            summary = handle.summary or summary
        if summary is None:
            raise ApiError(409, f"run {run_id!r} has no figures yet")
        stored = [p.as_dict(histogram=True) for p in await self.history.points(run_id)]
        notes = []
        if row.reason and not active:
            notes.append(f"the run ended {row.status}: {row.reason}")
        if active:
            notes.append(f"run {run_id} was still {row.status} when this report was written")
        if row.segments > 1:
            notes.append(
                f"resumed {row.segments - 1} time(s): the summary covers the last segment, "
                "the charts over time every segment"
            )
        run = ReportRun(
            label=f"{row.name} ({run_id})",
            summary=summary,
            points=points_from_store(stored) if stored else None,
            interrupted=row.status in ("stopped", "failed", "interrupted"),
            config={"scenario": row.scenario_public},
            notes=tuple(notes),
        )
        # rendering walks every point: off the trio thread, as the disk is
        text = await trio.to_thread.run_sync(render_report, [run])
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"ballista-{row.name}-{run_id}")
        return Response(
            200,
            [
                ("content-type", "text/html; charset=utf-8"),
                ("cache-control", "no-store"),
                ("content-disposition", f'inline; filename="{name}.html"'),
                ("content-security-policy", REPORT_CSP),
                ("x-content-type-options", "nosniff"),
            ],
            text.encode("utf-8"),
        )


@dataclass(frozen=True, slots=True)
class PointsWindow:
    """What `?points` asks for: a time range (unix seconds), a resolution, histograms."""

    start: float | None = None
    end: float | None = None
    max_points: int | None = None
    histograms: bool = False
    #: seconds before the newest point kept at the stored resolution
    recent: float | None = None


#: Runs `GET /api/runs` lists at most (the newest), besides the active ones.
MAX_RUNS_LISTED = 1000


def runs_limit(query: Mapping[str, list[str]]) -> int:
    """`GET /api/runs?limit=N`: the newest N runs (and every active one)."""
    if not query.get("limit"):
        return MAX_RUNS_LISTED
    text = query["limit"][-1]
    if not text.isdigit() or not 1 <= int(text) <= MAX_RUNS_LISTED:
        raise ApiError(
            400, f"limit: must be a whole number from 1 to {MAX_RUNS_LISTED}", field="limit"
        )
    return int(text)


#: The finest `max_points` answered: a day at 1 s intervals.
MAX_POINTS_LIMIT = 100_000


def points_window(query: Mapping[str, list[str]]) -> PointsWindow:
    """`?points&from=T&to=T&max_points=N&recent=S&histograms`; ApiError names a bad
    parameter."""

    def number(name: str) -> float | None:
        values = query.get(name)
        if not values:
            return None
        try:
            value = float(values[-1])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ApiError(400, f"{name}: must be a number of seconds", field=name)
        return value

    start, end, recent = number("from"), number("to"), number("recent")
    if recent is not None and recent < 0:
        raise ApiError(400, "recent: must be seconds, 0 or more", field="recent")
    max_points: int | None = None
    if query.get("max_points"):
        text = query["max_points"][-1]
        if not text.isdigit() or not 1 <= int(text) <= MAX_POINTS_LIMIT:
            raise ApiError(
                400,
                f"max_points: must be a whole number from 1 to {MAX_POINTS_LIMIT}",
                field="max_points",
            )
        max_points = int(text)
    return PointsWindow(start, end, max_points, "histograms" in query, recent)


def _model_of(scenario: Mapping[str, Any]) -> str | None:
    load = scenario.get("load")
    model = load.get("model") if isinstance(load, Mapping) else None
    return model if isinstance(model, str) else None


def _iso(ts: float) -> str:
    return iso_utc(dt.datetime.fromtimestamp(ts, dt.UTC))


def _error(message: str, field: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"error": message}
    if field is not None:
        out["field"] = field
    return out


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise ApiError(405, f"method {method} not allowed here (use {allowed})")


def _json(status: int, doc: Mapping[str, Any], headers: Sequence[tuple[str, str]] = ()) -> Response:
    body = (json.dumps(doc, indent=2) + "\n").encode()
    return Response(
        status,
        [("content-type", "application/json"), ("cache-control", "no-store"), *headers],
        body,
    )
