"""Demo data for a fresh database: neighbours who can sign in at once, and their listings."""

from __future__ import annotations

import random

import argon2
import asyncpg

from server.settings import Settings

DEMO_PASSWORD = "jangteo-demo"  # noqa: S105 - published demo accounts
DEMO_TOP_UP = 1_000_000
DEMO_REGIONS = ("seoul-mapo", "seoul-gangnam", "busan-haeundae")
DEMO_ITEMS = (
    ("digital", "아이폰 13 미니 128GB", 450_000),
    ("digital", "Nintendo Switch OLED", 280_000),
    ("appliances", "다이슨 청소기 V10", 220_000),
    ("furniture", "원목 식탁 4인용", 90_000),
    ("kids", "유모차 (거의 새것)", 150_000),
    ("fashion", "겨울 패딩 95 사이즈", 40_000),
    ("books", "Python 책 묶음 5권", 25_000),
    ("sports", "Road bike, 54 cm frame", 600_000),
    ("plants", "몬스테라 큰 화분", 30_000),
    ("hobby", "LEGO Technic 42115", 320_000),
    ("tickets", "뮤지컬 티켓 2매", 180_000),
    ("etc", "이사 정리 무료 나눔", 0),
)

_INSERT_LISTINGS = """
WITH created AS (
    INSERT INTO listings (seller_id, title, description, price, quantity, category, region)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::int[],
                         $6::text[], $7::text[])
    RETURNING id, seller_id, title, price, quantity, category, region, status, like_count,
              version
)
INSERT INTO outbox (channel, type, data)
SELECT 'feed:' || region, 'listing.created', to_jsonb(created) FROM created
"""


async def seed(settings: Settings, *, users: int, listings: int, if_empty: bool) -> str:
    """Insert demo accounts (``demoN@jangteo.dev``) and listings; skip if asked and not empty."""
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url)
    try:
        if if_empty and await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users)"):
            return "database already has users; nothing seeded"
        async with conn.transaction():
            user_ids = await _seed_users(conn, users)
            await _seed_listings(conn, user_ids, listings)
    finally:
        await conn.close()
    return (
        f"seeded {len(user_ids)} users and {listings} listings; "
        f"sign in as demo1@jangteo.dev / {DEMO_PASSWORD}"
    )


async def _seed_users(conn: asyncpg.Connection, count: int) -> list[int]:
    # One hash for every demo account: seeding stays fast, the password stays argon2id.
    password_hash = argon2.PasswordHasher().hash(DEMO_PASSWORD)
    start = await conn.fetchval("SELECT coalesce(max(id), 0) FROM users")
    rows = await conn.fetch(
        "INSERT INTO users (email, password_hash, nickname, region)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
        " ON CONFLICT DO NOTHING RETURNING id",
        [f"demo{n}@jangteo.dev" for n in range(start + 1, start + count + 1)],
        [password_hash] * count,
        [f"이웃 {n}" for n in range(start + 1, start + count + 1)],
        [DEMO_REGIONS[n % len(DEMO_REGIONS)] for n in range(start + 1, start + count + 1)],
    )
    user_ids = [row["id"] for row in rows]
    # Every neighbour starts with a wallet and one top-up, so demo purchases work at once.
    await conn.execute(
        "INSERT INTO wallets (user_id) SELECT unnest($1::bigint[]) ON CONFLICT DO NOTHING",
        user_ids,
    )
    await conn.execute(
        "WITH added AS (INSERT INTO topups (user_id, amount)"
        " SELECT unnest($1::bigint[]), $2 RETURNING user_id, amount)"
        " UPDATE wallets w SET balance = w.balance + added.amount FROM added"
        " WHERE w.user_id = added.user_id",
        user_ids,
        DEMO_TOP_UP,
    )
    return user_ids


async def _seed_listings(conn: asyncpg.Connection, user_ids: list[int], count: int) -> None:
    if not user_ids or count <= 0:
        return
    rows = await conn.fetch("SELECT id, region FROM users WHERE id = any($1)", user_ids)
    regions: dict[int, str] = {row["id"]: row["region"] for row in rows}
    rng = random.Random(2024)  # noqa: S311 - the same demo neighbourhood every time
    columns: list[list[object]] = [[] for _ in range(7)]
    for n in range(count):
        seller = rng.choice(user_ids)
        category, title, price = DEMO_ITEMS[n % len(DEMO_ITEMS)]
        row = (
            seller,
            title,
            f"{title} — 직거래 환영, demo listing #{n + 1}",
            price,
            rng.randint(1, 3),
            category,
            regions[seller],
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    await conn.execute(_INSERT_LISTINGS, *columns)
