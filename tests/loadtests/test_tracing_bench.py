"""bench tracing: its rows in BENCHMARKS.md from made-up results (what counts as no
measurable difference, what is shown, what is not measured), the result's own shape, and
one tiny real run of every variant on both reads."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest

from loadtests.benchmarks import tracing as bench
from loadtests.harness import report
from loadtests.harness.report import TRACING_CACHED, TRACING_FEED
from loadtests.harness.results import Machine, save

CACHED_ROW = "cached GET /listings/{id} CPU per request, tracing off vs the code before it"
FEED_1 = "feed first page CPU per request, tracing on (1% sampled) vs off"
FEED_100 = "feed first page CPU per request, tracing on (100% sampled) vs off"


def run(endpoint: str, server: str, number: int, cpu: float) -> bench.Run:
    return bench.Run(endpoint, server, number, 10_000, 1e6 / cpu, cpu, 9.5, {"status": 0})


def made_up(cpu: dict[tuple[str, str], list[float]]) -> bench.TracingResult:
    """A result whose rounds have these CPU µs per request, per (read, variant)."""
    rounds = [
        [run(endpoint, server, number, value) for number, value in enumerate(values, 1)]
        for (endpoint, server), values in cpu.items()
    ]
    return bench.TracingResult(
        benchmark="tracing",
        machine=Machine(),
        versions={},
        load={"rounds": 3, "threads": 1, "connections": 32, "duration_s": 8, "ratios": [0.01, 1.0]},
        commands={},
        rounds=rounds,
        results=[bench.summarise(runs) for runs in rounds],
        ratios=bench.ratios_of(rounds),
    )


def saved(result: bench.TracingResult, directory: Path) -> dict[str, Any]:
    """The result as ``bench tracing`` writes it, read back as the report reads it."""
    assert save(result, directory, "tracing") == 0
    assert (directory / "tracing.png").stat().st_size > 0
    data: dict[str, Any] = json.loads((directory / "tracing.json").read_text())
    return data


def rows_by_target(data: dict[str, Any]) -> dict[str, report.Row]:
    return {r["target"]: r for r in report.tracing_rows(data)}


CPU = {
    (TRACING_CACHED, "before"): [64.0, 70.0, 60.0],
    (TRACING_CACHED, "off"): [66.0, 63.0, 61.2],  # 1.03, 0.90, 1.02 of before
    (TRACING_FEED, "before"): [100.0, 100.0, 100.0],
    (TRACING_FEED, "off"): [100.0, 110.0, 90.0],
    (TRACING_FEED, "on-1%"): [105.0, 110.0, 99.0],  # 1.05, 1.00, 1.10 of off
    (TRACING_FEED, "on-100%"): [300.0, 330.0, 360.0],  # 3.00, 3.00, 4.00 of off
}


def test_off_within_the_rounds_spread_of_before_is_no_measurable_difference(
    tmp_path: Path,
) -> None:
    rows = rows_by_target(saved(made_up(CPU), tmp_path))
    cached = rows[CACHED_ROW]
    assert cached["status"] == "met"
    assert (cached["figure"], cached["reference"]) == (63.0, 64.0)  # the medians
    assert cached["round_ratios"] == [1.031, 0.9, 1.02]
    assert cached["ratio_text"] == "1.02x median (0.90-1.03x over 3 rounds)"
    assert cached["figure_text"] == "63 µs/request"
    assert cached["reference_text"] == "before tracing: 64 µs/request"
    assert cached["docs"] == ["BENCHMARKS.md"]
    assert cached["source"] == "loadtests/results/tracing.json"


def test_off_costlier_than_before_in_every_round_is_a_miss(tmp_path: Path) -> None:
    slower = {**CPU, (TRACING_CACHED, "off"): [70.0, 75.0, 66.0]}
    assert rows_by_target(saved(made_up(slower), tmp_path))[CACHED_ROW]["status"] == "missed"


def test_the_traced_feed_is_shown_beside_off_round_by_round(tmp_path: Path) -> None:
    rows = rows_by_target(saved(made_up(CPU), tmp_path))
    one, every = rows[FEED_1], rows[FEED_100]
    assert (one["status"], one["ratio"], one["figure"]) == ("shown", 1.05, 105.0)
    assert one["reference_text"] == "off: 100 µs/request"
    assert (every["status"], every["ratio"], every["round_ratios"]) == ("shown", 3.0, [3, 3, 4])
    assert every["ratio_text"] == "3.00x median (3.00-4.00x over 3 rounds)"


def test_without_results_every_row_is_not_measured() -> None:
    rows = report.tracing_rows({})
    assert [r["target"] for r in rows] == [CACHED_ROW, FEED_1, FEED_100]
    assert {r["status"] for r in rows} == {"not measured"}
    assert {r["source"] for r in rows} == {None}


def test_the_result_names_its_ratios_and_its_failures() -> None:
    result = made_up(CPU)
    assert set(result.ratios[TRACING_FEED]) == {"off/before", "on-1%/off", "on-100%/off"}
    assert set(result.ratios[TRACING_CACHED]) == {"off/before"}
    assert "feed first page: cpu_us_per_request on-100%/off 3.00x median" in result.table()
    assert result.failures() == []
    failing = bench.Run(TRACING_FEED, "on-1%", 2, 100, 9.0, 120.0, 9.0, {"status": 3})
    result.rounds[-1].append(failing)
    assert result.failures() == ["on-1% answered status errors on feed first page in round 2"]


@pytest.mark.parametrize("text", ["0", "1.5", "-0.1", "half", "0.01,", "", "0.01,0.01"])
def test_bad_sampling_ratios_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        bench.ratio_list(text)


async def test_a_tiny_real_run_measures_every_variant_on_both_reads(
    service_urls: tuple[str, str],
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JANGTEO_DATABASE_URL", service_urls[0])
    monkeypatch.setenv("JANGTEO_REDIS_URL", redis_url)
    monkeypatch.setattr(bench, "DATABASE", f"jangteo_test_bench_tracing_{os.getpid()}")
    parser = argparse.ArgumentParser()
    bench.options(parser)
    args = parser.parse_args(["--rounds", "1", "--duration", "1", "--warmup", "0"])
    args.scratch, args.keep_database = tmp_path / "scratch", False
    args.scratch.mkdir()

    data = saved(await bench.run(args), tmp_path)

    variants = ["before", "off", "on-1%", "on-100%"]
    assert [(s["endpoint"], s["server"]) for s in data["results"]] == [
        (read, variant) for read in (TRACING_CACHED, TRACING_FEED) for variant in variants
    ]
    for runs in data["rounds"]:
        (only,) = runs
        assert only["requests"] > 0 and only["cpu_us_per_request"] > 0, only
        assert not only["errors"]["status"], only
    rows = report.tracing_rows(data)
    assert rows[0]["status"] in ("met", "missed")
    assert [r["status"] for r in rows[1:]] == ["shown", "shown"]
