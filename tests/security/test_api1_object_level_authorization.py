"""OWASP API1, broken object level authorization: every route that takes an id, as someone
who has no business with that object.

The routes come from the app's router, so a new route fails ``test_every_route_with_an_id_is
_classified`` until someone decides which kind it is. Private things (orders, chat rooms)
answer a stranger exactly as an id that does not exist; seller-only changes to a public
listing answer 403; and nothing a stranger sends changes anything.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from aiohttp import ClientResponse

from server.photos.storage_local import PUBLIC_PATH, UPLOAD_PATH
from tests.security.support import (
    MISSING_IDS,
    market_state,
    open_market,
    routes_with_parameters,
)
from tests.support import Account, Client

Route = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Probe:
    """A request that would succeed for the object's owner."""

    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = False


# Orders and chat rooms are private: a stranger learns nothing, not even that they exist.
PRIVATE: dict[Route, Probe] = {
    ("GET", "/api/v1/orders/{id}"): Probe(),
    ("POST", "/api/v1/orders/{id}/complete"): Probe(idempotent=True),
    ("POST", "/api/v1/orders/{id}/cancel"): Probe(idempotent=True),
    ("GET", "/api/v1/chats/{id}/messages"): Probe(),
    ("POST", "/api/v1/chats/{id}/messages"): Probe(
        body={"body": "let me in", "client_id": "5b0c38c4-8f4c-4c43-9d67-6a4b1f0f3f11"}
    ),
    ("POST", "/api/v1/chats/{id}/read"): Probe(body={"up_to": 1}),
}
# Listings are public, so their existence is no secret: only the seller may change one (403).
SELLER_ONLY: dict[Route, Probe] = {
    ("PATCH", "/api/v1/listings/{id}"): Probe(body={"price": 1}, headers={"If-Match": "*"}),
    ("DELETE", "/api/v1/listings/{id}"): Probe(headers={"If-Match": "*"}),
    ("POST", "/api/v1/listings/{id}/photos"): Probe(
        body={"content_type": "image/jpeg", "size": 1_000}
    ),
    ("POST", "/api/v1/listings/{id}/photos/{photo_id}/complete"): Probe(),
}
# Open to others on purpose, with the reason.
OPEN_BY_DESIGN: dict[Route, str] = {
    ("GET", "/api/v1/listings/{id}"): "listings are public (people browse before signing up)",
    ("PUT", "/api/v1/listings/{id}/like"): "anyone signed in may like a listing",
    ("DELETE", "/api/v1/listings/{id}/like"): "and take their own like back",
    ("POST", "/api/v1/listings/{id}/purchase"): "anyone but the seller may buy",
    ("POST", "/api/v1/listings/{id}/chats"): "anyone but the seller may ask the seller",
    ("PUT", UPLOAD_PATH + "listings/{listing_id}/{name}"): "its signature is the authorization",
    ("GET", PUBLIC_PATH + "listings/{listing_id}/{name}"): "photos of public listings",
    ("GET", "/demo/{name}"): "static files of the demo page",
    ("GET", "/demo/views/{name}"): "static files of the demo page",
    ("GET", "/clients/js/{name}"): "the JavaScript client library's files",
}


def _url(path: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    return path


async def _send(
    client: Client, account: Account, route: Route, probe: Probe, ids: dict[str, str]
) -> ClientResponse:
    method, path = route
    headers = {**account.auth, **probe.headers}
    if probe.idempotent:
        headers["Idempotency-Key"] = uuid.uuid4().hex
    return await client.request(method, _url(path, ids), json=probe.body, headers=headers)


async def _answer(response: ClientResponse) -> tuple[int, dict[str, Any]]:
    """Status and problem body, without ``instance`` (which only echoes the path)."""
    body = orjson.loads(await response.read())
    assert isinstance(body, dict), body
    body.pop("instance", None)
    return response.status, body


async def test_every_route_with_an_id_is_classified(client: Client) -> None:
    served = routes_with_parameters(client)
    classified = set(PRIVATE) | set(SELLER_ONLY) | set(OPEN_BY_DESIGN)
    assert served - classified == set(), "new routes with an id: add them to a table here"
    assert classified - served == set(), "routes that no longer exist"


async def test_a_stranger_gets_the_same_answer_as_for_a_missing_object(
    client: Client, db: asyncpg.Connection
) -> None:
    market = await open_market(client, db)
    before = await market_state(db)
    for route, probe in PRIVATE.items():
        real = await _send(client, market.stranger, route, probe, market.ids(route[1]))
        missing = await _send(client, market.stranger, route, probe, MISSING_IDS)
        status, body = await _answer(real)
        assert status == 404, (route, body)
        assert (status, body) == await _answer(missing), route
    assert await market_state(db) == before, "a stranger changed something"


async def test_only_the_seller_may_change_a_listing(client: Client, db: asyncpg.Connection) -> None:
    market = await open_market(client, db)
    before = await market_state(db)
    for route, probe in SELLER_ONLY.items():
        for account in (market.stranger, market.buyer):
            real = await _send(client, account, route, probe, market.ids(route[1]))
            status, body = await _answer(real)
            assert (status, body["type"]) == (403, _problem("not-the-seller")), (route, body)
        missing = await _send(client, market.stranger, route, probe, MISSING_IDS)
        assert missing.status == 404, (route, await missing.text())
    assert await market_state(db) == before, "someone other than the seller changed something"


async def test_the_owners_themselves_get_through(client: Client, db: asyncpg.Connection) -> None:
    """The probes get past authorization for the owner: the refusals are about who, not what.
    (Completing a photo nobody uploaded is 409: past the seller check, as it should be.)"""
    market = await open_market(client, db)
    owner_of = {"orders": market.buyer, "chats": market.buyer, "listings": market.seller}
    routes = {**PRIVATE, **SELLER_ONLY}
    # Reads first, and the listing's DELETE last: it hides what the others still need.
    for route in sorted(routes, key=lambda r: (r[0] != "GET", r[0] == "DELETE", r[1])):
        owner = owner_of[route[1].split("/")[3]]
        if route == ("POST", "/api/v1/orders/{id}/cancel"):
            continue  # the order is completed by then; cancelling it is API5's business
        response = await _send(client, owner, route, routes[route], market.ids(route[1]))
        assert response.status not in (401, 403, 404), (route, await response.text())


def _problem(slug: str) -> str:
    return f"https://jangteo.dev/problems/{slug}"
