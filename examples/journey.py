"""The shopping journey of journey.toml, in Python (docs/journeys.md).

Each virtual user logs in once (setup), then loops: list the items, pick one,
empty the cart, add two of it, check the cart. Against the demo target:
    ballista target --port 8080 &
    ballista run -f examples/journey.py http://127.0.0.1:8080 -c 10 -d 20s
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from ballista import journey, setup
from ballista.core.journey import JourneyFailure, Session

# Read once, at import: virtual user v takes row v % len(USERS), as mode = "per-vu".
with (Path(__file__).parent / "users.csv").open(newline="") as f:
    USERS = list(csv.DictReader(f))


@setup
async def login(session: Session) -> None:
    row = USERS[session.vu % len(USERS)]
    session.vars["user"] = row["user"]
    r = await session.post(
        "/api/login",
        name="login",
        json={"user": row["user"], "password": row["password"]},
    )
    if r.status != 200:
        raise JourneyFailure("login: status not 200")
    session.vars["token"] = r.json()["token"]


@journey(weight=1)
async def buy(session: Session) -> None:
    user = session.vars["user"]
    auth = {"Authorization": f"Bearer {session.vars['token']}"}
    items = (await session.get("/api/items", name="items")).json()
    item = random.choice(items)["id"]
    await session.sleep(random.uniform(0.05, 0.2))
    await session.delete(f"/api/cart/{user}", name="clear", headers=auth)
    await session.sleep(random.uniform(0.05, 0.2))
    r = await session.post(
        f"/api/cart/{user}", name="add", headers=auth, json={"item": item, "n": 2}
    )
    if r.json().get("items") != 2:
        raise JourneyFailure("add: json items is not 2")
    await session.sleep(random.uniform(0.05, 0.2))
    cart = (await session.get(f"/api/cart/{user}", name="cart", headers=auth)).json()
    if cart["count"] != 2 or cart["items"][0]["n"] != 2:
        raise JourneyFailure("cart: count is not 2")


@journey(weight=2)
async def browse(session: Session) -> None:
    await session.get("/api/items", name="items-page", params={"page": str(random.randint(1, 3))})
    # The session cookie login set: the user's cookie jar sends it.
    r = await session.get("/api/me", name="me")
    if "user" not in r.json():
        raise JourneyFailure("me: json user missing")
