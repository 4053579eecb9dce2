"""The Modelbit protocol: URLs, authentication, error mapping, retries, links and async submission.

:class:`ModelbitHook` (requests, a pooled session) serves workers; :class:`ModelbitAsyncHook`
(httpx) serves triggers and async operators. Both read answers through
:func:`~airflow_provider_modelbit.hooks.responses.parse_answer` (re-exported here) and retry
through :mod:`~airflow_provider_modelbit.hooks.retries`, so an answer means the same thing
wherever it is read — a webhook delivery included.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, suppress
from functools import cached_property
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson
import requests
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from airflow_provider_modelbit.defaults import (
    ASYNC_TIMEOUT_LIMIT,
    DEFAULT_ADAPTIVE_CONCURRENCY,
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_BRANCH,
    DEFAULT_CONN_ID,
    DEFAULT_MAX_CONCURRENCY,
    LATEST,
    LINKS,
    SYNC_TIMEOUT_LIMIT,
)
from airflow_provider_modelbit.exceptions import (
    ModelbitConnectionError,
    ModelbitError,
    ModelbitIncompleteBatch,
    ModelbitInputError,
    ModelbitTransportError,
)
from airflow_provider_modelbit.get_provider_info import UI_FIELD_BEHAVIOUR
from airflow_provider_modelbit.hooks import metrics
from airflow_provider_modelbit.hooks.batching import (
    ChunkResult,
    EncodedChunk,
    dataframe_rows,
    encode_chunk,
    is_batch,
    is_dataframe,
    long_lived_objects_frozen,
    reassemble,
    rows_in_chunks,
    split_by_bytes,
)
from airflow_provider_modelbit.hooks.concurrency import ConcurrencyLimiter, Outcome, load_outcome
from airflow_provider_modelbit.hooks.responses import (
    InferenceCall,
    SendFailed,
    answer_failure,
    batch_id_of,
    check_link_status,
    connection_test_verdict,
    data_of,
    expected_length,
    httpx_failure,
    incomplete_link,
    link_location,
    link_unreachable,
    parse_answer,
    requests_failure,
    unreachable_message,
    unwrap_link_document,
)
from airflow_provider_modelbit.hooks.retries import (
    RetryPolicy,
    RetrySchedule,
    RetryStats,
    retry_verdict,
)
from airflow_provider_modelbit.hooks.settings import (
    ModelbitSettings,
    settings_from_connection,
)
from airflow_provider_modelbit.io.encoding import describe_unencodable, encode_json, request_body
from airflow_provider_modelbit.io.row_ids import refuse_duplicate_ids

__all__ = [
    "ChunkResult",
    "ModelbitAsyncHook",
    "ModelbitHook",
    "ModelbitSettings",
    "RetryPolicy",
    "deployment_url",
    "link_location",
    "parse_answer",
    "unwrap_link_document",
]

CONNECTION_TEST_DEPLOYMENT = "__modelbit_connection_test__"
CONNECT_TIMEOUT = 10.0
# An async submission only waits for the short acknowledgement, never for the model.
SUBMIT_READ_TIMEOUT = 60.0
LINK_READ_TIMEOUT = 300.0
LINK_PIECE_BYTES = 1 << 16
#: Fetches of one results link before a cut-short or unreachable download fails the chunk.
LINK_FETCH_ATTEMPTS = 4
LINK_FETCH_BACKOFF = 0.5

_T = TypeVar("_T")

_DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9_]+")
_VERSION_NAME = re.compile(r"[A-Za-z0-9_:+=][A-Za-z0-9._:+=-]*")
_BRANCH_NAME = re.compile(r"[A-Za-z0-9_:+=][A-Za-z0-9._/:+=-]*")
_NEGATIVE_NUMBER = re.compile(r"-\d+")


# --- URLs --------------------------------------------------------------------------------------


def deployment_url(
    base_url: str, deployment: str, version: str | int = LATEST, branch: str | None = None
) -> str:
    """
    Return the inference URL of a deployment, validating every part before any request.

    :param base_url: the workspace URL, e.g. ``https://acme.us-east-2.aws.modelbit.com``.
    :param deployment: deployment name (letters, digits, underscores).
    :param version: ``latest``, a version number, or an alias such as ``official``.
    :param branch: a git branch (``feature/x`` is sent as ``feature~x``); ``None`` means ``main``.
    :raises ModelbitInputError: naming the part that is invalid.
    """
    path = [_deployment_segment(deployment)]
    if branch is not None:
        path.append(_branch_segment(branch))
    path.append(_version_segment(version))
    return f"{base_url.rstrip('/')}/v1/{'/'.join(path)}"


def _deployment_segment(deployment: str) -> str:
    if not isinstance(deployment, str) or not _DEPLOYMENT_NAME.fullmatch(deployment):
        raise ModelbitInputError(
            f"Deployment name {deployment!r} is invalid: use letters, digits and underscores only.",
            deployment=str(deployment),
        )
    return deployment


def _version_segment(version: str | int) -> str:
    if isinstance(version, bool) or not isinstance(version, str | int):
        raise ModelbitInputError(f"Version {version!r} is invalid: use 'latest', a number or an alias.")
    text = str(version)
    if isinstance(version, int) or text.isdigit() or _NEGATIVE_NUMBER.fullmatch(text):
        if int(text) < 1:
            raise ModelbitInputError(f"Version {version!r} is invalid: version numbers start at 1.")
        return str(int(text))
    if not _VERSION_NAME.fullmatch(text) or ".." in text:
        raise ModelbitInputError(
            f"Version {version!r} is invalid: use 'latest', a number, or an alias made of "
            "letters, digits and . _ : + = - (no spaces, slashes or '..')."
        )
    return text


def _branch_segment(branch: str) -> str:
    valid = (
        isinstance(branch, str)
        and _BRANCH_NAME.fullmatch(branch) is not None
        and ".." not in branch
        and "//" not in branch
        and not branch.endswith("/")
    )
    if not valid:
        raise ModelbitInputError(
            f"Branch {branch!r} is invalid: use letters, digits and . _ / : + = - "
            "(no spaces, no '..', no empty path parts)."
        )
    return branch.replace("/", "~")


# --- Shared hook behaviour ---------------------------------------------------------------------


def _validate_options(
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
        raise ModelbitInputError(f"response_format={response_format!r} is invalid: use None or 'links'.")


def _validate_concurrency(max_concurrency: int) -> None:
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ModelbitInputError(f"max_concurrency={max_concurrency!r} is invalid: use a whole number >= 1.")


def _as_rows(data: Any) -> Sequence[Sequence[Any]] | None:
    """Return the batch rows of ``data`` (rows or a DataFrame), or ``None`` for a single input."""
    if is_dataframe(data):
        return dataframe_rows(data)
    if is_batch(data):
        return list(data)
    return None


def _ids_must_be_unique(data: Any) -> bool:
    """Batch rows need unique IDs; a DataFrame's index may repeat, as Modelbit's own client allows."""
    return not is_dataframe(data)


def _encode_single(data: Any, call: InferenceCall) -> bytes:
    try:
        return encode_json(data)
    except TypeError:
        raise ModelbitInputError(
            f"{call.where}: the input cannot be sent as JSON: {describe_unencodable(data)}; convert it to "
            "numbers, strings, lists or dicts.",
            deployment=call.deployment,
            version=call.version,
        ) from None


def _parse_link_document(raw: bytes, url: str, call: InferenceCall) -> Any:
    try:
        return unwrap_link_document(orjson.loads(raw))
    except orjson.JSONDecodeError:
        raise ModelbitIncompleteBatch(
            f"{call.where}: the results link {link_location(url)} did not hold a complete JSON document "
            f"({len(raw)} bytes).",
            deployment=call.deployment,
            version=call.version,
        ) from None


class _ModelbitHookBase(BaseHook):
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
    def retry_stats(self) -> dict[str, int]:
        """Retries made by this hook so far, by reason."""
        return self._retry_stats.as_dict()

    @property
    def concurrency(self) -> dict[str, Any] | None:
        """The concurrency limit of the latest batch: mode, final and highest level, ceiling, decreases."""
        return None if self._limiter is None else self._limiter.summary()

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

    def _retry_wait(self, schedule: RetrySchedule, failure: SendFailed, call: InferenceCall) -> float:
        """Return the wait before re-sending, or raise the failure's error when it must not be re-sent."""
        verdict = retry_verdict(failure.error, request_sent=failure.request_sent, idempotent=call.idempotent)
        wait = schedule.next_wait(failure.retry_after) if verdict else None
        if verdict is None or wait is None:
            if verdict is not None:
                self.log.warning("%s: giving up after %d attempts.", call.where, schedule.attempt)
            metrics.request_failed(call.deployment, None)
            failure.error.request_sent = failure.request_sent
            raise failure.error
        self._retry_stats.record(verdict.reason)
        metrics.request_failed(call.deployment, verdict.reason)
        if verdict.may_rescore:
            self.log.warning(
                "%s: re-sending after %s because the inference is declared idempotent; "
                "rows may be scored twice.",
                call.where,
                type(failure.error).__name__,
            )
        self.log.warning(
            "%s: attempt %d failed (%s); retrying in %.1f s.",
            call.where,
            schedule.attempt - 1,
            verdict.reason,
            wait,
        )
        return wait

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
    ) -> tuple[InferenceCall, bytes]:
        """Validate an async submission and build its body."""
        _validate_options(
            timeout_seconds, response_format, limit=ASYNC_TIMEOUT_LIMIT, call_name="async inference"
        )
        if not isinstance(webhook_url, str) or urlsplit(webhook_url).scheme not in ("http", "https"):
            raise ModelbitInputError(
                f"webhook_url must be an http(s) URL, got a {type(webhook_url).__name__}."
            )
        # A submission is never declared idempotent: re-sending it could start the model twice.
        call = self._new_call(
            settings, deployment, version, branch, timeout_seconds, False, limit=ASYNC_TIMEOUT_LIMIT
        )
        rows = _as_rows(data)
        encoded = encode_chunk(rows).data if rows is not None else _encode_single(data, call)
        body = request_body(
            encoded,
            timeout_seconds=call.timeout_seconds,
            response_format=response_format,
            response_webhook=webhook_url,
            response_webhook_ignore_timeout=webhook_ignore_timeout,
        )
        return call, body

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

    def _log_request(
        self,
        call: InferenceCall,
        rows: int | None,
        seconds: float,
        response_bytes: int,
        *,
        submitted: bool = False,
    ) -> None:
        """Log an answered request and count it; a submission's rows are scored later, not now."""
        scored = 0 if submitted else (1 if rows is None else rows)
        metrics.request_succeeded(call.deployment, scored, seconds)
        self.log.info(
            "Modelbit %s version %s: %s in %.3f s, %d bytes answered.",
            call.deployment,
            call.version,
            "async submission" if submitted else "single input" if rows is None else f"{rows} rows",
            seconds,
            response_bytes,
        )


