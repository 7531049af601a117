"""One chaos run, start to verdict: cluster, market, watchers, nemesis, heal, checks, audit.

After the schedule has run and everything is healed, the run passes when:

- ``ready-again``: every instance's ``/readyz`` answers 200 again;
- ``watchers-back``: every watcher has a socket with all its channels subscribed;
- ``fresh-event``: a price edit reaches every watcher within the limit (2 s);
- ``all-published``: the relay has published every committed outbox row;
- ``shutdown``: every SIGTERM ended its instance with status 0 in time;
- ``instance-crashed``: no instance exited on its own;
- ``stall`` (only with ``--max-stall``): no fault alone made subscribers wait longer;
- and every invariant of ``loadtests/audit.py`` (no oversell, money conserved, one
  order per 201, every message stored once, every watcher got exactly the committed
  offsets of its channels in order: ``ws-delivery``, ``ws-prev``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from loadtests import audit
from loadtests.chaos.cluster import Cluster, ClusterError, Instance, probe
from loadtests.chaos.nemesis import Nemesis
from loadtests.chaos.proxy import TcpProxy
from loadtests.chaos.schedule import plan
from loadtests.chaos.stall import Phase, measure
from loadtests.chaos.traffic import Market, Writers, open_market
from loadtests.chaos.watchers import Watcher, now_ms
from loadtests.harness.stack import connected

INSTANCES = 3
FRESH_PRICE = 9_999_999  # never one of the editor's prices
SETTLED_S = 90.0  # how long each check after the heal waits for the system to get there
GOAL_S = 5.0  # the longest stall of live delivery allowed under any single fault


@dataclass(frozen=True, slots=True)
class Options:
    """What ``python -m loadtests.chaos`` was asked for (its options, defaults there)."""

    seed: int
    duration: float
    output: Path
    history: int  # events the slow client resumes
    watchers: int  # per instance
    slow_rate: int  # bytes per second on the slow link
    fresh_limit: float
    max_stall: float | None
    keep: bool  # the scratch directory, also when the run passed


Broken = list[tuple[str, str]]


async def chaos(options: Options, cluster: Cluster) -> dict[str, Any]:
    """Run the schedule against ``cluster`` (started here; the caller closes it)."""
    faults = plan(options.seed, options.duration)
    print(f"chaos: seed {options.seed}, {options.duration:g} s, {len(faults)} faults:")
    for fault in faults:
        print(f"  {fault.describe()}")
    connector = aiohttp.TCPConnector(limit=0)
    marks = {"start": time.monotonic()}
    async with aiohttp.ClientSession(connector=connector) as http:
        await cluster.start()
        strategies = ", ".join(f"{i.name} {i.strategy}" for i in cluster.instances)
        print(f"chaos: {len(cluster.instances)} instances up ({strategies})", flush=True)
        market = await open_market(http, cluster, options.history)
        stop = asyncio.Event()
        watchers = _watchers(market, cluster, options)
        slow: list[Watcher] = []
        tasks = [asyncio.create_task(watcher.run(http, stop)) for watcher in watchers]

        def slow_client(instance: Instance, link: TcpProxy) -> Callable[[], str]:
            channel = f"room:{market.rooms['history']}"
            watcher = Watcher(
                f"slow-{len(slow) + 1}",
                market.buyers[2],
                [channel],
                lambda: [instance],
                rng=random.Random(options.seed + len(slow)),
                drop_every=None,
                port=lambda _: link.port,
                since={channel: market.history_since},
                measured=False,
            )
            slow.append(watcher)
            tasks.append(asyncio.create_task(watcher.run(http, stop)))
            return lambda: (
                f"{len(watcher.deliveries)} of {options.history} history events by then, "
                f"{len(watcher.connections)} socket(s), closes {dict(watcher.ended)}"
            )

        if not await _eventually(lambda: all(w.live for w in watchers), SETTLED_S):
            raise ClusterError("the watchers could not subscribe")
        print(f"chaos: {len(watchers)} watchers subscribed; traffic and faults start", flush=True)
        nemesis = Nemesis(cluster, http, slow_client, options.slow_rate)
        monitoring = asyncio.Event()
        monitor = asyncio.create_task(nemesis.monitor(monitoring))
        writers = Writers(market)
        broken: Broken = []
        marks["faults"] = time.monotonic()
        try:
            await nemesis.run(faults)
            print(f"chaos: schedule done at {nemesis.clock():.1f} s; healing", flush=True)
            marks["heal"] = time.monotonic()
            await nemesis.heal()
            ready = await _ready_again(http, cluster, broken)
            everyone = watchers + slow
            if not await _eventually(lambda: all(w.live for w in everyone), SETTLED_S):
                names = [w.name for w in everyone if not w.live]
                broken.append(("watchers-back", f"not subscribed again: {', '.join(names)}"))
            fresh = await _fresh_event(market, watchers, options.fresh_limit, broken)
        finally:
            marks["stop"] = time.monotonic()
            await writers.stop()
        until_ms = now_ms()
        marks["drain"] = time.monotonic()
        await _all_published(cluster.database_url, broken)
        await _caught_up(cluster.database_url, watchers + slow)
        stop.set()
        await asyncio.gather(*tasks)
        monitoring.set()
        await monitor
        broken += nemesis.broken

    marks["audit"] = time.monotonic()
    lines = market.records + [r for w in watchers + slow for r in w.records(until_ms)]
    (cluster.scratch / "records.jsonl").write_bytes(b"\n".join(map(orjson.dumps, lines)))
    seen = [watcher.trace() for watcher in watchers + slow]
    (cluster.scratch / "watchers.jsonl").write_bytes(b"\n".join(map(orjson.dumps, seen)))
    records = audit.Records.from_lines(lines)
    result = await audit.audit(records, cluster.database_url)
    stall = _stall(nemesis, watchers)
    if options.max_stall is not None:
        broken += _stalls_over(stall, options.max_stall)
    violations = [(v.invariant, v.detail) for v in result.violations] + broken
    marks["end"] = time.monotonic()
    names = list(marks)
    took = {
        f"{name}_s": round(marks[after] - marks[name], 1)
        for name, after in itertools.pairwise(names)
    }
    return {
        "seed": options.seed,
        "duration_s": options.duration,
        "passed": not violations,
        "broken": sorted({name for name, _ in violations}),
        "violations": [{"invariant": name, "detail": detail} for name, detail in violations[:200]],
        "schedule": [fault.as_json() for fault in faults],
        "history": [applied.as_json() for applied in nemesis.history],
        "timeline": nemesis.timeline,
        "stall": {**stall, "goal_s": GOAL_S, "over_goal": _stalls_over(stall, GOAL_S)},
        "fresh_event": fresh,
        "took": took,
        "ready_again": ready,
        "audit": {
            "checked": result.checked,
            "invariants": list(audit.INVARIANTS),
            "broken": result.broken,
            "records": records.other,
        },
        "traffic": {
            "answers": dict(sorted(market.answers.items())),
            "orders_by_strategy": dict(market.strategies),
            "history_events": options.history,
        },
        "instances": [
            {"name": i.name, "starts": i.starts, "last_strategy": i.strategy}
            for i in cluster.instances
        ],
        "watchers": [watcher.summary() for watcher in watchers + slow],
    }


def _watchers(market: Market, cluster: Cluster, options: Options) -> list[Watcher]:
    """``options.watchers`` per instance, as the seller and the buyers in turn."""
    accounts = [market.seller, *market.buyers]
    watchers = []
    for n in range(options.watchers * len(cluster.instances)):
        account = accounts[n % len(accounts)]
        watchers.append(
            Watcher(
                f"watcher-{n}",
                account,
                market.watched(account),
                cluster.serving,
                rng=random.Random(options.seed * 1000 + n),
                first=n,
            )
        )
    return watchers


async def _eventually(check: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def _ready_again(
    http: aiohttp.ClientSession, cluster: Cluster, broken: Broken
) -> dict[str, Any]:
    """Wait until every instance's /readyz is 200; how long that took, or what it said."""
    started = time.monotonic()
    statuses: list[int | None] = []
    while time.monotonic() - started < SETTLED_S:
        probes = await asyncio.gather(*(probe(http, i) for i in cluster.instances))
        statuses = [ready for ready, _ in probes]
        if all(status == 200 for status in statuses):
            return {"ready_after_s": round(time.monotonic() - started, 2)}
        await asyncio.sleep(0.5)
    detail = ", ".join(f"{i.name}: {s}" for i, s in zip(cluster.instances, statuses, strict=True))
    broken.append(("ready-again", f"/readyz after {SETTLED_S:g} s: {detail}"))
    return {"ready_after_s": None, "statuses": statuses}


