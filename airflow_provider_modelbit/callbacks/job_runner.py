"""Run a :class:`CallbackJob` for a deferrable operator: find or start it, submit, settle, collect.

Everything here is independent of Airflow's deferral machinery (that glue is
``operators/deferrable.py``): which job a try works on (at its start and when it resumes, by the
one rule :meth:`CallbackJob.mismatch`), which chunks are sent, what a delivery means, and when
the task fails. Whether a failed chunk is sent again is decided by
:func:`retry_verdict`, as on the synchronous path; a delivery body is read by :func:`parse_answer`,
as a synchronous answer is, so the same failure raises the same error in both modes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_modelbit.callbacks.job import (
    IN_FLIGHT,
    CallbackJob,
    ChunkState,
    JobRequest,
    job_id_for_try,
    load_job,
    payload_hash,
    save_job,
    task_job_prefix,
    work_marks,
)
from airflow_provider_modelbit.callbacks.submission import ChunkSubmission, callback_target
from airflow_provider_modelbit.defaults import LINKS
from airflow_provider_modelbit.exceptions import (
    ModelbitCallbackError,
    ModelbitError,
    ModelbitIncompleteBatch,
    ModelbitLinkExpired,
    ModelbitTimeout,
    ModelbitTransportError,
)
from airflow_provider_modelbit.hooks.concurrency import ConcurrencyLimiter
from airflow_provider_modelbit.hooks.responses import describe_target, parse_answer
from airflow_provider_modelbit.hooks.retries import retry_verdict
from airflow_provider_modelbit.triggers.callback import TRIGGER_EVENT_STATUSES
from airflow_provider_modelbit.version_compat import AirflowTaskTimeout

if TYPE_CHECKING:
    from airflow_provider_modelbit.callbacks.store import CallbackStore
    from airflow_provider_modelbit.operators.deferrable import DeferrableHost


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


class _Reading:
    """The chunk whose delivery the host is reading, so a failure can be pinned on it."""

    chunk: int | None = None


class JobRunner:
    """
    The life of one task instance's callback job, over the host operator's settings and hook.

    :param store: the callback store.
    :param host: the operator (see :class:`~airflow_provider_modelbit.operators.deferrable.DeferrableHost`).
    :param delivery_margin: seconds past the inference time limit for a delivery to arrive.
    :param max_attempts: submissions of one chunk allowed over the job's life.
    """

    def __init__(
        self, store: CallbackStore, host: DeferrableHost, *, delivery_margin: float, max_attempts: int
    ) -> None:
        self.store = store
        self.host = host
        self.delivery_margin = delivery_margin
        self.max_attempts = max_attempts
        #: Chunks this runner staged for the trigger: still pending, but already handed over.
        self._staged: set[int] = set()

    # ------------------------------------------------------------------ which job

    def job_for_try(self, ti: Any, request: JobRequest) -> CallbackJob:
        """
        Return the earlier job when it asked exactly this; otherwise retire it and start a new one.

        A job whose trigger left a stop request that no resume withdrew is retired too: its
        deferral ended without resuming because a user marked the task or cleared it.
        """
        prefix = task_job_prefix(ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1))
        try_number = int(getattr(ti, "try_number", 1) or 1)
        previous = self._previous_job(prefix, try_number)
        work = self._work_marks()
        if previous is not None:
            reason = self._why_not_reuse(previous, request, work)
            if reason is None:
                delivered = len(previous.in_state(ChunkState.DELIVERED))
                self.host.log.info(
                    "Reusing callback job %s from an earlier try (same request and input): %d of %d "
                    "chunk(s) delivered.", previous.job_id, delivered, len(previous.chunks),
                )  # fmt: skip
                return previous
            self.host.log.warning(
                "Retiring callback job %s of an earlier try because %s; its late deliveries are "
                "dropped and a new job starts.", previous.job_id, reason,
            )  # fmt: skip
            self.store.retire_job(previous.job_id, f"replaced: {reason}"[:500])
        # The try's first id no job took: a retired job's late deliveries stay away from this one.
        *_, job_id = self._generations(prefix, try_number)
        return CallbackJob(job_id, request, work=work)

    def _why_not_reuse(self, previous: CallbackJob, request: JobRequest, work: dict[str, str]) -> str | None:
        stop = self.store.stop_request(previous.job_id)
        if stop is not None:
            return f"its deferred task was stopped ({stop.reason})"
        return previous.mismatch(request, self._payload_hashes, work)

    def _previous_job(self, prefix: str, try_number: int) -> CallbackJob | None:
        """The job an earlier try left (at most one is unretired at a time), newest first."""
        for earlier in range(try_number, 0, -1):
            for job_id in self._generations(prefix, earlier):
                job = load_job(self.store, job_id)
                if job is not None:
                    return job
        return None

    def _generations(self, prefix: str, try_number: int) -> Iterator[str]:
        """A try's job ids in order: the retired ones, then the first one not retired (live or unused)."""
        generation = 1
        while self.store.is_retired(job_id := job_id_for_try(prefix, try_number, generation)):
            yield job_id
            generation += 1
        yield job_id

    def _payload_hashes(self) -> list[str]:
        return [payload_hash(payload) for payload in self.host._callback_payloads()]

    def _work_marks(self) -> dict[str, str]:
        # Taken before the payloads are read, so a change while they stream shows at the next check.
        return work_marks(self.host._callback_work())

    def resume(self, job_id: str, request: JobRequest) -> CallbackJob:
        """
        Return the job this try's deferral waited on, once it is proved to be the work the task
        asks for now (same settings and input, by :meth:`CallbackJob.mismatch`): the input may have
        been rewritten, or the DAG or the connection changed, while the task was deferred; a job
        that differs is retired. A stop request its trigger left is withdrawn: the task is
        resuming, so the cancellation was a takeover by another triggerer, not a user.
        """
        job = load_job(self.store, job_id)
        if job is None:
            raise ModelbitCallbackError(
                f"Callback job {job_id} is not in {self.store.location}: it was retired or removed "
                "(the task was killed, cleared or timed out meanwhile). Clear the task to run it again."
            )
        reason = job.mismatch(request, self._payload_hashes, self._work_marks())
        if reason is not None:
            submitted = job.request
            target = describe_target(submitted.deployment, submitted.version, submitted.branch)
            error = ModelbitCallbackError(
                f"{target}: callback job {job_id} no longer matches the task that resumed: {reason}. "
                "The job was retired and nothing was submitted or written (the output is untouched); "
                "the task's retry, or a clear, runs it on its current input and settings.",
                deployment=submitted.deployment,
                version=submitted.version,
            )
            self.store.retire_job(job_id, f"changed while deferred: {reason}"[:500])
            raise error
        stop = self.store.stop_request(job_id)
        if stop is not None:
            self.host.log.info(
                "The trigger of callback job %s was cancelled (%s), yet this try resumed: another "
                "triggerer took it over. The job is kept.", job_id, stop.reason,
            )  # fmt: skip
            self.store.withdraw_stop(job_id)
        return job

    # ------------------------------------------------------------------ what to send

    def due_on_new_try(self, job: CallbackJob) -> set[int]:
        """Chunks a new try sends: pending, errored, or awaited past the deadline (within the bound)."""
        self.record_deliveries(job)
        overdue = time.time() >= job.deadline
        due = set()
        for chunk, record in enumerate(job.chunks):
            if record.state is ChunkState.ERRORED:
                self._requeue(job, chunk, self.delivery_error(job, chunk))
            elif record.state in IN_FLIGHT and overdue:
                self._requeue(job, chunk, self._lost_error(job, [chunk]))
            if record.state is ChunkState.PENDING:
                due.add(chunk)
        return due

    def settle(self, job: CallbackJob, *, lost: bool, last_try: bool) -> None:
        """
        Record the deliveries; put back to pending what the retry policy sends again, or fail.

        :param lost: the trigger's deadline passed with deliveries missing.
        """
        self.record_deliveries(job)
        self.fail_if_timed_out(job, last_try=last_try)
        missing = job.in_state(*IN_FLIGHT)
        for chunk in job.in_state(ChunkState.ERRORED):
            self._resend_if_allowed(job, chunk, self.delivery_error(job, chunk), last_try)
        if lost:
            for chunk in missing:
                self._resend_if_allowed(job, chunk, self._lost_error(job, missing), last_try)
        save_job(self.store, job)

    def fail_if_timed_out(self, job: CallbackJob, *, last_try: bool) -> None:
        """
        Raise the task's timeout, before anything more is sent, once its ``execution_timeout``
        has passed with chunks not delivered, however the wait ended.

        What was delivered is kept for a retry of the same work; the last try retires the job.
        """
        unfinished = job.in_state(ChunkState.PENDING, ChunkState.ERRORED, *IN_FLIGHT)
        if not unfinished or not job.timed_out(time.time()):
            return
        kept = "its deliveries are kept for a retry"
        if last_try:
            kept = "this was the last try, so the job was retired"
        error = AirflowTaskTimeout(
            f"execution_timeout of task {self.host.deployment!r} passed with chunk(s) {unfinished[:10]} "
            f"of callback job {job.job_id} not delivered; {kept}."
        )
        self._fail(job, error, retire=last_try)

    def stop(self, job_id: str, *, last_try: bool) -> None:
        """
        The task was killed (its ``execution_timeout`` or a signal) while the worker held the job.
        Nothing more is sent from here; the job is kept for a retry, and retired on the last try.
        """
        if last_try:
            self.store.retire_job(job_id, "task killed in its last try")

    def _resend_if_allowed(self, job: CallbackJob, chunk: int, error: ModelbitError, last_try: bool) -> None:
        # A lost delivery is judged as a timeout: the request reached Modelbit and may have run.
        judged = ModelbitTimeout(error.message) if isinstance(error, ModelbitCallbackError) else error
        verdict = retry_verdict(judged, request_sent=True, idempotent=self.host.idempotent)
        if verdict is None:
            self._fail(job, error, retire=last_try)
        self.host.log.warning(
            "Chunk %d of job %s: %s; sending it again (%s%s).", chunk, job.job_id, error.message,
            verdict.reason, ", rows may be scored twice" if verdict.may_rescore else "",
        )  # fmt: skip
        self._requeue(job, chunk, error)

    def _requeue(self, job: CallbackJob, chunk: int, error: ModelbitError) -> None:
        """Put a chunk back to pending, or fail with ``error`` once its attempts are spent."""
        if job.chunks[chunk].attempts >= self.max_attempts:
            self._fail(job, error, retire=True, attempts=job.chunks[chunk].attempts)
        self.store.remove_chunk(job.job_id, chunk)
        job.requeue(chunk)

    def _fail(self, job: CallbackJob, error: BaseException, *, retire: bool, attempts: int = 0) -> NoReturn:
        if retire:
            self.store.retire_job(job.job_id, f"failed: {type(error).__name__}")
        else:
            save_job(self.store, job)  # a retry reads the attempts made so far
        if attempts:
            self.host.log.error("A chunk of job %s was sent %d time(s), the limit.", job.job_id, attempts)
        raise error

    def _lost_error(self, job: CallbackJob, missing: list[int]) -> ModelbitCallbackError:
        target = describe_target(self.host.deployment, self.host.version, job.request.branch)
        return ModelbitCallbackError(
            f"{target}: job {job.job_id}: "
            f"{len(job.chunks) - len(missing)} of {len(job.chunks)} deliveries arrived before the deadline; "
            f"missing chunk(s) {missing[:10]}. Check the callback receiver is reachable at the connection's "
            "callback_base_url.",
            deployment=self.host.deployment,
            version=self.host.version,
        )

    # ------------------------------------------------------------------ submission

    def submit(self, job: CallbackJob, due: set[int]) -> int:
        """
        Submit the first wave of the ``due`` chunks (and of any chunk the job does not know yet);
        stage the rest for the trigger to submit, paced; return how many were staged.

        The first wave (the concurrency limit's starting level) goes from the worker, so a
        submission Modelbit does not take fails the task before it defers, with the answer's own
        error: a refused key, an unknown deployment or an invalid request for good
        (``ModelbitPermanentError``), a rate limit whose retries ran out for this try (the retry
        sends the chunk again). Every staged chunk is encoded here too, so a bad row fails here as
        well. A chunk this runner staged already is not sent or staged again.
        """
        due = due - self._staged
        submission: ChunkSubmission | None = None
        wave = self.first_wave()
        submitted = staged = 0
        for chunk, payload in enumerate(self.host._callback_payloads()):
            if chunk == len(job.chunks) and not job.sealed:
                due.add(job.add_chunk(payload_hash(payload)))
            if chunk in due:
                submission = submission or self._open_submission(job)
                if submitted < wave:
                    self._submit_chunk(submission, chunk, payload)
                    submitted += 1
                else:
                    self.store.stage_request(job.job_id, chunk, self._encode(job, payload))
                    self._staged.add(chunk)
                    staged += 1
            elif job.sealed and chunk >= max(due, default=-1):
                break
        if not job.sealed:
            job.seal(len(job.chunks))
        if job.chunks:
            save_job(self.store, job)
        if submitted:
            self.host.log.info(
                "Submitted %d of %d chunk(s) of %s asynchronously as callback job %s; %d left to the "
                "trigger to submit, paced.",
                submitted, len(job.chunks), self.host.deployment, job.job_id, staged,
            )  # fmt: skip
        return staged

    def first_wave(self) -> int:
        """Chunks the worker submits itself, where the concurrency limit starts."""
        hook = self.host.hook
        return ConcurrencyLimiter(hook.max_concurrency, adaptive=hook.adaptive_concurrency).limit

    def _open_submission(self, job: CallbackJob) -> ChunkSubmission:
        """Check the callback settings and save the job before the first request (the receiver needs it)."""
        target = callback_target(self.host.hook.settings, job, self.delivery_margin)
        submission = ChunkSubmission(self.store, job, target, self.host.log)
        submission.open()
        return submission

    def _encode(self, job: CallbackJob, payload: Any) -> bytes:
        hook, request = self.host.hook, job.request
        return hook.encode_submission_data(
            hook.settings,
            request.deployment,
            payload,
            version=self.host.version,
            branch=self.host.branch,
            timeout_seconds=request.timeout_seconds,
            response_format=request.response_format,
            unique_ids=self.host.callback_unique_ids,
        )

    def _submit_chunk(self, submission: ChunkSubmission, chunk: int, payload: Any) -> None:
        url = submission.begin(chunk)
        if url is None:
            return
        try:
            batch_id = self.host.hook.submit_async(
                self.host.deployment,
                payload,
                webhook_url=url,
                version=self.host.version,
                branch=self.host.branch,
                timeout_seconds=submission.target.timeout_seconds,
                response_format=self.host.response_format,
                unique_ids=self.host.callback_unique_ids,
            )
        except ModelbitError as error:
            if submission.failed(chunk, error):
                raise
            return
        submission.accepted(chunk, batch_id)

    # ------------------------------------------------------------------ deliveries

    def record_deliveries(self, job: CallbackJob) -> None:
        """Move awaited chunks whose delivery is in the store to delivered or errored."""
        for chunk in sorted(self.store.delivered_chunks(job.job_id)):
            if chunk < len(job.chunks) and job.chunks[chunk].state in IN_FLIGHT:
                job.record_delivery(chunk, self.store.delivery_kind(job.job_id, chunk))

    def delivery_value(self, job: CallbackJob, chunk: int) -> Any:
        """Read a delivery as a synchronous answer is read: its ``data``, or the error it describes."""
        with self.store.open_delivery(job.job_id, chunk) as body:
            answer = parse_answer(
                200,
                {"content-type": "application/json"},
                body.read(),
                deployment=self.host.deployment,
                version=self.host.version,
                branch=job.request.branch,
                conn_id=job.request.conn_id,
            )
        return answer["data"]

    def delivery_error(self, job: CallbackJob, chunk: int) -> ModelbitError:
        try:
            self.delivery_value(job, chunk)
        except ModelbitError as error:
            error.request_sent = True
            return error
        raise ModelbitCallbackError(
            f"Chunk {chunk} of job {job.job_id} was stored as an error but holds data."
        )

    def collect(
        self, job: CallbackJob, assemble: Callable[[Iterator[CallbackDelivery]], Any]
    ) -> tuple[bool, Any]:
        """
        Hand the deliveries to ``assemble``; return ``(True, result)``, then retire the job.

        A links delivery that expired or could not be read puts its chunk back to pending, and
        with it every later chunk whose link has expired too (each resubmission counts as an
        attempt); then ``(False, None)`` is returned and the caller resubmits them in one wave. A
        retry an hour after the deliveries thus resubmits once, not once per chunk.
        """
        reading = _Reading()
        try:
            result = assemble(self._deliveries(job, reading))
        except ModelbitError as error:
            if reading.chunk is None or not _link_failure(error, self.host.response_format):
                raise
            unreadable = {
                reading.chunk: error,
                **self._expired_links(job, range(reading.chunk + 1, len(job.chunks))),
            }
            self.host.log.warning(
                "The results links of %d chunk(s) of job %s could not be read (chunk %d: %s); "
                "resubmitting them.", len(unreadable), job.job_id, reading.chunk, error.message,
            )  # fmt: skip
            for chunk, chunk_error in unreadable.items():
                self._requeue(job, chunk, chunk_error)
            return False, None
        # A tombstone, not a bare removal: a trigger instance still running elsewhere can then
        # neither claim and send a chunk again nor save the ledger back, and the receiver drops
        # redeliveries. A later try of the task (after a clear) starts a job of its own.
        self.store.retire_job(job.job_id, "finished")
        return True, result

    def _expired_links(self, job: CallbackJob, chunks: Iterable[int]) -> dict[int, ModelbitError]:
        """
        The chunks whose results link answers as expired, each with its error.

        Each link is opened and closed unread. Only an expired link counts: one that is merely
        unreachable now is read, and fetched again, when the deliveries are assembled.
        """
        expired: dict[int, ModelbitError] = {}
        for chunk in chunks:
            try:
                with self.host.hook.open_link(str(self.delivery_value(job, chunk))):
                    pass
            except ModelbitLinkExpired as error:
                expired[chunk] = error
            except ModelbitError:
                continue
        return expired

    def _deliveries(self, job: CallbackJob, reading: _Reading) -> Iterator[CallbackDelivery]:
        """Yield each chunk's delivery in chunk order, reading one body at a time."""
        for chunk in range(len(job.chunks)):
            reading.chunk = chunk
            meta = self.store.delivery_meta(job.job_id, chunk)
            started = job.first_submitted_at or meta["received_at"]
            value = self.delivery_value(job, chunk)
            yield CallbackDelivery(chunk, value, max(0.0, meta["received_at"] - started), meta["size"])


def _link_failure(error: ModelbitError, response_format: str | None) -> bool:
    """A links download that failed for the link's sake (expired, unreachable, cut short), not the rows'."""
    if response_format != LINKS:
        return False
    if isinstance(error, ModelbitLinkExpired):
        return True
    # Link download errors name no deployment; ID mismatches of the rows do.
    return isinstance(error, ModelbitTransportError | ModelbitIncompleteBatch) and error.deployment is None
