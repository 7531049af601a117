"""The queue strategy's batch applied at once (db/migrations/0010_purchase_queue_batch.sql,
0014_purchase_queue_lean.sql):
each listing's row and each wallet written once per batch, locks in the global order,
and every entry answered exactly as the per-entry function of 0009 answered it.

Most tests run twice: against ``purchase_queue_apply()`` and against 0009's per-entry
version, installed as a temporary function of the test's connection, so that the same expectations
hold for both (the outcomes did not change) and the ones that differ show what did.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import asyncpg
import orjson
import pytest

from db.migrate import MIGRATIONS_DIR
from db.queries.outbox import SLOTS, notify_channel
from server.idempotency import KEY_TTL
from server.settings import Settings
from tests.orders_support import (
    balance_of,
    check_listing_events,
    check_money,
    check_order_events,
    check_stock,
    fund,
    listing_stock,
    outbox_rows,
    quick_accounts,
    seq_scans,
    snapshot,
)
from tests.server.test_purchase_function import until_waiting_for

BATCH = "purchase_queue_apply"
PER_ENTRY = "pg_temp.purchase_queue_apply_per_entry"
PARTITION = 3
REPLY = "outcomes"
REGION = "seoul-mapo"
WAIT_TIMEOUT = 20.0

T = TypeVar("T")
Entry = dict[str, str]
Reply = dict[str, Any]


async def install_per_entry(conn: asyncpg.Connection) -> None:
    """0009's purchase_queue_apply(), as it was, as a temporary function of ``conn``."""
    sql = (MIGRATIONS_DIR / "0009_purchase_queue.sql").read_text()
    head = "CREATE FUNCTION purchase_queue_apply("
    await conn.execute(sql[sql.index(head) :].replace(head, f"CREATE FUNCTION {PER_ENTRY}(", 1))


@pytest.fixture(params=["batch", "per_entry"])
async def function(request: pytest.FixtureRequest, db: asyncpg.Connection) -> str:
    if request.param == "per_entry":
        await install_per_entry(db)
        return PER_ENTRY
    return BATCH


class Log:
    """Entries of one partition of the purchase log, numbered in log order."""

    def __init__(self) -> None:
        self.number = 0

    def entry(
        self,
        buyer: int,
        listing: int,
        quantity: int = 1,
        key: str | None = None,
        fingerprint: str = "00",
    ) -> Entry:
        self.number += 1
        return {
            "entry": f"1700000000000-{self.number}", "request": f"r{self.number}",
            "reply": REPLY, "buyer": str(buyer), "listing": str(listing),
            "quantity": str(quantity), "key": key or uuid.uuid4().hex,
            "fingerprint": fingerprint, "status": "201",
        }  # fmt: skip


class Outcomes:
    """The replies NOTIFYed on the reply channel, by request."""

    def __init__(self) -> None:
        self.received: list[Reply] = []
        self.arrived = asyncio.Event()

    async def listen(self, conn: asyncpg.Connection) -> None:
        await conn.add_listener(REPLY, self._delivered)

    def _delivered(self, *args: Any) -> None:
        self.received.append(orjson.loads(args[-1]))
        self.arrived.set()

    async def wait(self, count: int) -> dict[str, Reply]:
        async with asyncio.timeout(WAIT_TIMEOUT):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.sleep(0.05)  # nothing more comes
        replies = {reply["request"]: reply for reply in self.received}
        assert len(replies) == len(self.received) == count, self.received  # one per request
        return replies


@pytest.fixture
async def outcomes(db: asyncpg.Connection) -> Outcomes:
    listening = Outcomes()
    await listening.listen(db)
    return listening


async def apply(conn: asyncpg.Connection, function: str, entries: list[Entry]) -> int:
    applied: int = await conn.fetchval(
        f"SELECT {function}($1, $2::jsonb, $3)",
        PARTITION,
        orjson.dumps(entries).decode(),
        KEY_TTL,
    )
    return applied


