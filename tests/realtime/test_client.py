"""The reference realtime client against a scripted stand-in for the gateway, over real sockets.

No test reads the clock: backoff sleeps are injected, and every wait is on a condition (the
TIMEOUT only turns a hang into a failure on a slow machine).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import WSMsgType, web
from pytest_aiohttp import AiohttpServer
from yarl import URL

from realtime.client import (
    ClientClosed,
    ErrorFrame,
    Event,
    PolicyClosed,
    ProtocolError,
    RealtimeClient,
    RealtimeClosed,
    Rejected,
    Resync,
    SessionRevoked,
    SubscriptionError,
    TokenProvider,
)

TIMEOUT = 30.0
ACCESS_TOKEN = "access-1"
JsonObject = dict[str, Any]
T = TypeVar("T")


async def within(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(TIMEOUT):
        return await awaitable


def as_event(frame: JsonObject) -> Event:
    return Event(
        frame["channel"], frame["offset"], frame["prev"], frame["ts"], frame["type"], frame["data"]
    )


@dataclass
class FakeSocket:
    ticket: str
    origin: str | None
    ws: web.WebSocketResponse
    request: web.Request
    received: list[JsonObject] = field(default_factory=list)
    channels: set[str] = field(default_factory=set)
    done: bool = False
    close_code: int | None = None

    async def send(self, frame: JsonObject) -> None:
        with suppress(ConnectionError):
            await self.ws.send_str(orjson.dumps(frame).decode())

    def subscribes(self) -> list[JsonObject]:
        return [frame for frame in self.received if frame["op"] == "subscribe"]


@dataclass
class FakeStream:
    """The fake's side of one event stream: what it was asked for, and what it sent."""

    ticket: str
    channels: tuple[str, ...]
    since: str | None
    response: web.StreamResponse
    request: web.Request
    cursor: list[str]
    subscribed: set[str] = field(default_factory=set)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False

    async def send(self, frame: JsonObject, *, raw: bytes | None = None) -> None:
        """One message; ``subscribed`` and ``event`` carry the cursor as their id."""
        if frame.get("op") in ("subscribed", "event"):
            self.cursor[self.channels.index(frame["channel"])] = str(frame["offset"])
            message = f"id: {','.join(self.cursor)}\n".encode()
        else:
            message = b""
        message += raw if raw is not None else b"data: " + orjson.dumps(frame) + b"\n\n"
        with suppress(ConnectionError):
            await self.response.write(message)

    async def end(self, code: int) -> None:
        await self.send({"op": "close", "code": code, "reason": "scripted"})
        self.ended.set()


