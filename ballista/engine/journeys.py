"""Journeys at run time: virtual users running flows over the run's own connections.

A `VirtualUser` is the `Session` a journey's code sees: each of its requests
is built at run time, sent on one of the run's connections (HTTP/1.1 or
HTTP/2, the same pools and timeouts as plain requests), recorded under its
step name like any request, and answered with the response's status, headers
and body. `JourneyRunner` runs iterations and keeps the flows' accounts: every
iteration started ends completed, failed (with a reason) or interrupted by the
end of the run, and an exception in the journey's code is counted, shown once,
never let loose on the run.
"""

from __future__ import annotations

import bisect
import itertools
import json as jsonlib
import math
import random
import sys
import traceback
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import orjson
import trio

from ballista.core.config import DEFAULT_EXPECTED, Origin, RequestSpec, encode_target
from ballista.core.flows import NOT_TEXT, TOO_DEEP, Flow, Step
from ballista.core.flowstats import JOURNEY_ERROR, SETUP_FLOW, FlowRecorder
from ballista.core.journey import (
    MAX_STEP_NAMES,
    OTHER_STEP,
    Check,
    DataExhausted,
    JourneyFailure,
    JourneyFn,
    Journeys,
)
from ballista.core.outcome import ErrorKind, Sample
from ballista.core.recorder import Recorder
from ballista.engine.stepcode import Fill, request_filler
from ballista.transport.connect import (
    H1_WHOLE_MAX,
    Captured,
    H1Plan,
    PreparedRequest,
    prepare_dynamic,
)
from ballista.transport.http1 import H1Connection, Result

#: A journey step's status counts as whatever its checks say: the recorder judges none.
ANY_STATUS = frozenset(range(100, 1000))
#: Cookies one virtual user keeps; a new one past this evicts the oldest.
MAX_COOKIES = 64
#: Distinct exceptions (type and place) whose traceback is shown; the rest are counted.
MAX_SHOWN_ERRORS = 5
#: Ballista's own source files: an exception raised in them (a session call given a
#: bad argument) is placed at the journey's line that called it
_PACKAGE = str(Path(__file__).resolve().parents[1])


def _where(frames: traceback.StackSummary, source: str) -> str:
    """file:line of the journey's own code where an exception came from: the deepest
    frame in the journeys file, else the deepest outside Ballista, else the deepest."""
    mine = [f for f in frames if Path(f.filename).name == source]
    outside = [f for f in frames if not f.filename.startswith(_PACKAGE)]
    frame = (mine or outside or frames)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno}"


#: how an iteration ended when the run's end cut it short
_INTERRUPTED = "(interrupted)"


class StepConnection(Protocol):
    """What a step needs of a connection (H1Connection or H2Connection)."""

    multiplexed: bool
    retry_after: float | None

    async def request(
        self, req: PreparedRequest, deadline: float, capture: Captured | None = None
    ) -> Result: ...


#: Gets a connection for one step before a deadline (None: none came in time),
#: and gives it back after.
Acquire = Callable[[float], Awaitable[StepConnection | None]]
Release = Callable[[StepConnection], None]
#: Feeds a step's sample to the adaptive controller; the pause it asks for.
Feed = Callable[[StepConnection, Sample], float]


class RunStopped(BaseException):
    """The run stopped: the iteration ends as interrupted. A BaseException, so that a
    journey's `except Exception` does not swallow it and go on sending."""


