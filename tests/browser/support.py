"""Helpers of the browser tests: phone-sized pages, screenshots per step, a test photo."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from playwright.async_api import Browser, ConsoleMessage, Expect, Page, ViewportSize

from tests.support import ServerProcess

DEMO_USERS = 3  # demo3@jangteo.dev is in seoul-mapo, the region the tests sell in
PHONE: ViewportSize = {"width": 390, "height": 844}
# Generous: a loaded two-core machine runs two servers, a relay and two browsers at once.
LIVE_TIMEOUT_MS = 30_000
RECONNECT_TIMEOUT_MS = 90_000
LISTING_URL = re.compile(r"#/listing/(\d+)$")

# Playwright's auto-waiting assertions, with this suite's timeout instead of the 5 s default
# (an instance of its own, so other suites' `expect` keeps theirs).
expect = Expect()
expect.set_options(timeout=LIVE_TIMEOUT_MS)


@dataclass
class Screenshots:
    """Full-page screenshots of every page at each step, named ``NN-step-who.png``."""

    folder: Path
    taken: list[Path] = field(default_factory=list)

    async def take(self, step: str, **pages: Page) -> None:
        number = len({path.name.split("-", 1)[0] for path in self.taken}) + 1
        for who, page in pages.items():
            path = self.folder / f"{number:02d}-{step}-{who}.png"
            await page.screenshot(path=str(path), full_page=True)
            self.taken.append(path)


@dataclass
class PageErrors:
    """Uncaught exceptions and console errors of one page, to assert there were none."""

    uncaught: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> Page:
        page.on("pageerror", lambda error: self.uncaught.append(str(error)))
        page.on("console", self._on_console)
        return page

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console.append(message.text)


async def phone_page(browser: Browser, base_url: str, errors: PageErrors) -> Page:
    """A fresh browser context (its own sessionStorage, so its own user) on one instance."""
    context = await browser.new_context(viewport=PHONE, base_url=base_url, device_scale_factor=2)
    context.set_default_timeout(LIVE_TIMEOUT_MS)
    return errors.watch(await context.new_page())


def restart_on(port: int, env: Mapping[str, str]) -> ServerProcess:
    """A new instance on the port the page's origin names, as after a deploy or a crash."""
    server = ServerProcess(env)
    server.port = port
    server.env["JANGTEO_PORT"] = str(port)
    return server.start()


def gradient_png(width: int = 320, height: int = 240) -> bytes:
    """A real RGB PNG with a warm gradient, so the photo is visible in the screenshots."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00"
        + b"".join(
            bytes((255, 120 + (x * 100) // width, 40 + (y * 150) // height)) for x in range(width)
        )
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
