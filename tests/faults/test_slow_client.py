"""A client that stops reading: closed with 1013 once its bounded queue is full, while
the process holds no more than that queue for it, the other subscribers get every event,
and the slow client, reading again, catches up by resuming with ``since``."""

from __future__ import annotations

import asyncpg
import orjson
import pytest
from aiohttp import WSMsgType

from realtime import connection as connection_module
from realtime.keys import gateway_key
from realtime.writer import HIGH_WATER
from server.settings import Settings
from tests.conftest import ClientFactory
from tests.realtime.test_gateway import (
    TIMEOUT,
    JsonObject,
    metric,
    open_socket,
    published,
    receive,
    subscribed,
)
from tests.support import sign_up

SEND_QUEUE = 4
BLOB = 60_000
READERS = 3


async def test_a_client_that_stops_reading_is_closed_with_1013_and_catches_up_by_resume(
    make_client: ClientFactory,
    settings: Settings,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The close frame waits behind what the slow client has not read; give it time to read.
    monkeypatch.setattr(connection_module, "CLOSE_TIMEOUT_S", 60.0)
    client = await make_client(settings.replace(ws_send_queue=SEND_QUEUE))
    gateway = client.app[gateway_key]
    account = await sign_up(client)
    slow = await open_socket(client, account)
    readers = [await open_socket(client, account) for _ in range(READERS)]
    channel = "listing:1"
    assert await subscribed(slow, channel) == 0
    for reader in readers:
        assert await subscribed(reader, channel) == 0
    assert slow._response.connection is not None
    slow_transport = slow._response.connection.transport
    assert slow_transport is not None
    slow_transport.pause_reading()

    # Rounds of 4 events of 60 kB: the readers take each round before the next one, so
    # their queues never hold more than two frames; the slow one's buffers fill up.
    received: list[list[JsonObject]] = [[] for _ in readers]
    most_held = 0
    for _ in range(1000):
        await db.execute(
            "INSERT INTO outbox (channel, type, data) SELECT $1, 'test.big',"
            " jsonb_build_object('n', n, 'blob', repeat('x', $3::int))"
            " FROM generate_series($2::int, $2::int + 3) AS n",
            channel,
            len(received[0]),
            BLOB,
        )
        for reader, frames in zip(readers, received, strict=True):
            frames += [await receive(reader) for _ in range(4)]
        for connection in gateway.connections:  # what the process holds for each socket
            queue = connection.writer.queue or ()
            held = sum(map(len, queue)) + connection.writer.transport.get_write_buffer_size()
            most_held = max(most_held, held)
        if await metric(client, "jangteo_ws_closes_total", '{reason="slow"}') >= 1:
            break
    assert await metric(client, "jangteo_ws_closes_total", '{reason="slow"}') == 1
    # Bounded: the queue's frames plus the transport's buffer, never the whole backlog.
    assert most_held <= (SEND_QUEUE + 2) * (BLOB + 1000) + HIGH_WATER, most_held

    # One more round: every other subscriber is unaffected and got everything, in order.
    await db.execute(
        "INSERT INTO outbox (channel, type, data) VALUES ($1, 'test.small', '{}')", channel
    )
    expected = None
    for reader, frames in zip(readers, received, strict=True):
        frames.append(await receive(reader))
        expected = expected or await published(db, channel)
        assert frames == expected

    slow_transport.resume_reading()
    got: list[JsonObject] = []
    while True:
        message = await slow.receive(timeout=TIMEOUT)
        if message.type is not WSMsgType.TEXT:
            break
        got.append(orjson.loads(message.data))
    assert message.type is WSMsgType.CLOSE, message
    assert (message.data, message.extra) == (1013, "too slow; resume with since")
    assert expected is not None
    assert 0 < len(got) < len(expected)
    assert got == expected[: len(got)]  # a gapless prefix...

    resumed = await open_socket(client, account)  # ...so it resumes where it stopped
    assert await subscribed(resumed, channel, since=got[-1]["offset"]) == expected[-1]["offset"]
    rest = [await receive(resumed) for _ in range(len(expected) - len(got))]
    assert got + rest == expected
