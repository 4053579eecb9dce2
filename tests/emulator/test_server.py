"""``run_emulator()``: background thread or child process, free port, clean stop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import httpx
import pytest

from airflow_provider_modelbit.emulator import run_emulator
from tests.scripted_http import accepts_connections


class TestRunEmulator:
    @pytest.mark.parametrize("mode", ["thread", "process"])
    def test_starts_serves_and_stops(self, mode: Literal["thread", "process"], tmp_path: Path) -> None:
        deployments = tmp_path / "models.py"
        deployments.write_text("def register(registry):\n    registry.add('negate', lambda x: -x)\n")
        with run_emulator(
            mode=mode, require_api_keys=True, api_keys=("key",), deployments_file=str(deployments)
        ) as server:
            assert server.url.startswith("http://127.0.0.1:")
            with httpx.Client(trust_env=False) as http:
                answer = http.post(
                    server.url + "/v1/negate/latest", json={"data": 3}, headers={"authorization": "key"}
                )
            assert answer.json() == {"data": -3}
            assert server.client.health() == {"status": "ok"}
            url = server.url
        assert not accepts_connections(url, timeout=1)

    def test_initial_faults_apply_and_survive_reset(self) -> None:
        with (
            run_emulator(faults={"error_rate": 1.0, "error_statuses": [502], "deployment": "echo"}) as server,
            httpx.Client(trust_env=False) as http,
        ):
            assert http.post(server.url + "/v1/echo/latest", json={"data": 1}).status_code == 502
            server.client.reset()
            assert http.post(server.url + "/v1/echo/latest", json={"data": 1}).status_code == 502
            assert http.post(server.url + "/v1/doubler/latest", json={"data": 1}).status_code == 200

    @pytest.mark.parametrize("mode", ["thread", "process"])
    def test_start_failure_names_the_cause(self, mode: Literal["thread", "process"]) -> None:
        with (
            pytest.raises((RuntimeError, ValueError), match=r"/nonexistent\.py does not exist"),
            run_emulator(deployments_file="/nonexistent.py", mode=mode),
        ):
            pass

    def test_two_emulators_get_different_ports(self) -> None:
        with run_emulator() as first, run_emulator() as second:
            assert first.url != second.url
