"""Purchase benchmark: 500 buyers on one listing per strategy, checked, against pgbench."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import re
import shlex
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import redis
import uvloop

from db.queries import idempotency as idempotency_queries
from db.queries import listings as listing_queries
from db.queries import orders as order_queries
from db.queries import wallets as wallet_queries
from db.queries.outbox import Event, insert_events
from loadtests.harness.processes import (
    BenchError,
    background,
    jangteo_command,
    run_checked,
    server_problems,
)
from loadtests.harness.results import Machine, Result, versions
from loadtests.harness.results import load_average as current_load
from loadtests.harness.stack import database_note, fresh_database, services, wait_ready
from loadtests.harness.stats import summary_ms
from loadtests.harness.tools import pgbench
from server.auth.tokens import TokenIssuer
from server.embedded.process import free_port
from server.idempotency import KEY_TTL
from server.orders.purchase import OPTIMISTIC_ATTEMPTS, OPTIMISTIC_BACKOFF_S
from server.settings import PURCHASE_STRATEGIES, Settings

BENCH_DATABASE = "jangteo_bench_purchase"
WORKERS = 2
JWT_SECRET = "bench-purchase-only-not-a-real-secret-0123456789abcdef"  # noqa: S105
# A listing id and region of their own, so the Redis keys the server touches (purchase
# lock, fencing counter, cache generations) never collide with a development server's.
LISTING_ID = 900_000_001
REGION = "bench-purchase"
SELLER_EMAIL = "seller@bench-purchase.example.com"
TABLES = (
    "users, refresh_tokens, listings, listing_photos, listing_likes, outbox, wallets, topups,"
    " orders, idempotency_keys"
)
# The SQL script each strategy's pgbench baseline runs; redis_lock's database work is the
# atomic conditional UPDATE (plus a fencing predicate): its lock lives in Redis.
BASELINE_SCRIPT = {
    "atomic": "atomic",
    "pessimistic": "pessimistic",
    "optimistic": "optimistic",
    "redis_lock": "atomic",
}


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Fixture:
    """The data every run starts from: one seller, ``buyers`` funded buyers, one listing."""

    buyers: int
    stock: int
    price: int
    purchases_funded: int  # each buyer's top-up covers this many purchases

    @property
    def funds_per_buyer(self) -> int:
        return self.price * self.purchases_funded


@dataclass(frozen=True, slots=True)
class Seeded:
    seller_id: int
    buyer_ids: list[int]


async def reset_data(url: str, fixture: Fixture) -> Seeded:
    """Empty every table and seed the fixture with plain SQL (no sign-ups, no argon2)."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
            await conn.execute(
                "INSERT INTO users (email, password_hash, nickname, region)"
                " VALUES ($1, '!', 'bench seller', $2)",
                SELLER_EMAIL,
                REGION,
            )
            await conn.execute(
                "INSERT INTO users (email, password_hash, nickname, region)"
                " SELECT 'buyer-' || g || '@bench-purchase.example.com', '!', 'buyer ' || g, $2"
                " FROM generate_series(1, $1::int) AS g ORDER BY g",
                fixture.buyers,
                REGION,
            )
            await conn.execute("INSERT INTO wallets (user_id) SELECT id FROM users")
            await conn.execute(
                "INSERT INTO topups (user_id, amount) SELECT id, $2 FROM users WHERE email <> $1",
                SELLER_EMAIL,
                fixture.funds_per_buyer,
            )
            await conn.execute(
                "UPDATE wallets w SET balance = w.balance + t.amount, updated_at = now()"
                " FROM topups t WHERE t.user_id = w.user_id"
            )
            seller_id: int = await conn.fetchval(
                "SELECT id FROM users WHERE email = $1", SELLER_EMAIL
            )
            await conn.execute(
                "INSERT INTO listings (id, seller_id, title, description, price, quantity,"
                " category, region) OVERRIDING SYSTEM VALUE"
                " VALUES ($1, $2, 'benchmark listing', 'many buyers, one listing', $3, $4,"
                " 'etc', $5)",
                LISTING_ID,
                seller_id,
                fixture.price,
                fixture.stock,
                REGION,
            )
            rows = await conn.fetch("SELECT id FROM users WHERE id <> $1 ORDER BY id", seller_id)
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")  # every run starts without a pending checkpoint
    finally:
        await conn.close()
    buyer_ids = [row["id"] for row in rows]
    if buyer_ids != list(range(buyer_ids[0], buyer_ids[0] + len(buyer_ids))):
        raise BenchError("buyer ids are not contiguous; pgbench's random(first, last) needs that")
    return Seeded(seller_id, buyer_ids)


