"""Limits (§10, §12.17): body size, in-flight count and bytes, named per-minute limits."""

from __future__ import annotations

import concurrent.futures
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from airflow_provider_modelbit.emulator import RunningEmulator
from airflow_provider_modelbit.emulator.limits import (
    MinuteRateLimiter,
    RateLimit,
    parse_rate_limits,
    seconds_to_next_minute,
)

if TYPE_CHECKING:
    from conftest import WebhookReceiver


def wait_until_received(emulator: RunningEmulator, path: str) -> None:
    deadline = time.monotonic() + 10
    while not any(r["path"] == path for r in emulator.client.requests()):
        assert time.monotonic() < deadline, f"{path} never reached the emulator"
        time.sleep(0.02)


class TestMinuteRateLimiter:
    def test_counts_per_calendar_minute_across_deployments(self) -> None:
        limiter = MinuteRateLimiter()
        limits = {"shared": RateLimit("shared", 2, frozenset({"a", "b"}))}
        assert limiter.exhausted_limit(limits, "a", 60.0) is None
        assert limiter.exhausted_limit(limits, "b", 61.0) is None
        assert limiter.exhausted_limit(limits, "a", 62.0) is limits["shared"]
        assert limiter.exhausted_limit(limits, "c", 62.0) is None  # not covered by the limit
        assert limiter.exhausted_limit(limits, "a", 120.0) is None  # next minute

    @pytest.mark.parametrize(("now", "seconds"), [(60.0, 60), (119.2, 1), (90.5, 30)])
    def test_retry_after_is_seconds_to_next_minute(self, now: float, seconds: int) -> None:
        assert seconds_to_next_minute(now) == seconds

    @pytest.mark.parametrize("spec", [{"x": {"per_minute": 0}}, {"x": {"per_minute": "5"}}])
    def test_invalid_limits(self, spec: dict) -> None:
        with pytest.raises(ValueError, match="per_minute"):
            parse_rate_limits(spec)


class TestBodySize:
    def test_over_limit_is_413(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        emulator.client.configure(max_body_bytes=1000)
        response = http.post(emulator.url + "/v1/echo/latest", json={"data": "x" * 2000})
        assert response.status_code == 413
        assert response.json()["error"].startswith("Request too large")
        assert http.post(emulator.url + "/v1/echo/latest", json={"data": "x" * 100}).status_code == 200


class TestInflightCaps:
    @pytest.mark.parametrize(
        ("option", "message"),
        [("max_inflight_requests", "request count limit"), ("max_inflight_bytes", "size limit")],
    )
    def test_second_concurrent_request_gets_429(
        self, http: httpx.Client, emulator: RunningEmulator, option: str, message: str
    ) -> None:
        emulator.client.configure(**{option: 1 if option == "max_inflight_requests" else 15})
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(
                httpx.post, emulator.url + "/v1/sleeper/latest", json={"data": 1.5}, trust_env=False
            )
            wait_until_received(emulator, "/v1/sleeper/latest")
            response = http.post(emulator.url + "/v1/doubler/latest", json={"data": 1})
            assert response.status_code == 429
            assert response.headers["retry-after"] == "1"
            assert message in response.json()["error"]
            assert slow.result().status_code == 200
        assert http.post(emulator.url + "/v1/doubler/latest", json={"data": 1}).status_code == 200


class TestNamedLimits:
    def test_sync_over_limit_is_429_until_next_minute(
        self, http: httpx.Client, emulator: RunningEmulator
    ) -> None:
        emulator.client.configure(rate_limits={"scoring": {"per_minute": 1, "deployments": ["doubler"]}})
        if time.time() % 60 > 58:
            time.sleep(2.5)  # stay inside one calendar minute
        assert http.post(emulator.url + "/v1/doubler/latest", json={"data": 1}).status_code == 200
        refused = http.post(emulator.url + "/v1/doubler/latest", json={"data": 1})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "'scoring'" in refused.json()["error"]
        assert http.post(emulator.url + "/v1/echo/latest", json={"data": 1}).status_code == 200

    def test_async_over_limit_is_queued(
        self, http: httpx.Client, emulator: RunningEmulator, receiver: WebhookReceiver
    ) -> None:
        emulator.client.configure(rate_limits={"scoring": {"per_minute": 1}})
        if time.time() % 60 > 58:
            time.sleep(2.5)
        http.post(emulator.url + "/v1/doubler/latest", json={"data": 1})
        accepted = http.post(
            emulator.url + "/v1/doubler/latest", json={"data": 1, "response_webhook": receiver.url}
        )
        assert accepted.status_code == 200
        time.sleep(0.3)
        assert emulator.client.batch(accepted.json()["batchId"])["state"] == "queued"
        assert receiver.deliveries == []