async def new_listing(
    db: asyncpg.Connection, seller: int, *, price: int, stock: int, status: str = "on_sale"
) -> int:
    listing_id: int = await db.fetchval(
        "INSERT INTO listings (seller_id, title, price, quantity, category, region, status)"
        " VALUES ($1, 'Camping chair', $2, $3, 'sports', $4, $5) RETURNING id",
        seller,
        price,
        stock,
        REGION,
        status,
    )
    return listing_id


async def orders_in_order(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT id, listing_id, buyer_id, quantity, api_order(o) AS body FROM orders o ORDER BY id"
    )


def bought(request: str, body: str) -> Reply:
    return {"request": request, "replayed": False, "status": 201, "body": body, "region": REGION}


def replayed(request: str, body: str) -> Reply:
    return {"request": request, "replayed": True, "status": 201, "body": body, "region": None}


def refused(request: str, slug: str, detail: str | None = None) -> Reply:
    return {"request": request, "refused": slug, "detail": detail}


async def written(db: asyncpg.Connection, table: str) -> tuple[int, int]:
    """Rows this backend updated and inserted in ``table`` and has not reported yet: the
    current transaction's, plus maybe earlier ones' (compare before and after)."""
    row = await db.fetchrow(
        "SELECT n_tup_upd, n_tup_ins FROM pg_stat_xact_user_tables WHERE relname = $1", table
    )
    assert row is not None
    return row["n_tup_upd"], row["n_tup_ins"]


async def rows_written(db: asyncpg.Connection, write: Awaitable[T]) -> tuple[T, dict[str, int]]:
    """What ``write`` returned, and how many listing and wallet rows it updated and order
    rows it inserted (``db`` must be in a transaction, which ``write`` runs in)."""
    before = {table: await written(db, table) for table in ("listings", "wallets", "orders")}
    result = await write
    after = {table: await written(db, table) for table in ("listings", "wallets", "orders")}
    return result, {
        "listings": after["listings"][0] - before["listings"][0],
        "wallets": after["wallets"][0] - before["wallets"][0],
        "orders": after["orders"][1] - before["orders"][1],
    }


async def test_a_batch_writes_its_listing_row_once_and_a_version_per_order(
    db: asyncpg.Connection, settings: Settings, function: str, outcomes: Outcomes
) -> None:
    """Twelve purchases of one listing by four buyers: the listing's row is updated once
    and each wallet once (the per-entry function updated them once per purchase), by the
    batch's transaction itself, with one version per order; each stock event carries the
    listing as it stood right after its own order."""
    seller, *buyers = await quick_accounts(db, settings, 5, balance=10_000)
    listing_id = await new_listing(db, seller.user_id, price=100, stock=12)
    log = Log()
    entries = [log.entry(buyer.user_id, listing_id) for _ in range(3) for buyer in buyers]
    async with db.transaction():
        applied, rows = await rows_written(db, apply(db, function, entries))
        written_by_top = await db.fetchval(
            "SELECT xmin = pg_current_xact_id()::xid FROM listings WHERE id = $1", listing_id
        )
    assert applied == 12
    if function == BATCH:
        assert rows == {"listings": 1, "wallets": 4, "orders": 12}
        assert written_by_top
    else:  # a row version per purchase, each by a subtransaction of its own
        assert rows == {"listings": 12, "wallets": 12, "orders": 12}
        assert not written_by_top

    assert await db.fetchval("SELECT version FROM listings WHERE id = $1", listing_id) == 1 + 12
    assert await listing_stock(db, listing_id) == (0, "sold")
    orders = await orders_in_order(db)
    assert [order["buyer_id"] for order in orders] == [int(e["buyer"]) for e in entries]
    replies = await outcomes.wait(12)
    assert [replies[e["request"]] for e in entries] == [
        bought(e["request"], order["body"]) for e, order in zip(entries, orders, strict=True)
    ]
    events = [row for row in await outbox_rows(db) if row.channel == f"listing:{listing_id}"]
    stock_changes = [row.data for row in events if row.type == "listing.stock_changed"]
    assert [(d["old_quantity"], d["quantity"], d["version"]) for d in stock_changes] == [
        (12 - n, 11 - n, 2 + n) for n in range(12)
    ]
    assert [d["status"] for d in stock_changes] == ["on_sale"] * 11 + ["sold"]
    assert [row.type for row in events][-2:] == ["listing.stock_changed", "listing.status_changed"]
    sold_out = events[-1].data
    assert (sold_out["quantity"], sold_out["version"], sold_out["old_status"]) == (0, 13, "on_sale")
    for buyer in buyers:
        assert await balance_of(db, buyer.user_id) == 10_000 - 300
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 12
    await check_stock(db, listing_id, 12)
    await check_money(db)
    await check_order_events(db)
    await check_listing_events(db, listing_id)


