"""The hub against the in-memory broker and an in-memory event log that follows PostgreSQL's rules.

Nothing here reads the clock: every wait is on a condition, and TIMEOUT only turns a hang
into a failure on a slow machine. Gates (asyncio.Events) hold a log query in flight so a
test can publish while it runs.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
import pytest
from prometheus_client import CollectorRegistry

from realtime import hub as hub_module
from realtime.broker import encode_ephemeral, encode_message
from realtime.broker_memory import MemoryBroker, MemoryBus
from realtime.event import Delivery
from realtime.frames import text_frame
from realtime.hub import Hub
from realtime.log import ResyncNeeded
from realtime.metrics import HubMetrics

TIMEOUT = 30.0
CHANNEL = "listing:1"
OTHER = "listing:2"


async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Wait for a condition; the timeout only turns a hang into a failure."""
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.001)


class FakeLog:
    """The published event log in memory, with PostgresEventLog's answers.

    ``commit`` is the relay's part: it assigns the next position, with the channel's head
    as ``prev``, stores the event, and returns the broker message to publish (or drop).
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng
        self.events: dict[str, list[Delivery]] = {}
        self.heads: dict[str, int] = {}  # kept when events are pruned, like channel_heads
        self.last_position = 0  # like relay_last_position()
        self.messages: dict[int, tuple[str, bytes]] = {}
        self.gates: dict[str, asyncio.Event] = {}  # method name -> released when set
        self.entered: dict[str, asyncio.Event] = {}  # method name -> set when called
        self.failures: dict[str, BaseException] = {}
        self.calls: list[str] = []

    def commit(self, channel: str, type_: str = "listing.updated", data: str | None = None) -> int:
        self.last_position += 1
        offset = self.last_position
        prev = self.heads.get(channel, 0)
        self.heads[channel] = offset
        data_json = data if data is not None else f'{{"n": {offset}, "text": "a\\u00e9 b"}}'
        event = Delivery.from_row(
            channel, offset, prev, 1_764_590_000_000 + offset, type_, data_json
        )
        self.events.setdefault(channel, []).append(event)
        self.messages[offset] = (channel, encode_message(offset, prev, event.json))
        return offset

    def message(self, offset: int) -> tuple[str, bytes]:
        return self.messages[offset]

    def event(self, offset: int) -> Delivery:
        channel = self.messages[offset][0]
        return next(e for e in self.events[channel] if e.offset == offset)

    def committed(self, channel: str) -> list[int]:
        return [event.offset for event in self.events.get(channel, [])]

    def prune(self, through: int) -> None:
        for channel, events in self.events.items():
            self.events[channel] = [event for event in events if event.offset > through]

    def hold(self, method: str) -> asyncio.Event:
        """Make ``method`` wait (after being entered) until the returned event is set."""
        gate = self.gates[method] = asyncio.Event()
        self.entered[method] = asyncio.Event()
        return gate

    async def _checkpoint(self, method: str) -> None:
        self.calls.append(method)
        if method in self.entered:
            self.entered[method].set()
        if method in self.gates:
            await self.gates[method].wait()
        failure = self.failures.pop(method, None)
        if failure is not None:
            raise failure
        for _ in range(self.rng.randint(0, 3) if self.rng else 1):
            await asyncio.sleep(0)

    def _range(self, channel: str, after: int, upto: int, limit: int) -> list[Delivery]:
        events = [e for e in self.events.get(channel, []) if after < e.offset <= upto]
        return events[:limit]

    async def head(self, channel: str) -> int:
        head = self.heads.get(channel, 0)  # read at the query's start
        await self._checkpoint("head")
        return head

    async def channel_heads(self, channels: list[str]) -> dict[str, int]:
        heads = {channel: self.heads[channel] for channel in channels if channel in self.heads}
        await self._checkpoint("channel_heads")
        return heads

    async def after(self, channel: str, after: int, limit: int) -> list[Delivery]:
        events = self._range(channel, after, 2**63 - 1, limit)  # the query's snapshot
        await self._checkpoint("after")
        return events

    async def read_back(
        self, channel: str, since: int, upto: int, keep: int, limit: int
    ) -> list[Delivery]:
        older = [e for e in self.events.get(channel, []) if e.offset <= upto]  # the snapshot
        await self._checkpoint("replay")
        floor = older[-keep - 1].offset if len(older) - keep - 1 >= 0 else 0
        return [e for e in older if e.offset > min(since, floor)][:limit]

    async def last_published(self) -> int:
        last = self.last_position
        await self._checkpoint("last_published")
        return last


class CountingBroker(MemoryBroker):
    def __init__(self, bus: MemoryBus) -> None:
        super().__init__(bus)
        self.subscribes: dict[str, int] = {}
        self.unsubscribes: dict[str, int] = {}
        bus.clients.append(self)

    async def subscribe(self, channel: str) -> None:
        self.subscribes[channel] = self.subscribes.get(channel, 0) + 1
        await super().subscribe(channel)

    def unsubscribe(self, channel: str) -> None:
        self.unsubscribes[channel] = self.unsubscribes.get(channel, 0) + 1
        super().unsubscribe(channel)


class Recorder:
    """A subscriber that keeps what it was given (hashable by identity, as sockets are)."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.events: list[Delivery] = []
        self.ephemeral: list[bytes] = []
        self.resyncs: list[str] = []
        self.backlogged = False

    def deliver(self, event: Delivery) -> None:
        self.events.append(event)

    def send(self, frame: bytes) -> None:
        self.ephemeral.append(frame)

    async def drained(self) -> None:
        """Never backlogged unless a test says so (see SlowRecorder)."""

    def resync(self, channel: str) -> None:
        self.resyncs.append(channel)

    def offsets(self, channel: str = CHANNEL) -> list[int]:
        return [event.offset for event in self.events if event.channel == channel]

    def __repr__(self) -> str:
        return f"Recorder({self.name})"


