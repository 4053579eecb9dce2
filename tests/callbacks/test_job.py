"""The callback job type: fingerprints, chunk transitions, ids per generation, schema version."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_provider_modelbit.callbacks.job import (
    JOB_SCHEMA_VERSION,
    CallbackJob,
    ChunkState,
    JobRequest,
    JobStateError,
    job_id_for_try,
    load_job,
    payload_hash,
    save_job,
    task_job_prefix,
    work_marks,
)
from airflow_provider_modelbit.callbacks.store import CallbackStore

REQUEST = JobRequest(
    conn_id="modelbit_default",
    workspace_url="https://acme.modelbit.com",
    deployment="doubler",
    version="latest",
    branch="main",
    response_format=None,
    timeout_seconds=300,
)


def sealed_job(*payloads: object, work: dict[str, str] | None = None) -> CallbackJob:
    job = CallbackJob("mb-test-t1", REQUEST, work=dict(work or {}))
    for payload in payloads:
        job.add_chunk(payload_hash(payload))
    job.seal(len(payloads))
    return job


def hashes_of(*payloads: object) -> Callable[[], list[str]]:
    """The payload hashes of an input, read only when the rule asks for them."""
    return lambda: [payload_hash(payload) for payload in payloads]


def never_read() -> list[str]:
    raise AssertionError("the input was read again although its marks proved it unchanged")


class TestFingerprint:
    def test_the_same_request_and_input_match(self) -> None:
        job = sealed_job([[1, 21]], [[2, 22]])
        assert job.mismatch(REQUEST) is None
        assert job.mismatch(REQUEST, hashes_of([[1, 21]], [[2, 22]])) is None

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("conn_id", "modelbit_eu"),
            ("workspace_url", "https://other.modelbit.com"),
            ("deployment", "tripler"),
            ("version", "7"),
            ("branch", "feature"),
            ("response_format", "links"),
            ("timeout_seconds", 60),
        ],
    )
    def test_every_setting_that_decides_the_answer_is_compared(self, field: str, value: object) -> None:
        changed = dataclasses.replace(REQUEST, **{field: value})
        reason = sealed_job([[1, 21]]).mismatch(changed)
        assert reason is not None and field in reason

    def test_a_changed_payload_names_its_chunk(self) -> None:
        job = sealed_job([[1, 21]], [[2, 22]])
        reason = job.mismatch(REQUEST, hashes_of([[1, 21]], [[2, 1000]]))
        assert reason == "the input of chunk(s) [1] changed"

    def test_a_different_chunk_count_does_not_match(self) -> None:
        job = sealed_job([[1, 21]])
        assert "2 chunk(s)" in str(job.mismatch(REQUEST, hashes_of([[1, 21]], [[2, 2]])))

    def test_an_unsealed_job_answers_an_input_it_is_a_prefix_of(self) -> None:
        """A try that stopped while submitting left a prefix; the same input continues it."""
        job = CallbackJob("mb-test-t1", REQUEST)
        job.add_chunk(payload_hash([[1, 21]]))
        assert job.mismatch(REQUEST, hashes_of([[1, 21]], [[2, 22]])) is None
        assert job.mismatch(REQUEST, hashes_of([[1, 99]])) is not None

    def test_changed_settings_are_named_without_reading_the_input(self) -> None:
        changed = dataclasses.replace(REQUEST, version="7")
        reason = sealed_job([[1, 21]]).mismatch(changed, never_read, work_marks({"input": 1}))
        assert reason == "its settings changed: version 'latest' -> '7'"


class TestWorkMarks:
    """The cheap proof of an unchanged input: the marks the host took when the payloads were hashed."""

    WORK = {"input": [{"path": "/in.parquet", "size": "10", "mtime": "1.5"}], "columns": ["x"]}

    def test_unchanged_marks_prove_the_input_unchanged_without_reading_it(self) -> None:
        job = sealed_job([[1, 21]], work=work_marks(self.WORK))
        assert job.mismatch(REQUEST, never_read, work_marks(self.WORK)) is None

    def test_changed_marks_read_the_input_and_a_changed_payload_names_what_moved(self) -> None:
        job = sealed_job([[1, 21]], [[2, 22]], work=work_marks(self.WORK))
        rewritten = {**self.WORK, "input": [{"path": "/in.parquet", "size": "10", "mtime": "9.0"}]}
        reason = job.mismatch(REQUEST, hashes_of([[1, 21]], [[2, 99]]), work_marks(rewritten))
        assert reason == "the input of chunk(s) [1] changed; changed since it was submitted: input"

    def test_changed_marks_over_the_same_payloads_match_and_are_kept(self) -> None:
        """A file written again with the same rows is the same work; the next check is cheap again."""
        job = sealed_job([[1, 21]], work=work_marks(self.WORK))
        touched = {**self.WORK, "input": [{"path": "/in.parquet", "size": "10", "mtime": "9.0"}]}
        assert job.mismatch(REQUEST, hashes_of([[1, 21]]), work_marks(touched)) is None
        assert job.work == work_marks(touched)
        assert job.mismatch(REQUEST, never_read, work_marks(touched)) is None

    def test_without_marks_the_payloads_are_always_compared(self) -> None:
        job = sealed_job([[1, 21]])
        assert job.mismatch(REQUEST, hashes_of([[1, 21]]), {}) is None
        assert job.mismatch(REQUEST, hashes_of([[1, 22]]), {}) == "the input of chunk(s) [0] changed"

    def test_marks_name_their_items_and_survive_saving(self, tmp_path: Path) -> None:
        marks = work_marks(self.WORK)
        assert set(marks) == {"input", "columns"} and marks != work_marks({**self.WORK, "columns": ["y"]})
        store = CallbackStore(str(tmp_path))
        save_job(store, sealed_job([[1, 21]], work=marks))
        loaded = load_job(store, "mb-test-t1")
        assert loaded is not None and loaded.work == marks

    def test_payload_hash_follows_the_json_sent(self) -> None:
        assert payload_hash([[1, 2.0]]) == payload_hash([[1, 2.0]])
        assert payload_hash([[1, 2]]) != payload_hash([[1, 3]])
        assert payload_hash(21) != payload_hash("21")


class TestTransitions:
    def test_the_happy_path_counts_one_attempt(self) -> None:
        job = sealed_job(1)
        job.mark_sent(0, now=100.0)
        job.accept(0, "batch-1")
        job.record_delivery(0, "data")
        chunk = job.chunks[0]
        assert (chunk.state, chunk.attempts, chunk.batch_id) == (ChunkState.DELIVERED, 1, "batch-1")
        assert job.first_submitted_at == 100.0

    def test_a_missing_batch_id_still_counts_as_accepted(self) -> None:
        job = sealed_job(1)
        job.mark_sent(0, now=1.0)
        job.accept(0, None)
        assert job.in_state(ChunkState.ACCEPTED) == [0]

    def test_a_request_refused_before_sending_is_not_an_attempt(self) -> None:
        job = sealed_job(1)
        job.mark_sent(0, now=1.0)
        job.mark_not_sent(0)
        assert (job.chunks[0].state, job.chunks[0].attempts) == (ChunkState.PENDING, 0)

    def test_attempts_add_up_across_resubmissions(self) -> None:
        job = sealed_job(1)
        for _ in range(3):
            job.mark_sent(0, now=1.0)
            job.record_delivery(0, "error")
            assert job.in_state(ChunkState.ERRORED) == [0]
            job.requeue(0)
        assert job.chunks[0].attempts == 3

    def test_an_expired_link_delivery_goes_back_to_pending(self) -> None:
        job = sealed_job(1)
        job.mark_sent(0, now=1.0)
        job.record_delivery(0, "link")
        job.requeue(0)
        assert job.in_state(ChunkState.PENDING) == [0]

    @pytest.mark.parametrize(
        "steps",
        [["accept"], ["deliver"], ["sent", "sent"]],
        ids=["accept-pending", "deliver-pending", "send-twice"],
    )
    def test_transitions_out_of_order_are_refused(self, steps: list[str]) -> None:
        job = sealed_job(1)
        actions = {
            "accept": lambda: job.accept(0, "b"),
            "deliver": lambda: job.record_delivery(0, "data"),
            "sent": lambda: job.mark_sent(0, now=1.0),
        }
        with pytest.raises(JobStateError):
            for step in steps:
                actions[step]()

    def test_a_sealed_job_takes_no_new_chunk(self) -> None:
        with pytest.raises(JobStateError):
            sealed_job(1).add_chunk("x")

    def test_execution_timeout_caps_the_wait(self) -> None:
        job = sealed_job(1)
        job.extend_deadline(1000.0)
        assert job.wait_until() == 1000.0
        job.not_after = 400.0
        assert job.wait_until() == 400.0 and job.timed_out(400.0) and not job.timed_out(399.0)


class TestIds:
    def test_each_try_starts_its_own_generation(self) -> None:
        prefix = task_job_prefix("dag", "task", "run", -1)
        assert prefix == task_job_prefix("dag", "task", "run", None)
        assert job_id_for_try(prefix, 1) != job_id_for_try(prefix, 2)
        assert job_id_for_try(prefix, 2).startswith(prefix)

    def test_map_index_and_run_are_part_of_the_key(self) -> None:
        assert task_job_prefix("d", "t", "r", 0) != task_job_prefix("d", "t", "r", 1)
        assert task_job_prefix("d", "t", "r1", 0) != task_job_prefix("d", "t", "r2", 0)


class TestPersistence:
    def test_saved_and_loaded_through_the_store(self, tmp_path: Path) -> None:
        store = CallbackStore(str(tmp_path))
        job = sealed_job([[1, 1]], [[2, 2]])
        job.mark_sent(0, now=5.0)
        job.accept(0, "b-0")
        job.extend_deadline(99.5)
        save_job(store, job)
        loaded = load_job(store, job.job_id)
        assert loaded == job
        assert load_job(store, "mb-unknown-t1") is None

    def test_another_schema_version_is_never_reused(self, tmp_path: Path) -> None:
        store = CallbackStore(str(tmp_path))
        record = sealed_job(1).to_json()
        store.write_manifest("mb-old-t1", {**record, "schema_version": JOB_SCHEMA_VERSION + 1})
        loaded = load_job(store, "mb-old-t1")
        assert loaded is not None
        assert "schema version" in str(loaded.mismatch(REQUEST))

    def test_the_saved_form_is_plain_json_with_its_schema_version(self) -> None:
        record = sealed_job(1).to_json()
        assert record["schema_version"] == JOB_SCHEMA_VERSION
        assert record["chunks"][0]["state"] == "pending"

    def test_a_job_saved_without_work_marks_is_compared_by_its_hashes(self, tmp_path: Path) -> None:
        """A job saved by a release before the marks: read as one with no marks, proved by hashes."""
        store = CallbackStore(str(tmp_path))
        record = sealed_job([[1, 21]]).to_json()
        del record["work"]
        store.write_manifest("mb-test-t1", record)
        loaded = load_job(store, "mb-test-t1")
        assert loaded is not None and loaded.work == {}
        assert loaded.mismatch(REQUEST, hashes_of([[1, 21]]), work_marks({"input": 1})) is None
        assert loaded.mismatch(REQUEST, hashes_of([[1, 22]]), work_marks({"input": 2})) is not None
