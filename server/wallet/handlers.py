"""HTTP endpoints of the wallet."""

from __future__ import annotations

from aiohttp import web

from server import keys
from server.auth.sessions import authenticate
from server.handler_params import idempotent_request, limit_writes, stored_response
from server.jsonio import json_response, read_json
from server.openapi import IDEMPOTENCY_KEY, ApiSpec
from server.wallet import service
from server.wallet.schemas import TopUpBody, WalletOut


async def get_wallet(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    wallet = await service.get_wallet(request.app[keys.pg_pool_key], claims.user_id)
    return json_response(wallet)


async def top_up(request: web.Request) -> web.Response:
    """A simulated payment provider: the money arrives at once."""
    claims = await authenticate(request)
    body = await read_json(request, TopUpBody)
    idempotent = idempotent_request(request, claims.user_id, body.model_dump(), status=200)
    await limit_writes(request, claims.user_id)
    app = request.app
    stored = await service.top_up(
        app[keys.pg_pool_key], idempotent, claims.user_id, body.amount, app[keys.metrics_key]
    )
    return stored_response(stored)


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
