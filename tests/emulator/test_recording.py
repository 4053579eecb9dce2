"""The in-memory records behind the inspection routes."""

from __future__ import annotations

from airflow_provider_modelbit.emulator.recording import RECORDED_BODY_BYTES, Recorder


class TestRecorder:
    def test_secrets_are_redacted_and_large_bodies_skipped(self) -> None:
        recorder = Recorder()
        record = recorder.record_request(
            "POST",
            "/v1/x/latest",
            {"authorization": "key", "cookie": "c"},
            b"x" * (RECORDED_BODY_BYTES + 1),
            "default",
        )
        assert record["headers"] == {"authorization": "<redacted>", "cookie": "<redacted>"}
        assert record["body"] is None and record["body_bytes"] == RECORDED_BODY_BYTES + 1

    def test_runs_merge_equal_ids_of_any_type(self) -> None:
        recorder = Recorder()
        recorder.count_runs("m", [1, "1", 2])
        recorder.count_runs("m", [[1, 2]])  # unhashable IDs are counted by their text
        assert recorder.runs_of("m") == {"1": 2, "2": 1, "[1, 2]": 1}
        assert recorder.runs_of("other") == {}

    def test_reset(self) -> None:
        recorder = Recorder()
        recorder.count_runs("m", [1])
        recorder.new_batch("b")
        recorder.reset()
        assert (recorder.runs, recorder.batches, list(recorder.requests)) == ({}, {}, [])
