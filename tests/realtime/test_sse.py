"""The event stream (Server-Sent Events) end to end: the real app in-process, real PostgreSQL,
Redis and relay, read over real sockets by aiohttp's client and by hand.

Every message is checked as it is read (tests/realtime/sse_support.py): its fields, its JSON,
and its id against the cursor the messages before it make. Every wait is on a condition;
timeouts only turn a hang into a failure, and no test asserts how long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest

from realtime import gateway as gateway_module
from realtime import sse as sse_module
from realtime.channels import Caller
from realtime.client import Event, RealtimeClient
from realtime.keys import gateway_key
from realtime.sse import EventStream
from realtime.sse_frames import StreamDecoder, StreamMessage
from server.errors import PROBLEM_CONTENT_TYPE
from server.settings import Settings
from tests.conftest import ClientFactory
from tests.realtime.sse_support import JsonObject, Stream, insert_big_events, started
from tests.realtime.test_chat_socket import new_room
from tests.realtime.test_gateway import (
    TIMEOUT,
    _expire_session_soon,
    closed_with,
    connect,
    eventually,
    log_in,
    metric,
    new_ticket,
    open_socket,
    published,
    until_expired,
    wait_published,
)
from tests.support import Account, Client, sign_up

SSE = "/api/v1/sse"
BAD_TICKET = "invalid, expired or used ticket"
NOT_OFFSETS = "cursor fields are offsets (0 to {max}) or empty"


# -- helpers ---------------------------------------------------------------------------------


def stream_url(ticket: str | None, channels: Sequence[str], since: str | None = None) -> str:
    query = [] if ticket is None else [("ticket", ticket)]
    query += [("channel", channel) for channel in channels]
    if since is not None:
        query.append(("since", since))
    return f"{SSE}?{urlencode(query)}"


async def open_stream(
    client: Client,
    account: Account,
    channels: Sequence[str],
    since: str | None = None,
    headers: dict[str, str] | None = None,
) -> Stream:
    """A started stream; ``since`` (or a Last-Event-ID in ``headers``) is what it resumes."""
    ticket = await new_ticket(client, account)
    response = await client.get(stream_url(ticket, channels, since), headers=headers or {})
    return await started(response, channels, (headers or {}).get("Last-Event-ID", since))


async def first_frames(stream: Stream, count: int) -> dict[str, JsonObject]:
    """The next ``count`` messages, by channel (channels are joined side by side, so their
    first messages come in any order)."""
    frames = [await stream.next_frame() for _ in range(count)]
    by_channel = {frame.json["channel"]: frame.json for frame in frames}
    assert len(by_channel) == count, frames
    return by_channel


def subscribed(channel: str, offset: int) -> JsonObject:
    return {"op": "subscribed", "channel": channel, "offset": offset}


async def refusal(
    client: Client, url: str, headers: dict[str, str] | None = None
) -> tuple[int, JsonObject, aiohttp.ClientResponse]:
    response = await client.get(url, headers=headers or {})
    assert response.headers["Content-Type"] == PROBLEM_CONTENT_TYPE, response.headers
    body: JsonObject = await response.json(content_type=PROBLEM_CONTENT_TYPE)
    assert body["status"] == response.status
    assert body["instance"] == SSE
    return response.status, body, response


def nothing_subscribed(client: Client, *channels: str) -> None:
    gateway = client.app[gateway_key]
    assert gateway.streams == set()
    assert not set(channels) & set(gateway.hub.feeds), gateway.hub.feeds


async def insert_events(db: asyncpg.Connection, channels: Sequence[str], count: int) -> None:
    """``count`` events committed at once, spread over ``channels`` in turn."""
    await db.execute(
        "INSERT INTO outbox (channel, type, data)"
        " SELECT ($1::text[])[1 + n % cardinality($1::text[])], 'test.tick',"
        " jsonb_build_object('n', n) FROM generate_series(0, $2::int - 1) AS n",
        list(channels),
        count,
    )


def only_stream(client: Client) -> EventStream:
    (stream,) = client.app[gateway_key].streams
    return stream


# -- refusals before the stream starts ------------------------------------------------------


async def test_no_unknown_or_used_ticket_is_401(client: Client) -> None:
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    first = await open_stream(client, account, ["listing:1"])  # another ticket
    await first.next_frame()
    cases = [stream_url(None, ["listing:2"]), stream_url("unknown", ["listing:2"])]
    cases.append(stream_url("", ["listing:2"]))
    cases.append(stream_url("a" * 101, ["listing:2"]))
    used = await client.get(stream_url(ticket, ["listing:3"]))
    await started(used, ["listing:3"])
    cases.append(stream_url(ticket, ["listing:2"]))
    for url in cases:
        status, body, response = await refusal(client, url)
        assert status == 401, url
        assert body["detail"] == BAD_TICKET
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="jangteo"'
    assert "listing:2" not in client.app[gateway_key].hub.feeds
    assert len(client.app[gateway_key].streams) == 2


async def test_an_expired_ticket_is_401(
    make_client: ClientFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    client = await make_client(settings.replace(ws_ticket_ttl=1))
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    await until_expired(client, ticket)
    status, body, _ = await refusal(client, stream_url(ticket, ["listing:1"]))
    assert (status, body["detail"]) == (401, BAD_TICKET)
    nothing_subscribed(client, "listing:1")


@pytest.mark.parametrize(
    ("channels", "since", "last_event_id", "detail"),
    [
        ([], None, None, "give at least one channel: ?channel=listing:42&channel=feed:seoul"),
        (["listing:1", "listing:2", "listing:3"], None, None, "at most 2 channels per stream"),
        (["listing:1", "listing:1"], None, None, "each channel may be given once"),
        (["listing:1"], "x", None, "since: " + NOT_OFFSETS),
        (["listing:1"], "-1", None, "since: " + NOT_OFFSETS),
        (["listing:1"], "1.5", None, "since: " + NOT_OFFSETS),
        (["listing:1"], " 1", None, "since: " + NOT_OFFSETS),
        (["listing:1"], str(2**63), None, "since: " + NOT_OFFSETS),
        (["listing:1"], "1,2", None, "since: 2 fields for 1 channels; {rule}"),
        (["listing:1", "listing:2"], "5", None, "since: 1 fields for 2 channels; {rule}"),
        (["listing:1", "listing:2"], None, ",,", "Last-Event-ID: 3 fields for 2 channels; {rule}"),
        (
            ["listing:1"],
            None,
            "7;",
            "Last-Event-ID: " + NOT_OFFSETS,
        ),
        # A bad since is refused even when a good Last-Event-ID would win over it.
        (["listing:1"], "x", "7", "since: " + NOT_OFFSETS),
    ],
)
async def test_a_malformed_request_is_400_and_subscribes_nothing(
    make_client: ClientFactory,
    settings: Settings,
    channels: list[str],
    since: str | None,
    last_event_id: str | None,
    detail: str,
) -> None:
    client = await make_client(settings.replace(ws_max_subscriptions=2))
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    status, body, _ = await refusal(client, stream_url(ticket, channels, since), headers)
    rule = "a cursor has one field per channel, in the order of the channels"
    assert (status, body["detail"]) == (400, detail.format(max=2**63 - 1, rule=rule))
    assert body["title"] == "Bad request"
    nothing_subscribed(client, *channels)


@pytest.mark.parametrize(
    ("extra", "detail"),
    [
        ("&sinse=5", "unknown parameter sinse; they are ticket, channel, since"),
        ("&since=1&since=2", "give since once"),
        ("&ticket=another", "give ticket once"),
    ],
)
async def test_an_unknown_or_repeated_parameter_is_400(
    client: Client, extra: str, detail: str
) -> None:
    account = await sign_up(client)
    url = stream_url(await new_ticket(client, account), ["listing:1"]) + extra
    status, body, _ = await refusal(client, url)
    assert (status, body["detail"]) == (400, detail)
    nothing_subscribed(client, "listing:1")


async def test_a_refused_origin_is_403_and_leaves_the_ticket_unused(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings.replace(allowed_origins=("https://app.example",)))
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    url = stream_url(ticket, ["listing:1"])
    for origin in ("https://evil.example", f"http://{client.host}:{client.port}", "null"):
        status, body, _ = await refusal(client, url, {"Origin": origin})
        assert (status, body["detail"]) == (403, "this Origin may not open event streams here")
        nothing_subscribed(client, "listing:1")
    allowed = await client.get(url, headers={"Origin": "https://app.example"})
    stream = await started(allowed, ["listing:1"])
    assert (await stream.next_frame()).json == subscribed("listing:1", 0)


async def test_a_full_instance_is_503_and_sockets_and_streams_count_together(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings.replace(ws_max_connections=1))
    account = await sign_up(client)
    ws = await open_socket(client, account)
    status, body, response = await refusal(
        client, stream_url(await new_ticket(client, account), ["listing:1"])
    )
    assert (status, body["detail"]) == (503, "instance full; retry")
    assert response.headers["Retry-After"] == "1"
    nothing_subscribed(client, "listing:1")
    await ws.close()

    async def no_socket() -> bool:
        return not client.app[gateway_key].connections

    await eventually(no_socket, "the socket is gone")
    stream = await open_stream(client, account, ["listing:1"])
    await stream.next_frame()
    assert await metric(client, "jangteo_sse_streams") == 1
    second = await connect(client, await new_ticket(client, account))
    assert await closed_with(second) == (1013, "instance full; retry")


async def test_shutting_down_or_starting_is_503(client: Client) -> None:
    gateway = client.app[gateway_key]
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    gateway.following_sessions.clear()
    status, body, response = await refusal(client, stream_url(ticket, ["listing:1"]))
    assert (status, body["detail"]) == (503, "starting; try again")
    assert response.headers["Retry-After"] == "1"
    gateway.following_sessions.set()
    gateway.shutting_down = True
    status, body, response = await refusal(client, stream_url(ticket, ["listing:1"]))
    assert (status, body["detail"]) == (503, "shutting down; connect to another instance")
    assert response.headers["Retry-After"] == "1"
    nothing_subscribed(client, "listing:1")
    gateway.shutting_down = False
    stream = await started(await client.get(stream_url(ticket, ["listing:1"])), ["listing:1"])
    await stream.next_frame()  # neither refusal used the ticket up


async def test_a_ticket_from_before_logout_is_401(client: Client) -> None:
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    response = await client.post(
        "/api/v1/auth/logout", json={"refresh_token": account.refresh_token}
    )
    assert response.status == 204
    status, body, _ = await refusal(client, stream_url(ticket, ["listing:1"]))
    assert (status, body["detail"]) == (401, "session ended")
    nothing_subscribed(client, "listing:1")


# -- the stream ------------------------------------------------------------------------------


async def test_events_arrive_with_the_cursor_as_their_id(
    client: Client, db: asyncpg.Connection
) -> None:
    account = await sign_up(client)
    one = await open_stream(client, account, ["feed:sse-one"])
    two = await open_stream(client, account, ["feed:sse-two", "feed:sse-one"])
    assert (await one.next_frame()).id == "0"
    assert set(await first_frames(two, 2)) == {"feed:sse-one", "feed:sse-two"}
    assert two.last_id in ("0,0",)

    await insert_events(db, ["feed:sse-one", "feed:sse-two"], 4)
    log_one = await wait_published(db, "feed:sse-one", 2)
    log_two = await wait_published(db, "feed:sse-two", 2)
    assert await one.wait_events("feed:sse-one", 2) == log_one
    assert [frame.id for frame in one.frames[1:]] == [str(e["offset"]) for e in log_one]
    assert await two.wait_events("feed:sse-one", 2) == log_one
    assert await two.wait_events("feed:sse-two", 2) == log_two
    assert two.last_id == f"{log_two[-1]['offset']},{log_one[-1]['offset']}"
    assert await metric(client, "jangteo_sse_streams") == 2


async def test_a_refused_channel_gets_an_error_and_the_others_carry_on(
    client: Client, db: asyncpg.Connection
) -> None:
    account = await sign_up(client)
    other = await sign_up(client)
    channels = [f"user:{other.user_id}", "listing:abc", "feed:sse-carry-on"]
    stream = await open_stream(client, account, channels, since="7,3,0")
    frames = await first_frames(stream, 3)
    assert frames[channels[0]] == {
        "op": "error",
        "code": "forbidden",
        "detail": "only its user may subscribe to a user channel",
        "channel": channels[0],
    }
    assert frames[channels[1]] == {
        "op": "error",
        "code": "bad_channel",
        "detail": "listing channels are listing:<id>",
        "channel": channels[1],
    }
    assert frames[channels[2]] == subscribed(channels[2], 0)
    assert stream.last_id == ",,0"
    await insert_events(db, [channels[2]], 1)
    assert await stream.wait_events(channels[2], 1) == await published(db, channels[2])
    assert stream.last_id == f",,{stream.offsets(channels[2])[0]}"
    assert set(client.app[gateway_key].hub.feeds) >= {channels[2]}
    assert not set(channels[:2]) & set(client.app[gateway_key].hub.feeds)


@pytest.mark.parametrize("how", ["since", "last-event-id"])
async def test_a_resume_after_a_burst_is_gap_free_and_duplicate_free(
    client: Client, db: asyncpg.Connection, how: str
) -> None:
    account = await sign_up(client)
    channels = ["feed:sse-burst-a", "feed:sse-burst-b"]
    first = await open_stream(client, account, channels)
    await first_frames(first, 2)
    await insert_events(db, channels, 10)
    for channel in channels:
        await first.wait_events(channel, 5)
    cursor = first.last_id
    assert cursor is not None
    first.response.close()

    await insert_events(db, channels, 300)  # the burst, while no stream is open
    if how == "since":
        resumed = await open_stream(client, account, channels, since=cursor)
    else:  # the header wins over a since that would replay everything again
        resumed = await open_stream(
            client, account, channels, since="0,0", headers={"Last-Event-ID": cursor}
        )
    for channel in channels:
        await resumed.wait_events(channel, 150)
    await insert_events(db, channels, 2)  # live ones after the replay
    for channel in channels:
        expected = await wait_published(db, channel, 156)
        got = await resumed.wait_events(channel, 151)
        assert first.events[channel] + got == expected, channel
    subscribes = [frame for frame in resumed.frames if frame.op == "subscribed"]
    assert {frame.json["channel"] for frame in subscribes} == set(channels)


async def test_a_cursor_out_of_reach_gets_resync_and_an_empty_field(
    client: Client, db: asyncpg.Connection
) -> None:
    account = await sign_up(client)
    pruned, kept = "feed:sse-pruned", "feed:sse-kept"
    await insert_events(db, [pruned], 3)
    log = await wait_published(db, pruned, 3)
    # What the relay's pruning does to events older than the retention window.
    await db.execute("DELETE FROM outbox WHERE position = $1", log[0]["offset"])

    stream = await open_stream(client, account, [pruned, kept], since="0,")
    frames = await first_frames(stream, 2)
    assert frames[pruned] == {
        "op": "error",
        "code": "resync",
        "detail": "events after offset 0 are past the retention window",
        "channel": pruned,
    }
    assert frames[kept] == subscribed(kept, 0)
    assert stream.last_id == ",0"
    assert pruned not in client.app[gateway_key].hub.feeds
    await insert_events(db, [pruned, kept], 2)
    assert await stream.wait_events(kept, 1) == await published(db, kept)
    assert pruned not in stream.events

    ahead = await open_stream(client, account, [kept], since=str(10**12))
    assert (await ahead.next_frame()).json == {
        "op": "error",
        "code": "resync",
        "detail": "offset 1000000000000 is ahead of every published event",
        "channel": kept,
    }
    assert ahead.last_id == ""


async def test_a_channel_the_hub_drops_gets_resync_and_an_empty_field(
    client: Client, db: asyncpg.Connection
) -> None:
    account = await sign_up(client)
    channels = ["feed:sse-dropped", "feed:sse-stays"]
    stream = await open_stream(client, account, channels)
    await first_frames(stream, 2)
    assert stream.last_id == "0,0"
    held = only_stream(client)
    # What the hub does when a channel's events cannot be chained: drop, then tell.
    client.app[gateway_key].hub.leave(channels[0], held)
    held.resync(channels[0])
    frame = await stream.next_frame()
    assert frame.json == {
        "op": "error",
        "code": "resync",
        "detail": "events were lost; reload and subscribe again",
        "channel": channels[0],
    }
    assert frame.id == ",0"
    await insert_events(db, channels, 2)
    assert await stream.wait_events(channels[1], 1) == await published(db, channels[1])
    assert channels[0] not in stream.events


async def test_a_room_stream_gets_presence_without_an_id(client: Client) -> None:
    room = await new_room(client)
    stream = await open_stream(client, room.buyer, [room.channel])
    assert (await stream.next_frame()).json == subscribed(room.channel, 0)
    presence = await stream.next_frame()
    assert presence.id is None
    assert presence.json == {
        "op": "presence",
        "channel": room.channel,
        "online": [room.buyer.user_id],
        "typing": [],
    }
    seller = await open_socket(client, room.seller)
    await seller.send_json({"op": "subscribe", "channel": room.channel})
    both = sorted([room.buyer.user_id, room.seller.user_id])
    async with asyncio.timeout(TIMEOUT):
        while (await stream.next_frame()).json.get("online") != both:
            pass
    stream.response.close()

    async def left() -> bool:
        frame: JsonObject = await seller.receive_json(timeout=TIMEOUT)
        return frame.get("op") == "presence" and frame["online"] == [room.seller.user_id]

    await _stream_gone_after_heartbeats(client)
    await eventually(left, "the buyer's stream left the room's presence")


async def _stream_gone_after_heartbeats(client: Client) -> None:
    gateway = client.app[gateway_key]

    async def gone() -> bool:
        for stream in list(gateway.streams):
            stream.beat()  # what the sweep does every JANGTEO_SSE_HEARTBEAT
        return not gateway.streams

    await eventually(gone, "the stream whose peer went away ended")


# -- heartbeats and a peer that goes away ----------------------------------------------------


async def test_heartbeats_come_while_nothing_happens_and_find_a_peer_gone(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings.replace(sse_heartbeat=0.05))
    account = await sign_up(client)
    stream = await open_stream(client, account, ["listing:1"])
    assert (await stream.next_frame()).json == subscribed("listing:1", 0)
    for _ in range(3):
        await stream.next_comment()
    stream.response.close()

    async def gone() -> bool:
        return await metric(client, "jangteo_sse_streams") == 0

    await eventually(gone, "the heartbeat found the peer gone and ended the stream")
    assert not client.app[gateway_key].streams
    assert "listing:1" not in client.app[gateway_key].hub.feeds
    assert await metric(client, "jangteo_sse_closes_total", '{reason="shutdown"}') == 0


# -- ending ----------------------------------------------------------------------------------


async def test_logout_ends_that_sessions_streams_with_4401_only(
    client: Client, db: asyncpg.Connection
) -> None:
    account = await sign_up(client)
    other_session = await log_in(client, account)
    doomed = await open_stream(client, account, ["feed:sse-logout"])
    socket = await open_socket(client, account)
    kept = await open_stream(client, other_session, ["feed:sse-logout"])
    await doomed.next_frame()
    await kept.next_frame()

    response = await client.post(
        "/api/v1/auth/logout", json={"refresh_token": account.refresh_token}
    )
    assert response.status == 204
    assert await doomed.end() == {"op": "close", "code": 4401, "reason": "session ended"}
    assert await closed_with(socket) == (4401, "session ended")
    await insert_events(db, ["feed:sse-logout"], 1)
    assert await kept.wait_events("feed:sse-logout", 1) == await published(db, "feed:sse-logout")
    assert await metric(client, "jangteo_sse_closes_total", '{reason="session"}') == 1
    assert len(client.app[gateway_key].streams) == 1


async def test_a_stream_ends_with_4401_when_its_session_expires(
    make_client: ClientFactory,
    settings: Settings,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gateway_module, "SESSION_SWEEP_S", 0.05)
    client = await make_client(settings)
    account = await sign_up(client)
    await _expire_session_soon(db, account)
    stream = await open_stream(client, account, ["listing:1"])
    assert await stream.end() == {"op": "close", "code": 4401, "reason": "session ended"}


async def test_shutdown_ends_open_streams_with_1001(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings)
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    # A session of its own: TestClient.close() closes its own connections before the server.
    async with aiohttp.ClientSession() as session:
        response = await session.get(client.make_url(stream_url(ticket, ["listing:1"])))
        stream = await started(response, ["listing:1"])
        await stream.next_frame()
        closing = asyncio.create_task(client.close())
        try:
            assert await stream.end() == {
                "op": "close",
                "code": 1001,
                "reason": "server shutting down",
            }
        finally:
            await closing


SEND_QUEUE = 4


async def test_a_stream_that_stops_reading_is_ended_with_1013_and_resumes_from_its_cursor(
    make_client: ClientFactory,
    settings: Settings,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The end waits behind what the slow reader has not read; give it time to read.
    monkeypatch.setattr(sse_module, "CLOSE_TIMEOUT_S", 60.0)
    client = await make_client(settings.replace(ws_send_queue=SEND_QUEUE))
    account = await sign_up(client)
    channel = "listing:1"
    slow = await open_stream(client, account, [channel])
    reader = await open_stream(client, account, [channel])
    await slow.next_frame()
    await reader.next_frame()
    transport = slow.pause_reading()

    sent = 0
    while await metric(client, "jangteo_sse_closes_total", '{reason="slow"}') < 1:
        sent += await insert_big_events(db, channel, sent)
        await reader.wait_events(channel, sent)  # the other reader keeps up
        assert sent < 4000, "the slow stream was never ended"
    expected = await wait_published(db, channel, sent)
    assert await reader.wait_events(channel, sent) == expected

    transport.resume_reading()
    assert await slow.end(timeout=3 * TIMEOUT) == {
        "op": "close",
        "code": 1013,
        "reason": "too slow; resume with since",
    }
    got = slow.events.get(channel, [])
    assert 0 < len(got) < len(expected)
    assert got == expected[: len(got)]  # a gapless prefix, so its cursor resumes it
    assert slow.last_id == str(got[-1]["offset"])
    resumed = await open_stream(client, account, [channel], since=slow.last_id)
    assert got + await resumed.wait_events(channel, len(expected) - len(got)) == expected


async def test_an_unexpected_error_ends_the_stream_with_1011_and_a_failed_lookup_with_1013(
    client: Client,
) -> None:
    gateway = client.app[gateway_key]

    async def explode(caller: Caller, key: str) -> None:
        raise RuntimeError("a bug in a channel rule")

    async def unreachable(caller: Caller, key: str) -> None:
        raise OSError("PostgreSQL is not there")

    gateway.rules.add("explode", explode)
    gateway.rules.add("unreachable", unreachable)
    account = await sign_up(client)
    broken = await open_stream(client, account, ["explode:1"])
    assert await broken.end() == {"op": "close", "code": 1011, "reason": "internal error"}
    unavailable = await open_stream(client, account, ["unreachable:1"])
    assert await unavailable.end() == {"op": "close", "code": 1013, "reason": "try again"}
    bystander = await open_stream(client, account, ["listing:1"])
    assert (await bystander.next_frame()).json == subscribed("listing:1", 0)


# -- the bytes -------------------------------------------------------------------------------


async def _read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 chunk, read strictly (RFC 9112 section 7.1): hex size, CRLF, data, CRLF."""
    size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)
    assert size_line[:-2] and all(c in b"0123456789abcdef" for c in size_line[:-2]), size_line
    size = int(size_line[:-2], 16)
    body = await asyncio.wait_for(reader.readexactly(size + 2), TIMEOUT)
    assert body[-2:] == b"\r\n", body
    return body[:-2]


