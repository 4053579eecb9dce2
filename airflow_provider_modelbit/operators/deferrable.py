"""Async-callback execution shared by the Modelbit operators: Airflow glue over a :class:`CallbackJob`.

``execute_deferrable`` finds the job of this task instance (reused only when its fingerprint
matches, otherwise retired), submits the first wave of what is due with signed webhook URLs,
stages the rest in the callback store, and defers once to :class:`ModelbitCallbackTrigger`, which
submits the staged chunks paced by the adaptive concurrency limit and waits for them all.
``execute_complete`` checks the job is still the work the task asks for (input, settings and
connection unchanged while it was deferred; otherwise the job is retired and the task fails
without writing anything), records the deliveries, resubmits what the retry policy allows, and hands
the deliveries, in chunk order, to the host's ``_collect_callback_results``. What the job is and
how its chunks move lives in ``callbacks/job.py``; how one chunk is submitted in
``callbacks/submission.py``; which failures are sent again in ``hooks/retries.py``; what an
answer means in ``hooks/responses.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

from airflow_provider_modelbit.callbacks.job import IN_FLIGHT, CallbackJob, ChunkState, JobRequest, save_job
from airflow_provider_modelbit.callbacks.job_runner import (
    CallbackDelivery,
    JobRunner,
    validate_callback_event,
)
from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.defaults import DEFAULT_ASYNC_TIMEOUT_SECONDS, DELIVERY_MARGIN_SECONDS
from airflow_provider_modelbit.hooks import metrics
from airflow_provider_modelbit.triggers.callback import ModelbitCallbackTrigger, submission_error

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_modelbit.hooks.modelbit import ModelbitHook

XCOM_BATCH_IDS_KEY = "modelbit_batch_ids"
#: The framework's own deferral timeout fires only if the trigger's clean timeout event did not.
DEFER_BACKSTOP_SECONDS = 300


class DeferrableHost(Protocol):
    """What :class:`ModelbitDeferrableMixin` needs from the operator it is mixed into."""

    deployment: str
    version: str | int
    branch: str | None
    timeout_seconds: int | None
    response_format: str | None
    modelbit_conn_id: str
    idempotent: bool
    #: Whether chunk payloads must refuse a repeated ID (``False``: rows of a DataFrame's index).
    callback_unique_ids: bool
    execution_timeout: timedelta | None
    log: Any

    @property
    def hook(self) -> ModelbitHook: ...

    @property
    def scored_rows(self) -> int:
        """Rows the finished task scored (a single input is one): deliveries count no rows themselves."""

    def _callback_payloads(self) -> Iterator[Any]:
        """The ``data`` of each async request, one per chunk, in the same order on every call (lazily)."""

    def _callback_work(self) -> dict[str, Any]:
        """
        What decides the payloads, cheap to read (the input's size, modification time or ETag and
        the options that cut it into rows): while it is unchanged the payloads need not be read
        again to prove the job is still this task's work. ``{}`` when the payloads are cheap to hash.
        """

    def _collect_callback_results(self, context: Context, deliveries: Iterator[CallbackDelivery]) -> Any:
        """Turn every chunk's delivery, in chunk order, into the task's return value."""

    def defer(self, *, trigger: Any, method_name: str, kwargs: Any = None, timeout: Any = None) -> Any: ...


class ModelbitDeferrableMixin:
    """
    Add the async-callback path to a Modelbit operator (the host, see :class:`DeferrableHost`).

    The host calls :meth:`execute_deferrable` from ``execute`` when ``deferrable`` is set. The
    connection must carry ``callback_base_url`` and ``callback_secret``. A chunk is submitted at
    most ``max_chunk_attempts`` times over the job's life (every try of the task instance until
    it succeeds or finally fails); within a try a chunk is sent again only where the retry policy
    of the synchronous path allows it.

    :param callback_poll_interval: seconds between the trigger's looks at the callback store.
    :param callback_delivery_margin: seconds past the inference time limit for a delivery to arrive.
    :param max_chunk_attempts: submissions of one chunk allowed over the job's life.
    :param callback_store_location: the callback store; ``None`` uses ``[modelbit] callback_store``.
    """

    #: Chunk payloads are batch rows with unique IDs unless the host says otherwise.
    callback_unique_ids = True

    def __init__(
        self,
        *,
        callback_poll_interval: float = 5.0,
        callback_delivery_margin: float = DELIVERY_MARGIN_SECONDS,
        max_chunk_attempts: int = 3,
        callback_store_location: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.callback_poll_interval = callback_poll_interval
        self.callback_delivery_margin = callback_delivery_margin
        self.max_chunk_attempts = max_chunk_attempts
        self.callback_store_location = callback_store_location
        self._callback_job_id: str | None = None
        #: Whether the try working on the job is the task instance's last (``on_kill`` has no context).
        self._callback_last_try = False
        #: The trigger's concurrency limit at its end, when it submitted staged chunks.
        self.deferred_concurrency: dict[str, Any] | None = None

    def _runner(self, store: CallbackStore) -> JobRunner:
        return JobRunner(
            store,
            cast("DeferrableHost", self),
            delivery_margin=self.callback_delivery_margin,
            max_attempts=self.max_chunk_attempts,
        )

    # ------------------------------------------------------------------ submission

    def execute_deferrable(self, context: Context) -> Any:
        """Submit what this try must, then defer; return at once when nothing is left to wait for."""
        ti = context["ti"]
        runner = self._runner(CallbackStore(self.callback_store_location))
        job = runner.job_for_try(ti, self._callback_request())
        self._hold_callback_job(job, ti)
        job.not_after = self._execution_deadline(ti)
        runner.submit(job, runner.due_on_new_try(job))
        return self._settle_and_continue(context, runner, job, lost=False)

    def _callback_request(self) -> JobRequest:
        host = cast("DeferrableHost", self)
        settings = host.hook.settings
        timeout = host.timeout_seconds or settings.timeout_seconds or DEFAULT_ASYNC_TIMEOUT_SECONDS
        return JobRequest(
            conn_id=host.modelbit_conn_id,
            workspace_url=str(settings.base_url),
            deployment=host.deployment,
            version=str(host.version),
            branch=host.branch if host.branch is not None else settings.branch,
            response_format=host.response_format,
            timeout_seconds=int(timeout),
        )

    def _execution_deadline(self, ti: Any) -> float | None:
        """When ``execution_timeout`` ends this try: Airflow does not enforce it while deferred."""
        limit = cast("DeferrableHost", self).execution_timeout
        if limit is None:
            return None
        started = ti.start_date.timestamp() if getattr(ti, "start_date", None) else time.time()
        return started + limit.total_seconds()

    def _defer_until(self, context: Context, runner: JobRunner, job: CallbackJob) -> Any:
        context["ti"].xcom_push(key=XCOM_BATCH_IDS_KEY, value=[chunk.batch_id for chunk in job.chunks])
        staged = job.in_state(ChunkState.PENDING)
        hook = cast("DeferrableHost", self).hook
        trigger = ModelbitCallbackTrigger(
            job_id=job.job_id,
            chunks=job.in_state(ChunkState.PENDING, *IN_FLIGHT),
            store_location=runner.store.location,
            deadline=job.wait_until(),
            poll_interval=self.callback_poll_interval,
            conn_id=job.request.conn_id,
            deferred_by_try=_try_number(context["ti"]),
            max_concurrency=hook.max_concurrency if staged else None,
            adaptive=hook.adaptive_concurrency,
            delivery_margin=self.callback_delivery_margin,
        )
        cast("DeferrableHost", self).defer(
            trigger=trigger, method_name="execute_complete", timeout=self._backstop(job, len(staged))
        )

    def _backstop(self, job: CallbackJob, staged: int) -> timedelta:
        """
        The framework's deferral timeout: past the trigger's own deadline, which grows with each
        staged chunk it submits (at worst one after another, each taking its full time).
        """
        per_chunk = job.request.timeout_seconds + self.callback_delivery_margin
        wait = max(job.wait_until() - time.time(), 0) + staged * per_chunk
        if job.not_after is not None:
            wait = min(wait, max(job.not_after - time.time(), 0))
        return timedelta(seconds=wait + DEFER_BACKSTOP_SECONDS)

    # ------------------------------------------------------------------ resumption

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger: resubmit what the policy allows, or assemble the deliveries."""
        if _resumed_by_a_later_try(context, event):
            # Airflow 3.1 keeps a deferred task's resume point when the try fails, so its retry
            # lands here with the failed try's event. Start the try over: it reuses the job and
            # sends again what the failed try lost.
            cast("DeferrableHost", self).log.info(
                "Try %d resumed at the event of try %s; starting the try from the beginning.",
                _try_number(context["ti"]), cast("dict[str, Any]", event).get("deferred_by_try"),
            )  # fmt: skip
            return cast("Any", self).execute(context)
        event = validate_callback_event(event)
        runner = self._runner(CallbackStore(event["store_location"]))
        # Before anything is settled, sent or written: the input, the DAG or the connection may
        # have changed while the task was deferred.
        job = runner.resume(event["job_id"], self._callback_request())
        self._hold_callback_job(job, context["ti"])
        self.deferred_concurrency = event.get("concurrency") or self.deferred_concurrency
        if event.get("submission_error"):
            runner.record_deliveries(job)
            runner.fail_if_timed_out(job, last_try=self._callback_last_try)
            save_job(runner.store, job)  # the retry reuses the job and reads what was delivered
            raise submission_error(event)
        metrics.deferred_wait(job.request.deployment, time.time() - (job.first_submitted_at or time.time()))
        return self._settle_and_continue(context, runner, job, lost=event["status"] == "timeout")

    def _settle_and_continue(
        self, context: Context, runner: JobRunner, job: CallbackJob, *, lost: bool
    ) -> Any:
        """Assemble the result when every chunk is delivered; otherwise (re)submit what is due and defer."""
        runner.settle(job, lost=lost, last_try=self._callback_last_try)
        if not job.in_state(ChunkState.PENDING, *IN_FLIGHT):
            assemble = partial(cast("DeferrableHost", self)._collect_callback_results, context)
            finished, result = runner.collect(job, assemble)
            if finished:
                metrics.rows_scored(job.request.deployment, cast("DeferrableHost", self).scored_rows)
                return result
        runner.submit(job, set(job.in_state(ChunkState.PENDING)))
        return self._defer_until(context, runner, job)

    # ------------------------------------------------------------------ stopping

    def _hold_callback_job(self, job: CallbackJob, ti: Any) -> None:
        self._callback_job_id = job.job_id
        self._callback_last_try = _is_last_try(ti)

    def on_kill(self) -> None:
        """
        Stop a killed task (``execution_timeout``, or a signal) in either mode: abandon the
        requests in flight and send nothing more. What a retry can reuse is kept (a synchronous
        batch's checkpoint, a callback job's ledger and deliveries); the last try retires the job.
        """
        if "hook" in self.__dict__:  # never build a hook (and read the connection) just to stop it
            cast("DeferrableHost", self).hook.stop()
        if self._callback_job_id is not None:
            store = CallbackStore(self.callback_store_location)
            self._runner(store).stop(self._callback_job_id, last_try=self._callback_last_try)
        super().on_kill()  # type: ignore[misc]


def _try_number(ti: Any) -> int:
    return int(getattr(ti, "try_number", 1) or 1)


def _is_last_try(ti: Any) -> bool:
    return _try_number(ti) > int(getattr(ti, "max_tries", 0) or 0)


def _resumed_by_a_later_try(context: Context, event: dict[str, Any] | None) -> bool:
    """Whether the event belongs to an earlier try than the one resuming (events without a try do not)."""
    deferred_by = event.get("deferred_by_try") if isinstance(event, dict) else None
    return deferred_by is not None and int(deferred_by) != _try_number(context["ti"])


__all__ = ["XCOM_BATCH_IDS_KEY", "CallbackDelivery", "DeferrableHost", "ModelbitDeferrableMixin"]
