"""Relay partitions over three real instances: faults that hit partition leaders, and
changes of the partition count, while events flow on channels of every partition.

Each instance reaches Redis through a proxy of its own, so one can be cut off alone. A
subscriber on each instance watches channels chosen so that every partition has two of
them. Whatever happens, each surviving subscriber gets every committed event of its
channels once, in order, each naming the one before it as ``prev``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from db.queries.relay import set_partitions
from loadtests.chaos.proxy import TcpProxy
from server.embedded.redis import EmbeddedRedis
from tests.faults.support import eventually, wait_ready
from tests.support import REPO_ROOT, ServerProcess, server_env, start_servers, stop_servers
from tests.system.realtime_support import (
    Socket,
    User,
    committed_offsets,
    insert_events,
    open_socket,
    sign_up,
)

PARTITIONS = 4
PER_PARTITION = 2
SETTINGS = {"REDIS_WATCHDOG_INTERVAL": "0.5", "REDIS_TIMEOUT": "1"}


@dataclass
class Instance:
    server: ServerProcess
    proxy: TcpProxy  # its own way to Redis
    watcher: Watcher | None = None  # a subscriber to every channel, on this instance

    @property
    def watching(self) -> Watcher:
        assert self.watcher is not None
        return self.watcher


@dataclass
class Cluster:
    http: aiohttp.ClientSession
    instances: list[Instance]
    by_partition: dict[int, list[str]]  # the channels watched, by partition of PARTITIONS

    @property
    def servers(self) -> list[ServerProcess]:
        return [instance.server for instance in self.instances]

    @property
    def channels(self) -> list[str]:
        return [channel for ours in self.by_partition.values() for channel in ours]


@contextlib.asynccontextmanager
async def cluster(database_url: str, redis: EmbeddedRedis) -> AsyncIterator[Cluster]:
    """Three ready instances, each with a watcher of the channels of every partition."""
    by_partition = await channels_of_every_partition(database_url)
    started: list[Instance] = []
    try:
        for _ in range(3):
            proxy = TcpProxy(redis.port).start()
            env = server_env(database_url, proxy.url(redis.url), **SETTINGS)
            started.append(Instance(ServerProcess(env), proxy))
        start_servers(*(instance.server for instance in started))
        async with aiohttp.ClientSession() as http:
            scene = Cluster(http, started, by_partition)
            for server in scene.servers:
                await wait_ready(http, server)
            user = await sign_up(http, scene.servers[0])
            for instance in started:
                instance.watcher = await Watcher.open(http, instance.server, user, scene.channels)
            try:
                yield scene
            finally:
                for instance in started:
                    await instance.watching.close()
    finally:
        stop_servers(*(i.server for i in started if i.server.process is not None))
        for instance in started:
            instance.proxy.stop()


async def relay_report(http: aiohttp.ClientSession, server: ServerProcess) -> dict[str, Any]:
    """What /readyz says of the relay (ready or not); empty when the server does not answer."""
    try:
        async with http.get(f"{server.url}/readyz") as response:
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError):
        return {}
    report: dict[str, Any] = body.get("relay", {})
    return report


async def leading(http: aiohttp.ClientSession, servers: list[ServerProcess]) -> list[list[int]]:
    return [(await relay_report(http, server)).get("leading", []) for server in servers]


async def led_once_each(
    http: aiohttp.ClientSession, servers: list[ServerProcess], partitions: int
) -> None:
    """Until every server runs ``partitions`` partitions and each is led by one of them."""

    async def once_each() -> bool:
        reports = [await relay_report(http, server) for server in servers]
        if any(report.get("partitions") != partitions for report in reports):
            return False
        led = sorted(p for report in reports for p in report.get("leading", []))
        return led == list(range(partitions))

    await eventually(once_each, f"{partitions} partitions led once each")


async def channels_of_every_partition(database_url: str) -> dict[int, list[str]]:
    """PER_PARTITION listing channels for each of PARTITIONS partitions."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT 'listing:' || n AS channel, relay_partition('listing:' || n, $1) AS partition"
            " FROM generate_series(1, 200) n",
            PARTITIONS,
        )
    finally:
        await conn.close()
    chosen: dict[int, list[str]] = {partition: [] for partition in range(PARTITIONS)}
    for row in rows:
        if len(chosen[row["partition"]]) < PER_PARTITION:
            chosen[row["partition"]].append(row["channel"])
    assert all(len(channels) == PER_PARTITION for channels in chosen.values()), chosen
    return chosen


