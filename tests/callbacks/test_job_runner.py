"""The pacing of a job's submissions: an async batch holds a place of the limiter until its delivery."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from airflow_provider_modelbit.callbacks.job_runner import _Outstanding
from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.hooks.concurrency import ConcurrencyLimiter, Outcome


def _acquire_within_a_minute(limiter: ConcurrencyLimiter) -> None:
    """Wait for a place; a watcher that never frees one fails the test instead of hanging it."""
    stopping = threading.Event()
    timer = threading.Timer(60, stopping.set)
    timer.daemon = True
    timer.start()
    try:
        limiter.acquire(stopping)
    finally:
        timer.cancel()


class TestOutstanding:
    def test_a_delivery_frees_its_place_and_reports_the_latency_stamped_on_arrival(
        self, tmp_path: Path
    ) -> None:
        store = CallbackStore(str(tmp_path / "callbacks"))
        limiter = ConcurrencyLimiter(1, adaptive=False)
        with _Outstanding(
            limiter,
            store,
            "job-1",
            lambda chunk: Outcome.ANSWERED,
            0.05,
            logging.getLogger(),
            give_up_after=300,
        ) as held:
            held.keeper(0)(limiter.acquire())
            store.put_delivery("job-1", 0, "b0", [b'{"data": [[1, 2]]}'])
            _acquire_within_a_minute(limiter)
        assert limiter.in_flight == 1

    def test_a_delivery_that_never_comes_frees_its_place_as_a_timeout(self, tmp_path: Path) -> None:
        store = CallbackStore(str(tmp_path / "callbacks"))
        limiter = ConcurrencyLimiter(4, initial=4)
        with _Outstanding(
            limiter,
            store,
            "job-1",
            lambda chunk: Outcome.ANSWERED,
            0.05,
            logging.getLogger(),
            give_up_after=0.2,
        ) as held:
            for chunk in range(4):
                held.keeper(chunk)(limiter.acquire())
            _acquire_within_a_minute(limiter)
        assert limiter.summary()["lowered"] == {"timeouts": 1}
