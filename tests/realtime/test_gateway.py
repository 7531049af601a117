"""The WebSocket gateway end to end: the real app in-process, real PostgreSQL, Redis and relay.

Every wait is on a condition (a frame, a close, a row, a metric); TIMEOUT only turns a hang
into a failure on a slow machine, and no test asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType, WSServerHandshakeError

from realtime import gateway as gateway_module
from realtime.keys import gateway_key
from realtime.tickets import NONCE_AT, spent_key
from server.settings import Settings
from tests.conftest import ClientFactory
from tests.server.listings_support import create_listing, item_url, patch_listing
from tests.support import PASSWORD, Account, Client, sign_up

TIMEOUT = 10.0
WS = "/api/v1/ws"
TICKET = "/api/v1/ws/ticket"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

JsonObject = dict[str, Any]

PONG: JsonObject = {"op": "pong"}
BAD_TICKET = (1008, "invalid, expired or used ticket")
SESSION_ENDED = (4401, "session ended")


# -- helpers ---------------------------------------------------------------------------------


async def new_ticket(client: Client, account: Account) -> str:
    response = await client.post(TICKET, headers=account.auth)
    assert response.status == 201, await response.text()
    body = await response.json()
    ticket: str = body["ticket"]
    return ticket


async def connect(client: Client, ticket: str, **kwargs: Any) -> ClientWebSocketResponse:
    ws: ClientWebSocketResponse = await client.ws_connect(f"{WS}?ticket={ticket}", **kwargs)
    return ws


async def open_socket(client: Client, account: Account) -> ClientWebSocketResponse:
    """A socket past its session check (a ping answered proves the read loop runs)."""
    ws = await connect(client, await new_ticket(client, account))
    await ping(ws)
    return ws


async def ping(ws: ClientWebSocketResponse) -> None:
    await send(ws, {"op": "ping"})
    assert await receive(ws) == PONG


async def send(ws: ClientWebSocketResponse, frame: JsonObject) -> None:
    await ws.send_str(orjson.dumps(frame).decode())


async def receive(ws: ClientWebSocketResponse) -> JsonObject:
    message = await ws.receive(timeout=TIMEOUT)
    assert message.type is WSMsgType.TEXT, (message, ws.close_code)
    frame: JsonObject = orjson.loads(message.data)
    return frame


async def closed_with(ws: ClientWebSocketResponse) -> tuple[int, str]:
    """The close code and reason of the next message, which must be the server's close."""
    message = await ws.receive(timeout=TIMEOUT)
    assert message.type is WSMsgType.CLOSE, message
    # The code the server sent. (aiohttp's client may report 1006 in ws.close_code when the
    # server drops the connection before the client's echoed close frame is written.)
    code: int = message.data
    return code, str(message.extra)


async def subscribe(
    ws: ClientWebSocketResponse, channel: str, since: int | None = None
) -> JsonObject:
    frame: JsonObject = {"op": "subscribe", "channel": channel}
    if since is not None:
        frame["since"] = since
    await send(ws, frame)
    return await receive(ws)


async def subscribed(ws: ClientWebSocketResponse, channel: str, since: int | None = None) -> int:
    answer = await subscribe(ws, channel, since)
    assert answer["op"] == "subscribed", answer
    assert answer["channel"] == channel
    assert set(answer) == {"op", "channel", "offset"}
    offset: int = answer["offset"]
    return offset


