"""User journeys: the API a journey's code is written against (docs/journeys.md).

A journey is an async function of a `Session`: it sends requests one after
another, carries values from one response to the next and may think between
steps. Python journeys are written against this API directly (`@journey`);
TOML flows compile to functions of the same shape. The engine runs them
inside its load models and supplies the Session; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, overload

#: Distinct step names a run records separately; later ones share `OTHER_STEP`,
#: so a Python journey that names requests by URL cannot grow memory or labels.
MAX_STEP_NAMES = 100
OTHER_STEP = "other"


class JourneyFailure(Exception):
    """Ends the current iteration as failed, with `reason` counted under its flow.

    A failed check, an extraction that found nothing: a counted outcome, never a
    crash. Any other exception from a journey counts as a user-code error.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DataExhausted(Exception):
    """A data file in `unique` mode has no row left and was told to stop the run."""


class Response(Protocol):
    """What a journey sees of one response."""

    #: HTTP status; 0 when there was no response (an error of kind `error`)
    status: int
    #: error kind (`read_timeout`, ...) when status is 0, else None
    error: str | None
    #: seconds from sending to the end of the response
    elapsed: float

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers, names in lower case (last value wins)."""
        ...

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (any case), in the order received: each
        `Set-Cookie` of a response, where `headers` keeps only the last."""
        ...

    @property
    def content(self) -> bytes: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


#: A check on a response: None if it passes, else the reason it failed (its name).
Check = Callable[[Response], str | None]


class Session(Protocol):
    """One virtual user: its requests, its state, its think time."""

    #: this virtual user's number, from 0 (unique across the segments of a test)
    vu: int
    #: iterations this user started before the current one (0 in `setup`)
    iteration: int
    #: per-user state kept across iterations (TOML extractions and data rows land here)
    vars: dict[str, Any]

    async def request(
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
    ) -> Response:
        """Send one request, recorded under `name` (the path without its query if None).

        `expect`: the statuses that count as success (200-399 if None); another
        status fails the request with reason `status <code>`. Then `checks`, in
        order: the first to return a reason fails it with that reason. A failed
        request counts as failed and raises JourneyFailure, ending the iteration.
        """
        ...

    async def get(self, path: str, **kw: Any) -> Response: ...
    async def post(self, path: str, **kw: Any) -> Response: ...
    async def put(self, path: str, **kw: Any) -> Response: ...
    async def patch(self, path: str, **kw: Any) -> Response: ...
    async def delete(self, path: str, **kw: Any) -> Response: ...

    async def sleep(self, seconds: float) -> None:
        """Think time: returns early, without error, when the run stops."""
        ...


JourneyFn = Callable[[Session], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class JourneyDef:
    """One flow: its name (for figures), its weight among flows, its code."""

    name: str
    fn: JourneyFn
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Journeys:
    """The flows of a run, as the engine receives them."""

    flows: tuple[JourneyDef, ...]
    #: run once per virtual user before its first iteration (a login); what it
    #: leaves in `session.vars` the user keeps
    setup: JourneyFn | None = None
    #: step names known before the run (TOML flows), recorded from the start;
    #: Python journeys add theirs as they appear, up to MAX_STEP_NAMES
    step_names: tuple[str, ...] = ()
    #: where they were defined, for messages (`shop.toml`, `journeys.py`)
    source: str = ""
    #: called with (index, count) of this process's segment before the run starts:
    #: a `unique` data file takes its share of rows, so no row is used twice in a test
    on_segment: tuple[Callable[[int, int], None], ...] = ()
    #: its functions await nothing but the session's `request` and `sleep` (TOML
    #: flows, compiled here): the engine may leave a step's deadline set after the
    #: step, since nothing else waits under it (Python journeys may await anything)
    session_awaits_only: bool = False


_F = TypeVar("_F", bound=Callable[..., Any])
#: attribute `@journey` sets on a function: (name or None, weight)
JOURNEY_ATTR = "__ballista_journey__"
SETUP_ATTR = "__ballista_setup__"


@overload
def journey(fn: _F, /) -> _F: ...
@overload
def journey(*, weight: float = 1.0, name: str | None = None) -> Callable[[_F], _F]: ...
def journey(
    fn: _F | None = None, /, *, weight: float = 1.0, name: str | None = None
) -> _F | Callable[[_F], _F]:
    """Mark an async function of a Session as a journey: `@journey` or `@journey(weight=3)`."""

    def mark(f: _F) -> _F:
        setattr(f, JOURNEY_ATTR, (name, weight))
        return f

    return mark(fn) if fn is not None else mark


def setup(fn: _F) -> _F:
    """Mark an async function of a Session to run once per virtual user, before its journeys."""
    setattr(fn, SETUP_ATTR, True)
    return fn
