"""Event sources of the realtime benchmark, and what jangteo's /metrics says about them.

- ``patch_prices``: PATCH a listing's price over REST at a steady rate (each commit writes
  one ``listing.price_changed`` outbox row, as a seller's edit does);
- ``insert_rows``: outbox rows at a steady rate (small transactions from a few asyncpg
  connections sharing one schedule), or as fast as the connections can commit them;
- ``commit_latency``: what one committed row costs alone (the WAL flush);
- ``scrape`` / ``histogram_summary`` / ``counter_delta``: Prometheus text from
  ``GET /metrics``, before and after a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from db.queries.outbox import events_written, notify_if_events_written
from loadtests.harness.stack import connected
from loadtests.harness.stats import bucket_quantile, summary_ms

EVENT_TYPE = "listing.updated"  # of the rows inserted for the relay
# Writers commit as jangteo's own do: the outbox trigger stays quiet, and the relay is
# woken by a NOTIFY after the commit (a NOTIFY inside the transaction would serialise
# every commit, WAL flush included: docs/architecture.md).
WRITER_SETTINGS = {"jangteo.notify_after_commit": "on"}
INSERT = "INSERT INTO outbox (channel, type, data) VALUES ($1, $2, $3::jsonb)"
INSERT_MANY = (
    "INSERT INTO outbox (channel, type, data)"
    " SELECT $1, $2, jsonb_build_object('seq', $3::bigint + g, 'bench', 'relay')"
    " FROM generate_series(1, $4::int) AS g"
)


def _late_summary(late: Sequence[float]) -> dict[str, float]:
    return {
        "late_over_5ms": sum(1 for value in late if value > 0.005),
        "max_late_ms": round(max(late) * 1000, 2) if late else 0.0,
    }


def p50_p99_ms(seconds: Iterable[float]) -> dict[str, float | None]:
    """p50 and p99 of samples in seconds, in ms, by the harness's one percentile definition."""
    figures = summary_ms(seconds)
    return {"p50": figures["p50"], "p99": figures["p99"]}


