"""The Redis broker against a real Redis: subscriptions across reconnects, and names.

Production serves on uvloop, the tests' own loop is asyncio's: the tests whose outcome
depends on how a transport behaves once closed run on both. Connections are killed one at
a time by their address, so other users of the same Redis are left alone. Every wait is
on a condition; TIMEOUT only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
import uvloop

from realtime import broker_redis
from realtime.broker_redis import RedisBroker, _Subscription
from realtime.keys import broker_key
from server.settings import Settings
from tests.conftest import ClientFactory

TIMEOUT = 10.0
WATCHDOG_S = 1.0

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
LOOPS: dict[str, LoopFactory] = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    """Runs a test's coroutine on a loop of the parameter's kind."""
    factory = LOOPS[request.param]

    def run(main: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)

    return run


def unique(name: str) -> str:
    return f"test-{name}-{uuid.uuid4().hex[:12]}"


class Sink:
    """What the broker delivered, per channel."""

    def __init__(self) -> None:
        self.messages: dict[str, list[bytes]] = collections.defaultdict(list)
        self.resubscribed = 0
        self.changed = asyncio.Event()

    def on_message(self, channel: str, payload: bytes) -> None:
        self.messages[channel].append(payload)
        self.changed.set()

    def on_resubscribed(self, channels: Collection[str] | None = None) -> None:
        self.resubscribed += 1
        self.changed.set()

    async def until(self, check: Callable[[], bool]) -> bool:
        """Whether ``check`` comes to hold (within TIMEOUT); looked at on every delivery,
        and every few milliseconds for what changes without one (the broker's state)."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while not check():
                    self.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), 0.01)
        except TimeoutError:
            return False
        return True

    async def received(self, channels: Collection[str]) -> None:
        """Wait for a message on each of ``channels``."""
        if not await self.until(lambda: all(self.messages.get(c) for c in channels)):
            missing = sorted(c for c in channels if not self.messages.get(c))
            pytest.fail(f"{len(missing)} of {len(channels)} channels got nothing: {missing[:5]}")

    async def got(self, channel: str, payload: bytes) -> None:
        if not await self.until(lambda: payload in self.messages.get(channel, ())):
            pytest.fail(f"{payload!r} did not arrive on {channel}: {dict(self.messages)}")


@contextlib.asynccontextmanager
async def running_broker(redis_url: str, **kwargs: Any) -> AsyncIterator[tuple[RedisBroker, Sink]]:
    """A broker with its event subscription live, delivering to a Sink."""
    client = aioredis.Redis.from_url(redis_url)
    broker = RedisBroker(redis_url, client, watchdog_interval=WATCHDOG_S, **kwargs)
    sink = Sink()
    broker.bind(sink)
    try:
        async with asyncio.timeout(TIMEOUT):
            await broker.wait_live()
        yield broker, sink
    finally:
        await broker.close()
        await client.aclose()


async def kill(admin: aioredis.Redis, connection: _Subscription) -> None:
    """Kill this one connection, as `CLIENT KILL` or a network fault would."""
    assert connection.transport is not None
    host, port = connection.transport.get_extra_info("sockname")[:2]
    assert await admin.client_kill_filter(addr=f"{host}:{port}") == 1


async def healthy(broker: RedisBroker, sink: Sink, after: int) -> _Subscription:
    """Wait for the ``after``+1-th live subscription; returns its connection."""
    live = await sink.until(lambda: sink.resubscribed > after and broker.healthy)
    assert live, f"the event subscription is not live again ({sink.resubscribed} times so far)"
    assert broker.connection is not None
    return broker.connection


# -- reconnects ------------------------------------------------------------------------------


