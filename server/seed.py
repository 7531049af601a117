"""Demo data for a fresh database: a few neighbours who can sign in at once."""

from __future__ import annotations

import argon2
import asyncpg

from server.settings import Settings

DEMO_PASSWORD = "jangteo-demo"  # noqa: S105 - published demo accounts
DEMO_REGIONS = ("seoul-mapo", "seoul-gangnam", "busan-haeundae")


async def seed(settings: Settings, *, users: int, if_empty: bool) -> str:
    """Insert ``users`` demo accounts (``demoN@jangteo.dev``); skip if asked and not empty."""
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url)
    try:
        if if_empty and await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users)"):
            return "database already has users; nothing seeded"
        # One hash for every demo account: seeding stays fast, the password stays argon2id.
        password_hash = argon2.PasswordHasher().hash(DEMO_PASSWORD)
        start = await conn.fetchval("SELECT count(*) FROM users")
        rows = [
            (f"demo{n}@jangteo.dev", password_hash, f"neighbour {n}", DEMO_REGIONS[n % 3])
            for n in range(start + 1, start + users + 1)
        ]
        await conn.executemany(
            "INSERT INTO users (email, password_hash, nickname, region) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT DO NOTHING",
            rows,
        )
    finally:
        await conn.close()
    return f"seeded {users} users (password {DEMO_PASSWORD!r}), e.g. {rows[0][0] if rows else '-'}"
