"""What Modelbit answers mean: the one mapping from responses and transport failures to errors.

Shared by the sync hook, the async hook and the triggers, so an answer means the same thing
wherever it is read. Any JSON ``error`` is a failure whatever the status, and any non-2xx is a
failure even without a JSON body (gateways answer HTML).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import orjson
import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from airflow_provider_modelbit.defaults import DEFAULT_CONN_ID, SYNC_TIMEOUT_LIMIT
from airflow_provider_modelbit.exceptions import (
    ModelbitAuthError,
    ModelbitBadRequest,
    ModelbitDeploymentError,
    ModelbitError,
    ModelbitIncompleteBatch,
    ModelbitLinkExpired,
    ModelbitNotFound,
    ModelbitPayloadTooLarge,
    ModelbitRateLimited,
    ModelbitTimeout,
    ModelbitTransportError,
)
from airflow_provider_modelbit.hooks.retries import parse_retry_after

if TYPE_CHECKING:
    from airflow_provider_modelbit.hooks.settings import ModelbitSettings

# Modelbit's own client waits timeout_seconds plus 5 s for an answer.
HTTP_TIMEOUT_MARGIN = 5.0


@dataclass(frozen=True)
class InferenceCall:
    """One inference target: where it goes, how long it may take, whether it may run twice."""

    conn_id: str
    deployment: str
    version: str | int
    branch: str | None
    url: str
    timeout_seconds: int | None
    idempotent: bool = False

    @property
    def where(self) -> str:
        branch = f", branch {self.branch}" if self.branch else ""
        return f"Deployment {self.deployment!r} (version {self.version}{branch})"

    def http_read_timeout(self) -> float:
        return (self.timeout_seconds or SYNC_TIMEOUT_LIMIT) + HTTP_TIMEOUT_MARGIN


def parse_answer(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    deployment: str,
    version: str | int,
    branch: str | None = None,
    conn_id: str = DEFAULT_CONN_ID,
) -> dict[str, Any]:
    """
    Return the JSON object of a successful answer, or raise the error it describes.

    This is the one place that maps Modelbit answers to exceptions, for the sync hook, the
    async hook and the triggers alike: any JSON ``error`` is a failure whatever the status,
    and any non-2xx is a failure even without a JSON body.

    :param status: HTTP status.
    :param headers: response headers (case-insensitive mapping).
    :param body: the whole response body.
    :param deployment: deployment called, for messages.
    :param version: version called, for messages.
    :param branch: branch called, for messages (``None``: the connection's default).
    :param conn_id: connection used, for messages that say what to fix.
    """
    payload = json_or_none(body)
    where = f"Deployment {deployment!r} (version {version}{f', branch {branch}' if branch else ''})"
    context: dict[str, Any] = {"deployment": deployment, "version": version, "status": status}
    if isinstance(payload, dict) and "error" in payload:
        raise _error_answer(status, headers, str(payload["error"]), where, conn_id, context)
    if not 200 <= status < 300:
        raise _error_answer(status, headers, describe_body(headers, body), where, conn_id, context)
    if not isinstance(payload, dict):
        raise ModelbitTransportError(
            f"{where}: HTTP {status} with a body that is not a JSON object ({describe_body(headers, body)}); "
            "check that the Workspace URL points at a Modelbit workspace.",
            **context,
        )
    return payload


def json_or_none(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def describe_body(headers: Mapping[str, str], body: bytes) -> str:
    content_type = headers.get("content-type") or "no content type"
    return f"{len(body)} bytes of {content_type}"


# Error kinds decided by the status alone, with what the user can do about each.
_ERRORS_BY_STATUS: dict[int, tuple[type[ModelbitError], str]] = {
    400: (ModelbitBadRequest, "Modelbit rejected the request"),
    401: (ModelbitAuthError, "Modelbit refused the API key; check the API Key of connection {conn_id!r}"),
    403: (ModelbitAuthError, "Modelbit refused the API key; check the API Key of connection {conn_id!r}"),
    404: (
        ModelbitNotFound,
        "not found; check the deployment name, version, branch "
        "and the Workspace URL of connection {conn_id!r}",
    ),
    413: (ModelbitPayloadTooLarge, "the request is too large; lower batch_size or batch_bytes"),
    # Gateways answer 502/503 before any model runs; they are never used for deployment errors.
    502: (ModelbitTransportError, "bad gateway"),
    503: (ModelbitTransportError, "service unavailable"),
}


def _error_answer(
    status: int, headers: Mapping[str, str], text: str, where: str, conn_id: str, context: dict[str, Any]
) -> ModelbitError:
    """Build the exception for an error answer (no secret can be in it: the key is never echoed)."""
    if status in _ERRORS_BY_STATUS:
        error_class, what = _ERRORS_BY_STATUS[status]
        return error_class(f"{where}: {what.format(conn_id=conn_id)} (HTTP {status}: {text}).", **context)
    if status == 429:
        return ModelbitRateLimited(
            f"{where}: rate limited (HTTP 429: {text}) and retries ran out; lower max_concurrency or "
            "run later.",
            retry_after=parse_retry_after(headers.get("retry-after")),
            **context,
        )
    if status == 504 or text.startswith("Timeout:"):
        return ModelbitTimeout(
            f"{where}: {_last_line(text) or 'timed out'} (HTTP {status}); raise timeout_seconds or use "
            "async mode for long inferences.",
            **context,
        )
    if status >= 300 and not _looks_like_traceback(text):
        return ModelbitTransportError(f"{where}: HTTP {status} ({text}).", **context)
    return _deployment_error(text, where, context)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _looks_like_traceback(text: str) -> bool:
    return "Traceback" in text or ": " in _last_line(text)


def _deployment_error(text: str, where: str, context: dict[str, Any]) -> ModelbitDeploymentError:
    last_line = _last_line(text) or "the deployment failed without a message"
    return ModelbitDeploymentError(
        f"{where} raised {last_line} (HTTP {context['status']}); the full traceback is in .traceback.",
        traceback=text,
        **context,
    )


def unwrap_link_document(document: Any) -> Any:
    """Accept a links document either bare or wrapped as ``{"data": ...}``."""
    if isinstance(document, dict) and set(document) == {"data"}:
        return document["data"]
    return document


def link_location(url: str) -> str:
    """Return a link without its query string, which holds the signature and must not be logged."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def batch_id_of(payload: Mapping[str, Any], headers: Mapping[str, str], call: InferenceCall) -> str:
    """Read the batchId of an async submission: the body's ``batchId``, else the ``x-mb-batch-id`` header."""
    batch_id = payload.get("batchId") or headers.get("x-mb-batch-id")
    if not batch_id:
        raise ModelbitTransportError(
            f"{call.where}: the async submission was accepted but carried no batchId.",
            deployment=call.deployment,
            version=call.version,
        )
    return str(batch_id)


def data_of(payload: Mapping[str, Any], call: InferenceCall) -> Any:
    """Return the ``data`` of a successful answer."""
    if "data" not in payload:
        raise ModelbitTransportError(
            f"{call.where}: the answer has neither 'data' nor 'error'; check the Workspace URL.",
            deployment=call.deployment,
            version=call.version,
        )
    return payload["data"]


class SendFailed(Exception):
    """A request failed; says whether it may have reached the server and what the server asked."""

    def __init__(self, error: ModelbitError, *, request_sent: bool, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_sent = request_sent
        self.retry_after = retry_after


def requests_failure(exc: requests.RequestException, call: InferenceCall) -> SendFailed:
    """Map a requests exception, telling apart failures before sending from failures after."""
    context: dict[str, Any] = {"deployment": call.deployment, "version": call.version}
    if isinstance(exc, requests.ReadTimeout):
        error: ModelbitError = ModelbitTimeout(
            f"{call.where}: no answer within {call.http_read_timeout():.0f} s; the model may still have run. "
            "Raise timeout_seconds or use async mode.",
            **context,
        )
        return SendFailed(error, request_sent=True)
    sent = not never_sent(exc)
    what = "the connection broke after the request was sent" if sent else "could not connect"
    error = ModelbitTransportError(
        f"{call.where}: {what} ({type(exc).__name__}). Check the Workspace URL of connection "
        f"{call.conn_id!r} and the network.",
        **context,
    )
    return SendFailed(error, request_sent=sent)


def never_sent(exc: BaseException) -> bool:
    """Find a connect-phase failure anywhere in the exception's chain."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    seen: set[int] = set()
    pending: list[Any] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, NewConnectionError | ConnectTimeoutError | ConnectionRefusedError):
            return True
        if isinstance(current, BaseException):
            pending.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
            pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
    return False


def httpx_failure(exc: httpx.HTTPError, call: InferenceCall) -> SendFailed:
    """Map an httpx exception, telling apart failures before sending from failures after."""
    context: dict[str, Any] = {"deployment": call.deployment, "version": call.version}
    if isinstance(exc, httpx.ReadTimeout):
        error: ModelbitError = ModelbitTimeout(
            f"{call.where}: no answer within {call.http_read_timeout():.0f} s; the model may still have run. "
            "Raise timeout_seconds or use async mode.",
            **context,
        )
        return SendFailed(error, request_sent=True)
    sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    what = "the connection broke after the request was sent" if sent else "could not connect"
    error = ModelbitTransportError(
        f"{call.where}: {what} ({type(exc).__name__}). Check the Workspace URL of connection "
        f"{call.conn_id!r} and the network.",
        **context,
    )
    return SendFailed(error, request_sent=sent)


def answer_failure(error: ModelbitError, headers: Mapping[str, str]) -> SendFailed:
    return SendFailed(error, request_sent=True, retry_after=parse_retry_after(headers.get("retry-after")))


def check_link_status(status: int, location: str) -> None:
    if status == 403:
        raise ModelbitLinkExpired(
            f"The results link {location} answered 403: it expired (links live one hour) or its signature "
            "is invalid. Run the inference again to get a fresh link.",
            status=status,
        )
    if not 200 <= status < 300:
        raise ModelbitTransportError(f"The results link {location} answered HTTP {status}.", status=status)


def expected_length(headers: Mapping[str, str]) -> int | None:
    # A compressed body's Content-Length counts compressed bytes, so it cannot be checked here.
    if headers.get("content-encoding") not in (None, "", "identity"):
        return None
    length = headers.get("content-length")
    return int(length) if length and length.isdigit() else None


def incomplete_link(url: str, received: int, expected: int | None, why: str) -> ModelbitIncompleteBatch:
    of_expected = f" of {expected:,}" if expected is not None else ""
    return ModelbitIncompleteBatch(
        f"The results link {link_location(url)} broke off after {received:,}{of_expected} bytes ({why}); "
        "the results are incomplete. Run the inference again."
    )


def connection_test_verdict(
    status: int, headers: Mapping[str, str], body: bytes, settings: ModelbitSettings
) -> tuple[bool, str]:
    """Read the answer to the connection test request."""
    payload = json_or_none(body)
    if not isinstance(payload, dict) or not ("error" in payload or "data" in payload):
        return False, (
            f"{settings.base_url} answered HTTP {status} with {describe_body(headers, body)}: the URL does "
            "not look like a Modelbit workspace. Check the Workspace URL."
        )
    if status in (401, 403):
        return (
            False,
            f"{settings.base_url} is a Modelbit workspace, but it refused the API key (HTTP {status}).",
        )
    if status == 404:
        key_note = "the API key was accepted" if settings.api_key else "no API key is set"
        return True, f"Connected to the Modelbit workspace at {settings.base_url}; {key_note}."
    return False, (
        f"{settings.base_url} answered HTTP {status} to the connection test; the URL does not look like a "
        "Modelbit workspace."
    )


def unreachable_message(base_url: str, exc: BaseException) -> str:
    if never_sent(exc):
        return (
            f"Cannot reach {base_url} ({type(exc).__name__}: host unknown, refused or unreachable). "
            "Check the Workspace URL and the network."
        )
    return f"{base_url} did not answer the connection test ({type(exc).__name__})."


def link_unreachable(url: str, exc: BaseException) -> ModelbitTransportError:
    """The error for a results link that could not be fetched at all."""
    return ModelbitTransportError(
        f"Could not download the results link {link_location(url)} ({type(exc).__name__}); "
        "check that this machine can reach the object store."
    )