def error(code: str, detail: str, channel: str | None = None) -> JsonObject:
    frame: JsonObject = {"op": "error", "code": code, "detail": detail}
    if channel is not None:
        frame["channel"] = channel
    return frame


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds; TIMEOUT only bounds a hang."""
    try:
        async with asyncio.timeout(TIMEOUT * 3):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"still not so: {what}")


def epoch_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


async def published(db: asyncpg.Connection, channel: str) -> list[JsonObject]:
    """The event frames a client must see for ``channel``, straight from the event log."""
    rows = await db.fetch(
        "SELECT position, prev, committed_at, type, data::text AS data FROM outbox"
        " WHERE channel = $1 AND position IS NOT NULL ORDER BY position",
        channel,
    )
    return [
        {
            "op": "event",
            "channel": channel,
            "offset": row["position"],
            "prev": row["prev"],
            "ts": epoch_ms(row["committed_at"]),
            "type": row["type"],
            "data": orjson.loads(row["data"]),
        }
        for row in rows
    ]


async def wait_published(db: asyncpg.Connection, channel: str, count: int) -> list[JsonObject]:
    """Wait until ``count`` events of ``channel`` have their positions (and the head moved)."""

    async def done() -> bool:
        pending = await db.fetchval(
            "SELECT count(*) FROM outbox WHERE channel = $1 AND position IS NULL", channel
        )
        return pending == 0 and len(await published(db, channel)) == count

    await eventually(done, f"{count} events of {channel} published")
    return await published(db, channel)


async def set_price(client: Client, seller: Account, listing_id: int, price: int) -> None:
    response = await patch_listing(client, seller, listing_id, "*", {"price": price})
    assert response.status == 200, await response.text()


async def metric(client: Client, name: str, labels: str = "") -> float:
    response = await client.get("/metrics")
    assert response.status == 200
    pattern = re.compile(rf"^{re.escape(name + labels)} (\S+)$", re.MULTILINE)
    match = pattern.search(await response.text())
    return float(match.group(1)) if match else 0.0


async def log_in(client: Client, account: Account) -> Account:
    """A second session (refresh-token family) of the same user."""
    response = await client.post(
        "/api/v1/auth/login", json={"email": account.email, "password": PASSWORD}
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    return Account(account.user_id, account.email, body["access_token"], body["refresh_token"])


def ticket_key(ticket: str) -> str:
    """The Redis key that marks the ticket spent (it exists once the ticket was used)."""
    raw = base64.urlsafe_b64decode(ticket + "=" * (-len(ticket) % 4))
    return spent_key(raw[NONCE_AT : NONCE_AT + 16])


async def until_expired(client: Client, ticket: str) -> None:
    """Wait until the ticket's own expiry has passed on this instance's clock."""
    tickets = client.app[gateway_key].tickets
    read = tickets.read(ticket)
    assert read is not None, ticket

    async def expired() -> bool:
        return tickets.clock() >= read.expires_at

    await eventually(expired, "the ticket expired")


# -- tickets ---------------------------------------------------------------------------------


async def test_ticket_is_issued_for_an_access_token_only(client: Client) -> None:
    account = await sign_up(client)
    response = await client.post(TICKET, headers=account.auth)
    assert response.status == 201, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert set(body) == {"ticket", "expires_in"}
    assert body["expires_in"] == 30
    assert isinstance(body["ticket"], str)
    assert len(body["ticket"]) >= 32

    assert (await client.post(TICKET)).status == 401
    bad = {"Authorization": "Bearer not-a-token"}
    assert (await client.post(TICKET, headers=bad)).status == 401


async def test_a_ticket_opens_one_socket_once(client: Client) -> None:
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    first = await connect(client, ticket)
    await ping(first)

    again = await connect(client, ticket)  # while the first is open
    assert await closed_with(again) == BAD_TICKET
    await first.close()
    after = await connect(client, ticket)  # and after it closed
    assert await closed_with(after) == BAD_TICKET


@pytest.mark.parametrize(
    "query", ["?ticket=unknown-ticket", "", "?ticket=", "?ticket=" + "a" * 101]
)
async def test_an_unknown_or_missing_ticket_is_closed_with_1008(client: Client, query: str) -> None:
    ws = await client.ws_connect(WS + query)
    assert await closed_with(ws) == BAD_TICKET


async def test_an_expired_ticket_is_closed_with_1008(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings.replace(ws_ticket_ttl=1))
    account = await sign_up(client)
    response = await client.post(TICKET, headers=account.auth)
    assert response.status == 201
    body = await response.json()
    assert body["expires_in"] == 1
    read = client.app[gateway_key].tickets.read(body["ticket"])
    assert read is not None and read.expires_at - client.app[gateway_key].tickets.clock() <= 2
    await until_expired(client, body["ticket"])
    ws = await connect(client, body["ticket"])
    assert await closed_with(ws) == BAD_TICKET


# -- Origin ----------------------------------------------------------------------------------


async def handshake_status(client: Client, ticket: str, origin: str | None) -> int:
    """101 when the upgrade succeeded (and the socket works), else the refusal's status."""
    headers = {} if origin is None else {"Origin": origin}
    try:
        ws = await connect(client, ticket, headers=headers)
    except WSServerHandshakeError as refused:
        return refused.status
    await ping(ws)
    await ws.close()
    return 101


