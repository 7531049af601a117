"""``make chaos``: ``python -m loadtests.chaos [--seed N] [--duration 600]``.

Three ``jangteo serve`` instances on a PostgreSQL and a Redis of the run's own carry
mixed traffic while a seeded schedule of faults hits them; then everything is healed and
checked (``loadtests/chaos/run.py``). The schedule is a pure function of the seed and
the duration and is printed first: ``--seed`` reproduces it.

Exit status: 0 when every check passed; 1 when one failed (each broken invariant is
named, with the seed and the fault history); 2 when the run could not be made; 130 on
Ctrl-C. Everything it started is stopped in every case; its scratch directory (logs of
the instances and services, the records) is kept when the run did not pass.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from loadtests.chaos.cluster import Cluster, ClusterError
from loadtests.chaos.run import INSTANCES, Options, chaos, history_text, summary, write
from loadtests.chaos.traffic import Unavailable
from loadtests.config import parse_duration
from loadtests.harness.processes import run_guarded

RESULTS = Path(__file__).resolve().parent.parent / "results" / "chaos-latest.json"


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m loadtests.chaos", description=__doc__)
    parser.add_argument("--seed", default="random", help="an integer, or 'random' (printed)")
    parser.add_argument("--duration", default="600", help="of the schedule: 600, 90s, 10m")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"default {RESULTS}")
    parser.add_argument("--history", type=int, default=3000, help="events the slow client resumes")
    parser.add_argument("--watchers", type=int, default=4, help="watcher sockets per instance")
    parser.add_argument("--slow-rate", type=int, default=256 * 1024, help="slow link, bytes/s")
    parser.add_argument(
        "--fresh-limit",
        type=float,
        default=2.0,
        help="seconds a fresh event may take after the heal",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--max-stall", type=float, help="fail when one fault alone stalls subscribers longer (s)"
    )
    args = parser.parse_args(argv)
    args.seed = secrets.randbelow(1_000_000) if args.seed == "random" else int(args.seed)
    args.duration = parse_duration(args.duration)
    return Options(**vars(args))


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse(argv)
    except ValueError as error:
        print(f"chaos: {error}", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    scratch = Path(tempfile.mkdtemp(prefix="jangteo-chaos-"))
    cluster = Cluster(scratch, INSTANCES)
    rerun = f"make chaos SEED={options.seed} DURATION={options.duration:g}"
    passed = False

    def run() -> int:
        nonlocal passed
        report = asyncio.run(chaos(options, cluster))
        write(report, options.output, started)
        print(summary(report))
        print(f"results: {options.output}")
        passed = bool(report["passed"])
        if passed:
            kept = f"; logs and records in {scratch}" if options.keep else ""
            print(f"chaos run passed (seed {options.seed}){kept}")
            return 0
        print(
            f"CHAOS RUN FAILED: {', '.join(report['broken'])}; seed {options.seed} ({rerun}); "
            f"fault history: {history_text(report)}; logs and records in {scratch}"
        )
        return 1

    def stop() -> None:
        cluster.close()
        if passed and not options.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    logs = f" (logs in {scratch})"
    return run_guarded("chaos", run, stop, (ClusterError, Unavailable), logs)


if __name__ == "__main__":
    sys.exit(main())
