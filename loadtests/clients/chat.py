"""The chat benchmark's load: buyers send over one instance, sellers receive on another.

Sockets are ``loadtests/clients/ws.py``'s raw asyncio WebSockets, all in the benchmark's own
process and loop, so one clock times both ends. ``ChatFleet`` replaces that module's frame
counting with a ledger of every message: when its ``send`` frame was written (wall clock,
just before ``transport.write``), when its ``ack`` came back, and every time a
``chat.message`` event with its ``client_id`` reached a seller's socket. A ``Phase`` holds
the timings of one part of the run; the ledger spans the whole run for the correctness check
(every acked message received exactly once, in id order per room).

Two ways to send: ``steady`` (a fixed rate, round-robin over rooms) and ``flat_out`` (every
sender keeps ``window`` sends un-acked until the time is up: a new send goes out from the
frame callback of each ack). A send refused as ``unavailable`` (not stored) is sent again
with the same ``client_id``, as the protocol asks, up to ``RESENDS`` times.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from loadtests.clients.ws import OP_TEXT, Fleet, Subscriber, WebSocket
from loadtests.harness.stack import connected
from loadtests.harness.stats import summary_ms

Pair = tuple[WebSocket, int]  # a buyer's socket and the room it sends in
RESENDS = 5  # times one message is sent again after an "unavailable" refusal


@dataclass(slots=True)
class Phase:
    """Timings of the messages sent in one part of the run (wall clock, seconds)."""

    name: str
    started: float = field(default_factory=time.time)
    stopped: float = 0.0  # when the last send of the phase went out
    sent: int = 0
    pending: int = 0  # sent, neither acked nor refused yet
    ack_at: list[float] = field(default_factory=list)
    ack_s: list[float] = field(default_factory=list)
    receive_at: list[float] = field(default_factory=list)
    receive_s: list[float] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # error frames by code
    resent: int = 0  # sends written again with the same client_id after "unavailable"
    given_up: int = 0  # refused and not (or no longer) resent
    cpu_mark: float = field(default_factory=time.process_time)
    client_cpu_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Counts, acked and received messages/s between start and stop, latencies."""
        window = max(1e-9, self.stopped - self.started)
        acked_in = sum(1 for at in self.ack_at if at <= self.stopped)
        received_in = sum(1 for at in self.receive_at if at <= self.stopped)
        return {
            "seconds": round(window, 3),
            "sent": self.sent,
            "acked": len(self.ack_at),
            "received": len(self.receive_at),
            "refused": dict(self.refused),
            "resent": self.resent,
            "given_up": self.given_up,
            "unanswered": self.pending,
            "acked_per_second": round(acked_in / window, 1),
            "received_per_second": round(received_in / window, 1),
            "send_to_ack_ms": summary_ms(self.ack_s),
            "send_to_receive_ms": summary_ms(self.receive_s),
            "client_cpu_share": round(self.client_cpu_s / window, 3),
        }


@dataclass(slots=True)
class Sent:
    socket: WebSocket
    room: int
    at: float  # when its first send frame was written
    phase: Phase
    then: Callable[[], None] | None  # called once: on the ack, or when given up
    answered: bool = False
    resent: int = 0


