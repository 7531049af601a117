"""A raw RESP3 subscription connection that stays open: what both of jangteo's subscribers,
the realtime broker and the near-cache invalidation, are made of.

Replies are parsed with hiredis inside ``data_received``, so a message goes from the
socket to its handler in the same call, with no task switch: the broker hands an event to
the hub there, the invalidation drops its entries and sends its ack there. RESP3 lets a
subscribed connection send ordinary commands too (PING, and the invalidation's acks).

A connection proves it is alive only by answers read back (a PING that merely lands in a
kernel buffer proves nothing), so each one pings on itself every ``interval``. Silence
longer than ``silence_limit`` is acted on only at the second check in a row: after a
stalled event loop the answers may be waiting in the socket, and are read in between.
``stay_subscribed`` connects again after any loss.

The two subscribers use two connections of their own (see ``realtime/broker_redis.py``),
and each subclass says what it subscribes to and what a reply means.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import hiredis
from redis.exceptions import RedisError

from rediswire.codec import address, command, hello

log = logging.getLogger(__name__)


class Subscription(asyncio.Protocol):
    """One connection's life: HELLO and ``opening()``, then replies to ``on_reply``."""

    client_name = "jangteo"  # CLIENT SETNAME; subclasses name themselves

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.reader = hiredis.Reader()
        self.loop = asyncio.get_running_loop()
        self.last_heard = self.loop.time()
        self.suspect = False  # silent at the last check; closed if still silent at the next
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.Transport | None = None

    # -- what a subclass says --------------------------------------------------------------

    def opening(self) -> list[bytes]:
        """Commands written right after HELLO, in the same write."""
        return []

    def on_reply(self, reply: object) -> None:
        """A reply or push message; raise ValueError on one that makes no sense."""
        raise NotImplementedError

    def ping(self) -> bytes:
        """The watchdog's PING; its answer arrives as a reply like any other."""
        return command("PING")

    def on_error_reply(self, error: hiredis.ReplyError) -> bool:
        """An error reply; return True when it is expected and handled (a cluster's
        ``MOVED``), False to treat it as a reply that makes no sense."""
        return False

    def on_bad_reply(self, error: Exception) -> None:
        """A reply that makes no sense: called before the connection is closed."""
        log.warning("bad reply on a subscription", extra={"client": self.client_name})

    # -- the protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(b"".join([hello(self.redis_url, self.client_name), *self.opening()]))

    def send(self, data: bytes) -> bool:
        """Write unless the connection is closing; whether it was written."""
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    def data_received(self, data: bytes) -> None:
        self.last_heard = self.loop.time()
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                if isinstance(reply, hiredis.ReplyError):
                    if self.on_error_reply(reply):
                        continue
                    raise ValueError(f"redis refused: {reply}")
                self.on_reply(reply)
        except (ValueError, hiredis.ProtocolError) as error:
            self.on_bad_reply(error)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    async def watch(self, interval: float, silence_limit: float) -> None:
        """Ping every ``interval`` until the connection closes, or close it when Redis has
        been silent for longer than ``silence_limit`` at two checks in a row."""
        while not self.closed.done():
            await asyncio.wait([self.closed], timeout=interval)
            if self.closed.done():
                return
            if self.loop.time() - self.last_heard <= silence_limit:
                self.suspect = False
            elif self.suspect:
                log.warning("Redis stopped answering", extra={"client": self.client_name})
                assert self.transport is not None
                self.transport.close()
                return
            else:
                self.suspect = True
            self.send(self.ping())


S = TypeVar("S", bound=Subscription)


async def stay_subscribed(
    redis_url: str,
    connect: Callable[[], S],
    *,
    name: str,
    interval: float,
    silence_limit: float,
    reconnect_delay: float,
    connect_timeout: float | None = None,
    on_lost: Callable[[S | None], None] = lambda connection: None,
    locate: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """Keep one connection made by ``connect`` open for as long as the task runs.

    ``name`` says which subscription in the logs. ``on_lost`` is called after every
    loss, with the connection (None when connecting failed), before the
    ``reconnect_delay``. ``locate``, when given, names the server to connect to before
    each attempt (a cluster's master of a slot, which a failover changes).
    """
    loop = asyncio.get_running_loop()
    while True:
        try:
            host, port = address(await locate() if locate is not None else redis_url)
            transport, connection = await asyncio.wait_for(
                loop.create_connection(connect, host, port), timeout=connect_timeout
            )
        except (OSError, TimeoutError, RedisError) as error:
            log.warning("subscription failed", extra={"subscription": name, "error": repr(error)})
            on_lost(None)
            await asyncio.sleep(reconnect_delay)
            continue
        try:
            await connection.watch(interval, silence_limit)
        finally:
            transport.close()
            on_lost(connection)
        log.warning("subscription lost; reconnecting", extra={"subscription": name})
        await asyncio.sleep(reconnect_delay)
