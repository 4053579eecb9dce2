"""One chunk's submission (callbacks/submission.py): what a failed submission means for the ledger.

The submissions go through the real sync hook to the local Modelbit server (or a scripted server
for a gateway timeout): an answer that refuses the request gives the claim back and counts no
attempt, and the caller stops with the answer's error; only a request that got no answer after it
was sent may have been accepted, so its delivery is awaited.
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
from airflow_provider_modelbit.callbacks.submission import CallbackTarget, ChunkSubmission
from airflow_provider_modelbit.emulator import RunningEmulator
from airflow_provider_modelbit.exceptions import (
    ModelbitAuthError,
    ModelbitError,
    ModelbitNotFound,
    ModelbitPermanentError,
    ModelbitRateLimited,
    ModelbitTimeout,
    ModelbitTransportError,
)
from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
from airflow_provider_modelbit.hooks.retries import RetryPolicy
from tests.scripted_http import CannedResponse, ScriptedServer

CONN_ID = "modelbit_default"
SECRET = "submission-test-secret-0123"
ROWS = [[1, 1], [2, 2]]
#: Two quick attempts: a 429 that never ends spends them in well under a second.
QUICK = RetryPolicy(max_attempts=2, initial_wait=0.01, max_wait=0.05, max_total_wait=1.0)


def submit_once(store: CallbackStore, deployment: str) -> tuple[ChunkSubmission, ModelbitError | None]:
    """Submit chunk 0 of a new job as the worker does; return the submission and its error, if any."""
    request = JobRequest(CONN_ID, "http://unused", deployment, "latest", None, None, 60)
    job = CallbackJob(f"mb-submission-{uuid.uuid4().hex[:12]}", request)
    job.add_chunk("hash-0")
    job.seal(1)
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
