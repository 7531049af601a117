"""docs/observability.md shows every dashboard panel with its queries, every alert with
its expression, and a runbook section for each alert (its ``runbook`` annotation's
anchor)."""

from __future__ import annotations

import re

from tests.observability.artifacts import alerts, dashboard, panels
from tests.support import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "observability.md").read_text()


def test_every_panel_and_query_is_in_the_table() -> None:
    rows = {line for line in DOC.splitlines() if line.startswith("| ")}
    for panel in panels(dashboard()):
        queries = "<br>".join(f"`{target['expr']}`" for target in panel["targets"])
        assert any(f"| {panel['title']} | {queries} |" in row for row in rows), panel["title"]


def test_every_alert_has_its_expression_and_a_runbook_section() -> None:
    headings = set(re.findall(r"^### (\S+)$", DOC, re.MULTILINE))
    for alert in alerts():
        assert alert.name in headings, alert.name
        assert alert.annotations["runbook"].endswith("#" + alert.name.lower())  # its anchor
        assert f"| `{alert.expr}` |" in DOC, alert.name
    assert headings == {alert.name for alert in alerts()}, "a runbook of no alert"
