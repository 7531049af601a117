"""/docs in a real browser: Swagger UI renders under its CSP, takes a bearer token once
with Authorize, and "Try it out" calls the API with it. Nothing loads from elsewhere."""

from __future__ import annotations

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from tests.browser.support import PageErrors, Screenshots
from tests.support import ServerProcess
from tests.system.realtime_support import sign_up

WAIT_MS = 30_000  # a loaded two-core machine parses Swagger UI's 1.5 MB bundle slowly


@pytest.mark.timeout(180)
async def test_try_it_out_calls_the_api_with_the_authorized_token(
    browser: Browser, browser_env: dict[str, str], screenshots: Screenshots
) -> None:
    server = ServerProcess(browser_env).start()
    try:
        async with aiohttp.ClientSession() as http:
            user = await sign_up(http, server)
        errors = PageErrors()
        context = await browser.new_context(base_url=server.url)
        context.set_default_timeout(WAIT_MS)
        page = errors.watch(await context.new_page())
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))

        await page.goto("/docs")
        me = page.locator("#operations-auth-me")
        await expect(me).to_be_visible(timeout=WAIT_MS)
        await page.locator(".auth-wrapper button.authorize").click()
        dialog = page.locator(".dialog-ux")
        await dialog.locator("input").fill(user.access_token)
        await dialog.locator("button.authorize").click()
        await dialog.locator("button.close-modal").click()
        await screenshots.take("authorized", page=page)

        await me.locator(".opblock-summary").click()
        await me.locator("button.try-out__btn").click()
        async with page.expect_request("**/api/v1/me") as sent:
            await me.locator("button.execute").click()
        assert (await sent.value).headers["authorization"] == f"Bearer {user.access_token}"
        live = me.locator(".live-responses-table tr.response")
        await expect(live.locator(".response-col_status")).to_have_text("200", timeout=WAIT_MS)
        await expect(live).to_contain_text(user.email, timeout=WAIT_MS)
        await screenshots.take("tried", page=page)

        outside = [url for url in requests if not url.startswith(server.url + "/")]
        assert outside == [], "everything comes from this server"
        # A CSP violation is reported as a console error.
        assert errors.uncaught == [] and errors.console == []
        await context.close()
    finally:
        server.stop()
