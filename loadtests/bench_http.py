"""HTTP benchmark: jangteo against a bare aiohttp app sending the same bytes, measured by wrk.

Run as ``python -m loadtests.bench_http``. It starts the embedded services (under
``JANGTEO_DATA_DIR``, default ``.data``), migrates, serves jangteo with two workers and the
baseline (``loadtests/baseline_app.py``) with two processes, signs up one user, then measures
GET /healthz and GET /api/v1/me on both, each ``--rounds`` times in alternating order, keeping
the best run of each. It writes ``loadtests/results/http.json`` and ``http.png`` and stops every
process it started (the embedded services keep running).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from server.embedded.process import free_port, port_accepts

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtests" / "results"
WORKERS = 2
PASSWORD = "bench-password-123"  # noqa: S105 - the throwaway benchmark account's password

# wrk prints this one line of JSON when a run ends, so nothing is scraped from its text table.
WRK_REPORT_LUA = """
local points = {1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97.5, 99, 99.5, 99.9, 99.99}
cdf = function(latency)
  local parts = {}
  for _, p in ipairs(points) do
    parts[#parts + 1] = string.format('[%g,%.1f]', p, latency:percentile(p))
  end
  parts[#parts + 1] = string.format('[100,%.1f]', latency.max)
  return table.concat(parts, ',')
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%.1f,"p50":%.1f,"p90":%.1f,"p99":%.1f},' ..
    '"cdf_us":[%s]}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), cdf(latency)))
end
"""

BENCH_PACKAGES = (
    "aiohttp", "asyncpg", "uvloop", "orjson", "redis", "hiredis", "fastapi", "uvicorn",
    "httptools", "python-socketio", "websocket-client", "locust",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Target:
    """One URL to load: which server, which endpoint, and the headers to send."""

    endpoint: str
    server: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one wrk run measured."""

    endpoint: str
    server: str
    url: str
    command: str
    requests: int
    seconds: float
    requests_per_second: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    cdf_ms: list[tuple[float, float]] = field(default_factory=list)


class BenchError(RuntimeError):
    """The benchmark could not run; the message says why."""


def jangteo_command(*args: str) -> list[str]:
    """The ``jangteo`` console script of this interpreter's environment (else ``-m jangteo``)."""
    script = Path(sys.executable).parent / "jangteo"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "jangteo", *args]


def as_line(command: Sequence[str]) -> str:
    """A command as a shell line, with paths inside the repository made relative to it."""
    return shlex.join(command).replace(f"{ROOT}/", "")


