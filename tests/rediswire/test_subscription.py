"""The subscription connection against a fake Redis: replies reach the subclass, and the
watchdog closes a connection only once the peer has been silent at two checks in a row."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from rediswire.subscription import Subscription, stay_subscribed

INTERVAL = 0.05
SILENCE = 0.1


class Recording(Subscription):
    client_name = "test-subscription"

    def __init__(self, redis_url: str) -> None:
        super().__init__(redis_url)
        self.replies: list[object] = []

    def on_reply(self, reply: object) -> None:
        self.replies.append(reply)


@contextlib.asynccontextmanager
async def fake_redis(answering: bool) -> AsyncIterator[str]:
    """A peer that answers every command with +OK (or never says a word)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                if answering and line.startswith(b"*"):
                    writer.write(b"+OK\r\n")
                    await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()


async def connect(url: str) -> tuple[asyncio.BaseTransport, Recording]:
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    loop = asyncio.get_running_loop()
    return await loop.create_connection(lambda: Recording(url), host, int(port))


async def test_an_answering_peer_keeps_the_connection() -> None:
    async with fake_redis(answering=True) as url:
        transport, connection = await connect(url)
        watching = asyncio.create_task(connection.watch(INTERVAL, SILENCE))
        await asyncio.sleep(10 * INTERVAL)
        assert not watching.done() and not connection.closed.done()
        assert b"OK" in connection.replies  # HELLO, SELECT, then the watchdog's pings
        watching.cancel()
        transport.close()


async def test_a_silent_peer_is_dropped_at_the_second_silent_check() -> None:
    async with fake_redis(answering=False) as url:
        loop = asyncio.get_running_loop()
        transport, connection = await connect(url)
        started = loop.time()
        await asyncio.wait_for(connection.watch(INTERVAL, SILENCE), 20 * INTERVAL)
        await asyncio.wait_for(connection.closed, 1)
        assert loop.time() - started >= SILENCE + INTERVAL  # suspect first, closed after
        transport.close()


async def test_stay_subscribed_reconnects_after_a_loss() -> None:
    lost: list[Recording | None] = []
    twice = asyncio.Event()

    def on_lost(connection: Recording | None) -> None:
        lost.append(connection)
        if len(lost) == 2:
            twice.set()

    async with fake_redis(answering=False) as url:
        task = asyncio.create_task(
            stay_subscribed(
                url,
                lambda: Recording(url),
                name="test",
                interval=INTERVAL,
                silence_limit=SILENCE,
                reconnect_delay=0.01,
                on_lost=on_lost,
            )
        )
        try:
            await asyncio.wait_for(twice.wait(), 5)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert all(isinstance(connection, Recording) for connection in lost)


@pytest.mark.parametrize("garbage", [b"-ERR nope\r\n", b"?\r\n"])
async def test_a_reply_that_makes_no_sense_closes_the_connection(garbage: bytes) -> None:
    async with fake_redis(answering=False) as url:
        transport, connection = await connect(url)
        connection.data_received(garbage)
        await asyncio.wait_for(connection.closed, 1)
        transport.close()
