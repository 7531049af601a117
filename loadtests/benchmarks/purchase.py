"""Purchase benchmark: 500 buyers on one listing per strategy (or ``--listings`` to spread
them), checked, against pgbench running jangteo's purchase transaction as it was before a
purchase became one call, and pgbench making that one call. ``--buyers-sweep 50,200,500``
also runs every strategy at those buyer counts and draws paid orders/s and p99 against them
(``<name>-buyers.png``)."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import math
import multiprocessing
import os
import random
import re
import shlex
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis
import uvloop

from loadtests.harness.processes import (
    BenchError,
    as_line,
    jangteo_command,
    run_checked,
    server_problems,
)
from loadtests.harness.report import COLOURS, SweepRun, bars, finish, purchase_sweep, text_table
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
from server.listings.cache import detail_base, feed_base
from server.orders.errors import InsufficientStock
from server.orders.locks import fence_key, lock_key
from server.settings import PURCHASE_STRATEGIES, Settings

WORKERS = 2
# Listing ids (the first; more follow it) and a region of their own, so the Redis keys the
# server touches (purchase lock, fencing counter, cache generations) never collide with a
# development server's.
LISTING_ID = 900_000_001
REGION = "bench-purchase"
SOLD_OUT = InsufficientStock.slug
TABLES = (
    "users, refresh_tokens, listings, listing_photos, listing_likes, outbox, wallets, topups,"
    " orders, idempotency_keys"
)
# The pgbench scripts (purchase_<name>.sql): per strategy, the purchase transaction as it
# was before the one-call purchase, frozen (<strategy>), and the server's one call
# (call_<strategy>). redis_lock's database work is the atomic one plus a fencing
# predicate (its lock lives in Redis), so it is compared with atomic's scripts.
SCRIPTS = Path(__file__).resolve().parents[1] / "references" / "pgbench"
BASELINE_SCRIPT = {name: name for name in PURCHASE_STRATEGIES} | {
    "redis_lock": "atomic",
    "queue": "atomic",  # its consumer applies each purchase as the atomic call does
}
# Created in the benchmark's database for call scripts that use it (see the file).
CALL_REFUSED = SCRIPTS / "purchase_call_refused.sql"
# One colour per strategy in the buyers sweep's figure; a pgbench reference takes the
# colour of the strategy its script is named after.
STRATEGY_COLOURS = dict(
    zip(PURCHASE_STRATEGIES, ("#8e44ad", "#f0ad4e", "#d9534f", "#2a7ab9", "#5cb85c"), strict=True)
)


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Fixture:
    """The data every run starts from: ``listings`` listings, each of its own seller, and
    ``buyers`` funded buyers."""

    buyers: int
    stock: int  # each listing's
    price: int
    purchases_funded: int  # each buyer's top-up covers this many purchases
    listings: int = 1

    @property
    def funds_per_buyer(self) -> int:
        return self.price * self.purchases_funded

    @property
    def listing_ids(self) -> range:
        return range(LISTING_ID, LISTING_ID + self.listings)


def fixture_for(args: argparse.Namespace, buyers: int) -> Fixture:
    """The fixture of a run with ``buyers`` buyers: the headline's (``--buyers``), or one
    of the sweep's.

    Fewer buyers than the headline's get more purchases funded each, as many in all as the
    headline's buyers (500 x 40, twice the default stock): a small buyer count of the sweep
    runs out of stock, not of money, and the headline's fixture stays as it always was.
    """
    funded = max(args.purchases_funded, math.ceil(args.purchases_funded * args.buyers / buyers))
    return Fixture(buyers, args.stock, args.price, funded, listings=args.listings)


@dataclass(frozen=True, slots=True)
class Seeded:
    """The ids the scripts draw from: contiguous, as pgbench's random(first, last) needs."""

    buyer_ids: range
    listing_ids: range


