"""A deferred task's callback job over the task instance's life, on the real Airflow services.

The api-server (receiver mounted at ``/modelbit``), scheduler, triggerer and dag-processor run
against the local Modelbit server, as a user would run them: tasks are marked failed while
deferred, cleared after their input changed, retried, timed out by ``execution_timeout``, and
resumed after their results links expired. Each scenario counts the model's runs through the
local server's inspection routes and checks the output holds only what the last try asked.
One services stack serves every scenario of the module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow_rest import AirflowRestClient

from airflow_provider_modelbit.callbacks.job import job_id_for_try, task_job_prefix
from airflow_provider_modelbit.callbacks.store import CallbackStore
from tests.services.callback_services import (
    DELIVERY_DELAY_SECONDS,
    CallbackDeployment,
    callback_deployment,
    trigger_running,
    wait_until,
)

pytestmark = pytest.mark.services

#: Seconds the ``sleeper`` deployment runs in the execution_timeout scenario, far past the timeout.
SLEEP_SECONDS = 85
EXECUTION_TIMEOUT_SECONDS = 60

DAG_FILE = """
from __future__ import annotations

import datetime
import json

from airflow.sdk import DAG, task

from airflow_provider_modelbit.operators import ModelbitBatchInferenceOperator, ModelbitInferenceOperator

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
FAST = {{"callback_poll_interval": 1.0, "callback_delivery_margin": 30}}

with DAG("job_marked_failed", schedule=None, start_date=START, catchup=False):
    ModelbitBatchInferenceOperator(
        task_id="score", deployment="doubler", input_path={root!r} + "/marked/input.parquet",
        output_path={root!r} + "/marked/scores.parquet", id_column="key", columns=["x"],
        argument_style="positional", batch_size=5, deferrable=True, retries=0, **FAST,
    )

with DAG("job_failed_on_resume", schedule=None, start_date=START, catchup=False):

    @task(retries=0)
    def read_input() -> list:
        with open({root!r} + "/resume/input.json") as source:
            return json.load(source)

    ModelbitInferenceOperator(
        task_id="score", deployment="echo", data=read_input(), max_xcom_bytes=100,
        deferrable=True, retries=0, **FAST,
    )

with DAG("job_always_raises", schedule=None, start_date=START, catchup=False):
    ModelbitInferenceOperator(
        task_id="score", deployment="raiser", data=[[1, 7]], idempotent=False, deferrable=True,
        retries=2, retry_delay=datetime.timedelta(seconds=1), **FAST,
    )

with DAG("job_execution_timeout", schedule=None, start_date=START, catchup=False):
    ModelbitInferenceOperator(
        task_id="score", deployment="sleeper", data=[[1, {sleep_seconds}]], timeout_seconds=300,
        execution_timeout=datetime.timedelta(seconds={execution_timeout}), deferrable=True, retries=0, **FAST,
    )

with DAG("job_links_expired", schedule=None, start_date=START, catchup=False):
    ModelbitBatchInferenceOperator(
        task_id="score", deployment="doubler", input_path={root!r} + "/links/input.parquet",
        output_path={root!r} + "/links/scores.parquet", id_column="key", columns=["x"],
        argument_style="positional", batch_size=3, response_format="links", deferrable=True,
        retries=0, **FAST,
    )
