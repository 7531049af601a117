"""Helpers shared by the fault scenarios: server environments, timed requests, waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.support import ServerProcess

# Generous on purpose: the suite runs on a loaded 2-core machine beside other suites.
WAIT_S = 60.0
GENEROUS_LIMIT = "100000/60"


@dataclass(frozen=True, slots=True)
class Timed:
    """One request's outcome and how long the client waited for it."""

    what: str
    status: int
    seconds: float
    retry_after: str | None
    body: bytes


async def timed(
    http: aiohttp.ClientSession, what: str, method: str, url: str, **kwargs: Any
) -> Timed:
    started = time.monotonic()
    async with http.request(method, url, **kwargs) as response:
        body = await response.read()
        return Timed(
            what,
            response.status,
            time.monotonic() - started,
            response.headers.get("Retry-After"),
            body,
        )


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_S
) -> None:
    """Poll ``check`` until it holds; the timeout only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


async def ready_status(http: aiohttp.ClientSession, server: ServerProcess) -> int:
    async with http.get(f"{server.url}/readyz") as response:
        return response.status


async def wait_ready(
    http: aiohttp.ClientSession, server: ServerProcess, status: int = 200, timeout: float = WAIT_S
) -> None:
    async def reached() -> bool:
        try:
            return await ready_status(http, server) == status
        except aiohttp.ClientError:
            return False

    await eventually(reached, f"{server.url}/readyz answers {status}", timeout)


async def metric(http: aiohttp.ClientSession, server: ServerProcess, name: str) -> float:
    """A metric's value (the sum over its labels); 0 when absent."""
    async with http.get(f"{server.url}/metrics") as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