async def reset_data(url: str, fixture: Fixture, *, settle: bool = True) -> Seeded:
    """Empty every table and seed the fixture with plain SQL (no sign-ups, no argon2);
    ``settle``: vacuumed and checkpointed, so that every measured run starts alike."""
    async with connected(url) as conn:
        async with conn.transaction():
            await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
            # The sellers first (ids 1..listings), then the buyers.
            await conn.execute(
                "INSERT INTO users (email, password_hash, nickname, region)"
                " SELECT 'seller-' || g || '@bench-purchase.example.com', '!', 'seller ' || g, $2"
                " FROM generate_series(1, $1::int) AS g ORDER BY g",
                fixture.listings,
                REGION,
            )
            seller_ids = [r["id"] for r in await conn.fetch("SELECT id FROM users ORDER BY id")]
            await conn.execute(
                "INSERT INTO users (email, password_hash, nickname, region)"
                " SELECT 'buyer-' || g || '@bench-purchase.example.com', '!', 'buyer ' || g, $2"
                " FROM generate_series(1, $1::int) AS g ORDER BY g",
                fixture.buyers,
                REGION,
            )
            await conn.execute(
                "INSERT INTO topups (user_id, amount)"
                " SELECT id, $2 FROM users WHERE id <> all($1::bigint[])",
                seller_ids,
                fixture.funds_per_buyer,
            )
            # Every wallet holds what its owner topped up: the sellers' nothing.
            await conn.execute(
                "INSERT INTO wallets (user_id, balance) SELECT u.id, coalesce(t.amount, 0)"
                " FROM users u LEFT JOIN topups t ON t.user_id = u.id"
            )
            # Listing n belongs to seller n.
            await conn.execute(
                "INSERT INTO listings (id, seller_id, title, description, price, quantity,"
                " category, region) OVERRIDING SYSTEM VALUE"
                " SELECT $1 + n - 1, seller_id, 'benchmark listing', 'many buyers', $2, $3,"
                " 'etc', $4 FROM unnest($5::bigint[]) WITH ORDINALITY AS s (seller_id, n)",
                LISTING_ID,
                fixture.price,
                fixture.stock,
                REGION,
                seller_ids,
            )
            rows = await conn.fetch(
                "SELECT id FROM users WHERE id <> all($1::bigint[]) ORDER BY id", seller_ids
            )
        if settle:
            await conn.execute("VACUUM ANALYZE")
            await conn.execute("CHECKPOINT")  # every run starts without a pending checkpoint
    buyer_ids = [row["id"] for row in rows]
    contiguous = range(buyer_ids[0], buyer_ids[-1] + 1)
    if buyer_ids != list(contiguous):
        raise BenchError("buyer ids are not contiguous; pgbench's random(first, last) needs that")
    return Seeded(contiguous, fixture.listing_ids)


def clear_redis_keys(redis_url: str, fixture: Fixture) -> None:
    """Forget the benchmark listings' locks, fencing counters and cache generations."""
    keys = [f"{feed_base(REGION)}:gen"]
    for listing in fixture.listing_ids:
        keys += [
            lock_key(listing),
            fence_key(listing),
            f"{detail_base(listing)}:gen",
        ]
    with redis.Redis.from_url(redis_url) as client:
        client.delete(*keys)


# What the invariants are checked on, in one snapshot: the figures of the results file,
# and counts only checked (zero, or as the listings' statuses say).
CHECKED_ONLY = ("mispriced", "negative_balances", "events_status_changed", "listings_miscounted")
STATE = """
SELECT l.stock_left, l.listings_sold, l.version_bumps,
  o.orders, o.quantity_sold, o.escrow, w.sum_balances,
  (SELECT coalesce(sum(amount), 0)::bigint FROM topups) AS sum_topups, w.lowest_balance,
  e.events_order_paid, e.events_stock_changed,
  (SELECT count(*) FROM idempotency_keys WHERE status_code = 201) AS stored_201_responses,
  o.mispriced, w.negative_balances, e.events_status_changed, l.listings_miscounted
FROM
  (SELECT coalesce(sum(quantity), 0)::bigint AS stock_left,
     count(*) FILTER (WHERE status = 'sold') AS listings_sold,
     coalesce(sum(version - 1), 0)::bigint AS version_bumps,
     count(*) FILTER (WHERE quantity + coalesce(s.sold, 0) <> $1) AS listings_miscounted
   FROM listings LEFT JOIN
     (SELECT listing_id, sum(quantity) AS sold FROM orders
      WHERE status IN ('paid', 'completed') GROUP BY listing_id) s ON s.listing_id = listings.id
  ) l,
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
"""


