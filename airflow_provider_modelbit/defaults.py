"""Modelbit's protocol constants and the provider's defaults, each written once.

Hooks, operators and triggers import these names rather than repeating the values, so a default
cannot differ between the hook and an operator. Batch sizes and concurrency follow Modelbit's own
client (3,000 rows and 20 MB of JSON per request), see ``modelbit-rest-api`` §10; where that client
always runs 3 requests in parallel, a batch here adapts its concurrency up to a ceiling.
"""

from __future__ import annotations

#: The Airflow connection id used when a task names none.
DEFAULT_CONN_ID = "modelbit_default"
#: The version segment of a deployment URL meaning "the newest version".
LATEST = "latest"
#: The branch a deployment URL names when neither the call nor the connection names one.
DEFAULT_BRANCH = "main"
#: The ``response_format`` asking for results as a download link.
LINKS = "links"

#: Longest ``timeout_seconds`` Modelbit accepts on a synchronous request.
SYNC_TIMEOUT_LIMIT = 300
#: Longest ``timeout_seconds`` Modelbit accepts on an asynchronous (webhook) request.
ASYNC_TIMEOUT_LIMIT = 900
#: Inference time limit of an asynchronous request when neither the task nor the connection sets one.
DEFAULT_ASYNC_TIMEOUT_SECONDS = 300

#: Rows per request (and per checkpointed chunk of the batch operator).
DEFAULT_BATCH_SIZE = 3_000
#: Most bytes of JSON per request body; a larger chunk is split into several requests.
DEFAULT_BATCH_BYTES = 20_000_000
#: Most requests in flight at once for one batch: the ceiling of the adaptive limit, or the fixed level.
DEFAULT_MAX_CONCURRENCY = 16
#: Whether a batch adapts its requests in flight to the deployment's answers (see ``hooks/concurrency.py``).
DEFAULT_ADAPTIVE_CONCURRENCY = True
#: Requests in flight an adaptive batch starts with, before any answer: the level Modelbit's own
#: client always keeps, so no deployment sees more at first from a batch than from it.
DEFAULT_INITIAL_CONCURRENCY = 3
#: A round trip of answers, each slower than this multiple of the fastest one, counts as congestion.
DEFAULT_LATENCY_TOLERANCE = 2.0
#: Latency that counts as congestion also exceeds the fastest answer's multiple by this much, so the
#: jitter of a busy worker does not pass for a queue on a deployment that answers in milliseconds.
LATENCY_SLACK_SECONDS = 0.05
#: Round trips spent at the level below a refused one before probing it again; doubled on each
#: refused probe (up to a quarter of the square of the places held, and ``MAX_PROBE_ROUND_TRIPS``),
#: and back to this once a probe is answered.
FIRST_PROBE_ROUND_TRIPS = 4
#: Longest wait, in round trips, between two probes past a level that was refused.
MAX_PROBE_ROUND_TRIPS = 16
#: Refused probes leave one place free for a round trip per this many places held, summed over the
#: probes: a batch holding 8 places leaves one at each refused probe, a batch holding 2 at every fourth.
PLACES_PER_PLACE_LEFT_FREE = 8
#: Seconds between two log lines about the concurrency limit's decisions.
CONCURRENCY_LOG_INTERVAL_SECONDS = 10.0

#: Time past the inference limit for a webhook delivery to arrive (Modelbit retries deliveries for ~31 s).
DELIVERY_MARGIN_SECONDS = 120

#: How long a callback job, its deliveries or its tombstone stay in the store after their last write.
DEFAULT_CALLBACK_RETENTION_SECONDS = 7 * 24 * 3600

__all__ = [
    "ASYNC_TIMEOUT_LIMIT",
    "CONCURRENCY_LOG_INTERVAL_SECONDS",
    "DEFAULT_ADAPTIVE_CONCURRENCY",
    "DEFAULT_ASYNC_TIMEOUT_SECONDS",
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BRANCH",
    "DEFAULT_CALLBACK_RETENTION_SECONDS",
    "DEFAULT_CONN_ID",
    "DEFAULT_INITIAL_CONCURRENCY",
    "DEFAULT_LATENCY_TOLERANCE",
    "DEFAULT_MAX_CONCURRENCY",
    "DELIVERY_MARGIN_SECONDS",
    "FIRST_PROBE_ROUND_TRIPS",
    "LATENCY_SLACK_SECONDS",
    "LATEST",
    "LINKS",
    "MAX_PROBE_ROUND_TRIPS",
    "PLACES_PER_PLACE_LEFT_FREE",
    "SYNC_TIMEOUT_LIMIT",
]
