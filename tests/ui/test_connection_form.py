"""The Modelbit Connection form (declared in get_provider_info.py) in the real Airflow UI.

Admin → Connections → Add offers "Modelbit"; the form relabels Host and Password, hides the
fields a Modelbit connection does not use, shows every extra with its label and description,
saves, and its "Test" button reports the verdict of ``ModelbitHook.test_connection()``
against the local Modelbit server.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from airflow_rest import AirflowRestClient
from airflow_services import AirflowServices

from airflow_provider_modelbit.emulator.server import RunningEmulator

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

pytestmark = [pytest.mark.browser, pytest.mark.services]
# Imported this way so that a venv without Playwright (the floor-version run) still collects the suite.
expect = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed").expect

DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "images" / "connection-form.png"
VALID_API_KEY = "mb-ui-test-key-7f3c2a9e"  # the key the modelbit_server fixture accepts
WRONG_API_KEY = "mb-wrong-key-00000000"
GOOD_CONN_ID = "modelbit_ui_good_key"
BAD_CONN_ID = "modelbit_ui_wrong_key"

EXTRA_FIELDS = [
    ("workspace", "Workspace", "builds the Workspace URL when that is empty"),
    ("region", "Region", "e.g. us-east-2.aws"),
    ("outpost", "Outpost", "for workspaces that use one"),
    ("branch", "Default branch", "Branch used when a task names none"),
    ("timeout_seconds", "Default timeout (seconds)", "1-300 sync, 1-900 async"),
    ("callback_base_url", "Callback base URL", "reaches the callback receiver"),
    ("callback_secret", "Callback signing secret", "HMAC-SHA256"),
]


def open_add_form(page: Page) -> Locator:
    """Admin → Connections → Add Connection, with "Modelbit" chosen as the type; returns the dialog."""
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("combobox").click()
    page.keyboard.type("Modelbit")
    page.get_by_role("option", name="Modelbit", exact=True).click()
    dialog.get_by_role("button", name="Extra Fields", exact=True).wait_for()
    return dialog


def open_section(dialog: Locator, title: str) -> None:
    """Expand one accordion section of the form (the form shows one at a time)."""
    dialog.get_by_role("button", name=title, exact=True).click()
    time.sleep(0.5)  # the section animates open; screenshots taken mid-animation are cut off


def field_row(dialog: Locator, label: str) -> Locator:
    """The form row holding the field labelled ``label``."""
    return dialog.locator("[data-scope=field][data-part=root]").filter(
        has=dialog.page.get_by_text(label, exact=True)
    )


def add_connection(page: Page, conn_id: str, host: str, api_key: str) -> None:
    dialog = open_add_form(page)
    dialog.locator("input[name=connection_id]").fill(conn_id)
    dialog.locator("input[name=host]").fill(host)
    dialog.locator("input[name=password]").fill(api_key)
    dialog.get_by_role("button", name="Save").click()
    dialog.wait_for(state="hidden")


def click_test(page: Page, conn_id: str) -> dict[str, Any]:
    """Click the row's "Test Connection" button; return the API's verdict the UI received."""
    with page.expect_response("**/api/v2/connections/test") as response_info:
        page.locator("tr", has_text=conn_id).get_by_role("button", name="Test Connection").click()
    response = response_info.value
    assert response.status == 200, f"connection test request answered {response.status}: {response.text()}"
    return dict(response.json())


def icon_colour(page: Page, conn_id: str) -> tuple[int, int, int]:
    """RGB colour of the Test button's icon: green after success, red after failure."""
    icon = page.locator("tr", has_text=conn_id).get_by_role("button", name="Test Connection").locator("svg")
    css = icon.evaluate("element => getComputedStyle(element).color")
    red, green, blue = (int(part) for part in re.findall(r"\d+", css)[:3])
    return red, green, blue


def toast_titled(page: Page, title: str) -> Locator:
    """The first notification showing ``title``."""
    return page.locator("[data-scope=toast][data-part=root]").filter(has_text=title).first


def wait_for_icon(page: Page, conn_id: str, *, succeeded: bool, timeout: float = 10.0) -> None:
    """Wait until the Test icon turns green (success) or red (failure)."""
    deadline = time.monotonic() + timeout
    while True:
        red, green, _ = icon_colour(page, conn_id)
        if (green > red) if succeeded else (red > green):
            return
        assert time.monotonic() < deadline, f"Test icon of {conn_id} stayed rgb{(red, green)}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def saved_connections(
    browser: Any, ui_services: AirflowServices, modelbit_server: RunningEmulator
) -> dict[str, str]:
    """Two Modelbit connections created through the form: one with the right key, one with a wrong key."""
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{ui_services.api_url}/auth/token/login?next={ui_services.api_url}/connections")
    add_connection(page, GOOD_CONN_ID, modelbit_server.url, VALID_API_KEY)
    add_connection(page, BAD_CONN_ID, modelbit_server.url, WRONG_API_KEY)
    context.close()
    return {GOOD_CONN_ID: VALID_API_KEY, BAD_CONN_ID: WRONG_API_KEY}


