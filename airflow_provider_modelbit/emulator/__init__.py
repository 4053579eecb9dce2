"""
A local Modelbit-compatible server for tests, examples and benchmarks.

``run_emulator()`` starts one in the background; ``EmulatorClient`` drives its ``/_emulator/``
inspection and fault-injection routes; ``modelbit-emulator`` (or
``python -m airflow_provider_modelbit.emulator``) runs one from the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_modelbit.emulator.client import EmulatorClient, EmulatorClientError
    from airflow_provider_modelbit.emulator.server import EmulatorServer, RunningEmulator, run_emulator

__all__ = ["EmulatorClient", "EmulatorClientError", "EmulatorServer", "RunningEmulator", "run_emulator"]

# Imported on first use, so that loading the pytest plugin (a submodule) in every test session does
# not require the server's optional dependencies.
_HOMES = {
    "EmulatorClient": "client",
    "EmulatorClientError": "client",
    "EmulatorServer": "server",
    "RunningEmulator": "server",
    "run_emulator": "server",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
