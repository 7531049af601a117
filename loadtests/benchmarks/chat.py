"""Chat benchmark: a message's send-to-receive latency and messages/s between two instances.

Two ``jangteo serve`` instances A and B (one process each) on a fresh database; a seller
and a buyer sign up, the seller lists ``--rooms`` listings and the buyer opens a chat room
on each (REST). Then, from this process (``loadtests/clients/chat.py``): one buyer socket
per room on A, one seller socket per room on B subscribed to ``room:R``, one unmeasured
message per room, and three measurements; buyers send ``{"op":"send",...}`` on A, sellers
receive the ``chat.message`` event on B:

1. latency: ``--rate`` messages/s round-robin over ``--steady-rooms`` rooms for
   ``--steady-seconds``; send-to-receive = event arrival - the moment the send frame was
   written (same process, same clock), and send-to-ack;
2. one room: one buyer socket with ``--window`` sends un-acked for ``--seconds``: acked and
   received messages/s (the room's row lock serializes its messages); then
   ``--room-sockets`` buyer sockets in that one room (``--room-window`` each), to tell the
   room's ceiling from one socket's (a server reads one socket's frames one at a time);
3. all rooms: every buyer socket sends in its own room with ``--rooms-window`` un-acked.

Afterwards: every acked message received exactly once, in id order per room, its event
as acked, and ``chat_messages`` holding exactly one row per acked client_id. Per-socket
frame limits are lifted (``JANGTEO_WS_FRAMES_PER_SECOND``) so rooms, not the policy, are
measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.clients import events as event_load
from loadtests.clients.chat import ChatFleet, Pair, Phase, flat_out, steady, subscribe
from loadtests.clients.ws import (
    ClientProcess,
    ConnectPlan,
    SourceAddresses,
    Target,
    raise_open_files,
)
from loadtests.harness.cpu import CpuMeter
from loadtests.harness.processes import BenchError, Server, server_problems
from loadtests.harness.report import COLOURS, bars, finish
from loadtests.harness.results import Machine, Result, other_load, versions
from loadtests.harness.stack import (
    Inspect,
    create_listing,
    database_note,
    fresh_database,
    http_request,
    instances,
    serve_settings,
    services,
    sign_up,
)
from server.settings import Settings

DATABASE = "jangteo_bench_chat"
NAMES = ("chat-a", "chat-b")
FLAT_OUT = ("one_room", "one_room_sockets", "rooms")  # the runs with senders flat out
OPTIONS = (  # flag, default (its type is the option's), help
    ("--rooms", 500, "rooms: buyer sockets on A, seller sockets on B"),
    ("--rate", 50.0, "latency run: messages/s"),
    ("--steady-rooms", 100, "latency run: rooms"),
    ("--steady-seconds", 20.0, "latency run: seconds"),
    ("--seconds", 10.0, "seconds of each flat-out run"),
    ("--window", 32, "one room, one socket: un-acked sends"),
    ("--room-sockets", 8, "one room, second run: buyer sockets"),
    ("--room-window", 4, "one room, second run: un-acked sends per socket"),
    ("--rooms-window", 2, "all rooms: un-acked sends per socket"),
    ("--pause", 1.0, "seconds between runs"),
    ("--frames-per-second", 1_000_000, "JANGTEO_WS_FRAMES_PER_SECOND of both instances"),
)


def options(parser: argparse.ArgumentParser) -> None:
    for flag, default, meaning in OPTIONS:
        parser.add_argument(flag, type=type(default), default=default, help=meaning)


@dataclass(kw_only=True, slots=True)
class ChatResult(Result):
    connect_seconds: dict[str, float]
    steady_send_to_receive_ms: list[float]
    commit_alone_ms: dict[str, float]
    phases: dict[str, Any]
    delivery: dict[str, Any]
    database: dict[str, Any]
    commit_to_receive_ms_histogram: dict[str, int]
    close: Any
    setup_seconds: float
    server_log_problems: dict[str, Any]
    failed: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        return self.failed

    def table(self) -> str:
        steady = self.phases["steady"]
        latency, ack = steady["send_to_receive_ms"], steady["send_to_ack_ms"]
        rows = [
            (f"send-to-receive p50 / p99 ms, {steady['label']}",
             f"{latency['p50']} / {latency['p99']}  (send-to-ack {ack['p50']} / {ack['p99']};"
             f" {latency['samples']} messages)"),
            ("a one-row commit alone p50 / p99 ms",
             f"{self.commit_alone_ms['p50']} / {self.commit_alone_ms['p99']}"),
        ]  # fmt: skip
        for phase in (self.phases[key] for key in FLAT_OUT):
            latency = phase["send_to_receive_ms"]
            rows.append((
                f"msgs/s acked / received, {phase['label']} (window {phase['window']})",
                f"{phase['acked_per_second']:,.0f} / {phase['received_per_second']:,.0f}"
                f"  (send-to-receive p50 {latency['p50']} ms, p99 {latency['p99']} ms;"
                f" machine CPU {phase['machine']['machine_cpu_percent']:.0f}%)",
            ))  # fmt: skip
        delivery, database = self.delivery, self.database
        rows.append((
            "correctness (whole run)",
            f"{delivery['acked']:,} acked of {delivery['sent']:,} sent ({delivery['resent']} resent"
            f" after 'unavailable', {delivery['given_up']} given up); missing"
            f" {delivery['missing']}, duplicates {delivery['duplicates']}, out of id order"
            f" {delivery['out_of_id_order']}; {database['rows']:,} rows,"
            f" {database['distinct_client_ids']:,} client_ids,"
            f" {database['client_ids_with_several_rows']} with several rows:"
            f" {'OK' if not self.failed else 'FAILED'}",
        ))  # fmt: skip
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)

    def plot(self, plt: Any, path: Path) -> None:
        """Send-to-receive histogram and CDF; acked and received msgs/s per run."""
        figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
        samples, steady = self.steady_send_to_receive_ms, self.phases["steady"]
        if samples:
            left.hist(samples, bins=min(80, max(10, len(samples) // 10)), color=COLOURS["jangteo"])
            left.set_xlabel("send-to-receive latency, ms (buyer on A -> seller on B)")
            left.set_ylabel("messages")
            cdf = left.twinx()
            cdf.plot(
                samples, [(n + 1) / len(samples) for n in range(len(samples))], color="#222222"
            )
            cdf.set_ylim(0, 1.02)
            cdf.set_ylabel("cumulative share")
            for name, style in (("p50", "--"), ("p99", ":")):
                ms = steady["send_to_receive_ms"][name]
                left.axvline(ms, color="#2a7ab9", linestyle=style, label=f"{name} {ms} ms")
            left.legend(fontsize=8, loc="center right")
        left.set_title(f"latency at {steady['label']}", fontsize=9)
        phases = [self.phases[key] for key in FLAT_OUT]
        for offset, measure, colour, name in (
            (-0.2, "acked_per_second", COLOURS["jangteo"], "acked (on A)"),
            (0.2, "received_per_second", COLOURS["bare"], "received (on B)"),
        ):
            xs = [x + offset for x in range(len(phases))]
            values = [p[measure] for p in phases]
            bars(right, xs, values, "{:,.0f}", width=0.4, color=colour, label=name)
        labels = [f"{p['label']}\nwindow {p['window']}" for p in phases]
        right.set_xticks(range(len(phases)), labels, fontsize=8)
        right.set_ylabel("messages / s")
        seconds = self.load["seconds"]
        right.set_title(f"chat messages/s, senders flat out for {seconds:g} s", fontsize=9)
        right.legend(fontsize=8)
        caption = (
            f"{self.date}, {self.machine.cores} cores; 2 jangteo instances (1 process each),"
            " the client, PostgreSQL and Redis on the same cores"
        )
        finish(plt, figure, caption, path)


def open_rooms(port: int, seller: str, buyer: str, count: int) -> list[int]:
    """``count`` listings of the seller, and the buyer's chat room on each (REST)."""
    rooms = []
    for number in range(count):
        listing = create_listing(port, seller, f"chat benchmark {number}")
        path, auth = f"/api/v1/listings/{listing}/chats", {"Authorization": f"Bearer {buyer}"}
        rooms.append(int(json.loads(http_request(port, "POST", path, None, auth, 201))["id"]))
    return rooms


