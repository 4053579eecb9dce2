"""A callback job: what a deferred task asked Modelbit, and where each chunk of it stands.

A job is the durable half of a deferred task. It holds a fingerprint of everything that decides
the answer, so a later try, or the same try resuming, uses it only when it asks exactly the same
question (:meth:`CallbackJob.mismatch`); one record per
chunk (pending -> sent -> accepted -> delivered or errored) whose attempt counts persist across
tries; and the deadline of the wait. It is loaded and saved in one place, :func:`load_job` and
:func:`save_job`, as the job's ``manifest.json`` in the :class:`CallbackStore`, written atomically.

Job ids differ per job generation (the task-instance key plus the try that started the job), so
the late deliveries of a retired job can never be read by the job that replaced it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from airflow_provider_modelbit.callbacks.signing import validate_job_id
from airflow_provider_modelbit.hooks.responses import safe_url
from airflow_provider_modelbit.io.encoding import encode_json

if TYPE_CHECKING:
    from airflow_provider_modelbit.callbacks.store import CallbackStore

#: Bumped when the saved layout changes; a job saved with another version is never reused.
#: (``work`` was added without a bump: a job saved without it reads as one with no marks, which
#: proves nothing, so its payloads are compared by their hashes, as before.)
JOB_SCHEMA_VERSION = 1


class JobStateError(RuntimeError):
    """A transition the chunk's state does not allow: a bug, not a user error."""


class ChunkState(str, Enum):
    """Where one chunk of a job stands."""

    PENDING = "pending"  # not submitted, or to be submitted again
    SENT = "sent"  # submitted; no answer yet (it may have reached Modelbit)
    ACCEPTED = "accepted"  # Modelbit accepted it; its delivery is awaited
    DELIVERED = "delivered"  # its delivery (data or link) is in the store
    ERRORED = "errored"  # its delivery is an error


#: Chunks whose delivery is awaited: a request for them may be running at Modelbit.
IN_FLIGHT = frozenset({ChunkState.SENT, ChunkState.ACCEPTED})
_ALLOWED: dict[ChunkState, frozenset[ChunkState]] = {
    ChunkState.PENDING: frozenset({ChunkState.SENT}),
    ChunkState.SENT: frozenset(
        {ChunkState.PENDING, ChunkState.ACCEPTED, ChunkState.DELIVERED, ChunkState.ERRORED}
    ),
    ChunkState.ACCEPTED: frozenset({ChunkState.PENDING, ChunkState.DELIVERED, ChunkState.ERRORED}),
    ChunkState.DELIVERED: frozenset({ChunkState.PENDING}),
    ChunkState.ERRORED: frozenset({ChunkState.PENDING}),
}


@dataclass
class ChunkRecord:
    """
    One chunk of a job.

    :param payload_hash: SHA-256 of the chunk's JSON payload, part of the job's fingerprint.
    :param state: where the chunk stands.
    :param attempts: submissions that may have reached Modelbit, over every try of the job.
    :param batch_id: Modelbit's batch ID of the last accepted submission, when it named one.
    """

    payload_hash: str
    state: ChunkState = ChunkState.PENDING
    attempts: int = 0
    batch_id: str | None = None

    def move(self, to: ChunkState) -> None:
        if to not in _ALLOWED[self.state]:
            raise JobStateError(f"A chunk cannot go from {self.state.value} to {to.value}.")
        self.state = to


@dataclass(frozen=True)
class JobRequest:
    """The settings of a job that decide its answer (its payloads aside)."""

    conn_id: str
    workspace_url: str
    deployment: str
    version: str
    branch: str | None
    response_format: str | None
    timeout_seconds: int

    def differences(self, other: JobRequest) -> list[str]:
        """Say which settings differ from ``other``, as ``name 'old' -> 'new'`` (URLs without user info)."""
        return [
            f"{item.name} {_shown(item.name, getattr(other, item.name))!r} -> "
            f"{_shown(item.name, getattr(self, item.name))!r}"
            for item in dataclasses.fields(self)
            if getattr(self, item.name) != getattr(other, item.name)
        ]


def _shown(name: str, value: Any) -> Any:
    return safe_url(value) if name == "workspace_url" and value else value


