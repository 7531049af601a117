"""Account rules: sign-up, login, refresh-token rotation with reuse detection, logout.

Functions take the pool and helpers they need and know nothing of HTTP.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from db.queries import users as queries
from db.queries.outbox import SESSIONS_CHANNEL, Event, insert_events
from db.types import Connection
from server.auth.passwords import PasswordHasher
from server.auth.schemas import TokenPairOut, UserOut
from server.auth.tokens import TokenIssuer, hash_refresh_token
from server.errors import EmailTaken, InvalidCredentials, InvalidToken


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    """What a refresh did: a new pair, or the family it revoked because of reuse."""

    pair: TokenPairOut | None
    revoked_family: uuid.UUID | None = None


async def sign_up(
    pool: asyncpg.Pool,
    hasher: PasswordHasher,
    issuer: TokenIssuer,
    *,
    email: str,
    password: str,
    nickname: str,
    region: str,
) -> tuple[UserOut, TokenPairOut]:
    password_hash = await hasher.hash(password)
    async with pool.acquire() as conn, conn.transaction():
        try:
            row = await queries.insert_user(
                conn,
                email=email.lower(),
                password_hash=password_hash,
                nickname=nickname,
                region=region,
            )
        except asyncpg.UniqueViolationError:
            raise EmailTaken() from None
        pair = await _start_session(conn, issuer, row["id"])
    return UserOut(**dict(row)), pair


async def log_in(
    pool: asyncpg.Pool, hasher: PasswordHasher, issuer: TokenIssuer, *, email: str, password: str
) -> TokenPairOut:
    """Unknown email and wrong password give the same error after the same work."""
    # Lower-cased here as at sign-up: PostgreSQL's lower() differs from Python's for some
    # letters (e.g. "İ"), so only the same function on both sides finds the stored email.
    # No stored email holds U+0000 (sign-up refuses it, and PostgreSQL's text cannot hold
    # it): such an email is simply unknown, not a question for the database.
    known = "\x00" not in email
    row = await queries.credentials_by_email(pool, email.lower()) if known else None
    if not await hasher.verify(row["password_hash"] if row else None, password):
        raise InvalidCredentials()
    assert row is not None
    async with pool.acquire() as conn, conn.transaction():
        return await _start_session(conn, issuer, row["id"])


async def refresh(pool: asyncpg.Pool, issuer: TokenIssuer, refresh_token: str) -> RefreshOutcome:
    """Rotate ``refresh_token``; a token already rotated or revoked revokes its family."""
    token_hash = hash_refresh_token(refresh_token)
    async with pool.acquire() as conn, conn.transaction():
        row = await queries.lock_refresh_token(conn, token_hash)
        if row is None:
            return RefreshOutcome(None)
        if row["rotated_at"] is not None or row["revoked_at"] is not None:
            # Someone holds an old token of this family: assume it was stolen.
            await _revoke_session(conn, row["family_id"])
            return RefreshOutcome(None, revoked_family=row["family_id"])
        if row["expires_at"] <= datetime.now(UTC):
            return RefreshOutcome(None)
        await queries.mark_rotated(conn, token_hash)
        pair = await _issue_pair(conn, issuer, row["user_id"], row["family_id"])
    return RefreshOutcome(pair)


async def log_out(pool: asyncpg.Pool, refresh_token: str) -> uuid.UUID:
    """Revoke the session the token belongs to; repeating it is harmless."""
    async with pool.acquire() as conn, conn.transaction():
        row = await queries.lock_refresh_token(conn, hash_refresh_token(refresh_token))
        if row is None:
            raise InvalidToken("unknown refresh token")
        await _revoke_session(conn, row["family_id"])
        family_id: uuid.UUID = row["family_id"]
        return family_id


async def current_user(pool: asyncpg.Pool, user_id: int) -> UserOut:
    row = await queries.user_by_id(pool, user_id)
    if row is None:
        raise InvalidToken("the account no longer exists")
    return UserOut(**dict(row))


async def _revoke_session(conn: Connection, family_id: uuid.UUID) -> None:
    """Revoke a session; the event tells every instance to close its sockets (4401)."""
    await queries.revoke_family(conn, family_id)
    await insert_events(
        conn, [Event(SESSIONS_CHANNEL, "session.revoked", {"session_id": str(family_id)})]
    )


async def _start_session(conn: Connection, issuer: TokenIssuer, user_id: int) -> TokenPairOut:
    return await _issue_pair(conn, issuer, user_id, uuid.uuid4())


async def _issue_pair(
    conn: Connection, issuer: TokenIssuer, user_id: int, family_id: uuid.UUID
) -> TokenPairOut:
    refresh_token = issuer.new_refresh()
    await queries.insert_refresh_token(
        conn,
        user_id=user_id,
        family_id=family_id,
        token_hash=refresh_token.token_hash,
        expires_at=datetime.now(UTC) + timedelta(seconds=issuer.refresh_ttl),
    )
    return TokenPairOut(
        access_token=issuer.issue_access(user_id, family_id),
        refresh_token=refresh_token.token,
        expires_in=issuer.access_ttl,
    )
