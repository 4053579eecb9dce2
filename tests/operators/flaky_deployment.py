"""The ``flaky`` deployment: it echoes its argument but fails the first time it sees 13."""

from __future__ import annotations

from pathlib import Path

_SOURCE = """
import pathlib

MARKER = pathlib.Path({marker!r})


def flaky(x):
    if x == 13 and not MARKER.exists():
        MARKER.write_text("failed once")
        raise RuntimeError("transient failure on x=13")
    return x


def register(registry):
    registry.add("flaky", flaky)
"""


def write_flaky_deployment(folder: Path) -> Path:
    """Write the deployments file for the local server's ``--deployments`` into ``folder``."""
    deployments = folder / "flaky.py"
    deployments.write_text(_SOURCE.format(marker=str(folder / "flaky-failed-once")))
    return deployments
