"""OWASP API3, broken object property level authorization.

Reading: no list or detail answer carries another user's private fields (email, balance,
password hash), whoever asks. Writing: every request body refuses unknown fields and the
read-only fields of what it writes (ids, version, counters, balance, ...) with 422, and
changes nothing. The bodies come from the OpenAPI document, so a new one is not forgotten.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson

from tests.orders_support import fund
from tests.security.support import Market, market_state, open_market, valid_bodies
from tests.support import Account, Client

DEMO_ACCOUNTS = "/api/v1/demo/accounts"
PRIVATE_FIELDS = {"email", "balance", "password", "password_hash"}
# Any field a server decides, whichever body it is sent in.
SERVER_DECIDED = {
    "id", "user_id", "seller_id", "buyer_id", "sender_id", "version", "like_count",
    "created_at", "updated_at", "balance", "amount", "unit_price", "photos", "escrow",
}  # fmt: skip


def _walk_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in _walk_keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in _walk_keys(item)}
    return set()


async def _reads_of(client: Client, account: Account, market: Market) -> dict[str, Any]:
    """Every list and detail answer ``account`` can get about the market."""
    paths = [
        "/api/v1/listings",
        f"/api/v1/listings?seller={market.seller.user_id}",
        f"/api/v1/listings/{market.listing_id}",
        "/api/v1/orders?role=buyer",
        "/api/v1/orders?role=seller",
        f"/api/v1/orders/{market.order_id}",
        "/api/v1/chats",
        f"/api/v1/chats/{market.room_id}/messages",
        DEMO_ACCOUNTS,
    ]
    answers = {}
    for path in paths:
        response = await client.get(path, headers=account.auth)
        answers[path] = orjson.loads(await response.read())
    return answers


async def test_no_answer_carries_another_users_private_fields(
    client: Client, db: asyncpg.Connection
) -> None:
    market = await open_market(client, db)
    people = (market.seller, market.buyer, market.stranger)
    for n, person in enumerate(people):
        await fund(db, person.user_id, 7_310_000 + n)  # balances no other number matches
    balances = {
        row["user_id"]: row["balance"]
        for row in await db.fetch("SELECT user_id, balance FROM wallets")
    }
    for reader in people:
        for path, body in (await _reads_of(client, reader, market)).items():
            text = orjson.dumps(body).decode()
            if path != DEMO_ACCOUNTS:  # publishes the seeded accounts' shared password
                assert not (_walk_keys(body) & PRIVATE_FIELDS - {"email"}), (path, body)
            for other in people:
                if other is reader:
                    continue
                assert other.email not in text, (path, "another user's email")
                assert str(balances[other.user_id]) not in text, (path, "another's balance")
            assert "$argon2" not in text, path


async def test_the_own_private_fields_are_only_in_me_and_wallet(
    client: Client, db: asyncpg.Connection
) -> None:
    market = await open_market(client, db)
    me = await (await client.get("/api/v1/me", headers=market.buyer.auth)).json()
    assert me["email"] == market.buyer.email
    assert set(me) & {"password", "password_hash"} == set()
    wallet = await (await client.get("/api/v1/wallet", headers=market.buyer.auth)).json()
    assert set(wallet) == {"balance"}


async def test_every_body_refuses_unknown_and_read_only_fields(
    client: Client, db: asyncpg.Connection
) -> None:
    market = await open_market(client, db)
    spec = await (await client.get("/openapi.json")).json()
    with_bodies = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }
    bodies = valid_bodies(market)
    assert set(bodies) == with_bodies, "a request body this test does not know"
    before = await market_state(db)
    for (method, path), (account, body) in bodies.items():
        schema = spec["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]
        accepted = set(
            spec["components"]["schemas"][schema["schema"]["$ref"].split("/")[-1]]["properties"]
        )
        url = path.replace("{id}", str(market.ids(path)["id"]))
        headers = {**account.auth, "Idempotency-Key": uuid.uuid4().hex, "If-Match": "*"}
        for extra in sorted({"an_unknown_field", *SERVER_DECIDED} - accepted):
            response = await client.request(method, url, json={**body, extra: 1}, headers=headers)
            assert response.status == 422, (method, path, extra, await response.text())
            problem = await response.json()
            assert extra in {error["field"] for error in problem["errors"]}, problem
    assert await market_state(db) == before, "a refused body changed something"