async def test_origin_must_be_same_origin_when_none_is_configured(client: Client) -> None:
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    assert await handshake_status(client, ticket, "https://evil.example") == 403
    assert await handshake_status(client, ticket, f"http://evil.example:{client.port}") == 403
    assert await handshake_status(client, ticket, "null") == 403
    # The refused handshake did not use the ticket up.
    assert await handshake_status(client, ticket, f"http://{client.host}:{client.port}") == 101
    assert await handshake_status(client, await new_ticket(client, account), None) == 101


async def test_configured_origins_are_the_only_ones_allowed(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings.replace(allowed_origins=("https://app.example",)))
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    for origin in ("https://evil.example", f"http://{client.host}:{client.port}"):
        assert await handshake_status(client, ticket, origin) == 403, origin
    assert await handshake_status(client, ticket, "https://app.example") == 101
    assert await handshake_status(client, await new_ticket(client, account), None) == 101


# -- subscriptions and events ----------------------------------------------------------------


async def test_a_price_change_reaches_the_listing_channel(
    client: Client, db: asyncpg.Connection
) -> None:
    seller = await sign_up(client)
    listing = await create_listing(client, seller, price=50_000)
    channel = f"listing:{listing['id']}"
    ws = await open_socket(client, seller)
    start = await subscribed(ws, channel)
    assert start == 0  # listing.created went to the feed, not to the listing's channel

    await set_price(client, seller, listing["id"], 42_000)
    first = await receive(ws)
    await set_price(client, seller, listing["id"], 41_000)
    second = await receive(ws)

    assert [first, second] == await published(db, channel)
    assert first["op"] == "event"
    assert first["channel"] == channel
    assert first["type"] == "listing.price_changed"
    assert first["offset"] > start
    assert first["prev"] == 0
    assert isinstance(first["ts"], int)
    assert first["data"]["price"] == 42_000
    assert first["data"]["old_price"] == 50_000
    assert second["prev"] == first["offset"] < second["offset"]
    assert second["data"]["price"] == 41_000

    # A new subscriber starts from the channel's head.
    other = await open_socket(client, seller)
    assert await subscribed(other, channel) == second["offset"]


async def test_a_like_reaches_the_listing_and_the_sellers_user_channel(
    client: Client, db: asyncpg.Connection
) -> None:
    seller = await sign_up(client)
    fan = await sign_up(client)
    listing = await create_listing(client, seller)
    listing_channel, user_channel = f"listing:{listing['id']}", f"user:{seller.user_id}"
    ws = await open_socket(client, seller)
    assert await subscribed(ws, listing_channel) == 0
    assert await subscribed(ws, user_channel) == 0

    response = await client.put(item_url(listing["id"]) + "/like", headers=fan.auth)
    assert response.status in (200, 204), await response.text()

    frames = [await receive(ws), await receive(ws)]
    data = {"listing_id": listing["id"], "like_count": 1, "liked": True, "user_id": fan.user_id}
    assert frames == (await published(db, listing_channel)) + (await published(db, user_channel))
    assert [(f["channel"], f["type"], f["data"]) for f in frames] == [
        (listing_channel, "listing.liked", data),
        (user_channel, "listing.liked", data),
    ]
    assert frames[1]["offset"] > frames[0]["offset"]


async def test_only_its_user_may_subscribe_to_a_user_channel(client: Client) -> None:
    alice = await sign_up(client)
    bob = await sign_up(client)
    ws = await open_socket(client, bob)
    channel = f"user:{alice.user_id}"
    assert await subscribe(ws, channel) == error(
        "forbidden", "only its user may subscribe to a user channel", channel
    )
    assert await subscribed(ws, f"user:{bob.user_id}") == 0


@pytest.mark.parametrize(
    ("channel", "detail"),
    [
        ("nope", "unknown channel; kinds are {kinds}"),
        ("nope:1", "unknown channel; kinds are {kinds}"),
        (":1", "unknown channel; kinds are {kinds}"),
        ("listing:abc", "listing channels are listing:<id>"),
        ("listing:0", "listing channels are listing:<id>"),
        ("listing:", "listing channels are listing:<id>"),
        ("feed:BAD", "feed channels are feed:<region>"),
        ("user:x", "user channels are user:<id>"),
        ("listing:" + "1" * 60, "unknown channel; kinds are {kinds}"),
    ],
)
async def test_bad_channel_names_are_refused(client: Client, channel: str, detail: str) -> None:
    account = await sign_up(client)
    ws = await open_socket(client, account)
    kinds = ", ".join(sorted(client.app[gateway_key].rules.kinds))
    assert {"feed", "listing", "user"} <= set(kinds.split(", "))
    expected = error("bad_channel", detail.format(kinds=kinds), channel)
    assert await subscribe(ws, channel) == expected
    await ping(ws)  # still open


