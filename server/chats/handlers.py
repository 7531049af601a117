"""HTTP endpoints of chat: open a room, list rooms and messages, send, mark read."""

from __future__ import annotations

from aiohttp import web

from server import keys
from server.auth.sessions import authenticate
from server.chats import service
from server.chats.schemas import (
    MessageIn,
    MessageOut,
    MessagePage,
    MessagesQuery,
    PageQuery,
    ReadIn,
    RoomOut,
    RoomPage,
)
from server.cursors import decode_room_cursor, encode_room_cursor
from server.handler_params import limit_writes, path_id
from server.jsonio import json_response, read_json, validate
from server.listings.service import ListingNotFound
from server.openapi import ApiSpec


async def open_room(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    listing_id = path_id(request, ListingNotFound)
    await limit_writes(request, claims.user_id)
    room, created = await service.open_room(
        request.app[keys.pg_pool_key], listing_id, claims.user_id
    )
    headers = {"Location": f"/api/v1/chats/{room.id}"}
    return json_response(room, status=201 if created else 200, headers=headers)


async def list_rooms(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    query = validate(dict(request.query), PageQuery)
    before = decode_room_cursor(query.cursor) if query.cursor else None
    items, last = await service.list_rooms(
        request.app[keys.pg_pool_key], claims.user_id, before, query.limit
    )
    next_cursor = encode_room_cursor(*last) if last else None
    return json_response(RoomPage(items=items, next_cursor=next_cursor))


async def list_messages(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    room_id = path_id(request, service.RoomNotFound)
    query = validate(dict(request.query), MessagesQuery)
    items, next_before = await service.list_messages(
        request.app[keys.pg_pool_key], room_id, claims.user_id, query.before, query.limit
    )
    return json_response(MessagePage(items=items, next_cursor=next_before))


async def send_message(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    room_id = path_id(request, service.RoomNotFound)
    body = await read_json(request, MessageIn)
    await limit_writes(request, claims.user_id)
    sent = await service.send_message(
        request.app[keys.pg_pool_key], room_id, claims.user_id, body.body, body.client_id
    )
    return json_response(sent.message, status=201 if sent.created else 200)


async def mark_read(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    room_id = path_id(request, service.RoomNotFound)
    body = await read_json(request, ReadIn)
    await limit_writes(request, claims.user_id)
    await service.mark_read(request.app[keys.pg_pool_key], room_id, claims.user_id, body.up_to)
    return web.Response(status=204)


def setup_routes(app: web.Application, spec: ApiSpec) -> None:
    prefix = "/api/v1"
    spec.route(
        app, "POST", f"{prefix}/listings/{{id}}/chats", open_room,
        summary="Open (201) or find (200) my chat with the seller of a listing",
        tag="chats", response=RoomOut, status=201, auth=True, errors=(404, 409, 429),
    )  # fmt: skip
    spec.route(
        app, "GET", f"{prefix}/chats", list_rooms,
        summary="My chat rooms, newest activity first, with last message and unread count",
        tag="chats", response=RoomPage, auth=True, errors=(422,), query=PageQuery,
    )  # fmt: skip
    spec.route(
        app, "GET", f"{prefix}/chats/{{id}}/messages", list_messages,
        summary="Messages of a room, newest first (before = a message id)",
        tag="chats", response=MessagePage, auth=True, errors=(404, 422), query=MessagesQuery,
    )  # fmt: skip
    spec.route(
        app, "POST", f"{prefix}/chats/{{id}}/messages", send_message,
        summary="Send (201); the same client_id again answers 200 with the stored message",
        tag="chats", body=MessageIn, response=MessageOut, status=201, auth=True,
        errors=(404, 429),
    )  # fmt: skip
    spec.route(
        app, "POST", f"{prefix}/chats/{{id}}/read", mark_read,
        summary="Mark messages read up to an id (markers never move back)",
        tag="chats", body=ReadIn, status=204, auth=True, errors=(404, 429),
    )  # fmt: skip