class SlowPeer(Recorder):
    """A peer on a slow link: after each frame it is backlogged until the test lets it read."""

    def __init__(self) -> None:
        super().__init__("slow")
        self.reads = asyncio.Semaphore(0)
        self.waiting = 0

    def deliver(self, event: Delivery) -> None:
        super().deliver(event)
        self.backlogged = True

    async def drained(self) -> None:
        self.waiting += 1
        await self.reads.acquire()
        self.backlogged = False


@dataclass
class Setup:
    bus: MemoryBus
    broker: CountingBroker
    publisher: MemoryBroker  # the relay's connection to the bus
    log: FakeLog
    hub: Hub
    registry: CollectorRegistry

    async def publish(self, *offsets: int) -> None:
        await self.publisher.publish([self.log.message(offset) for offset in offsets])

    async def commit(self, channel: str = CHANNEL, *, publish: bool = True) -> int:
        offset = self.log.commit(channel)
        if publish:
            await self.publish(offset)
        return offset

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def settled(self) -> bool:
        return all(
            feed.opened and not feed.filling and not feed.inbox for feed in self.hub.feeds.values()
        )


def make_setup(recent_size: int = 0) -> Setup:
    """A hub on an in-memory bus and log; ``recent_size`` events kept per feed for resumes."""
    bus = MemoryBus()
    broker = CountingBroker(bus)
    registry = CollectorRegistry()
    log = FakeLog()
    hub = Hub(
        broker, log, HubMetrics(registry), replay_limit=100, recent_size=recent_size,
        recent_age=3600,
    )  # fmt: skip
    return Setup(bus, broker, bus.client(), log, hub, registry)


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    made = make_setup()
    yield made
    await made.hub.close()


# -- subscriptions ---------------------------------------------------------------------


async def test_one_broker_subscription_per_channel_reference_counted(setup: Setup) -> None:
    hub, broker = setup.hub, setup.broker
    opened = setup.log.hold("head")
    subscribers = [Recorder(str(i)) for i in range(4)]
    # Three join while the channel is still opening, one after it opened.
    joins = [asyncio.create_task(hub.join(CHANNEL, s)) for s in subscribers[:3]]
    await setup.log.entered["head"].wait()
    opened.set()
    await asyncio.gather(*joins)
    await hub.join(CHANNEL, subscribers[3])
    other = Recorder("other")
    await hub.join(OTHER, other)
    assert broker.subscribes == {CHANNEL: 1, OTHER: 1}
    assert setup.metric("jangteo_hub_channels") == 2

    for subscriber in subscribers[:3]:
        hub.leave(CHANNEL, subscriber)
        assert broker.unsubscribes == {}
        assert CHANNEL in broker.channels
    hub.leave(CHANNEL, subscribers[0])  # a second leave of the same subscriber counts nothing
    assert broker.unsubscribes == {}
    await setup.commit()
    assert [len(s.events) for s in subscribers] == [0, 0, 0, 1]

    hub.leave(CHANNEL, subscribers[3])
    assert broker.unsubscribes == {CHANNEL: 1}
    assert CHANNEL not in broker.channels and CHANNEL not in hub.feeds
    assert setup.metric("jangteo_hub_channels") == 1
    hub.leave(CHANNEL, subscribers[3])
    assert broker.unsubscribes == {CHANNEL: 1}

    again = Recorder("again")
    assert await hub.join(CHANNEL, again) == 1
    assert broker.subscribes == {CHANNEL: 2, OTHER: 1}
    await setup.commit()
    assert again.offsets() == [2]
    assert other.events == []


