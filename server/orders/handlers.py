"""HTTP endpoints of purchases and orders."""

from __future__ import annotations

from aiohttp import web

from server import keys
from server.auth.sessions import authenticate
from server.cursors import decode_cursor, encode_cursor
from server.handler_params import idempotent_request, limit_writes, path_id, stored_response
from server.jsonio import json_response, read_json, validate
from server.listings.service import ListingNotFound
from server.openapi import IDEMPOTENCY_KEY, ApiSpec
from server.orders import service
from server.orders.errors import OrderNotFound
from server.orders.purchase import PurchaseRequest
from server.orders.schemas import OrderOut, OrderPage, OrdersQuery, PurchaseBody


async def purchase_listing(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    listing_id = path_id(request, ListingNotFound)
    body = await read_json(request, PurchaseBody)
    idempotent = idempotent_request(request, claims.user_id, body.model_dump(), status=201)
    await limit_writes(request, claims.user_id)
    app = request.app
    stored = await service.purchase_listing(
        app[keys.pg_pool_key],
        idempotent,
        PurchaseRequest(claims.user_id, listing_id, body.quantity),
        strategy=app[keys.settings_key].purchase_strategy,
        metrics=app[keys.metrics_key],
        locks=app[keys.purchase_locks_key],
        gate=app[keys.purchase_gate_key],
        cache=app[keys.listing_cache_key],
        queue=app.get(keys.purchase_queue_key),
    )
    return stored_response(stored)


async def list_orders(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    query = validate(dict(request.query), OrdersQuery)
    before = decode_cursor(query.cursor) if query.cursor else None
    items, last_id = await service.list_orders(
        request.app[keys.pg_pool_key], claims.user_id, query.role, before, query.limit
    )
    next_cursor = encode_cursor(last_id) if last_id else None
    return json_response(OrderPage(items=items, next_cursor=next_cursor))


async def get_order(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    order_id = path_id(request, OrderNotFound)
    order = await service.get_order(request.app[keys.pg_pool_key], order_id, claims.user_id)
    return json_response(order)


async def complete_order(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    order_id = path_id(request, OrderNotFound)
    idempotent = idempotent_request(request, claims.user_id, None, status=200)
    await limit_writes(request, claims.user_id)
    app = request.app
    stored = await service.complete_order(
        app[keys.pg_pool_key], idempotent, order_id, claims.user_id, app[keys.metrics_key]
    )
    return stored_response(stored)


async def cancel_order(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    order_id = path_id(request, OrderNotFound)
    idempotent = idempotent_request(request, claims.user_id, None, status=200)
    await limit_writes(request, claims.user_id)
    app = request.app
    stored = await service.cancel_order(
        app[keys.pg_pool_key],
        idempotent,
        order_id,
        claims.user_id,
        app[keys.metrics_key],
        app[keys.listing_cache_key],
    )
    return stored_response(stored)


def setup_routes(app: web.Application, spec: ApiSpec) -> None:
    money = (400, 403, 404, 409, 422, 429)
    spec.route(
        app, "POST", "/api/v1/listings/{id}/purchase", purchase_listing,
        summary="Buy (Idempotency-Key required): stock, escrow and order in one transaction;"
        " 503 purchase-pending when a queued purchase is not decided in time (retry the key)",
        tag="orders", body=PurchaseBody, response=OrderOut, status=201, auth=True,
        errors=(*money, 503),
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