async def test_a_mixed_batch_answers_each_entry_as_the_per_entry_function_did(
    db: asyncpg.Connection,
    settings: Settings,
    function: str,
    outcomes: Outcomes,
    database_url: str,
) -> None:
    seller, rich, poor, late = await quick_accounts(db, settings, 4)
    for account, balance in ((rich, 1_000), (poor, 150), (late, 1_000)):
        await fund(db, account.user_id, balance)
    listing = await new_listing(db, seller.user_id, price=100, stock=5)
    other = await new_listing(db, seller.user_id, price=30, stock=5)
    reserved = await new_listing(db, seller.user_id, price=10, stock=1, status="reserved")
    hidden = await new_listing(db, seller.user_id, price=10, stock=1, status="hidden")
    log = Log()
    earlier = log.entry(rich.user_id, other, key="earlier", fingerprint="aa")
    assert await apply(db, function, [earlier]) == 1  # an earlier batch stored its response

    a, p, s, b = rich.user_id, poor.user_id, seller.user_id, late.user_id
    batch = [
        log.entry(a, listing, key="a1", fingerprint="01"),  # bought: 4 left
        log.entry(p, listing, key="p1"),  # bought: 3 left, 50 in the wallet
        log.entry(p, listing, key="p2"),  # insufficient funds
        log.entry(p, listing, key="p2"),  # the same again: still insufficient funds
        log.entry(s, listing, key="s1"),  # own listing
        log.entry(a, other, key="earlier", fingerprint="aa"),  # the earlier batch's, replayed
        log.entry(a, listing, key="a1", fingerprint="01"),  # this batch's, replayed
        log.entry(a, listing, key="a1", fingerprint="02"),  # this batch's key, another body
        log.entry(a, other, key="earlier", fingerprint="bb"),  # the earlier key, another body
        log.entry(a, listing, quantity=2, key="a2"),  # bought: 1 left
        log.entry(b, listing, quantity=2, key="b1"),  # insufficient stock
        log.entry(b, listing, key="b2"),  # bought: sold out
        log.entry(b, listing, key="b3"),  # insufficient stock
        log.entry(a, reserved, key="r1"),  # not on sale
        log.entry(a, hidden, key="h1"),  # not found
        log.entry(a, 999_999, key="n1"),  # not found
        log.entry(a, other, key="busy"),  # the key is in flight elsewhere
    ]
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtextextended('busy', $1))", a)
        assert await apply(db, function, batch) == len(batch)
    finally:
        await holder.close()

    replies = await outcomes.wait(1 + len(batch))
    orders = await orders_in_order(db)
    first, a1, p1, a2, b2 = (order["body"] for order in orders)
    request = [e["request"] for e in batch]
    assert [replies[r] for r in request] == [
        bought(request[0], a1),
        bought(request[1], p1),
        refused(request[2], "insufficient-funds", "100 needed"),
        refused(request[3], "insufficient-funds", "100 needed"),
        refused(request[4], "own-listing"),
        replayed(request[5], first),
        replayed(request[6], a1),
        refused(request[7], "idempotency-key-reused"),
        refused(request[8], "idempotency-key-reused"),
        bought(request[9], a2),
        refused(request[10], "insufficient-stock", "1 left"),
        bought(request[11], b2),
        refused(request[12], "insufficient-stock", "0 left"),
        refused(request[13], "listing-not-on-sale"),
        refused(request[14], "listing-not-found"),
        refused(request[15], "listing-not-found"),
        refused(request[16], "idempotency-key-in-flight"),
    ]
    assert [(o["buyer_id"], o["listing_id"], o["quantity"]) for o in orders] == [
        (a, other, 1), (a, listing, 1), (p, listing, 1), (a, listing, 2), (b, listing, 1)
    ]  # fmt: skip
    assert await db.fetchval("SELECT version FROM listings WHERE id = $1", listing) == 1 + 4
    assert await listing_stock(db, listing) == (0, "sold")
    assert await listing_stock(db, other) == (4, "on_sale")
    assert [await balance_of(db, user) for user in (a, p, b)] == [1_000 - 30 - 300, 50, 900]
    keys = await db.fetch("SELECT user_id, key FROM idempotency_keys ORDER BY user_id, key")
    assert {(row["user_id"], row["key"]) for row in keys} == {
        (a, "earlier"), (a, "a1"), (p, "p1"), (a, "a2"), (b, "b2")
    }  # fmt: skip
    assert await db.fetchval(
        "SELECT fingerprint FROM idempotency_keys WHERE user_id = $1 AND key = 'a1'", a
    ) == bytes.fromhex("01")
    await check_stock(db, listing, 5)
    await check_money(db)
    await check_order_events(db)
    await check_listing_events(db, listing)
    await check_listing_events(db, other)