async def test_a_feed_channel_gets_new_listings_of_its_region(
    client: Client, db: asyncpg.Connection
) -> None:
    seller = await sign_up(client, region="busan-haeundae")
    ws = await open_socket(client, seller)
    channel = "feed:busan-haeundae"
    assert await subscribed(ws, channel) == 0
    listing = await create_listing(client, seller)
    frame = await receive(ws)
    assert [frame] == await published(db, channel)
    assert frame["type"] == "listing.created"
    assert frame["data"]["id"] == listing["id"]


async def test_ping_is_answered_with_pong(client: Client) -> None:
    account = await sign_up(client)
    ws = await connect(client, await new_ticket(client, account))
    for _ in range(3):
        await send(ws, {"op": "ping"})
        assert await receive(ws) == PONG


async def test_after_unsubscribe_no_events_of_that_channel_arrive(
    client: Client, db: asyncpg.Connection
) -> None:
    seller = await sign_up(client)
    watched = await create_listing(client, seller)
    barrier = await create_listing(client, seller)
    watched_channel, barrier_channel = f"listing:{watched['id']}", f"listing:{barrier['id']}"
    ws = await open_socket(client, seller)
    witness = await open_socket(client, seller)  # keeps the channel live on this instance
    await subscribed(ws, watched_channel)
    await subscribed(ws, barrier_channel)
    await subscribed(witness, watched_channel)

    await send(ws, {"op": "unsubscribe", "channel": watched_channel})
    assert await receive(ws) == {"op": "unsubscribed", "channel": watched_channel}

    await set_price(client, seller, watched["id"], 1_000)
    await set_price(client, seller, barrier["id"], 2_000)
    # The watched event was published first, so had it been delivered it would come first.
    assert [await receive(witness)] == await published(db, watched_channel)
    assert [await receive(ws)] == await published(db, barrier_channel)


async def test_subscribing_again_restarts_from_since(
    client: Client, db: asyncpg.Connection
) -> None:
    seller = await sign_up(client)
    listing = await create_listing(client, seller)
    channel = f"listing:{listing['id']}"
    ws = await open_socket(client, seller)
    await subscribed(ws, channel)
    await set_price(client, seller, listing["id"], 1)
    await set_price(client, seller, listing["id"], 2)
    live = [await receive(ws), await receive(ws)]
    assert live == await published(db, channel)

    assert await subscribed(ws, channel, since=0) == live[-1]["offset"]
    assert [await receive(ws), await receive(ws)] == live
    await ping(ws)  # and nothing more


# -- resume ----------------------------------------------------------------------------------


async def test_resume_with_since_gets_exactly_the_missed_events_then_live_ones(
    client: Client, db: asyncpg.Connection
) -> None:
    seller = await sign_up(client)
    listing = await create_listing(client, seller)
    channel = f"listing:{listing['id']}"
    ws = await open_socket(client, seller)
    await subscribed(ws, channel)
    for price in (101, 102):
        await set_price(client, seller, listing["id"], price)
    received = [await receive(ws), await receive(ws)]
    await ws.close()
    last = received[-1]["offset"]

    for price in (103, 104, 105):
        await set_price(client, seller, listing["id"], price)
    log = await wait_published(db, channel, 5)
    assert log[:2] == received

    again = await open_socket(client, seller)
    assert await subscribed(again, channel, since=last) == log[-1]["offset"]
    missed = [await receive(again) for _ in range(3)]
    assert missed == log[2:]
    assert [frame["data"]["price"] for frame in missed] == [103, 104, 105]

    await set_price(client, seller, listing["id"], 106)
    live = await receive(again)
    assert [*missed, live] == (await published(db, channel))[2:]
    assert live["prev"] == log[-1]["offset"]
    await ping(again)  # no duplicate followed