def test_a_channel_subscribed_as_a_connection_is_made_is_subscribed_on_it(
    run: Callable[[Coroutine[Any, Any, None]], None],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The new connection takes its snapshot of the channels in connection_made; a channel
    subscribed right after it (before the connection is set up) must go on that connection."""
    made = _Subscription.connection_made
    early = [unique("first-connection"), unique("reconnection")]
    subscribing: list[asyncio.Task[None]] = []

    def connection_made(self: _Subscription, transport: asyncio.BaseTransport) -> None:
        made(self, transport)
        if len(subscribing) < len(early):  # right after the snapshot, before it is set up
            channel = early[len(subscribing)]
            task = asyncio.get_running_loop().create_task(self.broker.subscribe(channel))
            subscribing.append(task)

    monkeypatch.setattr(_Subscription, "connection_made", connection_made)
    monkeypatch.setattr(broker_redis, "RECONNECT_DELAY_S", 0.02)

    async def main() -> None:
        admin = aioredis.Redis.from_url(redis_url)
        try:
            async with running_broker(redis_url) as (broker, sink):
                first = await healthy(broker, sink, 0)
                await asyncio.wait_for(subscribing[0], TIMEOUT)
                await broker.publish([(early[0], b"1")])
                await sink.received({early[0]})

                await kill(admin, first)
                await healthy(broker, sink, 1)
                assert len(subscribing) == 2
                await asyncio.wait_for(subscribing[1], TIMEOUT)
                await broker.publish([(channel, b"2") for channel in early])
                await sink.received(early)
                await sink.got(early[0], b"2")
                assert sink.messages == {early[0]: [b"1", b"2"], early[1]: [b"2"]}
        finally:
            await admin.aclose()

    run(main())


def test_subscribe_and_unsubscribe_on_a_closed_connection_return_without_raising(
    run: Callable[[Coroutine[Any, Any, None]], None], redis_url: str
) -> None:
    async def main() -> None:
        admin = aioredis.Redis.from_url(redis_url)
        client = aioredis.Redis.from_url(redis_url)
        broker = RedisBroker(redis_url, client, watchdog_interval=WATCHDOG_S)
        broker.sink = sink = Sink()  # no reconnect loop: this one connection only
        url = urlsplit(redis_url)
        loop = asyncio.get_running_loop()
        transport, connection = await loop.create_connection(
            lambda: _Subscription(broker), url.hostname or "127.0.0.1", url.port or 6379
        )
        try:
            assert await sink.until(lambda: connection.ready), "the connection never got ready"
            await kill(admin, connection)
            async with asyncio.timeout(TIMEOUT):
                await connection.closed  # the peer closed it: connection_lost came
            channel = broker.prefix + unique("closed")
            try:
                async with asyncio.timeout(TIMEOUT):
                    await connection.subscribe(channel)
            except TimeoutError:
                pytest.fail("the subscribe waits for a confirmation a closed connection never gets")
            connection.unsubscribe(channel)
        finally:
            transport.close()
            connection.release_waiters()
            await admin.aclose()
            await client.aclose()

    run(main())


CHANNELS_PER_RECONNECT = 40
RECONNECTS = 5


def test_channels_subscribed_while_the_subscription_is_killed_repeatedly_all_get_messages(
    run: Callable[[Coroutine[Any, Any, None]], None],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(broker_redis, "RECONNECT_DELAY_S", 0.0)  # reconnect at once

    async def main() -> None:
        admin = aioredis.Redis.from_url(redis_url)
        channels: list[str] = []
        try:
            async with running_broker(redis_url) as (broker, sink):
                for reconnect in range(RECONNECTS):
                    connection = await healthy(broker, sink, reconnect)
                    await kill(admin, connection)
                    # Subscribe one channel per turn of the loop until the broker is live
                    # again, so subscribes meet every step of the reconnect (a closing
                    # transport, none, a new one being made), then a few more once live.
                    extra = CHANNELS_PER_RECONNECT
                    while extra:
                        channels.append(unique(f"storm-{reconnect}"))
                        await broker.subscribe(channels[-1])
                        await asyncio.sleep(0)
                        if sink.resubscribed > reconnect + 1 and broker.healthy:
                            extra -= 1
                await healthy(broker, sink, RECONNECTS)
                assert set(channels) <= broker.channels
                await broker.publish([(channel, b"event") for channel in channels])
                await sink.received(set(channels))
                assert all(sink.messages[channel] == [b"event"] for channel in channels)
        finally:
            await admin.aclose()

    run(main())


# -- names -----------------------------------------------------------------------------------


async def test_two_deployments_on_one_redis_do_not_see_each_others_events(
    redis_url: str,
) -> None:
    channel = unique("shared-name")
    async with (
        running_broker(redis_url, deployment="market-a") as (alpha, alpha_sink),
        running_broker(redis_url, deployment="market-b") as (beta, beta_sink),
    ):
        await alpha.subscribe(channel)
        await beta.subscribe(channel)
        # Alternating, each published after the previous one arrived: a message that
        # crossed over would arrive before the next one of its own deployment.
        for sender, sink, payload in [
            (alpha, alpha_sink, b"a1"),
            (beta, beta_sink, b"b1"),
            (alpha, alpha_sink, b"a2"),
            (beta, beta_sink, b"b2"),
        ]:
            await sender.publish([(channel, payload)])
            await sink.got(channel, payload)
        assert alpha_sink.messages == {channel: [b"a1", b"a2"]}
        assert beta_sink.messages == {channel: [b"b1", b"b2"]}


async def test_the_app_names_its_channels_by_its_deployment(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings.replace(deployment="market-b"))
    broker = client.app[broker_key]
    assert isinstance(broker, RedisBroker) and broker.prefix.startswith("market-b:")
