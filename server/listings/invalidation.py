"""Hear cache invalidations from Redis pub/sub and apply them to this process's near cache.

The subscription is a plain asyncio protocol, on purpose: its ``data_received`` runs
in the event loop's I/O phase, before any request handler of that loop iteration. A
writer publishes the invalidation (and waits for Redis to accept it) before it answers
its client, so the message reaches this process's socket before any request that
client can send next; it is therefore applied before that request reads the cache,
and a client reads its own write on every instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast
from urllib.parse import unquote, urlsplit

import hiredis

from server.listings.near_cache import NearCache

log = logging.getLogger(__name__)

CHANNEL = "jangteo:cache-invalidate"
RECONNECT_DELAY_S = 0.5
PING_INTERVAL_S = 1.0
SILENCE_LIMIT_S = 3.0  # no answer to our pings for this long: treat Redis as gone


def _command(*parts: str) -> bytes:
    encoded = [part.encode() for part in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in encoded
    )


class _Subscription(asyncio.Protocol):
    def __init__(self, near: NearCache, password: str | None, username: str | None) -> None:
        self.near = near
        self.password = password
        self.username = username
        self.reader = hiredis.Reader()
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.last_heard = self.loop.time()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        if self.password is not None:
            user = (self.username,) if self.username else ()
            self.transport.write(_command("AUTH", *user, self.password))
        self.transport.write(_command("SUBSCRIBE", CHANNEL))

    def ping(self) -> None:
        """Check Redis still answers; close the connection if it has gone quiet."""
        assert self.transport is not None
        if self.loop.time() - self.last_heard > SILENCE_LIMIT_S:
            self.transport.close()
        else:
            self.transport.write(_command("PING"))

    def data_received(self, data: bytes) -> None:
        self.last_heard = self.loop.time()
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if isinstance(reply, list) and len(reply) == 3:
                kind = reply[0]
                if kind == b"subscribe":
                    self.near.reset(enabled=True)
                elif kind == b"message":
                    self.near.invalidate(reply[2].decode().split())

    def connection_lost(self, exc: Exception | None) -> None:
        self.near.reset(enabled=False)
        if not self.closed.done():
            self.closed.set_result(None)


async def listen_for_invalidations(redis_url: str, near: NearCache) -> None:
    """Stay subscribed for as long as the task runs, reconnecting after any failure."""
    parts = urlsplit(redis_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    loop = asyncio.get_running_loop()
    while True:
        try:
            transport, protocol = await loop.create_connection(
                lambda: _Subscription(near, password, username), host, port
            )
        except OSError as error:
            log.warning("cache invalidation subscription failed", extra={"error": repr(error)})
            await asyncio.sleep(RECONNECT_DELAY_S)
            continue
        try:
            while not protocol.closed.done():
                await asyncio.wait([protocol.closed], timeout=PING_INTERVAL_S)
                if not protocol.closed.done():
                    protocol.ping()
        finally:
            transport.close()
        log.warning("cache invalidation subscription lost; near cache off until it is back")
        await asyncio.sleep(RECONNECT_DELAY_S)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
