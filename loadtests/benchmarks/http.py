"""HTTP: jangteo against a bare aiohttp app sending the same bytes, measured by wrk.

jangteo (``serve --workers 2``) and the reference (``loadtests/references/app.py``, two
processes) answer GET /healthz and GET /api/v1/me (one signed-up user); wrk loads each
URL ``--rounds`` times in alternating order and the best run of each is kept.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.harness.report import COLOURS, bars, finish
from loadtests.harness.results import Machine, Result, versions
from loadtests.harness.stack import (
    bare_app,
    fetch,
    fresh_database,
    instances,
    serve_settings,
    services,
    sign_up,
)
from loadtests.harness.tools import WRK_REPORT_LUA, Measurement, Target, alternate, best, wrk_table

WORKERS = 2
DATABASE = "jangteo_bench_http"


@dataclass(kw_only=True, slots=True)
class HttpResult(Result):
    results: list[Measurement]
    all_rounds: list[Measurement]
    ratios_jangteo_over_baseline: dict[str, float]

    def table(self) -> str:
        return wrk_table(self.results, self.ratios_jangteo_over_baseline)

    def plot(self, plt: Any, path: Path) -> None:
        """A bar chart of requests/s per endpoint and server."""
        shares = self.ratios_jangteo_over_baseline
        endpoints = list(shares)
        rps = {(m.endpoint, m.server): m.requests_per_second for m in self.results}
        figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
        for offset, server in ((-0.19, "jangteo"), (0.19, "baseline")):
            xs = [index + offset for index in range(len(endpoints))]
            heights = [rps[(endpoint, server)] for endpoint in endpoints]
            bars(axes, xs, heights, "{:,.0f}", width=0.38, label=server, color=COLOURS[server])
        for index, endpoint in enumerate(endpoints):
            top = max(rps[(endpoint, "jangteo")], rps[(endpoint, "baseline")])
            label = f"{shares[endpoint]:.0%} of baseline"
            axes.annotate(label, (index, top * 1.12), ha="center", fontsize=9, fontweight="bold")
        axes.set_xticks(range(len(endpoints)), [f"GET {e}" for e in endpoints])
        axes.set_ylabel("requests / s (higher is better)")
        axes.set_ylim(0, max(rps.values()) * 1.3)
        axes.set_title(
            f"jangteo vs bare aiohttp, same bytes, {WORKERS} processes each", fontsize=10
        )
        axes.legend(loc="upper left", fontsize=8)
        caption = f"{self.date}, {self.machine.cores} cores, wrk -t{self.load['threads']}"
        caption += f" -c{self.load['connections']} -d{self.load['duration_s']}s"
        finish(plt, figure, caption, path)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--rounds", type=int, default=2, help="runs per URL; the best is kept")


async def run(args: argparse.Namespace) -> HttpResult:
    machine = Machine()
    stack = services()
    commands: dict[str, str] = {}
    lua = args.scratch / "report.lua"
    lua.write_text(WRK_REPORT_LUA)
    async with fresh_database(stack.admin_url, DATABASE, keep=args.keep_database) as url:
        settings = serve_settings(url, stack.redis_url)
        with instances(["jangteo"], settings, args.scratch, commands, workers=WORKERS) as (app,):
            auth = {"Authorization": f"Bearer {sign_up(app.port)}"}
            bodies = {
                "/healthz": fetch(app.port, "/healthz"),
                "/me": fetch(app.port, "/api/v1/me", auth),
            }
            with bare_app(bodies, args.scratch, commands, WORKERS) as baseline:
                targets = [
                    Target("/healthz", "jangteo", f"{app.url}/healthz"),
                    Target("/healthz", "baseline", f"{baseline.url}/healthz"),
                    Target("/api/v1/me", "jangteo", f"{app.url}/api/v1/me", auth),
                    Target("/api/v1/me", "baseline", f"{baseline.url}/me"),
                ]
                rounds = alternate(
                    targets, lua, rounds=args.rounds, warmup=args.warmup, seconds=args.duration,
                    threads=args.threads, connections=args.connections,
                )  # fmt: skip
    measurements = best(rounds)
    rps = {(m.endpoint, m.server): m.requests_per_second for m in measurements}
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
        ratios_jangteo_over_baseline={
            endpoint: round(rps[(endpoint, "jangteo")] / rps[(endpoint, "baseline")], 3)
            for endpoint in ("/healthz", "/api/v1/me")
        },
    )