async def test_a_replayed_event_is_the_same_frame_as_the_live_one(
    client: Client, db: asyncpg.Connection
) -> None:
    seller = await sign_up(client)
    listing = await create_listing(client, seller)
    channel = f"listing:{listing['id']}"
    ws = await open_socket(client, seller)
    await subscribed(ws, channel)
    live: list[str] = []
    for price in range(1, 9):
        await set_price(client, seller, listing["id"], price)
        message = await ws.receive(timeout=TIMEOUT)
        assert message.type is WSMsgType.TEXT
        live.append(message.data)

    other = await open_socket(client, seller)
    await subscribed(other, channel, since=0)
    replayed = []
    for _ in live:
        message = await other.receive(timeout=TIMEOUT)
        assert message.type is WSMsgType.TEXT
        replayed.append(message.data)
    assert replayed == live  # byte for byte: same ts (whole ms, truncated), same data

    # `ts` is the commit time truncated to the millisecond, however the frame is made.
    first = orjson.loads(live[0])
    await db.execute(
        "UPDATE outbox SET committed_at = '2025-12-01 12:00:00.000999+00' WHERE position = $1",
        first["offset"],
    )
    # With no subscriber left, the instance forgets the channel's recent events: the next
    # resume reads the log.
    await ws.close()
    await other.close()
    feeds = client.app[gateway_key].hub.feeds
    async with asyncio.timeout(TIMEOUT):
        while channel in feeds:  # noqa: ASYNC110 - the hub has no event for a dropped feed
            await asyncio.sleep(0.01)
    third = await open_socket(client, seller)
    await subscribed(third, channel, since=0)
    assert (await receive(third))["ts"] == epoch_ms(datetime(2025, 12, 1, 12, tzinfo=UTC))


async def test_since_ahead_of_every_event_needs_a_resync(client: Client) -> None:
    seller = await sign_up(client)
    listing = await create_listing(client, seller)
    channel = f"listing:{listing['id']}"
    ws = await open_socket(client, seller)
    answer = await subscribe(ws, channel, since=10**12)
    assert answer == error(
        "resync", "offset 1000000000000 is ahead of every published event", channel
    )
    await ping(ws)  # no `subscribed` for a subscription that did not happen
    assert await subscribed(ws, channel) == 0  # a fresh subscription works


async def test_since_older_than_the_retention_window_needs_a_resync(
    client: Client, db: asyncpg.Connection
) -> None:
    seller = await sign_up(client)
    listing = await create_listing(client, seller)
    channel = f"listing:{listing['id']}"
    for price in (1, 2, 3):
        await set_price(client, seller, listing["id"], price)
    log = await wait_published(db, channel, 3)
    # What the relay's pruning does to events older than the retention window.
    await db.execute("DELETE FROM outbox WHERE position = $1", log[0]["offset"])

    ws = await open_socket(client, seller)
    assert await subscribe(ws, channel, since=0) == error(
        "resync", "events after offset 0 are past the retention window", channel
    )
    await ping(ws)
    # From the oldest event still kept, resuming works.
    assert await subscribed(ws, channel, since=log[0]["offset"]) == log[-1]["offset"]
    assert [await receive(ws), await receive(ws)] == log[1:]


async def test_a_resume_longer_than_the_replay_limit_needs_a_resync(
    make_client: ClientFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    client = await make_client(settings.replace(ws_replay_limit=2))
    seller = await sign_up(client)
    listing = await create_listing(client, seller)
    channel = f"listing:{listing['id']}"
    for price in (1, 2, 3):
        await set_price(client, seller, listing["id"], price)
    log = await wait_published(db, channel, 3)
    ws = await open_socket(client, seller)
    assert await subscribe(ws, channel, since=0) == error(
        "resync", "more than 2 events after offset 0", channel
    )
    assert await subscribed(ws, channel, since=log[0]["offset"]) == log[-1]["offset"]
    assert [await receive(ws), await receive(ws)] == log[1:]


# -- bounds ----------------------------------------------------------------------------------


async def test_a_frame_over_64_kib_is_closed_with_1009(client: Client) -> None:
    account = await sign_up(client)
    ws = await open_socket(client, account)
    exactly = '{"op":"ping"}'.ljust(64 * 1024)  # JSON may end in whitespace
    await ws.send_str(exactly)
    assert await receive(ws) == PONG
    await ws.send_str(exactly + " ")
    code, _ = await closed_with(ws)
    assert code == 1009


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("not json", "frames are JSON objects"),
        ("[1, 2]", "frames are JSON objects"),
        ('"ping"', "frames are JSON objects"),
        ('{"op": "shout"}', "op must be one of {ops}"),
        ('{"channel": "listing:1"}', "op must be one of {ops}"),
        ('{"op": 5}', "op must be one of {ops}"),
        ('{"op": "subscribe", "channel": "listing:1", "since": "x"}', "since: "),
        ('{"op": "subscribe", "channel": "listing:1", "since": -1}', "since: "),
        ('{"op": "subscribe", "channel": "listing:1", "since": 1.5}', "since: "),
        ('{"op": "subscribe", "channel": "listing:1", "since": true}', "since: "),
        ('{"op": "subscribe", "channel": 42}', "channel: "),
        ('{"op": "subscribe"}', "channel: "),
        ('{"op": "ping", "extra": 1}', "extra: "),
    ],
)
async def test_a_malformed_frame_gets_bad_frame(client: Client, text: str, detail: str) -> None:
    account = await sign_up(client)
    ws = await open_socket(client, account)
    await ws.send_str(text)
    answer = await receive(ws)
    assert set(answer) == {"op", "code", "detail"}
    assert (answer["op"], answer["code"]) == ("error", "bad_frame")
    ops = ", ".join(sorted(client.app[gateway_key].ops))  # chat adds its ops
    assert {"ping", "subscribe", "unsubscribe"} <= set(ops.split(", "))
    assert answer["detail"].startswith(detail.format(ops=ops)), answer
    await ping(ws)  # one bad frame is answered, not punished


async def test_a_binary_frame_gets_bad_frame(client: Client) -> None:
    account = await sign_up(client)
    ws = await open_socket(client, account)
    await ws.send_bytes(b'{"op":"ping"}')
    assert await receive(ws) == error("bad_frame", "frames are JSON text frames")
    await ping(ws)


async def test_repeated_bad_frames_close_with_1008(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings.replace(ws_max_bad_frames=3))
    account = await sign_up(client)
    ws = await open_socket(client, account)
    await ws.send_str("nope")
    assert await receive(ws) == error("bad_frame", "frames are JSON objects")
    await ws.send_bytes(b"nope")
    assert await receive(ws) == error("bad_frame", "frames are JSON text frames")
    await send(ws, {"op": "ping"})  # good frames do not reset the count
    assert await receive(ws) == PONG
    await send(ws, {"op": "subscribe", "channel": "nope"})  # the third refusal
    assert await closed_with(ws) == (1008, "too many bad frames")


async def test_subscriptions_per_socket_are_bounded(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings.replace(ws_max_subscriptions=2))
    account = await sign_up(client)
    ws = await open_socket(client, account)
    await subscribed(ws, "listing:1")
    await subscribed(ws, "listing:2")
    assert await subscribe(ws, "listing:3") == error(
        "too_many_subscriptions", "at most 2 per socket", "listing:3"
    )
    await subscribed(ws, "listing:1")  # subscribing again is not one more
    await send(ws, {"op": "unsubscribe", "channel": "listing:2"})
    assert await receive(ws) == {"op": "unsubscribed", "channel": "listing:2"}
    await subscribed(ws, "listing:3")


async def test_frames_beyond_the_rate_are_refused(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings.replace(ws_frames_per_second=1, ws_max_bad_frames=100))
    account = await sign_up(client)
    ws = await connect(client, await new_ticket(client, account))
    sent = 10
    for _ in range(sent):  # all at once: a burst of two, then the bucket is empty
        await send(ws, {"op": "ping"})
    answers = [await receive(ws) for _ in range(sent)]
    limited = error("rate_limited", "too many frames; slow down")
    assert answers[:2] == [PONG, PONG]
    assert limited in answers[2:]
    # Refilling at one a second, a slow machine may let another ping through, never all.
    assert all(answer in (PONG, limited) for answer in answers)
    assert answers.count(PONG) < sent


async def test_sockets_beyond_the_instance_limit_are_closed_with_1013(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings.replace(ws_max_connections=1))
    account = await sign_up(client)
    first = await open_socket(client, account)
    second = await connect(client, await new_ticket(client, account))
    assert await closed_with(second) == (1013, "instance full; retry")
    await ping(first)
    await first.close()

    async def none_open() -> bool:
        return await metric(client, "jangteo_ws_connections") == 0

    await eventually(none_open, "the first socket is gone")
    await open_socket(client, account)  # room again