async def test_two_listings_and_several_buyers_in_one_batch(
    db: asyncpg.Connection, settings: Settings, function: str, outcomes: Outcomes
) -> None:
    seller, u1, u2, u3 = await quick_accounts(db, settings, 4, balance=1_000)
    x = await new_listing(db, seller.user_id, price=10, stock=3)
    y = await new_listing(db, seller.user_id, price=20, stock=2)
    log = Log()
    batch = [
        log.entry(u3.user_id, x),
        log.entry(u1.user_id, y),
        log.entry(u2.user_id, x),
        log.entry(u1.user_id, x),
        log.entry(u3.user_id, y),  # y sold out
        log.entry(u2.user_id, y),
        log.entry(u1.user_id, x, quantity=2),  # x sold out before
    ]
    async with db.transaction():
        applied, rows = await rows_written(db, apply(db, function, batch))
    assert applied == 7
    assert (rows["listings"], rows["wallets"]) == ((2, 3) if function == BATCH else (5, 5))
    assert rows["orders"] == 5
    replies = await outcomes.wait(7)
    orders = await orders_in_order(db)
    assert [(o["buyer_id"], o["listing_id"]) for o in orders] == [
        (int(e["buyer"]), int(e["listing"])) for e in batch[:5]
    ]
    request = [e["request"] for e in batch]
    assert [replies[r] for r in request] == [
        *(bought(r, o["body"]) for r, o in zip(request[:5], orders, strict=True)),
        refused(request[5], "insufficient-stock", "0 left"),
        refused(request[6], "insufficient-stock", "0 left"),
    ]
    versions = await db.fetch("SELECT id, version, quantity, status FROM listings ORDER BY id")
    assert [tuple(row) for row in versions] == [(x, 4, 0, "sold"), (y, 3, 0, "sold")]
    assert [await balance_of(db, u.user_id) for u in (u1, u2, u3)] == [970, 990, 970]
    for listing_id, stock in ((x, 3), (y, 2)):
        await check_stock(db, listing_id, stock)
        await check_listing_events(db, listing_id)
    await check_money(db)
    await check_order_events(db)


async def test_entries_applied_already_are_skipped_and_not_answered_again(
    db: asyncpg.Connection, settings: Settings, function: str, outcomes: Outcomes
) -> None:
    seller, buyer = await quick_accounts(db, settings, 2, balance=1_000)
    listing_id = await new_listing(db, seller.user_id, price=10, stock=9)
    log = Log()
    e1, e2, e3, e4 = (log.entry(buyer.user_id, listing_id) for _ in range(4))
    assert await apply(db, function, [e1, e2]) == 2
    await outcomes.wait(2)
    assert await apply(db, function, [e1, e2]) == 0  # met again after a commit: skipped
    assert await apply(db, function, [e1, e2, e3]) == 1
    await outcomes.wait(3)
    # Within a batch too: an entry at or before one applied just before it is skipped.
    assert await apply(db, function, [e4, e4, e3]) == 1
    replies = await outcomes.wait(4)
    assert all(reply.get("replayed") is False for reply in replies.values())
    last = await db.fetchrow(
        "SELECT applied_ms, applied_seq FROM purchase_queue WHERE partition = $1", PARTITION
    )
    assert last is not None and tuple(last) == (1700000000000, 4)
    assert await db.fetchval("SELECT count(*) FROM orders") == 4
    assert await db.fetchval("SELECT version FROM listings WHERE id = $1", listing_id) == 1 + 4
    await check_stock(db, listing_id, 9)
    await check_money(db)
    await check_order_events(db)
    await check_listing_events(db, listing_id)


