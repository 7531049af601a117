"""Live events on a real Redis Cluster, through two real instances: spread over every
master by sharded pub/sub, and nothing lost, doubled or reordered when a master is killed,
fails over by hand, or gives a slot carrying live channels to another master."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import redis.asyncio as aioredis
from redis.crc import key_slot

from realtime.broker_redis import channel_prefix
from rediswire.slots import SlotMap, read_slot_map
from server.embedded.redis_cluster import EmbeddedRedisCluster
from tests.support import ServerProcess, two_server_processes
from tests.system.realtime_support import (
    Socket,
    committed_offsets,
    insert_events,
    open_socket,
    sign_up,
)

CHANNELS_PER_MASTER = 2
TICK_S = 0.02  # one event committed this often during a fault
SETTLE_S = 60.0  # a loaded machine may need this long to deliver the last events
EVENTS_BEFORE = 2  # on every channel, on every socket, before a fault strikes


@dataclass
class Recorder:
    """Reads a socket for as long as the test runs: (arrival time, offset) per channel."""

    socket: Socket
    arrivals: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    async def run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            while True:
                frame = await self.socket.next_frame(timeout=3600)
                if frame["op"] == "event":
                    self.arrivals.setdefault(frame["channel"], []).append(
                        (time.monotonic(), frame["offset"])
                    )

    def offsets(self, channel: str) -> list[int]:
        return [offset for _, offset in self.arrivals.get(channel, [])]

    def first_after(self, moment: float, channels: list[str]) -> float | None:
        times = [t for c in channels for t, _ in self.arrivals.get(c, []) if t > moment]
        return min(times) if times else None


async def cluster_client(cluster: EmbeddedRedisCluster) -> aioredis.Redis:
    return aioredis.RedisCluster.from_url(cluster.url)  # type: ignore[return-value]


def spread_channels(slots: SlotMap, prefix: str) -> dict[str, list[str]]:
    """``CHANNELS_PER_MASTER`` listing channels for every master, by their Redis names."""
    by_master: dict[str, list[str]] = {node: [] for node in slots.masters}
    listing = 1_000_000
    while any(len(channels) < CHANNELS_PER_MASTER for channels in by_master.values()):
        listing += 1
        channel = f"listing:{listing}"
        owner = slots.owner(prefix + channel)
        assert owner is not None
        if len(by_master[owner]) < CHANNELS_PER_MASTER:
            by_master[owner].append(channel)
    return by_master


@contextlib.asynccontextmanager
async def watching(
    servers: tuple[ServerProcess, ServerProcess], channels: list[str]
) -> AsyncIterator[list[Recorder]]:
    """A socket on each instance subscribed to every channel, recorded until the end."""
    async with aiohttp.ClientSession() as http:
        recorders = []
        for server in servers:
            socket = await open_socket(http, server, await sign_up(http, server))
            for channel in channels:
                await socket.subscribe(channel)
            recorders.append(Recorder(socket))
        tasks = [asyncio.create_task(recorder.run()) for recorder in recorders]
        try:
            yield recorders
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks)
            for recorder in recorders:
                await recorder.socket.ws.close()


async def steady_traffic(database_url: str, channels: list[str], stop: asyncio.Event) -> None:
    """One event a tick, round-robin over the channels, until ``stop``."""
    counter = 0
    while not stop.is_set():
        await insert_events(database_url, channels[counter % len(channels)], 1, counter)
        counter += 1
        await asyncio.sleep(TICK_S)


async def everything_arrived(
    database_url: str, recorders: list[Recorder], channels: list[str]
) -> None:
    """Each socket ends with exactly the channel's committed offsets, in order."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        expected = {c: await committed_offsets(database_url, c) for c in channels}
        got = [{c: recorder.offsets(c) for c in channels} for recorder in recorders]
        if all(received == expected for received in got) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    for received in got:
        for channel in channels:
            assert received[channel] == expected[channel], channel


