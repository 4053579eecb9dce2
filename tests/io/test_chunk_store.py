"""Finished chunks are kept atomically beside an output and discarded when stale."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pytest

from airflow_provider_modelbit.io.atomic import resolve_output
from airflow_provider_modelbit.io.chunk_store import ChunkStore

MANIFEST = {"input": [{"path": "in.parquet", "size": "10"}], "batch_size": 3}


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return ChunkStore.beside(resolve_output(str(tmp_path / "scores.parquet")))


def chunk(values: list[int]) -> pa.Table:
    return pa.table({"id": values, "result": [value * 2 for value in values]})


class TestChunkStore:
    def test_lives_beside_the_output(self, store: ChunkStore, tmp_path: Path) -> None:
        assert store.location.path == str(tmp_path / "scores.parquet.checkpoint")

    def test_a_new_run_starts_with_no_chunks(self, store: ChunkStore) -> None:
        assert store.start(MANIFEST) == set()

    def test_the_same_run_finds_its_finished_chunks(self, store: ChunkStore) -> None:
        store.start(MANIFEST)
        store.put(0, chunk([1, 2]))
        store.put(2, chunk([5]))
        assert store.start(dict(MANIFEST)) == {0, 2}
        assert pa.Table.from_batches(list(store.batches(2))) == chunk([5])

    def test_a_different_run_discards_the_chunks_with_a_warning(
        self, store: ChunkStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        store.start(MANIFEST)
        store.put(0, chunk([1]))
        with caplog.at_level(logging.WARNING):
            assert store.start({**MANIFEST, "batch_size": 4}) == set()
        assert "Discarding checkpoint" in caplog.text
        assert store.indices() == []

    def test_only_complete_chunk_files_count(self, store: ChunkStore) -> None:
        """A temporary file left by a killed worker is not a finished chunk."""
        store.start(MANIFEST)
        (Path(store.location.path) / ".chunk-00000001.arrow.tmp-dead").write_bytes(b"partial")
        assert store.indices() == []

    def test_remove_deletes_everything(self, store: ChunkStore) -> None:
        store.start(MANIFEST)
        store.put(0, chunk([1]))
        store.remove()
        assert not store.location.exists()