async def test_a_failure_that_is_no_refusal_aborts_the_whole_batch(
    db: asyncpg.Connection, settings: Settings, function: str, outcomes: Outcomes
) -> None:
    """A zero quantity passes every check, and the order's CHECK constraint fails: nothing
    of the batch stays, nobody is answered, and the batch can be applied again."""
    seller, buyer = await quick_accounts(db, settings, 2, balance=1_000)
    listing_id = await new_listing(db, seller.user_id, price=10, stock=5)
    log = Log()
    good, bad = log.entry(buyer.user_id, listing_id), log.entry(buyer.user_id, listing_id, 0)
    before = await snapshot(db)
    with pytest.raises(asyncpg.CheckViolationError):
        await apply(db, function, [good, bad])
    assert await snapshot(db) == before
    assert await db.fetchval("SELECT count(*) FROM purchase_queue") == 0
    await asyncio.sleep(0.1)
    assert outcomes.received == []
    assert await apply(db, function, [good]) == 1
    assert (await outcomes.wait(1))[good["request"]]["replayed"] is False
    await check_money(db)


async def test_locks_are_taken_in_the_global_order_whatever_the_log_order(
    db: asyncpg.Connection, settings: Settings, function: str, database_url: str
) -> None:
    """The batch waits for the first listing (by id) and then the first wallet (by
    user_id) another transaction holds, without holding any later one meanwhile; the
    per-entry function held what its earlier entries had taken, in log order."""
    seller, low, high = await quick_accounts(db, settings, 3, balance=1_000)
    first = await new_listing(db, seller.user_id, price=10, stock=5)
    second = await new_listing(db, seller.user_id, price=10, stock=5)
    log = Log()
    caller = await asyncpg.connect(database_url)
    holder = await asyncpg.connect(database_url)
    try:
        if function == PER_ENTRY:
            await install_per_entry(caller)
        # (table, its column, the row held, a later row, a batch meeting the later row first)
        cases = [
            ("listings", "id", first, second,
             [log.entry(low.user_id, second), log.entry(low.user_id, first)]),
            ("wallets", "user_id", low.user_id, high.user_id,
             [log.entry(high.user_id, first), log.entry(low.user_id, first)]),
        ]  # fmt: skip
        for held, column, lowest, later, batch in cases:
            async with holder.transaction():
                await holder.execute(f"SELECT FROM {held} WHERE {column} = $1 FOR UPDATE", lowest)
                applying = asyncio.create_task(apply(caller, function, batch))
                await until_waiting_for(db, holder.get_server_pid())
                later_is_free = await free_now(db, held, column, later)
            assert await applying == 2
            assert later_is_free == (function == BATCH), held
    finally:
        await caller.close()
        await holder.close()
    await check_money(db)


async def free_now(db: asyncpg.Connection, table: str, column: str, value: int) -> bool:
    try:
        async with db.transaction():
            await db.execute(f"SELECT FROM {table} WHERE {column} = $1 FOR UPDATE NOWAIT", value)
    except asyncpg.LockNotAvailableError:
        return False
    return True


