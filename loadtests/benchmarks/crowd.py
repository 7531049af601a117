"""A crowd on one instance: ``--sockets`` sockets (50,000) on one jangteo instance of
``--workers`` processes, against bare aiohttp holding as many.

One process may hold fewer sockets than the open files limit (20,000 here), so the
instance runs several workers on one port (``jangteo serve --workers N``, SO_REUSEPORT),
each under the limit, with heartbeats on. Every socket subscribes to one listing's
channel; after more than a heartbeat, the listing's price is PATCHed ``--events`` times,
each once the one before reached every socket, through a second instance (the ticket
desk, which also hands out the tickets), so the measured instance only holds and
delivers. Reported: commit-to-receive
latency of every delivered frame (receive wall clock - the frame's ``ts``), the
delivery audit, and the RSS of the instance's processes per socket against the bare
aiohttp reference (``loadtests/references/ws.py``, as many processes as workers, the
same sockets split among them, heartbeats on too). The bare processes also send
``--events`` events of the same shape, one at a time, each stamped as its send loop
starts: their trigger-to-receive latency is what writing one frame to that many sockets
costs this machine with nothing before it (no commit, relay or Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from loadtests.benchmarks.realtime import FD_RESERVE, Bench, delivery_summary, trigger_bare
from loadtests.clients import events as event_load
from loadtests.clients.ws import LoadClients, Target, raise_open_files
from loadtests.harness import report
from loadtests.harness.processes import BenchError, Server, server_problems
from loadtests.harness.report import COLOURS, bars, finish
from loadtests.harness.results import Machine, Result, versions
from loadtests.harness.stack import (
    create_listing,
    database_note,
    fresh_database,
    serve_settings,
    services,
    sign_up,
)
from loadtests.harness.stats import summary
from realtime.frames import event_json
from server.settings import Settings

DATABASE = "jangteo_bench_crowd"
# What the bare processes send: an event of the size and shape of jangteo's price change.
BARE_EVENT = event_json(
    "listing:1", 1, 0, 0, "listing.price_changed",
    '{"id": 1, "price": 20099, "title": "realtime benchmark: a crowd", "region":'
    ' "seoul-mapo", "status": "on_sale", "version": 2, "category": "etc", "quantity": 1,'
    ' "old_price": 20098, "seller_id": 1, "like_count": 0}',
)  # fmt: skip
TARGETS = {"p99_ms": 500.0, "memory_ratio": 1.25}
OPTIONS = (  # flag, default (its type is the option's), help
    ("--sockets", 50_000, "sockets on the one instance"),
    ("--workers", 3, "jangteo worker processes of the instance (and bare processes)"),
    ("--events", 5, "price changes, each to every socket, one after the other"),
    ("--client-processes", 0, "load client processes (default: as the open files limit needs)"),
)


def options(parser: argparse.ArgumentParser) -> None:
    for flag, default, meaning in OPTIONS:
        parser.add_argument(flag, type=type(default), default=default, help=meaning)
    parser.add_argument(
        "--settle", type=float, default=None,
        help="seconds between opening and measuring (default: 1.25 heartbeats)",
    )  # fmt: skip
    parser.add_argument("--name", default="crowd", help="results file stem")


@dataclass(kw_only=True, slots=True)
class CrowdResult(Result):
    crowd: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, float] = field(default_factory=lambda: dict(TARGETS))

    def failures(self) -> list[str]:
        delivery = self.crowd.get("delivery", {})
        if delivery.get("missing") or delivery.get("gaps") or delivery.get("repeats"):
            return [f"delivery audit failed: {delivery}"]
        return []

    def table(self) -> str:
        return report.table(report.crowd_rows(self.as_json()))

    def plot(self, plt: Any, path: Path) -> None:
        """The latency histogram, and KiB per socket beside bare aiohttp's."""
        crowd = self.crowd
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
        for side, colour, label in (
            (crowd, "jangteo", "jangteo, commit-to-receive"),
            (crowd["bare"], "bare", "bare aiohttp, trigger-to-receive"),
        ):
            histogram = {int(k): v for k, v in side.get("histogram_ms", {}).items()}
            left.bar(list(histogram), histogram.values(), width=1.0, color=COLOURS[colour],
                     alpha=0.6, label=label)  # fmt: skip
        for name, style in (("p50", "--"), ("p99", ":")):
            if (ms := crowd["latency_ms"][name]) is not None:
                left.axvline(
                    ms, color="#222222", linestyle=style, label=f"jangteo {name} {ms:g} ms"
                )
        left.set_xlabel("latency, ms (1-ms bins)")
        left.set_ylabel("frames")
        left.set_title(
            f"{crowd['events']} events to {crowd['sockets']:,} sockets on one instance"
            f" ({crowd['workers']} workers)",
            fontsize=9,
        )
        left.legend(fontsize=8)
        values = [crowd["jangteo"]["kib_per_socket"], crowd["bare"]["kib_per_socket"]]
        bars(right, ["jangteo", "bare aiohttp"], values, "{:.1f}",
             color=[COLOURS["jangteo"], COLOURS["bare"]])  # fmt: skip
        right.set_ylabel("server RSS KiB per socket (all processes)")
        right.set_title(f"memory: {crowd['memory_ratio']:.2f}x bare (target <= 1.25x)", fontsize=9)
        right.set_ylim(0, max(values) * 1.25 or 1)
        caption = (
            f"{self.date}, {self.machine.cores} cores, {self.load['client_processes']} client"
            " processes, servers, clients, PostgreSQL and Redis on the same cores"
        )
        finish(plt, figure, caption, path)


