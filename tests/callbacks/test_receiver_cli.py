"""``modelbit-callback-receiver``: the receiver as its own process, bound to 127.0.0.1."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from harness.processes import ProcessGroup, ProcessSupervisor

from airflow_provider_modelbit.callbacks.cli import build_parser
from airflow_provider_modelbit.callbacks.signing import callback_url
from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.hooks.responses import redact_tokens

SECRET = "cli-test-secret-0123456789"


@dataclass
class RunningReceiver:
    """The CLI started by the harness, its output in a log file."""

    supervisor: ProcessSupervisor
    group: ProcessGroup

    def stop_and_read_output(self) -> str:
        """SIGTERM the receiver, wait until it exits, and return everything it printed."""
        self.supervisor.stop(self.group)
        return self.group.log_file.read_text(errors="replace")


@contextmanager
def running_receiver(tmp_path: Path, *options: str) -> Iterator[tuple[str, Path, RunningReceiver]]:
    """The CLI in a subprocess, resolving its connection from an ``AIRFLOW_CONN_*`` variable."""
    ready_file = tmp_path / "ready.url"
    store_dir = tmp_path / "callbacks"
    connection = {"conn_type": "modelbit", "host": "http://127.0.0.1:1", "extra": {"callback_secret": SECRET}}
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW_CONN_MB_CLI": json.dumps(connection)}
    command = [sys.executable, "-m", "airflow_provider_modelbit.callbacks.cli", "--port", "0"]
    command += ["--store", str(store_dir), "--conn-id", "mb_cli", "--ready-file", str(ready_file), *options]
    with ProcessSupervisor() as supervisor:
        group = supervisor.start("callback receiver", command, env, tmp_path / "receiver.log")
        yield group.wait_for_ready_file(ready_file), store_dir, RunningReceiver(supervisor, group)


@pytest.fixture
def receiver_process(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The receiver at its default log level; its whole output is checked for tokens at the end."""
    with running_receiver(tmp_path) as (base_url, store_dir, receiver):
        yield base_url, store_dir
        output = receiver.stop_and_read_output()
    assert "token=" not in output, output


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


class TestNoTokenInTheLog:
    @pytest.mark.parametrize("level", ["info", "debug"])
    def test_callback_tokens_are_never_logged(self, tmp_path: Path, level: str) -> None:
        """
        Stored, forged and dropped deliveries: the log never holds a token.

        The default level (warning) is checked by the ``receiver_process`` fixture; error and
        critical log a subset of it.
        """
        with running_receiver(tmp_path, "--log-level", level) as (base_url, store_dir, receiver):
            expires = int(time.time()) + 600
            CallbackStore(str(store_dir)).write_manifest("job-c", {"chunks": 2})
            urls = [
                callback_url(base_url, "mb_cli", "job-c", 0, SECRET, expires),  # stored
                callback_url(base_url, "mb_cli", "job-c", 1, "a-different-secret-123", expires),  # forged
                callback_url(base_url, "mb_cli", "job-gone", 0, SECRET, expires),  # not awaited
            ]
            statuses = [httpx.post(url, content=b'{"data": 1}', timeout=10).status_code for url in urls]
            assert statuses == [200, 403, 200]
            output = receiver.stop_and_read_output()
        tokens = [url.rsplit("token=", 1)[1] for url in urls]
        assert not [token for token in tokens if token in output], output
        assert output.count("token=***") >= 3, output  # the access log's request lines
        assert "Modelbit delivery for job job-c chunk 0" in output

    def test_trace_level_is_not_offered(self) -> None:
        """uvicorn's trace level logs whole requests; the receiver does not offer it."""
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--log-level", "trace"])

    @pytest.mark.parametrize(
        ("text", "redacted"),
        [
            ('"POST /v1/callbacks/c/j/0?expires=1&token=ab12 HTTP/1.1" 200', "expires=1&token=*** HTTP/1.1"),
            ("https://x/v1/callbacks/c/j/0?token=ab12&expires=1", "https://x/v1/callbacks/c/j/0?token=***&"),
        ],
    )
    def test_redact_tokens(self, text: str, redacted: str) -> None:
        assert redacted in redact_tokens(text) and "ab12" not in redact_tokens(text)
