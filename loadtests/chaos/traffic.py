"""The market under chaos: its accounts, listings and rooms, and the writers that trade.

A seller, three buyers. Two steady listings (large stock) whose prices the seller edits
and that the buyers buy from, and a hot listing (small stock) they race for; when it
sells out the seller lists the next one. Chat goes over REST in one room and over a
socket in another; a third room holds a long history (thousands of messages of a few
kilobytes, written straight into the event log before the run) for the slow client.

Every request goes to the next instance that serves, as behind a load balancer; one
that fails (no answer, 503, 5xx) is sent again to the next one, a purchase or a chat
message with the SAME Idempotency-Key or client_id until it is answered. What was
confirmed is kept as the audit's records (``loadtests/audit.py``): listings with their
stock, orders answered 201, purchases never answered, chat messages confirmed.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import aiohttp
import orjson

from loadtests.chaos.cluster import Cluster, Instance
from loadtests.chaos.watchers import Account, open_socket
from loadtests.config import BUSY_MARKET, LoadConfig
from loadtests.harness.stack import connected

API = "/api/v1"
PRICE = 1000
STEADY_STOCK = 10_000
HOT_STOCK = 20
TOPUP = 10_000_000
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)
FAILURES = (aiohttp.ClientError, TimeoutError, ConnectionError, orjson.JSONDecodeError)
PAUSE_S = {"edit": 0.3, "purchase": 0.5, "chat": 0.8}
RETRY_S = 0.3
SETTLE_S = 30.0  # after the writers are told to stop, how long an unanswered write retries
SOLD_OUT = frozenset({"insufficient-stock", "listing-not-on-sale"})
HISTORY_BODY = "가" * 1000  # 3 kB in UTF-8: the longest body a message may have


class Unavailable(Exception):
    """No instance answered a setup request in time."""


class Market:
    """Who trades what, and what the server confirmed."""

    def __init__(self, http: aiohttp.ClientSession, cluster: Cluster) -> None:
        self.http = http
        self.cluster = cluster
        self.config = LoadConfig.from_env()
        self.records: list[dict[str, Any]] = []
        self.answers: Counter[str] = Counter()  # "purchase 201", "edit 503", ...
        self.strategies: Counter[str] = Counter()  # purchases answered 201, by strategy
        self.seller: Account
        self.buyers: list[Account] = []
        self.steady: list[int] = []
        self.hot = 0
        self.rooms: dict[str, int] = {}
        self.history_since = 0
        self._turn = itertools.count()
        self._relisting = asyncio.Lock()

    def keep(self, kind: str, **fields: Any) -> None:
        """One record for the audit (``loadtests/audit.py``): what the server confirmed."""
        self.records.append({"kind": kind, **fields})

    # -- requests ------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        account: Account | None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], Instance]:
        """One request to the next serving instance: (status, JSON body or {}, instance)."""
        serving = self.cluster.serving() or self.cluster.instances
        instance = serving[next(self._turn) % len(serving)]
        all_headers = {**(account.auth if account else {}), **(headers or {})}
        async with self.http.request(
            method, f"{instance.url}{API}{path}", json=body, headers=all_headers,
            timeout=REQUEST_TIMEOUT,
        ) as response:  # fmt: skip
            raw = await response.read()
            status = response.status
        parsed = orjson.loads(raw) if raw and raw[:1] in (b"{", b"[") else {}
        return status, parsed if isinstance(parsed, dict) else {}, instance

    async def setup_call(
        self, method: str, path: str, account: Account | None, body: dict[str, Any], want: int
    ) -> dict[str, Any]:
        """A request the market needs before it can trade: again until answered ``want``."""
        deadline = time.monotonic() + 60
        last = ""
        while time.monotonic() < deadline:
            try:
                status, answer, _ = await self.call(method, path, account, body, _key())
            except FAILURES as error:
                last = repr(error)
            else:
                if status in (want, 200):
                    return answer
                last = f"{status} {answer}"
            await asyncio.sleep(RETRY_S)
        raise Unavailable(f"{method} {path}: {last}")

    # -- setting up ----------------------------------------------------------------------

    async def sign_up(self, name: str) -> Account:
        body = {
            "email": f"chaos-{uuid.uuid4().hex[:12]}@{self.config.email_domain}",
            "password": self.config.password,
            "nickname": name,
            "region": self.config.region,
        }
        answer = await self.setup_call("POST", "/auth/signup", None, body, 201)
        account = Account(int(answer["user"]["id"]), str(answer["access_token"]), name)
        role = "seller" if name == "seller" else "buyer"
        self.keep("user", user_id=account.user_id, role=role)
        return account

    async def top_up(self, buyer: Account) -> None:
        await self.setup_call("POST", "/wallet/topup", buyer, {"amount": TOPUP}, 200)

    async def list_item(self, quantity: int) -> int:
        body = {
            "title": "chaos lamp",
            "price": PRICE,
            "quantity": quantity,
            "category": "furniture",
        }
        listing = int((await self.setup_call("POST", "/listings", self.seller, body, 201))["id"])
        self.keep("listing", listing_id=listing, quantity=quantity)
        return listing

    async def open_room(self, listing: int, buyer: Account) -> int:
        answer = await self.setup_call("POST", f"/listings/{listing}/chats", buyer, {}, 201)
        return int(answer["id"])

    async def write_history(self, database_url: str, count: int) -> None:
        """``count`` chat messages of 3 kB on the history room's channel, published."""
        channel = f"room:{self.rooms['history']}"
        async with connected(database_url) as conn:
            await conn.execute(
                "INSERT INTO outbox (channel, type, data) SELECT $1, 'chat.message',"
                " jsonb_build_object('room_id', $2::bigint, 'sender_id', $3::bigint,"
                " 'body', $4::text, 'n', n) FROM generate_series(1, $5::int) AS n",
                channel, self.rooms["history"], self.seller.user_id, HISTORY_BODY, count,
            )  # fmt: skip
            deadline = time.monotonic() + 120
            while await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE channel = $1 AND position IS NULL", channel
            ):
                if time.monotonic() > deadline:
                    raise Unavailable("the history was never published")
                await asyncio.sleep(0.2)
            first = await conn.fetchval(
                "SELECT prev FROM outbox WHERE channel = $1 ORDER BY position LIMIT 1", channel
            )
            self.history_since = int(first or 0)

    def watched(self, account: Account) -> list[str]:
        """The channels a watcher signed in as ``account`` subscribes to."""
        channels = [f"listing:{listing}" for listing in self.steady]
        channels += [f"feed:{self.config.region}", f"user:{account.user_id}"]
        if account == self.seller:
            channels += [f"room:{self.rooms['rest']}", f"room:{self.rooms['socket']}"]
        elif account == self.buyers[0]:
            channels.append(f"room:{self.rooms['rest']}")
        elif account == self.buyers[1]:
            channels.append(f"room:{self.rooms['socket']}")
        return channels

    # -- trading ---------------------------------------------------------------------------

    async def edit(self, listing: int, price: int) -> bool:
        """One price edit; True when it was answered 200."""
        try:
            status, _, _ = await self.call(
                "PATCH", f"/listings/{listing}", self.seller, {"price": price}, {"If-Match": "*"}
            )
        except FAILURES:
            status = 0
        self.answers[f"edit {status or 'no answer'}"] += 1
        return status == 200

    async def purchase(self, buyer: Account, listing: int, stopped: asyncio.Event) -> None:
        """One purchase, retried with the same key until it is answered."""
        key = _key()
        give_up = None
        while True:
            if stopped.is_set():
                give_up = give_up or time.monotonic() + SETTLE_S
                if time.monotonic() > give_up:
                    self.keep("purchase_unresolved", buyer_id=buyer.user_id, listing_id=listing)
                    return
            try:
                status, answer, instance = await self.call(
                    "POST", f"/listings/{listing}/purchase", buyer, {"quantity": 1}, key
                )
            except FAILURES:
                self.answers["purchase no answer"] += 1
                await asyncio.sleep(RETRY_S)
                continue
            slug = str(answer.get("type", "")).rsplit("/", 1)[-1] if status >= 400 else ""
            self.answers[f"purchase {status} {slug}".rstrip()] += 1
            if status == 201:
                self.strategies[instance.strategy] += 1
                order, quantity = int(answer["id"]), int(answer["quantity"])
                self.keep("order", order_id=order, buyer_id=buyer.user_id, listing_id=listing,
                          quantity=quantity)  # fmt: skip
                return
            if status == 409 and slug in BUSY_MARKET:
                try:
                    if slug == "insufficient-funds":
                        await self.top_up(buyer)
                    elif slug in SOLD_OUT and listing == self.hot:
                        await self.relist(listing)
                except Unavailable:
                    self.answers["top-up or relisting unanswered"] += 1
                return
            if status < 500 and status != 429 and slug != "idempotency-key-in-flight":
                return  # refused for good (counted in the answers)
            await asyncio.sleep(RETRY_S)

    async def relist(self, sold: int) -> None:
        async with self._relisting:
            if self.hot == sold:
                self.hot = await self.list_item(HOT_STOCK)

    async def chat_rest(self, body: str, stopped: asyncio.Event) -> None:
        """One message over REST, the same client_id until it is answered."""
        client_id = str(uuid.uuid4())
        room = self.rooms["rest"]
        give_up = None
        while True:
            if stopped.is_set():
                give_up = give_up or time.monotonic() + SETTLE_S
                if time.monotonic() > give_up:
                    return  # never confirmed: nothing to check
            try:
                status, answer, _ = await self.call(
                    "POST", f"/chats/{room}/messages", self.buyers[0],
                    {"body": body, "client_id": client_id},
                )  # fmt: skip
            except FAILURES:
                status, answer = 0, {}
            self.answers[f"chat rest {status or 'no answer'}"] += 1
            if status in (200, 201):
                self.keep_chat(answer, self.buyers[0])
                return
            if 0 < status < 500 and status != 429:
                return
            await asyncio.sleep(RETRY_S)

    def keep_chat(self, message: dict[str, Any], sender: Account) -> None:
        self.keep("chat", client_id=str(message["client_id"]), room_id=int(message["room_id"]),
                  message_id=int(message["id"]), sender_id=sender.user_id)  # fmt: skip