class FakeGateway:
    """The gateway's side of the protocol, scripted by each test.

    Tickets are single use; `subscribe` answers `subscribed` with the channel's latest offset,
    then replays the log after `since`; `publish` delivers live to subscribed sockets.
    """

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_post("/api/v1/ws/ticket", self.issue_ticket)
        self.app.router.add_get("/api/v1/ws", self.websocket)
        self.app.router.add_get("/api/v1/sse", self.stream)
        self.app.on_shutdown.append(self.shutdown)
        self.base_url = ""
        self.offset = 1000
        self.log: list[JsonObject] = []
        self.tickets: dict[str, bool] = {}  # ticket -> used
        self.ticket_auth: list[str | None] = []  # Authorization header of every ticket request
        self.ticket_statuses: list[int] = []  # answered, in order, before tickets are issued
        self.close_on_accept: list[int] = []  # accept the upgrade, close at once with these
        self.reactions: dict[str, list[str]] = {}  # channel -> answers to its next subscribes
        self.resync_below = 0  # a `since` below this is answered with resync
        self.rejected_tickets = 0
        self.sockets: list[FakeSocket] = []
        self.streams: list[FakeStream] = []
        self.stream_statuses: list[int] = []  # answered, in order, to stream requests
        self._lock = asyncio.Lock()  # replay and live publish never interleave
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def issue_ticket(self, request: web.Request) -> web.Response:
        self.ticket_auth.append(request.headers.get("Authorization"))
        self._notify()
        if self.ticket_statuses:
            return web.json_response({"title": "scripted"}, status=self.ticket_statuses.pop(0))
        ticket = uuid.uuid4().hex
        self.tickets[ticket] = False
        return web.json_response({"ticket": ticket, "expires_in": 30}, status=201)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        ticket = request.query.get("ticket", "")
        if self.tickets.get(ticket, True):  # unknown or already used
            self.rejected_tickets += 1
            await ws.close(code=1008, message=b"bad ticket")
            return ws
        self.tickets[ticket] = True
        if self.close_on_accept:
            await ws.close(code=self.close_on_accept.pop(0), message=b"scripted")
            return ws
        sock = FakeSocket(ticket, request.headers.get("Origin"), ws, request)
        self.sockets.append(sock)
        self._notify()
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    frame = orjson.loads(msg.data)
                    sock.received.append(frame)
                    await self._handle(sock, frame)
                    self._notify()
        finally:
            sock.done = True
            sock.close_code = ws.close_code
            self._notify()
        return ws

    async def stream(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if self.tickets.get(ticket, True):  # unknown or already used
            self.rejected_tickets += 1
            return web.json_response({"title": "bad ticket"}, status=401)
        self.tickets[ticket] = True
        if self.stream_statuses:
            return web.json_response({"title": "scripted"}, status=self.stream_statuses.pop(0))
        channels = tuple(request.query.getall("channel"))
        since = request.query.get("since")
        cursor = since.split(",") if since is not None else [""] * len(channels)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": open\n\n")
        stream = FakeStream(ticket, channels, since, response, request, cursor)
        self.streams.append(stream)
        self._notify()
        try:
            for channel, field_ in zip(channels, list(cursor), strict=True):
                frame: JsonObject = {"op": "subscribe", "channel": channel}
                if field_:
                    frame["since"] = int(field_)
                await self._subscribe(stream, frame)
            self._notify()
            # Until the test ends it, or the client goes away (read as a closing transport).
            while not stream.ended.is_set():
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                with suppress(TimeoutError):
                    await asyncio.wait_for(stream.ended.wait(), 0.05)
        finally:
            stream.done = True
            self._notify()
        return response

    async def _handle(self, sock: FakeSocket, frame: JsonObject) -> None:
        channel = frame.get("channel")
        if frame["op"] == "unsubscribe":
            sock.channels.discard(channel or "")
            await sock.send({"op": "unsubscribed", "channel": channel})
        if frame["op"] == "subscribe":
            await self._subscribe(sock, frame)

    async def _subscribe(self, sock: FakeSocket | FakeStream, frame: JsonObject) -> None:
        channel = frame.get("channel")
        if not isinstance(channel, str):
            return
        reactions = self.reactions.get(channel)
        reaction = reactions.pop(0) if reactions else None
        since = frame.get("since")
        if reaction is None and since is not None and since < self.resync_below:
            reaction = "resync"
        if reaction == "silent":
            return
        if reaction is not None:
            await sock.send({"op": "error", "code": reaction, "channel": channel, "detail": "x"})
            return
        async with self._lock:
            history = [event for event in self.log if event["channel"] == channel]
            latest = history[-1]["offset"] if history else 0
            await sock.send({"op": "subscribed", "channel": channel, "offset": latest})
            for event in history:
                if since is not None and event["offset"] > since:
                    await sock.send(event)
            if isinstance(sock, FakeStream):
                sock.subscribed.add(channel)
            else:
                sock.channels.add(channel)

    async def publish(self, channel: str, data: JsonObject | None = None) -> JsonObject:
        """Append an event to the log (offsets rise across channels) and push it live."""
        async with self._lock:
            self.offset += 1
            history = [event for event in self.log if event["channel"] == channel]
            frame: JsonObject = {
                "op": "event",
                "channel": channel,
                "offset": self.offset,
                "prev": history[-1]["offset"] if history else 0,
                "ts": 1_764_590_000_000 + self.offset,
                "type": "listing.updated",
                "data": data or {"n": self.offset},
            }
            self.log.append(frame)
            for sock in self.sockets:
                if not sock.done and channel in sock.channels:
                    await sock.send(frame)
            for stream in self.streams:
                if not stream.done and channel in stream.subscribed:
                    await stream.send(frame)
        return frame

    async def shutdown(self, app: web.Application) -> None:
        for sock in self.sockets:
            await sock.ws.close(code=1001, message=b"shutting down")
        for stream in self.streams:
            stream.ended.set()


