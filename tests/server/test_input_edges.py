"""Inputs at the edges of what the API document allows, answered as it says.

Each of these once reached PostgreSQL or int() and came back as a 500: U+0000 in text
(PostgreSQL's text cannot hold it), ids of thousands of digits (int() refuses more than
4,300), an email that grows past its column when lower-cased. The patterns the document
publishes are checked here too, against what the server does with the same strings.
"""

from __future__ import annotations

import re
import sys
import uuid
from typing import Any

import asyncpg
import pytest

from server.auth.schemas import EMAIL_PATTERN
from server.cursors import (
    CURSOR_PATTERN,
    ROOM_CURSOR_PATTERN,
    decode_cursor,
    decode_room_cursor,
    encode_cursor,
    encode_room_cursor,
)
from server.errors import ValidationFailed
from server.settings import Settings
from server.text import NOT_BLANK, WHITESPACE
from tests.orders_support import quick_account
from tests.server.listings_support import (
    LISTINGS,
    create_listing,
    field_errors,
    item_url,
    patch_listing,
    problem,
    quick_accounts,
)
from tests.support import PASSWORD, Client

HUGE_ID = "1" * 5_000
SIGNUP = "/api/v1/auth/signup"


def _signup(**changes: str) -> dict[str, str]:
    body = {
        "email": f"edge-{uuid.uuid4().hex[:10]}@example.com",
        "password": PASSWORD,
        "nickname": "edge",
        "region": "seoul-mapo",
    }
    return body | changes


# -- the patterns say what the server does -----------------------------------------------------


def test_whitespace_is_what_strip_removes() -> None:
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    spaces = {char for char in every if char.isspace()}
    assert set(re.findall(f"[{WHITESPACE}]", every)) == spaces
    assert all(not char.strip() for char in spaces)


@pytest.mark.parametrize(
    ("text", "blank"),
    [
        ("a", False),
        (" a ", False),
        ("\ufeff", False),  # ECMA-262's \s has it; str.strip() keeps it, so it counts
        ("\x1c", True),  # str.strip() removes it; Rust's \s does not have it
        ("\x85 \u3000", True),
        ("", True),
        ("a\x00", True),
    ],
)
def test_not_blank_is_what_is_left_after_strip(text: str, blank: bool) -> None:
    matches = re.fullmatch(NOT_BLANK, text) is not None
    assert matches is not blank
    if "\x00" not in text:
        assert (text.strip() == "") is blank


def test_no_email_pattern_admits_whitespace_or_nul() -> None:
    assert re.fullmatch(EMAIL_PATTERN, "a.b@example.com")
    for char in ("\x00", " ", "\x85", "\u2028", "\x1f"):
        assert not re.fullmatch(EMAIL_PATTERN, f"a{char}b@example.com"), repr(char)


def test_every_cursor_the_pattern_admits_is_a_place_in_the_order() -> None:
    for last_id in (0, 1, 255, 2**32, 2**63 - 1):
        cursor = encode_cursor(last_id)
        assert re.fullmatch(CURSOR_PATTERN, cursor)
        assert decode_cursor(cursor) == last_id
    assert decode_cursor("7" + "f" * 15) == 2**63 - 1
    room = encode_room_cursor(*decode_room_cursor("0" * 32))
    assert re.fullmatch(ROOM_CURSOR_PATTERN, room) and decode_room_cursor(room)[1] == 0
    # The largest admitted time is still a datetime, and survives the round trip.
    latest = "01" + "f" * 14 + "7" + "f" * 15
    assert encode_room_cursor(*decode_room_cursor(latest)) == latest
    for wrong in ("", "8" + "0" * 15, "0" * 15, "0" * 17, "A" * 16, "0" * 32):
        with pytest.raises(ValidationFailed):
            decode_cursor(wrong)
    for wrong in ("", "0" * 16, "02" + "0" * 30, "0" * 16 + "8" + "0" * 15, "0" * 33):
        with pytest.raises(ValidationFailed):
            decode_room_cursor(wrong)


