"""Where webhook deliveries wait between the receiver, the triggerer and the workers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from typing import IO, Any, Literal, TypeVar

from fsspec import AbstractFileSystem, filesystem
from fsspec.dircache import DirCache
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_modelbit.callbacks.signing import validate_chunk, validate_job_id
from airflow_provider_modelbit.defaults import DEFAULT_CALLBACK_RETENTION_SECONDS
from airflow_provider_modelbit.io.atomic import create_exclusively

DeliveryKind = Literal["data", "link", "error"]
DELIVERY_KINDS: frozenset[str] = frozenset({"data", "link", "error"})

_META_NAME = re.compile(r"chunk-(\d+)\.meta\.json$")
_MANIFEST = "manifest.json"
#: Tombstones live beside the job folders; a job id cannot start with "_", so no job can collide.
_RETIRED_DIR = "_retired"
_STOP_REQUEST = "stop.json"
# Tries at removing a job's folder while deliveries, saves or other removers touch it.
_REMOVE_ATTEMPTS = 5
TOMBSTONE_SCHEMA_VERSION = 1
STOP_REQUEST_SCHEMA_VERSION = 1

_T = TypeVar("_T")


def _versioned_record(raw: bytes, version: int, what: str) -> dict[str, Any]:
    """A stored record's fields; refused when another schema version of the provider wrote it."""
    record = json.loads(raw)
    if record.get("schema_version") != version:
        raise ValueError(
            f"{what} of job {record.get('job_id')!r} has schema version "
            f"{record.get('schema_version')!r}; this provider reads version {version}."
        )
    return dict(record)


@dataclass(frozen=True)
class Tombstone:
    """
    What is left of a retired job: enough to refuse its late deliveries, nothing of its results.

    :param job_id: the retired job.
    :param retired_at: unix time of the retirement.
    :param reason: why it was retired, for whoever reads the store.
    """

    job_id: str
    retired_at: float
    reason: str = ""
    schema_version: int = TOMBSTONE_SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Tombstone:
        record = _versioned_record(raw, TOMBSTONE_SCHEMA_VERSION, "Tombstone")
        return cls(record["job_id"], float(record["retired_at"]), str(record.get("reason", "")))


@dataclass(frozen=True)
class StopRequest:
    """
    The triggerer's word that a job's trigger was cancelled as if a user had acted on the task.

    Airflow cancels a trigger that way when a user marks the deferred task failed or success or
    clears it, and also when another triggerer took the trigger over. Only the task's worker can
    tell which: a resume of the same deferral withdraws the request, a later try retires the job.

    :param job_id: the job whose trigger was cancelled.
    :param requested_at: unix time of the cancellation.
    :param reason: what the triggerer was told, for whoever reads the store.
    """

    job_id: str
    requested_at: float
    reason: str = ""
    schema_version: int = STOP_REQUEST_SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> StopRequest:
        record = _versioned_record(raw, STOP_REQUEST_SCHEMA_VERSION, "Stop request")
        return cls(record["job_id"], float(record["requested_at"]), str(record.get("reason", "")))


def default_store_location() -> str:
    """Return ``[modelbit] callback_store``, or ``$AIRFLOW_HOME/modelbit/callbacks`` when it is empty."""
    from airflow_provider_modelbit.version_compat import conf

    configured = conf.get("modelbit", "callback_store", fallback="") or ""
    if configured.strip():
        return configured.strip()
    airflow_home = conf.get("core", "airflow_home", fallback="") or os.environ.get("AIRFLOW_HOME", "")
    home = airflow_home or os.path.expanduser("~/airflow")
    return os.path.join(home, "modelbit", "callbacks")


def callback_retention_seconds() -> float:
    """Return ``[modelbit] callback_retention_seconds``: how long the store keeps what nothing writes to."""
    from airflow_provider_modelbit.version_compat import conf

    raw = conf.get("modelbit", "callback_retention_seconds", fallback="") or ""
    if not str(raw).strip():
        return float(DEFAULT_CALLBACK_RETENTION_SECONDS)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ValueError(
            f"[modelbit] callback_retention_seconds must be a positive number of seconds, got {raw!r}."
        )
    return seconds


