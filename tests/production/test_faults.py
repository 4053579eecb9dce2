"""Faults in the production shape: a Celery worker and a triggerer killed with SIGKILL in mid-work.

One stack for the module (:func:`tests.production.conftest.production_deployment`): PostgreSQL,
CeleryExecutor on Redis with two workers, two triggerers, an api-server with two worker processes
receiving the webhooks, and the inputs, outputs, checkpoints and callback store on SeaweedFS as
``s3://`` paths. Each scenario asserts the model's run counts through the local Modelbit server's
inspection routes and compares the outputs with a clean run of the same operator.

- Worker killed: the Celery worker running a synchronous batch task gets SIGKILL (its whole process
  group: the worker, its pool and the task) once half the table is scored. Airflow notices the lost
  heartbeat, fails the try and retries it on the other worker, which resumes from the checkpoint on
  S3: only the chunks in flight at the kill are scored again, and the output is a clean run's.
- Triggerer killed: deferred batch tasks wait for webhooks held back by the server; the triggerer
  running their triggers gets SIGKILL. The other triggerer adopts the triggers once the dead one's
  heartbeat is stale; every task succeeds on its first try, every chunk submitted once.

Run with ``.venv/bin/python -m pytest -m production tests/production -q -s`` after
``bash scripts/bootstrap_production.sh``; ``-s`` shows the report lines quoted in docs/reliability.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy
from harness.outcomes import DagOutcome, connect, read_placements

from airflow_provider_modelbit.operators.batch import ModelbitBatchInferenceOperator
from tests.production.conftest import (
    ProductionDeployment,
    production_deployment,
    s3_url,
    service_processes,
    wait_until,
)

pytestmark = [pytest.mark.services, pytest.mark.production, pytest.mark.timeout(1200)]

WORKERS = ("celery-worker-1", "celery-worker-2")
TRIGGERERS = ("triggerer-1", "triggerer-2")
#: Seconds without a heartbeat after which the scheduler fails a running try (default 300). A live
#: task on a busy 2-core machine went 30 s without one, was failed and raced its own retry.
TASK_HEARTBEAT_TIMEOUT_SECONDS = 120
#: Seconds after its last heartbeat that a triggerer counts as dead and its triggers are adopted.
TRIGGERER_THRESHOLD_SECONDS = 10
#: Seconds a scenario may take from its trigger to the end of its DAG run, on a busy machine.
RUN_TIMEOUT_SECONDS = 420.0

# Worker killed: a table in chunks slow enough to be killed half-way.
KILL_DAG = "production_worker_killed"
KILL_ROWS = 4_000
KILL_BATCH_SIZE = 100
KILL_CONCURRENCY = 2
KILL_LATENCY_SECONDS = 0.4
KILL_INPUT = "faults/worker-killed/input.parquet"
KILL_OUTPUT = "faults/worker-killed/out/scores.parquet"
KILL_REFERENCE = "faults/worker-killed/reference/scores.parquet"

# Triggerer killed: deferred tasks whose webhooks the server holds back past the kill.
DEFER_DAG = "production_triggerer_killed"
DEFER_TASKS = ("score_a", "score_b")
DEFER_ROWS = 20
DEFER_BATCH_SIZE = 10
#: Longer than the spread of the tasks' deferrals on a busy machine (each start takes 20-60 s), so
#: every trigger waits when the triggerer is killed.
DEFER_WEBHOOK_DELAY_SECONDS = 90
DEFER_INPUT = "faults/triggerer-killed/input.parquet"
DEFER_REFERENCE = "faults/triggerer-killed/reference/scores.parquet"

DAG_FILE = """
from __future__ import annotations

import datetime

from airflow.sdk import DAG

from airflow_provider_modelbit.operators import ModelbitBatchInferenceOperator

