"""The machine a run happened on, recorded beside the figures so they can be compared fairly."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def describe_machine() -> dict[str, Any]:
    """CPU model, usable cores, OS, Python and the versions of the packages being measured."""
    return {
        "cpu_model": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "airflow": _package_version("apache-airflow"),
        "provider": _package_version("airflow-provider-modelbit"),
        "pyarrow": _package_version("pyarrow"),
        "official_client": "modelbit 0.44.3 (.venv-bench)",
    }
