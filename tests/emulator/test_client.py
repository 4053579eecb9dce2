"""``EmulatorClient`` against a running emulator."""

from __future__ import annotations

import pytest

from airflow_provider_modelbit.emulator import EmulatorClient, EmulatorClientError, RunningEmulator


class TestEmulatorClient:
    def test_works_from_a_bare_url(self, emulator: RunningEmulator) -> None:
        with EmulatorClient(emulator.url + "/") as client:
            assert client.health() == {"status": "ok"}
            assert client.requests() == []

    def test_set_faults_returns_all_settings(self, emulator: RunningEmulator) -> None:
        settings = emulator.client.set_faults(
            error_rate=0.25, error_statuses=(500, 502), deployment="echo", seed=9
        )
        assert settings["global"] is None
        assert settings["deployments"]["echo"]["error_statuses"] == [500, 502]
        assert settings["deployments"]["echo"]["seed"] == 9

    def test_refusals_raise_with_the_reason(self, emulator: RunningEmulator) -> None:
        with pytest.raises(EmulatorClientError, match="between 0 and 1"):
            emulator.client.set_faults(error_rate=2.0)
