"""Fault injection: every knob, per deployment or global, deterministic given a seed."""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from airflow_provider_modelbit.emulator import RunningEmulator
from airflow_provider_modelbit.emulator.faults import FaultInjector, FaultSettings

if TYPE_CHECKING:
    from conftest import WebhookReceiver


def raw_post(url: str, body: bytes) -> bytes:
    """POST over a plain socket and return every byte received until the server closes."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as connection:
        head = f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {len(body)}\r\n\r\n"
        connection.sendall(head.encode() + body)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
        return received


class TestFaultSettings:
    @pytest.mark.parametrize(
        "settings",
        [{"error_rate": 1.5}, {"error_statuses": [404]}, {"error_statuses": []}, {"colour": 1}],
    )
    def test_invalid_settings_are_rejected(self, settings: dict) -> None:
        with pytest.raises((ValueError, TypeError)):
            FaultSettings.from_json(settings)

    def test_same_seed_same_decisions(self) -> None:
        def decisions(seed: int) -> list[bool]:
            injector = FaultInjector()
            injector.set(FaultSettings(error_rate=0.5, seed=seed))
            plan = injector.plan_for("doubler")
            assert plan is not None
            return [plan.roll(0.5) for _ in range(50)]

        assert decisions(7) == decisions(7)
        assert decisions(7) != decisions(8)

    def test_deployment_settings_replace_global(self) -> None:
        injector = FaultInjector()
        injector.set(FaultSettings(error_rate=1.0))
        injector.set(FaultSettings(rate_429=1.0), deployment="echo")
        assert injector.plan_for("echo").settings.rate_429 == 1.0  # type: ignore[union-attr]
        assert injector.plan_for("doubler").settings.error_rate == 1.0  # type: ignore[union-attr]


class TestRequestFaults:
    @pytest.mark.parametrize(
        ("status", "content_type", "kind"),
        [
            (500, "application/json", "error_500"),
            (502, "text/html", "error_502"),
            (503, "application/json", "error_503"),
        ],
    )
    def test_error_statuses(
        self, http: httpx.Client, emulator: RunningEmulator, status: int, content_type: str, kind: str
    ) -> None:
        emulator.client.set_faults(error_rate=1.0, error_statuses=(status,))
        response = http.post(emulator.url + "/v1/doubler/latest", json={"data": [[1, 1]]})
        assert response.status_code == status
        assert response.headers["content-type"].startswith(content_type)
        assert emulator.client.fault_counts() == {kind: 1}
        assert emulator.client.runs("doubler") == {}  # the model did not run

    def test_429_with_retry_after(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        emulator.client.set_faults(rate_429=1.0, retry_after=7)
        response = http.post(emulator.url + "/v1/doubler/latest", json={"data": 1})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        assert response.json()["error"].startswith("RateLimitExceeded")

    @pytest.mark.parametrize(
        ("drop_before", "drop_after", "kind", "runs"),
        [(1.0, 0.0, "drop_before", {}), (0.0, 1.0, "drop_after", {"1": 1})],
    )
    def test_dropped_connection_has_no_response(
        self, emulator: RunningEmulator, drop_before: float, drop_after: float, kind: str, runs: dict
    ) -> None:
        """A real TCP close: the client reads end-of-stream without any HTTP bytes."""
        emulator.client.set_faults(drop_before_rate=drop_before, drop_after_rate=drop_after)
        assert raw_post(emulator.url + "/v1/doubler/latest", b'{"data": [[1, 1]]}') == b""
        assert emulator.client.runs("doubler") == runs
        assert emulator.client.fault_counts() == {kind: 1}

    def test_latency_is_added(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        emulator.client.set_faults(latency_seconds=0.3)
        started = time.monotonic()
        http.post(emulator.url + "/v1/doubler/latest", json={"data": 1})
        assert time.monotonic() - started >= 0.3
        assert emulator.client.faults()[0]["kind"] == "latency"

    @pytest.mark.parametrize(("compute", "model_seconds"), [(0.8, 1.0), (1.0, 0.8)])
    def test_the_model_time_includes_the_deployments_own_compute(
        self, http: httpx.Client, emulator: RunningEmulator, compute: float, model_seconds: float
    ) -> None:
        """A request is served for the longer of the model time and the compute, not for their sum."""
        emulator.client.set_faults(model_seconds=model_seconds, deployment="sleeper")
        started = time.monotonic()
        answer = http.post(emulator.url + "/v1/sleeper/latest", json={"data": compute}, timeout=30)
        elapsed = time.monotonic() - started
        assert answer.status_code == 200
        # The sum would be 1.8 s; a loaded machine adds tenths of a second, not that much.
        assert 1.0 <= elapsed < 1.6

    def test_per_deployment_only(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        emulator.client.set_faults(error_rate=1.0, deployment="echo")
        assert http.post(emulator.url + "/v1/doubler/latest", json={"data": 1}).status_code == 200
        assert http.post(emulator.url + "/v1/echo/latest", json={"data": 1}).status_code == 503
        assert emulator.client.faults()[0]["deployment"] == "echo"

    def test_seeded_sequence_repeats(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        def statuses() -> list[int]:
            emulator.client.set_faults(error_rate=0.5, seed=42)
            return [
                http.post(emulator.url + "/v1/doubler/latest", json={"data": 1}).status_code
                for _ in range(20)
            ]

        first = statuses()
        assert first == statuses()
        assert {200, 503} == set(first)

    def test_clear_faults(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        emulator.client.set_faults(error_rate=1.0)
        emulator.client.clear_faults()
        assert http.post(emulator.url + "/v1/doubler/latest", json={"data": 1}).status_code == 200


class TestLinkTruncation:
    def test_body_shorter_than_content_length(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        emulator.client.set_faults(truncate_link_rate=1.0)
        link = http.post(
            emulator.url + "/v1/echo/latest",
            json={"data": [[i, i] for i in range(1000)], "response_format": "links"},
        ).json()["data"]
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(link)
        assert emulator.client.fault_counts() == {"truncate_link": 1}

    def test_the_first_downloads_of_each_link_are_cut_then_it_is_served_whole(
        self, http: httpx.Client, emulator: RunningEmulator
    ) -> None:
        emulator.client.set_faults(truncate_link_first=2)
        link = http.post(
            emulator.url + "/v1/echo/latest",
            json={"data": [[i, i] for i in range(1000)], "response_format": "links"},
        ).json()["data"]
        for _ in range(2):
            with pytest.raises(httpx.RemoteProtocolError):
                http.get(link)
        assert http.get(link).status_code == 200
        assert emulator.client.fault_counts() == {"truncate_link": 2}


class TestWebhookFaults:
    def test_duplicate_delivery(
        self, http: httpx.Client, emulator: RunningEmulator, receiver: WebhookReceiver
    ) -> None:
        emulator.client.set_faults(webhook_duplicate_rate=1.0)
        http.post(emulator.url + "/v1/doubler/latest", json={"data": 1, "response_webhook": receiver.url})
        first, second = receiver.wait_for(2)[:2]
        assert first.body == second.body == {"data": 2}
        assert first.headers["x-mb-batch-id"] == second.headers["x-mb-batch-id"]

    def test_delayed_delivery(
        self, http: httpx.Client, emulator: RunningEmulator, receiver: WebhookReceiver
    ) -> None:
        emulator.client.set_faults(webhook_delay_seconds=0.5)
        sent = time.time()
        http.post(emulator.url + "/v1/doubler/latest", json={"data": 1, "response_webhook": receiver.url})
        assert receiver.wait_for(1)[0].time - sent >= 0.5

    def test_reordered_delivery(
        self, http: httpx.Client, emulator: RunningEmulator, receiver: WebhookReceiver
    ) -> None:
        emulator.client.set_faults(webhook_reorder=True)
        for value in (1, 2):
            http.post(
                emulator.url + "/v1/doubler/latest", json={"data": value, "response_webhook": receiver.url}
            )
            time.sleep(0.1)
        assert [d.body["data"] for d in receiver.wait_for(2)] == [4, 2]
        assert emulator.client.fault_counts() == {"webhook_reorder": 1}
