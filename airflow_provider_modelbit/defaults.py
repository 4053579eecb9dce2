"""Modelbit's protocol constants and the provider's defaults, each written once.

Hooks, operators and triggers import these names rather than repeating the values, so a default
cannot differ between the hook and an operator. Batch sizes and concurrency follow Modelbit's own
client (3,000 rows and 20 MB of JSON per request, 3 requests in parallel), see
``modelbit-rest-api`` §10.
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
#: Requests in flight at once for one batch.
DEFAULT_MAX_CONCURRENCY = 3

#: How long a callback job, its deliveries or its tombstone stay in the store after their last write.
DEFAULT_CALLBACK_RETENTION_SECONDS = 7 * 24 * 3600

__all__ = [
    "ASYNC_TIMEOUT_LIMIT",
    "DEFAULT_ASYNC_TIMEOUT_SECONDS",
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BRANCH",
    "DEFAULT_CALLBACK_RETENTION_SECONDS",
    "DEFAULT_CONN_ID",
    "DEFAULT_MAX_CONCURRENCY",
    "LATEST",
    "LINKS",
    "SYNC_TIMEOUT_LIMIT",
]
