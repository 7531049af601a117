"""Realtime: fan-out, relay lag and idle sockets, jangteo against bare aiohttp.

Every WebSocket server is loaded by the same client (``loadtests/clients/ws.py``, 2
processes), and jangteo's event streams by its SSE twin (``loadtests/clients/sse.py``):

1. fan-out: ``--sockets`` sockets over 2 jangteo instances, all subscribed to one listing's
   channel. The listing's price is PATCHed over REST at ``--rate`` per second for
   ``--duration`` s: commit-to-receive latency of every delivered event (receive wall
   clock - the frame's ``ts``). Then bursts: ``--burst`` outbox rows committed in one
   transaction, delivered messages/s per instance, alternating with the references (a
   bare aiohttp server per instance sending the same frame bytes to as many sockets in a
   plain loop, and python-socketio when installed); best of ``--rounds`` each.
2. sse: the same steady run and bursts with ``--sockets`` Server-Sent Events streams for
   sockets, over 2 instances of their own: delivered messages/s per instance and p99, and
   their ratios to the WebSocket fan-out of the same run.
3. relay: one instance, one subscriber; outbox rows committed at ``--relay-rate`` per
   second (one row per transaction), then at ``--sustain-rate``, then flat out for
   ``--relay-max-seconds``: commit-to-receive from the frames, commit-to-publish from the
   server's ``jangteo_relay_lag_seconds``, published events/s and whether the lag grows.
4. idle memory: ``--idle-sockets`` idle sockets (heartbeats on) on one jangteo instance and
   on one bare aiohttp process, held through more than one heartbeat: server RSS per
   connection, and how many were still open when measured.

``--name`` changes the results file stem (``make bench`` runs the 20,000-socket fan-out as
``realtime-20k``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import importlib.metadata
import importlib.util
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtests.clients import events as event_load
from loadtests.clients.sse import sse_main, sse_target
from loadtests.clients.ws import (
    ConnectPlan,
    LoadClients,
    SourceAddresses,
    Target,
    raise_open_files,
)
from loadtests.harness import report
from loadtests.harness.processes import BenchError, Server, as_line, background, server_problems
from loadtests.harness.report import COLOURS, bars, finish
from loadtests.harness.results import Machine, Result, versions
from loadtests.harness.stack import (
    Inspect,
    connected,
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
FD_RESERVE = 200  # descriptors a server needs besides its sockets (pools, logs, listeners)
SOCKETIO = importlib.util.find_spec("socketio") is not None  # python-socketio, optional
SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"
TARGETS = {
    "fanout_p99_ms_2000": 20.0,
    "fanout_p99_ms_20000": 250.0,
    "fanout_share_of_bare": 2.0,
    "fanout_times_socketio": 4.0,
    "relay_p99_ms": 10.0,
    "relay_events_per_second": 5000.0,
    "idle_memory_ratio": 1.25,
}
SHOWN = {
    "jangteo": "jangteo", "bare": "bare aiohttp", "socketio": "python-socketio",
    "sse": "jangteo SSE",
}  # fmt: skip
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
    phases = ["fanout", "sse", "relay", "idle"]
    parser.add_argument("--phases", nargs="+", choices=phases, default=phases)
    parser.add_argument("--name", default="realtime", help="results file stem")


@dataclass(kw_only=True, slots=True)
class RealtimeResult(Result):
    fanout: dict[str, Any] | None = None
    sse: dict[str, Any] | None = None
    relay: dict[str, Any] | None = None
    idle: dict[str, Any] | None = None
    targets: dict[str, float] = field(default_factory=lambda: dict(TARGETS))
    python_socketio: str = ""

    def as_json(self) -> dict[str, Any]:
        return {key: value for key, value in Result.as_json(self).items() if value is not None}

    def table(self) -> str:
        """The figures as the targets table shows them (``python -m loadtests report``)."""
        data = self.as_json()
        return report.table(report.realtime_rows(data, data))

    def plot(self, plt: Any, path: Path) -> None:
        """Latency histogram, msgs/s vs bare, relay lag, KiB per connection; a run of some
        phases only (the 20,000-socket fan-out) leaves no empty panels."""
        figure, axes = plt.subplots(2, 2, figsize=(11, 7.5), dpi=110)
        (top_left, top_right), (bottom_left, bottom_right) = axes
        fanned = self.fanout or self.sse
        for panel, phase in ((top_left, fanned), (top_right, fanned),
                             (bottom_left, self.relay), (bottom_right, self.idle)):  # fmt: skip
            panel.set_visible(bool(phase))
        if fanned:
            self._lone_events(top_left)
            self._bursts(top_right)
        if self.relay:
            paced, flat = self.relay["paced"], self.relay["flat_out"]
            metric, frames = paced["commit_to_publish_metric"] or {}, paced["commit_to_receive_ms"]
            labels = ["publish p50\n(metric)", "publish p99\n(metric)",
                      "receive p50\n(frames)", "receive p99\n(frames)"]  # fmt: skip
            values = [metric.get("p50_ms"), metric.get("p99_ms"), frames["p50"], frames["p99"]]
            bars(
                bottom_left, labels, [v or 0.0 for v in values], "{:.1f}", color=COLOURS["jangteo"]
            )
            bottom_left.axhline(10, color="#222222", linestyle="--", label="target p99 < 10 ms")
            bottom_left.set_ylabel("ms after commit")
            bottom_left.set_title(
                f"relay at {paced['insert']['rate']:,.0f} rows/s; flat out:"
                f" {flat['received_per_second']:,.0f} published/s"
                f" ({flat['insert']['rate']:,.0f} inserted/s)",
                fontsize=9,
            )
            bottom_left.legend(fontsize=8)
        if self.idle:
            values = [self.idle[side]["kib_per_connection"] for side in ("jangteo", "bare")]
            colours = [COLOURS["jangteo"], COLOURS["bare"]]
            bars(bottom_right, [SHOWN["jangteo"], SHOWN["bare"]], values, "{:.1f}", color=colours)
            bottom_right.set_ylabel("server RSS KiB per idle connection")
            title = f"{self.idle['sockets']:,} idle sockets: {self.idle['ratio']:.2f}x bare"
            bottom_right.set_title(f"{title} (target <= 1.25x)", fontsize=9)
            bottom_right.set_ylim(0, max(values) * 1.25 or 1)
        caption = (
            f"{self.date}, {self.machine.cores} cores, {self.load['client_processes']} client"
            " processes, servers, clients, PostgreSQL and Redis on the same cores"
        )
        finish(plt, figure, caption, path)

    def _fanned(self) -> list[tuple[str, str, dict[str, Any]]]:
        """The fan-out phases that ran: how they are shown, their colour, their figures."""
        phases = (("WebSocket", "jangteo", self.fanout), ("SSE", "sse", self.sse))
        return [(name, colour, phase) for name, colour, phase in phases if phase]

    def _lone_events(self, axes: Any) -> None:
        """Commit-to-receive of the steady runs: the sockets' as bars, the streams' as a line."""
        shapes = []
        for name, colour, phase in self._fanned():
            steady = phase["steady"]
            histogram = {int(k): v for k, v in steady["histogram_ms"].items()}
            if name == "WebSocket":
                axes.bar(list(histogram), histogram.values(), width=1.0, color=COLOURS[colour],
                         label=name)  # fmt: skip
            elif histogram:
                bins = range(max(histogram) + 2)
                axes.step(bins, [histogram.get(ms, 0) for ms in bins], where="mid",
                          color=COLOURS[colour], label=name)  # fmt: skip
            for label, style in (("p50", "--"), ("p99", ":")):
                if (ms := steady["latency_ms"][label]) is not None:
                    axes.axvline(ms, color=COLOURS[colour], linestyle=style,
                                 label=f"{name} {label} {ms:g} ms")  # fmt: skip
            if bare := phase.get("steady_bare"):
                histogram = {int(k): v for k, v in bare["histogram_ms"].items()}
                bins = range(max(histogram, default=0) + 2)
                axes.step(bins, [histogram.get(ms, 0) for ms in bins], where="mid",
                          color=COLOURS["bare"], label="bare aiohttp")  # fmt: skip
            count = phase.get("sockets") or phase.get("streams")
            unit = "sockets" if name == "WebSocket" else "streams"
            shapes.append(f"{count:,} {unit}, {steady['patch']['committed']} PATCHes")
        axes.set_xlabel("latency, ms (1-ms bins)")
        axes.set_ylabel("frames")
        axes.set_title(f"fan-out on 2 instances: {'; '.join(shapes)}", fontsize=9)
        axes.legend(fontsize=8)

    def _bursts(self, axes: Any) -> None:
        """Delivered messages/s per instance of every fan-out system's best burst."""
        labels, values, colours = [], [], []
        for *_, phase in self._fanned():
            best = phase["burst"]["best"]
            for system in (s for s in ("jangteo", "bare", "socketio", "sse") if s in best):
                labels.append(SHOWN[system])
                values.append(best[system]["messages_per_second_per_instance"])
                colours.append(COLOURS[system])
        bars(axes, labels, values, "{:,.0f}", color=colours)
        axes.set_ylabel("delivered messages / s per instance")
        lines = []
        if self.fanout:
            share = report.fmt_ratio(self.fanout.get("share_of_bare"), "%")
            lines.append(f"jangteo {share} of bare (target >= 200%)")
            if self.fanout.get("times_socketio"):
                lines.append(f"{self.fanout['times_socketio']:.1f}x python-socketio (target >= 4x)")
        if ratio := (self.sse or {}).get("vs_websocket", {}).get("messages_per_second_ratio"):
            lines.append(f"SSE {ratio:.0%} of WebSocket")
        burst = (self.fanout or self.sse or {})["burst_events"]
        axes.set_title(f"burst of {burst} events: " + ",\n".join(lines), fontsize=9)
        axes.set_ylim(0, max(values) * 1.2 or 1)


