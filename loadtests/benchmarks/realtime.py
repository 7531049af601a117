"""Realtime: fan-out, relay lag and idle sockets, jangteo against bare aiohttp.

Every server is loaded by the same client (``loadtests/clients/ws.py``, 2 processes):

1. fan-out: ``--sockets`` sockets over 2 jangteo instances, all subscribed to one listing's
   channel. The listing's price is PATCHed over REST at ``--rate`` per second for
   ``--duration`` s: commit-to-receive latency of every delivered event (receive wall
   clock - the frame's ``ts``). Then bursts: ``--burst`` outbox rows committed in one
   transaction, delivered messages/s per instance, alternating with the references (a
   bare aiohttp server per instance sending the same frame bytes to as many sockets in a
   plain loop, and python-socketio when installed); best of ``--rounds`` each.
2. relay: one instance, one subscriber; outbox rows committed at ``--relay-rate`` per
   second (one row per transaction), then at ``--sustain-rate``, then flat out for
   ``--relay-max-seconds``: commit-to-receive from the frames, commit-to-publish from the
   server's ``jangteo_relay_lag_seconds``, published events/s and whether the lag grows.
3. idle memory: ``--idle-sockets`` idle sockets (heartbeats on) on one jangteo instance and
   on one bare aiohttp process, held through more than one heartbeat: server RSS per
   connection, and how many were still open when measured.

``--name`` changes the results file stem (``make bench`` runs the 20,000-socket fan-out as
``realtime-20k``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.metadata
import importlib.util
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from loadtests.clients import events as event_load
from loadtests.clients.ws import LoadClients, SourceAddresses, Target, raise_open_files, split_plan
from loadtests.harness import report
from loadtests.harness.processes import BenchError, Server, as_line, background, server_problems
from loadtests.harness.results import Machine, Result, finish, pyplot, versions
from loadtests.harness.stack import (
    create_listing,
    database_note,
    fresh_database,
    instances,
    serve_settings,
    services,
    sign_up,
)
from loadtests.harness.stats import summary
from realtime.frames import event_json
from server.embedded.process import free_port
from server.settings import Settings

DATABASE = "jangteo_bench_realtime"
INSTANCES = 2
JWT_SECRET = "bench-realtime-only-not-a-real-secret-0123456789abcdef"  # noqa: S105
FD_RESERVE = 200  # descriptors a server needs besides its sockets (pools, logs, listeners)
SOCKETIO = importlib.util.find_spec("socketio") is not None  # python-socketio, optional
SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"
TARGETS = {
    "fanout_p99_ms_2000": 50.0,
    "fanout_p99_ms_20000": 250.0,
    "fanout_share_of_bare": 0.90,
    "fanout_times_socketio": 4.0,
    "relay_p99_ms": 10.0,
    "relay_events_per_second": 5000.0,
    "idle_memory_ratio": 1.25,
}
OPTIONS = (  # flag, default (its type is the option's), help
    ("--sockets", 2000, "fan-out sockets (20000: the large run)"),
    ("--duration", 10.0, "seconds of PATCHes"),
    ("--burst", 0, "events per burst (default: 200,000 frames' worth)"),
    ("--rounds", 3, "bursts per system; the best is kept"),
    ("--relay-rate", 1000.0, "outbox rows per second, one per commit"),
    ("--relay-seconds", 10.0, "seconds per paced relay run"),
    ("--sustain-rate", 5000.0, "rows/s of the sustained relay run"),
    ("--sustain-rows", 50, "rows per commit of the sustained run"),
    ("--relay-max-seconds", 5.0, "flat-out seconds"),
    ("--relay-inserters", 16, "connections inserting at --relay-rate"),
    ("--relay-connections", 4, "flat-out inserters"),
    ("--relay-rows", 50, "rows per flat-out commit"),
    ("--idle-sockets", 20_000, "idle sockets, capped by the open files limit"),
    ("--client-processes", 2, "load client processes (more when the sockets need them)"),
)


def options(parser: argparse.ArgumentParser) -> None:
    for flag, default, meaning in OPTIONS:
        parser.add_argument(flag, type=type(default), default=default, help=meaning)
    parser.add_argument(
        "--rate", type=float, default=None, help="PATCHes/s (default 20,000 / sockets, max 10)"
    )
    parser.add_argument(
        "--idle-settle", type=float, default=None,
        help="seconds between opening and measuring (default: 1.25 heartbeats, so every"
        " socket answers a server ping before it is counted)",
    )  # fmt: skip
    phases = ["fanout", "relay", "idle"]
    parser.add_argument("--phases", nargs="+", choices=phases, default=phases)
    parser.add_argument("--name", dest="stem", default="realtime", help="results file stem")


@dataclass(kw_only=True, slots=True)
class RealtimeResult(Result):
    stem: str = "realtime"
    fanout: dict[str, Any] | None = None
    relay: dict[str, Any] | None = None
    idle: dict[str, Any] | None = None
    targets: dict[str, float] = field(default_factory=lambda: dict(TARGETS))
    python_socketio: str = ""

    @property
    def name(self) -> str:
        return self.stem

    def as_json(self) -> dict[str, Any]:
        data = Result.as_json(self)
        del data["stem"]
        return {key: value for key, value in data.items() if value is not None}

    def table(self) -> str:
        """The figures as the targets table shows them (``python -m loadtests report``)."""
        data = self.as_json()
        return report.table(report.realtime_rows(data, data))

    def plot(self, path: Path) -> bool:
        caption = (
            f"{self.date}, {self.machine.cores} cores, {self.load['client_processes']} client"
            " processes, servers, clients, PostgreSQL and Redis on the same cores"
        )
        return plot(self.as_json(), caption, path)


@dataclass(slots=True)
class Bench:
    """What every phase needs: settings, where things go, and what was run."""

    args: argparse.Namespace
    settings: dict[str, str]  # JANGTEO_* of jangteo serve
    database_url: str
    addresses: SourceAddresses
    commands: dict[str, Any]
    heartbeat: float

    def jangteo(
        self, names: Sequence[str], extra: Mapping[str, str] | None = None
    ) -> AbstractContextManager[list[Server]]:
        return instances(names, self.settings, self.args.scratch, self.commands, extra)


# ----------------------------------------------------------------------------- servers


@contextmanager
def reference_servers(
    bench: Bench, names: Sequence[str], module: str, options: Sequence[str]
) -> Iterator[list[Server]]:
    """``python -m <module> --port P <options>`` once per name (one uvloop process each)."""
    with ExitStack() as stack:
        servers = []
        for name in names:
            port = free_port()
            command = [sys.executable, "-m", module, "--port", str(port), *options]
            key = "baseline_" + module.rsplit(".", 1)[-1]
            bench.commands.setdefault(key, {})[name] = as_line(command)
            log = bench.args.scratch / f"{name}.log"
            servers.append(stack.enter_context(background(command, os.environ, port, log, name)))
        yield servers


def bare_servers(bench: Bench, names: Sequence[str], frame: Path) -> Any:
    """``loadtests.references.ws`` servers sending ``frame``, with jangteo's heartbeat."""
    options = ["--frame", str(frame), "--heartbeat", f"{bench.heartbeat:g}"]
    return reference_servers(bench, names, "loadtests.references.ws", options)