async def test_each_event_reaches_every_subscriber_once_as_the_same_frame(setup: Setup) -> None:
    subscribers = [Recorder(str(i)) for i in range(3)]
    for subscriber in subscribers:
        assert await setup.hub.join(CHANNEL, subscriber) == 0
    other = Recorder("other")
    await setup.hub.join(OTHER, other)
    offsets = []
    for i in range(6):
        offsets.append(await setup.commit(CHANNEL if i % 3 else OTHER))
    ours = [o for i, o in enumerate(offsets) if i % 3]
    for subscriber in subscribers:
        assert subscriber.offsets() == ours
        assert subscriber.offsets(OTHER) == []
    assert other.offsets(OTHER) == [offsets[0], offsets[3]]
    for position in range(len(ours)):
        frames = [s.events[position].frame for s in subscribers]
        assert all(frame is frames[0] for frame in frames)
    event = subscribers[0].events[0]
    assert event.frame == setup.log.event(event.offset).frame
    assert orjson.loads(event.json)["offset"] == event.offset
    assert setup.metric("jangteo_ws_deliveries_total") == 3 * len(ours) + 2


async def test_duplicates_are_dropped(setup: Setup) -> None:
    subscriber = Recorder()
    await setup.hub.join(CHANNEL, subscriber)
    first, second, third = [await setup.commit() for _ in range(3)]
    # A new relay leader publishes its predecessor's tail again.
    await setup.publish(second, third)
    await setup.publish(first)
    fourth = await setup.commit()
    await until(setup.settled)
    assert subscriber.offsets() == [first, second, third, fourth]
    assert setup.metric("jangteo_hub_duplicates_dropped_total") == 3
    assert setup.metric("jangteo_hub_gap_fills_total", reason="gap") == 0


async def test_a_missed_event_is_read_from_the_log_before_the_later_one(setup: Setup) -> None:
    subscriber, second_subscriber = Recorder("a"), Recorder("b")
    await setup.hub.join(CHANNEL, subscriber)
    await setup.hub.join(CHANNEL, second_subscriber)
    one = await setup.commit()
    setup.log.commit(OTHER)  # offsets are not contiguous within a channel
    two = await setup.commit(publish=False)  # lost on the way
    fill = setup.log.hold("after")
    three = await setup.commit()
    await setup.log.entered["after"].wait()
    # While the fill is in flight: more live events, another loss, a duplicate.
    four = await setup.commit()
    five = await setup.commit(publish=False)
    six = await setup.commit()
    await setup.publish(three)
    assert subscriber.offsets() == [one]
    fill.set()
    await until(lambda: len(subscriber.events) == 6)
    await until(setup.settled)
    assert subscriber.offsets() == [one, two, three, four, five, six]
    assert second_subscriber.offsets() == subscriber.offsets()
    for mine, theirs in zip(subscriber.events, second_subscriber.events, strict=True):
        assert mine.frame is theirs.frame  # filled or live, one frame for every socket
        assert mine.frame == setup.log.event(mine.offset).frame
    assert setup.metric("jangteo_hub_gap_fills_total", reason="gap") >= 1
    assert setup.metric("jangteo_hub_events_filled_total") >= 2
    seven = await setup.commit()
    assert subscriber.offsets()[-1] == seven


async def test_a_gap_in_the_first_events_after_opening_is_filled(setup: Setup) -> None:
    """Events arriving while the channel opens are held, then checked against the head."""
    before = await setup.commit()
    opening = setup.log.hold("head")
    fresh, resumed = Recorder("fresh"), Recorder("resumed")
    joins = [
        asyncio.create_task(setup.hub.join(CHANNEL, fresh)),
        asyncio.create_task(setup.hub.join(CHANNEL, resumed, since=before)),
    ]
    await setup.log.entered["head"].wait()  # subscribed; the head (== before) is being read
    missed = await setup.commit(publish=False)
    after = await setup.commit()
    opening.set()
    start, _ = await asyncio.gather(*joins)
    await until(setup.settled)
    assert setup.hub.feeds[CHANNEL].last == after
    assert resumed.offsets() == [missed, after]
    # The offset at joining may already include the filled events; what follows it arrives.
    assert start in (before, after)
    assert fresh.offsets() == [o for o in (missed, after) if o > start]
    last = await setup.commit()
    assert resumed.offsets()[-1] == fresh.offsets()[-1] == last


