"""Watchers: sockets that subscribe to the written channels and record what arrives.

A watcher holds one socket at a time, to one of the instances that serve (in turn),
subscribes to its channels, and every now and then drops the socket on purpose and
resumes elsewhere with ``since`` = the last offset it saw; an instance that goes away
(killed, terminated, or paused past the client's heartbeat) makes it do the same. It
keeps, per channel, the stream the audit checks (``loadtests.audit.Stream``: offset and
prev of every event, in the order received, duplicates included) and, for the stall,
when each event arrived and on which connection. It reads raw frames (not the reference
client, which drops duplicates by design: here a duplicate must be seen).

A slow watcher is one whose socket goes through a throttled proxy: it resumes a long
history from an old ``since``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from loadtests.audit import Stream
from loadtests.chaos.cluster import Instance

HEARTBEAT_S = 4.0  # the client's ping; no pong in half of it and the socket is dropped
CONNECT_TIMEOUT = aiohttp.ClientTimeout(total=10)
RETRY_SUBSCRIBE_S = 1.0  # after `unavailable`
RECONNECT_PAUSE_S = 0.3


def now_ms() -> float:
    return time.time() * 1000.0


@dataclass(frozen=True, slots=True)
class Account:
    user_id: int
    token: str
    name: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(slots=True)
class Connection:
    """One socket of a watcher: where, when, why it ended, when each channel was asked."""

    number: int
    instance: int
    opened_ms: float
    closed_ms: float | None = None
    ended: str = ""  # "dropped" (on purpose), "end", or the close code
    subscribe_ms: dict[str, float] = field(default_factory=dict)  # first subscribe sent
    asked: dict[str, int | None] = field(default_factory=dict)  # `since` of the last one
    live: set[str] = field(default_factory=set)  # channels answered `subscribed`


async def open_socket(
    http: aiohttp.ClientSession, instance: Instance, account: Account, port: int | None = None
) -> aiohttp.ClientWebSocketResponse:
    """A ticket from ``instance``, then the upgrade (to ``port``, a proxy, when given)."""
    async with http.post(
        f"{instance.url}/api/v1/ws/ticket", headers=account.auth, timeout=CONNECT_TIMEOUT
    ) as response:
        if response.status != 201:
            raise ConnectionError(f"ticket {response.status}")
        ticket = (await response.json())["ticket"]
    url = f"ws://127.0.0.1:{port or instance.port}/api/v1/ws?ticket={ticket}"
    return await http.ws_connect(url, heartbeat=HEARTBEAT_S, timeout=aiohttp.ClientWSTimeout(10))


class Watcher:
    """One subscriber of ``channels`` as ``account``, moving between instances."""

    def __init__(
        self,
        name: str,
        account: Account,
        channels: list[str],
        instances: Callable[[], list[Instance]],
        *,
        rng: random.Random,
        drop_every: tuple[float, float] | None = (8.0, 20.0),
        port: Callable[[Instance], int] | None = None,
        since: dict[str, int] | None = None,
        measured: bool = True,
        first: int = 0,
    ) -> None:
        self.name = name
        self.account = account
        self.channels = channels
        self.instances = instances
        self.rng = rng
        self.drop_every = drop_every
        self.port = port
        self.first_since = since or {}
        self.measured = measured  # counted in the stall (a slow watcher is not)
        self.streams = {channel: Stream(channel) for channel in channels}
        self.connections: list[Connection] = []
        self.current: Connection | None = None
        # (channel, offset, commit ms, receive ms, connection number), in order received
        self.deliveries: list[tuple[str, int, int, float, int]] = []
        self.prices: dict[tuple[str, int], float] = {}  # first receipt of each new price
        self.errors: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()
        self.strays = 0
        self._turn = first - 1  # the index among the serving instances it starts on
        self._retries: set[asyncio.Task[None]] = set()

    @property
    def live(self) -> bool:
        """Its socket is open and every channel was answered ``subscribed`` on it."""
        current = self.current
        return current is not None and current.live >= set(self.channels)

    def last(self, channel: str) -> int | None:
        return self.streams[channel].last

    async def run(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            serving = self.instances()
            if not serving:
                await asyncio.sleep(RECONNECT_PAUSE_S)
                continue
            self._turn += 1
            instance = serving[self._turn % len(serving)]
            port = self.port(instance) if self.port else None
            try:
                ws = await open_socket(http, instance, self.account, port)
            except (aiohttp.ClientError, OSError, TimeoutError, KeyError, ValueError) as error:
                refused = isinstance(error, ConnectionError) and str(error).startswith("ticket")
                self.errors[f"connect: {error if refused else type(error).__name__}"] += 1
                await asyncio.sleep(RECONNECT_PAUSE_S)
                continue
            ended = await self._serve(ws, instance, stop)
            if not stop.is_set():  # the server closed it: a client waits a little
                await asyncio.sleep(0.05 if ended == "dropped" else RECONNECT_PAUSE_S)

    async def _serve(
        self, ws: aiohttp.ClientWebSocketResponse, instance: Instance, stop: asyncio.Event
    ) -> str:
        """Serve one socket until it closes; why it ended."""
        connection = Connection(len(self.connections) + 1, instance.index, now_ms())
        self.connections.append(connection)
        self.current = connection
        closer = asyncio.create_task(self._closer(ws, connection, stop))
        try:
            for channel in self.channels:
                await self._subscribe(ws, connection, channel)
            while True:
                message = await ws.receive()
                if message.type is aiohttp.WSMsgType.TEXT:
                    await self._frame(ws, connection, orjson.loads(message.data), now_ms())
                    continue
                if message.type is aiohttp.WSMsgType.CLOSE and not connection.ended:
                    connection.ended = f"{message.data} {message.extra or ''}".strip()
                break
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as error:
            self.errors[f"socket: {type(error).__name__}"] += 1
        finally:
            self.current = None
            closer.cancel()
            for task in list(self._retries):
                task.cancel()
            with contextlib.suppress(Exception):
                await ws.close()
            connection.closed_ms = now_ms()
            connection.ended = connection.ended or str(ws.close_code)
            self.ended[connection.ended] += 1
        return connection.ended

    async def _closer(
        self, ws: aiohttp.ClientWebSocketResponse, connection: Connection, stop: asyncio.Event
    ) -> None:
        """Close the socket at the end of the run, or on purpose after a while."""
        wait = self.rng.uniform(*self.drop_every) if self.drop_every else None
        try:
            await asyncio.wait_for(stop.wait(), wait)
            connection.ended = "end"
        except TimeoutError:
            connection.ended = "dropped"
        await ws.close()

    async def _subscribe(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        connection: Connection,
        channel: str,
        fresh: bool = False,
    ) -> None:
        stream = self.streams[channel]
        since = None if fresh else stream.last if stream.segments else self.first_since.get(channel)
        frame: dict[str, Any] = {"op": "subscribe", "channel": channel}
        if since is not None:
            frame["since"] = since
        connection.asked[channel] = since
        connection.subscribe_ms.setdefault(channel, now_ms())
        connection.live.discard(channel)
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await ws.send_str(orjson.dumps(frame).decode())

    async def _frame(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        connection: Connection,
        frame: dict[str, Any],
        received: float,
    ) -> None:
        op = frame.get("op")
        channel = frame.get("channel")
        if op == "event":
            stream = self.streams.get(str(channel))
            if stream is None or not stream.event(int(frame["offset"]), int(frame["prev"])):
                self.strays += 1
                return
            offset, ts = int(frame["offset"]), int(frame["ts"])
            self.deliveries.append((str(channel), offset, ts, received, connection.number))
            if frame.get("type") == "listing.price_changed":
                price = (frame.get("data") or {}).get("price")
                if isinstance(price, int):
                    self.prices.setdefault((str(channel), price), received)
        elif op == "subscribed" and channel in self.streams:
            self.streams[channel].subscribed(int(frame["offset"]), connection.asked.get(channel))
            connection.live.add(channel)
        elif op == "error":
            code = str(frame.get("code"))
            self.errors[code] += 1
            if channel in self.streams:
                connection.live.discard(channel)
                if code == "resync":  # start over from now: a new segment
                    await self._subscribe(ws, connection, channel, fresh=True)
                else:  # unavailable (PostgreSQL failing), rate_limited: again, same since
                    self._later(ws, connection, channel)

    def _later(
        self, ws: aiohttp.ClientWebSocketResponse, connection: Connection, channel: str
    ) -> None:
        async def again() -> None:
            await asyncio.sleep(RETRY_SUBSCRIBE_S)
            await self._subscribe(ws, connection, channel)

        task = asyncio.create_task(again())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def records(self, until_ms: float) -> list[dict[str, Any]]:
        """One ``stream`` record per channel, for the audit."""
        return [
            stream.record(
                user_id=self.account.user_id,
                role=self.name,
                until_ms=until_ms,
                reconnects=len(self.connections) - 1,
            )
            for stream in self.streams.values()
        ]

    def trace(self) -> dict[str, Any]:
        """Everything it saw, for reading after a failed run (``watchers.jsonl``)."""
        shown = ("number", "instance", "opened_ms", "closed_ms", "ended", "subscribe_ms")
        connections = [{key: getattr(c, key) for key in shown} for c in self.connections]
        return {"name": self.name, "connections": connections, "deliveries": self.deliveries}

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "channels": self.channels,
            "connections": len(self.connections),
            "events": len(self.deliveries),
            "ended": dict(self.ended),
            "errors": dict(self.errors),
            "strays": self.strays,
            "instances": sorted({connection.instance for connection in self.connections}),
        }