def group_rss(server: Server) -> int:
    """The RSS of a server's process and its workers."""
    leader = psutil.Process(server.pid)
    return sum(p.memory_info().rss for p in (leader, *leader.children(recursive=True)))


async def hold(bench: Bench, servers: list[Server], targets: list[Target], channel: str | None,
               settle: float) -> dict[str, Any]:  # fmt: skip
    """Open the sockets after a warm-up, wait ``settle`` s: RSS per socket of ``servers``."""
    bench.open(targets, 100, None)  # warm-up: the first sockets' one-off allocations
    bench.clients.call("close")
    await asyncio.sleep(1.0)
    bench.clients.call("reset")
    before = sum(group_rss(server) for server in servers)
    connect = bench.open(targets, bench.args.sockets, channel)
    await asyncio.sleep(settle)
    after = sum(group_rss(server) for server in servers)
    stats = bench.clients.stats()
    return {
        "rss_before_kib": before // 1024,
        "rss_after_kib": after // 1024,
        "kib_per_socket": round((after - before) / bench.args.sockets / 1024, 2),
        "connect_seconds": connect["seconds"],
        "sockets_open_at_measurement": stats["open"],
        "closed_by_server_before_measurement": stats["closes"],
    }


async def one_at_a_time(
    bench: Bench, send: Callable[[int], Awaitable[int]], names: list[str]
) -> tuple[int, dict[str, Any]]:
    """``--events`` events, each sent (``send(number)``: how many it sent) once the one
    before reached every socket (or stopped arriving), so each latency is one event's
    own; how many were sent, and the clients' stats counting the named servers'."""
    bench.clients.call("reset")
    sent = 0
    stats: dict[str, Any] = {}
    for number in range(bench.args.events):
        sent += await send(number)
        stats = await bench.wait_for(sent * bench.args.sockets, limit=120, quiet=10, names=names)
    return sent, stats


def latency_of(stats: dict[str, Any], what: str) -> dict[str, Any]:
    """The latency summary and histogram of ``stats``, printed as ``what``."""
    latency = summary(stats["histogram_ms"], stats["overflow"])
    print(f"  {what} p50 {latency['p50']} ms, p99 {latency['p99']} ms, max {latency['max']} ms")
    return {"latency_ms": latency, "histogram_ms": stats["histogram_ms"]}