#: orjson parses a body where it can (two to three times faster than the json
#: module). Where the two would differ the json module parses: what orjson refuses
#: and json.loads takes (NaN, 1e400, lone surrogates, a byte order mark; and their
#: error messages), and a body with a run of 19 digits, which may be an integer
#: beyond 64 bits (orjson makes those floats) or a long mantissa. The digit check:
#: digits become 9, the rest spaces; fewer than 19 nines in all need no search for
#: a run of them (a regular expression costs more than orjson's whole parse of a
#: small body; a count, less than the search).
_orjson_loads = orjson.loads
_OrjsonError = orjson.JSONDecodeError
_DIGITS_ONLY = bytes(0x39 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_NINETEEN_DIGITS = b"9" * 19

#: StepResponse._json before the body is parsed
_UNPARSED: Any = object()


class _NotJSON:
    """The body was parsed once and is not JSON: the error to raise again."""

    __slots__ = ("error",)

    def __init__(self, error: ValueError) -> None:
        self.error = error


class StepResponse(Captured):
    """One step's response as a journey sees it (core.journey.Response). The
    connection fills in its headers and body as it reads (Captured); the runner
    then sets its status, error and elapsed time."""

    __slots__ = ("_content", "_headers", "_json", "elapsed", "error", "status")

    def __init__(self, keep_headers: bool = True) -> None:
        Captured.__init__(self, keep_headers)
        #: 0 when the request failed; `error` then says how (an error kind's label)
        self.status = 0
        self.error: str | None = None
        self.elapsed = 0.0
        self._headers: Mapping[str, str] | None = None
        self._content: bytes | None = None
        #: the parsed body, once asked for: a step's checks and extractions share one parse
        self._json: Any = _UNPARSED

    def __repr__(self) -> str:
        return f"<Response {self.status or self.error}>"

    @property
    def headers(self) -> Mapping[str, str]:
        """The response's headers, lower-case names, the last value of each."""
        if self._headers is None:
            self._headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.raw_headers}
        return self._headers

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (any case), in the order received."""
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.raw_headers if k == key]

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = self.body
        return self._content

    @property
    def text(self) -> str:
        charset = "utf-8"
        ctype = self.headers.get("content-type", "")
        for part in ctype.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip('"')
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON (ValueError if it is not JSON); parsed once.

        Every call answers the same object: a journey that changes it changes
        what later checks of this response see."""
        parsed = self._json
        if parsed is _UNPARSED:
            chunks = self.chunks
            content = chunks[0] if len(chunks) == 1 else self.content
            nines = content.translate(_DIGITS_ONLY)
            if nines.count(57) < 19 or _NINETEEN_DIGITS not in nines:
                try:
                    parsed = _orjson_loads(content)
                except _OrjsonError:
                    pass  # the json module says why (or takes what orjson does not)
                else:
                    self._json = parsed
                    return parsed
            try:
                parsed = jsonlib.loads(content)
            except ValueError as exc:
                parsed = _NotJSON(exc)
            except RecursionError:
                # A hostile body ([[[[...) would otherwise end as a journey's bug.
                parsed = _NotJSON(ValueError("JSON nested too deeply to parse"))
            self._json = parsed
        if type(parsed) is _NotJSON:
            raise parsed.error
        return parsed


class CookieJar:
    """One virtual user's cookies for the run's one origin: name -> value, bounded.

    Domain and path attributes are not needed to pick cookies for one origin;
    `Max-Age=0` (or a negative one) deletes, as servers log users out.
    """

    __slots__ = ("_cookies", "_header")

    def __init__(self) -> None:
        self._cookies: dict[str, str] = {}
        self._header: bytes | None = None

    def __len__(self) -> int:
        return len(self._cookies)

    def __contains__(self, name: str) -> bool:
        return name in self._cookies

    def get(self, name: str) -> str | None:
        return self._cookies.get(name)

    def set(self, name: str, value: str) -> None:
        cookies = self._cookies
        if name not in cookies and len(cookies) >= MAX_COOKIES:
            del cookies[next(iter(cookies))]
        cookies[name] = value
        self._header = None

    def delete(self, name: str) -> None:
        if self._cookies.pop(name, None) is not None:
            self._header = None

    def clear(self) -> None:
        self._cookies.clear()
        self._header = None

    def take(self, set_cookie: bytes) -> None:
        """One Set-Cookie header's value."""
        first, *attrs = set_cookie.decode("latin-1").split(";")
        name, eq, value = first.partition("=")
        name = name.strip()
        if not eq or not name:
            return
        for attr in attrs:
            key, _, arg = attr.strip().partition("=")
            if key.lower() == "max-age":
                try:
                    if int(arg.strip()) <= 0:
                        self.delete(name)
                        return
                except ValueError:
                    pass
        self.set(name, value.strip().strip('"'))

    def header(self) -> bytes | None:
        """The Cookie header to send, or None with no cookie."""
        if not self._cookies:
            return None
        if self._header is None:
            self._header = "; ".join(f"{k}={v}" for k, v in self._cookies.items()).encode(
                "latin-1", errors="replace"
            )
        return self._header