async def test_a_broker_reconnect_backfills_what_was_missed(setup: Setup) -> None:
    subscriber, quiet = Recorder("a"), Recorder("b")
    await setup.hub.join(CHANNEL, subscriber)
    await setup.hub.join(OTHER, quiet)
    one = await setup.commit()
    setup.broker.disconnect()
    two = await setup.commit()
    three = await setup.commit()
    assert subscriber.offsets() == [one]
    setup.broker.reconnect()  # no later event needed: the reconnect alone reads them back
    await until(lambda: len(subscriber.events) == 3)
    await until(setup.settled)
    assert subscriber.offsets() == [one, two, three]
    assert quiet.events == []
    assert setup.metric("jangteo_hub_gap_fills_total", reason="resubscribed") == 2
    four = await setup.commit()
    assert subscriber.offsets() == [one, two, three, four]


async def test_a_reconnect_while_the_channel_opens_reads_again(setup: Setup) -> None:
    """The subscription returned at once while disconnected: what it missed is read back."""
    before = await setup.commit()
    opening = setup.log.hold("head")
    fresh, resumed = Recorder("fresh"), Recorder("resumed")
    joins = [
        asyncio.create_task(setup.hub.join(CHANNEL, fresh)),
        asyncio.create_task(setup.hub.join(CHANNEL, resumed, since=before)),
    ]
    await setup.log.entered["head"].wait()  # the head read (== before) is in flight
    setup.broker.disconnect()
    missed = await setup.commit()
    setup.broker.reconnect()
    opening.set()
    start, _ = await asyncio.gather(*joins)
    await until(lambda: setup.hub.feeds[CHANNEL].last == missed)
    await until(setup.settled)
    assert resumed.offsets() == [missed]
    assert start in (before, missed)
    assert fresh.offsets() == [o for o in (missed,) if o > start]


async def test_a_reconnect_during_a_fill_reads_again(setup: Setup) -> None:
    subscriber = Recorder()
    await setup.hub.join(CHANNEL, subscriber)
    one = await setup.commit()
    two = await setup.commit(publish=False)
    fill = setup.log.hold("after")
    three = await setup.commit()
    await setup.log.entered["after"].wait()  # its snapshot ends at three
    setup.broker.disconnect()
    four = await setup.commit()
    setup.broker.reconnect()
    fill.set()
    await until(lambda: len(subscriber.events) == 4)
    await until(setup.settled)
    assert subscriber.offsets() == [one, two, three, four]


async def test_ephemeral_frames_reach_live_subscribers_only(setup: Setup) -> None:
    live, catching_up = Recorder("live"), Recorder("catching up")
    await setup.hub.join(CHANNEL, live)
    first = await setup.commit()
    replay = setup.log.hold("replay")
    join = asyncio.create_task(setup.hub.join(CHANNEL, catching_up, since=0))
    await setup.log.entered["replay"].wait()
    presence = b'{"op":"presence","channel":"listing:1","online":[1]}'
    await setup.publisher.publish([(CHANNEL, encode_ephemeral(presence))])
    assert live.ephemeral == [text_frame(presence)]
    assert catching_up.ephemeral == []
    assert setup.hub.feeds[CHANNEL].last == first  # no offset, nothing to fill
    replay.set()
    await join
    await setup.publisher.publish([(CHANNEL, encode_ephemeral(presence))])
    assert catching_up.ephemeral == [text_frame(presence)]
    second = await setup.commit()
    assert live.offsets() == [first, second] and catching_up.offsets() == [first, second]
    assert setup.metric("jangteo_hub_gap_fills_total", reason="gap") == 0


# -- silent feeds and holes ------------------------------------------------------------


@pytest.fixture
async def watched(setup: Setup) -> AsyncIterator[Setup]:
    """The hub comparing its feeds with their heads every few milliseconds."""
    await setup.hub.close()
    setup.registry = CollectorRegistry()
    hub = Hub(
        setup.broker,
        setup.log,
        HubMetrics(setup.registry),
        replay_limit=100,
        head_check=0.01,
        poll_interval=0.01,
    )
    setup.hub = hub
    hub.start()
    yield setup
    await hub.close()