def run_checked(command: Sequence[str], env: Mapping[str, str]) -> str:
    """Run a short command to its end; its stdout, or BenchError with its stderr."""
    done = subprocess.run(  # noqa: S603 - our own commands, no shell
        list(command), env=dict(env), cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(command)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


@contextmanager
def background(
    command: Sequence[str], env: Mapping[str, str], port: int, log: Path
) -> Iterator[None]:
    """Run a server in its own process group until the block ends; wait until it listens."""
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
        yield
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


def http_request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request to 127.0.0.1:port; its status and body bytes."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        sent = dict(headers or {})
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_healthy(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http_request(port, "GET", "/healthz")[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"no 200 from /healthz on port {port}")
        time.sleep(0.1)


def sign_up(port: int) -> str:
    """Create a fresh account on jangteo and return its access token."""
    account = {
        "email": f"bench-{uuid.uuid4().hex[:12]}@bench.example.com",
        "password": PASSWORD,
        "nickname": "bench",
        "region": "seoul-mapo",
    }
    status, body = http_request(port, "POST", "/api/v1/auth/signup", account)
    if status != 201:
        raise BenchError(f"sign-up answered {status}: {body[:500]!r}")
    token: str = json.loads(body)["access_token"]
    return token


def fetch(port: int, path: str, headers: Mapping[str, str] | None = None) -> bytes:
    status, body = http_request(port, "GET", path, headers=headers)
    if status != 200:
        raise BenchError(f"GET {path} on port {port} answered {status}: {body[:500]!r}")
    return body


def wrk(
    wrk_path: str, target: Target, lua: Path, *, seconds: int, threads: int, connections: int
) -> Measurement:
    """One wrk run against ``target``; raises BenchError when wrk fails or prints no report."""
    command = [wrk_path, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(lua)]
    shown = list(command)
    for name, value in target.headers.items():
        command += ["-H", f"{name}: {value}"]
        secret = name.lower() == "authorization"
        shown += ["-H", f"{name}: Bearer <access token>" if secret else f"{name}: {value}"]
    command.append(target.url)
    shown.append(target.url)
    done = subprocess.run(  # noqa: S603 - wrk from PATH, no shell
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    match = re.search(r"^WRK_JSON (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    report = json.loads(match.group(1))
    elapsed = report["duration_us"] / 1e6
    return Measurement(
        endpoint=target.endpoint,
        server=target.server,
        url=target.url,
        command=as_line(shown),
        requests=report["requests"],
        seconds=round(elapsed, 3),
        requests_per_second=round(report["requests"] / elapsed, 1),
        latency_ms={name: round(value / 1000, 3) for name, value in report["latency_us"].items()},
        errors=dict(report["errors"]),
        cdf_ms=[(point, round(us / 1000, 3)) for point, us in report["cdf_us"]],
    )


def ratios(measurements: Sequence[Measurement]) -> dict[str, float]:
    """jangteo requests/s divided by the baseline's, per endpoint."""
    by_key = {(m.endpoint, m.server): m.requests_per_second for m in measurements}
    return {
        endpoint: round(by_key[(endpoint, "jangteo")] / by_key[(endpoint, "baseline")], 3)
        for endpoint, server in by_key
        if server == "jangteo" and (endpoint, "baseline") in by_key
    }


def table(measurements: Sequence[Measurement], shares: Mapping[str, float]) -> str:
    lines = [
        f"{'endpoint':<14}{'server':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'jangteo/baseline':>18}"
    ]
    for m in measurements:
        share = f"{shares[m.endpoint]:.0%}" if m.server == "jangteo" else ""
        lines.append(
            f"{m.endpoint:<14}{m.server:<10}{m.requests_per_second:>10,.0f}"
            f"{m.latency_ms['p50']:>9.2f}{m.latency_ms['p99']:>9.2f}"
            f"{sum(m.errors.values()):>8}{share:>18}"
        )
    return "\n".join(lines)


def plot(
    measurements: Sequence[Measurement], shares: Mapping[str, float], caption: str, path: Path
) -> bool:
    """A bar chart of requests/s per endpoint and server; False when matplotlib is missing."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    endpoints = list(dict.fromkeys(m.endpoint for m in measurements))
    servers = ["jangteo", "baseline"]
    colours = {"jangteo": "#d9534f", "baseline": "#7f8c8d"}
    rps = {(m.endpoint, m.server): m.requests_per_second for m in measurements}
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    width = 0.38
    for offset, server in enumerate(servers):
        xs = [index + (offset - 0.5) * width for index in range(len(endpoints))]
        heights = [rps.get((endpoint, server), 0.0) for endpoint in endpoints]
        bars = axes.bar(xs, heights, width, label=server, color=colours[server])
        axes.bar_label(bars, labels=[f"{h:,.0f}" for h in heights], fontsize=8, padding=2)
    for index, endpoint in enumerate(endpoints):
        if endpoint in shares:
            top = max(rps.get((endpoint, server), 0.0) for server in servers)
            axes.annotate(
                f"{shares[endpoint]:.0%} of baseline",
                (index, top * 1.12),
                ha="center",
                fontsize=9,
                fontweight="bold",
            )
    axes.set_xticks(range(len(endpoints)), [f"GET {e}" for e in endpoints])
    axes.set_ylabel("requests / s (higher is better)")
    axes.set_ylim(0, max(rps.values()) * 1.3)
    axes.set_title(f"jangteo vs bare aiohttp, same bytes, {WORKERS} processes each", fontsize=10)
    axes.legend(loc="upper left", fontsize=8)
    figure.text(0.99, 0.01, caption, ha="right", va="bottom", fontsize=7, color="#555555")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(path)
    plt.close(figure)
    return True


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(load_before: list[float]) -> dict[str, Any]:
    """What a result was measured on, and how busy the machine was before and after."""
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_before": load_before,
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
    }


def versions(packages: Sequence[str] = BENCH_PACKAGES) -> dict[str, str]:
    """Versions of the load generator and of every package on either side of a comparison."""
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    wrk_path = shutil.which("wrk")
    if wrk_path is not None:
        done = subprocess.run([wrk_path, "-v"], capture_output=True, text=True, check=False)  # noqa: S603
        found["wrk"] = (done.stdout + done.stderr).split("\n", 1)[0].strip()
    return found


def run(args: argparse.Namespace) -> int:
    wrk_path = shutil.which("wrk")
    if wrk_path is None:
        print(
            "bench_http: wrk is not on PATH. Install it (Debian/Ubuntu: apt-get install -y wrk)"
            " and run again.",
            file=sys.stderr,
        )
        return 2
    load_before = [round(value, 2) for value in os.getloadavg()]
    data_dir = os.environ.get("JANGTEO_DATA_DIR", "").strip() or ".data"
    env = {**os.environ, "JANGTEO_DATA_DIR": data_dir}
    commands: dict[str, str] = {}

    start = jangteo_command("services", "start")
    print(f"$ {as_line(start)}", flush=True)
    exports = run_checked(start, env)
    commands["services"] = as_line(start)
    for name, value in re.findall(r"^export (JANGTEO_\w+)=(\S+)$", exports, re.MULTILINE):
        env.setdefault(name, value)  # URLs given by the caller win, as in jangteo itself
    migrate = jangteo_command("migrate")
    print(f"$ {as_line(migrate)}", flush=True)
    print(run_checked(migrate, env).strip(), flush=True)
    commands["migrate"] = as_line(migrate)

    app_port, base_port = free_port(), free_port()
    app_env = {
        **env,
        "JANGTEO_RATE_LIMITS": "off",
        "JANGTEO_ACCESS_LOG": "off",
        "JANGTEO_LOG_LEVEL": "WARNING",
    }
    serve = jangteo_command(
        "serve", "--host", "127.0.0.1", "--port", str(app_port), "--workers", str(WORKERS)
    )
    commands["jangteo"] = (
        "JANGTEO_RATE_LIMITS=off JANGTEO_ACCESS_LOG=off JANGTEO_LOG_LEVEL=WARNING " + as_line(serve)
    )

    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-http-")))
        print(f"$ {commands['jangteo']}", flush=True)
        stack.enter_context(background(serve, app_env, app_port, scratch / "jangteo.log"))
        wait_healthy(app_port)
        time.sleep(2)  # the second worker binds a moment after the first

        auth = {"Authorization": f"Bearer {sign_up(app_port)}"}
        bodies = {
            "/healthz": fetch(app_port, "/healthz"),
            "/me": fetch(app_port, "/api/v1/me", auth),
        }
        routes: list[str] = []
        for path, body in bodies.items():
            file = scratch / (path.strip("/") + ".json")
            file.write_bytes(body)
            routes += ["--route", f"{path}={file}"]
        baseline = [
            sys.executable,
            "-m",
            "loadtests.baseline_app",
            "--port",
            str(base_port),
            "--processes",
            str(WORKERS),
            *routes,
        ]
        commands["baseline"] = as_line(baseline)
        print(f"$ {commands['baseline']}", flush=True)
        stack.enter_context(background(baseline, env, base_port, scratch / "baseline.log"))
        wait_healthy(base_port)
        time.sleep(1)
        for path, body in bodies.items():
            if fetch(base_port, path) != body:
                raise BenchError(f"the baseline's {path} bytes differ from jangteo's")

        lua = scratch / "report.lua"
        lua.write_text(WRK_REPORT_LUA)
        targets = [
            Target("/healthz", "jangteo", f"http://127.0.0.1:{app_port}/healthz"),
            Target("/healthz", "baseline", f"http://127.0.0.1:{base_port}/healthz"),
            Target("/api/v1/me", "jangteo", f"http://127.0.0.1:{app_port}/api/v1/me", auth),
            Target("/api/v1/me", "baseline", f"http://127.0.0.1:{base_port}/me"),
        ]
        load = {"threads": args.threads, "connections": args.connections}
        rounds: list[list[Measurement]] = [[] for _ in targets]
        order = list(range(len(targets)))
        for number in range(args.rounds):
            # Every other round goes in reverse, so neither server always runs first.
            for index in order if number % 2 == 0 else order[::-1]:
                target = targets[index]
                print(f"round {number + 1}: wrk {target.server} GET {target.endpoint}", flush=True)
                if args.warmup > 0:
                    wrk(wrk_path, target, lua, seconds=args.warmup, **load)
                measurement = wrk(wrk_path, target, lua, seconds=args.duration, **load)
                if any(measurement.errors.values()):
                    print(f"  errors: {measurement.errors}", flush=True)
                rounds[index].append(measurement)
        # Best of the rounds: other work on the machine only ever makes a run slower.
        measurements = [max(runs, key=lambda m: m.requests_per_second) for runs in rounds]

    shares = ratios(measurements)
    print()
    print(table(measurements, shares))
    RESULTS.mkdir(parents=True, exist_ok=True)
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report: dict[str, Any] = {
        "benchmark": "http",
        "date": date,
        "machine": machine(load_before),
        "versions": versions(),
        "load": {
            "tool": "wrk",
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "threads": args.threads,
            "connections": args.connections,
            "processes_per_server": WORKERS,
            "rounds": args.rounds,
            "reported": "best requests/s of the rounds, with that run's latencies",
        },
        "commands": commands,
        "results": [asdict(m) for m in measurements],
        "all_rounds": [asdict(m) for runs in rounds for m in runs],
        "ratios_jangteo_over_baseline": shares,
    }
    json_path = RESULTS / "http.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {json_path.relative_to(ROOT)}")
    png_path = RESULTS / "http.png"
    caption = (
        f"{date}, {os.cpu_count()} cores, wrk -t{args.threads} -c{args.connections}"
        f" -d{args.duration}s"
    )
    if plot(measurements, shares, caption, png_path):
        print(f"wrote {png_path.relative_to(ROOT)}")
    else:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_http", description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--rounds", type=int, default=2, help="runs per URL; the best is kept")
    args = parser.parse_args(argv)
    try:
        code = run(args)
    except BenchError as error:
        print(f"bench_http: {error}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
