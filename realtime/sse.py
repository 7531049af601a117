"""One Server-Sent Events stream: a receive-only peer of the gateway on a fixed list of channels.

The stream is the hub's subscriber on each of its channels, joined side by side (channels
are delivered independently, as on a socket). Every message goes straight to the transport
through the stream's bounded ``SocketWriter``, so a slow reader never delays the others
and is ended (1013) when its queue is full. The stream's cursor, one offset per channel,
is the ``id`` of each message that moves it: a client resumes every channel from it.

A stream ends with a last ``close`` message carrying the code a socket would have been
closed with, then the end of the response; a peer that went away ends it without one.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence

from aiohttp import HttpVersion11, web

from realtime import disconnect, frames
from realtime.channels import Caller, ChannelRefused, ChannelRules
from realtime.disconnect import Disconnect
from realtime.event import Delivery
from realtime.hub import TRANSIENT_ERRORS, Hub
from realtime.log import ResyncNeeded
from realtime.presence import Presence
from realtime.sse_frames import (
    chunk,
    comment,
    format_cursor,
    message,
    websocket_payload,
)
from realtime.sse_metrics import StreamMetrics
from realtime.writer import SocketWriter
from server.middlewares import echo_request_id

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0  # a peer that does not take the end of the stream in time is cut off
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",  # nginx and its kind: pass each message on at once
}
OPENING = comment(b"jangteo event stream")
HEARTBEAT = comment()


class EventStream:
    # Slots: a process may hold thousands of these, mostly idle.
    __slots__ = (
        "channels", "chunked", "closing", "cursor", "ended", "expires_at", "hub", "index",
        "joined", "joins", "metrics", "presence", "refusal", "response", "rules",
        "session_id", "since", "started", "transport", "user_id", "writer",
    )  # fmt: skip

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        *,
        user_id: int,
        session_id: uuid.UUID,
        channels: Sequence[str],
        since: Sequence[int | None],
        send_queue: int,
        hub: Hub,
        rules: ChannelRules,
        metrics: StreamMetrics,
        presence: Presence | None = None,
    ) -> None:
        self.transport: asyncio.WriteTransport = transport  # type: ignore[assignment]
        self.user_id = user_id
        self.session_id = session_id
        self.channels = tuple(channels)
        self.index = {channel: n for n, channel in enumerate(self.channels)}
        self.since = tuple(since)
        # A field is the client's position in its channel: what it asked to resume from,
        # then moved by every event; empty while it has none (or the channel was dropped).
        self.cursor: list[int | None] = list(since)
        self.hub = hub
        self.rules = rules
        self.metrics = metrics
        self.presence = presence
        self.writer = SocketWriter(transport, send_queue, self)
        self.joined: set[str] = set()
        self.joins: list[asyncio.Task[None]] = []
        self.response = web.StreamResponse(status=200, headers=HEADERS)
        self.chunked = False
        self.started = False
        self.refusal: Disconnect | None = None  # why it ended before it started
        self.closing: asyncio.Task[None] | None = None
        self.ended = asyncio.Event()
        self.expires_at = float("inf")

    # -- starting ------------------------------------------------------------------------

    async def start(self, request: web.Request) -> None:
        """Answer 200, send the first bytes at once, and join every channel."""
        # Each message is written to the transport as it comes, framed here: as an HTTP/1.1
        # chunk; under HTTP/1.0 unframed, the end of the connection ending the body.
        self.chunked = request.version >= HttpVersion11
        if self.chunked:
            self.response.enable_chunked_encoding()
        echo_request_id(self.response)
        await self.response.prepare(request)
        self.started = True
        try:
            await self.response.write(OPENING)
        except ConnectionError:
            self._gone()
            return
        if self.refusal is not None:  # ended while the response was being prepared
            self.close_soon(self.refusal)
            return
        for channel in self.channels:
            self.joins.append(asyncio.create_task(self._join(channel)))

    async def _join(self, channel: str) -> None:
        try:
            try:
                await self.rules.authorize(Caller(self.user_id), channel)
            except ChannelRefused as refused:
                self.cursor[self.index[channel]] = None  # it has no position to keep
                self._write(message(frames.error_json(refused.code, refused.detail, channel)))
                return
            self.joined.add(channel)
            since = self.since[self.index[channel]]
            try:
                await self.hub.join(channel, self, since, self._subscribed(channel))
            except ResyncNeeded as error:
                self.joined.discard(channel)
                self._dropped(channel, str(error))
                return
            if self.presence is not None and channel in self.joined:
                self.presence.joined(channel, self.user_id)
        except TRANSIENT_ERRORS as error:
            # A stream cannot subscribe again by itself: it ends, and the client reopens it
            # after a backoff, resuming every channel from the cursor.
            self.joined.discard(channel)
            log.warning("stream subscribe failed", extra={"channel": channel, "error": repr(error)})
            self.close_soon(disconnect.UNAVAILABLE)
        except Exception:
            log.exception("stream subscribe failed", extra={"user_id": self.user_id})
            self.close_soon(disconnect.INTERNAL_ERROR)

    def _subscribed(self, channel: str) -> Callable[[int], None]:
        index = self.index[channel]

        def ready(offset: int) -> None:
            if self.since[index] is None:
                self.cursor[index] = offset  # fresh: the events after the head follow
            json = frames.control_json("subscribed", channel=channel, offset=offset)
            self._write(message(json, format_cursor(self.cursor)))

        return ready

    # -- the hub's subscriber ------------------------------------------------------------

    def deliver(self, event: Delivery) -> None:
        self.cursor[self.index[event.channel]] = event.offset
        if len(self.cursor) == 1 and self.chunked:
            self._send(_ONE_CHANNEL.message(event))  # the same bytes for every such stream
        else:
            self._write(message(event.json, format_cursor(self.cursor)))

    def send(self, frame: bytes) -> None:
        """An ephemeral frame (presence): it has no offset, so it moves no cursor."""
        self._write(message(websocket_payload(frame)))

    @property
    def backlogged(self) -> bool:
        return self.writer.backlogged

    async def drained(self) -> None:
        await self.writer.drained()

    def resync(self, channel: str) -> None:
        """The hub dropped this stream from ``channel`` (events it cannot chain)."""
        if channel in self.joined:
            self.joined.discard(channel)
            if self.presence is not None:
                self.presence.left(channel, self.user_id)
        self._dropped(channel, "events were lost; reload and subscribe again")

    def _dropped(self, channel: str, detail: str) -> None:
        """Tell the client to reload ``channel``; its cursor field empties, so that a
        resume from the cursor subscribes it live."""
        self.cursor[self.index[channel]] = None
        json = frames.error_json("resync", detail, channel)
        self._write(message(json, format_cursor(self.cursor)))

    # -- writing -------------------------------------------------------------------------

    def _write(self, body: bytes) -> None:
        self._send(chunk(body) if self.chunked else body)

    def _send(self, data: bytes) -> None:
        self.writer.send(data)
        if self.writer.closed and self.closing is None:
            self._gone()  # the transport was closing: the peer went away

    def beat(self) -> None:
        """A heartbeat: bytes for proxies that end silent responses, and a write that
        finds a peer gone."""
        if self.started and self.closing is None and not self.ended.is_set():
            self._write(HEARTBEAT)

    # -- ending --------------------------------------------------------------------------

    def resynced(self, channel: str) -> None:
        self.resync(channel)

    def too_slow(self) -> None:
        self.close_soon(disconnect.TOO_SLOW)

    def _gone(self) -> None:
        self.writer.stop()
        self.ended.set()

    def close_soon(self, why: Disconnect) -> None:
        """End from any task: a last ``close`` message, then the end of the response."""
        if self.closing is not None or self.ended.is_set():
            return
        if not self.started:
            self.refusal = self.refusal or why  # answered with a status instead
            return
        self.metrics.closes.labels(why.metric).inc()
        self.writer.stop()
        self.closing = asyncio.create_task(self._close(why))

    async def _close(self, why: Disconnect) -> None:
        transport = self.transport
        try:
            if not transport.is_closing():
                json = frames.control_json("close", code=int(why.code), reason=why.reason)
                body = message(json)
                # After what the transport holds already; what waited in the queue is
                # dropped, so the client has a gapless prefix and resumes after it.
                transport.write(chunk(body) if self.chunked else body)
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.response.write_eof()  # the last chunk, once the peer reads
        except (TimeoutError, ConnectionError):
            # A peer that stopped reading never takes the end: cut it off so its buffers
            # are freed.
            transport.abort()
        finally:
            self.ended.set()

    def leave_all(self) -> None:
        for task in self.joins:
            task.cancel()
        for channel in list(self.joined):
            self.hub.leave(channel, self)
            if self.presence is not None:
                self.presence.left(channel, self.user_id)
        self.joined.clear()
        self.writer.stop()


class _LastEvent:
    """The chunk of the event being delivered as every stream of one channel sends it (its
    id is the event's offset): the hub hands an event to its streams one after another, so
    it is framed once per event instead of once per stream."""

    __slots__ = ("chunk", "event")

    def __init__(self) -> None:
        self.event: Delivery | None = None
        self.chunk = b""

    def message(self, event: Delivery) -> bytes:
        if self.event is not event:
            self.event, self.chunk = event, chunk(message(event.json, b"%d" % event.offset))
        return self.chunk


_ONE_CHANNEL = _LastEvent()
