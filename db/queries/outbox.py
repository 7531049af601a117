"""The transactional outbox: events written in the same transaction as the change."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from db.trace_context import current_traceparent
from db.types import Connection

log = logging.getLogger(__name__)

# Internal channel: session revocations, which every instance follows to close sockets.
SESSIONS_CHANNEL = "sessions"
# A channel's events belong to one of SLOTS slots, a stable hash of its name
# (relay_slot() in SQL, the outbox's slot column); the relay is woken per slot.
SLOTS = 64
NOTIFY_PREFIX = "jangteo_outbox_"

# Per server pid of a pooled connection that wrote events in its current transaction,
# the slots written to; the pool wakes their relay leaders when it is released, after
# the commit (see db/pool.py and db/wake_up.py).
_notify_on_release: dict[int, set[int]] = {}


def channel_slot(channel: str) -> int:
    """The channel's slot: the same as relay_slot() in the database."""
    return int(hashlib.md5(channel.encode(), usedforsecurity=False).hexdigest()[:15], 16) % SLOTS


def notify_channel(slot: int) -> str:
    return f"{NOTIFY_PREFIX}{slot}"


@dataclass(frozen=True, slots=True)
class Event:
    channel: str
    type: str
    data: dict[str, Any]


def events_written(conn: Connection, channels: Iterable[str]) -> None:
    """Say that ``conn`` wrote events on ``channels`` (in SQL of its own): their relay
    leaders are woken when it returns to the pool, after the commit."""
    slots = _notify_on_release.setdefault(conn.get_server_pid(), set())
    slots.update(channel_slot(channel) for channel in channels)


async def insert_events(conn: Connection, events: Sequence[Event]) -> None:
    """Append events; call inside the transaction that makes the change."""
    events_written(conn, (event.channel for event in events))
    trace = current_traceparent()
    if trace is None:
        await conn.executemany(
            "INSERT INTO outbox (channel, type, data) VALUES ($1, $2, $3)",
            [(event.channel, event.type, event.data) for event in events],
        )
        return
    # Traced: each row names the request's span, for the relay and deliveries to link to.
    await conn.executemany(
        "INSERT INTO outbox (channel, type, data, trace_context) VALUES ($1, $2, $3, $4)",
        [(event.channel, event.type, event.data, trace) for event in events],
    )


def take_events_written(conn: Connection) -> set[int] | None:
    """The slots ``conn`` wrote events to since it was last asked, if any."""
    return _notify_on_release.pop(conn.get_server_pid(), None)


async def notify_if_events_written(conn: Connection) -> None:
    """Wake the relay if ``conn`` wrote events, from ``conn`` itself (after its commit).

    Committed asynchronously: the wake-up needs no durability, so it waits for no flush.
    """
    slots = take_events_written(conn)
    if slots:
        try:
            await conn.execute(wake_up_sql(slots))
        except Exception as error:
            # Best effort, whatever went wrong: raising here would replace the caller's
            # own outcome with this one. The relay's poll finds the rows.
            log.warning("relay wake-up failed after commit", extra={"error": repr(error)})
            conn.terminate()


def wake_up_sql(slots: Iterable[int]) -> str:
    """Wake the leaders of ``slots``, committed asynchronously (a hint needs no flush)."""
    notify = "; ".join(f"NOTIFY {notify_channel(slot)}" for slot in sorted(slots))
    return f"SET LOCAL synchronous_commit = off; {notify}"
