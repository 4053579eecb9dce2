"""The callback store is unreachable for 30 s while deferred tasks wait on it.

Two deferred batch tasks submit their chunks to the local Modelbit server, which holds every
webhook back until after the outage. While both triggers wait, the store's folder is moved away
and a plain file put in its place, so every look the triggerer takes fails with an OS error.
After 30 s the folder comes back. The triggerer's watcher must have logged the failures, kept
both waits alive, and found the deliveries once the store answered: both tasks succeed in their
first try, each chunk was submitted once, and the outputs are a clean run's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.services.callback_services import (
    CallbackDeployment,
    callback_deployment,
    wait_until,
    write_table_dag,
)

pytestmark = pytest.mark.services

DAG_ID = "store_outage"
TASKS = ("score_a", "score_b")
ROWS = 8
CHUNKS = 2
OUTAGE_SECONDS = 30
#: The webhooks are held back past the outage, so they arrive once the store is back.
WEBHOOK_DELAY_SECONDS = OUTAGE_SECONDS + 30
FAILURE_LOG = "Could not read callback store"

DAG_FILE = """
from __future__ import annotations

import datetime

from airflow.sdk import DAG

from airflow_provider_modelbit.operators import ModelbitBatchInferenceOperator

with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2026, 1, 1), catchup=False):
    for task_id in {tasks!r}:
        ModelbitBatchInferenceOperator(
            task_id=task_id,
            deployment="doubler",
            input_path={input_path!r},
            output_path={output_path!r}.replace("scores.parquet", task_id + ".parquet"),
            id_column="key",
            columns=["x"],
            argument_style="positional",
            batch_size={batch_size},
            deferrable=True,
            retries=0,
            callback_poll_interval=1.0,
        )
"""


@dataclass
class OutageObservations:
    """What the scenario saw when the store went away and once the run ended."""

    states_at_outage: dict[str, str | None]
    webhook_states_at_outage: list[str]
    failures_logged: bool
    final: str
    try_numbers: dict[str, int]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CallbackDeployment]:
    root = tmp_path_factory.mktemp("store-outage")
    table = pa.table({"key": [f"k{i:02d}" for i in range(ROWS)], "x": list(range(ROWS))})
    dags = write_table_dag(root, table, DAG_FILE, dag_id=DAG_ID, tasks=TASKS, batch_size=ROWS // CHUNKS)
    with callback_deployment(
        root, dags, logs_name="store-outage-logs", faults={"webhook_delay_seconds": WEBHOOK_DELAY_SECONDS}
    ) as deployment:
        yield deployment


def _logged_failures(logs: Path) -> bool:
    return any(
        FAILURE_LOG in path.read_text(errors="replace") for path in logs.rglob("*.log") if path.is_file()
    )


@pytest.fixture(scope="module")
def observations(deployment: CallbackDeployment) -> OutageObservations:
    client, logs = deployment.client, deployment.services.layout.logs_folder
    client.wait_for_dag(DAG_ID, timeout=120)
    run_id = client.trigger_dag_run(DAG_ID)
    for task_id in TASKS:
        client.wait_for_task_state(DAG_ID, run_id, task_id, {"deferred"}, timeout=180)

    store, away = deployment.callback_store, deployment.callback_store.with_name("callbacks-away")
    states_at_outage = client.task_states(DAG_ID, run_id)
    webhook_states = [batch["state"] for batch in deployment.emulator.client.batches()]
    store.rename(away)
    store.write_text("the callback store is unreachable\n")  # every listing below it now fails
    outage_ends = time.monotonic() + OUTAGE_SECONDS
    try:
        wait_until(
            lambda: _logged_failures(logs) and time.monotonic() >= outage_ends,
            timeout=OUTAGE_SECONDS + 60,
            describe=lambda: f"no {FAILURE_LOG!r} in the logs under {logs}",
        )
        failures_logged = True
    finally:
        store.unlink()
        away.rename(store)

    final = client.wait_for_dag_run(DAG_ID, run_id, timeout=WEBHOOK_DELAY_SECONDS + 180)
    deployment.services.check_still_running()
    try_numbers = {ti["task_id"]: ti["try_number"] for ti in client.task_instances(DAG_ID, run_id)}
    return OutageObservations(states_at_outage, webhook_states, failures_logged, final, try_numbers)


class TestStoreOutage:
    def test_the_store_went_away_while_both_tasks_waited(self, observations: OutageObservations) -> None:
        assert {task: observations.states_at_outage[task] for task in TASKS} == dict.fromkeys(
            TASKS, "deferred"
        )
        assert "delivered" not in observations.webhook_states_at_outage
        assert observations.failures_logged

    def test_every_task_succeeds_in_its_first_try(self, observations: OutageObservations) -> None:
        assert observations.final == "success"
        assert observations.try_numbers == dict.fromkeys(TASKS, 1)

    def test_each_chunk_was_submitted_once_and_the_outputs_are_a_clean_runs(
        self, observations: OutageObservations, deployment: CallbackDeployment
    ) -> None:
        emulator = deployment.emulator.client
        assert len(emulator.requests()) == len(TASKS) * CHUNKS
        assert emulator.runs("doubler") == {f"k{row:02d}": len(TASKS) for row in range(ROWS)}
        for task_id in TASKS:
            table = pq.read_table(deployment.output_path.with_name(f"{task_id}.parquet"))
            assert table.column("key").to_pylist() == [f"k{i:02d}" for i in range(ROWS)]
            assert table.column("result").to_pylist() == [2 * x for x in range(ROWS)]
