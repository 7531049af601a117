"""The rule file and the Prometheus configuration, checked by Debian's promtool, and the
alerts' unit tests run by it: each alert fires when it should and stays quiet when not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.observability.artifacts import (
    ALERT_TESTS,
    ALERTS,
    PROMETHEUS_CONFIG,
    alerts,
    read_yaml,
)
from tests.observability.prometheus_server import promtool

PROMTOOL_TIMEOUT_S = 120


def promtool_says(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )


def run_promtool(*args: str | Path) -> str:
    """What promtool said; it must succeed."""
    done = promtool_says(*args)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    return said


def test_rules_pass_promtool_check() -> None:
    assert f"SUCCESS: {len(alerts())} rules found" in run_promtool("check", "rules", ALERTS)


def test_compose_configuration_passes_promtool_check() -> None:
    said = run_promtool("check", "config", PROMETHEUS_CONFIG)
    assert "SUCCESS: 1 rule files found" in said


def test_alert_unit_tests_pass() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", ALERT_TESTS)


def test_every_alert_has_unit_tests_that_fire_and_stay_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in read_yaml(ALERT_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {alert.name for alert in alerts()}
    assert fired == names and quiet == names


def test_a_broken_unit_test_fails_promtool(tmp_path: Path) -> None:
    """The unit tests can fail: an alert expected quiet where it fires is reported."""
    document = read_yaml(ALERT_TESTS)
    document["rule_files"] = [str(ALERTS)]
    for case in document["tests"]:
        for check in case.get("alert_rule_test", []):
            check["exp_alerts"] = [] if check["exp_alerts"] else check["exp_alerts"]
    broken = tmp_path / "broken.test.yml"
    broken.write_text(yaml.safe_dump(document))
    done = promtool_says("test", "rules", broken)
    assert done.returncode != 0
    for alert in alerts():
        assert f"alertname: {alert.name}" in done.stdout + done.stderr, alert.name


def test_every_alert_says_what_to_look_at_and_links_its_runbook() -> None:
    for alert in alerts():
        assert "Look at" in alert.annotations["summary"], alert.name
        assert alert.annotations["runbook"] == f"docs/observability.md#{alert.name.lower()}"