def payload_hash(payload: Any) -> str:
    """Return the SHA-256 of a chunk's payload as JSON, as it is sent (computed while payloads stream)."""
    try:
        encoded = encode_json(payload)
    except TypeError:
        # Not sendable: the submission refuses it with a clear error; the hash only needs to differ.
        encoded = repr(payload).encode()
    return hashlib.sha256(encoded).hexdigest()


def work_marks(work: Mapping[str, Any]) -> dict[str, str]:
    """
    Digest each item of what decides a job's payloads (the input's size, modification time or
    ETag, the options that cut it into rows), keeping the item names so a change can be named.
    """
    return {
        name: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
        for name, value in work.items()
    }


def task_job_prefix(dag_id: str, task_id: str, run_id: str, map_index: int | None) -> str:
    """Return the part of a job id naming the task instance, the same on every try."""
    identity = f"{dag_id}\n{task_id}\n{run_id}\n{-1 if map_index is None or map_index < 0 else map_index}"
    return "mb-" + hashlib.sha256(identity.encode()).hexdigest()[:40]


def job_id_for_try(prefix: str, try_number: int, generation: int = 1) -> str:
    """
    Return the id of a job started by ``try_number``.

    A try whose id a retired job holds already (a DAG run deleted and made again keeps its run
    id) starts the next ``generation``: ``-t1``, then ``-t1-g2``, ``-t1-g3``... Generations are
    taken in order, so a later try finds each one by walking them.
    """
    suffix = f"-g{generation}" if generation > 1 else ""
    return validate_job_id(f"{prefix}-t{max(int(try_number), 1)}{suffix}")


