"""Shared parts of the reliability tests: distinctive secrets, a key-checking local Modelbit server,
a scripted HTTP server for answers Modelbit never gives, a real callback receiver, and leak checks.

The API key and callback secret are long, distinctive strings so a search for them in messages,
logs, XComs and database bytes cannot miss a copy or match by accident.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_modelbit.callbacks.receiver import StaticSecretSource, create_callback_app
from airflow_provider_modelbit.callbacks.signing import callback_url
from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.emulator.server import RunningEmulator, run_emulator
from airflow_provider_modelbit.hooks.retries import RetryPolicy
from tests.asgi_thread import serve_in_thread
from tests.scripted_http import scripted_server  # noqa: F401  (a fixture of these tests)

API_KEY = "mbkRELIABILITY7q:Zx9+Leak/Probe=Key-4f2a8c61"
WRONG_API_KEY = "mbkRELIABILITY7q:Wrong+Probe/Key=9d1e3b77"
CALLBACK_SECRET = "cbRELIABILITY-signing-secret-6b0e4d93a1"
SECRETS = (API_KEY, WRONG_API_KEY, CALLBACK_SECRET)
CONN_ID = "modelbit_default"
# Retries fast enough for tests, bounded in count and total wait.
FAST_RETRIES = RetryPolicy(max_attempts=4, initial_wait=0.01, max_wait=1.0, max_total_wait=5.0)


def leaked_secrets(*texts: object, secrets: Iterable[str] = SECRETS) -> list[str]:
    """Return which of ``secrets`` appear in any of ``texts`` (str, bytes or repr-able)."""
    found = []
    for secret in secrets:
        for text in texts:
            haystack = text if isinstance(text, bytes | str) else repr(text)
            needle = secret.encode() if isinstance(haystack, bytes) else secret
            if needle in haystack:
                found.append(secret)
                break
    return found


def connection_json(host: str, password: str | None = API_KEY, **extra: Any) -> str:
    """An ``AIRFLOW_CONN_*`` value for a Modelbit connection with the distinctive secrets."""
    document: dict[str, Any] = {
        "conn_type": "modelbit",
        "host": host,
        "extra": {"callback_secret": CALLBACK_SECRET, **extra},
    }
    if password is not None:
        document["password"] = password
    return json.dumps(document)


@pytest.fixture(scope="module")
def secure_emulator() -> Iterator[RunningEmulator]:
    """A local Modelbit server that requires :data:`API_KEY` (shared by one test module)."""
    with run_emulator(require_api_keys=True, api_keys=(API_KEY,)) as server:
        yield server


@pytest.fixture
def emulator(secure_emulator: RunningEmulator) -> Iterator[RunningEmulator]:
    """The module's server with records, faults and options reset around each test."""
    secure_emulator.client.reset()
    yield secure_emulator
    secure_emulator.client.reset()


@pytest.fixture
def use_connection(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Point ``modelbit_default`` at a URL, with the distinctive key and callback secret by default."""

    def define(host: str, password: str | None = API_KEY, **extra: Any) -> None:
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", connection_json(host, password, **extra))

    return define


# --- A scripted HTTP server ---------------------------------------------------------------------


# --- A real callback receiver -------------------------------------------------------------------


@dataclass
class RunningReceiver:
    """A callback receiver on 127.0.0.1 signing with :data:`CALLBACK_SECRET`."""

    base_url: str
    store: CallbackStore
    max_body_bytes: int

    def url(self, job_id: str, chunk: int, expires_in: float = 600, secret: str = CALLBACK_SECRET) -> str:
        return callback_url(self.base_url, CONN_ID, job_id, chunk, secret, int(time.time() + expires_in))


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[RunningReceiver]:
    """The callback receiver app served by uvicorn on a free loopback port, storing under ``tmp_path``."""
    store = CallbackStore(str(tmp_path / "callbacks"))
    max_body_bytes = 64 * 1024
    app = create_callback_app(
        store=store, secrets=StaticSecretSource({CONN_ID: CALLBACK_SECRET}), max_body_bytes=max_body_bytes
    )
    with serve_in_thread(app, backlog=512) as url:
        yield RunningReceiver(url, store, max_body_bytes)


def files_under(folder: Path) -> Iterable[Path]:
    """Every file below ``folder`` (nothing when it does not exist)."""
    return (path for path in folder.rglob("*") if path.is_file()) if folder.exists() else ()
