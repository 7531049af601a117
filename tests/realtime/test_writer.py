"""SocketWriter against a fake transport whose write buffer the test fills and drains by hand.

No test reads the clock: the writer's drain task is awaited through conditions (how many
times it looked at the buffer, what was written), with TIMEOUT only against hangs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from realtime import writer as writer_module
from realtime.event import Delivery
from realtime.writer import HIGH_WATER, LOW_WATER, SocketWriter

TIMEOUT = 30.0


async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.001)


class FakeTransport(asyncio.WriteTransport):
    """Bytes written stay "buffered" until the test lets the peer read them."""

    def __init__(self) -> None:
        super().__init__()
        self.buffered = 0
        self.writes: list[bytes] = []
        self.writes_while_closing: list[bytes] = []
        self.closing = False
        self.size_checks = 0

    def write(self, data: Any) -> None:
        if self.closing:
            self.writes_while_closing.append(bytes(data))
            return
        self.writes.append(bytes(data))
        self.buffered += len(data)

    def get_write_buffer_size(self) -> int:
        self.size_checks += 1
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def peer_reads(self, size: int | None = None) -> None:
        self.buffered = 0 if size is None else max(0, self.buffered - size)

    async def polled(self, times: int = 3) -> None:
        """Wait until the drain task has looked at the buffer ``times`` more times."""
        target = self.size_checks + times
        await until(lambda: self.size_checks >= target)


class Overflows:
    """A writer's owner that counts the times it was told its peer is too slow, and
    remembers the channels it was told to resync."""

    def __init__(self) -> None:
        self.calls = 0
        self.resyncs: list[str] = []

    def too_slow(self) -> None:
        self.calls += 1

    def resynced(self, channel: str) -> None:
        self.resyncs.append(channel)


def frame(n: int, size: int = 100) -> bytes:
    body = b"%d:" % n
    return body + b"x" * (size - len(body))


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "DRAIN_POLL_S", 0.0005)


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


async def test_a_turns_first_frame_is_written_at_once_and_the_rest_together(
    transport: FakeTransport,
) -> None:
    overflow = Overflows()
    writer = SocketWriter(transport, 4, overflow)
    frames = [frame(i) for i in range(10)]
    for f in frames:
        writer.send(f)
    assert transport.writes == [frames[0]]  # synchronously, no task in between
    await asyncio.sleep(0)  # the end of the loop turn: one write for the burst
    assert transport.writes == [frames[0], b"".join(frames[1:])]
    assert writer.task is None and not writer.queue
    writer.send(frame(10))  # a lone frame in a later turn is not held back
    assert transport.writes[-1] == frame(10)
    await asyncio.sleep(0)
    assert len(transport.writes) == 3
    transport.buffered = HIGH_WATER  # at the mark, not beyond it: still written at once
    writer.send(frame(11))
    assert transport.writes[-1] == frame(11)
    assert overflow.calls == 0


async def test_a_burst_past_the_high_water_mark_queues_the_rest_in_order(
    transport: FakeTransport,
) -> None:
    writer = SocketWriter(transport, 100, Overflows())
    transport.buffered = HIGH_WATER - 250
    frames = [frame(i) for i in range(6)]
    for f in frames:
        writer.send(f)
    # 100 bytes written, 100 gathered: the third would pass the mark, so it and the
    # rest wait in the queue, behind the gathered one.
    assert transport.writes == [frames[0]]
    assert list(writer.queue or ()) == frames[2:]
    await asyncio.sleep(0)
    assert transport.writes == [frames[0], frames[1]]
    transport.peer_reads()
    await until(lambda: len(transport.writes) == 6)
    assert transport.writes == frames


async def test_stop_writes_what_was_gathered_this_turn(transport: FakeTransport) -> None:
    writer = SocketWriter(transport, 10, Overflows())
    writer.send(frame(0))
    writer.send(frame(1))  # gathered
    writer.stop()  # e.g. a close frame follows: what was sent before it goes first
    assert transport.writes == [frame(0), frame(1)]
    await asyncio.sleep(0)
    writer.send(frame(2))
    assert transport.writes == [frame(0), frame(1)]


async def test_deliver_writes_the_events_frame(transport: FakeTransport) -> None:
    writer = SocketWriter(transport, 4, Overflows())
    event = Delivery.from_row("listing:1", 5, 3, 1_764_590_000_123, "listing.updated", "{}")
    writer.deliver(event)
    assert transport.writes == [event.frame]


async def test_frames_queue_beyond_the_high_water_mark_and_follow_in_order(
    transport: FakeTransport,
) -> None:
    overflow = Overflows()
    writer = SocketWriter(transport, 100, overflow)
    writer.send(frame(0))
    transport.buffered = HIGH_WATER + 1
    for i in range(1, 4):
        writer.send(frame(i))
    assert transport.writes == [frame(0)]
    assert list(writer.queue or ()) == [frame(1), frame(2), frame(3)]
    drain = writer.task
    assert drain is not None
    # The buffer empties, but older frames still wait: a new one must not overtake them.
    transport.peer_reads()
    writer.send(frame(4))
    assert transport.writes == [frame(0)]
    await until(lambda: len(transport.writes) == 5)
    assert transport.writes == [frame(i) for i in range(5)]
    await until(drain.done)
    assert writer.task is None and not writer.queue
    # Back to writing at once.
    writer.send(frame(5))
    assert transport.writes[-1] == frame(5)
    assert overflow.calls == 0


async def test_the_queue_waits_for_the_low_water_mark_and_refills_only_to_high_water(
    transport: FakeTransport,
) -> None:
    writer = SocketWriter(transport, 100, Overflows())
    size = 30 * 1024
    transport.buffered = HIGH_WATER + 1
    frames = [frame(i, size) for i in range(6)]
    for f in frames:
        writer.send(f)
    assert transport.writes == []
    transport.buffered = LOW_WATER + 1  # below high water but not yet drained enough
    await transport.polled()
    assert transport.writes == []
    transport.buffered = LOW_WATER
    # Writes while the buffer is at most HIGH_WATER: 16K -> 46K -> 76K, then waits.
    await until(lambda: len(transport.writes) == 2)
    await transport.polled()
    assert transport.writes == frames[:2]
    assert transport.buffered > HIGH_WATER
    transport.peer_reads()
    await until(lambda: len(transport.writes) == 5)
    await transport.polled()
    assert transport.writes == frames[:5]
    transport.peer_reads()
    await until(lambda: len(transport.writes) == 6)
    assert transport.writes == frames
    await until(lambda: writer.task is None)
    assert not writer.queue


async def test_overflow_at_the_limit_tells_the_owner_once_and_stops(
    transport: FakeTransport,
) -> None:
    overflow = Overflows()
    limit = 3
    writer = SocketWriter(transport, limit, overflow)
    transport.buffered = HIGH_WATER + 1
    for i in range(limit):
        writer.send(frame(i))
    assert overflow.calls == 0 and len(writer.queue or ()) == limit
    drain = writer.task
    assert drain is not None
    writer.send(frame(limit))
    assert overflow.calls == 1
    assert writer.closed and not writer.queue
    for i in range(limit + 1, limit + 5):
        writer.send(frame(i))
    assert overflow.calls == 1
    transport.peer_reads()
    await asyncio.wait([drain], timeout=TIMEOUT)
    assert drain.done()
    writer.send(frame(99))
    assert transport.writes == []
    assert overflow.calls == 1


async def test_stop_drops_the_queue_and_writes_nothing_more(transport: FakeTransport) -> None:
    overflow = Overflows()
    writer = SocketWriter(transport, 10, overflow)
    writer.send(frame(0))
    transport.buffered = HIGH_WATER + 1
    writer.send(frame(1))
    writer.send(frame(2))
    drain = writer.task
    assert drain is not None
    writer.stop()
    assert not writer.queue
    transport.peer_reads()
    await asyncio.wait([drain], timeout=TIMEOUT)
    assert drain.done()
    writer.send(frame(3))
    assert transport.writes == [frame(0)]
    assert overflow.calls == 0


async def test_nothing_is_written_to_a_closing_transport(transport: FakeTransport) -> None:
    overflow = Overflows()
    writer = SocketWriter(transport, 10, overflow)
    writer.send(frame(0))
    transport.closing = True
    writer.send(frame(1))
    transport.closing = False  # even if it looked open again, the writer has stopped
    writer.send(frame(2))
    assert transport.writes == [frame(0)]
    assert transport.writes_while_closing == []
    assert writer.closed
    assert overflow.calls == 0


async def test_a_transport_closing_while_frames_wait_stops_the_drain(
    transport: FakeTransport,
) -> None:
    overflow = Overflows()
    writer = SocketWriter(transport, 10, overflow)
    transport.buffered = HIGH_WATER + 1
    writer.send(frame(0))
    writer.send(frame(1))
    drain = writer.task
    assert drain is not None
    await transport.polled()
    transport.closing = True
    transport.peer_reads()
    await asyncio.wait([drain], timeout=TIMEOUT)
    assert drain.done() and not drain.cancelled()
    assert writer.closed and not writer.queue
    writer.send(frame(2))
    assert transport.writes == []
    assert transport.writes_while_closing == []
    assert overflow.calls == 0


async def test_a_resync_from_the_hub_reaches_the_owner() -> None:
    owner = Overflows()
    writer = SocketWriter(FakeTransport(), 10, owner)
    writer.resync("listing:1")
    assert owner.resyncs == ["listing:1"] and owner.calls == 0
