"""Finished chunks of results kept as Arrow IPC files, one per chunk, plus a manifest.

The store is both the spool from which the final Parquet file is assembled and the checkpoint
that lets a retried task skip the chunks a previous attempt finished: each chunk file is written
atomically, so a file present is a chunk done. The manifest is a :class:`CheckpointRecord`: a fingerprint of
everything that decides the answer (workspace, deployment, version, branch, options, input) and
the task instance that made the chunks. Chunks are reused only by a retry of that task instance
with the same fingerprint; any other checkpoint is discarded, never read. Before the output is
written, :meth:`ChunkStore.verify_complete` checks that every input row has exactly one result.
Who may write into the store at a time is decided by :mod:`.ownership`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.ipc as ipc
from airflow.sdk import ObjectStoragePath

from airflow_provider_modelbit.exceptions import ModelbitIncompleteBatch
from airflow_provider_modelbit.io.atomic import atomic_file, atomic_output, is_local
from airflow_provider_modelbit.io.ownership import OWNER_NAME, TaskIdentity

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from airflow_provider_modelbit.io.ownership import OutputLease

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_CHUNK_NAME = re.compile(r"^chunk-(\d{8})\.arrow$")
#: Bumped when the checkpoint layout or chunking changes, so old checkpoints are not reused.
CHECKPOINT_SCHEMA_VERSION = 2


@dataclass(frozen=True)
class CheckpointRecord:
    """
    What a checkpoint's chunks were computed from, and for whom.

    :param fingerprint: digest of everything that decides the answer (see :meth:`for_work`).
    :param task: the task instance that made the chunks (its try number is not kept: any try
        of the same task instance may reuse them).
    """

    fingerprint: str
    task: TaskIdentity
    schema_version: int = CHECKPOINT_SCHEMA_VERSION

    @classmethod
    def for_work(cls, work: dict[str, Any], task: TaskIdentity) -> CheckpointRecord:
        """Fingerprint ``work`` (JSON-able: workspace, deployment, version, options, input) for ``task``."""
        canonical = json.dumps(work, sort_keys=True, default=str).encode()
        return cls(hashlib.sha256(canonical).hexdigest(), replace(task, try_number=None))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> CheckpointRecord | None:
        """Read a record; ``None`` when unreadable or of another schema version (so never reused)."""
        try:
            values = json.loads(raw)
            if values.get("schema_version") != CHECKPOINT_SCHEMA_VERSION:
                return None
            return cls(**{**values, "task": TaskIdentity(**values["task"])})
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


class ChunkStore:
    """
    A folder of finished chunks, local or on any object store.

    Chunk files are named by strings in the folder's filesystem, not path objects: a batch writes
    and reads back a chunk every few thousand rows, and a path object costs more to build than
    an Arrow chunk file costs to write.

    :param location: the folder; created by :meth:`start` (the lease's record may create it first).
    """

    def __init__(self, location: ObjectStoragePath) -> None:
        self.location = location

    @cached_property
    def _fs(self) -> AbstractFileSystem:
        return self.location.fs

    @cached_property
    def _folder(self) -> str:
        return self.location.path.rstrip("/")

    @cached_property
    def _local(self) -> bool:
        return is_local(self.location)

    @classmethod
    def beside(cls, output: ObjectStoragePath) -> ChunkStore:
        """Return the store kept next to an output file, named ``<output>.checkpoint``."""
        return cls(output.parent / f"{output.name}.checkpoint")

    def start(self, record: CheckpointRecord) -> set[int]:
        """
        Open the store for the work ``record`` describes, discarding chunks made for other work.

        :return: the chunk indices already finished by an earlier try of the same task instance.
        """
        previous = self._read_record()
        stale = self._stale_reason(previous, record)
        if stale is not None:
            log.warning("Discarding checkpoint %s: %s.", self.location, stale)
        if previous is None or stale is not None:
            self.discard()
            self._write_record(record)
            return set()
        return set(self.indices())

    def _stale_reason(self, previous: CheckpointRecord | None, record: CheckpointRecord) -> str | None:
        if previous is None:
            return "it has no readable record of what made it" if self.indices() else None
        if previous.fingerprint != record.fingerprint:
            return "it was made from a different input, deployment, version, branch or settings"
        if previous.task != record.task:
            return f"it belongs to {previous.task.describe()}, and chunks are never shared between runs"
        return None

    def put(self, index: int, table: pa.Table) -> None:
        """Store a finished chunk; it appears whole or not at all. The store must be started."""
        with (
            atomic_file(self._fs, self._chunk_file(index), local=self._local) as stream,
            ipc.new_file(stream, table.schema) as writer,
        ):
            writer.write_table(table)

    def indices(self) -> list[int]:
        """Return the finished chunk indices, in order."""
        found = (_CHUNK_NAME.match(name) for name in self._names())
        return sorted(int(match.group(1)) for match in found if match)

    def schema(self, index: int) -> pa.Schema:
        """Read only the schema of a stored chunk."""
        with self._open_chunk(index) as stream:
            return ipc.open_file(stream).schema

    def batches(self, index: int) -> Iterator[pa.RecordBatch]:
        """Yield the record batches of a stored chunk."""
        with self._open_chunk(index) as stream:
            reader = ipc.open_file(stream)
            for position in range(reader.num_record_batches):
                yield reader.get_batch(position)

    def _open_chunk(self, index: int) -> Any:
        if self._local:
            # Mapped, the batches point into the file instead of being copied through Python.
            return pa.memory_map(self._chunk_file(index), "r")
        return self._fs.open(self._chunk_file(index), "rb")

    def remove(self) -> None:
        """Delete the store and everything in it."""
        if self.location.exists():
            self.location.fs.rm(self.location.path, recursive=True)

    def discard(self) -> None:
        """Delete the chunks and the record, leaving the owner record (another run may hold it)."""
        for name in self._names():
            if name != OWNER_NAME:
                with suppress(FileNotFoundError):
                    self._fs.rm_file(f"{self._folder}/{name}")

    def remove_if_empty(self) -> None:
        """Delete the store's folder when nothing is left in it (nothing is left behind on a refusal)."""
        with suppress(OSError):
            if self.location.exists() and not self._names():
                self.location.fs.rm(self.location.path, recursive=True)

    def verify_complete(self, expected: Iterable[tuple[int, pa.Array]], output: str) -> int:
        """
        Check that the chunks hold exactly one result per input row, before the output is written.

        :param expected: each input chunk's index and IDs (row positions when the input has none).
        :param output: the output, for messages.
        :return: the number of rows checked.
        :raises ModelbitIncompleteBatch: a chunk is missing, has other rows, other IDs, or is extra.
        """
        stored = set(self.indices())
        rows = chunks = 0
        for index, ids in expected:
            if index not in stored:
                raise self._incomplete(output, f"chunk {index} has no results")
            found = self._stored_ids(index)
            if len(found) != len(ids):
                what = f"chunk {index} holds {len(found)} results for {len(ids)} input rows"
                raise self._incomplete(output, what)
            if not found.equals(ids):
                raise self._incomplete(output, f"chunk {index} holds results for other IDs than the input's")
            rows, chunks = rows + len(ids), chunks + 1
        extra = sorted(stored - set(range(chunks)))
        if extra:
            raise self._incomplete(output, f"chunk(s) {extra[:5]} lie beyond the input's {chunks} chunk(s)")
        return rows

    def _stored_ids(self, index: int) -> pa.Array:
        batches = list(self.batches(index))
        if not batches:
            return pa.array([], pa.null())
        return pa.concat_arrays([batch.column(0) for batch in batches])

    def _incomplete(self, output: str, what: str) -> ModelbitIncompleteBatch:
        return ModelbitIncompleteBatch(
            f"The checkpoint {self.location} does not match the input: {what}. Nothing was written "
            f"to {output} (what was there is untouched); delete the checkpoint and run the task again."
        )

    def _chunk_file(self, index: int) -> str:
        return f"{self._folder}/chunk-{index:08d}.arrow"

    def _names(self) -> list[str]:
        """The names of the files in the folder; none when it does not exist."""
        try:
            entries = self._fs.ls(self._folder, detail=False)
        except FileNotFoundError:
            return []
        return [str(entry).rstrip("/").rpartition("/")[2] for entry in entries]

    def _read_record(self) -> CheckpointRecord | None:
        path = self.location / MANIFEST_NAME
        if not path.exists():
            return None
        return CheckpointRecord.from_json(path.read_bytes())

    def _write_record(self, record: CheckpointRecord) -> None:
        with atomic_output(self.location / MANIFEST_NAME, lineage=False) as stream:
            stream.write(record.to_json())


@contextmanager
def held_checkpoint(store: ChunkStore, lease: OutputLease, record: CheckpointRecord) -> Iterator[set[int]]:
    """
    Hold an output's lease and its checkpoint for a run; yield the chunks a retry can reuse.

    On success the checkpoint is removed; on failure it is kept when it holds finished chunks,
    and removed when it is empty, so a refusal leaves nothing behind. The lease is released
    either way.

    :param store: the output's checkpoint.
    :param lease: the output's lease, acquired here (waiting or failing as it is configured to).
    :param record: what the run is; a checkpoint made for other work is discarded.
    """
    lease.acquire()
    try:
        finished = store.start(record)
        yield finished
    except BaseException:
        if not store.indices():
            store.discard()
        lease.release()
        store.remove_if_empty()
        raise
    store.discard()
    lease.release()
    store.remove_if_empty()