@pytest.mark.parametrize(
    ("status", "stock", "own", "wanted"),
    [
        ("on_sale", 3, False, 1),
        ("on_sale", 3, False, 3),
        ("on_sale", 3, False, 4),
        ("on_sale", 0, False, 1),
        ("on_sale", 3, True, 1),
        ("sold", 0, False, 1),
        ("sold", 2, True, 1),
        ("reserved", 3, False, 1),
        ("reserved", 3, True, 1),
        ("hidden", 3, False, 1),
        ("hidden", 3, True, 1),
        (None, 0, False, 1),
    ],
)
async def test_a_refusal_answered_is_the_one_purchase_refusal_raises(
    db: asyncpg.Connection,
    settings: Settings,
    status: str | None,
    stock: int,
    own: bool,
    wanted: int,
) -> None:
    seller, buyer = await quick_accounts(db, settings, 2)
    listing_id = 0
    if status is not None:
        listing_id = await new_listing(db, seller.user_id, price=1, stock=stock, status=status)
    who = seller.user_id if own else buyer.user_id
    answered = await db.fetchrow(
        "SELECT * FROM purchase_refusal_reason( (SELECT l FROM listings l WHERE id = $1), $2, $3)",
        listing_id,
        who,
        wanted,
    )
    assert answered is not None
    raised: tuple[str | None, str | None] = (None, None)
    try:
        await db.execute(
            "SELECT purchase_refusal((SELECT l FROM listings l WHERE id = $1), $2, $3)",
            listing_id,
            who,
            wanted,
        )
    except asyncpg.RaiseError as error:
        raised = (error.message, error.detail)
    assert (answered["slug"], answered["detail"]) == raised


async def test_a_batch_writes_the_rows_and_events_the_per_entry_function_wrote(
    db: asyncpg.Connection, settings: Settings
) -> None:
    """The same batch on the same state, once per function, each rolled back: the same
    listings, wallets, orders, events (in the same order) and stored responses, but for
    the order ids and times each run draws anew."""
    await install_per_entry(db)
    seller, a, b, poor = await quick_accounts(db, settings, 4, balance=1_000)
    await db.execute("UPDATE wallets SET balance = 120 WHERE user_id = $1", poor.user_id)
    x = await new_listing(db, seller.user_id, price=100, stock=4)
    y = await new_listing(db, seller.user_id, price=50, stock=1)
    log = Log()
    stored = log.entry(a.user_id, y, key="stored")
    assert await apply(db, BATCH, [stored]) == 1  # 0 of y left now
    batch = [
        log.entry(b.user_id, x, key="b1"),
        log.entry(poor.user_id, x, key="p1"),
        log.entry(a.user_id, x, quantity=2, key="a1"),
        log.entry(poor.user_id, x, key="p2"),  # insufficient funds
        log.entry(a.user_id, x, quantity=2, key="a1"),  # replayed from this batch
        log.entry(a.user_id, x, key="a1", fingerprint="ff"),  # reused
        log.entry(a.user_id, y, key="stored"),  # replayed from the stored response
        log.entry(b.user_id, y, key="b2"),  # insufficient stock
        log.entry(seller.user_id, x, key="s1"),  # own listing
        log.entry(a.user_id, x, quantity=2, key="a2"),  # insufficient stock
        log.entry(a.user_id, x, key="a3"),  # sold out
    ]
    written = []
    for function in (PER_ENTRY, BATCH):
        transaction = db.transaction()
        await transaction.start()
        try:
            assert await apply(db, function, batch) == len(batch)
            written.append(await state_written(db))
        finally:
            await transaction.rollback()
    per_entry, at_once = written
    assert at_once == per_entry
    assert [row[:2] for row in at_once["outbox"]].count(
        (f"listing:{x}", "listing.status_changed")
    ) == 1
    assert len(at_once["orders"]) == 4


