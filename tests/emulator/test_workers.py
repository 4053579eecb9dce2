"""The daemon worker pool that runs deployment calls."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from airflow_provider_modelbit.emulator.workers import DaemonWorkerPool


class TestDaemonWorkerPool:
    def test_results_and_exceptions_reach_the_future(self) -> None:
        pool = DaemonWorkerPool(2, "test")
        assert pool.submit(lambda a, b: a + b, 2, 3).result(timeout=5) == 5
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(timeout=5)
        pool.shutdown()

    def test_calls_beyond_max_workers_wait(self) -> None:
        pool = DaemonWorkerPool(2, "test")
        release = threading.Event()
        blocked = [pool.submit(release.wait, 10) for _ in range(2)]
        queued = pool.submit(lambda: "ran")
        time.sleep(0.2)
        assert not queued.done()
        release.set()
        assert queued.result(timeout=5) == "ran" and all(f.result(timeout=5) for f in blocked)
        assert len([t for t in threading.enumerate() if t.name.startswith("test-")]) <= 2
        pool.shutdown()

    def test_submit_after_shutdown_is_refused(self) -> None:
        pool = DaemonWorkerPool(1, "test")
        pool.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            pool.submit(print)

    def test_a_running_call_does_not_delay_interpreter_exit(self) -> None:
        code = (
            "import time\n"
            "from airflow_provider_modelbit.emulator.workers import DaemonWorkerPool\n"
            "DaemonWorkerPool(1, 'w').submit(time.sleep, 60)\n"
            "time.sleep(0.2)\n"
        )
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        assert time.monotonic() - started < 30
