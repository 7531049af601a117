"""Single-use WebSocket tickets: a random string in the URL instead of a token.

Stored in Redis (hashed, for ``ttl`` seconds) so a ticket issued by one instance is
redeemed on any other, and GETDEL makes the first redemption the only one.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis


@dataclass(frozen=True, slots=True)
class TicketHolder:
    user_id: int
    session_id: uuid.UUID


def _key(ticket: str) -> str:
    return "ws-ticket:" + hashlib.sha256(ticket.encode()).hexdigest()


async def issue_ticket(redis: aioredis.Redis, holder: TicketHolder, ttl: int) -> str:
    ticket = secrets.token_urlsafe(32)
    value = orjson.dumps({"user_id": holder.user_id, "session_id": str(holder.session_id)})
    await redis.set(_key(ticket), value, ex=ttl)
    return ticket


async def redeem_ticket(redis: aioredis.Redis, ticket: str) -> TicketHolder | None:
    """The ticket's holder, once; None when unknown, expired or already used."""
    if not ticket or len(ticket) > 100:
        return None
    value = await redis.getdel(_key(ticket))
    if value is None:
        return None
    fields = orjson.loads(value)
    return TicketHolder(int(fields["user_id"]), uuid.UUID(fields["session_id"]))
