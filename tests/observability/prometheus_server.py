"""A real Prometheus (Debian's package) on loopback, scraping the instances a test runs.

It runs on a copy of deploy/observability/prometheus.yml whose targets and intervals are
the test's; its data lives in a temporary directory removed afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.embedded.debian import PackageMissing, ensure_binary, find_binary
from server.embedded.process import free_port
from tests.observability.artifacts import ALERTS, PROMETHEUS_CONFIG, read_yaml

START_TIMEOUT_S = 60.0
API_TIMEOUT_S = 10.0


def _get(url: str, timeout: float) -> Any:
    assert url.startswith("http://127.0.0.1:"), url  # only the Prometheus started here
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - checked just above


def promtool() -> str:
    """Debian's promtool, with the prometheus package installed by apt-get when missing."""
    try:
        return ensure_binary(["promtool"], "prometheus")
    except PackageMissing as missing:
        pytest.fail(str(missing))


def prometheus_binary() -> str:
    promtool()  # the same package
    found = find_binary("prometheus")
    if found is None:
        pytest.fail("the prometheus package installed no prometheus binary")
    return found


def config_for(targets: Sequence[str], interval: str) -> dict[str, Any]:
    """The compose configuration with ``targets`` instead of the compose replicas."""
    config: dict[str, Any] = read_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [str(ALERTS)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": list(targets)}]
    return config


class Prometheus:
    """``prometheus`` as a child process, and the parts of its HTTP API the tests use."""

    def __init__(self, targets: Sequence[str], *, interval: str = "1s") -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="jangteo-test-prometheus-"))
        self.port = free_port()
        self.config = self.directory / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config_for(targets, interval)))
        self.log = (self.directory / "prometheus.log").open("wb")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        self.process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                said = self.output()
                self.stop()
                raise RuntimeError(f"prometheus did not start: {said[-2000:]}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            with _get(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def output(self) -> str:
        self.log.flush()
        return (self.directory / "prometheus.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def api(self, path: str, **params: str | list[str]) -> Any:
        """``data`` of a successful API answer; fails the test on any other."""
        query = urllib.parse.urlencode(params, doseq=True)
        with _get(f"{self.url}/api/v1/{path}?{query}", timeout=API_TIMEOUT_S) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` gives now (an error answer fails the test)."""
        try:
            data = self.api("query", query=expr)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{expr}: {error.read().decode(errors='replace')}") from None
        assert data["resultType"] == "vector", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result

    def series(self, selector: str) -> list[dict[str, str]]:
        """Label sets of the series matching ``selector`` in the last hour."""
        start = str(time.time() - 3600)
        found: list[dict[str, str]] = self.api("series", **{"match[]": selector, "start": start})
        return found

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]
