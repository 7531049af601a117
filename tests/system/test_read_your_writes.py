"""A write through one instance is seen by the very next read through another, cache or not."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from tests.support import PASSWORD, ServerProcess


async def _hammer(http: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> None:
    """Keep the reading instance busy, so its event loop has many requests in flight."""
    while not stop.is_set():
        async with http.get(url) as response:
            await response.read()


async def test_each_read_on_the_other_instance_sees_the_write(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    writer, reader = two_servers
    async with aiohttp.ClientSession() as http:
        signup = await http.post(
            f"{writer.url}/api/v1/auth/signup",
            json={
                "email": "ryw@example.com",
                "password": PASSWORD,
                "nickname": "r",
                "region": "seoul-mapo",
            },
        )
        auth = {"Authorization": f"Bearer {(await signup.json())['access_token']}"}
        created = await http.post(
            f"{writer.url}/api/v1/listings",
            json={"title": "desk", "price": 1000, "category": "furniture"},
            headers=auth,
        )
        listing_id = (await created.json())["id"]
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
