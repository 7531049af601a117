"""Queries of chat rooms, messages and read markers."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from db.types import Connection, Queryable

_ROOM = """
SELECT r.id, r.listing_id, r.buyer_id, r.seller_id, r.last_message_id,
       r.buyer_read_up_to, r.seller_read_up_to, r.last_activity_at, r.created_at
FROM chat_rooms r
"""


async def room_for_participant(
    conn: Queryable, room_id: int, user_id: int, *, lock: bool = False
) -> asyncpg.Record | None:
    """The room if ``user_id`` is one of its two participants."""
    return await conn.fetchrow(
        _ROOM
        + "WHERE r.id = $1 AND (r.buyer_id = $2 OR r.seller_id = $2)"
        + (" FOR UPDATE" if lock else ""),
        room_id,
        user_id,
    )


async def room_of(conn: Queryable, listing_id: int, buyer_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        _ROOM + "WHERE r.listing_id = $1 AND r.buyer_id = $2", listing_id, buyer_id
    )


async def insert_room(
    conn: Connection, listing_id: int, buyer_id: int, seller_id: int
) -> asyncpg.Record | None:
    """The new room, or None when it exists already (a concurrent open made it)."""
    return await conn.fetchrow(
        "INSERT INTO chat_rooms (listing_id, buyer_id, seller_id) VALUES ($1, $2, $3) "
        "ON CONFLICT (listing_id, buyer_id) DO NOTHING "
        "RETURNING id, listing_id, buyer_id, seller_id, last_message_id, buyer_read_up_to, "
        "seller_read_up_to, last_activity_at, created_at",
        listing_id,
        buyer_id,
        seller_id,
    )


_MESSAGE = "room_id, id, sender_id, body, client_id, created_at"


async def message_by_client_id(
    conn: Queryable, room_id: int, sender_id: int, client_id: uuid.UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_MESSAGE} FROM chat_messages "
        "WHERE room_id = $1 AND sender_id = $2 AND client_id = $3",
        room_id,
        sender_id,
        client_id,
    )


async def append_message(
    conn: Connection, room_id: int, sender_id: int, body: str, client_id: uuid.UUID
) -> asyncpg.Record:
    """Number the message after the room's last one; the room row must be locked."""
    row = await conn.fetchrow(
        f"""
        WITH numbered AS (
            UPDATE chat_rooms SET last_message_id = last_message_id + 1,
                                  last_activity_at = now()
            WHERE id = $1 RETURNING last_message_id
        )
        INSERT INTO chat_messages (room_id, id, sender_id, body, client_id)
        SELECT $1, last_message_id, $2, $3, $4 FROM numbered
        RETURNING {_MESSAGE}
        """,
        room_id,
        sender_id,
        body,
        client_id,
    )
    assert row is not None
    return row


async def messages_before(
    conn: Queryable, room_id: int, before: int | None, limit: int
) -> list[asyncpg.Record]:
    """Newest first, ids below ``before``; one more than ``limit`` to tell if more exist."""
    return await conn.fetch(
        f"SELECT {_MESSAGE} FROM chat_messages WHERE room_id = $1 AND id < $2 "
        "ORDER BY id DESC LIMIT $3",
        room_id,
        before or 2**63 - 1,
        limit + 1,
    )


async def advance_read_marker(
    conn: Connection, room_id: int, user_id: int, up_to: int
) -> int | None:
    """Move the user's marker up to ``up_to`` (capped at the last message), never back.

    Returns the new marker when it moved, None when it stayed.
    """
    marker: int | None = await conn.fetchval(
        """
        UPDATE chat_rooms SET
            buyer_read_up_to = CASE WHEN buyer_id = $2
                THEN greatest(buyer_read_up_to, least($3, last_message_id))
                ELSE buyer_read_up_to END,
            seller_read_up_to = CASE WHEN seller_id = $2
                THEN greatest(seller_read_up_to, least($3, last_message_id))
                ELSE seller_read_up_to END
        WHERE id = $1
          AND CASE WHEN buyer_id = $2 THEN buyer_read_up_to ELSE seller_read_up_to END
              < least($3, last_message_id)
        RETURNING CASE WHEN buyer_id = $2 THEN buyer_read_up_to ELSE seller_read_up_to END
        """,
        room_id,
        user_id,
        up_to,
    )
    return marker


async def rooms_of_user(
    conn: Queryable, user_id: int, before: tuple[datetime, int] | None, limit: int
) -> list[asyncpg.Record]:
    """My rooms, newest activity first, with the listing, the other side and my unread count."""
    after_at, after_id = before if before else (None, None)
    return await conn.fetch(
        """
        SELECT r.id, r.listing_id, r.buyer_id, r.seller_id, r.last_activity_at,
               r.last_message_id, r.created_at,
               l.title AS listing_title, l.price AS listing_price,
               other.id AS other_id, other.nickname AS other_nickname,
               m.id AS message_id, m.sender_id AS message_sender_id, m.body AS message_body,
               m.client_id AS message_client_id, m.created_at AS message_created_at,
               (SELECT count(*) FROM chat_messages u
                WHERE u.room_id = r.id AND u.sender_id <> $1
                  AND u.id > CASE WHEN r.buyer_id = $1 THEN r.buyer_read_up_to
                                  ELSE r.seller_read_up_to END) AS unread
        FROM (
            (SELECT * FROM chat_rooms WHERE buyer_id = $1
               AND ($2::timestamptz IS NULL OR (last_activity_at, id) < ($2, $3))
             ORDER BY last_activity_at DESC, id DESC LIMIT $4)
            UNION ALL
            (SELECT * FROM chat_rooms WHERE seller_id = $1
               AND ($2::timestamptz IS NULL OR (last_activity_at, id) < ($2, $3))
             ORDER BY last_activity_at DESC, id DESC LIMIT $4)
        ) r
        JOIN listings l ON l.id = r.listing_id
        JOIN users other ON other.id = CASE WHEN r.buyer_id = $1 THEN r.seller_id
                                            ELSE r.buyer_id END
        LEFT JOIN chat_messages m ON m.room_id = r.id AND m.id = r.last_message_id
        ORDER BY r.last_activity_at DESC, r.id DESC
        LIMIT $4
        """,
        user_id,
        after_at,
        after_id,
        limit + 1,
    )
