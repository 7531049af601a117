"""One change followed from its HTTP request to the sockets of two instances.

Two real apps in this process on real sockets, sharing one PostgreSQL, one Redis and one
tracer provider (the SDK's in-memory exporter), a WebSocket subscriber on each. Every wait
is on a condition; its timeout only turns a hang into a failure.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
from aiohttp import ClientWebSocketResponse, web
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from jangteo.app import create_app
from realtime.keys import relay_key
from realtime.tracing import (
    CHANNEL,
    DELIVER_SPAN,
    INSTANCE,
    OFFSET,
    PUBLISH_SPAN,
    SOCKETS,
)
from server.settings import Settings
from tests.realtime.test_gateway import eventually, open_socket, receive, subscribed
from tests.server.listings_support import create_listing, item_url
from tests.support import Account, Client, sign_up

EVENT_KEYS = {"op", "channel", "offset", "prev", "ts", "type", "data"}  # docs/protocol.md
AppClient = Callable[..., Awaitable[Client]]


def traceparent(trace_id: int) -> str:
    """A sampled remote parent, as a browser or gateway in front of jangteo would send."""
    return f"00-{trace_id:032x}-{secrets.randbits(64) | 1:016x}-01"


async def patch_price(client: Client, seller: Account, listing_id: int, trace_id: int) -> None:
    headers = {**seller.auth, "If-Match": "*", "traceparent": traceparent(trace_id)}
    response = await client.patch(item_url(listing_id), json={"price": 4321}, headers=headers)
    assert response.status == 200, await response.text()


def linked_to(spans: Sequence[ReadableSpan], name: str, trace_id: int) -> list[ReadableSpan]:
    return [
        span
        for span in spans
        if span.name == name and any(link.context.trace_id == trace_id for link in span.links)
    ]


def link_to(span: ReadableSpan, trace_id: int) -> dict[str, object]:
    (link,) = [link for link in span.links if link.context.trace_id == trace_id]
    return dict(link.attributes or {})


def socket_spans(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    return [
        span
        for span in spans
        if span.kind is SpanKind.SERVER
        and span.attributes is not None
        and span.attributes.get("http.route") == "/api/v1/ws"
    ]


def instance_of(client: Client) -> str:
    app = client.app
    assert app is not None
    return app[relay_key].instance


@dataclass(frozen=True, slots=True)
class Instances:
    """Two instances, a seller's listing, and a socket on each subscribed to its channel."""

    clients: tuple[Client, Client]
    seller: Account
    listing_id: int
    channel: str
    sockets: list[ClientWebSocketResponse]


async def two_instances(
    aiohttp_client: AppClient, settings: Settings, provider: TracerProvider | None
) -> Instances:
    a = await aiohttp_client(create_app(settings, tracer_provider=provider))
    b = await aiohttp_client(create_app(settings, tracer_provider=provider))
    seller = await sign_up(a)
    listing = await create_listing(a, seller)
    channel = f"listing:{listing['id']}"
    sockets = [await open_socket(client, seller) for client in (a, b)]
    for ws in sockets:
        await subscribed(ws, channel)
    return Instances((a, b), seller, listing["id"], channel, sockets)