async def patch_prices(
    base_urls: Sequence[str],
    token: str,
    listing_id: int,
    *,
    rate: float,
    seconds: float,
    first: int = 0,
) -> dict[str, Any]:
    """PATCH the price ``rate`` times a second for ``seconds`` (round-robin over base URLs),
    each a new price (``first`` numbers them on from an earlier call).

    Each request starts at its slot of the schedule, whether or not the previous one has
    answered. Statuses and response times are returned; a 200 is one committed event.
    """
    total = max(1, round(rate * seconds))
    headers = {"Authorization": f"Bearer {token}", "If-Match": "*"}
    statuses: Counter[str] = Counter()
    durations: list[float] = []
    late: list[float] = []
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(number: int) -> None:
            url = f"{base_urls[number % len(base_urls)]}/api/v1/listings/{listing_id}"
            started = loop.time()
            try:
                body = {"price": 20_000 + first + number}  # always a change: one event each
                async with session.patch(url, json=body, headers=headers) as response:
                    await response.read()
                    statuses[str(response.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as error:
                statuses[type(error).__name__] += 1
            durations.append(loop.time() - started)

        start = loop.time() + 0.1
        tasks = []
        for number in range(total):
            delay = start + number / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                late.append(-delay)
            tasks.append(asyncio.create_task(one(number)))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
    return {
        "requests": total,
        "committed": statuses.get("200", 0),
        "statuses": dict(statuses),
        "seconds": round(elapsed, 3),
        "rate": round(total / elapsed, 1),
        "response_ms": p50_p99_ms(durations),
        **_late_summary(late),
    }


async def insert_rows(
    database_url: str,
    channel: str | Sequence[str],
    *,
    seconds: float,
    rate: float | None,
    connections: int,
    rows_per_transaction: int = 1,
    pool: asyncpg.Pool | None = None,
    until: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Commit outbox rows for ``seconds``: ``rate`` rows a second, or flat out when None;
    sooner when ``until`` is set.

    Paced, transaction k is due at ``start + k * rows_per_transaction / rate``, and
    ``connections`` connections take the transactions in turn, so one slow commit delays
    only its own rows (a transaction is late when every connection was still busy at its
    slot). Flat out, every connection commits back to back. Given several channels,
    transaction k writes to channel ``k % len(channels)`` (``transactions`` in the answer
    counts them). ``pool`` (at least ``connections`` connections, with
    ``WRITER_SETTINGS``) is used instead of one of its own, so that its backends outlive
    the run.
    """
    channels = [channel] if isinstance(channel, str) else list(channel)
    transactions = (
        math.inf if rate is None else max(1, round(rate * seconds / rows_per_transaction))
    )
    interval = 0.0 if rate is None else rows_per_transaction / rate
    loop = asyncio.get_running_loop()
    late: list[float] = []
    commit_s: list[float] = []
    next_slot = 0
    async with contextlib.AsyncExitStack() as stack:
        if pool is None:
            pool = await stack.enter_async_context(
                asyncpg.create_pool(
                    database_url,
                    min_size=connections,
                    max_size=connections,
                    server_settings=WRITER_SETTINGS,
                )
            )
        start = loop.time() + 0.2
        stop = start + seconds
        await asyncio.sleep(max(0.0, start - loop.time()))
        started = time.time()

        async def worker() -> None:
            nonlocal next_slot
            assert pool is not None
            async with pool.acquire() as conn:
                while next_slot < transactions and (rate is not None or loop.time() < stop):
                    if until is not None and until.is_set():
                        break
                    number = next_slot
                    next_slot += 1
                    if rate is not None:
                        delay = start + number * interval - loop.time()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        else:
                            late.append(-delay)
                    sent = loop.time()
                    first = number * rows_per_transaction
                    into = channels[number % len(channels)]
                    if rows_per_transaction == 1:
                        data = f'{{"seq": {first}, "bench": "relay"}}'
                        await conn.execute(INSERT, into, EVENT_TYPE, data)
                    else:
                        await conn.execute(
                            INSERT_MANY, into, EVENT_TYPE, first, rows_per_transaction
                        )
                    commit_s.append(loop.time() - sent)
                    events_written(conn, [into])
                    await notify_if_events_written(conn)

        await asyncio.gather(*(worker() for _ in range(connections)))
    ended = time.time()
    rows = len(commit_s) * rows_per_transaction
    return {
        "rows": rows,
        "transactions": len(commit_s),
        "seconds": round(ended - started, 3),
        "rate": round(rows / (ended - started), 1),
        "target_rate": rate,
        "connections": connections,
        "rows_per_transaction": rows_per_transaction,
        "commit_ms": p50_p99_ms(commit_s),
        **_late_summary(late),
        "started_at": started,
        "ended_at": ended,
    }


async def commit_latency(database_url: str, samples: int = 50) -> dict[str, float | None]:
    """Milliseconds of a one-row INSERT committed alone, one after another: the WAL flush.

    A relay that commits anything before it publishes can be no faster than this.
    """
    times: list[float] = []
    async with connected(database_url) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_floor (n int)")
        for number in range(samples):
            started = time.perf_counter()
            await conn.execute("INSERT INTO bench_commit_floor VALUES ($1)", number)
            times.append(time.perf_counter() - started)
        await conn.execute("DROP TABLE bench_commit_floor")
    return {"samples": samples, **p50_p99_ms(times)}


# ----------------------------------------------------------------------------- /metrics


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(base_url: str) -> Samples:
    """Every sample of ``GET /metrics``, keyed by (name, sorted labels)."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{base_url}/metrics") as response,
    ):
        return parse(await response.text())


def parse(text: str) -> Samples:
    """Every sample of Prometheus text, keyed by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def added(scrapes: Iterable[Samples]) -> Samples:
    """Several instances' samples added up, key by key: what counters and histograms say
    for all of them together (not meaningful for gauges)."""
    total: Samples = {}
    for samples in scrapes:
        for key, value in samples.items():
            total[key] = total.get(key, 0.0) + value
    return total


def matching(samples: Samples, word: str) -> dict[str, float]:
    """The samples whose name contains ``word``, as ``name{labels}: value``."""
    shown: dict[str, float] = {}
    for (name, labels), value in sorted(samples.items()):
        if word in name and not name.endswith("_created"):
            label_text = ",".join(f"{k}={v}" for k, v in labels)
            shown[f"{name}{{{label_text}}}" if label_text else name] = value
    return shown


def counter_delta(before: Samples, after: Samples, name: str) -> float | None:
    """How much a label-less counter grew; None when /metrics has no such sample."""
    if (name, ()) not in after:
        return None
    return after[(name, ())] - before.get((name, ()), 0.0)


def histogram_summary(
    before: Samples, after: Samples, name: str, within: float
) -> dict[str, float | None] | None:
    """Quantiles (interpolated within buckets) of what a histogram observed between scrapes.

    ``share_within`` is the fraction of observations at or below ``within`` seconds, when
    that is a bucket bound. None when the histogram is not in /metrics.
    """
    bounds = {
        float(dict(labels)["le"]): value - before.get((sample, labels), 0.0)
        for (sample, labels), value in after.items()
        if sample == f"{name}_bucket" and "le" in dict(labels)
    }
    if not bounds:
        return None
    cumulative = sorted(bounds.items())
    total = cumulative[-1][1]
    summary: dict[str, float | None] = {"count": total}
    for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        summary[f"{label}_ms"] = bucket_quantile(cumulative, q)
    summary["above_largest_bucket"] = total - cumulative[-2][1] if len(cumulative) > 1 else 0.0
    share = bounds.get(within)
    summary[f"share_within_{within * 1000:g}ms"] = (
        round(share / total, 5) if total and share else None
    )
    return summary


def gauge(samples: Samples, name: str) -> float:
    return samples.get((name, ()), 0.0)
