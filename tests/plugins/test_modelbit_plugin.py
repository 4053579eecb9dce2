"""The Airflow plugin mounts the callback receiver in the api-server under /modelbit."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from airflow_provider_modelbit.callbacks.signing import callback_url
from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.plugins.modelbit import ModelbitCallbackPlugin
from tests.asgi_thread import serve_in_thread

SECRET = "plugin-test-secret-0123456"


@pytest.fixture
def api_server_with_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A FastAPI app with plugins mounted by Airflow's own ``init_plugins``, served on 127.0.0.1."""
    from airflow.api_fastapi.app import init_plugins

    store_dir = tmp_path / "callbacks"
    monkeypatch.setenv("AIRFLOW__MODELBIT__CALLBACK_STORE", str(store_dir))
    connection = {"conn_type": "modelbit", "host": "http://127.0.0.1:1", "extra": {"callback_secret": SECRET}}
    monkeypatch.setenv("AIRFLOW_CONN_MODELBIT_PLUGIN_TEST", json.dumps(connection))
    app = FastAPI()
    init_plugins(app)
    with serve_in_thread(app) as url:
        yield url, store_dir


class TestModelbitCallbackPlugin:
    def test_registered_through_the_airflow_plugins_entry_point(self) -> None:
        [entry] = [e for e in entry_points(group="airflow.plugins") if e.name == "modelbit"]
        assert entry.load() is ModelbitCallbackPlugin

    def test_fastapi_apps_entry_mounts_the_receiver_under_modelbit(self) -> None:
        [entry] = ModelbitCallbackPlugin().fastapi_apps
        assert entry["url_prefix"] == "/modelbit"
        assert entry["name"]
        assert isinstance(entry["app"], FastAPI)
        assert ModelbitCallbackPlugin().fastapi_apps[0]["app"] is entry["app"], "built once, then reused"

    def test_importing_the_plugin_is_cheap(self) -> None:
        """Every Airflow process loads plugins: the import must not build the app or touch the store."""
        code = (
            "import sys, airflow_provider_modelbit.plugins.modelbit;"
            "print('airflow_provider_modelbit.callbacks.receiver' in sys.modules)"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert result.stdout.strip() == "False", result.stderr

    def test_delivery_through_the_api_server_mount_is_stored(self, api_server_with_plugins) -> None:
        base_url, store_dir = api_server_with_plugins
        CallbackStore(str(store_dir)).write_manifest("job-p", {"chunks": 1})
        url = callback_url(
            f"{base_url}/modelbit", "modelbit_plugin_test", "job-p", 0, SECRET, int(time.time()) + 600
        )
        response = httpx.post(url, content=b'{"data": [[1, 2]]}', headers={"x-mb-batch-id": "b1"}, timeout=10)
        assert response.status_code == 200, response.text
        assert (store_dir / "job-p" / "chunk-0.json").read_bytes() == b'{"data": [[1, 2]]}'
        forged = re.sub(r"token=[0-9a-f]+", "token=" + "0" * 64, url)
        assert httpx.post(forged, content=b'{"data": 1}', timeout=10).status_code == 403
