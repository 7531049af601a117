"""Resumes from a feed's recent events, and one log read for resumes that come together.

The hub and the in-memory log of test_hub.py; ``log.calls`` counts the reads a resume made.
Nothing here reads the clock: RecentEvents is given its ``now``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from realtime.event import Delivery
from realtime.hub import Hub
from realtime.log import ResyncNeeded
from realtime.metrics import HubMetrics
from realtime.resume import RecentEvents
from tests.realtime.test_hub import (
    CHANNEL,
    OTHER,
    Recorder,
    Setup,
    make_setup,
    until,
)

WINDOW = 8


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    made = make_setup(recent_size=WINDOW)
    yield made
    await made.hub.close()


def resumes(setup: Setup, source: str) -> float:
    return setup.metric("jangteo_hub_resumes_total", source=source)


async def live_channel(setup: Setup, events: int) -> list[int]:
    """A channel with a live subscriber (so its feed is open) and ``events`` delivered."""
    await setup.hub.join(CHANNEL, Recorder("live"))
    return [await setup.commit() for _ in range(events)]


# -- served from memory ------------------------------------------------------------------


async def test_a_resume_within_the_recent_events_reads_nothing(setup: Setup) -> None:
    offsets = await live_channel(setup, 5)
    setup.log.commit(OTHER)  # offsets are not contiguous within a channel
    offsets.append(await setup.commit())
    calls = len(setup.log.calls)
    for since in [offsets[0], offsets[2], offsets[-1]]:
        resumed = Recorder(str(since))
        assert await setup.hub.join(CHANNEL, resumed, since=since) == offsets[-1]
        assert resumed.offsets() == [o for o in offsets if o > since]
    # Between two offsets of the channel (an offset of another channel) is fine too.
    between = Recorder("between")
    await setup.hub.join(CHANNEL, between, since=offsets[-2] + 1)
    assert between.offsets() == [offsets[-1]]
    assert setup.log.calls[calls:] == []
    assert resumes(setup, "memory") == 4 and resumes(setup, "log") == 0


async def test_a_resume_from_before_the_feed_opened_reads_once_then_memory(setup: Setup) -> None:
    offsets = [await setup.commit() for _ in range(6)]  # nobody listens yet
    first = Recorder("first")
    await setup.hub.join(CHANNEL, first, since=offsets[3])
    assert first.offsets() == offsets[4:]
    assert setup.log.calls.count("replay") == 1
    # The read kept the channel's latest events (up to the window): older resumes need none.
    second = Recorder("second")
    await setup.hub.join(CHANNEL, second, since=offsets[0])
    assert second.offsets() == offsets[1:]
    assert setup.log.calls.count("replay") == 1
    live = await setup.commit()
    assert first.offsets()[-1] == second.offsets()[-1] == live


async def test_resumes_arriving_together_share_one_read(setup: Setup) -> None:
    offsets = [await setup.commit() for _ in range(WINDOW)]
    rng = random.Random(7)
    read = setup.log.hold("replay")
    resumers = [(Recorder(str(i)), rng.choice([0, *offsets[:-1]])) for i in range(40)]
    joins = [
        asyncio.create_task(setup.hub.join(CHANNEL, recorder, since=since))
        for recorder, since in resumers
    ]
    await setup.log.entered["replay"].wait()
    during = [await setup.commit() for _ in range(3)]  # live while the read is out
    read.set()
    await asyncio.gather(*joins)
    await until(setup.settled)
    for recorder, since in resumers:
        assert recorder.offsets() == [o for o in [*offsets, *during] if o > since], since
    assert setup.log.calls.count("replay") == 1
    assert resumes(setup, "log") == 1
    assert resumes(setup, "shared") + resumes(setup, "memory") == 39


async def test_a_resume_further_back_than_the_window_reads_the_log(setup: Setup) -> None:
    offsets = await live_channel(setup, 3 * WINDOW)
    resumed = Recorder()
    await setup.hub.join(CHANNEL, resumed, since=offsets[2])
    assert resumed.offsets() == offsets[3:]
    assert setup.log.calls.count("replay") == 1
    assert len(setup.hub.feeds[CHANNEL].recent) == WINDOW  # still bounded


async def test_the_window_moving_on_during_a_read_costs_no_event(setup: Setup) -> None:
    offsets = await live_channel(setup, 2 * WINDOW)
    read = setup.log.hold("replay")
    resumed = Recorder()
    join = asyncio.create_task(setup.hub.join(CHANNEL, resumed, since=offsets[1]))
    await setup.log.entered["replay"].wait()
    # More than a window's worth goes live meanwhile: the read no longer meets the window.
    during = [await setup.commit() for _ in range(2 * WINDOW)]
    read.set()
    assert await join == offsets[-1]
    await until(setup.settled)
    assert resumed.offsets() == [*offsets[2:], *during]


async def test_pruned_events_are_still_a_resync(setup: Setup) -> None:
    offsets = [await setup.commit() for _ in range(3 * WINDOW)]
    setup.log.prune(offsets[WINDOW])
    with pytest.raises(ResyncNeeded, match="retention"):
        await setup.hub.join(CHANNEL, Recorder(), since=offsets[2])
    kept = Recorder()
    await setup.hub.join(CHANNEL, kept, since=offsets[-3])  # served from what was read
    assert kept.offsets() == offsets[-2:]


async def test_the_replay_limit_holds_for_memory_and_log(setup: Setup) -> None:
    hub = Hub(
        setup.broker, setup.log, HubMetrics(CollectorRegistry()), replay_limit=3,
        recent_size=WINDOW, recent_age=60,
    )  # fmt: skip
    try:
        await hub.join(CHANNEL, Recorder("live"))
        offsets = [await setup.commit() for _ in range(2 * WINDOW)]
        with pytest.raises(ResyncNeeded, match="more than 3"):
            await hub.join(CHANNEL, Recorder(), since=offsets[-5])  # in memory
        with pytest.raises(ResyncNeeded, match="more than 3"):
            await hub.join(CHANNEL, Recorder(), since=offsets[0])  # from the log
        within = Recorder()
        await hub.join(CHANNEL, within, since=offsets[-4])
        assert within.offsets() == offsets[-3:]
    finally:
        await hub.close()


async def test_resumes_ahead_of_the_feed_ask_the_log_once_together(setup: Setup) -> None:
    offsets = await live_channel(setup, 2)
    ahead = [await setup.commit(publish=False) for _ in range(2)]  # still in transit
    asked = setup.log.hold("last_published")
    joins = [
        asyncio.create_task(setup.hub.join(CHANNEL, Recorder(str(i)), since=ahead[i % 2]))
        for i in range(20)
    ]
    await setup.log.entered["last_published"].wait()
    asked.set()
    assert await asyncio.gather(*joins) == [offsets[-1]] * 20
    assert setup.log.calls.count("last_published") == 1
    with pytest.raises(ResyncNeeded, match="ahead"):
        await setup.hub.join(CHANNEL, Recorder(), since=setup.log.last_position + 1)


# -- RecentEvents ------------------------------------------------------------------------


def chain(channel: str, offsets: list[int], start: int = 0) -> list[Delivery]:
    events, prev = [], start
    for offset in offsets:
        events.append(Delivery.from_row(channel, offset, prev, 0, "t", "{}"))
        prev = offset
    return events


def test_recent_events_keep_at_most_their_size_and_age() -> None:
    recent = RecentEvents(10, size=3, age=5.0)
    assert recent.covers(10) and not recent.covers(9)
    for now, event in enumerate(chain(CHANNEL, [12, 15, 16, 20], start=10)):
        recent.add(event, float(now))
    assert [e.offset for e in recent.events] == [15, 16, 20]
    assert recent.start == 12 and not recent.covers(11) and recent.covers(12)
    assert [e.offset for e in recent.after(12, 20)] == [15, 16, 20]
    assert [e.offset for e in recent.after(15, 16)] == [16]
    assert [e.offset for e in recent.after(17, 20)] == [20]
    assert recent.after(20, 20) == []
    recent.trim(7.5)  # 15 (added at 1) and 16 (at 2) are older than 5 s
    assert [e.offset for e in recent.events] == [20] and recent.start == 16


def test_recent_events_take_older_events_that_end_where_they_start() -> None:
    recent = RecentEvents(16, size=4, age=60.0)
    for event in chain(CHANNEL, [20, 22], start=16):
        recent.add(event, 1.0)
    recent.extend_back(chain(CHANNEL, [5, 9, 12], start=3), 2.0)  # ends at 12, not 16
    assert recent.start == 16
    recent.extend_back(chain(CHANNEL, [5, 9, 12, 16], start=3), 2.0)
    assert [e.offset for e in recent.events] == [12, 16, 20, 22]  # the newest that fit
    assert recent.start == 9 and list(recent.stamps) == [1.0] * 4
    assert [e.offset for e in recent.after(9, 22)] == [12, 16, 20, 22]
