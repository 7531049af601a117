"""HTTP endpoints of the wallet."""

from __future__ import annotations

from aiohttp import web

from db.queries import wallets as queries
from db.types import Connection
from server import keys
from server.auth.sessions import authenticate
from server.errors import NotFound
from server.idempotency import idempotent_request, run_once
from server.jsonio import json_response, read_json
from server.openapi import IDEMPOTENCY_KEY, ApiSpec
from server.wallet.schemas import TopUpBody, WalletOut


async def get_wallet(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    balance = await queries.balance(request.app[keys.pg_pool_key], claims.user_id)
    if balance is None:
        raise NotFound("no wallet")
    return json_response({"balance": balance})


async def top_up(request: web.Request) -> web.Response:
    """A simulated payment provider: the money arrives at once."""
    claims = await authenticate(request)
    body = await read_json(request, TopUpBody)
    idempotent = idempotent_request(request, claims.user_id, body.model_dump())
    settings = request.app[keys.settings_key]
    await request.app[keys.rate_limiter_key].hit(
        "writes", str(claims.user_id), settings.rate_limit_writes
    )

    async def work(conn: Connection) -> tuple[int, object]:
        return 200, {"balance": await queries.top_up(conn, claims.user_id, body.amount)}

    metrics = request.app[keys.metrics_key]
    stored = await run_once(
        request.app[keys.pg_pool_key],
        idempotent,
        work,
        on_retry=lambda reason: metrics.transaction_retries.labels(reason).inc(),
    )
    return stored.to_response()


def setup_routes(app: web.Application, spec: ApiSpec) -> None:
    spec.route(
        app, "GET", "/api/v1/wallet", get_wallet, summary="My balance",
        tag="wallet", response=WalletOut, auth=True,
    )  # fmt: skip
    spec.route(
        app, "POST", "/api/v1/wallet/topup", top_up,
        summary="Add money (simulated provider; Idempotency-Key required)",
        tag="wallet", body=TopUpBody, response=WalletOut, auth=True, errors=(409, 429),
        headers=(IDEMPOTENCY_KEY,),
    )  # fmt: skip
