"""The purchase benchmark's buyers sweep: its option, the runs it makes, what it records,
prints and draws, and what the report makes of it. Nothing here runs a benchmark."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from loadtests.benchmarks import purchase
from loadtests.benchmarks.purchase import (
    PurchaseResult,
    buyer_counts,
    fixture_for,
    options,
    same_connection_references,
    sweep_points,
    sweep_record,
    sweep_table,
)
from loadtests.harness import report
from loadtests.harness.report import SweepRun, purchase_details, purchase_sweep
from loadtests.harness.results import Machine

STRATEGIES = ("atomic", "redis_lock")


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options(parser)
    return parser.parse_args(list(argv))


# ----------------------------------------------------------------------------- the option


def test_buyer_counts_are_ascending_and_each_once() -> None:
    assert buyer_counts("500,50,200,50") == [50, 200, 500]
    assert buyer_counts(" 50, 200 ,") == [50, 200]
    assert buyer_counts("7") == [7]


@pytest.mark.parametrize("text", ["", ",", "fifty", "50;200", "0,50", "-5,50", "50.5"])
def test_anything_but_positive_counts_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="buyer counts"):
        buyer_counts(text)


def test_the_option_parses_when_the_options_are_read() -> None:
    assert parsed("--buyers-sweep", "200,50").buyers_sweep == [50, 200]
    assert parsed().buyers_sweep == []  # no sweep unless asked for
    with pytest.raises(SystemExit):
        parsed("--buyers-sweep", "50,lots")


def test_the_headline_buyer_count_is_always_a_point_and_run_once() -> None:
    assert sweep_points(500, [50, 200, 500]) == [50, 200, 500]
    assert sweep_points(500, [50, 200]) == [50, 200, 500]
    assert sweep_points(200, [50, 500]) == [50, 200, 500]
    assert sweep_points(500, []) == [500]


def test_fewer_buyers_are_funded_for_as_many_purchases_in_all() -> None:
    args = parsed("--buyers-sweep", "50,200,500")
    headline = fixture_for(args, 500)
    assert (headline.buyers, headline.purchases_funded, headline.stock) == (500, 40, 10_000)
    for buyers in (50, 200, 499):
        fixture = fixture_for(args, buyers)
        assert fixture.buyers * fixture.purchases_funded >= 500 * 40 >= fixture.stock
    assert fixture_for(args, 1000).purchases_funded == 40  # more buyers: as before


# ----------------------------------------------------------------------------- results


def run(strategy: str, paid: float, p99: float, ok: bool = True) -> dict[str, Any]:
    """One strategy's run as run_strategy and run() record it (the figures read back)."""
    latency = {"p50": p99 / 3, "p95": p99 / 2, "p99": p99}
    return {
        "strategy": strategy,
        "http": {
            "paid_per_second": paid,
            "statuses": {"201": int(paid * 10), "409 insufficient-stock": 3},
            "latency_ms_201": latency,
            "latency_ms_all": latency,
        },
        "invariants": {"ok": ok, "checks": {"no_oversell": ok, "money_conserved": True}},
    }


def headline_run(strategy: str, paid: float, p99: float) -> dict[str, Any]:
    """A headline run: with its pgbench references, both scripts at both client counts."""
    script = purchase.BASELINE_SCRIPT[strategy]
    refs = {
        runs: {
            clients: {"paid_per_second": value, "script": name}
            for clients, value in (("500", 100.0), ("40", 250.0 if runs == "baseline" else 300.0))
        }
        for runs, name in (("baseline", script), ("call_baseline", f"call_{script}"))
    }
    return run(strategy, paid, p99) | refs | {
        "baseline_script": script,
        "ratio_vs_pgbench": {"500": paid / 100, "40": paid / 250},
        "ratio_vs_call": {"500": paid / 100, "40": paid / 300},
    }  # fmt: skip


