"""The invariant audit after a load test: read-only SQL plus what the simulated users recorded.

Invariants (each violation names one):

- ``no-oversell``: no listing has quantity < 0, and no recorded listing sold (orders not
  cancelled) more than the quantity it was created with.
- ``stock-consistent``: each recorded listing (its quantity is never edited by the load)
  has quantity + sold == created quantity, and is ``sold`` exactly when its quantity is 0.
- ``no-overdraw``: no wallet balance < 0.
- ``money-conserved``: sum(wallets.balance) + sum(amount of paid orders) == sum(topups).
- ``orders-match-201s``: every order id a buyer was answered 201 for exists with that buyer,
  listing and quantity; a buyer has no more unrecorded orders than purchases it never got
  an answer to.
- ``chat-stored-once``: every chat message the server confirmed (REST 201/200, socket ack)
  is stored exactly once under its client_id, in its room, with the id it was confirmed with.
- ``ws-delivery``: every socket received, per channel, every event after its ``subscribed``
  offset, in order, without duplicates, and nothing that is not in the event log. The
  events it must have received are those with a position after the subscribed offset and
  either committed before the load ended for it (``until_ms``; it kept reading for the
  drain after that) or older than an event it did receive.
- ``ws-prev``: each event's ``prev`` is the offset the socket received before it on that
  channel (the ``subscribed`` offset for the first), and the log's prev for that position.

Database checks run in one REPEATABLE READ, READ ONLY transaction (one snapshot).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson

INVARIANTS = (
    "no-oversell",
    "stock-consistent",
    "no-overdraw",
    "money-conserved",
    "orders-match-201s",
    "chat-stored-once",
    "ws-delivery",
    "ws-prev",
)
SHOWN = 5  # examples per violation detail


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    detail: str

    def as_json(self) -> dict[str, str]:
        return {"invariant": self.invariant, "detail": self.detail}


@dataclass(slots=True)
class Records:
    """What the load test's users wrote, by kind."""

    listings: dict[int, int] = field(default_factory=dict)  # id -> quantity at creation
    users: dict[int, str] = field(default_factory=dict)  # id -> role
    orders: list[dict[str, Any]] = field(default_factory=list)
    unresolved: list[dict[str, Any]] = field(default_factory=list)
    chats: list[dict[str, Any]] = field(default_factory=list)
    streams: list[dict[str, Any]] = field(default_factory=list)
    other: dict[str, int] = field(default_factory=dict)  # counts of ws_error, ws_stray, ...

    @classmethod
    def from_lines(cls, lines: Iterable[Mapping[str, Any]]) -> Records:
        records = cls()
        for line in lines:
            kind = line.get("kind")
            if kind == "listing":
                records.listings[int(line["listing_id"])] = int(line["quantity"])
            elif kind == "user":
                records.users[int(line["user_id"])] = str(line["role"])
            elif kind == "order":
                records.orders.append(dict(line))
            elif kind == "purchase_unresolved":
                records.unresolved.append(dict(line))
            elif kind == "chat":
                records.chats.append(dict(line))
            elif kind == "stream":
                records.streams.append(dict(line))
            else:
                records.other[str(kind)] = records.other.get(str(kind), 0) + 1
        return records

    @classmethod
    def read(cls, directory: Path) -> Records:
        """Every ``*.jsonl`` file in ``directory`` (a torn last line is skipped)."""
        lines: list[dict[str, Any]] = []
        for path in sorted(directory.glob("*.jsonl")):
            for raw in path.read_bytes().splitlines():
                try:
                    lines.append(orjson.loads(raw))
                except orjson.JSONDecodeError:
                    continue
        return cls.from_lines(lines)

    @property
    def ws_deliveries(self) -> int:
        return sum(
            len(segment["events"]) for stream in self.streams for segment in stream["segments"]
        )


