"""A lean WebSocket load client for the realtime benchmark, driven from a parent process.

Each client process (``LoadClients(n)`` spawns them) holds thousands of sockets on one uvloop
loop. A socket is a bare ``asyncio.Protocol``: an HTTP/1.1 upgrade written by hand (no
``Sec-WebSocket-Extensions``, so no compression), then RFC 6455 frames parsed straight from
``data_received``; no task, queue or message object per frame, so the client costs much less
per message than the servers it measures, whichever server that is. It answers the server's
pings (heartbeats), can subscribe to a channel, and for every ``{"op":"event"}`` frame counts
it per server instance and records ``receive wall clock ms - ts`` in a 1-ms histogram; for
jangteo it also checks each socket's ``offset``/``prev`` chain (gaps, repeats).

The parent sends commands over a pipe: ``connect`` (tickets from ``POST /api/v1/ws/ticket``
when the target has a token, then the upgrade, then ``subscribe`` and wait for
``subscribed``), ``reset``, ``stats`` and ``close``. ``merge_stats`` adds the processes'
snapshots up.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import multiprocessing
import os
import resource
import socket as pysocket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol, cast

import aiohttp
import orjson
import uvloop
from aiohttp.http import WS_KEY

HISTOGRAM_MS = 60_000  # latencies above go to "overflow"
EVENTS_TRACKED = 10_000  # events whose spread is kept (by their ts), per process and run
CONCURRENT_CONNECTS = 64  # per client process
TIMEOUT_S = 60.0  # to connect, upgrade and subscribe
SOCKETS_PER_SOURCE = 10_000  # loopback source addresses: well below ~28k ephemeral ports each
IP_BIND_ADDRESS_NO_PORT = getattr(pysocket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux


# ----------------------------------------------------------------------------- limits


def raise_open_files(want: int = 262_144) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE as far as allowed (the hard limit too when root); the new limits.

    Processes started afterwards (servers, client processes) inherit them.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class SourceAddresses:
    """Loopback source addresses handed out once each (127.0.0.2, 127.0.0.3, ...).

    Every phase takes fresh ones, so the ports its sockets leave in TIME_WAIT never
    collide with the next phase's, and no address carries more than SOCKETS_PER_SOURCE.
    """

    def __init__(self) -> None:
        self._next = 2

    def take(self, sockets: int) -> list[str]:
        count = max(1, math.ceil(sockets / SOCKETS_PER_SOURCE))
        taken = [self._address(self._next + index) for index in range(count)]
        self._next += count
        return taken

    @staticmethod
    def _address(number: int) -> str:
        high, low = divmod(number, 254)
        return f"127.0.{high}.{low + 1}" if high else f"127.0.0.{number}"


# ----------------------------------------------------------------------------- plans


@dataclass(frozen=True, slots=True)
class Target:
    """One server instance to open sockets on."""

    instance: str  # name used in the per-instance counts, e.g. "jangteo-1"
    host: str
    port: int
    path: str  # "/api/v1/ws" (a ticket is appended) or the bare server's "/ws"
    ticket_url: str | None = None  # POST here with ``token`` for a ticket; None: no ticket
    token: str | None = None
    socketio: bool = False  # Engine.IO 4 over WebSocket; the server puts it in the room

    @classmethod
    def jangteo(cls, instance: str, port: int, token: str, ticket_port: int = 0) -> Target:
        """jangteo's socket on 127.0.0.1:port, tickets from ``ticket_port`` (default: port)."""
        desk = f"http://127.0.0.1:{ticket_port or port}/api/v1/ws/ticket"
        return cls(instance, "127.0.0.1", port, "/api/v1/ws", desk, token)


@dataclass(frozen=True, slots=True)
class ConnectPlan:
    """What one client process opens: of ``count`` sockets, socket i goes to target
    i % targets from source address i % sources, and to client process i % processes."""

    targets: tuple[Target, ...]
    sockets: range  # the numbers of this process's sockets
    sources: tuple[str, ...]
    channel: str | None = None  # subscribe to it after the upgrade
    check_offsets: bool = True

    @classmethod
    def split(
        cls, targets: Sequence[Target], count: int, processes: int, channel: str | None,
        sources: Sequence[str],
    ) -> list[ConnectPlan]:  # fmt: skip
        """One plan per client process. Offsets are checked when every target is jangteo
        (a bare server's frames repeat one)."""
        check = all(target.ticket_url is not None for target in targets)
        return [
            cls(tuple(targets), range(process, count, processes), tuple(sources), channel, check)
            for process in range(processes)
        ]

    def assignments(self) -> Iterator[tuple[Target, str]]:
        for index in self.sockets:
            yield self.targets[index % len(self.targets)], self.sources[index % len(self.sources)]