def result(*, sweep: bool = True, failed_at_50: bool = False) -> PurchaseResult:
    points = [50, 200, 500] if sweep else [500]
    others = {
        50: [run("atomic", 320.0, 90.0, ok=not failed_at_50), run("redis_lock", 150.0, 140.0)],
        200: [run("atomic", 240.0, 700.0), run("redis_lock", 110.0, 1500.0)],
    }
    return PurchaseResult(
        benchmark="purchase",
        machine=Machine(),
        versions={},
        load={
            "buyers": 500,
            "listings": 1,
            "duration_s": 10,
            "pg_pool_max_per_worker": 20,
            "server_workers": 2,
            "pgbench_clients": [500, 40],
        },
        commands={},
        target="",
        strategies=[
            headline_run("atomic", 200.0, 4000.0),
            headline_run("redis_lock", 90.0, 6000.0),
        ],
        pgbench_scripts={},
        buyers_sweep=sweep_record(points, 500, others),
        date="2026-12-02T00:00:00+00:00",
    )


def test_the_sweep_records_the_other_counts_and_not_the_headline_twice() -> None:
    sweep = result().buyers_sweep
    assert (sweep["buyers"], sweep["headline"], sorted(sweep["points"])) == (
        [50, 200, 500], 500, ["200", "50"],
    )  # fmt: skip
    assert result(sweep=False).buyers_sweep == {}


def test_every_run_of_the_sweep_is_read_back_from_the_json_the_headline_from_the_table() -> None:
    data = json.loads(json.dumps(result().as_json(), default=str))
    runs = purchase_sweep(data)
    assert [(r.buyers, r.strategy) for r in runs] == [
        (50, "atomic"), (50, "redis_lock"), (200, "atomic"), (200, "redis_lock"),
        (500, "atomic"), (500, "redis_lock"),
    ]  # fmt: skip
    assert runs[-2] == SweepRun(500, "atomic", 200.0, 4000.0, True)
    assert purchase_sweep({"strategies": data["strategies"]}) == []  # results before the sweep


def test_the_table_rows_are_the_same_with_or_without_the_sweep() -> None:
    """The targets are judged on the headline's runs, as before the sweep existed."""
    with_sweep = json.loads(json.dumps(result().as_json(), default=str))
    without = {k: v for k, v in with_sweep.items() if k != "buyers_sweep"}
    assert report.purchase_rows(with_sweep, {}) == report.purchase_rows(without, {})
    assert report.purchase_rows(with_sweep, {})[0]["target"] == "500 buyers on one listing, atomic"


def test_a_failed_run_of_the_sweep_fails_the_benchmark() -> None:
    assert result().failures() == []
    assert result(failed_at_50=True).failures() == ["invariants atomic at 50 buyers"]


def test_the_printed_table_ends_with_the_sweep() -> None:
    printed = result().table()
    headline, sweep = printed.split("\n\n")
    assert headline.startswith("strategy") and "pgb40/s" in headline
    assert sweep.splitlines()[0].split() == [
        "strategy", "50", "buyers", "paid/s", "p99", "ms", "200", "buyers", "paid/s", "p99", "ms",
        "500", "buyers", "paid/s", "p99", "ms",
    ]  # fmt: skip
    assert sweep.splitlines()[1].split() == [
        "atomic", "320.0", "90", "240.0", "700", "200.0", "4,000",
    ]  # fmt: skip
    assert "\n\n" not in result(sweep=False).table()


def test_a_missing_or_failed_run_shows_in_the_sweep_table() -> None:
    runs = [SweepRun(50, "atomic", 10.0, 5.0, False), SweepRun(200, "queue", None, None, True)]
    lines = sweep_table(runs).splitlines()
    assert lines[1].split() == ["atomic", "10.0", "FAILED", "5", "-", "-"]
    assert lines[2].split() == ["queue", "-", "-", "-", "-"]


# ----------------------------------------------------------------------------- the figure


def test_the_references_are_pgbench_at_the_same_connections_each_script_once() -> None:
    assert same_connection_references(result().strategies, "40") == {
        "atomic": 250.0,
        "call_atomic": 300.0,
    }
    assert same_connection_references([run("atomic", 1.0, 1.0)], "40") == {}


class Drawn:
    """What ``finish`` was given, instead of saving it."""

    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}

    def __call__(self, plt: Any, figure: Any, caption: str, path: Path) -> None:
        self.figures[path.name] = figure


