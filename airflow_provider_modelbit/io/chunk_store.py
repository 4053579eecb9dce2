"""Finished chunks of results kept as Arrow IPC files, one per chunk, plus a manifest.

The store is both the spool from which the final Parquet file is assembled and the checkpoint
that lets a retried task skip the chunks a previous attempt finished: each chunk file is written
atomically, so a file present is a chunk done. The manifest records what the chunks were computed
from (input fingerprint and chunking parameters); a store whose manifest differs is stale and is
discarded rather than mixed into new results.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
from airflow.sdk import ObjectStoragePath

from airflow_provider_modelbit.io.atomic import atomic_output, open_binary

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_CHUNK_NAME = re.compile(r"^chunk-(\d{8})\.arrow$")
_LOCAL_PROTOCOLS = ("", "file", "local")


class ChunkStore:
    """
    A folder of finished chunks, local or on any object store.

    :param location: the folder; created when the first file is written.
    """

    def __init__(self, location: ObjectStoragePath) -> None:
        self.location = location

    @classmethod
    def beside(cls, output: ObjectStoragePath) -> ChunkStore:
        """Return the store kept next to an output file, named ``<output>.checkpoint``."""
        return cls(output.parent / f"{output.name}.checkpoint")

    def start(self, manifest: dict[str, Any]) -> set[int]:
        """
        Open the store for a run described by ``manifest``.

        :return: the chunk indices already finished by an earlier attempt of the same run.
        """
        manifest = json.loads(json.dumps(manifest, sort_keys=True))  # compare as it will read back
        previous = self._read_manifest()
        if previous is not None and previous != manifest:
            log.warning(
                "Discarding checkpoint %s: it was made from a different input or different settings.",
                self.location,
            )
            self.remove()
            previous = None
        if previous is None:
            self.remove()
            self._write_manifest(manifest)
            return set()
        return set(self.indices())

    def put(self, index: int, table: pa.Table) -> None:
        """Store a finished chunk; it appears whole or not at all."""
        with (
            atomic_output(self._chunk_path(index), lineage=False) as stream,
            ipc.new_file(stream, table.schema) as writer,
        ):
            writer.write_table(table)

    def indices(self) -> list[int]:
        """Return the finished chunk indices, in order."""
        if not self.location.exists():
            return []
        found = (_CHUNK_NAME.match(path.name) for path in self.location.iterdir())
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
        path = self._chunk_path(index)
        if path.protocol in _LOCAL_PROTOCOLS:
            # Mapped, the batches point into the file instead of being copied through Python.
            return pa.memory_map(path.path, "r")
        return open_binary(path, "rb", lineage=False)

    def remove(self) -> None:
        """Delete the store and everything in it."""
        if self.location.exists():
            self.location.fs.rm(self.location.path, recursive=True)

    def _chunk_path(self, index: int) -> ObjectStoragePath:
        return self.location / f"chunk-{index:08d}.arrow"

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.location / MANIFEST_NAME
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        with atomic_output(self.location / MANIFEST_NAME, lineage=False) as stream:
            stream.write(json.dumps(manifest, sort_keys=True).encode())
