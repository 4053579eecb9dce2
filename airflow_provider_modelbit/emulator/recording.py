"""
What the emulator records for inspection: requests, model runs per batch row ID, async batches.

API keys are never recorded: a request record only says whether an ``Authorization`` header
was present.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from operator import itemgetter
from typing import Any

import orjson

REQUEST_LOG_SIZE = 10_000
RECORDED_BODY_BYTES = 4 * 1024
REDACTED_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
# Row IDs not yet counted, in their JSON form. Past this they are all counted at once, so a server
# nobody asks for counts holds a bounded backlog (about nine million IDs).
UNCOUNTED_ID_BYTES = 64 * 1024 * 1024


def _visible_headers(headers: dict[str, str]) -> dict[str, str]:
    return {name: ("<redacted>" if name in REDACTED_HEADERS else value) for name, value in headers.items()}


class Recorder:
    """
    In-memory logs behind the ``/_emulator/`` inspection routes.

    What it keeps of an answered request is its record as one bytes object (JSON), and its row
    IDs appended to one buffer per deployment (JSON) until the counts are read. As Python objects
    (a record's dict, header strings and numbers; a counter entry per ID) they stayed behind among
    the memory of each request's parsed rows and spread every later request's rows thinner: after
    ten million rows the server spent about a third more CPU per row, and counting each request's
    IDs as it came cost a tenth of its time besides.
    """

    def __init__(self) -> None:
        self._open_requests: dict[int, dict[str, Any]] = {}
        self._answered_requests: deque[bytes] = deque(maxlen=REQUEST_LOG_SIZE)
        self._runs: dict[str, Counter[Any]] = {}
        self._uncounted: dict[str, bytearray] = {}
        self._uncounted_bytes = 0
        self.batches: dict[str, dict[str, Any]] = {}

    def record_request(
        self, method: str, path: str, headers: dict[str, str], body: bytes, workspace: str
    ) -> dict[str, Any]:
        """Start a request record; the caller fills in ``status`` and details, then :meth:`finish_request`."""
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
        self._open_requests[id(record)] = record
        return record

    def finish_request(self, record: dict[str, Any]) -> None:
        """File an answered request's record (one started before :meth:`reset` is dropped)."""
        if self._open_requests.pop(id(record), None) is not None:
            self._answered_requests.append(orjson.dumps(record, default=str))  # as the route sends it

    def requests(self) -> list[dict[str, Any]]:
        """The last :data:`REQUEST_LOG_SIZE` answered requests and those being answered, oldest first."""
        answered = [orjson.loads(record) for record in self._answered_requests]
        return sorted([*answered, *self._open_requests.values()], key=itemgetter("time"))

    def count_runs(self, deployment: str, row_ids: list[Any]) -> None:
        """Note one model run for each of ``row_ids`` (counted when read: see the class)."""
        if not row_ids:
            return
        encoded = orjson.dumps(row_ids)
        uncounted = self._uncounted.setdefault(deployment, bytearray(b"["))
        if len(uncounted) > 1:
            uncounted += b","
        uncounted += memoryview(encoded)[1:-1]
        self._uncounted_bytes += len(encoded)
        if self._uncounted_bytes > UNCOUNTED_ID_BYTES:
            self._count_uncounted()

    def runs_of(self, deployment: str) -> dict[str, int]:
        """Model runs per row ID of ``deployment``, IDs by their text (``1`` and ``"1"`` are one row)."""
        self._count_uncounted()
        runs: Counter[str] = Counter()
        for row_id, count in self._runs.get(deployment, {}).items():
            runs[str(row_id)] += count
        return dict(runs)

    def _count_uncounted(self) -> None:
        for deployment, uncounted in self._uncounted.items():
            uncounted += b"]"
            ids = orjson.loads(uncounted)
            try:
                hash(tuple(ids))
            except TypeError:  # an unhashable ID (a list): every ID by its text, as all are read
                ids = [str(row_id) for row_id in ids]
            # IDs as sent, turned into text only when read: str() per row costs throughput.
            self._runs.setdefault(deployment, Counter()).update(ids)
        self._uncounted.clear()
        self._uncounted_bytes = 0

    def new_batch(self, batch_id: str, **details: Any) -> dict[str, Any]:
        batch = {"batchId": batch_id, "created": time.time(), "state": "queued", "attempts": [], **details}
        self.batches[batch_id] = batch
        return batch

    def reset(self) -> None:
        self._open_requests.clear()
        self._answered_requests.clear()
        self._runs.clear()
        self._uncounted.clear()
        self._uncounted_bytes = 0
        self.batches.clear()