def socketio_servers(bench: Bench, names: Sequence[str], frame: Path) -> Any:
    """``loadtests.references.socketio`` servers sharing a Redis channel of their own."""
    options = [
        "--frame", str(frame), "--heartbeat", f"{bench.heartbeat:g}",
        "--redis-url", bench.settings["JANGTEO_REDIS_URL"],
        "--channel", f"jangteo-bench-socketio-{os.getpid()}",
    ]  # fmt: skip
    return reference_servers(bench, names, "loadtests.references.socketio", options)


def bare_target(server: Server) -> Target:
    return Target(server.name, "127.0.0.1", server.port, "/ws")


def open_sockets(
    bench: Bench, clients: LoadClients, targets: Sequence[Target], count: int, channel: str | None
) -> dict[str, Any]:
    """Open ``count`` sockets over the targets; BenchError unless every one opened."""
    plans = split_plan(
        targets,
        count,
        len(clients.pids),
        channel=channel,
        source_addresses=bench.addresses.take(count),
        check_offsets=all(t.ticket_url is not None for t in targets),  # bare frames repeat
    )
    started = time.monotonic()
    result = clients.connect(plans)
    opened = result["outcome"].get("opened", 0)
    names = ", ".join(t.instance for t in targets)
    print(f"  {opened:,} of {count:,} sockets open on {names} in {result['seconds']:.1f} s")
    if opened != count:
        raise BenchError(f"only {opened} of {count} sockets opened: {result['outcome']}")
    result["wall_seconds"] = round(time.monotonic() - started, 2)
    return result


def received(stats: Mapping[str, Any], names: Sequence[str] | None = None) -> int:
    """Event frames received from the named instances (all when None)."""
    if names is None:
        return int(stats["events"])
    return sum(int(stats["tallies"].get(name, {}).get("events", 0)) for name in names)


