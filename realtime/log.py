"""Reading the published event log back from PostgreSQL: heads, gap fills and replays."""

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

    async def replay(self, channel: str, since: int, upto: int, limit: int) -> list[Delivery]:
        """Every event of ``channel`` in (``since``, ``upto``], or ResyncNeeded."""


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

    async def replay(self, channel: str, since: int, upto: int, limit: int) -> list[Delivery]:
        if since >= upto:
            last = await self.pool.fetchval("SELECT relay_last_position()")
            if since > (last or 0):
                raise ResyncNeeded(f"offset {since} is ahead of every published event")
            return []
        events = await self._events(channel, since, upto, limit + 1)
        # The first event after `since` must name `since` or an older one as its
        # predecessor; otherwise events between them were pruned.
        if not events or events[0].prev > since:
            raise ResyncNeeded(f"events after offset {since} are past the retention window")
        if len(events) > limit:
            raise ResyncNeeded(f"more than {limit} events after offset {since}")
        return events

    async def _events(self, channel: str, after: int, upto: int, limit: int) -> list[Delivery]:
        rows = await self.pool.fetch(_EVENTS, channel, after, upto, limit)
        return [
            Delivery.from_row(
                channel, row["position"], row["prev"], row["ts"], row["type"], row["data"]
            )
            for row in rows
        ]
