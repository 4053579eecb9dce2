"""The inference request envelope: parsing and validation (§3, §5.1, §7, §8 and §12.6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

DEFAULT_TIMEOUT_SECONDS = 300
MAX_SYNC_TIMEOUT_SECONDS = 300
MAX_ASYNC_TIMEOUT_SECONDS = 900


class RequestRejected(Exception):
    """
    A request answered with an HTTP error and ``{"error": message}``.

    :param status: the HTTP status.
    :param message: what was wrong and what to do.
    :param retry_after: seconds for a ``Retry-After`` header, if any.
    """

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class InferenceEnvelope:
    """
    A validated request body.

    :param data: the inference input.
    :param is_batch: ``data`` is an array of ``[ID, args...]`` rows.
    :param timeout_seconds: the inference time limit.
    :param links: answer with a download link instead of the data.
    :param webhook_url: run asynchronously and deliver here, if set.
    :param webhook_ignore_timeout: a receiver timeout counts as delivered.
    """

    data: Any
    is_batch: bool
    timeout_seconds: int
    links: bool
    webhook_url: str | None
    webhook_ignore_timeout: bool

    @property
    def is_async(self) -> bool:
        return self.webhook_url is not None

    @property
    def row_count(self) -> int:
        return len(self.data) if self.is_batch else 1


def _bad_request(message: str) -> RequestRejected:
    return RequestRejected(400, message)


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise _bad_request(
            f'Request body is not valid JSON ({error}). Send a JSON object such as {{"data": 10}}.'
        ) from None
    if not isinstance(document, dict):
        raise _bad_request(
            f'Request body must be a JSON object with a "data" field, got a JSON {type(document).__name__}.'
        )
    if "data" not in document:
        raise _bad_request('Request body has no "data" field; put the inference input in "data".')
    return document


def _is_batch(data: Any) -> bool:
    if not isinstance(data, list):
        return False
    if not data:
        return True
    if not isinstance(data[0], list):
        return False
    # Checked with C-level loops (set of types, truthiness): a per-row Python loop costs throughput.
    if set(map(type, data)) == {list} and all(data):
        return True
    index, row = next((i, row) for i, row in enumerate(data) if not isinstance(row, list) or not row)
    raise _bad_request(
        f"Batch row at index {index} must be a non-empty array [ID, arg, ...], "
        f"got {orjson.dumps(row)[:80]!r}. A batch is an array whose first element is an array."
    )


def _webhook(document: dict[str, Any], allow_http: bool) -> tuple[str | None, bool]:
    url = document.get("response_webhook")
    ignore_timeout = document.get("response_webhook_ignore_timeout")
    if ignore_timeout is not None and not isinstance(ignore_timeout, bool):
        raise _bad_request('"response_webhook_ignore_timeout" must be true or false.')
    if url is None:
        if ignore_timeout is not None:
            raise _bad_request('"response_webhook_ignore_timeout" is only allowed with "response_webhook".')
        return None, False
    if not isinstance(url, str):
        raise _bad_request('"response_webhook" must be a URL string.')
    parts = urlsplit(url)
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed or not parts.hostname:
        raise _bad_request(f'"response_webhook" must be an https URL with a host, got {url[:200]!r}.')
    return url, bool(ignore_timeout)


def _timeout(document: dict[str, Any], is_async: bool) -> int:
    value = document.get("timeout_seconds")
    if value is None:
        return DEFAULT_TIMEOUT_SECONDS
    maximum = MAX_ASYNC_TIMEOUT_SECONDS if is_async else MAX_SYNC_TIMEOUT_SECONDS
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        mode = "asynchronous (webhook)" if is_async else "synchronous"
        raise _bad_request(
            f'"timeout_seconds" must be an integer from 1 to {maximum} for {mode} requests, got {value!r}.'
        )
    return value


def _links(document: dict[str, Any]) -> bool:
    response_format = document.get("response_format")
    if response_format is None:
        return False
    if response_format != "links":
        raise _bad_request(f'"response_format" must be "links" when given, got {response_format!r}.')
    return True


def parse_envelope(body: bytes, *, allow_http_webhooks: bool) -> InferenceEnvelope:
    """Parse and validate a request body; raises :class:`RequestRejected` (400) when invalid."""
    document = _load_object(body)
    webhook_url, ignore_timeout = _webhook(document, allow_http_webhooks)
    return InferenceEnvelope(
        data=document["data"],
        is_batch=_is_batch(document["data"]),
        timeout_seconds=_timeout(document, webhook_url is not None),
        links=_links(document),
        webhook_url=webhook_url,
        webhook_ignore_timeout=ignore_timeout,
    )
