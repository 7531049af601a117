"""The hub: this process's channel subscriptions, fed by the broker, knowing no transport.

Each channel with local subscribers is a ``Feed``: one broker subscription, however many
sockets, and the offset it last delivered. An event is delivered only if its ``prev``
is that offset; otherwise events were missed (a Redis blip, a restarted relay), and the
feed reads them from PostgreSQL before going on. Offsets at or below the last delivered
are duplicates (a new relay leader publishing its predecessor's tail) and are dropped.

A subscriber joining with ``since`` is caught up without a seam: it is added to the feed
first, buffering live events, then the log is replayed up to the feed's offset at that
moment, then the buffer is flushed past what the replay sent, in one step.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

import asyncpg
from redis.exceptions import RedisError

from realtime.broker import EPHEMERAL_MARK, Broker
from realtime.event import Delivery
from realtime.frames import text_frame
from realtime.log import EventLog
from realtime.metrics import HubMetrics

log = logging.getLogger(__name__)

FILL_BATCH = 1000
INBOX_LIMIT = 10_000  # events held while a gap is being filled; beyond, read them all again
STUCK_FILLS = 3  # fills that found nothing before an unexplained gap is accepted
TRANSIENT_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection whose server died mid-message
    RedisError,
)


class Subscriber(Protocol):
    def deliver(self, event: Delivery) -> None:
        """Take an event without waiting (a socket queues it)."""

    def send(self, frame: bytes) -> None:
        """Take an ephemeral frame (presence) without waiting."""


class Feed:
    """One channel of this process."""

    __slots__ = (
        "channel",
        "filling",
        "inbox",
        "last",
        "opened",
        "opening",
        "refetch",
        "subscribers",
        "task",
    )

    def __init__(self, channel: str) -> None:
        self.channel = channel
        # An int is the live subscriber's threshold (offsets above it are sent); a list
        # buffers live events while that subscriber is being caught up.
        self.subscribers: dict[Subscriber, int | list[Delivery]] = {}
        self.last = 0
        self.opened = False
        self.opening: asyncio.Task[None] | None = None
        self.filling = False
        self.refetch = False
        self.inbox: collections.deque[Delivery] = collections.deque()
        self.task: asyncio.Task[None] | None = None


class Hub:
    def __init__(
        self, broker: Broker, log: EventLog, metrics: HubMetrics, *, replay_limit: int
    ) -> None:
        self.broker = broker
        self.log = log
        self.metrics = metrics
        self.replay_limit = replay_limit
        self.feeds: dict[str, Feed] = {}
        broker.bind(self)

    async def join(
        self,
        channel: str,
        subscriber: Subscriber,
        since: int | None = None,
        on_ready: Callable[[int], None] | None = None,
    ) -> int:
        """Subscribe; ``on_ready(offset)`` runs once ``since`` proved in reach, before any
        replayed event is delivered.

        Returns the channel's offset at joining. Raises ResyncNeeded when ``since`` is
        out of reach, or a database error; the subscriber is then not subscribed.
        """
        feed = self.feeds.get(channel)
        if feed is None:
            feed = self.feeds[channel] = Feed(channel)
            feed.opening = asyncio.create_task(self._open(feed))
            self.metrics.channels.set(len(self.feeds))
        buffer: list[Delivery] = []
        feed.subscribers[subscriber] = buffer
        try:
            assert feed.opening is not None
            await asyncio.shield(feed.opening)
            upto = feed.last
            threshold = upto
            replayed: list[Delivery] = []
            if since is not None:
                # Read before `on_ready`: a `since` out of reach gets resync, not subscribed.
                replayed = await self.log.replay(channel, since, upto, self.replay_limit)
                threshold = max(since, upto)
            if on_ready is not None:
                on_ready(upto)
            for event in replayed:
                subscriber.deliver(event)
        except BaseException:
            self.leave(channel, subscriber)
            raise
        if feed.subscribers.get(subscriber) is buffer:  # still subscribed: go live
            for event in buffer:
                if event.offset > threshold:
                    subscriber.deliver(event)
            feed.subscribers[subscriber] = threshold
        return upto

    def inject_fault(self, fault: str) -> None:
        """TEST ONLY (``JANGTEO_TEST_FAULT``): break delivery on purpose, so that a test can
        prove the load test's audit notices.

        ``drop-every-tenth-event``: every tenth event this hub delivers reaches no socket,
        yet counts as delivered (the feed's offset moves on), so no gap fill repairs it:
        a loss only the clients can see.
        """
        if fault != "drop-every-tenth-event":
            raise ValueError(f"unknown test fault {fault!r}")
        deliver = self._deliver
        count = 0

        def dropping(feed: Feed, event: Delivery) -> None:
            nonlocal count
            count += 1
            if count % 10 == 0:
                feed.last = event.offset
                return
            deliver(feed, event)

        self._deliver = dropping  # type: ignore[method-assign]

    def leave(self, channel: str, subscriber: Subscriber) -> None:
        feed = self.feeds.get(channel)
        if feed is None or feed.subscribers.pop(subscriber, None) is None or feed.subscribers:
            return
        del self.feeds[channel]
        self.metrics.channels.set(len(self.feeds))
        for task in (feed.opening, feed.task):
            if task is not None and not task.done():
                task.cancel()
        self.broker.unsubscribe(channel)

    # -- from the broker -------------------------------------------------------------

    def on_message(self, channel: str, payload: bytes) -> None:
        feed = self.feeds.get(channel)
        if feed is None:
            return
        if payload[:1] == EPHEMERAL_MARK:
            self._deliver_ephemeral(feed, text_frame(payload[1:]))
            return
        try:
            event = Delivery.from_message(channel, payload)
        except ValueError:
            log.warning("malformed event message", extra={"channel": channel})
            return
        self.metrics.received.inc()
        self._receive(feed, event)

    def on_resubscribed(self) -> None:
        """After a broker outage every channel may have missed events: read them back."""
        for feed in self.feeds.values():
            if feed.opened and not feed.filling:
                self._start_fill(feed, "resubscribed")
            else:
                feed.refetch = True

    # -- internals -------------------------------------------------------------------

    async def _open(self, feed: Feed) -> None:
        await self.broker.subscribe(feed.channel)
        # Anything committed after this read is published after the subscription above
        # is live, so it arrives; anything before is covered by the head.
        feed.last = await self.log.head(feed.channel)
        feed.opened = True
        early, feed.inbox = list(feed.inbox), collections.deque()
        for event in early:
            self._receive(feed, event)
        if feed.refetch and not feed.filling:
            self._start_fill(feed, "resubscribed")

    def _receive(self, feed: Feed, event: Delivery) -> None:
        if not feed.opened or feed.filling:
            feed.inbox.append(event)
            if len(feed.inbox) > INBOX_LIMIT:
                feed.inbox.clear()
                feed.refetch = True
            return
        if event.offset <= feed.last:
            self.metrics.duplicates.inc()
            return
        if event.prev != feed.last:
            feed.inbox.append(event)
            self._start_fill(feed, "gap")
            return
        self._deliver(feed, event)

    def _deliver(self, feed: Feed, event: Delivery) -> None:
        feed.last = event.offset
        offset = event.offset
        delivered = 0
        for subscriber, state in feed.subscribers.items():
            if type(state) is int:
                if offset > state:
                    subscriber.deliver(event)
                    delivered += 1
            else:
                state.append(event)  # type: ignore[union-attr]
        self.metrics.deliveries.inc(delivered)

    def _deliver_ephemeral(self, feed: Feed, frame: bytes) -> None:
        """Presence and typing go to live subscribers as they come; they have no offset."""
        for subscriber, state in feed.subscribers.items():
            if type(state) is int:
                subscriber.send(frame)

    def _start_fill(self, feed: Feed, reason: str) -> None:
        self.metrics.gap_fills.labels(reason).inc()
        feed.filling = True
        feed.task = asyncio.create_task(self._fill(feed))

    async def _fill(self, feed: Feed) -> None:
        """Deliver from the log until the held live events continue without a gap."""
        delay = 0.05
        fruitless = 0
        try:
            while True:
                feed.refetch = False
                try:
                    events = await self.log.after(feed.channel, feed.last, FILL_BATCH)
                except TRANSIENT_ERRORS as error:
                    log.warning("gap fill failed", extra={"error": repr(error)})
                    feed.refetch = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                for event in events:
                    if event.offset > feed.last:
                        self._deliver(feed, event)
                        self.metrics.filled.inc()
                if len(events) == FILL_BATCH:
                    continue
                fruitless = 0 if events else fruitless + 1
                self._drain_inbox(feed, accept_gap=fruitless >= STUCK_FILLS)
                if not feed.inbox and not feed.refetch:
                    return
        finally:
            feed.filling = False
            feed.task = None

    def _drain_inbox(self, feed: Feed, *, accept_gap: bool) -> None:
        inbox = feed.inbox
        while inbox:
            event = inbox[0]
            if event.offset <= feed.last:
                inbox.popleft()
                continue
            if event.prev != feed.last and not accept_gap:
                return
            if event.prev != feed.last:
                log.warning(
                    "gap not found in the event log; delivering on",
                    extra={"channel": feed.channel, "last": feed.last, "prev": event.prev},
                )
            inbox.popleft()
            self._deliver(feed, event)

    async def close(self) -> None:
        tasks = [
            task
            for feed in self.feeds.values()
            for task in (feed.opening, feed.task)
            if task is not None and not task.done()
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.feeds.clear()
