"""
Emulator options, workspaces and API-key checks (§2, §12.1 and §12.5).

One server serves several workspaces on one port: the leftmost label of the ``Host`` header picks
a configured workspace, anything else is the default workspace.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_modelbit.emulator.envelope import RequestRejected
from airflow_provider_modelbit.emulator.limits import RateLimit, parse_rate_limits

DEFAULT_WORKSPACE = "default"
DEFAULT_MAX_BODY_BYTES = 32 * 2**20


@dataclass(frozen=True)
class WorkspaceOptions:
    """
    Authentication settings of one workspace.

    :param require_api_keys: reject requests without an ``Authorization`` key.
    :param api_keys: the valid keys; a present key that is not one of them is always rejected.
    """

    require_api_keys: bool = False
    api_keys: frozenset[str] = frozenset()


@dataclass(frozen=True)
class EmulatorConfig:
    """
    Everything an emulator instance can be configured with (``run_emulator`` has the same names).

    :param require_api_keys: the default workspace rejects requests without a key.
    :param api_keys: valid keys of the default workspace.
    :param workspaces: extra workspaces by leftmost Host label.
    :param sort_results_by_id: batch results sorted by ID, as the newest docs say (``False``: request order).
    :param link_expiry_seconds: lifetime of links-mode URLs.
    :param webhook_time_scale: factor on the webhook retry waits.
    :param webhook_timeout_seconds: how long a webhook receiver may take to answer.
    :param allow_http_webhooks: accept ``http://`` webhook URLs.
    :param deployment_error_status: status of deployment exceptions (200, 400 or 500).
    :param timeout_status: status of inference timeouts (200 or 504).
    :param max_body_bytes: larger request bodies get 413.
    :param max_inflight_requests: cap on concurrent inference requests (429 above it).
    :param max_inflight_bytes: cap on body bytes of concurrent requests (429 above it).
    :param rate_limits: named per-minute limits.
    :param deployments_file: a Python file registering extra deployments.
    :param faults: fault settings applied at start and after every reset.
    """

    require_api_keys: bool = False
    api_keys: frozenset[str] = frozenset()
    workspaces: Mapping[str, WorkspaceOptions] = field(default_factory=dict)
    sort_results_by_id: bool = True
    link_expiry_seconds: float = 3600.0
    webhook_time_scale: float = 1.0
    webhook_timeout_seconds: float = 10.0
    allow_http_webhooks: bool = False
    deployment_error_status: int = 200
    timeout_status: int = 200
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_inflight_requests: int | None = None
    max_inflight_bytes: int | None = None
    rate_limits: Mapping[str, RateLimit] = field(default_factory=dict)
    deployments_file: str | None = None
    faults: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_choice("deployment_error_status", self.deployment_error_status, (200, 400, 500))
        _check_choice("timeout_status", self.timeout_status, (200, 504))
        _check_positive("link_expiry_seconds", self.link_expiry_seconds)
        _check_positive("webhook_time_scale", self.webhook_time_scale, allow_zero=True)
        _check_positive("webhook_timeout_seconds", self.webhook_timeout_seconds)
        _check_positive("max_body_bytes", self.max_body_bytes)

    @property
    def default_workspace(self) -> WorkspaceOptions:
        return WorkspaceOptions(self.require_api_keys, self.api_keys)


def _check_choice(name: str, value: object, allowed: tuple[int, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        raise ValueError(f"{name} must be a positive number, got {value!r}.")


def _workspace_options(value: WorkspaceOptions | Mapping[str, Any]) -> WorkspaceOptions:
    if isinstance(value, WorkspaceOptions):
        return value
    return WorkspaceOptions(bool(value.get("require_api_keys", False)), frozenset(value.get("api_keys", ())))


def _normalise(name: str, value: Any) -> Any:
    """Turn JSON-friendly option values (lists, dicts) into the config's types."""
    if name == "api_keys":
        return frozenset([value] if isinstance(value, str) else value)
    if name == "workspaces":
        return {label: _workspace_options(options) for label, options in (value or {}).items()}
    if name == "rate_limits":
        return parse_rate_limits(value)
    return value


def build_config(base: EmulatorConfig | None = None, **options: Any) -> EmulatorConfig:
    """A config from keyword options (the names of :class:`EmulatorConfig`), validated."""
    known = {option.name for option in dataclasses.fields(EmulatorConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"Unknown emulator option(s) {unknown}; known options: {sorted(known)}.")
    changes = {name: _normalise(name, value) for name, value in options.items()}
    return dataclasses.replace(base or EmulatorConfig(), **changes)


def config_as_json(config: EmulatorConfig) -> dict[str, Any]:
    """The config as plain JSON values, API keys masked."""
    return {
        "require_api_keys": config.require_api_keys,
        "api_keys": len(config.api_keys),
        "workspaces": {
            name: {"require_api_keys": o.require_api_keys} for name, o in config.workspaces.items()
        },
        **{
            name: getattr(config, name)
            for name in (
                "sort_results_by_id",
                "link_expiry_seconds",
                "webhook_time_scale",
                "webhook_timeout_seconds",
                "allow_http_webhooks",
                "deployment_error_status",
                "timeout_status",
                "max_body_bytes",
                "max_inflight_requests",
                "max_inflight_bytes",
                "deployments_file",
            )
        },
        "rate_limits": {name: limit.as_json() for name, limit in config.rate_limits.items()},
    }


def workspace_for_host(config: EmulatorConfig, host: str | None) -> tuple[str, WorkspaceOptions]:
    """The workspace a ``Host`` header selects: its leftmost label if configured, else the default."""
    label = (host or "").split(":", 1)[0].split(".", 1)[0].lower()
    if label in config.workspaces:
        return label, config.workspaces[label]
    return DEFAULT_WORKSPACE, config.default_workspace


def check_api_key(options: WorkspaceOptions, authorization: str | None) -> None:
    """Reject a present-but-unknown key always, and a missing key when keys are required (401)."""
    if authorization is None or authorization == "":
        if options.require_api_keys:
            raise RequestRejected(
                401, "API key required: send your workspace API key in the Authorization header."
            )
        return
    if authorization not in options.api_keys:
        raise RequestRejected(
            401,
            "Invalid API key: the Authorization header must hold a valid key of this workspace, "
            "with no scheme.",
        )
