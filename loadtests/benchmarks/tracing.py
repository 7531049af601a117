"""What tracing costs: the same reads from jangteo with tracing off, on, and (given
``--before DIR``, a checkout of an older commit) from code without tracing at all.

Each server is ``jangteo serve`` (one process) on one database and one Redis; the traced
one exports over OTLP/HTTP to a collector stand-in in this process that answers 200 to
every batch. wrk loads a cached ``GET /api/v1/listings/{id}`` (answered from the near
cache, before the app's middlewares) and the first page of a region's feed (the general
way: routing, middlewares, a server span and Redis spans when traced), each server in
turn, ``--rounds`` times, each round starting with the next server. Each run gives
requests/s and the server process's CPU time per request: on a machine shared with other
work the second is the steadier, since it counts only what the server itself spent.
Servers are compared within a round; the spread over rounds is the noise.

    python -m loadtests.benchmarks.tracing --before /tmp/before --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from loadtests.harness.processes import Server
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


def warm(port: int, paths: list[str]) -> None:
    """Read each path until the instance's near cache holds it (a lease takes a moment)."""
    for _ in range(20):
        for path in paths:
            fetch(port, path)
        time.sleep(0.1)


@dataclass(frozen=True, slots=True)
class Run:
    endpoint: str
    server: str
    requests_per_second: float
    cpu_us_per_request: float
    p99_ms: float


def rounds_of(
    targets: list[tuple[Target, Server]], lua: Path, args: argparse.Namespace
) -> list[list[Run]]:
    """Each target once per round, every round starting one target later than the last."""
    runs: list[list[Run]] = [[] for _ in targets]
    for number in range(args.rounds):
        for step in range(len(targets)):
            index = (number + step) % len(targets)
            target, server = targets[index]
            print(f"round {number + 1}: wrk {target.server} GET {target.endpoint}", flush=True)
            load = {"threads": args.threads, "connections": args.connections}
            wrk(target, lua, seconds=args.warmup, **load)
            cpu = server.cpu_seconds()
            measured = wrk(target, lua, seconds=args.duration, **load)
            spent = server.cpu_seconds() - cpu
            runs[index].append(
                Run(
                    target.endpoint,
                    target.server,
                    measured.requests_per_second,
                    spent / max(1, measured.requests) * 1e6,
                    measured.latency_ms["p99"],
                )
            )
    return runs


def table(rounds: list[list[Run]]) -> str:
    """Per endpoint and server: requests/s and CPU per request, median and range."""
    lines = [
        "| endpoint | server | requests/s, median (range) | CPU µs/request, median (range) "
        "| p99 ms, median |",
        "| --- | --- | --- | --- | --- |",
    ]
    for runs in rounds:
        rps = [run.requests_per_second for run in runs]
        cpu = [run.cpu_us_per_request for run in runs]
        p99 = statistics.median(run.p99_ms for run in runs)
        lines.append(
            f"| {runs[0].endpoint} | {runs[0].server} "
            f"| {statistics.median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) "
            f"| {statistics.median(cpu):.0f} ({min(cpu):.0f}-{max(cpu):.0f}) | {p99:.2f} |"
        )
    return "\n".join(lines)


RATIOS = (("requests/s", "requests_per_second"), ("CPU/request", "cpu_us_per_request"))


def ratios(rounds: list[list[Run]], over: str, under: str) -> str:
    """Per endpoint, ``over``/``under`` within each round: median (range) of the rounds."""
    by = {(runs[0].endpoint, runs[0].server): runs for runs in rounds}
    lines = []
    for endpoint in dict.fromkeys(endpoint for endpoint, _ in by):
        if (endpoint, over) not in by or (endpoint, under) not in by:
            continue
        pairs = list(zip(by[(endpoint, over)], by[(endpoint, under)], strict=True))
        for what, field in RATIOS:
            each = [getattr(a, field) / getattr(b, field) for a, b in pairs]
            lines.append(
                f"{endpoint}: {what} {over}/{under} {statistics.median(each):.3f}"
                f" ({min(each):.3f}-{max(each):.3f} over {len(each)} rounds)"
            )
    return "\n".join(lines)


async def measure(args: argparse.Namespace, scratch: Path) -> list[list[Run]]:
    stack = services()
    commands: dict[str, Any] = {}
    lua = scratch / "report.lua"
    lua.write_text(WRK_REPORT_LUA)
    async with fresh_database(stack.admin_url, DATABASE) as url:
        base = serve_settings(url, stack.redis_url)
        with collector() as endpoint, ExitStack() as servers:
            traced = {"JANGTEO_OTEL_ENDPOINT": endpoint, "JANGTEO_OTEL_SAMPLE_RATIO": args.ratio}
            variants = {"off": base, "on": {**base, **traced}}
            if args.before is not None:
                variants["before"] = {**base, "PYTHONPATH": str(args.before.resolve())}
            running = {
                name: servers.enter_context(instances([name], env, scratch, commands))[0]
                for name, env in variants.items()
            }
            token = sign_up(running["off"].port)
            listing_id = create_listing(running["off"].port, token, "tracing benchmark")
            paths = {
                "cached /listings/{id}": f"/api/v1/listings/{listing_id}",
                "feed first page": f"/api/v1/listings?region={REGION}",
            }
            paths = {name: path for name, path in paths.items() if name.split()[0] in args.only}
            for server in running.values():
                warm(server.port, list(paths.values()))
            targets = [
                (Target(endpoint_name, name, f"{server.url}{path}"), server)
                for endpoint_name, path in paths.items()
                for name, server in running.items()
            ]
            return rounds_of(targets, lua, args)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.benchmarks.tracing")
    parser.add_argument("--before", type=Path, default=None, help="a checkout without tracing")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds")
    parser.add_argument("--ratio", default="1", help="JANGTEO_OTEL_SAMPLE_RATIO when on")
    parser.add_argument(
        "--only", nargs="+", choices=("cached", "feed"), default=["cached", "feed"],
        help="the reads to load",
    )  # fmt: skip
    parser.add_argument("--duration", type=int, default=8, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as scratch:
        rounds = asyncio.run(measure(args, Path(scratch)))
    print(table(rounds))
    print(ratios(rounds, "on", "off"))
    print(ratios(rounds, "off", "before"))


if __name__ == "__main__":
    main()
