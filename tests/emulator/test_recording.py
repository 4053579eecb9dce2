"""The in-memory records behind the inspection routes."""

from __future__ import annotations

import pytest

from airflow_provider_modelbit.emulator import recording
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
        recorder.count_runs("m", [3, [4]])  # once each, whatever comes after them
        assert recorder.runs_of("m") == {"1": 2, "2": 1, "[1, 2]": 1, "3": 1, "[4]": 1}
        assert recorder.runs_of("other") == {}

    def test_requests_are_listed_oldest_first_answered_or_not(self) -> None:
        recorder = Recorder()
        first = recorder.record_request("POST", "/v1/a/latest", {}, b"{}", "default")
        second = recorder.record_request("POST", "/v1/b/latest", {}, b"{}", "default")
        second.update(status=200, seconds=0.5)
        recorder.finish_request(second)
        assert [record["path"] for record in recorder.requests()] == ["/v1/a/latest", "/v1/b/latest"]
        assert recorder.requests()[1]["status"] == 200 and recorder.requests()[0]["status"] is None
        first["status"] = 429
        recorder.finish_request(first)
        assert [record["status"] for record in recorder.requests()] == [429, 200]

    def test_counts_past_the_backlog_bound_are_kept(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(recording, "UNCOUNTED_ID_BYTES", 10)
        recorder = Recorder()
        for _ in range(3):
            recorder.count_runs("m", [1, 2, 3])
        assert recorder.runs_of("m") == {"1": 3, "2": 3, "3": 3}

    def test_reset(self) -> None:
        recorder = Recorder()
        recorder.count_runs("m", [1])
        recorder.new_batch("b")
        started = recorder.record_request("POST", "/v1/a/latest", {}, b"{}", "default")
        recorder.finish_request(recorder.record_request("POST", "/v1/b/latest", {}, b"{}", "default"))
        recorder.reset()
        recorder.finish_request(started)  # answered after the reset: forgotten with the rest
        assert (recorder.runs_of("m"), recorder.batches, recorder.requests()) == ({}, {}, [])
