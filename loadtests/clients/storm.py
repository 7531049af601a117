"""The reconnect storm's load client: apps that hold one socket each and resume every
channel after any drop, exactly as docs/protocol.md "Reconnecting" tells an app to.

Each client process (``LoadClients(n, main=storm_main)``) runs thousands of ``App``s on one
uvloop loop, over ``clients/ws.py``'s bare ``WebSocket`` protocol. An app knows every
instance (as a load balancer would route it) and starts on the first. When its socket
ends it reconnects: a new ticket for every attempt, exponential backoff with full jitter
(``[0, min(30 s, 0.5 s x 2^n)]`` after the n-th failed attempt in a row, n reset once a
socket has been served a frame), ``Retry-After`` of a 429 or 503 waited out before that
jitter, the next instance after one could not be reached, and every channel subscribed
again with ``since`` = the last offset it received. Closes with 1008, 1009 and 4401, and a
4xx other than 408 and 429, stop it, as they stop the reference client.

Each channel of an app is a ``loadtests.audit.Stream`` (every event as received, resumes
continuing its segment), so ``audit`` checks it against the event log with the load
test's own ``check_stream``: every committed offset after the first ``subscribed`` one,
in order, nothing missing, nothing twice.

Commands from the parent (``StormProcess`` methods): ``start`` (open every app of a plan
and wait until each is live), ``progress``, ``behind``, ``report``, ``audit``, ``close``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import aiohttp
import orjson

from loadtests.audit import LogRow, Stream, check_stream
from loadtests.clients.ws import (
    OP_TEXT,
    Tally,
    Target,
    WebSocket,
    close_sockets,
    connect_from,
    request_ticket,
    retry_after,
    serve_commands,
    upgrade_request,
)
from realtime.disconnect import rule_for

BACKOFF_BASE_S = 0.5  # docs/protocol.md "Reconnecting"
BACKOFF_CAP_S = 30.0
TIMEOUT_S = 30.0  # a ticket request, a TCP connect, an upgrade's answer
FIRST_CONNECTS = 64  # apps of one process connecting at once when the run starts (not later)
FIRST_CONNECT_LIMIT_S = 300.0  # for every app of a process to be live when the run starts
TICKET_CONNECTIONS = 64  # kept-alive ticket connections per process, pooled as a balancer would
RETRYABLE_ERRORS = frozenset({"unavailable", "rate_limited"})  # a subscribe worth retrying
TRANSIENT_4XX = frozenset({408, 429})
EXAMPLES = 10  # audit violations sent back per process
NOT_LIVE = -1.0  # live_at of an app that never became live


def backoff(failures: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base x 2^failures)]."""
    return rng.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(failures, 32)))


def final_status(status: int) -> bool:
    """A ticket or upgrade answer that another attempt cannot change (401, most 4xx)."""
    return 400 <= status < 500 and status not in TRANSIENT_4XX


class AppFigures(NamedTuple):
    """What one app reports: its last time live and how it got there (times: time.time())."""

    live_at: float  # when every channel was last `subscribed` again (NOT_LIVE: never)
    upgrade_s: float  # that socket's upgrade: its start to the 101
    resume_s: float  # that socket's upgrade start to its last `subscribed`
    attempts: int  # connection attempts after the app was first live
    lives: int  # times it became live
    drops: int  # live sockets that ended
    first_drop: float  # when the first of them ended (0: none)
    live: bool  # live when it reported


@dataclass(frozen=True, slots=True)
class StormPlan:
    """What one client process runs: apps ``apps`` (numbers), each subscribed to
    ``per_app`` consecutive channels of ``channels`` (app i: i x per_app onwards, wrapping),
    from source address ``sources[i % len]``, starting on ``targets[0]``."""

    targets: tuple[Target, ...]
    apps: range
    channels: tuple[str, ...]
    per_app: int
    sources: tuple[str, ...]
    seed: int = 0

    @classmethod
    def split(
        cls,
        targets: Sequence[Target],
        apps: int,
        processes: int,
        channels: Sequence[str],
        per_app: int,
        sources: Sequence[str],
        seed: int = 0,
    ) -> list[StormPlan]:
        """One plan per client process; the channels get apps x per_app / channels apps
        each (give or take one)."""
        if not 1 <= per_app <= len(channels):
            raise ValueError(f"an app takes 1 to {len(channels)} channels here, not {per_app}")
        return [
            cls(
                tuple(targets),
                range(process, apps, processes),
                tuple(channels),
                per_app,
                tuple(sources),
                seed + process,
            )
            for process in range(processes)
        ]

    def channels_of(self, app: int) -> list[str]:
        count = len(self.channels)
        return [self.channels[(app * self.per_app + k) % count] for k in range(self.per_app)]


