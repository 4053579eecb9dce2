"""The ``modelbit-emulator`` command line."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from airflow_provider_modelbit.emulator.cli import build_parser, config_from_args

MODULE = [sys.executable, "-m", "airflow_provider_modelbit.emulator"]


class TestHelp:
    def test_help_documents_every_option(self) -> None:
        output = subprocess.run(
            [*MODULE, "--help"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        options = [a.option_strings[-1] for a in build_parser()._actions if a.option_strings]
        assert len(options) > 30
        for option in options:
            assert option in output
        for action in build_parser()._actions:
            assert action.help, f"{action.option_strings} has no help text"


class TestArguments:
    def test_options_become_config(self) -> None:
        args = build_parser().parse_args(
            [
                "--require-api-keys",
                "--api-key",
                "k1",
                "--api-key",
                "k2",
                "--workspace",
                "acme=a1,a2",
                "--workspace",
                "open",
                "--rate-limit",
                "scoring=10:doubler,echo",
                "--timeout-status",
                "504",
                "--error-rate",
                "0.5",
                "--error-statuses",
                "500,502",
                "--fault-deployment",
                "echo",
                "--webhook-reorder",
            ]
        )
        config = config_from_args(args)
        assert config.require_api_keys and config.api_keys == frozenset({"k1", "k2"})
        assert (
            config.workspaces["acme"].api_keys == frozenset({"a1", "a2"})
            and config.workspaces["acme"].require_api_keys
        )
        assert not config.workspaces["open"].require_api_keys
        assert config.rate_limits["scoring"].deployments == frozenset({"doubler", "echo"})
        assert config.timeout_status == 504
        assert config.faults is not None and config.faults["error_statuses"] == [500, 502]
        assert config.faults["deployment"] == "echo" and config.faults["webhook_reorder"] is True

    def test_no_fault_options_means_no_faults(self) -> None:
        assert config_from_args(build_parser().parse_args([])).faults is None

    def test_bad_rate_limit_exits_with_message(self) -> None:
        result = subprocess.run([*MODULE, "--rate-limit", "oops"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert "NAME=N" in result.stderr


class TestStartStop:
    def test_serves_until_terminated(self, tmp_path: Path) -> None:
        """Binds 127.0.0.1 on --port 0, prints the URL, writes --ready-file, stops cleanly on SIGTERM."""
        ready = tmp_path / "url"
        process = subprocess.Popen(
            [
                *MODULE,
                "--port",
                "0",
                "--ready-file",
                str(ready),
                "--error-rate",
                "1",
                "--fault-deployment",
                "echo",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.01)
            # The file appears whole: it is written aside and renamed into place.
            url = ready.read_text().strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
            assert [path.name for path in tmp_path.iterdir()] == ["url"]
            with httpx.Client(trust_env=False) as http:
                assert http.post(url + "/v1/doubler/latest", json={"data": 2}).json() == {"data": 4}
                assert http.post(url + "/v1/echo/latest", json={"data": 2}).status_code == 503
        finally:
            process.terminate()
            stdout, _ = process.communicate(timeout=30)
        assert process.returncode == 0
        assert stdout.splitlines()[0] == url

    @pytest.mark.parametrize("arguments", [["--deployments", "/nonexistent/models.py"]])
    def test_start_failure_is_reported(self, arguments: list[str]) -> None:
        result = subprocess.run(
            [*MODULE, "--port", "0", *arguments], capture_output=True, text=True, timeout=60
        )
        assert result.returncode != 0
        assert "does not exist" in result.stderr