# -- U+0000 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"email": "a\x00b@example.com"}, "email"),
        ({"nickname": "ed\x00ge"}, "nickname"),
    ],
)
async def test_nul_in_a_signup_is_422(
    client: Client, db: asyncpg.Connection, changes: dict[str, str], field: str
) -> None:
    response = await client.post(SIGNUP, json=_signup(**changes))
    assert field in await field_errors(response)
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_a_login_with_nul_is_refused_like_any_unknown_email(client: Client) -> None:
    response = await client.post(
        "/api/v1/auth/login", json={"email": "a\x00b@example.com", "password": PASSWORD}
    )
    await problem(response, 401, "invalid-credentials")


async def test_an_email_too_long_once_lower_cased_is_422(
    client: Client, db: asyncpg.Connection
) -> None:
    email = "\u0130" * 200 + "@example.com"  # 212 characters, 412 once lower-cased
    assert len(email) <= 254 < len(email.lower())
    assert "email" in await field_errors(await client.post(SIGNUP, json=_signup(email=email)))
    assert await db.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": "lamp\x00"}, "title"),
        ({"description": "works\x00"}, "description"),
    ],
)
async def test_nul_in_a_listing_is_422(
    client: Client,
    db: asyncpg.Connection,
    settings: Settings,
    body: dict[str, Any],
    field: str,
) -> None:
    (seller,) = await quick_accounts(db, settings, 1)
    created = await client.post(
        LISTINGS, json={"title": "lamp", "price": 1, "category": "etc"} | body, headers=seller.auth
    )
    assert field in await field_errors(created)
    listing = await create_listing(client, seller)
    patched = await patch_listing(client, seller, listing["id"], "*", body)
    assert field in await field_errors(patched)


async def test_nul_in_a_search_is_422(client: Client) -> None:
    response = await client.get(LISTINGS, params={"q": "lamp\x00"})
    assert "q" in await field_errors(response)


async def test_nul_in_a_chat_message_is_422(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    seller, buyer = await quick_accounts(db, settings, 2)
    listing = await create_listing(client, seller)
    room = await client.post(f"{item_url(listing['id'])}/chats", headers=buyer.auth)
    assert room.status == 201, await room.text()
    response = await client.post(
        f"/api/v1/chats/{(await room.json())['id']}/messages",
        json={"body": "hi\x00", "client_id": str(uuid.uuid4())},
        headers=buyer.auth,
    )
    assert "body" in await field_errors(response)


async def test_length_and_blankness_are_judged_as_sent(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    """The document cannot strip: " " * 5 + 100 characters is too long, "\\x1c" blank."""
    (seller,) = await quick_accounts(db, settings, 1)
    for title in (" " * 5 + "a" * 100, "\x1c", "\u3000"):
        body = {"title": title, "price": 1, "category": "etc"}
        response = await client.post(LISTINGS, json=body, headers=seller.auth)
        assert "title" in await field_errors(response), repr(title)
    stripped = await create_listing(client, seller, title=" a" + "b" * 97 + " ")
    assert stripped["title"] == "a" + "b" * 97


# -- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        item_url(HUGE_ID),
        f"{item_url(HUGE_ID)}/like",
        f"/api/v1/orders/{HUGE_ID}",
        f"/api/v1/chats/{HUGE_ID}/messages",
    ],
)
async def test_an_id_of_thousands_of_digits_is_not_found(
    client: Client, db: asyncpg.Connection, settings: Settings, path: str
) -> None:
    account = await quick_account(db, settings)
    method = "PUT" if path.endswith("/like") else "GET"
    await problem(await client.request(method, path, headers=account.auth), 404)


async def test_a_photo_on_a_listing_of_thousands_of_digits_is_not_found(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    account = await quick_account(db, settings)
    response = await client.post(
        f"{item_url(HUGE_ID)}/photos",
        json={"content_type": "image/png", "size": 10},
        headers=account.auth,
    )
    await problem(response, 404)


async def test_an_if_match_of_thousands_of_digits_is_412(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    (seller,) = await quick_accounts(db, settings, 1)
    listing = await create_listing(client, seller)
    for etag in (f'"{HUGE_ID}-1-0"', f'"{listing["id"]}-{HUGE_ID}-0"'):
        response = await patch_listing(client, seller, listing["id"], etag, {"price": 2})
        await problem(response, 412, "precondition-failed")
