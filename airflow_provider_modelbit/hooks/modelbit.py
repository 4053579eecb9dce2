"""The Modelbit protocol on a worker: :class:`ModelbitHook` (requests, a pooled session).

Single, batch and async-submission requests, results links and the connection test. Answers are
read through :func:`~airflow_provider_modelbit.hooks.responses.parse_answer` and re-sent through
:mod:`~airflow_provider_modelbit.hooks.retries`, as in the async variant
(:mod:`~airflow_provider_modelbit.hooks.modelbit_async`), so an answer means the same thing
wherever it is read — a webhook delivery included.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import cached_property
from typing import Any, TypeVar

import requests

from airflow_provider_modelbit.defaults import (
    ASYNC_TIMEOUT_LIMIT,
    LATEST,
    LINKS,
    SYNC_TIMEOUT_LIMIT,
)
from airflow_provider_modelbit.exceptions import (
    ModelbitConnectionError,
    ModelbitError,
    ModelbitIncompleteBatch,
    ModelbitTransportError,
)
from airflow_provider_modelbit.get_provider_info import UI_FIELD_BEHAVIOUR
from airflow_provider_modelbit.hooks.abortable import AbortableAdapter
from airflow_provider_modelbit.hooks.base import (
    CONNECT_TIMEOUT,
    LINK_PIECE_BYTES,
    LINK_READ_TIMEOUT,
    SUBMIT_READ_TIMEOUT,
    Answer,
    ModelbitHookBase,
    call_body,
    encode_input,
    link_value,
    missing_connection_message,
    read_answer,
    request_headers,
    validate_concurrency,
    validate_options,
)
from airflow_provider_modelbit.hooks.batching import (
    ChunkResult,
    collection_for_batch,
    encode_chunk,
    reassemble,
    rows_in_chunks,
    split_by_bytes,
)
from airflow_provider_modelbit.hooks.concurrency import ConcurrencyLimiter, Outcome, load_outcome
from airflow_provider_modelbit.hooks.responses import (
    InferenceCall,
    LinkBody,
    SendFailed,
    check_link_status,
    connection_test_verdict,
    data_of,
    link_location,
    link_unreachable,
    parse_answer,
    requests_failure,
    unreachable_message,
)
from airflow_provider_modelbit.hooks.retries import RetryPolicy
from airflow_provider_modelbit.hooks.settings import (
    ModelbitSettings,
    settings_from_connection,
)
from airflow_provider_modelbit.hooks.urls import deployment_url

__all__ = [
    "ChunkResult",
    "ModelbitHook",
    "ModelbitSettings",
    "RetryPolicy",
    "deployment_url",
    "link_location",
    "parse_answer",
]

CONNECTION_TEST_DEPLOYMENT = "__modelbit_connection_test__"
#: Fetches of one results link before a cut-short or unreachable download fails the chunk.
LINK_FETCH_ATTEMPTS = 4
LINK_FETCH_BACKOFF = 0.5
#: Bytes read at a time from an inference answer.
ANSWER_PIECE_BYTES = 1 << 20

_T = TypeVar("_T")


def _batch_stopped(call: InferenceCall) -> ModelbitError:
    return ModelbitError(
        f"{call.where}: the batch was stopped; this request was abandoned.",
        deployment=call.deployment,
        version=call.version,
    )


class ModelbitHook(ModelbitHookBase):
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
            raise ModelbitConnectionError(missing_connection_message(self.modelbit_conn_id)) from None

    def get_conn(self) -> requests.Session:
        """Return the pooled session that carries the API key (never used for links)."""
        return self._session

    @cached_property
    def _stopping(self) -> threading.Event:
        return threading.Event()

    @cached_property
    def _adapters(self) -> list[AbortableAdapter]:
        return []

    def _abortable_adapter(self, **kwargs: Any) -> AbortableAdapter:
        adapter = AbortableAdapter(**kwargs)
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
        validate_options(
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
        session.headers.update(request_headers(self.settings))
        read_environment_once(session, self.settings.base_url)
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
        return self.call_target(deployment, version, branch).url

    def call_target(
        self, deployment: str, version: str | int = LATEST, branch: str | None = None
    ) -> InferenceCall:
        """
        Return what a call to ``deployment`` goes to, as every message names it (the branch resolved).

        For a caller that reads an answer the hook did not fetch itself (a webhook delivery, a
        results link, a result bound for XCom) and must name the call in its errors.

        :param branch: git branch; ``None`` uses the connection's default branch.
        """
        return self._new_call(self.settings, deployment, version, branch, None, False)

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
        validate_options(timeout_seconds, response_format, limit=SYNC_TIMEOUT_LIMIT, call_name="inference")
        prepared = self._prepare_inference(
            self.settings, deployment, data, version, branch, timeout_seconds, response_format, idempotent
        )
        if prepared.rows is None:
            value, _ = self._answer_value(prepared.call, prepared.body, None, response_format)
            return value
        results = self.infer_chunks(
            deployment,
            rows_in_chunks(prepared.rows, self.batch_size),
            version=version,
            branch=branch,
            timeout_seconds=timeout_seconds,
            response_format=response_format,
            idempotent=idempotent,
            unique_ids=prepared.unique_ids,
        )
        rows: list[list[Any]] = []
        for result in results:
            rows.extend(result.rows)
        return rows

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
        validate_options(timeout_seconds, response_format, limit=SYNC_TIMEOUT_LIMIT, call_name="inference")
        ceiling = self.max_concurrency if max_concurrency is None else max_concurrency
        validate_concurrency(ceiling)
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
        with collection_for_batch():
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
            body = call_body(part.data, call, response_format)
            answer, size = self._answer_value(
                call, body, len(part.ids), response_format, limiter, order=index
            )
            results.extend(reassemble(part, answer, call=call))
            response_bytes += size
        return ChunkResult(index, results, time.monotonic() - started, response_bytes)

    def _answer_value(
        self,
        call: InferenceCall,
        body: bytes,
        rows: int | None,
        response_format: str | None,
        limiter: ConcurrencyLimiter | None = None,
        *,
        order: int = 0,
    ) -> tuple[Any, int]:
        """Send an inference; return the value (links downloaded) and the bytes received."""
        timeout = call.http_read_timeout()
        payload, _, size = self._send(call, body, rows, read_timeout=timeout, limiter=limiter, order=order)
        value = data_of(payload, call)
        if response_format != LINKS:
            return value, size
        raw = self.read_link(str(value), b"".join)
        return link_value(raw, str(value), call), size + len(raw)

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
        order: int = 0,
    ) -> Answer:
        """
        POST a body, re-sending where the retry rules allow; return the answer, its headers and size.

        With a ``limiter``, each attempt holds one of its slots and reports its outcome to it; the
        waits between attempts hold none, and a re-sent body waits for a slot in its ``order`` (its
        chunk's place in the batch), ahead of the chunks after it. A stop (:meth:`stop`) ends the
        waits at once.
        """
        tries = self._tries(call, rows, submitted=submitted)
        while True:
            if self._stopping.is_set():
                raise _batch_stopped(call)
            try:
                return tries.answered(
                    self._send_limited(call, body, read_timeout, limiter, order, tries.start)
                )
            except SendFailed as failure:
                if self._stopping.is_set():
                    raise _batch_stopped(call) from None
                self._stopping.wait(tries.wait_after(failure))

    def _send_limited(
        self,
        call: InferenceCall,
        body: bytes,
        read_timeout: float,
        limiter: ConcurrencyLimiter | None,
        order: int,
        started: Callable[[], None],
    ) -> Answer:
        """
        Send once, holding a slot of ``limiter`` (when given) and telling it how the request went;
        ``started`` is called as the request starts, once it holds its slot.
        """
        if limiter is None:
            started()
            return self._send_once(call, body, read_timeout)
        try:
            slot = limiter.acquire(self._stopping, order=order)
        except InterruptedError:
            raise _batch_stopped(call) from None
        started()
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

    def _send_once(self, call: InferenceCall, body: bytes, read_timeout: float) -> Answer:
        try:
            timeout = (CONNECT_TIMEOUT, read_timeout)
            with self._session.post(call.url, data=body, timeout=timeout, stream=True) as response:
                # ``response.content`` reads in 10 KB pieces, each through urllib3's and requests'
                # Python layers: about a millisecond of CPU per 500 KB answer. Larger pieces read
                # the same bytes, with the same errors (requests wraps them as it does for content).
                content = b"".join(response.iter_content(ANSWER_PIECE_BYTES))
        except requests.RequestException as exc:
            raise requests_failure(exc, call) from None
        return read_answer(call, response.status_code, response.headers, content)

    def request_link(
        self,
        deployment: str,
        data: Any,
        *,
        version: str | int = LATEST,
        branch: str | None = None,
        timeout_seconds: int | None = None,
        idempotent: bool = False,
        unique_ids: bool = True,
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
        :param unique_ids: refuse batch rows with a repeated ID; ``False`` for rows of a DataFrame,
            whose index may repeat (a DataFrame ``data`` is always allowed to).
        """
        validate_options(timeout_seconds, LINKS, limit=SYNC_TIMEOUT_LIMIT, call_name="inference")
        call = self._new_call(self.settings, deployment, version, branch, timeout_seconds, idempotent)
        encoded, rows = encode_input(data, call, unique_ids=unique_ids)
        body = call_body(encoded, call, LINKS)
        payload, _, _ = self._send(call, body, rows, read_timeout=call.http_read_timeout())
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
        unique_ids: bool = True,
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
        :param unique_ids: as for :meth:`request_link`.
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
            unique_ids,
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


def read_environment_once(session: requests.Session, url: str) -> None:
    """
    Settle what ``session`` takes from the environment for requests to ``url``'s host, once.

    By default requests reads the proxies (``HTTPS_PROXY``, ``NO_PROXY``...), the CA bundle
    (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) and ``.netrc`` credentials on every request, a
    scan of ``os.environ`` each time that cost about 5% of a large batch's CPU. Every request of
    the workspace session goes to the workspace's host, so the answer is the same for all of them:
    it is taken when the session is built and the per-request look-up is turned off. Proxies set
    in the environment are still used; a change to the environment after that is not seen.
    """
    environment = session.merge_environment_settings(url, {}, None, None, None)
    session.proxies = environment["proxies"]
    session.verify = environment["verify"]
    session.auth = session.auth or requests.utils.get_netrc_auth(url)
    session.trust_env = False


def _link_fetch_may_repeat(error: ModelbitError) -> bool:
    """A broken download, an unreachable store or a 5xx can be fetched again; a 4xx cannot."""
    return error.status is None or error.status >= 500


def _link_pieces(response: requests.Response, url: str) -> Iterator[bytes]:
    """Yield the link's body in pieces, checking it arrived whole."""
    body = LinkBody(url, response.headers)
    try:
        for piece in response.iter_content(LINK_PIECE_BYTES):
            yield body.count(piece)
    except (requests.RequestException, OSError) as exc:
        raise body.broken(exc) from None
    body.check_whole()


def __getattr__(name: str) -> Any:
    # ModelbitAsyncHook lives in hooks/modelbit_async.py; its former import path keeps working
    # without importing httpx for the tasks that never use it.
    if name == "ModelbitAsyncHook":
        from airflow_provider_modelbit.hooks.modelbit_async import ModelbitAsyncHook

        return ModelbitAsyncHook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
