"""Reads by key of one loop turn, sent as one statement (db/read_batches.py): against real
listings in PostgreSQL, and with a counting reader for what a batch holds."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import asyncpg
import pytest

from db.queries.listings import listing_by_id, listings_by_id
from db.read_batches import ReadBatches

WAIT_TIMEOUT = 20.0


class CountingReader:
    """Answers each key with its double, after ``delay``; remembers every batch."""

    def __init__(self, delay: float = 0.0, failing: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.failing = failing

    async def __call__(self, keys: Sequence[int]) -> Mapping[int, int]:
        self.batches.append(list(keys))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failing:
            raise ConnectionResetError("the database went away")
        return {key: key * 2 for key in keys if key >= 0}


async def test_reads_asked_in_one_turn_go_out_together_and_each_gets_its_own() -> None:
    reader = CountingReader()
    reads: ReadBatches[int, int] = ReadBatches(reader)
    answers = await asyncio.gather(*(reads.get(key) for key in range(250)))
    assert answers == [key * 2 for key in range(250)]
    assert [len(batch) for batch in reader.batches] == [100, 100, 50]  # at most `most` each
    assert sorted(key for batch in reader.batches for key in batch) == list(range(250))


async def test_a_lone_read_goes_out_at_once_and_unknown_keys_answer_none() -> None:
    reader = CountingReader()
    reads: ReadBatches[int, int] = ReadBatches(reader)
    assert await reads.get(7) == 14
    assert await reads.get(-1) is None
    assert reader.batches == [[7], [-1]]


async def test_one_key_asked_twice_in_a_turn_is_read_once() -> None:
    reader = CountingReader()
    reads: ReadBatches[int, int] = ReadBatches(reader)
    assert list(await asyncio.gather(reads.get(3), reads.get(3), reads.get(4))) == [6, 6, 8]
    assert reader.batches == [[3, 4]]


async def test_batches_do_not_wait_for_each_other() -> None:
    """A second turn's reads go out while the first turn's are still being read."""
    reader = CountingReader(delay=0.5)
    reads: ReadBatches[int, int] = ReadBatches(reader)
    first = asyncio.ensure_future(reads.get(1))
    await asyncio.sleep(0)  # the first turn's batch is sent
    await asyncio.sleep(0)
    second = asyncio.ensure_future(reads.get(2))
    await asyncio.sleep(0.1)
    assert reader.batches == [[1], [2]]  # both out before the first answered
    assert list(await asyncio.gather(first, second)) == [2, 4]


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_reads() -> None:
    reader = CountingReader(failing=True)
    reads: ReadBatches[int, int] = ReadBatches(reader)
    results = await asyncio.gather(reads.get(1), reads.get(2), return_exceptions=True)
    assert [type(result) for result in results] == [ConnectionResetError] * 2
    reader.failing = False
    assert await reads.get(1) == 2


async def test_a_caller_that_leaves_does_not_take_the_answer_from_the_others() -> None:
    reader = CountingReader(delay=0.2)
    reads: ReadBatches[int, int] = ReadBatches(reader)
    leaving = asyncio.ensure_future(reads.get(5))
    staying = asyncio.ensure_future(reads.get(5))
    await asyncio.sleep(0.05)
    leaving.cancel()
    assert await staying == 10
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_closing_cancels_the_reads_in_flight() -> None:
    reader = CountingReader(delay=10)
    reads: ReadBatches[int, int] = ReadBatches(reader)
    waiting = asyncio.ensure_future(reads.get(1))
    await asyncio.sleep(0.05)
    async with asyncio.timeout(WAIT_TIMEOUT):
        await reads.close()
        with pytest.raises(asyncio.CancelledError):
            await waiting


async def test_concurrent_listing_reads_share_statements_and_answer_as_one_by_one(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Two hundred concurrent detail reads on a real pool: each answers exactly what a read
    of its id alone answers (unknown ids: None), in far fewer statements than reads."""
    seller: int = await db.fetchval(
        "INSERT INTO users (email, password_hash, nickname, region)"
        " VALUES ('batch-reads@example.com', '!', 'seller', 'seoul-mapo') RETURNING id"
    )
    ids = [
        row["id"]
        for row in await db.fetch(
            "INSERT INTO listings (seller_id, title, price, quantity, category, region)"
            " SELECT $1, 'Lamp ' || g, g * 100, 1, 'sports', 'seoul-mapo'"
            " FROM generate_series(1, 150) AS g RETURNING id",
            seller,
        )
    ]
    asked = ids + [max(ids) + n for n in range(1, 51)]  # 50 that do not exist
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    statements: list[int] = []

    async def read_many(keys: Sequence[int]) -> dict[int, asyncpg.Record]:
        statements.append(len(keys))
        return await listings_by_id(pool, keys)

    try:
        reads: ReadBatches[int, asyncpg.Record] = ReadBatches(read_many)
        async with asyncio.timeout(WAIT_TIMEOUT):
            batched = await asyncio.gather(*(reads.get(key) for key in asked))
        alone = [await listing_by_id(db, key) for key in asked]
    finally:
        await pool.close()
    assert [None if row is None else dict(row) for row in batched] == [
        None if row is None else dict(row) for row in alone
    ]
    assert sum(statements) == len(asked) and len(statements) < len(asked) / 10


async def test_no_ids_and_unknown_ids_read_nothing(db: asyncpg.Connection) -> None:
    assert await listings_by_id(db, []) == {}
    assert await listings_by_id(db, [-1, 0]) == {}