async def test_a_feed_gone_silent_without_a_gap_is_found_by_its_head(watched: Setup) -> None:
    """An event that never arrives, and no later one to reveal the gap."""
    subscriber = Recorder()
    await watched.hub.join(CHANNEL, subscriber)
    one = await watched.commit()
    lost = await watched.commit(publish=False)
    await until(lambda: subscriber.offsets() == [one, lost])
    assert watched.metric("jangteo_hub_gap_fills_total", reason="silent") == 1
    assert watched.metric("jangteo_hub_gap_fills_total", reason="gap") == 0
    after = await watched.commit()
    assert subscriber.offsets() == [one, lost, after]


async def test_while_the_broker_is_down_feeds_are_read_from_the_log(watched: Setup) -> None:
    subscriber = Recorder()
    await watched.hub.join(CHANNEL, subscriber)
    watched.broker.disconnect()
    offsets = [await watched.commit() for _ in range(3)]  # published, never received
    await until(lambda: subscriber.offsets() == offsets)
    assert watched.metric("jangteo_hub_gap_fills_total", reason="polling") >= 1
    watched.broker.reconnect()
    more = await watched.commit()
    await until(watched.settled)
    assert subscriber.offsets() == [*offsets, more]


async def test_a_hole_in_a_replay_is_answered_with_resync(setup: Setup) -> None:
    """A resume never skips an event the log lost (pruned out of order, say)."""
    offsets = [await setup.commit() for _ in range(5)]
    setup.log.events[CHANNEL] = [e for e in setup.log.events[CHANNEL] if e.offset != offsets[2]]
    resumed = Recorder()
    with pytest.raises(ResyncNeeded):
        await setup.hub.join(CHANNEL, resumed, since=offsets[0])
    assert resumed.events == []
    intact = Recorder()
    await setup.hub.join(CHANNEL, intact, since=offsets[2])
    assert intact.offsets() == offsets[3:]


async def test_a_hole_met_by_a_gap_fill_resyncs_the_channel(setup: Setup) -> None:
    live, other = Recorder("live"), Recorder("other")
    await setup.hub.join(CHANNEL, live)
    await setup.hub.join(CHANNEL, other)
    one = await setup.commit()
    two = await setup.commit(publish=False)
    await setup.commit(publish=False)
    setup.log.events[CHANNEL] = [e for e in setup.log.events[CHANNEL] if e.offset != two]
    await setup.commit()  # reveals the gap; the fill finds the log broken after `one`
    await until(lambda: live.resyncs == [CHANNEL] and other.resyncs == [CHANNEL])
    assert live.offsets() == [one] and other.offsets() == [one]
    assert CHANNEL not in setup.hub.feeds and CHANNEL not in setup.broker.channels
    assert setup.metric("jangteo_hub_resyncs_total") == 2


async def test_an_unexplained_gap_is_answered_with_resync_never_delivered(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "FILL_RETRY_S", 0.001)
    live = Recorder()
    await setup.hub.join(CHANNEL, live)
    one = await setup.commit()
    # An event whose predecessor the log has never seen (another deployment's, a bug).
    stray = Delivery.from_row(CHANNEL, 1000, 999, 0, "listing.updated", "{}")
    await setup.publisher.publish([(CHANNEL, encode_message(1000, 999, stray.json))])
    await until(lambda: live.resyncs == [CHANNEL])
    assert live.offsets() == [one]
    assert setup.log.calls.count("after") == hub_module.STUCK_FILLS
    # Subscribing again starts afresh, and real events after the stray one arrive.
    again = Recorder("again")
    await setup.hub.join(CHANNEL, again)
    two = await setup.commit()
    assert again.offsets() == [two]


async def test_a_replay_is_paced_by_the_subscriber(setup: Setup) -> None:
    """A slow peer is fed as it reads: one frame, then a wait for it to drain."""
    offsets = [await setup.commit() for _ in range(6)]
    peer = SlowPeer()
    join = asyncio.create_task(setup.hub.join(CHANNEL, peer, since=0))
    await until(lambda: peer.waiting == 1)
    assert peer.offsets() == offsets[:1]
    live = [await setup.commit() for _ in range(2)]  # held until the replay is done
    assert peer.offsets() == offsets[:1]
    for _ in range(3):
        peer.reads.release()
    await until(lambda: peer.waiting == 4)
    assert peer.offsets() == offsets[:4]
    for _ in range(100):
        peer.reads.release()
    await join
    assert peer.offsets() == [*offsets, *live]
    peer.backlogged = False
    last = await setup.commit()
    assert peer.offsets()[-1] == last


