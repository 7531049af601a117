"""The purchase benchmark's pgbench scripts follow the server's purchase SQL."""

from __future__ import annotations

import ast
from pathlib import Path

from db import queries
from loadtests.benchmarks.purchase import QUERIES, Recorder, Seeded, pgbench_script, sql_of

ROOT = Path(__file__).resolve().parents[2]
PURCHASE_PATH = ("server/orders/purchase.py", "server/idempotency.py")
SEEDED = Seeded(seller_id=1, buyer_ids=[2, 3, 4])


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


def test_the_scripts_run_every_query_the_purchase_path_calls() -> None:
    used = {(module, name) for module, names in QUERIES.items() for name in names}
    server = set().union(*(called_queries(ROOT / path) for path in PURCHASE_PATH))
    server = {(module, name) for module, name in server if name[0].islower()}  # not Event
    server.discard(("idempotency", "delete_expired"))  # the janitor's, not a purchase's
    assert server == used


def test_each_statement_is_the_query_functions_sql() -> None:
    """Every SQL line of the scripts is a db.queries statement with pgbench variables."""
    recorder = Recorder()
    conn: object = recorder
    templates = []
    for module, names in QUERIES.items():
        for name in names:
            function = getattr(getattr(queries, module), name)
            assert callable(function)
            templates.append(name)
    for strategy in ("atomic", "pessimistic", "optimistic"):
        script = pgbench_script(strategy, SEEDED)
        statements = [
            line for line in script.splitlines() if line and not line.startswith("\\")
            and line not in ("BEGIN;", "COMMIT;", "ROLLBACK;")
        ]  # fmt: skip
        assert statements, strategy
        assert all(line.split()[0] in ("SELECT", "UPDATE", "INSERT") for line in statements)
    lines = sql_of(queries.listings.stock_row(conn, 7, lock=True), recorder)  # type: ignore[arg-type]
    assert lines == [
        "SELECT id, seller_id, title, price, quantity, category, region, status, like_count,"
        " version, fence FROM listings WHERE id = 7 FOR UPDATE;"
    ]
    assert lines[0].removesuffix(";") + " \\gset s_" in pgbench_script(
        "pessimistic", SEEDED
    ).replace(str(900_000_001), "7")