@dataclass(slots=True)
class Shared:
    """What the apps of one process share: the ticket session, the dice and the counts."""

    session: aiohttp.ClientSession
    rng: random.Random
    tally: Tally = field(default_factory=Tally)  # what ws.WebSocket wants; the apps count alone
    answers: Counter[str] = field(default_factory=Counter)  # "ticket 201", "upgrade 503", ...
    closes: Counter[str] = field(default_factory=Counter)  # close codes, "closed", ...
    ops: Counter[str] = field(default_factory=Counter)  # frames that are none of ours
    errors: Counter[str] = field(default_factory=Counter)  # error frames by code
    stopped: Counter[str] = field(default_factory=Counter)  # apps that gave up, and why


class App:
    """One app: a socket at a time, its channels resumed with ``since`` after every drop."""

    def __init__(self, number: int, plan: StormPlan, shared: Shared) -> None:
        self.number = number
        self.streams = {channel: Stream(channel) for channel in plan.channels_of(number)}
        self.targets = plan.targets
        self.source = plan.sources[number % len(plan.sources)]
        self.shared = shared
        self.closes, self.ops = shared.closes, shared.ops  # ws.FrameSink
        self.target = 0  # index into targets
        self.socket: WebSocket | None = None
        self.since_sent: dict[str, int | None] = {}
        self.waiting: set[str] = set()  # channels not yet `subscribed` on this socket
        self.served = False  # this socket was sent a frame
        # Done once the app is first live, or has given up before.
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.failures = 0  # failed attempts in a row: the backoff's exponent
        self.attempts = 0  # connection attempts after the app was first live
        self.upgrade_at = 0.0  # time.time() when the upgrade of this socket began
        self.upgrade_s = 0.0  # and how long it took
        self.live_at = NOT_LIVE  # when every channel was last `subscribed` again
        self.resume_s = 0.0  # live_at - upgrade_at of that socket
        self.lives = 0
        self.drops: list[float] = []  # when each live socket ended
        self.resyncs = 0
        self.stopped = ""  # why the app gave up, if it did

    @property
    def live(self) -> bool:
        return self.socket is not None and self.socket.open and not self.waiting

    # -- the connection loop ---------------------------------------------------------------

    async def run(self, first: asyncio.Semaphore) -> None:
        """Connect, stay, reconnect, until stopped (a final refusal or close, or cancelled)."""
        while not self.stopped:
            gate: AbstractAsyncContextManager[Any] = nullcontext() if self.lives else first
            async with gate:
                if self.lives:
                    self.attempts += 1
                socket, wait = await self.open()
                if socket is not None and not self.lives:
                    await self.until_live(socket)
            if socket is not None:
                await socket.closed
                self.ended(socket)
                wait = 0.0
            if self.stopped:
                if not self.ready.done():
                    self.ready.set_result(None)
                return
            await asyncio.sleep(wait + backoff(self.failures, self.shared.rng))
            self.failures += 1

    async def open(self) -> tuple[WebSocket | None, float]:
        """A ticket, the upgrade and a subscribe per channel: the socket, or None and the
        ``Retry-After`` seconds the refusal asked for."""
        target = self.targets[self.target]
        answer = await request_ticket(self.shared.session, target)
        self.shared.answers[f"ticket {answer.status or answer.error}"] += 1
        if answer.ticket is None:
            return None, self.refused(answer.status, answer.retry_after)
        request, accept = upgrade_request(target, f"{target.path}?ticket={answer.ticket}")
        loop = asyncio.get_running_loop()
        self.upgrade_at = time.time()
        socket: WebSocket | None = None
        try:
            sock = await connect_from(self.source, target.host, target.port, TIMEOUT_S)
            _, socket = await loop.create_connection(
                lambda: WebSocket(self, self.shared.tally, request, accept), sock=sock
            )
            await asyncio.wait_for(socket.opened, TIMEOUT_S)
            self.upgrade_s = time.time() - self.upgrade_at
        except (OSError, TimeoutError) as error:
            refusal = None if socket is None else socket.refusal
            if socket is not None and socket.transport is not None:
                socket.transport.abort()
            if refusal is None:
                self.shared.answers[f"upgrade {type(error).__name__}"] += 1
                return None, self.refused(0, 0.0)
            status, headers = refusal
            self.shared.answers[f"upgrade {status}"] += 1
            return None, self.refused(status, retry_after(headers.get(b"retry-after")))
        self.shared.answers["upgrade 101"] += 1
        self.socket, self.served = socket, False
        for channel in self.streams:
            self.subscribe(channel)
        return socket, 0.0

    def refused(self, status: int, wait: float) -> float:
        """After a failed attempt: stop on a final status, go to the next instance when
        this one could not be reached (no answer at all); the wait it asked for."""
        if final_status(status):
            self.stopped = f"answered {status}"
        elif status == 0:
            self.target = (self.target + 1) % len(self.targets)
        return wait

    async def until_live(self, socket: WebSocket) -> None:
        await asyncio.wait({self.ready, socket.closed}, return_when=asyncio.FIRST_COMPLETED)

    def ended(self, socket: WebSocket) -> None:
        """The socket is gone: stop when its close code says so; reset the backoff when it
        served us (docs/protocol.md: an upgrade closed at once must not reset it)."""
        was_live = self.lives and not self.waiting
        self.socket, self.waiting = None, set()
        if was_live:
            self.drops.append(time.time())
        if not rule_for(socket.close_code).reconnect:
            self.stopped = f"closed with {socket.close_code}"
        if self.served:
            self.failures = 0

    # -- channels --------------------------------------------------------------------------

    def subscribe(self, channel: str, *, fresh: bool = False) -> None:
        """Subscribe ``channel`` on the current socket from the last offset received."""
        socket = self.socket
        if socket is None or not socket.open:
            return  # the next socket subscribes every channel
        last = self.streams[channel].last
        since = None if fresh else last
        frame: dict[str, Any] = {"op": "subscribe", "channel": channel}
        if since is not None:
            frame["since"] = since
        self.since_sent[channel] = since
        self.waiting.add(channel)
        socket.send(OP_TEXT, orjson.dumps(frame))

    def on_text(self, socket: WebSocket, payload: bytes, now: float) -> None:
        if socket is not self.socket:
            return
        self.served = True
        try:
            frame = orjson.loads(payload)
            op = frame["op"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.ops["<not a frame>"] += 1
            return
        if op == "event":
            stream = self.streams.get(frame.get("channel"))
            if stream is None or not stream.event(int(frame["offset"]), int(frame["prev"])):
                self.ops["event of no subscription"] += 1
        elif op == "subscribed":
            self.on_subscribed(str(frame.get("channel")), int(frame["offset"]), now)
        elif op == "error":
            self.on_error(str(frame.get("code")), frame.get("channel"))
        else:
            self.ops[str(op)] += 1

    def on_socketio(self, socket: WebSocket, payload: bytes, now: float) -> None:
        self.ops["<socket.io frame>"] += 1  # never: the storm speaks jangteo's protocol

    def on_subscribed(self, channel: str, offset: int, now: float) -> None:
        stream = self.streams.get(channel)
        if stream is None or channel not in self.waiting:
            self.ops["subscribed unasked"] += 1
            return
        stream.subscribed(offset, self.since_sent.get(channel))
        self.waiting.discard(channel)
        if not self.waiting:
            self.live_at, self.resume_s = now, now - self.upgrade_at
            self.lives += 1
            if not self.ready.done():
                self.ready.set_result(None)

    def on_error(self, code: str, channel: Any) -> None:
        self.shared.errors[code] += 1
        if channel not in self.streams:
            return
        if code == "resync":  # the app reloads over REST and subscribes afresh
            self.resyncs += 1
            self.subscribe(channel, fresh=True)
        elif code in RETRYABLE_ERRORS:
            socket = self.socket
            delay = backoff(self.failures, self.shared.rng)
            asyncio.get_running_loop().call_later(delay, self.resubscribe, socket, channel)
        else:
            self.shared.stopped[f"refused {channel.split(':')[0]} channel: {code}"] += 1

    def resubscribe(self, socket: WebSocket | None, channel: str) -> None:
        if socket is self.socket:
            self.subscribe(channel)

    def figures(self) -> AppFigures:
        return AppFigures(
            self.live_at, self.upgrade_s, self.resume_s, self.attempts, self.lives,
            len(self.drops), self.drops[0] if self.drops else 0.0, self.live,
        )  # fmt: skip


class StormProcess:
    """The apps of one client process and the commands that drive them."""

    def __init__(self) -> None:
        self.apps: list[App] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.shared: Shared | None = None
        self.cpu_mark = time.process_time()
        self.wall_mark = time.monotonic()

    async def start(self, plan: StormPlan) -> dict[str, Any]:
        """Start every app of ``plan``; once each is live (or has given up, or after
        ``FIRST_CONNECT_LIMIT_S``), how many are."""
        connector = aiohttp.TCPConnector(limit=TICKET_CONNECTIONS)
        session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)
        )
        self.shared = shared = Shared(session, random.Random(plan.seed))
        started = time.monotonic()
        first = asyncio.Semaphore(FIRST_CONNECTS)
        self.apps = [App(number, plan, shared) for number in plan.apps]
        self.tasks = [asyncio.create_task(app.run(first)) for app in self.apps]
        await asyncio.wait([app.ready for app in self.apps], timeout=FIRST_CONNECT_LIMIT_S)
        return {
            "apps": len(self.apps),
            "live": sum(app.live for app in self.apps),
            "seconds": round(time.monotonic() - started, 3),
            "answers": dict(shared.answers),
            "stopped": dict(shared.stopped),
        }

    def progress(self, since: float) -> dict[str, int]:
        """Apps live now, and of them those that became live after ``since`` (time.time())."""
        live = [app for app in self.apps if app.live]
        return {
            "apps": len(self.apps),
            "live": len(live),
            "live_since": sum(app.live_at > since for app in live),
            "stopped": sum(bool(app.stopped) for app in self.apps),
        }

    def behind(self, heads: Mapping[str, int]) -> int:
        """Streams whose last offset is short of their channel's head."""
        return sum(
            (stream.last or 0) < heads.get(stream.channel, 0)
            for app in self.apps
            for stream in app.streams.values()
        )

    def report(self) -> dict[str, Any]:
        """Each app's figures (``App.figures``) and what the apps counted."""
        shared = self.shared
        assert shared is not None
        return {
            "apps": [app.figures() for app in self.apps],
            "answers": dict(shared.answers),
            "closes": dict(shared.closes),
            "errors": dict(shared.errors),
            "other_frames": dict(shared.ops),
            "stopped": dict(shared.stopped + Counter(a.stopped for a in self.apps if a.stopped)),
            "resyncs": sum(app.resyncs for app in self.apps),
            "cpu_share": round(
                (time.process_time() - self.cpu_mark) / (time.monotonic() - self.wall_mark), 3
            ),
        }

    def audit(self, logs: tuple[Mapping[str, Sequence[LogRow]], float]) -> dict[str, Any]:
        """Every stream against its channel's log (position, prev, commit ms) with the load
        test's ``check_stream``, owed everything committed up to ``until_ms``."""
        channel_logs, until_ms = logs
        counts: Counter[str] = Counter()
        examples: list[str] = []
        streams = events = 0
        for app in self.apps:
            for stream in app.streams.values():
                streams += 1
                events += sum(len(segment["events"]) for segment in stream.segments)
                record = stream.record(user_id=app.number, role="app", until_ms=until_ms)
                for violation in check_stream(record, channel_logs.get(stream.channel, [])):
                    counts[violation.invariant] += 1
                    if len(examples) < EXAMPLES:
                        examples.append(f"{violation.invariant}: {violation.detail}")
        return {
            "streams": streams,
            "events": events,
            "violations": dict(counts),
            "examples": examples,
        }

    async def close(self, wait: float = 10.0) -> dict[str, Any]:
        """Stop every app and close its socket (close frame, then the server closes TCP)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        sockets = [app.socket for app in self.apps if app.socket is not None]
        aborted = await close_sockets(sockets, wait)
        if self.shared is not None:
            await self.shared.session.close()
        self.tasks, self.apps = [], []
        return {"closed": len(sockets), "aborted": aborted}


def storm_main(conn: Connection) -> None:
    """Entry point of a storm client process (``LoadClients(n, main=storm_main)``)."""
    serve_commands(conn, StormProcess())