@dataclass
class Backoff:
    """Injected jitter and sleep: records every draw and never waits on the clock."""

    bounds: list[tuple[float, float]] = field(default_factory=list)
    draws: list[float] = field(default_factory=list)
    slept: list[float] = field(default_factory=list)
    states: list[str] = field(default_factory=list)  # the client's state at each sleep
    hold: asyncio.Event | None = None  # when set up, sleeps wait for it
    client: RealtimeClient | None = None

    @property
    def highs(self) -> list[float]:
        assert all(low == 0 for low, _ in self.bounds)  # full jitter starts at zero
        return [high for _, high in self.bounds]

    def uniform(self, low: float, high: float) -> float:
        value = random.uniform(low, high)
        self.bounds.append((low, high))
        self.draws.append(value)
        return value

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        if self.client is not None:
            self.states.append(self.client.state)
        if self.hold is not None:
            await self.hold.wait()
        await asyncio.sleep(0)


ClientFactory = Callable[..., RealtimeClient]


@pytest.fixture
async def gateway(aiohttp_server: AiohttpServer) -> FakeGateway:
    fake = FakeGateway()
    server = await aiohttp_server(fake.app)
    fake.base_url = f"http://{server.host}:{server.port}"
    return fake


@pytest.fixture
def backoff() -> Backoff:
    return Backoff()


@pytest.fixture
async def make_client(gateway: FakeGateway, backoff: Backoff) -> AsyncIterator[ClientFactory]:
    clients: list[RealtimeClient] = []

    def factory(token: TokenProvider = ACCESS_TOKEN, **options: Any) -> RealtimeClient:
        options.setdefault("uniform", backoff.uniform)
        options.setdefault("sleep", backoff.sleep)
        client = RealtimeClient(gateway.base_url, token, **options)
        backoff.client = client
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: ClientFactory) -> RealtimeClient:
    client = make_client()
    await within(client.connect())
    return client


async def reconnected(client: RealtimeClient, gateway: FakeGateway, count: int) -> FakeSocket:
    """Wait for the client's `count`-th socket to be live; returns the fake's side of it."""
    await within(client.wait_until(lambda: client.connections == count))
    await within(client.wait_live())
    await gateway.wait_until(lambda: len(gateway.sockets) == count)
    return gateway.sockets[-1]


def test_urls_follow_the_base_url_scheme() -> None:
    secure = RealtimeClient("https://market.example:8443/", "token")
    assert secure.ws_url == URL("wss://market.example:8443/api/v1/ws")
    assert secure.ticket_url == URL("https://market.example:8443/api/v1/ws/ticket")
    assert RealtimeClient("http://127.0.0.1:8080", "t").ws_url == URL(
        "ws://127.0.0.1:8080/api/v1/ws"
    )
    with pytest.raises(ValueError, match="http"):
        RealtimeClient("ftp://127.0.0.1", "t")


async def test_every_connection_gets_a_new_ticket_from_the_current_token(
    gateway: FakeGateway, make_client: ClientFactory
) -> None:
    tokens = iter(["access-1", "access-2"])

    async def provide() -> str:
        return next(tokens)

    client = make_client(provide, origin="http://localhost:5173")
    await within(client.connect())
    first = gateway.sockets[0]
    assert gateway.ticket_auth == ["Bearer access-1"]
    assert gateway.tickets == {first.ticket: True}
    assert first.origin == "http://localhost:5173"

    await first.ws.close(code=1001, message=b"shutting down")
    second = await reconnected(client, gateway, 2)
    assert gateway.ticket_auth == ["Bearer access-1", "Bearer access-2"]
    assert second.ticket != first.ticket
    assert gateway.rejected_tickets == 0


