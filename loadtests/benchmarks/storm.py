"""Reconnect storm: the instance holding every socket dies, and every app resumes on the other.

Two jangteo instances, A and B, on one PostgreSQL and one Redis. ``--sockets`` apps
(``loadtests/clients/storm.py``, ``--client-processes`` processes) each hold one socket on
A with ``--per-socket`` channels, consecutive among ``--channels`` listings created for the
run (so every channel has sockets x per-socket / channels subscribers). Outbox rows are
committed over the channels in turn at ``--rate`` per second the whole time. After
``--warmup`` s of events, A is killed with SIGKILL; every app reconnects as
docs/protocol.md says (a new ticket per attempt, full-jitter backoff from 0.5 s,
``Retry-After`` honoured, B once A cannot be reached) and resubscribes each channel with
``since``. ``--after`` s after the last app is live again the rows stop; once every event
has arrived, each app's events are audited against the ``outbox`` table.

Reported: seconds from the kill until 99 % and 100 % of the apps were live again (every
channel ``subscribed`` on the new socket); resume latency (upgrade start to the last
``subscribed``) and attempts per app; B's ``jangteo_hub_resumes_total`` by source (each
``log`` resume is one replay query; the goal is at most one per channel); 5xx answers and
1013 closes the apps met; the survivor's CPU per app until all were live, with and
without (estimated) the live events it sent meanwhile; the audit. The run fails when the
audit does, or when an app is not live again.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from loadtests.audit import LogRow
from loadtests.clients import events as event_load
from loadtests.clients.storm import AppFigures, StormPlan, storm_main
from loadtests.clients.ws import LoadClients, SourceAddresses, Target, raise_open_files
from loadtests.harness import report
from loadtests.harness.processes import BenchError, server_problems
from loadtests.harness.report import COLOURS, bars, finish
from loadtests.harness.results import Machine, Result, versions
from loadtests.harness.stack import (
    connected,
    create_listing,
    database_note,
    fresh_database,
    instances,
    serve_settings,
    services,
    sign_up,
)
from loadtests.harness.stats import summary, summary_ms

DATABASE = "jangteo_bench_storm"
TARGETS = {"all_live_s": 15.0}
POLL_S = 0.25  # between looks at the apps' progress
CURVE_POINTS = 200  # of the fraction-live curve kept in the results
SOURCES = ("memory", "log", "shared")  # jangteo_hub_resumes_total's labels
# The machine's TCP counters (/proc/net/netstat) that show connections the kernel dropped:
# a full accept queue drops SYNs, and a client resends its SYN 1, 3, 7, ... s later.
TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans")
OPTIONS = (  # flag, default (its type is the option's), help
    ("--sockets", 10_000, "apps, one socket each, all on instance A at first"),
    ("--channels", 1_000, "distinct listing:<id> channels (listings created for the run)"),
    ("--per-socket", 3, "channels each socket subscribes"),
    ("--rate", 300.0, "outbox rows per second over the channels in turn, the whole run"),
    ("--warmup", 5.0, "seconds of events with every socket live before A is killed"),
    ("--after", 5.0, "seconds of events after the last app is live again"),
    ("--timeout", 120.0, "seconds the apps have to be live again after the kill"),
    ("--settle", 60.0, "seconds for the last events to arrive once the rows stop"),
    ("--publishers", 4, "connections committing the rows"),
    ("--client-processes", 2, "load client processes"),
    ("--workers", 1, "jangteo serve worker processes per instance (one port, SO_REUSEPORT)"),
    ("--seed", 1, "of the apps' backoff jitter"),
)


def options(parser: argparse.ArgumentParser) -> None:
    for flag, default, meaning in OPTIONS:
        parser.add_argument(flag, type=type(default), default=default, help=meaning)


@dataclass(frozen=True, slots=True)
class Scenario:
    """The storm's load, from the options; refuses what cannot run."""

    sockets: int
    per_socket: int
    rate: float
    warmup: float
    after: float
    timeout: float
    settle: float
    publishers: int
    seed: int = 1

    def __post_init__(self) -> None:
        counts = {
            "--sockets": self.sockets,
            "--per-socket": self.per_socket,
            "--publishers": self.publishers,
            "--rate": self.rate,
            "--timeout": self.timeout,
            "--settle": self.settle,
        }
        for flag, value in counts.items():
            if not value > 0:
                raise ValueError(f"{flag} must be above 0, not {value:g}")
        for flag, value in {"--warmup": self.warmup, "--after": self.after}.items():
            if value < 0:
                raise ValueError(f"{flag} must be 0 or more, not {value:g}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Scenario:
        return cls(
            args.sockets,
            args.per_socket,
            args.rate,
            args.warmup,
            args.after,
            args.timeout,
            args.settle,
            args.publishers,
            args.seed,
        )


@dataclass(frozen=True, slots=True)
class Instance:
    """A jangteo instance of the storm: one process, or a supervisor and its workers."""

    name: str
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def target(self, token: str) -> Target:
        return Target.jangteo(self.name, self.port, token)

    def processes(self) -> list[psutil.Process]:
        """The instance's process and every worker it started."""
        top = psutil.Process(self.pid)
        return [top, *top.children(recursive=True)]

    def listeners(self) -> list[psutil.Process]:
        """The processes that accept on the instance's port (not a supervisor)."""
        return [
            process
            for process in self.processes()
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == self.port
                for c in process.net_connections("tcp")
            )
        ]

    def cpu_seconds(self) -> float:
        return sum(float(t.user + t.system) for t in (p.cpu_times() for p in self.processes()))


