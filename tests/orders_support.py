"""Helpers of the wallet, purchase and order tests: funded accounts, snapshots, invariants."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from aiohttp import ClientResponse

from server.auth.tokens import TokenIssuer
from server.errors import PROBLEM_CONTENT_TYPE
from server.settings import PURCHASE_STRATEGIES, Settings
from tests.support import Account

STRATEGIES: tuple[str, ...] = PURCHASE_STRATEGIES
WALLET = "/api/v1/wallet"
TOPUP = "/api/v1/wallet/topup"
ORDERS = "/api/v1/orders"
REPLAYED = "Idempotent-Replayed"

JsonObject = dict[str, Any]


def purchase_url(listing_id: int | str) -> str:
    return f"/api/v1/listings/{listing_id}/purchase"


def order_url(order_id: int | str, action: str | None = None) -> str:
    return f"{ORDERS}/{order_id}" + (f"/{action}" if action else "")


def keyed(account: Account, key: str | None = None) -> dict[str, str]:
    """The account's auth headers plus an Idempotency-Key (a fresh one unless given)."""
    return {**account.auth, "Idempotency-Key": key or uuid.uuid4().hex}


async def problem(response: ClientResponse, status: int, slug: str) -> JsonObject:
    """Check ``response`` is an RFC 9457 problem of ``status`` and type ``slug``; return it."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == PROBLEM_CONTENT_TYPE, text
    body: JsonObject = orjson.loads(text)
    assert body["status"] == status, body
    assert body["type"].endswith("/" + slug), body
    return body


async def fund(db: asyncpg.Connection, user_id: int, amount: int) -> None:
    """Top a wallet up the way the API does: a top-up row and the same credit."""
    async with db.transaction():
        await db.execute("INSERT INTO topups (user_id, amount) VALUES ($1, $2)", user_id, amount)
        await db.execute(
            "UPDATE wallets SET balance = balance + $2 WHERE user_id = $1", user_id, amount
        )


async def quick_accounts(
    db: asyncpg.Connection, settings: Settings, count: int, balance: int = 0
) -> list[Account]:
    """Users with wallets made straight in SQL (no password hashing) and valid access tokens."""
    issuer = TokenIssuer(settings)
    emails = [f"buyer-{uuid.uuid4().hex[:12]}@example.com" for _ in range(count)]
    async with db.transaction():
        rows = await db.fetch(
            "INSERT INTO users (email, password_hash, nickname, region)"
            " SELECT e, 'not-a-hash', 'quick', 'seoul-mapo'"
            " FROM unnest($1::text[]) WITH ORDINALITY AS t(e, n) ORDER BY n RETURNING id, email",
            emails,
        )
        ids = {row["email"]: row["id"] for row in rows}
        await db.execute(
            "INSERT INTO wallets (user_id) SELECT unnest($1::bigint[])", list(ids.values())
        )
    accounts = [
        Account(ids[email], email, issuer.issue_access(ids[email], uuid.uuid4()), "")
        for email in emails
    ]
    if balance:
        for account in accounts:
            await fund(db, account.user_id, balance)
    return accounts


async def quick_account(db: asyncpg.Connection, settings: Settings, balance: int = 0) -> Account:
    return (await quick_accounts(db, settings, 1, balance))[0]


def listing_body(price: int, quantity: int) -> JsonObject:
    return {"title": "Camping chair", "price": price, "quantity": quantity, "category": "sports"}


async def balance_of(db: asyncpg.Connection, user_id: int) -> int:
    value: int = await db.fetchval("SELECT balance FROM wallets WHERE user_id = $1", user_id)
    return value


async def listing_stock(db: asyncpg.Connection, listing_id: int) -> tuple[int, str]:
    row = await db.fetchrow("SELECT quantity, status FROM listings WHERE id = $1", listing_id)
    assert row is not None
    return row["quantity"], row["status"]


@dataclass(frozen=True, slots=True)
class State:
    """Everything a refused or failed money-moving request must leave exactly as it was."""

    listings: tuple[tuple[int, int, str, int, int], ...]
    wallets: tuple[tuple[int, int], ...]
    topups: int
    orders: tuple[tuple[int, str], ...]
    outbox: int
    idempotency_keys: int


async def snapshot(db: asyncpg.Connection) -> State:
    listings = await db.fetch(
        "SELECT id, quantity, status, version, fence FROM listings ORDER BY id"
    )
    wallets = await db.fetch("SELECT user_id, balance FROM wallets ORDER BY user_id")
    orders = await db.fetch("SELECT id, status FROM orders ORDER BY id")
    return State(
        listings=tuple(tuple(row) for row in listings),
        wallets=tuple((row["user_id"], row["balance"]) for row in wallets),
        topups=await db.fetchval("SELECT count(*) FROM topups"),
        orders=tuple((row["id"], row["status"]) for row in orders),
        outbox=await db.fetchval("SELECT count(*) FROM outbox"),
        idempotency_keys=await db.fetchval("SELECT count(*) FROM idempotency_keys"),
    )


async def check_money(db: asyncpg.Connection) -> None:
    """Money is never created or lost, globally and for every single wallet."""
    total = await db.fetchrow(
        "SELECT (SELECT coalesce(sum(balance), 0) FROM wallets) AS balances,"
        " (SELECT coalesce(sum(amount), 0) FROM orders WHERE status = 'paid') AS escrow,"
        " (SELECT coalesce(sum(amount), 0) FROM topups) AS topups,"
        " (SELECT count(*) FROM wallets WHERE balance < 0) AS negative"
    )
    assert total is not None
    assert total["negative"] == 0
    assert total["balances"] + total["escrow"] == total["topups"], dict(total)
    wrong = await db.fetch(
        "SELECT w.user_id, w.balance,"
        " coalesce((SELECT sum(amount) FROM topups t WHERE t.user_id = w.user_id), 0)"
        " - coalesce((SELECT sum(amount) FROM orders o WHERE o.buyer_id = w.user_id"
        "            AND o.status IN ('paid', 'completed')), 0)"
        " + coalesce((SELECT sum(amount) FROM orders o WHERE o.seller_id = w.user_id"
        "            AND o.status = 'completed'), 0) AS expected"
        " FROM wallets w"
    )
    mismatched = [dict(row) for row in wrong if row["balance"] != row["expected"]]
    assert not mismatched, mismatched


async def check_stock(db: asyncpg.Connection, listing_id: int, initial: int) -> None:
    """No oversell: what paid and completed orders hold is exactly what left the stock."""
    row = await db.fetchrow(
        "SELECT l.quantity, l.status, coalesce((SELECT sum(o.quantity) FROM orders o"
        "  WHERE o.listing_id = l.id AND o.status IN ('paid', 'completed')), 0) AS sold"
        " FROM listings l WHERE l.id = $1",
        listing_id,
    )
    assert row is not None
    assert row["quantity"] >= 0
    assert row["sold"] == initial - row["quantity"], dict(row)
    if row["status"] in ("on_sale", "sold"):
        assert (row["status"] == "sold") == (row["quantity"] == 0), dict(row)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    channel: str
    type: str
    data: JsonObject


async def outbox_rows(db: asyncpg.Connection, after_id: int = 0) -> list[OutboxRow]:
    rows = await db.fetch(
        "SELECT id, channel, type, data::text AS data FROM outbox WHERE id > $1 ORDER BY id",
        after_id,
    )
    return [OutboxRow(r["id"], r["channel"], r["type"], orjson.loads(r["data"])) for r in rows]


async def last_outbox_id(db: asyncpg.Connection) -> int:
    value: int = await db.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    return value


async def check_order_events(db: asyncpg.Connection) -> None:
    """Every order has exactly one event of each kind its status implies, per party."""
    orders = await db.fetch("SELECT id, buyer_id, seller_id, status FROM orders")
    counts: Counter[tuple[str, str, int]] = Counter()
    for row in await outbox_rows(db):
        if row.type.startswith("order."):
            counts[(row.channel, row.type, row.data["id"])] += 1
    expected: Counter[tuple[str, str, int]] = Counter()
    for order in orders:
        kinds = ["order.paid"]
        if order["status"] != "paid":
            kinds.append(f"order.{order['status']}")
        for kind in kinds:
            for party in (order["buyer_id"], order["seller_id"]):
                expected[(f"user:{party}", kind, order["id"])] += 1
    assert counts == expected


async def check_listing_events(db: asyncpg.Connection, listing_id: int) -> None:
    """The listing's stock events chain up (each starts where the last ended) to its stock now."""
    quantity, status = await listing_stock(db, listing_id)
    events = [
        row
        for row in await outbox_rows(db)
        if row.channel == f"listing:{listing_id}" and row.type == "listing.stock_changed"
    ]
    if not events:
        return
    for earlier, later in itertools.pairwise(events):
        assert later.data["old_quantity"] == earlier.data["quantity"], (earlier, later)
    assert events[-1].data["quantity"] == quantity
    assert events[-1].data["status"] == status
    flips = sum((e.data["old_quantity"] == 0) != (e.data["quantity"] == 0) for e in events)
    status_events = [
        row
        for row in await outbox_rows(db)
        if row.channel == f"listing:{listing_id}" and row.type == "listing.status_changed"
    ]
    assert len(status_events) == flips, (flips, status_events)


async def check_invariants(db: asyncpg.Connection, listing_id: int, initial: int) -> None:
    """Every invariant at once: no oversell, money conserved, events consistent."""
    await check_stock(db, listing_id, initial)
    await check_money(db)
    await check_order_events(db)
    await check_listing_events(db, listing_id)


async def seq_scans(db: asyncpg.Connection, table: str) -> int:
    """Sequential scans of ``table`` by this backend's current transaction."""
    scans: int = await db.fetchval(
        "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = $1", table
    )
    return scans