# ----------------------------------------------------------------------------- the run


async def connect(
    client: ClientProcess, server: Server, token: str, count: int, addresses: SourceAddresses
) -> float:
    """``count`` sockets on ``server`` with ``token``'s tickets; seconds it took."""
    target = Target.jangteo(server.name, server.port, token)
    (plan,) = ConnectPlan.split([target], count, 1, None, addresses.take(count))
    result = await client.connect(plan)
    opened = result["outcome"].get("opened", 0)
    if opened != count:
        raise BenchError(f"{opened} of {count} sockets opened on {server.name}: {result}")
    seconds: float = result["seconds"]
    return seconds


async def measured(
    fleet: ChatFleet, meter: CpuMeter, phase: Phase, label: str, window: str
) -> dict[str, Any]:
    """Wait for the phase's acks and events; its summary with the machine's CPU."""
    machine_load = meter.read()  # the sending time only, not the drain
    settled = await fleet.settle(phase)
    summary = {"label": label, "window": window, **phase.summary(), "settled": settled}
    summary["machine"] = machine_load
    latency = summary["send_to_receive_ms"]
    print(
        f"  {label}: acked {summary['acked_per_second']:,.0f}/s, received"
        f" {summary['received_per_second']:,.0f}/s; send-to-receive p50 {latency['p50']} ms,"
        f" p99 {latency['p99']} ms; machine CPU {machine_load['machine_cpu_percent']:.0f}%"
        f"{'' if settled else ' (NOT SETTLED)'}",
        flush=True,
    )
    return summary


