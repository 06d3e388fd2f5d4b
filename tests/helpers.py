"""Plain helpers the test modules share (fixtures live in conftest.py, servers in servers.py).

One helper, one place: waiting for a condition, a free port, a `ballista run`
config from its flags, and the fake connection for engine tests on MockClock.
"""

from __future__ import annotations

import argparse
import inspect
import socket
from collections.abc import Callable
from typing import Any

import trio

from ballista.cli.main import build_parser
from ballista.cli.run import config_from_args
from ballista.core.config import Origin, RunConfig
from ballista.core.outcome import NO_ERROR
from ballista.transport.connect import PreparedRequest

#: An origin nobody dials: engine tests with `FakeConnection` never open a socket.
ORIGIN = Origin("http", "127.0.0.1", 9)


async def wait_until(
    check: Callable[[], Any],
    what: str,
    *,
    limit: float = 10.0,
    poll: float = 0.02,
    thread: bool = False,
) -> Any:
    """Call `check` (plain or async) until it returns something truthy; return that.

    Fails naming `what` and the last value if `limit` seconds pass first. A
    `check` that blocks (urllib, selenium) runs in a thread with `thread=True`.
    """
    value: Any = None
    with trio.move_on_after(limit):
        while True:
            value = await trio.to_thread.run_sync(check) if thread else check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await trio.sleep(poll)
    raise AssertionError(f"timed out after {limit} s waiting for {what} (last: {value!r})")


def free_port() -> int:
    """A port on 127.0.0.1 that was bound then closed: free for a child process to
    listen on, and refused (`connect_refused`) until something does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run_args(*argv: str) -> argparse.Namespace:
    """`ballista run ARGV...` parsed, as the CLI parses it."""
    return build_parser(["run"]).parse_args(["run", *argv])


def run_config(*argv: str) -> RunConfig:
    """The RunConfig `ballista run ARGV...` would run."""
    return config_from_args(run_args(*argv))


class FakeConnection:
    """Answers 200 after exactly `service` seconds; logs when each request started."""

    multiplexed = True
    retry_after: float | None = None

    def __init__(self, starts: list[float], service: float) -> None:
        self._starts = starts
        self._service = service

    async def request(self, req: PreparedRequest, deadline: float) -> tuple[int, int, int, int]:
        self._starts.append(trio.current_time())
        await trio.sleep(self._service)
        return 200, NO_ERROR, 40, 100

    async def aclose(self) -> None:
        pass