# ----------------------------------------------------------------------------- frames


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, final client frame (RFC 6455 5.3: clients always mask)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65_536:
        head = bytes((0x80 | opcode, 0xFE)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + size.to_bytes(8, "big")
    mask = os.urandom(4)
    key = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
    return head + mask + masked


OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class FrameSink(Protocol):
    """Where a socket hands what it reads: the realtime benchmark's ``Fleet``, or one app of
    the reconnect storm (``clients/storm.py``)."""

    closes: Counter[str]
    ops: Counter[str]

    def on_text(self, socket: WebSocket, payload: bytes, now: float) -> None: ...

    def on_socketio(self, socket: WebSocket, payload: bytes, now: float) -> None: ...


@dataclass(slots=True)
class Tally:
    """Event frames received from one server instance, and when the first and last came."""

    events: int = 0
    first: float = 0.0  # time.time()
    last: float = 0.0


class Subscriber(Protocol):
    """What ``Fleet`` reads and moves on whatever a frame came by: a ``WebSocket``, or an
    event stream of ``clients/sse.py`` (whose messages carry the same frames)."""

    tally: Tally
    last_offset: int
    check_offsets: bool
    subscribed: asyncio.Future[None] | None


@dataclass(slots=True)
class Fleet:
    """Every socket of one client process and what they received."""

    sockets: list[WebSocket] = field(default_factory=list)
    tallies: dict[str, Tally] = field(default_factory=dict)
    histogram: list[int] = field(default_factory=lambda: [0] * (HISTOGRAM_MS + 1))
    overflow: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    gaps: int = 0
    repeats: int = 0
    per_second: dict[int, list[float]] = field(default_factory=dict)  # [count, sum, max] ms
    # Each event (by its ts): [frames, first, last] latency in ms, what the pipeline before
    # the first write took and how far the writes and reads spread it.
    per_event: dict[float, list[float]] = field(default_factory=dict)
    cpu_mark: float = field(default_factory=time.process_time)
    wall_mark: float = field(default_factory=time.monotonic)

    def reset(self) -> None:
        for tally in self.tallies.values():
            tally.events, tally.first, tally.last = 0, 0.0, 0.0
        self.histogram = [0] * (HISTOGRAM_MS + 1)
        self.overflow = self.gaps = self.repeats = 0
        self.ops.clear()
        self.errors.clear()
        self.closes.clear()
        self.per_second = {}
        self.per_event = {}
        self.cpu_mark, self.wall_mark = time.process_time(), time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        sparse = {ms: n for ms, n in enumerate(self.histogram) if n}
        return {
            "tallies": {name: asdict(tally) for name, tally in self.tallies.items()},
            "histogram_ms": sparse,
            "overflow": self.overflow,
            "ops": dict(self.ops),
            "errors": dict(self.errors),
            "closes": dict(self.closes),
            "gaps": self.gaps,
            "repeats": self.repeats,
            "open": sum(1 for s in self.sockets if s.open),
            "per_second": {second: list(v) for second, v in self.per_second.items()},
            "per_event": {stamp: list(v) for stamp, v in self.per_event.items()},
            "cpu_seconds": time.process_time() - self.cpu_mark,
            "wall_seconds": time.monotonic() - self.wall_mark,
        }

    def on_text(self, socket: Subscriber, payload: bytes, now: float) -> None:
        try:
            frame = orjson.loads(payload)
            op = frame["op"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.ops["<not a frame>"] += 1
            return
        if op != "event":
            self.ops[op] += 1
            if op == "subscribed":
                socket.last_offset = int(frame.get("offset") or 0)
                if socket.subscribed is not None and not socket.subscribed.done():
                    socket.subscribed.set_result(None)
            elif op == "error":
                self.errors[str(frame.get("code"))] += 1
            return
        self.on_event(socket, frame, now)

    def on_socketio(self, socket: WebSocket, payload: bytes, now: float) -> None:
        """An Engine.IO 4 / Socket.IO 5 text frame: open, connect ack, ping, or an event."""
        if payload.startswith(b"42"):  # message + event: ["event", {...}]
            try:
                frame = orjson.loads(payload[2:])[1]
            except (orjson.JSONDecodeError, IndexError, TypeError):
                self.ops["<not an event>"] += 1
                return
            self.on_event(socket, frame, now)
        elif payload == b"2":  # ping: answer pong
            socket.send(OP_TEXT, b"3")
        elif payload.startswith(b"40"):  # connected to the namespace (and so the room)
            self.ops["connected"] += 1
            if socket.subscribed is not None and not socket.subscribed.done():
                socket.subscribed.set_result(None)
        elif payload.startswith(b"0"):  # Engine.IO open: connect to the default namespace
            socket.send(OP_TEXT, b"40")
        else:
            self.ops[f"<socket.io {payload[:2]!r}>"] += 1

    def on_event(self, socket: Subscriber, frame: dict[str, Any], now: float) -> None:
        tally = socket.tally
        if not tally.events:
            tally.first = now
        tally.events += 1
        tally.last = now
        stamp = frame["ts"]
        latency = max(0.0, now * 1000.0 - stamp)  # stamped after its receipt: 0
        millis = int(latency)
        if millis <= HISTOGRAM_MS:
            self.histogram[millis] += 1
        else:
            self.overflow += 1
        second = self.per_second.get(int(now))
        if second is None:
            self.per_second[int(now)] = [1.0, latency, latency]
        else:
            second[0] += 1
            second[1] += latency
            if latency > second[2]:
                second[2] = latency
        spread = self.per_event.get(stamp)
        if spread is not None:
            spread[0] += 1
            spread[1] = min(spread[1], latency)
            spread[2] = max(spread[2], latency)
        elif len(self.per_event) < EVENTS_TRACKED:
            self.per_event[stamp] = [1.0, latency, latency]
        if socket.check_offsets:
            offset = frame.get("offset")
            if isinstance(offset, int):
                if offset <= socket.last_offset:
                    self.repeats += 1
                elif frame.get("prev") != socket.last_offset:
                    self.gaps += 1
                socket.last_offset = max(socket.last_offset, offset)


class ClientConnection(asyncio.Protocol):
    """What every load client connection shares, whatever it speaks (a ``WebSocket``, or an
    ``EventStream`` of ``clients/sse.py``): its request written once connected, ``open``
    once answered, the ``opened``, ``subscribed`` and ``closed`` futures, how it ended."""

    BEFORE = "the upgrade"  # what a connection lost early was waiting for

    def __init__(
        self, fleet: FrameSink, tally: Tally, request: bytes, *, subscribed_at_once: bool
    ) -> None:
        self.fleet = fleet
        self.tally = tally
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.pending = b""
        self.last_offset = 0
        self.check_offsets = True  # jangteo's offset/prev chain; bare frames repeat one
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        # When the server subscribes the connection by itself, the news may come in the
        # same read as the answer, so the future must exist from the start.
        self.subscribed: asyncio.Future[None] | None = (
            loop.create_future() if subscribed_at_once else None
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open:
            self.fleet.closes["connection lost" if exc else "closed"] += 1
        self.open = False
        error = ConnectionError(f"connection closed before {self.BEFORE}")
        for future in (self.opened, self.subscribed):
            if future is not None and not future.done():
                future.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)

    def hang_up(self) -> None:
        """End the connection from this side."""
        if self.transport is not None:
            self.transport.close()


class WebSocket(ClientConnection):
    """One client WebSocket: the upgrade, then frames parsed in ``data_received``."""

    def __init__(
        self, fleet: FrameSink, tally: Tally, request: bytes, accept: bytes, socketio: bool = False
    ) -> None:
        # Socket.IO puts the socket in the room on connecting (its "40").
        super().__init__(fleet, tally, request, subscribed_at_once=socketio)
        self.accept = accept
        self.upgraded = False
        self.close_code: int | None = None  # of the server's close frame
        # A refused upgrade's status and headers (a 503's Retry-After, say).
        self.refusal: tuple[int, dict[bytes, bytes]] | None = None
        self.socketio = socketio  # frames are Engine.IO packets

    def hang_up(self) -> None:
        """A close frame; the server closes TCP after its own."""
        self.send(OP_CLOSE, (1000).to_bytes(2, "big"))

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.pending:
            data = self.pending + data
            self.pending = b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.pending = data
                return
            self._upgrade(data[: end + 4])
            data = data[end + 4 :]
        size = len(data)
        pos = 0
        fleet = self.fleet
        while size - pos >= 2:
            first = data[pos]
            length = data[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > size:
                break
            opcode = first & 0x0F
            if opcode == OP_TEXT:
                if self.socketio:
                    fleet.on_socketio(self, data[pos + head : end], now)
                else:
                    fleet.on_text(self, data[pos + head : end], now)
            elif opcode == OP_PING:
                self.send(OP_PONG, data[pos + head : end])
            elif opcode == OP_CLOSE:
                payload = data[pos + head : end]
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                fleet.closes[str(code)] += 1
                self.close_code = code
                self.open = False
                self.send(OP_CLOSE, payload[:2])
                if self.transport is not None:
                    self.transport.close()
            elif opcode != OP_PONG:
                fleet.ops[f"<opcode {opcode}>"] += 1
            pos = end
        if pos < size:
            self.pending = data[pos:]

    def _upgrade(self, head: bytes) -> None:
        status, *lines = head.split(b"\r\n")
        headers = {n.strip().lower(): v.strip() for n, _, v in (ln.partition(b":") for ln in lines)}
        accepted = headers.get(b"sec-websocket-accept") == self.accept
        code = status.split(b" ")[1:2]
        if code != [b"101"] or not accepted:
            self.refusal = (int(code[0]) if code and code[0].isdigit() else 0, headers)
            if not self.opened.done():
                answer = status.decode(errors="replace")
                self.opened.set_exception(ConnectionError(f"upgrade answered {answer}"))
            if self.transport is not None:
                self.transport.close()
            return
        self.upgraded = self.open = True
        if not self.opened.done():
            self.opened.set_result(None)


def upgrade_request(target: Target, path: str) -> tuple[bytes, bytes]:
    """The upgrade request for ``path`` and the Sec-WebSocket-Accept it must be answered with."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + WS_KEY).digest())  # noqa: S324 - RFC 6455
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {target.host}:{target.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), accept


# ----------------------------------------------------------------------------- a process


class ClientProcess:
    """What runs inside one client process: the fleet and the commands that drive it."""

    def __init__(self) -> None:
        self.fleet = Fleet()

    def reset(self) -> None:
        self.fleet.reset()

    def stats(self) -> dict[str, Any]:
        return self.fleet.snapshot()

    async def connect(self, plan: ConnectPlan) -> dict[str, Any]:
        """Open the plan's sockets (ticket, upgrade, subscribe); counts of what happened."""
        for target in plan.targets:
            self.fleet.tallies.setdefault(target.instance, Tally())
        started = time.monotonic()
        outcome: Counter[str] = Counter()
        gate = asyncio.Semaphore(CONCURRENT_CONNECTS)
        connector = aiohttp.TCPConnector(limit=16)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one(target: Target, source: str) -> None:
                async with gate:
                    try:
                        await self._open(session, plan, target, source)
                        outcome["opened"] += 1
                    except (OSError, aiohttp.ClientError, TimeoutError, RuntimeError) as error:
                        outcome[f"{type(error).__name__}: {str(error)[:120]}"] += 1

            await asyncio.gather(*(one(t, s) for t, s in plan.assignments()))
        return {"outcome": dict(outcome), "seconds": round(time.monotonic() - started, 3)}

    async def _open(
        self, session: aiohttp.ClientSession, plan: ConnectPlan, target: Target, source: str
    ) -> None:
        path = target.path
        if target.ticket_url is not None:
            path += "?ticket=" + await ticket(session, target)
        request, accept = upgrade_request(target, path)
        loop = asyncio.get_running_loop()
        tally = self.fleet.tallies[target.instance]
        sock = await connect_from(source, target.host, target.port, TIMEOUT_S)
        _, socket = await loop.create_connection(
            lambda: WebSocket(self.fleet, tally, request, accept, target.socketio), sock=sock
        )
        socket.check_offsets = plan.check_offsets
        self.fleet.sockets.append(socket)
        await asyncio.wait_for(socket.opened, TIMEOUT_S)
        if plan.channel is not None and not socket.socketio:
            socket.subscribed = loop.create_future()
            socket.send(OP_TEXT, orjson.dumps({"op": "subscribe", "channel": plan.channel}))
        if socket.subscribed is not None:  # Socket.IO's joins the room on connecting
            await asyncio.wait_for(socket.subscribed, TIMEOUT_S)

    async def close(self, wait: float = 15.0) -> dict[str, Any]:
        """Close every socket (close frame, then wait for the server to close TCP)."""
        sockets, self.fleet.sockets = self.fleet.sockets, []
        aborted = await close_sockets(sockets, wait)
        return {"closed": len(sockets), "aborted": aborted}


async def close_sockets(sockets: Sequence[ClientConnection], wait: float) -> int:
    """Hang up each open connection (a socket sends a close frame), wait up to ``wait`` s
    for them to close, then abort the rest; how many were aborted."""
    for socket in sockets:
        if socket.open:
            socket.open = False
            socket.hang_up()
    waiting = [socket.closed for socket in sockets if not socket.closed.done()]
    if waiting:
        await asyncio.wait(waiting, timeout=wait)
    aborted = 0
    for socket in sockets:
        if not socket.closed.done() and socket.transport is not None:
            socket.transport.abort()
            aborted += 1
    await asyncio.sleep(0)
    return aborted


async def connect_from(source: str, host: str, port: int, limit: float) -> pysocket.socket:
    """A TCP connection from ``source`` to ``host:port``.

    With IP_BIND_ADDRESS_NO_PORT the kernel picks the source port at connect time, unique
    per destination, instead of at bind time, unique per source address: binding 10,000
    sockets to one address would search the port range ever longer and run out at ~28k.
    """
    sock = pysocket.socket(pysocket.AF_INET, pysocket.SOCK_STREAM)
    try:
        sock.setsockopt(pysocket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        async with asyncio.timeout(limit):
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True, slots=True)
class TicketAnswer:
    """One ticket request's outcome: the ticket, or the status (0: no answer) and why."""

    status: int
    ticket: str | None = None
    retry_after: float = 0.0  # seconds, from a 429's or a 503's Retry-After
    error: str = ""  # the network error (no answer), or the start of a refusal's body


async def request_ticket(session: aiohttp.ClientSession, target: Target) -> TicketAnswer:
    """One ``POST /api/v1/ws/ticket`` with ``target``'s token."""
    assert target.ticket_url is not None
    headers = {"Authorization": f"Bearer {target.token}"}
    try:
        async with session.post(target.ticket_url, headers=headers) as response:
            status, body = response.status, await response.read()
            wait = retry_after(response.headers.get("Retry-After"))
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        return TicketAnswer(0, error=type(error).__name__)
    if status == 201:
        return TicketAnswer(status, str(orjson.loads(body)["ticket"]))
    return TicketAnswer(status, retry_after=wait, error=body[:200].decode(errors="replace"))


def retry_after(value: str | bytes | None) -> float:
    """Seconds of a ``Retry-After`` header given in seconds; 0 when absent or a date."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


async def ticket(session: aiohttp.ClientSession, target: Target, attempts: int = 8) -> str:
    """A WebSocket ticket for ``target``'s token; retries 429 and 5xx with a short back-off."""
    answer = TicketAnswer(0)
    for attempt in range(attempts):
        answer = await request_ticket(session, target)
        if answer.ticket is not None:
            return answer.ticket
        if answer.status not in (0, 429) and answer.status < 500:
            break
        await asyncio.sleep(0.1 * (attempt + 1))
    raise RuntimeError(f"ticket answered {answer.status}: {answer.error!r}")


class Commanded(Protocol):
    """What a client process runs the parent's commands on (its methods are the commands)."""

    async def close(self, wait: float) -> dict[str, Any]: ...


async def _serve(conn: Connection, client: Commanded) -> None:
    """Run the parent's commands (``client``'s methods) until ``exit``; send each reply,
    or the exception it raised."""
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def receive() -> None:
        """Blocking reads in a thread of their own: a loop watching the pipe would make it
        non-blocking (uvloop does), and a message over the pipe's buffer (64 KiB) would
        then fail half read, as would a long reply half written."""
        command: tuple[str, Any] = ("", None)
        while command[0] != "exit":
            try:
                command = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                command = ("exit", None)
            loop.call_soon_threadsafe(commands.put_nowait, command)

    threading.Thread(target=receive, name="client-commands", daemon=True).start()
    while True:
        command, argument = await commands.get()
        if command == "exit":
            await client.close(wait=2.0)
            with suppress(OSError):
                conn.send(None)
            return
        try:
            call = getattr(client, command)
            reply = call() if argument is None else call(argument)
            if asyncio.iscoroutine(reply):
                reply = await reply
        except Exception as error:  # reported to the parent, which raises it
            reply = error
        conn.send(reply)


def serve_commands(conn: Connection, client: Commanded) -> None:
    """Run a client process: the open files limit raised, ``client`` served on uvloop."""
    raise_open_files()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(conn, client))


def client_main(conn: Connection) -> None:
    """Entry point of a client process: serve the parent's commands until ``exit``."""
    serve_commands(conn, ClientProcess())


# ----------------------------------------------------------------------------- the parent


class LoadClients:
    """``processes`` client processes driven over pipes; use as a context manager.

    ``main`` is each process's entry point (``client_main``: the realtime benchmark's
    sockets; it must be importable, as processes are spawned).
    """

    def __init__(self, processes: int, main: Callable[[Connection], None] = client_main) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for _ in range(processes):
            parent, child = context.Pipe()
            process = context.Process(target=main, args=(child,), daemon=True)
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)

    def __enter__(self) -> LoadClients:
        return self

    def __exit__(self, *exc: object) -> None:
        for pipe in self.pipes:
            with suppress(OSError):
                pipe.send(("exit", None))
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            with suppress(OSError, EOFError):
                if pipe.poll(10):
                    pipe.recv()
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def call(self, command: str, arguments: Sequence[Any] | None = None) -> list[Any]:
        """Send ``command`` to every process (with its own argument), wait for every reply."""
        for index, pipe in enumerate(self.pipes):
            pipe.send((command, None if arguments is None else arguments[index]))
        replies = []
        for pipe in self.pipes:
            reply = pipe.recv()
            if isinstance(reply, Exception):
                raise reply
            replies.append(reply)
        return replies

    def connect(self, plans: Sequence[ConnectPlan]) -> dict[str, Any]:
        """Open every plan's sockets; the merged outcome and the slowest process's seconds."""
        replies = self.call("connect", plans)
        outcome: Counter[str] = Counter()
        for reply in replies:
            outcome.update(reply["outcome"])
        return {
            "outcome": dict(outcome),
            "seconds": max(reply["seconds"] for reply in replies),
        }

    def stats(self) -> dict[str, Any]:
        return merge_stats(self.call("stats"))


def merge_stats(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The client processes' snapshots added up (first/last: earliest and latest)."""
    tallies: dict[str, dict[str, float]] = {}
    histogram: Counter[int] = Counter()
    per_second: dict[int, list[float]] = {}  # [count, sum, max]
    per_event: dict[float, list[float]] = {}  # [frames, first, last]
    totals: dict[str, Counter[str]] = {"ops": Counter(), "errors": Counter(), "closes": Counter()}
    sums = dict.fromkeys(("overflow", "gaps", "repeats", "open"), 0)
    cpu: list[float] = []
    for part in parts:
        for name, tally in part["tallies"].items():
            into = tallies.setdefault(name, {"events": 0, "first": 0.0, "last": 0.0})
            if tally["events"]:
                into["first"] = min(into["first"] or tally["first"], tally["first"])
                into["last"] = max(into["last"], tally["last"])
            into["events"] += tally["events"]
        histogram.update(part["histogram_ms"])
        for second, (count, total, peak) in part["per_second"].items():
            was = per_second.get(second, [0.0, 0.0, 0.0])
            per_second[second] = [was[0] + count, was[1] + total, max(was[2], peak)]
        for stamp, (frames, first, last) in part["per_event"].items():
            was = per_event.get(stamp, [0.0, math.inf, 0.0])
            per_event[stamp] = [was[0] + frames, min(was[1], first), max(was[2], last)]
        for key, counter in totals.items():
            counter.update(part[key])
        for key in sums:
            sums[key] += part[key]
        cpu.append(part["cpu_seconds"] / part["wall_seconds"] if part["wall_seconds"] else 0.0)
    return {
        "tallies": tallies,
        "events": int(sum(t["events"] for t in tallies.values())),
        "histogram_ms": dict(sorted(histogram.items())),
        "per_second": dict(sorted(per_second.items())),
        "per_event": dict(sorted(per_event.items())),
        **{key: dict(counter) for key, counter in totals.items()},
        **sums,
        "client_cpu_share": [round(share, 3) for share in cpu],
    }
