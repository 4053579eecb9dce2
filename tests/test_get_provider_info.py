"""Provider registration: the metadata Airflow validates, the entry points, the Connection in the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import airflow
import jsonschema
import pytest

from airflow_provider_modelbit.get_provider_info import get_provider_info


class TestProviderInfo:
    def test_is_valid_for_airflow(self) -> None:
        """Airflow validates the dict against its runtime schema when it discovers providers."""
        schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
        jsonschema.validate(get_provider_info(), schema)

    def test_names_the_distribution_and_is_registered(self) -> None:
        """Airflow refuses a provider whose package-name differs from its distribution's name."""
        (entry,) = [e for e in entry_points(group="apache_airflow_provider") if "modelbit" in e.value]
        assert entry.dist is not None and entry.dist.name == "airflow-provider-modelbit"
        assert entry.load()()["package-name"] == entry.dist.name

    def test_plugin_is_registered_through_the_plugins_entry_point(self) -> None:
        """Plugins listed in provider info load only when providers are discovered eagerly."""
        (entry,) = [e for e in entry_points(group="airflow.plugins") if e.name == "modelbit"]
        assert entry.load().name == "modelbit"

    def test_connection_form_hides_what_does_not_apply_and_masks_secrets(self) -> None:
        (connection,) = get_provider_info()["connection-types"]
        behaviour = connection["ui-field-behaviour"]
        assert set(behaviour["hidden-fields"]) == {"login", "schema", "port"}
        assert behaviour["relabeling"] == {"host": "Workspace URL", "password": "API Key"}
        secrets = {name for name, field in connection["conn-fields"].items() if field["schema"].get("format")}
        assert secrets >= {"callback_secret"}
        assert connection["conn-fields"]["callback_secret"]["schema"]["format"] == "password"


CONNECTIONS = {
    "json": json.dumps(
        {
            "conn_type": "modelbit",
            "host": "http://127.0.0.1:8765",
            "password": "mi-cli:test-key",
            "extra": {"branch": "dev", "timeout_seconds": 60},
        }
    ),
    "uri": "modelbit://:mi-cli%3Atest-key@127.0.0.1:8765?scheme=http&branch=dev&timeout_seconds=60",
}


@pytest.mark.parametrize("form", sorted(CONNECTIONS))
def test_airflow_connections_get_reads_both_hand_written_forms(form: str, tmp_path: Path) -> None:
    """``airflow connections get`` shows a ``modelbit`` connection written as JSON or as a URI."""
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW_CONN_MODELBIT_CLI": CONNECTIONS[form]}
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "connections", "get", "modelbit_cli", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # Airflow 3.2 logs its database set-up to stdout before the answer: read the JSON line.
    (answer,) = [line for line in result.stdout.splitlines() if line.startswith("[{")]
    (connection,) = json.loads(answer)
    assert connection["conn_type"] == "modelbit"
    assert connection["extra_dejson"]["branch"] == "dev"
    assert "127.0.0.1" in connection["host"]
