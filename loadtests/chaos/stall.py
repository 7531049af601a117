"""The stall: how long committed events waited before a subscriber got them.

For every event a watcher received (its first receipt of that offset) the wait is
``received - start``, where ``start`` is the latest of: the event's commit (``ts``), the
watcher's first subscription to the channel, and the end of any time the watcher was
away because ITS OWN instance was not serving (paused, killed, terminated: from the
moment it stopped until the watcher was subscribed again, on a new socket or on the same
one once the instance went on). Those watchers reconnect elsewhere or later; counting
that time would measure the client's heartbeat, not the server. A watcher's own drops
and reconnects are not left out: it resumes at once, and an event owed before the drop
and delivered after it still counts from its commit.

Per fault (each phase of a partition apart), the wait of an event counts from the
fault's start when it committed earlier, so the figure is "from the fault's start (or
the commit, if later) to the delivery", for events delivered after the fault began and
owed before it ended (or within a second after). Per kind: the longest of all its
faults, and the longest of those that no other fault overlapped (``alone_s``: what the
5-second goal is about). The longest overall wait names the faults active during it and
those it began under; the longest with no fault active is the baseline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from loadtests.chaos.watchers import Watcher

GRACE_MS = 1000.0  # a wait that begins this soon after a fault ended still counts for it
INFINITY = float("inf")


@dataclass(frozen=True, slots=True)
class Phase:
    """A fault's phase in epoch ms: what, when, which fault, which instance."""

    label: str
    start: float
    end: float
    fault: int
    instance: int | None

    def name(self) -> str:
        where = f" on instance-{self.instance}" if self.instance is not None else ""
        return f"#{self.fault} {self.label}{where}"

    def covers(self, wait: Wait) -> bool:
        """The phase was active while the event waited (or ended at most a grace before)."""
        return self.start <= wait.received and wait.start <= self.end + GRACE_MS


@dataclass(frozen=True, slots=True)
class Wait:
    ms: float
    start: float
    received: float
    watcher: str
    instance: int
    channel: str
    offset: int


def absences(
    watcher: Watcher, down: Mapping[int, Sequence[tuple[float, float]]]
) -> list[tuple[float, float]]:
    """When ``watcher`` was away because its instance did not serve (epoch ms)."""
    away: list[tuple[float, float]] = []
    connections = watcher.connections
    for index, connection in enumerate(connections):
        closed = connection.closed_ms if connection.closed_ms is not None else INFINITY
        for stopped, resumed in down.get(connection.instance, ()):
            if not connection.opened_ms <= stopped < closed:
                continue
            if closed > resumed:  # the socket outlived the pause
                away.append((stopped, resumed))
                continue
            later = connections[index + 1 :]
            back = min(later[0].subscribe_ms.values(), default=INFINITY) if later else INFINITY
            away.append((stopped, back))
    return sorted(away)


def waits(watcher: Watcher, down: Mapping[int, Sequence[tuple[float, float]]]) -> Iterable[Wait]:
    """The wait of each event ``watcher`` received (first receipts only)."""
    away = absences(watcher, down)
    connections = {connection.number: connection for connection in watcher.connections}
    first_subscribe: dict[str, float] = {}
    for connection in watcher.connections:
        for channel, at in connection.subscribe_ms.items():
            first_subscribe.setdefault(channel, at)
    seen: set[tuple[str, int]] = set()
    for channel, offset, ts, received, number in watcher.deliveries:
        if (channel, offset) in seen:
            continue
        seen.add((channel, offset))
        start = max(float(ts), first_subscribe.get(channel, 0.0))
        for stopped, back in away:
            if stopped < received and back > start:
                start = max(start, min(back, received))
        instance = connections[number].instance
        yield Wait(
            max(0.0, received - start), start, received, watcher.name, instance, channel, offset
        )


def measure(
    watchers: Sequence[Watcher],
    down: Mapping[int, Sequence[tuple[float, float]]],
    phases: Sequence[Phase],
    t0_ms: float,
) -> dict[str, Any]:
    """The stall figures of a run (times in seconds after the schedule started)."""
    longest: tuple[Wait, list[Phase]] | None = None
    quiet: Wait | None = None
    worst: dict[Phase, Wait] = {}
    count = 0
    for watcher in watchers:
        for wait in waits(watcher, down):
            count += 1
            active = [phase for phase in phases if phase.covers(wait)]
            if longest is None or wait.ms > longest[0].ms:
                longest = (wait, active)
            if not active and (quiet is None or wait.ms > quiet.ms):
                quiet = wait
            for phase in active:
                start = max(wait.start, phase.start)
                if start > phase.end + GRACE_MS:
                    continue
                counted = replace(wait, ms=wait.received - start, start=start)
                if phase not in worst or counted.ms > worst[phase].ms:
                    worst[phase] = counted

    def seconds(ms: float) -> float:
        return round(ms / 1000.0, 3)

    def described(wait: Wait) -> dict[str, Any]:
        return {
            "stall_s": seconds(wait.ms),
            "watcher": wait.watcher,
            "watcher_on": wait.instance,
            "channel": wait.channel,
            "offset": wait.offset,
            "from_s": seconds(wait.start - t0_ms),
            "delivered_s": seconds(wait.received - t0_ms),
        }

    per_fault = []
    for phase in phases:
        entry: dict[str, Any] = {
            "fault": phase.fault,
            "phase": phase.label,
            "instance": phase.instance,
            "stall_s": None,
        }
        if phase in worst:
            wait = worst[phase]
            others = [p.name() for p in phases if p != phase and p.covers(wait)]
            entry.update(described(wait), also_active=others)
        per_fault.append(entry)
    per_kind: dict[str, dict[str, Any]] = {}
    for entry in per_fault:
        if entry["stall_s"] is None:
            continue
        kind = per_kind.setdefault(entry["phase"], {"stall_s": -1.0, "alone_s": None})
        if entry["stall_s"] > kind["stall_s"]:
            kind.update(
                stall_s=entry["stall_s"], fault=entry["fault"], also_active=entry["also_active"]
            )
        if not entry["also_active"] and (kind["alone_s"] or -1.0) < entry["stall_s"]:
            kind.update(alone_s=entry["stall_s"], alone_fault=entry["fault"])
    return {
        "deliveries": count,
        "longest": None
        if longest is None
        else {
            **described(longest[0]),
            "faults": [phase.name() for phase in longest[1]],
            "began_during": [
                phase.name()
                for phase in longest[1]
                if phase.start <= longest[0].start <= phase.end + GRACE_MS
            ],
        },
        "without_fault": None if quiet is None else described(quiet),
        "per_kind": per_kind,
        "per_fault": per_fault,
        "excluded": (
            "waits while a watcher's own instance was paused, killed or terminated, until "
            "it was subscribed again (it reconnects elsewhere or later); slow-link clients"
        ),
    }
