"""The purchase benchmark's pgbench references: the transaction as it was before the
one-call purchase (frozen) and the server's one call. Both run against a database seeded
as the benchmark seeds it and leave its invariants intact; the call follows the server."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from db.queries.orders import PURCHASE
from loadtests.benchmarks.purchase import (
    BASELINE_SCRIPT,
    Fixture,
    check_invariants,
    pgbench_script,
    prepare_scripts,
    reset_data,
    script_path,
)
from loadtests.harness.stack import connected
from loadtests.harness.tools import PGBENCH
from server.idempotency import KEY_TTL
from server.orders.purchase import OPTIMISTIC_ATTEMPTS, STRATEGIES

ROOT = Path(__file__).resolve().parents[2]
OLD = sorted(set(BASELINE_SCRIPT.values()))  # atomic, optimistic, pessimistic
CALLS = [f"call_{name}" for name in OLD]
# What the frozen scripts run (their lines but comments), as they were frozen: any change
# to them changes the reference every earlier figure was measured against.
FROZEN = {
    "atomic": "8d233269ad175a77",
    "optimistic": "280fb6fe240e6eeb",
    "pessimistic": "df6bef6079db6069",
}
CLIENTS, TRANSACTIONS = 4, 20
FIXTURE = Fixture(buyers=12, stock=100, price=1_000, purchases_funded=40, listings=3)


def statements_digest(text: str) -> str:
    lines = [line for line in text.splitlines() if not line.startswith("--")]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def called_queries(path: Path) -> set[tuple[str, str]]:
    """(module, function) of every db.queries function the file calls."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "db.queries":
            aliases |= {alias.asname or alias.name: alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("db.queries."):
            module = node.module.rsplit(".", 1)[-1]  # type: ignore[union-attr]
            aliases |= {
                alias.asname or alias.name: f"{module}.{alias.name}" for alias in node.names
            }
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if func.value.id in aliases and "." not in aliases[func.value.id]:
                    found.add((aliases[func.value.id], func.attr))
            elif isinstance(func, ast.Name) and "." in aliases.get(func.id, ""):
                module, name = aliases[func.id].split(".")
                found.add((module, name))
    return found


def test_a_purchase_is_the_one_call_the_call_scripts_make() -> None:
    """When the server's purchase path calls another query, the call scripts miss it."""
    server = called_queries(ROOT / "server/orders/purchase.py")
    server.discard(("outbox", "events_written"))  # names the channels written; sends nothing
    assert server == {("orders", "purchase")}
    assert PURCHASE == "SELECT * FROM purchase_listing($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"


@pytest.mark.parametrize("name", OLD)
def test_the_frozen_transactions_are_unchanged(name: str) -> None:
    assert statements_digest(script_path(name).read_text()) == FROZEN[name]


@pytest.mark.parametrize("name", OLD)
def test_each_call_script_passes_what_the_server_passes(name: str) -> None:
    """Quantity 1, the strategy's way of taking stock, no fence, the server's attempts, a
    key and its fingerprint, status 201, the key's lifetime."""
    text = script_path(f"call_{name}").read_text()
    calls = re.findall(r"^SELECT .*\bpurchase_listing\w*\((.*)\);$", text, re.MULTILINE)
    assert len(calls) == 1, text
    arguments = [part.strip() for part in calls[0].split(", ")]
    hours = int(KEY_TTL.total_seconds()) // 3600
    assert arguments == [
        ":buyer", ":listing", "1", f"'{STRATEGIES[name]}'", "NULL", str(OPTIMISTIC_ATTEMPTS),
        ":k::text", "sha256(convert_to(:k::text", "'UTF8'))", "201", f"interval '{hours} hours'",
    ]  # fmt: skip


@pytest.fixture
async def seeded_url(database_url: str) -> AsyncIterator[str]:
    """The test database with what the call scripts need, removed afterwards."""
    await prepare_scripts(database_url)
    yield database_url
    async with connected(database_url) as conn:
        await conn.execute("DROP FUNCTION IF EXISTS purchase_listing_refused")


@pytest.mark.parametrize("name", OLD + CALLS)
async def test_the_script_runs_and_keeps_the_invariants(
    seeded_url: str, tmp_path: Path, name: str
) -> None:
    seeded = await reset_data(seeded_url, FIXTURE, settle=False)  # nothing measured
    script = tmp_path / f"{name}.sql"
    script.write_text(pgbench_script(name, seeded))
    assert ":first_" not in script.read_text() and ":last_" not in script.read_text()
    command = [
        str(PGBENCH), "-n", "-M", "prepared", "-c", str(CLIENTS), "-j", "2",
        "-t", str(TRANSACTIONS), "-f", str(script), seeded_url,
    ]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    total = CLIENTS * TRANSACTIONS
    assert f"number of transactions actually processed: {total}/{total}" in output, output
    assert "aborted" not in output, output
    invariants = await check_invariants(seeded_url, FIXTURE, None, None)
    assert invariants["ok"], invariants
    figures = invariants["figures"]
    # Orders created == stock taken, one each; all but optimistic refusals paid.
    assert figures["orders"] == figures["quantity_sold"]
    assert figures["initial_stock"] - figures["stock_left"] == figures["orders"]
    assert 0 < figures["orders"] <= total
    if "optimistic" not in name:
        assert figures["orders"] == total
    async with connected(seeded_url) as conn:
        spread = await conn.fetchval("SELECT count(DISTINCT listing_id) FROM orders")
    assert spread > 1  # the listing is drawn from the range too
