"""A reconnect storm at test scale, run by the benchmark's own code (``loadtests/benchmarks/
storm.py``, ``loadtests/clients/storm.py``): the instance holding every socket is SIGKILLed
while events flow, and every app resumes on the other with nothing lost or doubled."""

from __future__ import annotations

import aiohttp

from loadtests.benchmarks.storm import Instance, Scenario, storm
from loadtests.clients.storm import storm_main
from loadtests.clients.ws import LoadClients
from tests.support import ServerProcess
from tests.system.realtime_support import create_listing, sign_up

SOCKETS, CHANNELS, PER_SOCKET = 300, 60, 3
SCENARIO = Scenario(
    sockets=SOCKETS, per_socket=PER_SOCKET, rate=60.0, warmup=2.0, after=2.0, timeout=90.0,
    settle=60.0, publishers=2, seed=7,
)  # fmt: skip


def instance(name: str, server: ServerProcess) -> Instance:
    assert server.process is not None
    return Instance(name, server.port, server.process.pid)


async def test_every_app_resumes_on_the_survivor_with_every_event_once(
    two_servers: tuple[ServerProcess, ServerProcess], database_url: str
) -> None:
    victim, survivor = two_servers
    async with aiohttp.ClientSession() as http:
        user = await sign_up(http, victim)
        listings = [await create_listing(http, victim, user) for _ in range(CHANNELS)]
    channels = [f"listing:{listing}" for listing in listings]
    with LoadClients(1, main=storm_main) as clients:
        figures = await storm(
            SCENARIO, clients, instance("a", victim), instance("b", survivor), channels,
            user.access_token, database_url,
        )  # fmt: skip

    recovery, audit, answers = figures["recovery"], figures["audit"], figures["answers"]
    assert recovery["live_again"] == SOCKETS, recovery
    # Every app tried the dead instance first, then reached the survivor.
    assert min(int(attempts) for attempts in recovery["attempts"]) >= 2, recovery["attempts"]
    assert recovery["dropped_before_kill"] == 0
    assert audit["ok"], (audit["violations"], audit["examples"], audit["settle"])
    assert audit["streams"] == SOCKETS * PER_SOCKET
    # Events kept flowing across the kill, and after it every channel had some to audit.
    assert audit["channels_with_events"] == CHANNELS
    assert figures["events"]["rows"] >= SCENARIO.rate * (SCENARIO.warmup + SCENARIO.after) / 2
    assert answers["5xx"] == 0, answers["counts"]
    assert answers["resyncs"] == 0 and not answers["apps_gave_up"], answers
    resumes = figures["resumes"]
    # Each app resumed each of its channels on the survivor, at most one log read a channel.
    assert resumes["total"] >= SOCKETS * PER_SOCKET, resumes
    assert resumes["log_reads"] <= CHANNELS, resumes
