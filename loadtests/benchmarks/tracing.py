"""Tracing: what it costs, off and on, against the code from before it.

One ``jangteo serve`` process per variant, on one database and one Redis: ``before`` (the
last commit without tracing, ``--before REV``, exported with ``git archive`` and put first
on ``PYTHONPATH``), ``off`` (no ``JANGTEO_OTEL_ENDPOINT``) and ``on-<ratio>`` for each
``--ratios`` (exporting over OTLP/HTTP to a collector stand-in in this process that answers
200 to every batch). wrk loads a cached ``GET /api/v1/listings/{id}`` (answered from the
near cache, before the app's middlewares) and the first page of a region's feed (the
general way: routing, middlewares, the sampling gate, a server span and Redis spans when
sampled) from each variant in turn, ``--rounds`` times, each round starting one variant
later than the last. Each run gives requests/s and the server process's CPU time per
request; on a machine shared with other work the second is the steadier, since it counts
only what the server itself spent. Variants are compared within a round; the spread of
those ratios over the rounds is the noise a difference must stand out of.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from loadtests.harness.processes import ROOT, BenchError, Server
from loadtests.harness.report import (
    COLOURS,
    TRACING_CACHED,
    TRACING_FEED,
    TRACING_RATIOS,
    RoundRatios,
    bars,
    finish,
    round_ratios,
    text_table,
    traced_variant,
)
from loadtests.harness.results import Machine, Result, versions
from loadtests.harness.stack import (
    create_listing,
    fetch,
    fresh_database,
    instances,
    serve_settings,
    services,
    sign_up,
)
from loadtests.harness.tools import WRK_REPORT_LUA, Target, wrk

DATABASE = "jangteo_bench_tracing"
REGION = "seoul-mapo"
BEFORE = "4abbe50"  # the last commit without tracing
READS = {"cached": TRACING_CACHED, "feed": TRACING_FEED}
# wrk's error counts that mean the server answered wrongly or not at all.
FAILED = ("status", "timeout")


class _Sink(BaseHTTPRequestHandler):
    """Takes an OTLP/HTTP export and answers 200, as a collector does."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def collector() -> Iterator[str]:
    """A collector stand-in on a free port; its traces URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        server.server_close()


def checkout_before(revision: str, scratch: Path) -> Path:
    """``revision`` exported under ``scratch``; BenchError unless it lacks tracing code."""
    git = shutil.which("git")
    if git is None:
        raise BenchError("git is not on PATH: it exports the code before tracing (--before)")
    archive = subprocess.run(  # noqa: S603 - git from PATH, no shell
        [git, "archive", revision], cwd=ROOT, capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise BenchError(f"git archive {revision} failed: {archive.stderr.decode()[-500:]}")
    directory = scratch / "before"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(directory, filter="data")
    if (directory / "server" / "tracing.py").exists():
        raise BenchError(f"{revision} already has tracing code (server/tracing.py)")
    # The app that `jangteo serve` builds must come from the export, not from this tree.
    probe = [sys.executable, "-c", "import jangteo.app; print(jangteo.app.__file__)"]
    imported = subprocess.run(  # noqa: S603 - this interpreter, no shell
        probe, env={"PYTHONPATH": str(directory)}, cwd=directory, capture_output=True, check=False
    )
    if not imported.stdout.decode().strip().startswith(str(directory)):
        raise BenchError(f"{revision}'s app is not what loads from {directory}: {imported!r}")
    return directory


def warm(port: int, paths: Sequence[str]) -> None:
    """Read each path until the instance's near cache holds it (a lease takes a moment)."""
    for _ in range(20):
        for path in paths:
            fetch(port, path)
        time.sleep(0.1)


@dataclass(frozen=True, slots=True)
class Run:
    """One measured wrk run of one read from one variant."""

    endpoint: str
    server: str
    round: int
    requests: int
    requests_per_second: float
    cpu_us_per_request: float
    p99_ms: float
    errors: dict[str, int]


