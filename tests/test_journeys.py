"""Journeys at run time: virtual users over real connections, their steps and flows' figures."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import trio
from helpers import run_config
from servers import JourneyService

from ballista.core.config import LoadSpec, RunConfig
from ballista.core.journey import JourneyDef, JourneyFailure, Journeys, Response, Session
from ballista.core.snapshot import Snapshot
from ballista.engine.engine import Engine


def config_for(url: str, journeys: Journeys, *argv: str) -> RunConfig:
    return dataclasses.replace(run_config(url, *argv), journeys=journeys)


async def run(config: RunConfig, **kw: Any) -> tuple[Engine, Snapshot]:
    engine = Engine(config, grace=2.0, **kw)
    with trio.fail_after(60):
        final = await engine.run()
    return engine, final


def flows_of(snap: Snapshot) -> dict[str, Any]:
    return {f.name: f for f in snap.flows}


def by_name(snap: Snapshot) -> dict[str, Any]:
    return {r.name: r for r in snap.by_request}


async def test_login_token_cookie_carried_per_user(journey_service: JourneyService) -> None:
    seen: list[tuple[int, str]] = []

    async def setup(s: Session) -> None:
        r = await s.post("/login", json={"user": f"u{s.vu}"}, name="login")
        s.vars["token"] = r.json()["token"]

    async def me(s: Session) -> None:
        r = await s.get(
            "/me", headers={"Authorization": f"Bearer {s.vars['token']}"}, name="me"
        )
        seen.append((s.vu, r.json()["user"]))

    journeys = Journeys(flows=(JourneyDef("me", me),), setup=setup)
    _, final = await run(config_for(journey_service.url, journeys, "-c", "3", "-n", "30"))
    flows = flows_of(final)
    assert flows["me"].iterations == flows["me"].completed == 30
    assert flows["setup"].completed == 3
    steps = by_name(final)
    assert steps["login"].requests == 3 and steps["me"].requests == 30
    assert final.requests == final.responses == 33 and final.failed == 0
    assert journey_service.hits == {"login": 3, "me": 30}
    # Each user's cookie and token are its own.
    assert all(user == f"u{vu}" for vu, user in seen)
    assert {vu for vu, _ in seen} == {0, 1, 2}
