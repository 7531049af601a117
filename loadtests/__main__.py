"""``python -m loadtests bench NAME [options]`` runs one benchmark; ``python -m loadtests
report`` rebuilds BENCHMARKS.md's table from the results. ``make bench`` runs them all.

Benchmarks: http, listings, purchase, realtime, crowd, chat, scaling, storm, tracing (``bench NAME
--help`` lists each one's options). Each writes ``loadtests/results/<name>.json`` and
``<name>.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from loadtests.harness import report
from loadtests.harness.processes import RESULTS, BenchError
from loadtests.harness.results import save

BENCHMARKS = (
    "http", "listings", "purchase", "realtime", "crowd", "chat", "scaling", "storm", "tracing",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="run one benchmark (bench NAME --help)")
    bench.add_argument("name", choices=BENCHMARKS)
    bench.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's options")
    commands.add_parser("report", help="the targets table from loadtests/results/*.json")
    chosen = parser.parse_args(argv)
    if chosen.command == "report":
        report.main()
        return 0
    module = importlib.import_module(f"loadtests.benchmarks.{chosen.name}")
    sub = argparse.ArgumentParser(
        prog=f"python -m loadtests bench {chosen.name}", description=module.__doc__
    )
    sub.set_defaults(name=chosen.name)  # the results file stem, unless the benchmark takes one
    module.options(sub)
    sub.add_argument("--results", type=Path, default=RESULTS, help="where the results go")
    sub.add_argument("--keep-database", action="store_true", help="keep its database")
    sub.add_argument(
        "--keep-files", type=Path, default=None, metavar="DIR",
        help="keep server logs and scripts in DIR (default: a temporary directory)",
    )  # fmt: skip
    args = sub.parse_args(chosen.options)
    # SIGTERM stops what the benchmark started, as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.name}-") as scratch:
        args.scratch = Path(scratch) if args.keep_files is None else args.keep_files.resolve()
        args.scratch.mkdir(parents=True, exist_ok=True)
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                result = runner.run(module.run(args))
        except BenchError as error:
            print(f"bench {args.name}: {error}", file=sys.stderr)
            return 1
    code = save(result, args.results, args.name)
    print(f"done in {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