@dataclass(slots=True)
class Stream:
    """What one socket saw of one channel, as a ``stream`` record gives it to the audit.

    A segment starts at the offset after which every event is owed (the ``subscribed``
    offset of a fresh subscription, or the ``since`` of a first subscription that
    resumes) and lists the events received after it as [offset, prev]. A resume
    (subscribe with ``since`` = the last offset seen) continues the segment; after a
    ``resync`` the next fresh subscription starts another.
    """

    channel: str
    segments: list[dict[str, Any]] = field(default_factory=list)
    last: int | None = None  # the last offset seen: the `since` of a resume

    def subscribed(self, offset: int, since: int | None = None) -> None:
        """A ``subscribed`` reply to a subscribe that asked for ``since`` (None: fresh)."""
        if since is not None and self.segments:
            return  # a resume: the segment goes on
        start = offset if since is None else since
        self.segments.append({"start": start, "events": []})
        self.last = start

    def event(self, offset: int, prev: int) -> bool:
        """An event frame; False when no subscription was answered yet (a stray)."""
        if not self.segments:
            return False
        self.segments[-1]["events"].append([offset, prev])
        self.last = offset
        return True

    def record(self, **fields: Any) -> dict[str, Any]:
        """The ``stream`` record: the channel, the segments, and ``fields`` (``until_ms``)."""
        return {"kind": "stream", "channel": self.channel, "segments": self.segments, **fields}


@dataclass(slots=True)
class AuditResult:
    violations: list[Violation] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    database: bool = False  # False: only the records' own consistency was checked

    @property
    def broken(self) -> list[str]:
        """The invariants that failed, in INVARIANTS order."""
        names = {violation.invariant for violation in self.violations}
        return [name for name in INVARIANTS if name in names]


def _examples(items: Sequence[object]) -> str:
    shown = ", ".join(str(item) for item in items[:SHOWN])
    return shown + (f", ... ({len(items)} in all)" if len(items) > SHOWN else "")


def _who(stream: Mapping[str, Any]) -> str:
    return f"{stream.get('role', 'user')} {stream.get('user_id')} on {stream['channel']}"


# -- WebSocket streams ---------------------------------------------------------------------

LogRow = tuple[int, int, int]  # position, prev, committed (epoch ms)


def check_stream(stream: Mapping[str, Any], log: Sequence[LogRow] | None) -> list[Violation]:
    """One socket's view of one channel against itself and, when given, the event log.

    ``log`` is every published event of the channel (position, prev, commit ms), in order.
    """
    violations: list[Violation] = []
    who = _who(stream)
    by_position = {row[0]: row for row in log} if log is not None else {}
    segments = stream["segments"]
    for index, segment in enumerate(segments):
        last = int(segment["start"])
        start = last
        seen: set[int] = set()
        duplicates: list[int] = []
        backwards: list[int] = []
        chain: list[str] = []
        logged_prev: list[str] = []
        unknown: list[int] = []
        for offset, prev in segment["events"]:
            if offset in seen:
                duplicates.append(offset)
                continue
            seen.add(offset)
            if offset <= last:
                backwards.append(offset)
                continue
            if prev != last:
                chain.append(f"{offset} came with prev {prev} after {last}")
            if log is not None:
                row = by_position.get(offset)
                if row is None:
                    unknown.append(offset)
                elif row[1] != prev:
                    logged_prev.append(f"{offset}: prev {prev}, the log says {row[1]}")
            last = offset
        if duplicates:
            violations.append(
                Violation("ws-delivery", f"{who}: duplicates {_examples(duplicates)}")
            )
        if backwards:
            violations.append(
                Violation("ws-delivery", f"{who}: out of order {_examples(backwards)}")
            )
        if unknown:
            violations.append(
                Violation("ws-delivery", f"{who}: offsets not in the log {_examples(unknown)}")
            )
        if chain:
            violations.append(Violation("ws-prev", f"{who}: {_examples(chain)}"))
        if logged_prev:
            violations.append(Violation("ws-prev", f"{who}: {_examples(logged_prev)}"))
        if log is None:
            continue
        # What it must have received: after `start`, up to the newest event it did
        # receive, and (the last segment, which ran to the end) everything committed
        # before the load ended for it.
        upto = max(seen, default=start)
        if index == len(segments) - 1:
            until = float(stream["until_ms"])
            committed = [row[0] for row in log if row[0] > start and row[2] <= until]
            upto = max([upto, *committed])
        expected = [row[0] for row in log if start < row[0] <= upto]
        missing = [position for position in expected if position not in seen]
        if missing:
            violations.append(
                Violation(
                    "ws-delivery",
                    f"{who}: missed {len(missing)} of {len(expected)} events after offset "
                    f"{start}: {_examples(missing)}",
                )
            )
    return violations


