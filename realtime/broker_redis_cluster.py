"""The Redis Cluster broker: sharded pub/sub, one subscription connection per master.

Each event channel's Redis name hashes to one slot, so SPUBLISH carries an event only
through the master owning that slot (and its replicas) instead of the whole cluster bus,
which is what makes pub/sub grow with the number of masters. An instance keeps one
subscription connection (a ``_Link``) to every master and SSUBSCRIBEs there the channels
of that master's slots: never one connection per channel or per socket.

The slot map is read with CLUSTER SLOTS at start, every ``TOPOLOGY_CHECK_S``, and at once
when something says it changed: a link lost or unable to connect (a failover), a
``MOVED`` answer to an SSUBSCRIBE, or an ``sunsubscribe`` the server pushes when a slot
migrates away or its master becomes a replica. Channels then move to the link of their
new owner, and once that master has confirmed them the hub is told to backfill exactly
those channels; it is told the same for all of a link's channels when the link comes
back. ``healthy`` holds only while every master's link is subscribed: an instance that
cannot hear one master is not ready, and reads that master's channels from PostgreSQL.
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
from realtime.broker_redis import CLIENT_NAME, RECONNECT_DELAY_S, channel_prefix
from rediswire.codec import command, node_url
from rediswire.slots import SlotMap, read_slot_map
from rediswire.subscription import Subscription, stay_subscribed

log = logging.getLogger(__name__)

TOPOLOGY_CHECK_S = 5.0  # a slot map read this often even when nothing hinted at a change
REFRESH_PAUSE_S = 0.25  # between two reads of the slot map asked for in a row
_READY_MARK = b"jangteo-shard-subscribed"
_WATCHDOG_MARK = b"jangteo-watchdog"


class ClusterBroker:
    """Publishes with SPUBLISH through the cluster client; receives on one link per master."""

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
        self.slots = SlotMap()
        self.links: dict[str, _Link] = {}
        self.live = asyncio.Event()
        self.refresh_wanted = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    # -- the Broker interface -------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return bool(self.links) and all(link.ready for link in self.links.values())

    async def wait_live(self) -> None:
        await self.live.wait()

    def bind(self, sink: BrokerSink) -> None:
        self.sink = sink
        self.task = asyncio.create_task(self._follow_topology(), name="jangteo-event-shards")

    async def subscribe(self, channel: str) -> None:
        self.channels.add(channel)
        link = self.links.get(self.owner(channel) or "")
        if link is not None:
            await link.subscribe(channel)
        # No link for it yet: the next reconcile subscribes it, and the hub backfills then.

    def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        for link in self.links.values():
            link.unsubscribe(channel)

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        # The cluster pipeline sends each master its own commands in order: every message
        # of a channel goes to one master, so a channel's messages keep their order.
        async with self.client.pipeline(transaction=False) as pipe:
            for channel, payload in messages:
                pipe.execute_command("SPUBLISH", self.prefix + channel, payload)
            await pipe.execute()

    async def close(self) -> None:
        tasks = [link.task for link in self.links.values()] + [self.task]
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- the slot map ---------------------------------------------------------------------

    def owner(self, channel: str) -> str | None:
        """The master whose slots hold ``channel``, by the last slot map read."""
        return self.slots.owner(self.prefix + channel)

    def topology_changed(self, reason: str) -> None:
        """A link saw a sign that slots moved: read the map again soon."""
        log.info("cluster topology may have changed", extra={"reason": reason})
        self.refresh_wanted.set()

    async def _follow_topology(self) -> None:
        while True:
            try:
                self.slots = await read_slot_map(self.client)
            except Exception as error:  # any failure: the links stay as they are
                log.warning("cannot read the cluster's slot map", extra={"error": repr(error)})
            else:
                self._reconcile()
            self.refresh_wanted.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TOPOLOGY_CHECK_S):
                    await self.refresh_wanted.wait()
            await asyncio.sleep(REFRESH_PAUSE_S)

    def _reconcile(self) -> None:
        """One link per master of the map, each holding exactly its masters' channels."""
        masters = self.slots.masters
        for node in list(self.links):
            if node not in masters:
                log.info("no longer a master; its channels move", extra={"node": node})
                self.links.pop(node).retire()
        for node in masters - self.links.keys():
            self.links[node] = _Link(self, node)
        for link in self.links.values():
            for channel in list(link.channels):
                if channel not in self.channels or self.owner(channel) != link.node:
                    link.unsubscribe(channel)
        for channel in self.channels:
            owner = self.owner(channel)
            if owner is not None and channel not in self.links[owner].channels:
                self.links[owner].adopt(channel)

    # -- from the links -------------------------------------------------------------------

    def received(self, redis_channel: bytes, payload: bytes) -> None:
        assert self.sink is not None
        self.sink.on_message(redis_channel.decode()[len(self.prefix) :], payload)

    def resubscribed(self, channels: list[str]) -> None:
        """Channels confirmed after a (re)connect or a move: anything may have been missed."""
        if self.healthy:
            self.live.set()
        assert self.sink is not None
        self.sink.on_resubscribed(channels)


