"""The demo target's shop API (login, items, carts): its rules as plain calls, then over real sockets."""

from __future__ import annotations

import json
from typing import Any

import httpcore
import trio
from servers import RunningTarget

from ballista.target.shop import ITEMS, Answer, Shop

Headers = list[tuple[bytes, bytes]]


def call(
    shop: Shop, method: str, path: str, body: object = None, token: str | None = None
) -> Answer:
    headers: Headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    raw = b"" if body is None else json.dumps(body).encode()
    return shop.handle(method, path, headers, raw)


def login(shop: Shop, user: str) -> str:
    answer = call(shop, "POST", "/api/login", {"user": user, "password": f"secret-{user}"})
    assert answer.status == 200, answer
    token: str = json.loads(answer.body)["token"]
    return token


def test_login_needs_the_users_password() -> None:
    shop = Shop()
    ok = call(shop, "POST", "/api/login", {"user": "ann", "password": "secret-ann"})
    assert ok.status == 200 and ok.route == "login"
    doc = json.loads(ok.body)
    assert doc["user"] == "ann" and len(doc["token"]) >= 20
    cookie = dict(ok.headers)[b"set-cookie"].decode()
    assert cookie.startswith(f"session={doc['token']};")
    assert call(shop, "POST", "/api/login", {"user": "ann", "password": "secret-bob"}).status == 401
    assert call(shop, "POST", "/api/login", {"user": "ann"}).status == 401
    for bad in ([1], {"user": "a b", "password": "secret-a b"}, {"user": ""}, {"user": 3}):
        assert call(shop, "POST", "/api/login", bad).status == 400, bad
    assert shop.handle("POST", "/api/login", [], b"{not json").status == 400
    assert call(shop, "GET", "/api/login").status == 405
    assert login(shop, "ann") != login(shop, "ann")  # a new token per login


def test_items_are_a_fixed_list() -> None:
    answer = call(Shop(), "GET", "/api/items")
    items = json.loads(answer.body)
    assert answer.status == 200 and items == list(ITEMS) and len(items) == 20
    assert [i["id"] for i in items] == list(range(1, 21))
    assert all(set(i) == {"id", "name", "price"} for i in items)


def test_cart_accepts_only_the_users_own_token() -> None:
    shop = Shop()
    ann, bob = login(shop, "ann"), login(shop, "bob")
    assert call(shop, "POST", "/api/cart/ann", {"item": 3, "n": 2}).status == 401
    assert call(shop, "POST", "/api/cart/ann", {"item": 3}, token=bob).status == 403
    assert call(shop, "POST", "/api/cart/ann", {"item": 3}, token="forged").status == 403
    basic: Headers = [(b"authorization", b"Basic " + ann.encode())]
    assert shop.handle("GET", "/api/cart/ann", basic, b"").status == 401
    assert call(shop, "GET", "/api/cart/ann", token=bob).status == 403

    added = call(shop, "POST", "/api/cart/ann", {"item": 3, "n": 2}, token=ann)
    assert (added.status, json.loads(added.body)) == (200, {"items": 2})
    # a CSV cell or a template gives a string: digits are accepted as the id
    added = call(shop, "POST", "/api/cart/ann", {"item": "5"}, token=ann)
    assert json.loads(added.body) == {"items": 3}
    shown = json.loads(call(shop, "GET", "/api/cart/ann", token=ann).body)
    assert shown["count"] == 3
    assert [(line["id"], line["n"]) for line in shown["items"]] == [(3, 2), (5, 1)]
    assert json.loads(call(shop, "GET", "/api/cart/bob", token=bob).body) == {
        "items": [],
        "count": 0,
    }
    cleared = call(shop, "DELETE", "/api/cart/ann", token=ann)
    assert (cleared.route, json.loads(cleared.body)) == ("cart_clear", {"items": 0})
    assert json.loads(call(shop, "GET", "/api/cart/ann", token=ann).body)["count"] == 0


def test_cart_refuses_bad_items() -> None:
    shop = Shop()
    ann = login(shop, "ann")
    assert call(shop, "POST", "/api/cart/ann", {"item": 21}, token=ann).status == 404
    for bad in ({}, {"item": True}, {"item": 1, "n": 0}, {"item": 1, "n": 101}, [1]):
        assert call(shop, "POST", "/api/cart/ann", bad, token=ann).status == 400, bad
    assert call(shop, "PUT", "/api/cart/ann", {"item": 1}, token=ann).status == 405
    assert call(shop, "GET", "/api/nothing").status == 404


