"""Async-callback execution shared by the Modelbit operators: submit with webhooks, defer, assemble.

The operator submits each chunk once on the worker as an async request whose webhook URL is
signed for this job and chunk, records the batch IDs in a job manifest in the callback store,
and defers to :class:`ModelbitCallbackTrigger`. When the deliveries are in, it resumes on a
worker and hands them, in chunk order, to the operator's ``_collect_callback_results``, which
assembles them the way its synchronous path assembles answers.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from airflow_provider_modelbit.callbacks.signing import callback_url, check_secret
from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.defaults import DEFAULT_ASYNC_TIMEOUT_SECONDS
from airflow_provider_modelbit.exceptions import (
    ModelbitCallbackError,
    ModelbitConnectionError,
    ModelbitDeploymentError,
    ModelbitError,
)
from airflow_provider_modelbit.triggers.callback import TRIGGER_EVENT_STATUSES, ModelbitCallbackTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
    from airflow_provider_modelbit.hooks.settings import ModelbitSettings

XCOM_BATCH_IDS_KEY = "modelbit_batch_ids"
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


@dataclass(frozen=True)
class CallbackDelivery:
    """
    One chunk's webhook delivery, as the operator receives it on resumption.

    :param chunk: the chunk number, from 0, in the order of ``_callback_payloads()``.
    :param value: what the answer's ``data`` holds: the results, or the results link when the
        request asked for ``response_format="links"``.
    :param seconds: wall-clock time from the job's first submission to this delivery's arrival.
    :param size: bytes of the delivery body.
    """

    chunk: int
    value: Any
    seconds: float
    size: int


@dataclass(frozen=True)
class _Submission:
    """What every async request of one submission round shares; held in memory only (it has the secret)."""

    base_url: str
    secret: str
    timeout_seconds: int
    expires_at: int

    def __repr__(self) -> str:
        return f"_Submission(base_url={self.base_url!r}, timeout_seconds={self.timeout_seconds})"


class ModelbitDeferrableMixin:
    """
    Add the async-callback path to a Modelbit operator.

    The operator provides ``hook`` (a ``ModelbitHook``), ``deployment``, ``version``, ``branch``,
    ``timeout_seconds``, ``response_format`` and ``modelbit_conn_id``, plus two methods:

    * ``_callback_payloads()`` — the ``data`` of each async request, one per chunk, in the same
      order on every call (it is read again on resumption, lazily, so it may stream a table);
    * ``_collect_callback_results(context, deliveries)`` — turn the :class:`CallbackDelivery`
      of every chunk, in chunk order, into the task's return value;

    and calls :meth:`execute_deferrable` from ``execute`` when ``deferrable`` is set.

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
        deployment: str
        version: str | int
        branch: str | None
        timeout_seconds: int | None
        response_format: str | None
        modelbit_conn_id: str
        idempotent: bool
        log: Any

        @property
        def hook(self) -> ModelbitHook: ...
        def _callback_payloads(self) -> Iterator[Any]: ...
        def _collect_callback_results(
            self, context: Context, deliveries: Iterator[CallbackDelivery]
        ) -> Any: ...
        def defer(
            self, *, trigger: Any, method_name: str, kwargs: Any = None, timeout: Any = None
        ) -> Any: ...

    # ------------------------------------------------------------------ submission

    def execute_deferrable(self, context: Context) -> Any:
        """Submit what is not delivered yet, then defer; return at once when there is nothing to score."""
        store = CallbackStore(self.callback_store_location)
        job_id = self._callback_job_id(context)
        manifest = self._reusable_manifest(store, job_id)
        self._submit_chunks(store, job_id, manifest, self._needs_submission(store, job_id, manifest))
        if manifest["chunks"] == 0:
            store.remove_job(job_id)
            return self._collect_callback_results(context, iter([]))
        self._push_batch_ids(context, manifest)
        return self._defer_until(store, job_id, manifest)

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
            "sent": {},
            "attempts": {},
            "chunks": 0,
            "deadline": 0.0,
        }

    def _needs_submission(
        self, store: CallbackStore, job_id: str, manifest: dict[str, Any]
    ) -> Callable[[int], bool]:
        """
        Return a test for chunks with no usable delivery: never submitted, errored, or overdue.

        A chunk whose request was sent but whose answer was lost (a dropped connection) may be
        running at Modelbit: unless the inference is idempotent it is awaited until the deadline
        rather than sent again, so its rows are not scored twice.
        """
        delivered = store.delivered_chunks(job_id)
        overdue = time.time() >= manifest["deadline"]
        in_flight = set(manifest["batch_ids"])
        if not getattr(self, "idempotent", False):
            in_flight |= set(manifest.setdefault("sent", {}))

        def needs(chunk: int) -> bool:
            if chunk not in delivered:
                return overdue or str(chunk) not in in_flight
            if store.delivery_kind(job_id, chunk) != "error":
                return False
            store.remove_chunk(job_id, chunk)
            return True

        return needs

    def _submit_chunks(
        self, store: CallbackStore, job_id: str, manifest: dict[str, Any], needs: Callable[[int], bool]
    ) -> None:
        """Submit each chunk ``needs`` picks as an async request, reading the payloads lazily."""
        submission: _Submission | None = None
        submitted = count = 0
        for chunk, payload in enumerate(self._callback_payloads()):
            count += 1
            if not needs(chunk):
                continue
            submission = submission or self._open_submission(store, job_id, manifest)
            self._submit_chunk(store, job_id, manifest, submission, chunk, payload)
            submitted += 1
        manifest["chunks"] = count
        if submission is not None:
            # Submitting a large table takes a while: every chunk gets its full time from its own
            # submission, not from the first one's.
            last_due = time.time() + submission.timeout_seconds + self.callback_delivery_margin
            manifest["deadline"] = max(float(manifest["deadline"]), last_due)
        if submission is not None or store.has_manifest(job_id):
            store.write_manifest(job_id, manifest)
        if submitted:
            self.log.info(
                "Submitted %d of %d chunk(s) of %s asynchronously as callback job %s.",
                submitted, count, self.deployment, job_id,
            )  # fmt: skip

    def _open_submission(self, store: CallbackStore, job_id: str, manifest: dict[str, Any]) -> _Submission:
        """Check the callback settings, extend the job's deadline and record it before the first request."""
        settings = self.hook.settings
        base_url = self._callback_base_url(settings)
        secret = check_secret(settings.callback_secret, self.modelbit_conn_id)
        timeout = self.timeout_seconds or settings.timeout_seconds or DEFAULT_ASYNC_TIMEOUT_SECONDS
        now = time.time()
        manifest["deadline"] = max(float(manifest["deadline"]), now + timeout + self.callback_delivery_margin)
        manifest.setdefault("first_submitted_at", now)
        store.write_manifest(job_id, manifest)  # before submitting: the receiver only keeps awaited jobs
        expires_at = int(manifest["deadline"] + TOKEN_GRACE_SECONDS)
        return _Submission(base_url, secret, int(timeout), expires_at)

    def _submit_chunk(
        self,
        store: CallbackStore,
        job_id: str,
        manifest: dict[str, Any],
        submission: _Submission,
        chunk: int,
        payload: Any,
    ) -> None:
        url = callback_url(
            submission.base_url,
            self.modelbit_conn_id,
            job_id,
            chunk,
            submission.secret,
            submission.expires_at,
        )
        key = str(chunk)
        manifest.setdefault("sent", {})[key] = time.time()
        store.write_manifest(job_id, manifest)  # a retry must know this request may have gone out
        manifest["attempts"][key] = manifest["attempts"].get(key, 0) + 1
        try:
            manifest["batch_ids"][key] = self.hook.submit_async(
                self.deployment,
                payload,
                webhook_url=url,
                version=self.version,
                branch=self.branch,
                timeout_seconds=submission.timeout_seconds,
                response_format=self.response_format,
            )
        except ModelbitError as error:
            if not error.request_sent:
                del manifest["sent"][key]  # refused before it could run: sending it again is safe
                manifest["attempts"][key] -= 1
                store.write_manifest(job_id, manifest)
                raise
            # Its answer was lost, but Modelbit may have accepted it: wait for its delivery until the
            # deadline instead of sending it twice, and resubmit only if none comes.
            self.log.warning(
                "Chunk %d of job %s: %s Waiting for its delivery until the deadline before resubmitting.",
                chunk, job_id, error.message,
            )  # fmt: skip
        store.write_manifest(job_id, manifest)  # a retry must know this chunk is on its way

    def _callback_base_url(self, settings: ModelbitSettings) -> str:
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

    def _defer_until(self, store: CallbackStore, job_id: str, manifest: dict[str, Any]) -> Any:
        deadline = float(manifest["deadline"])
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
            lost = self._lost_submissions(store, job_id, manifest)
            if lost:
                return self._resubmit(context, store, job_id, manifest, lost, "got no answer when submitted")
            self._fail_on_timeout(context, store, job_id, event)
        if event["status"] == "error":
            return self._resubmit_errors(context, store, job_id, manifest, event["errors"])
        result = self._collect_callback_results(context, self._deliveries(store, job_id, manifest))
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

    def _lost_submissions(self, store: CallbackStore, job_id: str, manifest: dict[str, Any]) -> list[int]:
        """
        Return the undelivered chunks whose submission got no answer, when they are all that is missing.

        Past the deadline with no delivery, such a request never reached Modelbit (or its delivery was
        lost for good), so sending it again is the only way to finish. Chunks Modelbit accepted (with
        a batch ID) that never arrived are not resubmitted: that is a timeout.
        """
        delivered = store.delivered_chunks(job_id)
        missing = [c for c in range(manifest["chunks"]) if c not in delivered]
        unanswered = set(manifest.get("sent", {})) - set(manifest["batch_ids"])
        if not missing or any(str(c) not in unanswered for c in missing):
            return []
        if any(manifest["attempts"].get(str(c), 1) >= self.max_chunk_attempts for c in missing):
            return []
        return missing

    def _resubmit_errors(
        self, context: Context, store: CallbackStore, job_id: str, manifest: dict[str, Any], errors: list[int]
    ) -> Any:
        exhausted = [c for c in errors if manifest["attempts"].get(str(c), 1) >= self.max_chunk_attempts]
        if exhausted:
            error = self._deployment_error(store, job_id, exhausted[0], manifest)
            store.remove_job(job_id)
            raise error
        for chunk in errors:
            store.remove_chunk(job_id, chunk)
        return self._resubmit(context, store, job_id, manifest, errors, "were delivered as errors")

    def _resubmit(
        self,
        context: Context,
        store: CallbackStore,
        job_id: str,
        manifest: dict[str, Any],
        chunks: list[int],
        why: str,
    ) -> Any:
        self.log.warning("Chunk(s) %s of job %s %s; resubmitting them.", chunks, job_id, why)
        self._submit_chunks(store, job_id, manifest, set(chunks).__contains__)
        self._push_batch_ids(context, manifest)
        return self._defer_until(store, job_id, manifest)

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

    def _deliveries(
        self, store: CallbackStore, job_id: str, manifest: dict[str, Any]
    ) -> Iterator[CallbackDelivery]:
        """Yield each chunk's delivery in chunk order, reading one body at a time."""
        for chunk in range(manifest["chunks"]):
            meta = store.delivery_meta(job_id, chunk)
            with store.open_delivery(job_id, chunk) as body:
                value = orjson.loads(body.read())["data"]
            submitted_at = float(manifest.get("first_submitted_at", meta["received_at"]))
            yield CallbackDelivery(chunk, value, max(0.0, meta["received_at"] - submitted_at), meta["size"])
