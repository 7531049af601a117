"""OWASP API4, unrestricted resource consumption: every size, page, rate and connection
count is bounded, and each bound has its answer.

| bound                                  | answer                              |
| -------------------------------------- | ----------------------------------- |
| body over JANGTEO_MAX_BODY_BYTES       | 413 (declared or streamed)          |
| a field over its maxLength / maximum   | 422 naming the field                |
| `limit` over 100 on every list         | 422                                 |
| writes per user                        | 429 with Retry-After                |
| photos per listing                     | 409                                 |
| sockets per instance                   | close 1013                          |
| subscriptions per socket               | error frame too_many_subscriptions  |
| frame size                             | close 1009                          |
| frames per second                      | error frame rate_limited            |

String and number bounds and the list routes come from the OpenAPI document, so a new
field or list is covered without editing this file. (Socket bounds are tested in depth in
tests/realtime/test_gateway.py; here once each, for the table.)
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from server.settings import RateLimit, Settings
from tests.conftest import ClientFactory
from tests.realtime.test_gateway import (
    closed_with,
    connect,
    error,
    new_ticket,
    open_socket,
    send,
    subscribe,
    subscribed,
)
from tests.security.support import open_market, valid_bodies
from tests.server.listings_support import create_listing
from tests.support import Client, sign_up

BIGINT_MAX = 2**63 - 1


def _bounds(schema: dict[str, Any]) -> dict[str, Any]:
    """Per property, a value just past its bound (None when it has none we can send)."""
    over = {}
    for name, described in schema["properties"].items():
        for branch in described.get("anyOf", [described]):
            if "maxLength" in branch:
                over[name] = "x" * (branch["maxLength"] + 1)
            elif "maximum" in branch and branch["maximum"] < BIGINT_MAX:
                over[name] = branch["maximum"] + 1
    return over


async def test_every_bounded_field_refuses_one_more(client: Client, db: asyncpg.Connection) -> None:
    market = await open_market(client, db)
    spec = await (await client.get("/openapi.json")).json()
    checked = 0
    for (method, path), (account, body) in valid_bodies(market).items():
        operation = spec["paths"][path][method.lower()]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = spec["components"]["schemas"][ref.split("/")[-1]]
        url = path.replace("{id}", str(market.ids(path)["id"]))
        for name, value in _bounds(schema).items():
            headers = {**account.auth, "Idempotency-Key": uuid.uuid4().hex, "If-Match": "*"}
            response = await client.request(
                method, url, json={**body, name: value}, headers=headers
            )
            assert response.status == 422, (path, name, await response.text())
            fields = {error["field"] for error in (await response.json())["errors"]}
            assert name in fields, (path, name, fields)
            checked += 1
    assert checked >= 10, "the document lost its bounds"


async def test_every_list_bounds_its_page(client: Client, db: asyncpg.Connection) -> None:
    market = await open_market(client, db)
    spec = await (await client.get("/openapi.json")).json()
    lists = [
        path
        for path, operations in spec["paths"].items()
        if any(p["name"] == "limit" for p in operations.get("get", {}).get("parameters", ()))
    ]
    assert len(lists) >= 4, lists
    for path in lists:
        limit = next(p for p in spec["paths"][path]["get"]["parameters"] if p["name"] == "limit")
        assert limit["schema"]["maximum"] == 100, path
        url = path.replace("{id}", str(market.ids(path)["id"]))
        for value, status in (("100", 200), ("101", 422), ("0", 422), ("10000000000", 422)):
            response = await client.get(url, params={"limit": value}, headers=market.buyer.auth)
            assert response.status == status, (path, value, await response.text())


async def test_a_body_over_the_limit_is_413(make_client: ClientFactory, settings: Settings) -> None:
    client = await make_client(settings.replace(max_body_bytes=1024))
    account = await sign_up(client)
    big = b'{"title": "' + b"x" * 2000 + b'"}'
    declared = await client.post(
        "/api/v1/listings",
        data=big,
        headers={**account.auth, "Content-Type": "application/json"},
    )
    assert declared.status == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(4):
            yield b" " * 512

    streamed = await client.post(
        "/api/v1/listings",
        data=chunks(),
        headers={**account.auth, "Content-Type": "application/json"},
    )
    assert streamed.status == 413


async def test_writes_per_user_are_rate_limited(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings.replace(rate_limit_writes=RateLimit(3, 60)))
    busy, other = await sign_up(client), await sign_up(client)
    for _ in range(3):
        await create_listing(client, busy)
    refused = await client.post(
        "/api/v1/listings", json={"title": "t", "price": 1, "category": "etc"}, headers=busy.auth
    )
    assert refused.status == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    await create_listing(client, other)  # per user: the others write on


async def test_photos_per_listing_are_bounded(client: Client) -> None:
    seller = await sign_up(client)
    listing = await create_listing(client, seller)
    url = f"/api/v1/listings/{listing['id']}/photos"
    body = {"content_type": "image/jpeg", "size": 1000}
    statuses = [(await client.post(url, json=body, headers=seller.auth)).status for _ in range(11)]
    assert statuses == [201] * 10 + [409]


async def test_every_socket_bound_has_its_answer(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(
        settings.replace(ws_max_connections=1, ws_max_subscriptions=1, ws_max_frame_bytes=1024)
    )
    account = await sign_up(client)
    ws = await open_socket(client, account)
    second = await connect(client, await new_ticket(client, account))
    assert (await closed_with(second))[0] == 1013  # sockets per instance

    await subscribed(ws, "listing:1")
    assert (await subscribe(ws, "listing:2"))["code"] == "too_many_subscriptions"

    await ws.send_str('{"op":"ping"}'.ljust(1025))
    assert (await closed_with(ws))[0] == 1009  # frame size


async def test_socket_frames_are_rate_limited(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings.replace(ws_frames_per_second=1, ws_max_bad_frames=100))
    account = await sign_up(client)
    ws = await connect(client, await new_ticket(client, account))
    for _ in range(10):  # one a second with bursts of two: most of these are refused
        await send(ws, {"op": "ping"})
    answers = [await ws.receive_json(timeout=10) for _ in range(10)]
    assert error("rate_limited", "too many frames; slow down") in answers
