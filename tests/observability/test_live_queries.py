"""Every dashboard query and alert expression, run by a real Prometheus that scrapes two
real instances after a little traffic.

How a metric or label renamed in code fails here: every metric a query names must have
series in Prometheus (scraped from the instances, so a renamed metric has none); every
label it groups by, joins on or matches must be a label of those series; every exact
value it matches must be one of their values, or, for values the traffic cannot produce,
one the code defines (the sockets' close reasons). Then each dashboard query must return
data, each alert's expression without its threshold too, and each rule must evaluate in
Prometheus without error.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from tests.observability.artifacts import Alert, PanelQuery, alerts, panel_queries
from tests.observability.prometheus_server import Prometheus
from tests.observability.promql_names import (
    grouping_labels,
    matchers,
    metrics,
    without_threshold,
)

TARGET_LABELS = {"instance", "job"}  # Prometheus puts them on every scraped series

Series = dict[str, list[dict[str, str]]]


def all_queries() -> list[PanelQuery | Alert]:
    return [*panel_queries(), *alerts()]


@pytest.fixture(scope="module")
def exported(prometheus: Prometheus) -> Series:
    """The scraped series of every metric the kit names, by metric."""
    names = set().union(*(metrics(query.expr) for query in all_queries()))
    return {name: prometheus.series(f'{name}{{job="jangteo"}}') for name in sorted(names)}


def label_names(series: Iterable[dict[str, str]]) -> set[str]:
    return {label for labels in series for label in labels} - {"__name__"}


def problems(expr: str, exported: Series) -> list[str]:
    """What ``expr`` names that the instances do not export."""
    named = metrics(expr)
    found = [f"metric {name} has no series" for name in sorted(named) if not exported[name]]
    labels = TARGET_LABELS.union(*(label_names(exported[name]) for name in named))
    found += [f"no series has label {label}" for label in sorted(grouping_labels(expr) - labels)]
    for matcher in sorted(matchers(expr), key=str):
        series = exported[matcher.metric]
        if matcher.label not in label_names(series) | TARGET_LABELS:
            found.append(f"{matcher.metric} has no label {matcher.label}")
        elif matcher.operator == "=":
            values = {labels.get(matcher.label) for labels in series}
            if matcher.value not in values:
                found.append(f"{matcher.metric} never has {matcher.label}={matcher.value!r}")
    return found


def test_every_query_names_a_metric() -> None:
    """The checks below see what each expression names; one naming none would pass them."""
    assert [str(query) for query in all_queries() if not metrics(query.expr)] == []
    assert len(panel_queries()) >= 20 and len(alerts()) >= 10


def test_every_query_names_only_what_the_instances_export(exported: Series) -> None:
    found = {str(query): problems(query.expr, exported) for query in all_queries()}
    assert {query: said for query, said in found.items() if said} == {}


def test_every_dashboard_query_returns_data(prometheus: Prometheus) -> None:
    empty = [str(query) for query in panel_queries() if not prometheus.query(query.expr)]
    assert empty == []


def test_every_alert_evaluates_and_its_signal_returns_data(prometheus: Prometheus) -> None:
    for alert in alerts():
        prometheus.query(alert.expr)  # evaluates: an error answer fails here
        signal = without_threshold(alert.expr)
        if signal is not None:
            assert prometheus.query(signal), f"{alert}: no data without its threshold"
    rules = {rule["name"]: rule for rule in prometheus.rules()}
    assert set(rules) == {alert.name for alert in alerts()}
    unhealthy = {name: rule["lastError"] for name, rule in rules.items() if rule["health"] != "ok"}
    assert unhealthy == {}
