"""PostgreSQL black-holed (it accepts connections and never answers) under requests.

Nothing waits for it longer than its timeouts (acquire, connect, statement): requests
answer 503 with Retry-After, or 200 when the cache can answer alone. When the network
heals, the pool recovers by itself and acknowledged writes are all there.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest

from loadtests.chaos.proxy import TcpProxy
from server.embedded.redis import EmbeddedRedis
from tests.faults.support import Timed, eventually, timed, wait_ready
from tests.support import ServerProcess, server_env
from tests.system.realtime_support import User, create_listing, sign_up

ACQUIRE_S, CONNECT_S, STATEMENT_S = 1.0, 1.0, 1.0
# A statement is cancelled by the server after STATEMENT_S and by the client one second
# later (the server cannot answer here); a request may first wait ACQUIRE_S for a
# connection. Twice that, for a loaded machine.
LONGEST_S = 2 * (ACQUIRE_S + STATEMENT_S + 1.0)
WORKERS = 4


@pytest.fixture
def server(
    own_postgres: str, postgres_proxy: TcpProxy, own_redis: EmbeddedRedis
) -> Iterator[ServerProcess]:
    database = own_postgres.replace(f":{postgres_proxy.target_port}/", f":{postgres_proxy.port}/")
    env = server_env(
        database,
        own_redis.url,
        PG_ACQUIRE_TIMEOUT=str(ACQUIRE_S),
        PG_CONNECT_TIMEOUT=str(CONNECT_S),
        PG_STATEMENT_TIMEOUT=str(STATEMENT_S),
    )
    process = ServerProcess(env).start()
    yield process
    process.stop()


async def _work(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    user: User,
    listing_id: int,
    stop: asyncio.Event,
    answers: list[Timed],
    acked: list[int],
) -> None:
    base = f"{server.url}/api/v1"
    for n in itertools.count(1):
        if stop.is_set():
            return
        answers.append(await timed(http, "me", "GET", f"{base}/me", headers=user.auth))
        answers.append(await timed(http, "listing", "GET", f"{base}/listings/{listing_id}"))
        edit = await timed(
            http, "edit", "PATCH", f"{base}/listings/{listing_id}",
            json={"price": 1000 + n}, headers={**user.auth, "If-Match": "*"},
        )  # fmt: skip
        answers.append(edit)
        if edit.status == 200:
            acked.append(1000 + n)
        await asyncio.sleep(0.05)


async def test_a_silent_postgres_costs_no_request_more_than_its_timeouts(
    server: ServerProcess, postgres_proxy: TcpProxy, own_postgres: str
) -> None:
    async with aiohttp.ClientSession() as http:
        await wait_ready(http, server)
        users = [await sign_up(http, server) for _ in range(WORKERS)]
        listings = [await create_listing(http, server, user) for user in users]

        postgres_proxy.blackhole()
        stop = asyncio.Event()
        answers: list[Timed] = []
        acked: list[list[int]] = [[] for _ in users]
        workers = [
            asyncio.create_task(_work(http, server, user, listing, stop, answers, prices))
            for user, listing, prices in zip(users, listings, acked, strict=True)
        ]
        await wait_ready(http, server, 503)

        async def refused() -> bool:  # every worker had its edits refused a few times
            return sum(a.what == "edit" and a.status == 503 for a in answers) >= 3 * WORKERS

        await eventually(refused, "edits refused while PostgreSQL is silent")
        stop.set()
        await asyncio.gather(*workers)
        postgres_proxy.restore()
        await wait_ready(http, server)  # recovered without a restart

        for answer in answers:
            assert answer.status in (200, 503), answer
            if answer.status == 503:
                assert answer.retry_after is not None, answer
            assert answer.seconds < LONGEST_S, answer
        assert any(answer.status == 503 for answer in answers)

        # After the outage, everything works again and every acknowledged edit is stored.
        me = await timed(http, "me", "GET", f"{server.url}/api/v1/me", headers=users[0].auth)
        assert me.status == 200, me
        db = await asyncpg.connect(own_postgres)
        try:
            for listing_id, prices in zip(listings, acked, strict=True):
                if prices:
                    price = await db.fetchval(
                        "SELECT price FROM listings WHERE id = $1", listing_id
                    )
                    assert price >= prices[-1]
        finally:
            await db.close()
