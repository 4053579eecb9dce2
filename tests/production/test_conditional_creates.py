"""
Create-only writes on a real S3 server (``io/atomic.create_exclusively``), for their two users.

- An output's owner record: a second writer is refused by name, not by the store's error.
- The callback store's submission claims: of two triggerers claiming one attempt at once, exactly
  one wins, so a chunk is never sent twice. This holds only where the store honours S3's
  ``If-None-Match`` on ``PutObject``; SeaweedFS, the production shape's store, is checked here.

Only SeaweedFS is started (the production stack's object store), so the module takes seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness.processes import ProcessSupervisor, interrupts_stop
from harness.production import BUCKET, ProductionStack

from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.exceptions import ModelbitOutputBusy
from airflow_provider_modelbit.io.atomic import resolve_output
from airflow_provider_modelbit.io.ownership import OutputLease, TaskIdentity

pytestmark = [pytest.mark.production]

CONN_ID = "object_store"
#: Attempts claimed by two triggerers at once; each race is one chance for a store to let both win.
RACES = 25
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


def test_two_triggerers_claiming_one_attempt_at_once_give_it_to_exactly_one(
    object_store, monkeypatch
) -> None:
    assert object_store.s3 is not None
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", object_store.s3.connection_json())
    location = f"s3://{CONN_ID}@{BUCKET}/callbacks"
    # A store object each, as two triggerers have.
    stores = [CallbackStore(location), CallbackStore(location)]
    stores[0].write_manifest("mb-claims-t1", {"job": "claims"})
    start = threading.Barrier(2, timeout=120)

    def claim(store: CallbackStore, attempt: int) -> bool:
        start.wait()
        return store.claim_submission("mb-claims-t1", 0, attempt)

    with ThreadPoolExecutor(2) as pool:
        for attempt in range(1, RACES + 1):
            winners = list(pool.map(claim, stores, [attempt, attempt]))
            assert sorted(winners) == [False, True], f"attempt {attempt}: claims {winners}"
