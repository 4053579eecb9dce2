"""
Metrics of Modelbit calls, emitted through Airflow's ``Stats``.

Every metric is sent from here, so the names, tags and units are written once. ``Stats`` sends
them to StatsD or OpenTelemetry as the ``[metrics]`` section of the Airflow configuration says
(nothing is sent when metrics are off). Names start with ``modelbit.``; Airflow adds its own
``[metrics] statsd_prefix`` or ``otel_prefix`` in front. Tags carry the deployment (and the retry
reason or request outcome); StatsD shows them only with ``statsd_influxdb_enabled`` or DogStatsD.

The hooks call :func:`request_succeeded` and :func:`request_failed` for every attempt; the
deferrable operators call :func:`deferred_wait` when they resume and :func:`rows_scored` when
they have collected every delivery.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

from airflow_provider_modelbit.hooks.retries import (
    BAD_GATEWAY,
    IDEMPOTENT_RESEND,
    NOT_SENT,
    RATE_LIMITED,
    UNAVAILABLE,
)

log = logging.getLogger(__name__)

#: Requests answered or failed, tagged ``outcome`` (``success``, ``retried``, ``failed``).
REQUESTS = "modelbit.requests"
#: Rows (or single inputs) in answered requests, and in a deferred task's collected deliveries.
ROWS_SCORED = "modelbit.rows_scored"
#: Requests sent again, tagged ``reason``.
RETRIES = "modelbit.retries"
#: 429 answers (each is also counted in ``modelbit.retries`` as ``rate_limited``).
RATE_LIMITED_ANSWERS = "modelbit.rate_limited"
#: Time from sending a request to its answer (timer, milliseconds).
REQUEST_LATENCY = "modelbit.request_latency"
#: Time from a deferred job's first submission to the task's resumption (timer, milliseconds).
DEFERRED_WAIT = "modelbit.deferred_wait"

ALL_METRICS = (REQUESTS, ROWS_SCORED, RETRIES, RATE_LIMITED_ANSWERS, REQUEST_LATENCY, DEFERRED_WAIT)

# Retry reasons are sentences in logs; metrics backends want short tag values.
_REASON_TAGS = {
    NOT_SENT: "not_sent",
    RATE_LIMITED: "rate_limited",
    BAD_GATEWAY: "bad_gateway",
    UNAVAILABLE: "unavailable",
    IDEMPOTENT_RESEND: "idempotent_resend",
}


def request_succeeded(deployment: str, rows: int, seconds: float) -> None:
    """Count an answered request, the rows it scored (a single input is one) and its latency."""
    tags = {"deployment": deployment}
    _emit("incr", REQUESTS, tags={**tags, "outcome": "success"})
    rows_scored(deployment, rows)
    _emit("timing", REQUEST_LATENCY, timedelta(seconds=seconds), tags=tags)


def rows_scored(deployment: str, rows: int) -> None:
    """Count rows scored: by an answered request, or by a deferred task's deliveries once collected."""
    if rows:
        _emit("incr", ROWS_SCORED, rows, tags={"deployment": deployment})


def request_failed(deployment: str, retry_reason: str | None) -> None:
    """
    Count a failed attempt: retried for ``retry_reason``, or final when it is ``None``.

    :param retry_reason: a reason string of :mod:`~airflow_provider_modelbit.hooks.retries`.
    """
    tags = {"deployment": deployment}
    if retry_reason is None:
        _emit("incr", REQUESTS, tags={**tags, "outcome": "failed"})
        return
    _emit("incr", REQUESTS, tags={**tags, "outcome": "retried"})
    _emit("incr", RETRIES, tags={**tags, "reason": reason_tag(retry_reason)})
    if retry_reason == RATE_LIMITED:
        _emit("incr", RATE_LIMITED_ANSWERS, tags=tags)


def deferred_wait(deployment: str, seconds: float) -> None:
    """Record how long a deferred task waited for its deliveries."""
    _emit("timing", DEFERRED_WAIT, timedelta(seconds=max(seconds, 0.0)), tags={"deployment": deployment})


def reason_tag(reason: str) -> str:
    """The short tag value of a retry reason (``rate_limited``, ``unavailable``...)."""
    return _REASON_TAGS.get(reason) or re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_")


def _emit(kind: str, name: str, *args: Any, tags: dict[str, str]) -> None:
    # A metric must never fail or slow an inference: a misconfigured backend is logged, not raised.
    try:
        getattr(_stats(), kind)(name, *args, tags=tags)
    except Exception as error:
        log.debug("Could not emit metric %s: %s: %s", name, type(error).__name__, error)


def _stats() -> Any:
    try:
        from airflow.sdk.observability.stats import Stats
    except ImportError:  # Airflow 3.1: Stats lives in the core
        from airflow.stats import Stats
    return Stats


__all__ = [
    "ALL_METRICS",
    "DEFERRED_WAIT",
    "RATE_LIMITED_ANSWERS",
    "REQUESTS",
    "REQUEST_LATENCY",
    "RETRIES",
    "ROWS_SCORED",
    "deferred_wait",
    "reason_tag",
    "request_failed",
    "request_succeeded",
    "rows_scored",
]