class _Link:
    """The subscription to one master, for as long as it is a master."""

    def __init__(self, broker: ClusterBroker, node: str) -> None:
        self.broker = broker
        self.node = node
        self.channels: set[str] = set()  # what this master carries and the hub wants
        self.connection: _ShardSubscription | None = None
        host, _, port = node.rpartition(":")
        self.url = node_url(broker.redis_url, host, int(port))
        self.task: asyncio.Task[None] | None = asyncio.create_task(
            stay_subscribed(
                self.url,
                lambda: _ShardSubscription(self),
                name=f"{CLIENT_NAME}@{node}",
                interval=broker.watchdog_interval,
                silence_limit=3 * broker.watchdog_interval,
                reconnect_delay=RECONNECT_DELAY_S,
                connect_timeout=max(2.0, 3 * broker.watchdog_interval),
                on_lost=self._lost,
            ),
            name=f"jangteo-event-shard-{node}",
        )

    @property
    def ready(self) -> bool:
        return self.connection is not None and self.connection.ready

    async def subscribe(self, channel: str) -> None:
        self.channels.add(channel)
        if self.connection is not None:
            await self.connection.subscribe(channel, backfill=False)

    def adopt(self, channel: str) -> None:
        """A channel moved here (or was orphaned): subscribe it, then have it backfilled."""
        self.channels.add(channel)
        if self.connection is not None:
            # Nobody awaits this one: its confirmation triggers the backfill.
            self.connection.subscribe(channel, backfill=True)

    def unsubscribe(self, channel: str) -> None:
        if channel in self.channels:
            self.channels.discard(channel)
            if self.connection is not None:
                self.connection.unsubscribe(channel)

    def dropped(self, channel: str, reason: str) -> None:
        """The master will not carry ``channel`` (any more): it goes to its new owner."""
        self.channels.discard(channel)
        self.broker.topology_changed(reason)

    def retire(self) -> None:
        """This node is no longer a master: stop, and leave its channels to the others."""
        self.channels.clear()
        if self.task is not None:
            self.task.cancel()
        if self.connection is not None:
            self.connection.release_waiters()

    def _lost(self, connection: _ShardSubscription | None) -> None:
        self.connection = None
        if connection is not None:
            connection.release_waiters()
        self.broker.topology_changed(f"link to {self.node} lost")


class _ShardSubscription(Subscription):
    """One connection to a master: SSUBSCRIBE its channels, read messages and pings."""

    client_name = CLIENT_NAME

    def __init__(self, link: _Link) -> None:
        super().__init__(link.url)
        self.link = link
        self.prefix = link.broker.prefix
        self.ready = False
        # Replies to SSUBSCRIBE / SUNSUBSCRIBE come in command order: (kind, channel, waiter,
        # backfill) for each command sent, popped by its confirmation or its error.
        self.pending: collections.deque[tuple[bytes, str, asyncio.Future[None] | None, bool]] = (
            collections.deque()
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The snapshot of the link's channels (in opening()) and the switch to this
        # connection happen in one step, as in the single-server broker.
        self.link.connection = self
        super().connection_made(transport)

    def opening(self) -> list[bytes]:
        out = []
        for channel in self.link.channels:
            self.pending.append((b"ssubscribe", channel, None, False))
            out.append(command("SSUBSCRIBE", self.prefix + channel))  # one slot per command
        out.append(command("PING", _READY_MARK))  # answered after every SSUBSCRIBE above
        return out

    def ping(self) -> bytes:
        return command("PING", _WATCHDOG_MARK)

    def subscribe(self, channel: str, *, backfill: bool) -> asyncio.Future[None]:
        """Send SSUBSCRIBE; the future is done when the master confirmed it, or when the
        connection is gone (the channel is then the next connection's, and backfilled)."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        if self.send(command("SSUBSCRIBE", self.prefix + channel)):
            self.pending.append((b"ssubscribe", channel, waiter, backfill))
        else:
            waiter.set_result(None)
        return waiter

    def unsubscribe(self, channel: str) -> None:
        if self.send(command("SUNSUBSCRIBE", self.prefix + channel)):
            self.pending.append((b"sunsubscribe", channel, None, False))

    def release_waiters(self) -> None:
        self.ready = False
        for _, _, waiter, _ in self.pending:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self.pending.clear()

    def on_error_reply(self, error: hiredis.ReplyError) -> bool:
        text = str(error)
        if not (text.startswith("MOVED") and self.pending and self.pending[0][0] == b"ssubscribe"):
            return False
        _, channel, waiter, _ = self.pending.popleft()
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.link.dropped(channel, f"{text} for {channel}")
        return True

    def on_bad_reply(self, error: Exception) -> None:
        log.warning("bad reply on a shard subscription", extra={"error": repr(error)})

    def on_reply(self, reply: object) -> None:
        if isinstance(reply, hiredis.PushNotification):
            kind = reply[0]
            if kind == b"smessage":
                self.link.broker.received(reply[1], reply[2])
            elif kind in (b"ssubscribe", b"sunsubscribe"):
                self._confirmed(kind, reply[1].decode()[len(self.prefix) :])
        elif reply == _READY_MARK:
            self.ready = True
            self.link.broker.resubscribed(list(self.link.channels))

    def _confirmed(self, kind: bytes, channel: str) -> None:
        if self.pending and self.pending[0][:2] == (kind, channel):
            _, _, waiter, backfill = self.pending.popleft()
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if backfill and channel in self.link.channels:
                self.link.broker.resubscribed([channel])
        elif kind == b"sunsubscribe" and channel in self.link.channels:
            # Pushed by the master itself: the slot migrated, or it became a replica.
            self.link.dropped(channel, f"{self.link.node} unsubscribed {channel}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.ready = False
        super().connection_lost(exc)
