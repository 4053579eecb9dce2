"""A small client for the Airflow 3 REST API (``/api/v2``), for tests that drive real services.

It authenticates with the token SimpleAuthManager issues when every user is admin
(``GET /auth/token``), and covers what end-to-end tests need: trigger a DAG run and wait
for it, read task-instance states (e.g. see a task ``deferred``), fetch task logs, list
plugins and manage connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import httpx

TERMINAL_RUN_STATES = frozenset({"success", "failed"})
TERMINAL_TASK_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


class AirflowRestError(RuntimeError):
    """A REST call failed or a wait ran out of time; the message says which DAG, run or task."""


def log_entry_text(entry: Any) -> str:
    """One line of a structured log entry: its level and event, and the exception when there is one."""
    if not isinstance(entry, Mapping):
        return str(entry)
    line = f"[{entry.get('level', '')}] {entry.get('event', '')}"
    if entry.get("error_detail"):
        line += f" {entry['error_detail']}"
    return line


class AirflowRestClient:
    """Calls the api-server's public REST API as the all-admin user.

    :param api_url: base URL of the api-server, e.g. ``http://127.0.0.1:8080``.
    :param timeout: seconds allowed for each HTTP request.
    """

    def __init__(self, api_url: str, *, timeout: float = 30.0) -> None:
        self.api_url = api_url.rstrip("/")
        self._http = httpx.Client(base_url=self.api_url, timeout=timeout)
        self._token: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AirflowRestClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def token(self) -> str:
        """A JWT for the API; SimpleAuthManager hands one out without credentials when all are admins."""
        if self._token is None:
            response = self._http.get("/auth/token")
            self._raise_for_status(response, "get an API token from /auth/token")
            self._token = str(response.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, *, what: str, **kwargs: Any) -> httpx.Response:
        """Send an authenticated request to ``/api/v2<path>``; ``what`` names the action in errors."""
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        response = self._http.request(method, f"/api/v2{path}", headers=headers, **kwargs)
        self._raise_for_status(response, what)
        return response

    def health(self) -> dict[str, Any]:
        """The ``/api/v2/monitor/health`` document (metadatabase, scheduler, triggerer, dag_processor)."""
        return dict(self.request("GET", "/monitor/health", what="read health").json())

    def plugins(self) -> list[dict[str, Any]]:
        """Plugins the api-server loaded, with their FastAPI apps and other parts."""
        return list(self.request("GET", "/plugins", what="list plugins").json()["plugins"])

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id``; fail with the import errors if any."""
        found: dict[str, Any] = {}

        def parsed() -> bool:
            response = self._http.get(f"/api/v2/dags/{dag_id}", headers=self._auth())
            if response.status_code == 200:
                found.update(response.json())
            return bool(found)

        self._wait(parsed, timeout, lambda: f"DAG {dag_id!r} was not parsed; {self._import_errors_summary()}")
        return found

    def trigger_dag_run(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Unpause ``dag_id`` and start a manual run; return its run id."""
        self.request("PATCH", f"/dags/{dag_id}", what=f"unpause DAG {dag_id!r}", json={"is_paused": False})
        response = self.request(
            "POST",
            f"/dags/{dag_id}/dagRuns",
            what=f"trigger DAG {dag_id!r}",
            json={"logical_date": None, "conf": dict(conf or {})},
        )
        return str(response.json()["dag_run_id"])

    def dag_run_state(self, dag_id: str, run_id: str) -> str:
        response = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}", what=f"read run {run_id!r}")
        return str(response.json()["state"])

    def wait_for_dag_run(self, dag_id: str, run_id: str, timeout: float = 300.0) -> str:
        """Wait until the run is ``success`` or ``failed`` and return that state."""
        state = ""

        def finished() -> bool:
            nonlocal state
            state = self.dag_run_state(dag_id, run_id)
            return state in TERMINAL_RUN_STATES

        self._wait(
            finished,
            timeout,
            lambda: f"DAG run {dag_id}/{run_id} still {state!r}; tasks: {self.task_states(dag_id, run_id)}",
        )
        return state

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        return list(
            self.request("GET", path, what=f"list tasks of {dag_id}/{run_id}").json()["task_instances"]
        )

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """``{task_id: state}``; mapped tasks appear as ``task_id[map_index]``."""
        states: dict[str, str | None] = {}
        for instance in self.task_instances(dag_id, run_id):
            index = instance.get("map_index", -1)
            key = instance["task_id"] if index == -1 else f"{instance['task_id']}[{index}]"
            states[key] = instance["state"]
        return states

    def wait_for_task_state(
        self, dag_id: str, run_id: str, task_id: str, states: Collection[str], timeout: float = 120.0
    ) -> str:
        """Wait until ``task_id`` reaches one of ``states`` (e.g. ``{"deferred"}``); return the state."""
        seen: str | None = None

        def reached() -> bool:
            nonlocal seen
            seen = self.task_states(dag_id, run_id).get(task_id)
            return seen in states

        self._wait(
            reached, timeout, lambda: f"task {dag_id}/{run_id}/{task_id} is {seen!r}, wanted one of {states}"
        )
        return str(seen)

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        """The task's log for one try, as plain text lines."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        response = self.request(
            "GET",
            path,
            what=f"read the log of {dag_id}/{run_id}/{task_id} try {try_number}",
            params={"map_index": map_index, "full_content": True},
            headers={"Accept": "application/json"},
        )
        return "\n".join(log_entry_text(entry) for entry in response.json().get("content", []))

    def upsert_connection(self, connection: Mapping[str, Any]) -> None:
        """Create the connection, replacing one with the same ``connection_id``."""
        conn_id = connection["connection_id"]
        existing = self._http.get(f"/api/v2/connections/{conn_id}", headers=self._auth())
        if existing.status_code == 200:
            self.request("DELETE", f"/connections/{conn_id}", what=f"delete connection {conn_id!r}")
        self.request("POST", "/connections", what=f"create connection {conn_id!r}", json=dict(connection))

    def get_connection(self, conn_id: str) -> dict[str, Any]:
        return dict(
            self.request("GET", f"/connections/{conn_id}", what=f"read connection {conn_id!r}").json()
        )

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def _import_errors_summary(self) -> str:
        errors = self.request("GET", "/importErrors", what="list import errors").json()["import_errors"]
        if not errors:
            return "no import errors were reported"
        return "import errors: " + "; ".join(f"{e['filename']}: {e['stack_trace'][-400:]}" for e in errors)

    @staticmethod
    def _wait(done: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AirflowRestError(f"Timed out after {timeout:.0f}s: {describe()}")
            time.sleep(0.5)

    @staticmethod
    def _raise_for_status(response: httpx.Response, what: str) -> None:
        if response.is_success:
            return
        raise AirflowRestError(
            f"Could not {what}: {response.request.method} {response.request.url.path} "
            f"answered {response.status_code}: {response.text[:1000]}"
        )
