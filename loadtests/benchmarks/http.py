"""HTTP: jangteo against a bare aiohttp app sending the same bytes, measured by wrk.

jangteo (``serve --workers 2``) and the reference (``loadtests/references/app.py``, two
processes) answer GET /healthz and GET /api/v1/me (one signed-up user); wrk loads each
URL ``--rounds`` times in alternating order and the best run of each is kept.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from loadtests.harness.processes import BenchError, as_line, background, jangteo_command
from loadtests.harness.results import Machine, Result, finish, pyplot, versions
from loadtests.harness.stack import fetch, fresh_database, services, sign_up, wait_ready
from loadtests.harness.tools import WRK_REPORT_LUA, Measurement, Target, wrk
from server.embedded.process import free_port

WORKERS = 2
DATABASE = "jangteo_bench_http"
SERVE_ENV = {
    "JANGTEO_RATE_LIMITS": "off",
    "JANGTEO_ACCESS_LOG": "off",
    "JANGTEO_LOG_LEVEL": "WARNING",
}


@dataclass(kw_only=True, slots=True)
class HttpResult(Result):
    results: list[Measurement]
    all_rounds: list[Measurement]
    ratios_jangteo_over_baseline: dict[str, float]

    def table(self) -> str:
        return table(self.results, self.ratios_jangteo_over_baseline)

    def plot(self, path: Path) -> bool:
        caption = f"{self.date}, {self.machine.cores} cores, wrk -t{self.load['threads']}"
        caption += f" -c{self.load['connections']} -d{self.load['duration_s']}s"
        return plot(self.results, self.ratios_jangteo_over_baseline, caption, path)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--rounds", type=int, default=2, help="runs per URL; the best is kept")


async def run(args: argparse.Namespace) -> HttpResult:
    machine = Machine()
    stack = services()
    async with fresh_database(stack.admin_url, DATABASE, keep=args.keep_database) as url:
        env = {"JANGTEO_DATABASE_URL": url, "JANGTEO_REDIS_URL": stack.redis_url, **SERVE_ENV}
        rounds, commands = measure(args, env, args.scratch)
    measurements = [max(runs, key=lambda m: m.requests_per_second) for runs in rounds]
    return HttpResult(
        benchmark="http",
        machine=machine,
        versions=await versions(),
        load={
            "tool": "wrk",
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "threads": args.threads,
            "connections": args.connections,
            "processes_per_server": WORKERS,
            "rounds": args.rounds,
            "reported": "best requests/s of the rounds, with that run's latencies",
        },
        commands=commands,
        results=measurements,
        all_rounds=[m for runs in rounds for m in runs],
        ratios_jangteo_over_baseline=ratios(measurements),
    )


def measure(
    args: argparse.Namespace, env: Mapping[str, str], scratch: Path
) -> tuple[list[list[Measurement]], dict[str, str]]:
    """Both servers up, the same bytes checked, then every URL loaded ``--rounds`` times."""
    app_port, base_port = free_port(), free_port()
    serve = jangteo_command("serve", "--port", str(app_port), "--workers", str(WORKERS))
    line = " ".join(f"{k}={v}" for k, v in SERVE_ENV.items()) + " " + as_line(serve)
    commands = {"jangteo": line}
    with ExitStack() as stack:
        stack.enter_context(
            background(serve, {**os.environ, **env}, app_port, scratch / "jangteo.log")
        )
        wait_ready(app_port, workers=WORKERS)
        auth = {"Authorization": f"Bearer {sign_up(app_port)}"}
        bodies = {
            "/healthz": fetch(app_port, "/healthz"),
            "/me": fetch(app_port, "/api/v1/me", auth),
        }
        routes: list[str] = []
        for path, body in bodies.items():
            file = scratch / (path.strip("/") + ".json")
            file.write_bytes(body)
            routes += ["--route", f"{path}={file}"]
        module = "loadtests.references.app"
        baseline = [
            sys.executable,
            "-m",
            module,
            "--port",
            str(base_port),
            "--processes",
            str(WORKERS),
            *routes,
        ]
        commands["baseline"] = as_line(baseline)
        stack.enter_context(background(baseline, os.environ, base_port, scratch / "baseline.log"))
        wait_ready(base_port, "/healthz", workers=WORKERS)
        for path, body in bodies.items():
            if fetch(base_port, path) != body:
                raise BenchError(f"the baseline's {path} bytes differ from jangteo's")
        lua = scratch / "report.lua"
        lua.write_text(WRK_REPORT_LUA)
        targets = [
            Target("/healthz", "jangteo", f"http://127.0.0.1:{app_port}/healthz"),
            Target("/healthz", "baseline", f"http://127.0.0.1:{base_port}/healthz"),
            Target("/api/v1/me", "jangteo", f"http://127.0.0.1:{app_port}/api/v1/me", auth),
            Target("/api/v1/me", "baseline", f"http://127.0.0.1:{base_port}/me"),
        ]
        load = {"threads": args.threads, "connections": args.connections}
        rounds: list[list[Measurement]] = [[] for _ in targets]
        order = list(range(len(targets)))
        for number in range(args.rounds):
            # Every other round goes in reverse, so neither server always runs first.
            for index in order if number % 2 == 0 else order[::-1]:
                target = targets[index]
                print(f"round {number + 1}: wrk {target.server} GET {target.endpoint}", flush=True)
                if args.warmup > 0:
                    wrk(target, lua, seconds=args.warmup, **load)
                measurement = wrk(target, lua, seconds=args.duration, **load)
                if any(measurement.errors.values()):
                    print(f"  errors: {measurement.errors}", flush=True)
                rounds[index].append(measurement)
    return rounds, commands


def ratios(measurements: Sequence[Measurement]) -> dict[str, float]:
    """jangteo requests/s divided by the baseline's, per endpoint."""
    by_key = {(m.endpoint, m.server): m.requests_per_second for m in measurements}
    return {
        endpoint: round(by_key[(endpoint, "jangteo")] / by_key[(endpoint, "baseline")], 3)
        for endpoint, server in by_key
        if server == "jangteo" and (endpoint, "baseline") in by_key
    }


