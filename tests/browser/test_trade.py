"""Two neighbours on two instances trade through the demo page, seeing each other live."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Browser, FilePayload, Page

from tests.browser.support import (
    LISTING_URL,
    PageErrors,
    Screenshots,
    expect,
    gradient_png,
    phone_page,
)
from tests.support import PASSWORD, ServerProcess

TITLE = "Brass desk lamp"
REPLY = "Yes, still here. Come by tonight!"


async def sign_up_through_the_form(page: Page, email: str) -> None:
    form = page.locator('form[aria-label="Sign up"]')
    await form.locator('input[name="email"]').fill(email)
    await form.locator('input[name="password"]').fill(PASSWORD)
    await form.locator('input[name="nickname"]').fill("Lamp seller")
    await form.locator('input[name="region"]').fill("seoul-mapo")
    await form.get_by_role("button", name="Create account").click()


async def expect_live(*pages: Page) -> None:
    for page in pages:
        await expect(page.locator("#status")).to_have_attribute("data-state", "live")


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("demo_accounts")
async def test_a_listing_its_price_drop_a_chat_and_a_sale_reach_the_other_instance_live(
    browser: Browser,
    two_instances: tuple[ServerProcess, ServerProcess],
    screenshots: Screenshots,
) -> None:
    first, second = two_instances
    errors = PageErrors()
    seller = await phone_page(browser, first.url, errors)
    buyer = await phone_page(browser, second.url, errors)

    # Sign up on one instance; one click on a seeded demo account on the other.
    await seller.goto("/")
    await buyer.goto("/")
    await sign_up_through_the_form(seller, "lamp-seller@example.com")
    await buyer.locator('.account[data-email="demo3@jangteo.dev"]').click()
    await expect_live(seller, buyer)
    await expect(buyer.locator("#wallet")).to_have_text("₩1,000,000")
    await screenshots.take("signed-in", seller=seller, buyer=buyer)

    # The seller lists a lamp with a photo; it appears in the buyer's feed, photo and all.
    await seller.locator('#tabs a[data-tab="sell"]').click()
    form = seller.locator('form[aria-label="New listing"]')
    await form.locator('input[name="title"]').fill(TITLE)
    await form.locator('input[name="price"]').fill("12000")
    await form.locator('select[name="category"]').select_option("furniture")
    await form.locator('textarea[name="description"]').fill("Warm light, works perfectly.")
    photo: FilePayload = {"name": "lamp.png", "mimeType": "image/png", "buffer": gradient_png()}
    await form.locator('input[name="photos"]').set_input_files(files=[photo])
    await form.get_by_role("button", name="List it").click()
    await seller.wait_for_url(LISTING_URL)
    match = LISTING_URL.search(seller.url)
    assert match is not None
    listing_id = match.group(1)
    await expect(seller.locator(".gallery img")).to_be_visible()
    card = buyer.locator(f'.listing-card[data-listing-id="{listing_id}"]')
    await expect(card.locator(".title")).to_have_text(TITLE)
    await expect(card.locator(".thumb img")).to_be_visible()
    await expect(card.locator(".price .now")).to_have_text("₩12,000")
    await screenshots.take("listed", seller=seller, buyer=buyer)

    # A price drop on the seller's instance changes the buyer's card in place.
    await seller.get_by_label("New price").fill("9000")
    await seller.get_by_role("button", name="Update price").click()
    await expect(card.locator(".price .now")).to_have_text("₩9,000")
    await expect(card.locator(".price .was")).to_have_text("₩12,000")
    await expect(card.locator(".price .drop")).to_have_text("↓ 25%")
    await screenshots.take("price-drop", seller=seller, buyer=buyer)

    # The buyer opens the listing and writes to the seller: an unread badge for the seller.
    await card.click()
    await expect(buyer.locator(".listing .price .now")).to_have_text("₩9,000")
    await expect(buyer.locator(".gallery img")).to_be_visible()
    await buyer.get_by_role("button", name="Chat with seller").click()
    await buyer.get_by_role("textbox", name="Message").fill("Hi! Is the lamp still available?")
    await buyer.get_by_role("button", name="Send").click()
    await expect(buyer.locator(".message.mine:not(.pending)")).to_have_count(1)
    await expect(seller.locator("#chat-badge")).to_have_text("1")
    await screenshots.take("message-waiting", seller=seller, buyer=buyer)

    # The seller opens the chat (badge gone) and types: the buyer sees it while it happens.
    await seller.locator('#tabs a[data-tab="chats"]').click()
    await seller.locator(".room a").first.click()
    await expect(seller.locator(".message.theirs .body")).to_have_text(
        "Hi! Is the lamp still available?"
    )
    await expect(seller.locator("#chat-badge")).to_be_hidden()
    typing = asyncio.create_task(
        seller.get_by_role("textbox", name="Message").press_sequentially(REPLY, delay=80)
    )
    await expect(buyer.locator(".typing")).to_have_text("Lamp seller is typing…")
    await screenshots.take("typing", seller=seller, buyer=buyer)
    await typing
    await seller.get_by_role("textbox", name="Message").press("Enter")
    await expect(buyer.locator(".message.theirs .body")).to_have_text(REPLY)
    await expect(buyer.locator(".typing")).to_be_hidden()
    await expect(seller.locator(".message.mine.read")).to_have_count(1)  # the buyer saw it

    # The seller watches their sales; the buyer buys from the wallet on the other instance.
    await seller.locator('#tabs a[data-tab="orders"]').click()
    await seller.locator('.segmented button[data-role="seller"]').click()
    await expect(seller.locator(".orders .empty")).to_have_text("Nothing sold yet.")
    await buyer.goto(f"/#/listing/{listing_id}")  # a reload: the tab's session survives it
    await expect_live(buyer)
    await buyer.get_by_role("button", name="Buy now").click()
    await buyer.wait_for_url("**/#/orders")
    bought = buyer.locator(".order").first
    await expect(bought).to_have_attribute("data-status", "paid")
    await expect(bought).to_contain_text(TITLE)
    await expect(buyer.locator("#wallet")).to_have_text("₩991,000")
    sold = seller.locator(".order").first
    await expect(sold).to_contain_text(TITLE)
    await expect(sold).to_contain_text("₩9,000")
    await expect(sold).to_have_attribute("data-status", "paid")
    await screenshots.take("bought", seller=seller, buyer=buyer)

    assert errors.uncaught == []
    assert errors.console == []
    print(f"screenshots: {screenshots.folder}")
