"""What a PromQL expression of ours names: metrics, labels, label matchers.

Not a PromQL parser: enough for the dashboard's and the alerts' own expressions, whose
metrics all start with ``jangteo_`` (or are Prometheus's ``up``). ``test_promql_names.py``
shows what it finds; the live tests then ask Prometheus about each name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_METRIC = re.compile(r"\b(jangteo_[a-z0-9_]+|up)\b")
_SELECTOR = re.compile(r"\b(jangteo_[a-z0-9_]+|up)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_TRAILING_COMPARISON = re.compile(
    r"^(.*\S)\s*(?:>=|<=|==|!=|>|<)\s*-?[0-9.]+(?:e[+-]?[0-9]+)?\s*$", re.S
)


@dataclass(frozen=True, slots=True)
class Matcher:
    metric: str
    label: str
    operator: str
    value: str


def metrics(expr: str) -> set[str]:
    """The metric names ``expr`` reads (names inside label values do not count)."""
    return set(_METRIC.findall(_STRING.sub('""', expr)))


def matchers(expr: str) -> set[Matcher]:
    """Every ``label op "value"`` inside a metric's braces."""
    return {
        Matcher(metric, label, operator, value)
        for metric, inside in _SELECTOR.findall(expr)
        for label, operator, value in _MATCHER.findall(inside)
    }


def grouping_labels(expr: str) -> set[str]:
    """Labels named by ``by``, ``without``, ``on``, ``ignoring`` and ``group_*``."""
    return {
        label.strip()
        for inside in _GROUPING.findall(_STRING.sub('""', expr))
        for label in inside.split(",")
        if label.strip()
    }


def without_threshold(expr: str) -> str | None:
    """``expr`` without its final comparison to a number (what an alert compares), or
    None when it does not end in one."""
    found = _TRAILING_COMPARISON.match(expr.strip())
    return found.group(1) if found else None