def table(measurements: Sequence[Measurement], shares: Mapping[str, float]) -> str:
    lines = [
        f"{'endpoint':<14}{'server':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'jangteo/baseline':>18}"
    ]
    for m in measurements:
        share = f"{shares[m.endpoint]:.0%}" if m.server == "jangteo" else ""
        lines.append(
            f"{m.endpoint:<14}{m.server:<10}{m.requests_per_second:>10,.0f}"
            f"{m.latency_ms['p50']:>9.2f}{m.latency_ms['p99']:>9.2f}"
            f"{sum(m.errors.values()):>8}{share:>18}"
        )
    return "\n".join(lines)


def plot(
    measurements: Sequence[Measurement], shares: Mapping[str, float], caption: str, path: Path
) -> bool:
    """A bar chart of requests/s per endpoint and server."""
    plt = pyplot()
    if plt is None:
        return False
    endpoints = list(dict.fromkeys(m.endpoint for m in measurements))
    servers = ["jangteo", "baseline"]
    colours = {"jangteo": "#d9534f", "baseline": "#7f8c8d"}
    rps = {(m.endpoint, m.server): m.requests_per_second for m in measurements}
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    width = 0.38
    for offset, server in enumerate(servers):
        xs = [index + (offset - 0.5) * width for index in range(len(endpoints))]
        heights = [rps.get((endpoint, server), 0.0) for endpoint in endpoints]
        bars = axes.bar(xs, heights, width, label=server, color=colours[server])
        axes.bar_label(bars, labels=[f"{h:,.0f}" for h in heights], fontsize=8, padding=2)
    for index, endpoint in enumerate(endpoints):
        if endpoint in shares:
            top = max(rps.get((endpoint, server), 0.0) for server in servers)
            label = f"{shares[endpoint]:.0%} of baseline"
            axes.annotate(label, (index, top * 1.12), ha="center", fontsize=9, fontweight="bold")
    axes.set_xticks(range(len(endpoints)), [f"GET {e}" for e in endpoints])
    axes.set_ylabel("requests / s (higher is better)")
    axes.set_ylim(0, max(rps.values()) * 1.3)
    axes.set_title(f"jangteo vs bare aiohttp, same bytes, {WORKERS} processes each", fontsize=10)
    axes.legend(loc="upper left", fontsize=8)
    return finish(plt, figure, caption, path)
