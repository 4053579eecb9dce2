"""
What the emulator records for inspection: requests, model runs per batch row ID, async batches.

API keys are never recorded: a request record only says whether an ``Authorization`` header
was present.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

REQUEST_LOG_SIZE = 10_000
RECORDED_BODY_BYTES = 4 * 1024
REDACTED_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


def _visible_headers(headers: dict[str, str]) -> dict[str, str]:
    return {name: ("<redacted>" if name in REDACTED_HEADERS else value) for name, value in headers.items()}


class Recorder:
    """In-memory logs behind the ``/_emulator/`` inspection routes."""

    def __init__(self) -> None:
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.runs: dict[str, Counter[Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}

    def record_request(
        self, method: str, path: str, headers: dict[str, str], body: bytes, workspace: str
    ) -> dict[str, Any]:
        """Start a request record; the caller fills in ``status`` and details as it answers."""
        record: dict[str, Any] = {
            "time": time.time(),
            "method": method,
            "path": path,
            "workspace": workspace,
            "headers": _visible_headers(headers),
            "has_authorization": bool(headers.get("authorization")),
            "body_bytes": len(body),
            "body": body.decode("utf-8", "replace") if len(body) <= RECORDED_BODY_BYTES else None,
            "status": None,
        }
        self.requests.append(record)
        return record

    def count_runs(self, deployment: str, row_ids: Iterable[Any]) -> None:
        # IDs are counted as sent and turned into strings only when read: str() per row costs throughput.
        counter = self.runs.setdefault(deployment, Counter())
        ids = list(row_ids)
        try:
            counter.update(ids)
        except TypeError:  # an unhashable ID such as a list
            counter.update(map(str, ids))

    def runs_of(self, deployment: str) -> dict[str, int]:
        runs: Counter[str] = Counter()
        for row_id, count in self.runs.get(deployment, {}).items():
            runs[str(row_id)] += count
        return dict(runs)

    def new_batch(self, batch_id: str, **details: Any) -> dict[str, Any]:
        batch = {"batchId": batch_id, "created": time.time(), "state": "queued", "attempts": [], **details}
        self.batches[batch_id] = batch
        return batch

    def reset(self) -> None:
        self.requests.clear()
        self.runs.clear()
        self.batches.clear()