# -- database-free parts of the other invariants -----------------------------------------


def check_stock(
    created: Mapping[int, int], rows: Mapping[int, tuple[int, str, int]]
) -> list[Violation]:
    """``rows``: listing id -> (quantity now, status, quantity in orders not cancelled)."""
    violations: list[Violation] = []
    for listing_id, initial in sorted(created.items()):
        row = rows.get(listing_id)
        if row is None:
            violations.append(Violation("stock-consistent", f"listing {listing_id} is gone"))
            continue
        quantity, status, sold = row
        if sold > initial:
            violations.append(
                Violation("no-oversell", f"listing {listing_id}: {sold} sold of {initial}")
            )
        elif quantity + sold != initial:
            violations.append(
                Violation(
                    "stock-consistent",
                    f"listing {listing_id}: {quantity} left + {sold} sold != {initial} listed",
                )
            )
        if status in ("on_sale", "sold") and (quantity == 0) != (status == "sold"):
            violations.append(
                Violation(
                    "stock-consistent", f"listing {listing_id}: status {status}, {quantity} left"
                )
            )
    return violations


def check_money(balances: int, escrow: int, topups: int, negative: int) -> list[Violation]:
    violations: list[Violation] = []
    if balances + escrow != topups:
        violations.append(
            Violation(
                "money-conserved",
                f"balances {balances} + paid escrow {escrow} = {balances + escrow}, "
                f"top-ups {topups} (off by {balances + escrow - topups})",
            )
        )
    if negative:
        violations.append(Violation("no-overdraw", f"{negative} wallets below 0"))
    return violations


def check_orders(
    recorded: Sequence[Mapping[str, Any]],
    unresolved: Sequence[Mapping[str, Any]],
    stored: Mapping[int, tuple[int, int, int]],
) -> list[Violation]:
    """``stored``: every order of the recorded buyers, id -> (buyer, listing, quantity)."""
    problems: list[str] = []
    answered: dict[int, set[int]] = defaultdict(set)
    for order in recorded:
        order_id = int(order["order_id"])
        want = (int(order["buyer_id"]), int(order["listing_id"]), int(order["quantity"]))
        answered[want[0]].add(order_id)
        got = stored.get(order_id)
        if got is None:
            problems.append(f"order {order_id} (answered 201) is not stored")
        elif got != want:
            problems.append(f"order {order_id}: stored as {got}, answered {want}")
    open_attempts: dict[int, int] = defaultdict(int)
    for attempt in unresolved:
        open_attempts[int(attempt["buyer_id"])] += 1
    stored_by_buyer: dict[int, set[int]] = defaultdict(set)
    for order_id, (buyer, _, _) in stored.items():
        stored_by_buyer[buyer].add(order_id)
    for buyer, order_ids in sorted(stored_by_buyer.items()):
        extra = len(order_ids - answered[buyer])
        if extra > open_attempts[buyer]:
            problems.append(
                f"buyer {buyer}: {extra} orders nobody was answered 201 for "
                f"({open_attempts[buyer]} purchases went unanswered)"
            )
    return [Violation("orders-match-201s", problem) for problem in problems]


def check_chats(
    recorded: Sequence[Mapping[str, Any]], stored: Mapping[str, Sequence[tuple[int, int, int]]]
) -> list[Violation]:
    """``stored``: client_id -> every stored row with it, as (room, message id, sender)."""
    problems: list[str] = []
    confirmed: dict[str, tuple[int, int, int]] = {}
    for chat in recorded:
        client_id = str(chat["client_id"])
        want = (int(chat["room_id"]), int(chat["message_id"]), int(chat["sender_id"]))
        earlier = confirmed.setdefault(client_id, want)
        if earlier != want:
            problems.append(f"{client_id} confirmed as {earlier} and as {want}")
    for client_id, want in confirmed.items():
        rows = list(stored.get(client_id, ()))
        if len(rows) != 1:
            problems.append(f"{client_id} (confirmed as {want}) stored {len(rows)} times")
        elif rows[0] != want:
            problems.append(f"{client_id}: stored as {rows[0]}, confirmed as {want}")
    if not problems:
        return []
    return [Violation("chat-stored-once", f"{len(problems)} messages: {_examples(problems)}")]