async def not_ready_seen(
    http: aiohttp.ClientSession,
    servers: tuple[ServerProcess, ServerProcess],
    stop: asyncio.Event,
    seen: set[int],
) -> None:
    """The instances (by port) whose /readyz said their event subscription was down,
    added to ``seen`` as they are found."""
    while not stop.is_set():
        for server in servers:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"{server.url}/readyz", timeout=aiohttp.ClientTimeout(2)) as r:
                    checks = (await r.json()).get("checks", {}) if r.status == 503 else {}
                    if checks.get("events", "ok") != "ok":
                        seen.add(server.port)
        await asyncio.sleep(0.1)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = SETTLE_S) -> None:
    """Poll ``check`` until it holds or ``timeout`` runs out (the asserts that follow
    then say what is missing)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.1)


async def through_a_fault(
    cluster_env: dict[str, str],
    database_url: str,
    redis_cluster: EmbeddedRedisCluster,
    fault: Callable[[aioredis.Redis, SlotMap, dict[str, list[str]]], Awaitable[list[str]]],
    unready: int = 0,
) -> tuple[list[Recorder], float, list[str], set[int]]:
    """Two instances, events on channels of every master, ``fault`` in the middle.

    Traffic flows to every socket before the fault, and after it until every socket has
    had events published after the fault on each channel it affected (and, when
    ``unready`` is given, that many instances were seen not ready).

    Returns the recorders, when the fault struck, the channels it affected, and the
    instances seen not ready; every socket has been checked to hold every event once.
    """
    client = await cluster_client(redis_cluster)
    try:
        slots = await read_slot_map(client)
        prefix = channel_prefix("jangteo", redis_cluster.url)
        by_master = spread_channels(slots, prefix)
        channels = [c for group in by_master.values() for c in group]
        with two_server_processes(cluster_env) as servers:
            async with watching(servers, channels) as recorders, aiohttp.ClientSession() as http:
                stop = asyncio.Event()
                seen: set[int] = set()
                traffic = asyncio.create_task(steady_traffic(database_url, channels, stop))
                readiness = asyncio.create_task(not_ready_seen(http, servers, stop, seen))

                async def flowing() -> bool:
                    return all(
                        len(recorder.offsets(c)) >= EVENTS_BEFORE
                        for recorder in recorders
                        for c in channels
                    )

                try:
                    await until(flowing)
                    struck = time.monotonic()
                    affected = await fault(client, slots, by_master)
                    marks = {c: (await committed_offsets(database_url, c))[-1] for c in affected}

                    async def past_it() -> bool:
                        return len(seen) >= unready and all(
                            recorder.offsets(c) and recorder.offsets(c)[-1] > mark
                            for recorder in recorders
                            for c, mark in marks.items()
                        )

                    await until(past_it)
                finally:  # whatever happened, no traffic outlives the test
                    stop.set()
                    await traffic
                    await readiness
                await everything_arrived(database_url, recorders, channels)
                await subscribed_on_their_masters(client, prefix, channels, instances=2)
    finally:
        await client.aclose()
    return recorders, struck, affected, seen


async def subscribed_on_their_masters(
    client: aioredis.Redis, prefix: str, channels: list[str], instances: int
) -> None:
    """Each channel is subscribed once per instance on the master that owns it now (after
    a fault, once the instances have moved their subscriptions there)."""
    found: list[tuple[str, str | None, object]] = []

    async def settled() -> bool:
        slots = await read_slot_map(client)
        found.clear()
        for channel in channels:
            owner = slots.owner(prefix + channel)
            answer = None
            if owner is not None:
                node = aioredis.Redis(port=node_port(owner))
                try:
                    answer = await node.execute_command("PUBSUB SHARDNUMSUB", prefix + channel)  # type: ignore[no-untyped-call]
                finally:
                    await node.aclose()
            found.append((channel, owner, answer))
        return all(answer == [((prefix + c).encode(), instances)] for c, _, answer in found)

    await until(settled)
    for channel, owner, answer in found:
        assert owner is not None, channel
        assert answer == [((prefix + channel).encode(), instances)], (channel, owner)


def node_port(node: str) -> int:
    return int(node.rpartition(":")[2])


async def test_events_on_channels_of_every_master_reach_both_instances(
    cluster_env: dict[str, str], database_url: str, redis_cluster: EmbeddedRedisCluster
) -> None:
    client = await cluster_client(redis_cluster)
    try:
        slots = await read_slot_map(client)
        by_master = spread_channels(slots, channel_prefix("jangteo", redis_cluster.url))
        assert len(by_master) == 3
        channels = [c for group in by_master.values() for c in group]
        with two_server_processes(cluster_env) as servers:
            async with watching(servers, channels) as recorders:
                for channel in channels:
                    await insert_events(database_url, channel, 10)
                await everything_arrived(database_url, recorders, channels)
                await subscribed_on_their_masters(
                    client, channel_prefix("jangteo", redis_cluster.url), channels, instances=2
                )
                # One subscription connection per master and instance, named as such.
                for node in by_master:
                    node_client = aioredis.Redis(port=node_port(node))
                    try:
                        names = [c.get("name") for c in await node_client.client_list()]
                    finally:
                        await node_client.aclose()
                    assert names.count("jangteo-events") == 2, (node, names)
    finally:
        await client.aclose()
    assert all(len(recorder.offsets(c)) == 10 for recorder in recorders for c in channels)


async def test_a_master_killed_mid_stream_loses_doubles_and_reorders_nothing(
    cluster_env: dict[str, str], database_url: str, redis_cluster: EmbeddedRedisCluster
) -> None:
    async def kill_a_master(
        client: aioredis.Redis, slots: SlotMap, by_master: dict[str, list[str]]
    ) -> list[str]:
        victim = sorted(by_master)[0]
        node = next(n for n in redis_cluster.nodes if n.port == node_port(victim))
        pid = node.running_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        return by_master[victim]

    recorders, struck, affected, unready = await through_a_fault(
        cluster_env, database_url, redis_cluster, kill_a_master, unready=2
    )
    assert len(unready) == 2  # both instances lost that master's link for a while
    for recorder in recorders:
        first = recorder.first_after(struck, affected)
        assert first is not None
        print(f"killed master: first event on its channels {first - struck:.2f} s after the kill")


async def test_a_manual_failover_loses_doubles_and_reorders_nothing(
    cluster_env: dict[str, str], database_url: str, redis_cluster: EmbeddedRedisCluster
) -> None:
    async def fail_over(
        client: aioredis.Redis, slots: SlotMap, by_master: dict[str, list[str]]
    ) -> list[str]:
        master = sorted(by_master)[1]
        replicas: list[tuple[str, int]] = []
        for _ in range(100):  # a replica that rejoined may take a moment to be listed
            answer = await client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
            replicas = [
                replica for shard in answer.values()
                if f"{shard['primary'][0]}:{shard['primary'][1]}" == master
                for replica in shard["replicas"]
            ]  # fmt: skip
            if replicas:
                break
            await asyncio.sleep(0.1)
        replica = replicas[0]
        replica_client = aioredis.Redis(host=replica[0], port=replica[1])
        try:
            assert await replica_client.execute_command("CLUSTER FAILOVER")  # type: ignore[no-untyped-call]
        finally:
            await replica_client.aclose()
        return by_master[master]

    recorders, struck, affected, _ = await through_a_fault(
        cluster_env, database_url, redis_cluster, fail_over
    )
    for recorder in recorders:
        first = recorder.first_after(struck, affected)
        assert first is not None
        print(f"manual failover: first event on its channels {first - struck:.2f} s after")


async def test_a_slot_migrated_with_live_channels_loses_doubles_and_reorders_nothing(
    cluster_env: dict[str, str], database_url: str, redis_cluster: EmbeddedRedisCluster
) -> None:
    async def migrate_a_slot(
        client: aioredis.Redis, slots: SlotMap, by_master: dict[str, list[str]]
    ) -> list[str]:
        source, target = sorted(by_master)[:2]
        channel = by_master[source][0]
        prefix = channel_prefix("jangteo", redis_cluster.url)
        await move_slot(key_slot((prefix + channel).encode()), source, target)
        return [channel]

    recorders, struck, affected, _ = await through_a_fault(
        cluster_env, database_url, redis_cluster, migrate_a_slot
    )
    for recorder in recorders:
        first = recorder.first_after(struck, affected)
        assert first is not None
        print(f"slot migration: first event on the channel {first - struck:.2f} s after")


async def move_slot(slot: int, source: str, target: str) -> None:
    """Move ``slot`` (and any keys in it) from one master to another, as ``redis-cli
    --cluster reshard`` does: IMPORTING, MIGRATING, MIGRATE, then NODE everywhere."""
    source_client = aioredis.Redis(port=node_port(source))
    target_client = aioredis.Redis(port=node_port(target))
    try:
        source_id = await source_client.execute_command("CLUSTER MYID")  # type: ignore[no-untyped-call]
        target_id = await target_client.execute_command("CLUSTER MYID")  # type: ignore[no-untyped-call]
        await target_client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)  # type: ignore[no-untyped-call]
        await source_client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)  # type: ignore[no-untyped-call]
        while keys := await source_client.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):  # type: ignore[no-untyped-call]
            host, port = target.rpartition(":")[0], node_port(target)
            await source_client.execute_command("MIGRATE", host, port, "", 0, 5000, "KEYS", *keys)  # type: ignore[no-untyped-call]
        for client in (target_client, source_client):
            await client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)  # type: ignore[no-untyped-call]
    finally:
        await source_client.aclose()
        await target_client.aclose()
