"""
The emulator application: its state and the routing of requests.

``/v1/...`` is inference (the Modelbit API), ``/_links/...`` serves links-mode documents and
``/_emulator/...`` holds the emulator-only inspection and control routes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from airflow_provider_modelbit.emulator.deployments import DeploymentRegistry, build_registry
from airflow_provider_modelbit.emulator.encoding import error_body
from airflow_provider_modelbit.emulator.faults import FaultInjector, FaultSettings
from airflow_provider_modelbit.emulator.http import (
    DropConnection,
    FileResponse,
    HttpRequest,
    HttpResponse,
    Reply,
)
from airflow_provider_modelbit.emulator.inference import INFERENCE_PREFIX, answer_inference
from airflow_provider_modelbit.emulator.inspection import INSPECTION_PREFIX, answer_inspection
from airflow_provider_modelbit.emulator.limits import Limits
from airflow_provider_modelbit.emulator.links import ACCESS_DENIED, LINK_PATH_PREFIX, LinkRefused, LinkStore
from airflow_provider_modelbit.emulator.recording import Recorder
from airflow_provider_modelbit.emulator.webhooks import WebhookDispatcher
from airflow_provider_modelbit.emulator.workers import DaemonWorkerPool
from airflow_provider_modelbit.emulator.workspace import EmulatorConfig, build_config

log = logging.getLogger(__name__)

DEPLOYMENT_THREADS = 64
# How long a reset waits for the requests still being served (below the inspection client's timeout).
RESET_DRAIN_SECONDS = 10.0


class EmulatorApp:
    """
    State of one emulator and the entry point for its requests.

    :param config: the options it starts with; ``reset()`` returns to them.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.initial_config = config
        self.config: EmulatorConfig = config
        self.registry: DeploymentRegistry = build_registry(config.deployments_file)
        self.recorder: Recorder = Recorder()
        self.faults: FaultInjector = FaultInjector()
        self.links: LinkStore = LinkStore()
        self.limits: Limits = Limits.create()
        self.webhooks = WebhookDispatcher(
            self.faults, lambda: self.config.webhook_time_scale, lambda: self.config.webhook_timeout_seconds
        )
        self.workers = DaemonWorkerPool(DEPLOYMENT_THREADS, "modelbit-deployment")
        self.cold_instances: set[tuple[str, str, int]] = set()
        self.base_url = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._apply_initial_faults()

    def _apply_initial_faults(self) -> None:
        if self.initial_config.faults:
            settings = dict(self.initial_config.faults)
            deployment = settings.pop("deployment", None)
            self.faults.set(FaultSettings.from_json(settings), deployment)

    def base_url_for(self, request: HttpRequest) -> str:
        """The emulator's base URL as the client addressed it (for link URLs)."""
        host = request.headers.get("host")
        return f"http://{host}" if host else self.base_url

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run background work (async batches), kept until done and cancelled on reset/close."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Background task failed", exc_info=task.exception())

    def configure(self, **options: Any) -> None:
        """Change options at run time (names of :class:`EmulatorConfig`)."""
        self.config = build_config(self.config, **options)

    async def reset(self) -> None:
        """
        Forget recorded requests, runs, batches, faults and links; restore the start-up options.

        Requests still being served (a client that gave up on them, say) are let finish first, for
        up to ``RESET_DRAIN_SECONDS``: they would otherwise hold places of the in-flight caps and
        record runs after the reset, into whatever is tested next.
        """
        for task in list(self._tasks):
            task.cancel()
        deadline = time.monotonic() + RESET_DRAIN_SECONDS
        while self.limits.inflight.requests > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.config = self.initial_config
        self.recorder.reset()
        self.faults.reset()
        self._apply_initial_faults()
        self.links.clear()
        self.limits.per_minute.reset()
        self.cold_instances.clear()

    async def handle(self, request: HttpRequest) -> Reply:
        """Route one request."""
        if request.path.startswith(INFERENCE_PREFIX):
            record = self.recorder.record_request(
                request.method, request.path, request.headers, request.body, ""
            )
            try:
                reply = await answer_inference(self, request, record)
                record["status"] = reply.status if isinstance(reply, HttpResponse) else None
                record["dropped"] = isinstance(reply, DropConnection)
            finally:
                record["seconds"] = time.time() - record["time"]  # the request's latency as the server saw it
                self.recorder.finish_request(record)
            return reply
        if request.path.startswith(LINK_PATH_PREFIX):
            return self._answer_link(request)
        if request.path.startswith(INSPECTION_PREFIX):
            return await answer_inspection(self, request)
        return HttpResponse(404, error_body(f"Not found: {request.path!r}. Inference paths start with /v1/."))

    def _answer_link(self, request: HttpRequest) -> Reply:
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(405, error_body("Method not allowed: links are fetched with GET."))
        try:
            stored = self.links.open(request.path, request.query)
        except LinkRefused as refused:
            return HttpResponse(
                403, ACCESS_DENIED.format(reason=refused).encode(), content_type="application/xml"
            )
        plan = self.faults.plan_for(stored.deployment)
        if plan is not None and plan.cuts_link(request.path):
            self.faults.record("truncate_link", request.path, stored.deployment)
            return FileResponse(stored.path, send_bytes=stored.path.stat().st_size // 2)
        return FileResponse(stored.path)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.webhooks.close()
        self.workers.shutdown()
        self.links.close()
