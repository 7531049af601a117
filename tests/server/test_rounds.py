"""Rounds: what callers ask while a round is out goes in the next one, never an earlier one."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from server.rounds import Rounds


class Recorder:
    """A round trip that answers each item doubled, and can be held open."""

    def __init__(self) -> None:
        self.rounds: list[frozenset[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.fail_next = False

    async def run(self, items: frozenset[int]) -> Mapping[int, int]:
        self.rounds.append(items)
        self.started.set()
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("the round trip failed")
        return {item: item * 2 for item in items}


async def test_a_lone_caller_gets_a_round_of_its_own() -> None:
    recorder = Recorder()
    rounds = Rounds(recorder.run)
    assert await rounds.ask((3,)) == {3: 6}
    assert await rounds.ask((4, 5)) == {4: 8, 5: 10}
    assert recorder.rounds == [frozenset({3}), frozenset({4, 5})]


async def test_callers_during_a_round_share_the_next_one_and_none_joins_the_earlier() -> None:
    recorder = Recorder()
    rounds = Rounds(recorder.run)
    recorder.gate.clear()
    first = asyncio.create_task(rounds.ask((1,)))
    await recorder.started.wait()  # round 1 is out, with item 1 only
    later = [asyncio.create_task(rounds.ask((n,))) for n in range(2, 12)]
    await asyncio.sleep(0.01)
    assert recorder.rounds == [frozenset({1})]  # nobody who asked late got into round 1
    recorder.gate.set()
    assert await first == {1: 2}
    answers = await asyncio.gather(*later)
    assert recorder.rounds == [frozenset({1}), frozenset(range(2, 12))]
    assert [answer[n] for answer, n in zip(answers, range(2, 12), strict=True)] == [
        2 * n for n in range(2, 12)
    ]


async def test_a_failed_round_fails_its_callers_only() -> None:
    recorder = Recorder()
    rounds = Rounds(recorder.run)
    recorder.gate.clear()
    recorder.fail_next = True
    doomed = [asyncio.create_task(rounds.ask((n,))) for n in (1, 2)]
    await recorder.started.wait()
    next_round = asyncio.create_task(rounds.ask((3,)))
    await asyncio.sleep(0)
    recorder.gate.set()
    for task in doomed:
        with pytest.raises(ConnectionError):
            await task
    assert await next_round == {3: 6}


async def test_a_caller_that_gives_up_leaves_the_round_to_the_others() -> None:
    recorder = Recorder()
    rounds = Rounds(recorder.run)
    recorder.gate.clear()
    impatient = asyncio.create_task(rounds.ask((1,)))
    patient = asyncio.create_task(rounds.ask((2,)))
    await recorder.started.wait()
    impatient.cancel()
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await patient == {1: 2, 2: 4}
    assert impatient.cancelled()


async def test_close_ends_the_round_in_flight_and_tells_its_callers() -> None:
    recorder = Recorder()
    rounds = Rounds(recorder.run)
    recorder.gate.clear()
    waiting = asyncio.create_task(rounds.ask((1,)))
    await recorder.started.wait()
    queued = asyncio.create_task(rounds.ask((2,)))
    await asyncio.sleep(0)
    await rounds.close()
    for task in (waiting, queued):
        with pytest.raises(asyncio.CancelledError):
            await task
    recorder.gate.set()
    assert await rounds.ask((5,)) == {5: 10}  # usable again if asked
