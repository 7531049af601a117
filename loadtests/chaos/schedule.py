"""The fault schedule: which faults, when, for how long, against what.

``plan(seed, duration)`` is a pure function of its arguments (one ``random.Random(seed)``,
nothing else): the same seed and duration give the same schedule on any machine. It
places one fault of each kind first (in a shuffled order, each as early as the rules
allow, skipping a kind that no longer fits), then random kinds until the duration is
full. Of those random ones 40 % overlap no other fault (``alone``), so that each kind
has figures of its own; the others overlap, within rules that keep every run meaningful:

- two faults of one kind never overlap;
- at most one instance is down (paused, killed, terminated) at a time, counting its
  restart, so two instances are always there to reconnect to;
- at most two faults hit instances at once, never two the same named instance;
- at most three faults at once.

A target is resolved when the fault starts (the nemesis records what it became):
``leader`` is the instance that is the relay leader then.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from typing import Any

KINDS = (
    "partition",  # one instance cut from Redis, then from PostgreSQL, then healed
    "redis-kill",  # Redis SIGKILLed, started again after the hold (as a supervisor would)
    "postgres-restart",  # PostgreSQL fast-stopped, started again after the hold
    "pubsub-kill",  # CLIENT KILL TYPE pubsub, every few hundred ms for the hold
    "pause",  # an instance SIGSTOPped for the hold (past heartbeat and lock timeouts)
    "kill",  # an instance SIGKILLed, started again after the hold
    "terminate",  # an instance SIGTERMed (a rolling restart's step), started again
    "slow-client",  # a watcher on a throttled link resumes a long history
)
DOWN = frozenset({"pause", "kill", "terminate"})  # the instance stops serving
ON_INSTANCE = DOWN | {"partition"}
# How much later than its end a fault still counts as busy: a killed or terminated
# instance has to start and be ready again; SIGTERM first waits out the shutdown.
MARGIN_S = {"kill": 8.0, "terminate": 14.0, "pause": 3.0, "partition": 2.0}
WEIGHTS = dict.fromkeys(KINDS, 2) | {"partition": 3}  # how often each kind is drawn
ALONE_SHARE = 0.4  # of the faults no other fault may overlap: the single-fault figures
WARMUP_S = 3.0  # traffic flows this long before the first fault
GAP_S = (1.0, 6.0)  # between the planned starts of consecutive faults
MAX_AT_ONCE = 3
MAX_ON_INSTANCES = 2
INSTANCE_TARGETS = ("leader", "leader", "instance-0", "instance-1", "instance-2")


@dataclass(frozen=True, slots=True)
class Fault:
    number: int
    kind: str
    at: float  # seconds after the schedule starts
    hold: float  # how long it lasts (a partition: cut from Redis this long)
    then: float = 0.0  # a partition: then cut from PostgreSQL this long
    target: str = ""  # leader, instance-N, redis, postgres, a client of instance-N
    alone: bool = False  # no other fault overlaps it (counting margins)

    @property
    def end(self) -> float:
        return self.at + self.hold + self.then

    @property
    def busy_until(self) -> float:
        return self.end + MARGIN_S.get(self.kind, 0.0)

    def describe(self) -> str:
        what = f"#{self.number} {self.kind} {self.target}: at {self.at:.1f} s, {self.hold:.1f} s"
        if self.kind == "partition":
            what += f" from Redis, then {self.then:.1f} s from PostgreSQL"
        return what + (" (alone)" if self.alone else "")

    def as_json(self) -> dict[str, Any]:
        return {key: round(value, 2) if isinstance(value, float) else value
                for key, value in asdict(self).items()}  # fmt: skip


def _draw(rng: random.Random, kind: str, at: float, first_partition: bool) -> Fault:
    """A fault of ``kind`` wanted at ``at``: its holds and target, from ``rng``."""
    if kind == "partition":
        target = "leader" if first_partition else rng.choice(INSTANCE_TARGETS)
        return Fault(0, kind, at, rng.uniform(5.0, 8.0), rng.uniform(8.0, 11.0), target)
    if kind in ("pause", "kill", "terminate"):
        hold = {"pause": (9.0, 12.0), "kill": (1.0, 4.0), "terminate": (0.5, 2.0)}[kind]
        return Fault(0, kind, at, rng.uniform(*hold), target=rng.choice(INSTANCE_TARGETS))
    if kind == "slow-client":
        target = f"instance-{rng.randrange(3)}"
        return Fault(0, kind, at, rng.uniform(15.0, 25.0), target=target)
    if kind == "pubsub-kill":
        return Fault(0, kind, at, rng.uniform(1.0, 3.0), target="redis")
    if kind == "redis-kill":
        return Fault(0, kind, at, rng.uniform(0.5, 2.5), target="redis")
    if kind == "postgres-restart":
        return Fault(0, kind, at, rng.uniform(0.5, 2.0), target="postgres")
    raise ValueError(f"no fault kind {kind!r}")


def _conflicts(fault: Fault, placed: list[Fault]) -> list[Fault]:
    """The placed faults that ``fault`` may not overlap with, as the rules say."""
    during = [
        other for other in placed if other.at < fault.busy_until and fault.at < other.busy_until
    ]
    if fault.alone:
        return during
    blocking = [other for other in during if other.kind == fault.kind or other.alone]
    if fault.kind in DOWN:
        blocking += [other for other in during if other.kind in DOWN]
    if fault.kind in ON_INSTANCE:
        on_instances = [other for other in during if other.kind in ON_INSTANCE]
        if len(on_instances) >= MAX_ON_INSTANCES:
            blocking += on_instances
        if fault.target != "leader":
            blocking += [other for other in on_instances if other.target == fault.target]
    if len(during) >= MAX_AT_ONCE:
        blocking += during
    return blocking


def _fit(fault: Fault, placed: list[Fault]) -> Fault:
    """``fault`` moved later until no rule forbids it."""
    while blocking := _conflicts(fault, placed):
        fault = replace(fault, at=min(other.busy_until for other in blocking) + 0.5)
    return fault


def plan(seed: int, duration: float) -> list[Fault]:
    """The faults of a run of ``duration`` seconds, in order of their start."""
    rng = random.Random(seed)
    first = list(KINDS)
    rng.shuffle(first)
    kinds, weights = zip(*WEIGHTS.items(), strict=True)
    placed: list[Fault] = []
    cursor = WARMUP_S
    misses = 0
    while misses < 5 and cursor < duration:
        covering = bool(first)
        kind = first.pop(0) if covering else rng.choices(kinds, weights)[0]
        partitioned = any(fault.kind == "partition" for fault in placed)
        fault = _draw(rng, kind, cursor, not partitioned)
        if rng.random() < ALONE_SHARE and not covering:
            fault = replace(fault, alone=True)
        fault = _fit(fault, placed)
        if fault.end > duration:
            misses += 0 if covering else 1
            continue
        placed.append(fault)
        cursor += rng.uniform(*GAP_S)
    placed.sort(key=lambda fault: fault.at)
    return [replace(fault, number=number) for number, fault in enumerate(placed, 1)]