async def test_one_patch_is_followed_to_the_sockets_of_both_instances(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    aiohttp_client: AppClient,
    settings: Settings,
    db: asyncpg.Connection,
) -> None:
    market = await two_instances(aiohttp_client, settings, provider)
    (a, b), channel, sockets = market.clients, market.channel, market.sockets
    trace_id = secrets.randbits(128) | 1
    await patch_price(a, market.seller, market.listing_id, trace_id)

    frames = [await receive(ws) for ws in sockets]
    for frame in frames:
        assert set(frame) == EVENT_KEYS  # the trace context never reaches a client
        assert frame["type"] == "listing.price_changed"
    offset = frames[0]["offset"]
    assert frames[1]["offset"] == offset

    # The commit stored the request's trace context with the event.
    stored = await db.fetchval("SELECT trace_context FROM outbox WHERE position = $1", offset)
    assert stored is not None and stored.split("-")[1] == f"{trace_id:032x}"

    instances = {instance_of(a), instance_of(b)}
    assert len(instances) == 2

    async def delivered_on_both() -> bool:
        spans = exporter.get_finished_spans()
        delivered = {
            span.attributes[INSTANCE]
            for span in linked_to(spans, DELIVER_SPAN, trace_id)
            if span.attributes is not None
        }
        return delivered == instances and bool(linked_to(spans, PUBLISH_SPAN, trace_id))

    await eventually(delivered_on_both, "a publish and a delivery on each instance, linked")
    spans = exporter.get_finished_spans()

    # The request: the server span continues the caller's trace, its statements inside it.
    (server,) = [
        span for span in spans if span.kind is SpanKind.SERVER and span.context.trace_id == trace_id
    ]
    assert server.name.startswith("PATCH")
    assert server.attributes is not None
    statements = [
        span
        for span in spans
        if span.context.trace_id == trace_id
        and span.kind is SpanKind.CLIENT
        and span.attributes is not None
        and span.attributes.get("db.system") == "postgresql"
    ]
    assert statements, "the request's statements are spans of its trace"

    # The relay's publish: linked to the request's span, naming the event; Redis inside it.
    (publish,) = linked_to(spans, PUBLISH_SPAN, trace_id)
    assert publish.kind is SpanKind.PRODUCER
    assert publish.attributes is not None and publish.attributes[INSTANCE] in instances
    assert link_to(publish, trace_id) == {CHANNEL: channel, OFFSET: offset}
    (link,) = [link for link in publish.links if link.context.trace_id == trace_id]
    assert link.context.span_id == server.context.span_id
    assert any(
        span.parent is not None
        and span.parent.span_id == publish.context.span_id
        and span.attributes is not None
        and span.attributes.get("db.system") == "redis"
        for span in spans
    ), "the publish's Redis pipeline is a child of the publish span"

    # Each instance's delivery: one span per instance, linked to the request's span.
    deliveries = linked_to(spans, DELIVER_SPAN, trace_id)
    assert len(deliveries) == 2
    for delivery in deliveries:
        assert delivery.kind is SpanKind.CONSUMER
        assert delivery.attributes is not None
        assert delivery.attributes[CHANNEL] == channel
        assert delivery.attributes[OFFSET] == offset
        assert delivery.attributes[SOCKETS] == 1
        assert link_to(delivery, trace_id) == {CHANNEL: channel, OFFSET: offset}
    for ws in sockets:
        await ws.close()

    # Each socket's request is a server span too, with its ticket blanked.
    async def sockets_traced() -> bool:
        return len(socket_spans(exporter.get_finished_spans())) == 2

    await eventually(sockets_traced, "both sockets' server spans ended")
    for span in socket_spans(exporter.get_finished_spans()):
        assert span.attributes is not None
        assert str(span.attributes["http.target"]) == "/api/v1/ws?ticket=REDACTED"


async def test_with_tracing_off_nothing_is_recorded_and_rows_carry_no_context(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    aiohttp_client: AppClient,
    settings: Settings,
    db: asyncpg.Connection,
) -> None:
    # An app traced earlier in the process, now stopped, leaves nothing behind.
    traced = TestServer(create_app(settings, tracer_provider=provider))
    await traced.start_server()
    await traced.close()
    exporter.clear()

    market = await two_instances(aiohttp_client, settings, None)
    for client in market.clients:
        app = client.app
        assert isinstance(app, web.Application)
        assert app[relay_key].tracing is None
    a = market.clients[0]
    await patch_price(a, market.seller, market.listing_id, secrets.randbits(128) | 1)
    for ws in market.sockets:
        frame = await receive(ws)
        assert set(frame) == EVENT_KEYS
        assert frame["type"] == "listing.price_changed"
        await ws.close()

    contexts = await db.fetch("SELECT trace_context FROM outbox")
    assert len(contexts) >= 2
    assert {row["trace_context"] for row in contexts} == {None}
    assert exporter.get_finished_spans() == ()