async def check_invariants(
    url: str, fixture: Fixture, created_201: int | None, order_ids: Sequence[int] | None
) -> dict[str, Any]:
    """The invariants after a run, checked in SQL; ``ok`` is False when any fails.

    ``created_201`` and ``order_ids`` (what the clients saw) are None for pgbench runs,
    which answer nobody.
    """
    async with connected(url) as conn:
        state = dict(await conn.fetchrow(STATE, fixture.stock) or {})
        paid = {
            row["id"] for row in await conn.fetch("SELECT id FROM orders WHERE status = 'paid'")
        }
    orders, left = state["orders"], state["stock_left"]
    initial = fixture.stock * fixture.listings
    checks: dict[str, bool] = {
        "no_oversell": left >= 0
        and initial - left == state["quantity_sold"]
        and state["listings_miscounted"] == 0,
        "money_conserved": state["sum_balances"] + state["escrow"] == state["sum_topups"],
        "no_negative_balance": state["negative_balances"] == 0 and state["lowest_balance"] >= 0,
        "order_amounts": state["mispriced"] == 0,
        "events_per_order": state["events_order_paid"] == 2 * orders
        and state["events_stock_changed"] == orders
        and state["events_status_changed"] == state["listings_sold"],
        "stored_response_per_order": state["stored_201_responses"] == orders,
        "one_version_bump_per_order": state["version_bumps"] == orders,
    }
    if created_201 is not None and order_ids is not None:
        seen = set(order_ids)
        checks["one_order_per_201"] = (
            orders == created_201 and len(seen) == len(order_ids) and seen == paid
        )
    figures: dict[str, Any] = {"initial_stock": initial}
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
    """What one client process drives: its buyers' tokens, the purchase URLs (one per
    listing, each purchase to a random one) and the shared schedule."""

    urls: list[str]
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
    last_paid: float = 0.0  # seconds into the window when the last measured 201 ended
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
            url = random.choice(job.urls)
            started = time.monotonic()
            try:
                async with session.post(url, data=b'{"quantity":1}', headers=headers) as answer:
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
                    result.last_paid = max(result.last_paid, ended - measure_from)
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


def in_stock_seconds(measured: Counter[str], last_paid: Sequence[float], duration: float) -> float:
    """The part of the window in which the listing had stock: all of it, or, when it sold
    out in the window, up to the last paid order. Paid/s is counted over that part, so a
    strategy fast enough to sell the whole stock (at most 10,000, the schema's limit) is
    not shown slower than it is."""
    sold_out = measured[f"409 {SOLD_OUT}"] > 0
    last = max(last_paid, default=0.0)
    return min(duration, last) if sold_out and last > 0 else duration


