"""Call Modelbit from an event loop: :class:`ModelbitAsyncHook` (httpx).

The async variant of :class:`~airflow_provider_modelbit.hooks.modelbit.ModelbitHook`, for custom
triggers and async operators; it shares validation, retries and answer mapping with the sync hook
through :mod:`~airflow_provider_modelbit.hooks.base`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from airflow.sdk import BaseHook

from airflow_provider_modelbit.defaults import (
    LATEST,
    LINKS,
    SYNC_TIMEOUT_LIMIT,
)
from airflow_provider_modelbit.exceptions import (
    ModelbitConnectionError,
    ModelbitError,
)
from airflow_provider_modelbit.hooks.base import (
    CONNECT_TIMEOUT,
    LINK_PIECE_BYTES,
    LINK_READ_TIMEOUT,
    SUBMIT_READ_TIMEOUT,
    ModelbitHookBase,
    as_rows,
    call_answer,
    call_body,
    encode_single,
    link_value,
    missing_connection_message,
    validate_options,
)
from airflow_provider_modelbit.hooks.batching import (
    EncodedChunk,
    encode_chunk,
    is_dataframe,
    reassemble,
    rows_in_chunks,
    split_by_bytes,
)
from airflow_provider_modelbit.hooks.responses import (
    InferenceCall,
    answer_failure,
    check_link_status,
    data_of,
    expected_length,
    httpx_failure,
    incomplete_link,
    link_location,
    link_unreachable,
)
from airflow_provider_modelbit.hooks.retries import (
    RetrySchedule,
)
from airflow_provider_modelbit.hooks.settings import (
    ModelbitSettings,
    settings_from_connection,
)
from airflow_provider_modelbit.io.row_ids import check_repeated_ids

__all__ = ["ModelbitAsyncHook"]


async def _aget_connection_and_extra(conn_id: str, hook: BaseHook) -> tuple[Any, dict[str, Any]]:
    """
    Resolve a connection and its extras without blocking the event loop.

    common-compat 1.8+ offers helpers that also avoid a masking deadlock on Airflow 3.3; with older
    releases (the Airflow 3.1 floor) ``BaseHook.aget_connection`` does the same job.
    """
    try:
        from airflow.providers.common.compat.connection import (
            get_async_connection,
            get_async_extra_dejson,
        )
    except ImportError:
        try:
            conn = await BaseHook.aget_connection(conn_id)
        except ImportError:  # 3.1.0 outside a task or the triggerer: no supervisor to ask
            conn = await asyncio.to_thread(BaseHook.get_connection, conn_id)
        return conn, await asyncio.to_thread(lambda: conn.extra_dejson)
    conn = await get_async_connection(conn_id, hook)
    return conn, await get_async_extra_dejson(conn)


class ModelbitAsyncHook(ModelbitHookBase):
    """
    Call Modelbit from an event loop (triggers, async operators) with httpx.

    The connection is resolved without blocking the loop. Each public call uses its own
    ``httpx.AsyncClient``, so a hook never holds a client bound to another event loop.

    :param modelbit_conn_id: id of the Modelbit connection.
    :param batch_size: most rows per request.
    :param batch_bytes: most bytes per request body; bigger chunks are split.
    :param max_concurrency: requests in flight at once for a batch. The async hook keeps this
        level throughout: it does not adapt it (``adaptive_concurrency`` applies to the sync hook).
    :param retry_policy: attempts and waits for retried requests.
    """

    def __init__(self, modelbit_conn_id: str = ModelbitHookBase.default_conn_name, **kwargs: Any) -> None:
        super().__init__(modelbit_conn_id, **kwargs)
        self._settings: ModelbitSettings | None = None

    async def aget_settings(self) -> ModelbitSettings:
        """Resolve the connection without blocking the event loop; the key is masked when read."""
        if self._settings is None:
            try:
                conn, extra = await _aget_connection_and_extra(self.modelbit_conn_id, self)
            except Exception as error:
                if type(error).__name__ != "AirflowNotFoundException":
                    raise
                raise ModelbitConnectionError(missing_connection_message(self.modelbit_conn_id)) from None
            self._settings = settings_from_connection(conn, self.modelbit_conn_id, extra)
        return self._settings

    @asynccontextmanager
    async def _client(self, settings: ModelbitSettings) -> AsyncIterator[httpx.AsyncClient]:
        headers = {"Content-Type": "application/json"}
        if settings.api_key:
            headers["Authorization"] = settings.api_key
        limits = httpx.Limits(max_connections=max(10, 2 * self.max_concurrency))
        async with httpx.AsyncClient(headers=headers, limits=limits) as client:
            yield client

    async def aget_inference(
        self,
        deployment: str,
        data: Any,
        *,
        version: str | int = LATEST,
        branch: str | None = None,
        timeout_seconds: int | None = None,
        response_format: str | None = None,
        idempotent: bool = False,
    ) -> Any:
        """
        Run an inference and return what the answer's ``data`` holds (see ``ModelbitHook.get_inference``).

        :param deployment: deployment name.
        :param data: a single input, batch rows, or a pandas DataFrame.
        :param version: ``latest``, a version number or an alias.
        :param branch: git branch; ``None`` uses the connection's default branch.
        :param timeout_seconds: inference time limit (1-300); ``None`` uses the connection's.
        :param response_format: ``None``, or ``"links"``.
        :param idempotent: re-send after errors where the model may already have run.
        """
        validate_options(timeout_seconds, response_format, limit=SYNC_TIMEOUT_LIMIT, call_name="inference")
        settings = await self.aget_settings()
        call = self._new_call(settings, deployment, version, branch, timeout_seconds, idempotent)
        rows = as_rows(data)
        async with self._client(settings) as client:
            if rows is None:
                body = call_body(encode_single(data, call), call, response_format)
                value, _ = await self._aanswer_value(client, call, body, None, response_format)
                return value
            unique_ids = check_repeated_ids(rows, from_dataframe=is_dataframe(data), deployment=deployment)
            return await self._ainfer_rows(client, call, rows, response_format, unique_ids)

    async def _ainfer_rows(
        self,
        client: httpx.AsyncClient,
        call: InferenceCall,
        rows: Sequence[Sequence[Any]],
        response_format: str | None,
        unique_ids: bool,
    ) -> list[list[Any]]:
        parts = [
            part
            for chunk in rows_in_chunks(rows, self.batch_size)
            for part in split_by_bytes(encode_chunk(chunk, unique_ids=unique_ids), self.batch_bytes)
        ]
        gate = asyncio.Semaphore(self.max_concurrency)

        async def score(part: EncodedChunk) -> list[list[Any]]:
            async with gate:
                body = call_body(part.data, call, response_format)
                answer, _ = await self._aanswer_value(client, call, body, len(part.ids), response_format)
            return reassemble(part, answer, call=call)

        scored = await asyncio.gather(*(score(part) for part in parts))
        return [row for part_rows in scored for row in part_rows]

    async def _aanswer_value(
        self,
        client: httpx.AsyncClient,
        call: InferenceCall,
        body: bytes,
        rows: int | None,
        response_format: str | None,
    ) -> tuple[Any, int]:
        payload, _, size = await self._asend(client, call, body, rows, call.http_read_timeout())
        value = data_of(payload, call)
        if response_format != LINKS:
            return value, size
        raw = await self.adownload_link(str(value))
        return link_value(raw, str(value), call), size + len(raw)

    async def _asend(
        self,
        client: httpx.AsyncClient,
        call: InferenceCall,
        body: bytes,
        rows: int | None,
        read_timeout: float,
        *,
        submitted: bool = False,
    ) -> tuple[dict, Mapping[str, str], int]:
        schedule = RetrySchedule(self.retry_policy)
        timeout = httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT)
        while True:
            started = time.monotonic()
            try:
                response = await client.post(call.url, content=body, timeout=timeout)
                payload = call_answer(call, response.status_code, response.headers, response.content)
            except httpx.HTTPError as exc:
                failure = httpx_failure(exc, call)
            except ModelbitError as error:
                failure = answer_failure(error, response.headers)
            else:
                seconds = time.monotonic() - started
                self._log_request(call, rows, seconds, len(response.content), submitted=submitted)
                return payload, response.headers, len(response.content)
            await asyncio.sleep(self._retry_wait(schedule, failure, call))

    async def asubmit_async(
        self,
        deployment: str,
        data: Any,
        *,
        webhook_url: str,
        version: str | int = LATEST,
        branch: str | None = None,
        timeout_seconds: int | None = None,
        response_format: str | None = None,
        webhook_ignore_timeout: bool | None = None,
    ) -> str | None:
        """
        Submit an inference to run asynchronously and return its batchId (see ``ModelbitHook.submit_async``).

        :param deployment: deployment name.
        :param data: a single input, batch rows, or a pandas DataFrame.
        :param webhook_url: the https URL Modelbit delivers the answer to.
        :param version: ``latest``, a version number or an alias.
        :param branch: git branch; ``None`` uses the connection's default branch.
        :param timeout_seconds: inference time limit (1-900); ``None`` uses the connection's.
        :param response_format: ``None``, or ``"links"``.
        :param webhook_ignore_timeout: count a webhook attempt that times out as delivered.
        """
        settings = await self.aget_settings()
        call, body = self._submission(
            settings,
            deployment,
            data,
            webhook_url,
            version,
            branch,
            timeout_seconds,
            response_format,
            webhook_ignore_timeout,
        )
        async with self._client(settings) as client:
            payload, headers, _ = await self._asend(
                client, call, body, None, SUBMIT_READ_TIMEOUT, submitted=True
            )
        return self._accepted_batch_id(payload, headers, call)

    async def adownload_link(self, url: str) -> bytes:
        """
        Download a results link without the Modelbit ``Authorization`` header.

        :param url: the pre-signed link from a links answer or a webhook delivery.
        :raises ModelbitLinkExpired: the link answered 403.
        :raises ModelbitIncompleteBatch: the body was cut short or the stream broke.
        """
        timeout = httpx.Timeout(LINK_READ_TIMEOUT, connect=CONNECT_TIMEOUT)
        async with httpx.AsyncClient(timeout=timeout) as client:
            try:
                async with client.stream("GET", url) as response:
                    check_link_status(response.status_code, link_location(url))
                    return await _read_link_body(response, url)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise link_unreachable(url, exc) from None


async def _read_link_body(response: httpx.Response, url: str) -> bytes:
    """Read a link's body, checking it arrived whole."""
    expected = expected_length(response.headers)
    pieces: list[bytes] = []
    try:
        async for piece in response.aiter_bytes(LINK_PIECE_BYTES):
            pieces.append(piece)
    except httpx.HTTPError as exc:
        raise incomplete_link(url, sum(map(len, pieces)), expected, type(exc).__name__) from None
    received = sum(map(len, pieces))
    if expected is not None and received < expected:
        raise incomplete_link(url, received, expected, "body cut short")
    return b"".join(pieces)
