"""The scaling benchmark's rules: the sweep, its verdicts, connection counts, the report."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.benchmarks.scaling import (
    Load,
    connections_by_instance,
    cost_pct,
    cpu_split,
    geometric,
    led_evenly,
    misses,
    next_rate,
    stop_reason,
    sustained,
)
from loadtests.harness import report

SERIES = [2000.0, 4000.0, 8000.0, 16000.0]


def step(offered: float, kept_up: bool = True, reached: bool = True) -> dict[str, Any]:
    why = [] if kept_up else ["the lag grew from 5 to 50 ms"]
    committed = offered if reached else offered * 0.8
    return {"offered": offered, "committed": committed, "kept_up": kept_up, "reached": reached,
            "why": why}  # fmt: skip


def test_the_series_is_geometric_up_to_its_top() -> None:
    assert geometric(2000, 2, 16000) == SERIES
    assert geometric(1000, 1.41, 2000) == [1000.0, 1410.0, 1990.0]
    with pytest.raises(ValueError, match="factor"):
        geometric(1000, 1.0, 2000)


def test_the_sweep_goes_up_while_the_lag_stays_flat() -> None:
    assert next_rate([], SERIES) == 2000
    assert next_rate([step(2000)], SERIES) == 4000
    assert next_rate([step(2000), step(4000)], SERIES) == 8000


def test_a_miss_is_run_once_more_and_a_second_miss_ends_the_sweep() -> None:
    once = [step(2000), step(4000, kept_up=False)]
    assert next_rate(once, SERIES) == 4000
    assert next_rate([*once, step(4000)], SERIES) == 8000  # the repeat kept up: go on
    twice = [*once, step(4000, kept_up=False)]
    assert next_rate(twice, SERIES) is None
    assert stop_reason(twice).startswith("fell behind twice at 4,000/s: the lag grew")
    assert sustained(twice) == step(2000)


def test_commits_short_of_the_offered_rate_end_the_sweep_at_once() -> None:
    short = [step(2000), step(4000, reached=False)]
    assert next_rate(short, SERIES) is None
    assert stop_reason(short) == "the commits reached only 3,200 of 4,000/s"
    assert sustained(short) == step(4000, reached=False)  # it kept up with what committed


def test_the_top_of_the_series_ends_the_sweep() -> None:
    done = [step(rate) for rate in SERIES]
    assert next_rate(done, SERIES) is None
    assert stop_reason(done) == "the top of the series"
    assert sustained(done) == step(16000)
    assert sustained([step(2000, kept_up=False)]) is None


def test_a_run_keeps_up_when_every_event_came_at_the_committed_rate_with_a_flat_lag() -> None:
    good = {"committed": 1000.0, "received": 990.0, "drain_s": 0.2, "missing": 0,
            "lag_thirds": [4.0, 6.0]}  # fmt: skip
    assert misses(**good) == []  # type: ignore[arg-type]
    assert misses(**good | {"received": 900.0}) == [  # type: ignore[arg-type]
        "received 900/s of 1,000/s committed"
    ]
    assert misses(**good | {"drain_s": 1.5}) == [  # type: ignore[arg-type]
        "the last event came 1.5 s after the last commit"
    ]
    assert misses(**good | {"drain_s": None, "missing": 3}) == [  # type: ignore[arg-type]
        "3 subscribed events did not arrive",
        "no subscribed event arrived",
    ]
    assert misses(**good | {"lag_thirds": [4.0, 16.0]}) == []  # type: ignore[arg-type]
    assert misses(**good | {"lag_thirds": [4.0, 16.5]}) == [  # type: ignore[arg-type]
        "the lag grew from 4 to 16.5 ms"
    ]


def test_leadership_is_even_when_every_partition_is_led_once_and_shares_differ_by_one() -> None:
    assert led_evenly([[0], []], 1)
    assert led_evenly([[0, 2], [1, 3]], 4)
    assert led_evenly([[0, 1, 2], [3, 4]], 5)
    assert not led_evenly([[0, 1, 2], [3]], 4)  # a hand-over still to come
    assert not led_evenly([[0, 1], [1]], 2)  # led twice
    assert not led_evenly([[0], [2]], 3)  # 1 led by nobody


def test_subscribed_channels_are_spread_along_the_cycle_and_their_rows_counted() -> None:
    channels = [f"listing:{n}" for n in range(8)]
    load = Load.spread(channels, 2, pool=None)  # type: ignore[arg-type]
    assert load.subscribed == [0, 4]
    assert [load.channels[p] for p in load.subscribed] == ["listing:0", "listing:1"]
    assert sorted(load.channels) == sorted(channels)
    # 19 transactions: two full laps (2 each), then 3 more, of which position 0 only.
    assert load.subscribed_rows({"transactions": 19, "rows_per_transaction": 50}) == 250


def test_the_cpu_split_groups_processes_by_kind() -> None:
    cores = {
        "postgres: relay sessions": 0.5, "postgres: inserts (load)": 0.2,
        "postgres (background)": 0.05, "redis": 0.02, "jangteo-1": 0.3, "jangteo-2": 0.1,
        "client (this process)": 0.15, "socket clients": 0.05,
        "other: pytest -m pytest": 0.4, "other: postgres backends of other databases": 0.1,
    }  # fmt: skip
    assert cpu_split(cores, ["jangteo-1", "jangteo-2"]) == {
        "postgresql": 0.75, "redis": 0.02, "jangteo": 0.4, "load": 0.2, "others": 0.5,
    }  # fmt: skip


def clients(*entries: tuple[int, str]) -> list[dict[str, str]]:
    return [{"addr": f"127.0.0.1:{port}", "name": name} for port, name in entries]


def test_connections_are_counted_per_instance_node_and_kind() -> None:
    nodes = {
        "a": {"port": 7001, "role": "master", "clients": clients(
            (100, "jangteo-events"), (101, "jangteo-near-cache"), (102, ""), (103, ""),
            (200, "jangteo-events"), (201, ""), (900, ""))},
        "b": {"port": 7002, "role": "master", "clients": clients(
            (100, "jangteo-events"), (200, "jangteo-events"), (202, "jangteo-near-cache"))},
        "c": {"port": 7003, "role": "slave", "clients": clients((300, ""))},
    }  # fmt: skip
    # One local port may reach two nodes: the pair tells the connections apart.
    owners = {(100, 7001): "one", (101, 7001): "one", (102, 7001): "one", (103, 7001): "one",
              (100, 7002): "one", (200, 7001): "two", (201, 7001): "two",
              (200, 7002): "two", (202, 7002): "two"}  # fmt: skip
    found = connections_by_instance(nodes, owners)
    assert found["masters"] == ["a", "b"]
    assert found["per_instance"]["one"] == {
        "events_per_master": {"a": 1, "b": 1}, "events_on_replicas": 0, "near_cache": 1,
        "command_pool": 2, "total": 5, "as_intended": True,
    }  # fmt: skip
    assert found["per_instance"]["two"]["command_pool"] == 1
    assert found["not_an_instance"] == {"a": 1, "c": 1}  # a replica link, a stranger
    assert found["as_intended"]
    owners.pop((100, 7002))  # instance one lost its link to b: counted as nobody's
    assert not connections_by_instance(nodes, owners)["per_instance"]["one"]["as_intended"]


def test_the_cluster_cost_is_throughput_lost_and_latency_added() -> None:
    assert cost_pct(1000.0, 950.0, lower_is_better=False) == 5.0
    assert cost_pct(20.0, 23.0, lower_is_better=True) == 15.0
    assert cost_pct(20.0, 18.0, lower_is_better=True) == -10.0
    assert cost_pct(None, 18.0, lower_is_better=True) is None


def scaling_data() -> dict[str, Any]:
    split = {"postgresql": 1.0, "redis": 0.1, "jangteo": 0.5, "load": 0.2, "others": 0.1}

    def measured(offered: float, p99: float) -> dict[str, Any]:
        return step(offered) | {
            "publish_p50_ms": 1.0, "publish_p99_ms": p99, "drain_after_last_commit_s": 0.1,
            "commit_to_receive_ms": {"p99": p99 + 1}, "cpu_split": split,
            "cpu": {"cores_used": {"postgres: relay sessions": 0.6}},
        }  # fmt: skip

    def count(n: int, rate: float, p99: float) -> dict[str, Any]:
        best = measured(rate, 9.0)
        return {"partitions": n, "paced": measured(1000, p99), "sustained": best,
                "steps": [best], "stopped": "the top of the series"}  # fmt: skip

    def mode(rate: float, p99: float) -> dict[str, float]:
        return {"msgs_per_second": rate, "p99_ms": p99}

    def links(pool: int) -> dict[str, Any]:
        return {"events_per_master": {"a": 1, "b": 1, "c": 1}, "events_on_replicas": 0,
                "near_cache": 1, "command_pool": pool, "total": pool + 4,
                "as_intended": True}  # fmt: skip

    conns = {"masters": ["a", "b", "c"], "as_intended": True,
             "per_instance": {"x": links(7), "y": links(9)}}  # fmt: skip
    return {
        "date": "2026-12-02T12:00:00+00:00",
        "load": {"paced_rate": 1000.0},
        "partitions": {
            "counts": [count(1, 8000, 4.0), count(2, 12000, 5.0), count(4, 17000, 6.0)],
            "one_partition_rate": 8000.0,
            "times_one_partition": {"1": 1.0, "2": 1.5, "4": 2.12},
        },
        "cluster": {
            "summary": {
                "fanout": {
                    "single": mode(80000, 20),
                    "cluster": mode(76000, 21),
                    "throughput_cost_pct": 5.0,
                    "p99_cost_pct": 5.0,
                },
                "chat": {
                    "single": mode(1400, 10),
                    "cluster": mode(1200, 10.5),
                    "throughput_cost_pct": 14.3,
                    "p99_cost_pct": 5.0,
                },
            },
            "sessions": {
                "fanout": {"cluster": [{"redis_connections": conns}]},
                "chat": {"cluster": [{"redis_connections": conns}]},
            },
        },
    }


def test_the_report_shows_the_headline_in_both_documents_and_details_in_benchmarks() -> None:
    rows = {r["target"]: r for r in report.scaling_rows(scaling_data())}
    best = rows["relay events/s sustained (lag flat), best partition count vs 1, 2 instances"]
    assert (best["figure_text"], best["ratio"], best["status"]) == (
        "17,000 events/s with 4 partitions", 2.125, "met",
    )  # fmt: skip
    assert best["docs"] == ["BENCHMARKS.md", "README.md"]
    paced = rows["relay commit-to-publish p99 at 1,000 events/s, 4 partitions on 2 instances"]
    assert (paced["status"], paced["reference_text"]) == (
        "met",
        "1 partition: 4.0 ms at 1,000 rows/s",
    )
    chat = rows["chat, 500 rooms on 2 instances: Redis Cluster vs one Redis, msgs/s"]
    assert (chat["status"], chat["docs"]) == ("missed", ["BENCHMARKS.md"])
    summary = rows["Redis Cluster (3 masters) vs one Redis: fan-out and chat msgs/s and p99"]
    assert summary["docs"] == ["README.md"]
    assert summary["status"] == "missed"
    assert summary["figure_text"] == (
        "on the cluster: fan-out msgs/s -5%, p99 +5%; chat msgs/s -14%, p99 +5%"
    )
    links = rows["Redis Cluster: connections per instance"]
    assert (links["status"], links["figure_text"]) == (
        "met", "events: 1 per master (of 3), near-cache 1, command pool 7-9",
    )  # fmt: skip
    details = report.scaling_details(scaling_data())
    assert "| 4 | " in details and "| 2.12x |" in details
    assert "| fanout 1, cluster Redis | y | 1, 1, 1 | 0 | 1 | 9 | 13 | yes |" in details


def test_nothing_measured_is_not_measured() -> None:
    rows = report.scaling_rows({})
    assert {r["status"] for r in rows} == {"not measured"}
    assert report.scaling_details({}).startswith("Not measured yet")