"""

DAG_IDS = (
    "job_marked_failed",
    "job_failed_on_resume",
    "job_always_raises",
    "job_execution_timeout",
    "job_links_expired",
)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CallbackDeployment]:
    root = tmp_path_factory.mktemp("job-lifecycle")
    for folder in ("marked", "resume", "links"):
        (root / folder).mkdir()
    dags = root / "dags"
    dags.mkdir()
    source = DAG_FILE.format(
        root=str(root), sleep_seconds=SLEEP_SECONDS, execution_timeout=EXECUTION_TIMEOUT_SECONDS
    )
    (dags / "lifecycle.py").write_text(source)
    with (
        callback_deployment(root, dags, logs_name="job-lifecycle-logs") as running,
        # Five scenarios share a small machine: give the api-server time to answer under load.
        AirflowRestClient(running.services.api_url, timeout=120) as patient_client,
    ):
        running.client = patient_client
        running.emulator.client.set_faults(webhook_delay_seconds=DELIVERY_DELAY_SECONDS)
        for dag_id in DAG_IDS:
            running.client.wait_for_dag(dag_id, timeout=300)
        yield running


# ---------------------------------------------------------------------- REST helpers


def task_instance(deployment: CallbackDeployment, dag_id: str, run_id: str, task_id: str = "score") -> dict:
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
    return dict(deployment.client.request("GET", path, what=f"read {dag_id}/{task_id}").json())


def mark_failed(deployment: CallbackDeployment, dag_id: str, run_id: str, task_id: str = "score") -> None:
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
    deployment.client.request("PATCH", path, what=f"mark {task_id} failed", json={"new_state": "failed"})


def clear(deployment: CallbackDeployment, dag_id: str, run_id: str, task_ids: list[str]) -> None:
    body = {"dag_run_id": run_id, "task_ids": task_ids, "dry_run": False, "only_failed": False}
    deployment.client.request("POST", f"/dags/{dag_id}/clearTaskInstances", what="clear tasks", json=body)


def return_value(deployment: CallbackDeployment, dag_id: str, run_id: str, task_id: str = "score") -> Any:
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    response = deployment.client.request("GET", path, what="read the return value")
    value = response.json()["value"]
    return json.loads(value) if isinstance(value, str) else value


def finish(deployment: CallbackDeployment, dag_id: str, run_id: str, timeout: float = 240) -> str:
    state = deployment.client.wait_for_dag_run(dag_id, run_id, timeout=timeout)
    deployment.services.check_still_running()
    return state


def job_id(dag_id: str, run_id: str, try_number: int) -> str:
    return job_id_for_try(task_job_prefix(dag_id, "score", run_id, -1), try_number)


def store(deployment: CallbackDeployment) -> CallbackStore:
    return CallbackStore(str(deployment.callback_store))


def all_delivered(deployment: CallbackDeployment, deployment_name: str) -> bool:
    """Every webhook of ``deployment_name`` was answered 200 by the receiver (stored or dropped)."""
    batches = [b for b in deployment.emulator.client.batches() if b.get("deployment") == deployment_name]
    return bool(batches) and all(b["state"] == "delivered" for b in batches)


def write_table(path: Path, keys: list[str], values: list[int]) -> None:
    pq.write_table(pa.table({"key": keys, "x": values}), path)


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


# ---------------------------------------------------------------------- scenarios


class TestClearedAfterAChange:
    def test_marked_failed_while_deferred_then_cleared_scores_the_new_input_only(
        self, deployment: CallbackDeployment
    ) -> None:
        root, emulator = deployment.root / "marked", deployment.emulator.client
        dag_id = "job_marked_failed"
        write_table(root / "input.parquet", [f"old{i}" for i in range(10)], list(range(10)))
        # The old job's deliveries are held back, so they land after the task was marked failed.
        emulator.set_faults(deployment="doubler", webhook_delay_seconds=25)
        run_id = deployment.client.trigger_dag_run(dag_id)
        deployment.client.wait_for_task_state(dag_id, run_id, "score", {"deferred"}, timeout=180)
        # Marked failed before a triggerer runs it, a trigger is dropped, not cancelled: no on_kill.
        wait_until(
            lambda: trigger_running(deployment, dag_id, run_id), 120, lambda: "the trigger never started"
        )
        mark_failed(deployment, dag_id, run_id)
        # The run fails with its only task; clearing it before then races the scheduler.
        assert finish(deployment, dag_id, run_id) == "failed"
        old_job = job_id(dag_id, run_id, 1)
        # Airflow 3.3 cancels the trigger and calls its on_kill, which asks and deletes nothing:
        # Airflow says the same when another triggerer took the trigger over.
        wait_until(
            lambda: store(deployment).stop_request(old_job) is not None, 120, lambda: "no stop request"
        )
        assert not store(deployment).is_retired(old_job)
        write_table(root / "input.parquet", [f"new{i}" for i in range(7)], [1000 + i for i in range(7)])
        emulator.set_faults(deployment="doubler", webhook_delay_seconds=DELIVERY_DELAY_SECONDS)
        clear(deployment, dag_id, run_id, ["score"])
        assert finish(deployment, dag_id, run_id) == "success"

        output = pq.read_table(root / "scores.parquet")
        assert output.column("key").to_pylist() == [f"new{i}" for i in range(7)]
        assert output.column("result").to_pylist() == [2 * (1000 + i) for i in range(7)]
        runs = emulator.runs("doubler")
        assert {key: runs[key] for key in runs if key.startswith("new")} == {f"new{i}": 1 for i in range(7)}
        assert {key: runs[key] for key in runs if key.startswith("old")} == {f"old{i}": 1 for i in range(10)}
        wait_until(lambda: all_delivered(deployment, "doubler"), 120, lambda: str(emulator.batches()))
        tombstone = store(deployment).tombstone(old_job)
        assert tombstone is not None and "stopped" in tombstone.reason, "the next try retired it"
        assert not store(deployment).has_manifest(old_job)
        assert not (deployment.callback_store / old_job).exists(), "its late deliveries were dropped"

    def test_failed_in_execute_complete_then_cleared_after_a_change_scores_the_new_input(
        self, deployment: CallbackDeployment
    ) -> None:
        root, emulator = deployment.root / "resume", deployment.emulator.client
        dag_id = "job_failed_on_resume"
        # Twenty rows answer more than max_xcom_bytes=100: the task fails when it resumes.
        (root / "input.json").write_text(json.dumps([[f"old{i}", i] for i in range(20)]))
        run_id = deployment.client.trigger_dag_run(dag_id)
        assert finish(deployment, dag_id, run_id) == "failed"
        assert task_instance(deployment, dag_id, run_id)["state"] == "failed"

        (root / "input.json").write_text(json.dumps([["new0", 5], ["new1", 6]]))
        clear(deployment, dag_id, run_id, ["read_input", "score"])
        assert finish(deployment, dag_id, run_id) == "success"
        assert return_value(deployment, dag_id, run_id) == [["new0", 5], ["new1", 6]]
        runs = emulator.runs("echo")
        assert {key: runs[key] for key in runs if key.startswith("new")} == {"new0": 1, "new1": 1}
        assert {key: runs[key] for key in runs if key.startswith("old")} == {f"old{i}": 1 for i in range(20)}
        assert store(deployment).is_retired(job_id(dag_id, run_id, 1)), "the stale job was retired"


class TestOneRetryPolicy:
    def test_a_deployment_that_always_raises_runs_once_per_try(self, deployment: CallbackDeployment) -> None:
        """retries=2, idempotent=False: three tries, three runs, the deployment's message as the error."""
        dag_id = "job_always_raises"
        run_id = deployment.client.trigger_dag_run(dag_id)
        assert finish(deployment, dag_id, run_id) == "failed"
        assert task_instance(deployment, dag_id, run_id)["try_number"] == 3
        assert deployment.emulator.client.runs("raiser") == {"1": 3}
        log = deployment.client.task_log(dag_id, run_id, "score", try_number=3)
        assert "ModelbitDeploymentError" in log and "raised ValueError: boom: 7" in log, log[-2000:]


