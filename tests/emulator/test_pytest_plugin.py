"""The ``modelbit_emulator`` and ``modelbit_emulator_session`` pytest fixtures, loaded as a plugin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

USES_FIXTURES = """
import httpx

SEEN = []


def test_function_fixture_is_fresh(modelbit_emulator):
    with httpx.Client(trust_env=False) as http:
        assert http.post(modelbit_emulator.url + "/v1/doubler/latest", json={"data": 1}).json() == {"data": 2}
    assert len(modelbit_emulator.client.requests()) == 1
    SEEN.append(modelbit_emulator.url)


def test_function_fixture_is_another_server(modelbit_emulator):
    assert modelbit_emulator.client.requests() == []
    assert modelbit_emulator.url not in SEEN


def test_session_fixture_first(modelbit_emulator_session):
    SEEN.append(modelbit_emulator_session.url)


def test_session_fixture_is_shared(modelbit_emulator_session):
    assert SEEN[-1] == modelbit_emulator_session.url
    assert modelbit_emulator_session.client.health() == {"status": "ok"}
"""


def test_fixtures_work_in_a_test_session(tmp_path: Path) -> None:
    test_file = tmp_path / "test_uses_fixtures.py"
    test_file.write_text(USES_FIXTURES)
    result = subprocess.run(
        # No "-p": the installed package registers the fixtures through its pytest11 entry point.
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         str(test_file)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout
