"""The JavaScript client library (clients/js/jangteo.js) in headless Chromium, against real
server processes: delivery, resume after a crash, session end, resync, refusals, chat over
the socket, and the fall back to Server-Sent Events when WebSockets cannot get through."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser

from realtime.disconnect import CloseCode, rule_for
from realtime.sse_frames import comment, message
from tests.browser.js_client import (
    BLOCK_WEBSOCKETS,
    PageClient,
    assert_once_in_order,
    instances,
    kill,
)
from tests.browser.support import RECONNECT_TIMEOUT_MS, PageErrors, phone_page, restart_on
from tests.support import ServerProcess
from tests.system.realtime_support import User, create_listing, open_room, set_price, sign_up

AHEAD = 10**15  # a `since` past anything ever published: the server answers resync
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def server(browser_env: dict[str, str]) -> Iterator[ServerProcess]:
    with instances(browser_env, 1) as [one]:
        yield one


@pytest.fixture
def servers(browser_env: dict[str, str]) -> Iterator[list[ServerProcess]]:
    """The page's instance, which a test kills and restarts (appending the new one), and
    another that the test writes through meanwhile."""
    with instances(browser_env, 2) as pair:
        yield pair


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def seller_viewer_listing(
    http: aiohttp.ClientSession, server: ServerProcess
) -> tuple[User, User, int]:
    """A seller, a neighbour who watches, and the seller's listing (₩1,000)."""
    seller = await sign_up(http, server)
    viewer = await sign_up(http, server)
    return seller, viewer, await create_listing(http, server, seller)


async def crash_and_restart(
    client: PageClient,
    servers: list[ServerProcess],
    env: dict[str, str],
    set_price_elsewhere: Callable[[int], Awaitable[None]],
    prices_meanwhile: Sequence[int],
    transport: str | None = None,
) -> None:
    """SIGKILL the page's instance (no close frame: 1006, then backoff), change the price
    through the other meanwhile, start it again on its port and wait until the page is live."""
    page_server = servers[0]
    kill(page_server)
    await client.wait_state("reconnecting", timeout_ms=RECONNECT_TIMEOUT_MS)
    for price in prices_meanwhile:
        await set_price_elsewhere(price)
    servers.append(restart_on(page_server.port, env))
    await client.wait_state("live", transport, RECONNECT_TIMEOUT_MS)


