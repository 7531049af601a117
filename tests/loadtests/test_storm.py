"""The reconnect storm's rules without servers: which channels each app takes, how an app
reconnects, what its audit finds, and how the figures and the targets table are made."""

from __future__ import annotations

import os
import pickle
import random
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from loadtests.benchmarks.storm import Scenario, recovery_figures, status_of, survivor_cpu
from loadtests.clients.storm import (
    NOT_LIVE,
    App,
    AppFigures,
    Shared,
    StormPlan,
    StormProcess,
    backoff,
    final_status,
    storm_main,
)
from loadtests.clients.ws import LoadClients, Tally, Target, WebSocket, retry_after
from loadtests.harness import report

TARGETS = (Target.jangteo("a", 1001, "token"), Target.jangteo("b", 1002, "token"))
CHANNELS = tuple(f"listing:{n}" for n in range(1, 6))


class Highest(random.Random):
    """Dice that always roll the top of the range: the backoff's bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


def plans(apps: int = 10, processes: int = 2, per_app: int = 3) -> list[StormPlan]:
    return StormPlan.split(TARGETS, apps, processes, CHANNELS, per_app, ["127.0.0.2"])


def test_apps_are_split_over_processes_and_every_channel_gets_as_many() -> None:
    split = plans()
    numbers = sorted(number for plan in split for number in plan.apps)
    assert numbers == list(range(10))
    taken = Counter(channel for plan in split for n in plan.apps for channel in plan.channels_of(n))
    assert taken == dict.fromkeys(CHANNELS, 10 * 3 // len(CHANNELS))
    for plan in split:
        for number in plan.apps:
            assert len(set(plan.channels_of(number))) == 3


def test_more_channels_per_app_than_channels_is_refused() -> None:
    with pytest.raises(ValueError, match="an app takes 1 to 5 channels here, not 6"):
        plans(per_app=6)
    with pytest.raises(ValueError, match="not 0"):
        plans(per_app=0)


def test_the_backoff_is_full_jitter_doubling_from_half_a_second_to_thirty() -> None:
    top = Highest()
    assert [backoff(n, top) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    rolls = random.Random(3)
    assert all(0.0 <= backoff(2, rolls) <= 2.0 for _ in range(200))


def test_a_4xx_other_than_408_and_429_is_final() -> None:
    assert [final_status(s) for s in (401, 403, 404, 400)] == [True] * 4
    assert [final_status(s) for s in (0, 408, 429, 500, 503, 201)] == [False] * 6


def test_retry_after_is_read_in_seconds_and_anything_else_waits_nothing() -> None:
    assert [retry_after(v) for v in ("2", b"3", " 1.5 ", None, "", "-4")] == [2, 3, 1.5, 0, 0, 0]
    assert retry_after("Wed, 21 Oct 2026 07:28:00 GMT") == 0.0


def test_the_scenario_refuses_what_cannot_run() -> None:
    good: dict[str, Any] = {"sockets": 10, "per_socket": 3, "rate": 10.0, "warmup": 0.0,
                            "after": 1.0, "timeout": 5.0, "settle": 5.0,
                            "publishers": 1}  # fmt: skip
    Scenario(**good)
    with pytest.raises(ValueError, match="--sockets must be above 0"):
        Scenario(**good | {"sockets": 0})
    with pytest.raises(ValueError, match="--rate must be above 0"):
        Scenario(**good | {"rate": -1.0})
    with pytest.raises(ValueError, match="--warmup must be 0 or more"):
        Scenario(**good | {"warmup": -0.5})


def test_answer_keys_carry_their_status() -> None:
    keys = ("ticket 503", "upgrade 101", "ticket ClientConnectorError")
    assert [status_of(key) for key in keys] == [503, 101, 0]


def test_a_command_that_arrives_in_parts_reaches_a_client_process_whole() -> None:
    """The pipe stays blocking in the client process: a loop watching it (uvloop's makes
    it non-blocking) would find it empty half way through a long command and drop it."""
    heads = {f"listing:{n}": n for n in range(20_000)}
    message = pickle.dumps(("behind", heads))
    framed = struct.pack("!i", len(message)) + message  # multiprocessing's framing
    with LoadClients(1, main=storm_main) as clients:
        pipe = clients.pipes[0]
        half = len(framed) // 2
        write_all(pipe.fileno(), framed[:half])
        time.sleep(0.5)  # the client has read the first half and finds the pipe empty
        write_all(pipe.fileno(), framed[half:])
        assert pipe.recv() == 0  # no apps started: none behind
        assert clients.call("progress", [0.0]) == [
            {"apps": 0, "live": 0, "live_since": 0, "stopped": 0}
        ]


def write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


# ----------------------------------------------------------------------------- one app


@pytest.fixture
async def shared() -> AsyncIterator[Shared]:
    async with aiohttp.ClientSession() as session:
        yield Shared(session, Highest())


def connected(app: App) -> WebSocket:
    """A socket for ``app`` as after its upgrade (no transport: what it sends goes nowhere)."""
    socket = WebSocket(app, Tally(), b"", b"")
    socket.open = True
    app.socket = socket
    for channel in app.streams:
        app.subscribe(channel)
    return socket


def frame(socket: WebSocket, **fields: Any) -> None:
    socket.fleet.on_text(socket, orjson.dumps(fields), 1000.0)


async def test_an_app_is_live_once_every_channel_is_subscribed(shared: Shared) -> None:
    app = App(0, plans()[0], shared)
    assert list(app.streams) == list(CHANNELS[:3])
    socket = connected(app)
    for offset, channel in enumerate(CHANNELS[:3]):
        assert not app.live
        frame(socket, op="subscribed", channel=channel, offset=offset * 10)
    assert app.live and app.lives == 1 and app.live_at == 1000.0
    frame(socket, op="event", channel=CHANNELS[0], offset=5, prev=0)
    assert app.streams[CHANNELS[0]].last == 5


async def test_a_resumed_app_subscribes_from_its_last_offsets(shared: Shared) -> None:
    app = App(0, plans()[0], shared)
    socket = connected(app)
    for channel in CHANNELS[:3]:
        frame(socket, op="subscribed", channel=channel, offset=7)
    frame(socket, op="event", channel=CHANNELS[1], offset=9, prev=7)
    socket.open = False
    app.ended(socket)
    assert app.drops and not app.live and not app.stopped
    connected(app)
    assert app.since_sent == {CHANNELS[0]: 7, CHANNELS[1]: 9, CHANNELS[2]: 7}
    assert app.waiting == set(CHANNELS[:3])


async def test_an_unreachable_instance_sends_the_app_to_the_next(shared: Shared) -> None:
    app = App(0, plans()[0], shared)
    assert app.refused(0, 0.0) == 0.0 and app.target == 1
    assert app.refused(503, 2.0) == 2.0 and app.target == 1  # it answered: stay
    assert not app.stopped
    assert app.refused(0, 0.0) == 0.0 and app.target == 0
    app.refused(401, 0.0)
    assert app.stopped.endswith("401")


@pytest.mark.parametrize(
    ("code", "stops"), [(None, False), (1001, False), (1011, False), (1013, False),
                        (1008, True), (1009, True), (4401, True)],
)  # fmt: skip
async def test_close_codes_stop_an_app_as_they_stop_the_reference_client(
    shared: Shared, code: int | None, stops: bool
) -> None:
    app = App(0, plans()[0], shared)
    socket = connected(app)
    socket.close_code = code
    app.ended(socket)
    assert bool(app.stopped) is stops


async def test_a_served_socket_resets_the_backoff_and_one_closed_at_once_does_not(
    shared: Shared,
) -> None:
    app = App(0, plans()[0], shared)
    app.failures = 3
    socket = connected(app)
    socket.close_code = 1013  # full: closed before any frame
    app.ended(socket)
    assert app.failures == 3
    socket = connected(app)
    frame(socket, op="subscribed", channel=CHANNELS[0], offset=1)
    app.ended(socket)
    assert app.failures == 0


async def refusing_server(ticket: int, upgrade: int) -> TestServer:
    """A server whose ticket desk answers ``ticket`` and whose socket answers ``upgrade``,
    each with ``Retry-After: 2`` (the ticket desk's 201 carries a ticket)."""

    async def desk(request: web.Request) -> web.Response:
        if ticket == 201:
            return web.json_response({"ticket": "t", "expires_in": 30}, status=201)
        return web.Response(status=ticket, headers={"Retry-After": "2"})

    async def socket(request: web.Request) -> web.Response:
        return web.Response(status=upgrade, headers={"Retry-After": "2"})

    app = web.Application()
    app.router.add_post("/api/v1/ws/ticket", desk)
    app.router.add_get("/api/v1/ws", socket)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.parametrize(
    ("ticket", "upgrade", "answer"),
    [(429, 101, "ticket 429"), (503, 101, "ticket 503"), (201, 503, "upgrade 503")],
)
async def test_a_429_or_503_is_waited_out_on_the_same_instance(
    shared: Shared, ticket: int, upgrade: int, answer: str
) -> None:
    server = await refusing_server(ticket, upgrade)
    try:
        target = Target.jangteo("refusing", server.port or 0, "token")
        plan = StormPlan((target, TARGETS[1]), range(1), CHANNELS, 3, ("127.0.0.2",))
        app = App(0, plan, shared)
        assert await app.open() == (None, 2.0)
        assert shared.answers[answer] == 1 and app.target == 0 and not app.stopped
    finally:
        await server.close()


async def test_an_instance_that_cannot_be_reached_sends_the_app_to_the_next(
    shared: Shared,
) -> None:
    server = await refusing_server(201, 503)
    port = server.port or 0
    await server.close()  # nothing listens there any more
    plan = StormPlan((Target.jangteo("gone", port, "t"), TARGETS[1]), range(1), CHANNELS, 3,
                     ("127.0.0.2",))  # fmt: skip
    app = App(0, plan, shared)
    assert await app.open() == (None, 0.0)
    assert app.target == 1 and shared.answers["ticket ClientConnectorError"] == 1


async def test_the_audit_finds_a_missed_and_a_doubled_event(shared: Shared) -> None:
    process = StormProcess()
    process.apps = [App(n, plans(apps=3, processes=1)[0], shared) for n in range(3)]
    log = {channel: [(10, 0, 0), (11, 10, 1), (12, 11, 2), (13, 12, 3)] for channel in CHANNELS}
    prevs = {offset: prev for offset, prev, _ in log[CHANNELS[0]]}
    received = ([11, 12, 13], [11, 13], [11, 12, 12, 13])  # complete, one missed, one doubled
    for app, offsets in zip(process.apps, received, strict=True):
        socket = connected(app)
        first, *others = app.streams
        for channel in app.streams:
            frame(socket, op="subscribed", channel=channel, offset=10)
        for offset in offsets:
            frame(socket, op="event", channel=first, offset=offset, prev=prevs[offset])
        for channel in others:
            for offset in (11, 12, 13):
                frame(socket, op="event", channel=channel, offset=offset, prev=prevs[offset])
    found = process.audit((log, float("inf")))
    assert found["streams"] == 9 and found["events"] == 3 + 2 + 4 + 6 * 3
    assert found["violations"] == {"ws-delivery": 2, "ws-prev": 1}
    assert any("app 1" in example and "missed 1 of 3" in example for example in found["examples"])
    assert any("app 2" in example and "duplicates 12" in example for example in found["examples"])


# ----------------------------------------------------------------------------- figures


def reply(*apps: AppFigures) -> dict[str, Any]:
    return {"apps": [tuple(app) for app in apps]}


def test_live_again_times_count_from_the_kill_and_an_app_never_back_leaves_100_pct_open() -> None:
    killed = 1000.0
    back = [
        AppFigures(killed + s, 0.01, 0.05, 2, 2, 1, killed + 0.001, True) for s in (1.0, 2.0, 4.0)
    ]
    figures = recovery_figures([reply(*back[:2]), reply(back[2])], killed, [(0.5, 0)])
    assert (figures["seconds_to_50pct"], figures["seconds_to_100pct"]) == (2.0, 4.0)
    assert figures["resume_ms"]["p50"] == 50.0 and figures["subscribe_ms"]["p50"] == 40.0
    assert figures["attempts"] == {2: 3} and figures["not_live"] == 0
    stuck = AppFigures(NOT_LIVE, 0.0, 0.0, 9, 1, 1, killed + 0.001, False)
    figures = recovery_figures([reply(*back, stuck)], killed, [])
    assert figures["not_live"] == 1 and figures["seconds_to_100pct"] is None
    assert figures["seconds_to_50pct"] == 2.0
    lost_again = AppFigures(killed + 0.5, 0.01, 0.05, 3, 2, 2, killed + 0.001, False)
    figures = recovery_figures([reply(*back, lost_again)], killed, [])
    assert figures["not_live"] == 1 and figures["seconds_to_99pct"] is None
    early = AppFigures(killed + 1.0, 0.01, 0.05, 2, 2, 2, killed - 3.0, True)
    figures = recovery_figures([reply(early)], killed, [])
    assert figures["dropped_before_kill"] == 1 and figures["dropped_more_than_once"] == 1


def test_the_survivors_cpu_per_app_leaves_out_the_events_sent_to_apps_already_back() -> None:
    killed = 1000.0
    # Back 1 s and 3 s after the kill, the last look at 4 s: 3 + 1 = 4 app-seconds live.
    back = [AppFigures(killed + s, 0.01, 0.05, 2, 2, 1, killed, True) for s in (1.0, 3.0)]
    never = AppFigures(NOT_LIVE, 0.0, 0.0, 9, 1, 1, killed, False)
    # 2 CPU s in the 5 s after, for 3 apps: 2 / 5 / 3 CPU s per app-second live.
    figures = survivor_cpu([reply(*back, never)], killed, [(4.0, 2)], 3.0, 2.0, 5.0)
    assert figures["ms_per_app"] == 1000.0 and figures["live_app_seconds"] == 4.0
    assert figures["seconds_per_s_all_live"] == 0.4
    assert figures["resume_ms_per_app"] == round(1000 * (3.0 - 2 / 5 / 3 * 4) / 3, 3)
    no_after = survivor_cpu([reply(*back)], killed, [(4.0, 2)], 3.0, 0.0, 0.0)
    assert no_after["resume_ms_per_app"] is None and no_after["ms_per_app"] == 1500.0
    assert survivor_cpu([], killed, [], 3.0, 2.0, 5.0) == {}


def storm_data(all_live: float | None, audit_ok: bool, log_reads: float) -> dict[str, Any]:
    return {
        "date": "2026-12-03T00:00:00+00:00",
        "load": {"sockets": 10_000, "channels": 1_000, "per_socket": 3},
        "targets": {"all_live_s": 15.0},
        "storm": {
            "recovery": {"seconds_to_100pct": all_live, "seconds_to_99pct": 3.0,
                         "resume_ms": {"p50": 40.0, "p99": 900.0}},
            "audit": {"ok": audit_ok},
            "resumes": {"log_reads": log_reads,
                        "by_source": {"memory": 28_000.0, "log": log_reads, "shared": 1_000.0}},
        },
    }  # fmt: skip


def test_the_storm_rows_meet_their_targets_only_with_every_app_back_in_time_and_the_audit() -> None:
    statuses = [r["status"] for r in report.storm_rows(storm_data(9.5, True, 990.0))]
    assert statuses == ["met", "met"]
    assert report.storm_rows(storm_data(16.0, True, 990.0))[0]["status"] == "missed"
    assert report.storm_rows(storm_data(9.5, False, 990.0))[0]["status"] == "missed"
    assert report.storm_rows(storm_data(None, True, 990.0))[0]["status"] == "missed"
    assert report.storm_rows(storm_data(9.5, True, 1_001.0))[1]["status"] == "missed"
    first = report.storm_rows(storm_data(9.5, True, 990.0))[0]
    assert "100% live again in 9.5 s (99% in 3.0 s)" in first["figure_text"]
    assert [r["status"] for r in report.storm_rows({})] == ["not measured"] * 2
