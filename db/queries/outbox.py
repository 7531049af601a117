"""The transactional outbox: events written in the same transaction as the change."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from db.types import Connection

log = logging.getLogger(__name__)

# Internal channel: session revocations, which every instance follows to close sockets.
SESSIONS_CHANNEL = "sessions"
NOTIFY_CHANNEL = "jangteo_outbox"

# Server pids of pooled connections that wrote events in their current transaction; the
# pool wakes the relay when they are released, after the commit (see db/pool.py).
_notify_on_release: set[int] = set()


@dataclass(frozen=True, slots=True)
class Event:
    channel: str
    type: str
    data: dict[str, Any]


async def insert_events(conn: Connection, events: Sequence[Event]) -> None:
    """Append events; call inside the transaction that makes the change."""
    _notify_on_release.add(conn.get_server_pid())
    await conn.executemany(
        "INSERT INTO outbox (channel, type, data) VALUES ($1, $2, $3)",
        [(event.channel, event.type, event.data) for event in events],
    )


async def notify_if_events_written(conn: asyncpg.Connection) -> None:
    """Wake the relay if ``conn`` wrote events; called as it returns to the pool.

    Committed asynchronously: the wake-up needs no durability, so it waits for no flush.
    """
    pid = conn.get_server_pid()
    if pid in _notify_on_release:
        _notify_on_release.discard(pid)
        try:
            await conn.execute(
                f"SET LOCAL synchronous_commit = off; SELECT pg_notify('{NOTIFY_CHANNEL}', '')"
            )
        except Exception as error:
            # Best effort, whatever went wrong: raising here would replace the request's
            # own outcome (a 200 for a committed change, or the error of a failed commit)
            # with this one. The relay's poll finds the rows; the connection is dropped.
            log.warning("relay wake-up failed after commit", extra={"error": repr(error)})
            conn.terminate()