async def call(clients: LoadClients, command: str, arguments: Sequence[Any] | None = None) -> Any:
    """A command to every client process, in a thread: the event loop goes on publishing."""
    return await asyncio.to_thread(clients.call, command, arguments)


async def scrape(instance: Instance) -> event_load.Samples:
    """The instance's samples added up over its workers: each scrape reaches one worker
    (they share the port), so scrape until every worker's ``jangteo_process_info`` pid was
    seen."""
    workers: dict[str, event_load.Samples] = {}
    expected = len(instance.listeners()) or 1
    for _ in range(50 * expected):
        samples = await event_load.scrape(instance.url)
        workers[answered_by(samples)] = samples
        if len(workers) == expected:
            return event_load.added(workers.values())
    raise BenchError(f"{instance.name}: {len(workers)} of {expected} workers answered scrapes")


def answered_by(samples: event_load.Samples) -> str:
    """The pid of the process that answered a scrape."""
    return next(dict(labels)["pid"] for name, labels in samples if name == "jangteo_process_info")


def resumes(samples: event_load.Samples) -> dict[str, float]:
    """``jangteo_hub_resumes_total`` by source."""
    return {
        source: samples.get(("jangteo_hub_resumes_total", (("source", source),)), 0.0)
        for source in SOURCES
    }


def tcp_counters(path: Path = Path("/proc/net/netstat")) -> dict[str, int]:
    """``TCP_COUNTERS`` of the whole machine (empty where the file is missing)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    found: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            pairs = zip(names.split()[1:], values.split()[1:], strict=False)
            found |= {name: int(value) for name, value in pairs if name in TCP_COUNTERS}
    return found


def partitions_led(samples: event_load.Samples) -> int:
    """Relay partitions an instance leads (``jangteo_relay_leader`` is 1 for each)."""
    return int(sum(value for (name, _), value in samples.items() if name == "jangteo_relay_leader"))


def added(replies: Sequence[Mapping[str, Any]], key: str) -> dict[str, int]:
    """The client processes' counters under ``key``, added up."""
    total: Counter[str] = Counter()
    for reply in replies:
        total.update(reply[key])
    return dict(sorted(total.items()))


def status_of(answer: str) -> int:
    """The HTTP status of an answer key ("ticket 503" -> 503; "ticket OSError" -> 0)."""
    word = answer.rsplit(" ", 1)[-1]
    return int(word) if word.isdigit() else 0


