"""A real receiver on 127.0.0.1 for the callback tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from airflow_provider_modelbit.callbacks.receiver import StaticSecretSource, create_callback_app
from airflow_provider_modelbit.callbacks.signing import callback_url
from airflow_provider_modelbit.callbacks.store import CallbackStore

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


class ThreadedServer(uvicorn.Server):
    """Uvicorn in a background thread; signal handlers belong to the main thread."""

    def install_signal_handlers(self) -> None:
        pass


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[RunningReceiver]:
    store = CallbackStore(str(tmp_path / "callbacks"))
    app = create_callback_app(
        store=store, secrets=StaticSecretSource({CONN_ID: SECRET}), max_body_bytes=MAX_BODY_BYTES
    )
    server = ThreadedServer(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "receiver did not start within 10 s"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield RunningReceiver(f"http://127.0.0.1:{port}", store)
    server.should_exit = True
    thread.join(timeout=10)
