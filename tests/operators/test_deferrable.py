"""The async-callback path: submit with signed webhooks, wait in the trigger, assemble like the sync path.

Runs real Airflow (``dag.test()``, which runs triggers inline) against the local Modelbit server,
with the callback receiver app listening on 127.0.0.1. Both operators take this path with
``deferrable=True``; their output must equal what their synchronous path produces.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_modelbit.callbacks.job import (
    CallbackJob,
    job_id_for_try,
    load_job,
    save_job,
    task_job_prefix,
)
from airflow_provider_modelbit.callbacks.job_runner import validate_callback_event
from airflow_provider_modelbit.callbacks.pacer import SubmissionPacer
from airflow_provider_modelbit.callbacks.receiver import ConnectionSecretSource, create_callback_app
from airflow_provider_modelbit.callbacks.store import CallbackStore, Tombstone
from airflow_provider_modelbit.emulator import RunningEmulator
from airflow_provider_modelbit.emulator.server import run_emulator
from airflow_provider_modelbit.exceptions import (
    ModelbitAuthError,
    ModelbitCallbackError,
    ModelbitDeploymentError,
    ModelbitNotFound,
    ModelbitPayloadTooLarge,
    ModelbitPermanentError,
    ModelbitTimeout,
)
from airflow_provider_modelbit.operators.batch import ModelbitBatchInferenceOperator
from airflow_provider_modelbit.operators.deferrable import XCOM_BATCH_IDS_KEY
from airflow_provider_modelbit.operators.inference import ModelbitInferenceOperator
from airflow_provider_modelbit.triggers.callback import ModelbitCallbackTrigger
from airflow_provider_modelbit.version_compat import AirflowTaskTimeout
from tests.airflow_dags import TaskDeferred, TaskOutcome, run_task
from tests.asgi_thread import serve_in_thread
from tests.operators.flaky_deployment import write_flaky_deployment

SECRET = "deferrable-test-secret-0123"


#: Poll the store often and wait briefly past the deadline, so the tests take seconds.
FAST = {"callback_poll_interval": 0.2, "callback_delivery_margin": 30}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CallbackStore:
    """The configured callback store, shared by receiver, trigger and operator as in a deployment."""
    monkeypatch.setenv("AIRFLOW__MODELBIT__CALLBACK_STORE", str(tmp_path / "callbacks"))
    return CallbackStore()


@pytest.fixture
def receiver_url(store: CallbackStore) -> Iterator[str]:
    """The stand-alone receiver app on 127.0.0.1, reading secrets from Airflow connections."""
    app = create_callback_app(store=store, secrets=ConnectionSecretSource())
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture
def server(
    airflow_db: None,
    modelbit_emulator_session: RunningEmulator,
    modelbit_connection: Callable[..., str],
    receiver_url: str,
) -> Iterator[RunningEmulator]:
    """The local Modelbit server, with ``modelbit_default`` carrying the callback settings."""
    modelbit_emulator_session.client.reset()
    modelbit_emulator_session.client.configure(allow_http_webhooks=True, webhook_time_scale=0.01)
    extra = {"callback_base_url": receiver_url, "callback_secret": SECRET}
    modelbit_connection(host=modelbit_emulator_session.url, extra=extra)
    yield modelbit_emulator_session
    modelbit_emulator_session.client.reset()


@pytest.fixture
def flaky_server(
    airflow_db: None, modelbit_connection: Callable[..., str], receiver_url: str, tmp_path: Path
) -> Iterator[RunningEmulator]:
    """A local Modelbit server with the ``flaky`` deployment, delivering webhooks to the receiver."""
    deployments = write_flaky_deployment(tmp_path)
    with run_emulator(
        deployments_file=str(deployments), allow_http_webhooks=True, webhook_time_scale=0.01
    ) as running:
        extra = {"callback_base_url": receiver_url, "callback_secret": SECRET}
        modelbit_connection(host=running.url, extra=extra)
        yield running


def _store_entries(store: CallbackStore) -> list[str]:
    """What is left in the store: a finished job leaves its tombstone in ``_retired``, nothing else."""
    return sorted(path.name for path in Path(store.location).iterdir())


def run_deferred(**operator_kwargs: Any) -> TaskOutcome:
    """Run ModelbitInferenceOperator(deferrable=True) with ``operator_kwargs``."""
    options = {**FAST, **operator_kwargs}
    return run_task(lambda: ModelbitInferenceOperator(task_id="score", deferrable=True, **options))


class TestDeferredInference:
    def test_single_input_result_equals_the_synchronous_path(self, server: RunningEmulator, store) -> None:
        outcome = run_deferred(deployment="doubler", data=21)
        assert (outcome.state, outcome.value) == ("success", 42), outcome.error
        assert len(server.client.batches()) == 1, "one async submission, no synchronous call"
        assert _store_entries(store) == ["_retired"], "the store keeps only the finished job's tombstone"

    def test_batch_rows_are_matched_by_id(self, server: RunningEmulator) -> None:
        server.client.configure(sort_results_by_id=True)
        outcome = run_deferred(deployment="doubler", data=[[3, 1], [1, 2], [2, 3]])
        assert outcome.value == [[3, 2], [1, 4], [2, 6]], outcome.error

    def test_a_repeated_index_is_scored_as_the_synchronous_path_scores_it(
        self, server: RunningEmulator
    ) -> None:
        """A DataFrame whose index repeats, as Modelbit's client sends it: rows sharing an ID in order."""
        import pandas as pd

        server.client.configure(sort_results_by_id=True)
        frame = pd.DataFrame({"x": [1, 2, 3]}, index=[5, 5, 4])
        outcome = run_deferred(deployment="echo", data=frame)
        assert outcome.value == [[5, {"x": 1}], [5, {"x": 2}], [4, {"x": 3}]], outcome.error
        assert server.client.runs("echo") == {"5": 2, "4": 1}

    def test_links_delivery_is_downloaded(self, server: RunningEmulator) -> None:
        outcome = run_deferred(deployment="doubler", data=[[1, 5], [2, 6]], response_format="links")
        assert outcome.value == [[1, 10], [2, 12]], outcome.error

    @pytest.mark.parametrize("data", [[[3, 1], [1, 2], [2, 3]], 21], ids=["batch", "single"])
    def test_links_to_parquet_write_the_synchronous_file(
        self, server: RunningEmulator, tmp_path: Path, data: Any
    ) -> None:
        """Links deliveries are streamed to Parquet; the file equals the synchronous path's, byte for byte."""
        server.client.configure(sort_results_by_id=True)
        options = {"deployment": "doubler", "data": data, "response_format": "links"}
        sync = run_task(
            lambda: ModelbitInferenceOperator(
                task_id="score", output_path=str(tmp_path / "sync.parquet"), **options
            )
        )
        assert sync.state == "success", sync.error
        deferred = run_deferred(output_path=str(tmp_path / "deferred.parquet"), **options)
        assert deferred.state == "success", deferred.error
        assert (tmp_path / "deferred.parquet").read_bytes() == (tmp_path / "sync.parquet").read_bytes()
        assert len(server.client.batches()) == 1

    def test_error_delivery_fails_the_try_with_the_synchronous_error(self, server) -> None:
        """Not idempotent: a deployment error is not sent again within the try, and reads as the sync one."""
        outcome = run_deferred(deployment="raiser", data=[[1, 7]])
        assert outcome.state == "failed"
        assert isinstance(outcome.error, ModelbitDeploymentError), repr(outcome.error)
        assert len(server.client.batches()) == 1 and server.client.runs("raiser") == {"1": 1}
        sync = run_task(
            lambda: ModelbitInferenceOperator(task_id="score", deployment="raiser", data=[[1, 7]])
        )
        assert type(sync.error) is type(outcome.error) and str(sync.error) == str(outcome.error)
        assert SECRET not in str(outcome.error)

    def test_an_idempotent_error_delivery_is_resent_up_to_the_bound(self, server) -> None:
        """Idempotent: the retry policy sends a failed chunk again, max_chunk_attempts (3) times in all."""
        outcome = run_deferred(deployment="raiser", data=7, idempotent=True)
        assert isinstance(outcome.error, ModelbitDeploymentError), repr(outcome.error)
        assert "ValueError: boom: 7" in str(outcome.error)
        assert len(server.client.batches()) == 3

    def test_a_timeout_delivery_raises_the_synchronous_timeout(self, server) -> None:
        """A ``Timeout:`` delivery raises ModelbitTimeout with the sync path's message."""
        options = {"deployment": "sleeper", "data": 5, "timeout_seconds": 1}
        deferred = run_deferred(**options)
        sync = run_task(lambda: ModelbitInferenceOperator(task_id="score", **options))
        assert isinstance(deferred.error, ModelbitTimeout), repr(deferred.error)
        assert type(sync.error) is ModelbitTimeout and str(sync.error) == str(deferred.error)

    def test_a_submission_whose_answer_was_lost_is_awaited_not_sent_again(self, server) -> None:
        """Modelbit accepted the request but the answer never came back: its delivery is awaited."""
        server.client.set_faults(drop_after_rate=1.0, seed=1)
        outcome = run_deferred(deployment="doubler", data=[[1, 2], [2, 3]])
        assert (outcome.state, outcome.value) == ("success", [[1, 4], [2, 6]]), outcome.error
        assert server.client.fault_counts().get("drop_after") == 1
        assert len(server.client.batches()) == 1, "submitted once"
        assert server.client.runs("doubler") == {"1": 1, "2": 1}

    def test_deliveries_that_never_arrive_fail_with_a_callback_error(
        self, server: RunningEmulator, modelbit_connection, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        unreachable = {"callback_base_url": "http://127.0.0.1:9", "callback_secret": SECRET}
        modelbit_connection(host=server.url, extra=unreachable)
        outcome = run_deferred(deployment="doubler", data=1, timeout_seconds=1, callback_delivery_margin=1)
        assert outcome.state == "failed"
        assert isinstance(outcome.error, ModelbitCallbackError), repr(outcome.error)
        assert "missing chunk(s) [0]" in str(outcome.error)


ROWS = 20
# IDs in descending order: a server sorting results by ID reverses every chunk's answer.
TABLE = pa.table(
    {
        "key": [f"k{ROWS - i:03d}" for i in range(ROWS)],
        "x": list(range(ROWS)),
        "segment": ["a", "b"] * (ROWS // 2),
    }
)


def batch_kwargs(input_path: Path, output_path: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "deployment": "echo",
        "input_path": str(input_path),
        "output_path": str(output_path),
        "id_column": "key",
        "columns": ["x"],
        "argument_style": "positional",
        "passthrough_columns": ["segment"],
        "batch_size": 3,
        **overrides,
    }


def run_batch(deferrable: bool, **operator_kwargs: Any) -> TaskOutcome:
    """Run ModelbitBatchInferenceOperator with ``dag.test()`` on the given path."""
    options = {**FAST, **operator_kwargs}
    return run_task(lambda: ModelbitBatchInferenceOperator(task_id="score", deferrable=deferrable, **options))


@pytest.fixture
def input_table(tmp_path: Path) -> Path:
    path = tmp_path / "input.parquet"
    pq.write_table(TABLE, path)
    return path


class TestDeferredBatch:
    """The batch operator on the webhook path: one async request per chunk, the sync path's file."""

    @pytest.mark.parametrize("response_format", [None, "links"])
    @pytest.mark.parametrize(
        "style",
        [
            {"argument_style": "positional", "columns": ["x"]},
            {"argument_style": "object", "columns": ["x", "segment"]},
        ],
        ids=["numbers", "structs"],
    )
    def test_output_file_is_identical_to_the_synchronous_path(
        self, server: RunningEmulator, store: CallbackStore, input_table: Path, tmp_path: Path,
        response_format: str | None, style: dict[str, Any],
    ) -> None:  # fmt: skip
        server.client.configure(sort_results_by_id=True)
        sync_file, deferred_file = tmp_path / "sync.parquet", tmp_path / "deferred.parquet"
        options = {"response_format": response_format, **style}
        sync = run_batch(False, **batch_kwargs(input_table, sync_file, **options))
        assert sync.state == "success", sync.error
        assert server.client.batches() == [], "the synchronous path submits nothing asynchronously"

        deferred = run_batch(True, **batch_kwargs(input_table, deferred_file, **options))
        assert deferred.state == "success", deferred.error
        assert deferred_file.read_bytes() == sync_file.read_bytes()
        assert deferred.value["rows"] == ROWS and deferred.value["chunks"] == 7
        assert len(server.client.batches()) == 7, "one async request per chunk of 3 rows"
        assert _store_entries(store) == ["_retired"], "the store keeps only the finished job's tombstone"
        assert not Path(f"{deferred_file}.checkpoint").exists()

    def test_empty_input_writes_an_empty_file_without_submitting(
        self, server: RunningEmulator, tmp_path: Path
    ) -> None:
        empty = tmp_path / "empty.parquet"
        pq.write_table(TABLE.slice(0, 0), empty)
        outcome = run_batch(True, **batch_kwargs(empty, tmp_path / "out.parquet"))
        assert outcome.state == "success", outcome.error
        assert pq.read_table(tmp_path / "out.parquet").num_rows == 0
        assert server.client.batches() == []

    def test_an_error_delivery_resubmits_only_its_chunk(
        self, flaky_server: RunningEmulator, input_table: Path, tmp_path: Path
    ) -> None:
        """Idempotent, x=13 fails once: its chunk (rows 12-14) is sent again, the other six chunks once."""
        options = batch_kwargs(input_table, tmp_path / "out.parquet", deployment="flaky", idempotent=True)
        outcome = run_batch(True, **options)
        assert outcome.state == "success", outcome.error
        assert pq.read_table(tmp_path / "out.parquet").column("result").to_pylist() == list(range(ROWS))
        results = sorted(batch["result"] for batch in flaky_server.client.batches())
        assert results == ["data"] * 7 + ["error"], "seven chunks once, the failed one twice"


@pytest.fixture
def resumptions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The status of each event the batch operator resumed at (none: it never deferred)."""
    resumed: list[str] = []
    complete = ModelbitBatchInferenceOperator.execute_complete

    def counting_complete(self: Any, context: Any, event: Any = None) -> Any:
        resumed.append(str(event.get("status")) if isinstance(event, dict) else "none")
        return complete(self, context, event)

    monkeypatch.setattr(ModelbitBatchInferenceOperator, "execute_complete", counting_complete)
    return resumed


class TestPacedDeferredBatch:
    """A batch of many chunks: the worker submits the first wave, the trigger the rest, paced."""

    def test_a_dozen_chunks_under_a_low_ceiling_score_like_the_synchronous_path_in_one_deferral(
        self, server: RunningEmulator, store: CallbackStore, tmp_path: Path, resumptions: list[str]
    ) -> None:
        rows = 24
        table = pa.table({"key": [f"k{rows - i:03d}" for i in range(rows)], "x": list(range(rows)),
                          "segment": ["a", "b"] * (rows // 2)})  # fmt: skip
        pq.write_table(table, tmp_path / "input.parquet")
        sync_file, deferred_file = tmp_path / "sync.parquet", tmp_path / "deferred.parquet"
        options = {"batch_size": 2, "max_concurrency": 2}
        deferred = run_batch(True, **batch_kwargs(tmp_path / "input.parquet", deferred_file, **options))
        assert deferred.state == "success", deferred.error
        assert resumptions == ["success"], "one deferral, resumed once"
        assert len(server.client.batches()) == 12, "each chunk submitted once"
        assert deferred.value["concurrency"]["ceiling"] == 2
        sync = run_batch(False, **batch_kwargs(tmp_path / "input.parquet", sync_file, **options))
        assert sync.state == "success", sync.error
        assert deferred_file.read_bytes() == sync_file.read_bytes()
        assert server.client.runs("echo") == {f"k{rows - i:03d}": 2 for i in range(rows)}, (
            "each row run once by each path"
        )
        assert _store_entries(store) == ["_retired"], "staged requests leave with the job"


class TestRefusedSubmissions:
    """
    Modelbit answers a submission with a refusal: nothing was taken, so nothing is awaited. A
    permanent one fails the task with its own error well before the delivery deadline (300 s
    inference limit + 30 s margin here).
    """

    @pytest.mark.parametrize(
        ("refusal", "error_class", "names"),
        [
            ("wrong key", ModelbitAuthError, "API Key of connection 'modelbit_default'"),
            ("unknown deployment", ModelbitNotFound, "Deployment 'no_such_model' (version latest"),
        ],
    )
    def test_a_refused_first_wave_fails_the_task_before_it_defers(
        self, server: RunningEmulator, modelbit_connection, receiver_url: str, input_table: Path,
        tmp_path: Path, resumptions: list[str], refusal: str, error_class: type, names: str,
    ) -> None:  # fmt: skip
        deployment = "no_such_model" if refusal == "unknown deployment" else "echo"
        if refusal == "wrong key":
            extra = {"callback_base_url": receiver_url, "callback_secret": SECRET}
            modelbit_connection(host=server.url, password="not-a-key-of-this-workspace", extra=extra)
        output = tmp_path / "out.parquet"
        outcome = run_batch(True, **batch_kwargs(input_table, output, deployment=deployment))
        assert outcome.state == "failed"
        assert type(outcome.error) is error_class and isinstance(outcome.error, ModelbitPermanentError)
        assert names in str(outcome.error) and f"Deployment {deployment!r}" in str(outcome.error)
        assert resumptions == [], "it never deferred"
        assert server.client.batches() == [] and server.client.runs(deployment) == {}
        assert not output.exists()

    def test_a_refusal_in_the_triggerer_fails_the_task_at_the_first_event(
        self, server: RunningEmulator, store: CallbackStore, tmp_path: Path, resumptions: list[str]
    ) -> None:
        """
        The worker's first wave is taken; a later chunk, one row too large for the server, is
        refused (413) when the trigger submits it: the trigger ends at once and the task fails
        with the same permanent error. Rows never run twice; the refused chunk's never run.
        """
        rows = 12
        big = rows - 1
        table = pa.table({"key": [f"k{i:03d}" for i in range(rows)],
                          "x": ["y" * (4000 if i == big else 1) for i in range(rows)],
                          "segment": ["a", "b"] * (rows // 2)})  # fmt: skip
        pq.write_table(table, tmp_path / "input.parquet")
        server.client.configure(max_body_bytes=2000)
        output = tmp_path / "out.parquet"
        options = {"batch_size": 2, "max_concurrency": 2}
        outcome = run_batch(True, **batch_kwargs(tmp_path / "input.parquet", output, **options))
        assert outcome.state == "failed"
        assert type(outcome.error) is ModelbitPayloadTooLarge, repr(outcome.error)
        assert "from the triggerer" in str(outcome.error) and "Deployment 'echo'" in str(outcome.error)
        assert resumptions == ["error"], "one deferral, ended by the refusal"
        runs = server.client.runs("echo")
        assert set(runs.values()) <= {1} and f"k{big:03d}" not in runs
        assert 0 < len(server.client.batches()) < rows // 2
        assert not output.exists()


class _TaskInstance:
    """The task-instance fields the mixin reads, for driving execute/execute_complete directly."""

    def __init__(self, run_id: str) -> None:
        self.dag_id, self.task_id, self.run_id, self.map_index = "dag", "score", run_id, -1
        self.try_number, self.max_tries = 1, 1
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


async def _trigger_event(trigger: ModelbitCallbackTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("trigger ended without an event")


def _deferred_inference(server: RunningEmulator, context: Any, data: list[list[int]]) -> dict[str, Any]:
    """Run one try of a deferrable inference until it defers; return its trigger's event."""
    # Held back, the delivery cannot arrive before the try looks: it must defer.
    server.client.set_faults(webhook_delay_seconds=3.0, deployment="doubler")
    operator = ModelbitInferenceOperator(
        task_id="score", deployment="doubler", data=data, deferrable=True, **FAST
    )
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    return asyncio.run(_trigger_event(deferred.value.trigger))


class TestRetryReuse:
    def test_a_retry_reuses_arrived_deliveries_and_submits_nothing_again(self, server, store) -> None:
        ti = _TaskInstance(f"run-{uuid.uuid4().hex[:8]}")
        context: Any = {"ti": ti}
        event = _deferred_inference(server, context, [[1, 1], [2, 2]])
        assert ti.xcom[XCOM_BATCH_IDS_KEY] and len(server.client.batches()) == 1
        assert event["status"] == "success"

        ti.try_number = 2  # the task failed after the delivery arrived and is retried
        retry = ModelbitInferenceOperator(
            task_id="score", deployment="doubler", data=[[1, 1], [2, 2]], deferrable=True, **FAST
        )
        assert retry.execute(context) == [[1, 2], [2, 4]], "every delivery is in: no deferral"
        assert len(server.client.batches()) == 1, "nothing is paid for twice"
        assert not store.has_manifest(job_id_for_try(task_job_prefix("dag", "score", ti.run_id, -1), 1))

    def test_a_retry_resumed_at_an_earlier_tries_event_starts_over(self, server, store) -> None:
        """
        Airflow 3.1 resumes a retry at the failed try's event. Trusting it would hand the retry the
        earlier try's results, here for an input that has changed since: it must start over.
        """
        ti = _TaskInstance(f"run-{uuid.uuid4().hex[:8]}")
        context: Any = {"ti": ti}
        stale = _deferred_inference(server, context, [[1, 1], [2, 2]])
        assert stale["deferred_by_try"] == 1

        ti.try_number = 2
        retry = ModelbitInferenceOperator(
            task_id="score", deployment="doubler", data=[[1, 3], [2, 4]], deferrable=True, **FAST
        )
        with pytest.raises(TaskDeferred) as deferred:
            retry.execute_complete(context, stale)
        event = asyncio.run(_trigger_event(deferred.value.trigger))
        assert event["deferred_by_try"] == 2
        assert retry.execute_complete(context, event) == [[1, 6], [2, 8]]
        assert len(server.client.batches()) == 2, "the changed input is scored once"

    def test_a_retry_in_a_run_made_again_reuses_its_first_tries_job(self, server, store) -> None:
        """
        A DAG run deleted and made again keeps its run id: its first try finds that try's id held by
        the old run's retired job and starts the next generation. Its retry must still find that
        job, and send nothing again.
        """
        run_id, data = f"run-{uuid.uuid4().hex[:8]}", [[1, 1], [2, 2]]
        prefix = task_job_prefix("dag", "score", run_id, -1)
        deleted: Any = {"ti": _TaskInstance(run_id)}
        old_run = ModelbitInferenceOperator(
            task_id="score", deployment="doubler", data=data, deferrable=True, **FAST
        )
        assert old_run.execute_complete(deleted, _deferred_inference(server, deleted, data)) == [
            [1, 2],
            [2, 4],
        ]
        assert store.is_retired(job_id_for_try(prefix, 1))

        ti = _TaskInstance(run_id)
        context: Any = {"ti": ti}
        event = _deferred_inference(server, context, data)
        assert event["job_id"] == job_id_for_try(prefix, 1, generation=2)
        ti.try_number = 2  # the first try failed after its delivery arrived
        retry = ModelbitInferenceOperator(
            task_id="score", deployment="doubler", data=data, deferrable=True, **FAST
        )
        assert retry.execute(context) == [[1, 2], [2, 4]], "every delivery is in: no deferral"
        assert len(server.client.batches()) == 2, "one request per run"
        assert store.is_retired(job_id_for_try(prefix, 1, generation=2))


def _defer_batch(context: Any, **options: Any) -> ModelbitCallbackTrigger:
    """Run a deferrable batch try until it defers (its later chunks staged); return its trigger."""
    operator = ModelbitBatchInferenceOperator(task_id="score", deferrable=True, **FAST, **options)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    return deferred.value.trigger


def _resume_batch(context: Any, event: dict[str, Any], **options: Any) -> Any:
    """Resume at ``event`` as Airflow does: an operator built again from the DAG file as it is now."""
    operator = ModelbitBatchInferenceOperator(task_id="score", deferrable=True, **FAST, **options)
    return operator.execute_complete(context, event)


#: The input written again while the task waits: the same IDs, other features.
REWRITTEN = TABLE.set_column(1, "x", pa.array([x + 100 for x in range(ROWS)]))


class TestChangedWhileDeferred:
    """
    The input, the DAG or the connection changes while a batch is deferred: the resumed try reads
    no delivery of the old job, writes nothing and sends nothing; its retry does the new work once.
    """

    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            ("input", "chunk(s) [0, 1, 2, 3, 4, 5, 6] changed; changed since it was submitted: input"),
            ("version", "its settings changed: version 'latest' -> '1'"),
        ],
        ids=["input-rewritten", "version-edited"],
    )  # fmt: skip
    def test_a_change_after_every_delivery_arrived_fails_the_resumed_try_and_writes_nothing(
        self, server: RunningEmulator, store: CallbackStore, input_table: Path, tmp_path: Path,
        change: str, reason: str,
    ) -> None:  # fmt: skip
        ti = _TaskInstance(f"run-{uuid.uuid4().hex[:8]}")
        context: Any = {"ti": ti}
        output = tmp_path / "out.parquet"
        options = batch_kwargs(input_table, output, max_concurrency=2)
        event = asyncio.run(_trigger_event(_defer_batch(context, **options)))
        assert event["status"] == "success", event
        assert len(server.client.batches()) == 7

        if change == "input":
            pq.write_table(REWRITTEN, input_table)
        else:
            options["version"] = "1"  # the DAG file edited while the task waited
        with pytest.raises(ModelbitCallbackError) as failed:
            _resume_batch(context, event, **options)
        assert reason in str(failed.value)
        assert "nothing was submitted or written" in str(failed.value)
        assert not output.exists() and not Path(f"{output}.checkpoint").exists()
        assert len(server.client.batches()) == 7, "nothing sent again"
        assert server.client.runs("echo") == dict.fromkeys(TABLE.column("key").to_pylist(), 1)
        job_id = job_id_for_try(task_job_prefix("dag", "score", ti.run_id, -1), 1)
        assert store.is_retired(job_id) and not store.has_manifest(job_id)

        ti.try_number = 2  # the retry does the task's current work, once
        retry = asyncio.run(_trigger_event(_defer_batch(context, **options)))
        assert _resume_batch(context, retry, **options)["rows"] == ROWS
        assert server.client.runs("echo") == dict.fromkeys(TABLE.column("key").to_pylist(), 2)
        clean_context: Any = {"ti": _TaskInstance(f"clean-{uuid.uuid4().hex[:8]}")}
        clean = {**options, "output_path": str(tmp_path / "clean.parquet")}
        ModelbitBatchInferenceOperator(task_id="score", **clean).execute(clean_context)
        assert output.read_bytes() == (tmp_path / "clean.parquet").read_bytes()

    def test_a_connection_moved_to_another_workspace_gets_no_chunk_and_the_try_fails(
        self, server: RunningEmulator, store: CallbackStore, input_table: Path, tmp_path: Path,
        modelbit_connection: Callable[..., str], receiver_url: str,
    ) -> None:  # fmt: skip
        """The connection is edited after the first wave: neither the trigger nor the resumed try sends."""
        ti = _TaskInstance(f"run-{uuid.uuid4().hex[:8]}")
        context: Any = {"ti": ti}
        output = tmp_path / "out.parquet"
        options = batch_kwargs(input_table, output, max_concurrency=2)
        trigger = _defer_batch(context, **options)
        # Counted when accepted: the model runs them later, in the background.
        first_wave = len(server.client.batches())
        assert 0 < first_wave < 7, "the worker sent some chunks and staged the rest"
        extra = {"callback_base_url": receiver_url, "callback_secret": SECRET}
        with run_emulator(allow_http_webhooks=True, webhook_time_scale=0.01) as other:
            modelbit_connection(host=other.url, extra=extra)
            event = asyncio.run(_trigger_event(trigger))
            assert event["status"] == "error"
            assert f"now points at {other.url}; callback job" in event["submission_error"]
            with pytest.raises(ModelbitCallbackError) as failed:
                _resume_batch(context, event, **options)
            assert f"workspace_url '{server.url}' -> '{other.url}'" in str(failed.value)
            assert SECRET not in str(failed.value) + event["submission_error"]
            assert other.client.batches() == [] and other.client.runs("echo") == {}
        _wait_for(
            lambda: all(batch["state"].startswith("deliver") for batch in server.client.batches()),
            lambda: f"batches still running: {server.client.batches()}",
        )
        assert len(server.client.batches()) == first_wave, "nothing more sent to the job's workspace either"
        sent_rows = TABLE.column("key").to_pylist()[: 3 * first_wave]
        assert server.client.runs("echo") == dict.fromkeys(sent_rows, 1)
        assert not output.exists() and not Path(f"{output}.checkpoint").exists()
        assert store.is_retired(job_id_for_try(task_job_prefix("dag", "score", ti.run_id, -1), 1))


