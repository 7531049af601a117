"""The Redis circuit breaker's states, on a clock the test moves by hand."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from server.embedded.process import free_port
from server.redis_breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    RedisBreaker,
    RedisUnavailable,
    guarded_pool,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **changes: object) -> RedisBreaker:
    options: dict[str, object] = {"failures": 3, "cooldown": 2.0, "probe_timeout": 5.0}
    options.update(changes)
    return RedisBreaker(clock=clock, registry=CollectorRegistry(), **options)  # type: ignore[arg-type]


def test_a_timeout_opens_it_at_once_and_calls_then_fail_fast() -> None:
    clock = Clock()
    subject = breaker(clock)
    subject.admit()
    subject.failed(timed_out=True)
    assert subject.state == OPEN
    with pytest.raises(RedisUnavailable):
        subject.admit()
    assert issubclass(RedisUnavailable, RedisConnectionError)  # callers' fallbacks apply


def test_connection_errors_open_it_only_in_a_row() -> None:
    clock = Clock()
    subject = breaker(clock)
    for _ in range(2):
        subject.failed(timed_out=False)
    subject.succeeded()
    for _ in range(2):
        subject.failed(timed_out=False)
    assert subject.state == CLOSED
    subject.admit()
    subject.failed(timed_out=False)
    assert subject.state == OPEN


def test_after_the_cooldown_one_probe_goes_through_and_its_answer_closes_it() -> None:
    clock = Clock()
    subject = breaker(clock)
    subject.failed(timed_out=True)
    clock.now += 2.1
    subject.admit()  # the probe
    assert subject.state == HALF_OPEN
    with pytest.raises(RedisUnavailable):
        subject.admit()  # everybody else still fails fast while it runs
    subject.succeeded()
    assert subject.state == CLOSED
    subject.admit()


def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    clock = Clock()
    subject = breaker(clock)
    subject.failed(timed_out=False)
    subject.failed(timed_out=False)
    subject.failed(timed_out=False)
    clock.now += 2.1
    subject.admit()
    subject.failed(timed_out=False)  # one failure is enough while half-open
    assert subject.state == OPEN
    clock.now += 1.0
    with pytest.raises(RedisUnavailable):
        subject.admit()


def test_a_probe_that_never_reports_lets_another_one_through() -> None:
    clock = Clock()
    subject = breaker(clock)
    subject.failed(timed_out=True)
    clock.now += 2.1
    subject.admit()  # then cancelled: neither succeeded() nor failed()
    clock.now += 5.1
    subject.admit()
    assert subject.state == HALF_OPEN


def test_switched_off_it_never_refuses() -> None:
    clock = Clock()
    subject = breaker(clock, enabled=False)
    subject.failed(timed_out=True)
    subject.admit()
    assert not subject.refusing


# -- in the app's pool, against real sockets --------------------------------------------------


def _client(url: str, subject: RedisBreaker) -> aioredis.Redis:
    pool = guarded_pool(url, subject, max_connections=4, timeout=0.5)
    return aioredis.Redis.from_pool(pool)


async def test_refused_connections_open_it_and_then_calls_fail_without_trying() -> None:
    subject = breaker(Clock(), cooldown=60.0)
    client = _client(f"redis://127.0.0.1:{free_port()}/0", subject)  # nothing listens there
    try:
        for _ in range(3):
            with pytest.raises(RedisConnectionError) as refused:
                await client.get("key")
            assert not isinstance(refused.value, RedisUnavailable)
        with pytest.raises(RedisUnavailable):
            await client.get("key")
    finally:
        await client.aclose()


async def test_an_answer_even_an_error_reply_closes_it(redis_url: str) -> None:
    clock = Clock()
    subject = breaker(clock)
    client = _client(redis_url, subject)
    try:
        subject.failed(timed_out=True)
        with pytest.raises(RedisUnavailable):
            await client.ping()
        clock.now += 2.1
        with pytest.raises(ResponseError):
            await client.eval("return redis.error_reply('no')", 0)  # the probe: Redis answered
        assert subject.state == CLOSED
        assert await client.ping()
    finally:
        await client.aclose()