async def test_subscribe_without_since_starts_at_the_latest_offset(
    gateway: FakeGateway, client: RealtimeClient
) -> None:
    await gateway.publish("listing:42")
    before = await gateway.publish("listing:42")

    assert await within(client.subscribe("listing:42")) == before["offset"]
    assert gateway.sockets[0].subscribes() == [{"op": "subscribe", "channel": "listing:42"}]
    assert client.last_offsets == {"listing:42": before["offset"]}

    first = await gateway.publish("listing:42", {"price": 9000})
    await gateway.publish("feed:seoul-mapo")  # not subscribed: never delivered
    second = await gateway.publish("listing:42")
    assert await within(client.next_event()) == as_event(first)
    assert await within(client.next_event()) == as_event(second)
    assert as_event(first).data == {"price": 9000}
    assert client.last_offsets == {"listing:42": second["offset"]}
    assert (client.duplicates, client.gaps) == (0, 0)


async def test_subscribe_with_since_replays_what_came_after(
    gateway: FakeGateway, client: RealtimeClient
) -> None:
    seen = await gateway.publish("listing:42")
    missed = [await gateway.publish("listing:42") for _ in range(2)]

    latest = await within(client.subscribe("listing:42", since=seen["offset"]))
    assert latest == missed[-1]["offset"]
    assert gateway.sockets[0].subscribes()[0]["since"] == seen["offset"]
    assert [await within(client.next_event()) for _ in missed] == [as_event(m) for m in missed]
    assert client.last_offsets["listing:42"] == missed[-1]["offset"]


@pytest.mark.parametrize("how", [1001, 1013, 1000, 1011, "abort"])
async def test_reconnects_and_resumes_every_channel_from_its_last_offset(
    gateway: FakeGateway, client: RealtimeClient, backoff: Backoff, how: int | str
) -> None:
    await within(client.subscribe("listing:1"))
    assert await within(client.subscribe("feed:seoul-mapo")) == 0
    seen = await gateway.publish("listing:1")
    assert await within(client.next_event()) == as_event(seen)
    gateway.reactions["user:7"] = ["silent"]  # never acknowledged on the first socket
    pending = asyncio.create_task(client.subscribe("user:7"))
    first = gateway.sockets[0]
    await gateway.wait_until(lambda: len(first.subscribes()) == 3)

    backoff.hold = asyncio.Event()  # keep the client away while an event is published
    if how == "abort":
        transport = first.request.transport
        assert transport is not None
        transport.abort()
    else:
        assert isinstance(how, int)
        await first.ws.close(code=how, message=b"bye")
    await within(client.wait_until(lambda: client.state == "reconnecting"))
    missed = await gateway.publish("listing:1")
    backoff.hold.set()

    second = await reconnected(client, gateway, 2)
    await gateway.wait_until(lambda: len(second.subscribes()) == 3)
    assert second.subscribes() == [
        {"op": "subscribe", "channel": "listing:1", "since": seen["offset"]},
        {"op": "subscribe", "channel": "feed:seoul-mapo", "since": 0},
        {"op": "subscribe", "channel": "user:7"},  # it never had an offset
    ]
    assert await within(pending) == 0
    assert await within(client.next_event()) == as_event(missed)  # replayed, exactly once
    live = await gateway.publish("listing:1")
    assert await within(client.next_event()) == as_event(live)
    assert (client.duplicates, client.gaps) == (0, 0)
    assert len(gateway.ticket_auth) == 2
    assert backoff.states == ["reconnecting"]