class VirtualUser:
    """One virtual user: the Session its journeys are given. State lives across iterations."""

    __slots__ = (
        "_runner",
        "conn",
        "cookies",
        "iteration",
        "own",
        "scope",
        "set_up",
        "timed_out",
        "vars",
        "vu",
    )

    def __init__(self, runner: JourneyRunner, vu: int, conn: StepConnection | None) -> None:
        self._runner = runner
        self.vu = vu
        self.iteration = 0
        self.vars: dict[str, Any] = {}
        self.cookies = CookieJar()
        #: the connection this user is bound to (closed models); None: one per step
        self.conn = conn
        #: `setup` ran and completed for this user
        self.set_up = False
        #: a user alone on its HTTP/1.1 connection: the scope around its iterations,
        #: whose deadline each step moves (None: each step has a scope of its own)
        self.scope: trio.CancelScope | None = None
        #: that connection, when `scope` is set
        self.own: H1Connection | None = None
        #: the error kind of the step whose deadline cancelled `scope`
        self.timed_out: str | None = None

    def __repr__(self) -> str:
        return f"<VirtualUser {self.vu} iteration {self.iteration}>"

    def request(
        self,
        method: str,
        path: str,
        *,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: bytes | str | Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        checks: Sequence[Check] = (),
        expect: Collection[int] | None = None,
    ) -> Coroutine[Any, Any, StepResponse]:
        """Send one request, recorded under `name` (the path without its query if None).

        `expect`: the statuses that count as success (200-399 by default); another
        one fails the step with reason `status <code>`. `checks` run next, in order:
        the first to return a reason fails the step with it. A failed step is
        recorded as failed and raises JourneyFailure, ending the iteration.
        """
        # The runner's coroutine itself, not one awaiting it: one frame less per step.
        return self._runner.step(
            self, method, path, name, headers, json, data, params, checks, expect
        )

    def get(self, path: str, **kw: Any) -> Coroutine[Any, Any, StepResponse]:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Coroutine[Any, Any, StepResponse]:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Coroutine[Any, Any, StepResponse]:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Coroutine[Any, Any, StepResponse]:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Coroutine[Any, Any, StepResponse]:
        return self.request("DELETE", path, **kw)

    def head(self, path: str, **kw: Any) -> Coroutine[Any, Any, StepResponse]:
        return self.request("HEAD", path, **kw)

    async def sleep(self, seconds: float) -> None:
        """Think time; returns early, without error, when the run stops."""
        await self._runner.think(seconds, self)


@dataclass(slots=True)
class _ErrorSeen:
    count: int
    shown: bool
    where: str


