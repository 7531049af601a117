"""The outbox relay: committed outbox rows become published events, in partitions.

Every channel belongs to one of 64 slots (a stable hash of its name, the outbox's ``slot``
column) and so to one of ``relay_config.partitions`` partitions (slot modulo the count,
``relay_partition()`` in SQL), and each partition has one leader at a time: the
relay holding that partition's PostgreSQL advisory lock on a connection of its own. Every
instance runs an ``OutboxRelay``; it keeps one ``PartitionLeader`` per partition, each
leading or waiting in line for its lock, so when a leader dies (its connection closes)
another instance takes that partition over within a tenth of a second (one in line asks
for the lock; it never waits inside PostgreSQL: see ``take_when_free``). Leadership
spreads: an instance that leads more than its share (partitions / instances with a relay,
rounded up) hands its highest partition to an instance waiting for it, one at a time.

A partition's leader wakes on NOTIFY for one of its slots (sent after commit; each
instance hears them on one session of its own, the one that follows the configuration,
and wakes its leaders) or after a slow poll, takes the partition's committed rows that
have no position yet, gives them positions drawn from one sequence shared by all
partitions (so offsets are unique and increase along each channel, and offsets clients
hold stay valid whatever the count) with each channel's previous position as ``prev``,
commits that on the lock connection (so a relay that lost its lock cannot assign
anything), then publishes them through the broker in one pipeline.

A row that commits late simply has no position yet when a later one is published, so it
is picked up by a later batch with a larger position: nothing is skipped, and nothing
waits for unrelated open transactions. A leader that dies between committing positions
and publishing them is covered by the partition's ``published_through``: the next leader
publishes again everything of the partition after it, and instances drop offsets they
already delivered.

Changing the partition count (``jangteo relay partitions N``) moves the configuration's
generation on. Each batch checks, in the same statement, that its generation is still the
current one (``FOR SHARE``, which the change waits for), so no batch of the old count runs
after the change; every relay then drops its old leaders and starts new ones, and each new
partition publishes again from the lowest ``published_through`` of the old ones: nothing
is lost, and what is published twice is dropped by offset.

Leadership follows the ability to publish. Only an instance whose broker is healthy waits
in line for a lock. A leader that has not been able to publish (or to hear Redis) for
``step_down`` seconds releases its lock as soon as such an instance waits for it, so an
instance cut off from Redis never holds other instances' events back. When nobody can
publish (Redis itself is down), a lock goes to whoever finds it free and nobody waiting,
and that leader goes on numbering committed rows without publishing them: instances that
cannot hear Redis read the log, so events still flow, and whoever publishes next
republishes the tail. A leader that is paused or cut off from PostgreSQL loses its lock
within ``lock_timeout``: the server ends its session when it stays idle that long (the
leader speaks at least once per poll) or when TCP keepalives or ``tcp_user_timeout`` find
the peer gone; the leader's own socket has the same keepalives, so a follower waiting on a
dead server notices too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import asyncpg
from opentelemetry import trace
from redis.exceptions import RedisError

from db.lock_session import (
    lock_session_settings,
    set_socket_keepalive,
    take_when_free,
    waiting_in_line,
)
from db.pool import connect
from db.queries import relay as queries
from db.queries.outbox import NOTIFY_PREFIX, SLOTS, notify_channel
from db.queries.relay import RelayConfig, partition_slots, read_config, slot_partition
from realtime.broker import Broker, encode_message, encode_traced
from realtime.frames import event_json
from realtime.metrics import RelayMetrics
from realtime.tracing import EventTracing

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 60.0
PRUNE_CHUNK = 5000
RETRY_DELAY_S = 0.5
FLUSH_TIMEOUT_S = 5.0  # at shutdown, a leader's last publish may take this long
HAND_OVER_EVERY_S = 2.0  # an instance over its share gives away one partition this often
CAUGHT_UP_EVERY_S = 1.0  # a leader records that it is caught up at most this often
_CONNECTION_ERRORS = (
    OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # its server died mid-message: connect again
)  # fmt: skip


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

    def lock_session_settings(self, instance: str = "") -> dict[str, str]:
        """A lock connection ends, and the lock with it, when the leader stays silent or
        unreachable for ``lock_timeout``; its name says which instance's relay it is (to
        count instances)."""
        return lock_session_settings(f"jangteo-relay:{instance}", self.lock_timeout)


class OutboxRelay:
    """Run ``run()`` as a task in every instance: it leads the partitions that come to it."""

    def __init__(
        self,
        settings: RelaySettings,
        broker: Broker,
        metrics: RelayMetrics,
        instance: str | None = None,
        tracing: EventTracing | None = None,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.metrics = metrics
        self.instance = instance or uuid.uuid4().hex[:12]
        self.tracing = tracing  # None: tracing is off, and messages carry no trace context
        self.config: RelayConfig | None = None
        self.leaders: dict[int, PartitionLeader] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.instances = 1  # with a relay on this database, for the share of partitions
        self.last_hand_over = 0.0
        self.config_changed = asyncio.Event()
        self.stopping = False

    @property
    def leading(self) -> list[int]:
        """The partitions this instance leads now."""
        return sorted(k for k, leader in self.leaders.items() if leader.is_leader)

    @property
    def is_leader(self) -> bool:
        return bool(self.leading)

    async def run(self) -> None:
        """Follow the configuration (on NOTIFY, and every poll) and run its partitions."""
        try:
            while not self.stopping:
                try:
                    await self._follow_config()
                except _CONNECTION_ERRORS as error:
                    log.warning("relay cannot read its configuration", extra={"error": repr(error)})
                if not self.stopping:
                    await asyncio.sleep(RETRY_DELAY_S)
        finally:
            await self._stop_leaders()

    async def _follow_config(self) -> None:
        name = {"application_name": f"jangteo-relay:{self.instance}"}
        conn = await connect(self.settings.database_url, name, 10)
        # It wakes the leaders: a session that silently died must be noticed (its reads
        # time out, its socket has the lock sessions' keepalives) and opened again.
        set_socket_keepalive(conn, self.settings.lock_timeout)
        try:
            await conn.add_listener(queries.CONFIG_NOTIFY_CHANNEL, self._config_notified)
            # The leaders' wake-ups too: PostgreSQL signals every listening session of the
            # database at each NOTIFY, whatever its channel, so a LISTEN per leader would
            # multiply the sessions woken per commit by the partitions.
            for slot in range(SLOTS):
                await conn.add_listener(notify_channel(slot), self._slot_notified)
            while not self.stopping:
                self.config_changed.clear()
                timeout = self.settings.lock_timeout
                config = await read_config(conn, timeout)
                self.instances = max(
                    1, await conn.fetchval(queries.RELAY_INSTANCES, timeout=timeout)
                )
                if config != self.config:
                    await self._switch(config)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.config_changed.wait(), self.settings.poll_interval)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
            if not conn.is_closed():
                conn.terminate()

    def _config_notified(self, *_: object) -> None:
        self.config_changed.set()

    def _slot_notified(self, _conn: object, _pid: int, channel: str, _payload: object) -> None:
        self.wake_here({int(channel.removeprefix(NOTIFY_PREFIX))})

    async def _switch(self, config: RelayConfig) -> None:
        """Drop the leaders of the old configuration, start those of the new one."""
        if self.config is not None:
            log.info(
                "relay partitions changed",
                extra={"from": self.config.partitions, "to": config.partitions},
            )
        await self._stop_leaders()
        self.config = config
        for partition in range(config.partitions):
            leader = PartitionLeader(self, partition, config)
            self.leaders[partition] = leader
            self.tasks[partition] = asyncio.create_task(
                leader.run(), name=f"jangteo-relay-{partition}"
            )

    async def _stop_leaders(self) -> None:
        leaders, tasks = self.leaders, self.tasks
        self.leaders, self.tasks = {}, {}
        await asyncio.gather(*(leaders[k].stop(tasks[k]) for k in leaders))
        self.metrics.leader.clear()

    def wake_here(self, slots: set[int]) -> set[int]:
        """Wake the leaders this instance runs of ``slots``; the slots led elsewhere (or by
        nobody now), for a NOTIFY to wake."""
        config = self.config
        if config is None:
            return slots
        elsewhere = set()
        for slot in slots:
            leader = self.leaders.get(slot_partition(slot, config.partitions))
            if leader is not None and leader.is_leader:
                leader.wake.set()
            else:
                elsewhere.add(slot)
        return elsewhere

    def may_hand_over(self, partition: int) -> bool:
        """Whether this leader should give its partition to an instance waiting for it:
        this instance leads more than its share, it is the highest partition led, and no
        partition was handed over in the last ``HAND_OVER_EVERY_S``."""
        assert self.config is not None
        leading = self.leading
        share = math.ceil(self.config.partitions / self.instances)
        return (
            len(leading) > share
            and partition == leading[-1]
            and time.monotonic() - self.last_hand_over >= HAND_OVER_EVERY_S
        )

    def handed_over(self) -> None:
        self.last_hand_over = time.monotonic()
        self.metrics.handed_over.inc()

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Publish what committed so far, then give leadership away (close the connections)."""
        self.stopping = True
        self.config_changed.set()
        await self._stop_leaders()
        await _finish(task, FLUSH_TIMEOUT_S)


