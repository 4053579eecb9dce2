"""Reading a Modelbit Connection (hooks/settings.py), in both URI and JSON forms."""

from __future__ import annotations

import pytest
from airflow.sdk import BaseHook

from airflow_provider_modelbit.exceptions import ModelbitConnectionError
from airflow_provider_modelbit.hooks.settings import ModelbitSettings, settings_from_connection, workspace_url

KEY = "mi1a2b3c:Zx9/Yw8+Vu7="


def _settings(conn_id: str = "modelbit_default") -> ModelbitSettings:
    return settings_from_connection(BaseHook.get_connection(conn_id), conn_id)


class TestWorkspaceUrl:
    @pytest.mark.parametrize(
        ("workspace", "region", "outpost", "url"),
        [
            ("acme", "us-east-2.aws", None, "https://acme.us-east-2.aws.modelbit.com"),
            ("acme", "app", None, "https://acme.app.modelbit.com"),
            ("acme", "us-east-1.aws", "op1", "https://acme.op1.us-east-1.aws.modelbit.com"),
        ],
    )
    def test_built_as_modelbit_names_hosts(
        self, workspace: str, region: str, outpost: str | None, url: str
    ) -> None:
        assert workspace_url(workspace, region, outpost) == url


class TestSettingsFromConnection:
    @pytest.mark.parametrize("form", ["uri", "json"])
    def test_local_server_url_with_key(self, modelbit_connection, form: str) -> None:
        """Both connection forms reach a plain-http local server and keep the key intact."""
        if form == "uri":
            modelbit_connection(
                host="127.0.0.1", port=8080, password=KEY, extra={"scheme": "http"}, form="uri"
            )
        else:
            modelbit_connection(host="http://127.0.0.1:8080", password=KEY)
        settings = _settings()
        assert settings.base_url == "http://127.0.0.1:8080"
        assert settings.api_key == KEY

    @pytest.mark.parametrize(
        ("host", "port", "extra", "url"),
        [
            ("acme.us-east-2.aws.modelbit.com", None, {}, "https://acme.us-east-2.aws.modelbit.com"),
            ("https://acme.app.modelbit.com/", None, {}, "https://acme.app.modelbit.com"),
            ("http://localhost", 9000, {}, "http://localhost:9000"),
            ("localhost", 9000, {"scheme": "http"}, "http://localhost:9000"),
            (
                "",
                None,
                {"workspace": "acme", "region": "us-east-2.aws"},
                "https://acme.us-east-2.aws.modelbit.com",
            ),
            (
                "",
                None,
                {"workspace": "acme", "region": "ap-south-1", "outpost": "op"},
                "https://acme.op.ap-south-1.modelbit.com",
            ),
        ],
    )
    def test_base_url_forms(
        self, modelbit_connection, host: str, port: int | None, extra: dict, url: str
    ) -> None:
        modelbit_connection(host=host, port=port, extra=extra)
        assert _settings().base_url == url

    def test_extras_are_read(self, modelbit_connection) -> None:
        modelbit_connection(
            host="http://127.0.0.1:1",
            extra={
                "branch": "feature/x",
                "timeout_seconds": "120",
                "callback_base_url": "https://airflow.example.com/modelbit",
                "callback_secret": "a-very-long-signing-secret",
            },
        )
        settings = _settings()
        assert (settings.branch, settings.timeout_seconds) == ("feature/x", 120)
        assert settings.callback_base_url == "https://airflow.example.com/modelbit"
        assert settings.callback_secret == "a-very-long-signing-secret"

    def test_defaults(self, modelbit_connection) -> None:
        modelbit_connection(host="http://127.0.0.1:1")
        settings = _settings()
        assert (settings.branch, settings.timeout_seconds, settings.api_key) == ("main", None, None)

    @pytest.mark.parametrize(
        ("host", "extra", "match"),
        [
            ("", {}, "has no workspace URL: set Host"),
            ("", {"workspace": "acme"}, "has no workspace URL"),
            ("ftp://files.example.com", {}, "unusable workspace URL"),
            ("http://", {}, "unusable workspace URL"),
            ("http://127.0.0.1:1", {"timeout_seconds": "soon"}, "timeout_seconds='soon'"),
            ("http://127.0.0.1:1", {"timeout_seconds": 901}, r"timeout_seconds=901; set .* \(1-900\)"),
        ],
    )
    def test_unusable_connection_says_which_and_what_to_set(
        self, modelbit_connection, host: str, extra: dict, match: str
    ) -> None:
        modelbit_connection(host=host, extra=extra, conn_id="broken_modelbit")
        with pytest.raises(ModelbitConnectionError, match=match) as caught:
            _settings("broken_modelbit")
        assert "'broken_modelbit'" in caught.value.message


class TestSettingsRepr:
    def test_secrets_are_hidden(self) -> None:
        settings = ModelbitSettings("c", "https://x", api_key=KEY, callback_secret="signing-secret-123")
        text = repr(settings) + str(settings)
        assert KEY not in text
        assert "signing-secret-123" not in text
        assert "api_key='***'" in text