@dataclass(slots=True)
class Bench:
    """What every phase needs: settings, the load clients, and what was run."""

    args: argparse.Namespace
    settings: dict[str, str]  # JANGTEO_* of jangteo serve
    database_url: str
    clients: LoadClients
    commands: dict[str, Any]
    heartbeat: float
    addresses: SourceAddresses = field(default_factory=SourceAddresses)
    token: str = ""  # a signed-up account's: every instance shares the JWT secret

    def jangteo(
        self, names: Sequence[str], *, workers: int = 1, **extra: str
    ) -> AbstractContextManager[list[Server]]:
        record = self.commands.setdefault("jangteo", {})
        return instances(names, self.settings | extra, self.args.scratch, record, workers=workers)

    @contextmanager
    def references(
        self, module: str, names: Sequence[str], frame: Path, *options: str
    ) -> Iterator[list[Server]]:
        """``python -m loadtests.references.<module>`` once per name (one uvloop process
        each), sending ``frame``, with jangteo's heartbeat."""
        options = ("--frame", str(frame), "--heartbeat", f"{self.heartbeat:g}", *options)
        with ExitStack() as stack:
            servers = []
            for name in names:
                port = free_port()
                command = [sys.executable, "-m", f"loadtests.references.{module}", "--port",
                           str(port), *options]  # fmt: skip
                self.commands.setdefault(f"baseline_{module}", {})[name] = as_line(command)
                log = self.args.scratch / f"{name}.log"
                servers.append(
                    stack.enter_context(background(command, os.environ, port, log, name))
                )
            yield servers

    def open(self, targets: Sequence[Target], count: int, channel: str | None) -> dict[str, Any]:
        """Open ``count`` sockets over the targets; BenchError unless every one opened."""
        sources = self.addresses.take(count)
        plans = ConnectPlan.split(targets, count, len(self.clients.pids), channel, sources)
        started = time.monotonic()
        result = self.clients.connect(plans)
        opened = result["outcome"].get("opened", 0)
        names = ", ".join(t.instance for t in targets)
        print(f"  {opened:,} of {count:,} sockets open on {names} in {result['seconds']:.1f} s")
        if opened != count:
            raise BenchError(f"only {opened} of {count} sockets opened: {result['outcome']}")
        result["wall_seconds"] = round(time.monotonic() - started, 2)
        return result

    async def wait_for(
        self, expected: int, *, limit: float, quiet: float = 3.0, names: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """The clients' stats once ``expected`` events came from ``names`` (all instances when
        None), or none for ``quiet`` s. Counting only the instances under test keeps a
        previous system's late frames out."""
        deadline = time.monotonic() + limit
        seen, changed = -1, time.monotonic()
        while True:
            stats = self.clients.stats()
            count = received(stats, names)
            if count >= expected:
                return stats
            if count != seen:
                seen, changed = count, time.monotonic()
            if time.monotonic() - changed > quiet or time.monotonic() > deadline:
                return stats
            await asyncio.sleep(0.2)


def received(stats: Mapping[str, Any], names: Sequence[str] | None = None) -> int:
    """Event frames received from the named instances (all when None)."""
    if names is None:
        return int(stats["events"])
    return sum(int(stats["tallies"].get(name, {}).get("events", 0)) for name in names)


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


# ----------------------------------------------------------------------------- fan-out


async def last_frame(database_url: str, channel: str) -> bytes:
    """The WebSocket frame payload the relay sent for the channel's latest event."""
    async with connected(database_url) as conn:
        row = await conn.fetchrow(
            "SELECT channel, position, prev, committed_at, type, data::text AS data FROM outbox"
            " WHERE channel = $1 AND position IS NOT NULL ORDER BY position DESC LIMIT 1",
            channel,
        )
    if row is None:
        raise BenchError(f"no published event on {channel}")
    ts = int(row["committed_at"].timestamp() * 1000)
    return event_json(row["channel"], row["position"], row["prev"], ts, row["type"], row["data"])


async def insert_burst(database_url: str, channel: str, events: int) -> float:
    """Commit ``events`` copies of the channel's latest event in one transaction; commit time."""
    async with connected(database_url) as conn:
        await conn.execute(
            "INSERT INTO outbox (channel, type, data)"
            " SELECT channel, type, data FROM outbox, generate_series(1, $2::int)"
            " WHERE id = (SELECT max(id) FROM outbox WHERE channel = $1)",
            channel,
            events,
        )
        return time.time()


async def trigger_bare(
    servers: Sequence[Server], events: int, *, stamp: bool = False
) -> list[dict[str, Any]]:
    """``POST /fanout?count=events`` on every reference server at once (``stamp``: each
    event's ``ts`` is when its send loop starts)."""
    query = f"count={events}" + ("&stamp=1" if stamp else "")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def one(server: Server) -> dict[str, Any]:
            async with session.post(f"{server.url}/fanout?{query}") as response:
                answer: dict[str, Any] = await response.json()
                return answer

        return list(await asyncio.gather(*(one(server) for server in servers)))


async def burst_round(
    bench: Bench, servers: Sequence[Server], sockets: int, events: int,
    trigger: Callable[[], Awaitable[Any]],
) -> dict[str, Any]:  # fmt: skip
    """One burst on one system: reset, trigger, wait for every frame, rate per instance
    (events received, first-to-last seconds, messages per second)."""
    bench.clients.call("reset")
    cpu = {server.name: server.cpu_seconds() for server in servers}
    started = time.time()
    answer = await trigger()
    expected = sockets * events
    names = [server.name for server in servers]
    limit = 60 + expected / 10_000
    stats = await bench.wait_for(expected, limit=limit, quiet=10.0, names=names)
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
    cpu_used = {s.name: round(s.cpu_seconds() - cpu[s.name], 3) for s in servers}
    first = min((r["first"] for r in rates.values() if r["messages"]), default=started)
    return {
        "events": events,
        "instances": rates,
        "messages_per_second_per_instance": round(
            sum(r["messages_per_second"] for r in rates.values()) / len(rates), 1
        ),
        "server_cpu_seconds": cpu_used,
        "messages_per_server_cpu_second": round(
            received(stats, names) / max(1e-9, sum(cpu_used.values())), 1
        ),
        "first_frame_after_trigger_s": round(first - started, 4),
        "latency_ms": summary(stats["histogram_ms"], stats["overflow"]),
        "delivery": delivery_summary(stats, expected, names),
        "trigger_answer": answer,
    }


Systems = dict[str, tuple[list[Server], Callable[[], Awaitable[Any]]]]


def start_references(
    bench: Bench, stack: ExitStack, frame_file: Path, channel: str, burst: int,
    result: dict[str, Any],
) -> Systems:  # fmt: skip
    """The bare aiohttp servers (and python-socketio when installed) in ``stack``, each with
    ``--sockets`` sockets open; their burst triggers."""
    sockets = bench.args.sockets
    names = [f"bare-{n + 1}" for n in range(INSTANCES)]
    bares = stack.enter_context(bench.references("ws", names, frame_file))
    print("== fan-out reference: the same frame from bare aiohttp")
    bare_targets = [Target(s.name, "127.0.0.1", s.port, "/ws") for s in bares]
    result["connect_bare"] = bench.open(bare_targets, sockets, channel)
    systems: Systems = {"bare": (bares, functools.partial(trigger_bare, bares, burst))}
    if SOCKETIO:
        names = [f"socketio-{n + 1}" for n in range(INSTANCES)]
        redis = ["--redis-url", bench.settings["JANGTEO_REDIS_URL"]]
        redis += ["--channel", f"jangteo-bench-socketio-{os.getpid()}"]
        sios = stack.enter_context(bench.references("socketio", names, frame_file, *redis))
        print("== fan-out reference: python-socketio with AsyncRedisManager")
        sio_targets = [Target(s.name, "127.0.0.1", s.port, SOCKETIO_PATH, socketio=True)
                       for s in sios]  # fmt: skip
        result["connect_socketio"] = bench.open(sio_targets, sockets, None)
        # One emit reaches both processes' sockets through Redis.
        systems["socketio"] = (sios, functools.partial(trigger_bare, sios[:1], burst))
    return systems


WS_METRICS = ("jangteo_ws_", "jangteo_hub_", "jangteo_relay_events")
SSE_METRICS = ("jangteo_sse_", "jangteo_ws_deliveries", "jangteo_hub_", "jangteo_relay_events")


def burst_size(args: argparse.Namespace) -> int:
    """``--burst``, else 200,000 frames' worth over ``--sockets`` (10 to 200 events)."""
    return int(args.burst or max(10, min(200, 200_000 // args.sockets)))


async def steady_run(
    bench: Bench, servers: Sequence[Server], listing_id: int, receivers: int,
    words: Sequence[str],
) -> dict[str, Any]:  # fmt: skip
    """Lone events: the listing's price PATCHed ``--rate`` times a second for ``--duration``
    s; commit-to-receive of every delivered event, and the servers' metrics named by
    ``words``."""
    args = bench.args
    await asyncio.sleep(1.0)
    bench.clients.call("reset")
    before = [await event_load.scrape(s.url) for s in servers]
    print(f"  PATCH price {args.rate:g}/s for {args.duration:g} s ...", flush=True)
    patches = await event_load.patch_prices(
        [s.url for s in servers], bench.token, listing_id, rate=args.rate, seconds=args.duration
    )
    expected = patches["committed"] * receivers
    stats = await bench.wait_for(expected, limit=60)
    after = [await event_load.scrape(s.url) for s in servers]
    latency = summary(stats["histogram_ms"], stats["overflow"])
    print(
        f"  {stats['events']:,} of {expected:,} frames; commit-to-receive p50"
        f" {latency['p50']} ms, p99 {latency['p99']} ms, max {latency['max']} ms",
        flush=True,
    )
    spreads = event_spreads(stats)
    print(
        f"  per event: first frame p50 {spreads['first_ms']['p50']} / p99"
        f" {spreads['first_ms']['p99']} ms, last frame p50 {spreads['last_ms']['p50']} / p99"
        f" {spreads['last_ms']['p99']} ms after the commit",
        flush=True,
    )
    return {
        "patch": patches,
        "latency_ms": latency,
        "events": spreads,
        "histogram_ms": stats["histogram_ms"],
        "delivery": delivery_summary(stats, expected),
        "server_metrics": {
            s.name: {word: event_load.matching(a, word) for word in words}
            for s, a in zip(servers, after, strict=True)
        },
        "deliveries_counted_by_servers": sum(
            event_load.counter_delta(b, a, "jangteo_ws_deliveries_total") or 0.0
            for b, a in zip(before, after, strict=True)
        ),
    }


def event_spreads(stats: Mapping[str, Any], slowest: int = 5) -> dict[str, Any]:
    """When each event's first and last frames arrived, in ms after its commit (or stamp):
    the first is what came before the first write, the last adds the spread of the writes
    and reads; and the ``slowest`` events by their last frame, as [frames, first, last]. A
    p99 over every frame is set by the slowest one or two events of a hundred."""
    spreads = list(stats["per_event"].values())
    firsts = Counter(round(first, 1) for _, first, _ in spreads)
    lasts = Counter(round(last, 1) for _, _, last in spreads)
    worst = sorted(spreads, key=lambda spread: spread[2], reverse=True)[:slowest]
    return {
        "count": len(spreads),
        "first_ms": summary(firsts),
        "last_ms": summary(lasts),
        "slowest": [[int(n), round(first, 1), round(last, 1)] for n, first, last in worst],
    }


async def steady_bare(bench: Bench, bares: Sequence[Server], receivers: int) -> dict[str, Any]:
    """Lone events from the bare servers, ``--rate`` a second for ``--duration`` s, each
    stamped as its send loop starts: trigger-to-receive, what one frame to that many
    sockets costs this machine with no commit, relay or Redis before it."""
    args = bench.args
    events = round(args.rate * args.duration)
    names = [server.name for server in bares]
    bench.clients.call("reset")
    print(f"  bare aiohttp: {events} lone events at {args.rate:g}/s ...", flush=True)
    started = time.monotonic()
    for number in range(events):
        await asyncio.sleep(max(0.0, started + number / args.rate - time.monotonic()))
        await trigger_bare(bares, 1, stamp=True)
    stats = await bench.wait_for(events * receivers, limit=60, names=names)
    latency = summary(stats["histogram_ms"], stats["overflow"])
    print(f"  trigger-to-receive p50 {latency['p50']} ms, p99 {latency['p99']} ms", flush=True)
    return {
        "events": events,
        "latency_ms": latency,
        "spreads": event_spreads(stats),
        "histogram_ms": stats["histogram_ms"],
        "delivery": delivery_summary(stats, events * receivers, names),
    }


async def burst_rounds(
    bench: Bench, systems: Systems, receivers: int, burst: int
) -> dict[str, Any]:
    """``--rounds`` bursts per system, the order reversed every other round; every round, and
    each system's best (by messages/s per instance)."""
    rounds: dict[str, list[dict[str, Any]]] = {system: [] for system in systems}
    order = list(systems)
    for number in range(bench.args.rounds):
        for system in order if number % 2 == 0 else order[::-1]:
            group, trigger = systems[system]
            outcome = await burst_round(bench, group, receivers, burst, trigger)
            rounds[system].append(outcome)
            missing = outcome["delivery"]["missing"]
            print(
                f"  round {number + 1} {system:<8}"
                f" {outcome['messages_per_second_per_instance']:>10,.0f} msgs/s per"
                f" instance ({burst} events x {receivers:,} receivers"
                f"{f', {missing:,} MISSING' if missing else ''})",
                flush=True,
            )
    best = {
        system: max(runs, key=lambda r: float(r["messages_per_second_per_instance"]))
        for system, runs in rounds.items()
    }
    return {"best": best, "rounds": rounds}


async def fanout_phase(
    bench: Bench, *, with_references: bool = True, inspect: Inspect | None = None
) -> dict[str, Any]:
    """The steady run and the bursts (against the references unless ``with_references`` is
    False); ``inspect`` looks at the two instances before they stop."""
    args, sockets = bench.args, bench.args.sockets
    burst = burst_size(args)
    names = [f"jangteo-{n + 1}" for n in range(INSTANCES)]
    result: dict[str, Any] = {"sockets": sockets, "instances": INSTANCES, "burst_events": burst}
    with bench.jangteo(names) as servers:
        bench.token = token = sign_up(servers[0].port)
        listing_id = create_listing(servers[0].port, token, "realtime benchmark: fan-out")
        result["channel"] = channel = f"listing:{listing_id}"
        print(f"\n== fan-out: {sockets:,} sockets on {channel} over {INSTANCES} instances")
        targets = [Target.jangteo(s.name, s.port, token) for s in servers]
        result["connect"] = bench.open(targets, sockets, channel)
        result["steady"] = await steady_run(bench, servers, listing_id, sockets, WS_METRICS)
        frame = await last_frame(bench.database_url, channel)
        frame_file = args.scratch / "frame.json"
        frame_file.write_bytes(frame)
        result["frame_bytes"] = len(frame)
        result["frame"] = frame.decode()
        with ExitStack() as references:
            burst_jangteo = functools.partial(insert_burst, bench.database_url, channel, burst)
            systems: Systems = {"jangteo": (servers, burst_jangteo)}
            if with_references:
                systems |= start_references(bench, references, frame_file, channel, burst, result)
                result["steady_bare"] = await steady_bare(bench, systems["bare"][0], sockets)
            result["burst"] = await burst_rounds(bench, systems, sockets, burst)
            bench.clients.call("close")
        best = result["burst"]["best"]
        rate = {system: run["messages_per_second_per_instance"] for system, run in best.items()}
        if "bare" in rate:
            bare = rate["bare"]
            result["share_of_bare"] = round(rate["jangteo"] / bare, 3) if bare else None
            # What writing one frame to each instance's sockets takes at the bare loop's
            # rate: a floor under any commit-to-receive percentile on this machine.
            result["one_event_write_ms_at_bare_rate"] = (
                round(sockets / INSTANCES / bare * 1000, 1) if bare else None
            )
        if "socketio" in rate:
            sio = rate["socketio"]
            result["times_socketio"] = round(rate["jangteo"] / sio, 2) if sio else None
        if inspect is not None:
            result["inspected"] = await inspect(servers)
        result["server_log_problems"] = {s.name: server_problems(s.log) for s in servers}
    return result


# ----------------------------------------------------------------------------- SSE fan-out


async def sse_phase(bench: Bench, fanout: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fan-out's steady run and bursts with ``--sockets`` event streams for sockets, on
    two instances of their own, read by SSE client processes (``clients/sse.py``); set
    beside the WebSocket fan-out of the same run (``fanout``) when it ran."""
    args, streams = bench.args, bench.args.sockets
    burst = burst_size(args)
    names = [f"jangteo-sse-{n + 1}" for n in range(INSTANCES)]
    result: dict[str, Any] = {"streams": streams, "instances": INSTANCES, "burst_events": burst}
    with (
        bench.jangteo(names) as servers,
        LoadClients(args.client_processes, main=sse_main) as clients,
    ):
        readers = dataclasses.replace(bench, clients=clients)
        if not bench.token:
            bench.token = readers.token = sign_up(servers[0].port)
        listing_id = create_listing(servers[0].port, bench.token, "realtime benchmark: SSE")
        result["channel"] = channel = f"listing:{listing_id}"
        print(f"\n== SSE fan-out: {streams:,} event streams on {channel} over {INSTANCES}"
              " instances")  # fmt: skip
        targets = [sse_target(Target.jangteo(s.name, s.port, bench.token)) for s in servers]
        result["connect"] = readers.open(targets, streams, channel)
        result["steady"] = await steady_run(readers, servers, listing_id, streams, SSE_METRICS)
        trigger = functools.partial(insert_burst, bench.database_url, channel, burst)
        result["burst"] = await burst_rounds(readers, {"sse": (servers, trigger)}, streams, burst)
        clients.call("close")
        result["server_log_problems"] = {s.name: server_problems(s.log) for s in servers}
    result["vs_websocket"] = against_websocket(result, fanout)
    return result


def against_websocket(
    sse: Mapping[str, Any], fanout: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """SSE's burst rate and steady p99 over the WebSocket fan-out's of the same run; None
    when that did not run, a ratio None when its WebSocket figure is 0."""
    if not fanout:
        return None
    rates = [
        float(phase["burst"]["best"][system]["messages_per_second_per_instance"])
        for phase, system in ((sse, "sse"), (fanout, "jangteo"))
    ]
    p99s = [phase["steady"]["latency_ms"]["p99"] for phase in (sse, fanout)]
    return {
        "websocket_messages_per_second_per_instance": rates[1],
        "websocket_p99_ms": p99s[1],
        "messages_per_second_ratio": round(rates[0] / rates[1], 3) if rates[1] else None,
        "p99_ratio": round(p99s[0] / p99s[1], 3) if p99s[0] is not None and p99s[1] else None,
    }


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


def mean_lag(seconds: Sequence[Mapping[str, float]]) -> float | None:
    """The mean lag of every event received in these seconds (None: no such second)."""
    if not seconds:
        return None
    events = sum(s["events"] for s in seconds)
    return round(sum(s["mean_ms"] * s["events"] for s in seconds) / events, 2) if events else 0.0


async def relay_run(
    bench: Bench, server: Server, channel: str, *, rate: float | None, seconds: float,
    connections: int, rows: int,
) -> dict[str, Any]:  # fmt: skip
    """Commit outbox rows (paced, or flat out when ``rate`` is None); what the relay made of it."""
    bench.clients.call("reset")
    before = await event_load.scrape(server.url)
    pace = "flat out" if rate is None else f"{rate:,.0f} rows/s"
    print(f"  {pace} for {seconds:g} s, {rows} row(s) per commit ...", flush=True)
    inserted = await event_load.insert_rows(
        bench.database_url, channel, seconds=seconds, rate=rate, connections=connections,
        rows_per_transaction=rows,
    )  # fmt: skip
    stats = await bench.wait_for(inserted["rows"], limit=120)
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
        "mean_lag_first_last_third_ms": [mean_lag(window[:third]), mean_lag(window[-third:])],
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


async def relay_phase(bench: Bench) -> dict[str, Any]:
    args = bench.args
    result: dict[str, Any] = {}
    with bench.jangteo(["relay"]) as (server,):
        listing_id = create_listing(server.port, bench.token, "realtime benchmark: relay")
        channel = f"listing:{listing_id}"
        print(f"\n== relay: outbox rows on {channel}, one instance, one subscriber")
        bench.open([Target.jangteo(server.name, server.port, bench.token)], 1, channel)
        await asyncio.sleep(0.5)
        result["commit_alone_ms"] = floor = await event_load.commit_latency(bench.database_url)
        print(
            f"  a one-row commit alone (no outbox) takes {floor['p50']} ms p50,"
            f" {floor['p99']} ms p99"
        )
        runs = {  # rate (None: flat out), seconds, inserting connections, rows per commit
            "paced": (args.relay_rate, args.relay_seconds, args.relay_inserters, 1),
            "sustained": (
                args.sustain_rate,
                args.relay_seconds,
                args.relay_inserters,
                args.sustain_rows,
            ),
            "flat_out": (None, args.relay_max_seconds, args.relay_connections, args.relay_rows),
        }
        for key, (rate, seconds, connections, rows) in runs.items():
            result[key] = await relay_run(
                bench, server, channel, rate=rate, seconds=seconds, connections=connections,
                rows=rows,
            )  # fmt: skip
        bench.clients.call("close")
        result["server_log_problems"] = server_problems(server.log)
    return result


# ----------------------------------------------------------------------------- idle memory


async def measure_idle(
    bench: Bench, server: Server, target: Target, count: int, desk: Server | None = None
) -> dict[str, Any]:
    """RSS of ``server`` before and after ``count`` idle sockets (after a small warm-up).

    Also the CPU the server (and the ticket desk) spent per connection while they opened.
    """
    bench.open([target], 100, None)
    bench.clients.call("close")
    await asyncio.sleep(1.0)
    bench.clients.call("reset")
    before = server.rss()
    cpu, desk_cpu = server.cpu_seconds(), desk.cpu_seconds() if desk else 0.0
    connect = bench.open([target], count, None)
    cpu = server.cpu_seconds() - cpu
    desk_cpu = desk.cpu_seconds() - desk_cpu if desk else 0.0
    await asyncio.sleep(bench.args.idle_settle or bench.heartbeat * 1.25)
    after = server.rss()
    stats = bench.clients.stats()
    bench.clients.call("close")
    result = {
        "sockets": count,
        "rss_before_kib": before // 1024,
        "rss_after_kib": after // 1024,
        "kib_per_connection": round((after - before) / count / 1024, 2),
        "connect_seconds": connect["seconds"],
        "server_cpu_ms_per_connect": round(cpu / count * 1000, 3),
        "sockets_open_at_measurement": stats["open"],
        "closed_by_server_before_measurement": stats["closes"],
    }
    if desk is not None:
        result["ticket_desk_cpu_ms_per_ticket"] = round(desk_cpu / count * 1000, 3)
    return result


async def idle_phase(bench: Bench) -> dict[str, Any]:
    args = bench.args
    _, hard = raise_open_files()
    count = min(args.idle_sockets, hard - FD_RESERVE)
    result: dict[str, Any] = {"requested": args.idle_sockets, "sockets": count}
    if count < args.idle_sockets:
        result["capped_by"] = f"RLIMIT_NOFILE hard limit {hard} (a server needs a descriptor each)"
    print(f"\n== idle memory: {count:,} idle sockets, heartbeat {bench.heartbeat:g} s")
    frame = args.scratch / "idle-frame.json"
    frame.write_bytes(b'{"op":"pong"}')
    with bench.references("ws", ["bare-idle"], frame) as (bare,):
        target = Target(bare.name, "127.0.0.1", bare.port, "/ws")
        result["bare"] = await measure_idle(bench, bare, target, count)
    print(f"  bare aiohttp: {result['bare']['kib_per_connection']} KiB per connection")
    # Tickets come from a second instance, so the measured one does nothing but hold sockets.
    names = ["jangteo-idle", "ticket-desk"]
    with bench.jangteo(names, JANGTEO_WS_MAX_CONNECTIONS=str(count + FD_RESERVE)) as (server, desk):
        target = Target.jangteo(server.name, server.port, bench.token, desk.port)
        result["jangteo"] = await measure_idle(bench, server, target, count, desk)
        result["server_log_problems"] = server_problems(server.log)
    print(f"  jangteo: {result['jangteo']['kib_per_connection']} KiB per connection")
    bare_kib = result["bare"]["kib_per_connection"]
    result["ratio"] = (
        round(result["jangteo"]["kib_per_connection"] / bare_kib, 3) if bare_kib else None
    )
    return result


# ----------------------------------------------------------------------------- run


def steady_rate(args: argparse.Namespace) -> None:
    """``--rate`` unless given: 20,000 frames a second in all (10 events/s to 2,000
    sockets, at most 10)."""
    if args.rate is None:
        args.rate = min(10.0, 20_000 / args.sockets)


async def run(args: argparse.Namespace) -> RealtimeResult:
    limits = raise_open_files()
    machine = Machine(open_files_limit=list(limits))
    steady_rate(args)
    # Every fan-out system's sockets stay open together (their rounds alternate).
    systems = 3 if SOCKETIO else 2
    needed = math.ceil(systems * args.sockets / (limits[1] - FD_RESERVE))
    if needed > args.client_processes:
        print(f"{needed} client processes: {systems} x {args.sockets:,} sockets stay open")
        args.client_processes = needed
    stack = services()
    async with fresh_database(stack.admin_url, DATABASE, keep=args.keep_database) as url:
        settings = serve_settings(url, stack.redis_url)
        heartbeat = Settings.from_env({**os.environ, **settings}).ws_heartbeat
        commands = {
            "database": database_note(DATABASE),
            "load": f"{args.client_processes} client processes of loadtests/clients/ws.py"
            " (raw asyncio WebSocket protocol on uvloop); as many of loadtests/clients/sse.py"
            " for the SSE fan-out",
        }
        phases: dict[str, Any] = {}
        with LoadClients(args.client_processes) as clients:
            bench = Bench(args, settings, url, clients, commands, heartbeat)
            if "fanout" in args.phases:
                phases["fanout"] = await fanout_phase(bench)
            if "sse" in args.phases:
                phases["sse"] = await sse_phase(bench, phases.get("fanout"))
            if not bench.token:
                with bench.jangteo(["sign-up"]) as (server,):
                    bench.token = sign_up(server.port)
            if "relay" in args.phases:
                phases["relay"] = await relay_phase(bench)
            if "idle" in args.phases:
                phases["idle"] = await idle_phase(bench)
        found = await versions(url, stack.redis_url)
    socketio = "not measured: python-socketio is not installed (pip install python-socketio)"
    return RealtimeResult(
        benchmark="realtime",
        machine=machine,
        versions=found,
        commands=commands,
        load={
            "client_processes": args.client_processes,
            "client": "loadtests/clients/ws.py: raw asyncio.Protocol WebSockets on uvloop, no"
            " compression, answering pings; latency = receive wall clock ms - frame ts",
            "sse_client": "loadtests/clients/sse.py: raw asyncio.Protocol event streams on"
            " uvloop, the chunked body parsed by hand, each message's data (the WebSocket"
            " frame) counted by the same code as a socket's frame",
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