async def _fresh_event(
    market: Market, watchers: Sequence[Watcher], limit: float, broken: Broken
) -> dict[str, Any]:
    """A price edit after the heal: how long until each watcher had it."""
    listing = market.steady[0]
    channel = f"listing:{listing}"
    deadline = time.monotonic() + SETTLED_S
    sent = now_ms()
    while not await market.edit(listing, FRESH_PRICE):
        if time.monotonic() > deadline:
            broken.append(("fresh-event", "the price edit was never answered 200"))
            return {"limit_s": limit}
        await asyncio.sleep(0.3)
        sent = now_ms()
    key = (channel, FRESH_PRICE)
    await _eventually(lambda: all(key in w.prices for w in watchers), max(limit, 30.0))
    took = {w.name: round((w.prices[key] - sent) / 1000, 3) for w in watchers if key in w.prices}
    missing = [w.name for w in watchers if key not in w.prices]
    late = {name: s for name, s in took.items() if s > limit}
    if missing or late:
        detail = f"missing at {', '.join(missing) or 'none'}; later than {limit:g} s: {late}"
        broken.append(("fresh-event", detail))
    return {
        "limit_s": limit,
        "worst_s": max(took.values(), default=None),
        "per_watcher_s": took,
        "missing": missing,
    }


async def _all_published(database_url: str, broken: Broken) -> None:
    async with connected(database_url) as conn:
        deadline = time.monotonic() + SETTLED_S
        while pending := await conn.fetchval("SELECT count(*) FROM outbox WHERE position IS NULL"):
            if time.monotonic() > deadline:
                broken.append(("all-published", f"{pending} committed rows never published"))
                return
            await asyncio.sleep(0.2)