@dataclass(frozen=True, slots=True)
class Spread:
    """A figure over the rounds: median and range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(round(statistics.median(values), 1), min(values), max(values))

    def text(self, fmt: str) -> str:
        return f"{fmt.format(self.median)} ({fmt.format(self.low)}-{fmt.format(self.high)})"


@dataclass(frozen=True, slots=True)
class Summary:
    """One read from one variant over every round."""

    endpoint: str
    server: str
    requests_per_second: float
    cpu_us_per_request: float
    p99_ms: float
    requests_per_second_spread: Spread
    cpu_us_per_request_spread: Spread


def summarise(runs: Sequence[Run]) -> Summary:
    rps = Spread.of([run.requests_per_second for run in runs])
    cpu = Spread.of([run.cpu_us_per_request for run in runs])
    p99 = round(statistics.median(run.p99_ms for run in runs), 2)
    return Summary(runs[0].endpoint, runs[0].server, rps.median, cpu.median, p99, rps, cpu)


def comparisons(servers: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs compared round by round: off against before, each traced variant against off."""
    pairs = [("off", "before")] if "before" in servers else []
    return pairs + [(server, "off") for server in servers if server.startswith("on-")]


FIGURES = ("cpu_us_per_request", "requests_per_second")


def ratios_of(rounds: Sequence[Sequence[Run]]) -> dict[str, dict[str, dict[str, RoundRatios]]]:
    """Per read and pair (``"on-1%/off"``), each figure's per-round ratios."""
    by = {(runs[0].endpoint, runs[0].server): runs for runs in rounds if runs}
    found: dict[str, dict[str, dict[str, RoundRatios]]] = {}
    for endpoint in dict.fromkeys(endpoint for endpoint, _ in by):
        servers = [server for read, server in by if read == endpoint]
        for over, under in comparisons(servers):
            pair = found.setdefault(endpoint, {}).setdefault(f"{over}/{under}", {})
            for figure in FIGURES:
                spread = round_ratios(
                    [getattr(run, figure) for run in by[(endpoint, over)]],
                    [getattr(run, figure) for run in by[(endpoint, under)]],
                )
                if spread is not None:
                    pair[figure] = spread
    return found


@dataclass(kw_only=True, slots=True)
class TracingResult(Result):
    rounds: list[list[Run]]  # per read and variant, its run in each round
    results: list[Summary]
    ratios: dict[str, dict[str, dict[str, RoundRatios]]]

    def table(self) -> str:
        rows = [
            (s.endpoint, s.server, s.requests_per_second_spread.text("{:,.0f}"),
             s.cpu_us_per_request_spread.text("{:.0f}"), f"{s.p99_ms:.2f}")
            for s in self.results
        ]  # fmt: skip
        head = ("read", "variant", "req/s median (range)", "CPU µs/req median (range)", "p99 ms")
        lines = [text_table(head, rows, "llrrr"), ""]
        for endpoint, pairs in self.ratios.items():
            for pair, figures in pairs.items():
                for figure, spread in figures.items():
                    lines.append(f"{endpoint}: {figure} {pair} {spread.text()}")
        return "\n".join(lines)

    def failures(self) -> list[str]:
        return [
            f"{run.server} answered {name} errors on {run.endpoint} in round {run.round}"
            for runs in self.rounds
            for run in runs
            for name in FAILED
            if run.errors.get(name)
        ]

    def plot(self, plt: Any, path: Path) -> None:
        """CPU per request of each variant, one panel per read: median bars, range whiskers."""
        reads = list(dict.fromkeys(s.endpoint for s in self.results))
        figure, panels = plt.subplots(1, len(reads), figsize=(4.2 * len(reads), 4.2), dpi=120)
        for axes, endpoint in zip([panels] if len(reads) == 1 else panels, reads, strict=True):
            shown = [s for s in self.results if s.endpoint == endpoint]
            medians = [s.cpu_us_per_request for s in shown]
            colours = [COLOURS["jangteo"] if s.server.startswith("on-") else COLOURS["bare"]
                       for s in shown]  # fmt: skip
            bars(axes, [s.server for s in shown], medians, "{:.0f}", color=colours)
            spread = [s.cpu_us_per_request_spread for s in shown]
            whiskers = [[m - s.low for m, s in zip(medians, spread, strict=True)],
                        [s.high - m for m, s in zip(medians, spread, strict=True)]]  # fmt: skip
            axes.errorbar(range(len(shown)), medians, yerr=whiskers, fmt="none", color="#333")
            axes.set_title(endpoint, fontsize=10)
            axes.set_ylabel("server CPU µs per request (lower is better)")
            axes.set_ylim(0, max(s.high for s in spread) * 1.25)
        caption = f"{self.date}, {self.machine.cores} cores, {self.load['rounds']} rounds,"
        caption += f" wrk -t{self.load['threads']} -c{self.load['connections']}"
        caption += f" -d{self.load['duration_s']}s; bars: median, whiskers: range"
        finish(plt, figure, caption, path)


