"""The wallet over HTTP: balance, top-ups, their bounds, and idempotent top-ups."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from server.settings import RateLimit, Settings
from tests.conftest import ClientFactory
from tests.orders_support import (
    REPLAYED,
    TOPUP,
    WALLET,
    balance_of,
    check_money,
    keyed,
    problem,
    quick_account,
    snapshot,
)
from tests.support import Client, sign_up


async def wallet_balance(client: Client, headers: dict[str, str]) -> int:
    response = await client.get(WALLET, headers=headers)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == {"balance"}
    balance: int = body["balance"]
    return balance


async def test_a_new_account_has_an_empty_wallet(client: Client) -> None:
    account = await sign_up(client)
    assert await wallet_balance(client, account.auth) == 0


async def test_the_wallet_needs_a_token(client: Client) -> None:
    assert (await client.get(WALLET)).status == 401
    response = await client.post(TOPUP, json={"amount": 10}, headers={"Idempotency-Key": "k"})
    await problem(response, 401, "invalid-token")


async def test_top_ups_add_up(client: Client, db: asyncpg.Connection, settings: Settings) -> None:
    account = await quick_account(db, settings)
    first = await client.post(TOPUP, json={"amount": 1_500}, headers=keyed(account))
    assert first.status == 200, await first.text()
    assert await first.json() == {"balance": 1_500}
    assert REPLAYED not in first.headers
    second = await client.post(TOPUP, json={"amount": 2_000}, headers=keyed(account))
    assert await second.json() == {"balance": 3_500}
    assert await wallet_balance(client, account.auth) == 3_500
    amounts = await db.fetch(
        "SELECT amount FROM topups WHERE user_id = $1 ORDER BY id", account.user_id
    )
    assert [row["amount"] for row in amounts] == [1_500, 2_000]
    await check_money(db)


@pytest.mark.parametrize("amount", [1, 10_000_000])
async def test_top_up_bounds_are_inclusive(
    client: Client, db: asyncpg.Connection, settings: Settings, amount: int
) -> None:
    account = await quick_account(db, settings)
    response = await client.post(TOPUP, json={"amount": amount}, headers=keyed(account))
    assert response.status == 200, await response.text()
    assert await response.json() == {"balance": amount}


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 0},
        {"amount": -1},
        {"amount": 10_000_001},
        {"amount": "100"},
        {"amount": 1.5},
        {"amount": True},
        {"amount": None},
        {},
        {"amount": 100, "currency": "KRW"},
        {"amount": 100, "balance": 1_000_000},
    ],
)
async def test_invalid_top_ups_are_refused_and_change_nothing(
    client: Client, db: asyncpg.Connection, settings: Settings, body: dict[str, Any]
) -> None:
    account = await quick_account(db, settings, balance=700)
    before = await snapshot(db)
    response = await client.post(TOPUP, json=body, headers=keyed(account))
    problem_body = await problem(response, 422, "validation-failed")
    assert problem_body["errors"]
    assert await snapshot(db) == before
    assert await balance_of(db, account.user_id) == 700


async def test_a_body_that_is_not_json_is_refused(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    account = await quick_account(db, settings)
    malformed = await client.post(
        TOPUP,
        data=b'{"amount": ',
        headers={**keyed(account), "Content-Type": "application/json"},
    )
    await problem(malformed, 400, "malformed-json")
    not_json = await client.post(TOPUP, data=b"amount=5", headers=keyed(account))
    await problem(not_json, 415, "unsupported-media-type")
    assert await balance_of(db, account.user_id) == 0


async def test_a_top_up_without_a_key_is_refused(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    account = await quick_account(db, settings)
    response = await client.post(TOPUP, json={"amount": 100}, headers=account.auth)
    await problem(response, 400, "idempotency-key-missing")
    assert await db.fetchval("SELECT count(*) FROM topups") == 0


@pytest.mark.parametrize("key", ["", "with space", "k" * 256, "키", "tab\there"])
async def test_a_malformed_key_is_refused(
    client: Client, db: asyncpg.Connection, settings: Settings, key: str
) -> None:
    account = await quick_account(db, settings)
    response = await client.post(
        TOPUP, json={"amount": 100}, headers={**account.auth, "Idempotency-Key": key}
    )
    await problem(response, 400, "idempotency-key-invalid")
    assert await db.fetchval("SELECT count(*) FROM topups") == 0


async def test_the_longest_key_is_accepted(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    account = await quick_account(db, settings)
    response = await client.post(TOPUP, json={"amount": 100}, headers=keyed(account, "k" * 255))
    assert response.status == 200, await response.text()


async def test_a_repeated_top_up_is_replayed_not_repeated(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    account = await quick_account(db, settings)
    headers = keyed(account, "topup-1")
    first = await client.post(TOPUP, json={"amount": 5_000}, headers=headers)
    assert first.status == 200
    first_body = await first.read()
    await client.post(TOPUP, json={"amount": 1}, headers=keyed(account))  # moves the balance on

    for _ in range(2):
        again = await client.post(TOPUP, json={"amount": 5_000}, headers=headers)
        assert again.status == 200
        assert again.headers[REPLAYED] == "true"
        assert await again.read() == first_body  # the first answer, not today's balance
    assert await balance_of(db, account.user_id) == 5_001
    assert await db.fetchval("SELECT count(*) FROM topups") == 2
    await check_money(db)


async def test_the_same_key_with_another_body_is_refused(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    account = await quick_account(db, settings)
    headers = keyed(account, "topup-2")
    assert (await client.post(TOPUP, json={"amount": 5_000}, headers=headers)).status == 200
    before = await snapshot(db)
    other = await client.post(TOPUP, json={"amount": 6_000}, headers=headers)
    await problem(other, 422, "idempotency-key-reused")
    assert await snapshot(db) == before
    # The key stays bound to its first body.
    replay = await client.post(TOPUP, json={"amount": 5_000}, headers=headers)
    assert replay.headers[REPLAYED] == "true"
    assert await balance_of(db, account.user_id) == 5_000


async def test_a_key_used_for_another_endpoint_is_refused(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    account = await quick_account(db, settings)
    headers = keyed(account, "shared-key")
    assert (await client.post(TOPUP, json={"amount": 100}, headers=headers)).status == 200
    purchase = await client.post("/api/v1/listings/1/purchase", json={}, headers=headers)
    await problem(purchase, 422, "idempotency-key-reused")


async def test_a_refused_request_does_not_use_up_its_key(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    account = await quick_account(db, settings)
    headers = keyed(account, "retry-me")
    bad = await client.post(TOPUP, json={"amount": 0}, headers=headers)
    await problem(bad, 422, "validation-failed")
    good = await client.post(TOPUP, json={"amount": 300}, headers=headers)
    assert good.status == 200
    assert REPLAYED not in good.headers
    assert await good.json() == {"balance": 300}


async def test_keys_belong_to_one_user(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    alice = await quick_account(db, settings)
    bob = await quick_account(db, settings)
    for account, amount in ((alice, 1_000), (bob, 1_000)):
        response = await client.post(TOPUP, json={"amount": amount}, headers=keyed(account, "same"))
        assert response.status == 200
        assert REPLAYED not in response.headers
        assert await response.json() == {"balance": 1_000}
    assert await balance_of(db, alice.user_id) == 1_000
    assert await balance_of(db, bob.user_id) == 1_000
    assert await db.fetchval("SELECT count(*) FROM topups") == 2
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 2


async def test_a_key_still_running_answers_in_flight(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    account = await quick_account(db, settings)
    # Hold the request's own advisory lock, as a first request still running would.
    async with db.transaction():
        await db.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($2, $1))", account.user_id, "busy"
        )
        response = await client.post(TOPUP, json={"amount": 100}, headers=keyed(account, "busy"))
        await problem(response, 409, "idempotency-key-in-flight")
    assert await balance_of(db, account.user_id) == 0
    after = await client.post(TOPUP, json={"amount": 100}, headers=keyed(account, "busy"))
    assert after.status == 200
    assert REPLAYED not in after.headers


async def test_an_expired_key_runs_again(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    account = await quick_account(db, settings)
    headers = keyed(account, "old")
    assert (await client.post(TOPUP, json={"amount": 100}, headers=headers)).status == 200
    await db.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
    again = await client.post(TOPUP, json={"amount": 100}, headers=headers)
    assert again.status == 200
    assert REPLAYED not in again.headers
    assert await again.json() == {"balance": 200}
    expires = await db.fetchval(
        "SELECT expires_at - created_at FROM idempotency_keys WHERE key = 'old'"
    )
    assert expires.total_seconds() == 24 * 3600


async def test_top_ups_are_rate_limited_as_writes(
    make_client: ClientFactory, db: asyncpg.Connection, settings: Settings
) -> None:
    client = await make_client(settings.replace(rate_limit_writes=RateLimit(2, 60)))
    account = await quick_account(db, settings)
    for _ in range(2):
        assert (await client.post(TOPUP, json={"amount": 1}, headers=keyed(account))).status == 200
    limited = await client.post(TOPUP, json={"amount": 1}, headers=keyed(account))
    await problem(limited, 429, "rate-limited")
    assert "Retry-After" in limited.headers
    assert await balance_of(db, account.user_id) == 2
