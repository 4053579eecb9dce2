"""Options, workspaces by Host label, and API-key rules."""

from __future__ import annotations

import pytest

from airflow_provider_modelbit.emulator.envelope import RequestRejected
from airflow_provider_modelbit.emulator.workspace import (
    WorkspaceOptions,
    build_config,
    check_api_key,
    config_as_json,
    workspace_for_host,
)


class TestWorkspaceForHost:
    @pytest.mark.parametrize(
        ("host", "expected"),
        [
            ("acme.us-east-1.aws.modelbit.com", "acme"),
            ("ACME.app.modelbit.com:443", "acme"),
            ("acme:8080", "acme"),
            ("other.app.modelbit.com", "default"),
            ("127.0.0.1:8765", "default"),
            (None, "default"),
        ],
    )
    def test_leftmost_label(self, host: str | None, expected: str) -> None:
        config = build_config(workspaces={"acme": {"require_api_keys": True, "api_keys": ["a"]}})
        assert workspace_for_host(config, host)[0] == expected


class TestCheckApiKey:
    @pytest.mark.parametrize(
        ("required", "header", "message"),
        [
            (True, None, "API key required"),
            (True, "", "API key required"),
            (False, "nope", "Invalid API key"),
            (True, "Bearer good", "Invalid API key"),
        ],
    )
    def test_rejections(self, required: bool, header: str | None, message: str) -> None:
        with pytest.raises(RequestRejected, match=message) as rejected:
            check_api_key(WorkspaceOptions(required, frozenset({"good"})), header)
        assert rejected.value.status == 401

    @pytest.mark.parametrize(("required", "header"), [(False, None), (True, "good"), (False, "good")])
    def test_accepted(self, required: bool, header: str | None) -> None:
        check_api_key(WorkspaceOptions(required, frozenset({"good"})), header)


class TestBuildConfig:
    def test_json_values_are_normalised(self) -> None:
        config = build_config(api_keys=["a", "b"], rate_limits={"r": {"per_minute": 5}})
        assert config.api_keys == frozenset({"a", "b"})
        assert config.rate_limits["r"].per_minute == 5
        assert config_as_json(config)["api_keys"] == 2

    @pytest.mark.parametrize(
        "options",
        [
            {"nope": 1},
            {"timeout_status": 500},
            {"deployment_error_status": 404},
            {"max_body_bytes": 0},
            {"webhook_time_scale": -1},
        ],
    )
    def test_invalid(self, options: dict) -> None:
        with pytest.raises(ValueError):
            build_config(**options)