class PartitionLeader:
    """One partition of one configuration: waits in line for its lock, then leads it."""

    def __init__(self, relay: OutboxRelay, partition: int, config: RelayConfig) -> None:
        self.relay = relay
        self.settings = relay.settings
        self.broker = relay.broker
        self.metrics = relay.metrics
        self.tracing = relay.tracing
        self.partition = partition
        self.config = config
        self.slots = partition_slots(config.partitions, partition)
        self.is_leader = False
        self.wake = asyncio.Event()
        self.published_through = 0  # everything of the partition up to here was published
        self.last_position = 0  # the last position this leader assigned
        self.stopping = False
        self.connection: asyncpg.Connection | None = None

    async def run(self) -> None:
        """Wait for leadership, lead until the connection fails, and start over."""
        while not self.stopping:
            try:
                await self._serve_once()
            except _CONNECTION_ERRORS as error:
                log.warning(
                    "relay connection failed",
                    extra={"partition": self.partition, "error": repr(error)},
                )
            finally:
                self._set_leader(False)
                await self._close_connection()
            if not self.stopping:
                # One that cannot publish looks for a free lock only now and then.
                healthy = self.broker.healthy
                await asyncio.sleep(RETRY_DELAY_S if healthy else self.settings.step_down)

    async def _someone_waits(self, conn: asyncpg.Connection) -> bool:
        """Whether a relay that can publish waits for this lock (only those wait in line)."""
        in_line = (queries.RELAY_LINE_CLASS, self.partition)
        return bool(await waiting_in_line(conn, in_line, self.settings.lock_timeout))

    async def _take_lock(self, conn: asyncpg.Connection) -> bool:
        key = (queries.RELAY_LOCK_CLASS, self.partition)
        if self.broker.healthy:
            # In line until the current leader's connection goes away; only a relay that
            # can publish waits in line, so it leaves the line when it cannot.
            taken = await take_when_free(
                conn,
                key,
                keep_waiting=lambda: not self.stopping and self.broker.healthy,
                in_line=(queries.RELAY_LINE_CLASS, self.partition),
                statement_timeout=self.settings.lock_timeout,
            )
            if not taken or self.stopping:
                return False
            # Lost Redis just as it got the lock: the next in line can publish.
            return self.broker.healthy or not await self._someone_waits(conn)
        # It cannot publish: it never waits in line, it only takes a free lock.
        taken = await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, $2)", *key, timeout=self.settings.lock_timeout
        )
        return bool(taken)

    async def _serve_once(self) -> None:
        conn = await connect(
            self.settings.database_url,
            self.settings.lock_session_settings(self.relay.instance),
            10,
            statement_lifetime=queries.PLAN_LIFETIME_S,
        )
        self.connection = conn
        set_socket_keepalive(conn, self.settings.lock_timeout)
        timeout = self.settings.lock_timeout  # every statement but the wait in line
        if not await self._take_lock(conn):
            return
        await conn.execute(queries.LEADER_SESSION, timeout=timeout)
        self._set_leader(True)  # from now on its instance's listener wakes it
        published = await conn.fetchval(
            queries.PUBLISHED_THROUGH,
            self.config.generation,
            self.partition,
            timeout=timeout,
        )
        self.published_through = self.last_position = published
        commit_ts = await conn.fetchval("SHOW track_commit_timestamp", timeout=timeout) == "on"
        if not commit_ts:
            log.warning(
                "track_commit_timestamp is off: event ts is the writing transaction's start,"
                " which can go backwards along a channel; turn it on in postgresql.conf"
            )
        commit_time = queries.COMMIT_TIME if commit_ts else queries.INSERT_TIME
        assign_sql = queries.ASSIGN.format(commit_time=commit_time)
        log.info("relay leader", extra={"partition": self.partition, "from": published})
        await self._lead(conn, assign_sql)

    async def _lead(self, conn: asyncpg.Connection, assign_sql: str) -> None:
        last_prune = last_caught_up = 0.0
        failing_since: float | None = None  # when publishing (or hearing Redis) stopped
        tail = True  # what the last leader (or a failed publish) may have left unpublished
        while True:
            self.wake.clear()
            attempt = time.monotonic()
            try:
                if tail:
                    await self._publish_tail(conn)
                    tail = False
                while await self._relay_batch(conn, assign_sql) == self.settings.batch_size:
                    pass
                failing_since = None if self.broker.healthy else (failing_since or attempt)
            except PublishFailed as error:
                # Positions stay committed; the tail is published again once the broker
                # is back (here or by the next leader). Meanwhile new rows are numbered
                # all the same, for the instances that read them from the log.
                log.warning(
                    "relay cannot publish",
                    extra={"partition": self.partition, "error": repr(error)},
                )
                self.metrics.publish_failures.inc()
                failing_since = failing_since or attempt
                tail = True
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
                await self._woken(RETRY_DELAY_S)
                continue
            if self.relay.may_hand_over(self.partition) and await self._someone_waits(conn):
                log.info("relay hands a partition over", extra={"partition": self.partition})
                self.relay.handed_over()
                return
            if self.partition == 0 and time.monotonic() - last_prune > PRUNE_EVERY_S:
                await self._prune(conn)
                last_prune = time.monotonic()
            # Only while idle: a wake-up waiting means rows to number, first.
            idle = not self.wake.is_set()
            if idle and time.monotonic() - last_caught_up >= CAUGHT_UP_EVERY_S:
                await self._caught_up(conn)
                last_caught_up = time.monotonic()
            await self._woken(self.settings.poll_interval)

    async def _woken(self, timeout: float) -> None:  # noqa: ASYNC109 - a poll, not a deadline
        """Until a wake-up, or ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.wake.wait()

    async def _caught_up(self, conn: asyncpg.Connection) -> None:
        """Everything it numbered is published: record that in the database, so that the
        next leader's tail (a takeover scans the partition's positions after it) starts
        near the present even when the partition has been quiet for days."""
        recorded = await conn.fetchval(
            queries.CAUGHT_UP,
            self.config.generation,
            self.partition,
            timeout=self.settings.lock_timeout,
        )
        if recorded is not None:
            self.published_through = self.last_position = recorded

    async def _assign(self, conn: asyncpg.Connection, assign_sql: str) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await conn.fetch(
            assign_sql,
            self.settings.batch_size,
            self.published_through,
            self.config.generation,
            self.slots,
            self.partition,
            timeout=self.settings.lock_timeout,
        )
        if rows:
            self.last_position = rows[-1]["position"]
        return rows

    async def _relay_batch(self, conn: asyncpg.Connection, assign_sql: str) -> int:
        """Assign positions to one batch of committed rows, then publish it."""
        rows = await self._assign(conn, assign_sql)
        if not rows:
            return 0
        messages = self._messages(rows)
        with self._publish_span(rows):
            await self._publish(messages, [row["committed_at"].timestamp() for row in rows])
        self.published_through = self.last_position
        return len(rows)

    async def _number_only(self, conn: asyncpg.Connection, assign_sql: str) -> None:
        """Give committed rows their positions without publishing them (``published_through``
        stays where it is, so they are published with the tail later)."""
        while len(await self._assign(conn, assign_sql)) == self.settings.batch_size:
            pass

    async def _publish(self, messages: list[tuple[str, bytes]], commit_times: list[float]) -> None:
        await self._send(messages)
        now = time.time()
        for committed in commit_times:
            self.metrics.lag.observe(max(0.0, now - committed))
        self.metrics.published.inc(len(messages))

    async def _publish_tail(self, conn: asyncpg.Connection) -> None:
        """Publish again what may not have reached the broker (after a takeover or failure)."""
        while True:
            rows = await conn.fetch(
                queries.TAIL,
                self.published_through,
                self.slots,
                self.settings.batch_size,
                timeout=self.settings.lock_timeout,
            )
            if not rows:
                return
            messages = self._messages(rows)
            with self._publish_span(rows):
                await self._send(messages)
            self.metrics.republished.inc(len(messages))
            self.published_through = rows[-1]["position"]
            self.last_position = max(self.last_position, self.published_through)

    def _messages(self, rows: Sequence[asyncpg.Record]) -> list[tuple[str, bytes]]:
        traced = self.tracing is not None
        return [_message(row, traced) for row in rows]

    def _publish_span(self, rows: Sequence[asyncpg.Record]) -> AbstractContextManager[object]:
        """The publish's span, current while it runs (the Redis call is its child); nothing
        when tracing is off or no row's change was traced."""
        span = None if self.tracing is None else self.tracing.publish_span(self.partition, rows)
        return _NOT_TRACED if span is None else trace.use_span(span, end_on_exit=True)

    async def _send(self, messages: list[tuple[str, bytes]]) -> None:
        try:
            await self.broker.publish(messages)
        except (RedisError, OSError, ConnectionError) as error:
            raise PublishFailed(repr(error)) from error

    async def _prune(self, conn: asyncpg.Connection) -> None:
        while True:
            status = await conn.execute(
                queries.PRUNE, float(self.settings.retention_seconds), PRUNE_CHUNK, timeout=30
            )
            deleted = int(status.split()[-1])
            self.metrics.pruned.inc(deleted)
            if deleted < PRUNE_CHUNK:
                return

    def _set_leader(self, leader: bool) -> None:
        self.is_leader = leader
        self.metrics.leader.labels(str(self.partition)).set(1 if leader else 0)

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
        # A follower only waits on the lock: nothing to finish.
        await _finish(task, FLUSH_TIMEOUT_S if self.is_leader else 0.0)
        await self._close_connection()


async def _finish(task: asyncio.Task[None], within: float) -> None:
    """Let ``task`` end by itself for up to ``within`` seconds, then cancel it."""
    if within > 0:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(task), within)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


_NOT_TRACED = contextlib.nullcontext()


def _message(row: asyncpg.Record, traced: bool) -> tuple[str, bytes]:
    """A published event as it travels through the broker; ``traced``: with its change's
    trace context, when it has one."""
    ts = int(row["committed_at"].timestamp() * 1000)
    position, prev = row["position"], row["prev"]
    frame = event_json(row["channel"], position, prev, ts, row["type"], row["data"])
    message = encode_message(position, prev, frame)
    if traced and row["trace_context"] is not None:
        return row["channel"], encode_traced(row["trace_context"], message)
    return row["channel"], message