# ----------------------------------------------------------------------------- the storm


async def storm(
    scenario: Scenario,
    clients: LoadClients,
    victim: Instance,
    survivor: Instance,
    channels: Sequence[str],
    token: str,
    database_url: str,
) -> dict[str, Any]:
    """Open every app on ``victim``, publish, SIGKILL it, wait for every app to be live on
    ``survivor``, publish on, stop, let the last events arrive, audit; the figures."""
    targets = [victim.target(token), survivor.target(token)]
    opened = await open_apps(clients, scenario, targets, channels)
    stop = asyncio.Event()
    longest = scenario.warmup + scenario.timeout + scenario.after + 60
    publishing = asyncio.create_task(
        event_load.insert_rows(
            database_url,
            list(channels),
            seconds=longest,
            rate=scenario.rate,
            connections=scenario.publishers,
            until=stop,
        )
    )
    try:
        await asyncio.sleep(scenario.warmup)
        killed = await kill(victim, survivor)
        recovery = await until_live(clients, scenario, killed.at)
        killed.survivor_cpu = survivor.cpu_seconds() - killed.survivor_cpu
        killed.tcp = {name: n - killed.tcp.get(name, 0) for name, n in tcp_counters().items()}
        live_cpu = survivor.cpu_seconds()
        await asyncio.sleep(scenario.after)
        after_cpu = survivor.cpu_seconds() - live_cpu
    finally:
        stop.set()
        published = await publishing
    print(
        f"  rows stopped: {published['rows']:,} committed at {published['rate']:,.0f}/s", flush=True
    )
    logs = await event_logs(database_url, channels, scenario.settle)
    audit = await audited(clients, logs, scenario.settle)
    after = await scrape(survivor)
    replies = await call(clients, "report")
    counted = {
        source: count - killed.resumes_before[source] for source, count in resumes(after).items()
    }
    return {
        "recovery": recovery_figures(replies, killed.at, recovery),
        "survivor_cpu_seconds_until_all_live": round(killed.survivor_cpu, 2),
        "survivor_cpu": survivor_cpu(
            replies, killed.at, recovery, killed.survivor_cpu, after_cpu, scenario.after
        ),
        "machine_tcp_until_all_live": killed.tcp,
        "resumes": {
            "on": survivor.name,
            "by_source": counted,
            "log_reads": counted["log"],
            "distinct_channels": len(set(channels)),
            "within_goal": counted["log"] <= len(set(channels)),
            "total": sum(counted.values()),
        },
        "answers": answers(replies),
        "audit": audit,
        "relay_partitions_led": {
            "before_kill": killed.partitions_led,
            f"{survivor.name}_after": partitions_led(after),
        },
        "events": {
            key: value for key, value in published.items() if key not in ("started_at", "ended_at")
        },
        "open": {
            "seconds": max(reply["seconds"] for reply in opened),
            "answers": added(opened, "answers"),
        },
        "client_cpu_share": [reply["cpu_share"] for reply in replies],
    }


async def open_apps(
    clients: LoadClients, scenario: Scenario, targets: Sequence[Target], channels: Sequence[str]
) -> list[dict[str, Any]]:
    """Every app live on the first target, or BenchError; the client processes' replies."""
    sources = SourceAddresses().take(scenario.sockets)
    plans = StormPlan.split(
        targets,
        scenario.sockets,
        len(clients.pids),
        channels,
        scenario.per_socket,
        sources,
        scenario.seed,
    )
    print(
        f"  {scenario.sockets:,} apps x {scenario.per_socket} channels opening on"
        f" {targets[0].instance} ...",
        flush=True,
    )
    opened: list[dict[str, Any]] = await call(clients, "start", plans)
    live = sum(reply["live"] for reply in opened)
    print(f"  {live:,} live in {max(reply['seconds'] for reply in opened):.1f} s", flush=True)
    if live != scenario.sockets:
        raise BenchError(
            f"only {live} of {scenario.sockets} apps live on {targets[0].instance}:"
            f" {added(opened, 'answers')}, gave up: {added(opened, 'stopped')}"
        )
    return opened


