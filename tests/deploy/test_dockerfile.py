"""The Dockerfile and .dockerignore, read statically (no container engine here), and the
image's health check run as a command against a server that is ready, then not.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import sys
import tomllib

from aiohttp import web
from aiohttp.test_utils import TestServer

from jangteo.cli import build_parser
from tests.deploy.dockerfile import Stage, exec_form, read_stages
from tests.deploy.names import ROOT, app_paths, setting_names

STAGES = read_stages(ROOT / "Dockerfile")
FINAL = STAGES[-1]


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for name, value in (pair.split("=", 1) for pair in args.split()):
            env[name] = value
    return env


def test_build_is_multi_stage() -> None:
    assert len(STAGES) >= 2
    builders = {stage.name for stage in STAGES[:-1]}
    copied_from = {args.split()[0].removeprefix("--from=") for args in FINAL.all("COPY")}
    assert copied_from & builders, "the final stage copies the build stage's result"
    assert not any("pip install" in args for args in FINAL.all("RUN")), "no build in the run"


def test_runs_as_an_unprivileged_user() -> None:
    user = FINAL.last("USER")
    assert user is not None, "USER in the final stage"
    uid = user.split(":")[0]
    assert uid.isdigit(), "numeric, so Kubernetes' runAsNonRoot can verify it"
    assert int(uid) != 0


def test_entry_point_is_jangteo_serve() -> None:
    entrypoint, command = FINAL.last("ENTRYPOINT"), FINAL.last("CMD")
    assert entrypoint is not None and command is not None
    assert exec_form(entrypoint) + exec_form(command) == ["jangteo", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["jangteo"] == "jangteo.cli:main"
    assert build_parser().parse_args(["serve"]).command == "serve"


def test_stops_gracefully_on_sigterm() -> None:
    assert FINAL.last("STOPSIGNAL") in (None, "SIGTERM")


def test_health_check_probes_readiness() -> None:
    check = FINAL.last("HEALTHCHECK")
    assert check is not None
    command = exec_form(check.split(" CMD ", 1)[1])
    assert command[0] == "python"
    assert "/readyz" in " ".join(command) and "/healthz" not in " ".join(command)
    assert "/readyz" in app_paths()


async def test_health_check_follows_readyz() -> None:
    """The HEALTHCHECK command itself exits 0 while /readyz is 200, non-zero on 503."""
    check = FINAL.last("HEALTHCHECK")
    assert check is not None
    command = [sys.executable, *exec_form(check.split(" CMD ", 1)[1])[1:]]
    ready = True

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({}, status=200 if ready else 503)

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    async with TestServer(app, host="127.0.0.1") as server:
        env = {**os.environ, "JANGTEO_PORT": str(server.port)}
        assert await _exit_code(command, env) == 0
        ready = False
        assert await _exit_code(command, env) != 0


async def _exit_code(command: list[str], env: dict[str, str]) -> int:
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), timeout=60)


def test_environment_names_are_settings_and_port_is_exposed() -> None:
    env = _env(FINAL)
    jangteo = {name for name in env if name.startswith("JANGTEO_")}
    assert jangteo <= setting_names()
    assert FINAL.all("EXPOSE") == [env["JANGTEO_PORT"]]
    # Every interface: the container's own address is the only way in.
    assert env["JANGTEO_HOST"] == "0.0.0.0"  # noqa: S104


def test_uvloop_and_hiredis_are_installed() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(dep.startswith("uvloop") for dep in dependencies)
    assert any(dep.startswith("redis[hiredis]") for dep in dependencies)
    build = " ".join(" ".join(stage.all("RUN")) for stage in STAGES[:-1])
    assert "pip install ." in build
    imports = build.split("python -c", 1)[1]
    assert "uvloop" in imports and "hiredis" in imports, "the build fails without them"


def test_dockerignore_keeps_the_context_to_the_sources() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def sent(path: str) -> bool:
        """Docker's rule: the last pattern that matches decides; ``!`` lets a path back in."""
        included = True
        for pattern in patterns:
            if _matches(path, pattern.lstrip("!").removeprefix("**/")):
                included = pattern.startswith("!")
        return included

    sources = [
        source
        for stage in STAGES[:-1]
        for args in stage.all("COPY")
        for source in args.split()[:-1]
        if not source.startswith("--")
    ]
    assert "server" in sources
    for source in sources:
        assert sent(source), f"{source} is copied, so the context must send it"
    for private in (".venv", ".data", ".git", "tests", "loadtests/results", ".data/jwt-secret"):
        assert not sent(private), f"{private} stays out of the build context"


def _matches(path: str, pattern: str) -> bool:
    """The path, its last part, or a folder above it matches (enough for these patterns)."""
    return (
        fnmatch.fnmatch(path, pattern)
        or fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern)
        or path.startswith(pattern.rstrip("/") + "/")
    )


def test_the_javascript_client_ships_in_the_package_and_the_image() -> None:
    """The demo serves ``clients/js/`` from beside the ``server`` package (server/demo.py):
    so the package (hence the wheel and the image) carries every file of it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert any(
        fnmatch.fnmatch("clients", pattern) for pattern in setuptools["packages"]["find"]["include"]
    )
    shipped = setuptools["package-data"]["clients.js"]
    for path in (ROOT / "clients" / "js").iterdir():
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in shipped), path.name
    copied = [args.split()[0] for stage in STAGES[:-1] for args in stage.all("COPY")]
    assert "clients" in copied