async def _caught_up(database_url: str, watchers: Sequence[Watcher]) -> None:
    """Until every watcher had its channels' last events (the audit says what is missing)."""
    channels = sorted({channel for watcher in watchers for channel in watcher.channels})
    async with connected(database_url) as conn:
        rows = await conn.fetch(
            "SELECT channel, max(position) AS head FROM outbox"
            " WHERE channel = ANY($1::text[]) AND position IS NOT NULL GROUP BY channel",
            channels,
        )
    heads = {row["channel"]: row["head"] for row in rows}

    def done() -> bool:
        return all(
            (watcher.last(channel) or 0) >= heads.get(channel, 0)
            for watcher in watchers
            for channel in watcher.channels
        )

    await _eventually(done, SETTLED_S)


def _stall(nemesis: Nemesis, watchers: Sequence[Watcher]) -> dict[str, Any]:
    def ms(seconds: float | None) -> float:
        return float("inf") if seconds is None else nemesis.t0_ms + seconds * 1000.0

    down = {
        index: [(ms(start), ms(end)) for start, end in windows]
        for index, windows in nemesis.down.items()
    }
    phases = [
        Phase(label, ms(start), ms(end), applied.fault.number, applied.instance)
        for applied in nemesis.history
        for label, start, end in applied.phases
    ]
    return measure([w for w in watchers if w.measured], down, phases, nemesis.t0_ms)


def _stalls_over(stall: dict[str, Any], limit: float) -> Broken:
    """Faults that alone (no other fault active) made subscribers wait over ``limit``."""
    return [
        ("stall", f"fault #{entry['fault']} {entry['phase']}: {entry['stall_s']} s")
        for entry in stall["per_fault"]
        if entry["stall_s"] is not None and entry["stall_s"] > limit and not entry["also_active"]
    ]


def summary(report: dict[str, Any]) -> str:
    """What the run printed last: the stall, the checks, and the verdict."""
    lines = []
    stall = report.get("stall") or {}
    longest = stall.get("longest")
    if longest:
        faults = ", ".join(longest["began_during"]) or "no fault"
        lines.append(
            f"longest stall {longest['stall_s']} s ({longest['channel']} at {longest['watcher']}"
            f" on instance-{longest['watcher_on']}, {longest['from_s']} s -> "
            f"{longest['delivered_s']} s; began during: {faults})"
        )
    lines.append(f"  {'fault kind':<20} {'longest':>9}   {'alone':>9}")
    for kind, entry in (stall.get("per_kind") or {}).items():
        alone = "-" if entry["alone_s"] is None else f"{entry['alone_s']} s"
        lines.append(
            f"  {kind:<20} {entry['stall_s']:>7} s   {alone:>9}  (fault #{entry['fault']})"
        )
    if stall.get("without_fault"):
        lines.append(f"  {'no fault':<20} {stall['without_fault']['stall_s']:>7} s")
    if stall:
        lines.append(f"  (left out: {stall['excluded']})")
    took = ", ".join(f"{k.removesuffix('_s')} {v} s" for k, v in report.get("took", {}).items())
    lines.append(f"took: {took}")
    fresh = report.get("fresh_event") or {}
    lines.append(f"fresh event: worst {fresh.get('worst_s')} s (limit {fresh.get('limit_s')} s)")
    audited = report.get("audit", {}).get("checked", {})
    lines.append("audited: " + ", ".join(f"{key} {value}" for key, value in audited.items()))
    for violation in report.get("violations", [])[:30]:
        lines.append(f"INVARIANT BROKEN {violation['invariant']}: {violation['detail']}")
    return "\n".join(lines)


def history_text(report: dict[str, Any]) -> str:
    parts = []
    for applied in report.get("history", []):
        where = f" instance-{applied['instance']}" if applied["instance"] is not None else ""
        when = (
            f"skipped ({applied['skipped']})"
            if applied["skipped"]
            else f"{applied['started_s']}-{applied['ended_s']} s"
        )
        parts.append(f"#{applied['number']} {applied['kind']}{where} {when}")
    return "; ".join(parts)


def write(report: dict[str, Any], output: Path, started: dt.datetime) -> None:
    report = {"started": started.isoformat(timespec="seconds"), **report}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
