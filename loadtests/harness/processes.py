"""The processes a benchmark starts: commands, a server in the background, its log."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import psutil

from server.embedded.process import port_accepts

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "loadtests" / "results"


class BenchError(RuntimeError):
    """The benchmark could not run; the message says why."""


def jangteo_command(*args: str) -> list[str]:
    """The ``jangteo`` console script of this interpreter's environment (else ``-m jangteo``)."""
    script = Path(sys.executable).parent / "jangteo"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "jangteo", *args]


def as_line(command: Sequence[str] | Path) -> str:
    """A command (or a path) as shown in results: paths inside the repository made relative."""
    text = str(command) if isinstance(command, Path) else shlex.join(command)
    return text.replace(f"{ROOT}/", "")


def run_checked(command: Sequence[str], env: Mapping[str, str]) -> str:
    """Run a short command to its end; its stdout, or BenchError with its stderr."""
    done = subprocess.run(  # noqa: S603 - our own commands, no shell
        list(command), env=dict(env), cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(command)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


@dataclass(frozen=True, slots=True)
class Server:
    """One server process a benchmark started, listening on 127.0.0.1:port."""

    name: str
    port: int
    pid: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)


@contextmanager
def background(
    command: Sequence[str], env: Mapping[str, str], port: int, log: Path, name: str = ""
) -> Iterator[Server]:
    """Run a server in its own process group until the block ends; wait until it listens."""
    print(f"$ {as_line(command)}", flush=True)
    with log.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 - our own commands, no shell
            list(command),
            env=dict(env),
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not port_accepts(port):
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise BenchError(f"{shlex.join(command)} exited:\n{tail}")
            if time.monotonic() > deadline:
                raise BenchError(f"{shlex.join(command)} did not listen on port {port}")
            time.sleep(0.1)
        yield Server(name or log.stem, port, process.pid, log)
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM the leader (it stops its workers), then SIGKILL whatever of its group is left."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers orphaned by a leader that died early


def server_problems(log: Path, limit: int = 5) -> dict[str, Any]:
    """Warnings, errors and tracebacks the server logged: counts by message, first lines."""
    counts: Counter[str] = Counter()
    first: list[str] = []
    span: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            if record.get("level") not in ("warning", "error", "critical"):
                continue
            key = " ".join(
                str(record.get(name, "")) for name in ("level", "message", "dependency", "error")
            ).strip()
            span = [span[0] if span else str(record.get("time")), str(record.get("time"))]
        elif "Traceback" in line or "Error" in line:
            key = line.strip()[:200]
        else:
            continue
        counts[key] += 1
        if len(first) < limit:
            first.append(line[:600])
    return {"counts": dict(counts.most_common()), "first": first, "time_span": span}


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_guarded(
    name: str,
    body: Callable[[], int],
    cleanup: Callable[[], object],
    cannot: tuple[type[Exception], ...],
    logs: str = "",
) -> int:
    """``body()``'s exit status, then ``cleanup()`` whatever happened.

    Ctrl-C and SIGTERM both end the body (also when this was started with SIGINT ignored,
    as a background job of a script is): 130. One of ``cannot`` (the run could not be made)
    or a fault of the harness itself: 2. The cleanup runs with both signals ignored, so a
    second Ctrl-C cannot leave servers or databases behind; its failure is reported, not
    raised: the verdict stands.
    """
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        return body()
    except cannot as error:
        print(f"{name}: the run could not be made: {error}{logs}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted; stopping what it started", file=sys.stderr)
        return 130
    except Exception:  # a fault of the harness, not a verdict on the server
        traceback.print_exc()
        print(f"{name}: the run failed to complete{logs}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cleanup()
        except Exception as error:  # reported, not raised: the verdict stands
            print(f"{name}: cleaning up failed: {error!r}", file=sys.stderr)
