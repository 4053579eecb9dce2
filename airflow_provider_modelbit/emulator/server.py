"""
Running the emulator: in the foreground (the CLI), in a background thread or in a child process.

``run_emulator()`` is the context manager tests use; it binds ``127.0.0.1`` on a free port,
yields a handle with ``url`` and ``client`` and stops the server cleanly on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal

from airflow_provider_modelbit.emulator.app import EmulatorApp
from airflow_provider_modelbit.emulator.client import EmulatorClient
from airflow_provider_modelbit.emulator.http import HttpServer
from airflow_provider_modelbit.emulator.workspace import DEFAULT_MAX_BODY_BYTES, EmulatorConfig, build_config

DEFAULT_HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 60.0
# Young objects a garbage collection waits for in a process the server has to itself. Python's
# default (700) made the server collect several times per request while parsing its rows, and
# each collection walked the rows of every request in flight: a quarter of the server's time at
# 3,000 rows per request. Requests and answers are JSON documents, which hold no cycles.
YOUNG_OBJECTS_PER_COLLECTION = 50_000


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (faster), else the standard loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def collect_for_serving() -> None:
    """Tune the garbage collector of a process that only serves: never call it in a caller's process."""
    gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION, *gc.get_threshold()[1:])


def _import_pandas() -> None:
    # DataFrame-mode deployments need pandas, whose import takes seconds: do it before the first request.
    with contextlib.suppress(ImportError):
        import pandas  # noqa: F401


class EmulatorServer:
    """
    One emulator listening on one port, driven by the caller's event loop.

    :param config: the emulator options.
    :param host: the address to bind; ``127.0.0.1`` unless you mean to expose it.
    :param port: the port; 0 picks a free one.
    """

    def __init__(self, config: EmulatorConfig, host: str = DEFAULT_HOST, port: int = 0) -> None:
        self.app = EmulatorApp(config)
        self._host = host
        self._port = port
        self._http = HttpServer(self.app.handle, lambda: self.app.config.max_body_bytes)

    async def start(self) -> str:
        """Start listening; returns the base URL."""
        port = await self._http.listen(self._host, self._port)
        threading.Thread(target=_import_pandas, name="modelbit-emulator-warm-up", daemon=True).start()
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.app.base_url = f"http://{host}:{port}"
        return self.app.base_url

    async def stop(self) -> None:
        self._http.close()
        await self.app.close()

    async def serve_until(self, stop: asyncio.Event) -> None:
        await stop.wait()
        await self.stop()


@dataclass
class RunningEmulator:
    """
    A started emulator.

    :param url: its base URL, ``http://127.0.0.1:<port>``.
    :param client: an :class:`EmulatorClient` for its ``/_emulator/`` routes.
    :param pid: the process serving it (this one in ``thread`` mode), e.g. to read its CPU time.
    """

    url: str
    client: EmulatorClient
    pid: int = field(default_factory=os.getpid)


class _ThreadRunner:
    """Serves from an event loop in a daemon thread of this process."""

    def __init__(self, config: EmulatorConfig, host: str, port: int) -> None:
        self._server = EmulatorServer(config, host, port)
        self._loop = new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.url = ""
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="modelbit-emulator", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as error:
            self._error = error
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.url = await self._server.start()
        self._ready.set()
        await self._server.serve_until(self._stop)

    def start(self) -> str:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECONDS) or self._error is not None:
            raise RuntimeError(f"The Modelbit emulator did not start: {self._error!r}")
        return self.url

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


def _serve_in_child(config: EmulatorConfig, host: str, port: int, channel: Connection) -> None:
    """Child-process entry: report the URL (or the start-up error), serve until told to stop."""
    # The parent decides when the server stops (its word, or its death closing the pipe): a terminal's
    # Ctrl-C, sent to the whole process group, must not kill the server under a parent still using it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    collect_for_serving()
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        server = EmulatorServer(config, host, port)
        channel.send(loop.run_until_complete(server.start()))
    except Exception as error:
        channel.send(RuntimeError(f"{type(error).__name__}: {error}"))
        return
    stop = asyncio.Event()

    def wait_for_parent() -> None:
        with contextlib.suppress(EOFError, OSError):
            channel.recv()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_parent, daemon=True).start()
    loop.run_until_complete(server.serve_until(stop))
    loop.close()


