"""The outbox relay: one leader at a time moves committed outbox rows into the event log.

The leader holds a PostgreSQL advisory lock on a connection of its own; every instance
runs a relay, and the others wait on that lock, so when the leader dies (its connection
closes) another takes over at once. The leader wakes on NOTIFY (sent by a trigger at
commit) or after a slow poll, takes the committed rows that have no position yet, gives
them the next positions with each channel's previous position as ``prev``, commits that
on the lock connection (so a relay that lost its lock cannot assign anything), then
publishes them through the broker in one pipeline.

A row that commits late simply has no position yet when a later one is published, so
it is picked up by a later batch with a larger position: nothing is skipped, and nothing
waits for unrelated open transactions. A leader that dies between committing positions
and publishing them is covered by ``published_through``: the next leader publishes
again everything after it, and instances drop offsets they already delivered.

Leadership follows the ability to publish. Only an instance whose broker is healthy
waits in line for the lock. A leader that has not been able to publish (or to hear
Redis) for ``step_down`` seconds releases the lock as soon as such an instance waits
for it, so an instance cut off from Redis never holds every other instance's events
back. When nobody can publish (Redis itself is down), the lock goes to whoever finds it
free and nobody waiting, and that leader goes on numbering committed rows without
publishing them: instances that cannot hear Redis read the log, so events still flow,
and whoever publishes next republishes the tail. A leader that is paused or cut off from PostgreSQL
loses the lock within ``lock_timeout``: the server ends its session when it stays idle
that long (the leader speaks at least once per poll) or when TCP keepalives or
``tcp_user_timeout`` find the peer gone; the leader's own socket has the same keepalives,
so a follower waiting on a dead server notices too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from db.pool import connect
from db.queries.outbox import NOTIFY_CHANNEL
from realtime.broker import Broker, encode_message
from realtime.frames import event_json
from realtime.metrics import RelayMetrics

log = logging.getLogger(__name__)

LEADER_LOCK_ID = 0x6A746F72  # "jtor"; advisory locks are per database
PRUNE_EVERY_S = 60.0
PRUNE_CHUNK = 5000
RETRY_DELAY_S = 0.5
FLUSH_TIMEOUT_S = 5.0  # at shutdown, the leader's last publish may take this long
_WAITERS = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND classid = 0 AND objid = $1 AND objsubid = 1 AND NOT granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

# One statement (so one round trip and one commit): number the committed rows that have
# no position yet in id order after the leader's last position, chain each to its
# channel's previous position (within the batch, else the channel's head), record all
# that, and return the rows to publish.
_ASSIGN = """
WITH pending AS (
    SELECT id, channel, type, data::text AS data, {commit_time} AS committed_at
    FROM outbox WHERE position IS NULL ORDER BY id LIMIT $1
), numbered AS (
    SELECT pending.*, $2::bigint + row_number() OVER (ORDER BY id) AS position FROM pending
), chained AS (
    SELECT numbered.*,
           coalesce(lag(numbered.position) OVER (PARTITION BY numbered.channel
                                                 ORDER BY numbered.position),
                    heads.position, 0) AS prev
    FROM numbered LEFT JOIN channel_heads heads ON heads.channel = numbered.channel
), assigned AS (
    UPDATE outbox SET position = chained.position, prev = chained.prev,
                      committed_at = chained.committed_at
    FROM chained WHERE outbox.id = chained.id
), new_heads AS (
    INSERT INTO channel_heads (channel, position)
    SELECT channel, max(position) FROM numbered GROUP BY channel
    ON CONFLICT (channel) DO UPDATE SET position = excluded.position
), state AS (
    UPDATE relay_state SET last_position = $2 + (SELECT count(*) FROM pending),
                           published_through = $3
    WHERE EXISTS (SELECT 1 FROM pending)
)
SELECT channel, type, data, committed_at, position, prev FROM chained ORDER BY position
"""
# The writing transaction's commit time needs track_commit_timestamp; without it the
# insert time is the best there is. (Read before the UPDATE above replaces xmin.)
_COMMIT_TIME = "coalesce(pg_xact_commit_timestamp(xmin), created_at)"
_INSERT_TIME = "created_at"
_TAIL = """
SELECT channel, position, prev, type, data::text AS data, committed_at
FROM outbox WHERE position > $1 ORDER BY position LIMIT $2
"""
# Pruning removes a prefix of positions: everything up to the newest position committed
# before the cutoff. Commit times do not follow positions (a row that commits late is
# numbered late), so deleting by time alone could drop an offset and keep an earlier one,
# and a resume at the edge would see a hole instead of resync.
_PRUNE = """
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE position <= (SELECT max(position) FROM outbox
                       WHERE position IS NOT NULL
                         AND committed_at < now() - make_interval(secs => $1))
    ORDER BY position
    LIMIT $2)
