"""The per-process near cache: guarded fills, dropped by base, served only on a lease."""

from __future__ import annotations

import asyncio
import math
import time

from server import keys
from server.listings.cache import detail_base
from server.listings.near_cache import NearCache
from server.settings import Settings
from tests.conftest import ClientFactory
from tests.support import sign_up


def serving(near: NearCache) -> NearCache:
    """As if subscribed, with a lease that never runs out."""
    near.reset(enabled=True)
    near.renew(math.inf)
    return near


def test_entries_are_kept_and_dropped_by_base() -> None:
    near = serving(NearCache())
    near.put("cache:listing:1", "", b"one", near.epoch)
    near.put("cache:feed:seoul-mapo", "limit20", b"feed", near.epoch)
    assert near.get("cache:listing:1") == b"one"
    assert near.get("cache:feed:seoul-mapo", "limit20") == b"feed"
    near.invalidate(["cache:feed:seoul-mapo"])
    assert near.get("cache:feed:seoul-mapo", "limit20") is None
    assert "cache:feed:seoul-mapo" not in near
    assert near.get("cache:listing:1") == b"one"


def test_a_value_fetched_across_an_invalidation_is_not_kept() -> None:
    near = serving(NearCache())
    epoch = near.epoch
    near.invalidate(["cache:listing:9"])  # a change lands while the value was being fetched
    near.put("cache:listing:1", "", b"maybe stale", epoch)
    assert near.get("cache:listing:1") is None


def test_nothing_is_served_or_kept_while_disabled() -> None:
    near = NearCache()
    near.put("cache:listing:1", "", b"x", near.epoch)
    assert near.get("cache:listing:1") is None
    serving(near)
    near.put("cache:listing:1", "", b"x", near.epoch)
    near.reset(enabled=False)
    assert near.get("cache:listing:1") is None


def test_copies_are_served_only_while_the_lease_runs() -> None:
    near = NearCache()
    near.reset(enabled=True)
    near.put("cache:listing:1", "", b"x", near.epoch)
    assert near.get("cache:listing:1") is None  # subscribed, but no lease yet
    near.renew(time.monotonic() + 60)
    assert near.get("cache:listing:1") == b"x"
    near.renew(time.monotonic() - 1)  # an older lease never shortens a newer one
    assert near.get("cache:listing:1") == b"x"
    near.lease_until = time.monotonic() - 1  # ran out
    assert near.get("cache:listing:1") is None
    assert "cache:listing:1" in near  # kept, and served again once renewed
    near.renew(time.monotonic() + 60)
    assert near.get("cache:listing:1") == b"x"


def test_a_new_subscription_earns_its_own_lease() -> None:
    near = serving(NearCache())
    near.reset(enabled=False)
    near.reset(enabled=True)
    near.put("cache:listing:1", "", b"x", near.epoch)
    assert near.get("cache:listing:1") is None


def test_size_is_bounded_least_recently_used_first() -> None:
    near = serving(NearCache(max_entries=2))
    for n in range(3):
        near.put(f"cache:listing:{n}", "", b"%d" % n, near.epoch)
    assert near.get("cache:listing:0") is None
    assert near.get("cache:listing:2") == b"2"


def test_a_closing_subscription_stops_serving_before_it_is_reported_lost() -> None:
    near = serving(NearCache())
    near.put("cache:listing:1", "", b"x", near.epoch)
    closing = False
    near.bind(lambda: closing)
    assert near.get("cache:listing:1") == b"x"
    closing = True
    assert near.get("cache:listing:1") is None


async def test_app_keeps_local_copies_and_drops_them_on_change(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings)
    near = client.app[keys.listing_cache_key].near
    for _ in range(100):
        if near.enabled:
            break
        await asyncio.sleep(0.05)
    assert near.enabled
    seller = await sign_up(client)
    created = await client.post(
        "/api/v1/listings",
        json={"title": "lamp", "price": 5000, "category": "furniture"},
        headers=seller.auth,
    )
    listing = await created.json()
    path = f"/api/v1/listings/{listing['id']}"
    await client.get(path)
    assert detail_base(listing["id"]) in near
    patched = await client.patch(
        path, json={"price": 4000}, headers={**seller.auth, "If-Match": created.headers["ETag"]}
    )
    assert patched.status == 200
    assert detail_base(listing["id"]) not in near
    assert (await (await client.get(path)).json())["price"] == 4000
