"""``ModelbitCallbackTrigger``: wait in the triggerer until a job's webhook deliveries are in the store.

A triggerer may hold thousands of these at once, so they do not poll on their own: every trigger
in an event loop registers with one :class:`DeliveryWatcher`, which lists each watched job folder
once per poll interval in a worker thread (file-system and object-storage calls block) and
resolves the triggers whose deliveries are complete or whose deadline has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_modelbit.callbacks.signing import validate_chunk, validate_job_id
from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.defaults import DELIVERY_MARGIN_SECONDS
from airflow_provider_modelbit.exceptions import (
    ModelbitCallbackError,
    ModelbitError,
    ModelbitPermanentError,
    modelbit_error_class,
)

if TYPE_CHECKING:
    from airflow_provider_modelbit.callbacks.pacer import PacingResult

log = logging.getLogger(__name__)

TRIGGER_EVENT_STATUSES: frozenset[str] = frozenset({"success", "error", "timeout"})
DEFAULT_POLL_INTERVAL = 2.0
#: Longest pause between the pacer's looks at the store while it submits (slots free as deliveries land).
PACING_SCAN_SECONDS = 0.5
#: Longest pause between looks at a store that keeps failing (the backoff doubles up to this).
MAX_STORE_BACKOFF_SECONDS = 60.0
#: What a stop request says: Airflow cancels a trigger so for a user's action and for a takeover alike.
STOP_REASON = "trigger cancelled: task marked failed or success, cleared, or taken over by another triggerer"


@dataclass(eq=False)
class _Watch:
    """One trigger's wait: which chunks of which job, until when, and the future that ends it."""

    store_location: str
    job_id: str
    expected: frozenset[int]
    deadline: float
    poll_interval: float
    outcome: asyncio.Future[dict[str, Any]]
    next_scan: float = 0.0
    delivered: set[int] = field(default_factory=set)
    failures: int = 0

    def back_off(self, now: float) -> float:
        """Count a failed look at the store and return when to look again (doubling, capped)."""
        self.failures += 1
        pause = min(self.poll_interval * 2**self.failures, MAX_STORE_BACKOFF_SECONDS)
        self.next_scan = min(now + max(pause, self.poll_interval), self.deadline)
        return pause