def clear_redis_keys(redis_url: str) -> None:
    """Forget the benchmark listing's lock, fencing counter and cache generation."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(
            f"lock:listing:{LISTING_ID}",
            f"fence:listing:{LISTING_ID}",
            f"cache:listing:{LISTING_ID}:gen",
            f"cache:feed:{REGION}:gen",
        )
    finally:
        client.close()


async def check_invariants(
    url: str, fixture: Fixture, created_201: int | None, order_ids: Sequence[int] | None
) -> dict[str, Any]:
    """The invariants after a run, checked in SQL; ``ok`` is False when any fails.

    ``created_201`` and ``order_ids`` (what the clients saw) are None for pgbench runs,
    which answer nobody.
    """
    conn = await asyncpg.connect(url)
    try:
        listing = await conn.fetchrow(
            "SELECT quantity, status, version FROM listings WHERE id = $1", LISTING_ID
        )
        orders = await conn.fetchrow(
            "SELECT count(*) AS n,"
            " coalesce(sum(quantity) FILTER (WHERE status IN ('paid', 'completed')), 0) AS sold,"
            " coalesce(sum(amount) FILTER (WHERE status = 'paid'), 0) AS escrow,"
            " count(*) FILTER (WHERE amount <> quantity * unit_price) AS mispriced"
            " FROM orders"
        )
        wallets = await conn.fetchrow(
            "SELECT coalesce(sum(balance), 0) AS total, coalesce(min(balance), 0) AS lowest,"
            " count(*) FILTER (WHERE balance < 0) AS negative FROM wallets"
        )
        topups = int(await conn.fetchval("SELECT coalesce(sum(amount), 0) FROM topups"))
        events = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE type = 'order.paid') AS paid,"
            " count(*) FILTER (WHERE type = 'listing.stock_changed') AS stock_changed,"
            " count(*) FILTER (WHERE type = 'listing.status_changed') AS status_changed"
            " FROM outbox"
        )
        stored: int = await conn.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE status_code = 201"
        )
        db_ids: set[int] = {
            row["id"] for row in await conn.fetch("SELECT id FROM orders WHERE status = 'paid'")
        }
    finally:
        await conn.close()
    assert listing is not None and orders is not None and wallets is not None
    assert events is not None
    n_orders = int(orders["n"])
    sold = int(orders["sold"])
    quantity = int(listing["quantity"])
    checks: dict[str, bool] = {
        "no_oversell": quantity >= 0 and fixture.stock - quantity == sold,
        "money_conserved": int(wallets["total"]) + int(orders["escrow"]) == topups,
        "no_negative_balance": int(wallets["negative"]) == 0 and int(wallets["lowest"]) >= 0,
        "order_amounts": int(orders["mispriced"]) == 0,
        "events_per_order": events["paid"] == 2 * n_orders
        and events["stock_changed"] == n_orders
        and events["status_changed"] == (1 if listing["status"] == "sold" else 0),
        "stored_response_per_order": stored == n_orders,
        "one_version_bump_per_order": int(listing["version"]) - 1 == n_orders,
    }
    if created_201 is not None and order_ids is not None:
        seen = set(order_ids)
        checks["one_order_per_201"] = (
            n_orders == created_201 and len(seen) == len(order_ids) and seen == db_ids
        )
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "figures": {
            "initial_stock": fixture.stock,
            "stock_left": quantity,
            "listing_status": listing["status"],
            "listing_version": int(listing["version"]),
            "orders": n_orders,
            "quantity_sold": sold,
            "escrow": int(orders["escrow"]),
            "sum_balances": int(wallets["total"]),
            "sum_topups": topups,
            "lowest_balance": int(wallets["lowest"]),
            "events_order_paid": int(events["paid"]),
            "events_stock_changed": int(events["stock_changed"]),
            "stored_201_responses": stored,
            "responses_201": created_201,
        },
    }


async def connection_room(admin_url: str) -> tuple[int, int]:
    """Connections PostgreSQL grants ordinary users, and client backends other than ours."""
    conn = await asyncpg.connect(admin_url)
    try:
        row = await conn.fetchrow(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
            " - current_setting('reserved_connections')::int AS room,"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            "  AND pid <> pg_backend_pid()) AS others"
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["room"]), int(row["others"])


def ensure_connection_room(
    admin_url: str, needed: int, env: Mapping[str, str], embedded: bool, wait: float
) -> str | None:
    """Make room for ``needed`` connections; restarts the embedded stack when it is idle.

    Returns the restart command when one was run. A cluster used by someone else right
    now is never restarted: the run waits up to ``wait`` seconds for it to go quiet.
    """
    room, others = asyncio.run(connection_room(admin_url))
    if room >= needed:
        return None
    if not embedded:
        raise BenchError(
            f"PostgreSQL grants {room} connections, pgbench needs {needed}: raise max_connections"
        )
    deadline = time.monotonic() + wait
    while others > 0:
        if time.monotonic() > deadline:
            raise BenchError(
                f"PostgreSQL grants {room} connections, pgbench needs {needed}, and {others}"
                " other client(s) are connected, so it was not restarted. When it is idle, run"
                " `jangteo services stop && jangteo services start` (the embedded server"
                " allows 600) and run this benchmark again."
            )
        print(f"  waiting for {others} other PostgreSQL client(s) to leave ...", flush=True)
        time.sleep(2)
        room, others = asyncio.run(connection_room(admin_url))
    stop, start = jangteo_command("services", "stop"), jangteo_command("services", "start")
    print(f"$ {shlex.join(stop)} && {shlex.join(start)}   (max_connections too low)", flush=True)
    run_checked(stop, env)
    run_checked(start, env)
    room, _ = asyncio.run(connection_room(admin_url))
    if room < needed:
        raise BenchError(f"PostgreSQL grants {room} connections after a restart, need {needed}")
    return f"{shlex.join(stop)} && {shlex.join(start)}"


# ----------------------------------------------------------------------------- HTTP load


@dataclass(frozen=True, slots=True)
class ClientJob:
    """What one client process drives: its buyers' tokens and the shared schedule."""

    url: str
    tokens: list[str]
    start_at: float  # wall clock (time.time()) when every buyer starts
    warmup: float
    duration: float
    timeout: float


