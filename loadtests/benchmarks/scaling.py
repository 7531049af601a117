"""Scaling out: relay partitions on two instances, and Redis Cluster against one Redis.

1. partitions: two jangteo instances (one process each) on one Redis. For each count of
   ``--partitions`` (``db.queries.relay.set_partitions``; the outbox emptied first, so
   every count starts alike), once both instances' /readyz show the partitions led and
   spread: outbox rows on ``--channels`` channels, as many in each partition of the
   largest count (transaction k writes to channel k mod channels), from one pool of
   inserting connections (``bench-inserter``). ``--subscribed`` of the channels, one in
   each partition, have a socket (on either instance), whose frames say how late events
   arrive and that none is missing, repeated or out of order.

   a. paced: ``--paced-rate`` rows/s, one per commit, for ``--paced-seconds``.
   b. the sweep: offered rates ``--sweep-start`` times ``--sweep-factor`` to the k, up to
      ``--sweep-max``, for ``--step-seconds`` each, in commits of ``--step-rows`` rows
      from ``--step-connections`` connections. A step keeps up when every subscribed
      event arrived, at the rate its rows committed, the last within 1 s of the last
      commit, and the lag of the last third of the step is not above 1.5 times that of
      the first plus 10 ms. A step that misses is run once more; the sweep stops at the
      second miss of a rate, or when the commits did not reach 95 % of the offered rate
      (the load, not the relay, is the limit then). The count's sustained rate is the
      committed rate of its fastest step that kept up.

   Every run: commit-to-publish p50/p99 from both instances' ``jangteo_relay_lag_seconds``
   (added, quantiles interpolated in its buckets), commit-to-receive from the frames, and
   the cores each group of processes used while rows were committed (psutil: user +
   system CPU time of every process): PostgreSQL split into the relay's sessions, the
   inserting connections, the instances' pools and its background processes; the Redis
   under test; the two instances; this process (the inserts) and the socket clients.

2. cluster: the realtime benchmark's fan-out (2,000 sockets on two instances, steady
   PATCHes and bursts, without the references) and the chat benchmark, each once on the
   single embedded Redis and once on a local Redis Cluster of the run's own (three
   masters, three replicas from Debian's redis-server; ``JANGTEO_REDIS_MODE=cluster``),
   ``--cluster-rounds`` times with the order alternating. The cluster's cost: throughput
   lost and p99 added, in % of the single Redis's, best of the rounds each.
3. connections: before each session's instances stop, ``CLIENT LIST`` on every node,
   each connection attributed to the instance whose TCP connection it is (psutil) and
   grouped by client name (``jangteo-events``, ``jangteo-near-cache``, else the command
   pool).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import psutil
import redis

from db.queries.relay import set_partitions
from loadtests.benchmarks import chat, realtime
from loadtests.clients import events as event_load
from loadtests.clients.ws import LoadClients, SourceAddresses, Target, raise_open_files
from loadtests.harness import report
from loadtests.harness.cpu import CLIENT, CpuMeter, backend_groups, listening_pid
from loadtests.harness.processes import BenchError, Server, server_problems
from loadtests.harness.report import COLOURS, bars, finish
from loadtests.harness.results import Machine, Result, other_load, versions
from loadtests.harness.stack import (
    Inspect,
    connected,
    database_note,
    fetch,
    fresh_database,
    own_redis_cluster,
    serve_settings,
    services,
    sign_up,
)
from loadtests.harness.stats import summary
from server.embedded.redis_cluster import EmbeddedRedisCluster
from server.settings import Settings

DATABASE = "jangteo_bench_scaling"
NAMES = ("jangteo-1", "jangteo-2")
INSERTER = "bench-inserter"  # application_name of the inserting connections
TARGETS = {"partitions_times_one": 2.0, "paced_p99_ms": 10.0, "cluster_cost_pct": 10.0}
MIN_REACHED = 0.95  # of the offered rate: below it, the commits are the limit
MIN_PUBLISHED = 0.97  # of the committed rate
MAX_DRAIN_S = 1.0  # last event after the last commit
EVENT_CLIENTS = {"jangteo-events": "events", "jangteo-near-cache": "near_cache"}
OPTIONS = (  # flag, default (its type is the option's), help
    ("--channels", 64, "channels the rows go to, as many in each partition"),
    ("--subscribed", 8, "channels with a socket (one per partition of the largest count)"),
    ("--paced-rate", 1000.0, "rows/s of the paced run, one per commit"),
    ("--paced-seconds", 10.0, "seconds of the paced run"),
    ("--paced-connections", 16, "connections of the paced run"),
    ("--sweep-start", 2000.0, "first offered rate of the sweep, rows/s"),
    ("--sweep-factor", 1.41, "each offered rate is the last times this"),
    ("--sweep-max", 128_000.0, "no offered rate above this"),
    ("--step-seconds", 8.0, "seconds of each sweep step"),
    ("--step-rows", 50, "rows per commit in the sweep"),
    ("--step-connections", 16, "inserting connections in the sweep"),
    ("--pause", 1.0, "seconds between runs"),
    ("--cluster-rounds", 2, "sessions of each kind per Redis (order alternating)"),
    ("--client-processes", 2, "socket client processes"),
    ("--fanout", "", "options of the fan-out, as bench realtime takes them"),
    ("--chat", "", "options of the chat, as bench chat takes them"),
)


def options(parser: argparse.ArgumentParser) -> None:
    for flag, default, meaning in OPTIONS:
        parser.add_argument(flag, type=type(default), default=default, help=meaning)
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 2, 4, 8])
    phases = ["partitions", "cluster"]
    parser.add_argument("--phases", nargs="+", choices=phases, default=phases)


# ----------------------------------------------------------------------------- the rules


def geometric(start: float, factor: float, top: float) -> list[float]:
    """``start``, ``start * factor``, ... up to ``top``, each to 10 rows/s."""
    if start <= 0 or factor <= 1:
        raise ValueError("the sweep needs a positive start and a factor above 1")
    rates, rate = [], start
    while rate <= top * 1.0001:
        rates.append(round(rate, -1))
        rate *= factor
    return rates


def misses(
    *, committed: float, received: float, drain_s: float | None, missing: int,
    lag_thirds: Sequence[float | None],
) -> list[str]:  # fmt: skip
    """Why a run did not keep up (empty: it did). Rates are rows (events) per second of the
    subscribed channels; the lag of the first and last third of the run, in ms."""
    why = []
    if missing > 0:
        why.append(f"{missing} subscribed events did not arrive")
    if received < MIN_PUBLISHED * committed:
        why.append(f"received {received:,.0f}/s of {committed:,.0f}/s committed")
    if drain_s is None:
        why.append("no subscribed event arrived")
    elif drain_s > MAX_DRAIN_S:
        why.append(f"the last event came {drain_s:.1f} s after the last commit")
    first, last = lag_thirds
    if first is not None and last is not None and last > 1.5 * first + 10:
        why.append(f"the lag grew from {first:g} to {last:g} ms")
    return why


def next_rate(steps: Sequence[Mapping[str, Any]], series: Sequence[float]) -> float | None:
    """The offered rate of the sweep's next step (None: the sweep is over).

    Steps go up the series; a step that did not keep up is run once more at its rate and
    the sweep stops when that misses too; it stops at once when the commits fell short of
    the offered rate (a higher one cannot be offered either), or at the series' end.
    """
    if not steps:
        return series[0] if series else None
    last = steps[-1]
    if not last["reached"]:
        return None
    if not last["kept_up"]:
        tries = sum(1 for step in steps if step["offered"] == last["offered"])
        return last["offered"] if tries < 2 else None
    higher = [rate for rate in series if rate > last["offered"]]
    return higher[0] if higher else None


def stop_reason(steps: Sequence[Mapping[str, Any]]) -> str:
    """Why the sweep ended after ``steps`` (``next_rate`` said None)."""
    if not steps:
        return "no step ran"
    last = steps[-1]
    if not last["reached"]:
        return f"the commits reached only {last['committed']:,.0f} of {last['offered']:,.0f}/s"
    if not last["kept_up"]:
        return f"fell behind twice at {last['offered']:,.0f}/s: {'; '.join(last['why'])}"
    return "the top of the series"


def sustained(steps: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The step with the highest committed rate among those that kept up."""
    kept = [step for step in steps if step["kept_up"]]
    return max(kept, key=lambda step: float(step["committed"])) if kept else None