class TestExpiredLinks:
    def test_a_resume_after_every_link_expired_resubmits_all_chunks_in_one_wave(
        self, server: RunningEmulator, store: CallbackStore, input_table: Path, tmp_path: Path
    ) -> None:
        """
        The task resumes after the results links expired (a late resume, a retry an hour on): every
        chunk is resubmitted together, so one more deferral, not one per chunk, writes the clean file.
        """
        server.client.configure(sort_results_by_id=True, link_expiry_seconds=1)
        context: Any = {"ti": _TaskInstance(f"run-{uuid.uuid4().hex[:8]}")}
        output = tmp_path / "out.parquet"
        options = batch_kwargs(input_table, output, response_format="links")
        event = asyncio.run(_trigger_event(_defer_batch(context, **options)))
        delivered = time.time()
        # A link expires at the whole second after its lifetime: at most 2 s after its delivery.
        _wait_for(lambda: time.time() >= delivered + 2, lambda: "the links still live")
        server.client.configure(link_expiry_seconds=3600)

        with pytest.raises(TaskDeferred) as resubmitted:
            _resume_batch(context, event, **options)
        last_event = asyncio.run(_trigger_event(resubmitted.value.trigger))
        summary = _resume_batch(context, last_event, **options)

        assert summary["rows"] == ROWS
        assert len(server.client.batches()) == 2 * 7, "each chunk submitted once, then resubmitted once"
        assert server.client.runs("echo") == dict.fromkeys(TABLE.column("key").to_pylist(), 2)
        clean = run_batch(
            False, **batch_kwargs(input_table, tmp_path / "clean.parquet", response_format="links")
        )
        assert clean.state == "success", clean.error
        assert output.read_bytes() == (tmp_path / "clean.parquet").read_bytes()
        assert _store_entries(store) == ["_retired"]


