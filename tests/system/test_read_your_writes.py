"""A write through one instance is seen by the very next read through another, cache or not."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import aiohttp

from tests.support import PASSWORD, ServerProcess


async def _hammer(http: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> None:
    """Keep the reading instance busy, so its event loop has many requests in flight."""
    while not stop.is_set():
        async with http.get(url) as response:
            await response.read()


async def _listing_for_sale(
    http: aiohttp.ClientSession, server: ServerProcess
) -> tuple[dict[str, str], int]:
    """A seller's token header and a listing of theirs priced 1000, created on ``server``."""
    signup = await http.post(
        f"{server.url}/api/v1/auth/signup",
        json={
            "email": "ryw@example.com",
            "password": PASSWORD,
            "nickname": "r",
            "region": "seoul-mapo",
        },
    )
    auth = {"Authorization": f"Bearer {(await signup.json())['access_token']}"}
    created = await http.post(
        f"{server.url}/api/v1/listings",
        json={"title": "desk", "price": 1000, "category": "furniture"},
        headers=auth,
    )
    listing_id: int = (await created.json())["id"]
    return auth, listing_id


async def _price(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as response:
        price: int = (await response.json())["price"]
        return price


async def test_each_read_on_the_other_instance_sees_the_write(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    writer, reader = two_servers
    async with aiohttp.ClientSession() as http:
        auth, listing_id = await _listing_for_sale(http, writer)
        read_url = f"{reader.url}/api/v1/listings/{listing_id}"
        feed_url = f"{reader.url}/api/v1/listings?region=seoul-mapo"

        stop = asyncio.Event()
        background = [asyncio.create_task(_hammer(http, read_url, stop)) for _ in range(16)]
        stale: list[tuple[int, int]] = []
        try:
            for price in range(1001, 1101):
                patched = await http.patch(
                    f"{writer.url}/api/v1/listings/{listing_id}",
                    json={"price": price},
                    headers={**auth, "If-Match": "*"},
                )
                assert patched.status == 200
                seen = (await (await http.get(read_url)).json())["price"]
                feed = (await (await http.get(feed_url)).json())["items"][0]["price"]
                if seen != price or feed != price:
                    stale.append((price, seen))
        finally:
            stop.set()
            for task in background:
                with contextlib.suppress(aiohttp.ClientError):
                    await task
        assert stale == []

        metrics = await (await http.get(f"{reader.url}/metrics")).text()
        assert 'jangteo_cache_lookups_total{kind="detail",outcome="local"}' in metrics


async def test_a_stalled_instance_neither_blocks_writes_nor_serves_its_old_copy(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    writer, reader = two_servers
    assert reader.process is not None
    async with aiohttp.ClientSession() as http:
        auth, listing_id = await _listing_for_sale(http, writer)
        read_url = f"{reader.url}/api/v1/listings/{listing_id}"
        for _ in range(20):
            assert await _price(http, read_url) == 1000
        reader_metrics = await (await http.get(f"{reader.url}/metrics")).text()
        assert 'kind="detail",outcome="local"' in reader_metrics  # it keeps a near copy

        os.kill(reader.process.pid, signal.SIGSTOP)  # it can neither confirm nor serve
        try:
            patched = await http.patch(
                f"{writer.url}/api/v1/listings/{listing_id}",
                json={"price": 2000},
                headers={**auth, "If-Match": "*"},
            )
            assert patched.status == 200  # answered without the stalled instance
        finally:
            os.kill(reader.process.pid, signal.SIGCONT)

        assert await _price(http, read_url) == 2000
        metrics = await (await http.get(f"{writer.url}/metrics")).text()
        assert "jangteo_cache_unconfirmed_invalidations_total 1.0" in metrics