def led_evenly(leading: Sequence[Sequence[int]], partitions: int) -> bool:
    """Every partition led once, and no instance leads two more than another."""
    counts = [len(ours) for ours in leading]
    every = sorted(p for ours in leading for p in ours) == list(range(partitions))
    return every and max(counts) - min(counts) <= 1


def cpu_split(cores: Mapping[str, float], instances: Sequence[str]) -> dict[str, float]:
    """Cores per kind of process: PostgreSQL (all its processes but other databases'
    backends), Redis, the jangteo instances, the load (this process and the socket
    clients), and everything else."""
    split = dict.fromkeys(("postgresql", "redis", "jangteo", "load", "others"), 0.0)
    for group, used in cores.items():
        if group.startswith("postgres"):
            kind = "postgresql"
        elif group == "redis":
            kind = "redis"
        elif group in instances:
            kind = "jangteo"
        elif group in (CLIENT, "socket clients"):
            kind = "load"
        else:
            kind = "others"
        split[kind] += used
    return {kind: round(used, 3) for kind, used in split.items()}


def per_event(
    cores: Mapping[str, float], split: Mapping[str, float], rate: float
) -> dict[str, float] | None:
    """CPU microseconds per event committed: the relay's PostgreSQL sessions, all of
    PostgreSQL, and the jangteo instances."""
    if rate <= 0:
        return None
    used = {
        "postgres_relay_sessions": cores.get("postgres: relay sessions", 0.0),
        "postgresql": split["postgresql"],
        "jangteo": split["jangteo"],
    }
    return {kind: round(value / rate * 1e6, 1) for kind, value in used.items()}


