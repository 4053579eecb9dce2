"""What the sync and async hooks share: options, inputs, the connection, retries and request logs.

:class:`~airflow_provider_modelbit.hooks.modelbit.ModelbitHook` (requests) and
:class:`~airflow_provider_modelbit.hooks.modelbit_async.ModelbitAsyncHook` (httpx) differ only in
how they send; what a call means, how it is validated and when it is re-sent lives here once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook

from airflow_provider_modelbit.defaults import (
    ASYNC_TIMEOUT_LIMIT,
    DEFAULT_ADAPTIVE_CONCURRENCY,
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_BRANCH,
    DEFAULT_CONN_ID,
    DEFAULT_MAX_CONCURRENCY,
    LINKS,
    SYNC_TIMEOUT_LIMIT,
)
from airflow_provider_modelbit.exceptions import (
    ModelbitError,
    ModelbitInputError,
)
from airflow_provider_modelbit.hooks import metrics
from airflow_provider_modelbit.hooks.batching import (
    encode_chunk,
    is_batch,
    is_dataframe,
)
from airflow_provider_modelbit.hooks.concurrency import ConcurrencyLimiter
from airflow_provider_modelbit.hooks.responses import (
    InferenceCall,
    SendFailed,
    answer_failure,
    batch_id_of,
    link_location,
    parse_answer,
)
from airflow_provider_modelbit.hooks.retries import (
    RetryPolicy,
    RetrySchedule,
    RetryStats,
    retry_verdict,
)
from airflow_provider_modelbit.hooks.settings import (
    ModelbitSettings,
)
from airflow_provider_modelbit.hooks.urls import deployment_url
from airflow_provider_modelbit.io.column_rows import FrameRows
from airflow_provider_modelbit.io.encoding import describe_unencodable, encode_json, request_body
from airflow_provider_modelbit.io.links import read_link_value
from airflow_provider_modelbit.io.row_ids import check_repeated_ids

CONNECT_TIMEOUT = 10.0
# An async submission only waits for the short acknowledgement, never for the model.
SUBMIT_READ_TIMEOUT = 60.0
LINK_READ_TIMEOUT = 300.0
LINK_PIECE_BYTES = 1 << 16


def validate_options(
    timeout_seconds: int | None, response_format: str | None, *, limit: int, call_name: str
) -> None:
    if timeout_seconds is not None and (
        isinstance(timeout_seconds, bool)
        or not isinstance(timeout_seconds, int)
        or not 1 <= timeout_seconds <= limit
    ):
        raise ModelbitInputError(
            f"timeout_seconds={timeout_seconds!r} is invalid for {call_name}: use a whole number of "
            f"seconds from 1 to {limit}."
        )
    if response_format not in (None, LINKS):
        raise ModelbitInputError(f"response_format={response_format!r} is invalid: use None or {LINKS!r}.")


def validate_concurrency(max_concurrency: int) -> None:
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ModelbitInputError(f"max_concurrency={max_concurrency!r} is invalid: use a whole number >= 1.")


def as_rows(data: Any) -> Sequence[Sequence[Any]] | None:
    """
    Return the batch rows of ``data`` (rows or a DataFrame), or ``None`` for a single input.

    A DataFrame's rows are built only as they are read (see
    :class:`~airflow_provider_modelbit.io.column_rows.FrameRows`).
    """
    if is_dataframe(data):
        return FrameRows(data)
    if is_batch(data):
        return list(data)
    return None


def call_body(encoded_data: bytes, call: InferenceCall, response_format: str | None) -> bytes:
    """The body of a synchronous inference request for already encoded ``data``."""
    return request_body(encoded_data, timeout_seconds=call.timeout_seconds, response_format=response_format)


#: One answered try: the payload, the answer's headers and the bytes received.
Answer = tuple[dict[str, Any], Mapping[str, str], int]


def read_answer(call: InferenceCall, status: int, headers: Mapping[str, str], content: bytes) -> Answer:
    """
    Read one try's answer to ``call`` (see :func:`~.responses.parse_answer`).

    :raises SendFailed: the answer is an error; it carries what the retry decision needs.
    """
    try:
        payload = parse_answer(
            status,
            headers,
            content,
            deployment=call.deployment,
            version=call.version,
            branch=call.branch,
            conn_id=call.conn_id,
        )
    except ModelbitError as error:
        raise answer_failure(error, headers) from None
    return payload, headers, len(content)


def request_headers(settings: ModelbitSettings) -> dict[str, str]:
    """The headers of every request to the workspace (never sent to a results link)."""
    headers = {"Content-Type": "application/json"}
    if settings.api_key:
        headers["Authorization"] = settings.api_key
    return headers


def encode_single(data: Any, call: InferenceCall) -> bytes:
    try:
        return encode_json(data)
    except TypeError:
        raise ModelbitInputError(
            f"{call.where}: the input cannot be sent as JSON: {describe_unencodable(data)}; convert it to "
            "numbers, strings, lists or dicts.",
            deployment=call.deployment,
            version=call.version,
        ) from None


def encode_input(data: Any, call: InferenceCall, *, unique_ids: bool = True) -> tuple[bytes, int | None]:
    """
    ``data`` as the JSON of one request (a single input, or batch rows) and its row count.

    :param unique_ids: refuse batch rows with a repeated ID; ``False`` for rows of a DataFrame,
        whose index may repeat (a DataFrame ``data`` is always allowed to).
    """
    rows = as_rows(data)
    if rows is None:
        return encode_single(data, call), None
    from_dataframe = is_dataframe(data) or not unique_ids
    check_repeated_ids(rows, from_dataframe=from_dataframe, deployment=call.deployment)
    return encode_chunk(rows, unique_ids=False).data, len(rows)


@dataclass(frozen=True)
class PreparedInference:
    """
    An inference ready to send: a single input's request body, or batch rows to score in chunks.

    :param call: the target and options, validated.
    :param rows: the batch rows (a DataFrame's built as they are read); ``None`` for a single input.
    :param body: the request body of a single input (empty for batch rows).
    :param unique_ids: the rows' IDs were checked unique (a DataFrame's index may repeat).
    """

    call: InferenceCall
    rows: Sequence[Sequence[Any]] | None
    body: bytes = b""
    unique_ids: bool = True


def link_value(raw: bytes, url: str, call: InferenceCall) -> Any:
    """The value of a downloaded links document, an error naming the call and the link otherwise."""
    source = f"{call.where}: the results link {link_location(url)}"
    return read_link_value([raw], source=source, deployment=call.deployment, version=call.version)


class RequestTries:
    """
    The tries of one request: what happens after each, in one place for both hooks.

    An answered try is logged and counted; a failed one becomes the wait before the next try, or
    its error is raised when :mod:`~airflow_provider_modelbit.hooks.retries` says it must not be
    re-sent or the budget is spent. The hooks only send and wait (on a thread's event, or in the
    event loop).

    :param call: the request's target and options.
    :param rows: batch rows in the request; ``None`` for a single input.
    :param submitted: an async submission (its rows are scored later, not counted now).
    :param policy: attempts and waits.
    :param stats: the hook's retry counters.
    :param log: the hook's logger.
    """

    def __init__(
        self,
        call: InferenceCall,
        rows: int | None,
        *,
        submitted: bool,
        policy: RetryPolicy,
        stats: RetryStats,
        log: Any,
    ) -> None:
        self._call = call
        self._rows = rows
        self._submitted = submitted
        self._schedule = RetrySchedule(policy)
        self._stats = stats
        self._log = log
        self._started = time.monotonic()

    def start(self) -> None:
        """Mark the start of a try as it is sent, after any wait for a place (its duration is logged)."""
        self._started = time.monotonic()

    def answered(self, answer: Answer) -> Answer:
        """Log and count the answered try; a submission's rows are scored later, not now."""
        call, rows, seconds = self._call, self._rows, time.monotonic() - self._started
        scored = 0 if self._submitted else (1 if rows is None else rows)
        metrics.request_succeeded(call.deployment, scored, seconds)
        self._log.info(
            "Modelbit %s version %s: %s in %.3f s, %d bytes answered.",
            call.deployment,
            call.version,
            "async submission" if self._submitted else "single input" if rows is None else f"{rows} rows",
            seconds,
            answer[2],
        )
        return answer

    def wait_after(self, failure: SendFailed) -> float:
        """Return the wait before re-sending, or raise the failure's error when it must not be re-sent."""
        call, schedule = self._call, self._schedule
        verdict = retry_verdict(failure.error, request_sent=failure.request_sent, idempotent=call.idempotent)
        wait = (
            schedule.next_wait(failure.retry_after, spends_attempt=verdict.spends_attempt)
            if verdict
            else None
        )
        if verdict is None or wait is None:
            if verdict is not None:
                self._log.warning(
                    "%s: giving up after %d tries (%.0f s waited).",
                    call.where,
                    schedule.tries,
                    schedule.waited,
                )
            metrics.request_failed(call.deployment, None)
            failure.error.request_sent = failure.request_sent
            failure.error.refused = failure.refused
            raise failure.error
        self._stats.record(verdict.reason)
        metrics.request_failed(call.deployment, verdict.reason)
        if verdict.may_rescore:
            self._log.warning(
                "%s: re-sending after %s because the inference is declared idempotent; "
                "rows may be scored twice.",
                call.where,
                type(failure.error).__name__,
            )
        self._log.warning(
            "%s: try %d failed (%s); retrying in %.1f s.",
            call.where,
            schedule.tries - 1,
            verdict.reason,
            wait,
        )
        return wait