def test_the_sweep_figure_has_both_panels_a_line_per_strategy_and_pgbench_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plt = report.pyplot()
    assert plt is not None, "matplotlib is part of the test set-up ([dev] in pyproject.toml)"
    drawn = Drawn()
    monkeypatch.setattr(purchase, "finish", drawn)
    result().plot(plt, tmp_path / "purchase.png")
    assert sorted(drawn.figures) == ["purchase-buyers.png", "purchase.png"]
    rate, tail = drawn.figures["purchase-buyers.png"].axes
    lines = {line.get_label(): line for line in rate.get_lines()}
    assert list(lines) == [
        "atomic", "redis_lock", "pgbench -c 40: atomic, before one call",
        "pgbench -c 40: call_atomic",
    ]  # fmt: skip
    assert list(lines["atomic"].get_xdata()) == [50, 200, 500]
    assert list(lines["atomic"].get_ydata()) == [320.0, 240.0, 200.0]
    assert list(lines["pgbench -c 40: atomic, before one call"].get_ydata()) == [250.0, 250.0]
    p99 = {line.get_label(): list(line.get_ydata()) for line in tail.get_lines()}
    assert p99 == {"atomic": [90.0, 700.0, 4000.0], "redis_lock": [140.0, 1500.0, 6000.0]}
    assert "paid orders / s" in rate.get_ylabel() and "p99" in tail.get_ylabel()
    assert [tick.get_text() for tick in rate.get_xticklabels()] == ["50", "200", "500"]
    for figure in drawn.figures.values():
        plt.close(figure)


def test_the_figures_are_written_and_without_a_sweep_only_the_table_s(tmp_path: Path) -> None:
    plt = report.pyplot()
    assert plt is not None, "matplotlib is part of the test set-up ([dev] in pyproject.toml)"
    result(failed_at_50=True).plot(plt, tmp_path / "purchase-smoke.png")
    assert (tmp_path / "purchase-smoke-buyers.png").read_bytes().startswith(b"\x89PNG")
    result(sweep=False).plot(plt, tmp_path / "purchase.png")
    assert not (tmp_path / "purchase-buyers.png").exists()


# ----------------------------------------------------------------------------- BENCHMARKS.md


def test_benchmarks_md_shows_the_sweep_and_its_figure() -> None:
    data = json.loads(json.dumps(result(failed_at_50=True).as_json(), default=str))
    details = purchase_details(data)
    assert "| strategy | 50 buyers: paid/s, p99 | 200 buyers: paid/s, p99 |" in details
    assert "| atomic | 320.0, 90 ms, invariants FAILED | 240.0, 700 ms | 200.0, 4,000 ms |" in (
        details
    )
    assert "the 500-buyer column is the table's run" in details
    assert "(loadtests/results/purchase-buyers.png)" in details


def test_without_a_sweep_benchmarks_md_says_how_to_measure_it() -> None:
    details = purchase_details({"strategies": [run("atomic", 1.0, 1.0)]})
    assert "not measured yet" in details and "--buyers-sweep 50,200,500" in details
    assert ".png" not in details


def test_the_details_go_between_their_markers_in_benchmarks_md() -> None:
    start, end = report.DETAILS["purchase"]
    text = f"# purchase\n{start}\nold\n{end}\n## next\n"
    assert report.between(text, start, end, "new") == f"# purchase\n{start}\nnew\n{end}\n## next\n"


# ----------------------------------------------------------------------------- sold out


def test_paid_per_second_is_counted_over_the_whole_window_while_in_stock() -> None:
    measured = Counter({"201": 900, "409 insufficient-funds": 3})
    assert purchase.in_stock_seconds(measured, [9.7, 9.9], 10.0) == 10.0


def test_a_sold_out_window_counts_paid_per_second_up_to_the_last_paid_order() -> None:
    measured = Counter({"201": 8_000, "409 insufficient-stock": 2_500})
    assert purchase.in_stock_seconds(measured, [7.25, 7.5], 10.0) == 7.5


def test_a_window_that_sold_nothing_keeps_its_length() -> None:
    measured = Counter({"409 insufficient-stock": 40})
    assert purchase.in_stock_seconds(measured, [0.0], 10.0) == 10.0
