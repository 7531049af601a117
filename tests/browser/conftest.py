"""Browser tests: Debian's Chromium, headless, driven by Playwright, on real server processes."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright
from pytest_asyncio import is_async_test

from server.seed import seed
from tests.browser.chromium import find_chromium, install_chromium
from tests.browser.support import DEMO_USERS, Screenshots
from tests.support import REPO_ROOT, ServerProcess, make_settings, two_server_processes

# Stable, gitignored: the latest run's screenshots, one folder per test.
ARTIFACTS = REPO_ROOT / ".artifacts" / "browser"


# What apt-get said when Chromium had to be installed, for the failure message.
_INSTALL_LOG: list[str] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Install Chromium before any test runs when browser tests are selected and it is
    missing: apt-get can take longer than one test's timeout. The browser tests run on the
    session's event loop, the one the shared browser lives on."""
    here = Path(__file__).parent
    browser_tests = [item for item in items if here in item.path.parents]
    if find_chromium() is None and browser_tests:
        _, said = install_chromium()
        _INSTALL_LOG.append(said)
    on_the_session_loop = pytest.mark.asyncio(loop_scope="session")
    for item in browser_tests:
        if is_async_test(item):
            item.add_marker(on_the_session_loop, append=False)


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Chromium on PATH, installed from Debian's packages when missing; never skipped."""
    found = find_chromium()
    if found is None:
        said = "\n".join(_INSTALL_LOG) or "(no install was attempted)"
        pytest.fail(
            "the browser tests need Chromium: it is not on PATH and "
            f"`apt-get install -y chromium` did not provide it:\n{said}",
            pytrace=False,
        )
    return found


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def shared_browser(chromium_executable: str) -> AsyncIterator[Browser]:
    """One Chromium for the run: starting Playwright's driver and a browser costs about a
    second each time. Tests are kept apart by browser contexts (see ``browser``)."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_executable,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def browser(shared_browser: Browser) -> AsyncIterator[Browser]:
    """The shared browser; every context a test opens (its cookies, storage and pages) is
    closed after it, so the next test starts from none."""
    yield shared_browser
    for context in shared_browser.contexts:
        await context.close()


@pytest.fixture
def browser_env(server_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Server environment with one photo directory on local disk for every instance."""
    return {**server_env, "JANGTEO_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
async def demo_accounts(database_url: str, redis_url: str) -> None:
    """The accounts `jangteo seed` makes (demo1..3), for one-click sign-in."""
    settings = make_settings(database_url, redis_url)
    await seed(settings, users=DEMO_USERS, listings=0, if_empty=False)


@pytest.fixture
def two_instances(browser_env: dict[str, str]) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with two_server_processes(browser_env) as pair:
        yield pair


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Screenshots:
    folder = ARTIFACTS / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return Screenshots(folder)