with DAG({kill_dag!r}, schedule=None, start_date=datetime.datetime(2026, 1, 1), catchup=False):
    ModelbitBatchInferenceOperator(
        task_id="score",
        retries=1,
        retry_delay=datetime.timedelta(seconds=1),
        **{kill_arguments!r},
    )

with DAG({defer_dag!r}, schedule=None, start_date=datetime.datetime(2026, 1, 1), catchup=False):
    for task_id in {defer_tasks!r}:
        ModelbitBatchInferenceOperator(
            task_id=task_id,
            output_path={defer_output!r}.format(task_id=task_id),
            deferrable=True,
            retries=0,
            callback_poll_interval=1.0,
            **{defer_arguments!r},
        )
"""


def kill_arguments(output: str) -> dict[str, object]:
    return {
        "deployment": "doubler",
        "input_path": s3_url(KILL_INPUT),
        "output_path": s3_url(output),
        "id_column": "key",
        "columns": ["x"],
        "argument_style": "positional",
        "batch_size": KILL_BATCH_SIZE,
        "max_concurrency": KILL_CONCURRENCY,
    }


def defer_arguments() -> dict[str, object]:
    return {
        "deployment": "doubler",
        "input_path": s3_url(DEFER_INPUT),
        "id_column": "key",
        "columns": ["x"],
        "argument_style": "positional",
        "batch_size": DEFER_BATCH_SIZE,
    }


def defer_output(task_id: str) -> str:
    return f"faults/triggerer-killed/out/{task_id}.parquet"


def table_of(rows: int) -> pa.Table:
    return pa.table({"key": [f"row-{i:05d}" for i in range(rows)], "x": list(range(rows))})


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionDeployment]:
    dags = tmp_path_factory.mktemp("production-faults-dags")
    write_dags(dags)
    settings = {
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(TASK_HEARTBEAT_TIMEOUT_SECONDS),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(TRIGGERER_THRESHOLD_SECONDS),
    }
    with production_deployment(dags, logs_name="faults", env=settings) as running:
        yield running


def write_dags(dags: Path) -> None:
    source = DAG_FILE.format(
        kill_dag=KILL_DAG,
        kill_arguments=kill_arguments(KILL_OUTPUT),
        defer_dag=DEFER_DAG,
        defer_tasks=DEFER_TASKS,
        defer_output=s3_url(defer_output("{task_id}")),
        defer_arguments=defer_arguments(),
    )
    (dags / "faults.py").write_text(source)


def reference_run(
    deployment: ProductionDeployment, arguments: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator run uninterrupted in this process, on the same server and store: the clean run."""
    for name, value in deployment.connections().items():
        monkeypatch.setenv(name, value)
    ModelbitBatchInferenceOperator(task_id="reference", **arguments).execute({})


# -- worker killed -------------------------------------------------------------------------------


@dataclass
class WorkerKill:
    """What the worker-kill scenario saw."""

    killed: str
    left_running: list[int]
    saved_at_kill: set[int]
    rows_scored_at_kill: int
    output_at_kill: bool
    final: str
    try_number: int
    retried_on: str
    seconds_to_recover: float
    runs: dict[str, int]
    checkpoint_after: list[str]


def chunk_of(row_id: str) -> int:
    return int(row_id.removeprefix("row-")) // KILL_BATCH_SIZE


def saved_chunks(deployment: ProductionDeployment) -> set[int]:
    names = (key.rsplit("/", 1)[-1] for key in deployment.keys(f"{KILL_OUTPUT}.checkpoint/"))
    return {int(name[6:14]) for name in names if name.startswith("chunk-") and name.endswith(".arrow")}


def start_scenario(
    deployment: ProductionDeployment, input_key: str, rows: int, dag_id: str, **faults: Any
) -> str:
    """Put the scenario's input table, reset the local server with its faults, and start a run of its DAG."""
    deployment.put_table(input_key, table_of(rows))
    deployment.emulator.client.reset()
    deployment.emulator.client.set_faults(**faults)
    deployment.client.wait_for_dag(dag_id, timeout=180)
    return deployment.client.trigger_dag_run(dag_id)


