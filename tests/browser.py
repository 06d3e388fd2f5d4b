"""A real headless browser for the page tests: Debian's chromium driven by Selenium.

Selenium blocks, so every browser call runs in a worker thread while the daemon
or the engine keeps running in the trio loop."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from helpers import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).parent / "artifacts"

T = TypeVar("T")


def require_chromium() -> None:
    # Never a skip: scripts/test installs the tool, so its absence is a failure.
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail("needs Debian's chromium and chromium-driver (scripts/test installs them)")


def make_driver(
    profile: Path,
    *,
    size: str = "1400,2000",
    extra: Sequence[str] = (),
    capabilities: Mapping[str, Any] | None = None,
) -> Any:
    """Headless Debian chromium; `extra` flags and `capabilities` on top of the usual."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--window-size={size}",
        f"--user-data-dir={profile}",
        *extra,
    ):
        options.add_argument(flag)
    for name, value in (capabilities or {}).items():
        options.set_capability(name, value)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # A browser command that hangs fails in a minute, inside the test's own timeout.
    executor = driver.command_executor
    assert not isinstance(executor, str)
    executor.client_config.timeout = 60
    return driver


def press(driver: Any, selector: str) -> None:
    """Click what `selector` names, as the page's own event: a native click waits on
    chromedriver's idea of a pending navigation, and can stall a loaded machine."""
    element = driver.find_element("css selector", selector)
    driver.execute_script(
        "arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", element
    )


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(fn, *args)


async def until(check: Callable[[], Any], what: str, limit_s: float = 15.0) -> Any:
    """Poll `check` (in a thread: selenium blocks) until it returns something truthy."""
    return await wait_until(check, what, limit=limit_s, poll=0.1, thread=True)
