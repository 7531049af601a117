"""The queue strategy: purchases in the order they happened, through a log.

The other strategies arbitrate a race for the listing's row; this one removes it. A
purchase is appended to its listing's partition of a log (a Redis Stream, one per
partition: listing id modulo ``JANGTEO_PURCHASE_QUEUE_PARTITIONS``), and one consumer per
partition (``server/orders/queue_consumer.py``) applies the waiting purchases in log
order, a batch per transaction, each with its idempotent response stored in that
transaction (``purchase_queue_apply()``). The batch's transaction tells each waiting
request its outcome by NOTIFY on the channel of the instance the request waits on,
delivered when the batch commits: a request answers exactly as under the other
strategies, or 503 ``purchase-pending`` with ``Retry-After`` when its outcome has not come
within ``JANGTEO_PURCHASE_QUEUE_TIMEOUT``; a retry with the same key then replays the
stored response once it exists (the retry is appended too, and answered from the stored
response). Without Redis, or without its channel for outcomes, a purchase fails closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis

from db.pool import connect
from server.errors import Problem, ServiceUnavailable
from server.idempotency import IdempotentRequest, StoredResponse
from server.orders.errors import PurchasePending
from server.orders.purchase import Purchase, PurchaseRequest, refusal
from server.rounds import Rounds

log = logging.getLogger(__name__)

RECONNECT_S = 0.5
CONNECT_TIMEOUT_S = 5.0

Append = tuple[str, tuple[tuple[str, str | int], ...]]  # a stream, an entry's fields


@dataclass(frozen=True, slots=True)
class QueueSettings:
    database_url: str
    deployment: str
    partitions: int = 4
    batch: int = 50
    timeout: float = 5.0  # how long a request waits for its outcome

    def stream(self, partition: int) -> str:
        # The hash tag keeps a stream in one slot of a Redis Cluster.
        return f"purchases:{{{self.deployment}:{partition}}}"

    def partition_of(self, listing_id: int) -> int:
        return listing_id % self.partitions


class PurchaseQueue:
    """Appends purchases to the log and hands each waiting request its outcome."""

    def __init__(self, settings: QueueSettings, redis: aioredis.Redis, instance: str) -> None:
        self.settings = settings
        self.redis = redis
        self.reply_channel = f"jangteo_purchases_{instance}"
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Purchases appended together share one pipeline of XADDs (one round trip).
        self._appends: Rounds[Append, None] = Rounds(self._append)

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="jangteo-purchase-outcomes")

    async def stop(self) -> None:
        await self._appends.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def purchase(self, idempotent: IdempotentRequest, request: PurchaseRequest) -> Purchase:
        """Append the purchase and wait for its outcome."""
        if not self.listening.is_set():
            raise ServiceUnavailable("purchase outcomes cannot be received now")
        request_id = uuid.uuid4().hex
        outcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = outcome
        try:
            stream = self.settings.stream(self.settings.partition_of(request.listing_id))
            fields: tuple[tuple[str, str | int], ...] = (
                ("request", request_id),
                ("reply", self.reply_channel),
                ("buyer", request.buyer_id),
                ("listing", request.listing_id),
                ("quantity", request.quantity),
                ("key", idempotent.key),
                ("fingerprint", idempotent.fingerprint.hex()),
                ("status", idempotent.status),
            )
            await self._appends.ask([(stream, fields)])
            try:
                async with asyncio.timeout(self.settings.timeout):
                    reply = await outcome
            except TimeoutError:
                raise PurchasePending(
                    f"no outcome within {self.settings.timeout:g} s; retry with the same key"
                ) from None
        finally:
            self.waiting.pop(request_id, None)
        return _answer(reply)

    async def _append(self, appends: frozenset[Append]) -> Mapping[Append, None]:
        """One round of appends: a pipeline of XADDs, all of them or an error for all."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, fields in appends:
                pipe.xadd(stream, dict(fields))
            await pipe.execute()
        return dict.fromkeys(appends)

    async def _listen(self) -> None:
        """Keep one connection listening for this instance's outcomes."""
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(
                    self.settings.database_url,
                    {"application_name": "jangteo-purchase-outcomes"},
                    CONNECT_TIMEOUT_S,
                )
                closed = asyncio.Event()
                conn.add_termination_listener(functools.partial(_set, closed))
                await conn.add_listener(self.reply_channel, self._delivered)
                self.listening.set()
                await closed.wait()
                log.warning("the connection for purchase outcomes closed")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                log.warning("cannot listen for purchase outcomes", extra={"error": repr(error)})
            finally:
                self.listening.clear()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(RECONNECT_S)

    def _delivered(self, *args: Any) -> None:
        payload: str = args[-1]
        reply = orjson.loads(payload)
        waiter = self.waiting.get(reply["request"])
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)


def _answer(reply: dict[str, Any]) -> Purchase:
    """A waiting request's outcome as the other strategies give it."""
    slug = reply.get("refused")
    if slug is not None:
        problem = refusal(slug, reply.get("detail"))
        raise problem if problem is not None else Problem(f"purchase failed: {slug}")
    response = StoredResponse(reply["status"], reply["body"].encode(), reply["replayed"])
    return Purchase(response, None if response.replayed else reply["region"])


def _set(event: asyncio.Event, *_: object) -> None:
    event.set()