async def wait_for_events(
    clients: LoadClients,
    expected: int,
    *,
    limit: float,
    quiet: float = 3.0,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Poll the clients until ``expected`` events came from ``names``, or none for ``quiet`` s.

    Counting only the instances under test keeps a previous system's late frames out.
    """
    deadline = time.monotonic() + limit
    seen, changed = -1, time.monotonic()
    while True:
        stats = clients.stats()
        count = received(stats, names)
        if count >= expected:
            return stats
        if count != seen:
            seen, changed = count, time.monotonic()
        if time.monotonic() - changed > quiet or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.2)


# ----------------------------------------------------------------------------- events


async def last_frame(database_url: str, channel: str) -> bytes:
    """The WebSocket frame payload the relay sent for the channel's latest event."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT channel, position, prev, committed_at, type, data::text AS data FROM outbox"
            " WHERE channel = $1 AND position IS NOT NULL ORDER BY position DESC LIMIT 1",
            channel,
        )
    finally:
        await conn.close()
    if row is None:
        raise BenchError(f"no published event on {channel}")
    ts = int(row["committed_at"].timestamp() * 1000)
    return event_json(row["channel"], row["position"], row["prev"], ts, row["type"], row["data"])


async def insert_burst(database_url: str, channel: str, events: int) -> float:
    """Commit ``events`` copies of the channel's latest event in one transaction; commit time."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO outbox (channel, type, data)"
            " SELECT channel, type, data FROM outbox, generate_series(1, $2::int)"
            " WHERE id = (SELECT max(id) FROM outbox WHERE channel = $1)",
            channel,
            events,
        )
        return time.time()
    finally:
        await conn.close()


async def trigger_bare(servers: Sequence[Server], events: int) -> list[dict[str, Any]]:
    """``POST /fanout?count=events`` on every bare server at once."""
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(server: Server) -> dict[str, Any]:
            async with session.post(f"{server.url}/fanout?count={events}") as response:
                answer: dict[str, Any] = await response.json()
                return answer

        return list(await asyncio.gather(*(one(server) for server in servers)))


# ----------------------------------------------------------------------------- fan-out


def instance_rates(stats: Mapping[str, Any], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per instance: events received, first-to-last seconds, and messages per second."""
    rates = {}
    for name in names:
        tally = stats["tallies"].get(name, {"events": 0, "first": 0.0, "last": 0.0})
        span = tally["last"] - tally["first"]
        rates[name] = {
            "messages": tally["events"],
            "first": tally["first"],
            "seconds": round(span, 4),
            "messages_per_second": round(tally["events"] / span, 1) if span > 0 else 0.0,
        }
    return rates


def delivery_summary(
    stats: Mapping[str, Any], expected: int, names: Sequence[str] | None = None
) -> dict[str, Any]:
    delivered = received(stats, names)
    return {
        "expected": expected,
        "delivered": delivered,
        "missing": expected - delivered,
        "gaps": stats["gaps"],
        "repeats": stats["repeats"],
        "closes": stats["closes"],
        "errors": stats["errors"],
        "other_frames": stats["ops"],
        "sockets_open": stats["open"],
        "client_cpu_share": stats["client_cpu_share"],
    }


async def burst_round(
    clients: LoadClients,
    servers: Sequence[Server],
    sockets: int,
    events: int,
    trigger: Callable[[], Awaitable[Any]],
) -> dict[str, Any]:
    """One burst on one system: reset, trigger, wait for every frame, rate per instance."""
    clients.call("reset")
    cpu = {server.name: server.cpu_seconds() for server in servers}
    started = time.time()
    answer = await trigger()
    expected = sockets * events
    names = [server.name for server in servers]
    stats = await wait_for_events(
        clients, expected, limit=60 + expected / 10_000, quiet=10.0, names=names
    )
    rates = instance_rates(stats, names)
    cpu_used = {s.name: round(s.cpu_seconds() - cpu[s.name], 3) for s in servers}
    per_instance = [r["messages_per_second"] for r in rates.values()]
    return {
        "events": events,
        "instances": rates,
        "messages_per_second_per_instance": round(sum(per_instance) / len(per_instance), 1),
        "server_cpu_seconds": cpu_used,
        "messages_per_server_cpu_second": round(
            received(stats, names) / max(1e-9, sum(cpu_used.values())), 1
        ),
        "first_frame_after_trigger_s": round(
            min((r["first"] for r in rates.values() if r["messages"]), default=started) - started,
            4,
        ),
        "latency_ms": summary(stats["histogram_ms"], stats["overflow"]),
        "delivery": delivery_summary(stats, expected, names),
        "trigger_answer": answer,
    }


