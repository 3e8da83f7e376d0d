"""Fixtures for the dashboard's browser tests: Debian's Chromium driven by Playwright, and
the API + dashboard served by a real uvicorn next to an in-process worker on Azurite.

Chromium is found at ``$DURABLE_CHROMIUM`` or ``/usr/bin/chromium`` (Debian's ``chromium``
package, which ``scripts/setup_browser.sh`` installs as part of ``scripts/test.sh``);
Playwright's own browser downloads are never used.
When Chromium or Playwright is missing the tests are skipped on a developer machine and
**fail** in CI (``CI=true``). Screenshots go to ``$DURABLE_SCREENSHOTS`` or
``.artifacts/screenshots/`` (git-ignored); the path is printed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from durable_azure.dashboard import dashboard_routes
from tests.integration.conftest import Hub, hub  # noqa: F401 (the fixture)
from tests.integration.test_http_api import running_api

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("DURABLE_SCREENSHOTS") or ROOT / ".artifacts" / "screenshots")

#: What this closed machine needs: no network calls of Chromium's own, no sandbox (root).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

_saved: list[Path] = []


def _missing(what: str) -> None:
    message = f"{what}; run `bash scripts/setup_browser.sh` (installs Debian's chromium)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the browser tests need {message}", pytrace=False)
    pytest.skip(f"needs {message}")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = os.environ.get("DURABLE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        _missing(f"Chromium at {path}")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _missing("the playwright package (pip install -e '.[dev]')")
    return path


@pytest.fixture
async def browser_page(chromium_path: str, tmp_path: Path) -> AsyncIterator[Any]:
    """A page in a fresh Chromium profile (a persistent context on a new user-data-dir)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=chromium_path,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            await context.close()


@pytest.fixture
def screenshot() -> Any:
    """``await screenshot(page, "name")`` saves a full-page PNG under :data:`SCREENSHOTS`."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    async def take(page: Any, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        _saved.append(path)
        return path

    return take


@pytest.fixture
async def origin_and_key(hub: Hub) -> AsyncIterator[tuple[str, str]]:  # noqa: F811
    """The API with the dashboard (as ``durable-azure serve`` builds it), served by uvicorn
    on a free loopback port: its origin and its key."""
    key = os.urandom(12).hex()
    routes = dashboard_routes(hub.client, key=key)
    async with running_api(hub, key=key, extra_routes=routes) as api:
        yield api.origin, key


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _saved:
        terminalreporter.write_line(
            f"dashboard screenshots ({len(_saved)}) saved in {SCREENSHOTS}: "
            + ", ".join(p.name for p in _saved)
        )