@dataclass(slots=True)
class ClientResult:
    """What one client process saw. ``measured*`` cover responses ending in the window."""

    measured: Counter[str] = field(default_factory=Counter)
    measured_paid_latency: list[float] = field(default_factory=list)
    measured_latency: list[float] = field(default_factory=list)
    paid_by_second: Counter[int] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)
    order_ids: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0
    late_start: float = 0.0


def outcome(status: int, body: bytes) -> str:
    """'201', or the status with the problem type's last segment: '409 insufficient-stock'."""
    if status == 201:
        return "201"
    try:
        problem = orjson.loads(body)
        slug = str(problem.get("type", "")).rstrip("/").rsplit("/", 1)[-1]
    except (orjson.JSONDecodeError, AttributeError):
        slug = ""
    return f"{status} {slug}".strip()


async def _buyer(
    session: aiohttp.ClientSession,
    job: ClientJob,
    token: str,
    measure_from: float,
    stop: float,
    result: ClientResult,
) -> None:
    body = b'{"quantity":1}'
    base = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    while time.monotonic() < stop:
        headers = {**base, "Idempotency-Key": str(uuid.uuid4())}
        started = time.monotonic()
        try:
            async with session.post(job.url, data=body, headers=headers) as response:
                status, payload = response.status, await response.read()
            label = outcome(status, payload)
        except (aiohttp.ClientError, TimeoutError) as error:
            status, payload, label = 0, b"", f"client-error {type(error).__name__}"
        ended = time.monotonic()
        result.total[label] += 1
        if status == 201:
            result.order_ids.append(int(orjson.loads(payload)["id"]))
        if measure_from <= ended < stop:
            result.measured[label] += 1
            result.measured_latency.append(ended - started)
            if status == 201:
                result.measured_paid_latency.append(ended - started)
                result.paid_by_second[int(ended - measure_from)] += 1
        if status == 0:
            await asyncio.sleep(0.1)  # no hot loop on a refused connection