async def test_live_events_beyond_the_catch_up_bound_are_read_again(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "CATCH_UP_LIMIT", 2)
    other = Recorder("other")
    await setup.hub.join(CHANNEL, other)
    offsets = [await setup.commit() for _ in range(3)]
    peer = SlowPeer()
    join = asyncio.create_task(setup.hub.join(CHANNEL, peer, since=0))
    await until(lambda: peer.waiting == 1)
    live = [await setup.commit() for _ in range(7)]
    assert len(setup.hub.feeds[CHANNEL].subscribers[peer].events) <= 2  # type: ignore[union-attr]
    for _ in range(100):
        peer.reads.release()
    await join
    assert peer.offsets() == [*offsets, *live] == other.offsets()


# -- joining with since ----------------------------------------------------------------


async def test_join_since_replays_then_goes_live_without_a_seam(setup: Setup) -> None:
    live = Recorder("live")
    await setup.hub.join(CHANNEL, live)
    offsets = [await setup.commit() for _ in range(5)]
    setup.log.commit(OTHER)
    ready: list[tuple[int, int]] = []
    resumed = Recorder("resumed")
    replay = setup.log.hold("replay")
    join = asyncio.create_task(
        setup.hub.join(
            CHANNEL,
            resumed,
            since=offsets[1],
            on_ready=lambda o: ready.append((o, len(resumed.events))),
        )
    )
    await setup.log.entered["replay"].wait()
    # Published while the replay query is in flight: live events, a duplicate, a gap.
    during = [await setup.commit(), await setup.commit()]
    await setup.publish(offsets[-1])
    lost = await setup.commit(publish=False)
    late = await setup.commit()
    replay.set()
    assert await join == offsets[-1]
    assert ready == [(offsets[-1], 0)]  # called once, before any replayed event
    await until(setup.settled)
    after = await setup.commit()
    expected = [*offsets[2:], *during, lost, late, after]
    assert resumed.offsets() == expected
    assert live.offsets() == [*offsets, *during, lost, late, after]


async def test_join_since_on_a_channel_not_yet_open(setup: Setup) -> None:
    offsets = [await setup.commit() for _ in range(3)]  # nobody listens: not delivered
    resumed = Recorder()
    replay = setup.log.hold("replay")
    join = asyncio.create_task(setup.hub.join(CHANNEL, resumed, since=offsets[0]))
    await setup.log.entered["replay"].wait()
    during = await setup.commit()
    replay.set()
    assert await join == offsets[-1]
    assert resumed.offsets() == [*offsets[1:], during]


async def test_join_since_zero_replays_everything(setup: Setup) -> None:
    offsets = [await setup.commit() for _ in range(3)]
    resumed = Recorder()
    await setup.hub.join(CHANNEL, resumed, since=0)
    assert resumed.offsets() == offsets


async def test_join_since_at_the_head_replays_nothing(setup: Setup) -> None:
    offsets = [await setup.commit() for _ in range(3)]
    resumed = Recorder()
    assert await setup.hub.join(CHANNEL, resumed, since=offsets[-1]) == offsets[-1]
    assert resumed.events == []
    nxt = await setup.commit()
    assert resumed.offsets() == [nxt]


async def test_join_since_ahead_of_this_feed_skips_what_the_client_has(setup: Setup) -> None:
    """The client saw events on another instance that this one has not received yet."""
    live = Recorder("live")
    await setup.hub.join(CHANNEL, live)
    first = await setup.commit()
    ahead = [await setup.commit(publish=False) for _ in range(3)]  # committed, still in transit
    resumed = Recorder("resumed")
    assert await setup.hub.join(CHANNEL, resumed, since=ahead[1]) == first
    await setup.publish(*ahead)
    newer = await setup.commit()
    assert resumed.offsets() == [ahead[2], newer]
    assert live.offsets() == [first, *ahead, newer]


async def test_join_since_while_a_gap_is_being_filled(setup: Setup) -> None:
    live = Recorder("live")
    await setup.hub.join(CHANNEL, live)
    one = await setup.commit()
    two = await setup.commit(publish=False)
    fill = setup.log.hold("after")
    three = await setup.commit()
    await setup.log.entered["after"].wait()
    resumed_old, resumed_new = Recorder("old"), Recorder("new")
    assert await setup.hub.join(CHANNEL, resumed_old, since=0) == one
    assert await setup.hub.join(CHANNEL, resumed_new, since=two) == one
    fill.set()
    await until(setup.settled)
    four = await setup.commit()
    assert live.offsets() == [one, two, three, four]
    assert resumed_old.offsets() == [one, two, three, four]
    assert resumed_new.offsets() == [three, four]


