"""Fixtures for driving the Airflow UI in headless Chromium against real services and a local Modelbit.

The browser is Debian's ``chromium`` package driven by Playwright through ``executable_path``;
no browser is ever downloaded. Without ``/usr/bin/chromium`` the browser tests are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from airflow_services import AirflowServices
from packaging.version import Version

from airflow_provider_modelbit.emulator.server import RunningEmulator, run_emulator

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

REPO_ROOT = Path(__file__).resolve().parents[2]

CHROMIUM = Path("/usr/bin/chromium")
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
SCREENSHOTS = REPO_ROOT / "artifacts" / "ui"
VALID_API_KEY = "mb-ui-test-key-7f3c2a9e"

# Airflow 3.3.2's list-row "Test" button posts ``port: Number(null)``, i.e. 0, for a connection
# without a port; the API then sees a different endpoint and answers 400 without testing
# (apache/airflow#73298, fixed after 3.3.2). Modelbit connections keep the port inside the
# Workspace URL, so every one of them hits this.
LAST_AIRFLOW_WITH_PORTLESS_TEST_BUG = Version("3.3.2")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} is absent; install Debian's 'chromium' package")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def modelbit_server() -> Iterator[RunningEmulator]:
    """The local Modelbit server, requiring ``VALID_API_KEY``."""
    with run_emulator(require_api_keys=True, api_keys=(VALID_API_KEY,)) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def ui_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowServices]:
    """The api-server (where the UI's connection test runs) and the scheduler (for worker-run tests)."""
    with AirflowServices(
        dags_folder=tmp_path_factory.mktemp("no-dags"),
        services=("api-server", "scheduler"),
        logs_folder=REPO_ROOT / "artifacts" / "ui" / "logs",
        database_cache=REPO_ROOT / "artifacts" / "cache",
    ) as services:
        yield services


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import expect, sync_playwright

    # The UI loads its lists and translations asynchronously; on a busy CI machine that takes
    # longer than the 5 s assertions wait by default.
    expect.set_options(timeout=30_000)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, ui_services: AirflowServices) -> Iterator[Page]:
    """A fresh browser tab logged in to the Airflow UI (SimpleAuthManager, everyone admin)."""
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    context.set_default_timeout(60_000)
    tab = context.new_page()
    if Version(metadata.version("apache-airflow-core")) <= LAST_AIRFLOW_WITH_PORTLESS_TEST_BUG:
        tab.route("**/api/v2/connections/test", send_portless_test_without_port)
    url = ui_services.api_url
    tab.goto(f"{url}/auth/token/login?next={url}/connections")
    yield tab
    context.close()


def send_portless_test_without_port(route: Route) -> None:
    """Send ``port: null`` instead of the UI's ``0``, as the fixed Airflow API reads it (see above)."""
    body = route.request.post_data_json or {}
    if body.get("port") == 0:
        body["port"] = None
    route.continue_(post_data=json.dumps(body))


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where screenshots go as test artifacts (``artifacts/`` is not committed)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
