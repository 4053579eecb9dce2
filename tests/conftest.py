"""Shared fixtures: a throw-away Airflow home, and Modelbit connections defined through env vars."""

from __future__ import annotations

import atexit
import importlib.metadata
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest

# Airflow reads AIRFLOW_HOME when first imported: point it at a temporary folder before any test
# imports Airflow, so no test reads or writes ~/airflow.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-home-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# The execution API signs task tokens with it; Airflow 3.2's in-process API (dag.test()) refuses to
# start without one, where 3.1 and 3.3 make their own.
os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(32))

EMULATOR_PLUGIN = "airflow_provider_modelbit.emulator.pytest_plugin"
# Load the emulator fixtures here only while they are not installed as a pytest11 entry point:
# pytest refuses a plugin registered twice.
_installed_plugins = {entry.value for entry in importlib.metadata.entry_points(group="pytest11")}
if EMULATOR_PLUGIN not in _installed_plugins and importlib.util.find_spec(EMULATOR_PLUGIN) is not None:
    pytest_plugins = [EMULATOR_PLUGIN]

ConnectionSetter = Callable[..., str]

#: Tests of the production shape need scripts/bootstrap_production.sh and minutes each: run only when asked.
PRODUCTION_MARKER = "production"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``production`` tests unless the ``-m`` expression names them (``-m production``)."""
    if PRODUCTION_MARKER in (config.getoption("markexpr") or ""):
        return
    deselected = [item for item in items if item.get_closest_marker(PRODUCTION_MARKER) is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.get_closest_marker(PRODUCTION_MARKER) is None]


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated metadata database in the session's temporary AIRFLOW_HOME (dag.test() needs one)."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)


@pytest.fixture
def airflow_home() -> str:
    """The temporary Airflow home of this test session."""
    return os.environ["AIRFLOW_HOME"]


@pytest.fixture
def modelbit_connection(monkeypatch: pytest.MonkeyPatch) -> ConnectionSetter:
    """
    Define a Modelbit connection through an ``AIRFLOW_CONN_*`` variable for one test.

    Call it as ``modelbit_connection(host=..., password=..., extra={...}, form="json" | "uri",
    conn_id="modelbit_default")``; it returns the connection id.
    """

    def define(
        *,
        host: str = "",
        password: str | None = None,
        extra: dict[str, Any] | None = None,
        form: str = "json",
        conn_id: str = "modelbit_default",
        port: int | None = None,
    ) -> str:
        if form == "json":
            value = _json_form(host, password, extra, port)
        else:
            value = _uri_form(host, password, extra, port)
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value)
        return conn_id

    return define


def _json_form(host: str, password: str | None, extra: dict[str, Any] | None, port: int | None) -> str:
    document: dict[str, Any] = {"conn_type": "modelbit", "host": host, "extra": extra or {}}
    if password is not None:
        document["password"] = password
    if port is not None:
        document["port"] = port
    return json.dumps(document)


def _uri_form(host: str, password: str | None, extra: dict[str, Any] | None, port: int | None) -> str:
    credentials = f":{quote(password, safe='')}@" if password else ""
    address = f"{host}:{port}" if port else host
    query = f"?{urlencode(extra)}" if extra else ""
    return f"modelbit://{credentials}{address}{query}"


@pytest.fixture
def server(
    request: pytest.FixtureRequest,
    airflow_db: None,
    modelbit_emulator_session: Any,
    modelbit_connection: ConnectionSetter,
) -> Iterator[Any]:
    """
    The session's local server requiring the test module's ``API_KEY``, with ``modelbit_default``
    pointing at it (modules with a server of their own define their own ``server`` fixture).
    """
    api_key = request.module.API_KEY
    modelbit_emulator_session.client.reset()
    modelbit_emulator_session.client.configure(require_api_keys=True, api_keys=[api_key])
    modelbit_connection(host=modelbit_emulator_session.url, password=api_key)
    yield modelbit_emulator_session
    modelbit_emulator_session.client.reset()
