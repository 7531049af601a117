"""Group commit for round trips: what callers ask while a round is out goes in the next one.

Under load many requests want the same kind of Redis round trip at once (a session's
revocation looked up, a committed change's cache invalidation published and confirmed).
``Rounds`` sends one round at a time for everybody: a caller's items join the next
round, which starts only after the caller asked, so it sees or announces whatever the
caller did before asking; the caller waits for that round's answer. An idle caller
waits for one round trip, as it would alone; under load, N callers share a few.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Run = Callable[[frozenset[K]], Awaitable[Mapping[K, V]]]


class Rounds(Generic[K, V]):
    """Runs ``run`` on the union of the items asked for since the last round began."""

    def __init__(self, run: Run[K, V]) -> None:
        self._run = run
        self._pending: set[K] = set()
        self._next: asyncio.Future[Mapping[K, V]] | None = None  # the round being gathered
        self._runner: asyncio.Task[None] | None = None

    async def ask(self, items: Collection[K]) -> Mapping[K, V]:
        """The answers of a round that began after this call (an error of ``run`` is raised
        to every caller of that round). Cancelling a caller leaves the round to the rest."""
        self._pending.update(items)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        answer = self._next
        if self._runner is None:
            self._runner = asyncio.create_task(self._rounds())
        return await asyncio.shield(answer)

    async def _rounds(self) -> None:
        answer: asyncio.Future[Mapping[K, V]] | None = None
        try:
            while self._next is not None:
                items, answer = frozenset(self._pending), self._next
                self._pending, self._next = set(), None
                try:
                    result = await self._run(items)
                except Exception as error:  # every caller of the round gets it
                    answer.set_exception(error)
                    answer.exception()  # a round whose callers all left is no error
                else:
                    answer.set_result(result)
                answer = None
        finally:  # normally nothing is left; when cancelled (shutdown), callers are told
            self._runner = None
            for left in (answer, self._next):
                if left is not None and not left.done():
                    left.cancel()
            self._next = None
            self._pending.clear()

    async def close(self) -> None:
        """Stop the round in flight, if any (its callers see ``CancelledError``)."""
        runner = self._runner
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
