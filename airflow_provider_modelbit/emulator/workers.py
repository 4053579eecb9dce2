"""
The threads that run deployment calls, off the event loop.

They are daemon threads: an inference that outlived its ``timeout_seconds`` (a ``sleeper`` asked to
sleep for minutes) keeps its thread busy, and ``concurrent.futures.ThreadPoolExecutor`` would make
interpreter exit wait for it.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any

Job = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]


class DaemonWorkerPool:
    """
    Up to ``max_workers`` daemon threads, started as work arrives.

    :param max_workers: the most calls running at once; more wait in a queue.
    :param name: prefix of the thread names.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max_workers = max_workers
        self._name = name
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._closed = False

    def submit(self, function: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``function(*args)`` in a worker; the future holds its result or exception."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("The deployment worker pool is shut down.")
            if self._idle <= 0 and self._threads < self._max_workers:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self._name}-{self._threads}", daemon=True).start()
            else:
                self._idle -= 1
        self._jobs.put((future, function, args))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, function, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(*args))
                except BaseException as error:
                    future.set_exception(error)
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Stop each worker after the calls already queued; running calls are not interrupted."""
        with self._lock:
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)