@dataclass(frozen=True)
class ExpiryReport:
    """What one :meth:`CallbackStore.expire` pass removed."""

    jobs: int
    tombstones: int

    def __str__(self) -> str:
        return f"{self.jobs} job(s) and {self.tombstones} tombstone(s)"


def _modified_at(info: dict[str, Any]) -> float | None:
    """Return a listing entry's last write as unix time; each fsspec backend names it differently."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "mtime_ns", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) / (1e9 if key == "mtime_ns" else 1)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def _resolve_filesystem(location: str) -> tuple[AbstractFileSystem, str]:
    """Return the filesystem and root path for ``location``, through Airflow's ObjectStoragePath."""
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath(location)
    try:
        fs = path.fs
    except ValueError:
        # Schemes Airflow has no store for (memory://, ...) still work through fsspec's own registry.
        fs = filesystem(path.protocol)
    return _without_listing_cache(fs), path.path.rstrip("/") or "/"


def _without_listing_cache(fs: AbstractFileSystem) -> AbstractFileSystem:
    """
    ``fs`` with its cache of folder listings turned off.

    The receiver, the triggers and the workers write the store's folders from several threads and
    processes, so a listing one of them cached is stale by design. s3fs checks a file against its
    folder's cached listing before moving it: a temporary file just written was "not found" because
    another thread of the triggerer had listed the folder a moment before, and the chunk's
    submission failed. fsspec shares one instance per filesystem and options within a process, so
    other code of the process using the same instance reads fresh listings too.
    """
    if getattr(fs, "dircache", None) is not None:
        fs.dircache = DirCache(use_listings_cache=False)
    return fs


def _is_job_id(name: str) -> bool:
    try:
        validate_job_id(name)
    except ValueError:
        return False
    return True


