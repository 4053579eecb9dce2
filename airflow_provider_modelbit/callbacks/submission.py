"""How one chunk of a callback job is submitted: the same rules in the worker and in the triggerer.

The worker submits a deferred job's first chunks with the sync hook; the trigger submits the rest
with the async hook (:mod:`~airflow_provider_modelbit.callbacks.pacer`). Only the HTTP call
differs; around it both follow :class:`ChunkSubmission`:

- before the request the attempt is claimed in the store (create-only, so two triggerers briefly
  running one trigger never both send it), counted (``mark_sent``) and the job saved, so a crash
  after it never sends the chunk blind;
- accepted: ``accept`` and save;
- not taken (never sent, or answered with a refusal: a refused key, an unknown deployment, an
  invalid request, a rate limit whose retries ran out): the claim is given back,
  ``mark_not_sent`` and save; sending it again is safe, and the caller stops with the error;
- no answer after it was sent (a read timeout, a connection broken after sending): Modelbit may
  have accepted it, so its delivery is awaited like the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_modelbit.callbacks.job import CallbackJob, save_job
from airflow_provider_modelbit.callbacks.signing import callback_url, check_secret
from airflow_provider_modelbit.exceptions import ModelbitConnectionError, ModelbitError
from airflow_provider_modelbit.hooks.responses import safe_url

if TYPE_CHECKING:
    from airflow_provider_modelbit.callbacks.store import CallbackStore
    from airflow_provider_modelbit.hooks.settings import ModelbitSettings

#: Signed URLs stay valid this long past the deadline, so Modelbit's retries of a slow delivery land.
TOKEN_GRACE_SECONDS = 3600


@dataclass(frozen=True)
class CallbackTarget:
    """Where a job's deliveries go; held in memory only (it has the callback secret)."""

    base_url: str
    secret: str
    conn_id: str
    timeout_seconds: int
    delivery_margin: float

    def __repr__(self) -> str:
        return f"CallbackTarget(base_url={self.base_url!r}, timeout_seconds={self.timeout_seconds})"

    def webhook_url(self, job: CallbackJob, chunk: int) -> str:
        expires_at = int(job.deadline + TOKEN_GRACE_SECONDS)
        return callback_url(self.base_url, self.conn_id, job.job_id, chunk, self.secret, expires_at)


def callback_target(settings: ModelbitSettings, job: CallbackJob, delivery_margin: float) -> CallbackTarget:
    """
    Check the connection, as this process reads it, before a submission is opened: it must still
    point at the job's workspace and carry the callback settings (the receiver needs them).

    The worker and the triggerer each read the connection themselves (their environments may
    define it differently, and it may be edited while the task waits), so both check here. The
    branch and version are the job's own in every request from the triggerer, and the worker
    compares its resolved ones with the job's before it submits (:meth:`CallbackJob.mismatch`).
    """
    conn_id = job.request.conn_id
    _refuse_another_workspace(settings, job)
    if not settings.callback_base_url:
        raise ModelbitConnectionError(
            f"Connection {conn_id!r} has no 'callback_base_url': set it to the public https URL of "
            "the callback receiver (e.g. https://airflow.example.com/modelbit), or run the task with "
            "deferrable=False."
        )
    secret = check_secret(settings.callback_secret, conn_id)
    return CallbackTarget(
        str(settings.callback_base_url), secret, conn_id, job.request.timeout_seconds, delivery_margin
    )


def _refuse_another_workspace(settings: ModelbitSettings, job: CallbackJob) -> None:
    """Every chunk of a job goes to the workspace its first chunks went to, or none does."""
    submitted_to = job.request.workspace_url
    if settings.base_url != submitted_to:
        now = safe_url(settings.base_url)
        raise ModelbitConnectionError(
            f"Connection {job.request.conn_id!r} now points at {now}; callback job {job.job_id} was "
            f"submitted to {safe_url(submitted_to)}. Nothing was submitted to {now}. Point the "
            "connection back at the job's workspace, or clear the task to start over on the new one."
        )


class ChunkSubmission:
    """
    The ledger's side of submitting chunks of one job (see the module docstring).

    :param store: the callback store holding the job.
    :param job: the job; saved after every transition.
    :param target: the webhook settings.
    :param log: where an uncertain submission is reported.
    """

    def __init__(self, store: CallbackStore, job: CallbackJob, target: CallbackTarget, log: Any) -> None:
        self.store = store
        self.job = job
        self.target = target
        self.log = log
        self._claimed: set[int] = set()

    def open(self) -> None:
        """Save the job with a deadline before the first request (the receiver keeps only saved jobs')."""
        self.job.extend_deadline(time.time() + self.target.timeout_seconds + self.target.delivery_margin)
        save_job(self.store, self.job)

    def begin(self, chunk: int) -> str | None:
        """
        Count and claim an attempt before its request; return its webhook URL, or ``None`` when
        nothing may be sent: another triggerer already sent this attempt (its delivery is
        awaited), or the job was retired meanwhile (the caller's next look at the store says so).
        """
        job, now = self.job, time.time()
        job.mark_sent(chunk, now)
        # Every chunk gets its full time from its own submission, not from the first one's.
        job.extend_deadline(now + self.target.timeout_seconds + self.target.delivery_margin)
        claimed = self.store.claim_submission(job.job_id, chunk, job.chunks[chunk].attempts)
        if not save_job(self.store, job):  # a retry must know this request may have gone out
            return None
        if claimed:
            self._claimed.add(chunk)
        else:
            self.log.info(
                "Chunk %d of job %s (attempt %d) was sent by another triggerer; awaiting its delivery.",
                chunk, job.job_id, job.chunks[chunk].attempts,
            )  # fmt: skip
            return None
        return self.target.webhook_url(job, chunk)

    def accepted(self, chunk: int, batch_id: str | None) -> None:
        self._claimed.discard(chunk)
        self.job.accept(chunk, batch_id)
        save_job(self.store, self.job)

    def failed(self, chunk: int, error: ModelbitError) -> bool:
        """
        Record a failed submission; return ``True`` when Modelbit did not take it (see the module
        docstring): the caller then stops with ``error``.
        """
        self._claimed.discard(chunk)
        job = self.job
        if not error.request_sent or error.refused:
            self._give_back(chunk)  # nothing was queued: sending it again is safe
            return True
        # Modelbit may have accepted it: its delivery is awaited like the others.
        self.log.warning("Chunk %d of job %s: %s Awaiting its delivery.", chunk, job.job_id, error.message)
        return False

    def withdraw(self, chunk: int) -> None:
        """Give back an attempt this process claimed but never sent (it stopped in between)."""
        if chunk not in self._claimed:
            return
        self._claimed.discard(chunk)
        self._give_back(chunk)

    def _give_back(self, chunk: int) -> None:
        job = self.job
        self.store.release_submission(job.job_id, chunk, job.chunks[chunk].attempts)
        job.mark_not_sent(chunk)
        save_job(self.store, self.job)
