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
import orjson
import redis
import uvloop

from db.queries import idempotency as idempotency_queries
from db.queries import listings as listing_queries
from db.queries import orders as order_queries
from db.queries import wallets as wallet_queries
from db.queries.outbox import Event, insert_events
from loadtests.harness.processes import BenchError, jangteo_command, run_checked, server_problems
from loadtests.harness.report import COLOURS, bars, finish, text_table
from loadtests.harness.results import Machine, Result, versions
from loadtests.harness.results import load_average as current_load
from loadtests.harness.stack import (
    JWT_SECRET,
    connected,
    database_note,
    fresh_database,
    instances,
    serve_settings,
    services,
)
from loadtests.harness.stats import summary_ms
from loadtests.harness.tools import pgbench
from server.auth.tokens import TokenIssuer
from server.idempotency import KEY_TTL
from server.listings.cache import detail_base, feed_base
from server.orders.purchase import OPTIMISTIC_ATTEMPTS, OPTIMISTIC_BACKOFF_S
from server.settings import PURCHASE_STRATEGIES, Settings

BENCH_DATABASE = "jangteo_bench_purchase"
WORKERS = 2
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
BASELINE_SCRIPT = {name: name for name in PURCHASE_STRATEGIES} | {"redis_lock": "atomic"}


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
    async with connected(url) as conn:
        async with conn.transaction():
            await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
            seller_id: int = await conn.fetchval(
                "INSERT INTO users (email, password_hash, nickname, region)"
                " VALUES ($1, '!', 'bench seller', $2) RETURNING id",
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
            await conn.execute(
                "INSERT INTO topups (user_id, amount) SELECT id, $2 FROM users WHERE id <> $1",
                seller_id,
                fixture.funds_per_buyer,
            )
            # Every wallet holds what its owner topped up: the seller's nothing.
            await conn.execute(
                "INSERT INTO wallets (user_id, balance) SELECT u.id, coalesce(t.amount, 0)"
                " FROM users u LEFT JOIN topups t ON t.user_id = u.id"
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
    buyer_ids = [row["id"] for row in rows]
    if buyer_ids != list(range(buyer_ids[0], buyer_ids[0] + len(buyer_ids))):
        raise BenchError("buyer ids are not contiguous; pgbench's random(first, last) needs that")
    return Seeded(seller_id, buyer_ids)


def clear_redis_keys(redis_url: str) -> None:
    """Forget the benchmark listing's lock, fencing counter and cache generation."""
    with redis.Redis.from_url(redis_url) as client:
        client.delete(
            f"lock:listing:{LISTING_ID}",
            f"fence:listing:{LISTING_ID}",
            f"{detail_base(LISTING_ID)}:gen",
            f"{feed_base(REGION)}:gen",
        )


# What the invariants are checked on, in one snapshot: the figures of the results file,
# and counts only checked (zero, or as the listing's status says).
CHECKED_ONLY = ("mispriced", "negative_balances", "events_status_changed")
STATE = """
SELECT l.quantity AS stock_left, l.status AS listing_status, l.version AS listing_version,
  o.orders, o.quantity_sold, o.escrow, w.sum_balances,
  (SELECT coalesce(sum(amount), 0)::bigint FROM topups) AS sum_topups, w.lowest_balance,
  e.events_order_paid, e.events_stock_changed,
  (SELECT count(*) FROM idempotency_keys WHERE status_code = 201) AS stored_201_responses,
  o.mispriced, w.negative_balances, e.events_status_changed
FROM listings l,
  (SELECT count(*) AS orders, coalesce(sum(amount) FILTER (WHERE status = 'paid'), 0)::bigint
     AS escrow, coalesce(sum(quantity) FILTER (WHERE status IN ('paid', 'completed')), 0)::bigint
     AS quantity_sold, count(*) FILTER (WHERE amount <> quantity * unit_price) AS mispriced
   FROM orders) o,
  (SELECT coalesce(sum(balance), 0)::bigint AS sum_balances,
     coalesce(min(balance), 0) AS lowest_balance,
     count(*) FILTER (WHERE balance < 0) AS negative_balances FROM wallets) w,
  (SELECT count(*) FILTER (WHERE type = 'order.paid') AS events_order_paid,
     count(*) FILTER (WHERE type = 'listing.stock_changed') AS events_stock_changed,
     count(*) FILTER (WHERE type = 'listing.status_changed') AS events_status_changed
   FROM outbox) e
WHERE l.id = $1
"""


async def check_invariants(
    url: str, fixture: Fixture, created_201: int | None, order_ids: Sequence[int] | None
) -> dict[str, Any]:
    """The invariants after a run, checked in SQL; ``ok`` is False when any fails.

    ``created_201`` and ``order_ids`` (what the clients saw) are None for pgbench runs,
    which answer nobody.
    """
    async with connected(url) as conn:
        state = dict(await conn.fetchrow(STATE, LISTING_ID) or {})
        paid = {
            row["id"] for row in await conn.fetch("SELECT id FROM orders WHERE status = 'paid'")
        }
    orders, left = state["orders"], state["stock_left"]
    checks: dict[str, bool] = {
        "no_oversell": left >= 0 and fixture.stock - left == state["quantity_sold"],
        "money_conserved": state["sum_balances"] + state["escrow"] == state["sum_topups"],
        "no_negative_balance": state["negative_balances"] == 0 and state["lowest_balance"] >= 0,
        "order_amounts": state["mispriced"] == 0,
        "events_per_order": state["events_order_paid"] == 2 * orders
        and state["events_stock_changed"] == orders
        and state["events_status_changed"] == (1 if state["listing_status"] == "sold" else 0),
        "stored_response_per_order": state["stored_201_responses"] == orders,
        "one_version_bump_per_order": state["listing_version"] - 1 == orders,
    }
    if created_201 is not None and order_ids is not None:
        seen = set(order_ids)
        checks["one_order_per_201"] = (
            orders == created_201 and len(seen) == len(order_ids) and seen == paid
        )
    figures: dict[str, Any] = {"initial_stock": fixture.stock}
    figures |= {key: value for key, value in state.items() if key not in CHECKED_ONLY}
    figures["responses_201"] = created_201
    return {"ok": all(checks.values()), "checks": checks, "figures": figures}


async def connection_room(admin_url: str) -> tuple[int, int]:
    """Connections PostgreSQL grants ordinary users, and client backends other than ours."""
    async with connected(admin_url) as conn:
        row = await conn.fetchrow(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
            " - current_setting('reserved_connections')::int AS room,"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            "  AND pid <> pg_backend_pid()) AS others"
        )
    assert row is not None
    return int(row["room"]), int(row["others"])


async def ensure_connection_room(
    admin_url: str, needed: int, env: Mapping[str, str], embedded: bool, wait: float
) -> str | None:
    """Make room for ``needed`` connections; restarts the embedded stack when it is idle.

    Returns the restart command when one was run. A cluster used by someone else right
    now is never restarted: the run waits up to ``wait`` seconds for it to go quiet.
    """
    room, others = await connection_room(admin_url)
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
        await asyncio.sleep(2)
        room, others = await connection_room(admin_url)
    stop, start = jangteo_command("services", "stop"), jangteo_command("services", "start")
    restart = f"{shlex.join(stop)} && {shlex.join(start)}"
    print(f"$ {restart}   (max_connections too low)", flush=True)
    for command in (stop, start):
        await asyncio.to_thread(run_checked, command, env)
    room, _ = await connection_room(admin_url)
    if room < needed:
        raise BenchError(f"PostgreSQL grants {room} connections after a restart, need {needed}")
    return restart


# ----------------------------------------------------------------------------- HTTP load


@dataclass(frozen=True, slots=True)
class ClientJob:
    """What one client process drives: its buyers' tokens and the shared schedule."""

    url: str
    tokens: list[str]
    start_at: float  # wall clock (time.time()) when every buyer starts
    warmup: float
    duration: float


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


async def _drive(job: ClientJob) -> ClientResult:
    result = ClientResult()
    start = job.start_at - time.time() + time.monotonic()
    measure_from = start + job.warmup
    stop = measure_from + job.duration

    async def buyer(session: aiohttp.ClientSession, token: str) -> None:
        base = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        while time.monotonic() < stop:
            headers = {**base, "Idempotency-Key": str(uuid.uuid4())}
            started = time.monotonic()
            try:
                async with session.post(job.url, data=b'{"quantity":1}', headers=headers) as answer:
                    status, payload = answer.status, await answer.read()
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

    connector = aiohttp.TCPConnector(limit=len(job.tokens))
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        result.late_start = max(0.0, time.monotonic() - start)
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        buyers = [asyncio.create_task(buyer(session, token)) for token in job.tokens]
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
    start_at = time.time() + 3.0  # time for the client processes to start and import
    jobs = [
        ClientJob(url, list(tokens[n::processes]), start_at, warmup, duration)
        for n in range(processes)
    ]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        parts = list(pool.map(drive, jobs))
    seen = ClientResult()
    for part in parts:
        for counter in ("measured", "total", "paid_by_second"):
            getattr(seen, counter).update(getattr(part, counter))
        seen.measured_paid_latency += part.measured_paid_latency
        seen.measured_latency += part.measured_latency
        seen.order_ids += part.order_ids
    return {
        "measured_seconds": duration,
        "paid_per_second": round(seen.measured["201"] / duration, 1),
        "responses_per_second": round(sum(seen.measured.values()) / duration, 1),
        "statuses": dict(sorted(seen.measured.items())),
        "statuses_whole_run": dict(sorted(seen.total.items())),
        "paid_each_second": [seen.paid_by_second[second] for second in range(int(duration))],
        "latency_ms_201": summary_ms(seen.measured_paid_latency),
        "latency_ms_all": summary_ms(seen.measured_latency),
        "client_cpu_share_per_process": [round(p.cpu_seconds / duration, 3) for p in parts],
        "client_late_start_s": [round(p.late_start, 3) for p in parts],
        "order_ids": seen.order_ids,
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
    invariants = await check_invariants(url, fixture, None, None)
    orders = invariants["figures"]["orders"]
    # tps counts refused purchases too; the orders committed tell how many of them paid.
    paid_share = min(1.0, orders / report["transactions"]) if report["transactions"] else 0.0
    return {
        **report,
        "load_average_at_start": load_average,
        "orders_committed": orders,
        "paid_per_second": round(report["tps"] * paid_share, 1),
        "invariants": invariants,
        "command": command,
        "script": name,
    }


# ----------------------------------------------------------------------------- one strategy


async def run_strategy(
    strategy: str, *, url: str, redis_url: str, fixture: Fixture, args: argparse.Namespace,
    record: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    """Fresh data, serve with ``strategy``, load it, stop it, check the invariants."""
    load_average = current_load()
    seeded = await reset_data(url, fixture)
    clear_redis_keys(redis_url)
    issuer = TokenIssuer(Settings(jwt_secret=JWT_SECRET))
    tokens = [issuer.issue_access(buyer, uuid.uuid4()) for buyer in seeded.buyer_ids]
    pool = str(args.pool_max)
    settings = serve_settings(url, redis_url, PURCHASE_STRATEGY=strategy, PG_POOL_MAX=pool)
    with instances([strategy], settings, args.scratch, record, workers=WORKERS) as (server,):
        print(
            f"  {len(tokens)} buyers x POST .../purchase for {args.warmup}+{args.duration} s"
            f" from {args.client_processes} client process(es) ...",
            flush=True,
        )
        load = await asyncio.to_thread(
            load_purchases, f"{server.url}/api/v1/listings/{LISTING_ID}/purchase", tokens,
            args.client_processes, args.warmup, args.duration,
        )  # fmt: skip
    order_ids: list[int] = load.pop("order_ids")
    whole_run = load["statuses_whole_run"]
    invariants = await check_invariants(url, fixture, whole_run.get("201", 0), order_ids)
    if client_errors := sum(n for k, n in whole_run.items() if k.startswith("client")):
        invariants["note"] = (
            f"{client_errors} request(s) got no response: one_order_per_201 cannot be exact"
        )
    clear_redis_keys(redis_url)
    return {
        "strategy": strategy,
        "load_average_at_start": load_average,
        "http": load,
        "invariants": invariants,
        "server_log_problems": server_problems(server.log),
    }


# ----------------------------------------------------------------------------- run


@dataclass(kw_only=True, slots=True)
class PurchaseResult(Result):
    target: str
    strategies: list[dict[str, Any]]
    pgbench_scripts: dict[str, str]

    def failures(self) -> list[str]:
        return [f"invariants {s['strategy']}" for s in self.strategies if not s["invariants"]["ok"]]

    def table(self) -> str:
        clients, pool_clients = (str(n) for n in self.load["pgbench_clients"])

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        rows = []
        for s in self.strategies:
            http, ratios, baseline = s["http"], s["ratio_vs_pgbench"], s["baseline"]
            paid, every, statuses = http["latency_ms_201"], http["latency_ms_all"], http["statuses"]
            refused = ", ".join(
                f"{k[4:] or '?'} {n}" for k, n in statuses.items() if k[:3] == "409"
            )
            rest = ", ".join(
                f"{k}: {n}" for k, n in statuses.items() if k[:3] not in ("201", "409")
            )
            rows.append((
                s["strategy"], f"{http['paid_per_second']:,.1f}", ms(paid["p50"]), ms(paid["p95"]),
                ms(paid["p99"]), ms(every["p95"]),
                f"{baseline[clients]['paid_per_second']:,.1f}", f"{ratios[clients]:.0%}",
                f"{baseline[pool_clients]['paid_per_second']:,.1f}", f"{ratios[pool_clients]:.0%}",
                "OK" if s["invariants"]["ok"] else "FAILED",
                (refused or "none") + (f" / {rest}" if rest else ""),
            ))  # fmt: skip
        head = ("strategy", "paid/s", "p50 ms", "p95 ms", "p99 ms", "p95 all", f"pgb{clients}/s",
                "ratio", f"pgb{pool_clients}/s", "ratio", "invariants", "409s / other")  # fmt: skip
        return text_table(head, rows, "lrrrrrrrrrll")

    def plot(self, plt: Any, path: Path) -> None:
        """Paid orders/s per strategy with its pgbench baselines."""
        clients, pool_clients = self.load["pgbench_clients"]
        xs = range(len(self.strategies))
        paid = [float(s["http"]["paid_per_second"]) for s in self.strategies]
        full, pool = (
            [float(s["baseline"][str(n)]["paid_per_second"]) for s in self.strategies]
            for n in (clients, pool_clients)
        )
        figure, axes = plt.subplots(figsize=(7.5, 5.0), dpi=120)
        colours = [
            COLOURS["jangteo"] if s["invariants"]["ok"] else "#555555" for s in self.strategies
        ]
        bars(axes, xs, paid, "{:,.0f}", width=0.55, color=colours, label="jangteo paid orders/s")
        for values, style, colour, label in (
            (full, "--", "#222222", f"pgbench -c {clients} (same SQL)"),
            (pool, ":", "#2a7ab9", f"pgbench -c {pool_clients} (= pool size)"),
        ):
            axes.hlines(values, [x - 0.38 for x in xs], [x + 0.38 for x in xs], colors=colour,
                        linestyles=style, label=label)  # fmt: skip
        top = max([*paid, *full, *pool, 1.0])
        for x, s in zip(xs, self.strategies, strict=True):
            ratios = s["ratio_vs_pgbench"]
            text = f"{ratios[str(clients)]:.0%} of pgbench-{clients}"
            if pool_clients != clients:
                text += f"\n{ratios[str(pool_clients)]:.0%} of pgbench-{pool_clients}"
            text += "\ninvariants OK" if s["invariants"]["ok"] else "\nINVARIANTS FAILED"
            axes.annotate(text, (x, top * 1.13), ha="center", fontsize=8, fontweight="bold")
        axes.set_xticks(xs, [s["strategy"] for s in self.strategies])
        axes.set_ylabel("paid orders / s (higher is better)")
        axes.set_ylim(0, top * 1.4)
        title = f"{self.load['buyers']} buyers on one listing: {WORKERS} jangteo workers vs"
        axes.set_title(f"{title} pgbench, same SQL", fontsize=10)
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize=7)
        caption = (
            f"{self.date}, {self.machine.cores} cores, {self.load['buyers']} buyers,"
            f" {self.load['duration_s']}s measured,"
            f" pool {WORKERS}x{self.load['pg_pool_max_per_worker']}"
        )
        finish(plt, figure, caption, path)


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
    env = {**os.environ, "JANGTEO_REDIS_URL": stack.redis_url, "JANGTEO_DATA_DIR": stack.data_dir}
    commands: dict[str, Any] = {"database": database_note(BENCH_DATABASE)}
    pool_clients = WORKERS * args.pool_max
    needed = max(args.clients, pool_clients) + 10
    restart = await ensure_connection_room(
        stack.admin_url, needed, env, stack.embedded, args.restart_wait
    )
    if restart:
        commands["restart"] = restart
    commands |= {"jangteo": {}, "pgbench": {}}
    fixture = Fixture(args.buyers, args.stock, args.price, args.purchases_funded)
    strategies: list[dict[str, Any]] = []
    baselines: dict[str, dict[str, dict[str, Any]]] = {}  # script -> clients -> its run
    scripts: dict[str, str] = {}
    async with fresh_database(stack.admin_url, BENCH_DATABASE, keep=args.keep_database) as url:
        for strategy in args.strategies:
            print(f"\n== {strategy}", flush=True)
            result = await run_strategy(
                strategy, url=url, redis_url=stack.redis_url, fixture=fixture, args=args,
                record=commands["jangteo"],
            )  # fmt: skip
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
                        url, fixture, name, clients, args.pgbench_seconds, args.scratch
                    )
                    commands["pgbench"][f"{name} -c {clients}"] = baseline.pop("command")
                    baselines[name][str(clients)] = baseline
                    print(f"    tps {baseline['tps']}, paid/s {baseline['paid_per_second']},"
                          f" p95 {baseline['latency_ms']['p95']} ms", flush=True)  # fmt: skip
                scripts[name] = (args.scratch / f"purchase_{name}.sql").read_text()
            ratios = {
                clients: round(http["paid_per_second"] / run["paid_per_second"], 3)
                if run["paid_per_second"]
                else 0.0
                for clients, run in baselines[name].items()
            }
            result |= {
                "baseline_script": name,
                "baseline": baselines[name],
                "ratio_vs_pgbench": ratios,
                "meets_target": bool(
                    result["invariants"]["ok"] and ratios[str(args.clients)] >= 0.5
                ),
            }
            strategies.append(result)
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