def connections_by_instance(
    nodes: Mapping[str, Mapping[str, Any]], owners: Mapping[tuple[int, int], str]
) -> dict[str, Any]:
    """Each node's clients (``{"port", "role", "clients": CLIENT LIST entries}``)
    attributed to the instance holding the connection from the client's port to the
    node's (``owners``: (local port, node port) -> instance), by kind."""
    by_instance: dict[str, dict[str, dict[str, int]]] = {}
    unattributed: dict[str, int] = {}
    for node, seen in nodes.items():
        for client in seen["clients"]:
            owner = owners.get((int(client["addr"].rsplit(":", 1)[1]), int(seen["port"])))
            if owner is None:
                unattributed[node] = unattributed.get(node, 0) + 1
                continue
            kind = EVENT_CLIENTS.get(client.get("name") or "", "command_pool")
            counts = by_instance.setdefault(owner, {}).setdefault(
                node, dict.fromkeys(("events", "near_cache", "command_pool"), 0)
            )
            counts[kind] += 1
    masters = sorted(node for node, seen in nodes.items() if seen["role"] == "master")
    per_instance = {}
    for owner, on_nodes in sorted(by_instance.items()):
        empty = dict.fromkeys(("events", "near_cache", "command_pool"), 0)
        events = {node: on_nodes.get(node, empty)["events"] for node in masters}
        on_replicas = sum(c["events"] for n, c in on_nodes.items() if n not in masters)
        per_instance[owner] = {
            "events_per_master": events,
            "events_on_replicas": on_replicas,
            "near_cache": sum(c["near_cache"] for c in on_nodes.values()),
            "command_pool": sum(c["command_pool"] for c in on_nodes.values()),
            "total": sum(sum(c.values()) for c in on_nodes.values()),
            "as_intended": all(n == 1 for n in events.values())
            and on_replicas == 0
            and sum(c["near_cache"] for c in on_nodes.values()) == 1,
        }
    return {
        "masters": masters,
        "per_instance": per_instance,
        "by_instance_and_node": by_instance,
        "not_an_instance": unattributed,
        "as_intended": bool(per_instance) and all(i["as_intended"] for i in per_instance.values()),
    }


def cost_pct(single: float | None, cluster: float | None, *, lower_is_better: bool) -> float | None:
    """What the cluster costs against the single Redis, in % of the single's figure:
    throughput lost, or latency added (negative: the cluster did better)."""
    if single is None or cluster is None or not single:
        return None
    lost = cluster - single if lower_is_better else single - cluster
    return round(lost / single * 100, 1)


# ----------------------------------------------------------------------------- the result


@dataclass(kw_only=True, slots=True)
class ScalingResult(Result):
    partitions: dict[str, Any] | None = None
    cluster: dict[str, Any] | None = None
    targets: dict[str, float] = field(default_factory=lambda: dict(TARGETS))
    failed: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {key: value for key, value in Result.as_json(self).items() if value is not None}

    def failures(self) -> list[str]:
        return self.failed

    def table(self) -> str:
        data = self.as_json()
        return f"{report.table(report.scaling_rows(data))}\n\n{report.scaling_details(data)}"

    def plot(self, plt: Any, path: Path) -> None:
        """Sustained rate and p99 by partitions, p99 along each sweep, the CPU split at
        each sustained rate, and the cluster's cost."""
        figure, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=110)
        (rates, sweep), (cpu, cost) = axes
        parts = self.partitions or {}
        counts = parts.get("counts") or []
        for panel in (rates, sweep, cpu):
            panel.set_visible(bool(counts))
        cost.set_visible(bool(self.cluster))
        if counts:
            plot_rates(rates, counts, parts.get("one_partition_rate"), self.load["paced_rate"])
            plot_sweep(sweep, counts)
            plot_cpu(cpu, counts, self.machine.cores or 2)
        if self.cluster:
            plot_cost(cost, self.cluster["summary"])
        caption = (
            f"{self.date}, {self.machine.cores} cores: both instances, PostgreSQL, Redis and"
            " the load on the same cores"
        )
        finish(plt, figure, caption, path)


def plot_rates(axes: Any, counts: Sequence[Any], one: float | None, paced_rate: float) -> None:
    labels = [str(count["partitions"]) for count in counts]
    best = [(count.get("sustained") or {}).get("committed") or 0.0 for count in counts]
    bars(axes, labels, best, "{:,.0f}", color=COLOURS["jangteo"])
    if one:
        axes.axhline(2 * one, color="#222222", linestyle="--", label="target: 2x 1 partition")
        axes.legend(fontsize=8, loc="upper left")
    axes.set_ylim(0, max([*best, 2 * (one or 0.0)]) * 1.35 or 1)
    axes.set_xlabel("relay partitions (2 instances)")
    axes.set_ylabel("events/s sustained, lag flat")
    axes.set_title("relay: highest rate with the lag flat, and p99", fontsize=9)
    twin = axes.twinx()
    lines = (
        ([(c.get("sustained") or {}).get("publish_p99_ms") for c in counts], "o-", "#222222",
         "p99 at the sustained rate"),
        ([c["paced"]["publish_p99_ms"] for c in counts], "s:", COLOURS["socketio"],
         f"p99 at {paced_rate:,.0f}/s offered"),
    )  # fmt: skip
    for values, style, colour, label in lines:
        twin.plot(labels, [v or 0.0 for v in values], style, color=colour, label=label)
    highest = max((v or 0.0 for values, *_ in lines for v in values), default=0.0)
    twin.set_ylim(0, highest * 1.6 or 1)
    twin.set_ylabel("commit-to-publish p99, ms")
    twin.legend(fontsize=8, loc="upper right")


