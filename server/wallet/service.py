"""Wallets: a balance per user, topped up by a simulated payment provider."""

from __future__ import annotations

import asyncpg

from db.queries import wallets as queries
from server.errors import NotFound
from server.idempotency import IdempotentRequest, StoredResponse, run_once
from server.metrics import Metrics
from server.wallet.schemas import WalletOut


class WalletNotFound(NotFound):
    slug, title = "wallet-not-found", "No wallet for this account"


async def get_wallet(pool: asyncpg.Pool, user_id: int) -> WalletOut:
    balance = await queries.balance(pool, user_id)
    if balance is None:
        raise WalletNotFound()
    return WalletOut(balance=balance)


async def top_up(
    pool: asyncpg.Pool, idempotent: IdempotentRequest, user_id: int, amount: int, metrics: Metrics
) -> StoredResponse:
    """The money arrives at once, once per idempotency key."""
    once = await run_once(
        pool,
        idempotent,
        lambda conn: queries.top_up(conn, user_id, amount),
        lambda balance: WalletOut(balance=balance),
        metrics.transaction_retried,
    )
    return once.response