async def drive(
    args: argparse.Namespace,
    database_url: str,
    servers: Sequence[Server],
    buyer: str,
    seller: str,
    rooms: Sequence[int],
) -> dict[str, Any]:
    addresses = SourceAddresses()
    a, b = servers
    client = ClientProcess()
    fleet = ChatFleet()
    client.fleet = fleet
    result: dict[str, Any] = {}
    try:
        buyers_s = await connect(client, a, buyer, len(rooms), addresses)
        buyer_sockets = list(fleet.sockets)
        sellers_s = await connect(client, b, seller, len(rooms), addresses)
        seller_sockets = fleet.sockets[len(rooms) :]
        started = time.monotonic()
        try:
            await subscribe(seller_sockets, [f"room:{room}" for room in rooms], 120)
        except (ConnectionError, TimeoutError) as error:
            seen = {"closes": fleet.closes, "errors": fleet.errors, "frames": fleet.ops}
            raise BenchError(f"subscribing the seller sockets failed ({error!r}): {seen}") from None
        result["connect_seconds"] = {
            "buyer_sockets_on_a": buyers_s,
            "seller_sockets_on_b": sellers_s,
            "seller_subscriptions": round(time.monotonic() - started, 2),
        }
        print(f"  {len(rooms)} buyer sockets on A, {len(rooms)} seller sockets on B subscribed")
        pairs: list[Pair] = list(zip(buyer_sockets, rooms, strict=True))
        meter = CpuMeter({server.pid: server.name for server in servers}, DATABASE)
        phases: dict[str, Any] = {}

        warm = fleet.begin("warm-up")
        for socket, room in pairs:
            fleet.send(socket, room)
        warm.stopped = time.time()
        settled = await fleet.settle(warm)
        summary = warm.summary()
        shown = ("sent", "acked", "received", "resent", "send_to_ack_ms", "send_to_receive_ms")
        phases["warm_up"] = {key: summary[key] for key in shown} | {"settled": settled}
        print(f"  warm-up: {summary['received']} of {summary['sent']} received", flush=True)

        rooms_n = min(args.steady_rooms, len(pairs))
        print(f"== latency: {args.rate:g} msgs/s over {rooms_n} rooms for {args.steady_seconds} s")
        meter.read()
        phase = await steady(fleet, pairs[:rooms_n], rate=args.rate, seconds=args.steady_seconds)
        label = f"{args.rate:g} msgs/s over {rooms_n} rooms"
        phases["steady"] = await measured(fleet, meter, phase, label, "paced")
        phases["steady"]["rooms"] = rooms_n
        result["steady_send_to_receive_ms"] = sorted(
            round(value * 1000, 3) for value in phase.receive_s
        )

        # What one committed row costs alone (the WAL flush): a room's messages commit one
        # after another, so this bounds one room's messages/s.
        result["commit_alone_ms"] = await event_load.commit_latency(database_url)
        runs = [
            ("one_room", pairs[:1], args.window, "1 room, 1 socket"),
            (
                "one_room_sockets",
                [(socket, rooms[0]) for socket in buyer_sockets[: args.room_sockets]],
                args.room_window,
                f"1 room, {args.room_sockets} sockets",
            ),
            ("rooms", pairs, args.rooms_window, f"{len(pairs)} rooms"),
        ]
        for key, senders, window, label in runs:
            print(f"== {label}, window {window} per socket, {args.seconds:g} s", flush=True)
            await asyncio.sleep(args.pause)
            meter.read()
            phase = await flat_out(fleet, senders, window=window, seconds=args.seconds, name=key)
            phases[key] = await measured(fleet, meter, phase, label, f"{window} per socket")
            phases[key]["sockets"] = len(senders)
        result["phases"] = phases
        result["delivery"] = fleet.delivery()
        result["database"] = await fleet.database(database_url)
        result["commit_to_receive_ms_histogram"] = {
            str(ms): n for ms, n in enumerate(fleet.histogram) if n
        }
    finally:
        result["close"] = await client.close()
    return result


