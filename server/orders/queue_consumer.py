"""The queue strategy's consumers: one per partition of the purchase log at a time.

Every instance runs a candidate for every partition; the one holding the partition's
advisory lock (on a lock session of its own, which ends when its holder stays silent for
``LOCK_TIMEOUT_S``) is its consumer, and when it dies a candidate asking for the free
lock takes over (``take_when_free``: within a tenth of a second). A new consumer first
claims what its predecessor read but did not acknowledge (``XAUTOCLAIM``), then reads new
entries (``XREADGROUP``), and applies each batch in one transaction on its lock session:
a consumer that lost its lock cannot apply anything. Entries are acknowledged and
deleted after the commit; the partition's last applied entry, recorded in the same
commit, makes a successor skip what was applied but not yet acknowledged, so nothing is
applied twice and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from db.lock_session import lock_session_settings, set_socket_keepalive, take_when_free
from db.pool import connect
from server.idempotency import KEY_TTL
from server.orders.queue import QueueSettings

log = logging.getLogger(__name__)

QUEUE_LOCK_CLASS = 0x6A747175  # "jtqu": (class, partition) is a partition's consumer
GROUP = "jangteo"
LOCK_TIMEOUT_S = 3.0
BLOCK_MS = 1000  # one read waits this long for entries, then the lock session speaks
RETRY_S = 0.5
Entry = tuple[Any, dict[Any, Any]]


class QueueConsumers:
    def __init__(self, settings: QueueSettings, redis: aioredis.Redis, instance: str) -> None:
        self.settings = settings
        self.redis = redis
        self.instance = instance
        self.consuming: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._candidate(partition), name=f"jangteo-queue-{partition}")
            for partition in range(self.settings.partitions)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _candidate(self, partition: int) -> None:
        while True:
            try:
                await self._consume_when_free(partition)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    RedisError) as error:  # fmt: skip
                log.warning(
                    "purchase queue consumer failed",
                    extra={"partition": partition, "error": repr(error)},
                )
            except Exception:  # a candidate never dies: it logs and tries again
                log.exception("purchase queue consumer failed", extra={"partition": partition})
            finally:
                self.consuming.discard(partition)
            await asyncio.sleep(RETRY_S)

    async def _consume_when_free(self, partition: int) -> None:
        conn = await connect(
            self.settings.database_url,
            lock_session_settings(f"jangteo-queue:{self.instance}", LOCK_TIMEOUT_S),
            LOCK_TIMEOUT_S,
        )
        try:
            set_socket_keepalive(conn, LOCK_TIMEOUT_S)
            lock = (QUEUE_LOCK_CLASS, partition)
            if not await take_when_free(conn, lock, keep_waiting=lambda: True):
                return
            await conn.execute("SET statement_timeout = '30s'")
            self.consuming.add(partition)
            stream = self.settings.stream(partition)
            await self._ensure_group(stream)
            await self._claim_left_over(conn, partition, stream)
            # The next batch is read while this one is applied: the log's order holds, as
            # entries read but not applied stay pending for a successor, in order.
            reading = asyncio.create_task(self._read(stream))
            try:
                while True:
                    entries = await reading
                    reading = asyncio.create_task(self._read(stream))
                    if entries:
                        await self._apply(conn, partition, stream, entries)
                    else:
                        await conn.execute("SELECT 1")  # within the lock session's idle timeout
            finally:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                    await reading
        finally:
            conn.terminate()

    async def _read(self, stream: str) -> list[Entry]:
        read: Any = await self.redis.xreadgroup(
            GROUP, self.instance, {stream: ">"}, count=self.settings.batch, block=BLOCK_MS
        )
        return read[0][1] if read else []  # [[stream, entries]] (RESP2)

    async def _ensure_group(self, stream: str) -> None:
        try:
            if isinstance(self.redis, RedisCluster):  # it cannot tell XGROUP's key itself
                await self.redis.execute_command(
                    "XGROUP CREATE", stream, GROUP, "0", "MKSTREAM",
                    target_nodes=self.redis.get_node_from_key(stream),
                )  # fmt: skip
            else:
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _claim_left_over(self, conn: asyncpg.Connection, partition: int, stream: str) -> None:
        """Apply what a predecessor read and did not acknowledge, in log order."""
        start: Any = "0-0"
        while True:
            answer: Any = await self.redis.xautoclaim(
                stream, GROUP, self.instance, min_idle_time=0, start_id=start,
                count=self.settings.batch,
            )  # fmt: skip
            start, entries = answer[0], answer[1]
            if entries:
                await self._apply(conn, partition, stream, entries)
            if _text(start) == "0-0":
                return

    async def _apply(
        self, conn: asyncpg.Connection, partition: int, stream: str, entries: Sequence[Entry]
    ) -> None:
        batch = [
            {"entry": _text(entry_id), **{_text(k): _text(v) for k, v in fields.items()}}
            for entry_id, fields in entries
            if fields  # an entry deleted meanwhile has no fields
        ]
        if batch:
            await conn.fetchval(
                "SELECT purchase_queue_apply($1, $2::jsonb, $3)",
                partition,
                orjson.dumps(batch).decode(),
                KEY_TTL,
            )
        ids = [entry_id for entry_id, _ in entries]
        async with self.redis.pipeline(transaction=False) as pipe:  # one round trip
            pipe.xack(stream, GROUP, *ids)
            pipe.xdel(stream, *ids)
            await pipe.execute()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