@dataclass
class CallbackJob:
    """
    Everything a deferred task's job is; see the module docstring.

    :param job_id: the job, as in the webhook URLs and the store folder.
    :param request: the settings that decide the answer.
    :param chunks: one record per chunk, in payload order.
    :param sealed: every chunk is known (the payloads were streamed to the end).
    :param deadline: unix time after which missing deliveries count as lost.
    :param not_after: unix time the task's ``execution_timeout`` ends this try; ``None`` without one.
    :param first_submitted_at: unix time of the job's first submission.
    :param work: :func:`work_marks` of the host's input and options, taken before its payloads
        were hashed: while they are unchanged the payloads are, and need not be read again.
    :param schema_version: :data:`JOB_SCHEMA_VERSION` when saved.
    """

    job_id: str
    request: JobRequest
    chunks: list[ChunkRecord] = field(default_factory=list)
    sealed: bool = False
    deadline: float = 0.0
    not_after: float | None = None
    first_submitted_at: float | None = None
    work: dict[str, str] = field(default_factory=dict)
    schema_version: int = JOB_SCHEMA_VERSION

    # ------------------------------------------------------------------ fingerprint

    @property
    def payload_hashes(self) -> list[str]:
        return [chunk.payload_hash for chunk in self.chunks]

    def mismatch(
        self,
        request: JobRequest,
        hashes: Callable[[], list[str]] | None = None,
        work: dict[str, str] | None = None,
    ) -> str | None:
        """
        Say why this job does not answer ``request`` on the host's input (``None``: it does).

        The one rule of "same work", at the start of a try and when a deferred try resumes: the
        settings must be equal, then the payloads. Payloads are proved equal by ``work`` (the
        host's :func:`work_marks`) when the host gave marks and they are the job's, else by
        ``hashes()`` (which reads the whole input again); proved equal by hashes, the job keeps the
        new marks. An unsealed job (its try stopped while submitting) answers any input its chunks
        are a prefix of. ``hashes=None`` compares the settings only.
        """
        if self.schema_version != JOB_SCHEMA_VERSION:
            return f"it was saved with schema version {self.schema_version}, not {JOB_SCHEMA_VERSION}"
        changed = request.differences(self.request)
        if changed:
            return "its settings changed: " + ", ".join(changed)
        if hashes is None or (work and work == self.work):
            return None
        reason = self._payload_mismatch(hashes())
        if reason is None:
            self.work = dict(work or {})  # proved the same work: the next check need not read the input
            return None
        moved = sorted(name for name, mark in self.work.items() if (work or {}).get(name) != mark)
        return f"{reason}; changed since it was submitted: {', '.join(moved)}" if moved else reason

    def _payload_mismatch(self, hashes: list[str]) -> str | None:
        known = self.payload_hashes
        if len(hashes) != len(known) and (self.sealed or len(hashes) < len(known)):
            return f"the input now has {len(hashes)} chunk(s), the job had {len(known)}"
        changed_chunks = [n for n, (old, new) in enumerate(zip(known, hashes, strict=False)) if old != new]
        if changed_chunks:
            return f"the input of chunk(s) {changed_chunks[:10]} changed"
        return None

    # ------------------------------------------------------------------ transitions

    def add_chunk(self, payload_hash: str) -> int:
        """Record the next chunk (while the payloads stream); return its number."""
        if self.sealed:
            raise JobStateError(f"Job {self.job_id} is sealed at {len(self.chunks)} chunk(s).")
        self.chunks.append(ChunkRecord(payload_hash))
        return len(self.chunks) - 1

    def seal(self, chunk_count: int) -> None:
        """Mark the chunk list complete once the payloads were streamed to the end."""
        if chunk_count != len(self.chunks):
            raise JobStateError(f"Job {self.job_id} has {len(self.chunks)} chunk(s), not {chunk_count}.")
        self.sealed = True

    def mark_sent(self, chunk: int, now: float) -> None:
        """Count an attempt before the request goes out: a crash after it must not send it blind."""
        record = self.chunks[chunk]
        record.move(ChunkState.SENT)
        record.attempts += 1
        record.batch_id = None
        self.first_submitted_at = self.first_submitted_at or now

    def mark_not_sent(self, chunk: int) -> None:
        """The request was refused before it could reach Modelbit: no attempt is counted."""
        record = self.chunks[chunk]
        record.move(ChunkState.PENDING)
        record.attempts -= 1

    def accept(self, chunk: int, batch_id: str | None) -> None:
        """Modelbit accepted the submission (the batch ID is information, not a key)."""
        record = self.chunks[chunk]
        record.move(ChunkState.ACCEPTED)
        record.batch_id = batch_id

    def record_delivery(self, chunk: int, kind: str) -> None:
        """A delivery of kind ``data``, ``link`` or ``error`` is in the store for ``chunk``."""
        record = self.chunks[chunk]
        target = ChunkState.ERRORED if kind == "error" else ChunkState.DELIVERED
        if record.state != target:
            record.move(target)

    def requeue(self, chunk: int) -> None:
        """Put a chunk back to pending, to be submitted again."""
        self.chunks[chunk].move(ChunkState.PENDING)

    def extend_deadline(self, due: float) -> None:
        self.deadline = max(self.deadline, due)

    # ------------------------------------------------------------------ questions

    def in_state(self, *states: ChunkState) -> list[int]:
        return [n for n, chunk in enumerate(self.chunks) if chunk.state in states]

    def wait_until(self) -> float:
        """When the wait ends: the delivery deadline, capped by the task's execution timeout."""
        return self.deadline if self.not_after is None else min(self.deadline, self.not_after)

    def timed_out(self, now: float) -> bool:
        """Whether the task's ``execution_timeout`` has passed."""
        return self.not_after is not None and now >= self.not_after

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        for chunk in record["chunks"]:
            chunk["state"] = chunk["state"].value
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> CallbackJob:
        """Rebuild a saved job; a job of another schema version keeps its version so it is not reused."""
        version = record.get("schema_version")
        if version != JOB_SCHEMA_VERSION:
            request = JobRequest("", "", "", "", None, None, 0)
            return cls(str(record.get("job_id", "")), request, schema_version=int(version or 0))
        chunks = [ChunkRecord(**{**chunk, "state": ChunkState(chunk["state"])}) for chunk in record["chunks"]]
        return cls(**{**record, "request": JobRequest(**record["request"]), "chunks": chunks})


def load_job(store: CallbackStore, job_id: str) -> CallbackJob | None:
    """Return the job saved under ``job_id``, or ``None`` when there is none."""
    record = store.read_manifest(job_id)
    return None if record is None else CallbackJob.from_json(record)


def save_job(store: CallbackStore, job: CallbackJob) -> bool:
    """
    Save the job atomically (the receiver keeps deliveries only for saved, unretired jobs);
    ``False`` when it was retired (the task was killed or cleared): its folder is not made again.
    """
    return store.write_manifest(job.job_id, job.to_json())