async def test_each_message_is_one_well_formed_chunk_under_http_1_1(
    client: Client, db: asyncpg.Connection
) -> None:
    account = await sign_up(client)
    channel = "feed:sse-raw"
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        ticket = await new_ticket(client, account)
        request = f"GET {stream_url(ticket, [channel])} HTTP/1.1\r\nHost: x\r\n\r\n"
        writer.write(request.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        lines = head.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 200 OK"
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if line)}
        assert headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers
        assert headers["content-type"] == "text/event-stream"
        assert headers["x-content-type-options"] == "nosniff"

        decoder = StreamDecoder()
        opening = decoder.feed(await _read_chunk(reader))
        assert [type(item).__name__ for item in opening] == ["StreamComment"]
        messages: list[StreamMessage] = []
        await insert_events(db, [channel], 3)
        log = await wait_published(db, channel, 3)
        while len(messages) < 4:
            items = decoder.feed(await _read_chunk(reader))
            assert len(items) == 1 and decoder.buffer == b"", items  # one message per chunk
            assert isinstance(items[0], StreamMessage)
            messages.append(items[0])
        assert [m.id for m in messages] == ["0"] + [str(e["offset"]) for e in log]
        assert messages[0].data == '{"op":"subscribed","channel":"feed:sse-raw","offset":0}'
        assert [m.fields for m in messages] == [("id", "data")] * 4
        client.app[gateway_key].revoke(only_stream(client).session_id)
        end = decoder.feed(await _read_chunk(reader))
        assert end == [
            StreamMessage('{"op":"close","code":4401,"reason":"session ended"}', None, ("data",))
        ]
        assert await asyncio.wait_for(reader.readexactly(5), TIMEOUT) == b"0\r\n\r\n"
    finally:
        writer.close()


