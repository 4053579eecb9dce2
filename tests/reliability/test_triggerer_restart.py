"""The triggerer dies while a task waits for its webhook deliveries; a new one takes over.

This is the restart-from-scratch form of the test: the trigger runs in its own process
(``trigger_runner.py``) rebuilt only from its serialized kwargs, as a triggerer rebuilds it from
its table row; that process is killed with SIGKILL while deliveries are still on their way
(delayed, duplicated and reordered by the local Modelbit server), and a fresh process is started
from the same row. It must still report success once every delivery is in, and the server's
request log must show each chunk submitted exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_modelbit.emulator.server import RunningEmulator, run_emulator
from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
from airflow_provider_modelbit.triggers.callback import ModelbitCallbackTrigger
from tests.reliability.conftest import API_KEY, RunningReceiver, leaked_secrets

CHUNKS = 6
ROWS_PER_CHUNK = 50
JOB_ID = "job-triggerer-restart"
DELIVERY_DELAY_SECONDS = 5.0
PROCESS_TIMEOUT_SECONDS = 180.0
RUNNER = Path(__file__).with_name("trigger_runner.py")


@pytest.fixture(scope="module")
def webhook_server() -> Iterator[RunningEmulator]:
    """The local Modelbit server, delivering webhooks to http:// receivers with fast retries."""
    with run_emulator(require_api_keys=True, api_keys=(API_KEY,), webhook_time_scale=0.05) as server:
        yield server


def start_trigger_process(row: Path) -> subprocess.Popen[str]:
    """Start a 'triggerer' for the row and return once the trigger is about to run."""
    process = subprocess.Popen(
        [sys.executable, str(RUNNER), str(row)],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "waiting", process.stderr.read() if process.stderr else ""
    return process


def chunk_rows(chunk: int) -> list[list[int]]:
    first = chunk * ROWS_PER_CHUNK
    return [[row_id, row_id] for row_id in range(first, first + ROWS_PER_CHUNK)]


def submit_chunks(hook: ModelbitHook, receiver: RunningReceiver) -> list[str]:
    return [
        hook.submit_async("doubler", chunk_rows(chunk), webhook_url=receiver.url(JOB_ID, chunk))
        for chunk in range(CHUNKS)
    ]


class TestTriggererRestart:
    def test_a_fresh_trigger_completes_and_nothing_is_submitted_twice(
        self,
        webhook_server: RunningEmulator,
        receiver: RunningReceiver,
        tmp_path: Path,
        use_connection: Any,
    ) -> None:
        use_connection(webhook_server.url)
        webhook_server.client.reset()
        webhook_server.client.set_faults(
            webhook_delay_seconds=DELIVERY_DELAY_SECONDS,
            webhook_duplicate_rate=0.5,
            webhook_reorder=True,
            seed=3,
        )
        receiver.store.write_manifest(JOB_ID, {"chunks": CHUNKS})
        trigger = ModelbitCallbackTrigger(
            job_id=JOB_ID,
            chunks=range(CHUNKS),
            store_location=receiver.store.location,
            deadline=time.time() + PROCESS_TIMEOUT_SECONDS,
            poll_interval=0.2,
        )
        row = tmp_path / "trigger-row.json"
        row.write_text(json.dumps(trigger.serialize()))
        assert leaked_secrets(row.read_text()) == []

        first_triggerer = start_trigger_process(row)
        batch_ids = submit_chunks(ModelbitHook(), receiver)
        first_triggerer.send_signal(signal.SIGKILL)
        first_triggerer.wait(timeout=30)
        delivered_at_kill = receiver.store.delivered_chunks(JOB_ID)
        assert first_triggerer.returncode == -signal.SIGKILL
        assert len(delivered_at_kill) < CHUNKS, "the deliveries arrived before the triggerer was killed"

        second_triggerer = start_trigger_process(row)
        output, errors = second_triggerer.communicate(timeout=PROCESS_TIMEOUT_SECONDS)
        event = json.loads(output.strip().splitlines()[-1])

        submissions = [r for r in webhook_server.client.requests() if r.get("mode") == "async"]
        faults = webhook_server.client.fault_counts()
        print(
            f"triggerer restart report: killed with {len(delivered_at_kill)} of {CHUNKS} deliveries in; "
            f"{len(submissions)} async submissions; webhook faults {faults}; event {event['status']}"
        )
        assert second_triggerer.returncode == 0, errors[-3000:]
        assert event["status"] == "success"
        assert event["chunks"] == list(range(CHUNKS))
        assert set(event) == {
            "status",
            "job_id",
            "store_location",
            "chunks",
            "errors",
            "message",
            "deferred_by_try",
        }
        assert len(submissions) == CHUNKS
        assert Counter(batch["batchId"] for batch in webhook_server.client.batches()) == Counter(
            dict.fromkeys(batch_ids, 1)
        )
        assert receiver.store.delivered_chunks(JOB_ID) == set(range(CHUNKS))
        assert faults.get("webhook_delay", 0) == CHUNKS