async def test_leaving_during_the_replay_does_not_subscribe(setup: Setup) -> None:
    live = Recorder("live")
    await setup.hub.join(CHANNEL, live)
    first = await setup.commit()
    leaver = Recorder("leaver")
    replay = setup.log.hold("replay")
    join = asyncio.create_task(setup.hub.join(CHANNEL, leaver, since=0))
    await setup.log.entered["replay"].wait()
    setup.hub.leave(CHANNEL, leaver)
    during = await setup.commit()
    replay.set()
    await join
    assert leaver not in setup.hub.feeds[CHANNEL].subscribers
    after = await setup.commit()
    assert during not in leaver.offsets() and after not in leaver.offsets()
    assert live.offsets() == [first, during, after]


@pytest.mark.parametrize("others", [0, 1])
async def test_resync_for_pruned_events_leaves_nothing_subscribed(
    setup: Setup, others: int
) -> None:
    live = Recorder("live")
    if others:
        await setup.hub.join(CHANNEL, live)
    offsets = [await setup.commit() for _ in range(6)]
    setup.log.prune(through=offsets[2])
    resumed = Recorder("resumed")
    ready: list[int] = []
    with pytest.raises(ResyncNeeded):
        await setup.hub.join(CHANNEL, resumed, since=offsets[1], on_ready=ready.append)
    assert ready == []  # no `subscribed` before a resync
    if others:
        assert resumed not in setup.hub.feeds[CHANNEL].subscribers
        assert setup.broker.unsubscribes == {}
    else:
        assert CHANNEL not in setup.hub.feeds
        assert CHANNEL not in setup.broker.channels
        assert setup.broker.unsubscribes == {CHANNEL: 1}
    await setup.commit()
    assert resumed.events == []
    # The oldest retained event names offsets[2] as its predecessor: that is in reach.
    await setup.hub.join(CHANNEL, resumed, since=offsets[2])
    assert resumed.offsets() == [*offsets[3:], offsets[-1] + 1]


async def test_resync_for_an_offset_ahead_of_everything(setup: Setup) -> None:
    live = Recorder("live")
    await setup.hub.join(CHANNEL, live)
    head = await setup.commit()
    setup.log.commit(OTHER)
    resumed = Recorder("resumed")
    with pytest.raises(ResyncNeeded):
        await setup.hub.join(CHANNEL, resumed, since=setup.log.last_position + 1)
    assert resumed not in setup.hub.feeds[CHANNEL].subscribers
    # An offset of another channel beyond this channel's head is still a valid position.
    assert await setup.hub.join(CHANNEL, resumed, since=setup.log.last_position) == head
    assert resumed.events == []


async def test_resync_when_more_than_the_replay_limit_was_missed(setup: Setup) -> None:
    hub = Hub(setup.broker, setup.log, HubMetrics(CollectorRegistry()), replay_limit=3)
    try:
        offsets = [await setup.commit() for _ in range(5)]
        with pytest.raises(ResyncNeeded):
            await hub.join(CHANNEL, Recorder(), since=offsets[0])
        assert CHANNEL not in hub.feeds
        resumed = Recorder()
        await hub.join(CHANNEL, resumed, since=offsets[1])
        assert resumed.offsets() == offsets[2:]
    finally:
        await hub.close()


async def test_a_failed_open_leaves_nothing_subscribed(setup: Setup) -> None:
    setup.log.failures["head"] = OSError("database down")
    subscriber = Recorder()
    with pytest.raises(OSError, match="database down"):
        await setup.hub.join(CHANNEL, subscriber)
    assert CHANNEL not in setup.hub.feeds
    assert CHANNEL not in setup.broker.channels
    assert await setup.hub.join(CHANNEL, subscriber) == 0
    offset = await setup.commit()
    assert subscriber.offsets() == [offset]


async def test_a_failed_fill_is_retried(setup: Setup) -> None:
    subscriber = Recorder()
    await setup.hub.join(CHANNEL, subscriber)
    one = await setup.commit()
    two = await setup.commit(publish=False)
    setup.log.failures["after"] = OSError("connection reset")
    three = await setup.commit()
    await until(lambda: len(subscriber.events) == 3)
    assert subscriber.offsets() == [one, two, three]


