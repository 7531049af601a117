"""What several areas' handlers share: ids from the path, the per-user write limit, and
idempotency keys in and stored responses out."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server import keys
from server.errors import Problem
from server.idempotency import KEY_HEADER, REPLAY_HEADER, IdempotentRequest, StoredResponse
from server.jsonio import JSON_CONTENT_TYPE

MAX_ID = 2**63 - 1  # ids are bigint; a larger one could only reach PostgreSQL as an error


def path_id(request: web.Request, missing: type[Problem]) -> int:
    """The ``{id}`` in the path; anything that cannot be a bigint id is simply not found."""
    text = request.match_info["id"]
    # The length first: int() refuses (ValueError) strings of more than 4,300 digits.
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not 1 <= int(text) <= MAX_ID:
        raise missing()
    return int(text)


async def limit_writes(request: web.Request, user_id: int) -> None:
    """Count a write against the user's limit (429 with Retry-After beyond it)."""
    settings = request.app[keys.settings_key]
    await request.app[keys.rate_limiter_key].hit("writes", str(user_id), settings.rate_limit_writes)


def idempotent_request(
    request: web.Request, user_id: int, body: Any, *, status: int
) -> IdempotentRequest:
    """The request's Idempotency-Key and fingerprint; ``status`` is what a success answers."""
    return IdempotentRequest.of(
        request.headers.get(KEY_HEADER),
        user_id=user_id,
        method=request.method,
        path=request.path,
        body=body,
        status=status,
    )


def stored_response(stored: StoredResponse) -> web.Response:
    """The answer of an idempotent request, marked when it is a replay."""
    headers = {REPLAY_HEADER: "true"} if stored.replayed else {}
    return web.Response(
        status=stored.status, body=stored.body, headers=headers, content_type=JSON_CONTENT_TYPE
    )
