"""Crashes: a worker killed with SIGKILL in mid-table, then the task's retry.

The batch operator runs in a child process (``batch_worker.py``, doing what a worker does), is
killed once its checkpoint holds some finished chunks, and is run again. The retry must finish
with output identical to an uninterrupted run, and re-score at most the chunks that were in
flight when the worker died — never a chunk the checkpoint already held.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_modelbit.emulator.server import RunningEmulator, run_emulator
from airflow_provider_modelbit.operators.batch import ModelbitBatchInferenceOperator
from tests.reliability.conftest import API_KEY

ROWS = 40_000
BATCH_SIZE = 500
MAX_CONCURRENCY = 2
KILL_AFTER_CHUNKS = 10
# Slow enough answers that the kill lands in mid-table, not after the last chunk.
LATENCY_SECONDS = 0.05
START_TIMEOUT_SECONDS = 180.0
RUN_TIMEOUT_SECONDS = 300.0
WORKER = Path(__file__).with_name("batch_worker.py")


@pytest.fixture(scope="module")
def slow_server() -> Iterator[RunningEmulator]:
    with run_emulator(require_api_keys=True, api_keys=(API_KEY,)) as server:
        yield server


@pytest.fixture
def input_path(tmp_path: Path) -> Path:
    path = tmp_path / "in.parquet"
    table = pa.table({"key": [f"row-{i:06d}" for i in range(ROWS)], "x": list(range(ROWS))})
    pq.write_table(table, path, row_group_size=8192)
    return path


def write_spec(folder: Path, input_path: Path, output_path: Path) -> Path:
    spec = {
        "deployment": "doubler",
        "input_path": str(input_path),
        "output_path": str(output_path),
        "id_column": "key",
        "columns": ["x"],
        "argument_style": "positional",
        "batch_size": BATCH_SIZE,
        "max_concurrency": MAX_CONCURRENCY,
    }
    path = folder / f"spec-{output_path.stem}.json"
    path.write_text(json.dumps(spec))
    return path


def start_worker(spec: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(spec)],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finished_chunks(checkpoint: Path) -> set[int]:
    if not checkpoint.exists():
        return set()
    return {int(path.name[6:14]) for path in checkpoint.glob("chunk-*.arrow")}


def kill_in_mid_table(worker: subprocess.Popen[bytes], checkpoint: Path) -> None:
    """SIGKILL the worker as soon as its checkpoint holds KILL_AFTER_CHUNKS chunks."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while len(finished_chunks(checkpoint)) < KILL_AFTER_CHUNKS:
        assert worker.poll() is None, (
            f"the worker ended before the kill: {worker.stderr.read().decode()[-2000:]}"
        )
        assert time.monotonic() < deadline, "the worker saved no chunks in time"
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)


def run_to_completion(spec: Path) -> None:
    worker = start_worker(spec)
    _, stderr = worker.communicate(timeout=RUN_TIMEOUT_SECONDS)
    assert worker.returncode == 0, stderr.decode()[-3000:]


def chunk_of(row_id: str) -> int:
    return int(row_id.removeprefix("row-")) // BATCH_SIZE


class TestWorkerKilledMidTable:
    def test_the_retry_resumes_and_writes_identical_output(
        self, slow_server: RunningEmulator, input_path: Path, tmp_path: Path, use_connection: Any
    ) -> None:
        use_connection(slow_server.url)
        slow_server.client.reset()
        slow_server.client.set_faults(latency_seconds=LATENCY_SECONDS)
        output = tmp_path / "out" / "scores.parquet"
        checkpoint = output.with_name("scores.parquet.checkpoint")
        spec = write_spec(tmp_path, input_path, output)

        worker = start_worker(spec)
        kill_in_mid_table(worker, checkpoint)
        assert worker.returncode == -signal.SIGKILL
        assert not output.exists()
        time.sleep(2 * LATENCY_SECONDS + 0.5)  # let requests the dead worker left in flight finish
        saved = finished_chunks(checkpoint)
        runs_at_kill = slow_server.client.runs("doubler")
        assert KILL_AFTER_CHUNKS <= len(saved) < ROWS // BATCH_SIZE

        run_to_completion(spec)
        runs = slow_server.client.runs("doubler")
        rescored = {row_id for row_id, count in runs.items() if count > 1}
        rescored_chunks = {chunk_of(row_id) for row_id in rescored}
        print(
            f"crash report: killed with {len(saved)} of {ROWS // BATCH_SIZE} chunks saved "
            f"({len(runs_at_kill)} rows scored before the kill); retry re-scored {len(rescored)} rows "
            f"in chunks {sorted(rescored_chunks)}"
        )
        assert not checkpoint.exists()
        assert set(runs) == {f"row-{i:06d}" for i in range(ROWS)}
        assert max(runs.values()) <= 2
        assert rescored_chunks.isdisjoint(saved)
        assert len(rescored_chunks) <= MAX_CONCURRENCY

        # The uninterrupted reference runs in this process: same operator, same arguments.
        reference = tmp_path / "reference" / "scores.parquet"
        arguments = json.loads(write_spec(tmp_path, input_path, reference).read_text())
        ModelbitBatchInferenceOperator(task_id="score", **arguments).execute({})
        resumed_table, reference_table = pq.read_table(output), pq.read_table(reference)
        assert resumed_table.equals(reference_table, check_metadata=True)
        assert resumed_table.column("result").to_pylist() == [2 * i for i in range(ROWS)]
