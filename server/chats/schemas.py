"""Bodies and query parameters of chat, and the shapes of rooms and messages."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import pydantic
from pydantic import Field, StringConstraints

from server.cursors import RoomCursor
from server.jsonio import StrictModel
from server.text import NO_NUL

MessageBody = Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=NO_NUL)]


class MessageIn(StrictModel):
    body: MessageBody
    # Strict mode takes a UUID only as a UUID object; JSON carries it as a string.
    client_id: Annotated[uuid.UUID, Field(strict=False)]


class ReadIn(StrictModel):
    up_to: Annotated[int, Field(ge=0, le=2**63 - 1)]


class PageQuery(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    cursor: RoomCursor | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 20


class MessagesQuery(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    before: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 20


class MessageOut(pydantic.BaseModel):
    room_id: int
    id: int
    sender_id: int
    body: str
    client_id: uuid.UUID
    created_at: datetime


class RoomOut(pydantic.BaseModel):
    id: int
    listing_id: int
    buyer_id: int
    seller_id: int
    created_at: datetime


class ListingBrief(pydantic.BaseModel):
    id: int
    title: str
    price: int


class Participant(pydantic.BaseModel):
    id: int
    nickname: str


class RoomSummary(pydantic.BaseModel):
    id: int
    listing: ListingBrief
    other: Participant
    last_message: MessageOut | None
    unread: int
    last_activity_at: datetime


class RoomPage(pydantic.BaseModel):
    items: list[RoomSummary]
    next_cursor: str | None


class MessagePage(pydantic.BaseModel):
    items: list[MessageOut]
    next_cursor: int | None
