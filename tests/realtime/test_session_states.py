"""Session lookups for many sockets at once: one query per round, every answer right."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from realtime.session_states import SessionStates


class CountingPool:
    """The pool, counting the lookups that reach PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.queries = 0

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        self.queries += 1
        return await self.pool.fetch(query, *args)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    made = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert made is not None
    yield made
    await made.close()


async def new_session(db: asyncpg.Connection, *, expires: str, revoked: bool = False) -> uuid.UUID:
    user_id = await db.fetchval(
        "INSERT INTO users (email, password_hash, nickname, region)"
        " VALUES ($1, 'x', 'n', 'seoul') RETURNING id",
        f"{uuid.uuid4().hex}@example.com",
    )
    family = uuid.uuid4()
    await db.execute(
        "INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at, revoked_at)"
        " VALUES ($1, $2, $3, now() + $4::text::interval, CASE WHEN $5 THEN now() END)",
        user_id, family, uuid.uuid4().bytes, expires, revoked,
    )  # fmt: skip
    return family


async def test_sockets_asking_together_share_lookups_and_each_gets_its_answer(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    alive = [await new_session(db, expires="30 days") for _ in range(20)]
    revoked = await new_session(db, expires="30 days", revoked=True)
    expired = await new_session(db, expires="-1 hour")
    unknown = uuid.uuid4()
    counting = CountingPool(pool)
    states = SessionStates(counting)  # type: ignore[arg-type]
    try:
        asked = [*alive * 5, revoked, expired, unknown]
        answers = await asyncio.gather(*(states.get(session) for session in asked))
    finally:
        await states.close()
    ends = [state.alive_until() for state in answers]
    assert all(end is not None for end in ends[: len(alive) * 5])
    assert ends[-3:] == [None, None, None]
    assert answers[0] == answers[len(alive)]  # the same session, asked twice
    # 103 sockets asked at once: the first lookup, and one more for all who came after it.
    assert counting.queries <= 2


async def test_a_revocation_committed_before_asking_is_seen(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    session = await new_session(db, expires="30 days")
    states = SessionStates(pool)
    try:
        assert (await states.get(session)).alive_until() is not None
        await db.execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1", session
        )
        assert (await states.get(session)).alive_until() is None
    finally:
        await states.close()


async def test_postgresql_down_is_raised_to_every_socket_that_asked(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    sessions = [await new_session(db, expires="30 days") for _ in range(3)]
    await pool.close()
    states = SessionStates(pool)
    try:
        outcomes = await asyncio.gather(
            *(states.get(session) for session in sessions), return_exceptions=True
        )
    finally:
        await states.close()
    assert all(isinstance(outcome, asyncpg.InterfaceError) for outcome in outcomes)