# -- randomized ------------------------------------------------------------------------


@dataclass
class Subscription:
    start: int | None = None  # the offset at the first join: everything after it is owed
    join: asyncio.Task[int] | None = None
    hub: Hub | None = None  # where it is subscribed now, if anywhere


class Member(Recorder):
    """A client: subscribes through any instance, resumes with ``since`` = its last offset."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.subs: dict[str, Subscription] = {}

    def position(self, channel: str) -> int | None:
        offsets = self.offsets(channel)
        return offsets[-1] if offsets else self.subs[channel].start

    async def settle(self, channel: str) -> None:
        sub = self.subs[channel]
        if sub.join is not None:
            upto = await sub.join
            sub.join = None
            if sub.start is None:
                sub.start = upto


@pytest.mark.parametrize("window", [0, 3, 256])  # events each feed keeps for resumes
@pytest.mark.parametrize("seed", range(10))
async def test_randomized_subscribers_drops_and_reconnects(seed: int, window: int) -> None:
    rng = random.Random(seed)
    bus = MemoryBus()
    log = FakeLog(rng)
    brokers = [bus.client() for _ in range(2)]  # two instances on one bus
    hubs = [
        Hub(b, log, HubMetrics(CollectorRegistry()), replay_limit=10_000, recent_size=window,
            recent_age=3600)
        for b in brokers
    ]  # fmt: skip
    publisher = bus.client()
    channels = [f"listing:{i}" for i in range(3)]
    members = [Member(f"m{i}") for i in range(6)]
    recent: dict[str, list[tuple[str, bytes]]] = {channel: [] for channel in channels}
    lossy_end = dict.fromkeys(channels, False)  # the channel's last event did not reach all
    try:
        for _ in range(600):
            roll = rng.random()
            if roll < 0.40:
                channel = rng.choice(channels)
                message = log.message(log.commit(channel))
                recent[channel] = [*recent[channel][-4:], message]
                fate = rng.random()
                lossy_end[channel] = fate < 0.22
                if fate < 0.12:
                    pass  # lost for everyone
                elif fate < 0.22:
                    for broker in brokers:  # lost for some instances only
                        if rng.random() < 0.5:
                            broker.receive(*message)
                else:
                    await publisher.publish([message])
            elif roll < 0.45:
                channel = rng.choice(channels)
                if recent[channel]:  # a takeover publishes a tail again
                    await publisher.publish(
                        recent[channel][-rng.randint(1, len(recent[channel])) :]
                    )
            elif roll < 0.68:
                member = rng.choice(members)
                channel = rng.choice(channels)
                sub = member.subs.setdefault(channel, Subscription())
                await member.settle(channel)
                if sub.hub is not None:
                    sub.hub.leave(channel, member)
                    sub.hub = None
                else:
                    sub.hub = rng.choice(hubs)
                    since = member.position(channel)
                    sub.join = asyncio.create_task(sub.hub.join(channel, member, since=since))
            elif roll < 0.72:
                broker = rng.choice(brokers)
                if broker.connected:
                    broker.disconnect()
                else:
                    broker.reconnect()
            else:
                for _ in range(rng.randint(1, 4)):
                    await asyncio.sleep(0)

        for channel in channels:  # a later event reveals a loss; the last ones need one
            if lossy_end[channel]:
                await publisher.publish([log.message(log.commit(channel))])
        for broker in brokers:  # what a disconnected instance missed comes back from the log
            if not broker.connected:
                broker.reconnect()
        for member in members:
            for channel in member.subs:
                await member.settle(channel)

        def caught_up() -> bool:
            return all(
                member.position(channel) == log.heads[channel]
                for member in members
                for channel, sub in member.subs.items()
                if sub.hub is not None
            ) and all(
                feed.opened and not feed.filling and not feed.inbox
                for hub in hubs
                for feed in hub.feeds.values()
            )

        await until(caught_up)
        checked = 0
        for member in members:
            for channel, sub in member.subs.items():
                assert sub.start is not None
                received = member.offsets(channel)
                end = received[-1] if received else sub.start
                owed = [o for o in log.committed(channel) if sub.start < o <= end]
                assert received == owed, (seed, member, channel)
                checked += len(received)
        assert checked > 100
        subscribed = sum(1 for hub in hubs for feed in hub.feeds.values() for _ in feed.subscribers)
        assert subscribed == sum(1 for m in members for sub in m.subs.values() if sub.hub)
    finally:
        for hub in hubs:
            await hub.close()
