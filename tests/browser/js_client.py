"""Helpers of the JavaScript client's tests: the library in a real page, what it saw, faults.

The page is the server's own (so its Content-Security-Policy applies); the library is
imported from ``/clients/js/`` as an app would, and every event, resync, refusal, state and
backoff it reports is recorded in ``window.jangteo.seen`` for the test to read.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from playwright.async_api import Browser, Page

from tests.browser.support import LIVE_TIMEOUT_MS, PageErrors, phone_page
from tests.support import ServerProcess, start_servers, stop_servers

# Starts one client. Its ticket function first throws a TicketError for each of `refusals`
# ({status, retryAfter}), then returns `ticket` when one is given (a bad one), else asks the
# server with the test user's access token.
START = """async ({ token, ticket, refusals, options }) => {
    const lib = await import('/clients/js/jangteo.js');
    const seen = {
        events: {}, ready: {}, errors: {}, resyncs: [], states: [], backoffs: [],
        catchingUp: [], closed: null, tickets: 0,
    };
    const client = new lib.RealtimeClient({
        ...options,
        ticket: async () => {
            seen.tickets += 1;
            const refusal = refusals.shift();
            if (refusal) throw new lib.TicketError(refusal.status, refusal.retryAfter ?? null);
            if (ticket !== null) return ticket;
            const response = await fetch('/api/v1/ws/ticket', {
                method: 'POST', headers: { Authorization: `Bearer ${token}` },
            });
            return lib.ticketFromResponse(response);
        },
    });
    client.addEventListener('state', (e) => seen.states.push(e.detail));
    client.addEventListener('backoff', (e) => seen.backoffs.push(e.detail.delayMs));
    client.addEventListener('catching-up', (e) => seen.catchingUp.push(e.detail));
    client.addEventListener('closed', (e) => {
        seen.closed = { kind: e.detail.kind, code: e.detail.code, message: e.detail.message };
    });
    const subscribe = (channel, since) => {
        seen.events[channel] = [];
        seen.errors[channel] = [];
        const handle = client.subscribe(channel, {
            event: (e) => seen.events[channel].push(
                {
                    offset: e.offset, prev: e.prev, type: e.type,
                    price: e.data.price ?? null, id: e.data.id ?? null,
                }),
            resync: (notice) => seen.resyncs.push(notice),
            error: (error) => seen.errors[channel].push(error),
        }, since === null ? {} : { since });
        handle.ready.then(
            (offset) => { seen.ready[channel] = { offset }; },
            (error) => { seen.ready[channel] = { error: error.name, code: error.code }; },
        );
    };
    window.jangteo = { lib, client, seen, subscribe };
    client.connect();
}"""

# A browser whose WebSocket never gets through (a proxy that refuses upgrades): every socket
# fails as a real one would, an error then a close with 1006, without ever opening.
BLOCK_WEBSOCKETS = """(() => {
    window.blockedWebSockets = 0;
    class BlockedWebSocket extends EventTarget {
        static CONNECTING = 0;
        static OPEN = 1;
        static CLOSING = 2;
        static CLOSED = 3;
        constructor(url) {
            super();
            window.blockedWebSockets += 1;
            this.url = url;
            this.readyState = 0;
            this.onopen = this.onmessage = this.onerror = this.onclose = null;
            setTimeout(() => {
                this.readyState = 3;
                const error = new Event('error');
                this.onerror?.(error);
                this.dispatchEvent(error);
                const close = new CloseEvent('close', { code: 1006, wasClean: false });
                this.onclose?.(close);
                this.dispatchEvent(close);
            }, 10);
        }
        send() {
            throw new DOMException('still connecting', 'InvalidStateError');
        }
        close() {}
    }
    window.WebSocket = BlockedWebSocket;
})();"""


@contextmanager
def instances(env: Mapping[str, str], count: int) -> Iterator[list[ServerProcess]]:
    """``count`` instances side by side; a test appends the ones it restarts; all stopped."""
    servers = start_servers(*(ServerProcess(env) for _ in range(count)))
    try:
        yield servers
    finally:
        stop_servers(*servers)


@dataclass
class PageClient:
    """One ``RealtimeClient`` in ``page``, driven and read from the test."""

    page: Page

    @classmethod
    async def open(
        cls,
        browser: Browser,
        server: ServerProcess,
        errors: PageErrors,
        *start: Any,
        **options: Any,
    ) -> PageClient:
        """A fresh page on ``server`` with a client started (see ``start``)."""
        return await cls(await phone_page(browser, server.url, errors)).start(*start, **options)

    async def start(
        self,
        token: str = "",
        *,
        ticket: str | None = None,
        refusals: Sequence[Mapping[str, Any]] = (),
        **options: Any,
    ) -> PageClient:
        await self.page.goto("/")
        given = {"token": token, "ticket": ticket, "refusals": list(refusals), "options": options}
        await self.page.evaluate(START, given)
        return self

    async def subscribe(self, channel: str, since: int | None = None) -> None:
        await self.page.evaluate(
            "([channel, since]) => window.jangteo.subscribe(channel, since)", [channel, since]
        )

    async def seen(self) -> dict[str, Any]:
        seen: dict[str, Any] = await self.page.evaluate("() => window.jangteo.seen")
        return seen

    async def client(self, expression: str) -> Any:
        """``expression`` evaluated with ``client`` and ``lib`` in scope (awaited)."""
        return await self.page.evaluate(
            f"async () => {{ const {{ client, lib }} = window.jangteo; return {expression}; }}"
        )

    async def wait_for(self, condition: str, timeout_ms: float = LIVE_TIMEOUT_MS) -> None:
        """Wait until ``condition`` (JS, with ``client`` and ``seen`` in scope) holds."""
        await self.page.wait_for_function(
            f"() => {{ const {{ client, seen }} = window.jangteo; return {condition}; }}",
            timeout=timeout_ms,
        )

    async def settle(self, promise: str) -> dict[str, Any]:
        """``promise`` (JS, with ``client`` in scope) as {value} or {error: name, code}."""
        settled: dict[str, Any] = await self.page.evaluate(
            f"""async () => {{
                const {{ client }} = window.jangteo;
                try {{
                    return {{ value: (await {promise}) ?? null }};
                }} catch (error) {{
                    return {{ error: error.name, code: error.code ?? null }};
                }}
            }}"""
        )
        return settled

    async def ready(self, channel: str) -> dict[str, Any]:
        """How the channel's ``ready`` settled: {offset} or {error, code}."""
        await self.wait_for(f"{json.dumps(channel)} in seen.ready")
        settled: dict[str, Any] = (await self.seen())["ready"][channel]
        return settled

    async def events(
        self, channel: str, count: int, timeout_ms: float = LIVE_TIMEOUT_MS
    ) -> list[dict[str, Any]]:
        """The channel's events once there are ``count`` of them."""
        await self.wait_for(f"seen.events[{json.dumps(channel)}].length >= {count}", timeout_ms)
        events: list[dict[str, Any]] = (await self.seen())["events"][channel]
        return events

    async def wait_state(
        self, state: str, transport: str | None = None, timeout_ms: float = LIVE_TIMEOUT_MS
    ) -> None:
        condition = f"client.state === {json.dumps(state)}"
        if transport is not None:
            condition += f" && client.transport === {json.dumps(transport)}"
        await self.wait_for(condition, timeout_ms)


def assert_once_in_order(events: list[dict[str, Any]], prices: list[int]) -> None:
    """Every change once, in order, with each event chained to the one before it."""
    assert [event["price"] for event in events] == prices
    offsets = [event["offset"] for event in events]
    assert offsets == sorted(set(offsets)), offsets
    for before, after in itertools.pairwise(events):
        assert after["prev"] == before["offset"], (before, after)


def kill(server: ServerProcess) -> None:
    """SIGKILL: no close frame, no close message; its clients see the connection drop."""
    assert server.process is not None
    server.process.kill()
    server.process.wait()
    server.stop()
