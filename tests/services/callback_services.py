"""
The Airflow services and the local Modelbit server wired together through webhooks.

The local Modelbit server runs in its own process and posts its webhooks to the api-server, where
the provider's plugin mounts the callback receiver at ``/modelbit``; the scheduler, triggerer and
dag-processor share the callback store. Used by the service tests of async-callback mode.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import airflow_services
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow_rest import AirflowRestClient
from airflow_services import AirflowServices

from airflow_provider_modelbit.emulator.server import RunningEmulator, run_emulator

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
SECRET = "e2e-callback-secret-7f3a9c"
#: Seconds webhooks are held back. On a busy machine the scheduler may read the executor's report of
#: a deferring worker process only after the task resumed, and then fail the resumed try (Airflow's
#: stale defer-exit event, apache/airflow#72716); deliveries a few seconds late keep a scenario clear
#: of that race.
DELIVERY_DELAY_SECONDS = 8


@dataclass
class CallbackDeployment:
    """The running services, the local Modelbit server and the folder of their shared files."""

    services: AirflowServices
    client: AirflowRestClient
    emulator: RunningEmulator
    root: Path

    @property
    def callback_store(self) -> Path:
        return self.root / "callbacks"

    @property
    def output_path(self) -> Path:
        """Where the DAGs of :func:`write_table_dag` write their scores."""
        return self.root / "out" / "scores.parquet"


def write_table_dag(root: Path, table: pa.Table, dag_source: str, **fields: Any) -> Path:
    """
    Write ``table`` as the input Parquet file and a DAG file scoring it; return the DAGs folder.

    :param dag_source: the DAG file's text, formatted with ``input_path``, ``output_path`` and ``fields``.
    """
    input_path, output_path = root / "input.parquet", root / "out" / "scores.parquet"
    pq.write_table(table, input_path)
    dags = root / "dags"
    dags.mkdir()
    source = dag_source.format(input_path=str(input_path), output_path=str(output_path), **fields)
    (dags / "dag.py").write_text(source)
    return dags


@contextmanager
def callback_deployment(
    root: Path,
    dags: Path,
    *,
    logs_name: str,
    env: Mapping[str, str] | None = None,
    faults: Mapping[str, Any] | None = None,
) -> Iterator[CallbackDeployment]:
    """
    Start the local Modelbit server, then the Airflow services with a webhook URL on the api-server.

    :param root: folder for the callback store (and the files of :func:`write_table_dag`).
    :param dags: the DAGs folder.
    :param logs_name: the services' logs go to ``artifacts/services/<logs_name>``.
    :param env: extra Airflow environment for every service.
    :param faults: fault settings for the local Modelbit server (``EmulatorClient.set_faults``).
    """
    # The callback URL names the api-server's port, so it is chosen before the services start.
    api_port = airflow_services.free_port()
    api_url = f"http://{airflow_services.LOOPBACK}:{api_port}"
    with (
        run_emulator(mode="process", allow_http_webhooks=True, sort_results_by_id=True) as emulator,
        pytest.MonkeyPatch.context() as patch,
    ):
        if faults:
            emulator.client.set_faults(**faults)
        patch.setattr(airflow_services, "free_port", lambda: api_port)
        service_env = services_environment(emulator.url, f"{api_url}/modelbit", root / "callbacks")
        with AirflowServices(
            dags_folder=dags,
            env={**service_env, **(env or {})},
            logs_folder=ARTIFACTS / "services" / logs_name,
            database_cache=ARTIFACTS / "cache",
        ) as services:
            assert services.api_url == api_url
            with services.rest_client() as client:
                yield CallbackDeployment(services, client, emulator, root)


def services_environment(emulator_url: str, callback_base_url: str, callback_store: Path) -> dict[str, str]:
    """One worker slot, the shared callback store, and the Modelbit connection for every service."""
    connection = {
        "conn_type": "modelbit",
        "host": emulator_url,
        "extra": {"callback_base_url": callback_base_url, "callback_secret": SECRET},
    }
    return {
        "AIRFLOW__CORE__PARALLELISM": "1",
        "AIRFLOW__MODELBIT__CALLBACK_STORE": str(callback_store),
        "AIRFLOW_CONN_MODELBIT_DEFAULT": json.dumps(connection),
    }


def wait_until(condition: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> None:
    """Poll ``condition`` every half second; fail with ``describe()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:.0f} s: {describe()}")
        time.sleep(0.5)


def trigger_running(deployment: CallbackDeployment, dag_id: str, run_id: str, task_id: str = "score") -> bool:
    """Whether a triggerer has started the trigger of the task's first try (its trigger log says so)."""
    task_logs = deployment.services.layout.logs_folder / "tasks" / f"dag_id={dag_id}" / f"run_id={run_id}"
    trigger_logs = (task_logs / f"task_id={task_id}").glob("attempt=1.log.trigger.*.log")
    return any("starting" in log.read_text(errors="replace") for log in trigger_logs)


def job_folders(store: Path) -> list[str]:
    """
    The job folders in the callback store (a job's folder is removed once its task succeeds).

    ``_retired`` (the tombstones of retired jobs) is not a job folder: no job id starts with ``_``.
    """
    if not store.exists():
        return []
    return sorted(path.name for path in store.iterdir() if not path.name.startswith("_"))