async def state_written(db: asyncpg.Connection) -> dict[str, list[Any]]:
    """What purchases write, with the order ids replaced by their rank and the times left
    out (each run draws its own)."""
    orders = await db.fetch("SELECT * FROM orders ORDER BY id")
    rank = {order["id"]: n for n, order in enumerate(orders)}

    def comparable(data: dict[str, Any]) -> dict[str, Any]:
        if "buyer_id" not in data:  # a listing
            return data
        times = ("created_at", "updated_at")
        return {k: rank[v] if k == "id" else v for k, v in data.items() if k not in times}

    outbox = await db.fetch(
        "SELECT channel, type, data::text AS data FROM outbox"
        " WHERE txid = pg_current_xact_id() ORDER BY id"
    )
    keys = await db.fetch(
        "SELECT user_id, key, fingerprint, status_code, response_body,"
        " expires_at - created_at AS ttl FROM idempotency_keys ORDER BY user_id, key"
    )
    listings = await db.fetch("SELECT * FROM listings ORDER BY id")
    wallets = await db.fetch("SELECT user_id, balance FROM wallets ORDER BY user_id")
    return {
        "orders": [{**dict(o), "id": rank[o["id"]], "created_at": None, "updated_at": None}
                   for o in orders],
        "outbox": [(r["channel"], r["type"], comparable(orjson.loads(r["data"]))) for r in outbox],
        "keys": [(*tuple(k)[:4], comparable(orjson.loads(k["response_body"])), k["ttl"])
                 for k in keys],
        "listings": [{**dict(row), "updated_at": None} for row in listings],
        "wallets": [tuple(row) for row in wallets],
    }  # fmt: skip


async def test_a_batch_looks_keys_up_by_index_after_the_tables_were_analyzed_empty(
    db: asyncpg.Connection, settings: Settings
) -> None:
    """Statistics that say the keys and orders are empty (a new database), and a session
    whose calls were all made then: a batch reads the stored keys with one statement, not
    the whole table once per entry. (By index, unless autovacuum has just analyzed the
    grown table: then one scan of its 5,000 rows of one buyer may cost the planner less
    than 20 index probes, and that is fine.)"""
    await db.execute("VACUUM ANALYZE idempotency_keys, orders")
    seller, buyer = await quick_accounts(db, settings, 2, balance=100_000)
    listing_id = await new_listing(db, seller.user_id, price=10, stock=1_000)
    log = Log()
    for _ in range(10):  # more than the five calls after which a generic plan may be kept
        await apply(db, BATCH, [log.entry(buyer.user_id, listing_id)])
    await db.execute(  # then the table grows (many pages) before the next ANALYZE
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, status_code, response_body,"
        " expires_at) SELECT $1, 'stored-' || g, '\\x00', 201, '\\x7b7d', now() + interval '1 day'"
        " FROM generate_series(1, 5000) AS g",
        buyer.user_id,
    )
    async with db.transaction():
        before = await seq_scans(db, "idempotency_keys")
        await apply(db, BATCH, [log.entry(buyer.user_id, listing_id) for _ in range(20)])
        assert await seq_scans(db, "idempotency_keys") - before <= 1  # a plan per entry: 20


async def test_a_batch_wakes_the_relay_of_each_slot_it_wrote_to_once_after_its_commit(
    db: asyncpg.Connection, database_url: str, settings: Settings
) -> None:
    """The outbox rows' trigger stays quiet inside a batch; the batch itself wakes the
    relay's leader of every slot its events went to, once, when it commits."""
    seller, *buyers = await quick_accounts(db, settings, 4, balance=10_000)
    listings = [await new_listing(db, seller.user_id, price=10, stock=5) for _ in range(3)]
    woken: list[int] = []
    arrived = asyncio.Event()

    def wake(slot: int, *_: object) -> None:
        woken.append(slot)
        arrived.set()

    relay = await asyncpg.connect(database_url)
    try:
        for slot in range(SLOTS):
            await relay.add_listener(notify_channel(slot), functools.partial(wake, slot))
        log = Log()
        entries = [log.entry(b.user_id, listing) for b in buyers for listing in listings]
        async with db.transaction():
            assert await apply(db, BATCH, entries) == len(entries)
            await asyncio.sleep(0.2)
            assert woken == []  # nothing before the commit
        slots = {
            slot
            for (slot,) in await db.fetch(
                "SELECT DISTINCT slot FROM outbox WHERE channel = ANY($1::text[])",
                [f"listing:{listing}" for listing in listings]
                + [f"user:{u}" for u in (seller.user_id, *(b.user_id for b in buyers))],
            )
        }
        async with asyncio.timeout(WAIT_TIMEOUT):
            while len(woken) < len(slots):
                arrived.clear()
                await arrived.wait()
        await asyncio.sleep(0.2)  # nothing more comes
        assert sorted(woken) == sorted(slots)
    finally:
        await relay.close()
