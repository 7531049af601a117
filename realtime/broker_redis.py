"""The Redis broker: one pub/sub connection per process, one subscription per channel.

Messages are read on a ``rediswire`` subscription, so an event goes from the socket to
the hub in the same ``data_received`` call, with no task switch, and the connection's
watchdog drops it when Redis stops answering. After every (re)connect all channels are
subscribed again, and only once Redis confirmed them is the hub told to backfill what it
may have missed.

Why not share the near-cache invalidation connection (server/listings/invalidation.py):
that connection's latency is on every write's path (writers wait for its acks), and a
burst of events queued in front of an invalidation would delay writes; its failure also
means something else (near cache off) than this one's (backfill from PostgreSQL). The
code they share is ``rediswire.subscription``; what differs is what each subscribes to
and what a message means.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence

import hiredis
import redis.asyncio as aioredis

from realtime.broker import BrokerSink
from rediswire.codec import command, redis_database
from rediswire.subscription import Subscription, stay_subscribed

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
        await stay_subscribed(
            self.redis_url,
            lambda: _Subscription(self),
            name=CLIENT_NAME,
            interval=self.watchdog_interval,
            silence_limit=3 * self.watchdog_interval,
            reconnect_delay=RECONNECT_DELAY_S,
            connect_timeout=max(2.0, 3 * self.watchdog_interval),
            on_lost=self._lost,
        )

    def _lost(self, connection: _Subscription | None) -> None:
        self.connection = None  # attached as it connected, even if connecting then failed
        if connection is not None:
            connection.release_waiters()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class _Subscription(Subscription):
    """One connection's life: subscribe everything, then read messages and pings."""

    client_name = CLIENT_NAME

    def __init__(self, broker: RedisBroker) -> None:
        super().__init__(broker.redis_url)
        self.broker = broker
        self.ready = False
        # Confirmations arrive in command order, so each channel's (un)subscribes wait in
        # a queue of their own; None marks an unsubscribe or a subscribe nobody awaits.
        self.pending: dict[bytes, collections.deque[asyncio.Future[None] | None]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The snapshot of the channels (in opening()) and the broker's switch to this
        # connection happen in one step: a channel subscribed from now on is sent on this
        # connection by subscribe().
        self.broker.attach(self)
        super().connection_made(transport)

    def opening(self) -> list[bytes]:
        out = []
        names = [(self.broker.prefix + channel).encode() for channel in self.broker.channels]
        for name in names:
            self.pending.setdefault(name, collections.deque()).append(None)
        for start in range(0, len(names), 1000):
            out.append(command("SUBSCRIBE", *names[start : start + 1000]))
        out.append(command("PING", _READY_MARK))  # answered after every SUBSCRIBE above
        return out

    def ping(self) -> bytes:
        return command("PING", _WATCHDOG_MARK)

    async def subscribe(self, redis_channel: str) -> None:
        """Subscribe and wait for Redis to confirm; return at once on a closed connection
        (the channel is in the broker's set, so the next connection subscribes it, and
        the hub backfills after that reconnect)."""
        name = redis_channel.encode()
        waiter: asyncio.Future[None] = self.loop.create_future()
        if not self.send(command("SUBSCRIBE", name)):
            return
        self.pending.setdefault(name, collections.deque()).append(waiter)
        await waiter

    def unsubscribe(self, redis_channel: str) -> None:
        # On a closed connection nothing is sent: the next one subscribes only the
        # channels still wanted.
        name = redis_channel.encode()
        if self.send(command("UNSUBSCRIBE", name)):
            self.pending.setdefault(name, collections.deque()).append(None)

    def release_waiters(self) -> None:
        """The connection is gone: whoever waits is covered by the backfill after reconnect."""
        self.ready = False
        for queue in self.pending.values():
            for waiter in queue:
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
        self.pending.clear()

    def on_bad_reply(self, error: Exception) -> None:
        log.warning("bad reply on the event subscription", extra={"error": repr(error)})

    def on_reply(self, reply: object) -> None:
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
        super().connection_lost(exc)
