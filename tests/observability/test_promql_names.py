"""The names the live checks ask Prometheus about are the ones an expression uses."""

from __future__ import annotations

from tests.observability.promql_names import (
    Matcher,
    grouping_labels,
    matchers,
    metrics,
    without_threshold,
)

RATIO = (
    '(sum by (instance) (rate(jangteo_http_requests_total{status=~"5.."}[5m]))'
    " or 0 * sum by (instance) (rate(jangteo_http_requests_total[5m])))"
    ' / on (instance) sum by (instance) (rate(jangteo_x_total{route="jangteo_not_a_metric"}[5m]))'
    " > 0.05"
)


def test_metrics_are_read_outside_label_values() -> None:
    assert metrics(RATIO) == {"jangteo_http_requests_total", "jangteo_x_total"}
    assert metrics('up{job="jangteo"} < 1') == {"up"}


def test_matchers_keep_metric_label_operator_and_value() -> None:
    assert matchers(RATIO) == {
        Matcher("jangteo_http_requests_total", "status", "=~", "5.."),
        Matcher("jangteo_x_total", "route", "=", "jangteo_not_a_metric"),
    }
    assert matchers("jangteo_a{}") == set()


def test_grouping_labels_of_every_kind() -> None:
    assert grouping_labels(RATIO) == {"instance"}
    expr = "sum without (le, route) (a) * on(x) group_left(y, z) b + ignoring (w) c"
    assert grouping_labels(expr) == {"le", "route", "x", "y", "z", "w"}


def test_the_threshold_is_the_final_comparison_only() -> None:
    assert without_threshold(RATIO) == RATIO.rsplit(" > ", 1)[0]
    assert without_threshold("max by (node) (jangteo_redis_breaker_open) > 0") == (
        "max by (node) (jangteo_redis_breaker_open)"
    )
    assert without_threshold("x < 1e-3") == "x"
    assert without_threshold("a unless on (p) (b >= 1)") is None
