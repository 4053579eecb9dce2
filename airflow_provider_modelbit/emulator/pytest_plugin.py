"""
Pytest fixtures for the local Modelbit server (registered as a ``pytest11`` entry point).

``modelbit_emulator`` starts a fresh server for one test. ``modelbit_emulator_session`` shares
one server across the whole session (so session-scoped fixtures can use it); call
``modelbit_emulator_session.client.reset()`` to forget records, faults and run-time options.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from airflow_provider_modelbit.emulator.server import RunningEmulator

# The server is imported inside the fixtures: as a pytest11 plugin this module loads in every test
# session, including installs without the ``emulator`` extra (httptools), which must keep working.


@pytest.fixture
def modelbit_emulator() -> Iterator[RunningEmulator]:
    """A Modelbit emulator on a free 127.0.0.1 port, for this test only."""
    from airflow_provider_modelbit.emulator.server import run_emulator

    with run_emulator() as server:
        yield server


@pytest.fixture(scope="session")
def modelbit_emulator_session() -> Iterator[RunningEmulator]:
    """One Modelbit emulator on a free 127.0.0.1 port, shared by the whole test session."""
    from airflow_provider_modelbit.emulator.server import run_emulator

    with run_emulator() as server:
        yield server
