"""ModelbitCallbackTrigger submitting a job's staged chunks, paced, against the local Modelbit server.

The job is staged as the worker stages it (ledger saved, each chunk's encoded data in the store),
the receiver stores the real webhook deliveries, and the server's recorded async batches say when
each chunk was submitted and delivered: never more outstanding than the limit, every row run once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_modelbit.callbacks.job import (
    CallbackJob,
    ChunkState,
    JobRequest,
    load_job,
    payload_hash,
    save_job,
)
from airflow_provider_modelbit.callbacks.receiver import StaticSecretSource, create_callback_app
from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.callbacks.submission import ChunkSubmission, callback_target
from airflow_provider_modelbit.emulator import RunningEmulator
from airflow_provider_modelbit.emulator.server import run_emulator
from airflow_provider_modelbit.exceptions import (
    ModelbitAuthError,
    ModelbitConnectionError,
    ModelbitNotFound,
    ModelbitPermanentError,
    ModelbitRateLimited,
)
from airflow_provider_modelbit.hooks import base as hook_base
from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
from airflow_provider_modelbit.hooks.retries import RetryPolicy
from airflow_provider_modelbit.triggers.callback import ModelbitCallbackTrigger, submission_error
from tests.asgi_thread import serve_in_thread

SECRET = "pacing-test-secret-0123"
CONN_ID = "modelbit_default"
DEPLOYMENT = "doubler"
ROWS_PER_CHUNK = 2


@pytest.fixture
def store(tmp_path: Path) -> CallbackStore:
    return CallbackStore(str(tmp_path / "callbacks"))


@pytest.fixture
def server(
    modelbit_emulator_session: RunningEmulator, modelbit_connection: Callable[..., str], store: CallbackStore
) -> Iterator[RunningEmulator]:
    """The local server delivering to a receiver on 127.0.0.1; each request holds the model 0.2 s."""
    app = create_callback_app(store=store, secrets=StaticSecretSource({CONN_ID: SECRET}))
    client = modelbit_emulator_session.client
    with serve_in_thread(app) as receiver_url:
        client.reset()
        client.configure(allow_http_webhooks=True, webhook_time_scale=0.01)
        client.set_faults(model_seconds=0.2, deployment=DEPLOYMENT)
        extra = {"callback_base_url": receiver_url, "callback_secret": SECRET}
        modelbit_connection(host=modelbit_emulator_session.url, extra=extra)
        yield modelbit_emulator_session
        client.reset()


def chunk_rows(chunk: int) -> list[list[int]]:
    return [[chunk * ROWS_PER_CHUNK + i, i] for i in range(ROWS_PER_CHUNK)]


def stage_job(
    store: CallbackStore, server: RunningEmulator, chunks: int, deployment: str = DEPLOYMENT
) -> CallbackJob:
    """Stage a job of ``chunks`` pending chunks, as the worker leaves them to the trigger."""
    hook = ModelbitHook(CONN_ID)
    request = JobRequest(CONN_ID, server.url, deployment, "latest", None, None, 60)
    job = CallbackJob(f"mb-pacing-{uuid.uuid4().hex[:12]}", request)
    for chunk in range(chunks):
        rows = chunk_rows(chunk)
        job.add_chunk(payload_hash(rows))
        encoded = hook.encode_submission_data(
            hook.settings, deployment, rows, version="latest", branch=None, timeout_seconds=60,
            response_format=None,
        )  # fmt: skip
        store.stage_request(job.job_id, chunk, encoded)
    job.seal(chunks)
    job.extend_deadline(time.time() + 120)
    save_job(store, job)
    return job


def submit_as_the_worker(store: CallbackStore, job: CallbackJob, chunk: int) -> None:
    """Send one chunk as the worker's first wave does: the sync hook, by the rules of ChunkSubmission."""
    hook = ModelbitHook(CONN_ID)
    target = callback_target(hook.settings, job, delivery_margin=30)
    submission = ChunkSubmission(store, job, target, logging.getLogger(__name__))
    submission.open()
    url = submission.begin(chunk)
    assert url is not None
    batch_id = hook.submit_async(DEPLOYMENT, chunk_rows(chunk), webhook_url=url, timeout_seconds=60)
    submission.accepted(chunk, batch_id)


def pacing_trigger(store: CallbackStore, job: CallbackJob, ceiling: int) -> ModelbitCallbackTrigger:
    return ModelbitCallbackTrigger(
        job_id=job.job_id,
        chunks=range(len(job.chunks)),
        store_location=store.location,
        deadline=job.wait_until(),
        poll_interval=0.1,
        conn_id=CONN_ID,
        deferred_by_try=1,
        max_concurrency=ceiling,
        adaptive=True,
        delivery_margin=30,
    )


