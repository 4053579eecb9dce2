"""The receiver over real HTTP: it stores valid deliveries once and refuses everything else."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import pytest

from airflow_provider_modelbit.callbacks.receiver import DeliveryRejected, classify_delivery
from airflow_provider_modelbit.callbacks.signing import sign_token
from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.defaults import DEFAULT_CALLBACK_RETENTION_SECONDS

if TYPE_CHECKING:
    from conftest import RunningReceiver

BODY = b'{"data": [[1, 2], [2, 4]]}'
FORGED = "0" * 64


def _post(url: str, body: bytes = BODY, batch_id: str = "batch-1", **kwargs) -> httpx.Response:
    return httpx.post(url, content=body, headers={"x-mb-batch-id": batch_id}, timeout=10, **kwargs)


def _with_query(url: str, query: str) -> str:
    return urlunsplit(urlsplit(url)._replace(query=query))


class TestAcceptedDeliveries:
    def test_valid_delivery_is_stored(self, receiver: RunningReceiver) -> None:
        response = _post(receiver.url("job-1", 0))
        assert response.status_code == 200
        assert response.json() == {
            "job_id": "job-1",
            "chunk": 0,
            "stored": True,
            "kind": "data",
            "outcome": "stored",
        }
        with receiver.store.open_delivery("job-1", 0) as body:
            assert body.read() == BODY
        assert receiver.store.delivery_meta("job-1", 0)["batch_id"] == "batch-1"

    def test_redelivery_is_answered_2xx_and_stored_once(self, receiver: RunningReceiver) -> None:
        """Modelbit retries on slow answers; the same batch delivered twice counts once."""
        url = receiver.url("job-1", 0)
        assert _post(url).json()["stored"] is True
        second = _post(url, body=b'{"data": "changed"}')
        assert second.status_code == 200
        assert second.json()["stored"] is False
        with receiver.store.open_delivery("job-1", 0) as body:
            assert body.read() == BODY

    def test_late_delivery_for_a_removed_job_is_acknowledged_and_dropped(self, receiver: RunningReceiver):
        """Once the task removed its job, deliveries get a 2xx (no more retries) and are not kept."""
        url = receiver.url("job-1", 0)
        receiver.store.remove_job("job-1")
        response = _post(url)
        assert response.status_code == 200
        assert response.json()["stored"] is False
        assert response.json()["outcome"] == "dropped: job not awaited"
        assert receiver.store.delivered_chunks("job-1") == set()

    def test_delivery_for_a_retired_job_is_acknowledged_and_dropped(self, receiver: RunningReceiver):
        """A retired job's deliveries get a 2xx, so Modelbit stops redelivering, and leave nothing behind."""
        url = receiver.url("job-1", 0)
        receiver.store.retire_job("job-1", "task marked failed")
        response = _post(url)
        assert (response.status_code, response.json()["outcome"]) == (200, "dropped: job retired")
        assert receiver.store.delivered_chunks("job-1") == set()
        assert not receiver.store.has_manifest("job-1")

    @pytest.mark.parametrize(
        ("body", "kind"),
        [
            (b'{"data": 5}', "data"),
            (b'{"data": "https://links.example/abc.json?sig=1"}', "link"),
            (b'{"error": "Traceback...\\nValueError: bad"}', "error"),
        ],
    )
    def test_kind_of_delivery_is_recorded(self, receiver: RunningReceiver, body: bytes, kind: str) -> None:
        assert _post(receiver.url("job-1", 1), body=body).json()["kind"] == kind
        assert receiver.store.delivery_kind("job-1", 1) == kind


