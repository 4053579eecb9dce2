"""Which failed requests are sent again, and how long to wait first.

A request is re-sent only when the model cannot have run (the connection failed before the
request went out) or when the server asks for it (429, 502, 503, or a rate-limit message in
any status, since the docs name the message but not always its status). A deployment error, a read
timeout or a connection dropped after sending may follow a model run that already happened
(and was billed, or wrote somewhere), so those are re-sent only for callers who declared the
inference idempotent.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from airflow_provider_modelbit.exceptions import (
    ModelbitDeploymentError,
    ModelbitError,
    ModelbitRateLimited,
    ModelbitTimeout,
    ModelbitTransportError,
)

NOT_SENT = "connection failed before sending"
RATE_LIMITED = "rate limited (429)"
BAD_GATEWAY = "bad gateway (502)"
UNAVAILABLE = "service unavailable (503)"
IDEMPOTENT_RESEND = "idempotent re-send"

_SERVER_ASKS = {429: RATE_LIMITED, 502: BAD_GATEWAY, 503: UNAVAILABLE}
# How Modelbit's refusals by the workspace's in-flight caps begin ("... request count/size limit reached").
_CAPACITY_MESSAGE = "concurrency request"


def refused_for_capacity(error: ModelbitError) -> bool:
    """Tell whether a refusal names the workspace's in-flight caps: room returns as requests finish."""
    return _CAPACITY_MESSAGE in error.message.lower()


@dataclass(frozen=True)
class RetryVerdict:
    """
    Why a failed request is sent again.

    :param reason: one of the module's reason strings, used in logs and in the retry counters.
    :param may_rescore: the model may already have run, so rows may be scored twice.
    :param spends_attempt: counts against the policy's attempts. A refusal by an in-flight cap
        spends waiting time only: room returns as requests finish, and under a cap shared with
        other batches a batch holding no place may be refused many times before one frees.
    """

    reason: str
    may_rescore: bool = False
    spends_attempt: bool = True


def retry_verdict(error: ModelbitError, *, request_sent: bool, idempotent: bool) -> RetryVerdict | None:
    """
    Decide whether a failed request is sent again.

    :param error: the failure, already mapped to a Modelbit error.
    :param request_sent: whether the request may have reached the server.
    :param idempotent: the caller declared that running the model twice is harmless.
    """
    if not request_sent:
        return RetryVerdict(NOT_SENT)
    if isinstance(error, ModelbitRateLimited):
        # The server refused before running the model, whatever status carried the refusal.
        return RetryVerdict(RATE_LIMITED, spends_attempt=not refused_for_capacity(error))
    if isinstance(error, ModelbitTransportError) and error.status in _SERVER_ASKS:
        return RetryVerdict(_SERVER_ASKS[error.status])
    if idempotent and isinstance(error, ModelbitDeploymentError | ModelbitTimeout | ModelbitTransportError):
        return RetryVerdict(IDEMPOTENT_RESEND, may_rescore=True)
    return None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Read ``Retry-After`` given in seconds or as an HTTP date; ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """
    How many times and how long to retry.

    :param max_attempts: attempts in all, the first one included; refusals by an in-flight cap
        are not counted (see :class:`RetryVerdict`).
    :param initial_wait: seconds before the first retry, doubled each time; a server's
        ``Retry-After`` is waited when longer, so a request refused again and again backs off
        however short a wait the server names.
    :param max_wait: longest single wait, also capping a server's ``Retry-After``.
    :param max_total_wait: longest time spent waiting across all retries of one request.
    """

    max_attempts: int = 6
    initial_wait: float = 0.5
    max_wait: float = 30.0
    max_total_wait: float = 120.0

    def backoff(self, retry_number: int) -> float:
        """Exponential backoff with jitter (half fixed, half random) so parallel clients spread out."""
        ceiling = min(self.max_wait, self.initial_wait * 2 ** (retry_number - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass
class RetrySchedule:
    """
    The retry budget of one request: counts attempts, tries and time waited.

    :param policy: the limits to respect.
    """

    policy: RetryPolicy
    attempt: int = 1
    tries: int = 1
    waited: float = 0.0

    def next_wait(self, retry_after: float | None, *, spends_attempt: bool = True) -> float | None:
        """
        Return how long to wait before the next try, or ``None`` when the budget is spent.

        The backoff doubles with the attempts spent, so a refusal by an in-flight cap, which
        spends none, waits what ``Retry-After`` asks (Modelbit's caps ask 1 s) until the time
        budget is spent.
        """
        if spends_attempt and self.attempt >= self.policy.max_attempts:
            return None
        wait = self.policy.backoff(self.attempt)
        if retry_after is not None:
            wait = max(wait, max(retry_after, 0.0) + random.uniform(0, 0.1))
        wait = min(wait, self.policy.max_wait)
        if self.waited + wait > self.policy.max_total_wait:
            return None
        if spends_attempt:
            self.attempt += 1
        self.tries += 1
        self.waited += wait
        return wait


@dataclass
class RetryStats:
    """Counters of retries made, by reason; safe to update from several threads."""

    counts: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, reason: str) -> None:
        with self._lock:
            self.counts[reason] += 1

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)
