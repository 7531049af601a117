"""What several areas' handlers share: ids from the path, and the per-user write limit."""

from __future__ import annotations

from aiohttp import web

from server import keys
from server.errors import Problem

MAX_ID = 2**63 - 1  # ids are bigint; a larger one could only reach PostgreSQL as an error


def path_id(request: web.Request, missing: type[Problem]) -> int:
    """The ``{id}`` in the path; anything that cannot be a bigint id is simply not found."""
    text = request.match_info["id"]
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_ID:
        raise missing()
    return int(text)


async def limit_writes(request: web.Request, user_id: int) -> None:
    """Count a write against the user's limit (429 with Retry-After beyond it)."""
    settings = request.app[keys.settings_key]
    await request.app[keys.rate_limiter_key].hit("writes", str(user_id), settings.rate_limit_writes)
