"""The operator's kit as files: the dashboard's queries and the alert rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO_ROOT

KIT = REPO_ROOT / "deploy" / "observability"
DASHBOARD = KIT / "grafana" / "dashboards" / "jangteo.json"
ALERTS = KIT / "alerts.yml"
ALERT_TESTS = KIT / "alerts.test.yml"
PROMETHEUS_CONFIG = KIT / "prometheus.yml"
# Grafana's interval variable, as the live checks evaluate it (samples every second there).
RATE_INTERVAL = "1m"


@dataclass(frozen=True, slots=True)
class PanelQuery:
    panel: str
    expr: str  # as Grafana sends it: variables replaced

    def __str__(self) -> str:
        return f"panel {self.panel!r}: {self.expr}"


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    expr: str
    annotations: dict[str, str]

    def __str__(self) -> str:
        return f"alert {self.name}: {self.expr}"


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested ones too, rows themselves not."""
    for panel in document["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries() -> list[PanelQuery]:
    return [
        PanelQuery(panel["title"], target["expr"].replace("$__rate_interval", RATE_INTERVAL))
        for panel in panels(dashboard())
        for target in panel["targets"]
    ]


def alerts() -> list[Alert]:
    return [
        Alert(rule["alert"], " ".join(rule["expr"].split()), rule.get("annotations", {}))
        for group in read_yaml(ALERTS)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
