"""The page rides out the loss of its instance: reconnecting, then live, with nothing missed."""

from __future__ import annotations

import aiohttp
import pytest
from playwright.async_api import Browser

from tests.browser.support import (
    RECONNECT_TIMEOUT_MS,
    PageErrors,
    Screenshots,
    expect,
    phone_page,
    restart_on,
)
from tests.support import ServerProcess, start_servers, stop_servers
from tests.system.realtime_support import create_listing, set_price, sign_up


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("demo_accounts")
async def test_the_page_reconnects_and_resumes_every_event_it_missed(
    browser: Browser, browser_env: dict[str, str], screenshots: Screenshots
) -> None:
    page_server, other = start_servers(ServerProcess(browser_env), ServerProcess(browser_env))
    servers = [page_server, other]
    try:
        async with aiohttp.ClientSession() as http:
            seller = await sign_up(http, other)
            listing_id = await create_listing(http, other, seller)  # "lamp", ₩1,000
            errors = PageErrors()
            page = await phone_page(browser, page_server.url, errors)
            status = page.locator("#status")
            await page.goto(f"/#/listing/{listing_id}")
            await page.locator('.account[data-email="demo3@jangteo.dev"]').click()
            await expect(status).to_have_attribute("data-state", "live")
            await expect(page.locator(".listing .price .now")).to_have_text("₩1,000")
            await set_price(http, other, seller, listing_id, 900)
            await expect(page.locator(".activity li")).to_have_count(1)
            await screenshots.take("live", viewer=page)

            # The page's instance goes away (SIGTERM: its sockets close with 1001).
            page_server.stop()
            await expect(status).to_have_attribute(
                "data-state", "reconnecting", timeout=RECONNECT_TIMEOUT_MS
            )
            await screenshots.take("reconnecting", viewer=page)
            # Changes made meanwhile, through the instance that stayed up.
            await set_price(http, other, seller, listing_id, 800)
            await set_price(http, other, seller, listing_id, 700)

            servers.append(restart_on(page_server.port, browser_env))
            await expect(status).to_have_attribute(
                "data-state", "live", timeout=RECONNECT_TIMEOUT_MS
            )
            # Replayed with `since`, in order, once each: the activity shows every change.
            changes = page.locator('.activity li[data-type="listing.price_changed"]')
            await expect(changes).to_have_count(3)
            await expect(changes).to_contain_text(["₩800 → ₩700", "₩900 → ₩800", "₩1,000 → ₩900"])
            await expect(page.locator(".listing .price .now")).to_have_text("₩700")
            await screenshots.take("caught-up", viewer=page)
            assert errors.uncaught == []
    finally:
        stop_servers(*servers)


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("demo_accounts")
async def test_a_resync_reloads_the_listing_over_rest(
    browser: Browser, browser_env: dict[str, str], screenshots: Screenshots
) -> None:
    page_server, other = start_servers(ServerProcess(browser_env), ServerProcess(browser_env))
    servers = [page_server, other]
    try:
        async with aiohttp.ClientSession() as http:
            seller = await sign_up(http, other)
            listing_id = await create_listing(http, other, seller)
            errors = PageErrors()
            page = await phone_page(browser, page_server.url, errors)
            status = page.locator("#status")
            await page.goto(f"/#/listing/{listing_id}")
            await page.locator('.account[data-email="demo3@jangteo.dev"]').click()
            await expect(status).to_have_attribute("data-state", "live")
            await expect(page.locator(".listing .price .now")).to_have_text("₩1,000")

            page_server.stop()
            await expect(status).to_have_attribute(
                "data-state", "reconnecting", timeout=RECONNECT_TIMEOUT_MS
            )
            for price in (900, 800, 700):
                await set_price(http, other, seller, listing_id, price)
            # The instance comes back replaying at most one event: the page is too far behind.
            short_replay = {**browser_env, "JANGTEO_WS_REPLAY_LIMIT": "1"}
            servers.append(restart_on(page_server.port, short_replay))
            await expect(status).to_have_attribute(
                "data-state", "live", timeout=RECONNECT_TIMEOUT_MS
            )
            await expect(page.locator(".listing .price .now")).to_have_text("₩700")
            # Nothing was replayed; the state came from REST, and live events flow again.
            await expect(page.locator(".activity li")).to_have_count(0)
            await set_price(http, other, seller, listing_id, 600)
            await expect(page.locator(".listing .price .now")).to_have_text("₩600")
            await expect(page.locator(".activity li")).to_contain_text(["Price ₩700 → ₩600"])
            await screenshots.take("resynced", viewer=page)
            assert errors.uncaught == []
    finally:
        stop_servers(*servers)


async def test_the_backoff_is_exponential_with_full_jitter(
    browser: Browser, browser_env: dict[str, str]
) -> None:
    server = ServerProcess(browser_env).start()
    try:
        page = await phone_page(browser, server.url, PageErrors())
        await page.goto("/")
        # The client library the page imports, with its random source pinned to both ends.
        bounds = await page.evaluate(
            """async () => {
                const { backoffDelay } = await import('/clients/js/jangteo.js');
                const at = (random) => (n) => backoffDelay(n, { base: 500, cap: 30000, random });
                return {
                    longest: [0, 1, 2, 3, 6, 7, 60].map(at(() => 1)),
                    shortest: [0, 7].map(at(() => 0)),
                };
            }"""
        )
        assert bounds == {
            "longest": [500, 1000, 2000, 4000, 30000, 30000, 30000],
            "shortest": [0, 0],
        }
    finally:
        server.stop()