async def first_event(trigger: ModelbitCallbackTrigger, limit: float = 120) -> dict[str, Any]:
    async def collect() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return await asyncio.wait_for(collect(), timeout=limit)


def most_outstanding(batches: list[dict[str, Any]]) -> int:
    """The most batches submitted and not yet delivered at any moment, from the server's record."""
    moments = []
    for batch in batches:
        delivered = min(attempt["time"] for attempt in batch["attempts"])
        moments += [(batch["created"], 1), (delivered, -1)]
    level = highest = 0
    for _, change in sorted(moments, key=lambda moment: (moment[0], moment[1])):
        level += change
        highest = max(highest, level)
    return highest


def assert_every_row_ran_once(server: RunningEmulator, chunks: int) -> None:
    runs = server.client.runs(DEPLOYMENT)
    assert runs == {str(row): 1 for row in range(chunks * ROWS_PER_CHUNK)}


class TestPacedSubmission:
    def test_staged_chunks_are_submitted_within_the_limit_and_each_row_runs_once(
        self, server: RunningEmulator, store: CallbackStore
    ) -> None:
        job = stage_job(store, server, chunks=12)
        event = asyncio.run(first_event(pacing_trigger(store, job, ceiling=3)))
        assert event["status"] == "success", event
        assert event["chunks"] == list(range(12))
        batches = server.client.batches()
        assert len(batches) == 12, "each chunk submitted once"
        assert most_outstanding(batches) <= 3
        assert_every_row_ran_once(server, 12)
        assert event["concurrency"]["ceiling"] == 3 and 1 <= event["concurrency"]["final"] <= 3
        ledger = load_job(store, job.job_id)
        assert ledger is not None and ledger.in_state(ChunkState.PENDING) == []
        assert all(record.attempts == 1 for record in ledger.chunks)

    def test_a_trigger_rebuilt_mid_submission_sends_nothing_twice(
        self, server: RunningEmulator, store: CallbackStore
    ) -> None:
        """
        The triggerer stops mid-submission (the trigger is cancelled, as on shutdown); the trigger
        rebuilt from its kwargs awaits what was sent and submits only what was not.
        """
        job = stage_job(store, server, chunks=10)
        trigger = pacing_trigger(store, job, ceiling=2)

        def accepted_and_none_in_doubt() -> bool:
            # Stopping while a request is on the wire leaves it in doubt (awaited until the deadline,
            # then resent by the task's retry policy); this test stops between requests.
            ledger = load_job(store, job.job_id)
            assert ledger is not None
            return len(ledger.in_state(ChunkState.ACCEPTED)) >= 3 and not ledger.in_state(ChunkState.SENT)

        async def stop_after_some_submissions() -> None:
            running = asyncio.create_task(first_event(trigger))
            while not accepted_and_none_in_doubt():
                assert not running.done(), "the trigger finished before it was stopped"
                await asyncio.sleep(0.02)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

        asyncio.run(stop_after_some_submissions())
        sent_before = len(server.client.batches())
        assert sent_before < 10
        _, kwargs = trigger.serialize()
        event = asyncio.run(first_event(ModelbitCallbackTrigger(**kwargs)))
        assert event["status"] == "success", event
        assert len(server.client.batches()) == 10, "nothing sent twice"
        assert_every_row_ran_once(server, 10)

    def test_two_trigger_instances_at_once_send_nothing_twice(
        self, server: RunningEmulator, store: CallbackStore
    ) -> None:
        """A handover runs one trigger on two triggerers for a while: each chunk is claimed by one."""
        job = stage_job(store, server, chunks=8)

        async def both() -> list[dict[str, Any]]:
            return await asyncio.gather(
                first_event(pacing_trigger(store, job, ceiling=3)),
                first_event(pacing_trigger(store, job, ceiling=3)),
            )

        events = asyncio.run(both())
        assert [event["status"] for event in events] == ["success", "success"], events
        assert len(server.client.batches()) == 8
        assert_every_row_ran_once(server, 8)

    def test_a_refusal_at_submission_halves_the_limit_and_the_row_still_runs_once(
        self, server: RunningEmulator, store: CallbackStore
    ) -> None:
        faults = {"model_seconds": 0.2, "rate_429": 0.3, "retry_after": 1, "seed": 3}
        server.client.set_faults(**faults, deployment=DEPLOYMENT)
        job = stage_job(store, server, chunks=8)
        event = asyncio.run(first_event(pacing_trigger(store, job, ceiling=4)))
        assert event["status"] == "success", event
        assert server.client.fault_counts().get("rate_429", 0) >= 1
        assert event["concurrency"]["lowered"].get("refusals", 0) >= 1
        assert len(server.client.batches()) == 8
        assert_every_row_ran_once(server, 8)

    def test_a_chunk_that_cannot_be_submitted_stops_the_submissions_with_an_error_event(
        self, server: RunningEmulator, store: CallbackStore
    ) -> None:
        job = stage_job(store, server, chunks=6)
        Path(store.location, job.job_id, "request-3.json").unlink()
        event = asyncio.run(first_event(pacing_trigger(store, job, ceiling=2)))
        assert event["status"] == "error"
        assert "chunk 3" in event["submission_error"] and SECRET not in event["submission_error"]
        ledger = load_job(store, job.job_id)
        assert ledger is not None and 3 in ledger.in_state(ChunkState.PENDING)
        assert len(server.client.batches()) < 6

    def test_a_retired_job_stops_the_submissions_at_once(
        self, server: RunningEmulator, store: CallbackStore
    ) -> None:
        job = stage_job(store, server, chunks=10)

        async def retire_after_the_first_submission() -> dict[str, Any]:
            running = asyncio.create_task(first_event(pacing_trigger(store, job, ceiling=2)))
            while not server.client.batches():
                await asyncio.sleep(0.05)
            await asyncio.to_thread(store.retire_job, job.job_id, "test")
            return await running

        event = asyncio.run(retire_after_the_first_submission())
        assert event["status"] == "error" and "retired" in event["submission_error"]
        sent = len(server.client.batches())
        assert sent < 10
        assert not Path(store.location, job.job_id).exists()

    def test_a_job_retired_under_a_submission_ends_as_retired_at_once(
        self, server: RunningEmulator, store: CallbackStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        Retiring deletes the job's folder while a submission reads its staged data: the pacing
        ends with the retirement, not with the data missing, and waits for no delivery.
        """
        job = stage_job(store, server, chunks=10)
        staged_request = CallbackStore.staged_request

        def retired_before_chunk_2(self: CallbackStore, job_id: str, chunk: int) -> bytes | None:
            if chunk == 2:
                self.retire_job(job_id, "task cleared")
            return staged_request(self, job_id, chunk)

        monkeypatch.setattr(CallbackStore, "staged_request", retired_before_chunk_2)
        started = time.monotonic()
        event = asyncio.run(first_event(pacing_trigger(store, job, ceiling=2)))
        assert time.monotonic() - started < 60, "not held until the delivery deadline (120 s away)"
        assert event["status"] == "error" and "retired" in event["submission_error"], event
        sent = len(server.client.batches())
        assert 2 <= sent < 10
        runs = server.client.runs(DEPLOYMENT)
        assert sum(runs.values()) == sent * ROWS_PER_CHUNK and set(runs.values()) == {1}
        assert not Path(store.location, job.job_id).exists()


def assert_nothing_sent(store: CallbackStore, job: CallbackJob, server: RunningEmulator) -> None:
    """Every refused submission was given back: pending, no attempt counted, no batch, no run."""
    ledger = load_job(store, job.job_id)
    assert ledger is not None
    assert [(record.state, record.attempts) for record in ledger.chunks] == [(ChunkState.PENDING, 0)] * len(
        job.chunks
    )
    assert server.client.batches() == []
    assert server.client.runs(job.request.deployment) == {}


class TestRefusedSubmissions:
    """Modelbit answers a staged chunk's submission with a refusal: nothing was taken."""

    @pytest.mark.parametrize(
        ("refusal", "error_class"),
        [("wrong key", ModelbitAuthError), ("unknown deployment", ModelbitNotFound)],
    )
    def test_a_permanent_refusal_ends_the_trigger_at_once_with_the_same_error(
        self, server: RunningEmulator, store: CallbackStore, modelbit_connection: Callable[..., str],
        refusal: str, error_class: type[ModelbitPermanentError],
    ) -> None:  # fmt: skip
        """The task then fails for good with the refusal's class, well before the delivery deadline."""
        deployment = "no_such_model" if refusal == "unknown deployment" else DEPLOYMENT
        job = stage_job(store, server, chunks=6, deployment=deployment)
        if refusal == "wrong key":
            # The key was changed in the triggerer's view of the connection after the worker staged.
            extra = {"callback_base_url": "http://127.0.0.1:9", "callback_secret": SECRET}
            modelbit_connection(host=server.url, password="not-a-key-of-this-workspace", extra=extra)
        started = time.monotonic()
        event = asyncio.run(first_event(pacing_trigger(store, job, ceiling=2)))
        assert time.monotonic() - started < 60, "not held until the deadline (120 s away)"
        assert event["status"] == "error" and event["submission_error_type"] == error_class.__name__
        error = submission_error(event)
        assert type(error) is error_class and isinstance(error, ModelbitPermanentError)
        assert f"Deployment {deployment!r}" in error.message and job.job_id in error.message
        if refusal == "wrong key":
            assert f"connection {CONN_ID!r}" in error.message
        assert SECRET not in repr(event)
        assert_nothing_sent(store, job, server)

    def test_a_rate_limit_whose_retries_ran_out_is_given_back_and_sent_once_later(
        self, server: RunningEmulator, store: CallbackStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The 429 proves the model never ran: the next trigger sends every chunk, each row runs once."""
        # A cap refusing throughout is waited out for the whole time budget (120 s): 2 s here.
        monkeypatch.setattr(hook_base, "RetryPolicy", partial(RetryPolicy, max_total_wait=2.0))
        server.client.set_faults(rate_429=1.0, retry_after=0, deployment=DEPLOYMENT)
        job = stage_job(store, server, chunks=4)
        started = time.monotonic()
        refused = asyncio.run(first_event(pacing_trigger(store, job, ceiling=2)))
        assert time.monotonic() - started < 60, "nothing was sent, so nothing is awaited until the deadline"
        assert refused["status"] == "error" and refused["submission_error_type"] == "ModelbitRateLimited"
        assert isinstance(submission_error(refused), ModelbitRateLimited)
        assert server.client.fault_counts().get("rate_429", 0) >= 1
        assert_nothing_sent(store, job, server)

        server.client.set_faults(model_seconds=0.2, deployment=DEPLOYMENT)
        event = asyncio.run(first_event(pacing_trigger(store, job, ceiling=2)))
        assert event["status"] == "success", event
        assert len(server.client.batches()) == 4, "each chunk submitted once"
        assert_every_row_ran_once(server, 4)
        ledger = load_job(store, job.job_id)
        assert ledger is not None and all(record.attempts == 1 for record in ledger.chunks)


class TestWorkspace:
    def test_a_connection_now_pointing_at_another_workspace_gets_nothing_submitted(
        self, server: RunningEmulator, store: CallbackStore, modelbit_connection: Callable[..., str]
    ) -> None:
        """
        The worker sent the first chunk to workspace A; the triggerer's connection now points at B
        (edited meanwhile, or defined differently there): no staged chunk goes to B, the trigger
        ends at once with a permanent connection error, and pointed back at A the job finishes
        with every row run once.
        """
        job = stage_job(store, server, chunks=4)
        submit_as_the_worker(store, job, 0)
        receiver_url = ModelbitHook(CONN_ID).settings.callback_base_url
        extra = {"callback_base_url": receiver_url, "callback_secret": SECRET}
        with run_emulator() as other:
            modelbit_connection(host=other.url, extra=extra)
            trigger = pacing_trigger(store, job, ceiling=2)
            event = asyncio.run(first_event(trigger))
            assert event["status"] == "error", event
            assert event["submission_error_type"] == ModelbitConnectionError.__name__
            assert isinstance(submission_error(event), ModelbitPermanentError), "fails at once, for good"
            message = event["submission_error"]
            moved = f"now points at {other.url}; callback job {job.job_id} was submitted to {server.url}"
            assert moved in message
            assert "no staged chunk was submitted" in message and SECRET not in message
            assert other.client.batches() == [] and other.client.runs(DEPLOYMENT) == {}
            assert len(server.client.batches()) == 1, "only the worker's chunk was sent"
            ledger = load_job(store, job.job_id)
            assert ledger is not None and ledger.in_state(ChunkState.PENDING) == [1, 2, 3]
            assert [record.attempts for record in ledger.chunks] == [1, 0, 0, 0]

            modelbit_connection(host=server.url, extra=extra)
            _, kwargs = trigger.serialize()
            event = asyncio.run(first_event(ModelbitCallbackTrigger(**kwargs)))
            assert event["status"] == "success", event
            assert other.client.batches() == []
        assert len(server.client.batches()) == 4
        assert_every_row_ran_once(server, 4)
