"""The real ``airflow triggerer`` is killed while a task waits for its webhooks, then started again.

A deferred batch task submits its chunks to the local Modelbit server, which holds every webhook
back for a while and then delivers each one twice. Once the trigger runs in the triggerer, the
triggerer's process group gets SIGKILL: no clean shutdown, as in a crash or an evicted pod. The
deliveries arrive at the api-server's receiver while no triggerer runs. A new triggerer then
adopts the orphaned trigger. The task must succeed in its first try, with every chunk submitted
exactly once and the output complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.services.callback_services import (
    CallbackDeployment,
    callback_deployment,
    job_folders,
    wait_until,
    write_table_dag,
)

pytestmark = pytest.mark.services

DAG_ID = "triggerer_restart"
ROWS = 12
CHUNKS = 4
#: Seconds the local Modelbit server holds each webhook back: the triggerer is killed meanwhile.
WEBHOOK_DELAY_SECONDS = 30
#: Seconds after its last heartbeat that a triggerer counts as dead and its triggers are adopted.
HEALTH_CHECK_THRESHOLD_SECONDS = 10

DAG_FILE = """
from __future__ import annotations

import datetime

from airflow.sdk import DAG

from airflow_provider_modelbit.operators import ModelbitBatchInferenceOperator

with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2026, 1, 1), catchup=False):
    score = ModelbitBatchInferenceOperator(
        task_id="score",
        deployment="doubler",
        input_path={input_path!r},
        output_path={output_path!r},
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
class RestartObservations:
    """What the scenario saw before the kill, during the outage and after the restart."""

    first_triggerers: set[str]
    webhook_states_at_kill: list[str]
    delivered_while_down: list[str]
    state_while_down: str | None
    final: str
    try_number: int
    all_triggerers: set[str]
    jobs_after: list[str]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CallbackDeployment]:
    root = tmp_path_factory.mktemp("triggerer-restart")
    table = pa.table({"key": [f"k{i:02d}" for i in range(ROWS)], "x": list(range(ROWS))})
    dags = write_table_dag(root, table, DAG_FILE, dag_id=DAG_ID, batch_size=ROWS // CHUNKS)
    with callback_deployment(
        root,
        dags,
        logs_name="triggerer-restart-logs",
        env={"AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(HEALTH_CHECK_THRESHOLD_SECONDS)},
        faults={"webhook_delay_seconds": WEBHOOK_DELAY_SECONDS, "webhook_duplicate_rate": 1.0},
    ) as deployment:
        yield deployment


def batch_states(deployment: CallbackDeployment) -> list[str]:
    return [batch["state"] for batch in deployment.emulator.client.batches()]


def triggerers_that_started_the_trigger(logs_folder: Path, run_id: str) -> set[str]:
    """
    The triggerer job IDs that started the trigger of the run's task.

    Each triggerer writes the trigger's log to its own ``attempt=<n>.log.trigger.<job id>.log``.
    """
    return {
        path.name.rsplit(".", 2)[-2]
        for path in logs_folder.glob(f"tasks/dag_id={DAG_ID}/run_id={run_id}/**/*.log.trigger.*.log")
        if "starting" in path.read_text(errors="replace")
    }


@pytest.fixture(scope="module")
def observations(deployment: CallbackDeployment) -> RestartObservations:
    client, services = deployment.client, deployment.services
    logs = services.layout.logs_folder

    client.wait_for_dag(DAG_ID, timeout=120)
    run_id = client.trigger_dag_run(DAG_ID)
    client.wait_for_task_state(DAG_ID, run_id, "score", {"deferred"}, timeout=120)

    def started() -> set[str]:
        return triggerers_that_started_the_trigger(logs, run_id)

    wait_until(lambda: bool(started()), timeout=60, describe=lambda: f"no trigger log in {logs}")
    first_triggerers = started()
    states_at_kill = batch_states(deployment)

    services.kill_service("triggerer")
    wait_until(
        lambda: batch_states(deployment) == ["delivered"] * CHUNKS,
        timeout=WEBHOOK_DELAY_SECONDS + 60,
        describe=lambda: f"webhook states {batch_states(deployment)}",
    )
    delivered_while_down = batch_states(deployment)
    state_while_down = client.task_states(DAG_ID, run_id)["score"]

    services.start_service("triggerer")
    final = client.wait_for_dag_run(DAG_ID, run_id, timeout=HEALTH_CHECK_THRESHOLD_SECONDS + 120)
    services.check_still_running()
    (instance,) = client.task_instances(DAG_ID, run_id)
    return RestartObservations(
        first_triggerers=first_triggerers,
        webhook_states_at_kill=states_at_kill,
        delivered_while_down=delivered_while_down,
        state_while_down=state_while_down,
        final=final,
        try_number=instance["try_number"],
        all_triggerers=started(),
        jobs_after=job_folders(deployment.callback_store),
    )


class TestTriggererRestart:
    def test_the_triggerer_was_killed_while_the_trigger_waited(
        self, observations: RestartObservations
    ) -> None:
        """One triggerer ran the trigger before the kill; every webhook reached the receiver after it."""
        assert len(observations.first_triggerers) == 1
        assert "delivered" not in observations.webhook_states_at_kill
        assert observations.delivered_while_down == ["delivered"] * CHUNKS
        assert observations.state_while_down == "deferred"

    def test_a_new_triggerer_adopts_the_trigger_and_the_task_succeeds_in_its_first_try(
        self, observations: RestartObservations, deployment: CallbackDeployment
    ) -> None:
        logs = deployment.services.layout.logs_folder
        assert observations.final == "success", f"logs in {logs}"
        assert len(observations.all_triggerers - observations.first_triggerers) == 1, (
            f"no new triggerer ran the trigger; logs in {logs}"
        )
        assert observations.try_number == 1, "the task was not retried"
        assert observations.jobs_after == [], "the store is cleaned once the task succeeds"

    def test_every_chunk_was_submitted_exactly_once(
        self, observations: RestartObservations, deployment: CallbackDeployment
    ) -> None:
        emulator = deployment.emulator.client
        requests = emulator.requests()
        assert len(requests) == CHUNKS and all(request.get("batchId") for request in requests)
        assert emulator.runs("doubler") == {f"k{row:02d}": 1 for row in range(ROWS)}
        assert all(len(batch["attempts"]) >= 2 for batch in emulator.batches()), "each webhook came twice"

    def test_the_output_is_complete(
        self, observations: RestartObservations, deployment: CallbackDeployment
    ) -> None:
        table = pq.read_table(deployment.output_path)
        assert table.column("key").to_pylist() == [f"k{i:02d}" for i in range(ROWS)]
        assert table.column("result").to_pylist() == [2 * x for x in range(ROWS)]