# -- the audit -------------------------------------------------------------------------


async def audit(records: Records, database_url: str | None) -> AuditResult:
    """Check every invariant; without a database only the records' own consistency."""
    result = AuditResult()
    result.checked = {
        "listings": len(records.listings),
        "orders": len(records.orders),
        "chat_messages": len({chat["client_id"] for chat in records.chats}),
        "streams": len(records.streams),
        "ws_deliveries": records.ws_deliveries,
    }
    if database_url is None:
        for stream in records.streams:
            result.violations += check_stream(stream, None)
        return result
    result.database = True
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            result.violations += await _audit_database(conn, records)
    finally:
        await conn.close()
    return result


async def _audit_database(conn: asyncpg.Connection, records: Records) -> list[Violation]:
    violations: list[Violation] = []
    negative = await conn.fetch("SELECT id, quantity FROM listings WHERE quantity < 0")
    if negative:
        shown = [f"{row['id']}: {row['quantity']}" for row in negative]
        violations.append(Violation("no-oversell", f"quantity < 0: {_examples(shown)}"))

    rows = await conn.fetch(
        """
        SELECT l.id, l.quantity, l.status,
               coalesce(sum(o.quantity) FILTER (WHERE o.status <> 'cancelled'), 0) AS sold
        FROM listings l LEFT JOIN orders o ON o.listing_id = l.id
        WHERE l.id = ANY($1::bigint[])
        GROUP BY l.id
        """,
        list(records.listings),
    )
    stock = {row["id"]: (row["quantity"], row["status"], int(row["sold"])) for row in rows}
    violations += check_stock(records.listings, stock)

    money = await conn.fetchrow(
        """
        SELECT (SELECT coalesce(sum(balance), 0) FROM wallets) AS balances,
               (SELECT count(*) FROM wallets WHERE balance < 0) AS negative,
               (SELECT coalesce(sum(amount), 0) FROM orders WHERE status = 'paid') AS escrow,
               (SELECT coalesce(sum(amount), 0) FROM topups) AS topups
        """
    )
    assert money is not None
    violations += check_money(
        int(money["balances"]), int(money["escrow"]), int(money["topups"]), money["negative"]
    )

    buyers = sorted({int(order["buyer_id"]) for order in records.orders + records.unresolved})
    buyers += [uid for uid, role in records.users.items() if role == "buyer"]
    rows = await conn.fetch(
        "SELECT id, buyer_id, listing_id, quantity FROM orders WHERE buyer_id = ANY($1::bigint[])",
        sorted(set(buyers)),
    )
    orders = {row["id"]: (row["buyer_id"], row["listing_id"], row["quantity"]) for row in rows}
    violations += check_orders(records.orders, records.unresolved, orders)

    client_ids = sorted({str(chat["client_id"]) for chat in records.chats})
    rows = await conn.fetch(
        "SELECT client_id::text AS client_id, room_id, id, sender_id FROM chat_messages "
        "WHERE client_id = ANY($1::uuid[])",
        client_ids,
    )
    chats: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for row in rows:
        chats[row["client_id"]].append((row["room_id"], row["id"], row["sender_id"]))
    violations += check_chats(records.chats, chats)

    channels = sorted({stream["channel"] for stream in records.streams})
    rows = await conn.fetch(
        """
        SELECT channel, position, prev,
               floor(extract(epoch FROM committed_at) * 1000)::bigint AS committed_ms
        FROM outbox
        WHERE channel = ANY($1::text[]) AND position IS NOT NULL
        ORDER BY channel, position
        """,
        channels,
    )
    logs: dict[str, list[LogRow]] = defaultdict(list)
    for row in rows:
        logs[row["channel"]].append((row["position"], row["prev"], row["committed_ms"]))
    for stream in records.streams:
        violations += check_stream(stream, logs.get(stream["channel"], []))
    return violations
