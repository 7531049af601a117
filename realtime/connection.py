"""One client socket: who holds it, what it subscribed to, and how it is held to its limits."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from realtime import disconnect, frames
from realtime.channels import Caller, ChannelRefused, ChannelRules
from realtime.disconnect import Disconnect
from realtime.hub import TRANSIENT_ERRORS, Hub
from realtime.log import ResyncNeeded
from realtime.metrics import GatewayMetrics
from realtime.presence import Presence
from realtime.protocol import BadFrame, ClientFrame, Ping, Subscribe, Unsubscribe, parse_frame
from realtime.writer import SocketWriter

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0  # a peer that does not take our close frame in time is cut off


@dataclass(frozen=True, slots=True)
class Limits:
    max_subscriptions: int
    frames_per_second: float
    max_bad_frames: int
    send_queue: int


OpHandler = Callable[["Connection", ClientFrame], Awaitable[None]]


class Connection:
    # Slots: a process holds tens of thousands of these, mostly idle.
    __slots__ = (
        "allowance", "bad_frames", "channels", "closing", "expires_at", "hub", "last_typing",
        "limits", "loop", "metrics", "ops", "presence", "rules", "session_id", "stamp",
        "transport", "user_id", "writer", "ws",
    )  # fmt: skip

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.BaseTransport,
        *,
        user_id: int,
        session_id: uuid.UUID,
        limits: Limits,
        hub: Hub,
        rules: ChannelRules,
        ops: dict[str, tuple[type[ClientFrame], OpHandler]],
        metrics: GatewayMetrics,
        presence: Presence | None = None,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.user_id = user_id
        self.session_id = session_id
        self.limits = limits
        self.hub = hub
        self.rules = rules
        self.ops = ops
        self.metrics = metrics
        self.presence = presence
        self.writer = SocketWriter(transport, limits.send_queue, self)
        # The channels it is subscribed to: a tuple, as a socket has a few (at most
        # max_subscriptions); an empty tuple is shared, a one-channel set would be 216 bytes.
        self.channels: tuple[str, ...] = ()
        self.bad_frames = 0
        self.loop = asyncio.get_running_loop()
        self.allowance = 2 * limits.frames_per_second  # token bucket: bursts of 2 s worth
        self.stamp = self.loop.time()
        self.closing: asyncio.Task[None] | None = None
        self.expires_at = float("inf")  # the session's end (epoch seconds), checked by a sweep
        self.last_typing: dict[str, float] | None = None  # made on the first typing frame

    # -- reading -----------------------------------------------------------------------

    async def handle_text(self, text: str) -> None:
        try:
            frame = parse_frame(text, self.ops)
        except BadFrame as error:
            self._refuse("bad_frame", str(error))
            return
        if not self._take_token():
            # Parsed first, so a refused send names its client_id and can be sent again.
            client_id = getattr(frame, "client_id", None)
            more = {} if client_id is None else {"client_id": str(client_id)}
            self._refuse("rate_limited", "too many frames; slow down", **more)
            return
        if isinstance(frame, Subscribe):
            await self._subscribe(frame)
        elif isinstance(frame, Unsubscribe):
            self._unsubscribe(frame.channel)
            self.send(frames.control("unsubscribed", channel=frame.channel))
        elif isinstance(frame, Ping):
            self.send(frames.PONG)
        else:
            await self.ops[frame.op][1](self, frame)  # type: ignore[attr-defined]

    def handle_binary(self) -> None:
        self._refuse("bad_frame", "frames are JSON text frames")

    def _take_token(self) -> bool:
        now = self.loop.time()
        rate = self.limits.frames_per_second
        self.allowance = min(2 * rate, self.allowance + (now - self.stamp) * rate)
        self.stamp = now
        if self.allowance < 1:
            return False
        self.allowance -= 1
        return True

    def _refuse(self, code: str, detail: str, channel: str | None = None, **more: str) -> None:
        """Answer a bad frame; the ``max_bad_frames``-th one closes the socket (1008)."""
        self.metrics.bad_frames.labels(code).inc()
        self.bad_frames += 1
        if self.bad_frames >= self.limits.max_bad_frames:
            self.close_soon(disconnect.ABUSE)
            return
        self.send(frames.error(code, detail, channel, **more))

    async def _subscribe(self, frame: Subscribe) -> None:
        channel = frame.channel
        if channel in self.channels:
            self._unsubscribe(channel)  # subscribing again restarts from `since`
        elif len(self.channels) >= self.limits.max_subscriptions:
            limit = self.limits.max_subscriptions
            self._refuse("too_many_subscriptions", f"at most {limit} per socket", channel)
            return
        try:
            await self.rules.authorize(Caller(self.user_id), channel)
        except ChannelRefused as refused:
            self._refuse(refused.code, refused.detail, channel)
            return
        except TRANSIENT_ERRORS as error:  # a room's members are looked up in PostgreSQL
            log.warning("authorize failed", extra={"channel": channel, "error": repr(error)})
            self.send(frames.error("unavailable", "try again shortly", channel))
            return
        self.channels = (*self.channels, channel)
        try:
            await self.hub.join(channel, self.writer, frame.since, self._subscribed(channel))
        except ResyncNeeded as error:
            self._drop(channel)
            self.send(frames.error("resync", str(error), channel))
        except TRANSIENT_ERRORS as error:
            self._drop(channel)
            log.warning("subscribe failed", extra={"channel": channel, "error": repr(error)})
            self.send(frames.error("unavailable", "try again shortly", channel))
            return
        if self.presence is not None and channel in self.channels:
            self.presence.joined(channel, self.user_id)

    def _subscribed(self, channel: str) -> Callable[[int], None]:
        return lambda offset: self.send(
            frames.control("subscribed", channel=channel, offset=offset)
        )

    def resynced(self, channel: str) -> None:
        """The hub dropped this socket from ``channel`` (events it cannot chain)."""
        if channel in self.channels:
            self._drop(channel)
            if self.presence is not None:
                self.presence.left(channel, self.user_id)
        self.send(frames.error("resync", "events were lost; reload and subscribe again", channel))

    def _drop(self, channel: str) -> None:
        self.channels = tuple(other for other in self.channels if other != channel)

    def _unsubscribe(self, channel: str) -> None:
        if channel in self.channels:
            self._drop(channel)
            self.hub.leave(channel, self.writer)
            if self.presence is not None:
                self.presence.left(channel, self.user_id)

    # -- writing and closing -------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        self.writer.send(frame)

    def too_slow(self) -> None:
        self.close_soon(disconnect.TOO_SLOW)

    def close_soon(self, why: Disconnect) -> None:
        """Close from any task; the handler's read loop then ends."""
        if self.closing is not None:
            return
        self.metrics.closes.labels(why.metric).inc()
        self.writer.stop()
        self.closing = asyncio.create_task(self._close(why))

    async def _close(self, why: Disconnect) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.ws.close(code=why.code, message=why.reason.encode())
        except TimeoutError:
            # A peer that stopped reading never takes the close frame: cut it off so its
            # buffers are freed.
            self.transport.abort()  # type: ignore[attr-defined]

    def leave_all(self) -> None:
        for channel in self.channels:
            self._unsubscribe(channel)
        self.writer.stop()