@dataclass(eq=False)
class Watcher:
    """A subscriber whose frames are read as they come (so none wait unread on the
    server), each with the time it arrived."""

    socket: Socket
    starts: dict[str, int]  # the subscribed offset of each channel
    arrivals: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, http: aiohttp.ClientSession, server: ServerProcess, user: User, channels: list[str]
    ) -> Watcher:
        socket = await open_socket(http, server, user)
        starts = {channel: await socket.subscribe(channel) for channel in channels}
        watcher = cls(socket, starts)
        watcher.task = asyncio.create_task(watcher._read())
        return watcher

    async def _read(self) -> None:
        while True:
            try:
                frame = await self.socket.next_frame(timeout=1.0)
            except TimeoutError:
                continue
            except ConnectionError:
                return  # its instance is gone
            self.arrivals.append((time.monotonic(), frame))

    def count(self, channel: str) -> int:
        return len(self.socket.events.get(channel, []))

    async def close(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.socket.ws.close()


class Traffic:
    """Events on every channel, round after round, until stopped."""

    def __init__(self, database_url: str, channels: list[str]) -> None:
        self.database_url = database_url
        self.channels = channels
        self.rounds = 0
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self.stopping.is_set():
            for channel in self.channels:
                await insert_events(self.database_url, channel, 1, start=self.rounds)
            self.rounds += 1
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.stopping.set()
        await self.task


async def flowing(watchers: list[Watcher], channels: list[str], more: int = 3) -> None:
    """Until each watcher received ``more`` events on every channel than it had now."""
    marks = [{channel: watcher.count(channel) for channel in channels} for watcher in watchers]

    async def arrived() -> bool:
        return all(
            watcher.count(channel) >= mark[channel] + more
            for watcher, mark in zip(watchers, marks, strict=True)
            for channel in channels
        )

    await eventually(arrived, f"{more} more events on every channel for every watcher")


async def check_delivered(watchers: list[Watcher], database_url: str) -> None:
    """Each watcher got every committed event of its channels once, in order, chained."""
    expected = {
        (watcher, channel): await committed_offsets(database_url, channel, start)
        for watcher in watchers
        for channel, start in watcher.starts.items()
    }

    async def caught_up() -> bool:
        return all(watcher.count(c) >= len(offsets) for (watcher, c), offsets in expected.items())

    await eventually(caught_up, "every committed event delivered")
    for (watcher, channel), offsets in expected.items():
        assert watcher.socket.offsets(channel) == offsets, channel
        prevs = [frame["prev"] for frame in watcher.socket.events[channel]]
        assert prevs == [watcher.starts[channel], *offsets[:-1]], channel


async def head(database_url: str, channels: list[str]) -> int:
    """The last position of any of ``channels`` committed so far."""
    conn = await asyncpg.connect(database_url)
    try:
        position = await conn.fetchval(
            "SELECT coalesce(max(position), 0) FROM outbox WHERE channel = any($1)", channels
        )
    finally:
        await conn.close()
    assert isinstance(position, int)
    return position


async def first_arrival(watcher: Watcher, channels: list[str], after: int) -> float:
    """When the first event of ``channels`` beyond offset ``after`` reached ``watcher``."""
    found: list[float] = []

    async def arrived() -> bool:
        found[:] = [
            at
            for at, frame in watcher.arrivals
            if frame["op"] == "event" and frame["channel"] in channels and frame["offset"] > after
        ]
        return bool(found)

    await eventually(arrived, f"an event of {channels} after offset {after}")
    return found[0]


async def process_gone(server: ServerProcess) -> None:
    assert server.process is not None
    await asyncio.to_thread(server.process.wait, 20)


async def change_partitions_with_the_command(database_url: str, redis_url: str, count: int) -> None:
    env = {**os.environ, **server_env(database_url, redis_url)}
    command = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jangteo", "relay", "partitions", str(count),
        env=env, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await command.communicate()
    assert command.returncode == 0, err.decode()
    assert out.decode().startswith(f"relay partitions: {count} "), out


async def change_partitions_on_a_connection(database_url: str, count: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await set_partitions(conn, count)
    finally:
        await conn.close()


async def test_a_killed_leader_and_one_cut_off_from_redis_lose_and_double_nothing(
    own_postgres: str, own_redis: EmbeddedRedis
) -> None:
    await change_partitions_on_a_connection(own_postgres, PARTITIONS)
    async with cluster(own_postgres, own_redis) as scene:
        http, servers, channels = scene.http, scene.servers, scene.channels

        async def two_lead() -> bool:
            return sum(1 for ours in await leading(http, servers) if ours) >= 2

        await led_once_each(http, servers, PARTITIONS)
        await eventually(two_lead, "leadership spread over two instances or more")
        watchers = [instance.watching for instance in scene.instances]
        traffic = Traffic(own_postgres, channels)
        try:
            await flowing(watchers, channels)
            led = await leading(http, servers)
            killed = next(index for index, ours in enumerate(led) if ours)
            cut = next(index for index, ours in enumerate(led) if ours and index != killed)
            healthy = 3 - killed - cut
            partition = led[killed][0]
            process = servers[killed].process
            assert process is not None
            os.kill(process.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            scene.instances[cut].proxy.blackhole()
            its_channels = scene.by_partition[partition]
            committed = await head(own_postgres, its_channels)
            # Events keep flowing to the healthy instance through both faults.
            first = await first_arrival(watchers[healthy], its_channels, committed)
            print(
                f"\npartition {partition}: first event delivered"
                f" {first - killed_at:.2f}s after its leader's SIGKILL"
            )
            await process_gone(servers[killed])
            await wait_ready(http, servers[cut], 503)  # it cannot hear Redis
            # The cut-off one steps down: the healthy one leads every partition.
            await led_once_each(http, [servers[healthy]], PARTITIONS)
            await flowing([watchers[healthy]], channels)
            scene.instances[cut].proxy.restore()
            await wait_ready(http, servers[cut])
            survivors = [cut, healthy]
            await flowing([watchers[index] for index in survivors], channels)
        finally:
            await traffic.stop()
        await led_once_each(http, [servers[index] for index in survivors], PARTITIONS)
        await check_delivered([watchers[index] for index in survivors], own_postgres)


async def test_changing_the_count_during_traffic_loses_and_doubles_nothing(
    own_postgres: str, own_redis: EmbeddedRedis
) -> None:
    async with cluster(own_postgres, own_redis) as scene:
        http, servers, channels = scene.http, scene.servers, scene.channels
        watchers = [instance.watching for instance in scene.instances]
        await led_once_each(http, servers, 1)
        traffic = Traffic(own_postgres, channels)
        try:
            await flowing(watchers, channels)
            await change_partitions_with_the_command(own_postgres, own_redis.url, PARTITIONS)
            await led_once_each(http, servers, PARTITIONS)
            await flowing(watchers, channels)
            await change_partitions_on_a_connection(own_postgres, 1)
            await led_once_each(http, servers, 1)
            await flowing(watchers, channels)
        finally:
            await traffic.stop()
        await check_delivered(watchers, own_postgres)
