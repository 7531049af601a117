"""The embedded stack: idempotent start, restart after a crash, env output, shared by processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from server.embedded.process import port_accepts, wait_until
from server.embedded.stack import EmbeddedStack
from tests.support import REPO_ROOT


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """A stack of its own (not the suite's), so killing its servers disturbs no other test."""
    embedded = EmbeddedStack(tmp_path_factory.mktemp("stack") / "data")
    embedded.start()
    yield embedded
    embedded.stop()


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("JANGTEO_")} | {
        "JANGTEO_DATA_DIR": str(data_dir)
    }
    return subprocess.run(
        [sys.executable, "-m", "jangteo", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_start_is_idempotent(stack: EmbeddedStack) -> None:
    pids = (stack.postgres().running_pid(), stack.redis().running_pid())
    urls = stack.start()
    assert (stack.postgres().running_pid(), stack.redis().running_pid()) == pids
    assert urls == stack.urls()
    assert urls.database_url.startswith("postgresql://postgres@127.0.0.1:")
    assert urls.redis_url.startswith("redis://127.0.0.1:")


async def test_start_restarts_killed_services_and_keeps_data(stack: EmbeddedStack) -> None:
    urls = stack.start()
    conn = await asyncpg.connect(urls.database_url)
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS survivor (n int); INSERT INTO survivor VALUES (7)"
    )
    await conn.close()

    postgres_pid = stack.postgres().running_pid()
    redis_pid = stack.redis().running_pid()
    assert postgres_pid is not None and redis_pid is not None
    os.kill(postgres_pid, signal.SIGKILL)
    os.kill(redis_pid, signal.SIGKILL)
    assert wait_until(lambda: stack.postgres().running_pid() is None, timeout=10)
    assert stack.redis().running_pid() is None or wait_until(
        lambda: stack.redis().running_pid() is None, timeout=10
    )

    assert stack.start() == urls
    assert stack.postgres().running_pid() not in (None, postgres_pid)
    assert stack.redis().running_pid() not in (None, redis_pid)
    conn = await asyncpg.connect(urls.database_url)
    assert await conn.fetchval("SELECT sum(n) FROM survivor") >= 7
    await conn.close()
    assert redis.Redis.from_url(urls.redis_url).ping()


def test_cli_env_prints_exports(stack: EmbeddedStack) -> None:
    result = _cli(stack.data_dir, "services", "env")
    assert result.returncode == 0, result.stderr
    urls = stack.urls()
    assert urls is not None
    assert result.stdout == (
        f"export JANGTEO_DATABASE_URL={urls.database_url}\n"
        f"export JANGTEO_REDIS_URL={urls.redis_url}\n"
        "export JANGTEO_REDIS_MODE=single\n"
    )


def test_cli_env_without_a_stack_fails_clearly(tmp_path: Path) -> None:
    result = _cli(tmp_path / "nothing-here", "services", "env")
    assert result.returncode == 1
    assert "jangteo services start" in result.stderr


def test_concurrent_starts_share_one_stack(stack: EmbeddedStack) -> None:
    """Several processes starting at once all get the same, running, services."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "jangteo", "services", "start"],
            env={**os.environ, "JANGTEO_DATA_DIR": str(stack.data_dir)},
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes)
    assert len(set(outputs)) == 1
    urls = stack.urls()
    assert urls is not None and outputs[0] == urls.as_exports()


def test_stop_then_start(tmp_path: Path) -> None:
    embedded = EmbeddedStack(tmp_path / "data")
    urls = embedded.start()
    postgres_port = int(urls.database_url.rsplit(":", 1)[1].split("/")[0])
    try:
        embedded.stop()
        assert embedded.postgres().running_pid() is None
        assert embedded.redis().running_pid() is None
        assert not port_accepts(postgres_port)
        assert embedded.start() == urls
        assert port_accepts(postgres_port)
    finally:
        embedded.stop()
