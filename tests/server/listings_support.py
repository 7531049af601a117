"""Helpers shared by the listing, feed, like and cache tests."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from aiohttp import ClientResponse

from server.auth.tokens import TokenIssuer
from server.errors import PROBLEM_CONTENT_TYPE
from server.settings import Settings
from tests.support import Account, Client

LISTINGS = "/api/v1/listings"
CATEGORIES = (
    "digital", "appliances", "furniture", "kids", "fashion", "beauty", "sports",
    "hobby", "books", "pets", "plants", "food", "tickets", "etc",
)  # fmt: skip

JsonObject = dict[str, Any]


def item_url(listing_id: int | str) -> str:
    return f"{LISTINGS}/{listing_id}"


def listing_body(**changes: Any) -> JsonObject:
    body: JsonObject = {"title": "Used bicycle", "price": 50_000, "category": "sports"}
    body.update(changes)
    return body


def etag_of(listing: JsonObject) -> str:
    """The ETag the API promises for a listing representation."""
    return f'"{listing["id"]}-{listing["version"]}-{listing["like_count"]}"'


async def create_listing(client: Client, account: Account, **changes: Any) -> JsonObject:
    """POST a listing (201 expected) and return its representation."""
    response = await client.post(LISTINGS, json=listing_body(**changes), headers=account.auth)
    assert response.status == 201, await response.text()
    body: JsonObject = await response.json()
    return body


async def get_listing(client: Client, listing_id: int) -> tuple[JsonObject, str]:
    """GET a visible listing (200 expected): its body and ETag."""
    response = await client.get(item_url(listing_id))
    assert response.status == 200, await response.text()
    body: JsonObject = await response.json()
    return body, response.headers["ETag"]


async def patch_listing(
    client: Client, account: Account, listing_id: int, if_match: str | None, body: Any
) -> ClientResponse:
    headers = dict(account.auth)
    if if_match is not None:
        headers["If-Match"] = if_match
    return await client.patch(item_url(listing_id), json=body, headers=headers)


async def problem(response: ClientResponse, status: int, slug: str | None = None) -> JsonObject:
    """Check ``response`` is an RFC 9457 problem with ``status`` (and type slug); return it."""
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM_CONTENT_TYPE
    body: JsonObject = await response.json(content_type=None)
    assert body["status"] == status
    if slug is not None:
        assert body["type"].endswith("/" + slug), body
    return body


async def field_errors(response: ClientResponse) -> set[str]:
    """The top-level field names a 422 answer complains about."""
    body = await problem(response, 422, "validation-failed")
    assert body["errors"], body
    return {error["field"].split(".")[0] for error in body["errors"]}


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    channel: str
    type: str
    data: JsonObject


async def outbox_rows(db: asyncpg.Connection, channel: str | None = None) -> list[OutboxRow]:
    """Outbox rows in id order, optionally of one channel, with data decoded."""
    rows = await db.fetch(
        "SELECT id, channel, type, data::text AS data FROM outbox"
        " WHERE $1::text IS NULL OR channel = $1 ORDER BY id",
        channel,
    )
    return [OutboxRow(r["id"], r["channel"], r["type"], orjson.loads(r["data"])) for r in rows]


async def quick_accounts(
    db: asyncpg.Connection, settings: Settings, count: int, region: str = "seoul-mapo"
) -> list[Account]:
    """Accounts made straight in the database with valid access tokens (no slow hashing)."""
    issuer = TokenIssuer(settings)
    emails = [f"quick-{uuid.uuid4().hex[:12]}@example.com" for _ in range(count)]
    rows = await db.fetch(
        "INSERT INTO users (email, password_hash, nickname, region)"
        " SELECT e, 'not-a-hash', 'quick', $2 FROM unnest($1::text[]) WITH ORDINALITY AS t(e, n)"
        " ORDER BY n RETURNING id, email",
        emails,
        region,
    )
    by_email = {row["email"]: row["id"] for row in rows}
    return [
        Account(by_email[email], email, issuer.issue_access(by_email[email], uuid.uuid4()), "")
        for email in emails
    ]


_SAMPLE = re.compile(
    r'^jangteo_cache_lookups_total\{kind="(?P<kind>[^"]+)",outcome="(?P<outcome>[^"]+)"\}'
    r" (?P<value>\S+)$"
)


def cache_counts(metrics_text: str) -> Counter[tuple[str, str]]:
    """``jangteo_cache_lookups_total`` samples as {(kind, outcome): count}."""
    counts: Counter[tuple[str, str]] = Counter()
    for line in metrics_text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            counts[(match["kind"], match["outcome"])] = int(float(match["value"]))
    return counts


def served(counts: Counter[tuple[str, str]], kind: str) -> int:
    """Answers of ``kind`` served from a cache: Redis ("hit") or this process's copy ("local")."""
    return counts[(kind, "hit")] + counts[(kind, "local")]


async def read_cache_counts(client: Client) -> Counter[tuple[str, str]]:
    response = await client.get("/metrics")
    assert response.status == 200
    return cache_counts(await response.text())