async def fanout_phase(bench: Bench, clients: LoadClients, token_box: list[str]) -> dict[str, Any]:
    args = bench.args
    sockets = args.sockets
    burst = args.burst or max(10, min(200, 200_000 // sockets))
    names = [f"jangteo-{n + 1}" for n in range(INSTANCES)]
    result: dict[str, Any] = {"sockets": sockets, "instances": INSTANCES, "burst_events": burst}
    with bench.jangteo(names) as servers:
        token = sign_up(servers[0].port)
        token_box.append(token)
        listing_id = create_listing(servers[0].port, token, "realtime benchmark: fan-out")
        channel = f"listing:{listing_id}"
        result["channel"] = channel
        print(f"\n== fan-out: {sockets:,} sockets on {channel} over {INSTANCES} instances")
        result["connect"] = open_sockets(
            bench,
            clients,
            [Target.jangteo(s.name, s.port, token) for s in servers],
            sockets,
            channel,
        )
        await asyncio.sleep(1.0)
        clients.call("reset")
        before = [await event_load.scrape(s.url) for s in servers]
        print(f"  PATCH price {args.rate:g}/s for {args.duration:g} s ...", flush=True)
        patches = await event_load.patch_prices(
            [s.url for s in servers], token, listing_id, rate=args.rate, seconds=args.duration
        )
        expected = patches["committed"] * sockets
        stats = await wait_for_events(clients, expected, limit=60)
        after = [await event_load.scrape(s.url) for s in servers]
        latency = summary(stats["histogram_ms"], stats["overflow"])
        result["steady"] = {
            "patch": patches,
            "latency_ms": latency,
            "histogram_ms": stats["histogram_ms"],
            "delivery": delivery_summary(stats, expected),
            "server_metrics": {
                s.name: {
                    word: event_load.matching(a, word)
                    for word in ("jangteo_ws_", "jangteo_hub_", "jangteo_relay_events")
                }
                for s, a in zip(servers, after, strict=True)
            },
            "deliveries_counted_by_servers": sum(
                event_load.counter_delta(b, a, "jangteo_ws_deliveries_total") or 0.0
                for b, a in zip(before, after, strict=True)
            ),
        }
        print(
            f"  {stats['events']:,} of {expected:,} frames; commit-to-receive p50"
            f" {latency['p50']} ms, p99 {latency['p99']} ms, max {latency['max']} ms",
            flush=True,
        )
        frame = await last_frame(bench.database_url, channel)
        frame_file = bench.args.scratch / "frame.json"
        frame_file.write_bytes(frame)
        result["frame_bytes"] = len(frame)
        result["frame"] = frame.decode()

        with ExitStack() as references:
            systems: dict[str, tuple[list[Server], Callable[[], Awaitable[Any]]]] = {
                "jangteo": (
                    servers,
                    functools.partial(insert_burst, bench.database_url, channel, burst),
                )
            }
            names = [f"bare-{n + 1}" for n in range(INSTANCES)]
            bares = references.enter_context(bare_servers(bench, names, frame_file))
            print("== fan-out reference: the same frame from bare aiohttp")
            result["connect_bare"] = open_sockets(
                bench, clients, [bare_target(s) for s in bares], sockets, channel
            )
            systems["bare"] = (bares, functools.partial(trigger_bare, bares, burst))
            if SOCKETIO:
                names = [f"socketio-{n + 1}" for n in range(INSTANCES)]
                sios = references.enter_context(socketio_servers(bench, names, frame_file))
                print("== fan-out reference: python-socketio with AsyncRedisManager")
                targets = [
                    Target(s.name, "127.0.0.1", s.port, SOCKETIO_PATH, socketio=True) for s in sios
                ]
                result["connect_socketio"] = open_sockets(bench, clients, targets, sockets, None)
                # One emit reaches both processes' sockets through Redis.
                systems["socketio"] = (sios, functools.partial(trigger_bare, sios[:1], burst))
            rounds: dict[str, list[dict[str, Any]]] = {system: [] for system in systems}
            order = list(systems)
            for number in range(args.rounds):
                for system in order if number % 2 == 0 else order[::-1]:
                    group, trigger = systems[system]
                    outcome = await burst_round(clients, group, sockets, burst, trigger)
                    rounds[system].append(outcome)
                    missing = outcome["delivery"]["missing"]
                    print(
                        f"  round {number + 1} {system:<8}"
                        f" {outcome['messages_per_second_per_instance']:>10,.0f} msgs/s per"
                        f" instance ({burst} events x {sockets:,} sockets"
                        f"{f', {missing:,} MISSING' if missing else ''})",
                        flush=True,
                    )
            clients.call("close")
        best = {
            system: max(runs, key=lambda r: float(r["messages_per_second_per_instance"]))
            for system, runs in rounds.items()
        }
        result["burst"] = {"best": best, "rounds": rounds}
        jangteo_rate = best["jangteo"]["messages_per_second_per_instance"]
        bare_rate = best["bare"]["messages_per_second_per_instance"]
        result["share_of_bare"] = round(jangteo_rate / bare_rate, 3) if bare_rate else None
        if "socketio" in best:
            sio_rate = best["socketio"]["messages_per_second_per_instance"]
            result["times_socketio"] = round(jangteo_rate / sio_rate, 2) if sio_rate else None
        # What writing one frame to each instance's sockets takes at the bare loop's rate:
        # a floor under any commit-to-receive percentile on this machine.
        result["one_event_write_ms_at_bare_rate"] = (
            round(sockets / INSTANCES / bare_rate * 1000, 1) if bare_rate else None
        )
        result["server_log_problems"] = {s.name: server_problems(s.log) for s in servers}
    return result


# ----------------------------------------------------------------------------- relay


def lag_by_second(
    per_second: Mapping[int, Sequence[float]], start: float, end: float
) -> list[dict[str, float]]:
    """Events, mean and max commit-to-receive lag per wall-clock second from start to end."""
    return [
        {"second": int(s) - int(start), "events": int(v[0]), "mean_ms": round(v[1] / v[0], 2),
         "max_ms": round(v[2], 1)}
        for s, v in sorted(per_second.items())
        if int(start) <= int(s) <= int(end) and v[0]
    ]  # fmt: skip


def mean_lag(seconds: Sequence[Mapping[str, float]]) -> float:
    """The mean lag of every event received in these seconds."""
    events = sum(s["events"] for s in seconds)
    return round(sum(s["mean_ms"] * s["events"] for s in seconds) / events, 2) if events else 0.0


async def relay_run(
    bench: Bench,
    clients: LoadClients,
    server: Server,
    channel: str,
    *,
    rate: float | None,
    seconds: float,
    connections: int,
    rows: int,
) -> dict[str, Any]:
    """Commit outbox rows (paced, or flat out when ``rate`` is None); what the relay made of it."""
    clients.call("reset")
    before = await event_load.scrape(server.url)
    pace = "flat out" if rate is None else f"{rate:,.0f} rows/s"
    print(f"  {pace} for {seconds:g} s, {rows} row(s) per commit ...", flush=True)
    inserted = await event_load.insert_rows(
        bench.database_url,
        channel,
        seconds=seconds,
        rate=rate,
        connections=connections,
        rows_per_transaction=rows,
    )
    stats = await wait_for_events(clients, inserted["rows"], limit=120)
    after = await event_load.scrape(server.url)
    tally = stats["tallies"][server.name]
    span = tally["last"] - tally["first"]
    # Whole seconds inside the insertion window: its first and last thirds say if lag grew.
    window = lag_by_second(
        stats["per_second"], inserted["started_at"] + 1, inserted["ended_at"] - 1
    )
    third = max(1, len(window) // 3)
    frames = summary(stats["histogram_ms"], stats["overflow"])
    metric = event_load.histogram_summary(before, after, "jangteo_relay_lag_seconds", 0.01)
    result = {
        "insert": inserted,
        "received": tally["events"],
        "received_per_second": round(tally["events"] / span, 1) if span > 0 else 0.0,
        "published_metric": event_load.counter_delta(
            before, after, "jangteo_relay_events_published_total"
        ),
        "leader": event_load.gauge(after, "jangteo_relay_leader"),
        "drain_after_last_commit_s": round(tally["last"] - inserted["ended_at"], 3),
        "commit_to_receive_ms": frames,
        "commit_to_publish_metric": metric,
        "mean_lag_first_last_third_ms": [
            mean_lag(window[:third]) if window else None,
            mean_lag(window[-third:]) if window else None,
        ],
        "lag_by_second": lag_by_second(stats["per_second"], inserted["started_at"], tally["last"]),
        "delivery": delivery_summary(stats, inserted["rows"]),
    }
    # The relay kept up when it published as fast as rows committed and was done at once.
    result["kept_up"] = bool(
        result["received_per_second"] >= 0.97 * inserted["rate"]
        and result["drain_after_last_commit_s"] < 1.0
    )
    shown = metric or {}
    print(
        f"    committed {inserted['rate']:,.0f} rows/s, received"
        f" {result['received_per_second']:,.0f}/s; commit-to-receive p50 {frames['p50']} ms,"
        f" p99 {frames['p99']} ms; relay_lag"
        f" metric p50 {shown.get('p50_ms')} ms, p99 {shown.get('p99_ms')} ms; mean lag first"
        f" / last third {result['mean_lag_first_last_third_ms']} ms; drained"
        f" {result['drain_after_last_commit_s']} s after the last commit",
        flush=True,
    )
    return result


async def relay_phase(bench: Bench, clients: LoadClients, token: str) -> dict[str, Any]:
    args = bench.args
    result: dict[str, Any] = {}
    with bench.jangteo(["relay"]) as (server,):
        listing_id = create_listing(server.port, token, "realtime benchmark: relay")
        channel = f"listing:{listing_id}"
        print(f"\n== relay: outbox rows on {channel}, one instance, one subscriber")
        open_sockets(bench, clients, [Target.jangteo(server.name, server.port, token)], 1, channel)
        await asyncio.sleep(0.5)
        result["commit_alone_ms"] = floor = await event_load.commit_latency(bench.database_url)
        print(
            f"  a one-row commit alone (no outbox) takes {floor['p50']} ms p50,"
            f" {floor['p99']} ms p99"
        )
        run = functools.partial(relay_run, bench, clients, server, channel)
        result["paced"] = await run(
            rate=args.relay_rate,
            seconds=args.relay_seconds,
            connections=args.relay_inserters,
            rows=1,
        )
        result["sustained"] = await run(
            rate=args.sustain_rate,
            seconds=args.relay_seconds,
            connections=args.relay_inserters,
            rows=args.sustain_rows,
        )
        result["flat_out"] = await run(
            rate=None,
            seconds=args.relay_max_seconds,
            connections=args.relay_connections,
            rows=args.relay_rows,
        )
        clients.call("close")
        result["server_log_problems"] = server_problems(server.log)
    return result


# ----------------------------------------------------------------------------- idle memory


async def measure_idle(
    bench: Bench,
    clients: LoadClients,
    server: Server,
    target: Target,
    count: int,
    desk: Server | None = None,
) -> dict[str, Any]:
    """RSS of ``server`` before and after ``count`` idle sockets (after a small warm-up).

    Also the CPU the server (and the ticket desk) spent per connection while they opened.
    """
    open_sockets(bench, clients, [target], 100, None)
    clients.call("close")
    await asyncio.sleep(1.0)
    clients.call("reset")
    before = server.rss()
    cpu = server.cpu_seconds()
    desk_cpu = desk.cpu_seconds() if desk else 0.0
    connect = open_sockets(bench, clients, [target], count, None)
    cpu = server.cpu_seconds() - cpu
    desk_cpu = desk.cpu_seconds() - desk_cpu if desk else 0.0
    await asyncio.sleep(bench.args.idle_settle or bench.heartbeat * 1.25)
    after = server.rss()
    stats = clients.stats()
    clients.call("close")
    grown = after - before
    result = {
        "sockets": count,
        "rss_before_kib": before // 1024,
        "rss_after_kib": after // 1024,
        "kib_per_connection": round(grown / count / 1024, 2),
        "connect_seconds": connect["seconds"],
        "server_cpu_ms_per_connect": round(cpu / count * 1000, 3),
        "sockets_open_at_measurement": stats["open"],
        "closed_by_server_before_measurement": stats["closes"],
    }
    if desk is not None:
        result["ticket_desk_cpu_ms_per_ticket"] = round(desk_cpu / count * 1000, 3)
    return result


async def idle_phase(bench: Bench, clients: LoadClients, token: str) -> dict[str, Any]:
    args = bench.args
    _, hard = raise_open_files()
    count = min(args.idle_sockets, hard - FD_RESERVE)
    result: dict[str, Any] = {"requested": args.idle_sockets, "sockets": count}
    if count < args.idle_sockets:
        result["capped_by"] = f"RLIMIT_NOFILE hard limit {hard} (a server needs a descriptor each)"
    print(f"\n== idle memory: {count:,} idle sockets, heartbeat {bench.heartbeat:g} s")
    frame = bench.args.scratch / "idle-frame.json"
    frame.write_bytes(b'{"op":"pong"}')
    with bare_servers(bench, ["bare-idle"], frame) as (bare,):
        result["bare"] = await measure_idle(bench, clients, bare, bare_target(bare), count)
    print(f"  bare aiohttp: {result['bare']['kib_per_connection']} KiB per connection")
    extra = {"JANGTEO_WS_MAX_CONNECTIONS": str(count + FD_RESERVE)}
    # Tickets come from a second instance, so the measured one does nothing but hold sockets.
    with bench.jangteo(["jangteo-idle", "ticket-desk"], extra) as (server, desk):
        target = Target.jangteo(server.name, server.port, token, desk.port)
        result["jangteo"] = await measure_idle(bench, clients, server, target, count, desk)
        result["server_log_problems"] = server_problems(server.log)
    print(f"  jangteo: {result['jangteo']['kib_per_connection']} KiB per connection")
    bare_kib = result["bare"]["kib_per_connection"]
    result["ratio"] = (
        round(result["jangteo"]["kib_per_connection"] / bare_kib, 3) if bare_kib else None
    )
    return result


# ----------------------------------------------------------------------------- run


def resolve_defaults(args: argparse.Namespace, hard_limit: int) -> None:
    """Fill in what depends on the socket counts: PATCH rate and client processes."""
    if args.rate is None:  # 20,000 frames a second in all: 10 events/s to 2,000 sockets
        args.rate = min(10.0, 20_000 / args.sockets)
    # Every fan-out system's sockets stay open together (their rounds alternate).
    systems = 3 if SOCKETIO else 2
    needed = math.ceil(systems * args.sockets / (hard_limit - FD_RESERVE))
    if needed > args.client_processes:
        print(f"{needed} client processes: {systems} x {args.sockets:,} sockets stay open")
        args.client_processes = needed


async def run(args: argparse.Namespace) -> RealtimeResult:
    limits = raise_open_files()
    machine = Machine(open_files_limit=list(limits))
    resolve_defaults(args, limits[1])
    stack = services()
    async with fresh_database(stack.admin_url, DATABASE, keep=args.keep_database) as url:
        settings = serve_settings(url, stack.redis_url, JWT_SECRET=JWT_SECRET)
        settings["JANGTEO_ACCESS_TOKEN_TTL"] = "3600"  # noqa: S105 - a lifetime, in seconds
        heartbeat = Settings.from_env({**os.environ, **settings}).ws_heartbeat
        commands = {
            "database": database_note(DATABASE),
            "load": f"{args.client_processes} client processes of loadtests/clients/ws.py"
            " (raw asyncio WebSocket protocol on uvloop)",
        }
        bench = Bench(args, settings, url, SourceAddresses(), commands, heartbeat)
        phases: dict[str, Any] = {}
        with LoadClients(args.client_processes) as clients:
            token_box: list[str] = []
            if "fanout" in args.phases:
                phases["fanout"] = await fanout_phase(bench, clients, token_box)
            if not token_box:
                with bench.jangteo(["sign-up"]) as (server,):
                    token_box.append(sign_up(server.port))
            if "relay" in args.phases:
                phases["relay"] = await relay_phase(bench, clients, token_box[0])
            if "idle" in args.phases:
                phases["idle"] = await idle_phase(bench, clients, token_box[0])
        found = await versions(url, stack.redis_url)
    socketio = "not measured: python-socketio is not installed (pip install python-socketio)"
    return RealtimeResult(
        benchmark="realtime",
        stem=args.stem,
        machine=machine,
        versions=found,
        commands=commands,
        load={
            "client_processes": args.client_processes,
            "client": "loadtests/clients/ws.py: raw asyncio.Protocol WebSockets on uvloop, no"
            " compression, answering pings; latency = receive wall clock ms - frame ts",
            "jangteo_processes_per_instance": 1,
            "fanout_instances": INSTANCES,
            "bare_processes": INSTANCES,
            "heartbeat_s": heartbeat,
            "steady_rate_per_s": args.rate,
            "steady_seconds": args.duration,
            "burst_rounds": args.rounds,
            "relay_rate_per_s": args.relay_rate,
            "relay_seconds": args.relay_seconds,
            "relay_max_seconds": args.relay_max_seconds,
            "reported": "fan-out msgs/s: best burst of the rounds, per instance (first to last"
            " frame received); latencies from 1-ms bins (bin floor)",
        },
        python_socketio=importlib.metadata.version("python-socketio") if SOCKETIO else socketio,
        **phases,
    )


# ----------------------------------------------------------------------------- report


def _share(value: Any) -> str:
    return "-" if value is None else f"{value:.0%}"


def plot(data: Mapping[str, Any], caption: str, path: Path) -> bool:
    """Latency histogram, msgs/s vs bare, relay lag, KiB per connection (needs matplotlib)."""
    plt = pyplot()
    if plt is None:
        return False

    colours = {"jangteo": "#d9534f", "bare": "#7f8c8d", "socketio": "#2a7ab9"}
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5), dpi=110)
    fanout, relay, idle = data.get("fanout"), data.get("relay"), data.get("idle")
    top_left, top_right, bottom_left, bottom_right = axes.flat
    if fanout:
        histogram = {int(k): v for k, v in fanout["steady"]["histogram_ms"].items()}
        if histogram:
            top_left.bar(
                list(histogram), list(histogram.values()), width=1.0, color=colours["jangteo"]
            )
        latency = fanout["steady"]["latency_ms"]
        for name, style in (("p50", "--"), ("p99", ":")):
            if latency[name] is not None:
                top_left.axvline(
                    latency[name],
                    color="#222222",
                    linestyle=style,
                    label=f"{name} {latency[name]:g} ms",
                )
        top_left.set_xlabel("commit-to-receive latency, ms (1-ms bins)")
        top_left.set_ylabel("frames")
        top_left.set_title(
            f"fan-out: {fanout['sockets']:,} sockets on 2 instances,"
            f" {fanout['steady']['patch']['committed']} PATCHes", fontsize=9,
        )  # fmt: skip
        top_left.legend(fontsize=8)
        best = fanout["burst"]["best"]
        systems = [s for s in ("jangteo", "bare", "socketio") if s in best]
        values = [best[s]["messages_per_second_per_instance"] for s in systems]
        shown = {"jangteo": "jangteo", "bare": "bare aiohttp", "socketio": "python-socketio"}
        bars = top_right.bar(
            [shown[s] for s in systems], values, color=[colours[s] for s in systems]
        )
        top_right.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        top_right.set_ylabel("delivered messages / s per instance")
        title = (
            f"burst of {fanout['burst_events']} events: jangteo {_share(fanout['share_of_bare'])}"
            " of bare (target >= 90%)"
        )
        if fanout.get("times_socketio"):
            title += f",\n{fanout['times_socketio']:.1f}x python-socketio (target >= 4x)"
        top_right.set_title(title, fontsize=9)
        top_right.set_ylim(0, max(values) * 1.2 or 1)
    if relay:
        paced, flat = relay["paced"], relay["flat_out"]
        metric = paced["commit_to_publish_metric"] or {}
        frames = paced["commit_to_receive_ms"]
        labels = [
            "publish p50\n(metric)",
            "publish p99\n(metric)",
            "receive p50\n(frames)",
            "receive p99\n(frames)",
        ]
        values = [
            metric.get("p50_ms") or 0.0,
            metric.get("p99_ms") or 0.0,
            frames["p50"] or 0.0,
            frames["p99"] or 0.0,
        ]
        bars = bottom_left.bar(labels, values, color=colours["jangteo"])
        bottom_left.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=8)
        bottom_left.axhline(10, color="#222222", linestyle="--", label="target p99 < 10 ms")
        bottom_left.set_ylabel("ms after commit")
        bottom_left.set_title(
            f"relay at {paced['insert']['rate']:,.0f} rows/s; flat out:"
            f" {flat['received_per_second']:,.0f} published/s"
            f" ({flat['insert']['rate']:,.0f} inserted/s)",
            fontsize=9,
        )
        bottom_left.legend(fontsize=8)
    if idle:
        values = [idle["jangteo"]["kib_per_connection"], idle["bare"]["kib_per_connection"]]
        bars = bottom_right.bar(
            ["jangteo", "bare aiohttp"], values, color=[colours["jangteo"], colours["bare"]]
        )
        bottom_right.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=8)
        bottom_right.set_ylabel("server RSS KiB per idle connection")
        bottom_right.set_title(
            f"{idle['sockets']:,} idle sockets: {idle['ratio']:.2f}x bare (target <= 1.25x)",
            fontsize=9,
        )
        bottom_right.set_ylim(0, max(values) * 1.25 or 1)
    # A run of some phases only (the 20,000-socket fan-out) leaves no empty panels.
    for panel, phase in ((bottom_left, relay), (bottom_right, idle)):
        if not phase:
            panel.set_visible(False)
    if not fanout:
        top_left.set_visible(False)
        top_right.set_visible(False)
    return finish(plt, figure, caption, path)
