"""Finished chunks are kept atomically beside an output, discarded when made for other work or
another run, and checked complete before the output is written."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pytest

from airflow_provider_modelbit.exceptions import ModelbitIncompleteBatch
from airflow_provider_modelbit.io.atomic import resolve_output
from airflow_provider_modelbit.io.chunk_store import CheckpointRecord, ChunkStore
from airflow_provider_modelbit.io.ownership import TaskIdentity

WORK = {"input": [{"path": "in.parquet", "size": "10"}], "batch_size": 3}
TRY_1 = TaskIdentity("nightly", "score", "scheduled__1", -1, 1)
MANIFEST = CheckpointRecord.for_work(WORK, TRY_1)


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
        retry = CheckpointRecord.for_work(dict(WORK), TaskIdentity("nightly", "score", "scheduled__1", -1, 2))
        assert store.start(retry) == {0, 2}
        assert pa.Table.from_batches(list(store.batches(2))) == chunk([5])

    def test_a_different_run_discards_the_chunks_with_a_warning(
        self, store: ChunkStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        store.start(MANIFEST)
        store.put(0, chunk([1]))
        with caplog.at_level(logging.WARNING):
            assert store.start(CheckpointRecord.for_work({**WORK, "batch_size": 4}, TRY_1)) == set()
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

    def test_another_run_never_reuses_the_chunks(
        self, store: ChunkStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        store.start(MANIFEST)
        store.put(0, chunk([1]))
        manual = CheckpointRecord.for_work(WORK, TaskIdentity("nightly", "score", "manual__2", -1, 1))
        with caplog.at_level(logging.WARNING):
            assert store.start(manual) == set()
        assert "belongs to DAG 'nightly' task 'score' run 'scheduled__1'" in caplog.text
        assert store.indices() == []

    def test_a_record_of_another_schema_version_is_never_reused(self, store: ChunkStore) -> None:
        store.start(MANIFEST)
        store.put(0, chunk([1]))
        (Path(store.location.path) / "manifest.json").write_text('{"schema_version": 1, "batch_size": 3}')
        assert store.start(MANIFEST) == set()


class TestVerifyComplete:
    """Every input row must have exactly one result before the output may be written."""

    def test_complete_chunks_pass(self, store: ChunkStore) -> None:
        store.start(MANIFEST)
        store.put(0, chunk([1, 2]))
        store.put(1, chunk([3]))
        expected = [(0, pa.array([1, 2])), (1, pa.array([3]))]
        assert store.verify_complete(expected, "scores.parquet") == 3

    @pytest.mark.parametrize(
        ("stored", "why"),
        [
            ({0: [1, 2]}, "chunk 1 has no results"),
            ({0: [1], 1: [3]}, "chunk 0 holds 1 results for 2 input rows"),
            ({0: [1, 9], 1: [3]}, "chunk 0 holds results for other IDs"),
            ({0: [1, 2], 1: [3], 2: [4]}, "chunk(s) [2] lie beyond"),
        ],
    )
    def test_a_short_or_foreign_checkpoint_is_refused(
        self, store: ChunkStore, stored: dict[int, list[int]], why: str
    ) -> None:
        store.start(MANIFEST)
        for index, ids in stored.items():
            store.put(index, chunk(ids))
        expected = [(0, pa.array([1, 2])), (1, pa.array([3]))]
        with pytest.raises(ModelbitIncompleteBatch, match="untouched") as raised:
            store.verify_complete(expected, "scores.parquet")
        assert why in raised.value.message
