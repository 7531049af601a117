"""One socket's outgoing side: whole frames straight to the transport, a bounded queue behind.

While the peer keeps up, a frame is written at once (the fan-out loop never waits). When
the transport's buffer is past its high-water mark, frames wait in a bounded queue that a
writer task of this socket drains as the peer reads; when the queue is full the peer is
too slow, and ``on_overflow`` closes it (1013): it resumes later with ``since``. So one
slow client never delays the others, and its memory is bounded by the queue.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from realtime.event import Delivery

HIGH_WATER = 64 * 1024  # bytes buffered in the transport before frames queue up
LOW_WATER = 16 * 1024  # the queue is drained again once the buffer is below this
DRAIN_POLL_S = 0.005


class SocketWriter:
    __slots__ = ("closed", "limit", "on_overflow", "on_resync", "queue", "task", "transport")

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        limit: int,
        on_overflow: Callable[[], None],
        on_resync: Callable[[str], None] | None = None,
    ) -> None:
        self.transport: asyncio.WriteTransport = transport  # type: ignore[assignment]
        self.limit = limit
        self.on_overflow = on_overflow
        self.on_resync = on_resync
        self.queue: collections.deque[bytes] | None = None  # made when the peer falls behind
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def deliver(self, event: Delivery) -> None:
        self.send(event.frame)

    def resync(self, channel: str) -> None:
        if self.on_resync is not None:
            self.on_resync(channel)

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
        """Write or queue one complete WebSocket frame; never waits."""
        if self.closed:
            return
        queue = self.queue
        if queue:  # older frames wait: keep the order
            if len(queue) >= self.limit:
                self.stop()
                self.on_overflow()
                return
            queue.append(frame)
        elif self.transport.is_closing():
            self.stop()
        elif self.transport.get_write_buffer_size() <= HIGH_WATER:
            self.transport.write(frame)
        else:
            if queue is None:
                queue = self.queue = collections.deque()
            queue.append(frame)
            self.task = asyncio.create_task(self._drain(queue))

    async def _drain(self, queue: collections.deque[bytes]) -> None:
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
        """Send nothing more (the socket is closing); drops what waits."""
        self.closed = True
        if self.queue is not None:
            self.queue.clear()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.task = None