class DeliveryWatcher:
    """
    Scan the callback store for every trigger waiting in one event loop.

    Obtain it with :meth:`for_running_loop`; it runs a single background task while at least
    one trigger waits and stops when none does.
    """

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DeliveryWatcher] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self._watches: set[_Watch] = set()
        self._stores: dict[str, CallbackStore] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_running_loop(cls) -> DeliveryWatcher:
        """Return the watcher of the running event loop, creating it on first use."""
        loop = asyncio.get_running_loop()
        watcher = cls._by_loop.get(loop)
        if watcher is None:
            watcher = cls._by_loop[loop] = cls()
        return watcher

    def watch(
        self, store_location: str, job_id: str, chunks: Iterable[int], deadline: float, poll_interval: float
    ) -> _Watch:
        """Register a wait; its ``outcome`` future resolves to the trigger event payload."""
        outcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        watch = _Watch(store_location, job_id, frozenset(chunks), deadline, poll_interval, outcome)
        self._watches.add(watch)
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="modelbit-callback-watcher")
        return watch

    def unwatch(self, watch: _Watch) -> None:
        """Forget a wait (its trigger finished or was cancelled)."""
        self._watches.discard(watch)
        self._wakeup.set()

    async def _run(self) -> None:
        while self._watches:
            try:
                await self._scan_due()
            except Exception:
                # Never let one bad pass end the task every trigger of this loop depends on;
                # _check already backs off per watch, this guards the loop itself.
                log.exception("Modelbit callback watcher pass failed; retrying")
                await asyncio.sleep(min(w.poll_interval for w in self._watches) if self._watches else 0)
                continue
            await self._sleep_until_next_scan()

    async def _scan_due(self) -> None:
        now = time.time()
        due = [watch for watch in self._watches if watch.next_scan <= now and not watch.outcome.done()]
        if not due:
            return
        outcomes = await asyncio.to_thread(self._scan, due, now)
        for watch, outcome in outcomes:
            if outcome is not None and not watch.outcome.done():
                watch.outcome.set_result(outcome)

    async def _sleep_until_next_scan(self) -> None:
        pending = [watch.next_scan for watch in self._watches if not watch.outcome.done()]
        self._wakeup.clear()
        # With nothing pending, wait for the next watch() or unwatch() rather than spin.
        delay = max(0.0, min(pending) - time.time()) if pending else None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=delay)

    def _scan(self, due: list[_Watch], now: float) -> list[tuple[_Watch, dict[str, Any] | None]]:
        """List each due job folder once (in a worker thread) and return the waits that are over."""
        outcomes = []
        for watch in due:
            watch.next_scan = min(now + watch.poll_interval, watch.deadline)
            outcomes.append((watch, self._check(watch, now)))
        return outcomes

    def _check(self, watch: _Watch, now: float) -> dict[str, Any] | None:
        try:
            outcome = self._look(watch)
        except Exception as error:
            # A storage hiccup is not a verdict on the job: keep waiting, further apart, until the deadline.
            pause = watch.back_off(now)
            log.warning(
                "Could not read callback store %s for job %s (failure %d; next look in %.0f s): %s: %s",
                watch.store_location, watch.job_id, watch.failures, pause, type(error).__name__, error,
            )  # fmt: skip
        else:
            if watch.failures:
                log.info("Callback store %s readable again for job %s", watch.store_location, watch.job_id)
                watch.failures = 0
            if outcome is not None:
                return outcome
        if now >= watch.deadline:
            return timeout_event(watch.job_id, watch.store_location, watch.expected, watch.delivered)
        return None

    def _look(self, watch: _Watch) -> dict[str, Any] | None:
        """Read the store once for ``watch``; return the completion event if every chunk is in."""
        store = self._store(watch.store_location)
        watch.delivered = store.delivered_chunks(watch.job_id) & watch.expected
        if watch.delivered != watch.expected:
            return None
        errors = sorted(c for c in watch.expected if store.delivery_kind(watch.job_id, c) == "error")
        return completion_event(watch.job_id, watch.store_location, watch.expected, errors)

    def _store(self, location: str) -> CallbackStore:
        store = self._stores.get(location)
        if store is None:
            store = self._stores[location] = CallbackStore(location)
        return store


def completion_event(
    job_id: str, store_location: str, chunks: Iterable[int], errors: list[int]
) -> dict[str, Any]:
    """Return the event payload once every expected chunk has a delivery."""
    expected = sorted(chunks)
    if errors:
        message = (
            f"Job {job_id}: {len(errors)} of {len(expected)} chunk(s) were delivered as errors: {errors}."
        )
    else:
        message = f"Job {job_id}: all {len(expected)} deliveries arrived."
    status = "error" if errors else "success"
    return _event(status, job_id, store_location, expected, errors, message)


def timeout_event(
    job_id: str, store_location: str, chunks: Iterable[int], delivered: set[int]
) -> dict[str, Any]:
    """Return the event payload when the deadline passes with deliveries missing."""
    expected = sorted(chunks)
    missing = [chunk for chunk in expected if chunk not in delivered]
    message = (
        f"Job {job_id}: {len(delivered)} of {len(expected)} deliveries arrived before the deadline; "
        f"missing chunk(s) {missing}."
    )
    return _event("timeout", job_id, store_location, expected, [], message)


def submission_error_fields(error: ModelbitError) -> dict[str, str]:
    """
    The event fields of a submission that failed in the triggerer: its message and error class,
    from which the task raises the same error (:func:`submission_error`).
    """
    return {"submission_error": error.message, "submission_error_type": type(error).__name__}


def submission_error(event: Mapping[str, Any]) -> ModelbitError:
    """
    The error a task raises for an event's ``submission_error``: of the class the triggerer
    recorded (a refused key stays a permanent ``ModelbitAuthError``), else ``ModelbitCallbackError``.
    """
    error_class = modelbit_error_class(event.get("submission_error_type"), ModelbitCallbackError)
    return error_class(str(event["submission_error"]))


