"""Waking the outbox relay after commits, from a connection of its own, in rounds.

A transaction that wrote outbox rows names their slots (``events_written``); when its
connection returns to the pool, the slots are handed here and the request goes on at
once. The slots whose leader runs in this process are woken here and then (no round trip
through PostgreSQL). For the others, one NOTIFY transaction at a time carries every slot
handed in since the last one began, so under load many commits share one wake-up (and
PostgreSQL runs one small transaction instead of one per commit), and a pooled connection
never spends a round trip on it. A wake-up is a hint: if one is lost (the connection
broke, or the leader here had just lost its lock), the relay's poll finds the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

import asyncpg

from db.queries.outbox import wake_up_sql

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]
# Wakes the leaders this process runs of the slots given; returns the slots it has none of.
WakeHere = Callable[[set[int]], set[int]]


class RelayWaker:
    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._pending: set[int] = set()
        self._connection: asyncpg.Connection | None = None
        self._sender: asyncio.Task[None] | None = None
        self._closed = False
        self.wake_here: WakeHere | None = None  # set by this process's relay

    def wake(self, slots: Iterable[int]) -> None:
        """Wake the leaders of ``slots`` soon (their rows are committed)."""
        if self._closed:
            return
        if self.wake_here is not None:
            slots = self.wake_here(set(slots))
            if not slots:
                return
        self._pending.update(slots)
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(
                self._send(), name="jangteo-relay-wake-up"
            )

    async def _send(self) -> None:
        try:
            while self._pending:
                slots, self._pending = self._pending, set()
                try:
                    if self._connection is None or self._connection.is_closed():
                        self._connection = await self._connect()
                    await self._connection.execute(wake_up_sql(slots))
                except Exception as error:
                    # The poll finds the rows; a new connection is tried for the next ones.
                    log.warning("relay wake-up failed", extra={"error": repr(error)})
                    self._drop_connection()
                    self._pending.clear()
        finally:
            self._sender = None

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None

    async def close(self) -> None:
        """Stop waking (wake-ups not sent yet are dropped: the pool is closing)."""
        self._closed = True
        sender = self._sender
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), timeout=2)
            self._drop_connection()

    def terminate(self) -> None:
        """Stop at once (the pool is being terminated)."""
        self._closed = True
        if self._sender is not None:
            self._sender.cancel()
        self._drop_connection()
