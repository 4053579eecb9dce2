"""What Modelbit answers mean: the one mapping from responses and transport failures to errors.

Shared by the sync hook, the async hook and the triggers, so an answer means the same thing
wherever it is read. Any JSON ``error`` is a failure whatever the status, and any non-2xx is a
failure even without a JSON body (gateways answer HTML).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator, Mapping
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
#: A ``token=`` query parameter (plain or percent-encoded) in any text: a request line, a URL, a
#: message. A webhook URL's token is a credential (see ``callbacks/signing.py``).
TOKEN_QUERY_PATTERN = re.compile(r"(?i)(token(?:=|%3D))[^&\s\"']*")


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
        return describe_target(self.deployment, self.version, self.branch)

    def http_read_timeout(self) -> float:
        return (self.timeout_seconds or SYNC_TIMEOUT_LIMIT) + HTTP_TIMEOUT_MARGIN


def describe_target(deployment: str, version: str | int, branch: str | None) -> str:
    """
    Name what was called, for every deployment-level message: deployment, version and branch.

    :param branch: the branch called; ``None`` when only the connection's default is known.
    """
    return f"Deployment {deployment!r} (version {version}, branch {branch or 'of the connection'})"


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
    where = describe_target(deployment, version, branch)
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


# Modelbit's rate-limits page names the message (``RateLimitExceeded: Concurrency request count
# limit reached``) but documents a status only for synchronous requests (429), so the message is
# read as a rate limit in any status, as are capacity messages of the same kind.
_RATE_LIMIT_TEXT = re.compile(
    r"RateLimitExceeded|request (count|size) limit reached|(at|over|out of) capacity", re.IGNORECASE
)
# Messages that say the workspace answered but knows no such deployment (the connection test's).
_UNKNOWN_DEPLOYMENT_TEXT = re.compile(
    r"not found|does not exist|doesn't exist|unknown deployment|no deployment|no such deployment",
    re.IGNORECASE,
)


def is_rate_limit_message(text: str) -> bool:
    """
    Tell whether an error text is a rate or capacity limit, whatever status carried it.

    A traceback is the deployment's own failure (its model may have called a rate-limited API
    after running): that is never read as Modelbit refusing the request.
    """
    return "Traceback" not in text and bool(_RATE_LIMIT_TEXT.search(_last_line(text)))


def _error_answer(
    status: int, headers: Mapping[str, str], text: str, where: str, conn_id: str, context: dict[str, Any]
) -> ModelbitError:
    """
    Build the exception for an error answer, with the server's text redacted first.

    Modelbit never echoes the API key, but it may echo the request: its 400 for a webhook URL it
    refuses quotes the URL, whose ``token=`` signs a delivery. Redacted here, no message, log,
    traceback attribute or trigger event made from the answer can carry it.
    """
    text = redact_tokens(text)
    if status == 429 or is_rate_limit_message(text):
        return ModelbitRateLimited(
            f"{where}: rate limited (HTTP {status}: {text}) and retries ran out; lower max_concurrency or "
            "run later.",
            retry_after=parse_retry_after(headers.get("retry-after")),
            **context,
        )
    if status in _ERRORS_BY_STATUS:
        error_class, what = _ERRORS_BY_STATUS[status]
        return error_class(f"{where}: {what.format(conn_id=conn_id)} (HTTP {status}: {text}).", **context)
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


def redact_tokens(text: str) -> str:
    """Return ``text`` with the value of every ``token=`` query parameter replaced by ``***``."""
    return TOKEN_QUERY_PATTERN.sub(r"\1***", text)


def link_location(url: str) -> str:
    """Return a link without its query string, which holds the signature and must not be logged."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def batch_id_of(payload: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    """
    Read the batchId of an async submission: the body's ``batchId``, else the ``x-mb-batch-id`` header.

    ``None`` when neither is there: the shape of the immediate answer is not documented, and the
    batch ID is information, not a key (deliveries are keyed by job and chunk).
    """
    batch_id = payload.get("batchId") or headers.get("x-mb-batch-id")
    return str(batch_id) if batch_id else None


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
    """
    A request failed; says whether it may have reached the server, whether the server refused it,
    and what the server asked.

    :param error: the failure, mapped to a Modelbit error.
    :param request_sent: the request may have reached the server.
    :param refused: the server answered with a refusal (see :func:`refuses_request`): it did not
        take the request.
    :param retry_after: seconds the server asked to wait, if it said.
    """

    def __init__(
        self,
        error: ModelbitError,
        *,
        request_sent: bool,
        refused: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_sent = request_sent
        self.refused = refused
        self.retry_after = retry_after


def requests_failure(exc: requests.RequestException, call: InferenceCall) -> SendFailed:
    """Map a requests exception, telling apart failures before sending from failures after."""
    if isinstance(exc, requests.ReadTimeout):
        return _no_answer_in_time(call)
    sent = not never_sent(exc)
    return SendFailed(_connection_failure(exc, call, sent=sent, tls=_tls_failure(exc)), request_sent=sent)


def _no_answer_in_time(call: InferenceCall) -> SendFailed:
    """A read timeout, with either HTTP client: the request was sent, and the model may have run."""
    error = ModelbitTimeout(
        f"{call.where}: no answer within {call.http_read_timeout():.0f} s; the model may still have run. "
        "Raise timeout_seconds or use async mode.",
        deployment=call.deployment,
        version=call.version,
    )
    return SendFailed(error, request_sent=True)


def _connection_failure(exc: BaseException, call: InferenceCall, *, sent: bool, tls: bool) -> ModelbitError:
    """The error for a request that got no answer, naming the URL tried (which never holds the key)."""
    if tls:
        what = (
            f"the TLS handshake with {safe_url(call.url)} failed before anything was sent; if the server "
            "speaks plain HTTP, use an http:// Workspace URL"
        )
    elif sent:
        what = f"the connection broke after the request was sent to {safe_url(call.url)}"
    else:
        what = f"could not connect to {safe_url(call.url)}"
    return ModelbitTransportError(
        f"{call.where}: {what} ({type(exc).__name__}). Check the Workspace URL of connection "
        f"{call.conn_id!r} and the network.",
        deployment=call.deployment,
        version=call.version,
    )


def safe_url(url: str) -> str:
    """A URL without user info or query string, safe to show in messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _tls_failure(exc: BaseException) -> bool:
    """Find a TLS handshake failure in the exception's chain (it happens before any byte is sent)."""
    return any(isinstance(current, ssl.SSLError | requests.exceptions.SSLError) for current in _chain(exc))


