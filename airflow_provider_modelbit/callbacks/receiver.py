"""The ASGI app that receives Modelbit webhook deliveries and puts them in the callback store.

Route: ``POST /v1/callbacks/{conn_id}/{job_id}/{chunk}?expires=<unix>&token=<hex>``. The token
is checked before the body is read; the body is streamed to a spooled temporary file with a
size cap, checked to be a Modelbit response (``{"data": ...}`` or ``{"error": ...}``), and
only then written to the store. Every rejection is a 4xx and stores nothing.

A valid delivery is stored only for a job a task is waiting for: its manifest is in the store
and it is not retired. A delivery for a retired job (a tombstone: the task was marked failed or
success, cleared, killed or timed out) or for a job the store does not know (finished and
removed, or expired) is acknowledged with a 2xx, so Modelbit stops redelivering it, and dropped.
The answer's ``outcome`` says which.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from airflow_provider_modelbit.callbacks.signing import (
    CONN_ID_PATTERN,
    JOB_ID_PATTERN,
    MAX_CHUNK,
    InvalidToken,
    verify_token,
)
from airflow_provider_modelbit.callbacks.store import CallbackStore, DeliveryKind, callback_retention_seconds

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024
SECRET_CACHE_SECONDS = 60.0
_SPOOL_IN_MEMORY_BYTES = 1024 * 1024
_READ_PIECE_BYTES = 1024 * 1024
_FULL_PARSE_LIMIT_BYTES = 8 * 1024 * 1024
#: Seconds between two expiry passes of one receiver over its store.
EXPIRY_SWEEP_INTERVAL_SECONDS = 3600.0

STORED = "stored"
ALREADY_STORED = "already stored"
DROPPED_RETIRED = "dropped: job retired"
DROPPED_UNKNOWN = "dropped: job not awaited"
#: What the receiver did with a valid delivery; every one is answered 200.
DELIVERY_OUTCOMES: frozenset[str] = frozenset({STORED, ALREADY_STORED, DROPPED_RETIRED, DROPPED_UNKNOWN})


class DeliveryRejected(Exception):
    """A delivery the receiver refuses; ``status`` is the HTTP status answered."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ConnectionSecretSource:
    """
    Callback secrets read from Airflow Connections, cached briefly so a burst of deliveries costs one lookup.

    :param allowed_conn_ids: if given, only these connection ids are accepted in URLs.
    :param ttl_seconds: how long a looked-up secret (or its absence) is reused.
    """

    def __init__(
        self, allowed_conn_ids: frozenset[str] | None = None, ttl_seconds: float = SECRET_CACHE_SECONDS
    ):
        self.allowed_conn_ids = allowed_conn_ids
        self.ttl_seconds = ttl_seconds
        self._cache: dict[str, tuple[float, str | None]] = {}

    def __repr__(self) -> str:
        return f"ConnectionSecretSource(allowed_conn_ids={self.allowed_conn_ids!r})"

    async def secret_for(self, conn_id: str) -> str | None:
        """Return the ``callback_secret`` of ``conn_id``, or ``None`` if it is unknown or has none."""
        if self.allowed_conn_ids is not None and conn_id not in self.allowed_conn_ids:
            return None
        cached = self._cache.get(conn_id)
        if cached and time.monotonic() - cached[0] < self.ttl_seconds:
            return cached[1]
        secret = await asyncio.to_thread(_read_callback_secret, conn_id)
        self._cache[conn_id] = (time.monotonic(), secret)
        return secret


def _read_callback_secret(conn_id: str) -> str | None:
    from airflow.sdk import BaseHook

    try:
        connection = BaseHook.get_connection(conn_id)
    except Exception:
        log.warning("Callback for unknown connection %r rejected.", conn_id)
        return None
    secret = connection.extra_dejson.get("callback_secret")
    return secret if isinstance(secret, str) and secret else None


class StaticSecretSource:
    """
    Fixed secrets per connection id, for tests and embedded use.

    :param secrets: connection id -> callback secret.
    """

    def __init__(self, secrets: dict[str, str]) -> None:
        self._secrets = dict(secrets)

    def __repr__(self) -> str:
        return f"StaticSecretSource(conn_ids={sorted(self._secrets)!r})"

    async def secret_for(self, conn_id: str) -> str | None:
        """Return the secret configured for ``conn_id``, or ``None``."""
        return self._secrets.get(conn_id)


def classify_delivery(body: IO[bytes], size: int) -> DeliveryKind:
    """
    Return what a delivery body holds; raise :class:`DeliveryRejected` (400) if it is not a Modelbit response.

    Small bodies are parsed whole; large ones are validated with a streaming parser so memory stays flat.
    """
    body.seek(0)
    kind = _classify_parsed(body.read()) if size <= _FULL_PARSE_LIMIT_BYTES else _classify_streamed(body)
    body.seek(0)
    return kind


