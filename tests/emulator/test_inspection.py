"""Emulator-only inspection and control routes under ``/_emulator/`` (§12.16)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from airflow_provider_modelbit.emulator import EmulatorClientError, RunningEmulator


class TestRecords:
    def test_requests_are_recorded(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        http.post(emulator.url + "/v1/versioned/dev/latest", json={"data": 1})
        http.post(emulator.url + "/v1/nope/latest", json={"data": 1})
        first, second = emulator.client.requests()
        assert (first["deployment"], first["branch"], first["version"], first["status"]) == (
            "versioned",
            "dev",
            1,
            200,
        )
        assert first["mode"] == "single" and first["body"] == '{"data":1}'
        assert (second["path"], second["status"]) == ("/v1/nope/latest", 404)

    def test_runs_count_each_row_id_per_deployment(
        self, http: httpx.Client, emulator: RunningEmulator
    ) -> None:
        http.post(emulator.url + "/v1/doubler/latest", json={"data": [[1, 1], ["a", 2]]})
        http.post(emulator.url + "/v1/doubler/latest", json={"data": [[1, 1]]})
        http.post(emulator.url + "/v1/echo/latest", json={"data": [[9, 1]]})
        assert emulator.client.runs("doubler") == {"1": 2, "a": 1}
        assert emulator.client.runs("echo") == {"9": 1}
        assert emulator.client.runs("raiser") == {}

    def test_batches_and_lookup(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        batch_id = http.post(
            emulator.url + "/v1/doubler/latest",
            json={"data": [[1, 1]], "response_webhook": "http://127.0.0.1:9/x"},
        ).json()["batchId"]
        assert [b["batchId"] for b in emulator.client.batches()] == [batch_id]
        batch = emulator.client.batch(batch_id)
        assert (batch["deployment"], batch["rows"], batch["webhook_url"]) == (
            "doubler",
            1,
            "http://127.0.0.1:9/x",
        )
        with pytest.raises(EmulatorClientError, match="404"):
            emulator.client.batch("unknown")

    def test_faults_are_listed_and_counted(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        emulator.client.set_faults(error_rate=1.0, error_statuses=(500, 503), seed=3)
        for _ in range(4):
            http.post(emulator.url + "/v1/doubler/latest", json={"data": 1})
        faults = emulator.client.faults()
        assert len(faults) == 4 and {f["path"] for f in faults} == {"/v1/doubler/latest"}
        assert sum(emulator.client.fault_counts().values()) == 4
        assert set(emulator.client.fault_counts()) <= {"error_500", "error_503"}


class TestControl:
    def test_reset_forgets_everything_and_restores_options(
        self, http: httpx.Client, emulator: RunningEmulator
    ) -> None:
        emulator.client.configure(require_api_keys=True)
        emulator.client.set_faults(error_rate=1.0)
        http.post(emulator.url + "/v1/doubler/latest", json={"data": [[1, 1]]})
        emulator.client.reset()
        assert emulator.client.requests() == [] and emulator.client.faults() == []
        assert emulator.client.runs("doubler") == {} and emulator.client.batches() == []
        assert emulator.client.fault_settings() == {"global": None, "deployments": {}}
        assert http.post(emulator.url + "/v1/doubler/latest", json={"data": 1}).status_code == 200

    def test_reset_lets_requests_being_served_finish_first(
        self, http: httpx.Client, emulator: RunningEmulator
    ) -> None:
        """A request a client gave up on no longer holds a place of the in-flight cap after a reset."""
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(http.post, emulator.url + "/v1/sleeper/latest", json={"data": [[0, 1.0]]})
            deadline = time.monotonic() + 30
            while not emulator.client.requests() and time.monotonic() < deadline:
                time.sleep(0.01)
            emulator.client.reset()
            emulator.client.configure(max_inflight_requests=1)
            assert http.post(emulator.url + "/v1/doubler/latest", json={"data": 1}).status_code == 200
            assert slow.result().status_code == 200
        assert [request["path"] for request in emulator.client.requests()] == ["/v1/doubler/latest"]

    def test_config_masks_keys(self, emulator: RunningEmulator) -> None:
        config = emulator.client.configure(api_keys=["secret-key"], timeout_status=504)
        assert config["timeout_status"] == 504
        assert config["api_keys"] == 1
        assert "secret-key" not in str(emulator.client.config())

    @pytest.mark.parametrize(
        "options",
        [
            {"colour": "blue"},
            {"timeout_status": 418},
            {"deployment_error_status": 502},
            {"link_expiry_seconds": -1},
        ],
    )
    def test_invalid_options_are_400(self, emulator: RunningEmulator, options: dict) -> None:
        with pytest.raises(EmulatorClientError, match="400"):
            emulator.client.configure(**options)

    def test_deployments_are_listed(self, emulator: RunningEmulator) -> None:
        listed = {d["name"]: d for d in emulator.client.deployments()}
        assert {"doubler", "echo", "versioned", "raiser", "sleeper", "churn_scorer"} <= set(listed)
        assert listed["versioned"]["branches"] == {"main": [1, 2, 3], "dev": [1], "feature/dev": [1]}
        assert listed["versioned"]["aliases"] == {"main": {"official": 2}}

    @pytest.mark.parametrize(
        ("method", "path", "status"),
        [("GET", "/_emulator/nothing", 404), ("DELETE", "/_emulator/reset", 405)],
    )
    def test_unknown_routes(
        self, http: httpx.Client, emulator: RunningEmulator, method: str, path: str, status: int
    ) -> None:
        assert http.request(method, emulator.url + path).status_code == status

    def test_nothing_under_v1(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        assert http.post(emulator.url + "/v1/_emulator/requests", json={"data": 1}).status_code == 404