def _chain(exc: BaseException) -> Iterator[Any]:
    """The exception, its causes, contexts, reasons and exception arguments, each once."""
    seen: set[int] = set()
    pending: list[Any] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseException):
            pending.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
            pending.extend(arg for arg in current.args if isinstance(arg, BaseException))


def never_sent(exc: BaseException) -> bool:
    """Find a connect-phase failure (TLS handshakes included) anywhere in the exception's chain."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    connect_phase = NewConnectionError | ConnectTimeoutError | ConnectionRefusedError | ssl.SSLError
    return any(isinstance(current, connect_phase | requests.exceptions.SSLError) for current in _chain(exc))


def httpx_failure(exc: httpx.HTTPError, call: InferenceCall) -> SendFailed:
    """Map an httpx exception, telling apart failures before sending from failures after."""
    if isinstance(exc, httpx.ReadTimeout):
        return _no_answer_in_time(call)
    sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return SendFailed(_connection_failure(exc, call, sent=sent, tls=_tls_failure(exc)), request_sent=sent)


def answer_failure(error: ModelbitError, headers: Mapping[str, str]) -> SendFailed:
    """The failure of a request the server answered with ``error``."""
    return SendFailed(
        error,
        request_sent=True,
        refused=refuses_request(error),
        retry_after=parse_retry_after(headers.get("retry-after")),
    )


#: Gateways answer these before passing a request on (``hooks/retries.py`` re-sends them for that reason).
_GATEWAY_REFUSALS = frozenset({502, 503})


def refuses_request(error: ModelbitError) -> bool:
    """
    Tell whether an error answer says the server did not take the request: a client error (4xx:
    a refused key, an unknown deployment, an invalid or too large request), a rate or capacity
    limit, or a gateway's 502/503.

    Nothing it answers that way was queued or run. A timeout (504, ``Timeout:``), a deployment's
    traceback or another server error may come after the request was passed on, so they are not
    refusals: an async submission answered so may still have been accepted.
    """
    status = error.status or 0
    return isinstance(error, ModelbitRateLimited) or 400 <= status < 500 or status in _GATEWAY_REFUSALS


def check_link_status(status: int, location: str) -> None:
    if status == 403:
        raise ModelbitLinkExpired(
            f"The results link {location} answered 403: it expired (links live one hour) or its signature "
            "is invalid. Run the inference again to get a fresh link.",
            status=status,
        )
    if not 200 <= status < 300:
        raise ModelbitTransportError(f"The results link {location} answered HTTP {status}.", status=status)


class LinkBody:
    """
    A results link's body as it arrives: counts its bytes and tells whether it came whole.

    The sync and the async hook read links with different HTTP clients; this is what they share,
    so a cut-short body raises the same error in both.

    :param url: the link, for messages (shown without its signature).
    :param headers: the link's answer headers.
    """

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self.url = url
        self.received = 0
        # A compressed body's Content-Length counts compressed bytes, so it cannot be checked here.
        length = headers.get("content-length")
        identity = headers.get("content-encoding") in (None, "", "identity")
        self.expected = int(length) if identity and length and length.isdigit() else None

    def count(self, piece: bytes) -> bytes:
        """Count a piece as it arrives and hand it on."""
        self.received += len(piece)
        return piece

    def broken(self, exc: BaseException) -> ModelbitIncompleteBatch:
        """The error for a stream that broke with ``exc``."""
        return self._incomplete(type(exc).__name__)

    def check_whole(self) -> None:
        """Raise :class:`ModelbitIncompleteBatch` when fewer bytes arrived than announced."""
        if self.expected is not None and self.received < self.expected:
            raise self._incomplete("body cut short")

    def _incomplete(self, why: str) -> ModelbitIncompleteBatch:
        of_expected = f" of {self.expected:,}" if self.expected is not None else ""
        return ModelbitIncompleteBatch(
            f"The results link {link_location(self.url)} broke off after {self.received:,}{of_expected} "
            f"bytes ({why}); the results are incomplete. Run the inference again."
        )


def connection_test_verdict(
    status: int, headers: Mapping[str, str], body: bytes, settings: ModelbitSettings
) -> tuple[bool, str]:
    """
    Read the answer to the connection test request (a deployment that cannot exist).

    The docs do not say how a workspace answers an unknown deployment, so any JSON error that says
    so, in any status, shows a workspace; so does a rate-limit answer. 401/403 mean the key was refused.
    """
    payload = json_or_none(body)
    if not isinstance(payload, dict) or not ("error" in payload or "data" in payload):
        return False, (
            f"{settings.base_url} answered HTTP {status} with {describe_body(headers, body)}: the URL does "
            "not look like a Modelbit workspace. Check the Workspace URL."
        )
    if status in (401, 403):
        return (
            False,
            f"{settings.base_url} is a Modelbit workspace, but it refused the API key (HTTP {status}); "
            f"check the API Key of connection {settings.conn_id!r}.",
        )
    text = str(payload.get("error", ""))
    if status == 404 or _UNKNOWN_DEPLOYMENT_TEXT.search(text) or is_rate_limit_message(text):
        key_note = "the API key was accepted" if settings.api_key else "no API key is set"
        return True, f"Connected to the Modelbit workspace at {settings.base_url}; {key_note}."
    return False, (
        f"{settings.base_url} answered HTTP {status} to the connection test ({text[:200] or 'no error'}); "
        "the URL does not look like a Modelbit workspace."
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