def _classify_parsed(raw: bytes) -> DeliveryKind:
    import orjson

    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise DeliveryRejected(400, f"Delivery body is not valid JSON: {error}.") from None
    if not isinstance(document, dict):
        raise DeliveryRejected(400, "Delivery body must be a JSON object with 'data' or 'error'.")
    return _kind_of(set(document), document.get("data"))


def _classify_streamed(body: IO[bytes]) -> DeliveryKind:
    import ijson

    keys: set[str] = set()
    data_string: Any = None
    try:
        events = ijson.parse(body)
        if next(events, (None, None, None))[1] != "start_map":
            raise DeliveryRejected(400, "Delivery body must be a JSON object with 'data' or 'error'.")
        for prefix, event, value in events:
            if prefix == "" and event == "map_key":
                keys.add(value)
            elif prefix == "data" and event == "string":
                data_string = value
    except ijson.JSONError as error:
        raise DeliveryRejected(400, f"Delivery body is not valid JSON: {error}.") from None
    return _kind_of(keys, data_string)


def _kind_of(keys: set[str], data: Any) -> DeliveryKind:
    if "error" in keys:
        return "error"
    if "data" not in keys:
        raise DeliveryRejected(400, "Delivery body has neither 'data' nor 'error'.")
    if isinstance(data, str) and data.startswith(("https://", "http://")):
        return "link"
    return "data"


def _parse_target(
    conn_id: str, job_id: str, chunk: str, expires: str | None, token: str | None
) -> tuple[int, int]:
    """Return ``(chunk, expires)`` as integers, or reject a URL that cannot have been issued by us."""
    if not CONN_ID_PATTERN.match(conn_id) or not JOB_ID_PATTERN.match(job_id) or ".." in job_id:
        raise DeliveryRejected(400, "Malformed callback URL: bad connection id or job id.")
    if not chunk.isdigit() or int(chunk) >= MAX_CHUNK:
        raise DeliveryRejected(400, "Malformed callback URL: chunk must be a non-negative integer.")
    if not expires or not expires.isdigit() or not token:
        raise DeliveryRejected(
            400, "Malformed callback URL: 'expires' and 'token' query parameters required."
        )
    return int(chunk), int(expires)


