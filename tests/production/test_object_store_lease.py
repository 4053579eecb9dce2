"""An output's owner record on a real S3 server: a second writer is refused by name, not by the store's error.

Only SeaweedFS is started (the production stack's object store), so the module takes seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness.processes import ProcessSupervisor, interrupts_stop
from harness.production import BUCKET, ProductionStack

from airflow_provider_modelbit.exceptions import ModelbitOutputBusy
from airflow_provider_modelbit.io.atomic import resolve_output
from airflow_provider_modelbit.io.ownership import OutputLease, TaskIdentity

pytestmark = [pytest.mark.production]

CONN_ID = "lease_store"
SCHEDULED = TaskIdentity("nightly", "score", "scheduled__1", -1, 1)
MANUAL = TaskIdentity("nightly", "score", "manual__2", -1, 1)


@pytest.fixture(scope="module")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionStack]:
    with ProcessSupervisor() as supervisor, interrupts_stop(supervisor):
        stack = ProductionStack(tmp_path_factory.mktemp("seaweedfs"), supervisor)
        stack.start_object_store()
        yield stack


def _lease(object_store: ProductionStack, monkeypatch: pytest.MonkeyPatch, task: TaskIdentity) -> OutputLease:
    assert object_store.s3 is not None
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", object_store.s3.connection_json())
    output = f"s3://{BUCKET}/lease/scores.parquet"
    folder = resolve_output(f"{output}.checkpoint", conn_id=CONN_ID)
    return OutputLease(folder, task, output=output)


def test_a_second_run_is_refused_naming_the_holder(object_store, monkeypatch) -> None:
    first = _lease(object_store, monkeypatch, SCHEDULED)
    first.acquire()
    try:
        with pytest.raises(ModelbitOutputBusy, match="run 'scheduled__1'"):
            _lease(object_store, monkeypatch, MANUAL).acquire()
    finally:
        first.release()
    second = _lease(object_store, monkeypatch, MANUAL)
    second.acquire()
    second.release()
