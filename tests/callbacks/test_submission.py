"""One chunk's submission (callbacks/submission.py): opening it, and what a failed one means for the ledger.

A submission is opened only while the connection, as this process reads it, still points at the
job's workspace. The submissions go through the real sync hook to the local Modelbit server (or a
scripted server for a gateway timeout): an answer that refuses the request gives the claim back and
counts no attempt, and the caller stops with the answer's error; only a request that got no answer
after it was sent may have been accepted, so its delivery is awaited.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_modelbit.callbacks.job import CallbackJob, ChunkState, JobRequest, load_job
from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.callbacks.submission import CallbackTarget, ChunkSubmission, callback_target
from airflow_provider_modelbit.emulator import RunningEmulator
from airflow_provider_modelbit.exceptions import (
    ModelbitAuthError,
    ModelbitConnectionError,
    ModelbitError,
    ModelbitNotFound,
    ModelbitPermanentError,
    ModelbitRateLimited,
    ModelbitTimeout,
    ModelbitTransportError,
)
from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
from airflow_provider_modelbit.hooks.retries import RetryPolicy
from airflow_provider_modelbit.hooks.settings import ModelbitSettings
from tests.scripted_http import CannedResponse, ScriptedServer

CONN_ID = "modelbit_default"
API_KEY = "mi_submission_test_key_0123"
SECRET = "submission-test-secret-0123"
WORKSPACE = "https://acme.modelbit.com"
ROWS = [[1, 1], [2, 2]]
#: Two quick attempts: a 429 that never ends spends them in well under a second.
QUICK = RetryPolicy(max_attempts=2, initial_wait=0.01, max_wait=0.05, max_total_wait=1.0)


def new_job(deployment: str = "doubler") -> CallbackJob:
    """A job of one chunk, submitted to :data:`WORKSPACE`."""
    request = JobRequest(CONN_ID, WORKSPACE, deployment, "latest", None, None, 60)
    job = CallbackJob(f"mb-submission-{uuid.uuid4().hex[:12]}", request)
    job.add_chunk("hash-0")
    job.seal(1)
    return job


def submit_once(store: CallbackStore, deployment: str) -> tuple[ChunkSubmission, ModelbitError | None]:
    """Submit chunk 0 of a new job as the worker does; return the submission and its error, if any."""
    job = new_job(deployment)
    target = CallbackTarget("http://127.0.0.1:9/modelbit", SECRET, CONN_ID, 60, 30)
    submission = ChunkSubmission(store, job, target, logging.getLogger(__name__))
    submission.open()
    url = submission.begin(0)
    assert url is not None
    hook = ModelbitHook(CONN_ID, retry_policy=QUICK)
    try:
        batch_id = hook.submit_async(deployment, ROWS, webhook_url=url, timeout_seconds=60)
    except ModelbitError as error:
        return submission, error
    submission.accepted(0, batch_id)
    return submission, None


def settings(base_url: str) -> ModelbitSettings:
    """The connection as a process reads it, pointing at ``base_url``."""
    return ModelbitSettings(
        conn_id=CONN_ID,
        base_url=base_url,
        api_key=API_KEY,
        callback_base_url="https://airflow.example.com/modelbit",
        callback_secret=SECRET,
    )


@pytest.fixture
def store(tmp_path: Path) -> CallbackStore:
    return CallbackStore(str(tmp_path / "callbacks"))


@pytest.fixture
def emulator(modelbit_emulator_session: RunningEmulator) -> Any:
    modelbit_emulator_session.client.reset()
    yield modelbit_emulator_session
    modelbit_emulator_session.client.reset()


def wrong_key(emulator: RunningEmulator, connect: Callable[..., str]) -> str:
    connect(host=emulator.url, password="not-a-key-of-this-workspace")
    return "doubler"


def unknown_deployment(emulator: RunningEmulator, connect: Callable[..., str]) -> str:
    connect(host=emulator.url)
    return "no_such_model"


def rate_limited_throughout(emulator: RunningEmulator, connect: Callable[..., str]) -> str:
    connect(host=emulator.url)
    emulator.client.set_faults(rate_429=1.0, retry_after=0, deployment="doubler")
    return "doubler"


def nothing_listening(emulator: RunningEmulator, connect: Callable[..., str]) -> str:
    connect(host="http://127.0.0.1:9")
    return "doubler"


def answer_lost(emulator: RunningEmulator, connect: Callable[..., str]) -> str:
    connect(host=emulator.url)
    emulator.client.set_faults(drop_after_rate=1.0, seed=1)
    return "doubler"


class TestCallbackTarget:
    def test_the_jobs_workspace_opens_the_submission(self) -> None:
        target = callback_target(settings(WORKSPACE), new_job(), delivery_margin=30)
        assert (target.base_url, target.timeout_seconds) == ("https://airflow.example.com/modelbit", 60)

    @pytest.mark.parametrize(
        "now",
        ["https://other.modelbit.com", "https://user:pw@other.modelbit.com", "http://acme.modelbit.com"],
    )
    def test_another_workspace_is_refused_naming_both_and_no_secret(self, now: str) -> None:
        """A connection edited, or defined differently in the triggerer: nothing goes elsewhere."""
        job = new_job()
        with pytest.raises(ModelbitConnectionError) as refused:
            callback_target(settings(now), job, delivery_margin=30)
        message = str(refused.value)
        shown = now.replace("user:pw@", "")
        assert f"Connection {CONN_ID!r} now points at {shown}" in message
        assert f"callback job {job.job_id} was submitted to {WORKSPACE}" in message
        assert not any(secret in message for secret in (API_KEY, SECRET, "pw@"))


class TestFailedSubmission:
    @pytest.mark.parametrize(
        ("scene", "error"),
        [
            pytest.param(wrong_key, ModelbitAuthError, id="401-wrong-key"),
            pytest.param(unknown_deployment, ModelbitNotFound, id="404-unknown-deployment"),
            pytest.param(rate_limited_throughout, ModelbitRateLimited, id="429-retries-ran-out"),
            pytest.param(nothing_listening, ModelbitTransportError, id="never-sent"),
        ],
    )
    def test_a_submission_not_taken_is_given_back_uncounted(
        self, emulator: RunningEmulator, modelbit_connection, store: CallbackStore,
        scene: Callable[..., str], error: type[ModelbitError],
    ) -> None:  # fmt: skip
        submission, raised = submit_once(store, scene(emulator, modelbit_connection))
        assert isinstance(raised, error), repr(raised)
        assert submission.failed(0, raised) is True, "the caller stops with the error"
        ledger = load_job(store, submission.job.job_id)
        assert ledger is not None
        assert (ledger.chunks[0].state, ledger.chunks[0].attempts) == (ChunkState.PENDING, 0)
        assert store.claim_submission(ledger.job_id, 0, 1), "the claim was given back"
        assert emulator.client.batches() == [] and emulator.client.runs("doubler") == {}

    def test_a_refused_key_is_a_permanent_error_naming_deployment_and_connection(
        self, emulator: RunningEmulator, modelbit_connection, store: CallbackStore
    ) -> None:
        _, raised = submit_once(store, wrong_key(emulator, modelbit_connection))
        assert isinstance(raised, ModelbitPermanentError)
        assert "Deployment 'doubler'" in raised.message and f"connection {CONN_ID!r}" in raised.message

    def test_a_submission_whose_answer_was_lost_is_awaited(
        self, emulator: RunningEmulator, modelbit_connection, store: CallbackStore
    ) -> None:
        submission, raised = submit_once(store, answer_lost(emulator, modelbit_connection))
        assert isinstance(raised, ModelbitTransportError) and raised.request_sent, repr(raised)
        assert submission.failed(0, raised) is False, "Modelbit may have accepted it"
        ledger = load_job(store, submission.job.job_id)
        assert ledger is not None
        assert (ledger.chunks[0].state, ledger.chunks[0].attempts) == (ChunkState.SENT, 1)
        assert not store.claim_submission(ledger.job_id, 0, 1), "the attempt stays claimed"
        assert len(emulator.client.batches()) == 1, "the server did take it"

    def test_a_gateway_timeout_answer_is_awaited(
        self, scripted_server: ScriptedServer, modelbit_connection, store: CallbackStore
    ) -> None:
        """A gateway that timed out may have passed the request on: not a refusal."""
        scripted_server.script(CannedResponse(504, b"<html>Gateway Timeout</html>"))
        modelbit_connection(host=scripted_server.url)
        submission, raised = submit_once(store, "doubler")
        assert isinstance(raised, ModelbitTimeout) and not raised.refused, repr(raised)
        assert submission.failed(0, raised) is False
        ledger = load_job(store, submission.job.job_id)
        assert ledger is not None and ledger.chunks[0].state is ChunkState.SENT
