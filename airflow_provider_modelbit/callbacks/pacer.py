"""Submit a callback job's staged chunks from the triggerer, paced by the adaptive concurrency limit.

Modelbit queues async requests rather than refusing them, so a deferred batch submitted in one
burst would queue hundreds of requests at the deployment. :class:`SubmissionPacer` keeps the
chunks outstanding (sent, not yet delivered) at most at a :class:`ConcurrencyLimiter`'s limit, the
same rule as the sync batch path: the limit grows while delivery latency (submission to the
store's ``received_at``) stays flat, goes just under the level an in-flight cap refused, halves
when latency rises or another refusal comes, and a ``Retry-After`` holds new submissions back. A
place is freed when the chunk's delivery is stored, or when its submission was not taken or its
answer was lost. Each submission follows
:class:`~airflow_provider_modelbit.callbacks.submission.ChunkSubmission`, as in the worker; the
ledger is read and written in worker threads, one change at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from airflow_provider_modelbit.callbacks.job import IN_FLIGHT, CallbackJob, ChunkState, load_job
from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.callbacks.submission import ChunkSubmission, callback_target
from airflow_provider_modelbit.defaults import CONCURRENCY_LOG_INTERVAL_SECONDS
from airflow_provider_modelbit.exceptions import ModelbitCallbackError, ModelbitError, ModelbitPermanentError
from airflow_provider_modelbit.hooks.concurrency import ConcurrencyLimiter, Outcome, Slot, load_outcome
from airflow_provider_modelbit.hooks.responses import SendFailed, describe_target

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass
class PacingResult:
    """
    How the pacing ended.

    :param awaited: chunks sent (now or before) whose deliveries the trigger must wait for.
    :param deadline: when the wait ends, from the job's ledger.
    :param failure: why submitting stopped early (a submission Modelbit did not take, a connection
        that cannot serve the job, the store failing, or the task's ``execution_timeout`` passing
        with chunks not submitted), as the error the task raises, else ``None``.
    :param retired: the job was retired meanwhile (its task finished, or it was replaced or failed for good).
    :param concurrency: the limiter's final state, for the task's summary.
    """

    awaited: list[int] = field(default_factory=list)
    deadline: float = 0.0
    failure: ModelbitError | None = None
    retired: bool = False
    concurrency: dict[str, Any] | None = None


class SubmissionPacer:
    """
    Submit every staged (pending) chunk of a job, keeping outstanding ones within the adaptive limit.

    :param store: the callback store (made in a worker thread: an object store's filesystem may
        not be set up from inside an event loop).
    :param job_id: the job.
    :param ceiling: ``max_concurrency``: the most chunks ever outstanding.
    :param adaptive: adapt the limit; ``False`` keeps ``ceiling``.
    :param delivery_margin: seconds past the inference time limit for a delivery to arrive.
    :param scan_interval: seconds between looks at the store for deliveries.
    :param log: where progress is logged.
    """

    def __init__(
        self,
        store: CallbackStore,
        job_id: str,
        *,
        ceiling: int,
        adaptive: bool,
        delivery_margin: float,
        scan_interval: float = 0.5,
        log: Any = log,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.ceiling = ceiling
        self.adaptive = adaptive
        self.delivery_margin = delivery_margin
        self.scan_interval = scan_interval
        self.log = log
        self._ledger_lock = asyncio.Lock()
        #: Chunks sent and not yet seen delivered: their slot (``None`` when the limit had no room
        #: for a chunk sent before this trigger started) and when this trigger sent them.
        self._outstanding: dict[int, tuple[Slot | None, float | None]] = {}
        self._failure: ModelbitError | None = None
        self._submitted = 0
        self._last_log = 0.0

    async def _ledger(self, action: Callable[..., _T], *args: Any) -> _T:
        """Run a ledger read or change in a worker thread, one at a time (they share the job)."""
        async with self._ledger_lock:
            work = asyncio.ensure_future(asyncio.to_thread(action, *args))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                # Stopped meanwhile: let the change finish before the next one may start.
                await asyncio.wait([work])
                raise

    async def run(self) -> PacingResult:
        """Submit until nothing is staged, the job is retired, a submission fails for good or time is up."""
        job = await self._ledger(load_job, self.store, self.job_id)
        if job is None:
            return PacingResult(retired=True)
        from airflow_provider_modelbit.hooks.modelbit_async import ModelbitAsyncHook

        hook = ModelbitAsyncHook(job.request.conn_id, max_concurrency=self.ceiling)
        try:
            target = callback_target(await hook.aget_settings(), job, self.delivery_margin)
        except ModelbitError as error:
            # The connection, as the triggerer reads it, cannot serve this job (it points at another
            # workspace, or lacks the callback settings): submit nothing, and stop with its error.
            self._record_failure(job, error)
            return self._result(job, retired=False)
        submission = ChunkSubmission(self.store, job, target, self.log)
        limiter = ConcurrencyLimiter(
            self.ceiling, adaptive=self.adaptive, where=f"job {job.job_id}", log=self.log
        )
        self._adopt_in_flight(job, limiter)
        pending = deque(job.in_state(ChunkState.PENDING))
        total = len(pending)
        tasks: set[asyncio.Task[None]] = set()
        try:
            retired = await self._pace(job, hook, submission, limiter, pending, tasks, total)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        if pending and not retired:
            self._note_timeout(job, pending)
        self._log_progress(job, limiter, total, force=True)
        limiter.log_final()
        return self._result(job, retired=retired, concurrency=limiter.summary())

    def _result(
        self, job: CallbackJob, *, retired: bool, concurrency: dict[str, Any] | None = None
    ) -> PacingResult:
        return PacingResult(
            awaited=job.in_state(*IN_FLIGHT, ChunkState.DELIVERED, ChunkState.ERRORED),
            deadline=job.wait_until(),
            failure=self._failure,
            retired=retired,
            concurrency=concurrency,
        )

    def _adopt_in_flight(self, job: CallbackJob, limiter: ConcurrencyLimiter) -> None:
        """Count the chunks already sent (the worker's first wave, or before a restart) as outstanding."""
        for chunk in job.in_state(*IN_FLIGHT):
            # Their submission time is not known here, so their deliveries free a place but say
            # nothing about latency; those beyond the limit hold new submissions back until delivered.
            self._outstanding[chunk] = (limiter.try_acquire(), None)

    def _room(self, limiter: ConcurrencyLimiter) -> Slot | None:
        """A slot for the next submission, once every outstanding chunk holds one and the limit allows."""
        if any(slot is None for slot, _ in self._outstanding.values()):
            return None
        return limiter.try_acquire()

    async def _pace(
        self,
        job: CallbackJob,
        hook: Any,
        submission: ChunkSubmission,
        limiter: ConcurrencyLimiter,
        pending: deque[int],
        tasks: set[asyncio.Task[None]],
        total: int,
    ) -> bool:
        """
        The pacing loop; return whether the job was retired meanwhile.

        Every way out passes a look at the store, so a failure the retirement caused (the job's
        folder deleted under a ledger write) ends as the retirement it is.
        """
        while True:
            retired, delivered = await asyncio.to_thread(self._look, list(self._outstanding))
            if retired:
                return True
            self._free_slots(limiter, delivered)
            if not ((pending and self._failure is None) or tasks) or time.time() >= job.wait_until():
                return False
            while pending and self._failure is None and (slot := self._room(limiter)) is not None:
                chunk = pending.popleft()
                task = asyncio.create_task(self._submit_or_stop(job, hook, submission, limiter, chunk, slot))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            self._log_progress(job, limiter, total)
            await asyncio.sleep(self.scan_interval)

    def _look(self, outstanding: list[int]) -> tuple[bool, dict[int, float]]:
        """Whether the job is retired, and when each newly delivered outstanding chunk arrived."""
        try:
            return self._read_store(outstanding)
        except Exception as error:
            # A storage hiccup is not a verdict on the job: look again next time, until the deadline.
            self.log.warning(
                "Could not read callback store %s for job %s: %s: %s",
                self.store.location, self.job_id, type(error).__name__, error,
            )  # fmt: skip
            return False, {}

    def _read_store(self, outstanding: list[int]) -> tuple[bool, dict[int, float]]:
        if self.store.is_retired(self.job_id):
            return True, {}
        delivered = self.store.delivered_chunks(self.job_id)
        return False, {
            chunk: float(self.store.delivery_meta(self.job_id, chunk)["received_at"])
            for chunk in outstanding
            if chunk in delivered
        }

    def _free_slots(self, limiter: ConcurrencyLimiter, delivered: dict[int, float]) -> None:
        """Tell the limiter how long each delivered chunk took and free its place."""
        for chunk, received_at in delivered.items():
            entry = self._outstanding.pop(chunk, None)
            if entry is None:
                continue
            slot, sent_at = entry
            if slot is None:
                continue
            if sent_at is not None:
                # The limiter times a request from its slot's start to now; a delivery is noticed up
                # to a scan later, so the slot is dated back to measure submission -> received_at.
                latency = max(0.0, received_at - sent_at)
                started = time.monotonic() - latency
                limiter.record(dataclasses.replace(slot, started=started), Outcome.ANSWERED)
            limiter.release()

    async def _submit_or_stop(
        self,
        job: CallbackJob,
        hook: Any,
        submission: ChunkSubmission,
        limiter: ConcurrencyLimiter,
        chunk: int,
        slot: Slot,
    ) -> None:
        """Submit one chunk; anything unexpected (the store failing) stops further submissions."""
        try:
            await self._submit(job, hook, submission, limiter, chunk, slot)
        except Exception as error:
            if chunk not in self._outstanding:
                limiter.release()
            self._record_failure(job, error, chunk)

    async def _submit(
        self,
        job: CallbackJob,
        hook: Any,
        submission: ChunkSubmission,
        limiter: ConcurrencyLimiter,
        chunk: int,
        slot: Slot,
    ) -> None:
        """Submit one staged chunk under ``slot``; the slot is freed when its delivery lands."""
        data = await asyncio.to_thread(self.store.staged_request, job.job_id, chunk)
        if data is None:
            self._outstanding.pop(chunk, None)
            limiter.release()
            missing = f"the staged request data of chunk {chunk} is missing from {self.store.location}."
            self._record_failure(job, _job_error(job, missing), chunk)
            return
        try:
            url = await self._ledger(submission.begin, chunk)
        except asyncio.CancelledError:
            # Stopped (the triggerer shuts down) after the attempt was counted but before its
            # request went out: give the attempt back, so the trigger that takes over sends it.
            await asyncio.shield(self._ledger(submission.withdraw, chunk))
            raise
        self._outstanding[chunk] = (slot, time.time())
        if url is None:
            return  # another triggerer sent this attempt: its delivery is awaited, under this slot

        def observe(failure: SendFailed) -> None:
            limiter.record(slot, load_outcome(failure.error), retry_after=failure.retry_after)

        request = job.request
        try:
            batch_id = await hook.asubmit_encoded(
                request.deployment,
                data,
                webhook_url=url,
                version=request.version,
                branch=request.branch,
                timeout_seconds=request.timeout_seconds,
                response_format=request.response_format,
                observe=observe,
            )
        except ModelbitError as error:
            not_taken = await self._ledger(submission.failed, chunk, error)
            # Either way its place is freed: not taken, it holds none; with its answer lost, it may
            # never have reached Modelbit and its delivery may never come, so it must not hold a
            # place until the deadline (its delivery is still awaited, outside the limit).
            self._outstanding.pop(chunk, None)
            limiter.release()
            if not_taken:
                self._record_failure(job, error, chunk)
            return
        self._submitted += 1
        await self._ledger(submission.accepted, chunk, batch_id)

    def _note_timeout(self, job: CallbackJob, pending: deque[int]) -> None:
        """Report chunks left unsent because the task's ``execution_timeout`` stopped the pacing."""
        if not job.timed_out(time.time()):
            return  # past the delivery deadline alone, the task itself submits what is left
        passed = f"the task's execution_timeout passed with {len(pending)} staged chunk(s) not submitted."
        self._record_failure(job, _job_error(job, passed), pending[0])

    def _record_failure(self, job: CallbackJob, error: Exception, chunk: int | None = None) -> None:
        """
        Stop submitting with the first failure, kept as the error the task raises: a Modelbit
        error keeps its class (a refused key, or a connection that no longer points at the job's
        workspace, stays permanent), anything else (the store failing) is a
        ``ModelbitCallbackError``. ``chunk`` is the chunk whose submission failed, ``None`` when
        none could be opened.
        """
        if self._failure is not None:
            return
        if not isinstance(error, ModelbitError):
            error = _job_error(job, f"{type(error).__name__}: {error}")
        permanent = isinstance(error, ModelbitPermanentError)
        then = "once the cause is fixed, clearing the task" if permanent else "the task's retry"
        if chunk is None:
            stopped = "no staged chunk was submitted from the triggerer"
        else:
            stopped = f"chunk {chunk} could not be submitted from the triggerer, and no further chunk was"
        self._failure = error.located(
            f"job {job.job_id}: {stopped}; {then} reuses the job and sends what is left"
        )
        self.log.error("%s", self._failure.message)

    def _log_progress(
        self, job: CallbackJob, limiter: ConcurrencyLimiter, total: int, *, force: bool = False
    ) -> None:
        now = time.monotonic()
        if not force and now - self._last_log < CONCURRENCY_LOG_INTERVAL_SECONDS:
            return
        self._last_log = now
        self.log.info(
            "Submitted %d of %d staged chunk(s) of job %s; %d outstanding allowed (%d outstanding).",
            self._submitted, total, job.job_id, limiter.limit, len(self._outstanding),
        )  # fmt: skip


def _job_error(job: CallbackJob, text: str) -> ModelbitCallbackError:
    """A failure of the job's own machinery (not an answer), naming the deployment called."""
    request = job.request
    where = describe_target(request.deployment, request.version, request.branch)
    return ModelbitCallbackError(f"{where}: {text}", deployment=request.deployment, version=request.version)