# --- Sync hook ---------------------------------------------------------------------------------


class _AbortableAdapter(HTTPAdapter):
    """
    An adapter that can close, from another thread, the connections its requests are using.

    A request blocked on a model that takes minutes cannot be interrupted any other way: shutting
    its socket down wakes the thread at once, so a stopped task does not wait for the model.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._in_use: weakref.WeakSet[Any] = weakref.WeakSet()
        self._in_use_lock = threading.Lock()
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _tracked_pool(HTTPConnectionPool, self),
            "https": _tracked_pool(HTTPSConnectionPool, self),
        }

    def track(self, conn: Any, in_use: bool) -> None:
        with self._in_use_lock:
            if in_use:
                self._in_use.add(conn)
            else:
                self._in_use.discard(conn)

    def abort_in_use(self) -> int:
        """Shut down every connection a request is using now; return how many."""
        with self._in_use_lock:
            connections = list(self._in_use)
        for conn in connections:
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with suppress(Exception):
                conn.close()
        return len(connections)


def _tracked_pool(base: type[HTTPConnectionPool], adapter: _AbortableAdapter) -> type[HTTPConnectionPool]:
    class TrackedPool(base):  # type: ignore[valid-type,misc]
        def _get_conn(self, timeout: float | None = None) -> Any:
            conn = super()._get_conn(timeout)
            adapter.track(conn, True)
            return conn

        def _put_conn(self, conn: Any) -> None:
            if conn is not None:
                adapter.track(conn, False)
            super()._put_conn(conn)

    return TrackedPool


def _batch_stopped(call: InferenceCall) -> ModelbitError:
    return ModelbitError(
        f"{call.where}: the batch was stopped; this request was abandoned.",
        deployment=call.deployment,
        version=call.version,
    )


class ModelbitHook(_ModelbitHookBase):
    """
    Call models deployed on Modelbit: single, batch and async inference, links, connection test.

    Nothing is read or sent when the hook is created; the connection is resolved on first use.
    Requests go through one pooled ``requests`` session. Failures are retried only where the
    model cannot have run (connection failures before sending) or where the server asks (429,
    502, 503, honouring ``Retry-After``). Pass ``idempotent=True`` to a call to also re-send after a
    deployment error, a read timeout or a dropped connection — the model may then run twice for
    the same rows.

    :param modelbit_conn_id: id of the Modelbit connection.
    :param batch_size: most rows per request.
    :param batch_bytes: most bytes per request body; bigger chunks are split.
    :param max_concurrency: requests in flight at once for a batch.
    :param retry_policy: attempts and waits for retried requests.
    """

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel and hide connection form fields (the Airflow 3.1 UI reads this)."""
        return UI_FIELD_BEHAVIOUR

    @cached_property
    def settings(self) -> ModelbitSettings:
        """The connection's settings, read once; the key is masked in logs as soon as it is read."""
        return settings_from_connection(self._connection(), self.modelbit_conn_id)

    def _connection(self) -> Any:
        try:
            return self.get_connection(self.modelbit_conn_id)
        except Exception as error:
            # Matched by name: Airflow 3.1 and the Task SDK raise different AirflowNotFoundException classes.
            if type(error).__name__ != "AirflowNotFoundException":
                raise
            raise ModelbitConnectionError(_missing_connection_message(self.modelbit_conn_id)) from None

    def get_conn(self) -> requests.Session:
        """Return the pooled session that carries the API key (never used for links)."""
        return self._session

    @cached_property
    def _stopping(self) -> threading.Event:
        return threading.Event()

    @cached_property
    def _adapters(self) -> list[_AbortableAdapter]:
        return []

    def _abortable_adapter(self, **kwargs: Any) -> _AbortableAdapter:
        adapter = _AbortableAdapter(**kwargs)
        self._adapters.append(adapter)
        return adapter

    def stop(self) -> int:
        """
        Stop the batch under way: send nothing more and abandon the requests in flight.

        Safe to call from a signal handler or another thread (``on_kill``, ``execution_timeout``).

        :return: the number of connections closed.
        """
        self._stopping.set()
        return sum(adapter.abort_in_use() for adapter in list(self._adapters))

    def check_call(
        self,
        deployment: str,
        *,
        version: str | int = LATEST,
        branch: str | None = None,
        timeout_seconds: int | None = None,
        response_format: str | None = None,
        asynchronous: bool = False,
    ) -> None:
        """Validate a call's target and options without sending anything (the connection is read)."""
        limit = ASYNC_TIMEOUT_LIMIT if asynchronous else SYNC_TIMEOUT_LIMIT
        _validate_options(
            timeout_seconds,
            response_format,
            limit=limit,
            call_name="async inference" if asynchronous else "inference",
        )
        self._new_call(self.settings, deployment, version, branch, timeout_seconds, False, limit=limit)

    @cached_property
    def _session(self) -> requests.Session:
        session = requests.Session()
        adapter = self._abortable_adapter(pool_connections=4, pool_maxsize=max(10, 2 * self.max_concurrency))
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers["Content-Type"] = "application/json"
        if self.settings.api_key:
            session.headers["Authorization"] = self.settings.api_key
        return session

    @cached_property
    def _link_session(self) -> requests.Session:
        # Links are pre-signed object-store URLs: the Modelbit key must never be sent there.
        session = requests.Session()
        adapter = self._abortable_adapter(pool_maxsize=max(10, 2 * self.max_concurrency))
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def deployment_url(self, deployment: str, version: str | int = LATEST, branch: str | None = None) -> str:
        """
        Return the inference URL on this connection's workspace (the connection's branch when none given).

        :param deployment: deployment name.
        :param version: ``latest``, a version number or an alias.
        :param branch: git branch; ``None`` uses the connection's default branch.
        """
        return self._new_call(self.settings, deployment, version, branch, None, False).url

    def get_inference(
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

        A single input returns the model's value. Batch rows ``[[id, *args], ...]`` or a DataFrame
        (sent as ``[index, {column: value}]`` rows) return ``[[id, result], ...]`` in input order,
        matched by ID. With ``response_format="links"`` the link is downloaded and its value returned.

        :param deployment: deployment name.
        :param data: a single input, batch rows, or a pandas DataFrame.
        :param version: ``latest``, a version number or an alias.
        :param branch: git branch; ``None`` uses the connection's default branch.
        :param timeout_seconds: inference time limit (1-300); ``None`` uses the connection's.
        :param response_format: ``None``, or ``"links"`` for results delivered as a download link.
        :param idempotent: the model may safely run twice for the same input, so read timeouts,
            deployment errors and dropped connections are re-sent too.
        """
        _validate_options(timeout_seconds, response_format, limit=SYNC_TIMEOUT_LIMIT, call_name="inference")
        rows = _as_rows(data)
        if rows is None:
            call = self._new_call(self.settings, deployment, version, branch, timeout_seconds, idempotent)
            body = request_body(
                _encode_single(data, call),
                timeout_seconds=call.timeout_seconds,
                response_format=response_format,
            )
            value, _ = self._answer_value(call, body, None, response_format)
            return value
        unique_ids = _ids_must_be_unique(data)
        if unique_ids:
            refuse_duplicate_ids(rows)
        results = self.infer_chunks(
            deployment,
            rows_in_chunks(rows, self.batch_size),
            version=version,
            branch=branch,
            timeout_seconds=timeout_seconds,
            response_format=response_format,
            idempotent=idempotent,
            unique_ids=unique_ids,
        )
        return [row for result in results for row in result.rows]

    def infer_chunks(
        self,
        deployment: str,
        chunks: Iterable[Sequence[Sequence[Any]]],
        *,
        version: str | int = LATEST,
        branch: str | None = None,
        timeout_seconds: int | None = None,
        response_format: str | None = None,
        idempotent: bool = False,
        max_concurrency: int | None = None,
        adaptive_concurrency: bool | None = None,
        batch_bytes: int | None = None,
        unique_ids: bool = True,
    ) -> Generator[ChunkResult, None, None]:
        """
        Score chunks of batch rows with adaptive (or fixed) concurrency, yielding results in input order.

        The requests in flight start low and follow the deployment's answers up to
        ``max_concurrency`` (see :mod:`~airflow_provider_modelbit.hooks.concurrency`); the final
        level is in :attr:`concurrency`. Chunks are read lazily, at most ``max_concurrency`` ahead
        of the consumer, so memory stays flat however many there are. A chunk bigger than
        ``batch_bytes`` once encoded is split into several requests; its result is still one
        :class:`ChunkResult`.

        :param deployment: deployment name.
        :param chunks: iterable of lists of batch rows ``[id, *args]``, IDs unique.
        :param version: ``latest``, a version number or an alias.
        :param branch: git branch; ``None`` uses the connection's default branch.
        :param timeout_seconds: inference time limit (1-300); ``None`` uses the connection's.
        :param response_format: ``None``, or ``"links"`` (each chunk's link is downloaded and parsed).
        :param idempotent: re-send after errors where the model may already have run.
        :param max_concurrency: most requests in flight at once; ``None`` uses the hook's.
        :param adaptive_concurrency: adapt the requests in flight up to ``max_concurrency``;
            ``False`` keeps ``max_concurrency``; ``None`` uses the hook's.
        :param batch_bytes: most bytes per request body; ``None`` uses the hook's.
        :param unique_ids: refuse a chunk with a repeated ID; ``False`` matches repeated IDs (a
            DataFrame's non-unique index) in the order the answer lists them.
        """
        _validate_options(timeout_seconds, response_format, limit=SYNC_TIMEOUT_LIMIT, call_name="inference")
        ceiling = self.max_concurrency if max_concurrency is None else max_concurrency
        _validate_concurrency(ceiling)
        call = self._new_call(self.settings, deployment, version, branch, timeout_seconds, idempotent)
        self.get_conn()  # build the pooled session once, before worker threads share it
        chunk_bytes = batch_bytes or self.batch_bytes
        self._link_session  # noqa: B018 -- and the links session
        self._stopping.clear()
        adaptive = self.adaptive_concurrency if adaptive_concurrency is None else adaptive_concurrency
        limiter = ConcurrencyLimiter(ceiling, adaptive=adaptive, where=call.where, log=self.log)
        self._limiter = limiter
        return self._ordered_results(call, chunks, limiter, response_format, chunk_bytes, unique_ids)

    def _ordered_results(
        self,
        call: InferenceCall,
        chunks: Iterable[Sequence[Sequence[Any]]],
        limiter: ConcurrencyLimiter,
        response_format: str | None,
        batch_bytes: int,
        unique_ids: bool,
    ) -> Generator[ChunkResult, None, None]:
        in_flight: deque[Future[ChunkResult]] = deque()
        # One thread per possible request; the limiter decides how many of them send at once.
        pool = ThreadPoolExecutor(max_workers=limiter.ceiling, thread_name_prefix="modelbit")
        with long_lived_objects_frozen():
            try:
                for index, rows in enumerate(chunks):
                    if self._stopping.is_set():
                        raise _batch_stopped(call)
                    options = (response_format, batch_bytes, unique_ids, limiter)
                    in_flight.append(pool.submit(self._infer_chunk, call, index, rows, *options))
                    if len(in_flight) >= limiter.ceiling:
                        yield in_flight.popleft().result()
                while in_flight:
                    yield in_flight.popleft().result()
            finally:
                # Stopped or failed with requests in flight: abandon them rather than wait for the model.
                if any(not future.done() for future in in_flight):
                    self.stop()
                pool.shutdown(wait=not in_flight, cancel_futures=True)
                limiter.log_final()

    def _infer_chunk(
        self,
        call: InferenceCall,
        index: int,
        rows: Sequence[Sequence[Any]],
        response_format: str | None,
        batch_bytes: int,
        unique_ids: bool = True,
        limiter: ConcurrencyLimiter | None = None,
    ) -> ChunkResult:
        started = time.monotonic()
        results: list[list[Any]] = []
        response_bytes = 0
        for part in split_by_bytes(encode_chunk(rows, unique_ids=unique_ids), batch_bytes) if rows else []:
            body = request_body(
                part.data, timeout_seconds=call.timeout_seconds, response_format=response_format
            )
            answer, size = self._answer_value(call, body, len(part.ids), response_format, limiter)
            results.extend(reassemble(part, answer, deployment=call.deployment, version=call.version))
            response_bytes += size
        return ChunkResult(index, results, time.monotonic() - started, response_bytes)

    def _answer_value(
        self,
        call: InferenceCall,
        body: bytes,
        rows: int | None,
        response_format: str | None,
        limiter: ConcurrencyLimiter | None = None,
    ) -> tuple[Any, int]:
        """Send an inference; return the value (links downloaded) and the bytes received."""
        read_timeout = call.http_read_timeout()
        payload, _, size = self._send(call, body, rows, read_timeout=read_timeout, limiter=limiter)
        value = data_of(payload, call)
        if response_format != LINKS:
            return value, size
        raw = self._download(str(value), call)
        return _parse_link_document(raw, str(value), call), size + len(raw)

    def _download(self, url: str, call: InferenceCall) -> bytes:
        return self.read_link(url, b"".join)

    def read_link(self, url: str, consume: Callable[[Iterator[bytes]], _T]) -> _T:
        """
        Hand a results link's body to ``consume``, fetching it again if the download breaks.

        A download cut short, broken off or unreachable is fetched again (up to
        :data:`LINK_FETCH_ATTEMPTS` times, with backoff) while the link is valid: the results are
        already computed, so only an expired link (403) makes a caller run the model again.
        ``consume`` is called afresh on every fetch, so it must start its output over.

        :param url: the pre-signed link from a links answer or a webhook delivery.
        :param consume: reads the body pieces and returns what the caller needs.
        :raises ModelbitLinkExpired: the link answered 403.
        :raises ModelbitIncompleteBatch: every fetch was cut short.
        """
        for attempt in range(1, LINK_FETCH_ATTEMPTS + 1):
            try:
                with self.open_link(url) as pieces:
                    return consume(pieces)
            except (ModelbitIncompleteBatch, ModelbitTransportError) as error:
                if not _link_fetch_may_repeat(error) or attempt == LINK_FETCH_ATTEMPTS:
                    raise
                wait = LINK_FETCH_BACKOFF * 2 ** (attempt - 1) * (1 + random.random() / 2)
                self.log.warning(
                    "Results link %s: fetch %d failed (%s); fetching it again in %.1f s.",
                    link_location(url),
                    attempt,
                    error.message,
                    wait,
                )
                if self._stopping.wait(wait):
                    raise
        raise AssertionError("unreachable")

    def _send(
        self,
        call: InferenceCall,
        body: bytes,
        rows: int | None,
        *,
        read_timeout: float,
        submitted: bool = False,
        limiter: ConcurrencyLimiter | None = None,
    ) -> tuple[dict[str, Any], Mapping[str, str], int]:
        """
        POST a body, re-sending where the retry rules allow; return the answer, its headers and size.

        With a ``limiter``, each attempt holds one of its slots and reports its outcome to it; the
        waits between attempts hold none.
        """
        schedule = RetrySchedule(self.retry_policy)
        while True:
            if self._stopping.is_set():
                raise _batch_stopped(call)
            started = time.monotonic()
            try:
                payload, headers, size = self._send_limited(call, body, read_timeout, limiter)
            except SendFailed as failure:
                if self._stopping.is_set():
                    raise _batch_stopped(call) from None
                self._stopping.wait(self._retry_wait(schedule, failure, call))
                continue
            self._log_request(call, rows, time.monotonic() - started, size, submitted=submitted)
            return payload, headers, size

    def _send_limited(
        self, call: InferenceCall, body: bytes, read_timeout: float, limiter: ConcurrencyLimiter | None
    ) -> tuple[dict[str, Any], Mapping[str, str], int]:
        """Send once, holding a slot of ``limiter`` (when given) and telling it how the request went."""
        if limiter is None:
            return self._send_once(call, body, read_timeout)
        try:
            slot = limiter.acquire(self._stopping)
        except InterruptedError:
            raise _batch_stopped(call) from None
        try:
            answer = self._send_once(call, body, read_timeout)
        except SendFailed as failure:
            limiter.record(slot, load_outcome(failure.error), retry_after=failure.retry_after)
            raise
        else:
            limiter.record(slot, Outcome.ANSWERED)
        finally:
            limiter.release()
        return answer

    def _send_once(
        self, call: InferenceCall, body: bytes, read_timeout: float
    ) -> tuple[dict[str, Any], Mapping[str, str], int]:
        try:
            response = self._session.post(call.url, data=body, timeout=(CONNECT_TIMEOUT, read_timeout))
            content = response.content
        except requests.RequestException as exc:
            raise requests_failure(exc, call) from None
        try:
            payload = parse_answer(
                response.status_code,
                response.headers,
                content,
                deployment=call.deployment,
                version=call.version,
                branch=call.branch,
                conn_id=call.conn_id,
            )
        except ModelbitError as error:
            raise answer_failure(error, response.headers) from None
        return payload, response.headers, len(content)

    def request_link(
        self,
        deployment: str,
        data: Any,
        *,
        version: str | int = LATEST,
        branch: str | None = None,
        timeout_seconds: int | None = None,
        idempotent: bool = False,
    ) -> str:
        """
        Run an inference in links mode and return the results link, without downloading it.

        For callers that stream the document elsewhere (e.g. to Parquet) through :meth:`open_link`.
        Batch rows go in one request, so their IDs must be checked against the document by the caller.

        :param deployment: deployment name.
        :param data: a single input, batch rows, or a pandas DataFrame.
        :param version: ``latest``, a version number or an alias.
        :param branch: git branch; ``None`` uses the connection's default branch.
        :param timeout_seconds: inference time limit (1-300); ``None`` uses the connection's.
        :param idempotent: re-send after errors where the model may already have run.
        """
        _validate_options(timeout_seconds, LINKS, limit=SYNC_TIMEOUT_LIMIT, call_name="inference")
        call = self._new_call(self.settings, deployment, version, branch, timeout_seconds, idempotent)
        rows = _as_rows(data)
        encoded = encode_chunk(rows).data if rows is not None else _encode_single(data, call)
        body = request_body(encoded, timeout_seconds=call.timeout_seconds, response_format=LINKS)
        payload, _, _ = self._send(
            call, body, None if rows is None else len(rows), read_timeout=call.http_read_timeout()
        )
        return str(data_of(payload, call))

    def submit_async(
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
        Submit an inference to run asynchronously; Modelbit posts the answer to ``webhook_url``.

        A submission is never re-sent after it may have reached the server, so it cannot start twice.

        :param deployment: deployment name.
        :param data: a single input, batch rows, or a pandas DataFrame.
        :param webhook_url: the https URL Modelbit delivers the answer to.
        :param version: ``latest``, a version number or an alias.
        :param branch: git branch; ``None`` uses the connection's default branch.
        :param timeout_seconds: inference time limit (1-900); ``None`` uses the connection's.
        :param response_format: ``None``, or ``"links"`` for a delivery carrying a download link.
        :param webhook_ignore_timeout: count a webhook attempt that times out as delivered.
        :return: the batchId of the submission; ``None`` (logged) when the answer names none, as
            Modelbit documents no shape for it. The submission was accepted either way.
        """
        call, body = self._submission(
            self.settings,
            deployment,
            data,
            webhook_url,
            version,
            branch,
            timeout_seconds,
            response_format,
            webhook_ignore_timeout,
        )
        payload, headers, _ = self._send(call, body, None, read_timeout=SUBMIT_READ_TIMEOUT, submitted=True)
        return self._accepted_batch_id(payload, headers, call)

    @contextmanager
    def open_link(self, url: str) -> Iterator[Iterator[bytes]]:
        """
        Stream a results link without the Modelbit ``Authorization`` header.

        :param url: the pre-signed link from a links answer.
        :raises ModelbitLinkExpired: the link answered 403 (expired or bad signature).
        :raises ModelbitIncompleteBatch: the body was cut short or the stream broke.
        """
        try:
            response = self._link_session.get(url, stream=True, timeout=(CONNECT_TIMEOUT, LINK_READ_TIMEOUT))
        except requests.RequestException as exc:
            raise link_unreachable(url, exc) from None
        try:
            check_link_status(response.status_code, link_location(url))
            yield _link_pieces(response, url)
        finally:
            response.close()

    def test_connection(self) -> tuple[bool, str]:
        """
        Check the workspace URL and key with one tiny request to a deployment that cannot exist.

        404 means URL and key are fine, 401/403 that the key was refused. Never raises.
        """
        try:
            settings = self.settings
            url = deployment_url(settings.base_url, CONNECTION_TEST_DEPLOYMENT)
            response = self._session.post(url, data=b'{"data":null}', timeout=(CONNECT_TIMEOUT, 30))
            return connection_test_verdict(response.status_code, response.headers, response.content, settings)
        except ModelbitError as error:
            return False, error.message
        except requests.RequestException as exc:
            return False, unreachable_message(self.settings.base_url, exc)
        except Exception as exc:
            return False, f"Connection test failed: {type(exc).__name__}."


def _missing_connection_message(conn_id: str) -> str:
    env_name = "AIRFLOW_CONN_" + conn_id.upper()
    return (
        f"Connection {conn_id!r} is not defined: create a Modelbit connection with that id in "
        f"Admin > Connections, or set {env_name}, e.g. "
        f"{env_name}='modelbit://:YOUR_KEY@acme.us-east-2.aws.modelbit.com'."
    )


def _link_fetch_may_repeat(error: ModelbitError) -> bool:
    """A broken download, an unreachable store or a 5xx can be fetched again; a 4xx cannot."""
    return error.status is None or error.status >= 500


def _link_pieces(response: requests.Response, url: str) -> Iterator[bytes]:
    """Yield the link's body in pieces, checking it arrived whole."""
    expected = expected_length(response.headers)
    received = 0
    try:
        for piece in response.iter_content(LINK_PIECE_BYTES):
            received += len(piece)
            yield piece
    except (requests.RequestException, OSError) as exc:
        raise incomplete_link(url, received, expected, type(exc).__name__) from None
    if expected is not None and received < expected:
        raise incomplete_link(url, received, expected, "body cut short")


# --- Async hook --------------------------------------------------------------------------------


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


class ModelbitAsyncHook(_ModelbitHookBase):
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

    def __init__(self, modelbit_conn_id: str = _ModelbitHookBase.default_conn_name, **kwargs: Any) -> None:
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
                raise ModelbitConnectionError(_missing_connection_message(self.modelbit_conn_id)) from None
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
        _validate_options(timeout_seconds, response_format, limit=SYNC_TIMEOUT_LIMIT, call_name="inference")
        settings = await self.aget_settings()
        call = self._new_call(settings, deployment, version, branch, timeout_seconds, idempotent)
        rows = _as_rows(data)
        async with self._client(settings) as client:
            if rows is None:
                body = request_body(
                    _encode_single(data, call),
                    timeout_seconds=call.timeout_seconds,
                    response_format=response_format,
                )
                value, _ = await self._aanswer_value(client, call, body, None, response_format)
                return value
            unique_ids = _ids_must_be_unique(data)
            if unique_ids:
                refuse_duplicate_ids(rows)
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
                body = request_body(
                    part.data,
                    timeout_seconds=call.timeout_seconds,
                    response_format=response_format,
                )
                answer, _ = await self._aanswer_value(client, call, body, len(part.ids), response_format)
            return reassemble(part, answer, deployment=call.deployment, version=call.version)

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
        return _parse_link_document(raw, str(value), call), size + len(raw)

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
                payload = parse_answer(
                    response.status_code,
                    response.headers,
                    response.content,
                    deployment=call.deployment,
                    version=call.version,
                    branch=call.branch,
                    conn_id=call.conn_id,
                )
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