async def test_events_arrive_once_in_order_and_refusals_reach_their_subscription(
    browser: Browser, server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    seller, viewer, listing_id = await seller_viewer_listing(http, server)
    errors = PageErrors()
    client = await PageClient.open(browser, server, errors, viewer.access_token)
    channel = f"listing:{listing_id}"
    await client.subscribe(channel)
    await client.subscribe(f"user:{seller.user_id}")
    await client.subscribe("listing:abc")
    subscribed = await client.ready(channel)
    assert isinstance(subscribed["offset"], int)
    forbidden = {"error": "SubscriptionError", "code": "forbidden"}
    assert await client.ready(f"user:{seller.user_id}") == forbidden
    bad_channel = {"error": "SubscriptionError", "code": "bad_channel"}
    assert await client.ready("listing:abc") == bad_channel
    told = (await client.seen())["errors"][f"user:{seller.user_id}"]
    assert [(error["code"], error["retrying"]) for error in told] == [("forbidden", False)]
    assert await client.client("client.channels") == [channel]

    prices = [900, 800, 700, 600, 500]
    for price in prices:
        await set_price(http, server, seller, listing_id, price)
    events = await client.events(channel, len(prices))
    assert_once_in_order(events, prices)
    assert events[0]["prev"] == subscribed["offset"]
    last_offset = await client.client(f"client.lastOffset('{channel}')")
    assert last_offset == events[-1]["offset"]
    counts = "[client.transport, client.connections, client.duplicates, client.gaps]"
    assert await client.client(counts) == ["websocket", 1, 0, 0]
    assert (await client.seen())["states"] == [
        {"state": "connecting", "transport": None},
        {"state": "connecting", "transport": "websocket"},
        {"state": "live", "transport": "websocket"},
    ]
    assert (await client.seen())["catchingUp"] == []  # nothing was resumed
    assert errors.uncaught == []


async def test_chat_is_sent_acknowledged_and_stored_once_over_the_websocket(
    browser: Browser, server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    seller = await sign_up(http, server)
    buyer = await sign_up(http, server)
    room = await open_room(http, server, buyer, await create_listing(http, server, seller))
    errors = PageErrors()
    client = await PageClient.open(browser, server, errors, buyer.access_token)
    channel = f"room:{room}"
    await client.subscribe(channel)
    assert "offset" in await client.ready(channel)

    client_id = "C76D2D62-A617-45D4-A633-1AEE222FE1BE"
    send = f"client.sendMessage({room}, 'still there?', {{ clientId: '{client_id}' }})"
    first = (await client.settle(send))["value"]
    assert first["body"] == "still there?"
    assert first["client_id"] == client_id.lower()
    assert first["sender_id"] == buyer.user_id
    again = (await client.settle(send))["value"]  # resent after a doubt: the same one
    assert again["id"] == first["id"]
    later = (await client.settle(f"client.sendMessage({room}, 'tonight?')"))["value"]
    events = await client.events(channel, 2)
    assert [event["type"] for event in events] == ["chat.message", "chat.message"]
    # The resend stored nothing new: the next message is the other one.
    assert [event["id"] for event in events] == [first["id"], later["id"]]

    assert await client.client(f"client.typing({room})") is True
    assert await client.settle("client.ping()") == {"value": None}
    # Bad input is refused before anything is sent; a refusal names its code.
    refused = {"error": "RangeError", "code": None}
    assert await client.settle(f"client.sendMessage({room}, '')") == refused
    assert await client.settle("client.sendMessage('7', 'hi')") == refused
    not_found = {"error": "SendError", "code": "not_found"}
    assert await client.settle("client.sendMessage(999999, 'hi')") == not_found
    assert errors.uncaught == []


async def test_a_killed_instance_is_survived_and_every_event_arrives_once_in_order(
    browser: Browser,
    browser_env: dict[str, str],
    servers: list[ServerProcess],
    http: aiohttp.ClientSession,
) -> None:
    page_server, other = servers
    seller, viewer, listing_id = await seller_viewer_listing(http, other)
    errors = PageErrors()
    client = await PageClient.open(browser, page_server, errors, viewer.access_token)
    channel = f"listing:{listing_id}"
    await client.subscribe(channel)
    await client.ready(channel)
    await set_price(http, other, seller, listing_id, 900)
    await client.events(channel, 1)

    change = functools.partial(set_price, http, other, seller, listing_id)
    await crash_and_restart(client, servers, browser_env, change, [800, 700])
    await set_price(http, other, seller, listing_id, 600)

    events = await client.events(channel, 4, RECONNECT_TIMEOUT_MS)
    assert_once_in_order(events, [900, 800, 700, 600])
    counts = "[client.transport, client.connections, client.gaps]"
    assert await client.client(counts) == ["websocket", 2, 0]
    # Behind while the resume replayed 800 and 700, caught up at the `subscribed` offset.
    assert (await client.seen())["catchingUp"] == [True, False]
    assert errors.uncaught == []


async def test_logout_closes_with_4401_and_the_client_stops_for_good(
    browser: Browser, server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    user = await sign_up(http, server)
    errors = PageErrors()
    # A short backoff: were it to reconnect, it would ask for tickets many times below.
    client = await PageClient.open(browser, server, errors, user.access_token, backoffBase=20)
    channel = f"user:{user.user_id}"
    await client.subscribe(channel)
    await client.ready(channel)

    logout = await http.post(
        f"{server.url}/api/v1/auth/logout", json={"refresh_token": user.refresh_token}
    )
    assert logout.status == 204
    await client.wait_state("closed")
    closed = (await client.seen())["closed"]
    assert (closed["kind"], closed["code"]) == ("sessionEnded", 4401)
    await client.page.wait_for_timeout(1000)  # fifty times the longest first backoff
    assert (await client.seen())["tickets"] == 1
    assert await client.client("client.state") == "closed"
    assert errors.uncaught == []


async def test_resync_is_surfaced_once_the_channel_is_subscribed_again(
    browser: Browser, server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    seller = await sign_up(http, server)
    listing_id = await create_listing(http, server, seller)
    errors = PageErrors()
    client = await PageClient.open(browser, server, errors, seller.access_token)
    channel = f"listing:{listing_id}"
    await client.subscribe(channel, since=AHEAD)
    await client.wait_for("seen.resyncs.length === 1")
    subscribed = await client.ready(channel)
    assert (await client.seen())["resyncs"] == [subscribed | {"channel": channel}]

    await set_price(http, server, seller, listing_id, 900)
    events = await client.events(channel, 1)
    assert_once_in_order(events, [900])
    assert events[0]["prev"] == subscribed["offset"]
    assert errors.uncaught == []


async def test_refusals_stop_or_wait_as_the_protocol_says(
    browser: Browser, server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    user = await sign_up(http, server)

    async def closed_after(tickets: int, **start: Any) -> dict[str, Any]:
        client = await PageClient.open(browser, server, PageErrors(), **start)
        await client.subscribe(f"user:{user.user_id}")
        await client.wait_state("closed")
        seen = await client.seen()
        assert seen["tickets"] == tickets
        return {"kind": seen["closed"]["kind"], "code": seen["closed"]["code"]}

    # A bad ticket: the socket is upgraded, then closed with 1008. The stream answers 401,
    # which a ticket that expired before its use would get too: one more try, then a stop.
    bad = await closed_after(1, ticket="not-a-ticket", transport="websocket")
    assert bad == {"kind": "fatal", "code": CloseCode.POLICY}
    signed_out = {"kind": "sessionEnded", "code": 401}
    assert await closed_after(2, ticket="not-a-ticket", transport="sse") == signed_out
    # The ticket request refused: 401 is a session gone, 403 is final.
    assert await closed_after(1, refusals=[{"status": 401}]) == signed_out
    assert await closed_after(1, refusals=[{"status": 403}]) == {"kind": "fatal", "code": 403}

    # 503 with Retry-After: the wait is what the server asked (the backoff is shorter), then
    # it connects.
    refused_once = [{"status": 503, "retryAfter": "2"}]
    client = await PageClient.open(
        browser, server, PageErrors(), user.access_token, refusals=refused_once, backoffBase=1
    )
    await client.wait_state("live")
    seen = await client.seen()
    assert seen["backoffs"] == [2000]
    assert seen["tickets"] == 2


async def test_blocked_websockets_fall_back_to_sse_and_resume_across_a_reconnect(
    browser: Browser,
    browser_env: dict[str, str],
    servers: list[ServerProcess],
    http: aiohttp.ClientSession,
) -> None:
    page_server, other = servers
    seller, viewer, listing_id = await seller_viewer_listing(http, other)
    resynced_id = await create_listing(http, other, seller)
    errors = PageErrors()
    page = await phone_page(browser, page_server.url, errors)
    await page.add_init_script(BLOCK_WEBSOCKETS)
    # Every reconnect (not a reopen for new channels) tries the WebSocket once more.
    client = await PageClient(page).start(viewer.access_token, websocketRetryMs=0)
    channel = f"listing:{listing_id}"
    await client.subscribe(channel)
    await client.wait_state("live", "sse")
    await client.ready(channel)
    assert await page.evaluate("window.blockedWebSockets") == 2
    for price in (900, 800):
        await set_price(http, other, seller, listing_id, price)
    await client.events(channel, 2)

    # A channel added on SSE reopens the stream, resuming the others from the cursor;
    # one resumed from too far ahead is resynced there too.
    await client.subscribe("feed:seoul-mapo")
    await client.subscribe(f"listing:{resynced_id}", since=AHEAD)
    await client.ready("feed:seoul-mapo")
    await client.wait_for("seen.resyncs.length === 1")
    assert (await client.seen())["resyncs"][0]["channel"] == f"listing:{resynced_id}"
    await set_price(http, other, seller, listing_id, 700)
    await client.events(channel, 3)

    change = functools.partial(set_price, http, other, seller, listing_id)
    await crash_and_restart(client, servers, browser_env, change, [600, 500], "sse")
    await set_price(http, other, seller, listing_id, 400)
    await set_price(http, other, seller, resynced_id, 300)

    events = await client.events(channel, 6, RECONNECT_TIMEOUT_MS)
    assert_once_in_order(events, [900, 800, 700, 600, 500, 400])
    resynced = await client.events(f"listing:{resynced_id}", 1)
    assert_once_in_order(resynced, [300])
    assert await client.client("[client.transport, client.gaps]") == ["sse", 0]
    # One more WebSocket at the reconnect, once the instance answered again; then SSE.
    assert await page.evaluate("window.blockedWebSockets") == 3
    # Sending needs the WebSocket: on SSE it is refused, saying so.
    refused = {"error": "TransportError", "code": None}
    assert await client.settle("client.sendMessage(1, 'hi')") == refused
    assert errors.uncaught == []


async def test_the_pure_rules_agree_with_the_server(
    browser: Browser, server: ServerProcess
) -> None:
    page = await phone_page(browser, server.url, PageErrors())
    await page.goto("/")
    library = "const lib = await import('/clients/js/jangteo.js');"

    codes = [1000, 1001, 1006, 1008, 1009, 1011, 1013, 4000, 4401]
    rules = await page.evaluate(
        f"async (codes) => {{ {library} return codes.map((code) => lib.closeRule(code)); }}",
        codes,
    )
    for code, rule in zip(codes, rules, strict=True):
        assert (rule["action"] != "stop") == rule_for(code).reconnect, code
        assert (rule["action"] == "reconnect-now") == (code == CloseCode.GOING_AWAY)
        assert rule["sessionEnded"] == (code == CloseCode.SESSION_ENDED)

    statuses = [400, 401, 403, 404, 408, 429, 500, 503]
    actions = await page.evaluate(
        f"""async (statuses) => {{
            {library}
            return statuses.map((s) => [lib.statusRule(s, 'ticket').action,
                                        lib.statusRule(s, 'sse').sessionEnded]);
        }}""",
        statuses,
    )
    stop, backoff = ["stop", False], ["backoff", False]
    assert actions == [stop, ["stop", True], stop, stop, backoff, backoff, backoff, backoff]

    # The cursor and the URL, as the endpoint parses them; Retry-After in ms.
    pure = await page.evaluate(
        f"""async () => {{
            {library}
            const offsets = new Map([['listing:42', 1300], ['user:7', 0]]);
            const channels = ['listing:42', 'feed:seoul', 'user:7'];
            return [lib.sseCursor(channels, offsets),
                    lib.sseUrl('http://x', 'a+b/c', channels, offsets),
                    lib.sseUrl('http://x', 't', ['feed:seoul'], new Map()),
                    lib.parseRetryAfter('7'), lib.parseRetryAfter('soon'),
                    lib.parseRetryAfter('1.5'), lib.parseRetryAfter(null)];
        }}"""
    )
    assert pure == [
        "1300,,0",
        "http://x/api/v1/sse?ticket=a%2Bb%2Fc&channel=listing%3A42&channel=feed%3Aseoul"
        "&channel=user%3A7&since=1300%2C%2C0",
        "http://x/api/v1/sse?ticket=t&channel=feed%3Aseoul",
        7000,
        None,
        None,
        None,
    ]

    # What the server writes, cut in two at every character, reads back the same.
    frame = '{"op":"event","channel":"listing:42","offset":1301,"data":{"t":"장"}}'.encode()
    close = b'{"op":"close","code":1001,"reason":"bye"}'
    stream = (
        comment(b"jangteo event stream") + message(frame, b"1301,,0") + comment() + message(close)
    ).replace(b"\n", b"\r\n")
    parsed = await page.evaluate(
        f"""async (bytes) => {{
            {library}
            const text = new TextDecoder().decode(new Uint8Array(bytes));
            const results = new Set();
            for (let cut = 0; cut <= text.length; cut += 1) {{
                const got = [];
                const parser = lib.createSseParser((m) => got.push(m));
                parser.push(text.slice(0, cut));
                parser.push(text.slice(cut));
                results.add(JSON.stringify(got));
            }}
            return [...results];
        }}""",
        list(stream),
    )
    assert len(parsed) == 1, parsed
    assert json.loads(parsed[0]) == [
        {"data": frame.decode(), "id": "1301,,0", "event": "message"},
        {"data": close.decode(), "id": "1301,,0", "event": "message"},  # the id stays
    ]