async def _spool_body(request: Request, max_bytes: int) -> tuple[IO[bytes], int]:
    """Stream the body into a spooled temporary file, stopping as soon as it passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise DeliveryRejected(413, f"Delivery body of {declared} bytes exceeds the {max_bytes}-byte limit.")
    # Closed by the caller once stored, or below when the body is refused.
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115
    size = 0
    try:
        async for piece in request.stream():
            size += len(piece)
            if size > max_bytes:
                raise DeliveryRejected(413, f"Delivery body exceeds the {max_bytes}-byte limit.")
            spool.write(piece)
    except BaseException:
        spool.close()
        raise
    return spool, size


def _read_pieces(body: IO[bytes]) -> Iterator[bytes]:
    while piece := body.read(_READ_PIECE_BYTES):
        yield piece


class CallbackReceiver:
    """
    Verify and store webhook deliveries; the request handling behind :func:`create_callback_app`.

    :param store: where deliveries go; ``None`` opens the configured store on first use.
    :param secrets: where callback secrets come from (``secret_for(conn_id)``).
    :param max_body_bytes: largest accepted delivery body.
    :param retention_seconds: age past which jobs and tombstones are expired; ``None`` reads
        ``[modelbit] callback_retention_seconds``.
    :param sweep_interval: seconds between two expiry passes. A pass starts after a delivery
        is answered, in a worker thread, never on a request's path.
    """

    def __init__(
        self,
        store: CallbackStore | None,
        secrets: ConnectionSecretSource | StaticSecretSource,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        retention_seconds: float | None = None,
        sweep_interval: float = EXPIRY_SWEEP_INTERVAL_SECONDS,
    ) -> None:
        self._store = store
        self.secrets = secrets
        self.max_body_bytes = max_body_bytes
        self.retention_seconds = retention_seconds
        self.sweep_interval = sweep_interval
        self._next_sweep = 0.0
        self._sweeps: set[asyncio.Task[None]] = set()

    @property
    def store(self) -> CallbackStore:
        """The callback store, opened lazily so importing or mounting the app does no I/O."""
        if self._store is None:
            self._store = CallbackStore()
        return self._store

    async def receive(self, request: Request, conn_id: str, job_id: str, chunk_text: str) -> dict[str, Any]:
        """Check, spool, classify and store one delivery; return the JSON answer."""
        params = request.query_params
        chunk, expires = _parse_target(
            conn_id, job_id, chunk_text, params.get("expires"), params.get("token")
        )
        await self._verify(conn_id, job_id, chunk, expires, params["token"])
        body, size = await _spool_body(request, self.max_body_bytes)
        batch_id = request.headers.get("x-mb-batch-id", "")
        with body:
            kind, outcome = await asyncio.to_thread(
                self._classify_and_store, job_id, chunk, batch_id, body, size
            )
        log.info(
            "Modelbit delivery for job %s chunk %d (batch %s, %d bytes, %s): %s",
            job_id, chunk, batch_id or "-", size, kind, outcome,
        )  # fmt: skip
        self._maybe_sweep()
        stored = outcome == STORED
        return {"job_id": job_id, "chunk": chunk, "stored": stored, "kind": kind, "outcome": outcome}

    def _classify_and_store(
        self, job_id: str, chunk: int, batch_id: str, body: IO[bytes], size: int
    ) -> tuple[DeliveryKind, str]:
        """
        Validate and store a spooled body in one worker-thread hop (both block on I/O or CPU).

        :return: the kind, and the outcome: one of :data:`DELIVERY_OUTCOMES`.
        """
        kind = classify_delivery(body, size)
        # Late deliveries are acknowledged (so Modelbit stops redelivering) but never kept.
        if self.store.is_retired(job_id):
            return kind, DROPPED_RETIRED
        if not self.store.has_manifest(job_id):
            return kind, DROPPED_UNKNOWN
        if self.store.put_delivery(job_id, chunk, batch_id, _read_pieces(body), kind):
            return kind, STORED
        # put_delivery refuses a redelivery, and a delivery whose job was retired meanwhile.
        return kind, DROPPED_RETIRED if self.store.is_retired(job_id) else ALREADY_STORED

    def _maybe_sweep(self) -> None:
        """Start an expiry pass in the background when the last one is ``sweep_interval`` old."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_interval
        sweep = asyncio.create_task(asyncio.to_thread(self._sweep), name="modelbit-callback-expiry")
        self._sweeps.add(sweep)  # keep a reference until done, or the loop may drop the task
        sweep.add_done_callback(self._sweeps.discard)

    def _sweep(self) -> None:
        try:
            retention = self.retention_seconds or callback_retention_seconds()
            report = self.store.expire(retention)
        except Exception as error:
            log.warning(
                "Expiring old callback jobs in %s failed: %s: %s", self.store, type(error).__name__, error
            )
            return
        if report.jobs or report.tombstones:
            log.info("Expired %s older than %.0f s from %s", report, retention, self.store.location)

    async def _verify(self, conn_id: str, job_id: str, chunk: int, expires: int, token: str) -> None:
        secret = await self.secrets.secret_for(conn_id)
        if secret is None:
            raise DeliveryRejected(403, "Callback token rejected.")
        try:
            verify_token(secret, token, job_id, chunk, expires)
        except InvalidToken as error:
            log.warning("Modelbit delivery rejected: %s", error.message)
            raise DeliveryRejected(403, "Callback token rejected.") from None


def create_callback_app(
    *,
    store: CallbackStore | None = None,
    secrets: ConnectionSecretSource | StaticSecretSource | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    retention_seconds: float | None = None,
) -> FastAPI:
    """
    Build the receiver app; it does no I/O until the first delivery.

    :param store: where deliveries go; ``None`` uses the ``[modelbit] callback_store`` location.
    :param secrets: where callback secrets come from; ``None`` reads them from Airflow Connections.
    :param max_body_bytes: largest accepted delivery body; larger ones get 413 and are not stored.
    :param retention_seconds: age past which the receiver expires jobs and tombstones (at most
        once an hour); ``None`` reads ``[modelbit] callback_retention_seconds``.
    """
    receiver = CallbackReceiver(
        store, secrets or ConnectionSecretSource(), max_body_bytes, retention_seconds=retention_seconds
    )
    app = FastAPI(title="Modelbit callback receiver", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.receiver = receiver
    app.add_api_route(
        "/v1/callbacks/{conn_id}/{job_id}/{chunk}",
        _endpoint(receiver),
        methods=["POST"],
        name="modelbit_callback",
    )
    app.add_api_route("/v1/health", _health, methods=["GET"], name="modelbit_callback_health")
    return app


def _endpoint(receiver: CallbackReceiver) -> Callable[..., Any]:
    async def modelbit_callback(request: Request, conn_id: str, job_id: str, chunk: str) -> JSONResponse:
        try:
            answer = await receiver.receive(request, conn_id, job_id, chunk)
        except DeliveryRejected as rejection:
            return JSONResponse({"error": rejection.message}, status_code=rejection.status)
        return JSONResponse(answer, status_code=200)

    return modelbit_callback


async def _health() -> JSONResponse:
    return JSONResponse({"status": "ok"})
