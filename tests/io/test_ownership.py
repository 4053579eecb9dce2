"""One writer per output: the owner record is created exclusively, renewed, and taken over only
by a retry of the same task instance or once its lease ran out or its process is gone."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from airflow_provider_modelbit.exceptions import ModelbitOutputBusy
from airflow_provider_modelbit.io.atomic import resolve_output
from airflow_provider_modelbit.io.ownership import OWNER_NAME, OutputLease, TaskIdentity

SCHEDULED = TaskIdentity("nightly", "score", "scheduled__1", -1, 1)
MANUAL = TaskIdentity("nightly", "score", "manual__2", -1, 1)


def lease(tmp_path: Path, task: TaskIdentity, **kwargs: float) -> OutputLease:
    folder = resolve_output(str(tmp_path / "scores.parquet.checkpoint"))
    return OutputLease(folder, task, output=str(tmp_path / "scores.parquet"), **kwargs)


def owner(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "scores.parquet.checkpoint" / OWNER_NAME).read_text())


class TestOutputLease:
    def test_the_first_writer_owns_the_output_until_it_releases_it(self, tmp_path: Path) -> None:
        first = lease(tmp_path, SCHEDULED)
        first.acquire()
        assert owner(tmp_path)["task"]["run_id"] == "scheduled__1"
        first.release()
        assert not (tmp_path / "scores.parquet.checkpoint" / OWNER_NAME).exists()

    def test_another_run_fails_at_once_naming_the_holder(self, tmp_path: Path) -> None:
        first = lease(tmp_path, SCHEDULED)
        first.acquire()
        try:
            with pytest.raises(ModelbitOutputBusy, match="run 'scheduled__1'") as raised:
                lease(tmp_path, MANUAL).acquire()
            assert "output_path" in raised.value.message
            assert owner(tmp_path)["task"]["run_id"] == "scheduled__1"
        finally:
            first.release()

    def test_another_run_waits_for_the_holder_when_asked_to(self, tmp_path: Path) -> None:
        first = lease(tmp_path, SCHEDULED)
        first.acquire()
        threading.Timer(1.0, first.release).start()
        second = lease(tmp_path, MANUAL, wait_seconds=60)
        second.acquire()
        assert owner(tmp_path)["task"]["run_id"] == "manual__2"
        second.release()

    def test_an_expired_lease_is_taken_over(self, tmp_path: Path) -> None:
        first = lease(tmp_path, SCHEDULED, lease_seconds=0.3)
        first.acquire()
        first._stop.set()  # the holder hangs: it no longer renews
        second = lease(tmp_path, MANUAL, wait_seconds=30)
        second.acquire()
        assert owner(tmp_path)["task"]["run_id"] == "manual__2"
        with pytest.raises(
            ModelbitOutputBusy, match="taken over by DAG 'nightly' task 'score' run 'manual__2'"
        ):
            first.confirm()
        second.release()

    def test_a_renewed_lease_is_not_taken_over(self, tmp_path: Path) -> None:
        first = lease(tmp_path, SCHEDULED, lease_seconds=0.6)
        first.acquire()
        try:
            with pytest.raises(ModelbitOutputBusy):
                lease(tmp_path, MANUAL, wait_seconds=1.5).acquire()
            first.confirm()
        finally:
            first.release()

    def test_a_retry_takes_over_from_a_killed_worker_at_once(self, tmp_path: Path) -> None:
        """The holder's process is gone (SIGKILL): its live lease does not hold the retry back."""
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
        first = lease(tmp_path, SCHEDULED, lease_seconds=3600)
        first.acquire()
        first._stop.set()
        record = owner(tmp_path)
        record["pid"] = int(dead.stdout)
        (tmp_path / "scores.parquet.checkpoint" / OWNER_NAME).write_text(json.dumps(record))
        started = time.monotonic()
        retry = lease(tmp_path, TaskIdentity("nightly", "score", "scheduled__1", -1, 2))
        retry.acquire()
        assert time.monotonic() - started < 5
        assert owner(tmp_path)["task"]["try_number"] == 2
        retry.release()

    def test_a_retry_waits_out_its_earlier_try_then_takes_over(self, tmp_path: Path) -> None:
        first = lease(tmp_path, SCHEDULED, lease_seconds=0.5)
        first.acquire()
        first._stop.set()
        retry = lease(tmp_path, TaskIdentity("nightly", "score", "scheduled__1", -1, 2))
        retry.acquire()  # no wait_seconds: a retry still waits out its own task instance's lease
        assert owner(tmp_path)["task"]["try_number"] == 2
        retry.release()

    def test_only_one_of_many_concurrent_writers_wins(self, tmp_path: Path) -> None:
        winners: list[str] = []
        refused: list[str] = []

        def claim(run: int) -> None:
            task = TaskIdentity("nightly", "score", f"run_{run}", -1, 1)
            try:
                lease(tmp_path, task).acquire()
                winners.append(task.run_id or "")
            except ModelbitOutputBusy:
                refused.append(task.run_id or "")

        threads = [threading.Thread(target=claim, args=(run,)) for run in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1 and len(refused) == 7
        assert owner(tmp_path)["task"]["run_id"] == winners[0]