async def open_market(http: aiohttp.ClientSession, cluster: Cluster, history: int) -> Market:
    """Accounts, listings, rooms and the long history, ready to trade."""
    market = Market(http, cluster)
    market.seller = await market.sign_up("seller")
    market.buyers = [await market.sign_up(f"buyer-{n}") for n in range(3)]
    for buyer in market.buyers:
        await market.top_up(buyer)
    market.steady = [await market.list_item(STEADY_STOCK) for _ in range(2)]
    market.hot = await market.list_item(HOT_STOCK)
    market.rooms = {
        "rest": await market.open_room(market.steady[0], market.buyers[0]),
        "socket": await market.open_room(market.steady[1], market.buyers[1]),
        "history": await market.open_room(market.steady[1], market.buyers[2]),
    }
    await market.write_history(cluster.database_url, history)
    return market


def _key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


# -- the writers -------------------------------------------------------------------------


async def _editor(market: Market, stopped: asyncio.Event) -> None:
    for n in itertools.count(1):
        if stopped.is_set():
            return
        await market.edit(market.steady[n % len(market.steady)], PRICE + n % 1000)
        await asyncio.sleep(PAUSE_S["edit"])


async def _buyer(market: Market, buyer: Account, stopped: asyncio.Event) -> None:
    for n in itertools.count():
        if stopped.is_set():
            return
        listing = market.hot if n % 2 else market.steady[n // 2 % len(market.steady)]
        await market.purchase(buyer, listing, stopped)
        await asyncio.sleep(PAUSE_S["purchase"])


async def _rest_chatter(market: Market, stopped: asyncio.Event) -> None:
    for n in itertools.count(1):
        if stopped.is_set():
            return
        await market.chat_rest(f"rest {n}", stopped)
        await asyncio.sleep(PAUSE_S["chat"])


async def _socket_chatter(market: Market, stopped: asyncio.Event) -> None:
    """Messages over a socket (moved to the next instance when it fails), acks awaited;
    a message without an ack is sent again with the same client_id."""
    sender = market.buyers[1]
    room = market.rooms["socket"]
    ws: aiohttp.ClientWebSocketResponse | None = None
    try:
        for n in itertools.count(1):
            if stopped.is_set():
                return
            client_id = str(uuid.uuid4())
            frame = orjson.dumps({"op": "send", "room": room, "body": f"ws {n}",
                                  "client_id": client_id}).decode()  # fmt: skip
            give_up = None
            while True:
                if stopped.is_set():
                    give_up = give_up or time.monotonic() + SETTLE_S
                    if time.monotonic() > give_up:
                        return
                try:
                    if ws is None or ws.closed:
                        serving = market.cluster.serving()
                        if not serving:
                            raise ConnectionError("no instance serves")
                        ws = await open_socket(market.http, serving[n % len(serving)], sender)
                    await ws.send_str(frame)
                    reply = await _reply(ws, client_id)
                except (*FAILURES, RuntimeError, KeyError) as error:
                    market.answers[f"chat ws {type(error).__name__}"] += 1
                    if ws is not None:
                        await ws.close()
                    ws = None
                    await asyncio.sleep(RETRY_S)
                    continue
                market.answers[f"chat ws {reply.get('op')} {reply.get('code', '')}".rstrip()] += 1
                if reply.get("op") == "ack":
                    market.keep_chat(reply["message"], sender)
                    break
                await asyncio.sleep(RETRY_S)  # unavailable, rate_limited: the same again
            await asyncio.sleep(PAUSE_S["chat"])
    finally:
        if ws is not None:
            await ws.close()


async def _reply(ws: aiohttp.ClientWebSocketResponse, client_id: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            message = await ws.receive()
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"socket closed: {ws.close_code}")
            frame: dict[str, Any] = orjson.loads(message.data)
            if frame.get("client_id") == client_id:
                return frame


async def _guard(market: Market, writer: Coroutine[Any, Any, None]) -> None:
    """A writer that fails is a fault of this harness: counted (the run reports it)."""
    try:
        await writer
    except Exception as error:
        market.answers[f"WRITER FAILED: {error!r}"] += 1


class Writers:
    """The writers as tasks: an editor, three buyers, a chatter over REST, one over a socket."""

    def __init__(self, market: Market) -> None:
        self.stopped = asyncio.Event()
        coroutines = [
            _editor(market, self.stopped),
            *(_buyer(market, buyer, self.stopped) for buyer in market.buyers),
            _rest_chatter(market, self.stopped),
            _socket_chatter(market, self.stopped),
        ]
        self.tasks = [asyncio.create_task(_guard(market, c)) for c in coroutines]

    async def stop(self) -> None:
        """Stop, letting writes already sent settle (answered, or given up after a while)."""
        self.stopped.set()
        await asyncio.gather(*self.tasks)