def plot_sweep(axes: Any, counts: Sequence[Any]) -> None:
    for count in counts:
        steps = count["steps"]
        label = f"{count['partitions']} partition(s)"
        xs, ys = [s["committed"] for s in steps], [s["publish_p99_ms"] or 0.0 for s in steps]
        axes.plot(xs, ys, "o-", label=label)
        missed = [(x, y) for x, y, s in zip(xs, ys, steps, strict=True) if not s["kept_up"]]
        if missed:
            axes.plot(*zip(*missed, strict=True), "x", color="#222222", markersize=9)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("rows committed / s (x: fell behind)")
    axes.set_ylabel("commit-to-publish p99, ms")
    axes.set_title("the sweep: p99 by committed rate", fontsize=9)
    axes.legend(fontsize=8)


def plot_cpu(axes: Any, counts: Sequence[Any], cores: int) -> None:
    labels = [str(count["partitions"]) for count in counts]
    bottom = [0.0] * len(counts)
    shades = ("#336791", "#d82c20", COLOURS["jangteo"], "#7f8c8d", "#cccccc")
    for kind, shade in zip(report.CPU_KINDS, shades, strict=True):
        values = [(c.get("sustained") or {}).get("cpu_split", {}).get(kind, 0.0) for c in counts]
        axes.bar(labels, values, bottom=bottom, color=shade, label=kind)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.axhline(cores, color="#222222", linestyle="--")
    axes.set_xlabel("relay partitions, at each one's sustained rate")
    axes.set_ylabel("cores used")
    axes.set_title("where the CPU went (psutil)", fontsize=9)
    axes.legend(fontsize=8)


def plot_cost(axes: Any, summary: Mapping[str, Any]) -> None:
    labels, values = [], []
    for kind, name in (("fanout", "fan-out"), ("chat", "chat")):
        for key, what in (("throughput_cost_pct", "msgs/s lost"), ("p99_cost_pct", "p99 added")):
            labels.append(f"{name}\n{what}")
            values.append(summary[kind][key] or 0.0)
    bars(axes, labels, values, "{:+.1f} %", color=COLOURS["jangteo"])
    axes.axhline(10, color="#222222", linestyle="--", label="target <= 10 %")
    axes.axhline(0, color="#222222", linewidth=0.5)
    axes.set_ylabel("Redis Cluster against one Redis, %")
    axes.set_title("what the cluster costs (best of each)", fontsize=9)
    axes.legend(fontsize=8)


# ----------------------------------------------------------------------------- partitions


@dataclass(slots=True)
class Load:
    """The rows' channels in the order transactions cycle through them (transaction k
    writes to channel k mod channels), those with a socket, and the inserting pool."""

    channels: list[str]
    subscribed: list[int]  # positions in ``channels``
    pool: asyncpg.Pool

    @classmethod
    def spread(cls, channels: Sequence[str], subscribed: int, pool: asyncpg.Pool) -> Load:
        """The first ``subscribed`` channels get a socket, and are placed evenly along the
        cycle, so the rows the sockets see are spread over the run as all rows are."""
        chosen, rest = list(channels[:subscribed]), list(channels[subscribed:])
        size = len(channels)
        positions = [round(j * size / len(chosen)) for j in range(len(chosen))] if chosen else []
        cycle = [chosen.pop(0) if p in positions else rest.pop(0) for p in range(size)]
        return cls(cycle, positions, pool)

    def subscribed_rows(self, inserted: Mapping[str, Any]) -> int:
        """Rows written to the subscribed channels."""
        laps, rest = divmod(int(inserted["transactions"]), len(self.channels))
        transactions = sum(laps + (position < rest) for position in self.subscribed)
        return transactions * int(inserted["rows_per_transaction"])