class TestEventValidation:
    @pytest.mark.parametrize("event", [None, {}, {"status": "weird"}, {"status": "success"}])
    def test_unknown_or_incomplete_events_are_refused(self, event) -> None:
        with pytest.raises(ModelbitCallbackError):
            validate_callback_event(event)

    def test_job_id_names_the_task_instance_and_the_generation(self) -> None:
        assert task_job_prefix("d", "t", "r", 0) == task_job_prefix("d", "t", "r", 0)
        assert task_job_prefix("d", "t", "r", 0) != task_job_prefix("d", "t", "r", 1)
        assert job_id_for_try(task_job_prefix("d", "t", "r", 0), 1) != job_id_for_try(
            task_job_prefix("d", "t", "r", 0), 2
        )


#: What Airflow 3.3's triggerer passes to ``Task.cancel`` for every trigger it runs that the
#: database no longer assigns to it: a user's mark or clear, or another triggerer's takeover.
USER_ACTION_CANCEL_MESSAGE = "__airflow_user_action__"
#: A chunk per row, at most two outstanding: the trigger submits most of them, paced, for seconds.
PACED = {"batch_size": 1, "max_concurrency": 2}


class _StalledTriggerer:
    """
    One trigger run in an event loop of its own thread, as a triggerer runs it. The test can stall
    its pacing between two submissions (as a long pause stalls a triggerer, which Airflow then
    takes for dead and hands the trigger to another), resume it, and cancel the trigger as
    Airflow 3.3's ``TriggerRunner.run_trigger`` does.
    """

    def __init__(self, trigger: ModelbitCallbackTrigger, monkeypatch: pytest.MonkeyPatch) -> None:
        self.trigger = trigger
        self.events: list[dict[str, Any]] = []
        self._pacers: list[SubmissionPacer] = []
        self._stall, self._stalled, self._resumed = threading.Event(), threading.Event(), threading.Event()
        self._gate_the_pacer(monkeypatch)
        self.loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="stalled-triggerer", daemon=True)
        self._thread.start()

    def _gate_the_pacer(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Hold this trigger's pacer, once :meth:`stall` asks, where it next looks at the store."""
        made, look = SubmissionPacer.__init__, SubmissionPacer._look

        def noted(pacer: SubmissionPacer, *args: Any, **kwargs: Any) -> None:
            made(pacer, *args, **kwargs)
            if threading.current_thread() is self._thread:
                self._pacers.append(pacer)

        def gated(pacer: SubmissionPacer, outstanding: list[int]) -> Any:
            if self._stall.is_set() and pacer in self._pacers:
                self._stalled.set()
                self._resumed.wait(300)  # bounded, so a failing test cannot hang
            return look(pacer, outstanding)

        monkeypatch.setattr(SubmissionPacer, "__init__", noted)
        monkeypatch.setattr(SubmissionPacer, "_look", gated)

    def _run(self) -> None:
        self._task = self.loop.create_task(self._run_trigger())
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self._task)
        self.loop.close()

    async def _run_trigger(self) -> None:
        try:
            self.events += [event.payload async for event in self.trigger.run()]
        except asyncio.CancelledError as cancelled:
            if cancelled.args and cancelled.args[0] == USER_ACTION_CANCEL_MESSAGE:
                await self.trigger.on_kill()
            raise

    def stall(self) -> None:
        """Stop the pacing at its next look at the store (its requests under way finish first)."""
        self._stall.set()
        assert self._stalled.wait(120), "the trigger's pacing never reached its next look"

    def resume(self) -> None:
        self._resumed.set()

    def cancel_as_the_triggerer(self) -> None:
        self.loop.call_soon_threadsafe(lambda: cast(Any, self._task).cancel(USER_ACTION_CANCEL_MESSAGE))

    def join(self) -> None:
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the trigger never ended"


