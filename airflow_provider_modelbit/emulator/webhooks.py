"""
Webhook delivery of async results (§7 and §12.15).

Each delivery POSTs the synchronous-format body to the URL exactly as supplied, with
``x-mb-batch-id``. Any 2xx ends it; a connection error, a non-2xx or a receiver slower than the
receiver timeout is retried after 1, 2, 4, 8 and 16 s (times the time scale), unless the
request set ``response_webhook_ignore_timeout``, which makes a timed-out attempt count as
delivered. Each attempt is recorded on the batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from airflow_provider_modelbit.emulator.faults import FaultInjector

RETRY_WAITS_SECONDS = (1, 2, 4, 8, 16)
REORDER_WINDOW_SECONDS = 1.0


class WebhookDispatcher:
    """
    Delivers webhook bodies with retries and the webhook faults.

    :param faults: the fault injector consulted per delivery and where faults are recorded.
    :param time_scale: returns the current factor applied to retry waits and the delay fault.
    :param receiver_timeout: returns the current per-attempt timeout in seconds.
    """

    def __init__(
        self, faults: FaultInjector, time_scale: Callable[[], float], receiver_timeout: Callable[[], float]
    ) -> None:
        self._faults = faults
        self._time_scale = time_scale
        self._receiver_timeout = receiver_timeout
        self._client: httpx.AsyncClient | None = None
        self._held: asyncio.Future[None] | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=100), follow_redirects=False, trust_env=False
            )
        return self._client

    async def deliver(self, batch: dict[str, Any], body: bytes, ignore_timeout: bool) -> None:
        """Deliver ``body`` for ``batch``, applying the deployment's webhook faults."""
        plan = self._faults.plan_for(batch["deployment"])
        if plan is not None and plan.settings.webhook_delay_seconds > 0:
            self._faults.record(
                "webhook_delay", batch["webhook_url"], batch["deployment"], batchId=batch["batchId"]
            )
            await asyncio.sleep(plan.settings.webhook_delay_seconds)
        if plan is not None and plan.settings.webhook_reorder:
            await self._deliver_reordered(batch, body, ignore_timeout)
        else:
            await self._deliver_with_retries(batch, body, ignore_timeout)
        if (
            batch["state"] == "delivered"
            and plan is not None
            and plan.roll(plan.settings.webhook_duplicate_rate)
        ):
            self._faults.record(
                "webhook_duplicate", batch["webhook_url"], batch["deployment"], batchId=batch["batchId"]
            )
            await self._attempt(batch, body, ignore_timeout, duplicate=True)

    async def _deliver_reordered(self, batch: dict[str, Any], body: bytes, ignore_timeout: bool) -> None:
        """Hold this delivery until the next one is ready, send that one first, then this one."""
        held, self._held = self._held, None
        if held is not None:
            self._faults.record(
                "webhook_reorder", batch["webhook_url"], batch["deployment"], batchId=batch["batchId"]
            )
            await self._deliver_with_retries(batch, body, ignore_timeout)
            held.set_result(None)
            return
        released: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held = released
        try:
            await asyncio.wait_for(asyncio.shield(released), REORDER_WINDOW_SECONDS)
        except TimeoutError:
            if self._held is released:
                self._held = None
        await self._deliver_with_retries(batch, body, ignore_timeout)

    async def _deliver_with_retries(self, batch: dict[str, Any], body: bytes, ignore_timeout: bool) -> None:
        batch["state"] = "delivering"
        for wait in (0, *RETRY_WAITS_SECONDS):
            if wait:
                await asyncio.sleep(wait * self._time_scale())
            if await self._attempt(batch, body, ignore_timeout):
                batch["state"] = "delivered"
                return
        batch["state"] = "delivery_failed"

    async def _attempt(
        self, batch: dict[str, Any], body: bytes, ignore_timeout: bool, duplicate: bool = False
    ) -> bool:
        """One POST; True when it counts as delivered."""
        attempt: dict[str, Any] = {"time": time.time(), "status": None, "duplicate": duplicate}
        batch["attempts"].append(attempt)
        headers = {"content-type": "application/json", "x-mb-batch-id": batch["batchId"]}
        try:
            response = await self._http().post(
                batch["webhook_url"], content=body, headers=headers, timeout=self._receiver_timeout()
            )
        except httpx.TimeoutException:
            attempt["outcome"] = "timeout_ignored" if ignore_timeout else "timeout"
            return ignore_timeout
        except httpx.HTTPError as error:
            attempt["outcome"] = f"connection_error: {type(error).__name__}"
            return False
        attempt["status"] = response.status_code
        attempt["outcome"] = "delivered" if response.is_success else "http_error"
        return response.is_success

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