def verdict(report: Mapping[str, Any]) -> list[str]:
    """What failed the correctness check (empty: everything held)."""
    delivery, database = report["delivery"], report["database"]
    failed = [
        f"{key} {delivery[key]}"
        for key in (
            "unanswered", "missing", "duplicates", "received_not_acked", "event_differs_from_ack",
            "out_of_id_order", "offset_chain_gaps", "offset_chain_repeats",
        )
        if delivery[key]
    ]  # fmt: skip
    failed += [
        f"{key} {database[key]}"
        for key in (
            "client_ids_with_several_rows", "acked_without_row", "rows_not_acked",
            "rows_never_sent", "row_differs_from_ack",
        )
        if database[key]
    ]  # fmt: skip
    if database["rows"] != delivery["acked"]:
        failed.append(f"{database['rows']} rows for {delivery['acked']} acked messages")
    return failed


@dataclass(slots=True)
class Session:
    """One chat run on two fresh instances: ChatResult's figures, and what it ran on."""

    figures: dict[str, Any]  # ChatResult's own fields
    versions: dict[str, str]
    pg_pool_max: int
    ws_frames_per_second: float
    rooms: int
    inspected: dict[str, Any] | None = None


async def session(
    args: argparse.Namespace,
    admin_url: str,
    redis_url: str,
    commands: dict[str, Any],
    *,
    more: Mapping[str, str] | None = None,
    inspect: Inspect | None = None,
) -> Session:
    """Set up a fresh database and two instances (``more``: extra ``JANGTEO_*``), drive
    the chat, check it; ``inspect`` looks at the instances before they stop."""
    async with fresh_database(admin_url, DATABASE, keep=args.keep_database) as url:
        settings = serve_settings(url, redis_url, **dict(more or {}))
        extra = {"JANGTEO_WS_FRAMES_PER_SECOND": str(args.frames_per_second)}
        chosen = Settings.from_env({**os.environ, **settings, **extra})
        commands["database"] = database_note(DATABASE)
        record = commands.setdefault("jangteo", {})
        with instances(NAMES, settings | extra, args.scratch, record) as servers:
            started = time.monotonic()
            seller, buyer = sign_up(servers[0].port), sign_up(servers[0].port)
            rooms = open_rooms(servers[0].port, seller, buyer, args.rooms)
            setup_s = round(time.monotonic() - started, 1)
            print(f"  2 accounts, {len(rooms)} listings and rooms in {setup_s} s", flush=True)
            try:
                measured_run = await drive(args, url, servers, buyer, seller, rooms)
            except BenchError:
                for server in servers:
                    print(f"{server.name} logged: {server_problems(server.log)}", flush=True)
                raise
            inspected = None if inspect is None else await inspect(servers)
            problems = {s.name: server_problems(s.log) for s in servers}
        found = await versions(url, redis_url)
    figures = {
        "setup_seconds": setup_s,
        "server_log_problems": problems,
        "failed": verdict(measured_run),
        **measured_run,
    }
    return Session(
        figures, found, chosen.pg_pool_max, chosen.ws_frames_per_second, len(rooms), inspected
    )


async def run(args: argparse.Namespace) -> ChatResult:
    seen_before = other_load()
    if seen_before:
        print("other load on the machine:\n  " + "\n  ".join(seen_before), flush=True)
    machine = Machine(
        open_files_limit=list(raise_open_files()), other_benchmarks_or_tests_before=seen_before
    )
    stack = services()
    commands: dict[str, Any] = {"benchmark": "python -m loadtests " + shlex.join(sys.argv[1:])}
    ran = await session(args, stack.admin_url, stack.redis_url, commands)
    machine.other_benchmarks_or_tests_after = other_load()
    return ChatResult(
        benchmark="chat",
        machine=machine,
        versions=ran.versions,
        commands=commands,
        load={
            "client_processes": 1,
            "client": "this process: loadtests/clients/chat.py over loadtests/clients/ws.py raw"
            " asyncio WebSockets on uvloop; send time = wall clock just before the send"
            " frame is written, receive time = wall clock when the event frame is read",
            "jangteo_instances": 2,
            "jangteo_processes_per_instance": 1,
            "pg_pool_max_per_instance": ran.pg_pool_max,
            "ws_frames_per_second": ran.ws_frames_per_second,
            "rooms": ran.rooms,
            "buyer_sockets_on_a": ran.rooms,
            "seller_sockets_on_b": ran.rooms,
            "accounts": "1 seller (all listings), 1 buyer (one room per listing)",
            "seconds": args.seconds,
            "steady_rate": args.rate,
            "steady_rooms": args.steady_rooms,
            "steady_seconds": args.steady_seconds,
            "reported": "msgs/s: acks (resp. first receipts) between the first send and the"
            " end of the window, divided by the window; latencies exact (not binned)",
        },
        **ran.figures,
    )
