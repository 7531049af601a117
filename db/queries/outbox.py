"""The transactional outbox: events written in the same transaction as the change."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from db.types import Connection

# Internal channel: session revocations, which every instance follows to close sockets.
SESSIONS_CHANNEL = "sessions"


@dataclass(frozen=True, slots=True)
class Event:
    channel: str
    type: str
    data: dict[str, Any]


async def insert_events(conn: Connection, events: Sequence[Event]) -> None:
    """Append events; call inside the transaction that makes the change."""
    await conn.executemany(
        "INSERT INTO outbox (channel, type, data) VALUES ($1, $2, $3)",
        [(event.channel, event.type, event.data) for event in events],
    )
