"""``EmulatorClient``: the ``/_emulator/`` inspection and control routes from Python, over HTTP."""

from __future__ import annotations

from typing import Any

import httpx

CLIENT_TIMEOUT_SECONDS = 30.0


class EmulatorClientError(RuntimeError):
    """An ``/_emulator/`` route refused a request (bad option, unknown batch, ...)."""


class EmulatorClient:
    """
    Talks to a running emulator's ``/_emulator/`` routes; works with any emulator, CLI-started too.

    :param base_url: the emulator's base URL, e.g. ``http://127.0.0.1:8765``.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url + "/_emulator", timeout=CLIENT_TIMEOUT_SECONDS, trust_env=False
        )

    def _call(self, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, route, json=body)
        if response.status_code >= 400:
            raise EmulatorClientError(
                f"Emulator route {method} /_emulator{route} answered {response.status_code}: "
                f"{response.text[:500]}"
            )
        return response.json()

    def set_faults(
        self,
        *,
        error_rate: float = 0.0,
        error_statuses: tuple[int, ...] = (503,),
        rate_429: float = 0.0,
        retry_after: int = 1,
        drop_before_rate: float = 0.0,
        drop_after_rate: float = 0.0,
        latency_seconds: float = 0.0,
        model_seconds: float = 0.0,
        model_seconds_per_row: float = 0.0,
        truncate_link_rate: float = 0.0,
        truncate_link_first: int = 0,
        webhook_duplicate_rate: float = 0.0,
        webhook_delay_seconds: float = 0.0,
        webhook_reorder: bool = False,
        deployment: str | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Replace the fault settings of ``deployment`` (or the global ones); returns all settings."""
        settings = {name: value for name, value in locals().items() if name != "self"}
        settings["error_statuses"] = list(error_statuses)
        return self._call("PUT", "/faults/settings", settings)

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults/settings")

    def fault_settings(self) -> dict[str, Any]:
        return self._call("GET", "/faults/settings")

    def configure(self, **options: Any) -> dict[str, Any]:
        """Change emulator options at run time (the keyword names of ``run_emulator``)."""
        if "api_keys" in options:
            options["api_keys"] = list(options["api_keys"])
        return self._call("POST", "/config", options)

    def config(self) -> dict[str, Any]:
        return self._call("GET", "/config")

    def reset(self) -> None:
        """Forget recorded requests, runs, batches, faults and links; restore start-up options."""
        self._call("POST", "/reset")

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def requests(self) -> list[dict[str, Any]]:
        return self._call("GET", "/requests")

    def runs(self, deployment: str) -> dict[str, int]:
        """``{str(row ID): times the model ran it}`` for batch rows of ``deployment``."""
        return self._call("GET", f"/runs/{deployment}")

    def batches(self) -> list[dict[str, Any]]:
        """Async batches, each with its state, result kind and webhook attempts."""
        return self._call("GET", "/batches")

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._call("GET", f"/batches/{batch_id}")

    def faults(self) -> list[dict[str, Any]]:
        """Each injected fault: ``kind``, ``path``, ``deployment``, ``time``."""
        return self._call("GET", "/faults")

    def fault_counts(self) -> dict[str, int]:
        return self._call("GET", "/faults/counts")

    def deployments(self) -> list[dict[str, Any]]:
        return self._call("GET", "/deployments")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EmulatorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
