"""HTTP endpoints of purchases and orders."""

from __future__ import annotations

from aiohttp import web

from db.types import Connection
from server import keys
from server.auth.sessions import authenticate
from server.cursors import decode_cursor, encode_cursor
from server.errors import Problem
from server.handler_params import limit_writes, path_id
from server.idempotency import (
    IdempotentRequest,
    StoredResponse,
    Work,
    idempotent_request,
    run_once,
)
from server.jsonio import json_response, validate
from server.jsonio import read_json as read_body
from server.listings.service import ListingNotFound
from server.openapi import IDEMPOTENCY_KEY, ApiSpec
from server.orders import service
from server.orders.errors import OrderNotFound
from server.orders.purchase import PurchaseRequest, order_json, purchase
from server.orders.schemas import OrderOut, OrderPage, OrdersQuery, PurchaseBody


async def _run_once(
    request: web.Request, idempotent: IdempotentRequest, work: Work
) -> StoredResponse:
    metrics = request.app[keys.metrics_key]
    return await run_once(
        request.app[keys.pg_pool_key],
        idempotent,
        work,
        on_retry=lambda reason: metrics.transaction_retries.labels(reason).inc(),
    )


async def purchase_listing(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    listing_id = path_id(request, ListingNotFound)
    body = await read_body(request, PurchaseBody)
    idempotent = idempotent_request(request, claims.user_id, body.model_dump())
    await limit_writes(request, claims.user_id)
    app = request.app
    strategy = app[keys.settings_key].purchase_strategy
    metrics = app[keys.metrics_key]
    regions: list[str] = []

    async def buy(fence: int | None) -> StoredResponse:
        async def work(conn: Connection) -> tuple[int, object]:
            order = PurchaseRequest(claims.user_id, listing_id, body.quantity, fence)
            done = await purchase(conn, order, strategy, metrics)
            regions.append(done.listing["region"])
            return 201, order_json(done.order)

        return await _run_once(request, idempotent, work)

    try:
        if strategy == "redis_lock":
            stored = await app[keys.purchase_locks_key].run(listing_id, buy)
        else:
            stored = await buy(None)
    except Problem as problem:
        metrics.purchases.labels(strategy, problem.slug).inc()
        raise
    metrics.purchases.labels(strategy, "replayed" if stored.replayed else "paid").inc()
    if regions:
        await app[keys.listing_cache_key].changed(listing_id, regions[0])
    return stored.to_response()


async def list_orders(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    query = validate(dict(request.query), OrdersQuery)
    before = decode_cursor(query.cursor) if query.cursor else None
    rows, last_id = await service.list_orders(
        request.app[keys.pg_pool_key], claims.user_id, query.role, before, query.limit
    )
    return json_response(
        {
            "items": [order_json(row) for row in rows],
            "next_cursor": encode_cursor(last_id) if last_id else None,
        }
    )


async def get_order(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    order_id = path_id(request, OrderNotFound)
    row = await service.get_order(request.app[keys.pg_pool_key], order_id, claims.user_id)
    return json_response(order_json(row))


async def complete_order(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    order_id = path_id(request, OrderNotFound)
    idempotent = idempotent_request(request, claims.user_id, None)
    await limit_writes(request, claims.user_id)

    async def work(conn: Connection) -> tuple[int, object]:
        order = await service.complete_order(conn, order_id, claims.user_id)
        return 200, order_json(order)

    return (await _run_once(request, idempotent, work)).to_response()


async def cancel_order(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    order_id = path_id(request, OrderNotFound)
    idempotent = idempotent_request(request, claims.user_id, None)
    await limit_writes(request, claims.user_id)
    restocked: list[tuple[int, str]] = []

    async def work(conn: Connection) -> tuple[int, object]:
        order, listing = await service.cancel_order(conn, order_id, claims.user_id)
        restocked.append((listing["id"], listing["region"]))
        return 200, order_json(order)

    stored = await _run_once(request, idempotent, work)
    for listing_id, region in restocked:
        await request.app[keys.listing_cache_key].changed(listing_id, region)
    return stored.to_response()


def setup_routes(app: web.Application, spec: ApiSpec) -> None:
    money = (400, 403, 404, 409, 422, 429)
    spec.route(
        app, "POST", "/api/v1/listings/{id}/purchase", purchase_listing,
        summary="Buy (Idempotency-Key required): stock, escrow and order in one transaction",
        tag="orders", body=PurchaseBody, response=OrderOut, status=201, auth=True, errors=money,
        headers=(IDEMPOTENCY_KEY,),
    )  # fmt: skip
    spec.route(
        app, "GET", "/api/v1/orders", list_orders, summary="My orders as buyer or seller",
        tag="orders", response=OrderPage, auth=True, errors=(422,), query=OrdersQuery,
    )  # fmt: skip
    spec.route(
        app, "GET", "/api/v1/orders/{id}", get_order, summary="One of my orders",
        tag="orders", response=OrderOut, auth=True, errors=(404,),
    )  # fmt: skip
    spec.route(
        app, "POST", "/api/v1/orders/{id}/complete", complete_order,
        summary="Buyer confirms receipt; escrow goes to the seller (Idempotency-Key required)",
        tag="orders", response=OrderOut, auth=True, errors=money, headers=(IDEMPOTENCY_KEY,),
    )  # fmt: skip
    spec.route(
        app, "POST", "/api/v1/orders/{id}/cancel", cancel_order,
        summary="Buyer or seller cancels a paid order: refund and restock (Idempotency-Key)",
        tag="orders", response=OrderOut, auth=True, errors=money, headers=(IDEMPOTENCY_KEY,),
    )  # fmt: skip
