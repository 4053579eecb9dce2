"""Async-callback mode end to end on the real Airflow services and the local Modelbit server.

The api-server (with the provider's plugin mounting the callback receiver at ``/modelbit``),
scheduler, triggerer and dag-processor run as separate processes on 127.0.0.1, with a single
worker slot (``parallelism = 1``). The local Modelbit server runs in its own process and posts
its webhooks to the api-server. A deferred task must wait in the triggerer without its slot —
another DAG's task runs meanwhile — and succeed once the delivery arrives.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.services.callback_services import (
    DELIVERY_DELAY_SECONDS,
    CallbackDeployment,
    callback_deployment,
    job_folders,
    write_table_dag,
)

pytestmark = pytest.mark.services

#: Seconds the ``sleeper`` deployment runs: the window in which the task must be seen deferred.
MODEL_SECONDS = 25
ROWS = 10

DAG_FILE = """
from __future__ import annotations

import datetime

from airflow.sdk import DAG, task

from airflow_provider_modelbit.operators import ModelbitBatchInferenceOperator, ModelbitInferenceOperator

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

with DAG("e2e_async_callback", schedule=None, start_date=START, catchup=False):
    score_table = ModelbitBatchInferenceOperator(
        task_id="score_table",
        deployment="doubler",
        input_path={input_path!r},
        output_path={output_path!r},
        id_column="key",
        columns=["x"],
        argument_style="positional",
        batch_size=4,
        response_format="links",
        deferrable=True,
        retries=0,
        callback_poll_interval=1.0,
    )
    slow_model = ModelbitInferenceOperator(
        task_id="slow_model",
        deployment="sleeper",
        data={model_seconds},
        timeout_seconds=120,
        deferrable=True,
        retries=0,
        callback_poll_interval=1.0,
    )
    score_table >> slow_model

with DAG("e2e_free_slot", schedule=None, start_date=START, catchup=False):

    @task(retries=0)
    def runs_while_the_model_works() -> str:
        return "ran"

    runs_while_the_model_works()
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CallbackDeployment]:
    """Start the local Modelbit server and the Airflow services wired to each other through webhooks."""
    root = tmp_path_factory.mktemp("async-callback-e2e")
    table = pa.table({"key": [f"k{ROWS - i:02d}" for i in range(ROWS)], "x": list(range(ROWS))})
    dags = write_table_dag(root, table, DAG_FILE, model_seconds=MODEL_SECONDS)
    faults = {"webhook_delay_seconds": DELIVERY_DELAY_SECONDS}
    with callback_deployment(root, dags, logs_name="async-callback-logs", faults=faults) as deployment:
        yield deployment


@dataclass
class RunObservations:
    """What the scenario saw: task states at each step and the callback store's job folders."""

    while_deferred: dict[str, str | None]
    jobs_while_deferred: list[str]
    free_slot_run: str
    slow_model_after_free_slot: str | None
    final: str
    final_states: dict[str, str | None]
    jobs_after: list[str]


@pytest.fixture(scope="module")
def observations(deployment: CallbackDeployment) -> RunObservations:
    """
    Run the scenario once: score the table, then the slow model; while the model runs, run another DAG.

    With ``parallelism = 1``, the other DAG's task can only run if the deferred task gave its slot back.
    """
    client = deployment.client
    for dag_id in ("e2e_async_callback", "e2e_free_slot"):
        client.wait_for_dag(dag_id, timeout=120)
    run_id = client.trigger_dag_run("e2e_async_callback")
    client.wait_for_task_state("e2e_async_callback", run_id, "slow_model", {"deferred"}, timeout=120)
    while_deferred = client.task_states("e2e_async_callback", run_id)
    jobs_while_deferred = job_folders(deployment.callback_store)
    other_run = client.trigger_dag_run("e2e_free_slot")
    free_slot_run = client.wait_for_dag_run("e2e_free_slot", other_run, timeout=MODEL_SECONDS)
    slow_model_after = client.task_states("e2e_async_callback", run_id)["slow_model"]
    final = client.wait_for_dag_run("e2e_async_callback", run_id, timeout=MODEL_SECONDS + 120)
    deployment.services.check_still_running()
    return RunObservations(
        while_deferred=while_deferred,
        jobs_while_deferred=jobs_while_deferred,
        free_slot_run=free_slot_run,
        slow_model_after_free_slot=slow_model_after,
        final=final,
        final_states=client.task_states("e2e_async_callback", run_id),
        jobs_after=job_folders(deployment.callback_store),
    )


class TestAsyncCallbackOnAirflowServices:
    def test_the_task_waits_deferred_while_the_model_runs(self, observations: RunObservations) -> None:
        """The batch task finished through its own webhooks; the slow one waits with its job in the store."""
        assert observations.while_deferred == {"score_table": "success", "slow_model": "deferred"}
        assert len(observations.jobs_while_deferred) == 1

    def test_no_worker_slot_is_held_while_deferred(self, observations: RunObservations) -> None:
        """parallelism is 1, yet another DAG's task runs to success while the model still works."""
        assert observations.free_slot_run == "success"
        assert observations.slow_model_after_free_slot == "deferred"

    def test_the_task_succeeds_after_the_delivery(
        self, observations: RunObservations, deployment: CallbackDeployment
    ) -> None:
        assert observations.final == "success", (
            f"{observations.final_states}; logs in {deployment.services.layout.logs_folder}"
        )
        assert observations.jobs_after == [], "the store is cleaned once the task succeeds"

    def test_every_answer_came_through_a_webhook_to_the_api_server(
        self, observations: RunObservations, deployment: CallbackDeployment
    ) -> None:
        """The model ran only asynchronously, and the plugin's receiver accepted each webhook."""
        batches = deployment.emulator.client.batches()
        assert len(batches) == 4, "three chunks of the table (4 + 4 + 2 rows) and the slow model"
        receiver = f"{deployment.services.api_url}/modelbit/v1/callbacks/modelbit_default/"
        for batch in batches:
            assert batch["state"] == "delivered", batch
            assert batch["webhook_url"].startswith(receiver)
            assert batch["attempts"][-1]["status"] == 200
        requests = deployment.emulator.client.requests()
        assert len(requests) == 4 and all(request.get("batchId") for request in requests), (
            "every inference request was an async submission"
        )

    def test_the_table_output_follows_the_input(
        self, observations: RunObservations, deployment: CallbackDeployment
    ) -> None:
        table = pq.read_table(deployment.output_path)
        assert table.column("key").to_pylist() == [f"k{ROWS - i:02d}" for i in range(ROWS)]
        assert table.column("result").to_pylist() == [2 * x for x in range(ROWS)]
