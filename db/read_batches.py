"""Reads by key asked in one turn of the event loop, sent to PostgreSQL as one statement.

Under load many requests want one row each at the same moment (a listing's detail by
id, each request a different one). Read one by one, each costs a pool checkout, a round
trip and an execution of its own; read as ``WHERE id = ANY($1)``, the requests of one
loop turn share them. A read waits for nothing but the end of the turn in which it was
asked, so a lone one goes out as it would alone, and batches do not wait for each other:
each takes a connection of its own, as many at once as the pool allows. A read asked
after a commit is sent after it, so it sees that commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

ReadMany = Callable[[Sequence[K]], Awaitable[Mapping[K, V]]]


class ReadBatches(Generic[K, V]):
    """``get(key)`` answers what ``read_many`` found for ``key`` (None: nothing), reading
    the keys asked in one loop turn together, at most ``most`` in one statement."""

    def __init__(self, read_many: ReadMany[K, V], most: int = 100) -> None:
        self._read_many = read_many
        self._most = most
        self._asked: dict[K, asyncio.Future[V | None]] = {}
        self._reads: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> V | None:
        answer = self._asked.get(key)
        if answer is None:
            loop = asyncio.get_running_loop()
            if not self._asked:
                loop.call_soon(self._send)
            answer = self._asked[key] = loop.create_future()
        # Shielded: a caller that leaves does not take the answer from the others.
        return await asyncio.shield(answer)

    async def close(self) -> None:
        """Stop the reads in flight (their callers see ``CancelledError``)."""
        for read in self._reads:
            read.cancel()
        await asyncio.gather(*self._reads, return_exceptions=True)

    def _send(self) -> None:
        asked, self._asked = list(self._asked.items()), {}
        for start in range(0, len(asked), self._most):
            read = asyncio.create_task(self._read(dict(asked[start : start + self._most])))
            self._reads.add(read)
            read.add_done_callback(self._reads.discard)

    async def _read(self, asked: dict[K, asyncio.Future[V | None]]) -> None:
        try:
            found = await self._read_many(list(asked))
        except BaseException as error:  # every caller of the batch gets it
            for answer in asked.values():
                if not answer.done():
                    if isinstance(error, asyncio.CancelledError):
                        answer.cancel()
                    else:
                        answer.set_exception(error)
                        answer.exception()  # a batch whose callers all left is no error
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        for key, answer in asked.items():
            if not answer.done():
                answer.set_result(found.get(key))
