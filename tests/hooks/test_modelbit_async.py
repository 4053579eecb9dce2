"""ModelbitAsyncHook against the real local Modelbit server (hooks/modelbit_async.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from airflow_provider_modelbit.exceptions import (
    ModelbitConnectionError,
    ModelbitDeploymentError,
    ModelbitIncompleteBatch,
    ModelbitLinkExpired,
    ModelbitNotFound,
    ModelbitTransportError,
)
from airflow_provider_modelbit.hooks.modelbit_async import ModelbitAsyncHook
from airflow_provider_modelbit.hooks.retries import NOT_SENT, UNAVAILABLE, RetryPolicy
from tests.airflow_dags import NEEDS_LOOKUP_OUTSIDE_TASKS
from tests.hooks.test_modelbit import KEY, _free_port, _rows
from tests.scripted_http import CannedResponse


class TestAsyncHook:
    async def test_single_and_batch(self, emulator, async_hook_for) -> None:
        emulator.client.configure(sort_results_by_id=True)
        hook = async_hook_for(emulator.url)
        assert await hook.aget_inference("doubler", 4) == 8
        assert await hook.aget_inference("doubler", [[3, 1], [1, 2]]) == [[3, 2], [1, 4]]

    async def test_batch_is_chunked_concurrently_and_matched(self, emulator, async_hook_for) -> None:
        hook = async_hook_for(emulator.url, batch_size=10, max_concurrency=2)
        emulator.client.configure(max_inflight_requests=2)
        assert await hook.aget_inference("doubler", _rows(95)) == [[n, 2 * n] for n in range(95)]
        assert hook.retry_stats == {}
        assert len(emulator.client.requests()) == 10

    async def test_links_and_dataframe(self, emulator, async_hook_for) -> None:
        hook = async_hook_for(emulator.url)
        frame = pd.DataFrame({"v": [1, 2]}, index=["a", "b"])
        assert await hook.aget_inference("echo", frame, response_format="links") == [
            ["a", {"v": 1}],
            ["b", {"v": 2}],
        ]

    async def test_errors_are_the_same_as_sync(self, emulator, async_hook_for) -> None:
        hook = async_hook_for(emulator.url)
        with pytest.raises(ModelbitDeploymentError, match="raised ValueError: boom: 1"):
            await hook.aget_inference("raiser", 1)
        with pytest.raises(ModelbitNotFound):
            await hook.aget_inference("no_such_model", 1)

    async def test_retries_503(self, emulator, async_hook_for) -> None:
        emulator.client.set_faults(error_rate=0.5, error_statuses=(503,), seed=5)
        hook = async_hook_for(
            emulator.url, batch_size=5, retry_policy=RetryPolicy(max_attempts=10, initial_wait=0.01)
        )
        assert len(await hook.aget_inference("doubler", _rows(50))) == 50
        assert hook.retry_stats.get(UNAVAILABLE, 0) > 0
        assert set(emulator.client.runs("doubler").values()) == {1}

    async def test_refused_connection(self, async_hook_for) -> None:
        hook = async_hook_for(f"http://127.0.0.1:{_free_port()}")
        with pytest.raises(ModelbitTransportError, match="could not connect"):
            await hook.aget_inference("doubler", 1)
        assert hook.retry_stats == {NOT_SENT: 3}

    async def test_submit_async(self, emulator, async_hook_for) -> None:
        batch_id = await async_hook_for(emulator.url).asubmit_async(
            "doubler", 1, webhook_url="http://127.0.0.1:9/h"
        )
        assert len(batch_id) == 32

    @NEEDS_LOOKUP_OUTSIDE_TASKS
    async def test_missing_connection(self) -> None:
        with pytest.raises(ModelbitConnectionError, match="AIRFLOW_CONN_NEVER_DEFINED_ANYWHERE"):
            await ModelbitAsyncHook("never_defined_anywhere").aget_inference("doubler", 1)

    async def test_truncated_link(self, emulator, async_hook_for) -> None:
        emulator.client.set_faults(truncate_link_rate=1.0)
        with pytest.raises(ModelbitIncompleteBatch):
            await async_hook_for(emulator.url).aget_inference("echo", _rows(200), response_format="links")

    async def test_link_download_sends_no_key(self, scripted_server, async_hook_for) -> None:
        scripted_server.script(CannedResponse(200, b"[[1, 2]]"))
        hook = async_hook_for(scripted_server.url, password=KEY)
        assert await hook.adownload_link(scripted_server.url + "/bucket/r.json?signature=s") == b"[[1, 2]]"
        assert "Authorization" not in scripted_server.received[0]["headers"]

    async def test_expired_link(self, scripted_server, async_hook_for) -> None:
        scripted_server.script(CannedResponse(403, b"<Error>AccessDenied</Error>"))
        with pytest.raises(ModelbitLinkExpired, match="expired"):
            await async_hook_for(scripted_server.url).adownload_link(
                scripted_server.url + "/r.json?signature=s"
            )

    async def test_unreachable_link(self, async_hook_for) -> None:
        url = f"http://127.0.0.1:{_free_port()}/r.json?signature=secret-signature"
        with pytest.raises(ModelbitTransportError, match="Could not download") as caught:
            await async_hook_for("http://127.0.0.1:9").adownload_link(url)
        assert "secret-signature" not in caught.value.message