class ModelbitHookBase(BaseHook):
    """
    What the sync and async hooks share: the connection, calls, retries and request logs.

    :param modelbit_conn_id: id of the Modelbit connection.
    :param batch_size: most rows per request.
    :param batch_bytes: most bytes per request body; bigger chunks are split.
    :param max_concurrency: most requests in flight at once for a batch (the adaptive limit's ceiling).
    :param adaptive_concurrency: adapt the requests in flight to the deployment's answers, up to
        ``max_concurrency``; ``False`` keeps ``max_concurrency`` in flight throughout.
    :param retry_policy: attempts and waits for retried requests.
    """

    conn_name_attr = "modelbit_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "modelbit"
    hook_name = "Modelbit"

    def __init__(
        self,
        modelbit_conn_id: str = default_conn_name,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        adaptive_concurrency: bool = DEFAULT_ADAPTIVE_CONCURRENCY,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__()
        self.modelbit_conn_id = modelbit_conn_id
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.max_concurrency = max_concurrency
        self.adaptive_concurrency = adaptive_concurrency
        self._limiter: ConcurrencyLimiter | None = None
        self.retry_policy = retry_policy or RetryPolicy()
        self._retry_stats = RetryStats()
        self._timeout_capped = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(modelbit_conn_id={self.modelbit_conn_id!r})"

    @property
    def concurrency(self) -> dict[str, Any] | None:
        """The concurrency limit of the latest batch: mode, final and highest level, ceiling, decreases."""
        return None if self._limiter is None else self._limiter.summary()

    @property
    def retry_stats(self) -> dict[str, int]:
        """Retries made by this hook so far, by reason."""
        return self._retry_stats.as_dict()

    def _new_call(
        self,
        settings: ModelbitSettings,
        deployment: str,
        version: str | int,
        branch: str | None,
        timeout_seconds: int | None,
        idempotent: bool,
        *,
        limit: int = SYNC_TIMEOUT_LIMIT,
    ) -> InferenceCall:
        effective_branch = branch if branch is not None else settings.branch
        url_branch = None if branch is None and effective_branch == DEFAULT_BRANCH else effective_branch
        url = deployment_url(settings.base_url, deployment, version, url_branch)
        timeout = self._connection_timeout(settings, limit) if timeout_seconds is None else timeout_seconds
        # The URL leaves the default branch out; messages name the branch that was called all the same.
        return InferenceCall(
            settings.conn_id,
            deployment,
            version,
            effective_branch or DEFAULT_BRANCH,
            url,
            timeout,
            idempotent,
        )

    def _connection_timeout(self, settings: ModelbitSettings, limit: int) -> int | None:
        """
        The connection's default timeout, capped to what the mode allows (300 s sync, 900 s async).

        One connection serves both modes, and its default may suit async callbacks (up to 900 s):
        a synchronous call uses the most Modelbit allows instead of failing with HTTP 400.
        """
        seconds = settings.timeout_seconds
        if seconds is None or seconds <= limit:
            return seconds
        if not self._timeout_capped:
            self._timeout_capped = True
            self.log.warning(
                "Connection %r sets the extra timeout_seconds=%d, more than the %d s synchronous "
                "inference allows; synchronous calls on it use %d s (asynchronous calls keep %d s). "
                "Set timeout_seconds on the task to choose another value.",
                settings.conn_id,
                seconds,
                limit,
                limit,
                seconds,
            )
        return limit

    def _prepare_inference(
        self,
        settings: ModelbitSettings,
        deployment: str,
        data: Any,
        version: str | int,
        branch: str | None,
        timeout_seconds: int | None,
        response_format: str | None,
        idempotent: bool,
    ) -> PreparedInference:
        """Validate a synchronous inference and encode a single input (batch rows: check their IDs)."""
        call = self._new_call(settings, deployment, version, branch, timeout_seconds, idempotent)
        rows = as_rows(data)
        if rows is None:
            return PreparedInference(call, None, call_body(encode_single(data, call), call, response_format))
        unique_ids = check_repeated_ids(rows, from_dataframe=is_dataframe(data), deployment=deployment)
        return PreparedInference(call, rows, unique_ids=unique_ids)

    def _tries(self, call: InferenceCall, rows: int | None, *, submitted: bool = False) -> RequestTries:
        """The tries of one request to ``call`` under this hook's retry policy."""
        return RequestTries(
            call, rows, submitted=submitted, policy=self.retry_policy, stats=self._retry_stats, log=self.log
        )

    def _submission(
        self,
        settings: ModelbitSettings,
        deployment: str,
        data: Any,
        webhook_url: str,
        version: str | int,
        branch: str | None,
        timeout_seconds: int | None,
        response_format: str | None,
        webhook_ignore_timeout: bool | None,
        unique_ids: bool = True,
    ) -> tuple[InferenceCall, bytes]:
        """Validate an async submission and build its body."""
        call = self._submission_call(settings, deployment, version, branch, timeout_seconds, response_format)
        encoded, _ = encode_input(data, call, unique_ids=unique_ids)
        return call, _submission_body(call, encoded, webhook_url, response_format, webhook_ignore_timeout)

    def _encoded_submission(
        self,
        settings: ModelbitSettings,
        deployment: str,
        encoded_data: bytes,
        webhook_url: str,
        version: str | int,
        branch: str | None,
        timeout_seconds: int | None,
        response_format: str | None,
    ) -> tuple[InferenceCall, bytes]:
        """Validate an async submission whose data was encoded earlier and build its body."""
        call = self._submission_call(settings, deployment, version, branch, timeout_seconds, response_format)
        return call, _submission_body(call, encoded_data, webhook_url, response_format, None)

    def encode_submission_data(
        self,
        settings: ModelbitSettings,
        deployment: str,
        data: Any,
        *,
        version: str | int,
        branch: str | None,
        timeout_seconds: int | None,
        response_format: str | None,
        unique_ids: bool = True,
    ) -> bytes:
        """
        Check an async submission's options and data; return the data's JSON as it will be sent.

        The deferred path encodes the chunks it leaves to the trigger with it, in the worker, so a
        bad row or option fails the task before it defers; the trigger sends the bytes later
        (:meth:`ModelbitAsyncHook.asubmit_encoded
        <airflow_provider_modelbit.hooks.modelbit_async.ModelbitAsyncHook.asubmit_encoded>`).
        """
        call = self._submission_call(settings, deployment, version, branch, timeout_seconds, response_format)
        return encode_input(data, call, unique_ids=unique_ids)[0]

    def _submission_call(
        self,
        settings: ModelbitSettings,
        deployment: str,
        version: str | int,
        branch: str | None,
        timeout_seconds: int | None,
        response_format: str | None,
    ) -> InferenceCall:
        validate_options(
            timeout_seconds, response_format, limit=ASYNC_TIMEOUT_LIMIT, call_name="async inference"
        )
        # A submission is never declared idempotent: re-sending it could start the model twice.
        return self._new_call(
            settings, deployment, version, branch, timeout_seconds, False, limit=ASYNC_TIMEOUT_LIMIT
        )

    def _accepted_batch_id(
        self, payload: Mapping[str, Any], headers: Mapping[str, str], call: InferenceCall
    ) -> str | None:
        """The batchId of an accepted submission, or ``None`` (logged): it is information, not a key."""
        batch_id = batch_id_of(payload, headers)
        if batch_id is None:
            self.log.warning(
                "%s: the async submission was accepted without a batchId (neither the body's 'batchId' "
                "nor an x-mb-batch-id header); its delivery is awaited all the same.",
                call.where,
            )
        return batch_id


def missing_connection_message(conn_id: str) -> str:
    env_name = "AIRFLOW_CONN_" + conn_id.upper()
    return (
        f"Connection {conn_id!r} is not defined: create a Modelbit connection with that id in "
        f"Admin > Connections, or set {env_name}, e.g. "
        f"{env_name}='modelbit://:YOUR_KEY@acme.us-east-2.aws.modelbit.com'."
    )


def _submission_body(
    call: InferenceCall,
    encoded_data: bytes,
    webhook_url: str,
    response_format: str | None,
    webhook_ignore_timeout: bool | None,
) -> bytes:
    if not isinstance(webhook_url, str) or urlsplit(webhook_url).scheme not in ("http", "https"):
        raise ModelbitInputError(f"webhook_url must be an http(s) URL, got a {type(webhook_url).__name__}.")
    return request_body(
        encoded_data,
        timeout_seconds=call.timeout_seconds,
        response_format=response_format,
        response_webhook=webhook_url,
        response_webhook_ignore_timeout=webhook_ignore_timeout,
    )