async def _drive(job: ClientJob) -> ClientResult:
    result = ClientResult()
    start = job.start_at - time.time() + time.monotonic()
    measure_from = start + job.warmup
    stop = measure_from + job.duration
    connector = aiohttp.TCPConnector(limit=len(job.tokens))
    timeout = aiohttp.ClientTimeout(total=job.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        result.late_start = max(0.0, time.monotonic() - start)
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        buyers = [
            asyncio.create_task(_buyer(session, job, token, measure_from, stop, result))
            for token in job.tokens
        ]
        await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
        cpu = time.process_time()
        await asyncio.sleep(max(0.0, stop - time.monotonic()))
        result.cpu_seconds = time.process_time() - cpu
        await asyncio.gather(*buyers)  # in-flight requests finish: their orders count too
    return result


def drive(job: ClientJob) -> ClientResult:
    """Run one client process's buyers to the end of the schedule (a process pool target)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_drive(job))


def load_purchases(
    url: str, tokens: Sequence[str], processes: int, warmup: float, duration: float
) -> dict[str, Any]:
    """Drive every buyer at once from ``processes`` client processes; merge what they saw."""
    shares = [list(tokens[index::processes]) for index in range(processes)]
    start_at = time.time() + 3.0  # time for the client processes to start and import
    jobs = [ClientJob(url, share, start_at, warmup, duration, 120.0) for share in shares]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        parts = list(pool.map(drive, jobs))
    measured: Counter[str] = Counter()
    total: Counter[str] = Counter()
    paid: list[float] = []
    every: list[float] = []
    order_ids: list[int] = []
    by_second: Counter[int] = Counter()
    for part in parts:
        by_second.update(part.paid_by_second)
        measured.update(part.measured)
        total.update(part.total)
        paid += part.measured_paid_latency
        every += part.measured_latency
        order_ids += part.order_ids
    return {
        "measured_seconds": duration,
        "paid_per_second": round(measured["201"] / duration, 1),
        "responses_per_second": round(sum(measured.values()) / duration, 1),
        "statuses": dict(sorted(measured.items())),
        "statuses_whole_run": dict(sorted(total.items())),
        "paid_each_second": [by_second[second] for second in range(int(duration))],
        "latency_ms_201": summary_ms(paid),
        "latency_ms_all": summary_ms(every),
        "client_cpu_share_per_process": [round(p.cpu_seconds / duration, 3) for p in parts],
        "client_late_start_s": [round(p.late_start, 3) for p in parts],
        "order_ids": order_ids,
    }


# ----------------------------------------------------------------------------- pgbench


class Recorder:
    """Stands in for an asyncpg connection: keeps the SQL a ``db.queries`` function sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    def get_server_pid(self) -> int:
        return 0

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any]:
        self.sent.append((sql, args))
        return {}

    async def fetchval(self, sql: str, *args: Any) -> int:
        self.sent.append((sql, args))
        return 0

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.sent.append((sql, args))
        return []

    async def execute(self, sql: str, *args: Any) -> str:
        self.sent.append((sql, args))
        return ""

    async def executemany(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        self.sent += [(sql, row) for row in rows]


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(map(str, value)) + "]"
    return str(value)


def sql_of(call: Coroutine[Any, Any, Any], recorder: Recorder, suffix: str = ";") -> list[str]:
    """The statements ``call`` (a db.queries function on ``recorder``) sends, as pgbench
    script lines: each ``$n`` replaced by its argument, a pgbench variable or expression."""
    with suppress(StopIteration):
        call.send(None)  # the recorder never suspends: the call runs to its end at once
    lines = []
    for sql, args in recorder.sent:
        values = [_literal(value) for value in args]

        def value(match: re.Match[str], values: list[str] = values) -> str:
            return values[int(match.group(1)) - 1]

        lines.append(re.sub(r"\$(\d+)", value, sql) + suffix)
    recorder.sent.clear()
    return lines


def X(expression: str) -> Any:
    """A pgbench variable or SQL expression passed where the query function takes a value."""
    return expression


# The columns the script's ``\gset``/``\aset`` store, rebuilt as the order and listing
# bodies the server writes into its events and stored response.
_ORDER_JSON = (
    "'id', :o_id::bigint, 'listing_id', :o_listing_id::bigint, 'buyer_id', :o_buyer_id::bigint,"
    " 'seller_id', :o_seller_id::bigint, 'quantity', :o_quantity::int,"
    " 'unit_price', :o_unit_price::bigint, 'amount', :o_amount::bigint,"
    " 'status', :o_status::text, 'created_at', :o_created_at::timestamptz,"
    " 'updated_at', :o_updated_at::timestamptz"
)
_LISTING_JSON = (
    "'id', :l_id::bigint, 'seller_id', :l_seller_id::bigint, 'title', :l_title::text,"
    " 'price', :l_price::bigint, 'quantity', :l_quantity::int, 'category', :l_category::text,"
    " 'region', :l_region::text, 'status', :l_status::text, 'like_count', :l_like_count::int,"
    " 'version', :l_version::int"
)
# The db.queries functions the server's purchase path calls, and so the scripts run.
QUERIES = {
    "idempotency": ("try_lock", "stored", "store"),
    "listings": ("stock_row", "take_stock_if_available", "set_stock_if_version"),
    "wallets": ("lock_wallets", "debit_if_covered"),
    "orders": ("insert_order",),
    "outbox": ("insert_events",),
}


def _event(channel: str, kind: str, data: str) -> Event:
    return Event(X(channel), X(f"'{kind}'"), X(f"jsonb_build_object({data})"))


def _pay_and_commit(r: Any) -> list[str]:
    """After the stock is taken (l_* set): debit, order, events, stored response, COMMIT."""
    paid = _event("'user:' || :buyer", "order.paid", _ORDER_JSON)
    seller_paid = _event("'user:' || :l_seller_id", "order.paid", _ORDER_JSON)
    stock = f"{_LISTING_JSON}, 'old_quantity', :l_quantity::int + 1"
    status = f"{_LISTING_JSON}, 'old_status', 'on_sale'::text"
    ttl = f"interval '{int(KEY_TTL.total_seconds())} seconds'"
    body = f"convert_to(json_build_object({_ORDER_JSON})::text, 'UTF8')"
    order = order_queries.insert_order(
        r, listing_id=X(":l_id"), buyer_id=X(":buyer"), seller_id=X(":l_seller_id"),
        quantity=X("1"), unit_price=X(":l_price"),
    )  # fmt: skip
    return [
        "\\set amount :l_price * 1",
        "\\set w_balance -1",
        *sql_of(
            wallet_queries.debit_if_covered(r, X(":buyer"), X(":amount::bigint")), r, " \\aset w_"
        ),
        "\\if :w_balance < 0",
        "ROLLBACK;",
        "\\else",
        *sql_of(order, r, " \\gset o_"),
        "\\startpipeline",  # asyncpg's executemany pipelines its rows; so does this block
        *sql_of(
            insert_events(
                r,
                [paid, seller_paid, _event("'listing:' || :l_id", "listing.stock_changed", stock)],
            ),
            r,
        ),
        "\\endpipeline",
        "\\if :l_quantity = 0",
        *sql_of(
            insert_events(r, [_event("'listing:' || :l_id", "listing.status_changed", status)]), r
        ),
        "\\endif",
        *sql_of(
            idempotency_queries.store(
                r,
                user_id=X(":buyer"),
                key=X(":k::text"),
                fingerprint=X("sha256(convert_to(:k::text, 'UTF8'))"),
                status_code=201,
                body=X(body),
                ttl=X(ttl),
            ),
            r,
        ),
        "COMMIT;",
        "\\endif",
    ]


def pgbench_script(name: str, seeded: Seeded) -> str:
    """The purchase transaction of one strategy as a pgbench script, statement for statement.

    Each statement is generated from the server's own query function (db/queries), run on
    a ``Recorder`` with pgbench variables for its arguments, and sent prepared as asyncpg
    sends it; client-side decisions (stock left, version matched, balance covered) become
    ``\\if`` on values the statements return. Idempotency keys are random integers.
    """
    r = Recorder()
    conn: Any = r
    head = [
        f"\\set buyer random({seeded.buyer_ids[0]}, {seeded.buyer_ids[-1]})",
        "\\set k random(1, 9000000000000000000)",
        "BEGIN;",
        *sql_of(idempotency_queries.try_lock(conn, X(":buyer"), X(":k::text")), r),
        *sql_of(idempotency_queries.stored(conn, X(":buyer"), X(":k::text")), r),
    ]
    take = listing_queries.take_stock_if_available(
        conn, LISTING_ID, X("1"), X(":buyer"), X("NULL::bigint")
    )
    versioned = [
        "\\set newq :s_quantity - 1",
        "\\set expected :s_version",
        "\\set l_version 0",
        *sql_of(listing_queries.set_stock_if_version(
            conn, LISTING_ID, X(":newq::int"), X(":expected::int")
        ), r, " \\aset l_"),
    ]  # fmt: skip
    body: list[str]
    if name == "atomic":
        body = ["\\set l_version 0", *sql_of(take, r, " \\aset l_"), "\\if :l_version = 0",
                "ROLLBACK;", "\\else", *_pay_and_commit(conn), "\\endif"]  # fmt: skip
    elif name == "pessimistic":
        lock = wallet_queries.lock_wallets(conn, [X(str(seeded.seller_id)), X(":buyer")])
        body = [
            *sql_of(listing_queries.stock_row(conn, LISTING_ID, lock=True), r, " \\gset s_"),
            "\\if :s_quantity < 1", "ROLLBACK;", "\\else", *sql_of(lock, r),
            *versioned, *_pay_and_commit(conn), "\\endif",
        ]  # fmt: skip
    elif name == "optimistic":
        read = sql_of(listing_queries.stock_row(conn, LISTING_ID, lock=False), r, " \\gset s_")
        body = ["\\set done 0"]
        for attempt in range(OPTIMISTIC_ATTEMPTS):
            backoff_us = int(OPTIMISTIC_BACKOFF_S * 1e6) * 2**attempt
            body += [
                "\\if :done = 0", *read, "\\if :s_quantity < 1", "\\set done -1", "\\else",
                *versioned, "\\if :l_version > 0", "\\set done 1", "\\else",
                f"\\set backoff random(0, {backoff_us})", "\\sleep :backoff us",
                "\\endif", "\\endif", "\\endif",
            ]  # fmt: skip
        body += ["\\if :done = 1", *_pay_and_commit(conn), "\\else", "ROLLBACK;", "\\endif"]
    else:
        raise ValueError(f"no pgbench script named {name!r}")
    take.close()
    return "\n".join([*head, *body]) + "\n"


async def count_orders(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        value: int = await conn.fetchval("SELECT count(*) FROM orders")
        return value
    finally:
        await conn.close()


async def run_baseline(
    url: str, fixture: Fixture, name: str, clients: int, seconds: int, scratch: Path
) -> dict[str, Any]:
    """Fresh data, then pgbench with the strategy's script; paid orders/s and invariants."""
    load_average = current_load()
    seeded = await reset_data(url, fixture)
    script = scratch / f"purchase_{name}.sql"
    script.write_text(pgbench_script(name, seeded))
    command, report = await asyncio.to_thread(
        pgbench, url, script, clients=clients, seconds=seconds, threads=WORKERS
    )
    orders = await count_orders(url)
    # tps counts refused purchases too; the orders committed tell how many of them paid.
    paid_share = min(1.0, orders / report["transactions"]) if report["transactions"] else 0.0
    report["load_average_at_start"] = load_average
    report["orders_committed"] = orders
    report["paid_per_second"] = round(report["tps"] * paid_share, 1)
    report["invariants"] = await check_invariants(url, fixture, None, None)
    report["command"] = command
    report["script"] = name
    return report


# ----------------------------------------------------------------------------- one strategy


async def run_strategy(
    strategy: str,
    *,
    url: str,
    env: Mapping[str, str],
    fixture: Fixture,
    args: argparse.Namespace,
    scratch: Path,
) -> dict[str, Any]:
    """Fresh data, serve with ``strategy``, load it, stop it, check the invariants."""
    load_average = current_load()
    seeded = await reset_data(url, fixture)
    clear_redis_keys(env["JANGTEO_REDIS_URL"])
    issuer = TokenIssuer(Settings(jwt_secret=JWT_SECRET))
    tokens = [issuer.issue_access(buyer, uuid.uuid4()) for buyer in seeded.buyer_ids]
    port = free_port()
    overrides = {
        "JANGTEO_DATABASE_URL": url,
        "JANGTEO_RATE_LIMITS": "off",
        "JANGTEO_ACCESS_LOG": "off",
        "JANGTEO_LOG_LEVEL": "WARNING",
        "JANGTEO_PURCHASE_STRATEGY": strategy,
        "JANGTEO_JWT_SECRET": JWT_SECRET,
        "JANGTEO_PG_POOL_MAX": str(args.pool_max),
    }
    serve = jangteo_command(
        "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(WORKERS)
    )
    shown = {**overrides, "JANGTEO_JWT_SECRET": "<fixed>", "JANGTEO_DATABASE_URL": url}
    command = " ".join(f"{k}={v}" for k, v in shown.items()) + " " + shlex.join(serve)
    log = scratch / f"jangteo-{strategy}.log"
    with background(serve, {**env, **overrides}, port, log):
        wait_ready(port, workers=WORKERS)
        target = f"http://127.0.0.1:{port}/api/v1/listings/{LISTING_ID}/purchase"
        print(
            f"  {len(tokens)} buyers x POST .../purchase for {args.warmup}+{args.duration} s"
            f" from {args.client_processes} client process(es) ...",
            flush=True,
        )
        load = await asyncio.to_thread(
            load_purchases, target, tokens, args.client_processes, args.warmup, args.duration
        )
    order_ids: list[int] = load.pop("order_ids")
    invariants = await check_invariants(
        url, fixture, load["statuses_whole_run"].get("201", 0), order_ids
    )
    client_errors = sum(n for k, n in load["statuses_whole_run"].items() if k.startswith("client"))
    if client_errors:
        invariants["note"] = (
            f"{client_errors} request(s) got no response: one_order_per_201 cannot be exact"
        )
    clear_redis_keys(env["JANGTEO_REDIS_URL"])
    return {
        "strategy": strategy,
        "load_average_at_start": load_average,
        "command": command,
        "http": load,
        "invariants": invariants,
        "server_log_problems": server_problems(log),
    }


# ----------------------------------------------------------------------------- report


def conflicts(statuses: Mapping[str, int]) -> dict[str, int]:
    return {k.split(" ", 1)[1] or "?": n for k, n in statuses.items() if k.startswith("409")}


def others(statuses: Mapping[str, int]) -> dict[str, int]:
    return {k: n for k, n in statuses.items() if k != "201" and not k.startswith("409")}


def table(strategies: Sequence[Mapping[str, Any]], pool_clients: int, clients: int) -> str:
    head = (
        f"{'strategy':<12}{'paid/s':>8}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'p95 all':>8}"
        f"{f'pgb{clients}/s':>10}{'ratio':>7}{f'pgb{pool_clients}/s':>10}{'ratio':>7}"
        f"  {'invariants':<11}409s / other"
    )
    lines = [head]
    for s in strategies:
        http = s["http"]
        paid, every = http["latency_ms_201"], http["latency_ms_all"]
        full, pool = s["baseline"][str(clients)], s["baseline"][str(pool_clients)]

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        extra = ", ".join(f"{k} {n}" for k, n in conflicts(http["statuses"]).items())
        rest = ", ".join(f"{k}: {n}" for k, n in others(http["statuses"]).items())
        lines.append(
            f"{s['strategy']:<12}{http['paid_per_second']:>8,.1f}{ms(paid['p50']):>8}"
            f"{ms(paid['p95']):>8}{ms(paid['p99']):>8}{ms(every['p95']):>8}"
            f"{full['paid_per_second']:>10,.1f}{s['ratio_vs_pgbench'][str(clients)]:>7.0%}"
            f"{pool['paid_per_second']:>10,.1f}{s['ratio_vs_pgbench'][str(pool_clients)]:>7.0%}"
            f"  {'OK' if s['invariants']['ok'] else 'FAILED':<11}"
            f"{extra or 'none'}{' / ' + rest if rest else ''}"
        )
    return "\n".join(lines)


def plot(
    strategies: Sequence[Mapping[str, Any]],
    buyers: int,
    clients: int,
    pool_clients: int,
    caption: str,
    path: Path,
) -> bool:
    """Paid orders/s per strategy with its pgbench baselines; False without matplotlib."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    names = [s["strategy"] for s in strategies]
    paid = [float(s["http"]["paid_per_second"]) for s in strategies]
    full = [float(s["baseline"][str(clients)]["paid_per_second"]) for s in strategies]
    pool = [float(s["baseline"][str(pool_clients)]["paid_per_second"]) for s in strategies]
    figure, axes = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    colours = ["#d9534f" if s["invariants"]["ok"] else "#555555" for s in strategies]
    bars = axes.bar(range(len(names)), paid, 0.55, color=colours, label="jangteo paid orders/s")
    axes.bar_label(bars, labels=[f"{v:,.0f}" for v in paid], fontsize=8, padding=2)
    for index in range(len(names)):
        axes.hlines(full[index], index - 0.38, index + 0.38, colors="#222222", linestyles="--")
        axes.hlines(pool[index], index - 0.38, index + 0.38, colors="#2a7ab9", linestyles=":")
    axes.plot([], [], "--", color="#222222", label=f"pgbench -c {clients} (same SQL)")
    axes.plot([], [], ":", color="#2a7ab9", label=f"pgbench -c {pool_clients} (= pool size)")
    top = max([*paid, *full, *pool, 1.0])
    for index, s in enumerate(strategies):
        ratios = s["ratio_vs_pgbench"]
        shares = f"{ratios[str(clients)]:.0%} of pgbench-{clients}"
        if pool_clients != clients:
            shares += f"\n{ratios[str(pool_clients)]:.0%} of pgbench-{pool_clients}"
        verdict = "invariants OK" if s["invariants"]["ok"] else "INVARIANTS FAILED"
        axes.annotate(
            f"{shares}\n{verdict}",
            (index, top * 1.13),
            ha="center",
            fontsize=8,
            fontweight="bold",
        )
    axes.set_xticks(range(len(names)), names)
    axes.set_ylabel("paid orders / s (higher is better)")
    axes.set_ylim(0, top * 1.4)
    title = f"{buyers} buyers on one listing: {WORKERS} jangteo workers vs pgbench, same SQL"
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize=7)
    figure.text(0.99, 0.01, caption, ha="right", va="bottom", fontsize=7, color="#555555")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(path)
    plt.close(figure)
    return True


# ----------------------------------------------------------------------------- run


@dataclass(kw_only=True, slots=True)
class PurchaseResult(Result):
    target: str
    strategies: list[dict[str, Any]]
    pgbench_scripts: dict[str, str]

    def failures(self) -> list[str]:
        return [f"invariants {s['strategy']}" for s in self.strategies if not s["invariants"]["ok"]]

    def table(self) -> str:
        clients, pool_clients = self.load["pgbench_clients"]
        return table(self.strategies, pool_clients, clients)

    def plot(self, path: Path) -> bool:
        clients, pool_clients = self.load["pgbench_clients"]
        caption = (
            f"{self.date}, {self.machine.cores} cores, {self.load['buyers']} buyers,"
            f" {self.load['duration_s']}s measured,"
            f" pool {WORKERS}x{self.load['pg_pool_max_per_worker']}"
        )
        return plot(self.strategies, self.load["buyers"], clients, pool_clients, caption, path)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strategies", nargs="+", choices=PURCHASE_STRATEGIES, default=list(PURCHASE_STRATEGIES)
    )
    parser.add_argument("--buyers", type=int, default=500, help="concurrent buyers")
    parser.add_argument("--duration", type=int, default=10, help="measured seconds")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured seconds first")
    parser.add_argument("--client-processes", type=int, default=1, help="load client processes")
    parser.add_argument("--pool-max", type=int, default=20, help="JANGTEO_PG_POOL_MAX per worker")
    parser.add_argument("--clients", type=int, default=500, help="pgbench clients (headline)")
    parser.add_argument("--pgbench-seconds", type=int, default=10, help="pgbench -T")
    parser.add_argument("--stock", type=int, default=10_000, help="listing stock (max 10000)")
    parser.add_argument("--price", type=int, default=1000)
    parser.add_argument(
        "--purchases-funded", type=int, default=40, help="purchases each buyer's top-up covers"
    )
    parser.add_argument(
        "--restart-wait", type=float, default=120,
        help="seconds to wait for other PostgreSQL clients before restarting for connections",
    )  # fmt: skip


async def run(args: argparse.Namespace) -> PurchaseResult:
    machine = Machine()
    stack = services()
    env: dict[str, str] = {**os.environ, "JANGTEO_REDIS_URL": stack.redis_url}
    env["JANGTEO_DATA_DIR"] = stack.data_dir
    commands: dict[str, Any] = {"database": database_note(BENCH_DATABASE)}
    pool_clients = WORKERS * args.pool_max
    needed = max(args.clients, pool_clients) + 10
    restart = await asyncio.to_thread(
        ensure_connection_room, stack.admin_url, needed, env, stack.embedded, args.restart_wait
    )
    if restart:
        commands["restart"] = restart
    fixture = Fixture(args.buyers, args.stock, args.price, args.purchases_funded)
    strategies: list[dict[str, Any]] = []
    baselines: dict[str, dict[str, dict[str, Any]]] = {}
    pgbench_commands: dict[str, str] = {}
    scripts: dict[str, str] = {}
    scratch: Path = args.scratch
    async with fresh_database(stack.admin_url, BENCH_DATABASE, keep=args.keep_database) as url:
        for strategy in args.strategies:
            print(f"\n== {strategy}", flush=True)
            result = await run_strategy(
                strategy, url=url, env=env, fixture=fixture, args=args, scratch=scratch
            )
            http = result["http"]
            verdict = "OK" if result["invariants"]["ok"] else "FAILED"
            print(f"  paid/s {http['paid_per_second']}, statuses {http['statuses']},"
                  f" invariants {verdict}", flush=True)  # fmt: skip
            name = BASELINE_SCRIPT[strategy]
            if name not in baselines:
                baselines[name] = {}
                for clients in dict.fromkeys([args.clients, pool_clients]):
                    print(
                        f"  pgbench {name} -c {clients} -T {args.pgbench_seconds} ...", flush=True
                    )
                    baseline = await run_baseline(
                        url, fixture, name, clients, args.pgbench_seconds, scratch
                    )
                    pgbench_commands[f"{name} -c {clients}"] = baseline.pop("command")
                    baselines[name][str(clients)] = baseline
                    print(f"    tps {baseline['tps']}, paid/s {baseline['paid_per_second']},"
                          f" p95 {baseline['latency_ms']['p95']} ms", flush=True)  # fmt: skip
                scripts[name] = (scratch / f"purchase_{name}.sql").read_text()
            result["baseline_script"] = name
            result["baseline"] = baselines[name]
            result["ratio_vs_pgbench"] = {
                clients: round(http["paid_per_second"] / run["paid_per_second"], 3)
                if run["paid_per_second"]
                else 0.0
                for clients, run in baselines[name].items()
            }
            result["meets_target"] = bool(
                result["invariants"]["ok"] and result["ratio_vs_pgbench"][str(args.clients)] >= 0.5
            )
            strategies.append(result)
    commands["jangteo"] = {s["strategy"]: s.pop("command") for s in strategies}
    commands["pgbench"] = pgbench_commands
    commands["load"] = (
        f"python -m loadtests bench purchase: {args.buyers} asyncio buyers (aiohttp, one"
        f" ClientSession per client process, connector limit {args.buyers} in all), each"
        ' looping POST /api/v1/listings/{id}/purchase {"quantity":1} with a fresh'
        " Idempotency-Key, no back-off on 409"
    )
    return PurchaseResult(
        benchmark="purchase",
        machine=machine,
        versions=await versions(),
        load={
            "buyers": args.buyers,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "client_processes": args.client_processes,
            "server_workers": WORKERS,
            "pg_pool_max_per_worker": args.pool_max,
            "pgbench_clients": [args.clients, pool_clients],
            "pgbench_seconds": args.pgbench_seconds,
            "stock": args.stock,
            "price": args.price,
            "funds_per_buyer": fixture.funds_per_buyer,
        },
        commands=commands,
        target="paid orders/s >= 50% of pgbench (same SQL, -c 500), zero oversell, no lost money",
        strategies=strategies,
        pgbench_scripts=scripts,
    )