"""


class PublishFailed(Exception):
    """The broker did not take a batch (its positions stay committed)."""


@dataclass(frozen=True, slots=True)
class RelaySettings:
    database_url: str
    batch_size: int = 500
    poll_interval: float = 1.0
    retention_seconds: int = 7 * 24 * 3600
    step_down: float = 2.0
    lock_timeout: float = 3.0

    def lock_session_settings(self) -> dict[str, str]:
        """Server-side settings of the lock connection: the session ends, and the lock
        with it, when the leader stays silent or unreachable for ``lock_timeout``."""
        timeout_ms = int(self.lock_timeout * 1000)
        idle, interval, count = _keepalive(self.lock_timeout)
        return {
            "application_name": "jangteo-relay",
            "statement_timeout": "0",  # the lock wait below may last
            "idle_session_timeout": str(timeout_ms),
            "tcp_keepalives_idle": str(idle),
            "tcp_keepalives_interval": str(interval),
            "tcp_keepalives_count": str(count),
            "tcp_user_timeout": str(timeout_ms),
        }


def _keepalive(timeout: float) -> tuple[int, int, int]:
    """Keepalive idle, interval and count (whole seconds) that give up within ``timeout``."""
    interval = max(1, int(timeout // 4))
    return interval, interval, max(1, int(timeout // interval) - 1)


def _set_socket_keepalive(conn: asyncpg.Connection, timeout: float) -> None:
    """The client's side of the same rules, on the lock connection's socket."""
    transport: Any = getattr(conn, "_transport", None)  # asyncpg exposes no socket options
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket has no peer to lose
    idle, interval, count = _keepalive(timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(timeout * 1000))


class OutboxRelay:
    """Run ``run()`` as a task in every instance; at most one of them leads."""

    def __init__(self, settings: RelaySettings, broker: Broker, metrics: RelayMetrics) -> None:
        self.settings = settings
        self.broker = broker
        self.metrics = metrics
        self.is_leader = False
        self.wake = asyncio.Event()
        self.published_through = 0  # everything up to here reached the broker
        self.last_position = 0
        self.stopping = False
        self.connection: asyncpg.Connection | None = None

    async def run(self) -> None:
        """Wait for leadership, lead until the connection fails, and start over."""
        while not self.stopping:
            try:
                await self._serve_once()
            except (
                OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                asyncpg.InternalClientError,  # its server died mid-message: connect again
            ) as error:  # fmt: skip
                log.warning("relay connection failed", extra={"error": repr(error)})
            finally:
                self._set_leader(False)
                await self._close_connection()
            if not self.stopping:
                # One that cannot publish looks for a free lock only now and then.
                healthy = self.broker.healthy
                await asyncio.sleep(RETRY_DELAY_S if healthy else self.settings.step_down)

    async def _someone_waits(self, conn: asyncpg.Connection) -> bool:
        """Whether a relay that can publish waits for the lock (only those wait in line)."""
        waiting = await conn.fetchval(_WAITERS, LEADER_LOCK_ID, timeout=self.settings.lock_timeout)
        return bool(waiting)

    async def _serve_once(self) -> None:
        conn = await connect(self.settings.database_url, self.settings.lock_session_settings(), 10)
        self.connection = conn
        _set_socket_keepalive(conn, self.settings.lock_timeout)
        timeout = self.settings.lock_timeout  # every statement but the wait in line
        if self.broker.healthy:
            # Blocks until the current leader's connection goes away. The session is
            # active meanwhile, so idle_session_timeout does not end it; keepalives apply.
            await conn.execute("SELECT pg_advisory_lock($1)", LEADER_LOCK_ID, timeout=None)
            if self.stopping:
                return
            if not self.broker.healthy and await self._someone_waits(conn):
                return  # lost Redis while waiting: the next in line can publish
        elif not await conn.fetchval(
            "SELECT pg_try_advisory_lock($1)", LEADER_LOCK_ID, timeout=timeout
        ):
            return  # it cannot publish: it never waits in line, it only takes a free lock
        await conn.execute("SET statement_timeout = '30s'", timeout=timeout)
        await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        self._set_leader(True)
        await conn.execute(
            "INSERT INTO relay_state DEFAULT VALUES ON CONFLICT DO NOTHING", timeout=timeout
        )
        state = await conn.fetchrow(
            "SELECT last_position, published_through FROM relay_state", timeout=timeout
        )
        assert state is not None
        self.last_position = state["last_position"]
        self.published_through = state["published_through"]
        commit_ts = await conn.fetchval("SHOW track_commit_timestamp", timeout=timeout) == "on"
        if not commit_ts:
            log.warning(
                "track_commit_timestamp is off: event ts is the writing transaction's start,"
                " which can go backwards along a channel; turn it on in postgresql.conf"
            )
        assign_sql = _ASSIGN.format(commit_time=_COMMIT_TIME if commit_ts else _INSERT_TIME)
        log.info("relay leader", extra={"from_position": self.last_position})
        last_prune = 0.0
        failing_since: float | None = None  # when publishing (or hearing Redis) stopped
        while True:
            self.wake.clear()
            attempt = time.monotonic()
            try:
                await self._publish_tail(conn)
                while await self._relay_batch(conn, assign_sql) == self.settings.batch_size:
                    pass
                failing_since = None if self.broker.healthy else (failing_since or attempt)
            except PublishFailed as error:
                # Positions stay committed; the tail is published again once the broker
                # is back (here or by the next leader). Meanwhile new rows are numbered
                # all the same, for the instances that read them from the log.
                log.warning("relay cannot publish", extra={"error": repr(error)})
                self.metrics.publish_failures.inc()
                failing_since = failing_since or attempt
                if self.stopping:  # cannot publish now: the next leader republishes the tail
                    return
                await self._number_only(conn, assign_sql)
            if self.stopping:  # everything committed so far was published, or cannot be
                return
            if failing_since is not None:
                failing = time.monotonic() - failing_since
                if failing >= self.settings.step_down and await self._someone_waits(conn):
                    log.warning("relay steps down: it cannot publish")
                    self.metrics.step_downs.inc()
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), RETRY_DELAY_S)
                continue
            if time.monotonic() - last_prune > PRUNE_EVERY_S:
                await self._prune(conn)
                last_prune = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.settings.poll_interval)

    def _notified(self, *_: object) -> None:
        self.wake.set()

    async def _relay_batch(self, conn: asyncpg.Connection, assign_sql: str) -> int:
        """Assign positions to one batch of committed rows, then publish it."""
        rows = await conn.fetch(
            assign_sql,
            self.settings.batch_size,
            self.last_position,
            self.published_through,
            timeout=self.settings.lock_timeout,
        )
        if not rows:
            return 0
        messages = [_message(row) for row in rows]
        self.last_position = rows[-1]["position"]
        await self._publish(messages, [row["committed_at"].timestamp() for row in rows])
        self.published_through = self.last_position
        return len(rows)

    async def _number_only(self, conn: asyncpg.Connection, assign_sql: str) -> None:
        """Give committed rows their positions without publishing them (``published_through``
        stays where it is, so they are published with the tail later)."""
        while True:
            rows = await conn.fetch(
                assign_sql,
                self.settings.batch_size,
                self.last_position,
                self.published_through,
                timeout=self.settings.lock_timeout,
            )
            if rows:
                self.last_position = rows[-1]["position"]
            if len(rows) < self.settings.batch_size:
                return

    async def _publish(self, messages: list[tuple[str, bytes]], commit_times: list[float]) -> None:
        await self._send(messages)
        now = time.time()
        for committed in commit_times:
            self.metrics.lag.observe(max(0.0, now - committed))
        self.metrics.published.inc(len(messages))

    async def _publish_tail(self, conn: asyncpg.Connection) -> None:
        """Publish again what may not have reached the broker (after a takeover or failure)."""
        while self.published_through < self.last_position:
            rows = await conn.fetch(
                _TAIL,
                self.published_through,
                self.settings.batch_size,
                timeout=self.settings.lock_timeout,
            )
            if not rows:
                self.published_through = self.last_position
                return
            messages = [_message(row) for row in rows]
            await self._send(messages)
            self.metrics.republished.inc(len(messages))
            self.published_through = rows[-1]["position"]

    async def _send(self, messages: list[tuple[str, bytes]]) -> None:
        try:
            await self.broker.publish(messages)
        except (RedisError, OSError, ConnectionError) as error:
            raise PublishFailed(repr(error)) from error

    async def _prune(self, conn: asyncpg.Connection) -> None:
        while True:
            status = await conn.execute(
                _PRUNE, float(self.settings.retention_seconds), PRUNE_CHUNK, timeout=30
            )
            deleted = int(status.split()[-1])
            self.metrics.pruned.inc(deleted)
            if deleted < PRUNE_CHUNK:
                return

    def _set_leader(self, leader: bool) -> None:
        self.is_leader = leader
        self.metrics.leader.set(1 if leader else 0)

    async def _close_connection(self) -> None:
        conn, self.connection = self.connection, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
            if not conn.is_closed():
                conn.terminate()

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Publish what committed so far, then give leadership away (close the connection)."""
        self.stopping = True
        self.wake.set()
        if self.is_leader:  # a follower only waits on the lock: nothing to finish
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), FLUSH_TIMEOUT_S)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_connection()


def _message(row: asyncpg.Record) -> tuple[str, bytes]:
    """A published event as it travels through the broker."""
    ts = int(row["committed_at"].timestamp() * 1000)
    position, prev = row["position"], row["prev"]
    frame = event_json(row["channel"], position, prev, ts, row["type"], row["data"])
    return row["channel"], encode_message(position, prev, frame)
