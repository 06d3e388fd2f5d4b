"""The demo target's small shop API, for journeys: a login that issues tokens, items, carts.

Plain Python (the ASGI app in `app.py` feeds it a request and sends what it
answers), so its rules are tested without sockets as well as over them.

- `POST /api/login` `{"user": U, "password": P}`: any user name of 1-64
  letters, digits and `._@-` whose password is `secret-U` gets 200
  `{"token": T, "user": U}` and a `session=T` cookie; a wrong password 401;
  a body that is not such an object 400. Each login issues a new token.
- `GET /api/items`: the fixed list of `ITEMS` as `[{"id", "name", "price"}]`.
- `POST /api/cart/U` `{"item": id, "n": k}` (k from 1 to 100, 1 if absent):
  adds k of the item to U's cart and answers `{"items": total}`, the number of
  units now in the cart.
- `GET /api/cart/U`: `{"items": [{"id", "name", "price", "n"}], "count": total}`.
- `DELETE /api/cart/U`: empties the cart, `{"items": 0}`.
- `GET /api/me`: `{"user": U}` for the session cookie or bearer token.

Other paths under `/api/` are not the shop's (`owns`): the target answers
them as any other path.

The cart endpoints need `Authorization: Bearer T` with a token issued to U:
none (or not a bearer token) is 401, a token unknown or issued to another
user is 403. Unknown item: 404. Memory is bounded: at most `MAX_TOKENS`
tokens and `MAX_CARTS` carts, the least recently used evicted first (an
evicted token answers 403, as an expired one would).
"""

from __future__ import annotations

import json
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

MAX_TOKENS = 50_000
MAX_CARTS = 50_000
MAX_UNITS = 100
#: Request bodies the API reads; the app answers 413 past it.
MAX_API_BODY = 64 * 1024

_USER = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_NAMES = (
    "anvil", "bolt", "cable", "drill", "easel", "funnel", "gauge", "hammer", "inkpad",
    "jack", "kettle", "ladder", "mallet", "nail", "oiler", "pliers", "quill", "rasp",
    "saw", "trowel",
)  # fmt: skip
#: The shop's items: ids 1 to 20, prices from 2.50 to 50.00.
ITEMS: tuple[dict[str, Any], ...] = tuple(
    {"id": i, "name": name, "price": round(2.5 * i, 2)} for i, name in enumerate(_NAMES, start=1)
)
_BY_ID = {item["id"]: item for item in ITEMS}
_ITEMS_BODY = json.dumps(list(ITEMS)).encode()

#: Route names, as `TargetStats.api` counts them.
ROUTES = ("login", "items", "cart_add", "cart_get", "cart_clear", "me")


@dataclass(frozen=True, slots=True)
class Answer:
    """What the API answers to one request."""

    route: str | None  # one of ROUTES, None when no route matched
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _json(route: str | None, status: int, doc: object, *extra: tuple[bytes, bytes]) -> Answer:
    headers = ((b"content-type", b"application/json"), *extra)
    return Answer(route, status, json.dumps(doc).encode(), headers)


def _error(route: str | None, status: int, message: str) -> Answer:
    return _json(route, status, {"error": message})


