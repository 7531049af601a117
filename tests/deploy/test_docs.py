"""The documents agree with the code: every setting is in docs/operations.md with its real
default, every relative link points at a file of the repository, and the benchmark table's
markers are where loadtests/harness/report.py rewrites it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.settings import Settings
from tests.deploy.names import ROOT, setting_names

OPERATIONS = ROOT / "docs" / "operations.md"
DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "BENCHMARKS.md",
    ROOT / "loadtests" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
BENCH_MARKERS = ("<!-- bench-table:start -->", "<!-- bench-table:end -->")
_ROW = re.compile(r"^\| (`JANGTEO_[^|]+) \| ([^|]+) \|", re.MULTILINE)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _configuration() -> dict[str, str | None]:
    """The configuration table: each variable and its default as written, when the default
    is a literal value (in backquotes) rather than words ("embedded", "unset", ...)."""
    section = OPERATIONS.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, str | None] = {}
    for names_cell, default_cell in _ROW.findall(section):
        names = re.findall(r"`(JANGTEO_[A-Z0-9_]+)`", names_cell)
        literals = re.findall(r"`([^`]*)`", default_cell)
        values: list[str | None] = literals if len(literals) == len(names) else [None] * len(names)
        table.update(zip(names, values, strict=True))
    return table


def test_every_setting_is_documented_and_nothing_else() -> None:
    documented = set(_configuration())
    assert setting_names() - documented == set(), "settings missing from the table"
    assert documented - setting_names() == set(), "documented settings the server never reads"


@pytest.mark.parametrize(
    ("name", "default"),
    sorted((name, default) for name, default in _configuration().items() if default is not None),
)
def test_a_documented_default_is_the_real_one(name: str, default: str) -> None:
    """Setting a variable to its documented default changes nothing. (Defaults described
    in words, such as "embedded" or "unset", are left out.)"""
    assert Settings.from_env({name: default}) == Settings.from_env({}), f"{name}={default}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_point_at_files_of_the_repository(document: Path) -> None:
    missing = []
    for target in _LINK.findall(document.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor on the same page
        path = (document.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() or ROOT not in path.parents:
            missing.append(target)
    assert missing == []


@pytest.mark.parametrize("document", ["README.md", "BENCHMARKS.md"])
def test_the_benchmark_table_has_its_markers(document: str) -> None:
    text = (ROOT / document).read_text()
    start, end = BENCH_MARKERS
    assert text.count(start) == text.count(end) == 1
    assert text.index(start) < text.index(end)
