"""A real receiver on 127.0.0.1 for the callback tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from airflow_provider_modelbit.callbacks.receiver import StaticSecretSource, create_callback_app
from airflow_provider_modelbit.callbacks.signing import callback_url
from airflow_provider_modelbit.callbacks.store import CallbackStore
from tests.asgi_thread import serve_in_thread
from tests.scripted_http import scripted_server  # noqa: F401  (a fixture of these tests)

SECRET = "receiver-test-secret-0123"
CONN_ID = "modelbit_test"
MAX_BODY_BYTES = 64 * 1024


@dataclass
class RunningReceiver:
    """A receiver listening on 127.0.0.1, with the values its URLs are signed with."""

    base_url: str
    store: CallbackStore
    conn_id: str = CONN_ID
    secret: str = SECRET
    max_body_bytes: int = MAX_BODY_BYTES

    def url(self, job_id: str, chunk: int, expires_in: float = 600, secret: str = SECRET) -> str:
        """Return a signed URL for a job a task is waiting for (its manifest exists)."""
        if not self.store.has_manifest(job_id):
            self.store.write_manifest(job_id, {"chunks": chunk + 1})
        return callback_url(self.base_url, CONN_ID, job_id, chunk, secret, int(time.time() + expires_in))


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[RunningReceiver]:
    store = CallbackStore(str(tmp_path / "callbacks"))
    app = create_callback_app(
        store=store, secrets=StaticSecretSource({CONN_ID: SECRET}), max_body_bytes=MAX_BODY_BYTES
    )
    with serve_in_thread(app) as url:
        yield RunningReceiver(url, store)