# -- sessions --------------------------------------------------------------------------------


async def test_logout_closes_that_sessions_sockets_only(client: Client) -> None:
    account = await sign_up(client)
    other_session = await log_in(client, account)
    first = await open_socket(client, account)
    second = await open_socket(client, account)
    other = await open_socket(client, other_session)

    response = await client.post(
        "/api/v1/auth/logout", json={"refresh_token": account.refresh_token}
    )
    assert response.status == 204
    assert await closed_with(first) == SESSION_ENDED
    assert await closed_with(second) == SESSION_ENDED
    await ping(other)  # the other session's socket stays open
    assert (await client.post(TICKET, headers=account.auth)).status == 401


async def test_refresh_token_reuse_closes_the_sessions_sockets(client: Client) -> None:
    account = await sign_up(client)
    other_session = await log_in(client, account)
    ws = await open_socket(client, account)
    other = await open_socket(client, other_session)
    body = {"refresh_token": account.refresh_token}
    assert (await client.post("/api/v1/auth/refresh", json=body)).status == 200
    await ping(ws)  # a rotation alone keeps the session
    assert (await client.post("/api/v1/auth/refresh", json=body)).status == 401  # reused
    assert await closed_with(ws) == SESSION_ENDED
    await ping(other)


async def test_a_ticket_from_before_logout_is_closed_with_4401(client: Client) -> None:
    """The ticket is still in Redis, so the upgrade happens; the session check closes it."""
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    response = await client.post(
        "/api/v1/auth/logout", json={"refresh_token": account.refresh_token}
    )
    assert response.status == 204
    ws = await connect(client, ticket)
    assert await closed_with(ws) == SESSION_ENDED


# -- health and shutdown ---------------------------------------------------------------------


async def test_readyz_reports_events_and_the_relay_partitions_led(client: Client) -> None:
    async def leading() -> bool:
        response = await client.get("/readyz")
        return response.status == 200 and (await response.json())["relay"]["leading"] == [0]

    await eventually(leading, "ready, and leading the one partition")
    response = await client.get("/readyz")
    assert await response.json() == {
        "status": "ok",
        "postgres": "ok",
        "redis": "ok",
        "events": "ok",
        "relay": {"partitions": 1, "leading": [0]},
    }


async def test_shutdown_closes_open_sockets_with_1001(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings)
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    # A session of its own: TestClient.close() closes its own sockets before the server.
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(client.make_url(f"{WS}?ticket={ticket}"))
        await ping(ws)
        closing = asyncio.create_task(client.close())
        try:
            assert await closed_with(ws) == (1001, "server shutting down")
        finally:
            await closing


async def _expire_session_soon(db: asyncpg.Connection, account: Account) -> datetime:
    """Make the account's session end a second from now; returns that moment."""
    ends: datetime = await db.fetchval(
        "UPDATE refresh_tokens SET expires_at = now() + interval '1 second' "
        "WHERE user_id = $1 RETURNING expires_at",
        account.user_id,
    )
    return ends


async def test_a_socket_is_closed_with_4401_when_its_session_expires(
    make_client: ClientFactory,
    settings: Settings,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gateway_module, "SESSION_SWEEP_S", 0.05)
    client = await make_client(settings)
    account = await sign_up(client)
    await _expire_session_soon(db, account)
    ws = await open_socket(client, account)
    assert await closed_with(ws) == SESSION_ENDED


async def test_a_session_refreshed_before_it_expires_keeps_its_socket(
    make_client: ClientFactory,
    settings: Settings,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gateway_module, "SESSION_SWEEP_S", 0.05)
    client = await make_client(settings)
    account = await sign_up(client)
    ends = await _expire_session_soon(db, account)
    ws = await open_socket(client, account)
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": account.refresh_token}
    )
    assert refreshed.status == 200  # a new token of the same session, valid for 30 days
    # Past the old end, and a few sweeps later (each saw the socket due and looked again).
    past_the_end = (ends - datetime.now(UTC)).total_seconds() + 0.3
    await asyncio.sleep(max(0.0, past_the_end) + 4 * gateway_module.SESSION_SWEEP_S)
    await ping(ws)