class TestAddConnectionForm:
    """What a user sees after choosing the Modelbit type."""

    def test_modelbit_is_offered_as_a_connection_type(self, page: Page) -> None:
        page.get_by_role("button", name="Add Connection").click()
        page.get_by_role("dialog").get_by_role("combobox").click()
        page.keyboard.type("Model")
        expect(page.get_by_role("option", name="Modelbit", exact=True)).to_be_visible()

    @pytest.mark.parametrize(
        ("name", "label", "placeholder", "input_type"),
        [
            ("host", "Workspace URL", "https://acme.us-east-2.aws.modelbit.com", "text"),
            ("password", "API Key", "mi1a2b3c:Ab3dEf...", "password"),
        ],
    )
    def test_host_and_password_are_relabelled_with_placeholders(
        self, page: Page, name: str, label: str, placeholder: str, input_type: str
    ) -> None:
        dialog = open_add_form(page)
        field = dialog.locator(f"input[name={name}]")
        assert field_row(dialog, label).locator(f"input[name={name}]").count() == 1
        assert field.get_attribute("placeholder") == placeholder
        assert field.get_attribute("type") == input_type

    @pytest.mark.parametrize("hidden", ["login", "schema", "port"])
    def test_fields_a_modelbit_connection_does_not_use_are_hidden(self, page: Page, hidden: str) -> None:
        dialog = open_add_form(page)
        assert dialog.locator(f"input[name={hidden}]").count() == 0
        assert dialog.locator("input[name=host]").count() == 1  # the standard fields are rendered

    @pytest.mark.parametrize(("field", "label", "description"), EXTRA_FIELDS)
    def test_each_extra_field_has_a_label_and_a_description(
        self, page: Page, field: str, label: str, description: str
    ) -> None:
        dialog = open_add_form(page)
        open_section(dialog, "Extra Fields")
        row = field_row(dialog, label)
        assert row.locator(f"[name=element_{field}]").count() == 1
        assert description in row.inner_text()

    def test_the_callback_secret_is_masked_and_the_branch_defaults_to_main(self, page: Page) -> None:
        dialog = open_add_form(page)
        open_section(dialog, "Extra Fields")
        assert dialog.locator("[name=element_callback_secret]").get_attribute("type") == "password"
        assert dialog.locator("[name=element_branch]").input_value() == "main"

    def test_screenshots_of_the_form(self, page: Page, screenshots: Path) -> None:
        """Artifacts for review; the filled standard fields (key masked) also illustrate the docs."""
        dialog = open_add_form(page)
        dialog.locator("input[name=connection_id]").fill("modelbit_default")
        dialog.locator("input[name=host]").fill("https://acme.us-east-2.aws.modelbit.com")
        dialog.locator("input[name=password]").fill("not-a-real-key-shown-masked")
        dialog.locator("textarea[name=description]").fill("Modelbit workspace of the data team")
        time.sleep(0.5)
        dialog.screenshot(path=str(screenshots / "connection-form.png"))
        page.set_viewport_size({"width": 1280, "height": 1500})  # room for every extra field
        open_section(dialog, "Extra Fields")
        dialog.screenshot(path=str(screenshots / "connection-form-extras.png"))
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshots / "connection-form.png", DOCS_IMAGE)
        assert DOCS_IMAGE.stat().st_size > 10_000


class TestSavedConnection:
    """Saving through the form stores a Modelbit connection as the hook reads it."""

    def test_the_form_stores_type_url_masked_key_and_extras(
        self,
        saved_connections: dict[str, str],
        ui_services: AirflowServices,
        modelbit_server: RunningEmulator,
    ) -> None:
        with ui_services.rest_client() as client:
            stored = client.get_connection(GOOD_CONN_ID)
        assert stored["conn_type"] == "modelbit"
        assert stored["host"] == modelbit_server.url
        assert stored["password"] == "***"  # the API never returns the key itself
        assert '"branch": "main"' in stored["extra"]
        assert stored["port"] is None and stored["login"] is None

    def test_the_list_shows_both_connections(self, saved_connections: dict[str, str], page: Page) -> None:
        for conn_id in saved_connections:
            expect(
                page.get_by_role("row")
                .filter(has_text=conn_id)
                .get_by_role("cell", name="modelbit", exact=True)
            ).to_be_visible()


