"""The journey `ballista demo --journey` runs against the demo target's shop API.

The same shopping journey as examples/journey.toml, in Python: each virtual
user logs in once (the token and the session cookie it keeps), then either
buys (list items, pick one, empty its cart, add two, check the cart) or
browses (a page of items, then who it is, by its cookie).
"""

from __future__ import annotations

import random

from ballista.core.journey import JourneyFailure, Session, journey, setup

#: users.csv in examples/ has 50 shoppers; virtual user v is shopper v % 50 + 1
SHOPPERS = 50


@setup
async def login(session: Session) -> None:
    user = f"shopper{session.vu % SHOPPERS + 1}"
    r = await session.post(
        "/api/login", json={"user": user, "password": f"secret-{user}"}, name="login"
    )
    session.vars["user"] = user
    session.vars["auth"] = {"Authorization": f"Bearer {r.json()['token']}"}


@journey(name="buy")
async def buy(session: Session) -> None:
    auth = session.vars["auth"]
    cart = f"/api/cart/{session.vars['user']}"
    items = (await session.get("/api/items", name="items")).json()
    item = random.choice(items)["id"]
    await session.sleep(random.uniform(0.05, 0.2))
    await session.delete(cart, headers=auth, name="clear")
    await session.sleep(random.uniform(0.05, 0.2))
    added = await session.post(cart, json={"item": item, "n": 2}, headers=auth, name="add")
    if added.json().get("items") != 2:
        raise JourneyFailure("cart count")
    await session.sleep(random.uniform(0.05, 0.2))
    await session.get(cart, headers=auth, name="cart")


@journey(name="browse", weight=2)
async def browse(session: Session) -> None:
    await session.get("/api/items", params={"page": str(random.randint(1, 3))}, name="items-page")
    await session.get("/api/me", name="me")