class _ProcessRunner:
    """Serves from a spawned child process, so the server has a core of its own."""

    def __init__(self, config: EmulatorConfig, host: str, port: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._channel, child_channel = context.Pipe()
        self._process = context.Process(
            target=_serve_in_child,
            args=(config, host, port, child_channel),
            name="modelbit-emulator",
            daemon=True,
        )

    @property
    def pid(self) -> int:
        return self._process.pid or 0

    def start(self) -> str:
        self._process.start()
        if not self._channel.poll(START_TIMEOUT_SECONDS):
            self.stop()
            raise RuntimeError("The Modelbit emulator process did not start in time.")
        try:
            answer = self._channel.recv()
        except EOFError:
            answer = RuntimeError("the emulator process exited during start-up")
        if isinstance(answer, BaseException):
            self._process.join(timeout=10)
            raise RuntimeError(f"The Modelbit emulator did not start: {answer}") from answer
        return str(answer)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._channel.send("stop")
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10)


@contextlib.contextmanager
def run_emulator(
    *,
    require_api_keys: bool = False,
    api_keys: tuple[str, ...] | frozenset[str] = ("k1",),
    workspaces: Mapping[str, Mapping[str, Any]] | None = None,
    sort_results_by_id: bool = True,
    link_expiry_seconds: float = 3600,
    webhook_time_scale: float = 1.0,
    webhook_timeout_seconds: float = 10.0,
    allow_http_webhooks: bool = True,
    deployment_error_status: int = 200,
    timeout_status: int = 200,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_inflight_requests: int | None = None,
    max_inflight_bytes: int | None = None,
    rate_limits: Mapping[str, Any] | None = None,
    deployments_file: str | None = None,
    faults: Mapping[str, Any] | None = None,
    mode: Literal["thread", "process"] = "thread",
    host: str = DEFAULT_HOST,
    port: int = 0,
) -> Iterator[RunningEmulator]:
    """
    Start an emulator in the background for the duration of the ``with`` block.

    :param require_api_keys: reject requests without a key (a present unknown key is always rejected).
    :param api_keys: the valid keys of the default workspace.
    :param workspaces: extra workspaces by leftmost Host label: ``{"acme": {"require_api_keys": True,
        "api_keys": ["k2"]}}``.
    :param sort_results_by_id: return batch results sorted by ID (newest docs); ``False``: in request order.
    :param link_expiry_seconds: lifetime of links-mode URLs.
    :param webhook_time_scale: factor on the webhook retry waits (1, 2, 4, 8, 16 s); 0.01: 10-160 ms.
    :param webhook_timeout_seconds: how long a webhook receiver may take to answer.
    :param allow_http_webhooks: accept ``http://`` webhook URLs (for local receivers).
    :param deployment_error_status: status of deployment exceptions: 200, 400 or 500.
    :param timeout_status: status of inference timeouts: 200 or 504.
    :param max_body_bytes: request bodies above this get 413.
    :param max_inflight_requests: concurrent inference requests allowed; more get 429.
    :param max_inflight_bytes: total body bytes of concurrent requests allowed; more get 429.
    :param rate_limits: named per-minute limits: ``{"name": {"per_minute": 10, "deployments": ["doubler"]}}``.
    :param deployments_file: a Python file registering extra deployments (see ``deployments``).
    :param faults: initial fault settings (names of ``FaultSettings``, plus optional ``deployment``).
    :param mode: ``thread`` (in this process) or ``process`` (a child process with its own core).
    :param host: the address to bind.
    :param port: the port; 0 picks a free one.
    """
    config = build_config(
        require_api_keys=require_api_keys,
        api_keys=api_keys,
        workspaces=workspaces or {},
        sort_results_by_id=sort_results_by_id,
        link_expiry_seconds=link_expiry_seconds,
        webhook_time_scale=webhook_time_scale,
        webhook_timeout_seconds=webhook_timeout_seconds,
        allow_http_webhooks=allow_http_webhooks,
        deployment_error_status=deployment_error_status,
        timeout_status=timeout_status,
        max_body_bytes=max_body_bytes,
        max_inflight_requests=max_inflight_requests,
        max_inflight_bytes=max_inflight_bytes,
        rate_limits=rate_limits,
        deployments_file=deployments_file,
        faults=faults,
    )
    runner = _ProcessRunner(config, host, port) if mode == "process" else _ThreadRunner(config, host, port)
    url = runner.start()
    client = EmulatorClient(url)
    try:
        yield RunningEmulator(url=url, client=client, pid=runner.pid)
    finally:
        client.close()
        runner.stop()
