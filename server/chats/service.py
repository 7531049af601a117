"""Chat rules: who may open and see a room, message numbering, idempotent sends, markers.

Every change and its outbox events are written in one transaction here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from db.queries import chats as queries
from db.queries import listings as listing_queries
from db.queries.outbox import Event, insert_events
from server.chats.schemas import MessageOut, RoomOut, RoomSummary
from server.errors import Conflict, NotFound
from server.listings.service import ListingNotFound


class RoomNotFound(NotFound):
    slug, title = "room-not-found", "No such chat room"


class OwnListingChat(Conflict):
    slug, title = "own-listing-chat", "You cannot open a chat on your own listing"


@dataclass(frozen=True, slots=True)
class Sent:
    message: MessageOut
    created: bool  # False: the same client_id was stored before


def message_out(row: asyncpg.Record) -> MessageOut:
    return MessageOut(**dict(row))


def room_out(row: asyncpg.Record) -> RoomOut:
    return RoomOut(**{name: row[name] for name in RoomOut.model_fields})


async def open_room(pool: asyncpg.Pool, listing_id: int, buyer_id: int) -> tuple[RoomOut, bool]:
    """The buyer's room on the listing, made if missing; True when made now."""
    existing = await queries.room_of(pool, listing_id, buyer_id)
    if existing is not None:
        return room_out(existing), False
    async with pool.acquire() as conn, conn.transaction():
        listing = await listing_queries.listing_by_id(conn, listing_id)
        if listing is None or listing["status"] == "hidden":
            raise ListingNotFound()
        if listing["seller_id"] == buyer_id:
            raise OwnListingChat()
        made = await queries.insert_room(conn, listing_id, buyer_id, listing["seller_id"])
        if made is None:  # opened concurrently: that one is the room
            row = await queries.room_of(conn, listing_id, buyer_id)
            assert row is not None
            return room_out(row), False
    return room_out(made), True


async def get_room(pool: asyncpg.Pool, room_id: int, user_id: int) -> asyncpg.Record:
    row = await queries.room_for_participant(pool, room_id, user_id)
    if row is None:
        raise RoomNotFound()
    return row


async def send_message(
    pool: asyncpg.Pool, room_id: int, sender_id: int, body: str, client_id: uuid.UUID
) -> Sent:
    """Store once per client_id; a repeat returns the stored message (even if ``body`` differs)."""
    async with pool.acquire() as conn, conn.transaction():
        # The room lock numbers messages and serializes sends with one client_id.
        room = await queries.room_for_participant(conn, room_id, sender_id, lock=True)
        if room is None:
            raise RoomNotFound()
        stored = await queries.message_by_client_id(conn, room_id, sender_id, client_id)
        if stored is not None:
            return Sent(message_out(stored), created=False)
        row = await queries.append_message(conn, room_id, sender_id, body, client_id)
        message = message_out(row)
        other = room["seller_id"] if sender_id == room["buyer_id"] else room["buyer_id"]
        data = _event_data(message, room["listing_id"])
        await insert_events(
            conn,
            [
                Event(f"room:{room_id}", "chat.message", data),
                Event(f"user:{other}", "chat.message", data),
            ],
        )
    return Sent(message, created=True)


def _event_data(message: MessageOut, listing_id: int) -> dict[str, Any]:
    return {**message.model_dump(mode="json"), "listing_id": listing_id}


async def list_messages(
    pool: asyncpg.Pool, room_id: int, user_id: int, before: int | None, limit: int
) -> tuple[list[MessageOut], int | None]:
    await get_room(pool, room_id, user_id)
    rows = await queries.messages_before(pool, room_id, before, limit)
    items = [message_out(row) for row in rows[:limit]]
    return items, (items[-1].id if len(rows) > limit else None)


async def mark_read(pool: asyncpg.Pool, room_id: int, user_id: int, up_to: int) -> None:
    """Move my marker forward (never back); a move is a ``chat.read`` event to the room."""
    async with pool.acquire() as conn, conn.transaction():
        room = await queries.room_for_participant(conn, room_id, user_id, lock=True)
        if room is None:
            raise RoomNotFound()
        marker = await queries.advance_read_marker(conn, room_id, user_id, up_to)
        if marker is not None:
            data = {"room_id": room_id, "user_id": user_id, "up_to": marker}
            await insert_events(conn, [Event(f"room:{room_id}", "chat.read", data)])


async def list_rooms(
    pool: asyncpg.Pool, user_id: int, before: tuple[datetime, int] | None, limit: int
) -> tuple[list[RoomSummary], tuple[datetime, int] | None]:
    rows = await queries.rooms_of_user(pool, user_id, before, limit)
    items = [RoomSummary.model_validate(_summary(row)) for row in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return items, ((last["last_activity_at"], last["id"]) if last is not None else None)


def _summary(row: asyncpg.Record) -> dict[str, Any]:
    last_message = None
    if row["message_id"] is not None:
        last_message = {
            "room_id": row["id"],
            "id": row["message_id"],
            "sender_id": row["message_sender_id"],
            "body": row["message_body"],
            "client_id": str(row["message_client_id"]),
            "created_at": row["message_created_at"],
        }
    return {
        "id": row["id"],
        "listing": {"id": row["listing_id"], "title": row["listing_title"],
                    "price": row["listing_price"]},
        "other": {"id": row["other_id"], "nickname": row["other_nickname"]},
        "last_message": last_message,
        "unread": row["unread"],
        "last_activity_at": row["last_activity_at"],
    }  # fmt: skip


async def is_participant(pool: asyncpg.Pool, room_id: int, user_id: int) -> bool:
    return await queries.room_for_participant(pool, room_id, user_id) is not None
