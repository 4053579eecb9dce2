"""``modelbit-callback-receiver``: the receiver as its own process, bound to 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from airflow_provider_modelbit.callbacks.cli import build_parser
from airflow_provider_modelbit.callbacks.signing import callback_url
from airflow_provider_modelbit.callbacks.store import CallbackStore

SECRET = "cli-test-secret-0123456789"


@pytest.fixture
def receiver_process(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The CLI in a subprocess, resolving its connection from an ``AIRFLOW_CONN_*`` variable."""
    ready_file = tmp_path / "ready.url"
    store_dir = tmp_path / "callbacks"
    connection = {"conn_type": "modelbit", "host": "http://127.0.0.1:1", "extra": {"callback_secret": SECRET}}
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW_CONN_MB_CLI": json.dumps(connection)}
    command = [sys.executable, "-m", "airflow_provider_modelbit.callbacks.cli", "--port", "0"]
    command += ["--store", str(store_dir), "--conn-id", "mb_cli", "--ready-file", str(ready_file)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not ready_file.exists():
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline, "receiver did not become ready within 60 s"
            time.sleep(0.05)
        yield ready_file.read_text().strip(), store_dir
    finally:
        process.terminate()
        process.wait(timeout=10)


class TestReceiverCli:
    def test_defaults_bind_loopback(self) -> None:
        args = build_parser().parse_args([])
        assert args.host == "127.0.0.1"
        assert args.store is None

    def test_stores_signed_delivery_and_refuses_forged_or_other_connection(self, receiver_process) -> None:
        base_url, store_dir = receiver_process
        assert base_url.startswith("http://127.0.0.1:")
        expires = int(time.time()) + 600
        CallbackStore(str(store_dir)).write_manifest("job-c", {"chunks": 6})
        url = callback_url(base_url, "mb_cli", "job-c", 3, SECRET, expires)
        response = httpx.post(url, content=b'{"data": 42}', headers={"x-mb-batch-id": "b"}, timeout=10)
        assert response.status_code == 200, response.text
        assert (store_dir / "job-c" / "chunk-3.json").read_bytes() == b'{"data": 42}'
        other_conn = callback_url(base_url, "modelbit_default", "job-c", 4, SECRET, expires)
        assert httpx.post(other_conn, content=b'{"data": 1}', timeout=10).status_code == 403
        forged = callback_url(base_url, "mb_cli", "job-c", 5, "a-different-secret-123", expires)
        assert httpx.post(forged, content=b'{"data": 1}', timeout=10).status_code == 403
        stored = sorted(p.name for p in (store_dir / "job-c").iterdir())
        assert stored == ["chunk-3.json", "chunk-3.meta.json", "manifest.json"]