def rounds_of(
    targets: Sequence[tuple[Target, Server]], lua: Path, args: argparse.Namespace
) -> list[list[Run]]:
    """Each target once per round, every round starting one target later than the last."""
    runs: list[list[Run]] = [[] for _ in targets]
    load = {"threads": args.threads, "connections": args.connections}
    for number in range(args.rounds):
        for step in range(len(targets)):
            index = (number + step) % len(targets)
            target, server = targets[index]
            print(f"round {number + 1}: wrk {target.server} GET {target.endpoint}", flush=True)
            if args.warmup > 0:
                wrk(target, lua, seconds=args.warmup, **load)
            cpu = server.cpu_seconds()
            measured = wrk(target, lua, seconds=args.duration, **load)
            spent = server.cpu_seconds() - cpu
            runs[index].append(
                Run(
                    target.endpoint,
                    target.server,
                    number + 1,
                    measured.requests,
                    measured.requests_per_second,
                    round(spent / max(1, measured.requests) * 1e6, 1),
                    measured.latency_ms["p99"],
                    measured.errors,
                )
            )
    return runs


def ratio_list(text: str) -> list[float]:
    """``--ratios``: sampling ratios, each in (0, 1]."""
    try:
        ratios = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not ratios or any(not 0 < ratio <= 1 for ratio in ratios):
        raise argparse.ArgumentTypeError(f"each ratio must be in (0, 1]: {text!r}")
    if len(set(ratios)) < len(ratios):
        raise argparse.ArgumentTypeError(f"a ratio is named twice: {text!r}")
    return ratios


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--before", default=BEFORE, metavar="REV",
        help=f"the commit without tracing to compare with (default {BEFORE}); 'none' to skip",
    )  # fmt: skip
    parser.add_argument(
        "--ratios", type=ratio_list, default=list(TRACING_RATIOS),
        help="JANGTEO_OTEL_SAMPLE_RATIO of each traced variant, comma-separated (0.01,1)",
    )  # fmt: skip
    parser.add_argument(
        "--only", nargs="+", choices=tuple(READS), default=list(READS), help="the reads to load"
    )
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds")
    parser.add_argument("--duration", type=int, default=8, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")


async def run(args: argparse.Namespace) -> TracingResult:
    if args.rounds < 1 or args.duration < 1:
        raise BenchError("--rounds and --duration must be at least 1")
    machine = Machine()
    stack = services()
    commands: dict[str, Any] = {}
    lua = args.scratch / "report.lua"
    lua.write_text(WRK_REPORT_LUA)
    before = None if args.before == "none" else checkout_before(args.before, args.scratch)
    async with fresh_database(stack.admin_url, DATABASE, keep=args.keep_database) as url:
        base = serve_settings(url, stack.redis_url)
        with collector() as endpoint, ExitStack() as servers:
            variants = {"off": base}
            if before is not None:
                variants = {"before": {**base, "PYTHONPATH": str(before)}, **variants}
            for ratio in args.ratios:
                traced = {
                    "JANGTEO_OTEL_ENDPOINT": endpoint,
                    "JANGTEO_OTEL_SAMPLE_RATIO": str(ratio),
                }
                variants[traced_variant(ratio)] = {**base, **traced}
            running = {
                name: servers.enter_context(instances([name], env, args.scratch, commands))[0]
                for name, env in variants.items()
            }
            token = sign_up(running["off"].port)
            listing_id = create_listing(running["off"].port, token, "tracing benchmark")
            paths = {
                TRACING_CACHED: f"/api/v1/listings/{listing_id}",
                TRACING_FEED: f"/api/v1/listings?region={REGION}",
            }
            paths = {READS[read]: paths[READS[read]] for read in READS if read in args.only}
            for server in running.values():
                warm(server.port, list(paths.values()))
            targets = [
                (Target(read, name, f"{server.url}{path}"), server)
                for read, path in paths.items()
                for name, server in running.items()
            ]
            rounds = rounds_of(targets, lua, args)
    load = {"tool": "wrk", "rounds": args.rounds, "duration_s": args.duration}
    load |= {"warmup_s": args.warmup, "threads": args.threads, "connections": args.connections}
    load |= {"processes_per_server": 1, "before": args.before, "ratios": args.ratios}
    load["reported"] = "median and range over the rounds; ratios within each round"
    return TracingResult(
        benchmark="tracing",
        machine=machine,
        versions=await versions(),
        load=load,
        commands=commands,
        rounds=rounds,
        results=[summarise(runs) for runs in rounds],
        ratios=ratios_of(rounds),
    )