def load_purchases(
    urls: Sequence[str], tokens: Sequence[str], processes: int, warmup: float, duration: float
) -> dict[str, Any]:
    """Drive every buyer at once from ``processes`` client processes; merge what they saw."""
    start_at = time.time() + 3.0  # time for the client processes to start and import
    jobs = [
        ClientJob(list(urls), list(tokens[n::processes]), start_at, warmup, duration)
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
    in_stock = in_stock_seconds(seen.measured, [p.last_paid for p in parts], duration)
    return {
        "measured_seconds": duration,
        "in_stock_seconds": round(in_stock, 3),
        "paid_per_second": round(seen.measured["201"] / in_stock, 1),
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


IDS = re.compile(r":(first_buyer|last_buyer|first_listing|last_listing)\b")


def script_path(name: str) -> Path:
    """The frozen script ``name``: a strategy's old transaction, or ``call_<strategy>``."""
    return SCRIPTS / f"purchase_{name}.sql"


def pgbench_script(name: str, seeded: Seeded) -> str:
    """The script ``name`` with the seeded ids written in (what ``-D`` would set)."""
    ids = {
        "first_buyer": seeded.buyer_ids[0],
        "last_buyer": seeded.buyer_ids[-1],
        "first_listing": seeded.listing_ids[0],
        "last_listing": seeded.listing_ids[-1],
    }
    return IDS.sub(lambda match: str(ids[match.group(1)]), script_path(name).read_text())


async def prepare_scripts(url: str) -> None:
    """What the call scripts need in the database besides the migrations."""
    async with connected(url) as conn:
        await conn.execute(CALL_REFUSED.read_text())


async def run_baseline(
    url: str, fixture: Fixture, name: str, clients: int, seconds: int, scratch: Path
) -> dict[str, Any]:
    """Fresh data, then pgbench with the script ``name``; paid orders/s and invariants."""
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


async def run_baselines(
    url: str, fixture: Fixture, name: str, client_counts: Sequence[int], args: argparse.Namespace,
    record: dict[str, str],
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """pgbench with the script ``name`` at each client count: its runs by clients."""
    runs: dict[str, dict[str, Any]] = {}
    for clients in client_counts:
        print(f"  pgbench {name} -c {clients} -T {args.pgbench_seconds} ...", flush=True)
        baseline = await run_baseline(
            url, fixture, name, clients, args.pgbench_seconds, args.scratch
        )
        record[f"{name} -c {clients}"] = baseline.pop("command")
        runs[str(clients)] = baseline
        line = (
            f"    tps {baseline['tps']}, paid/s {baseline['paid_per_second']},"
            f" p95 {baseline['latency_ms']['p95']} ms"
        )
        if baseline["aborted_clients"]:  # an error ended them: their figure is too low
            line += f", {baseline['aborted_clients']} CLIENTS ABORTED"
        print(line, flush=True)
    return runs


def ratios(paid_per_second: float, runs: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """jangteo's paid/s over each pgbench run's, by clients."""
    return {
        clients: round(paid_per_second / run["paid_per_second"], 3)
        if run["paid_per_second"]
        else 0.0
        for clients, run in runs.items()
    }


# ----------------------------------------------------------------------------- one strategy


async def run_strategy(
    strategy: str, *, url: str, redis_url: str, fixture: Fixture, args: argparse.Namespace,
    record: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    """Fresh data, serve with ``strategy``, load it, stop it, check the invariants."""
    load_average = current_load()
    seeded = await reset_data(url, fixture)
    clear_redis_keys(redis_url, fixture)
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
        urls = [f"{server.url}/api/v1/listings/{n}/purchase" for n in seeded.listing_ids]
        load = await asyncio.to_thread(
            load_purchases, urls, tokens, args.client_processes, args.warmup, args.duration
        )
    order_ids: list[int] = load.pop("order_ids")
    whole_run = load["statuses_whole_run"]
    invariants = await check_invariants(url, fixture, whole_run.get("201", 0), order_ids)
    if client_errors := sum(n for k, n in whole_run.items() if k.startswith("client")):
        invariants["note"] = (
            f"{client_errors} request(s) got no response: one_order_per_201 cannot be exact"
        )
    clear_redis_keys(redis_url, fixture)
    return {
        "strategy": strategy,
        "load_average_at_start": load_average,
        "http": load,
        "invariants": invariants,
        "server_log_problems": server_problems(server.log),
    }


# ----------------------------------------------------------------------------- buyers sweep


def buyer_counts(text: str) -> list[int]:
    """``--buyers-sweep 50,200,500``: the buyer counts, ascending, each once. A typo fails
    when the options are parsed, not after minutes of runs."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: want buyer counts separated by commas, each at least 1 (50,200,500)"
        )
    return sorted(set(counts))


def sweep_points(headline: int, sweep: Sequence[int]) -> list[int]:
    """Every buyer count a strategy runs at, ascending: the sweep's and the headline's
    (``--buyers``), which is always one of them, so that the table's run is measured once
    and drawn in the sweep too."""
    return sorted({headline, *sweep})


def sweep_record(
    points: Sequence[int], headline: int, others: Mapping[int, list[Any]]
) -> dict[str, Any]:
    """The results' ``buyers_sweep``: every buyer count, the headline's (its runs are the
    table's ``strategies``, not stored twice), and the other counts' runs by buyers. Empty
    without a sweep, as results written before the sweep existed read."""
    if len(points) < 2:
        return {}
    return {
        "buyers": list(points),
        "headline": headline,
        "points": {str(buyers): list(others[buyers]) for buyers in points if buyers != headline},
    }


async def run_buyer_counts(
    strategy: str, points: Sequence[int], *, url: str, redis_url: str, args: argparse.Namespace,
    record: dict[str, str],
) -> dict[int, dict[str, Any]]:  # fmt: skip
    """``strategy`` at each buyer count, fewest buyers first: its runs by buyers. The
    sweep's runs (not the headline's, whose row stays as it was) say their buyers and
    funds, as their fixture differs from the results' ``load``."""
    runs = {}
    for buyers in points:
        print(f"\n== {strategy}, {buyers:,} buyers", flush=True)
        fixture = fixture_for(args, buyers)
        result = await run_strategy(
            strategy, url=url, redis_url=redis_url, fixture=fixture, args=args, record=record
        )
        print_run(result)
        if buyers != args.buyers:
            result = {"buyers": buyers, "funds_per_buyer": fixture.funds_per_buyer, **result}
        runs[buyers] = result
    return runs


def print_run(result: Mapping[str, Any]) -> None:
    """One run's paid/s, answers and verdict; a word when the stock ran out."""
    http = result["http"]
    verdict = "OK" if result["invariants"]["ok"] else "FAILED"
    print(f"  paid/s {http['paid_per_second']}, statuses {http['statuses']},"
          f" invariants {verdict}", flush=True)  # fmt: skip
    if http.get("in_stock_seconds", http["measured_seconds"]) < http["measured_seconds"]:
        print(f"  sold out {http['in_stock_seconds']:.1f} s into the window: paid/s is"
              " counted over those seconds", flush=True)  # fmt: skip
    elif result["invariants"]["figures"].get("stock_left") == 0:
        print("  SOLD OUT during the run: paid/s is capped by the stock", flush=True)


def same_connection_references(
    strategies: Sequence[Mapping[str, Any]], clients: str
) -> dict[str, float]:
    """pgbench's paid orders/s with ``clients`` clients, by script (each once): the
    references drawn in the sweep. pgbench opens ``--clients`` connections whatever the
    buyers, so it runs once per benchmark run, not once per buyer count."""
    found: dict[str, float] = {}
    for strategy in strategies:
        for runs in ("baseline", "call_baseline"):
            if run := strategy.get(runs, {}).get(clients):
                found[run["script"]] = float(run["paid_per_second"])
    return found


def sweep_table(runs: Sequence[SweepRun]) -> str:
    """The sweep as printed after the table: paid/s and p99 per strategy and buyer count."""
    counts = sorted({r.buyers for r in runs})
    by_run = {(r.strategy, r.buyers): r for r in runs}
    head = ["strategy"]
    for n in counts:
        head += [f"{n} buyers paid/s", "p99 ms"]
    rows = []
    for strategy in dict.fromkeys(r.strategy for r in runs):
        cells = [strategy]
        for n in counts:
            run = by_run.get((strategy, n))
            paid, p99 = (None, None) if run is None else (run.paid_per_second, run.p99_ms)
            failed = run is not None and not run.invariants_ok
            cells += ["-" if paid is None else f"{paid:,.1f}" + (" FAILED" if failed else ""),
                      "-" if p99 is None else f"{p99:,.0f}"]  # fmt: skip
        rows.append(cells)
    return text_table(head, rows, "l" + "r" * (len(head) - 1))


def plot_buyers(
    plt: Any, runs: Sequence[SweepRun], references: Mapping[str, float], clients: str,
    title: str, caption: str, path: Path,
) -> None:  # fmt: skip
    """Two panels against the buyers: paid orders/s (with pgbench's references, measured
    once, as horizontal lines) and the p99 of paid orders; one line per strategy, a cross
    on a run whose invariants failed. No pgbench line on the p99 panel: its latency is at
    ``clients`` connections, not at that many buyers."""
    figure, (rate, tail) = plt.subplots(1, 2, figsize=(11.0, 5.5), dpi=120)
    for strategy in dict.fromkeys(r.strategy for r in runs):
        mine = sorted((r for r in runs if r.strategy == strategy), key=lambda r: r.buyers)
        for axes, values in ((rate, [r.paid_per_second for r in mine]),
                             (tail, [r.p99_ms for r in mine])):  # fmt: skip
            _sweep_line(axes, strategy, mine, values)
    drawn = []
    for script, value in references.items():
        before = not script.startswith("call_")
        what = f"{script}, before one call" if before else script
        drawn.append(rate.axhline(
            value, color=STRATEGY_COLOURS.get(script.removeprefix("call_"), "#222222"),
            linestyle=":" if before else "--", linewidth=1, label=f"pgbench -c {clients}: {what}",
        ))  # fmt: skip
    counts = sorted({r.buyers for r in runs})
    for axes, label in ((rate, "paid orders / s (higher is better)"),
                        (tail, "p99 of paid orders, ms (lower is better)")):  # fmt: skip
        axes.set_xticks(counts, [f"{n:,}" for n in counts])
        axes.set_xlabel("concurrent buyers")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
    paid = [r.paid_per_second or 0.0 for r in runs]
    rate.set_ylim(0, 1.12 * max([*paid, *references.values(), 1.0]))  # room above pgbench
    tail.set_ylim(bottom=0)
    tail.legend(loc="upper left", fontsize=7)  # the strategies; the colours are the same left
    if drawn:
        rate.legend(handles=drawn, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2,
                    fontsize=7)  # fmt: skip
    figure.suptitle(title, fontsize=10)
    finish(plt, figure, caption, path)


def _sweep_line(
    axes: Any, strategy: str, runs: Sequence[SweepRun], values: Sequence[float | None]
) -> None:
    colour = STRATEGY_COLOURS.get(strategy, "#555555")
    xs = [r.buyers for r in runs]
    ys = [math.nan if value is None else value for value in values]
    axes.plot(xs, ys, marker="o", color=colour, label=strategy)
    failed = [(r.buyers, y) for r, y in zip(runs, ys, strict=True) if not r.invariants_ok]
    if failed:
        axes.scatter(*zip(*failed, strict=True), marker="x", s=90, color="black", zorder=3,
                     label=f"{strategy}: invariants FAILED")  # fmt: skip


# ----------------------------------------------------------------------------- run


@dataclass(kw_only=True, slots=True)
class PurchaseResult(Result):
    target: str
    strategies: list[dict[str, Any]]
    pgbench_scripts: dict[str, str]
    buyers_sweep: dict[str, Any] = field(default_factory=dict)  # see sweep_record

    def failures(self) -> list[str]:
        failed = [
            f"invariants {s['strategy']}" for s in self.strategies if not s["invariants"]["ok"]
        ]
        headline = self.buyers_sweep.get("headline")
        return failed + [
            f"invariants {r.strategy} at {r.buyers} buyers"
            for r in self.sweep_runs()
            if not r.invariants_ok and r.buyers != headline
        ]

    def sweep_runs(self) -> list[SweepRun]:
        """Every run of the buyers sweep, the headline's included ([] without a sweep)."""
        return purchase_sweep({"strategies": self.strategies, "buyers_sweep": self.buyers_sweep})

    def client_counts(self) -> list[str]:
        return [str(n) for n in dict.fromkeys(self.load["pgbench_clients"])]

    def table(self) -> str:
        """Per strategy: jangteo, then pgbench with the old transaction ("pgb") and with
        jangteo's one call ("call"), each at every client count, with jangteo's share."""
        counts = self.client_counts()

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        rows = []
        for s in self.strategies:
            http, statuses = s["http"], s["http"]["statuses"]
            paid, every = http["latency_ms_201"], http["latency_ms_all"]
            refused = ", ".join(
                f"{k[4:] or '?'} {n}" for k, n in statuses.items() if k[:3] == "409"
            )
            rest = ", ".join(
                f"{k}: {n}" for k, n in statuses.items() if k[:3] not in ("201", "409")
            )
            references = []
            for runs, shares in (
                ("baseline", "ratio_vs_pgbench"),
                ("call_baseline", "ratio_vs_call"),
            ):
                for n in counts:
                    references += [f"{s[runs][n]['paid_per_second']:,.1f}", f"{s[shares][n]:.0%}"]
            rows.append((
                s["strategy"], f"{http['paid_per_second']:,.1f}", ms(paid["p50"]), ms(paid["p95"]),
                ms(paid["p99"]), ms(every["p95"]), *references,
                "OK" if s["invariants"]["ok"] else "FAILED",
                (refused or "none") + (f" / {rest}" if rest else ""),
            ))  # fmt: skip
        head = ["strategy", "paid/s", "p50 ms", "p95 ms", "p99 ms", "p95 all"]
        for kind in ("pgb", "call"):
            for n in counts:
                head += [f"{kind}{n}/s", "ratio"]
        head += ["invariants", "409s / other"]
        headline = text_table(head, rows, "l" + "r" * (len(head) - 3) + "ll")
        sweep = self.sweep_runs()
        return f"{headline}\n\n{sweep_table(sweep)}" if sweep else headline

    def plot(self, plt: Any, path: Path) -> None:
        """Paid orders/s per strategy with its pgbench baselines; with a buyers sweep, also
        ``<name>-buyers.png``."""
        self.plot_strategies(plt, path)
        if sweep := self.sweep_runs():
            buyers_path = path.with_name(f"{path.stem}-buyers{path.suffix}")
            clients = str(WORKERS * self.load["pg_pool_max_per_worker"])
            listings = self.load.get("listings", 1)
            where = "One listing" if listings == 1 else f"{listings:,} listings"
            title = (
                f"{where}: paid orders/s and p99 by buyers, {WORKERS} jangteo workers;"
                f" pgbench -c {clients} (jangteo's connections) measured once"
            )
            caption = (
                f"{self.date}, {self.machine.cores} cores, {self.load['duration_s']}s measured"
                f" per point, pool {WORKERS}x{self.load['pg_pool_max_per_worker']}"
            )
            references = same_connection_references(self.strategies, clients)
            plot_buyers(plt, sweep, references, clients, title, caption, buyers_path)
            print(f"wrote {as_line(buyers_path)}")

    def plot_strategies(self, plt: Any, path: Path) -> None:
        """Paid orders/s per strategy with its pgbench baselines."""
        counts = self.client_counts()
        xs = range(len(self.strategies))
        paid = [float(s["http"]["paid_per_second"]) for s in self.strategies]
        figure, axes = plt.subplots(figsize=(7.5, 5.0), dpi=120)
        colours = [
            COLOURS["jangteo"] if s["invariants"]["ok"] else "#555555" for s in self.strategies
        ]
        bars(axes, xs, paid, "{:,.0f}", width=0.55, color=colours, label="jangteo paid orders/s")
        top = max([*paid, 1.0])
        styles = iter(["--", ":", "-.", (0, (1, 3))])
        for runs, colour, what in (
            ("baseline", "#222222", "the transaction before one call"),
            ("call_baseline", "#2a7ab9", "jangteo's call"),
        ):
            for n in counts:
                values = [float(s[runs][n]["paid_per_second"]) for s in self.strategies]
                axes.hlines(values, [x - 0.38 for x in xs], [x + 0.38 for x in xs], colors=colour,
                            linestyles=next(styles), label=f"pgbench -c {n}, {what}")  # fmt: skip
                top = max(top, *values)
        for x, s in zip(xs, self.strategies, strict=True):
            text = "\n".join(
                f"{s['ratio_vs_pgbench'][n]:.0%} of pgbench-{n}, before" for n in counts
            )
            text += f"\n{s['ratio_vs_call'][counts[-1]]:.0%} of its call, -c {counts[-1]}"
            text += "\ninvariants OK" if s["invariants"]["ok"] else "\nINVARIANTS FAILED"
            axes.annotate(text, (x, top * 1.13), ha="center", fontsize=7, fontweight="bold")
        axes.set_xticks(xs, [s["strategy"] for s in self.strategies])
        axes.set_ylabel("paid orders / s (higher is better)")
        axes.set_ylim(0, top * 1.45)
        listings = self.load.get("listings", 1)
        where = "one listing" if listings == 1 else f"{listings:,} listings"
        title = f"{self.load['buyers']:,} buyers on {where}: {WORKERS} jangteo workers vs"
        axes.set_title(f"{title} pgbench", fontsize=10)
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=7)
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
    parser.add_argument(
        "--buyers", type=int, default=500, help="concurrent buyers (the table's runs)"
    )
    parser.add_argument(
        "--buyers-sweep", type=buyer_counts, default=[], metavar="N,N,...",
        help="also run every strategy at these buyer counts (--buyers is always one) and draw"
        " <name>-buyers.png; make bench: 50,200,500",
    )  # fmt: skip
    parser.add_argument(
        "--listings", type=int, default=1, help="listings, each purchase of a random one"
    )
    parser.add_argument("--duration", type=int, default=10, help="measured seconds")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured seconds first")
    parser.add_argument("--client-processes", type=int, default=1, help="load client processes")
    parser.add_argument("--pool-max", type=int, default=20, help="JANGTEO_PG_POOL_MAX per worker")
    parser.add_argument("--clients", type=int, default=500, help="pgbench clients (headline)")
    parser.add_argument("--pgbench-seconds", type=int, default=10, help="pgbench -T")
    parser.add_argument(
        "--stock", type=int, default=10_000, help="each listing's stock (max 10000)"
    )
    parser.add_argument("--price", type=int, default=1000)
    parser.add_argument(
        "--purchases-funded", type=int, default=40, help="purchases each buyer's top-up covers"
    )
    parser.add_argument(
        "--restart-wait", type=float, default=120,
        help="seconds to wait for other PostgreSQL clients before restarting for connections",
    )  # fmt: skip
    parser.add_argument("--name", default="purchase", help="results file stem")


async def run(args: argparse.Namespace) -> PurchaseResult:
    machine = Machine()
    stack = services()
    env = {**os.environ, "JANGTEO_REDIS_URL": stack.redis_url, "JANGTEO_DATA_DIR": stack.data_dir}
    database = re.sub(r"\W", "_", f"jangteo_bench_{args.name}")  # jangteo_bench_purchase
    commands: dict[str, Any] = {"database": database_note(database)}
    pool_clients = WORKERS * args.pool_max
    client_counts = list(dict.fromkeys([args.clients, pool_clients]))
    needed = max(client_counts) + 10
    restart = await ensure_connection_room(
        stack.admin_url, needed, env, stack.embedded, args.restart_wait
    )
    if restart:
        commands["restart"] = restart
    commands |= {"jangteo": {}, "pgbench": {}}
    fixture = fixture_for(args, args.buyers)  # pgbench's too: it runs once, at the headline
    points = sweep_points(args.buyers, args.buyers_sweep)
    # The sweep's other buyer counts: their runs by buyers (the headline's are ``strategies``).
    swept: dict[int, list[dict[str, Any]]] = {n: [] for n in points if n != args.buyers}
    strategies: list[dict[str, Any]] = []
    baselines: dict[str, dict[str, dict[str, Any]]] = {}  # script -> clients -> its run
    scripts: dict[str, str] = {}
    async with fresh_database(stack.admin_url, database, keep=args.keep_database) as url:
        await prepare_scripts(url)
        for strategy in args.strategies:
            runs = await run_buyer_counts(
                strategy, points, url=url, redis_url=stack.redis_url, args=args,
                record=commands["jangteo"],
            )  # fmt: skip
            result = runs.pop(args.buyers)
            for buyers, other in runs.items():
                swept[buyers].append(other)
            http = result["http"]
            name = BASELINE_SCRIPT[strategy]
            for script in (name, f"call_{name}"):
                if script not in baselines:
                    baselines[script] = await run_baselines(
                        url, fixture, script, client_counts, args, commands["pgbench"]
                    )
                    scripts[script] = (args.scratch / f"purchase_{script}.sql").read_text()
            before = ratios(http["paid_per_second"], baselines[name])
            result |= {
                "baseline_script": name,
                "baseline": baselines[name],
                "ratio_vs_pgbench": before,
                "call_baseline": baselines[f"call_{name}"],
                "ratio_vs_call": ratios(http["paid_per_second"], baselines[f"call_{name}"]),
                "meets_target": bool(
                    result["invariants"]["ok"] and before[str(args.clients)] >= 0.5
                ),
            }
            strategies.append(result)
    where = "/api/v1/listings/{id}/purchase" + (
        f" (a random one of {args.listings} listings each time)" if args.listings > 1 else ""
    )
    commands["load"] = (
        f"python -m loadtests bench purchase: {args.buyers} asyncio buyers (aiohttp, one"
        f" ClientSession per client process, connector limit {args.buyers} in all), each"
        f' looping POST {where} {{"quantity":1}} with a fresh Idempotency-Key, no back-off'
        " on 409"
    )
    if len(points) > 1:
        commands["load"] += (
            f"; --buyers-sweep: each strategy with {', '.join(map(str, points))} buyers in"
            f" turn, fewest first; pgbench once per script, on {args.buyers} buyers' data"
        )
    return PurchaseResult(
        benchmark="purchase",
        machine=machine,
        versions=await versions(),
        load={
            "buyers": args.buyers,
            "listings": args.listings,
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
        target=(
            f"paid orders/s >= 50% of pgbench running the purchase transaction as it was before"
            f" the one-call purchase (-c {args.clients}), zero oversell, no lost money; shown"
            " against pgbench making jangteo's own call"
        ),
        strategies=strategies,
        pgbench_scripts=scripts,
        buyers_sweep=sweep_record(points, args.buyers, swept),
    )