class JourneyRunner:
    """Runs the iterations of a run's journeys and keeps the flows' accounts.

    The engine owns the load model (who runs when, on which connection); this
    class owns what one iteration is: setup, the pick of a flow, the steps,
    and how the iteration ended.
    """

    def __init__(
        self,
        journeys: Journeys,
        *,
        origin: Origin,
        recorder: Recorder,
        timeout: float,
        stopping: Callable[[], bool],
        stopped: trio.Event,
        feed: Feed | None = None,
        pause: Callable[[float], Awaitable[None]] | None = None,
        report: Callable[[str], None] | None = None,
        seed: int | None = None,
        segment: tuple[int, int] = (0, 1),
        requests: Sequence[RequestSpec] = (),
    ) -> None:
        """`segment`: (index, count) of this process's segment of the test: its users
        are numbered local * count + index, unique across the segments. `requests`:
        the run's named requests; a step of the same name (a TOML flow's) expects the
        statuses its spec names, when the step itself does not say."""
        self.journeys = journeys
        self._origin = origin
        self._authority = origin.authority.encode("ascii")
        self._recorder = recorder
        self._timeout = timeout
        self._stopping = stopping
        self._stopped = stopped
        self._feed = feed
        self._pause = pause
        self._report = report or _to_stderr
        self._rng = random.Random(seed)
        #: a step's deadline stays on its user's scope after the step (one deadline
        #: change per step, not two), taken off before any other wait: only when the
        #: journeys' own code awaits nothing but the session (TOML flows)
        self._keep_deadline = journeys.session_awaits_only
        #: the run's clock, read without trio.current_time's two calls around it
        #: (made inside the run: its clock stays the same to the end)
        self._now = trio.lowlevel.current_clock().current_time
        self._segment, self._segments = segment
        for take_share in journeys.on_segment:
            take_share(*segment)
        names = [f.name for f in journeys.flows]
        self._setup_flow = -1
        if journeys.setup is not None:
            self._setup_flow = len(names)
            names.append(SETUP_FLOW if SETUP_FLOW not in names else f"({SETUP_FLOW})")
        self.flows = FlowRecorder(names)
        recorder.flows = self.flows
        #: statuses a step counts as success unless it says (`expect=`), by step name
        self._expected: dict[str, Collection[int]] = {
            spec.name: spec.expected
            for spec in requests
            if spec.expected is not None and spec.name in journeys.step_names
        }
        #: step name -> (recorder index, its spec, the statuses it expects)
        self._steps: dict[str, tuple[int, RequestSpec, Collection[int]]] = {}
        for step in journeys.step_names:
            self._step(step, "GET")
        weights = [f.weight for f in journeys.flows]
        self._cumulative = list(itertools.accumulate(weights))
        #: one flow: nothing to pick
        self._one_flow = len(weights) == 1
        #: exceptions from journeys' code, by (flow, type, place)
        self._errors: dict[tuple[str, str, str], _ErrorSeen] = {}
        #: set when a data file ran out and stopped the run
        self.exhausted: str | None = None
        #: iterations running now (the open model's cap counts these)
        self.in_flight = 0
        #: open model: users not running an iteration, most recently used first
        self._idle: list[VirtualUser] = []
        self._users = 0
        #: requests sent so far (a worker yields after an iteration that sent none)
        self.sent = 0
        #: the run's protocol, once known: steps are encoded for it alone
        self.http2 = False
        #: id(flow) -> each of a TOML flow's steps with its HTTP/1.1 plan (None: built
        #: as any step is), made on the flow's first iteration (see `_run`)
        self._planned: dict[int, tuple[tuple[Step, _Plan | None], ...]] = {}
        #: users bound to no connection (open model) take one per step with these
        self.acquire: Acquire | None = None
        self.release: Release | None = None

    # -- step names -----------------------------------------------------------

    def _step(self, name: str, method: str) -> tuple[int, RequestSpec, Collection[int]]:
        known = self._steps.get(name)
        if known is not None:
            return known
        if len(self._steps) >= MAX_STEP_NAMES:
            # Past the bound every new name shares one: memory and labels stay bounded.
            if OTHER_STEP in self._steps:
                return self._steps[OTHER_STEP]
            name = OTHER_STEP
        spec = RequestSpec(name=name, method=method, target="/", expected=ANY_STATUS)
        entry = (
            self._recorder.add_request(spec),
            spec,
            self._expected.get(name, DEFAULT_EXPECTED),
        )
        self._steps[name] = entry
        return entry

    # -- users ------------------------------------------------------------------

    def user(self, local: int, conn: StepConnection | None) -> VirtualUser:
        return VirtualUser(self, local * self._segments + self._segment, conn)

    def take_user(self) -> VirtualUser:
        """Open model: an idle user, or a new one (their number is bounded by the cap)."""
        if self._idle:
            return self._idle.pop()
        self._users += 1
        return self.user(self._users - 1, None)

    def give_back(self, user: VirtualUser) -> None:
        self._idle.append(user)

    # -- iterations ---------------------------------------------------------------

    def pick(self) -> int:
        """A flow by weight (of two or more)."""
        cumulative = self._cumulative
        x = self._rng.random() * cumulative[-1]
        return min(bisect.bisect_right(cumulative, x), len(cumulative) - 1)

    def iteration(
        self, user: VirtualUser, began: float | None = None
    ) -> Coroutine[Any, Any, str | None]:
        """One iteration of a flow picked by weight, after `setup` if this user still
        needs it. `began`: when the iteration was due (open model) or began (the
        caller read the clock), for its duration.

        Every iteration started is accounted for: completed, failed (a setup that
        failed fails it, with reason `setup`), or interrupted by the end of the run.
        (A plain def: without setup to run first, the coroutine is the flow's own.)
        """
        index = 0 if self._one_flow else self.pick()
        self.flows.started(index)
        t0 = self._now() if began is None else began
        if self.journeys.setup is not None and not user.set_up:
            return self._set_up_then_run(index, user, t0)
        return self._run(index, self.journeys.flows[index].fn, user, t0)

    async def _set_up_then_run(self, index: int, user: VirtualUser, t0: float) -> str | None:
        """`iteration` for a user whose setup has not run yet."""
        flows = self.flows
        setup = self.journeys.setup
        assert setup is not None
        flows.started(self._setup_flow)
        try:
            ended = await self._run(self._setup_flow, setup, user, None)
        except BaseException:
            if user.timed_out is not None:  # a step of setup timed out
                flows.failed(index, SETUP_FLOW, self._now() - t0)
            else:  # cancelled, or a data file ran out: this one never ran
                flows.interrupted(index)
            raise
        if ended is not None:
            if ended == _INTERRUPTED:
                flows.interrupted(index)
            else:
                flows.failed(index, SETUP_FLOW, self._now() - t0)
            return ended
        user.set_up = True
        return await self._run(index, self.journeys.flows[index].fn, user, t0)

    async def _run(
        self, index: int, fn: JourneyFn, user: VirtualUser, t0: float | None
    ) -> str | None:
        """Run one journey function; None if it completed, else how it ended (its
        failure, or _INTERRUPTED), every way counted. `t0` None: setup's run (its
        duration from now; the user's iteration number stays)."""
        flows = self.flows
        setup = t0 is None
        if t0 is None:
            t0 = self._now()
        try:
            if type(fn) is not Flow:
                await fn(user)
            else:
                # A TOML flow, as `Flow` runs it through a session, with less between
                # its steps (here, not in a coroutine of its own: every wait of every
                # step passes through each coroutine it is nested in). A simple step
                # (`Step.simple`: no query or body) over HTTP/1.1 has its request made
                # by its plan's `fill` (engine.stepcode) and is exchanged from here; any
                # other step, or one whose request the plan refuses, is built as any
                # step is (and says why).
                if fn.data:
                    fn.begin(user)
                last = fn.steps[-1]
                planned = self._planned.get(id(fn))
                if planned is None:
                    # Each step with its plan (None: none, or not a simple step), once a flow.
                    planned = self._planned[id(fn)] = tuple(
                        (step, self._plan(step) if step.simple else None) for step in fn.steps
                    )
                # A user alone on its HTTP/1.1 connection, no controller to feed: its
                # planned steps are exchanged here (see `_exchange`).
                own = user.own if self._feed is None else None
                scope = user.scope
                now = self._now
                recorder = self._recorder
                timeout = self._timeout
                keep = self._keep_deadline
                for step, plan in planned:
                    if step.simple:
                        head: bytes | None = None
                        if plan is not None:
                            if self._stopping():
                                raise RunStopped
                            # The request's bytes: None for the general path below.
                            head = plan.fill(user)
                            if head is None:
                                pass
                            elif own is not None and scope is not None and user.timed_out is None:
                                # `_exchange` on the user's own connection, inline, and the
                                # request sent as its bytes: a coroutine less per step (and
                                # for every wait to pass through), no PreparedRequest.
                                h1 = plan.h1
                                r = StepResponse(step.reads_headers)
                                sent_at = now()
                                recorder.request_started()
                                self.sent += 1
                                scope.deadline = sent_at + timeout
                                whole = head if len(head) <= H1_WHOLE_MAX else None
                                try:
                                    result = await own.exchange_in_scope(
                                        h1.head, whole, (head,), True, r
                                    )
                                except trio.Cancelled:
                                    self._cut_short(user, h1.index, sent_at, sent_at)
                                    raise
                                if scope.cancel_called:
                                    user.timed_out = ErrorKind.READ_TIMEOUT.label
                                if not keep:
                                    scope.deadline = math.inf
                                _, failure = self._judged(
                                    user, h1.index, r, result, sent_at, plan.expected, step.checks
                                )
                                if result[0] == 0:
                                    self.off_deadline(user)
                                    await trio.lowlevel.checkpoint()
                                if failure is not None:
                                    raise failure
                            else:
                                r = await self._exchange(
                                    user,
                                    plan.h1.prepared(head),
                                    plan.expected,
                                    step.checks,
                                    step.reads_headers,
                                )
                        if head is None:
                            path, values = step.render(user)
                            r = await self.step(
                                user,
                                step.method,
                                path,
                                step.name,
                                step.headers_of(values),
                                None,
                                None,
                                None,
                                step.checks,
                                step.expect,
                            )
                        if step.extract:
                            step.take(r, user.vars)
                    else:
                        await step.run(user)
                    if step is not last and step.think is not None:
                        await self.think(step.pause(), user)
        except JourneyFailure as exc:
            flows.failed(index, exc.reason, self._now() - t0)
            return exc.reason
        except RunStopped:
            flows.interrupted(index)
            return _INTERRUPTED
        except DataExhausted as exc:
            flows.interrupted(index)
            if self.exhausted is None:
                self.exhausted = str(exc) or "a data file ran out of rows"
            raise
        except trio.Cancelled:
            if user.timed_out is not None:
                # A step timed out (the user's scope): the iteration failed, it was
                # not cut by the end of the run.
                flows.failed(index, user.timed_out, self._now() - t0)
            else:
                flows.interrupted(index)
            raise
        except (Exception, SystemExit) as exc:
            # SystemExit too: `sys.exit()` in a journey is the journey's failure, not
            # Ballista's end (KeyboardInterrupt is left alone: it may be Ctrl-C).
            flows.failed(index, JOURNEY_ERROR, self._now() - t0)
            self._user_error(flows.names[index], exc)
            return JOURNEY_ERROR
        finally:
            if not setup:
                user.iteration += 1
        flows.completed(index, self._now() - t0)
        return None

    def _user_error(self, flow: str, exc: BaseException) -> None:
        tb = exc.__traceback__
        # The runner's own frame is not the journey's business.
        if tb is not None and tb.tb_frame.f_code is JourneyRunner._run.__code__:
            tb = tb.tb_next
        frames = traceback.extract_tb(tb)
        where = _where(frames, self.journeys.source) if frames else "?"
        key = (flow, type(exc).__name__, where)
        seen = self._errors.get(key)
        if seen is None:
            if len(self._errors) >= 100:
                key = (flow, "other exceptions", "")
                seen = self._errors.get(key)
            if seen is None:
                seen = self._errors[key] = _ErrorSeen(0, False, where)
        seen.count += 1
        if not seen.shown and sum(e.shown for e in self._errors.values()) < MAX_SHOWN_ERRORS:
            seen.shown = True
            text = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()
            self._report(
                f"ballista: journey {flow!r} raised {type(exc).__name__} at {where} "
                f"(counted as {JOURNEY_ERROR}; shown once):\n{text}"
            )

    def notes(self) -> list[str]:
        """What the summary says about the journeys' own code and data."""
        notes: list[str] = []
        if self._errors:
            total = sum(e.count for e in self._errors.values())
            parts = ", ".join(
                f"{n:,} {kind} in {flow!r}" + (f" at {e.where}" if e.where else "")
                for (flow, kind, _), e in sorted(self._errors.items(), key=lambda kv: -kv[1].count)
                for n in (e.count,)
            )
            notes.append(
                f"{total:,} iterations ended with an exception in the journey's code, "
                f"counted as failed ({JOURNEY_ERROR}): {parts}"
            )
        if self.exhausted is not None:
            notes.append(f"the run stopped early: {self.exhausted}")
        return notes

    # -- steps ----------------------------------------------------------------

    async def think(self, seconds: float, user: VirtualUser | None = None) -> None:
        if seconds > 0 and not self._stopping():
            if user is not None:
                self.off_deadline(user)
            with trio.move_on_after(seconds):
                await self._stopped.wait()

    def off_deadline(self, user: VirtualUser) -> None:
        """Before a wait that is not a step's: take the last step's deadline off the
        user's scope, where it stays when `_keep_deadline`."""
        scope = user.scope
        if scope is not None and self._keep_deadline and not scope.cancel_called:
            scope.deadline = math.inf

    def build(
        self,
        user: VirtualUser,
        method: str,
        path: str,
        headers: Mapping[str, str] | None,
        json: Any,
        data: bytes | str | Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        index: int,
        spec: RequestSpec,
    ) -> PreparedRequest:
        """The request as it goes on the wire (ValueError for what cannot be sent)."""
        if not path.startswith("/"):
            if path.startswith(("http://", "https://")):
                parts = urlsplit(path)
                origin = self._origin
                port = parts.port or (443 if parts.scheme == "https" else 80)
                if (parts.scheme, parts.hostname, port) != (
                    origin.scheme,
                    origin.host,
                    origin.port,
                ):
                    raise ValueError(
                        f"{path!r}: a journey sends to the run's target only ({origin.url('')})"
                    )
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            else:
                path = "/" + path
        try:
            if params:
                path += ("&" if "?" in path else "?") + urlencode(params)
            target = (path if path.isascii() else encode_target(path)).encode("ascii")
        except UnicodeEncodeError:
            raise JourneyFailure(f"{spec.name}: path or query: {NOT_TEXT}") from None
        http2 = self.http2
        if not headers and json is None and data is None:
            # The common step: nothing but a path (and this user's cookies).
            cookie = user.cookies.header()
            return prepare_dynamic(
                index,
                spec,
                method.encode("ascii"),
                target,
                () if cookie is None else ((b"cookie", cookie),),
                b"",
                self._origin,
                self._authority,
                http2=http2,
            )
        out: list[tuple[bytes, bytes]] = []
        names: set[str] = set()
        if headers:
            for k, v in headers.items():
                names.add(k.lower())
                try:
                    out.append(
                        (k.encode("ascii"), (v if type(v) is str else str(v)).encode("latin-1"))
                    )
                except UnicodeEncodeError:
                    raise JourneyFailure(
                        f"{spec.name}: header {k!r}: not ASCII (name) or Latin-1 (value) text"
                    ) from None
        body = b""
        if json is not None:
            if data is not None:
                raise ValueError("give json= or data=, not both")
            try:
                body = jsonlib.dumps(json, separators=(",", ":")).encode("utf-8")
            except RecursionError:
                raise JourneyFailure(f"{spec.name}: body: {TOO_DEEP}") from None
            if "content-type" not in names:
                out.append((b"content-type", b"application/json"))
        elif isinstance(data, bytes):
            body = data
        elif isinstance(data, str):
            try:
                body = data.encode("utf-8")
            except UnicodeEncodeError:
                raise JourneyFailure(f"{spec.name}: body: {NOT_TEXT}") from None
        elif data is not None:
            try:
                body = urlencode(data).encode("ascii")
            except UnicodeEncodeError:
                raise JourneyFailure(f"{spec.name}: body: {NOT_TEXT}") from None
            if "content-type" not in names:
                out.append((b"content-type", b"application/x-www-form-urlencoded"))
        if "cookie" not in names:
            cookie = user.cookies.header()
            if cookie is not None:
                out.append((b"cookie", cookie))
        try:
            return prepare_dynamic(
                index,
                spec,
                method.encode("ascii"),
                target,
                out,
                body,
                self._origin,
                self._authority,
                http2=http2,
            )
        except ValueError as exc:
            # A header value no request can carry (a line break: an injection), put
            # there from a data row or an extraction: this iteration fails with a
            # reason naming the step, nothing is sent; the value stays out of the
            # reason, a bounded label.
            raise JourneyFailure(f"{spec.name}: {exc}") from None

    def step(
        self,
        user: VirtualUser,
        method: str,
        path: str,
        name: str | None,
        headers: Mapping[str, str] | None,
        json: Any,
        data: bytes | str | Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        checks: Sequence[Check],
        expect: Collection[int] | None,
    ) -> Coroutine[Any, Any, StepResponse]:
        """One step: the request built now, sent when the answer is awaited."""
        if self._stopping():
            raise RunStopped
        method = method.upper()
        if name is None:
            name = path.partition("?")[0]
        index, spec, expected = self._step(name, method)
        req = self.build(user, method, path, headers, json, data, params, index, spec)
        return self._exchange(user, req, expected if expect is None else expect, checks)

    def _plan(self, step: Step) -> _Plan | None:
        """The step's HTTP/1.1 plan (None: it is built as any step is)."""
        plan: _Plan | None = None
        if not self.http2:
            method = step.method.upper()
            index, spec, expected = self._step(step.name, method)
            try:
                h1 = H1Plan(
                    index,
                    spec,
                    method.encode("ascii"),
                    [k.encode("ascii") for k, _ in step.headers],
                    self._authority,
                )
            except ValueError:  # UnicodeEncodeError too
                pass
            else:
                plan = _Plan(
                    h1, expected if step.expect is None else step.expect, request_filler(step, h1)
                )
        return plan

    async def _exchange(
        self,
        user: VirtualUser,
        req: PreparedRequest,
        expected: Collection[int],
        checks: Sequence[Check],
        keep_headers: bool = True,
    ) -> StepResponse:
        """Send a step's request on the user's connection, record it, judge it.
        `keep_headers`: keep the response's headers (False: Set-Cookie alone)."""
        if user.timed_out is not None:
            # The user's scope is cancelled: this raises Cancelled, nothing is sent.
            await trio.lowlevel.checkpoint()
        index = req.index
        recorder = self._recorder
        response = StepResponse(keep_headers)
        now = self._now
        t0 = now()
        deadline = t0 + self._timeout
        conn = user.conn
        recorder.request_started()
        self.sent += 1
        sent_at: float | None = None
        taken: StepConnection | None = None
        try:
            if conn is None:
                assert self.acquire is not None, "an unbound user needs runner.acquire"
                taken = conn = await self.acquire(deadline)
                sent_at = now()
            else:
                sent_at = t0
            scope = user.scope
            if conn is None:
                result: Result = 0, ErrorKind.POOL_TIMEOUT, 0, 0
            elif scope is not None and user.own is not None:
                scope.deadline = deadline
                result = await user.own.request(req, None, response)
                if scope.cancel_called:
                    # The deadline passed as the response came: the response counts,
                    # but the scope is spent, and with it the iteration.
                    user.timed_out = ErrorKind.READ_TIMEOUT.label
                if not self._keep_deadline:
                    scope.deadline = math.inf
            else:
                result = await conn.request(req, deadline, response)
        except trio.Cancelled:
            self._cut_short(user, index, t0, sent_at)
            raise
        finally:
            if taken is not None and self.release is not None:
                self.release(taken)
        sample, failure = self._judged(user, index, response, result, t0, expected, checks)
        if self._feed is not None and conn is not None:
            pause = self._feed(conn, sample)
            if pause > 0 and self._pause is not None:
                self.off_deadline(user)
                await self._pause(pause)
        if result[0] == 0:
            self.off_deadline(user)
            # Some failures return without ever blocking (no file descriptor left):
            # yield, or a journey retrying in a loop would never let a stop be heard.
            await trio.lowlevel.checkpoint()
        if failure is not None:
            raise failure
        return response

    def _cut_short(self, user: VirtualUser, index: int, t0: float, sent_at: float | None) -> None:
        """Record a step's request that Cancelled cut short (the caller raises it again):
        its own deadline (a timeout like any other), or the end of the run (unfinished)."""
        now = self._now
        scope = user.scope
        if scope is not None and scope.cancel_called and user.own is not None:
            _, error, sent, received = user.own.timed_out()
            user.timed_out = ErrorKind(error).label
            t1 = now()
            self._recorder.record(Sample(index, 0, error, t1 - t0, t1 - t0, sent, received))
            return
        end = now()
        service = 0.0 if sent_at is None else end - sent_at
        self._recorder.record(Sample(index, 0, ErrorKind.UNFINISHED, end - t0, service, 0, 0))

    def _judged(
        self,
        user: VirtualUser,
        index: int,
        response: StepResponse,
        result: Result,
        t0: float,
        expected: Collection[int],
        checks: Sequence[Check],
    ) -> tuple[Sample, Exception | None]:
        """A step's ended exchange: its response completed, recorded and judged. Its
        sample, and what to raise for its failure (JourneyFailure with the reason, or a
        check's own exception), None if it did not fail."""
        status, error, sent, received = result
        recorder = self._recorder
        t1 = self._now()
        response.elapsed = t1 - t0
        if status:
            response.status = status
            for k, v in response.raw_headers:
                if k == b"set-cookie":
                    user.cookies.take(v)
        reason: str | None = None
        failure: Exception | None = None
        if status == 0:
            reason = response.error = ErrorKind(error).label
        elif status not in expected:
            reason = f"status {status}"
        else:
            try:
                for check in checks:
                    reason = check(response)
                    if reason is not None:
                        break
            except Exception as exc:
                failure = exc
        sample = Sample(index, status, error, t1 - t0, t1 - t0, sent, received)
        recorder.record(sample)
        if reason is not None:
            failure = JourneyFailure(reason)
        if status and failure is not None:
            recorder.judged_failed(index)
        return sample, failure


@dataclass(frozen=True, slots=True)
class _Plan:
    """A TOML step's request over HTTP/1.1, encoded once (see `_run`)."""

    h1: H1Plan
    #: the statuses the step counts as success
    expected: Collection[int]
    #: the request's bytes for a user (None: the step takes the general path)
    fill: Fill


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
