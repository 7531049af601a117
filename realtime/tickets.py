"""Single-use socket and stream tickets: signed by the server, spent in Redis.

Issuing a ticket costs no Redis round trip: the ticket itself carries the user, the
session, its expiry and a random nonce, signed with HMAC-SHA256 under a key derived from
the JWT secret (which every instance of a deployment shares), so any instance checks it.
Redemption spends it with one ``SET NX`` of the nonce, kept a little longer than the
ticket lives: on every instance, only the first redemption wins. Redemptions asked for
while one round trip is out share the next (``Rounds``, one pipeline of ``SET NX``): a
reconnect storm spends thousands of tickets in a few dozen round trips.

The layout, before base64url (no padding): version (1 byte), user id (8), session id
(16), expiry in epoch seconds (4), nonce (16), then the first 16 bytes of the HMAC-SHA256
of all of that (HMAC-SHA-256-128, as RFC 4868 truncates it): 82 characters in all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import math
import re
import secrets
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from server.rounds import Rounds

VERSION = 1
_BODY = struct.Struct(">BQ16sI16s")  # version, user id, session id, expiry, nonce
_TAG_BYTES = 16
NONCE_AT = _BODY.size - 16  # where the nonce starts in a decoded ticket
_RAW_BYTES = _BODY.size + _TAG_BYTES
TICKET_CHARS = math.ceil(_RAW_BYTES * 4 / 3)  # its base64url length, unpadded
# Instances' clocks may disagree by this much: a spent nonce is remembered that much
# longer than its ticket lives, so no instance still takes the ticket once it is forgotten.
CLOCK_SKEW_S = 30
_KEY_PREFIX = "ws-ticket:"
_SHAPE = re.compile(rf"[A-Za-z0-9_-]{{{TICKET_CHARS}}}")
_LABEL = b"jangteo/ws-tickets/v1"


@dataclass(frozen=True, slots=True)
class TicketHolder:
    user_id: int
    session_id: uuid.UUID


def derive_ticket_secret(jwt_secret: str) -> bytes:
    """A key of its own for tickets, from the secret every instance already shares."""
    if not jwt_secret:
        raise ValueError("tickets need the JWT secret to derive their key from")
    return hmac.new(jwt_secret.encode(), _LABEL, hashlib.sha256).digest()


def spent_key(nonce: bytes) -> str:
    """The Redis key that marks a ticket's nonce as spent."""
    return _KEY_PREFIX + nonce.hex()


@dataclass(frozen=True, slots=True)
class _Spend:
    """One redemption's ``SET NX``: ``attempt`` keeps two redemptions of the same ticket
    apart when they fall into one round (the second then finds the nonce spent)."""

    nonce: bytes
    ttl: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Ticket:
    """A ticket whose signature checked out (it may still be expired or spent)."""

    holder: TicketHolder
    expires_at: int  # epoch seconds
    nonce: bytes


class Tickets:
    """Issues tickets and redeems each once, on whichever instance it reaches."""

    def __init__(
        self,
        redis: aioredis.Redis,
        secret: bytes,
        ttl: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.secret = secret
        self.ttl = ttl
        self.clock = clock
        self._attempts = itertools.count()
        self._spends: Rounds[_Spend, bool] = Rounds(self._spend)

    def issue(self, holder: TicketHolder, *, issued_at: float | None = None) -> str:
        """A new ticket for ``holder``, good for ``ttl`` seconds from ``issued_at`` (now)."""
        now = self.clock() if issued_at is None else issued_at
        body = _BODY.pack(
            VERSION,
            holder.user_id,
            holder.session_id.bytes,
            math.ceil(now) + self.ttl,
            secrets.token_bytes(16),
        )
        return base64.urlsafe_b64encode(body + self._tag(body)).rstrip(b"=").decode()

    def read(self, ticket: str) -> Ticket | None:
        """The ticket's contents when this deployment signed it; None for anything else."""
        if len(ticket) != TICKET_CHARS or _SHAPE.fullmatch(ticket) is None:
            return None
        raw = base64.urlsafe_b64decode(ticket + "=" * (-len(ticket) % 4))
        body, tag = raw[: _BODY.size], raw[_BODY.size :]
        if len(raw) != _RAW_BYTES or not hmac.compare_digest(tag, self._tag(body)):
            return None
        version, user_id, session, expires_at, nonce = _BODY.unpack(body)
        if version != VERSION:
            return None
        return Ticket(TicketHolder(user_id, uuid.UUID(bytes=session)), expires_at, nonce)

    async def redeem(self, ticket: str) -> TicketHolder | None:
        """The ticket's holder, once; None when forged, malformed, expired or already
        spent. Raises what Redis raises when it cannot be reached (nothing is spent)."""
        found = self.read(ticket)
        if found is None:
            return None
        left = found.expires_at - self.clock()
        if left <= 0:
            return None
        spend = _Spend(found.nonce, math.ceil(left) + CLOCK_SKEW_S, next(self._attempts))
        won = (await self._spends.ask((spend,)))[spend]
        return found.holder if won else None

    async def _spend(self, spends: frozenset[_Spend]) -> Mapping[_Spend, bool]:
        ordered = sorted(spends, key=lambda spend: spend.attempt)  # the first asked wins
        async with self.redis.pipeline(transaction=False) as pipe:
            for spend in ordered:
                pipe.set(spent_key(spend.nonce), b"1", ex=spend.ttl, nx=True)
            won = await pipe.execute()
        return {spend: bool(first) for spend, first in zip(ordered, won, strict=True)}

    async def close(self) -> None:
        """Stop a round of redemptions in flight (at shutdown)."""
        await self._spends.close()

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self.secret, body, hashlib.sha256).digest()[:_TAG_BYTES]