@pytest.fixture(scope="module")
def worker_kill(deployment: ProductionDeployment) -> WorkerKill:
    client, emulator = deployment.client, deployment.emulator.client
    run_id = start_scenario(deployment, KILL_INPUT, KILL_ROWS, KILL_DAG, latency_seconds=KILL_LATENCY_SECONDS)

    def scored() -> int:
        return len(emulator.runs("doubler"))

    def running_on() -> str:
        (instance,) = client.task_instances(KILL_DAG, run_id)
        # A try that ended before the kill (failed, retried) makes the scenario meaningless: stop now.
        assert instance["try_number"] == 1 and instance["state"] in (
            None,
            "scheduled",
            "queued",
            "running",
        ), f"the task is {instance['state']!r} in try {instance['try_number']} before the kill"
        return str(instance["hostname"] or "") if instance["state"] == "running" else ""

    # Half the table scored by the model, as the server counts it: the kill lands in mid-table.
    wait_until(
        lambda: scored() >= KILL_ROWS // 2 and bool(running_on()),
        timeout=RUN_TIMEOUT_SECONDS,
        describe=lambda: (
            f"{scored()} of {KILL_ROWS} rows scored, task {client.task_states(KILL_DAG, run_id)}"
        ),
    )
    killed = running_on()
    assert killed in WORKERS, f"the task ran on {killed!r}, not on a Celery worker of the shape"
    deployment.services.kill_service(killed)
    killed_at = time.monotonic()
    left_running = service_processes(killed)
    saved_at_kill = saved_chunks(deployment)
    rows_scored_at_kill = scored()
    output_at_kill = KILL_OUTPUT in deployment.keys(KILL_OUTPUT)

    final = client.wait_for_dag_run(KILL_DAG, run_id, timeout=RUN_TIMEOUT_SECONDS)
    seconds_to_recover = time.monotonic() - killed_at
    (instance,) = client.task_instances(KILL_DAG, run_id)
    runs = emulator.runs("doubler")
    # The shape is whole again for the next scenario.
    deployment.services.start_service(killed)
    return WorkerKill(
        killed=killed,
        left_running=left_running,
        saved_at_kill=saved_at_kill,
        rows_scored_at_kill=rows_scored_at_kill,
        output_at_kill=output_at_kill,
        final=final,
        try_number=int(instance["try_number"]),
        retried_on=str(instance["hostname"]),
        seconds_to_recover=seconds_to_recover,
        runs=runs,
        checkpoint_after=deployment.keys(f"{KILL_OUTPUT}.checkpoint/"),
    )