async def test_backoff_is_full_jitter_capped_and_reset_by_a_served_connection(
    gateway: FakeGateway, make_client: ClientFactory, backoff: Backoff
) -> None:
    gateway.ticket_statuses = [503, 503, 429, 500, 502, 503]
    client = make_client(backoff_base=0.1, backoff_cap=1.0)
    await within(client.connect())

    assert backoff.highs == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert all(
        0 <= draw <= high for draw, (_, high) in zip(backoff.draws, backoff.bounds, strict=True)
    )
    assert backoff.slept == backoff.draws
    assert backoff.states == ["connecting"] * 6
    assert len(gateway.ticket_auth) == 7

    await within(client.subscribe("listing:1"))  # the socket served a frame
    gateway.close_on_accept = [1013, 1013]  # full instances: upgrade, then closed at once
    await gateway.sockets[0].ws.close(code=1001, message=b"shutting down")
    await within(client.wait_until(lambda: client.connections == 4))
    await within(client.wait_live())
    assert backoff.highs[6:] == pytest.approx([0.1, 0.2, 0.4])
    assert backoff.states[6:] == ["reconnecting"] * 3


@pytest.mark.parametrize(
    ("code", "stop"), [(4401, SessionRevoked), (1008, PolicyClosed)], ids=["revoked", "policy"]
)
async def test_revoked_session_or_policy_close_stops_for_good(
    gateway: FakeGateway,
    client: RealtimeClient,
    backoff: Backoff,
    code: int,
    stop: type[RealtimeClosed],
) -> None:
    await within(client.subscribe("user:7"))
    event = await gateway.publish("user:7")
    await within(client.wait_until(lambda: client.last_offsets["user:7"] == event["offset"]))
    gateway.reactions["listing:1"] = ["silent"]
    pending = asyncio.create_task(client.subscribe("listing:1"))
    await gateway.wait_until(lambda: len(gateway.sockets[0].subscribes()) == 2)

    await gateway.sockets[0].ws.close(code=code, message=b"session revoked")
    await within(client.wait_until(lambda: client.state == "closed"))
    assert isinstance(client.closed_reason, stop)
    assert client.closed_reason.code == code
    with pytest.raises(stop):
        await within(pending)
    assert await within(client.next_event()) == as_event(event)  # what arrived is kept
    with pytest.raises(stop):
        await within(client.next_event())
    with pytest.raises(stop):
        async for _ in client.events():
            pass
    with pytest.raises(stop):
        await within(client.wait_live())
    assert len(gateway.ticket_auth) == 1
    assert backoff.slept == []


@pytest.mark.parametrize(
    ("status", "stop"), [(401, SessionRevoked), (403, Rejected)], ids=["401", "403"]
)
async def test_refused_ticket_stops_for_good(
    gateway: FakeGateway,
    make_client: ClientFactory,
    backoff: Backoff,
    status: int,
    stop: type[RealtimeClosed],
) -> None:
    gateway.ticket_statuses = [status]
    client = make_client()
    with pytest.raises(stop):
        await within(client.connect())
    assert client.state == "closed"
    assert client.closed_reason is not None
    assert client.closed_reason.code == status
    assert backoff.slept == []


async def test_resync_on_subscribe_is_surfaced_then_subscribed_fresh(
    gateway: FakeGateway, client: RealtimeClient
) -> None:
    latest = await gateway.publish("listing:42")
    gateway.resync_below = latest["offset"]  # `since` older than the retention window

    assert await within(client.subscribe("listing:42", since=5)) == latest["offset"]
    assert await within(client.next_event()) == Resync("listing:42")
    assert await within(client.next_error()) == ErrorFrame("resync", "listing:42", "x")
    assert gateway.sockets[0].subscribes() == [
        {"op": "subscribe", "channel": "listing:42", "since": 5},
        {"op": "subscribe", "channel": "listing:42"},
    ]
    assert client.last_offsets == {"listing:42": latest["offset"]}
    after = await gateway.publish("listing:42")
    assert await within(client.next_event()) == as_event(after)


