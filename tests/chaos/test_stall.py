"""The chaos run's stall figures on made-up deliveries: waits count from the commit or the
fault's start, and not while the watcher's own instance was stopped."""

from __future__ import annotations

import random

from loadtests.chaos.stall import Phase, measure
from loadtests.chaos.watchers import Account, Connection, Watcher

T0 = 1_000_000.0
CHANNEL = "listing:1"


def watcher(*connections: Connection) -> Watcher:
    made = Watcher("w", Account(1, "token", "buyer"), [CHANNEL], list, rng=random.Random(1))
    made.connections = list(connections)
    return made


def connection(number: int, instance: int, opened: float, closed: float | None) -> Connection:
    """Opened (and subscribed) and closed ``opened`` and ``closed`` seconds after T0."""
    closed_ms = None if closed is None else T0 + closed * 1000
    return Connection(
        number, instance, T0 + opened * 1000, closed_ms, subscribe_ms={CHANNEL: T0 + opened * 1000}
    )  # fmt: skip


def test_a_wait_counts_from_the_commit_and_per_fault_from_its_start() -> None:
    seen = watcher(connection(1, 0, 0, None))
    seen.deliveries = [
        (CHANNEL, 1, int(T0 + 1000), T0 + 1010, 1),  # 10 ms, no fault
        (CHANNEL, 2, int(T0 + 2000), T0 + 6000, 1),  # 4 s, committed before the fault
    ]
    phases = [Phase("partition-redis", T0 + 3000, T0 + 7000, 1, 2)]
    stall = measure([seen], {}, phases, T0)
    assert stall["longest"]["stall_s"] == 4.0
    assert stall["longest"]["faults"] == ["#1 partition-redis on instance-2"]
    assert stall["longest"]["began_during"] == []  # it began before the fault
    assert stall["per_kind"]["partition-redis"]["stall_s"] == 3.0  # from the fault's start
    assert stall["per_kind"]["partition-redis"]["alone_s"] == 3.0
    assert stall["without_fault"]["stall_s"] == 0.01


def test_no_wait_while_the_watchers_own_instance_is_stopped() -> None:
    # On instance 0, paused from 2 s to 12 s: the socket died at 8 s (heartbeat), the
    # watcher subscribed again on instance 1 at 8.5 s and got the event at 8.6 s.
    seen = watcher(connection(1, 0, 0, 8), connection(2, 1, 8.5, None))
    seen.deliveries = [(CHANNEL, 1, int(T0 + 3000), T0 + 8600, 2)]
    stall = measure([seen], {0: [(T0 + 2000, T0 + 12000)]}, [], T0)
    assert stall["longest"]["stall_s"] == 0.1


def test_a_socket_that_outlives_a_pause_counts_from_the_resume() -> None:
    seen = watcher(connection(1, 0, 0, None))
    seen.deliveries = [(CHANNEL, 1, int(T0 + 3000), T0 + 12500, 1)]
    stall = measure([seen], {0: [(T0 + 2000, T0 + 12000)]}, [], T0)
    assert stall["longest"]["stall_s"] == 0.5


def test_a_duplicate_is_measured_once() -> None:
    seen = watcher(connection(1, 0, 0, None))
    seen.deliveries = [
        (CHANNEL, 1, int(T0 + 1000), T0 + 1100, 1),
        (CHANNEL, 1, int(T0 + 1000), T0 + 9000, 1),  # the audit reports it, not the stall
    ]
    assert measure([seen], {}, [], T0)["longest"]["stall_s"] == 0.1
