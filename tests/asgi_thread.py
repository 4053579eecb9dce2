"""Serve an ASGI app (the callback receiver, an app with Airflow's plugins) in a test process."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


class _ThreadedServer(uvicorn.Server):
    """Uvicorn in a background thread; signal handlers belong to the main thread."""

    def install_signal_handlers(self) -> None:
        pass


@contextmanager
def serve_in_thread(app: Any, *, start_timeout: float = 20, **config: Any) -> Iterator[str]:
    """
    Serve ``app`` with uvicorn on a free 127.0.0.1 port in a daemon thread; yield its base URL.

    :param config: more ``uvicorn.Config`` options, such as ``backlog``.
    """
    server = _ThreadedServer(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", **config)
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, f"not serving within {start_timeout:.0f} s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
