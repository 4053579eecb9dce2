"""Async-callback execution shared by the Modelbit operators: submit with webhooks, defer, assemble.

The operator submits each chunk once on the worker as an async request whose webhook URL is
signed for this job and chunk, records the batch IDs in a job manifest in the callback store,
and defers to :class:`ModelbitCallbackTrigger`. When the deliveries are in, it resumes on a
worker, reads them in chunk order and hands them to the operator's own ``_write_results``, so the
output is the same as on the synchronous path.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from airflow_provider_modelbit.callbacks.signing import callback_url, check_secret
from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.exceptions import (
    ModelbitCallbackError,
    ModelbitConnectionError,
    ModelbitDeploymentError,
)
from airflow_provider_modelbit.triggers.callback import TRIGGER_EVENT_STATUSES, ModelbitCallbackTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_modelbit.hooks.batching import ChunkResult
    from airflow_provider_modelbit.hooks.modelbit import ModelbitHook

XCOM_BATCH_IDS_KEY = "modelbit_batch_ids"
DEFAULT_ASYNC_TIMEOUT_SECONDS = 300
#: Time past the inference limit for the webhook to arrive (Modelbit retries deliveries for ~31 s).
DELIVERY_MARGIN_SECONDS = 120
#: Signed URLs stay valid this long past the deadline, so Modelbit's retries of a slow delivery land.
TOKEN_GRACE_SECONDS = 3600
#: The framework's own deferral timeout fires only if the trigger's clean timeout event did not.
DEFER_BACKSTOP_SECONDS = 300


def callback_job_id(dag_id: str, task_id: str, run_id: str, map_index: int | None) -> str:
    """Return the job id of a task instance; the same on every try, so a retry finds the manifest."""
    identity = f"{dag_id}\n{task_id}\n{run_id}\n{-1 if map_index is None else map_index}"
    return "mb-" + hashlib.sha256(identity.encode()).hexdigest()[:40]


def validate_callback_event(event: dict[str, Any] | None) -> dict[str, Any]:
    """Return the trigger event, or raise :class:`ModelbitCallbackError` when it is missing or unknown."""
    if not isinstance(event, dict) or event.get("status") not in TRIGGER_EVENT_STATUSES:
        raise ModelbitCallbackError(
            f"The callback trigger returned an unexpected event {event!r}; expected a status among "
            f"{sorted(TRIGGER_EVENT_STATUSES)}. Clear the task to run it again."
        )
    for key in ("job_id", "store_location", "chunks"):
        if key not in event:
            raise ModelbitCallbackError(f"The callback trigger event lacks {key!r}: {event!r}.")
    return event


class ModelbitDeferrableMixin:
    """
    Add the async-callback path to a Modelbit operator.

    The operator provides ``hook`` (a ``ModelbitHook``), ``deployment``, ``version``, ``branch``,
    ``timeout_seconds``, ``response_format``, ``modelbit_conn_id``, ``_iter_chunks()`` (the
    ``data`` of each request, in order) and ``_write_results(context, chunk_results)``, and
    calls :meth:`execute_deferrable` from ``execute`` when ``deferrable`` is set.

    The Modelbit connection must carry ``callback_base_url`` (the public https URL of the
    receiver, ending in ``/modelbit`` when it is mounted in the api-server) and
    ``callback_secret``. Chunks delivered as errors are resubmitted up to
    ``max_chunk_attempts`` times before the task fails with the deployment's message. A task
    retry reuses the deliveries that already arrived and resubmits only the missing chunks.
    """

    max_chunk_attempts: int = 3
    callback_poll_interval: float = 5.0
    callback_store_location: str | None = None
    callback_delivery_margin: float = DELIVERY_MARGIN_SECONDS

    if TYPE_CHECKING:
        hook: ModelbitHook
        deployment: str
        version: str | int
        branch: str | None
        timeout_seconds: int | None
        response_format: str | None
        modelbit_conn_id: str
        log: Any

        def _iter_chunks(self) -> Iterator[Any]: ...
        def _write_results(self, context: Context, chunk_results: Iterator[ChunkResult]) -> Any: ...
        def defer(
            self, *, trigger: Any, method_name: str, kwargs: Any = None, timeout: Any = None
        ) -> Any: ...

    # ------------------------------------------------------------------ submission

    def execute_deferrable(self, context: Context) -> Any:
        """Submit what is not delivered yet, then defer; return at once when nothing needs waiting for."""
        store = CallbackStore(self.callback_store_location)
        job_id = self._callback_job_id(context)
        manifest = self._reusable_manifest(store, job_id)
        payloads = list(self._iter_chunks())
        if not payloads:
            return self._write_results(context, iter([]))
        manifest.setdefault("chunks", len(payloads))
        manifest.setdefault("single", len(payloads) == 1 and not _is_batch(payloads[0]))
        to_submit = self._chunks_to_submit(store, job_id, manifest, len(payloads))
        deadline = self._submit_chunks(store, job_id, manifest, {n: payloads[n] for n in to_submit})
        self._push_batch_ids(context, manifest)
        return self._defer_until(store, job_id, manifest, deadline)

    def _callback_job_id(self, context: Context) -> str:
        ti = context["ti"]
        return callback_job_id(ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1))

    def _reusable_manifest(self, store: CallbackStore, job_id: str) -> dict[str, Any]:
        manifest = store.read_manifest(job_id)
        if manifest is None:
            return self._new_manifest(job_id)
        self.log.info(
            "Reusing callback job %s from an earlier try: %d of %d chunk(s) already delivered.",
            job_id, len(store.delivered_chunks(job_id)), manifest.get("chunks", 0),
        )  # fmt: skip
        manifest["attempts"] = {}  # a new task try gives errored chunks fresh attempts
        return manifest

    def _new_manifest(self, job_id: str) -> dict[str, Any]:
        return {
            "job_id": job_id,
            "conn_id": self.modelbit_conn_id,
            "deployment": self.deployment,
            "version": self.version,
            "branch": self.branch,
            "response_format": self.response_format,
            "batch_ids": {},
            "attempts": {},
            "deadline": 0.0,
        }

    def _chunks_to_submit(
        self, store: CallbackStore, job_id: str, manifest: dict[str, Any], count: int
    ) -> list[int]:
        """Chunks with no usable delivery: never submitted, errored, or overdue from an earlier try."""
        delivered = store.delivered_chunks(job_id)
        overdue = time.time() >= manifest.get("deadline", 0.0)
        chunks = []
        for chunk in range(count):
            if chunk in delivered and store.delivery_kind(job_id, chunk) != "error":
                continue
            if chunk in delivered:
                store.remove_chunk(job_id, chunk)
            elif str(chunk) in manifest["batch_ids"] and not overdue:
                continue
            chunks.append(chunk)
        return chunks

    def _submit_chunks(
        self, store: CallbackStore, job_id: str, manifest: dict[str, Any], payloads: dict[int, Any]
    ) -> float:
        """Submit each chunk once as an async request; return the deadline of the whole job."""
        if not payloads:
            return float(manifest["deadline"])
        settings = self.hook.settings
        base_url = self._callback_base_url(settings)
        secret = check_secret(settings.callback_secret, self.modelbit_conn_id)
        timeout = self.timeout_seconds or settings.timeout_seconds or DEFAULT_ASYNC_TIMEOUT_SECONDS
        deadline = time.time() + timeout + self.callback_delivery_margin
        manifest["deadline"] = max(float(manifest["deadline"]), deadline)
        manifest["submitted_at"] = time.time()
        store.write_manifest(job_id, manifest)  # before submitting: the receiver only keeps awaited jobs
        expires_at = int(manifest["deadline"] + TOKEN_GRACE_SECONDS)
        for chunk, payload in payloads.items():
            url = callback_url(base_url, self.modelbit_conn_id, job_id, chunk, secret, expires_at)
            manifest["batch_ids"][str(chunk)] = self.hook.submit_async(
                self.deployment,
                payload,
                webhook_url=url,
                version=self.version,
                branch=self.branch,
                timeout_seconds=timeout,
                response_format=self.response_format,
            )
            manifest["attempts"][str(chunk)] = manifest["attempts"].get(str(chunk), 0) + 1
            store.write_manifest(job_id, manifest)
        self.log.info(
            "Submitted %d chunk(s) of %s asynchronously as callback job %s.",
            len(payloads),
            self.deployment,
            job_id,
        )
        return float(manifest["deadline"])

    def _callback_base_url(self, settings: Any) -> str:
        if not settings.callback_base_url:
            raise ModelbitConnectionError(
                f"Connection {self.modelbit_conn_id!r} has no 'callback_base_url': set it to the public "
                "https URL of the callback receiver (e.g. https://airflow.example.com/modelbit), or run "
                "the task with deferrable=False."
            )
        return str(settings.callback_base_url)

    def _push_batch_ids(self, context: Context, manifest: dict[str, Any]) -> None:
        batch_ids = [manifest["batch_ids"].get(str(n)) for n in range(manifest["chunks"])]
        context["ti"].xcom_push(key=XCOM_BATCH_IDS_KEY, value=batch_ids)

    def _defer_until(
        self, store: CallbackStore, job_id: str, manifest: dict[str, Any], deadline: float
    ) -> Any:
        trigger = ModelbitCallbackTrigger(
            job_id=job_id,
            chunks=range(manifest["chunks"]),
            store_location=store.location,
            deadline=deadline,
            poll_interval=self.callback_poll_interval,
            conn_id=self.modelbit_conn_id,
        )
        backstop = timedelta(seconds=max(deadline - time.time(), 0) + DEFER_BACKSTOP_SECONDS)
        self.defer(trigger=trigger, method_name="execute_complete", timeout=backstop)

    # ------------------------------------------------------------------ resumption

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger: assemble the deliveries, resubmit errored chunks, or fail clearly."""
        event = validate_callback_event(event)
        store = CallbackStore(event["store_location"])
        job_id = event["job_id"]
        manifest = store.read_manifest(job_id)
        if manifest is None:
            raise ModelbitCallbackError(f"Callback job {job_id} has no manifest in {store.location}.")
        if event["status"] == "timeout":
            self._fail_on_timeout(context, store, job_id, event)
        if event["status"] == "error":
            return self._resubmit_errors(context, store, job_id, manifest, event["errors"])
        result = self._write_results(context, self._delivered_results(store, job_id, manifest))
        store.remove_job(job_id)
        return result

    def _fail_on_timeout(
        self, context: Context, store: CallbackStore, job_id: str, event: dict[str, Any]
    ) -> NoReturn:
        ti = context["ti"]
        last_try = getattr(ti, "try_number", 1) > getattr(ti, "max_tries", 0)
        if last_try:
            store.remove_job(job_id)  # nobody will read them; later deliveries are acknowledged and dropped
        advice = "" if last_try else " A retry reuses the deliveries that arrived and resubmits the rest."
        raise ModelbitCallbackError(
            f"Deployment {self.deployment!r} (version {self.version}): {event.get('message', 'timed out')}"
            f" Check the callback receiver is reachable at the connection's callback_base_url.{advice}",
            deployment=self.deployment,
            version=self.version,
        )

    def _resubmit_errors(
        self, context: Context, store: CallbackStore, job_id: str, manifest: dict[str, Any], errors: list[int]
    ) -> Any:
        exhausted = [c for c in errors if manifest["attempts"].get(str(c), 1) >= self.max_chunk_attempts]
        if exhausted:
            error = self._deployment_error(store, job_id, exhausted[0], manifest)
            store.remove_job(job_id)
            raise error
        self.log.warning("Chunk(s) %s of job %s were delivered as errors; resubmitting them.", errors, job_id)
        for chunk in errors:
            store.remove_chunk(job_id, chunk)
        payloads = dict(enumerate(self._iter_chunks()))
        deadline = self._submit_chunks(store, job_id, manifest, {c: payloads[c] for c in errors})
        self._push_batch_ids(context, manifest)
        return self._defer_until(store, job_id, manifest, deadline)

    def _deployment_error(
        self, store: CallbackStore, job_id: str, chunk: int, manifest: dict[str, Any]
    ) -> ModelbitDeploymentError:
        with store.open_delivery(job_id, chunk) as body:
            text = str(orjson.loads(body.read()).get("error", ""))
        last_line = text.strip().splitlines()[-1] if text.strip() else "no error text"
        attempts = manifest["attempts"].get(str(chunk), 1)
        return ModelbitDeploymentError(
            f"Deployment {self.deployment!r} (version {self.version}) failed on chunk {chunk} of job "
            f"{job_id} after {attempts} attempt(s): {last_line}",
            traceback=text,
            deployment=self.deployment,
            version=self.version,
        )

    def _delivered_results(
        self, store: CallbackStore, job_id: str, manifest: dict[str, Any]
    ) -> Iterator[ChunkResult]:
        """Yield a ChunkResult per delivery, in chunk order, matched to the input by row ID."""
        from airflow_provider_modelbit.hooks.batching import ChunkResult

        for chunk, payload in enumerate(self._iter_chunks()):
            meta = store.delivery_meta(job_id, chunk)
            value = self._delivered_value(store, job_id, chunk, meta["kind"], manifest)
            rows = [[0, value]] if manifest.get("single") else self._matched_rows(payload, value)
            seconds = max(0.0, meta["received_at"] - float(manifest.get("submitted_at", meta["received_at"])))
            yield ChunkResult(index=chunk, rows=rows, seconds=seconds, response_bytes=meta["size"])

    def _delivered_value(
        self, store: CallbackStore, job_id: str, chunk: int, kind: str, manifest: dict[str, Any]
    ) -> Any:
        with store.open_delivery(job_id, chunk) as body:
            value = orjson.loads(body.read())["data"]
        if kind == "link" and manifest.get("response_format") == "links":
            from airflow_provider_modelbit.hooks.responses import unwrap_link_document

            with self.hook.open_link(value) as pieces:
                return unwrap_link_document(orjson.loads(b"".join(pieces)))
        return value

    def _matched_rows(self, payload: list[list[Any]], answer: Any) -> list[list[Any]]:
        from airflow_provider_modelbit.hooks.batching import encode_chunk, reassemble

        return reassemble(encode_chunk(payload), answer, deployment=self.deployment, version=self.version)


def _is_batch(data: Any) -> bool:
    from airflow_provider_modelbit.hooks.batching import is_batch

    return is_batch(data)
