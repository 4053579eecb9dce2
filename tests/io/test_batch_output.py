"""A batch run's answers are saved chunk by chunk in request order, a stop names the chunk whose
request failed and keeps what was finished, and the output is written only when every chunk is in."""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_modelbit.exceptions import ModelbitIncompleteBatch, ModelbitTransportError
from airflow_provider_modelbit.hooks.batching import ChunkResult
from airflow_provider_modelbit.io.atomic import resolve_output
from airflow_provider_modelbit.io.batch_inputs import InputChunk, exact_chunks
from airflow_provider_modelbit.io.batch_output import BatchOutput, score_pending
from airflow_provider_modelbit.io.ownership import TaskIdentity

TASK = TaskIdentity("nightly", "score", "scheduled__1", -1, 1)
WORK = {"input": "in.parquet", "batch_size": 2}
KEYS = ["a", "b", "c", "d", "e"]
log = logging.getLogger(__name__)


class Counted:
    """Rows reported as scored and as reused."""

    def __init__(self) -> None:
        self.scored = self.reused = 0

    def advance(self, rows: int, *, reused: bool = False) -> None:
        if reused:
            self.reused += rows
        else:
            self.scored += rows


def chunks(keys: list[str]) -> list[InputChunk]:
    return list(exact_chunks([pa.record_batch({"key": keys, "x": list(range(len(keys)))})], 2))


def output_at(tmp_path: Path) -> BatchOutput:
    return BatchOutput(
        location=resolve_output(str(tmp_path / "scores.parquet")),
        id_column="key",
        passthrough=["x"],
        expand_result=False,
        result_type=None,
        deployment="doubler",
        version=1,
        wait_seconds=0.0,
    )


def rows_of(chunk: InputChunk) -> list[list[Any]]:
    return [[row["key"], row["x"]] for row in chunk.table.to_pylist()]


def doubler(fail_at: int | None = None) -> Any:
    """A chunk scorer that answers ``x * 2`` per row, raising on its ``fail_at``-th request."""

    def infer(requests: Iterator[list[list[Any]]]) -> Generator[ChunkResult, None, None]:
        for number, rows in enumerate(requests):
            if number == fail_at:
                raise ModelbitTransportError("connection reset", deployment="doubler", version=1)
            yield ChunkResult(number, [[row[0], row[1] * 2] for row in rows], 0.0, 0)

    return infer


def score(output: BatchOutput, finished: set[int], infer: Any, progress: Counted | None = None) -> None:
    """Score the five rows a to e, two per chunk, through ``infer`` into ``output``."""
    counted = progress or Counted()
    score_pending(
        infer, chunks(KEYS), finished=finished, batch_rows=rows_of, output=output, progress=counted, log=log
    )


def write(output: BatchOutput) -> int:
    parts = chunks(KEYS)
    return output.write(expected(parts), parts[0].table.schema)


def expected(parts: list[InputChunk]) -> list[tuple[int, pa.Array]]:
    return [(part.index, part.table["key"].combine_chunks()) for part in parts]


class TestScorePending:
    def test_unfinished_chunks_are_scored_and_the_output_written_in_input_order(self, tmp_path: Path) -> None:
        output, progress = output_at(tmp_path), Counted()
        with output.held(TASK, WORK) as finished:
            score(output, finished, doubler(), progress)
            assert write(output) == 5
        written = pq.read_table(tmp_path / "scores.parquet")
        assert written.column_names == ["key", "result", "x"]
        assert written["key"].to_pylist() == KEYS
        assert written["result"].to_pylist() == [0, 2, 4, 6, 8]
        assert (progress.scored, progress.reused) == (5, 0)
        assert not (tmp_path / "scores.parquet.checkpoint").exists()

    def test_a_failed_request_names_its_chunk_and_the_finished_chunks_stay_for_the_retry(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        output = output_at(tmp_path)
        located = r"\[chunk 1 \(input rows 2 to 3\)\]"
        with pytest.raises(ModelbitTransportError, match=located), output.held(TASK, WORK) as finished:
            score(output, finished, doubler(fail_at=1))
        assert "with 1 chunk(s) in flight" in caplog.text
        assert output.checkpoint.indices() == [0]
        assert not (tmp_path / "scores.parquet").exists()

    def test_a_retry_sends_only_what_is_left(self, tmp_path: Path) -> None:
        output, progress = output_at(tmp_path), Counted()
        with pytest.raises(ModelbitTransportError), output.held(TASK, WORK) as finished:
            score(output, finished, doubler(fail_at=1))
        sent: list[list[list[Any]]] = []

        def noted(requests: Iterator[list[list[Any]]]) -> Iterator[list[list[Any]]]:
            for request in requests:
                sent.append(request)
                yield request

        def recording(requests: Iterator[list[list[Any]]]) -> Generator[ChunkResult, None, None]:
            yield from doubler()(noted(requests))

        with output.held(TASK, WORK) as finished:
            assert finished == {0}
            score(output, finished, recording, progress)
            write(output)
        assert [row[0] for rows in sent for row in rows] == ["c", "d", "e"]
        assert (progress.scored, progress.reused) == (3, 2)
        assert pq.read_table(tmp_path / "scores.parquet")["result"].to_pylist() == [0, 2, 4, 6, 8]


class TestBatchOutput:
    def test_an_answer_with_missing_rows_is_refused_naming_the_chunk(self, tmp_path: Path) -> None:
        output = output_at(tmp_path)
        refused = r"answered 1 rows for chunk 0 \(input rows 0 to 1\)"
        with pytest.raises(ModelbitIncompleteBatch, match=refused), output.held(TASK, WORK):
            output.record_rows(chunks(KEYS)[0], [["a", 0]])
        assert not (tmp_path / "scores.parquet.checkpoint").exists()
