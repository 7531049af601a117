"""Chat over the socket: the ``room:`` channel rule and the ``send`` and ``typing`` ops.

A ``send`` stores the message exactly as ``POST /chats/{id}/messages`` does (same
service, same idempotency by client_id) and answers ``ack`` with the stored message:
an ack means stored, so a client may resend the same client_id after any failure.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import asyncpg
from pydantic import Field, StringConstraints

from realtime import frames
from realtime.channels import Caller, ChannelRefused
from realtime.connection import Connection
from realtime.gateway import Gateway
from realtime.hub import TRANSIENT_ERRORS
from realtime.protocol import ClientFrame
from server.chats import service
from server.errors import RateLimited
from server.ratelimit import RateLimiter
from server.settings import RateLimit

TYPING_INTERVAL_S = 0.5  # at most two typing frames per second per socket reach Redis
_ROOM_ID = Annotated[int, Field(ge=1, le=2**63 - 1)]


class Send(ClientFrame):
    op: Literal["send"]
    room: _ROOM_ID
    body: Annotated[str, StringConstraints(min_length=1, max_length=1000)]
    client_id: Annotated[uuid.UUID, Field(strict=False)]


class Typing(ClientFrame):
    op: Literal["typing"]
    room: _ROOM_ID


class ChatOps:
    def __init__(
        self, gateway: Gateway, pool: asyncpg.Pool, limiter: RateLimiter, writes: RateLimit
    ) -> None:
        self.gateway = gateway
        self.pool = pool
        self.limiter = limiter
        self.writes = writes
        gateway.rules.add("room", self.may_join_room)
        gateway.add_op("send", Send, self.send)
        gateway.add_op("typing", Typing, self.typing)

    async def may_join_room(self, caller: Caller, key: str) -> None:
        if not (key.isascii() and key.isdigit() and 1 <= int(key) < 2**63):
            raise ChannelRefused("bad_channel", "room channels are room:<id>")
        if not await service.is_participant(self.pool, int(key), caller.user_id):
            raise ChannelRefused("forbidden", "only the room's two participants may join it")

    async def send(self, connection: Connection, frame: ClientFrame) -> None:
        assert isinstance(frame, Send)
        client_id = str(frame.client_id)
        try:
            await self.limiter.hit("writes", str(connection.user_id), self.writes)
            sent = await service.send_message(
                self.pool, frame.room, connection.user_id, frame.body, frame.client_id
            )
        except RateLimited:
            connection.send(frames.error("rate_limited", "too many writes", client_id=client_id))
            return
        except service.RoomNotFound:
            connection.send(frames.error("not_found", "no such room", client_id=client_id))
            return
        except TRANSIENT_ERRORS:
            detail = "not stored; send again with the same client_id"
            connection.send(frames.error("unavailable", detail, client_id=client_id))
            return
        message = sent.message.model_dump(mode="json")
        connection.send(frames.control("ack", client_id=client_id, message=message))

    async def typing(self, connection: Connection, frame: ClientFrame) -> None:
        assert isinstance(frame, Typing)
        channel = f"room:{frame.room}"
        if channel not in connection.channels:
            connection.send(frames.error("forbidden", "subscribe to the room first", channel))
            return
        now = connection.loop.time()
        if connection.last_typing is None:
            connection.last_typing = {}
        if now - connection.last_typing.get(channel, 0.0) < TYPING_INTERVAL_S:
            return  # typing is a hint: extra frames are dropped, not refused
        connection.last_typing[channel] = now
        if self.gateway.presence is not None:
            self.gateway.presence.typing(channel, connection.user_id)