class Shop:
    """The API's state: tokens and carts, each bounded and evicted least recently used first."""

    def __init__(self, max_tokens: int = MAX_TOKENS, max_carts: int = MAX_CARTS) -> None:
        self._tokens: OrderedDict[str, str] = OrderedDict()  # token -> user
        self._carts: OrderedDict[str, dict[int, int]] = OrderedDict()  # user -> {id: n}
        self._max_tokens = max_tokens
        self._max_carts = max_carts

    @property
    def tokens(self) -> int:
        return len(self._tokens)

    @property
    def carts(self) -> int:
        return len(self._carts)

    @staticmethod
    def owns(path: str) -> bool:
        """Whether `path` is one of the shop's: any other path under /api/ is the
        target's ordinary answer, as before the shop existed."""
        if path in ("/api/login", "/api/items", "/api/me"):
            return True
        parts = path.split("/")
        return len(parts) == 4 and parts[1] == "api" and parts[2] == "cart"

    def handle(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Answer:
        """Answer one request under `/api/` (`path` decoded, as ASGI gives it)."""
        parts = path.split("/")  # "", "api", ...
        if path == "/api/login":
            return self._login(body) if method == "POST" else _not_allowed("login")
        if path == "/api/items":
            if method != "GET":
                return _not_allowed("items")
            return Answer("items", 200, _ITEMS_BODY, ((b"content-type", b"application/json"),))
        if path == "/api/me":
            return self._me(headers) if method == "GET" else _not_allowed("me")
        if len(parts) == 4 and parts[2] == "cart":
            user = parts[3]
            route = {"POST": "cart_add", "GET": "cart_get", "DELETE": "cart_clear"}.get(method)
            if route is None:
                return _not_allowed(None)
            denied = self._authorize(route, user, headers)
            if denied is not None:
                return denied
            if route == "cart_add":
                return self._add(user, body)
            if route == "cart_get":
                return self._show(user)
            self._carts.pop(user, None)
            return _json(route, 200, {"items": 0})
        return _error(None, 404, f"no such API path: {path}")

    def _login(self, body: bytes) -> Answer:
        try:
            doc = json.loads(body)
        except ValueError:
            return _error("login", 400, "body: not JSON")
        if not isinstance(doc, dict):
            return _error("login", 400, 'body: not a JSON object {"user", "password"}')
        user, password = doc.get("user"), doc.get("password")
        if not isinstance(user, str) or not _USER.fullmatch(user):
            return _error("login", 400, "user: 1-64 letters, digits or ._@-")
        if password != f"secret-{user}":
            return _error("login", 401, "bad credentials")
        token = secrets.token_urlsafe(18)
        self._tokens[token] = user
        if len(self._tokens) > self._max_tokens:
            self._tokens.popitem(last=False)
        cookie = f"session={token}; Path=/api; HttpOnly; SameSite=Lax".encode()
        return _json("login", 200, {"token": token, "user": user}, (b"set-cookie", cookie))

    def _user_of(self, token: str) -> str | None:
        user = self._tokens.get(token)
        if user is not None:
            self._tokens.move_to_end(token)
        return user

    def _authorize(
        self, route: str, user: str, headers: list[tuple[bytes, bytes]]
    ) -> Answer | None:
        token = _bearer(headers)
        if token is None:
            return _error(route, 401, "Authorization: Bearer <token> required")
        owner = self._user_of(token)
        if owner is None:
            return _error(route, 403, "unknown or expired token")
        if owner != user:
            return _error(route, 403, f"token was not issued to {user}")
        return None

    def _me(self, headers: list[tuple[bytes, bytes]]) -> Answer:
        token = _bearer(headers) or _cookie(headers, "session")
        if token is None:
            return _error("me", 401, "no session cookie or bearer token")
        user = self._user_of(token)
        if user is None:
            return _error("me", 403, "unknown or expired token")
        return _json("me", 200, {"user": user})

    def _add(self, user: str, body: bytes) -> Answer:
        try:
            doc = json.loads(body)
        except ValueError:
            return _error("cart_add", 400, "body: not JSON")
        if not isinstance(doc, dict):
            return _error("cart_add", 400, 'body: not a JSON object {"item", "n"}')
        item, n = _int_of(doc.get("item")), _int_of(doc.get("n", 1))
        if item is None:
            return _error("cart_add", 400, "item: an item id is required")
        if item not in _BY_ID:
            return _error("cart_add", 404, f"item {item}: no such item")
        if n is None or not 1 <= n <= MAX_UNITS:
            return _error("cart_add", 400, f"n: a number from 1 to {MAX_UNITS}")
        cart = self._carts.get(user)
        if cart is None:
            cart = self._carts[user] = {}
            if len(self._carts) > self._max_carts:
                self._carts.popitem(last=False)
        else:
            self._carts.move_to_end(user)
        cart[item] = cart.get(item, 0) + n
        return _json("cart_add", 200, {"items": sum(cart.values())})

    def _show(self, user: str) -> Answer:
        cart = self._carts.get(user, {})
        lines = [{**_BY_ID[i], "n": n} for i, n in sorted(cart.items())]
        return _json("cart_get", 200, {"items": lines, "count": sum(cart.values())})


def _not_allowed(route: str | None) -> Answer:
    return _error(route, 405, "method not allowed")


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    value = _header(headers, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _cookie(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() != b"cookie":
            continue
        for pair in value.decode("latin-1").split(";"):
            k, _, v = pair.strip().partition("=")
            if k == name and v:
                return v
    return None


def _int_of(value: object) -> int | None:
    """An item id or count as JSON gives it: a number, or a string of digits (a CSV cell)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None
