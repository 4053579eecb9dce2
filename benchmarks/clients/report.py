"""Measure one workload inside the current process and hand the figures to the runner.

Standard library only: this module is imported both by the provider's environment and by the
benchmark-only environment that holds the official client.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPORT_PREFIX = "BENCHMARK-REPORT "
#: The detail a DataFrame client reports: seconds of its scoring call alone (DataFrame in, rows out).
SCORING_CALL_SECONDS = "scoring_call_seconds"
_WARM_UP_HELP = (
    "a small table processed once before the measured run, so one-time costs (lazy imports, "
    "connection set-up) are not counted against the table"
)


def client_arguments(description: str | None) -> argparse.ArgumentParser:
    """The arguments every measured client takes: the input table, the output, the warm-up table."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--warm-up", type=Path, required=True, help=_WARM_UP_HELP)
    return parser


def current_rss_bytes() -> int:
    """Resident memory of this process right now (Linux ``/proc``)."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * resource.getpagesize()


def peak_rss_bytes() -> int:
    """Highest resident memory this process has reached (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_seconds() -> float:
    # RUSAGE_SELF sums every thread of the process, so concurrent request threads are counted too.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class WorkloadMeasurement:
    """What one run of a workload cost this process.

    :param rows: rows the workload processed (set by the workload when it knows).
    :param wall_seconds: elapsed time of the measured section.
    :param cpu_seconds: user + system CPU of all threads during the measured section.
    :param baseline_rss_bytes: resident memory just before the measured section (imports done).
    :param peak_rss_bytes: highest resident memory of the process, measured section included.
    :param details: workload-specific facts worth keeping (output size, request count, ...).
    """

    rows: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    baseline_rss_bytes: int = 0
    peak_rss_bytes: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@contextmanager
def measured(rows: int = 0) -> Iterator[WorkloadMeasurement]:
    """Time the body of the ``with`` block and record CPU and memory around it."""
    measurement = WorkloadMeasurement(rows=rows, baseline_rss_bytes=current_rss_bytes())
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    yield measurement
    measurement.wall_seconds = time.perf_counter() - started
    measurement.cpu_seconds = _cpu_seconds() - cpu_before
    measurement.peak_rss_bytes = peak_rss_bytes()


def report(measurement: WorkloadMeasurement) -> None:
    """Print the measurement as the one line the runner reads from this process's output."""
    sys.stdout.write(REPORT_PREFIX + json.dumps(asdict(measurement)) + "\n")
    sys.stdout.flush()