async def test_resync_after_reconnect_is_surfaced_then_subscribed_fresh(
    gateway: FakeGateway, client: RealtimeClient
) -> None:
    await within(client.subscribe("listing:42"))
    seen = await gateway.publish("listing:42")
    assert await within(client.next_event()) == as_event(seen)
    gateway.resync_below = seen["offset"] + 100

    await gateway.sockets[0].ws.close(code=1001, message=b"shutting down")
    second = await reconnected(client, gateway, 2)
    assert await within(client.next_event()) == Resync("listing:42")
    await gateway.wait_until(lambda: len(second.subscribes()) == 2)
    assert second.subscribes() == [
        {"op": "subscribe", "channel": "listing:42", "since": seen["offset"]},
        {"op": "subscribe", "channel": "listing:42"},
    ]
    after = await gateway.publish("listing:42")
    assert await within(client.next_event()) == as_event(after)


async def test_duplicates_are_dropped_and_counted_gaps_counted(
    gateway: FakeGateway, client: RealtimeClient
) -> None:
    await within(client.subscribe("listing:42"))
    first = await gateway.publish("listing:42")
    second = await gateway.publish("listing:42")
    sock = gateway.sockets[0]
    await sock.send(first)
    await sock.send(second)
    after_gap = {**second, "offset": second["offset"] + 10, "prev": second["offset"] + 5}
    await sock.send(after_gap)

    assert [await within(client.next_event()) for _ in range(3)] == [
        as_event(first),
        as_event(second),
        as_event(after_gap),
    ]
    assert client.duplicates == 2
    assert client.gaps == 1


async def test_refused_subscription_raises_and_is_not_resubscribed(
    gateway: FakeGateway, client: RealtimeClient
) -> None:
    await within(client.subscribe("listing:1"))
    gateway.reactions["user:2"] = ["forbidden"]
    with pytest.raises(SubscriptionError) as refused:
        await within(client.subscribe("user:2"))
    assert refused.value.error == ErrorFrame("forbidden", "user:2", "x")
    assert await within(client.next_error()) == refused.value.error
    assert client.subscriptions == ("listing:1",)

    await gateway.sockets[0].ws.close(code=1001, message=b"shutting down")
    second = await reconnected(client, gateway, 2)
    await within(client.subscribe("feed:busan"))  # answered after everything sent before it
    assert [frame["channel"] for frame in second.subscribes()] == ["listing:1", "feed:busan"]


async def test_unavailable_replay_is_retried_after_a_backoff(
    gateway: FakeGateway, client: RealtimeClient, backoff: Backoff
) -> None:
    gateway.reactions["listing:1"] = ["unavailable", "unavailable"]
    assert await within(client.subscribe("listing:1", since=3)) == 0
    assert [frame.get("since") for frame in gateway.sockets[0].subscribes()] == [3, 3, 3]
    assert [error.code for error in client.errors] == ["unavailable", "unavailable"]
    assert backoff.highs == pytest.approx([0.5, 1.0])


async def test_unsubscribe_drops_events_still_in_flight(
    gateway: FakeGateway, client: RealtimeClient
) -> None:
    await within(client.subscribe("listing:1"))
    await within(client.subscribe("listing:2"))
    await client.unsubscribe("listing:1")
    sock = gateway.sockets[0]
    await gateway.wait_until(
        lambda: sock.received[-1] == {"op": "unsubscribe", "channel": "listing:1"}
    )
    late = await gateway.publish("listing:1")
    await sock.send(late)  # as if it was already queued when the unsubscribe arrived
    other = await gateway.publish("listing:2")

    assert await within(client.next_event()) == as_event(other)
    assert client.last_offsets == {"listing:2": other["offset"]}
    assert client.subscriptions == ("listing:2",)


async def test_close_is_a_normal_end(
    gateway: FakeGateway, make_client: ClientFactory, backoff: Backoff
) -> None:
    async with make_client() as client:
        await within(client.subscribe("listing:1"))
    assert client.state == "closed"
    assert isinstance(client.closed_reason, ClientClosed)
    assert [item async for item in client.events()] == []
    with pytest.raises(ClientClosed):
        await client.subscribe("listing:1")
    sock = gateway.sockets[0]
    await gateway.wait_until(lambda: sock.done)
    assert sock.close_code == 1000
    assert len(gateway.ticket_auth) == 1
    assert backoff.slept == []


