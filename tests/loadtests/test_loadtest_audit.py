"""``loadtests.run_loadtest`` end to end, small: the audit passes on a healthy stack and
fails, naming the invariant, when the gateway drops events (instances served with the hub
of ``tests/loadtests/dropping_hub.py``). Latency thresholds are opened wide and the failure
ratio relaxed: these tests are about the invariants, which are never relaxed, not about
this machine's speed."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import REPO_ROOT

# A small, busy market: 10 users, mostly making and watching events.
SMALL_MARKET = {
    "JANGTEO_LOAD_WEIGHT_BROWSER": "1",
    "JANGTEO_LOAD_WEIGHT_WATCHER": "3",
    "JANGTEO_LOAD_WEIGHT_BUYER": "3",
    "JANGTEO_LOAD_WEIGHT_SELLER": "2",
    "JANGTEO_LOAD_WEIGHT_CHATTER": "2",
    "JANGTEO_LOAD_WEIGHT_ACCOUNT": "0",
    "JANGTEO_LOAD_WAIT_MIN": "0.1",
    "JANGTEO_LOAD_WAIT_MAX": "0.5",
    "JANGTEO_LOAD_DRAIN": "2",
    "JANGTEO_LOAD_MAX_P95_MS": "600000",
    "JANGTEO_LOAD_P95_LIMITS": "",
    "JANGTEO_LOAD_MAX_FAILURE_RATIO": "0.05",
    "JANGTEO_LOAD_MIN_RPS": "1",
}


DROPPING_HUB = shlex.join([sys.executable, "-m", "tests.loadtests.dropping_hub", "serve"])


def run_loadtest(
    tmp_path: Path, duration: str = "10s", *options: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], Any]:
    output = tmp_path / "result.json"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("JANGTEO_LOAD_")}
    command = [
        sys.executable, "-m", "loadtests.run_loadtest",
        "--duration", duration, "--users", "10", "--spawn-rate", "10",
        "--output", str(output), *options,
    ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env={
            **inherited,
            **SMALL_MARKET,
            "JANGTEO_LOAD_DATABASE": f"jangteo_loadtest_{os.getpid()}",
            "JANGTEO_LOAD_RECORDS_DIR": str(tmp_path / "run"),
            # The instances it starts inherit this: every sign-up hashes a password, as
            # does every start (tests.support.server_env does the same).
            "JANGTEO_CHEAP_PASSWORD_HASHES": "on",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    result = json.loads(output.read_text()) if output.exists() else None
    return done, result


def test_the_audit_passes_on_a_healthy_stack(service_urls: tuple[str, str], tmp_path: Path) -> None:
    """``make loadtest DURATION=20s`` with thresholds relaxed for a shared machine, in
    locust's distributed mode (a master and two workers), whose records the audit joins."""
    done, result = run_loadtest(tmp_path, duration="20s", JANGTEO_LOAD_WORKERS="2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert result["passed"] and result["violations"] == []
    assert result["audit"]["database"] is True
    checked = result["audit"]["checked"]
    assert checked["orders"] > 0 and checked["chat_messages"] > 0
    assert result["ws_deliveries"] > 0 and checked["streams"] > 0
    assert result["total"]["requests"] > 0
    assert result["locust_workers"] == 2
    assert len(list((tmp_path / "run" / "records").glob("records-*.jsonl"))) >= 2


def test_the_audit_names_events_the_gateway_dropped(
    service_urls: tuple[str, str], tmp_path: Path
) -> None:
    done, result = run_loadtest(tmp_path, "10s", "--serve", DROPPING_HUB)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "INVARIANT BROKEN ws-delivery" in done.stdout
    assert "LOAD TEST FAILED: ws-delivery" in done.stdout
    assert "ws-delivery" in result["audit"]["broken"]
    assert result["serve"].endswith("tests.loadtests.dropping_hub serve")
    # Only delivery broke: purchases, money and chat stayed right.
    assert set(result["audit"]["broken"]) <= {"ws-delivery", "ws-prev"}