async def crowd_phase(bench: Bench, per_process: int) -> dict[str, Any]:
    args = bench.args
    settle = args.settle or bench.heartbeat * 1.25
    result: dict[str, Any] = {"sockets": args.sockets, "workers": args.workers}
    frame = args.scratch / "crowd-frame.json"
    frame.write_bytes(BARE_EVENT)
    names = [f"bare-{n + 1}" for n in range(args.workers)]
    print(f"\n== bare aiohttp: {args.sockets:,} sockets on {args.workers} processes")
    with bench.references("ws", names, frame) as bare:
        targets = [Target(s.name, "127.0.0.1", s.port, "/ws") for s in bare]
        result["bare"] = await hold(bench, bare, targets, None, settle)
        print(f"  bare aiohttp: {result['bare']['kib_per_socket']} KiB per socket")

        async def stamped(number: int) -> int:
            await trigger_bare(bare, 1, stamp=True)
            return 1

        _, stats = await one_at_a_time(bench, stamped, names)
        bench.clients.call("close")
    result["bare"] |= latency_of(stats, "trigger-to-receive")
    with bench.jangteo(["ticket-desk"]) as (desk,):
        bench.token = token = sign_up(desk.port)
        listing_id = create_listing(desk.port, token, "realtime benchmark: a crowd")
        result["channel"] = channel = f"listing:{listing_id}"
        limit = str(per_process - FD_RESERVE)
        with bench.jangteo(
            ["jangteo-crowd"], workers=args.workers, JANGTEO_WS_MAX_CONNECTIONS=limit
        ) as (server,):
            print(f"\n== jangteo: {args.sockets:,} sockets on one instance of {args.workers}"
                  f" workers, subscribed to {channel}")  # fmt: skip
            target = Target.jangteo(server.name, server.port, token, desk.port)
            result["jangteo"] = await hold(bench, [server], [target], channel, settle)
            print(f"  jangteo: {result['jangteo']['kib_per_socket']} KiB per socket")
            patches: list[dict[str, Any]] = []

            async def patched(number: int) -> int:
                patch = await event_load.patch_prices(
                    [desk.url], token, listing_id, rate=1.0, seconds=1.0, first=number
                )
                patches.append(patch)
                return int(patch["committed"])

            committed, stats = await one_at_a_time(bench, patched, [server.name])
            bench.clients.call("close")
            result |= latency_of(stats, "commit-to-receive") | {
                "events": committed,
                "patches": patches,
                "delivery": delivery_summary(stats, committed * args.sockets, [server.name]),
                "server_log_problems": server_problems(server.log),
            }
    bare_kib = result["bare"]["kib_per_socket"]
    result["memory_ratio"] = (
        round(result["jangteo"]["kib_per_socket"] / bare_kib, 3) if bare_kib else None
    )
    return result


async def run(args: argparse.Namespace) -> CrowdResult:
    soft, hard = raise_open_files()
    per_process = hard
    if math.ceil(args.sockets / args.workers) > per_process - FD_RESERVE:
        raise BenchError(
            f"{args.sockets:,} sockets over {args.workers} processes pass the open files"
            f" limit of {per_process:,} per process: add --workers"
        )
    args.client_processes = args.client_processes or math.ceil(
        args.sockets / (per_process - FD_RESERVE)
    )
    stack = services()
    async with fresh_database(stack.admin_url, DATABASE, keep=args.keep_database) as url:
        settings = serve_settings(url, stack.redis_url)
        heartbeat = Settings.from_env({**os.environ, **settings}).ws_heartbeat
        commands: dict[str, Any] = {
            "database": database_note(DATABASE),
            "load": f"{args.client_processes} client processes of loadtests/clients/ws.py",
        }
        with LoadClients(args.client_processes) as clients:
            bench = Bench(args, settings, url, clients, commands, heartbeat)
            crowd = await crowd_phase(bench, per_process)
        found = await versions(url, stack.redis_url)
    return CrowdResult(
        benchmark="crowd",
        machine=Machine(open_files_limit=[soft, hard]),
        versions=found,
        commands=commands,
        load={
            "client_processes": args.client_processes,
            "workers": args.workers,
            "heartbeat_s": heartbeat,
            "settle_s": args.settle or heartbeat * 1.25,
            "reported": "latencies from 1-ms bins (bin floor); RSS of every process of the"
            " instance (leader and workers) and of every bare process",
        },
        crowd=crowd,
    )
