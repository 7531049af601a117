"""Relays on the test database for the relay tests: each publishes to a bus of its own,
so a test can tell which relay published what."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import pytest
from prometheus_client import CollectorRegistry

from db.queries.relay import RELAY_LINE_CLASS
from realtime.broker import decode_message
from realtime.broker_memory import MemoryBroker, MemoryBus
from realtime.metrics import RelayMetrics
from realtime.relay import OutboxRelay, RelaySettings

TIMEOUT = 30.0
POLL = 60.0  # the fallback poll never fires within a test: publishing follows NOTIFY


async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.005)


async def until_async(predicate: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.01)


@dataclass(frozen=True)
class Sent:
    """One message a relay published."""

    channel: str
    offset: int
    prev: int
    event: dict[str, Any]
    payload: bytes

    @property
    def n(self) -> int:
        value = self.event["data"]["n"]
        assert isinstance(value, int)
        return value


def sent(bus: MemoryBus) -> list[Sent]:
    messages = []
    for channel, payload in bus.published:
        offset, prev, event_json = decode_message(payload)
        event = orjson.loads(event_json)
        assert (event["op"], event["channel"], event["offset"], event["prev"]) == (
            "event",
            channel,
            offset,
            prev,
        )
        messages.append(Sent(channel, offset, prev, event, payload))
    return messages


@dataclass
class Running:
    relay: OutboxRelay
    task: asyncio.Task[None]
    bus: MemoryBus
    broker: MemoryBroker
    registry: CollectorRegistry
    stopped: bool = False

    def metric(self, name: str) -> float:
        """A metric's value, summed over its labels (partitions, for the leader gauge)."""
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name
        )

    @property
    def sent(self) -> list[Sent]:
        return sent(self.bus)

    def published_ns(self) -> set[int]:
        return {message.n for message in self.sent}


@dataclass
class Relays:
    database_url: str
    running: list[Running] = field(default_factory=list)

    def start(self, **settings: Any) -> Running:
        bus = MemoryBus()
        broker = bus.client()
        registry = CollectorRegistry()
        relay = OutboxRelay(
            RelaySettings(self.database_url, **{"poll_interval": POLL, **settings}),
            broker,
            RelayMetrics(registry),
        )
        task = asyncio.create_task(relay.run())
        running = Running(relay, task, bus, broker, registry)
        self.running.append(running)
        return running

    async def stop(self, running: Running) -> None:
        """Stop; the relay must end by itself (FLUSH_TIMEOUT_S is out of reach in tests)."""
        running.stopped = True
        expired = True
        try:
            async with asyncio.timeout(TIMEOUT) as deadline:
                await running.relay.stop(running.task)
            expired = deadline.expired()  # stop() may swallow the cancellation
        except TimeoutError:
            pass
        if expired:
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running.task
            pytest.fail("the relay did not stop by itself")
        assert running.task.done()

    async def close(self) -> None:
        for running in self.running:
            if not running.stopped:
                await self.stop(running)


async def insert(conn: asyncpg.Connection, channel: str, n: int) -> int:
    row_id = await conn.fetchval(
        "INSERT INTO outbox (channel, type, data) VALUES ($1, $2, $3::jsonb) RETURNING id",
        channel,
        "listing.updated",
        orjson.dumps({"n": n, "text": "é"}).decode(),
    )
    assert isinstance(row_id, int)
    return row_id


async def insert_many(conn: asyncpg.Connection, rows: list[tuple[str, int]]) -> None:
    async with conn.transaction():
        for channel, n in rows:
            await insert(conn, channel, n)


async def outbox(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, channel, position, prev, committed_at, created_at, data->>'n' AS n "
        "FROM outbox ORDER BY id"
    )


def check_chain(messages: list[Sent]) -> None:
    """Offsets strictly increase in publish order; prev is the channel's previous offset."""
    offsets = [m.offset for m in messages]
    assert offsets == sorted(set(offsets)), offsets
    last: dict[str, int] = {}
    for message in messages:
        assert message.prev == last.get(message.channel, 0), message
        last[message.channel] = message.offset


async def relays_in_line(db: asyncpg.Connection) -> int:
    """Relays of this database waiting in line for a partition lock (their shared marker)."""
    count = await db.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ShareLock'"
        " AND d.datname = current_database() AND l.classid = $1 AND l.objsubid = 2",
        RELAY_LINE_CLASS,
    )
    assert isinstance(count, int)
    return count