class TestCeleryWorkerKilledMidTable:
    def test_the_worker_died_with_its_task_half_way(self, worker_kill: WorkerKill) -> None:
        chunks = KILL_ROWS // KILL_BATCH_SIZE
        assert worker_kill.left_running == [], "SIGKILL left processes of the worker running"
        assert not worker_kill.output_at_kill
        assert 0 < len(worker_kill.saved_at_kill) < chunks
        assert worker_kill.rows_scored_at_kill < KILL_ROWS

    def test_the_retry_on_the_other_worker_succeeds(self, worker_kill: WorkerKill) -> None:
        assert worker_kill.final == "success"
        assert worker_kill.try_number == 2
        assert worker_kill.retried_on in WORKERS and worker_kill.retried_on != worker_kill.killed
        assert worker_kill.checkpoint_after == [], "the checkpoint is removed once the output is written"

    def test_only_the_chunks_in_flight_were_scored_again(self, worker_kill: WorkerKill) -> None:
        runs = worker_kill.runs
        rescored = {row_id for row_id, count in runs.items() if count > 1}
        rescored_chunks = {chunk_of(row_id) for row_id in rescored}
        print(
            f"worker-kill report: {worker_kill.killed} killed with {len(worker_kill.saved_at_kill)} of "
            f"{KILL_ROWS // KILL_BATCH_SIZE} chunks saved on S3 ({worker_kill.rows_scored_at_kill} rows "
            f"scored); retry on {worker_kill.retried_on} re-scored {len(rescored)} rows in chunks "
            f"{sorted(rescored_chunks)}; {worker_kill.seconds_to_recover:.0f} s from kill to success"
        )
        assert set(runs) == {f"row-{i:05d}" for i in range(KILL_ROWS)}
        assert max(runs.values()) <= 2
        assert rescored_chunks.isdisjoint(worker_kill.saved_at_kill)
        assert len(rescored_chunks) <= KILL_CONCURRENCY

    def test_the_output_is_a_clean_runs(
        self, worker_kill: WorkerKill, deployment: ProductionDeployment, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        deployment.emulator.client.clear_faults()
        reference_run(deployment, kill_arguments(KILL_REFERENCE), monkeypatch)
        output, reference = deployment.read_table(KILL_OUTPUT), deployment.read_table(KILL_REFERENCE)
        assert output.equals(reference, check_metadata=True)
        assert output.column("result").to_pylist() == [2 * i for i in range(KILL_ROWS)]


# -- triggerer killed ----------------------------------------------------------------------------


@dataclass
class TriggererKill:
    """What the triggerer-kill scenario saw."""

    killed: str
    placement_at_kill: dict[str, str]
    states_at_kill: dict[str, str | None]
    webhooks_at_kill: list[str]
    final: str
    try_numbers: dict[str, int]
    triggerers: dict[str, set[str]]
    seconds_to_adopt: float
    seconds_to_recover: float
    runs: dict[str, int]
    requests: int


def trigger_placement(deployment: ProductionDeployment, run_id: str) -> dict[str, str]:
    """``{task_id: hostname of the triggerer its trigger is assigned to}`` for the run's deferred tasks."""
    query = sqlalchemy.text(
        "SELECT ti.task_id, job.hostname FROM task_instance ti"
        " JOIN trigger t ON ti.trigger_id = t.id JOIN job ON t.triggerer_id = job.id"
        " WHERE ti.dag_id = :dag AND ti.run_id = :run"
    )
    with connect(deployment.database_url) as connection:
        rows = connection.execute(query, {"dag": DEFER_DAG, "run": run_id}).fetchall()
    return {str(task): str(host) for task, host in rows}


def trigger_hosts(deployment: ProductionDeployment) -> dict[str, set[str]]:
    """``{task_id: every triggerer that started its trigger}``, from the trigger logs."""
    outcome = DagOutcome(DEFER_DAG, "", 0.0, deployment.task_logs)
    found: dict[str, set[str]] = {task: set() for task in DEFER_TASKS}
    for task, host in read_placements(deployment.database_url, outcome, deployment.task_logs).triggerers:
        found.setdefault(task, set()).add(host)
    return found


@pytest.fixture(scope="module")
def triggerer_kill(deployment: ProductionDeployment) -> TriggererKill:
    client, emulator = deployment.client, deployment.emulator.client
    run_id = start_scenario(
        deployment, DEFER_INPUT, DEFER_ROWS, DEFER_DAG, webhook_delay_seconds=DEFER_WEBHOOK_DELAY_SECONDS
    )
    placement: dict[str, str] = {}

    def all_running() -> bool:
        # Every trigger assigned to a triggerer, and started there (its log written).
        nonlocal placement
        placement = trigger_placement(deployment, run_id)
        started = trigger_hosts(deployment)
        return set(placement) == set(DEFER_TASKS) and all(
            placement[task] in started[task] for task in placement
        )

    wait_until(
        all_running,
        timeout=RUN_TIMEOUT_SECONDS,
        describe=lambda: f"triggers {placement}, tasks {client.task_states(DEFER_DAG, run_id)}",
    )
    states_at_kill = client.task_states(DEFER_DAG, run_id)
    webhooks_at_kill = [batch["state"] for batch in emulator.batches()]
    # The triggerer holding the most triggers goes; the other must adopt them.
    killed = max(TRIGGERERS, key=lambda name: list(placement.values()).count(name))
    survivor = next(name for name in TRIGGERERS if name != killed)
    deployment.services.kill_service(killed)
    killed_at = time.monotonic()
    moved = [task for task, host in placement.items() if host == killed]

    seconds_to_adopt = wait_until(
        lambda: (
            all(trigger_placement(deployment, run_id).get(task) in (survivor, None) for task in moved)
            and all(survivor in hosts for task, hosts in trigger_hosts(deployment).items() if task in moved)
        ),
        timeout=RUN_TIMEOUT_SECONDS,
        describe=lambda: f"triggers {trigger_placement(deployment, run_id)}",
    )
    final = client.wait_for_dag_run(DEFER_DAG, run_id, timeout=RUN_TIMEOUT_SECONDS)
    seconds_to_recover = time.monotonic() - killed_at
    try_numbers = {ti["task_id"]: int(ti["try_number"]) for ti in client.task_instances(DEFER_DAG, run_id)}
    deployment.services.start_service(killed)
    return TriggererKill(
        killed=killed,
        placement_at_kill=placement,
        states_at_kill=states_at_kill,
        webhooks_at_kill=webhooks_at_kill,
        final=final,
        try_numbers=try_numbers,
        triggerers=trigger_hosts(deployment),
        seconds_to_adopt=seconds_to_adopt,
        seconds_to_recover=seconds_to_recover,
        runs=emulator.runs("doubler"),
        requests=len(emulator.requests()),
    )


class TestTriggererKilledWhileTasksWait:
    def test_the_triggerer_died_while_every_task_waited(self, triggerer_kill: TriggererKill) -> None:
        assert triggerer_kill.states_at_kill == dict.fromkeys(DEFER_TASKS, "deferred")
        assert "delivered" not in triggerer_kill.webhooks_at_kill
        assert triggerer_kill.killed in triggerer_kill.placement_at_kill.values()

    def test_the_other_triggerer_adopts_and_every_task_succeeds_on_its_first_try(
        self, triggerer_kill: TriggererKill
    ) -> None:
        survivor = next(name for name in TRIGGERERS if name != triggerer_kill.killed)
        moved = sorted(
            task for task, host in triggerer_kill.placement_at_kill.items() if host == triggerer_kill.killed
        )
        print(
            f"triggerer-kill report: {triggerer_kill.killed} killed holding {len(moved)} of "
            f"{len(DEFER_TASKS)} triggers; {survivor} adopted them "
            f"{triggerer_kill.seconds_to_adopt:.0f} s later; "
            f"{triggerer_kill.seconds_to_recover:.0f} s from kill to success"
        )
        assert triggerer_kill.final == "success"
        assert triggerer_kill.try_numbers == dict.fromkeys(DEFER_TASKS, 1)
        assert moved
        for task in moved:
            assert triggerer_kill.triggerers[task] == {triggerer_kill.killed, survivor}, task

    def test_every_chunk_was_submitted_once_and_the_outputs_are_a_clean_runs(
        self, triggerer_kill: TriggererKill, deployment: ProductionDeployment, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        chunks = DEFER_ROWS // DEFER_BATCH_SIZE
        assert triggerer_kill.requests == len(DEFER_TASKS) * chunks
        assert triggerer_kill.runs == {f"row-{i:05d}": len(DEFER_TASKS) for i in range(DEFER_ROWS)}
        deployment.emulator.client.clear_faults()
        arguments = {**defer_arguments(), "output_path": s3_url(DEFER_REFERENCE)}
        reference_run(deployment, arguments, monkeypatch)
        reference = deployment.read_table(DEFER_REFERENCE)
        for task in DEFER_TASKS:
            assert deployment.read_table(defer_output(task)).equals(reference), task
