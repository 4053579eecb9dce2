"""Call Modelbit from an event loop: :class:`ModelbitAsyncHook` (httpx).

The async variant of :class:`~airflow_provider_modelbit.hooks.modelbit.ModelbitHook`; it shares
validation, retries and answer mapping with the sync hook through
:mod:`~airflow_provider_modelbit.hooks.base`. Its user in this package is
:class:`~airflow_provider_modelbit.triggers.callback.ModelbitCallbackTrigger`, which submits the
chunks a deferred batch left to it from the triggerer (:meth:`ModelbitAsyncHook.asubmit_encoded`),
paced by the same adaptive limit as the sync batch path; custom triggers and async operators may
use the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from airflow.sdk import BaseHook

from airflow_provider_modelbit.defaults import (
    LATEST,
    LINKS,
    SYNC_TIMEOUT_LIMIT,
)
from airflow_provider_modelbit.exceptions import ModelbitConnectionError
from airflow_provider_modelbit.hooks.base import (
    CONNECT_TIMEOUT,
    LINK_PIECE_BYTES,
    LINK_READ_TIMEOUT,
    SUBMIT_READ_TIMEOUT,
    Answer,
    ModelbitHookBase,
    call_body,
    link_value,
    missing_connection_message,
    read_answer,
    request_headers,
    validate_options,
)
from airflow_provider_modelbit.hooks.batching import (
    EncodedChunk,
    encode_chunk,
    reassemble,
    rows_in_chunks,
    split_by_bytes,
)
from airflow_provider_modelbit.hooks.responses import (
    InferenceCall,
    LinkBody,
    SendFailed,
    check_link_status,
    data_of,
    httpx_failure,
    link_location,
    link_unreachable,
)
from airflow_provider_modelbit.hooks.settings import (
    ModelbitSettings,
    settings_from_connection,
)

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
        limits = httpx.Limits(max_connections=max(10, 2 * self.max_concurrency))
        async with httpx.AsyncClient(headers=request_headers(settings), limits=limits) as client:
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
        Run an inference and return what the answer's ``data`` holds.

        The awaitable form of :meth:`ModelbitHook.get_inference
        <airflow_provider_modelbit.hooks.modelbit.ModelbitHook.get_inference>`: the same parameters,
        checks and answers.
        """
        validate_options(timeout_seconds, response_format, limit=SYNC_TIMEOUT_LIMIT, call_name="inference")
        settings = await self.aget_settings()
        prepared = self._prepare_inference(
            settings, deployment, data, version, branch, timeout_seconds, response_format, idempotent
        )
        async with self._client(settings) as client:
            if prepared.rows is None:
                value, _ = await self._aanswer_value(
                    client, prepared.call, prepared.body, None, response_format
                )
                return value
            return await self._ainfer_rows(
                client, prepared.call, prepared.rows, response_format, prepared.unique_ids
            )

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
        observe: Callable[[SendFailed], None] | None = None,
    ) -> Answer:
        """
        POST a body, re-sending where the retry rules allow (see ``ModelbitHook._send``).

        :param observe: told of every failed try before the retry decision (a pacer counts refusals).
        """
        tries = self._tries(call, rows, submitted=submitted)
        timeout = httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT)
        while True:
            tries.start()
            try:
                return tries.answered(await self._asend_once(client, call, body, timeout))
            except SendFailed as failure:
                if observe is not None:
                    observe(failure)
                await asyncio.sleep(tries.wait_after(failure))

    async def _asend_once(
        self, client: httpx.AsyncClient, call: InferenceCall, body: bytes, timeout: httpx.Timeout
    ) -> Answer:
        try:
            response = await client.post(call.url, content=body, timeout=timeout)
        except httpx.HTTPError as exc:
            raise httpx_failure(exc, call) from None
        return read_answer(call, response.status_code, response.headers, response.content)

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
        Submit an inference to run asynchronously and return its batchId.

        The awaitable form of :meth:`ModelbitHook.submit_async
        <airflow_provider_modelbit.hooks.modelbit.ModelbitHook.submit_async>`: the same parameters,
        checks and answer; never re-sent once it may have reached the server.
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

    async def asubmit_encoded(
        self,
        deployment: str,
        encoded_data: bytes,
        *,
        webhook_url: str,
        version: str | int = LATEST,
        branch: str | None = None,
        timeout_seconds: int | None = None,
        response_format: str | None = None,
        observe: Callable[[SendFailed], None] | None = None,
    ) -> str | None:
        """
        Submit data encoded earlier by :meth:`encode_submission_data` and return its batchId.

        As :meth:`asubmit_async` otherwise: never re-sent once it may have reached the server.

        :param observe: told of every failed try (e.g. a refusal the retry policy waits out).
        """
        settings = await self.aget_settings()
        call, body = self._encoded_submission(
            settings, deployment, encoded_data, webhook_url, version, branch, timeout_seconds, response_format
        )
        async with self._client(settings) as client:
            payload, headers, _ = await self._asend(
                client, call, body, None, SUBMIT_READ_TIMEOUT, submitted=True, observe=observe
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
    body = LinkBody(url, response.headers)
    try:
        pieces = [body.count(piece) async for piece in response.aiter_bytes(LINK_PIECE_BYTES)]
    except httpx.HTTPError as exc:
        raise body.broken(exc) from None
    body.check_whole()
    return b"".join(pieces)