class TestExecutionTimeout:
    def test_execution_timeout_in_the_last_try_ends_the_wait_and_retires_the_job(
        self, deployment: CallbackDeployment
    ) -> None:
        """retries=0: the job is retired (a try with retries left keeps it, see test_deferrable.py)."""
        dag_id = "job_execution_timeout"
        run_id = deployment.client.trigger_dag_run(dag_id)
        assert finish(deployment, dag_id, run_id, timeout=EXECUTION_TIMEOUT_SECONDS + 180) == "failed"
        instance = task_instance(deployment, dag_id, run_id)
        took = seconds_between(instance["start_date"], instance["end_date"])
        assert took < EXECUTION_TIMEOUT_SECONDS + 30, f"the task ran {took:.0f} s"
        job = job_id(dag_id, run_id, 1)
        tombstone = store(deployment).tombstone(job)
        assert tombstone is not None and tombstone.reason == "failed: AirflowTaskTimeout"
        emulator = deployment.emulator.client
        wait_until(
            lambda: all_delivered(deployment, "sleeper"), SLEEP_SECONDS + 120, lambda: str(emulator.batches())
        )
        assert not (deployment.callback_store / job).exists(), "the late delivery was dropped"
        assert emulator.runs("sleeper") == {"1": 1}


class TestExpiredLinks:
    def test_expired_links_are_resubmitted_once_and_the_task_succeeds_in_its_first_try(
        self, deployment: CallbackDeployment
    ) -> None:
        root, emulator = deployment.root / "links", deployment.emulator.client
        dag_id = "job_links_expired"
        keys = [f"link{i}" for i in range(6)]
        write_table(root / "input.parquet", keys, list(range(6)))
        # Links live one second and arrive seconds late: expired before the task resumes.
        emulator.configure(link_expiry_seconds=1)
        run_id = deployment.client.trigger_dag_run(dag_id)
        first = job_id(dag_id, run_id, 1)
        wait_until(
            lambda: len(store(deployment).delivered_chunks(first)) == 2,
            180,
            lambda: f"deliveries of {first}: {store(deployment).delivered_chunks(first)}",
        )
        emulator.configure(link_expiry_seconds=3600)
        assert finish(deployment, dag_id, run_id) == "success"
        assert task_instance(deployment, dag_id, run_id)["try_number"] == 1
        runs = emulator.runs("doubler")
        assert {key: runs[key] for key in keys} == dict.fromkeys(keys, 2), "each chunk resubmitted once"
        output = pq.read_table(root / "scores.parquet")
        assert output.column("key").to_pylist() == keys
        assert output.column("result").to_pylist() == [2 * x for x in range(6)]
