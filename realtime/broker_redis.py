"""The Redis broker: one pub/sub connection per process, one subscription per channel.

Messages are read by a raw asyncio protocol with hiredis, so an event goes from the
socket to the hub in the same ``data_received`` call, with no task switch. A read-side
watchdog pings over the subscription itself and drops the connection when answers stop
arriving: a PING that merely lands in a kernel buffer proves nothing, an answer read
back does. After every (re)connect all channels are subscribed again, and only once
Redis confirmed them is the hub told to backfill what it may have missed.

Why not share the near-cache invalidation connection (server/listings/invalidation.py):
that connection's latency is on every write's path (writers wait for its acks), and a
burst of events queued in front of an invalidation would delay writes; its failure also
means something else (near cache off) than this one's (backfill from PostgreSQL).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence
from typing import cast

import hiredis
import redis.asyncio as aioredis

from realtime.broker import BrokerSink
from server.resp import address, command, hello, redis_database

log = logging.getLogger(__name__)

CLIENT_NAME = "jangteo-events"
RECONNECT_DELAY_S = 0.5
_READY_MARK = b"jangteo-subscribed"
_WATCHDOG_MARK = b"jangteo-watchdog"


def channel_prefix(deployment: str, redis_url: str) -> str:
    """Pub/sub ignores databases, and two deployments may share one Redis: both name
    every channel."""
    return f"{deployment}:{redis_database(redis_url)}:events:"


class RedisBroker:
    """Publishes through the shared client; receives on a connection of its own."""

    def __init__(
        self,
        redis_url: str,
        client: aioredis.Redis,
        *,
        watchdog_interval: float,
        deployment: str = "jangteo",
    ) -> None:
        self.redis_url = redis_url
        self.client = client
        self.prefix = channel_prefix(deployment, redis_url)
        self.watchdog_interval = watchdog_interval
        self.sink: BrokerSink | None = None
        self.channels: set[str] = set()
        self.connection: _Subscription | None = None
        self.task: asyncio.Task[None] | None = None
        self.live = asyncio.Event()

    async def wait_live(self) -> None:
        """Wait for the first subscription to be live."""
        await self.live.wait()

    @property
    def healthy(self) -> bool:
        return self.connection is not None and self.connection.ready

    def bind(self, sink: BrokerSink) -> None:
        self.sink = sink
        self.task = asyncio.create_task(self._stay_connected(), name="jangteo-event-subscription")

    async def subscribe(self, channel: str) -> None:
        # A connection being made has taken its snapshot of `channels` already (it is
        # recorded in the same step, in connection_made), so the channel goes on it.
        self.channels.add(channel)
        if self.connection is not None:
            await self.connection.subscribe(self.prefix + channel)

    def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        if self.connection is not None:
            self.connection.unsubscribe(self.prefix + channel)

    def attach(self, connection: _Subscription) -> None:
        """Called by a new connection as it takes its snapshot of the channels."""
        self.connection = connection

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for channel, payload in messages:
                pipe.publish(self.prefix + channel, payload)
            await pipe.execute()

    def received(self, redis_channel: bytes, payload: bytes) -> None:
        assert self.sink is not None
        self.sink.on_message(redis_channel.decode()[len(self.prefix) :], payload)

    def ready(self) -> None:
        log.info("event subscription live", extra={"channels": len(self.channels)})
        self.live.set()
        assert self.sink is not None
        self.sink.on_resubscribed()

    async def _stay_connected(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = address(self.redis_url)
        while True:
            try:
                transport, connection = await asyncio.wait_for(
                    loop.create_connection(lambda: _Subscription(self), host, port),
                    timeout=max(2.0, 3 * self.watchdog_interval),
                )
            except (OSError, TimeoutError) as error:
                self.connection = None  # attached as it connected, then timed out
                log.warning("event subscription failed", extra={"error": repr(error)})
                await asyncio.sleep(RECONNECT_DELAY_S)
                continue
            try:
                await connection.watch(self.watchdog_interval)
            finally:
                self.connection = None
                transport.close()
                connection.release_waiters()
            log.warning("event subscription lost; reconnecting")
            await asyncio.sleep(RECONNECT_DELAY_S)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class _Subscription(asyncio.Protocol):
    """One connection's life: subscribe everything, then read messages and pings."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.reader = hiredis.Reader()
        self.loop = asyncio.get_running_loop()
        self.last_heard = self.loop.time()
        self.ready = False
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.Transport | None = None
        # Confirmations arrive in command order, so each channel's (un)subscribes wait in
        # a queue of their own; None marks an unsubscribe or a subscribe nobody awaits.
        self.pending: dict[bytes, collections.deque[asyncio.Future[None] | None]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # The snapshot below and the broker's switch to this connection happen in one
        # step: a channel subscribed from now on is sent on this connection by subscribe().
        self.broker.attach(self)
        out = [hello(self.broker.redis_url, CLIENT_NAME)]
        names = [(self.broker.prefix + channel).encode() for channel in self.broker.channels]
        for name in names:
            self.pending.setdefault(name, collections.deque()).append(None)
        for start in range(0, len(names), 1000):
            out.append(command("SUBSCRIBE", *names[start : start + 1000]))
        out.append(command("PING", _READY_MARK))  # answered after every SUBSCRIBE above
        self.transport.write(b"".join(out))

    async def subscribe(self, redis_channel: str) -> None:
        """Subscribe and wait for Redis to confirm; return at once on a closed connection
        (the channel is in the broker's set, so the next connection subscribes it, and
        the hub backfills after that reconnect)."""
        if self.transport is None or self.transport.is_closing():
            return
        name = redis_channel.encode()
        waiter: asyncio.Future[None] = self.loop.create_future()
        self.pending.setdefault(name, collections.deque()).append(waiter)
        self.transport.write(command("SUBSCRIBE", name))
        await waiter

    def unsubscribe(self, redis_channel: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # the next connection subscribes only the channels still wanted
        name = redis_channel.encode()
        self.pending.setdefault(name, collections.deque()).append(None)
        self.transport.write(command("UNSUBSCRIBE", name))

    async def watch(self, interval: float) -> None:
        """Ping every ``interval``; give up after three intervals without a word back."""
        while not self.closed.done():
            await asyncio.wait([self.closed], timeout=interval)
            if self.closed.done():
                return
            if self.loop.time() - self.last_heard > 3 * interval:
                log.warning("Redis stopped answering the event subscription")
                return
            assert self.transport is not None
            self.transport.write(command("PING", _WATCHDOG_MARK))

    def release_waiters(self) -> None:
        """The connection is gone: whoever waits is covered by the backfill after reconnect."""
        self.ready = False
        for queue in self.pending.values():
            for waiter in queue:
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_heard = self.loop.time()
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                self._handle(reply)
        except (ValueError, hiredis.ProtocolError) as error:
            log.warning("bad reply on the event subscription", extra={"error": repr(error)})
            assert self.transport is not None
            self.transport.close()

    def _handle(self, reply: object) -> None:
        if isinstance(reply, hiredis.ReplyError):
            raise ValueError(f"redis refused: {reply}")
        if isinstance(reply, hiredis.PushNotification):
            kind = reply[0]
            if kind == b"message":
                self.broker.received(reply[1], reply[2])
            elif kind in (b"subscribe", b"unsubscribe"):
                queue = self.pending.get(reply[1])
                if queue:
                    waiter = queue.popleft()
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
                    if not queue:
                        del self.pending[reply[1]]
        elif reply == _READY_MARK:
            self.ready = True
            self.broker.ready()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ready = False
        if not self.closed.done():
            self.closed.set_result(None)
