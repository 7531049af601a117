"""The hub: this process's channel subscriptions, fed by the broker, knowing no transport.

Each channel with local subscribers is a ``Feed``: one broker subscription, however many
sockets, and the offset it last delivered. An event is delivered only if its ``prev``
is that offset; otherwise events were missed (a Redis blip, a restarted relay), and the
feed reads them from PostgreSQL before going on. Offsets at or below the last delivered
are duplicates (a new relay leader publishing its predecessor's tail) and are dropped.
What the log cannot explain (a ``prev`` chain that breaks, in the log or live, because
events were pruned or never reached the log) is never papered over: the channel's
subscribers get ``resync`` and reload.

A subscriber joining with ``since`` is caught up without a seam: it is added to the feed
first, holding live events aside, then the log is replayed up to the feed's offset at
that moment, then what went live meanwhile follows, and only then does it go live. Both
steps are paced by the subscriber (``backlogged``/``drained``), so a client on a slow
link resuming a long history is fed as fast as it reads, never flooded past its queue.

A feed can also go silent without a gap to show it (a subscription lost and not noticed,
events that never reach Redis). ``watch_heads`` compares each feed's offset with its
channel's head in PostgreSQL: a head that was already ahead one check earlier means a
silent feed, which is then filled; while the broker is down, every feed behind its head
is filled at each (shorter) interval, so the live path degrades to polling.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

import asyncpg
from redis.exceptions import RedisError

from realtime.broker import EPHEMERAL_MARK, Broker
from realtime.event import Delivery
from realtime.frames import text_frame
from realtime.log import EventLog, ResyncNeeded
from realtime.metrics import HubMetrics
from realtime.resume import LogRead, RecentEvents
from realtime.tracing import SOCKETS, EventTracing
from server.rounds import Rounds

log = logging.getLogger(__name__)

FILL_BATCH = 1000
INBOX_LIMIT = 10_000  # events held while a gap is being filled; beyond, read them all again
CATCH_UP_LIMIT = 1000  # live events held for a subscriber being caught up; beyond, reread
STUCK_FILLS = 3  # paced fills that found nothing before a gap is declared a hole: resync
FILL_RETRY_S = 0.05  # first pause between fills that found nothing or failed; doubles
FILL_RETRY_MAX_S = 2.0
HEAD_CHECK_S = 5.0  # how often feeds are compared with their heads while Redis is healthy
POLL_S = 1.0  # ... and while it is not: then the log is the only way events arrive
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

    @property
    def backlogged(self) -> bool:
        """True while frames wait for the peer: a replay pauses until ``drained``."""

    async def drained(self) -> None:
        """Return once nothing waits for the peer, or once the subscriber is closed."""

    def resync(self, channel: str) -> None:
        """The hub dropped this subscriber from ``channel``: its events can no longer be
        delivered without a gap, and the client must reload."""


class CatchUp:
    """Live events held for a subscriber while it is being caught up."""

    __slots__ = ("events", "lost_through")

    def __init__(self) -> None:
        self.events: collections.deque[Delivery] = collections.deque()
        self.lost_through = 0  # events up to here were dropped from `events`: reread them

    def hold(self, event: Delivery) -> None:
        if len(self.events) >= CATCH_UP_LIMIT:
            self.events.clear()
            self.lost_through = event.offset
        else:
            self.events.append(event)


class Feed:
    """One channel of this process."""

    __slots__ = (
        "channel",
        "filling",
        "inbox",
        "last",
        "opened",
        "opening",
        "reading",
        "recent",
        "refetch",
        "subscribers",
        "task",
    )

    def __init__(self, channel: str, recent: RecentEvents) -> None:
        self.channel = channel
        self.recent = recent  # its start is set when the feed opens
        self.reading: asyncio.Future[LogRead | None] | None = None  # a resume's log read
        # An int is the live subscriber's threshold (offsets above it are sent); a
        # CatchUp holds live events while that subscriber is being caught up.
        self.subscribers: dict[Subscriber, int | CatchUp] = {}
        self.last = 0
        self.opened = False
        self.opening: asyncio.Task[None] | None = None
        self.filling = False
        self.refetch = False
        self.inbox: collections.deque[Delivery] = collections.deque()
        self.task: asyncio.Task[None] | None = None


class Hub:
    def __init__(
        self,
        broker: Broker,
        log: EventLog,
        metrics: HubMetrics,
        *,
        replay_limit: int,
        recent_size: int = 0,
        recent_age: float = 0.0,
        head_check: float = HEAD_CHECK_S,
        poll_interval: float = POLL_S,
        tracing: EventTracing | None = None,
    ) -> None:
        self.broker = broker
        self.tracing = tracing  # None: tracing is off
        self.log = log
        self.metrics = metrics
        self.replay_limit = replay_limit
        self.recent_size = recent_size  # events each feed keeps for resumes (0: none)
        self.recent_age = recent_age
        # The newest offset known to be published, for `since` ahead of every feed.
        self.published = 0
        self.published_reads: Rounds[str, int] = Rounds(self._read_published)
        self.head_check = head_check
        self.poll_interval = poll_interval
        self.feeds: dict[str, Feed] = {}
        self.watcher: asyncio.Task[None] | None = None
        broker.bind(self)

    def start(self) -> None:
        """Start comparing feeds with their heads (``close`` stops it)."""
        self.watcher = asyncio.create_task(self.watch_heads(), name="jangteo-hub-heads")

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
            recent = RecentEvents(0, self.recent_size, self.recent_age)
            feed = self.feeds[channel] = Feed(channel, recent)
            feed.opening = asyncio.create_task(self._open(feed))
            self.metrics.channels.set(len(self.feeds))
        state = CatchUp()
        feed.subscribers[subscriber] = state
        try:
            assert feed.opening is not None
            await asyncio.shield(feed.opening)
            upto = feed.last
            sent = upto
            replayed: list[Delivery] = []
            if since is not None:
                # Read before `on_ready`: a `since` out of reach gets resync, not subscribed.
                replayed = await self._replay(feed, since, upto)
                sent = max(since, upto)
            if feed.subscribers.get(subscriber) is not state:
                return upto  # left, or told to resync, meanwhile
            if on_ready is not None:
                on_ready(upto)
            for event in replayed:
                if feed.subscribers.get(subscriber) is not state:
                    return upto  # left (closed) meanwhile
                await _paced(subscriber, event)
            await self._catch_up(feed, subscriber, state, sent)
        except BaseException:
            if feed.subscribers.get(subscriber) is state:
                self.leave(channel, subscriber)
            raise
        return upto

    async def _replay(self, feed: Feed, since: int, upto: int) -> list[Delivery]:
        """Every event of the channel in (``since``, ``upto``], or ResyncNeeded: from the
        feed's recent events when they reach back far enough, else from the log, one read
        per feed at a time, shared by the resumes that waited for it."""
        if since >= upto:
            if since > upto:
                await self._check_published(since)
            self.metrics.resumes.labels("memory").inc()
            return []
        while not feed.recent.covers(since):
            reading = feed.reading
            if reading is None:
                self.metrics.resumes.labels("log").inc()
                read = await self._read_back(feed, since, upto)
                replayed = await self._from_read(feed, read, since, upto)
                if replayed is None:
                    raise ResyncNeeded(f"events after offset {since} are past the retention window")
                return replayed
            shared: LogRead | None = await asyncio.shield(reading)  # a cancelled waiter leaves it
            if shared is not None and since >= shared.start:
                self.metrics.resumes.labels("shared").inc()
                replayed = await self._from_read(feed, shared, since, upto)
                assert replayed is not None
                return replayed
        self.metrics.resumes.labels("memory").inc()
        return self._within_limit(feed.recent.after(since, upto), since)

    async def _read_back(self, feed: Feed, since: int, upto: int) -> LogRead:
        """Read the log from ``since`` to where the feed's recent events start, and keep
        what was read (up to their size) for the resumes that follow."""
        recent = feed.recent
        reading: asyncio.Future[LogRead | None] = asyncio.get_running_loop().create_future()
        feed.reading = reading
        # After a wait for another read, the recent events may start past `upto`.
        boundary = min(recent.start, upto)
        room = max(0, self.recent_size - len(recent))
        limit = self.replay_limit + room + 1  # enough to tell a resume over the limit
        read: LogRead | None = None
        try:
            events = await self.log.read_back(feed.channel, since, boundary, room, limit)
            if len(events) >= limit:
                raise ResyncNeeded(f"more than {self.replay_limit} events after offset {since}")
            if not events or events[-1].offset != boundary:
                raise ResyncNeeded(f"events after offset {since} are past the retention window")
            read = LogRead(events, boundary)
            recent.extend_back(events, time.monotonic())
            return read
        finally:
            feed.reading = None
            reading.set_result(read)  # None: the waiters read for themselves

    async def _from_read(
        self, feed: Feed, read: LogRead, since: int, upto: int
    ) -> list[Delivery] | None:
        """The events in (``since``, ``upto``] from ``read`` and the recent events after
        it; None when ``read`` starts after ``since``."""
        if since < read.start:
            return None
        replayed = [event for event in read.events if since < event.offset <= upto]
        if read.end < upto:  # the rest is in memory, unless it moved on during the read
            if feed.recent.covers(read.end):
                replayed += feed.recent.after(read.end, upto)
            else:
                rest = await self.log.after(feed.channel, read.end, self.replay_limit + 1)
                replayed += [event for event in rest if event.offset <= upto]
        check_chain(replayed, since)
        return self._within_limit(replayed, since)

    def _within_limit(self, events: list[Delivery], since: int) -> list[Delivery]:
        if len(events) > self.replay_limit:
            raise ResyncNeeded(f"more than {self.replay_limit} events after offset {since}")
        return events

    async def _check_published(self, since: int) -> None:
        """A ``since`` ahead of this feed is fine unless no event has that offset yet."""
        if since > self.published:
            await self.published_reads.ask(("last",))
            if since > self.published:
                raise ResyncNeeded(f"offset {since} is ahead of every published event")

    async def _read_published(self, _: frozenset[str]) -> dict[str, int]:
        self.published = max(self.published, await self.log.last_published())
        return {}

    async def _catch_up(
        self, feed: Feed, subscriber: Subscriber, state: CatchUp, sent: int
    ) -> None:
        """Deliver what went live during the replay, paced, then switch to live delivery."""
        while feed.subscribers.get(subscriber) is state:
            if sent < state.lost_through:
                events = await self.log.after(feed.channel, sent, FILL_BATCH)
                events = [event for event in events if event.offset <= state.lost_through]
                if not events:
                    raise ResyncNeeded(f"events after offset {sent} are no longer in the log")
                check_chain(events, sent)
                for event in events:
                    await _paced(subscriber, event)
                    sent = event.offset
            elif state.events:
                event = state.events.popleft()
                if event.offset > sent:
                    await _paced(subscriber, event)
                    sent = event.offset
            else:
                feed.subscribers[subscriber] = sent  # nothing held: live from here
                return

    def leave(self, channel: str, subscriber: Subscriber) -> None:
        feed = self.feeds.get(channel)
        if feed is None or feed.subscribers.pop(subscriber, None) is None or feed.subscribers:
            return
        self._drop_feed(feed)

    def _drop_feed(self, feed: Feed) -> None:
        del self.feeds[feed.channel]
        self.metrics.channels.set(len(self.feeds))
        for task in (feed.opening, feed.task):
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
        self.broker.unsubscribe(feed.channel)

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

    def on_resubscribed(self, channels: Collection[str] | None = None) -> None:
        """After a broker outage the channels (all: None) may have missed events: read
        them back."""
        feeds = (
            self.feeds.values()
            if channels is None
            else (feed for channel in channels if (feed := self.feeds.get(channel)) is not None)
        )
        for feed in feeds:
            if feed.opened and not feed.filling:
                self._start_fill(feed, "resubscribed")
            else:
                feed.refetch = True

    # -- silent feeds ----------------------------------------------------------------

    async def watch_heads(self) -> None:
        """Fill feeds that fell behind their heads without a gap to show it."""
        seen: dict[str, int] = {}  # heads at the previous check
        while True:
            polling = not self.broker.healthy
            await asyncio.sleep(self.poll_interval if polling else self.head_check)
            feeds = [feed for feed in self.feeds.values() if feed.opened]
            if not feeds:
                seen = {}
                continue
            try:
                heads = await self.log.channel_heads([feed.channel for feed in feeds])
            except TRANSIENT_ERRORS as error:
                log.warning("head check failed", extra={"error": repr(error)})
                continue
            polling = polling or not self.broker.healthy
            for feed in feeds:
                # An event at the head a whole interval ago that has not arrived is lost
                # on the way; a newer head may just be in flight (unless Redis is down).
                behind = heads.get(feed.channel, 0) if polling else seen.get(feed.channel, 0)
                if feed.last < behind and not feed.filling and self.feeds.get(feed.channel) is feed:
                    self._start_fill(feed, "polling" if polling else "silent")
            seen = heads

    # -- internals -------------------------------------------------------------------

    async def _open(self, feed: Feed) -> None:
        await self.broker.subscribe(feed.channel)
        # Anything committed after this read is published after the subscription above
        # is live, so it arrives; anything before is covered by the head.
        feed.last = feed.recent.start = await self.log.head(feed.channel)
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
        feed.recent.add(event, time.monotonic())
        # Only an event whose change was traced carries a trace (never with tracing off).
        span = None
        if event.trace is not None and self.tracing is not None:
            span = self.tracing.delivery_span(event)
        offset = event.offset
        delivered = 0
        for subscriber, state in feed.subscribers.items():
            if type(state) is int:
                if offset > state:
                    subscriber.deliver(event)
                    delivered += 1
            else:
                state.hold(event)  # type: ignore[union-attr]
        self.metrics.deliveries.inc(delivered)
        if span is not None:
            span.set_attribute(SOCKETS, delivered)
            span.end()

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
        delay = FILL_RETRY_S
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
                    delay = min(delay * 2, FILL_RETRY_MAX_S)
                    continue
                try:
                    check_chain(events, feed.last, exact=True)
                except ResyncNeeded as hole:
                    self._resync(feed, str(hole))
                    return
                for event in events:
                    self._deliver(feed, event)
                    self.metrics.filled.inc()
                if len(events) == FILL_BATCH:
                    continue
                fruitless = 0 if events else fruitless + 1
                self._drain_inbox(feed)
                if not feed.inbox and not feed.refetch:
                    return
                if fruitless >= STUCK_FILLS:
                    # A live event names a predecessor the log does not have: never deliver
                    # past it (later real events would be dropped as duplicates).
                    self._resync(feed, f"offset {feed.inbox[0].prev} is not in the event log")
                    return
                if not events:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, FILL_RETRY_MAX_S)
        finally:
            feed.filling = False
            if feed.task is asyncio.current_task():
                feed.task = None

    def _drain_inbox(self, feed: Feed) -> None:
        inbox = feed.inbox
        while inbox:
            event = inbox[0]
            if event.offset <= feed.last:
                inbox.popleft()
                continue
            if event.prev != feed.last:
                return
            inbox.popleft()
            self._deliver(feed, event)

    def _resync(self, feed: Feed, reason: str) -> None:
        """The channel's events cannot be delivered without a hole: every subscriber reloads."""
        log.warning("channel needs resync", extra={"channel": feed.channel, "reason": reason})
        self.metrics.resyncs.inc(len(feed.subscribers))
        subscribers = list(feed.subscribers)
        feed.subscribers.clear()
        if self.feeds.get(feed.channel) is feed:
            self._drop_feed(feed)
        for subscriber in subscribers:
            subscriber.resync(feed.channel)

    async def close(self) -> None:
        tasks = [
            task
            for feed in self.feeds.values()
            for task in (feed.opening, feed.task)
            if task is not None and not task.done()
        ]
        if self.watcher is not None:
            tasks.append(self.watcher)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.published_reads.close()
        self.feeds.clear()


def check_chain(events: Sequence[Delivery], after: int, *, exact: bool = False) -> None:
    """Raise ResyncNeeded unless ``events`` continue ``after`` without a hole.

    Each event names its channel's previous offset; the first one's must be ``after``
    (``exact``: a feed's own offset) or older (a client's ``since`` need not be an
    offset of this channel), and each next one's the one before it.
    """
    expected = after
    for index, event in enumerate(events):
        older_first = index == 0 and not exact and event.prev < after
        if event.prev != expected and not older_first:
            raise ResyncNeeded(f"events between offsets {expected} and {event.offset} are gone")
        expected = event.offset


async def _paced(subscriber: Subscriber, event: Delivery) -> None:
    """Deliver, then wait while the subscriber's peer has frames still to read."""
    subscriber.deliver(event)
    if subscriber.backlogged:
        await subscriber.drained()