@dataclass(slots=True)
class Kill:
    """When the victim died, and what the survivor and the relay looked like just before."""

    at: float  # time.time()
    resumes_before: dict[str, float]  # the survivor's, by source
    partitions_led: dict[str, int]  # relay partitions each instance led
    survivor_cpu: float  # its CPU seconds then (later: used since)
    tcp: dict[str, int]  # the machine's TCP_COUNTERS then (later: their growth)


async def kill(victim: Instance, survivor: Instance) -> Kill:
    """SIGKILL the victim's every process at once: its sockets close, as when a host dies."""
    before = await scrape(survivor)
    led = {victim.name: partitions_led(await scrape(victim))}
    led[survivor.name] = partitions_led(before)
    cpu, tcp = survivor.cpu_seconds(), tcp_counters()
    doomed = victim.processes()
    at = time.time()
    for process in doomed:
        os.kill(process.pid, signal.SIGKILL)
    print(f"  SIGKILL {victim.name} (relay partitions led: {led})", flush=True)
    return Kill(at, resumes(before), led, cpu, tcp)


def answers(replies: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the apps were answered: ticket and upgrade statuses, closes, error frames."""
    counts, closes = added(replies, "answers"), added(replies, "closes")
    return {
        "counts": counts,
        "5xx": sum(n for key, n in counts.items() if status_of(key) >= 500),
        "closes": closes,
        "1013_closes": closes.get("1013", 0),
        "error_frames": added(replies, "errors"),
        "other_frames": added(replies, "other_frames"),
        "apps_gave_up": added(replies, "stopped"),
        "resyncs": sum(reply["resyncs"] for reply in replies),
    }


async def audited(
    clients: LoadClients, logs: Mapping[str, Sequence[LogRow]], limit: float
) -> dict[str, Any]:
    """Once every app has its channels' last events (or after ``limit`` s), every stream
    against the log: owed every event committed after its first ``subscribed``."""
    heads = {channel: rows[-1][0] for channel, rows in logs.items() if rows}
    caught_up = await until_caught_up(clients, heads, limit)
    audits = await call(clients, "audit", [(logs, math.inf)] * len(clients.pids))
    violations = added(audits, "violations")
    return {
        "ok": not violations and caught_up["behind"] == 0,
        "streams": sum(a["streams"] for a in audits),
        "events_checked": sum(a["events"] for a in audits),
        "channels_with_events": len(heads),
        "committed_events": sum(len(rows) for rows in logs.values()),
        "violations": violations,
        "examples": [example for a in audits for example in a["examples"]][:20],
        "settle": caught_up,
    }


async def until_live(
    clients: LoadClients, scenario: Scenario, killed_at: float
) -> list[tuple[float, int]]:
    """Poll until every app is live again after the kill (or gave up, or the timeout);
    (seconds since the kill, apps live again) at each look."""
    seen: list[tuple[float, int]] = []
    while True:
        replies = await call(clients, "progress", [killed_at] * len(clients.pids))
        again = sum(reply["live_since"] for reply in replies)
        gave_up = sum(reply["stopped"] for reply in replies)
        elapsed = time.time() - killed_at
        seen.append((round(elapsed, 3), again))
        if again + gave_up >= scenario.sockets or elapsed > scenario.timeout:
            print(
                f"  {again:,} of {scenario.sockets:,} apps live again after {elapsed:.1f} s"
                f"{f', {gave_up} gave up' if gave_up else ''}",
                flush=True,
            )
            return seen
        await asyncio.sleep(POLL_S)


async def event_logs(
    database_url: str, channels: Sequence[str], limit: float
) -> dict[str, list[LogRow]]:
    """Once the relay has numbered every committed row (or after ``limit`` s), each
    channel's published events: (position, prev, commit ms) in position order."""
    async with connected(database_url) as conn:
        deadline = time.monotonic() + limit
        while await conn.fetchval("SELECT count(*) FROM outbox WHERE position IS NULL"):
            if time.monotonic() > deadline:
                raise BenchError(f"the relay left rows unnumbered for {limit:g} s")
            await asyncio.sleep(POLL_S)
        rows = await conn.fetch(
            "SELECT channel, position, prev,"
            " (extract(epoch FROM committed_at) * 1000)::bigint AS committed_ms"
            " FROM outbox WHERE channel = ANY($1::text[]) AND position IS NOT NULL"
            " ORDER BY channel, position",
            list(channels),
        )
    logs: dict[str, list[LogRow]] = {channel: [] for channel in channels}
    for row in rows:
        logs[row["channel"]].append((row["position"], row["prev"], row["committed_ms"]))
    return logs


async def until_caught_up(
    clients: LoadClients, heads: Mapping[str, int], limit: float
) -> dict[str, Any]:
    """Wait until every app's channels reached their heads (or ``limit`` s)."""
    started = time.monotonic()
    while True:
        behind = sum(await call(clients, "behind", [heads] * len(clients.pids)))
        waited = time.monotonic() - started
        if behind == 0 or waited > limit:
            return {"behind": behind, "seconds": round(waited, 2)}
        await asyncio.sleep(POLL_S)


def survivor_cpu(
    replies: Sequence[Mapping[str, Any]],
    killed_at: float,
    polled: Sequence[tuple[float, int]],
    until_live: float,
    after: float,
    after_s: float,
) -> dict[str, Any]:
    """The survivor's CPU per app: all of it until every app was live, and without the live
    events it sent meanwhile to the apps already back. Those are estimated at the rate of
    the ``--after`` window (every app live) times the app-seconds live before the last
    one was: what is left is the resumes' own cost (ticket, upgrade, subscribes, replays)."""
    apps = [AppFigures(*figures) for reply in replies for figures in reply["apps"]]
    if not apps or not polled:
        return {}
    end = polled[-1][0]
    app_seconds = sum(
        max(0.0, end - (app.live_at - killed_at))
        for app in apps
        if app.live and app.live_at > killed_at
    )
    per_app_second = after / after_s / len(apps) if after_s > 0 else None
    fan_out = per_app_second * app_seconds if per_app_second is not None else None
    return {
        "seconds_until_all_live": round(until_live, 2),
        "ms_per_app": round(1000 * until_live / len(apps), 3),
        "seconds_per_s_all_live": round(after / after_s, 3) if after_s > 0 else None,
        "live_app_seconds": round(app_seconds, 1),
        "resume_ms_per_app": None
        if fan_out is None
        else round(1000 * (until_live - fan_out) / len(apps), 3),
    }


def recovery_figures(
    replies: Sequence[Mapping[str, Any]], killed_at: float, polled: Sequence[tuple[float, int]]
) -> dict[str, Any]:
    """Live-again times, resume latencies and attempts from the apps' own figures; an app
    counts as live again when it became live after the kill and still was at the end."""
    apps = [AppFigures(*figures) for reply in replies for figures in reply["apps"]]
    resumed = [app for app in apps if app.live_at > killed_at and app.live]
    again = sorted(app.live_at - killed_at for app in resumed)
    attempts = Counter(app.attempts for app in apps)
    step = max(1, len(apps) // CURVE_POINTS)
    curve = [
        [round(seconds, 3), round((n + 1) / len(apps), 4)]
        for n, seconds in enumerate(again)
        if n % step == 0 or n == len(again) - 1
    ]

    def at(share: float) -> float | None:
        """Seconds until ``share`` of all the apps were live again (None: never)."""
        needed = math.ceil(share * len(apps))
        return round(again[needed - 1], 3) if 0 < needed <= len(again) else None

    return {
        "apps": len(apps),
        "live_again": len(again),
        "not_live": len(apps) - len(again),
        "seconds_to_50pct": at(0.5),
        "seconds_to_99pct": at(0.99),
        "seconds_to_100pct": at(1.0),
        "live_again_s": summary(Counter(round(seconds, 3) for seconds in again)),
        "resume_ms": summary_ms(app.resume_s for app in resumed),
        "upgrade_ms": summary_ms(app.upgrade_s for app in resumed),
        "subscribe_ms": summary_ms(app.resume_s - app.upgrade_s for app in resumed),
        "attempts": dict(sorted(attempts.items())),
        "attempts_summary": summary(attempts),
        "dropped_before_kill": sum(1 for app in apps if 0 < app.first_drop < killed_at),
        "dropped_more_than_once": sum(1 for app in apps if app.drops > 1),
        "curve": curve,
        "polled": [list(point) for point in polled],
    }


# ----------------------------------------------------------------------------- the result


@dataclass(kw_only=True, slots=True)
class StormResult(Result):
    storm: dict[str, Any]
    targets: dict[str, float] = field(default_factory=lambda: dict(TARGETS))

    def failures(self) -> list[str]:
        found = []
        audit, answers = self.storm["audit"], self.storm["answers"]
        if not audit["ok"]:
            found.append(f"audit: {audit['violations'] or audit['settle']}")
        if self.storm["recovery"]["not_live"]:
            found.append(f"{self.storm['recovery']['not_live']} apps not live again")
        if answers["resyncs"]:
            found.append(f"{answers['resyncs']} resyncs")
        if answers["apps_gave_up"]:
            found.append(f"apps gave up: {answers['apps_gave_up']}")
        return found

    def table(self) -> str:
        data = self.as_json()
        recovery = self.storm["recovery"]
        lines = [
            report.table(report.storm_rows(data)),
            "",
            f"attempts per app: {recovery['attempts']}",
            f"upgrade answered (ms): {recovery['upgrade_ms']}",
            f"then every subscribed (ms): {recovery['subscribe_ms']}",
            f"answers: {self.storm['answers']['counts']}",
            f"closes: {self.storm['answers']['closes']}",
            f"resumes on {self.storm['resumes']['on']}: {self.storm['resumes']['by_source']}",
            f"machine TCP counters, kill to all live: {self.storm['machine_tcp_until_all_live']}",
            f"survivor CPU: {self.storm.get('survivor_cpu')}",
        ]
        return "\n".join(lines)

    def plot(self, plt: Any, path: Path) -> None:
        """The share of apps live again against seconds since the kill; resumes by source
        against the channels."""
        figure, (left, right) = plt.subplots(
            1, 2, figsize=(11, 4.5), dpi=110, gridspec_kw={"width_ratios": [2, 1]}
        )
        recovery, resumed = self.storm["recovery"], self.storm["resumes"]
        curve = recovery["curve"]
        left.step(
            [0.0, *(p[0] for p in curve)],
            [0.0, *(p[1] for p in curve)],
            where="post",
            color=COLOURS["jangteo"],
        )
        for name, key, style in (
            ("p50", "seconds_to_50pct", "--"),
            ("p99", "seconds_to_99pct", ":"),
            ("100%", "seconds_to_100pct", "-."),
        ):
            if (seconds := recovery[key]) is not None:
                left.axvline(
                    seconds,
                    color="#222222",
                    linestyle=style,
                    label=f"{name} live again: {seconds:.2f} s",
                )
        goal = self.targets["all_live_s"]
        left.axvline(goal, color="#7f8c8d", linewidth=0.8, label=f"goal: 100% by {goal:g} s")
        left.set_xlabel("seconds since SIGKILL of the instance holding every socket")
        left.set_ylabel("share of apps live again (every channel subscribed)")
        left.set_ylim(0, 1.02)
        resume, upgrade = recovery["resume_ms"], recovery["upgrade_ms"]
        left.set_title(
            f"{recovery['apps']:,} apps x {self.load['per_socket']} channels resume on the"
            f" survivor: p50 {resume['p50']:,.0f} ms, p99 {resume['p99']:,.0f} ms from the"
            f" upgrade's start\n(upgrade answered: p50 {upgrade['p50']:,.0f} ms, p99"
            f" {upgrade['p99']:,.0f} ms)",
            fontsize=9,
        )
        left.legend(fontsize=8, loc="lower right")
        values = [resumed["by_source"][source] for source in SOURCES]
        bars(right, list(SOURCES), values, "{:,.0f}", color=COLOURS["jangteo"])
        right.axhline(
            resumed["distinct_channels"],
            color="#222222",
            linestyle="--",
            label=f"{resumed['distinct_channels']:,} channels: log reads at most",
        )
        right.set_ylabel("resumes on the survivor, by what answered them")
        right.set_title(f"{resumed['log_reads']:,.0f} PostgreSQL replay queries", fontsize=9)
        right.legend(fontsize=8)
        right.set_ylim(0, max([*values, resumed["distinct_channels"]]) * 1.2 or 1)
        audit = self.storm["audit"]
        caption = (
            f"{self.date}, {self.machine.cores} cores shared by both instances, PostgreSQL,"
            f" Redis and {self.load['client_processes']} client processes; audit"
            f" {'OK' if audit['ok'] else 'FAILED'} over {audit['events_checked']:,} events"
        )
        finish(plt, figure, caption, path)


async def run(args: argparse.Namespace) -> StormResult:
    try:
        scenario = Scenario.from_args(args)
    except ValueError as error:
        raise BenchError(str(error)) from None
    if args.per_socket > args.channels:
        raise BenchError(f"--per-socket {args.per_socket} needs at least as many --channels")
    if args.client_processes < 1:
        raise BenchError("--client-processes must be at least 1")
    limits = raise_open_files()
    machine = Machine(open_files_limit=list(limits))
    stack = services()
    commands: dict[str, Any] = {
        "database": database_note(DATABASE),
        "load": f"{args.client_processes} client processes of loadtests/clients/storm.py"
        " (apps on loadtests/clients/ws.py's raw asyncio WebSocket, uvloop); outbox rows by"
        " loadtests/clients/events.py insert_rows",
    }
    async with fresh_database(stack.admin_url, DATABASE, keep=args.keep_database) as url:
        settings = serve_settings(url, stack.redis_url)
        record = commands.setdefault("jangteo", {})
        # A starts (and so takes the relay's lock) first: the kill also moves the relay.
        with (
            LoadClients(args.client_processes, main=storm_main) as clients,
            instances(
                ["storm-a", "storm-b"], settings, args.scratch, record, workers=args.workers
            ) as (a, b),
        ):
            token = sign_up(a.port)
            print(f"\n== storm: creating {args.channels:,} listings", flush=True)
            listings = [create_listing(a.port, token, f"storm {n}") for n in range(args.channels)]
            channels = [f"listing:{listing}" for listing in listings]
            victim, survivor = (Instance(s.name, s.port, s.pid) for s in (a, b))
            figures = await storm(scenario, clients, victim, survivor, channels, token, url)
            figures["server_log_problems"] = {s.name: server_problems(s.log) for s in (a, b)}
        found = await versions(url, stack.redis_url)
    return StormResult(
        benchmark="storm",
        machine=machine,
        versions=found,
        commands=commands,
        load={
            "sockets": args.sockets,
            "channels": args.channels,
            "per_socket": args.per_socket,
            "subscribers_per_channel": args.sockets * args.per_socket / args.channels,
            "rows_per_second": args.rate,
            "warmup_s": args.warmup,
            "after_s": args.after,
            "client_processes": args.client_processes,
            "jangteo_processes_per_instance": args.workers,
            "reconnect": "docs/protocol.md: new ticket per attempt; full jitter in [0, min(30,"
            " 0.5 x 2^n)] s after the n-th failed attempt in a row (n reset by a served"
            " socket); Retry-After of 429/503 waited before that jitter; the next instance"
            " after one could not be reached; every channel resubscribed with since",
            "live_again": "every channel of the app `subscribed` on a socket opened after"
            " the kill; resume latency from that socket's upgrade start",
        },
        storm=figures,
    )