class CallbackStore:
    """
    Webhook deliveries, kept per job and chunk on an ObjectStoragePath location.

    The receiver writes deliveries, the trigger watches for them and the worker reads them, so
    all three must see the same location. The default is a local folder
    (``$AIRFLOW_HOME/modelbit/callbacks``, or the ``[modelbit] callback_store`` option), which
    suits a single machine. In multi-machine deployments point ``callback_store`` at shared
    object storage: any ObjectStoragePath URL such as ``s3://aws_default@bucket/modelbit-callbacks``
    or ``gs://...``, or any other fsspec URL.

    Layout::

        <location>/<job_id>/chunk-<n>.json        the delivered body, byte for byte
        <location>/<job_id>/chunk-<n>.meta.json   {"batch_id", "received_at", "size", "kind"}
        <location>/<job_id>/manifest.json         what the operator submitted
        <location>/<job_id>/request-<n>.json      a chunk's encoded data, left to the trigger to send
        <location>/<job_id>/sent-<n>-<a>.json     the claim on sending attempt <a> of chunk <n>
        <location>/<job_id>/stop.json             a cancelled trigger's :class:`StopRequest`
        <location>/_retired/<job_id>.json         a retired job's tombstone (:class:`Tombstone`)

    A delivery counts only once its meta file exists; both files are written to a temporary
    name and moved into place, so readers never see half a delivery.

    A retired job (:meth:`retire_job`) keeps only its tombstone: nothing is written to its folder
    again, not even a delivery, manifest, stop request or claim that was being written while it
    was retired (see :meth:`_write_in_job`).

    :param location: folder or object-storage URL; ``None`` uses :func:`default_store_location`.
    """

    def __init__(self, location: str | None = None) -> None:
        self.location = str(location) if location is not None else default_store_location()
        self._fs, self._root = _resolve_filesystem(self.location)
        self._write_lock = threading.Lock()
        self._in_progress: set[tuple[str, int]] = set()

    def __repr__(self) -> str:
        return f"CallbackStore({self.location!r})"

    def put_delivery(
        self,
        job_id: str,
        chunk: int,
        batch_id: str,
        body_chunks: Iterable[bytes],
        kind: DeliveryKind = "data",
    ) -> bool:
        """
        Store one delivery; return ``False`` when this chunk is already stored (a redelivery).

        :param body_chunks: the request body, streamed piece by piece.
        :param kind: ``data`` (inline results), ``link`` (a results URL) or ``error``.
        """
        if kind not in DELIVERY_KINDS:
            raise ValueError(f"Unknown delivery kind {kind!r}; expected one of {sorted(DELIVERY_KINDS)}.")
        key = (validate_job_id(job_id), validate_chunk(chunk))
        if not self._claim(key):
            return False
        try:
            if self.is_retired(job_id) or self._fs.exists(self._meta_path(job_id, chunk)):
                return False
            write = partial(self._write_delivery, job_id, chunk, batch_id, body_chunks, kind)
            return self._write_in_job(job_id, write) is not None
        finally:
            with self._write_lock:
                self._in_progress.discard(key)

    def _write_delivery(
        self, job_id: str, chunk: int, batch_id: str, body_chunks: Iterable[bytes], kind: DeliveryKind
    ) -> int:
        size = self._write_atomic(self._body_path(job_id, chunk), body_chunks)
        meta = {"batch_id": batch_id, "received_at": time.time(), "size": size, "kind": kind}
        self._write_atomic(self._meta_path(job_id, chunk), [json.dumps(meta).encode()])
        return size

    def _claim(self, key: tuple[str, int]) -> bool:
        """Reserve a chunk for this process's writer; concurrent redeliveries see it taken."""
        with self._write_lock:
            if key in self._in_progress:
                return False
            self._in_progress.add(key)
            return True

    def delivered_chunks(self, job_id: str) -> set[int]:
        """Return the chunk numbers of ``job_id`` whose delivery is complete."""
        job_dir = self._job_dir(job_id)
        try:
            names = self._fs.ls(job_dir, detail=False)
        except FileNotFoundError:
            return set()
        return {int(match.group(1)) for name in names if (match := _META_NAME.search(str(name)))}

    def delivery_meta(self, job_id: str, chunk: int) -> dict[str, Any]:
        """Return the meta record of a stored delivery (batch id, received time, size, kind)."""
        with self._fs.open(self._meta_path(job_id, chunk), "rb") as meta_file:
            return json.loads(meta_file.read())

    def delivery_kind(self, job_id: str, chunk: int) -> DeliveryKind:
        """Return whether a stored delivery holds ``data``, a ``link`` or an ``error``."""
        return self.delivery_meta(job_id, chunk)["kind"]

    def open_delivery(self, job_id: str, chunk: int) -> IO[bytes]:
        """Open a stored delivery body for reading, as a binary file."""
        return self._fs.open(self._body_path(job_id, chunk), "rb")

    def remove_chunk(self, job_id: str, chunk: int) -> None:
        """Forget one delivery (e.g. an error before its chunk is resubmitted); missing is fine."""
        for path in (self._meta_path(job_id, chunk), self._body_path(job_id, chunk)):
            self._remove_quietly(path)

    def remove_job(self, job_id: str) -> None:
        """Delete everything stored for ``job_id`` (a retired job's leftovers); missing is fine."""
        self._remove_job_dir(job_id)

    def request_stop(self, job_id: str, reason: str = "") -> bool:
        """
        Leave a :class:`StopRequest` beside the job's manifest; ``False`` when there is no job to stop.

        Nothing is deleted: the task's worker decides (see :class:`StopRequest`).
        """
        if self.is_retired(job_id) or not self.has_manifest(job_id):
            return False
        request = StopRequest(validate_job_id(job_id), time.time(), reason)
        return self._write_job_file(job_id, self._stop_path(job_id), [request.to_bytes()])

    def stop_request(self, job_id: str) -> StopRequest | None:
        """Return the job's pending stop request, or ``None``."""
        try:
            with self._fs.open(self._stop_path(job_id), "rb") as request_file:
                return StopRequest.from_bytes(request_file.read())
        except FileNotFoundError:
            return None

    def withdraw_stop(self, job_id: str) -> None:
        """Forget the job's stop request (its task resumed the deferral); missing is fine."""
        self._remove_quietly(self._stop_path(job_id))

    def retire_job(self, job_id: str, reason: str = "") -> Tombstone:
        """
        Retire ``job_id``: delete its manifest and deliveries and leave a tombstone.

        Its late deliveries are then acknowledged and dropped by the receiver and never stored
        again, so no later run can read them. Retiring twice keeps the first tombstone.

        :param reason: why, in a few words (e.g. "task marked failed"); kept in the tombstone.
        """
        tombstone = self.tombstone(job_id)
        if tombstone is None:
            tombstone = Tombstone(validate_job_id(job_id), time.time(), reason)
            # The tombstone goes first: a concurrent put_delivery checks it after writing.
            self._write_atomic(self._tombstone_path(job_id), [tombstone.to_bytes()])
        self._remove_job_dir(job_id)
        return tombstone

    def is_retired(self, job_id: str) -> bool:
        """Return whether ``job_id`` was retired (its tombstone exists)."""
        return bool(self._fs.exists(self._tombstone_path(job_id)))

    def tombstone(self, job_id: str) -> Tombstone | None:
        """Return the tombstone of a retired job, or ``None`` when it is not retired."""
        try:
            with self._fs.open(self._tombstone_path(job_id), "rb") as tombstone_file:
                return Tombstone.from_bytes(tombstone_file.read())
        except FileNotFoundError:
            return None

    def expire(self, older_than: float, now: float | None = None) -> ExpiryReport:
        """
        Remove every job and tombstone that nothing has written to for ``older_than`` seconds.

        A job goes whole (manifest, deliveries, half-written files) once its newest file is that
        old, so a job a task still waits on is never cut in half; ``older_than`` must exceed the
        longest life of a task instance, retries included. Entries whose backend reports no
        modification time are kept.

        :param now: the current unix time (for tests); ``None`` reads the clock.
        """
        cutoff = (time.time() if now is None else now) - older_than
        jobs = sum(self._expire_job(name, cutoff) for name in self._entries(self._root, "directory"))
        tombstones = 0
        for info in self._listing(f"{self._root}/{_RETIRED_DIR}"):
            modified = _modified_at(info)
            if info.get("type") == "file" and modified is not None and modified < cutoff:
                self._remove_quietly(info["name"])
                tombstones += 1
        return ExpiryReport(jobs, tombstones)

    def _expire_job(self, name: str, cutoff: float) -> bool:
        job_id = name.rstrip("/").rsplit("/", 1)[-1]
        if job_id.startswith("_") or not _is_job_id(job_id):
            return False
        times = [_modified_at(info) for info in self._listing(self._job_dir(job_id))]
        if not times or any(modified is None or modified >= cutoff for modified in times):
            return False
        self._remove_job_dir(job_id)
        return True

    def _entries(self, path: str, kind: str) -> list[str]:
        return [str(info["name"]) for info in self._listing(path) if info.get("type") == kind]

    def _listing(self, path: str) -> list[dict[str, Any]]:
        try:
            return list(self._fs.ls(path, detail=True))
        except FileNotFoundError:
            return []

    def _remove_job_dir(self, job_id: str) -> None:
        job_dir = self._job_dir(job_id)
        # Removing can race a delivery or a save refilling the folder (rm then fails on a folder that
        # is not empty) and another remover deleting the same files (rm then fails on a file that is
        # gone, with the folder still there): look again until the folder is gone.
        for attempt in range(_REMOVE_ATTEMPTS):
            try:
                if self._fs.exists(job_dir):
                    self._fs.rm(job_dir, recursive=True)
                return
            except FileNotFoundError:
                continue
            except OSError:
                if attempt == _REMOVE_ATTEMPTS - 1:
                    raise

    def stage_request(self, job_id: str, chunk: int, encoded_data: bytes) -> bool:
        """Keep a chunk's encoded data for the trigger to submit; ``False`` when the job is retired."""
        return self._write_job_file(job_id, self._request_path(job_id, chunk), [encoded_data])

    def staged_request(self, job_id: str, chunk: int) -> bytes | None:
        """Return a chunk's staged data, or ``None`` when none was staged."""
        try:
            with self._fs.open(self._request_path(job_id, chunk), "rb") as staged:
                return staged.read()
        except FileNotFoundError:
            return None

    def claim_submission(self, job_id: str, chunk: int, attempt: int) -> bool:
        """
        Claim the sending of ``attempt`` of ``chunk``; ``False`` when someone already claimed it.

        A create-only write, so two triggerers briefly running the same trigger (a handover)
        never both send one chunk: the loser awaits the winner's delivery instead. On an object
        store this holds where the store honours ``If-None-Match`` on its writes (AWS S3 and
        SeaweedFS do). A retired job claims nothing (its folder is not made again).
        """
        if self.is_retired(job_id):
            return False
        claim = partial(self._create_claim, self._claim_path(job_id, chunk, attempt))
        return self._write_in_job(job_id, claim) is True

    def _create_claim(self, path: str) -> bool:
        self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        record = json.dumps({"claimed_at": time.time()}).encode()
        return create_exclusively(self._fs, path, record, local=isinstance(self._fs, LocalFileSystem))

    def release_submission(self, job_id: str, chunk: int, attempt: int) -> None:
        """Give a claim back: its request was refused before it could run, so it may be sent again."""
        self._remove_quietly(self._claim_path(job_id, chunk, attempt))

    def write_manifest(self, job_id: str, manifest: dict[str, Any]) -> bool:
        """Atomically replace the job's manifest (a JSON object); ``False`` when the job is retired."""
        record = json.dumps(manifest, sort_keys=True).encode()
        return self._write_job_file(job_id, self._manifest_path(job_id), [record])

    def has_manifest(self, job_id: str) -> bool:
        """Return whether a task is (or was) waiting for ``job_id``: its manifest exists."""
        return bool(self._fs.exists(self._manifest_path(job_id)))

    def read_manifest(self, job_id: str) -> dict[str, Any] | None:
        """Return the job's manifest, or ``None`` when none was written."""
        try:
            with self._fs.open(self._manifest_path(job_id), "rb") as manifest_file:
                return json.loads(manifest_file.read())
        except FileNotFoundError:
            return None

    def _write_in_job(self, job_id: str, write: Callable[[], _T]) -> _T | None:
        """
        Run ``write`` (files of ``job_id``'s folder); ``None``, and nothing left, when the job is retired.

        retire_job writes the tombstone before it deletes the folder, so either its deletion sees
        what ``write`` wrote or the look after it sees the tombstone: whichever runs last removes
        the folder, and no write resurrects a retired job. A write whose folder the deletion took
        from under it is no error then.
        """
        try:
            written = write()
        except FileNotFoundError:
            if not self.is_retired(job_id):
                raise
        else:
            if not self.is_retired(job_id):
                return written
        self._remove_job_dir(job_id)
        return None

    def _write_job_file(self, job_id: str, target: str, pieces: Iterable[bytes]) -> bool:
        """Write one file of ``job_id``'s folder atomically; ``False`` when the job is retired."""
        return self._write_in_job(job_id, partial(self._write_atomic, target, pieces)) is not None

    def _write_atomic(self, target: str, pieces: Iterable[bytes]) -> int:
        """Write ``pieces`` to a temporary sibling of ``target`` and move it into place; return the size."""
        self._fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        temporary = f"{target}.{uuid.uuid4().hex}.tmp"
        size = 0
        try:
            with self._fs.open(temporary, "wb") as out:
                for piece in pieces:
                    out.write(piece)
                    size += len(piece)
            self._fs.mv(temporary, target)
        except BaseException:
            self._remove_quietly(temporary)
            raise
        return size

    def _remove_quietly(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(path)

    def _job_dir(self, job_id: str) -> str:
        return f"{self._root}/{validate_job_id(job_id)}"

    def _body_path(self, job_id: str, chunk: int) -> str:
        return f"{self._job_dir(job_id)}/chunk-{validate_chunk(chunk)}.json"

    def _meta_path(self, job_id: str, chunk: int) -> str:
        return f"{self._job_dir(job_id)}/chunk-{validate_chunk(chunk)}.meta.json"

    def _request_path(self, job_id: str, chunk: int) -> str:
        return f"{self._job_dir(job_id)}/request-{validate_chunk(chunk)}.json"

    def _claim_path(self, job_id: str, chunk: int, attempt: int) -> str:
        return f"{self._job_dir(job_id)}/sent-{validate_chunk(chunk)}-{int(attempt)}.json"

    def _tombstone_path(self, job_id: str) -> str:
        return f"{self._root}/{_RETIRED_DIR}/{validate_job_id(job_id)}.json"

    def _stop_path(self, job_id: str) -> str:
        return f"{self._job_dir(job_id)}/{_STOP_REQUEST}"

    def _manifest_path(self, job_id: str) -> str:
        return f"{self._job_dir(job_id)}/{_MANIFEST}"