async def test_under_http_1_0_messages_are_unframed_and_the_connection_ends_the_body(
    client: Client,
) -> None:
    account = await sign_up(client)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        ticket = await new_ticket(client, account)
        writer.write(f"GET {stream_url(ticket, ['listing:7'])} HTTP/1.0\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.0 200 OK\r\n")
        assert b"transfer-encoding" not in head.lower()
        await eventually(lambda: _subscribed_sent(client), "the stream subscribed")
        client.app[gateway_key].revoke(only_stream(client).session_id)
        body = await asyncio.wait_for(reader.read(), TIMEOUT)  # to the end of the connection
        assert body == (
            b": jangteo event stream\n\n"
            b'id: 0\ndata: {"op":"subscribed","channel":"listing:7","offset":0}\n\n'
            b'data: {"op":"close","code":4401,"reason":"session ended"}\n\n'
        )
    finally:
        writer.close()


async def _subscribed_sent(client: Client) -> bool:
    streams = client.app[gateway_key].streams
    return bool(streams) and only_stream(client).cursor == [0]


# -- the reference client over the stream ----------------------------------------------------


async def test_the_reference_client_resumes_a_dropped_stream_from_its_cursor(
    client: Client, db: asyncpg.Connection
) -> None:
    account = await sign_up(client)
    channels = ["feed:sse-client-a", "feed:sse-client-b"]
    base_url = str(client.make_url("/"))
    async with RealtimeClient(base_url, account.access_token, transport="sse") as realtime:
        for channel in channels:
            assert await asyncio.wait_for(realtime.subscribe(channel), TIMEOUT) == 0
        await insert_events(db, channels, 4)
        for _ in range(4):
            await asyncio.wait_for(realtime.next_event(), TIMEOUT)
        assert realtime.connections == 2  # the second channel reopened the stream

        only_stream(client).transport.abort()  # the connection drops
        await insert_events(db, channels, 6)  # meanwhile
        received = [await asyncio.wait_for(realtime.next_event(), TIMEOUT) for _ in range(6)]
        await eventually(lambda: _opened(realtime, 3), "the client opened a third stream")
        for channel in channels:
            log = await wait_published(db, channel, 5)
            mine = [e for e in received if isinstance(e, Event) and e.channel == channel]
            assert [e.offset for e in mine] == [e["offset"] for e in log[2:]]
        assert (realtime.duplicates, realtime.gaps) == (0, 0)


async def _opened(realtime: RealtimeClient, count: int) -> bool:
    return realtime.connections == count


async def test_a_stream_and_a_socket_answer_with_the_request_id(client: Client) -> None:
    """Both opening answers are sent by their handlers, and still carry the id."""
    account = await sign_up(client)
    asked = {"X-Request-ID": "open-stream-7"}
    ticket = await new_ticket(client, account)
    response = await client.get(stream_url(ticket, ["feed:sse-id"]), headers=asked)
    assert response.status == 200
    assert response.headers["X-Request-ID"] == "open-stream-7"
    response.close()
    # A handshake by hand: the client's socket object does not show the 101's headers.
    handshake = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "X-Request-ID": "socket-8",
    }
    ticket = await new_ticket(client, account)
    upgraded = await client.get(f"/api/v1/ws?ticket={ticket}", headers=handshake)
    assert upgraded.status == 101
    assert upgraded.headers["X-Request-ID"] == "socket-8"
    upgraded.close()