class TestRejectedDeliveries:
    """Every refusal is a 4xx and leaves the store empty."""

    @pytest.mark.parametrize(
        ("mangle", "status"),
        [
            pytest.param(lambda r: _with_query(r.url("job-1", 0), f"expires=9999999999&token={FORGED}"),
                         403, id="forged-token"),
            pytest.param(lambda r: r.url("job-1", 0, secret="another-secret-of-16+chars"), 403,
                         id="wrong-secret"),
            pytest.param(lambda r: r.url("job-1", 0, expires_in=-5), 403, id="expired"),
            pytest.param(lambda r: r.url("job-2", 0).replace("/job-2/", "/job-1/"), 403, id="other-job"),
            pytest.param(lambda r: r.url("job-1", 1).replace("/job-1/1?", "/job-1/0?"), 403,
                         id="other-chunk"),
            pytest.param(lambda r: _with_query(r.url("job-1", 0), "expires=soon&token=abc"), 400,
                         id="malformed-query"),
            pytest.param(lambda r: _with_query(r.url("job-1", 0), ""), 400, id="missing-token"),
            pytest.param(lambda r: r.url("job-1", 0).replace("/job-1/0?", "/job-1/-1?"), 400,
                         id="negative-chunk"),
            pytest.param(lambda r: r.url("job-1", 0).replace(f"/{r.conn_id}/", "/unknown_conn/"), 403,
                         id="unknown-connection"),
        ],
    )  # fmt: skip
    def test_bad_urls_are_refused(self, receiver: RunningReceiver, mangle, status: int) -> None:
        response = _post(mangle(receiver))
        assert response.status_code == status
        assert receiver.secret not in response.text
        assert receiver.store.delivered_chunks("job-1") == set()

    def test_token_for_one_job_replayed_into_another_job_is_refused(self, receiver: RunningReceiver) -> None:
        expires = int(time.time() + 600)
        token = sign_token(receiver.secret, "job-1", 0, expires)
        url = f"{receiver.base_url}/v1/callbacks/{receiver.conn_id}/job-2/0?expires={expires}&token={token}"
        assert _post(url).status_code == 403
        assert receiver.store.delivered_chunks("job-2") == set()

    @pytest.mark.parametrize(
        "body",
        [b"not json", b"[1, 2]", b'{"result": 1}', b'{"data": [1, 2]', b""],
        ids=["text", "array", "no-data-or-error", "truncated", "empty"],
    )
    def test_malformed_bodies_are_refused(self, receiver: RunningReceiver, body: bytes) -> None:
        assert _post(receiver.url("job-1", 0), body=body).status_code == 400
        assert receiver.store.delivered_chunks("job-1") == set()

    def test_oversized_declared_body_is_refused(self, receiver: RunningReceiver) -> None:
        body = b'{"data": "' + b"x" * receiver.max_body_bytes + b'"}'
        assert _post(receiver.url("job-1", 0), body=body).status_code == 413
        assert receiver.store.delivered_chunks("job-1") == set()

    def test_oversized_streamed_body_is_cut_off(self, receiver: RunningReceiver) -> None:
        """A chunked body with no Content-Length is stopped as soon as it passes the limit."""

        def pieces():
            yield b'{"data": "'
            for _ in range(receiver.max_body_bytes // 1024 + 10):
                yield b"x" * 1024
            yield b'"}'

        response = httpx.post(receiver.url("job-1", 0), content=pieces(), timeout=10)
        assert response.status_code == 413
        assert receiver.store.delivered_chunks("job-1") == set()

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
    def test_other_methods_are_refused(self, receiver: RunningReceiver, method: str) -> None:
        response = httpx.request(method, receiver.url("job-1", 0), timeout=10)
        assert response.status_code == 405
        assert receiver.store.delivered_chunks("job-1") == set()


class TestConcurrentDeliveries:
    async def test_200_concurrent_deliveries_each_stored_once(self, receiver: RunningReceiver):
        """
        200 chunks delivered at once, plus 50 redeliveries: every one answered 2xx, one store each.

        How fast they are answered against Modelbit's 10-second webhook limit is measured by
        ``tests/reliability/test_receiver_load.py``, which has the machine to itself.
        """
        urls = [receiver.url("job-load", chunk) for chunk in range(200)]
        timeout = httpx.Timeout(60, pool=None)
        async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=250)) as client:
            deliveries = urls + urls[:50]
            responses = await asyncio.wait_for(
                asyncio.gather(
                    *(client.post(url, content=BODY, headers={"x-mb-batch-id": "b"}) for url in deliveries)
                ),
                timeout=120,
            )
        assert all(response.status_code == 200 for response in responses)
        assert sum(response.json()["stored"] for response in responses) == 200
        assert receiver.store.delivered_chunks("job-load") == set(range(200))


class TestClassifyDelivery:
    def test_large_bodies_are_validated_by_streaming(self) -> None:
        rows = [[i, {"score": i / 3}] for i in range(400_000)]
        raw = orjson.dumps({"data": rows})
        assert len(raw) > 8 * 1024 * 1024
        assert classify_delivery(io.BytesIO(raw), len(raw)) == "data"
        with pytest.raises(DeliveryRejected):
            classify_delivery(io.BytesIO(raw[:-1]), len(raw) - 1)


def _age(store: CallbackStore, job_id: str, seconds: float) -> None:
    """Make every file of a local store's job look last written ``seconds`` ago."""
    then = time.time() - seconds
    for path in Path(store.location, job_id).iterdir():
        os.utime(path, (then, then))


class TestExpiry:
    def test_a_delivery_starts_one_expiry_pass_per_interval_in_the_background(
        self, receiver: RunningReceiver
    ) -> None:
        """Jobs older than the retention go after a delivery; the next pass waits an hour."""
        store = receiver.store
        week = float(DEFAULT_CALLBACK_RETENTION_SECONDS)
        store.put_delivery("job-old", 0, "b", [b'{"data": 1}'])
        _age(store, "job-old", week + 60)
        assert _post(receiver.url("job-1", 0)).status_code == 200
        deadline = time.monotonic() + 30
        while store.delivered_chunks("job-old") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.delivered_chunks("job-old") == set()
        assert store.delivered_chunks("job-1") == {0}

        store.put_delivery("job-old-2", 0, "b", [b'{"data": 1}'])
        _age(store, "job-old-2", week + 60)
        assert _post(receiver.url("job-1", 1)).status_code == 200
        assert store.delivered_chunks("job-old-2") == {0}, "a second pass ran within the hour"