async def test_frames_are_recorded_when_asked(
    gateway: FakeGateway, make_client: ClientFactory
) -> None:
    client = make_client(record_frames=True)
    await within(client.connect())
    await within(client.subscribe("listing:1"))
    event = await gateway.publish("listing:1")
    await within(client.next_event())
    assert client.frames == [{"op": "subscribed", "channel": "listing:1", "offset": 0}, event]


async def test_a_malformed_frame_stops_the_client(
    gateway: FakeGateway, client: RealtimeClient
) -> None:
    await within(client.subscribe("listing:1"))
    await gateway.sockets[0].send({"op": "event", "channel": "listing:1", "offset": "7"})
    with pytest.raises(ProtocolError, match="offset"):
        await within(client.next_event())


# -- over an event stream --------------------------------------------------------------------


@pytest.fixture
async def sse_client(make_client: ClientFactory) -> RealtimeClient:
    client = make_client(transport="sse")
    await within(client.connect())
    return client


async def opened(client: RealtimeClient, gateway: FakeGateway, count: int) -> FakeStream:
    """Wait for the client's `count`-th stream to be live; returns the fake's side of it."""
    await within(client.wait_until(lambda: client.connections == count))
    await gateway.wait_until(lambda: len(gateway.streams) == count)
    return gateway.streams[-1]


def test_the_stream_url_follows_the_base_url() -> None:
    client = RealtimeClient("https://market.example:8443/", "token", transport="sse")
    assert client.sse_url == URL("https://market.example:8443/api/v1/sse")
    with pytest.raises(ValueError, match="transport"):
        RealtimeClient("http://127.0.0.1", "t", transport="carrier-pigeon")  # type: ignore[arg-type]


async def test_a_stream_opens_with_the_channels_and_reopens_with_each_change(
    gateway: FakeGateway, sse_client: RealtimeClient, backoff: Backoff
) -> None:
    assert sse_client.state == "live"
    assert gateway.streams == []  # no channel, no stream
    before = await gateway.publish("listing:1")

    assert await within(sse_client.subscribe("listing:1")) == before["offset"]
    first = gateway.streams[0]
    assert (first.channels, first.since) == (("listing:1",), None)
    seen = await gateway.publish("listing:1")
    assert await within(sse_client.next_event()) == as_event(seen)

    assert await within(sse_client.subscribe("feed:seoul-mapo")) == 0
    second = gateway.streams[1]
    assert second.ticket != first.ticket
    assert second.channels == ("listing:1", "feed:seoul-mapo")
    assert second.since == f"{seen['offset']},"
    await gateway.wait_until(lambda: first.done)
    both = [await gateway.publish("feed:seoul-mapo"), await gateway.publish("listing:1")]
    assert [await within(sse_client.next_event()) for _ in both] == [as_event(e) for e in both]

    await sse_client.unsubscribe("listing:1")
    third = await opened(sse_client, gateway, 3)
    assert (third.channels, third.since) == (("feed:seoul-mapo",), str(both[0]["offset"]))
    await sse_client.unsubscribe("feed:seoul-mapo")
    await gateway.wait_until(lambda: third.done)
    assert len(gateway.streams) == 3  # none without channels
    assert sse_client.state == "live"
    assert len(gateway.ticket_auth) == 3
    assert gateway.rejected_tickets == 0
    assert backoff.slept == []  # a change reopens at once
    assert (sse_client.duplicates, sse_client.gaps) == (0, 0)