async def balanced_channels(conn: asyncpg.Connection, count: int, modulus: int) -> list[str]:
    """``count`` channel names, as many in each of ``modulus`` partitions (so in each
    partition of every count dividing it), in turn: partition 0, 1, ..., 0, 1, ...

    Listing channels of ids no listing has (any socket may subscribe to those)."""
    per = max(1, count // modulus)
    rows = await conn.fetch(
        """
        SELECT channel FROM (
            SELECT channel, relay_partition(channel, $2) AS part,
                   row_number() OVER (PARTITION BY relay_partition(channel, $2) ORDER BY n) AS k
            FROM (SELECT n, 'listing:' || (1000000 + n) AS channel
                  FROM generate_series(1, $3::int) AS n) AS candidates
        ) AS ranked
        WHERE k <= $1 ORDER BY k, part
        """,
        per,
        modulus,
        per * modulus * 8,
    )
    return [row["channel"] for row in rows]


async def scrape_all(servers: Sequence[Server]) -> event_load.Samples:
    return event_load.added([await event_load.scrape(server.url) for server in servers])


def relays(servers: Sequence[Server]) -> dict[str, Any]:
    """Each instance's /readyz ``relay``: the partition count and those it leads."""
    found = {}
    for server in servers:
        try:
            found[server.name] = json.loads(fetch(server.port, "/readyz"))["relay"]
        except (BenchError, OSError, KeyError, ValueError):
            found[server.name] = {}
    return found


async def use_partitions(
    url: str, servers: Sequence[Server], partitions: int, limit: float = 60.0
) -> dict[str, Any]:
    """Empty the outbox (everything was published), set the count, and wait until both
    instances run it with every partition led and leadership spread."""
    async with connected(url) as conn:
        await conn.execute("TRUNCATE outbox")
        await set_partitions(conn, partitions)
    started = time.monotonic()
    while True:
        found = relays(servers)
        counts = [relay.get("partitions") for relay in found.values()]
        leading = [relay.get("leading") or [] for relay in found.values()]
        if counts == [partitions] * len(servers) and led_evenly(leading, partitions):
            waited = round(time.monotonic() - started, 1)
            return {"leading": {name: r["leading"] for name, r in found.items()}, "waited": waited}
        if time.monotonic() - started > limit:
            raise BenchError(f"{partitions} partitions not led evenly after {limit:g} s: {found}")
        await asyncio.sleep(0.5)


async def measure(
    bench: realtime.Bench, servers: Sequence[Server], load: Load, meter: CpuMeter, *,
    rate: float, seconds: float, rows: int, connections: int,
) -> dict[str, Any]:  # fmt: skip
    """Commit rows at ``rate`` for ``seconds``; what the relays made of it, and the CPU."""
    bench.clients.call("reset")
    before = await scrape_all(servers)
    await name_backends(meter, bench.database_url)
    meter.read()
    inserted = await event_load.insert_rows(
        bench.database_url, load.channels, seconds=seconds, rate=rate, connections=connections,
        rows_per_transaction=rows, pool=load.pool,
    )  # fmt: skip
    await name_backends(meter, bench.database_url)
    cpu = meter.read(top=20)
    expected = load.subscribed_rows(inserted)
    stats = await bench.wait_for(expected, limit=120, quiet=5.0)
    after = await scrape_all(servers)
    tallies = [stats["tallies"].get(server.name) or {} for server in servers]
    first = min((t["first"] for t in tallies if t.get("events")), default=0.0)
    last = max((t["last"] for t in tallies if t.get("events")), default=0.0)
    got = sum(int(t.get("events", 0)) for t in tallies)
    span = last - first
    window = realtime.lag_by_second(
        stats["per_second"], inserted["started_at"] + 1, inserted["ended_at"] - 1
    )
    third = max(1, len(window) // 3)
    thirds = [realtime.mean_lag(window[:third]), realtime.mean_lag(window[-third:])]
    metric = event_load.histogram_summary(before, after, "jangteo_relay_lag_seconds", 0.01) or {}
    committed = float(inserted["rate"])
    split = cpu_split(cpu["cores_used"], NAMES)
    received = got / span if span > 0 else 0.0
    drain = round(last - inserted["ended_at"], 3) if got else None
    delivery = realtime.delivery_summary(stats, expected)
    why = misses(
        committed=expected / inserted["seconds"], received=received, drain_s=drain,
        missing=delivery["missing"], lag_thirds=thirds,
    )  # fmt: skip
    return {
        "offered": rate,
        "committed": committed,
        "reached": committed >= MIN_REACHED * rate,
        "kept_up": not why,
        "why": why,
        "publish_p50_ms": metric.get("p50_ms"),
        "publish_p99_ms": metric.get("p99_ms"),
        "commit_to_publish_metric": metric,
        "published": event_load.counter_delta(
            before, after, "jangteo_relay_events_published_total"
        ),
        "subscribed_received_per_second": round(received, 1),
        "drain_after_last_commit_s": drain,
        "commit_to_receive_ms": summary(stats["histogram_ms"], stats["overflow"]),
        "mean_lag_first_last_third_ms": thirds,
        "lag_by_second": window,
        "delivery": delivery,
        "cpu": cpu,
        "cpu_split": split,
        "cpu_us_per_event": per_event(cpu["cores_used"], split, committed),
        "insert": {k: v for k, v in inserted.items() if k not in ("started_at", "ended_at")},
    }


async def name_backends(meter: CpuMeter, database_url: str) -> None:
    """Name the benchmark database's backends by what they serve (pg_stat_activity)."""
    async with connected(database_url) as conn:
        meter.groups |= await backend_groups(
            conn,
            {"jangteo-relay:": "postgres: relay sessions", INSERTER: "postgres: inserts (load)"},
            "postgres: instance pools and others",
        )


def shown(step: Mapping[str, Any], label: str) -> None:
    split = step["cpu_split"]
    verdict = "kept up" if step["kept_up"] else f"MISSED ({'; '.join(step['why'])})"
    print(
        f"  {label}: offered {step['offered']:,.0f}/s, committed {step['committed']:,.0f}/s;"
        f" publish p50 {step['publish_p50_ms']} ms, p99 {step['publish_p99_ms']} ms; drained"
        f" {step['drain_after_last_commit_s']} s after; cores PG {split['postgresql']}, Redis"
        f" {split['redis']}, jangteo {split['jangteo']}, load {split['load']}: {verdict}",
        flush=True,
    )


async def one_count(
    bench: realtime.Bench, servers: Sequence[Server], load: Load, meter: CpuMeter,
    partitions: int,
) -> dict[str, Any]:  # fmt: skip
    """The paced run and the sweep with ``partitions`` partitions."""
    args = bench.args
    print(f"\n== {partitions} partition(s) on {len(servers)} instances", flush=True)
    result: dict[str, Any] = {"partitions": partitions}
    result["leadership"] = await use_partitions(bench.database_url, servers, partitions)
    print(f"  led {result['leadership']['leading']}", flush=True)
    paced = await measure(
        bench, servers, load, meter, rate=args.paced_rate, seconds=args.paced_seconds, rows=1,
        connections=args.paced_connections,
    )  # fmt: skip
    shown(paced, "paced")
    result["paced"] = paced
    series = geometric(args.sweep_start, args.sweep_factor, args.sweep_max)
    steps: list[dict[str, Any]] = []
    while (rate := next_rate(steps, series)) is not None:
        await asyncio.sleep(args.pause)
        step = await measure(
            bench, servers, load, meter, rate=rate, seconds=args.step_seconds,
            rows=args.step_rows, connections=args.step_connections,
        )  # fmt: skip
        shown(step, f"step {len(steps) + 1}")
        steps.append(step)
    result["steps"] = steps
    result["stopped"] = stop_reason(steps)
    best = sustained(steps)
    result["sustained"] = None if best is None else {
        key: best[key] for key in ("offered", "committed", "publish_p50_ms", "publish_p99_ms",
                                   "drain_after_last_commit_s", "cpu_split")
    }  # fmt: skip
    if best is not None:
        result["sustained"]["cores_used"] = best["cpu"]["cores_used"]
    rate_text = "none" if best is None else f"{best['committed']:,.0f}/s"
    print(f"  sustained: {rate_text}; stopped: {result['stopped']}", flush=True)
    return result


async def partitions_phase(bench: realtime.Bench, redis_pid: int | None) -> dict[str, Any]:
    args = bench.args
    counts = sorted(set(args.partitions))
    modulus = max(counts)
    result: dict[str, Any] = {"channels": args.channels, "subscribed": args.subscribed}
    with bench.jangteo(NAMES) as servers:
        bench.token = sign_up(servers[0].port)
        async with connected(bench.database_url) as conn:
            channels = await balanced_channels(conn, args.channels, modulus)
        subscribed = min(args.subscribed, len(channels))
        for index, channel in enumerate(channels[:subscribed]):
            server = servers[index % len(servers)]
            bench.open([Target.jangteo(server.name, server.port, bench.token)], 1, channel)
        groups: dict[int, str] = {}
        for server in servers:
            groups |= {p.pid: server.name for p in psutil.Process(server.pid).children(True)}
            groups[server.pid] = server.name
        groups |= dict.fromkeys(bench.clients.pids, "socket clients")
        if redis_pid is not None:
            groups[redis_pid] = "redis"
        result["redis_cpu"] = (
            "every redis-server on the machine (the Redis under test's pid unknown)"
            if redis_pid is None
            else f"the Redis under test (pid {redis_pid}); other Redis servers are others"
        )
        meter = CpuMeter(groups, DATABASE, redis="redis" if redis_pid is None else "other: redis")
        result["commit_alone_ms"] = await event_load.commit_latency(bench.database_url)
        size = max(args.paced_connections, args.step_connections)
        async with asyncpg.create_pool(
            bench.database_url, min_size=size, max_size=size,
            server_settings={"application_name": INSERTER, **event_load.WRITER_SETTINGS},
        ) as pool:  # fmt: skip
            load = Load.spread(channels, subscribed, pool)
            result["counts"] = [
                await one_count(bench, servers, load, meter, count) for count in counts
            ]
        bench.clients.call("close")
        result["server_log_problems"] = {s.name: server_problems(s.log) for s in servers}
    by_count = {
        c["partitions"]: (c.get("sustained") or {}).get("committed") for c in result["counts"]
    }
    one = by_count.get(1)
    result["one_partition_rate"] = one
    result["times_one_partition"] = {
        str(count): round(rate / one, 2) if rate and one else None
        for count, rate in by_count.items()
    }
    return result


# ----------------------------------------------------------------------------- cluster


def owners_of(servers: Sequence[Server], ports: set[int]) -> dict[tuple[int, int], str]:
    """(local port, remote port) -> instance name of every TCP connection the instances
    hold to ``ports`` (one local port may serve connections to several)."""
    owners = {}
    for server in servers:
        process = psutil.Process(server.pid)
        for member in (process, *process.children(recursive=True)):
            for conn in member.net_connections("tcp"):
                if conn.raddr and conn.raddr.port in ports:
                    owners[(conn.laddr.port, conn.raddr.port)] = server.name
    return owners


def redis_nodes(url: str, cluster: EmbeddedRedisCluster | None) -> dict[str, int]:
    """ "host:port" -> port of every node (one for a single Redis)."""
    if cluster is None:
        port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        return {f"127.0.0.1:{port}": port}
    return {f"127.0.0.1:{node.port}": node.port for node in cluster.nodes}


def client_lists(nodes: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    seen = {}
    for name, port in nodes.items():
        with redis.Redis(port=port) as client:
            role = client.info("replication")["role"]
            seen[name] = {"port": port, "role": role, "clients": client.client_list()}
    return seen


def inspector(url: str, cluster: EmbeddedRedisCluster | None) -> Inspect:
    nodes = redis_nodes(url, cluster)

    async def inspect(servers: Sequence[Server]) -> dict[str, Any]:
        seen = client_lists(nodes)
        counted = connections_by_instance(seen, owners_of(servers, set(nodes.values())))
        for owner, figures in counted["per_instance"].items():
            print(f"  Redis connections of {owner}: {figures}", flush=True)
        return counted

    return inspect


def sub_args(module: ModuleType, given: str, args: argparse.Namespace) -> argparse.Namespace:
    """``given`` parsed by the other benchmark's own options (its defaults otherwise)."""
    parser = argparse.ArgumentParser(prog=f"--{module.__name__.rsplit('.', 1)[-1]}")
    module.options(parser)
    chosen = parser.parse_args(shlex.split(given))
    chosen.scratch, chosen.keep_database = args.scratch, False
    return chosen


def compact_fanout(result: Mapping[str, Any]) -> dict[str, Any]:
    steady, best = result["steady"], result["burst"]["best"]["jangteo"]
    return {
        "sockets": result["sockets"],
        "steady": {key: steady[key] for key in ("patch", "latency_ms", "delivery")},
        "msgs_per_second": best["messages_per_second_per_instance"],  # per instance
        "p99_ms": steady["latency_ms"]["p99"],
        "bursts": [
            r["messages_per_second_per_instance"] for r in result["burst"]["rounds"]["jangteo"]
        ],
        "burst": {"delivery": best["delivery"]},
        "server_log_problems": result["server_log_problems"],
        "redis_connections": result.get("inspected"),
    }


def compact_chat(ran: chat.Session) -> dict[str, Any]:
    figures = ran.figures
    phases = {
        name: {key: value for key, value in phase.items() if key != "machine"}
        | {"machine_cpu_percent": (phase.get("machine") or {}).get("machine_cpu_percent")}
        for name, phase in figures["phases"].items()
    }
    return {
        "msgs_per_second": phases["rooms"]["received_per_second"],
        "p99_ms": phases["steady"]["send_to_receive_ms"]["p99"],
        "phases": phases,
        "delivery": figures["delivery"],
        "database": figures["database"],
        "failed": figures["failed"],
        "server_log_problems": figures["server_log_problems"],
        "redis_connections": ran.inspected,
    }


def cost_summary(sessions: Mapping[str, Mapping[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per kind: each Redis's best throughput and p99 over its sessions, and the cost."""
    found: dict[str, Any] = {}
    for kind, by_mode in sessions.items():
        best = {
            mode: {
                "msgs_per_second": max((s["msgs_per_second"] for s in runs), default=None),
                "p99_ms": min((s["p99_ms"] for s in runs), default=None),
            }
            for mode, runs in by_mode.items()
        }
        single, cluster = best.get("single", {}), best.get("cluster", {})
        found[kind] = {
            **best,
            "throughput_cost_pct": cost_pct(
                single.get("msgs_per_second"), cluster.get("msgs_per_second"),
                lower_is_better=False,
            ),
            "p99_cost_pct": cost_pct(
                single.get("p99_ms"), cluster.get("p99_ms"), lower_is_better=True
            ),
        }  # fmt: skip
    return found


async def cluster_phase(
    args: argparse.Namespace, admin_url: str, single_url: str, clients: LoadClients,
    addresses: SourceAddresses, commands: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    fan_args = sub_args(realtime, args.fanout, args)
    realtime.steady_rate(fan_args)
    chat_args = sub_args(chat, args.chat, args)
    result: dict[str, Any] = {
        f"{name}_options": {k: v for k, v in vars(chosen).items() if k != "scratch"}
        for name, chosen in (("fanout", fan_args), ("chat", chat_args))
    }
    sessions: dict[str, dict[str, list[dict[str, Any]]]] = {
        "fanout": {"single": [], "cluster": []},
        "chat": {"single": [], "cluster": []},
    }
    with own_redis_cluster(args.scratch / "redis-cluster") as cluster:
        modes: dict[str, tuple[str, dict[str, str], EmbeddedRedisCluster | None]] = {
            "single": (single_url, {}, None),
            "cluster": (cluster.url, {"REDIS_MODE": "cluster"}, cluster),
        }
        result["redis"] = {
            mode: {"nodes": list(redis_nodes(url, nodes)), "settings": more}
            for mode, (url, more, nodes) in modes.items()
        }
        for number in range(args.cluster_rounds):
            order = list(modes) if number % 2 == 0 else list(modes)[::-1]
            for mode in order:
                url, more, nodes = modes[mode]
                print(f"\n== fan-out on {mode} Redis (round {number + 1})", flush=True)
                async with fresh_database(admin_url, DATABASE) as database_url:
                    settings = serve_settings(database_url, url, **more)
                    heartbeat = Settings.from_env({**os.environ, **settings}).ws_heartbeat
                    record = commands.setdefault(f"fanout_{mode}", {})
                    bench = realtime.Bench(
                        fan_args, settings, database_url, clients, record, heartbeat, addresses
                    )
                    fanned = await realtime.fanout_phase(
                        bench, with_references=False, inspect=inspector(url, nodes)
                    )
                sessions["fanout"][mode].append(compact_fanout(fanned))
            for mode in order:
                url, more, nodes = modes[mode]
                print(f"\n== chat on {mode} Redis (round {number + 1})", flush=True)
                record = commands.setdefault(f"chat_{mode}", {})
                ran = await chat.session(
                    chat_args, admin_url, url, record,
                    more=more,
                    inspect=inspector(url, nodes),
                )  # fmt: skip
                sessions["chat"][mode].append(compact_chat(ran))
        result["versions"] = {
            mode: await versions(None, url) for mode, (url, _, _) in modes.items()
        }
    result["sessions"] = sessions
    result["summary"] = cost_summary(sessions)
    return result


# ----------------------------------------------------------------------------- run


def failures_of(phases: Mapping[str, Any]) -> list[str]:
    """Events lost, repeated or out of order, chat messages not as acked."""
    failed = []
    for count in (phases.get("partitions") or {}).get("counts", []):
        for name, step in [("paced", count["paced"]), *((f"step {i + 1}", s)
                           for i, s in enumerate(count["steps"]))]:  # fmt: skip
            delivery = step["delivery"]
            for key in ("missing", "gaps", "repeats"):
                if delivery[key]:
                    failed.append(
                        f"{count['partitions']} partitions, {name}: {key} {delivery[key]}"
                    )
    for kind, by_mode in ((phases.get("cluster") or {}).get("sessions") or {}).items():
        for mode, runs in by_mode.items():
            for run_ in runs:
                failed += [f"{kind} on {mode} Redis: {why}" for why in run_.get("failed", [])]
                for part in ("steady", "burst"):
                    delivery = run_.get(part, {}).get("delivery", {})
                    for key in ("missing", "gaps", "repeats"):
                        if delivery.get(key):
                            failed.append(f"{kind} {part} on {mode} Redis: {key} {delivery[key]}")
    return failed


@contextmanager
def noted(machine: Machine) -> Iterator[None]:
    """Other benchmarks and test runs on the machine before and after the block."""
    seen = machine.other_benchmarks_or_tests_before = other_load()
    if seen:
        print("other load on the machine:\n  " + "\n  ".join(seen), flush=True)
    yield
    machine.other_benchmarks_or_tests_after = other_load()


async def run(args: argparse.Namespace) -> ScalingResult:
    machine = Machine(open_files_limit=list(raise_open_files()))
    stack = services()
    commands: dict[str, Any] = {
        "benchmark": "python -m loadtests " + shlex.join(sys.argv[1:]),
        "database": database_note(DATABASE),
        "load": f"{args.client_processes} client processes of loadtests/clients/ws.py; the"
        " inserts from this process (asyncpg)",
    }
    phases: dict[str, Any] = {}
    addresses = SourceAddresses()
    found: dict[str, str] = {}
    with noted(machine), LoadClients(args.client_processes) as clients:
        if "partitions" in args.phases:
            async with fresh_database(stack.admin_url, DATABASE, keep=args.keep_database) as url:
                settings = serve_settings(url, stack.redis_url)
                heartbeat = Settings.from_env({**os.environ, **settings}).ws_heartbeat
                record = commands.setdefault("partitions", {})
                bench = realtime.Bench(args, settings, url, clients, record, heartbeat, addresses)
                (redis_port,) = redis_nodes(stack.redis_url, None).values()
                phases["partitions"] = await partitions_phase(bench, listening_pid(redis_port))
                found = await versions(url, stack.redis_url)
        if "cluster" in args.phases:
            phases["cluster"] = await cluster_phase(
                args, stack.admin_url, stack.redis_url, clients, addresses, commands
            )
            found = found or phases["cluster"]["versions"]["single"]
    return ScalingResult(
        benchmark="scaling",
        machine=machine,
        versions=found,
        commands=commands,
        load={
            "instances": len(NAMES),
            "jangteo_processes_per_instance": 1,
            "partitions": sorted(set(args.partitions)),
            "channels": args.channels,
            "subscribed_channels": args.subscribed,
            "paced_rate": args.paced_rate,
            "paced_seconds": args.paced_seconds,
            "sweep": {
                "start": args.sweep_start,
                "factor": args.sweep_factor,
                "max": args.sweep_max,
                "step_seconds": args.step_seconds,
                "rows_per_commit": args.step_rows,
                "connections": args.step_connections,
            },
            "cluster_rounds": args.cluster_rounds,
            "client_processes": args.client_processes,
            "reported": "sustained: committed rows/s of the fastest step that kept up;"
            " commit-to-publish from jangteo_relay_lag_seconds of both instances (bucket"
            " interpolation); CPU: psutil user+system time per process over the commits;"
            " cluster cost: best of the rounds per Redis",
        },
        failed=failures_of(phases),
        **phases,
    )
