"""Fixtures: the embedded target (plain, TLS, fixed delay) and the fault servers.

All of them serve on 127.0.0.1 inside pytest-trio's per-test `nursery`, so they
stop when the test ends. The helpers behind them live in `servers.py`
(`from servers import start_target, ...` for variants the fixtures don't cover);
plain helpers (`wait_until`, `free_port`, `run_config`, ...) in `helpers.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import servers
import trio
from helpers import free_port
from prom import Prometheus, prometheus_processes
from servers import (
    FaultServer,
    JourneyService,
    RunningTarget,
    TargetFactory,
    TlsFiles,
    start_journey_service,
)

#: The delay of `fixed_delay_target`.
FIXED_DELAY = 0.02


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """trustme CA + server cert for 127.0.0.1/localhost; `.ca_path` for clients."""
    directory: Path = tmp_path_factory.mktemp("tls")
    return servers.make_tls_files(directory)


@pytest.fixture
async def target(nursery: trio.Nursery) -> RunningTarget:
    """Plain target (HTTP/1.1 + h2c): no delay, no random errors."""
    return await servers.start_target(nursery)


@pytest.fixture
async def target_factory(nursery: trio.Nursery) -> TargetFactory:
    """`await target_factory(fixed_delay=0.05, error_rate=0.1, tls=tls_files)`: more targets."""

    async def start(**changes: Any) -> RunningTarget:
        return await servers.start_target(nursery, **changes)

    return start


@pytest.fixture
async def tls_target(nursery: trio.Nursery, tls_files: TlsFiles) -> RunningTarget:
    """TLS target (h2 and http/1.1 via ALPN); verify it with `.ca_path`."""
    return await servers.start_target(nursery, tls=tls_files)


@pytest.fixture
async def fixed_delay_target(nursery: trio.Nursery) -> RunningTarget:
    """A target whose every response waits exactly FIXED_DELAY (for percentile tests)."""
    return await servers.start_target(nursery, fixed_delay=FIXED_DELAY)


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on: `connect_refused`."""
    return free_port()


@pytest.fixture
async def reset_server(nursery: trio.Nursery) -> FaultServer:
    return await servers.start_reset_server(nursery)


@pytest.fixture
async def silent_server(nursery: trio.Nursery) -> FaultServer:
    return await servers.start_silent_server(nursery)


@pytest.fixture
async def garbage_server(nursery: trio.Nursery) -> FaultServer:
    return await servers.start_garbage_server(nursery)


@pytest.fixture
async def close_immediately_server(nursery: trio.Nursery) -> FaultServer:
    return await servers.start_close_immediately_server(nursery)


@pytest.fixture
async def tls_untrusted_server(nursery: trio.Nursery) -> FaultServer:
    return await servers.start_tls_untrusted_server(nursery)


@pytest.fixture
async def tls_plaintext_server(nursery: trio.Nursery) -> FaultServer:
    return await servers.start_tls_plaintext_server(nursery)


@pytest.fixture
async def tls_no_alpn_server(nursery: trio.Nursery) -> FaultServer:
    return await servers.start_tls_no_alpn_server(nursery)


@pytest.fixture
async def h2_rst_server(nursery: trio.Nursery) -> FaultServer:
    return await servers.start_h2_rst_server(nursery)


@pytest.fixture
async def h2_goaway_server(nursery: trio.Nursery) -> FaultServer:
    return await servers.start_h2_goaway_server(nursery)


@pytest.fixture
async def h2_bad_status_server(nursery: trio.Nursery) -> FaultServer:
    return await servers.start_h2_bad_status_server(nursery)


@pytest.fixture
async def h2_drain_server(nursery: trio.Nursery) -> FaultServer:
    return await servers.start_h2_drain_server(nursery)


@pytest.fixture
async def h2_ping_flood_server(nursery: trio.Nursery) -> FaultServer:
    return await servers.start_h2_ping_flood_server(nursery)


@pytest.fixture
async def h2_settings_flood_server(nursery: trio.Nursery) -> FaultServer:
    return await servers.start_h2_settings_flood_server(nursery)


@pytest.fixture
async def prometheus_factory(
    tmp_path: Path,
) -> AsyncIterator[Callable[[list[str]], Awaitable[Prometheus]]]:
    """`await prometheus_factory(["127.0.0.1:9464", ...])`: a real Prometheus scraping
    those targets every second (tests/prom.py), stopped at the end of the test."""
    async for start in prometheus_processes(tmp_path):
        yield start


@pytest.fixture
async def journey_service(nursery: trio.Nursery) -> JourneyService:
    """A small stateful service (login, cookies, echo) for journeys; see servers.py."""
    return await start_journey_service(nursery)
