"""Async requests and webhook delivery (§7, §12.14, §12.15)."""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from airflow_provider_modelbit.emulator import RunningEmulator
from airflow_provider_modelbit.emulator.webhooks import RETRY_WAITS_SECONDS

if TYPE_CHECKING:
    from conftest import WebhookReceiver


def submit(
    http: httpx.Client, emulator: RunningEmulator, receiver: WebhookReceiver, data: object, **extra: object
) -> str:
    response = http.post(
        emulator.url + "/v1/doubler/latest",
        json={"data": data, "response_webhook": receiver.url + "?job=42", **extra},
    )
    assert response.status_code == 200
    batch_id = response.json()["batchId"]
    assert response.headers["x-mb-batch-id"] == batch_id
    return batch_id


def wait_for_state(emulator: RunningEmulator, batch_id: str, states: set[str], timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = emulator.client.batch(batch_id)
        if batch["state"] in states:
            return batch
        time.sleep(0.02)
    raise AssertionError(f"batch stayed {batch['state']}")


class TestImmediateResponse:
    def test_batch_id_in_body_and_header(
        self, http: httpx.Client, emulator: RunningEmulator, receiver: WebhookReceiver
    ) -> None:
        """§12.14: 200, ``{"batchId": <32 hex>}`` and the same ``x-mb-batch-id``, before the model runs."""
        started = time.monotonic()
        response = http.post(
            emulator.url + "/v1/sleeper/latest", json={"data": 3.0, "response_webhook": receiver.url}
        )
        assert time.monotonic() - started < 2.0
        assert receiver.deliveries == []
        batch_id = response.json()["batchId"]
        assert len(batch_id) == 32 and int(batch_id, 16) >= 0
        assert receiver.wait_for(1)[0].body == {"data": 3.0}


class TestDelivery:
    def test_body_headers_and_url(
        self, http: httpx.Client, emulator: RunningEmulator, receiver: WebhookReceiver
    ) -> None:
        batch_id = submit(http, emulator, receiver, [[1, 10], [2, 11]])
        delivery = receiver.wait_for(1)[0]
        assert delivery.path == "/hook?job=42"
        assert delivery.headers["x-mb-batch-id"] == batch_id
        assert delivery.headers["content-type"] == "application/json"
        assert delivery.body == {"data": [[1, 20], [2, 22]]}
        assert wait_for_state(emulator, batch_id, {"delivered"})["result"] == "data"

    def test_error_is_delivered(
        self, http: httpx.Client, emulator: RunningEmulator, receiver: WebhookReceiver
    ) -> None:
        http.post(emulator.url + "/v1/raiser/latest", json={"data": 1, "response_webhook": receiver.url})
        assert receiver.wait_for(1)[0].body["error"].endswith("ValueError: boom: 1")

    def test_timeout_error_is_delivered(
        self, http: httpx.Client, emulator: RunningEmulator, receiver: WebhookReceiver
    ) -> None:
        http.post(
            emulator.url + "/v1/sleeper/latest",
            json={"data": 2, "timeout_seconds": 1, "response_webhook": receiver.url},
        )
        assert receiver.wait_for(1)[0].body == {"error": "Timeout: inference exceeded 1 seconds"}

    def test_link_is_delivered(
        self, http: httpx.Client, emulator: RunningEmulator, receiver: WebhookReceiver
    ) -> None:
        submit(http, emulator, receiver, 21, response_format="links")
        link = receiver.wait_for(1)[0].body["data"]
        assert http.get(link).content == b"42"


class TestRetries:
    def test_retried_on_non_2xx_with_scaled_waits(
        self, http: httpx.Client, emulator: RunningEmulator, receiver: WebhookReceiver
    ) -> None:
        """Waits 1, 2, 4 s (times the 0.01 scale) between attempts; any 2xx ends delivery."""
        receiver.statuses = [500, 503, 404]
        batch_id = submit(http, emulator, receiver, 1)
        deliveries = receiver.wait_for(4)
        gaps = [later.time - earlier.time for earlier, later in itertools.pairwise(deliveries)]
        assert [
            round(gap, 2) >= wait * 0.01 for gap, wait in zip(gaps, RETRY_WAITS_SECONDS[:3], strict=True)
        ] == [True] * 3
        batch = wait_for_state(emulator, batch_id, {"delivered"})
        assert [a["status"] for a in batch["attempts"]] == [500, 503, 404, 200]

    def test_dropped_after_six_attempts(
        self, http: httpx.Client, emulator: RunningEmulator, receiver: WebhookReceiver
    ) -> None:
        receiver.statuses = [500] * 10
        batch_id = submit(http, emulator, receiver, 1)
        batch = wait_for_state(emulator, batch_id, {"delivery_failed"})
        assert len(batch["attempts"]) == 6 == len(receiver.deliveries)

    def test_connection_errors_are_retried(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        response = http.post(
            emulator.url + "/v1/doubler/latest", json={"data": 1, "response_webhook": "http://127.0.0.1:9/x"}
        )
        batch = wait_for_state(emulator, response.json()["batchId"], {"delivery_failed"})
        assert len(batch["attempts"]) == 6
        assert all(a["outcome"].startswith("connection_error") for a in batch["attempts"])

    @pytest.mark.parametrize(
        ("ignore", "attempts", "state"), [(False, 6, "delivery_failed"), (True, 1, "delivered")]
    )
    def test_slow_receiver(
        self,
        http: httpx.Client,
        emulator: RunningEmulator,
        receiver: WebhookReceiver,
        ignore: bool,
        attempts: int,
        state: str,
    ) -> None:
        """A receiver slower than the timeout is retried, unless ``response_webhook_ignore_timeout``."""
        emulator.client.configure(webhook_timeout_seconds=0.2)
        receiver.delay = 0.4
        batch_id = submit(http, emulator, receiver, 1, response_webhook_ignore_timeout=ignore)
        batch = wait_for_state(emulator, batch_id, {state})
        assert len(batch["attempts"]) == attempts
