"""The nemesis: applies the schedule to the cluster, on time, and keeps the fault history.

Each fault runs as its own task: it waits for its time, resolves its target (``leader``:
the instance whose ``/metrics`` says ``jangteo_relay_leader 1`` then), breaks, holds, and
heals. What it did (which instance, when each phase began and ended, notes such as a
SIGTERM's exit status) is the history; the windows in which an instance did not serve
(paused, killed, terminated) tell the stall which watchers to leave out.

A monitor samples every instance's ``/readyz`` and leadership each second (the changes
are the timeline) and restarts an instance that exited on its own, which it reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from loadtests.chaos.cluster import SHUTDOWN_TIMEOUT_S, Cluster, ClusterError, Instance, probe
from loadtests.chaos.proxy import TcpProxy
from loadtests.chaos.schedule import Fault

FREE_WAIT_S = 20.0  # how long a fault waits for another instance to be back up
PUBSUB_KILL_EVERY_S = 0.3
MONITOR_EVERY_S = 1.0
SIGTERM_EXIT_S = SHUTDOWN_TIMEOUT_S + 10.0
CRASH = Fault(0, "crash", 0.0, 0.0)  # what a restart after a crash is noted under


@dataclass(slots=True)
class Applied:
    """One fault as it was applied."""

    fault: Fault
    instance: int | None = None
    started: float | None = None  # seconds after the schedule started
    ended: float | None = None
    phases: list[list[Any]] = field(default_factory=list)  # [label, start s, end s]
    notes: list[str] = field(default_factory=list)
    skipped: str = ""

    def as_json(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 2)

        return {
            **self.fault.as_json(),
            "instance": self.instance,
            "started_s": rounded(self.started),
            "ended_s": rounded(self.ended),
            "phases": [[label, rounded(start), rounded(end)] for label, start, end in self.phases],
            "notes": self.notes,
            "skipped": self.skipped or None,
        }


class Nemesis:
    def __init__(
        self,
        cluster: Cluster,
        http: aiohttp.ClientSession,
        slow_client: Callable[[Instance, TcpProxy], Callable[[], str]],
        slow_rate: int,
    ) -> None:
        self.cluster = cluster
        self.http = http
        self.slow_client = slow_client  # starts a slow watcher; returns its progress report
        self.slow_rate = slow_rate
        self.history: list[Applied] = []
        self.down: dict[int, list[list[float | None]]] = {}  # instance -> [start s, end s]
        self.timeline: list[dict[str, Any]] = []  # readiness and leadership changes
        self.broken: list[tuple[str, str]] = []  # (invariant, detail) seen while applying
        self.busy: dict[int, int] = {}  # instance -> number of the fault holding it
        self.t0 = time.monotonic()
        self.t0_ms = time.time() * 1000.0
        self._seen: dict[int, tuple[int | None, bool | None]] = {}
        self._restarts: set[asyncio.Task[None]] = set()

    def clock(self) -> float:
        return time.monotonic() - self.t0

    async def run(self, faults: list[Fault]) -> None:
        """Apply every fault at its time; return when the last one has healed."""
        self.t0 = time.monotonic()
        self.t0_ms = time.time() * 1000.0
        await asyncio.gather(*(self._apply(fault) for fault in faults))

    async def _until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.clock()))

    async def _apply(self, fault: Fault) -> None:
        applied = Applied(fault)
        self.history.append(applied)
        await self._until(fault.at)
        action = getattr(self, "_" + fault.kind.replace("-", "_"))
        try:
            await action(fault, applied)
        except Exception as error:  # the history says so; the heal afterwards repairs
            applied.notes.append(f"failed: {error!r}")
        finally:
            if applied.instance is not None and self.busy.get(applied.instance) == fault.number:
                del self.busy[applied.instance]
            if not applied.skipped:
                applied.ended = self.clock()
                for phase in applied.phases:
                    phase[2] = phase[2] if phase[2] is not None else applied.ended
            label = f"skipped ({applied.skipped})" if applied.skipped else "healed"
            print(f"  [{self.clock():6.1f} s] {label}: {fault.describe()}", flush=True)

    def _begin(self, applied: Applied, label: str) -> list[Any]:
        now = self.clock()
        if applied.started is None:
            applied.started = now
            where = f" on instance-{applied.instance}" if applied.instance is not None else ""
            print(f"  [{now:6.1f} s] {applied.fault.describe()}{where}", flush=True)
        phase: list[Any] = [label, now, None]
        applied.phases.append(phase)
        return phase

    def _end(self, phase: list[Any]) -> None:
        phase[2] = self.clock()

    # -- targets -------------------------------------------------------------------------

    async def _take(self, fault: Fault, applied: Applied, stops: bool) -> Instance | None:
        """The instance ``fault`` hits, marked busy; None (skipped) when none is free.

        A fault that stops an instance waits until every other instance is back up."""
        deadline = time.monotonic() + FREE_WAIT_S
        while stops and any(i.state != "running" for i in self.cluster.instances):
            if time.monotonic() > deadline:
                applied.skipped = "another instance is still down"
                return None
            await asyncio.sleep(0.2)
        free = [
            instance
            for instance in self.cluster.instances
            if instance.state == "running" and instance.index not in self.busy
        ]
        if not free:
            applied.skipped = "no instance is free"
            return None
        chosen: Instance
        if fault.target == "leader":
            probes = await asyncio.gather(*(probe(self.http, instance) for instance in free))
            leaders = [i for i, (_, leader) in zip(free, probes, strict=True) if leader]
            chosen = leaders[0] if leaders else free[0]
            if not leaders:
                applied.notes.append(f"the leader was not free; took {chosen.name}")
        else:
            wanted = int(fault.target.rsplit("-", 1)[1])
            ordered = sorted(free, key=lambda i: (i.index - wanted) % len(self.cluster.instances))
            chosen = ordered[0]
            if chosen.index != wanted:
                applied.notes.append(f"{fault.target} was not free; took {chosen.name}")
        self.busy[chosen.index] = fault.number
        applied.instance = chosen.index
        return chosen

    def _down(self, instance: Instance) -> list[float | None]:
        window: list[float | None] = [self.clock(), None]
        self.down.setdefault(instance.index, []).append(window)
        return window

    # -- the faults ----------------------------------------------------------------------

    async def _partition(self, fault: Fault, applied: Applied) -> None:
        instance = await self._take(fault, applied, stops=False)
        if instance is None:
            return
        for proxy, label, until in (
            (instance.redis_proxy, "partition-redis", fault.at + fault.hold),
            (instance.postgres_proxy, "partition-postgres", fault.end),
        ):
            await asyncio.to_thread(proxy.blackhole)
            phase = self._begin(applied, label)
            try:
                await self._until(until)
            finally:
                await asyncio.to_thread(proxy.restore)
                self._end(phase)

    async def _service(self, fault: Fault, applied: Applied) -> None:
        """Redis SIGKILLed, or PostgreSQL fast-stopped (SIGINT to the postmaster, what
        ``pg_ctl stop -m fast`` sends); started again after the hold."""
        services = self.cluster.services
        service = services.redis if fault.kind == "redis-kill" else services.postgres
        phase = self._begin(applied, fault.kind)
        started = time.monotonic()
        try:
            if fault.kind == "redis-kill":
                await asyncio.to_thread(services.kill_redis)
            else:
                await asyncio.to_thread(services.postgres.stop)
                applied.notes.append(f"fast shutdown took {time.monotonic() - started:.1f} s")
            await self._until(fault.end)
        finally:
            await asyncio.to_thread(service.ensure_running)
            self._end(phase)

    _redis_kill = _postgres_restart = _service

    async def _pubsub_kill(self, fault: Fault, applied: Applied) -> None:
        phase = self._begin(applied, fault.kind)
        client = aioredis.Redis(
            port=self.cluster.services.redis.port, socket_timeout=1, socket_connect_timeout=1
        )
        killed = failed = 0
        try:
            while self.clock() < fault.end:
                try:
                    killed += int(await client.client_kill_filter(_type="pubsub"))
                except (RedisError, OSError):
                    failed += 1  # Redis itself may be down meanwhile
                await asyncio.sleep(PUBSUB_KILL_EVERY_S)
        finally:
            await client.aclose()
            self._end(phase)
        applied.notes.append(f"{killed} pub/sub connections killed, {failed} attempts failed")

    async def _stop_instance(self, fault: Fault, applied: Applied) -> None:
        """An instance stops serving for the hold: SIGSTOPped (then SIGCONTed), SIGKILLed or
        SIGTERMed (then started again). SIGTERM must end it with status 0 in time."""
        instance = await self._take(fault, applied, stops=True)
        if instance is None:
            return
        phase = self._begin(applied, fault.kind)
        window = self._down(instance)
        try:
            if fault.kind == "pause":
                instance.send(signal.SIGSTOP)
                instance.state = "paused"
            elif fault.kind == "kill":
                instance.state = "stopped"  # before it dies: the monitor must not see a crash
                await asyncio.to_thread(instance.kill)
            else:
                await self._sigterm(instance, applied)
                await asyncio.sleep(fault.hold)
            await self._until(fault.end)
        finally:
            if fault.kind == "pause":
                instance.send(signal.SIGCONT)
                instance.state = "running"
            else:
                await self._restart(instance, applied)
            window[1] = self.clock()
            self._end(phase)

    _pause = _kill = _terminate = _stop_instance

    async def _sigterm(self, instance: Instance, applied: Applied) -> None:
        started = time.monotonic()
        instance.send(signal.SIGTERM)
        instance.state = "stopped"  # it accepts no more: a load balancer sends elsewhere
        code = await asyncio.to_thread(instance.wait_exit, SIGTERM_EXIT_S)
        took = time.monotonic() - started
        if code is None:
            detail = f"{instance.name} still ran {took:.0f} s after SIGTERM (killed)"
            self.broken.append(("shutdown", detail))
            await asyncio.to_thread(instance.kill)
        elif code != 0:
            self.broken.append(("shutdown", f"{instance.name} exited {code} on SIGTERM"))
        applied.notes.append(f"exited {code} {took:.1f} s after SIGTERM")

    async def _slow_client(self, fault: Fault, applied: Applied) -> None:
        instance = self.cluster.instances[int(fault.target.rsplit("-", 1)[1])]
        applied.instance = instance.index
        phase = self._begin(applied, fault.kind)
        link = self.cluster.proxy(instance.port, rate=self.slow_rate)
        progress = self.slow_client(instance, link)
        try:
            await self._until(fault.end)
        finally:
            await asyncio.to_thread(link.throttle, None)
            self._end(phase)
        applied.notes.append(f"throttled to {self.slow_rate} bytes/s: {progress()}")

    async def _restart(self, instance: Instance, applied: Applied) -> None:
        try:
            await asyncio.to_thread(instance.start)
        except ClusterError as error:
            applied.notes.append(str(error))

    # -- healing and watching ------------------------------------------------------------

    async def heal(self) -> None:
        """Whatever is still broken, repaired: links, services, stopped instances."""
        for instance in self.cluster.instances:
            await asyncio.to_thread(instance.redis_proxy.restore)
            await asyncio.to_thread(instance.postgres_proxy.restore)
        await asyncio.to_thread(self.cluster.services.start)
        for instance in self.cluster.instances:
            if instance.state == "paused":
                instance.send(signal.SIGCONT)
                instance.state = "running"
            if instance.process is None or instance.process.poll() is not None:
                await asyncio.to_thread(instance.start)

    async def monitor(self, stop: asyncio.Event) -> None:
        """Sample readiness and leadership every second until ``stop``; restart crashes."""
        while not stop.is_set():
            running = [i for i in self.cluster.instances if i.state == "running"]
            for instance in running:
                process = instance.process
                if process is not None and process.poll() is not None:
                    detail = f"{instance.name} exited {process.returncode} on its own"
                    self.broken.append(("instance-crashed", f"{detail} at {self.clock():.1f} s"))
                    instance.state = "stopped"
                    restart = asyncio.create_task(self._restart(instance, Applied(CRASH)))
                    self._restarts.add(restart)
                    restart.add_done_callback(self._restarts.discard)
            probes = await asyncio.gather(*(probe(self.http, i) for i in running))
            for instance, seen in zip(running, probes, strict=True):
                if self._seen.get(instance.index) != seen:
                    self._seen[instance.index] = seen
                    ready, leader = seen
                    change = {"t": round(self.clock(), 2), "instance": instance.index}
                    self.timeline.append({**change, "readyz": ready, "leader": leader})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), MONITOR_EVERY_S)