def test_me_takes_the_session_cookie_or_the_token() -> None:
    shop = Shop()
    token = login(shop, "ann")
    cookie: Headers = [(b"cookie", f"theme=dark; session={token}".encode())]
    assert json.loads(shop.handle("GET", "/api/me", cookie, b"").body) == {"user": "ann"}
    assert json.loads(call(shop, "GET", "/api/me", token=token).body) == {"user": "ann"}
    assert call(shop, "GET", "/api/me").status == 401


def test_tokens_and_carts_are_bounded_least_recently_used_first() -> None:
    shop = Shop(max_tokens=3, max_carts=2)
    first = login(shop, "u0")
    others = [login(shop, f"u{i}") for i in range(1, 3)]
    call(shop, "GET", "/api/cart/u0", token=first)  # used: now the most recent
    login(shop, "u3")  # evicts u1's token, the least recently used
    assert shop.tokens == 3
    assert call(shop, "GET", "/api/cart/u0", token=first).status == 200
    assert call(shop, "GET", "/api/cart/u1", token=others[0]).status == 403
    for user, token in (("u0", first), ("u2", others[1])):
        call(shop, "POST", f"/api/cart/{user}", {"item": 1}, token=token)
    u3 = login(shop, "u3")
    call(shop, "POST", "/api/cart/u3", {"item": 1}, token=u3)
    assert shop.carts == 2
    count = json.loads(call(shop, "GET", "/api/cart/u0", token=first).body)["count"]
    assert count == 0  # u0's cart was the oldest


async def request(
    pool: httpcore.AsyncConnectionPool,
    target: RunningTarget,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    with trio.fail_after(10):
        r = await pool.request(
            method,
            target.url_for(path),
            headers=list((headers or {}).items()),
            content=None if body is None else json.dumps(body).encode(),
        )
    return r.status, json.loads(r.content)


async def test_a_shopping_journey_over_real_sockets(target: RunningTarget) -> None:
    async with httpcore.AsyncConnectionPool(max_connections=1) as pool:
        status, doc = await request(
            pool, target, "POST", "/api/login", {"user": "ann", "password": "secret-ann"}
        )
        assert status == 200
        auth = {"Authorization": f"Bearer {doc['token']}"}
        status, items = await request(pool, target, "GET", "/api/items")
        assert status == 200 and len(items) == 20
        pick = items[4]["id"]
        for _ in range(3):
            status, doc = await request(
                pool, target, "POST", "/api/cart/ann", {"item": pick, "n": 1}, auth
            )
        assert (status, doc) == (200, {"items": 3})
        status, doc = await request(pool, target, "GET", "/api/cart/ann", headers=auth)
        assert doc["count"] == 3 and doc["items"][0]["id"] == pick
        status, _ = await request(pool, target, "POST", "/api/cart/bob", {"item": 1}, auth)
        assert status == 403
        status, _ = await request(pool, target, "GET", "/api/cart/ann")
        assert status == 401
    assert target.stats.api == {"login": 1, "items": 1, "cart_add": 4, "cart_get": 2}
    assert target.stats.statuses == {200: 6, 403: 1, 401: 1}
    assert target.stats.requests == 8


async def test_other_api_paths_are_the_targets_ordinary_answer(target: RunningTarget) -> None:
    """`ballista runs --server` at the target must see a target, not a daemon's 404."""
    async with httpcore.AsyncConnectionPool(max_connections=1) as pool:
        with trio.fail_after(10):
            r = await pool.request("GET", target.url_for("/api/runs"))
        assert (r.status, r.headers[0][1]) == (200, b"application/octet-stream")
    assert Shop.owns("/api/cart/ann") and not Shop.owns("/api/cart/ann/x")
    assert not Shop.owns("/api/runs") and target.stats.api == {}


async def test_an_oversized_api_body_is_413(target: RunningTarget) -> None:
    async with httpcore.AsyncConnectionPool(max_connections=1) as pool:
        with trio.fail_after(10):
            r = await pool.request("POST", target.url_for("/api/login"), content=b"x" * 70_000)
        assert r.status == 413
    assert target.stats.bytes_received == 70_000
