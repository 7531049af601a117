"""Near-cache invalidation over Redis pub/sub, confirmed by every process before a write answers.

A writer publishes ``<ack key> <base> <base>...`` on its database's channel
(``channel_name``; pub/sub is shared by every database of a Redis server) and waits until
each subscriber that Redis delivered it to has pushed its client id onto the ack key
(``wait_for_acks``). Each process hears the message on a raw asyncio protocol; its
``data_received`` drops the entries and sends the ack in the same call, in the event
loop's I/O phase, so once the writer has every ack no process can still serve the old
copy, and a client reads its own write on every instance.

A process that does not confirm in time (stalled, or behind a slow link) is covered by
a lease: a process serves its near cache only until ``LEASE_S`` after it *sent* the last
PING that Redis answered, and it pings every ``PING_INTERVAL_S``. Replies on one
connection arrive in order, so a PING answered after the invalidation was published
reaches the process after the invalidation itself. A writer missing an ack therefore
waits until ``LEASE_S`` after Redis answered its PUBLISH: by then every lease granted
before the invalidation has run out. It also disconnects the silent subscribers (CLIENT
KILL) so that the next writes do not wait for them again.

The subscription is a ``rediswire`` one (RESP3: a subscribed connection may also send
ordinary commands), so the ack leaves on the same socket without a task switch; its
watchdog pings are the lease pings.

On a Redis Cluster the channel and the ack keys share one hash tag (``shard_tag``), and
everything happens on the master of that slot: the writer SPUBLISHes there (so the
answer counts every subscriber, which a cluster's PUBLISH would not: it counts only the
node it reached), the subscribers SSUBSCRIBE there and push their acks onto keys of that
same slot from the same socket. After a failover the subscription looks the master up
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from rediswire.codec import command, node_url, redis_database
from rediswire.slots import read_slot_map
from rediswire.subscription import Subscription, stay_subscribed
from server.listings.near_cache import NearCache

log = logging.getLogger(__name__)

CHANNEL_SUFFIX = "cache-invalidate"
SUBSCRIBER_NAME = "jangteo-near-cache"  # CLIENT SETNAME of every subscription connection
ACK_KEY_TTL_MS = 10_000  # a late ack, after the writer gave up, is not kept for long
LEASE_S = 1.0
PING_INTERVAL_S = 0.25  # several pings per lease, so a busy moment does not end it
SILENCE_LIMIT_S = 3.0  # no answer to our pings for this long: treat Redis as gone
RECONNECT_DELAY_S = 0.5
MIN_BLOCK_S = 0.01  # Redis reads a shorter BLPOP timeout as 0, which blocks forever
_LEASE_PREFIX = b"lease:"


def shard_tag(deployment: str) -> str:
    """The hash tag of the channel and the ack keys: one slot of a cluster holds them all."""
    return f"{{{deployment}:near-cache}}"


def channel_name(database: str, deployment: str = "jangteo") -> str:
    """Pub/sub ignores databases, and two deployments may share one Redis: both name it."""
    return f"{shard_tag(deployment)}:{CHANNEL_SUFFIX}:{database}"


def new_ack_key(deployment: str = "jangteo") -> str:
    return f"{shard_tag(deployment)}:ack:{secrets.token_hex(8)}"


async def publish_invalidation(
    redis: aioredis.Redis, channel: str, message: str, *, sharded: bool
) -> int:
    """Publish; how many subscribers Redis delivered it to."""
    if sharded:
        return int(await redis.execute_command("SPUBLISH", channel, message))  # type: ignore[no-untyped-call]
    return int(await redis.publish(channel, message))


class _Subscription(Subscription):
    client_name = SUBSCRIBER_NAME

    def __init__(self, near: NearCache, redis_url: str, deployment: str, sharded: bool) -> None:
        super().__init__(redis_url)
        self.near = near
        self.deployment = deployment
        self.sharded = sharded
        self.database = redis_database(redis_url)  # acks go to the writers' database
        self.client_id: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.near.bind(self.transport.is_closing)

    def opening(self) -> list[bytes]:
        return [
            command("CLIENT", "ID"),
            command(
                "SSUBSCRIBE" if self.sharded else "SUBSCRIBE",
                channel_name(self.database, self.deployment),
            ),
            self.ping(),
        ]

    def ping(self) -> bytes:
        """A lease ping: Redis echoes when it was sent, and the answer renews the lease."""
        return command("PING", _LEASE_PREFIX + repr(time.monotonic()).encode())

    def on_bad_reply(self, error: Exception) -> None:
        # Not a message jangteo sends: fail safe, the near cache goes off until the
        # subscription is back.
        log.warning("bad cache invalidation message", extra={"error": repr(error)})
        self.near.reset(enabled=False)

    def on_reply(self, reply: object) -> None:
        if isinstance(reply, hiredis.PushNotification):
            if reply[0] in (b"subscribe", b"ssubscribe"):
                self.near.reset(enabled=True)
            elif reply[0] in (b"message", b"smessage"):
                self._apply(reply[2])
            elif reply[0] == b"sunsubscribe":
                # The slot moved to another master: subscribe there (reconnecting finds it).
                self.near.reset(enabled=False)
                assert self.transport is not None
                self.transport.close()
        elif isinstance(reply, bytes) and reply.startswith(_LEASE_PREFIX):
            self.near.renew(float(reply[len(_LEASE_PREFIX) :]) + LEASE_S)
        elif isinstance(reply, int) and self.client_id is None:
            self.client_id = b"%d" % reply  # the answer to CLIENT ID

    def _apply(self, message: bytes) -> None:
        assert self.client_id is not None
        ack_key, *bases = message.decode().split()
        self.near.invalidate(bases)
        self.send(
            command("RPUSH", ack_key, self.client_id)
            + command("PEXPIRE", ack_key, str(ACK_KEY_TTL_MS))
        )

    def eof_received(self) -> None:
        # Called in the I/O phase, unlike connection_lost (scheduled for later).
        self.near.reset(enabled=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.near.reset(enabled=False)
        super().connection_lost(exc)


async def listen_for_invalidations(
    redis_url: str,
    near: NearCache,
    deployment: str = "jangteo",
    cluster: aioredis.Redis | None = None,
) -> None:
    """Stay subscribed for as long as the task runs, reconnecting after any failure.

    With ``cluster`` (the app's cluster client) it subscribes on the master of the
    channel's slot, looked up again before every connection.
    """
    channel = channel_name(redis_database(redis_url), deployment)

    async def master_of_channel() -> str:
        assert cluster is not None
        owner = (await read_slot_map(cluster)).owner(channel)
        if owner is None:
            raise OSError(f"no master serves the slot of {channel}")
        host, _, port = owner.rpartition(":")
        return node_url(redis_url, host, int(port))

    await stay_subscribed(
        redis_url,
        lambda: _Subscription(near, redis_url, deployment, sharded=cluster is not None),
        locate=master_of_channel if cluster is not None else None,
        name=SUBSCRIBER_NAME,
        interval=PING_INTERVAL_S,
        silence_limit=SILENCE_LIMIT_S,
        reconnect_delay=RECONNECT_DELAY_S,
    )


async def wait_for_acks(
    redis: aioredis.Redis,
    database: str,
    ack_key: str,
    receivers: int,
    timeout_s: float,
    *,
    sharded: bool = False,
) -> int:
    """Wait until ``receivers`` subscribers confirmed; if some did not, make it safe.

    Returns how many subscribers did not confirm (0 when everybody answered in time).
    Those of ``database`` that are jangteo processes are disconnected, and the call
    returns only once no lease granted before the invalidation can still be running.
    """
    loop = asyncio.get_running_loop()
    published = loop.time()
    deadline = published + timeout_s
    acked: set[str] = set()
    while len(acked) < receivers:
        remaining = deadline - loop.time()
        if remaining < MIN_BLOCK_S:
            await _disconnect_all_but(redis, database, acked, ack_key if sharded else None)
            await asyncio.sleep(max(0.0, published + LEASE_S - loop.time()))
            return receivers - len(acked)
        popped = await redis.blpop([ack_key], timeout=remaining)
        if popped is not None:
            client_id = popped[1]
            acked.add(client_id.decode() if isinstance(client_id, bytes) else client_id)
    return 0


async def _disconnect_all_but(
    redis: aioredis.Redis, database: str, acked: set[str], shard_key: str | None
) -> None:
    # On a cluster the subscribers are connected to the master of the shard's slot, and
    # client ids are per node: both commands go there.
    on_node: dict[str, Any] = {}
    if shard_key is not None:
        on_node["target_nodes"] = cast(RedisCluster, redis).get_node_from_key(shard_key)
    silent = [
        client["id"]
        for client in await redis.client_list(_type="pubsub", **on_node)
        if client.get("name") == SUBSCRIBER_NAME
        and client.get("db") == database  # each subscriber selects its database
        and client["id"] not in acked
    ]
    for client_id in silent:
        await redis.execute_command("CLIENT KILL", "ID", client_id, **on_node)  # type: ignore[no-untyped-call]
    log.warning("near cache subscribers did not confirm; disconnected", extra={"ids": silent})


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
