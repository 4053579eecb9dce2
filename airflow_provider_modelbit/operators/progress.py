"""Progress of a long batch in the task log: rows done, rows per second and the time left."""

from __future__ import annotations

import time
from typing import Any


class ProgressLog:
    """
    Log rows done, rate and ETA at most every ``interval`` seconds.

    :param log: the task's logger.
    :param total_rows: rows in the input, or ``None`` when unknown (no ETA then).
    :param interval: least seconds between two lines; the last row is always reported.
    """

    def __init__(self, log: Any, total_rows: int | None, interval: float) -> None:
        self._log = log
        self._total = total_rows
        self._interval = interval
        self._started = self._last = time.monotonic()
        self._done = self._scored = 0

    def advance(self, rows: int, *, reused: bool = False) -> None:
        """Count ``rows`` as done; ``reused`` rows (from a checkpoint) do not count towards the rate."""
        self._done += rows
        self._scored += 0 if reused else rows
        now = time.monotonic()
        if now - self._last >= self._interval or (self._total is not None and self._done >= self._total):
            self._last = now
            self._report(now - self._started)

    def _report(self, elapsed: float) -> None:
        rate = self._scored / elapsed if elapsed > 0 else 0.0
        if self._total is None:
            self._log.info("Scored %d rows (%.0f rows/s).", self._done, rate)
            return
        left = max(self._total - self._done, 0)
        eta = f"{left / rate:.0f} s" if rate > 0 else "unknown"
        percent = 100.0 * self._done / self._total if self._total else 100.0
        self._log.info(
            "Scored %d / %d rows (%.1f%%), %.0f rows/s, ETA %s.", self._done, self._total, percent, rate, eta
        )
