"""Reading the published event log back from PostgreSQL: heads, gap fills and resumes."""

from __future__ import annotations

from typing import Protocol

import asyncpg

from realtime.event import Delivery


class ResyncNeeded(Exception):
    """The events after the client's offset are no longer (or never were) in the log."""


class EventLog(Protocol):
    async def head(self, channel: str) -> int:
        """The channel's newest offset, 0 when it has none."""

    async def channel_heads(self, channels: list[str]) -> dict[str, int]:
        """The newest offset of each of ``channels`` that has one."""

    async def after(self, channel: str, after: int, limit: int) -> list[Delivery]:
        """Up to ``limit`` published events of ``channel`` with offset > ``after``, in order."""

    async def read_back(
        self, channel: str, since: int, upto: int, keep: int, limit: int
    ) -> list[Delivery]:
        """The events of ``channel`` in (``since``, ``upto``] and, if they are fewer, its
        newest ``keep`` events up to ``upto``, in order; at most ``limit`` (the oldest)."""

    async def last_published(self) -> int:
        """The newest offset the relay has assigned, on any channel."""


# `ts` truncated to the millisecond like the relay's live frames (a bare cast would round).
_EVENTS = """
SELECT position, prev, floor(extract(epoch FROM committed_at) * 1000)::bigint AS ts, type,
       data::text AS data
FROM outbox
WHERE channel = $1 AND position > $2 AND position <= $3
ORDER BY position
LIMIT $4
"""
_MAX_POSITION = 2**63 - 1
# From `since` or from the (keep+1)-th newest event, whichever is older: one read answers a
# resume and fills the feed's recent events (both index scans on (channel, position)).
_READ_BACK = """
SELECT position, prev, floor(extract(epoch FROM committed_at) * 1000)::bigint AS ts, type,
       data::text AS data
FROM outbox
WHERE channel = $1 AND position <= $3
  AND position > LEAST($2, COALESCE((
      SELECT position FROM outbox
      WHERE channel = $1 AND position <= $3
      ORDER BY position DESC OFFSET $4 LIMIT 1), 0))
ORDER BY position
LIMIT $5
"""


class PostgresEventLog:
    """Reads through the app's pool (a few queries per resume or detected gap)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def head(self, channel: str) -> int:
        position = await self.pool.fetchval(
            "SELECT position FROM channel_heads WHERE channel = $1", channel
        )
        return int(position or 0)

    async def channel_heads(self, channels: list[str]) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT channel, position FROM channel_heads WHERE channel = ANY($1::text[])",
            channels,
        )
        return {row["channel"]: row["position"] for row in rows}

    async def after(self, channel: str, after: int, limit: int) -> list[Delivery]:
        return await self._events(channel, after, _MAX_POSITION, limit)

    async def read_back(
        self, channel: str, since: int, upto: int, keep: int, limit: int
    ) -> list[Delivery]:
        rows = await self.pool.fetch(_READ_BACK, channel, since, upto, keep, limit)
        return [_delivery(channel, row) for row in rows]

    async def last_published(self) -> int:
        return int(await self.pool.fetchval("SELECT relay_last_position()") or 0)

    async def _events(self, channel: str, after: int, upto: int, limit: int) -> list[Delivery]:
        rows = await self.pool.fetch(_EVENTS, channel, after, upto, limit)
        return [_delivery(channel, row) for row in rows]


def _delivery(channel: str, row: asyncpg.Record) -> Delivery:
    return Delivery.from_row(
        channel, row["position"], row["prev"], row["ts"], row["type"], row["data"]
    )