@pytest.mark.parametrize("how", [1001, 1013, 1011, "ended", "abort"])
async def test_a_dropped_stream_is_reopened_with_a_new_ticket_and_the_cursor(
    gateway: FakeGateway, sse_client: RealtimeClient, backoff: Backoff, how: int | str
) -> None:
    await within(sse_client.subscribe("listing:1"))
    await within(sse_client.subscribe("feed:seoul-mapo"))
    seen = await gateway.publish("listing:1")
    assert await within(sse_client.next_event()) == as_event(seen)
    first = gateway.streams[-1]

    backoff.hold = asyncio.Event()  # keep the client away while an event is published
    if how == "abort":
        transport = first.request.transport
        assert transport is not None
        transport.abort()
    elif how == "ended":
        first.ended.set()  # the response ends without a close message
    else:
        assert isinstance(how, int)
        await first.end(how)
    await within(sse_client.wait_until(lambda: sse_client.state == "reconnecting"))
    missed = await gateway.publish("listing:1")
    backoff.hold.set()

    again = await opened(sse_client, gateway, 3)
    assert again.ticket != first.ticket
    assert again.channels == ("listing:1", "feed:seoul-mapo")
    assert again.since == f"{seen['offset']},0"
    assert await within(sse_client.next_event()) == as_event(missed)  # replayed, exactly once
    live = await gateway.publish("listing:1")
    assert await within(sse_client.next_event()) == as_event(live)
    assert (sse_client.duplicates, sse_client.gaps) == (0, 0)
    assert backoff.states == ["reconnecting"]
    assert backoff.highs == pytest.approx([0.5])  # the stream had served: the backoff restarts


@pytest.mark.parametrize(
    ("end", "stop", "code"),
    [("close 4401", SessionRevoked, 4401), ("401", SessionRevoked, 401), ("403", Rejected, 403)],
)
async def test_a_revoked_session_or_a_refused_stream_stops_for_good(
    gateway: FakeGateway,
    sse_client: RealtimeClient,
    backoff: Backoff,
    end: str,
    stop: type[RealtimeClosed],
    code: int,
) -> None:
    await within(sse_client.subscribe("user:7"))
    event = await gateway.publish("user:7")
    assert await within(sse_client.next_event()) == as_event(event)
    if end == "close 4401":
        await gateway.streams[0].end(4401)
    else:
        gateway.stream_statuses = [code]
        gateway.streams[0].ended.set()  # dropped; the next request is refused
    await within(sse_client.wait_until(lambda: sse_client.state == "closed"))
    assert isinstance(sse_client.closed_reason, stop)
    assert sse_client.closed_reason.code == code
    with pytest.raises(stop):
        await within(sse_client.next_event())
    assert len(gateway.streams) == 1


async def test_resync_on_a_stream_is_surfaced_then_the_channel_reopened_live(
    gateway: FakeGateway, sse_client: RealtimeClient
) -> None:
    await within(sse_client.subscribe("feed:busan"))
    seen = await gateway.publish("listing:42")
    gateway.reactions["listing:42"] = ["resync"]  # `since` older than the retention window

    await within(sse_client.subscribe("listing:42", since=seen["offset"]))
    assert gateway.streams[1].since == f"0,{seen['offset']}"
    assert await within(sse_client.next_event()) == Resync("listing:42")
    assert await within(sse_client.next_error()) == ErrorFrame("resync", "listing:42", "x")
    fresh = await opened(sse_client, gateway, 3)
    assert (fresh.channels, fresh.since) == (("feed:busan", "listing:42"), "0,")
    await gateway.wait_until(lambda: fresh.subscribed == {"feed:busan", "listing:42"})
    after = await gateway.publish("listing:42")
    assert await within(sse_client.next_event()) == as_event(after)


@pytest.mark.parametrize(
    "raw",
    [b'event: x\ndata: {"op":"pong"}\n\n', b'data: {"op":\ndata: "pong"}\n\n', b"data: [1]\n\n"],
    ids=["event field", "two data lines", "not an object"],
)
async def test_a_message_the_protocol_does_not_allow_stops_the_client(
    gateway: FakeGateway, sse_client: RealtimeClient, raw: bytes
) -> None:
    await within(sse_client.subscribe("listing:1"))
    await gateway.streams[0].send({}, raw=raw)
    with pytest.raises(ProtocolError):
        await within(sse_client.next_event())