def _event(
    status: str, job_id: str, store_location: str, chunks: list[int], errors: list[int], message: str
) -> dict[str, Any]:
    return {
        "status": status,
        "job_id": job_id,
        "store_location": store_location,
        "chunks": chunks,
        "errors": errors,
        "message": message,
    }


class ModelbitCallbackTrigger(BaseTrigger):
    """
    Wait until every expected webhook delivery of a job is in the callback store, then emit one event.

    The event is ``{"status": "success" | "error" | "timeout", "job_id", "store_location",
    "chunks", "errors", "message", "deferred_by_try"}``: ``errors`` lists chunks delivered as
    errors (the operator decides whether to resubmit them). It carries locations, never result
    data. The kwargs hold only identifiers, so the trigger is restart-safe: run from scratch, it
    finds deliveries that arrived meanwhile.

    :param job_id: the callback job, as in the webhook URLs and the store folder.
    :param chunks: chunk numbers whose deliveries are awaited.
    :param store_location: the callback store (ObjectStoragePath URL or folder).
    :param deadline: absolute unix time after which a ``timeout`` event is emitted. A wall-clock
        deadline, unlike a monotonic duration, survives the trigger moving to another triggerer.
    :param poll_interval: seconds between looks at the store.
    :param conn_id: the Modelbit connection the job was submitted with (for the reader's context only).
    :param deferred_by_try: the try of the task instance that deferred, echoed in the event as
        ``deferred_by_try`` so the operator can tell a resume of that try from a later try that
        Airflow resumed at the same point.
    :param max_concurrency: set when the worker left staged chunks to submit: the most chunks
        outstanding at once (the adaptive limit's ceiling). The trigger then submits every
        pending chunk of the job's ledger itself (see :mod:`~airflow_provider_modelbit.callbacks.pacer`),
        reading the connection in the triggerer, and waits for every chunk of the job; the event
        adds ``concurrency`` (the limit's final state) and, when a submission was not taken
        after the retry policy's attempts, ``submission_error`` and ``submission_error_type``
        (its error class). A permanent one (a refused key, an unknown deployment) ends the trigger at
        once; otherwise it still waits for the chunks already sent, if any.
    :param adaptive: adapt the limit (``False`` keeps ``max_concurrency``).
    :param delivery_margin: seconds past the inference time limit for a delivery to arrive.
    """

    def __init__(
        self,
        *,
        job_id: str,
        chunks: Iterable[int],
        store_location: str,
        deadline: float,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        conn_id: str | None = None,
        deferred_by_try: int | None = None,
        max_concurrency: int | None = None,
        adaptive: bool = True,
        delivery_margin: float = DELIVERY_MARGIN_SECONDS,
    ) -> None:
        super().__init__()
        self.job_id = validate_job_id(job_id)
        self.chunks = sorted({validate_chunk(int(chunk)) for chunk in chunks})
        if not self.chunks:
            raise ValueError(
                f"ModelbitCallbackTrigger for job {job_id!r} needs at least one chunk to wait for."
            )
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}.")
        self.store_location = str(store_location)
        self.deadline = float(deadline)
        self.poll_interval = float(poll_interval)
        self.conn_id = conn_id
        self.deferred_by_try = deferred_by_try
        self.max_concurrency = None if max_concurrency is None else int(max_concurrency)
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency!r}.")
        self.adaptive = bool(adaptive)
        self.delivery_margin = float(delivery_margin)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and the identifier-only kwargs the triggerer rebuilds the trigger from."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "chunks": list(self.chunks),
                "store_location": self.store_location,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "conn_id": self.conn_id,
                "deferred_by_try": self.deferred_by_try,
                "max_concurrency": self.max_concurrency,
                "adaptive": self.adaptive,
                "delivery_margin": self.delivery_margin,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Submit what the worker staged (paced), wait through the loop's shared watcher, yield one event."""
        chunks, deadline = self.chunks, self.deadline
        extra: dict[str, Any] = {"deferred_by_try": self.deferred_by_try}
        if self.max_concurrency is not None:
            pacing = await self._submit_staged()
            if pacing.retired:
                outcome = _event("error", self.job_id, self.store_location, self.chunks, [], "")
                extra["submission_error"] = f"Job {self.job_id} was retired while its chunks were submitted."
                yield TriggerEvent({**outcome, **extra, "message": extra["submission_error"]})
                return
            chunks, deadline = pacing.awaited or self.chunks, pacing.deadline
            extra["concurrency"] = pacing.concurrency
            if pacing.failure is not None:
                extra.update(submission_error_fields(pacing.failure))
                if isinstance(pacing.failure, ModelbitPermanentError) or not pacing.awaited:
                    # Nothing to wait for: the task fails for good on a permanent error, and with
                    # nothing sent no delivery can come.
                    outcome = _event("error", self.job_id, self.store_location, chunks, [], "")
                    yield TriggerEvent({**outcome, **extra, "message": pacing.failure.message})
                    return
        outcome = await self._wait(chunks, deadline)
        if "submission_error" in extra:
            outcome = {**outcome, "status": "error", "message": extra["submission_error"]}
        self.log.info("%s", outcome["message"])
        yield TriggerEvent({**outcome, **extra})

    async def _submit_staged(self) -> PacingResult:
        from airflow_provider_modelbit.callbacks.pacer import SubmissionPacer

        # Made in a worker thread: Airflow's S3 filesystem runs its own event loop while it is set up.
        store = await asyncio.to_thread(CallbackStore, self.store_location)
        pacer = SubmissionPacer(
            store,
            self.job_id,
            ceiling=cast("int", self.max_concurrency),
            adaptive=self.adaptive,
            delivery_margin=self.delivery_margin,
            scan_interval=min(self.poll_interval, PACING_SCAN_SECONDS),
            log=self.log,
        )
        return await pacer.run()

    async def _wait(self, chunks: Iterable[int], deadline: float) -> dict[str, Any]:
        expected = sorted(chunks)
        deadline_text = datetime.fromtimestamp(deadline, tz=timezone.utc).isoformat()
        self.log.info(
            "Waiting for %d Modelbit deliveries of job %s in %s until %s",
            len(expected), self.job_id, self.store_location, deadline_text,
        )  # fmt: skip
        watcher = DeliveryWatcher.for_running_loop()
        watch = watcher.watch(self.store_location, self.job_id, expected, deadline, self.poll_interval)
        try:
            return await watch.outcome
        finally:
            watcher.unwatch(watch)

    async def on_kill(self) -> None:
        """
        Ask the task to stop the job: leave a stop request in the store, delete nothing.

        Airflow 3.3 calls this when a user marks the deferred task failed or success or clears
        it, but also, with the same message, when this triggerer was thought dead and another
        one took the trigger over while the task still waits on the job. Only the worker can
        tell these apart, so the trigger never retires the job itself: a resume of this deferral
        withdraws the request, and the next try of the task retires the job (see
        :meth:`~airflow_provider_modelbit.callbacks.job_runner.JobRunner.job_for_try`). Nothing
        more is submitted from here either way: this trigger's pacing ended with its
        cancellation. Airflow 3.1 and 3.2 never call it; a job left there is replaced by the next
        try when it differs, and expires after ``[modelbit] callback_retention_seconds``.
        """
        try:
            requested = await asyncio.to_thread(self._request_stop)
        except Exception as error:
            # The next try still replaces a job that differs, and expiry removes it later.
            self.log.warning(
                "Could not leave a stop request for Modelbit job %s in %s: %s: %s",
                self.job_id, self.store_location, type(error).__name__, error,
            )  # fmt: skip
            return
        if requested:
            self.log.info(
                "Trigger of Modelbit job %s cancelled (%s); stop requested, the task decides what to keep.",
                self.job_id, STOP_REASON,
            )  # fmt: skip

    def _request_stop(self) -> bool:
        return CallbackStore(self.store_location).request_stop(self.job_id, STOP_REASON)
