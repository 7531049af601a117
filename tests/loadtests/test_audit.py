"""The load test's audit on synthetic records: each invariant passes when it holds and
names itself when it does not. No database, no server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from loadtests.audit import (
    Records,
    audit,
    check_chats,
    check_money,
    check_orders,
    check_stock,
    check_stream,
)
from loadtests.config import LoadConfig, parse_duration, parse_limits
from loadtests.harness.stats import percentile
from loadtests.run_loadtest import threshold_failures

# An event log of one channel: (position, prev, committed ms).
LOG = [(10, 0, 1000), (12, 10, 1010), (15, 12, 1020), (20, 15, 1030), (31, 20, 5000)]


def stream(events: list[list[int]], start: int = 10, until_ms: float = 2000) -> dict[str, Any]:
    return {
        "user_id": 7,
        "role": "watcher",
        "channel": "listing:1",
        "segments": [{"start": start, "events": events}],
        "until_ms": until_ms,
    }


def names(violations: list[Any]) -> set[str]:
    return {violation.invariant for violation in violations}


def test_a_complete_stream_passes() -> None:
    assert check_stream(stream([[12, 10], [15, 12], [20, 15]]), LOG) == []


def test_events_committed_after_the_end_are_not_required() -> None:
    # The load ended for this socket at 1025 ms: 20 (1030 ms) and 31 (5000 ms) came later.
    assert check_stream(stream([[12, 10], [15, 12]], until_ms=1025), LOG) == []
    # At 2000 ms, 20 had committed: it must have arrived; 31 still need not.
    late = check_stream(stream([[12, 10], [15, 12]], until_ms=2000), LOG)
    assert [v.invariant for v in late] == ["ws-delivery"] and "20" in late[0].detail


def test_a_missed_event_breaks_delivery_and_the_prev_chain() -> None:
    violations = check_stream(stream([[12, 10], [20, 15]]), LOG)
    assert names(violations) == {"ws-delivery", "ws-prev"}
    assert any("missed 1 of 3" in v.detail and "15" in v.detail for v in violations)


def test_a_gap_before_a_received_event_is_missing_even_if_committed_late() -> None:
    late = [(10, 0, 1000), (12, 10, 9000), (15, 12, 1020)]  # 12 committed after until_ms
    violations = check_stream(stream([[15, 12]], start=10), late)
    assert "ws-delivery" in names(violations)


def test_duplicates_and_disorder_are_delivery_violations() -> None:
    duplicate = check_stream(stream([[12, 10], [15, 12], [15, 12], [20, 15]]), LOG)
    assert names(duplicate) == {"ws-delivery"}
    assert "duplicates 15" in duplicate[0].detail
    backwards = check_stream(stream([[12, 10], [20, 15], [15, 12]]), LOG)
    assert "ws-delivery" in names(backwards)
    assert any("out of order" in v.detail for v in backwards)


def test_an_offset_not_in_the_log_and_a_wrong_prev_are_caught() -> None:
    unknown = check_stream(stream([[12, 10], [13, 12]], until_ms=1015), LOG)
    assert any("not in the log" in v.detail for v in unknown)
    wrong_prev = check_stream(stream([[12, 11]], start=11, until_ms=1015), LOG)
    assert names(wrong_prev) == {"ws-prev"}


def test_without_a_log_only_the_stream_itself_is_checked() -> None:
    assert check_stream(stream([[12, 10], [20, 15]]), None)[0].invariant == "ws-prev"
    assert check_stream(stream([[12, 10], [15, 12]]), None) == []


def test_a_resync_segment_is_checked_up_to_what_it_received() -> None:
    record = stream([[12, 10]])
    record["segments"].append({"start": 15, "events": [[20, 15]]})
    assert check_stream(record, LOG) == []


def test_stock() -> None:
    assert check_stock({1: 5, 2: 3}, {1: (2, "on_sale", 3), 2: (0, "sold", 3)}) == []
    assert names(check_stock({1: 5}, {1: (0, "sold", 6)})) == {"no-oversell"}
    assert names(check_stock({1: 5}, {1: (3, "on_sale", 1)})) == {"stock-consistent"}
    assert names(check_stock({1: 5}, {1: (0, "on_sale", 5)})) == {"stock-consistent"}
    assert names(check_stock({1: 5}, {})) == {"stock-consistent"}


def test_money() -> None:
    assert check_money(balances=700, escrow=300, topups=1000, negative=0) == []
    assert names(check_money(700, 200, 1000, 0)) == {"money-conserved"}
    assert names(check_money(700, 300, 1000, 1)) == {"no-overdraw"}


def test_orders() -> None:
    recorded = [{"order_id": 1, "buyer_id": 5, "listing_id": 9, "quantity": 1}]
    assert check_orders(recorded, [], {1: (5, 9, 1)}) == []
    assert names(check_orders(recorded, [], {})) == {"orders-match-201s"}
    assert names(check_orders(recorded, [], {1: (5, 8, 1)})) == {"orders-match-201s"}
    extra = {1: (5, 9, 1), 2: (5, 9, 1)}
    assert names(check_orders(recorded, [], extra)) == {"orders-match-201s"}
    assert check_orders(recorded, [{"buyer_id": 5, "listing_id": 9}], extra) == []


def test_chats() -> None:
    cid = "0b3f7a52-3f0c-4c39-9f54-2d5e8c3c2a11"
    recorded = [{"client_id": cid, "room_id": 3, "message_id": 4, "sender_id": 8}]
    assert check_chats(recorded * 2, {cid: [(3, 4, 8)]}) == []
    assert names(check_chats(recorded, {cid: [(3, 4, 8), (3, 5, 8)]})) == {"chat-stored-once"}
    assert names(check_chats(recorded, {})) == {"chat-stored-once"}
    assert names(check_chats(recorded, {cid: [(3, 5, 8)]})) == {"chat-stored-once"}
    again = [*recorded, {**recorded[0], "message_id": 6}]
    assert names(check_chats(again, {cid: [(3, 4, 8)]})) == {"chat-stored-once"}


async def test_records_are_read_from_every_file_and_audited_without_a_database(
    tmp_path: Path,
) -> None:
    lines = [
        {"kind": "listing", "listing_id": 1, "quantity": 3},
        {"kind": "order", "order_id": 1, "buyer_id": 2, "listing_id": 1, "quantity": 1},
        stream([[12, 10], [20, 15]]) | {"kind": "stream"},
    ]
    (tmp_path / "records-a-1.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    (tmp_path / "records-b-2.jsonl").write_bytes(b'{"kind": "ws_error"}\n{"kind": "str')  # torn
    records = Records.read(tmp_path)
    assert records.listings == {1: 3} and len(records.orders) == 1
    assert records.ws_deliveries == 2 and records.other == {"ws_error": 1}
    result = await audit(records, None)
    assert not result.database
    assert result.broken == ["ws-prev"]


def test_config_and_thresholds() -> None:
    assert parse_duration("90") == 90 and parse_duration("1m30s") == 90
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")
    assert parse_limits("GET /a=10, WS connect=2.5") == {"GET /a": 10, "WS connect": 2.5}
    config = LoadConfig.from_env(
        {"JANGTEO_LOAD_WEIGHT_BROWSER": "0", "JANGTEO_LOAD_P95_LIMITS": "GET /a=10"}
    )
    assert config.weights["browser"] == 0 and config.p95_limits["GET /a"] == 10
    assert percentile({1: 50, 2: 45, 90: 5}, 0.95) == 2
    total = {"requests": 100, "failures": 5, "rps": 1.0, "p95_ms": 3.0}
    broken = threshold_failures(config, {"GET /a": {"p95_ms": 20.0}}, total)
    assert len(broken) == 3  # failure ratio, the p95 of GET /a, too few requests/s
