"""The janitor deletes expired idempotency keys and keeps live ones."""

from __future__ import annotations

import asyncpg

from server.janitor import sweep_expired_keys
from tests.support import Client, sign_up


async def test_sweep_deletes_only_expired_keys(client: Client, db: asyncpg.Connection) -> None:
    account = await sign_up(client)
    for key in ("old-1", "old-2", "fresh"):
        response = await client.post(
            "/api/v1/wallet/topup",
            json={"amount": 100},
            headers={**account.auth, "Idempotency-Key": key},
        )
        assert response.status == 200
    await db.execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"
        " WHERE key LIKE 'old-%'"
    )
    assert await sweep_expired_keys(client.app) == 2
    remaining = await db.fetch("SELECT key FROM idempotency_keys")
    assert [row["key"] for row in remaining] == ["fresh"]
    assert await sweep_expired_keys(client.app) == 0

    # An expired key no longer replays: the same key runs again as a new request.
    again = await client.post(
        "/api/v1/wallet/topup",
        json={"amount": 100},
        headers={**account.auth, "Idempotency-Key": "old-1"},
    )
    assert again.status == 200
    assert "Idempotent-Replayed" not in again.headers
    assert (await again.json())["balance"] == 400
