"""Which failures are re-sent and how long to wait (hooks/retries.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from airflow_provider_modelbit.exceptions import (
    ModelbitAuthError,
    ModelbitBadRequest,
    ModelbitDeploymentError,
    ModelbitError,
    ModelbitRateLimited,
    ModelbitTimeout,
    ModelbitTransportError,
)
from airflow_provider_modelbit.hooks.retries import (
    BAD_GATEWAY,
    IDEMPOTENT_RESEND,
    NOT_SENT,
    RATE_LIMITED,
    UNAVAILABLE,
    RetryPolicy,
    RetrySchedule,
    RetryStats,
    parse_retry_after,
    retry_verdict,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


class TestRetryVerdict:
    @pytest.mark.parametrize(
        ("error", "sent", "idempotent", "reason"),
        [
            pytest.param(ModelbitTransportError("refused"), False, False, NOT_SENT, id="not-sent"),
            pytest.param(ModelbitRateLimited("429", status=429), True, False, RATE_LIMITED, id="429"),
            pytest.param(
                ModelbitRateLimited("RateLimitExceeded", status=200),
                True,
                False,
                RATE_LIMITED,
                id="message-on-200",
            ),
            pytest.param(ModelbitTransportError("502", status=502), True, False, BAD_GATEWAY, id="502"),
            pytest.param(ModelbitTransportError("503", status=503), True, False, UNAVAILABLE, id="503"),
            pytest.param(
                ModelbitDeploymentError("boom", status=200), True, False, None, id="deployment-error"
            ),
            pytest.param(ModelbitTimeout("read timeout"), True, False, None, id="read-timeout"),
            pytest.param(ModelbitTimeout("504", status=504), True, False, None, id="504"),
            pytest.param(ModelbitTransportError("dropped after send"), True, False, None, id="dropped"),
            pytest.param(ModelbitTransportError("500 html", status=500), True, False, None, id="500"),
            pytest.param(ModelbitAuthError("401", status=401), True, True, None, id="auth-never"),
            pytest.param(ModelbitBadRequest("400", status=400), True, True, None, id="bad-request-never"),
            pytest.param(
                ModelbitDeploymentError("boom"), True, True, IDEMPOTENT_RESEND, id="idem-deployment"
            ),
            pytest.param(ModelbitTimeout("read timeout"), True, True, IDEMPOTENT_RESEND, id="idem-timeout"),
            pytest.param(ModelbitTransportError("dropped"), True, True, IDEMPOTENT_RESEND, id="idem-dropped"),
        ],
    )
    def test_resends_only_where_the_model_cannot_have_run_or_the_server_asks(
        self, error: ModelbitError, sent: bool, idempotent: bool, reason: str | None
    ) -> None:
        verdict = retry_verdict(error, request_sent=sent, idempotent=idempotent)
        assert (verdict.reason if verdict else None) == reason

    def test_idempotent_resend_is_flagged_as_possible_rescoring(self) -> None:
        verdict = retry_verdict(ModelbitDeploymentError("boom"), request_sent=True, idempotent=True)
        assert verdict is not None and verdict.may_rescore
        safe = retry_verdict(ModelbitRateLimited("429", status=429), request_sent=True, idempotent=True)
        assert safe is not None and not safe.may_rescore

    @pytest.mark.parametrize(
        ("message", "spends"),
        [
            ("RateLimitExceeded: Concurrency request count limit reached", False),
            ("RateLimitExceeded: Concurrency request size limit reached", False),
            ("RateLimitExceeded: 100 requests per minute", True),
            ("429", True),
        ],
    )
    def test_only_a_quota_refusal_spends_an_attempt(self, message: str, spends: bool) -> None:
        """Room under an in-flight cap returns as requests finish: waiting for it is bounded by time."""
        verdict = retry_verdict(ModelbitRateLimited(message, status=429), request_sent=True, idempotent=False)
        assert verdict is not None and verdict.spends_attempt is spends


class TestParseRetryAfter:
    @pytest.mark.parametrize(
        ("header", "seconds"),
        [
            ("3", 3.0),
            ("0", 0.0),
            (" 1.5 ", 1.5),
            (format_datetime(NOW + timedelta(seconds=7), usegmt=True), 7.0),
            (format_datetime(NOW - timedelta(seconds=7), usegmt=True), 0.0),
            (None, None),
            ("", None),
            ("soon", None),
        ],
    )
    def test_reads_seconds_and_http_dates(self, header: str | None, seconds: float | None) -> None:
        assert parse_retry_after(header, now=NOW) == seconds


class TestRetrySchedule:
    def test_backoff_grows_exponentially_within_jitter_bounds(self) -> None:
        policy = RetryPolicy(max_attempts=10, initial_wait=1.0, max_wait=100.0, max_total_wait=1000.0)
        schedule = RetrySchedule(policy)
        waits = [schedule.next_wait(None) for _ in range(4)]
        for number, wait in enumerate(waits, start=1):
            ceiling = 2 ** (number - 1)
            assert wait is not None and ceiling / 2 <= wait <= ceiling

    def test_retry_after_is_honoured(self) -> None:
        wait = RetrySchedule(RetryPolicy()).next_wait(4.0)
        assert wait is not None and 4.0 <= wait <= 4.1

    def test_attempts_are_bounded(self) -> None:
        schedule = RetrySchedule(RetryPolicy(max_attempts=3, initial_wait=0.01))
        assert [schedule.next_wait(None) is not None for _ in range(3)] == [True, True, False]

    def test_total_wait_is_bounded(self) -> None:
        """A server asking for a wait longer than the budget ends the retries."""
        schedule = RetrySchedule(RetryPolicy(max_total_wait=5.0, max_wait=60.0))
        assert schedule.next_wait(3.0) is not None
        assert schedule.next_wait(3.0) is None

    def test_a_cap_refusal_waits_retry_after_until_the_time_budget_is_spent(self) -> None:
        schedule = RetrySchedule(RetryPolicy(max_attempts=3, max_total_wait=10.0))
        waits = [schedule.next_wait(1.0, spends_attempt=False) for _ in range(10)]
        assert all(wait is not None and 1.0 <= wait <= 1.1 for wait in waits[:9])
        assert waits[-1] is None
        assert schedule.tries == 10 and schedule.attempt == 1
        # Attempts still count the other failures, and start their backoff where they left it.
        fresh = RetrySchedule(RetryPolicy(max_attempts=3, initial_wait=0.01))
        fresh.next_wait(0.0, spends_attempt=False)
        assert [fresh.next_wait(None) is not None for _ in range(3)] == [True, True, False]

    def test_single_wait_is_capped(self) -> None:
        wait = RetrySchedule(RetryPolicy(max_wait=2.0)).next_wait(3600.0)
        assert wait == 2.0


class TestRetryStats:
    def test_counts_by_reason(self) -> None:
        stats = RetryStats()
        stats.record(RATE_LIMITED)
        stats.record(RATE_LIMITED)
        stats.record(NOT_SENT)
        assert stats.as_dict() == {RATE_LIMITED: 2, NOT_SENT: 1}