class TestTestButton:
    """With [core] test_connection = Enabled, the row's Test button runs ModelbitHook.test_connection()."""

    def test_reports_success_for_the_right_key(
        self,
        saved_connections: dict[str, str],
        page: Page,
        screenshots: Path,
        modelbit_server: RunningEmulator,
    ) -> None:
        verdict = click_test(page, GOOD_CONN_ID)
        message = f"Connected to the Modelbit workspace at {modelbit_server.url}; the API key was accepted."
        assert verdict == {"status": True, "message": message}
        toast = page.locator("[data-scope=toast][data-part=root]").filter(
            has_text="Test Connection Successful"
        )
        expect(toast.first).to_contain_text(message)
        wait_for_icon(page, GOOD_CONN_ID, succeeded=True)
        page.screenshot(path=str(screenshots / "connection-test-success.png"))

    def test_reports_a_clear_failure_for_a_wrong_key(
        self,
        saved_connections: dict[str, str],
        page: Page,
        screenshots: Path,
        modelbit_server: RunningEmulator,
    ) -> None:
        verdict = click_test(page, BAD_CONN_ID)
        # The form tests under a throw-away connection id, which the message names after this.
        message = f"{modelbit_server.url} is a Modelbit workspace, but it refused the API key (HTTP 401)"
        assert verdict["status"] is False
        assert verdict["message"].startswith(message + "; check the API Key of connection ")
        expect(toast_titled(page, "Test Connection Failed")).to_contain_text(message)
        assert WRONG_API_KEY not in page.content()
        wait_for_icon(page, BAD_CONN_ID, succeeded=False)
        page.screenshot(path=str(screenshots / "connection-test-failure.png"))


class TestConnectionTestApi:
    """The same tests through the REST API, as scripts and the CLI-less user run them."""

    @pytest.mark.parametrize(
        ("conn_id", "expected_status", "expected_text"),
        [(GOOD_CONN_ID, True, "the API key was accepted"), (BAD_CONN_ID, False, "refused the API key")],
    )
    def test_in_the_api_server(
        self,
        saved_connections: dict[str, str],
        ui_services: AirflowServices,
        modelbit_server: RunningEmulator,
        conn_id: str,
        expected_status: bool,
        expected_text: str,
    ) -> None:
        body = {"connection_id": conn_id, "conn_type": "modelbit", "host": modelbit_server.url}
        with ui_services.rest_client() as client:
            verdict = client.request("POST", "/connections/test", what="test", json=body).json()
        assert verdict["status"] is expected_status
        assert expected_text in verdict["message"]

    @pytest.mark.parametrize(
        ("conn_id", "expected_state", "expected_text"),
        [
            (GOOD_CONN_ID, "success", "the API key was accepted"),
            (BAD_CONN_ID, "failed", "refused the API key"),
        ],
    )
    def test_on_a_worker_through_the_executor(
        self,
        saved_connections: dict[str, str],
        ui_services: AirflowServices,
        modelbit_server: RunningEmulator,
        conn_id: str,
        expected_state: str,
        expected_text: str,
    ) -> None:
        """Airflow 3.3's queued test: the scheduler hands it to a LocalExecutor worker running the hook."""
        connection = {
            "connection_id": conn_id,
            "conn_type": "modelbit",
            "host": modelbit_server.url,
            "password": saved_connections[conn_id],
        }
        with ui_services.rest_client() as client:
            for _ in range(3):
                result = wait_for_queued_test(client, connection, timeout=120)
                # A worker that lost its exchange with the api-server (seen on an overloaded machine)
                # reports Airflow's own failure, not the hook's verdict: queue the test again.
                if "failed unexpectedly" not in str(result.get("result_message")):
                    break
        assert result["state"] == expected_state, result
        assert expected_text in result["result_message"]


def wait_for_queued_test(
    client: AirflowRestClient, connection: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Queue a test of ``connection`` (its details travel in the request) and poll until it ends."""
    conn_id = connection["connection_id"]
    queued = client.request(
        "POST", "/connections/enqueue-test", what=f"queue a test of {conn_id!r}", json=connection
    ).json()
    result = queued
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = client.request(
            "GET",
            "/connections/enqueue-test",
            what=f"read the queued test of {conn_id!r}",
            headers={"Airflow-Connection-Test-Token": queued["token"]},
        ).json()
        if result["state"] in ("success", "failed"):
            return dict(result)
        time.sleep(1)
    raise AssertionError(f"queued test of {conn_id!r} did not finish in {timeout}s; last: {result}")