class ChatFleet(Fleet):
    """The socket fleet (tallies, commit-to-receive histogram, offset chains) plus the ledger."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = Phase("set-up")
        self.sends: dict[str, Sent] = {}  # client_id -> its send
        self.acked: dict[str, tuple[int, int]] = {}  # client_id -> (room, message id)
        self.received: Counter[str] = Counter()  # client_id -> chat.message events received
        self.event_ids: dict[str, tuple[int, int]] = {}  # client_id -> (room, id) of its event
        self.room_ids: dict[int, list[int]] = {}  # message ids per room, in arrival order
        self.anomalies: Counter[str] = Counter()

    def begin(self, name: str) -> Phase:
        self.phase = Phase(name)
        return self.phase

    def send(self, socket: WebSocket, room: int, then: Callable[[], None] | None = None) -> None:
        client_id = str(uuid.uuid4())
        phase = self.phase
        self.sends[client_id] = sent = Sent(socket, room, time.time(), phase, then)
        self._write(client_id, sent)
        phase.sent += 1
        phase.pending += 1

    def _write(self, client_id: str, sent: Sent) -> None:
        body = f"bench {client_id}"
        frame = {"op": "send", "room": sent.room, "body": body, "client_id": client_id}
        sent.socket.send(OP_TEXT, orjson.dumps(frame))

    # -- frames --------------------------------------------------------------------------

    def on_text(self, socket: Subscriber, payload: bytes, now: float) -> None:
        try:
            frame = orjson.loads(payload)
            op = frame["op"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            op = None
        if op == "ack":
            self._answered(frame["client_id"], now, frame["message"], None)
        elif op == "error" and "client_id" in frame:
            self.errors[str(frame.get("code"))] += 1
            self._answered(frame["client_id"], now, None, str(frame.get("code")))
        elif op == "event":
            self.on_event(socket, frame, now)
        else:
            super().on_text(socket, payload, now)

    def on_event(self, socket: Subscriber, frame: dict[str, Any], now: float) -> None:
        super().on_event(socket, frame, now)  # tally, commit-to-receive, offset/prev chain
        if frame.get("type") != "chat.message":
            self.ops[f"event {frame.get('type')}"] += 1
            return
        data = frame["data"]
        client_id, room, number = data["client_id"], data["room_id"], data["id"]
        self.received[client_id] += 1
        self.event_ids[client_id] = (room, number)
        self.room_ids.setdefault(room, []).append(number)
        sent = self.sends.get(client_id)
        if sent is None:
            self.anomalies["event of a message never sent"] += 1
        elif self.received[client_id] == 1:
            sent.phase.receive_at.append(now)
            sent.phase.receive_s.append(now - sent.at)

    def _answered(
        self, client_id: str, now: float, message: Mapping[str, Any] | None, refusal: str | None
    ) -> None:
        sent = self.sends.get(client_id)
        if sent is None or sent.answered:
            self.anomalies["answer to no pending send"] += 1
            return
        phase = sent.phase
        if message is None:
            phase.refused[refusal or "?"] += 1
            if refusal == "unavailable" and sent.resent < RESENDS and sent.socket.open:
                # "not stored; send again with the same client_id", after a short pause
                sent.resent += 1
                phase.resent += 1
                loop = asyncio.get_running_loop()
                loop.call_later(0.05 * sent.resent, self._write, client_id, sent)
                return
            phase.given_up += 1
        sent.answered = True
        phase.pending -= 1
        if message is not None:
            self.acked[client_id] = (int(message["room_id"]), int(message["id"]))
            phase.ack_at.append(now)
            phase.ack_s.append(now - sent.at)
        if sent.then is not None:
            sent.then()

    # -- after a phase -------------------------------------------------------------------

    async def settle(self, phase: Phase, *, limit: float = 60.0, quiet: float = 3.0) -> bool:
        """Wait until every send of ``phase`` is answered and every ack's event arrived.

        False when nothing moved for ``quiet`` seconds (or ``limit`` seconds passed) before that.
        """
        phase.client_cpu_s = time.process_time() - phase.cpu_mark
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        progress, changed = (-1, -1), loop.time()
        while True:
            now = (len(phase.ack_at), len(phase.receive_at))
            if phase.pending == 0 and now[1] >= now[0]:
                return True
            if now != progress:
                progress, changed = now, loop.time()
            elif loop.time() - changed > quiet or loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)

    def delivery(self) -> dict[str, Any]:
        """Every acked message received exactly once, in id order per room, as acked?"""
        out_of_order = sum(
            1 for ids in self.room_ids.values() for a, b in itertools.pairwise(ids) if b <= a
        )
        return {
            "sent": len(self.sends),
            "acked": len(self.acked),
            "resent": sum(s.resent for s in self.sends.values()),
            "given_up": sum(1 for s in self.sends.values() if s.answered) - len(self.acked),
            "unanswered": sum(1 for s in self.sends.values() if not s.answered),
            "received_distinct": len(self.received),
            "missing": sum(1 for c in self.acked if not self.received[c]),
            "duplicates": sum(n - 1 for n in self.received.values() if n > 1),
            "received_not_acked": sum(1 for c in self.received if c not in self.acked),
            "event_differs_from_ack": sum(
                1 for c, where in self.event_ids.items() if self.acked.get(c, where) != where
            ),
            "out_of_id_order": out_of_order,
            "rooms": len(self.room_ids),
            "offset_chain_gaps": self.gaps,
            "offset_chain_repeats": self.repeats,
            "anomalies": dict(self.anomalies),
            "closes": dict(self.closes),
            "error_frames": dict(self.errors),
        }

    async def database(self, database_url: str) -> dict[str, Any]:
        """What chat_messages holds against the ledger: exactly one row per acked client_id?"""
        async with connected(database_url) as conn:
            rows = await conn.fetch("SELECT client_id::text AS c, room_id, id FROM chat_messages")
        counts = Counter(str(row["c"]) for row in rows)
        where = {str(row["c"]): (int(row["room_id"]), int(row["id"])) for row in rows}
        return {
            "rows": len(rows),
            "distinct_client_ids": len(counts),
            "client_ids_with_several_rows": sum(1 for n in counts.values() if n > 1),
            "acked_without_row": sum(1 for c in self.acked if c not in counts),
            "rows_not_acked": sum(1 for c in counts if c not in self.acked),
            "rows_never_sent": sum(1 for c in counts if c not in self.sends),
            "row_differs_from_ack": sum(1 for c, w in self.acked.items() if where.get(c, w) != w),
        }


# ----------------------------------------------------------------------------- load


async def steady(fleet: ChatFleet, pairs: Sequence[Pair], *, rate: float, seconds: float) -> Phase:
    """``rate`` sends a second for ``seconds``, message k in room k % len(pairs)."""
    phase = fleet.begin("steady")
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    for number in range(max(1, round(rate * seconds))):
        delay = start + number / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        socket, room = pairs[number % len(pairs)]
        fleet.send(socket, room)
    phase.stopped = time.time()
    return phase


async def flat_out(
    fleet: ChatFleet, pairs: Sequence[Pair], *, window: int, seconds: float, name: str
) -> Phase:
    """Every pair sends as fast as its acks allow, ``window`` un-acked at a time: each ack
    (or refusal given up) sends the next one until the time is up."""
    phase = fleet.begin(name)
    stop = phase.started + seconds

    def sender(socket: WebSocket, room: int) -> Callable[[], None]:
        def send_next() -> None:
            if time.time() < stop and socket.open:
                fleet.send(socket, room, send_next)

        return send_next

    for socket, room in pairs:
        send_next = sender(socket, room)
        for _ in range(window):
            send_next()
    await asyncio.sleep(max(0.0, stop - time.time()))
    phase.stopped = stop
    return phase


async def subscribe(sockets: Sequence[WebSocket], channels: Sequence[str], limit: float) -> None:
    """Subscribe socket i to channel i and wait for every ``subscribed``."""
    loop = asyncio.get_running_loop()
    for socket, channel in zip(sockets, channels, strict=True):
        socket.subscribed = loop.create_future()
        socket.send(OP_TEXT, orjson.dumps({"op": "subscribe", "channel": channel}))
    waiting = [socket.subscribed for socket in sockets if socket.subscribed is not None]
    await asyncio.wait_for(asyncio.gather(*waiting), limit)