def _wait_for(condition: Callable[[], bool], describe: Callable[[], str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {timeout:.0f} s: {describe()}"
        time.sleep(0.02)


def _paced_batch(input_path: Path, output_path: Path, **overrides: Any) -> ModelbitBatchInferenceOperator:
    options = {**FAST, **batch_kwargs(input_path, output_path, **PACED), **overrides}
    return ModelbitBatchInferenceOperator(task_id="score", deferrable=True, **options)


def _defer(operator: ModelbitBatchInferenceOperator, context: Any) -> dict[str, Any]:
    """Run a try until it defers; return its trigger's kwargs."""
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    return deferred.value.trigger.serialize()[1]


def _assert_scored_once_like_a_clean_run(
    server: RunningEmulator, input_table: Path, output: Path, tmp_path: Path
) -> None:
    """Every row ran once; the output is the byte-identical file a synchronous run writes."""
    assert server.client.runs("echo") == dict.fromkeys(TABLE.column("key").to_pylist(), 1)
    clean = run_batch(False, **batch_kwargs(input_table, tmp_path / "clean.parquet", **PACED))
    assert clean.state == "success", clean.error
    assert output.read_bytes() == (tmp_path / "clean.parquet").read_bytes()


class TestStopping:
    """Stopping keeps what the task or its retry still uses and retires only what nobody will read."""

    @pytest.fixture(autouse=True)
    def paced(self, server: RunningEmulator) -> None:
        server.client.configure(sort_results_by_id=True)
        # Each request holds the model a while, so the trigger is still submitting when it is stalled.
        server.client.set_faults(model_seconds=0.3, deployment="echo")

    def _taken_over(
        self, server: RunningEmulator, kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> tuple[_StalledTriggerer, dict[str, Any]]:
        """
        Triggerer A submits some chunks, then stalls; triggerer B takes the trigger over
        and runs it to its event, as Airflow does when A misses its heartbeats.
        """
        sent_by_the_worker = len(server.client.batches())
        first = _StalledTriggerer(ModelbitCallbackTrigger(**kwargs), monkeypatch)
        _wait_for(lambda: len(server.client.batches()) > sent_by_the_worker, lambda: "A submitted nothing")
        first.stall()
        [event] = asyncio.run(_events_of(ModelbitCallbackTrigger(**kwargs)))
        assert event["status"] == "success", event
        return first, event

    def test_a_trigger_cancelled_after_another_triggerer_took_it_over_retires_nothing(
        self, server: RunningEmulator, store: CallbackStore, input_table: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        """
        Airflow 3.3 cancels the stalled triggerer's copy with the user-action message once it
        recovers: only a stop request is left, the resumed task withdraws it and finishes.
        """
        context: Any = {"ti": _TaskInstance(f"run-{uuid.uuid4().hex[:8]}")}
        output = tmp_path / "scores.parquet"
        kwargs = _defer(_paced_batch(input_table, output), context)
        job_id = kwargs["job_id"]
        stalled, event = self._taken_over(server, kwargs, monkeypatch)
        stalled.cancel_as_the_triggerer()
        stalled.join()
        stalled.resume()
        assert store.stop_request(job_id) is not None, "on_kill asked the task to stop the job"
        assert not store.is_retired(job_id) and len(store.delivered_chunks(job_id)) == ROWS

        assert _complete(_paced_batch(input_table, output), context, event)["rows"] == ROWS
        assert store.stop_request(job_id) is None and store.tombstone(job_id).reason == "finished"
        _assert_scored_once_like_a_clean_run(server, input_table, output, tmp_path)

    def test_a_stalled_trigger_that_resumes_after_the_task_finished_sends_nothing_again(
        self, server: RunningEmulator, store: CallbackStore, input_table: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        context: Any = {"ti": _TaskInstance(f"run-{uuid.uuid4().hex[:8]}")}
        output = tmp_path / "scores.parquet"
        kwargs = _defer(_paced_batch(input_table, output), context)
        stalled, event = self._taken_over(server, kwargs, monkeypatch)
        assert _complete(_paced_batch(input_table, output), context, event)["rows"] == ROWS
        stalled.resume()  # its ledger still lists chunks to submit
        stalled.join()
        assert [e["status"] for e in stalled.events] == ["error"] and "retired" in stalled.events[0][
            "message"
        ]
        assert not Path(store.location, kwargs["job_id"]).exists(), "the finished job is not brought back"
        _assert_scored_once_like_a_clean_run(server, input_table, output, tmp_path)

    def test_a_users_clear_while_deferred_retires_the_job_before_the_next_try_sends_anything(
        self, server: RunningEmulator, store: CallbackStore, input_table: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        ti = _TaskInstance(f"run-{uuid.uuid4().hex[:8]}")
        context: Any = {"ti": ti}
        output = tmp_path / "scores.parquet"
        kwargs = _defer(_paced_batch(input_table, output), context)
        job_id = kwargs["job_id"]
        triggerer = _StalledTriggerer(ModelbitCallbackTrigger(**kwargs), monkeypatch)
        _wait_for(lambda: len(server.client.batches()) >= 3, lambda: "the trigger submitted too little")
        triggerer.cancel_as_the_triggerer()  # cleared: the trigger is no longer assigned anywhere
        triggerer.join()
        assert store.stop_request(job_id) is not None and not store.is_retired(job_id)
        sent = _chunks_sent_for(server, job_id)
        assert len(sent) < ROWS, "the cancelled trigger stopped submitting"

        ti.try_number = 2
        retry = _paced_batch(input_table, output)
        retry_kwargs = _defer(retry, context)
        assert store.is_retired(job_id) and "stopped" in cast(Tombstone, store.tombstone(job_id)).reason
        [event] = asyncio.run(_events_of(ModelbitCallbackTrigger(**retry_kwargs)))
        assert _complete(retry, context, event)["rows"] == ROWS
        assert _chunks_sent_for(server, job_id) == sent, "the cleared job sent nothing after the clear"
        keys = TABLE.column("key").to_pylist()
        twice = {keys[chunk] for chunk in sent}  # a chunk per row
        assert server.client.runs("echo") == {key: 2 if key in twice else 1 for key in keys}, (
            "the new try scores every row again, the cleared job only what it had sent"
        )
        clean = run_batch(False, **batch_kwargs(input_table, tmp_path / "clean.parquet", **PACED))
        assert clean.state == "success", clean.error
        assert output.read_bytes() == (tmp_path / "clean.parquet").read_bytes()

    def test_execution_timeout_keeps_the_delivered_chunks_for_the_retry(
        self, server: RunningEmulator, store: CallbackStore, input_table: Path, tmp_path: Path
    ) -> None:
        """
        ``execution_timeout`` passes while the trigger is paused with chunks still to submit: the
        trigger submits nothing more, the task times out without sending anything, and its retry
        sends only what was never delivered.
        """
        ti = _TaskInstance(f"run-{uuid.uuid4().hex[:8]}")
        context: Any = {"ti": ti}
        output = tmp_path / "scores.parquet"
        limit = {"execution_timeout": timedelta(minutes=30)}
        first = _paced_batch(input_table, output, **limit)
        kwargs = _defer(first, context)
        job_id = kwargs["job_id"]
        sent_by_the_worker = len(server.client.batches())
        _wait_for(lambda: len(store.delivered_chunks(job_id)) == sent_by_the_worker, lambda: "no delivery")
        ledger = cast(CallbackJob, load_job(store, job_id))
        ledger.not_after = time.time() - 1  # the task's execution_timeout passed while it waited
        save_job(store, ledger)

        [event] = asyncio.run(_events_of(ModelbitCallbackTrigger(**kwargs)))
        assert event["status"] == "error" and "execution_timeout" in event["submission_error"]
        assert len(server.client.batches()) == sent_by_the_worker, "the trigger submitted nothing more"
        # However the event reads, the worker submits nothing once the timeout passed.
        success = {**event, "status": "success", "submission_error": None}
        with pytest.raises(AirflowTaskTimeout, match="kept for a retry"):
            _paced_batch(input_table, output, **limit).execute_complete(context, success)
        first.on_kill()  # Airflow calls it after the timeout: the job is kept all the same
        assert len(server.client.batches()) == sent_by_the_worker and not store.is_retired(job_id)

        ti.try_number = 2
        retry = _paced_batch(input_table, output, **limit)
        [event] = asyncio.run(_events_of(ModelbitCallbackTrigger(**_defer(retry, context))))
        assert _complete(retry, context, event)["rows"] == ROWS
        assert len(server.client.batches()) == ROWS, "the delivered chunks were not sent again"
        _assert_scored_once_like_a_clean_run(server, input_table, output, tmp_path)

    def test_execution_timeout_in_the_last_try_retires_the_job(
        self, server: RunningEmulator, store: CallbackStore, input_table: Path, tmp_path: Path
    ) -> None:
        ti = _TaskInstance(f"run-{uuid.uuid4().hex[:8]}")
        ti.max_tries = 0
        operator = _paced_batch(input_table, tmp_path / "scores.parquet")
        job_id = _defer(operator, {"ti": ti})["job_id"]
        operator.on_kill()
        assert store.is_retired(job_id)


def _complete(operator: ModelbitBatchInferenceOperator, context: Any, event: dict[str, Any]) -> Any:
    """Resume the task at ``event``; run the trigger again each time it defers once more."""
    while True:
        try:
            return operator.execute_complete(context, event)
        except TaskDeferred as deferred:
            [event] = asyncio.run(_events_of(deferred.trigger))


def _chunks_sent_for(server: RunningEmulator, job_id: str) -> list[int]:
    """The chunks of ``job_id`` the server received, read from each request's webhook URL."""
    marker = f"/{job_id}/"
    urls = [str(batch["webhook_url"]) for batch in server.client.batches()]
    return sorted(int(url.split(marker, 1)[1].split("?", 1)[0]) for url in urls if marker in url)


async def _events_of(trigger: ModelbitCallbackTrigger) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return await asyncio.wait_for(collect(), timeout=180)
