"""One socket's outgoing side: whole frames straight to the transport, a bounded queue behind.

While the peer keeps up, a frame is written at once (the fan-out loop never waits), and
the frames that follow it in the same turn of the event loop (a burst: many events read
from Redis in one go) are written together at the end of that turn, one write for all of
them instead of one per frame. A lone event is never held back. When
the transport's buffer is past its high-water mark, frames wait in a bounded queue that a
writer task of this socket drains as the peer reads; when the queue is full the peer is
too slow, and its owner closes it (1013): it resumes later with ``since``. So one
slow client never delays the others, and its memory is bounded by the queue.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from typing import Protocol

from realtime.event import Delivery

HIGH_WATER = 64 * 1024  # bytes buffered in the transport before frames queue up
LOW_WATER = 16 * 1024  # the queue is drained again once the buffer is below this
DRAIN_POLL_S = 0.005


class WriterOwner(Protocol):
    """What a writer tells the socket or stream it writes for. (The owner itself, not
    callbacks bound to it: two bound methods per socket are 128 bytes, and a process holds
    tens of thousands of sockets.)"""

    def too_slow(self) -> None:
        """The queue is full: the peer does not keep up."""

    def resynced(self, channel: str) -> None:
        """The hub dropped this writer from ``channel`` (events it cannot chain)."""


class _Flusher:
    """Ends each loop turn in which frames were written: the turn's number moves on, and the
    frames each writer gathered after its first of the turn are written. A lone frame costs
    its writer no more than noting the turn it was written in."""

    __slots__ = ("loop", "scheduled", "turn", "writers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.turn = 0
        self.scheduled = False
        self.writers: list[SocketWriter] = []

    def schedule(self) -> None:
        self.scheduled = True
        self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.turn += 1
        self.scheduled = False
        writers, self.writers = self.writers, []
        for writer in writers:
            writer.flush()


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = (
    weakref.WeakKeyDictionary()
)


def _flusher() -> _Flusher:
    loop = asyncio.get_running_loop()
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _Flusher(loop)
    return flusher


class SocketWriter:
    __slots__ = (
        "closed", "flusher", "gathered", "gathered_bytes", "limit", "owner", "queue", "task",
        "transport", "turn",
    )  # fmt: skip

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        limit: int,
        owner: WriterOwner,
    ) -> None:
        self.transport: asyncio.WriteTransport = transport  # type: ignore[assignment]
        self.limit = limit
        self.owner = owner
        self.queue: collections.deque[bytes] | None = None  # made when the peer falls behind
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.flusher = _flusher()
        self.turn = -1  # the flusher's turn of its last write: later frames of it gather
        self.gathered: list[bytes] | None = None  # made by the turn's second frame
        self.gathered_bytes = 0

    def deliver(self, event: Delivery) -> None:
        self.send(event.frame)

    def resync(self, channel: str) -> None:
        self.owner.resynced(channel)

    @property
    def backlogged(self) -> bool:
        """Frames wait for the peer: whoever can wait (a replay) should, until drained."""
        return bool(self.queue) and not self.closed

    async def drained(self) -> None:
        """Wait until the queue is empty, or the socket is closing."""
        # Polled like the drain itself: only a replay to a slow peer ever waits here.
        while self.queue and not self.closed:  # noqa: ASYNC110
            await asyncio.sleep(DRAIN_POLL_S)

    def send(self, frame: bytes) -> None:
        """Write, gather or queue one complete frame; never waits."""
        if self.closed:
            return
        queue = self.queue
        if queue:  # older frames wait: keep the order
            if len(queue) >= self.limit:
                self.stop()
                self.owner.too_slow()
                return
            queue.append(frame)
            return
        transport = self.transport
        if transport.is_closing():
            self.stop()
            return
        buffered = transport.get_write_buffer_size()
        flusher = self.flusher
        if self.turn != flusher.turn:  # its first frame this turn
            if buffered <= HIGH_WATER:
                transport.write(frame)
                self.turn = flusher.turn
                if not flusher.scheduled:
                    flusher.schedule()
                return
        elif buffered + self.gathered_bytes + len(frame) <= HIGH_WATER:
            if self.gathered is None:
                self.gathered = [frame]
                flusher.writers.append(self)
            else:
                self.gathered.append(frame)
            self.gathered_bytes += len(frame)
            return
        queue = self.queue = collections.deque((frame,))
        self.task = asyncio.create_task(self._drain(queue))

    def flush(self) -> None:
        """Write what was gathered this turn (before any queued frame: they are newer)."""
        gathered, self.gathered, self.gathered_bytes = self.gathered, None, 0
        if gathered and not self.closed and not self.transport.is_closing():
            self.transport.writelines(gathered)

    async def _drain(self, queue: collections.deque[bytes]) -> None:
        self.flush()  # frames gathered before the first queued one go first
        transport = self.transport
        while queue and not self.closed:
            if transport.is_closing():
                self.stop()
                return
            if transport.get_write_buffer_size() > LOW_WATER:
                # asyncio offers no public "wait for drain" on a bare transport; a short
                # poll costs nothing while only slow sockets run it.
                await asyncio.sleep(DRAIN_POLL_S)
                continue
            while queue and transport.get_write_buffer_size() <= HIGH_WATER:
                transport.write(queue.popleft())
        self.task = None

    def stop(self) -> None:
        """Send nothing more (the socket is closing): what was sent this turn is written,
        what waits in the queue for a slow peer is dropped."""
        self.flush()
        self.closed = True
        if self.queue is not None:
            self.queue.clear()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.task = None
