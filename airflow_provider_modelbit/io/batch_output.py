"""One batch run's output: the lease, the checkpoint of finished chunks, and the final Parquet file.

:class:`BatchOutput` is what the batch operator writes through on both paths. An answer (inline
rows ``[[id, result], ...]`` or a link's table) becomes its chunk's checkpoint table (IDs, result,
pass-through columns), saved only while the run still holds the output's lease; when every chunk
is in, the checkpoint is checked against the input and assembled into one Parquet file.
:func:`score_pending` is the synchronous path's loop: unfinished chunks are handed to the hook
lazily, and each answer, which comes back in request order, is saved as it arrives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from airflow_provider_modelbit.exceptions import ModelbitError, ModelbitIncompleteBatch, ModelbitInputError
from airflow_provider_modelbit.io.arrow_results import result_field
from airflow_provider_modelbit.io.batch_inputs import ROW_POSITION_ID, InputChunk, chunk_ids
from airflow_provider_modelbit.io.chunk_store import CheckpointRecord, ChunkStore, held_checkpoint
from airflow_provider_modelbit.io.ownership import OutputLease, TaskIdentity
from airflow_provider_modelbit.io.result_writer import (
    RESULT_COLUMN,
    empty_output_schema,
    output_chunk_table,
    write_results_parquet,
)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_modelbit.hooks.batching import ChunkResult

BatchRows = Sequence[list[Any]]


class Progress(Protocol):
    """What :func:`score_pending` reports rows to (``operators/progress.ProgressLog``)."""

    def advance(self, rows: int, *, reused: bool = False) -> None: ...


@dataclass(kw_only=True)
class BatchOutput:
    """
    The output of one batch run and the checkpoint its finished chunks are saved in beside it.

    :param location: where the Parquet output goes; the checkpoint is ``<location>.checkpoint/``.
    :param id_column: the input's ID column; ``None`` writes row positions as ``id``.
    :param passthrough: input columns copied into the output (the ID column not among them).
    :param expand_result: write object results as ``result_<field>`` columns.
    :param result_type: the declared type of the results (``result_schema``), or ``None``.
    :param deployment: the deployment answering, named in messages.
    :param version: its version, named in messages.
    :param wait_seconds: how long to wait for another run that holds the output.
    """

    location: ObjectStoragePath
    id_column: str | None
    passthrough: list[str]
    expand_result: bool
    result_type: pa.DataType | None
    deployment: str
    version: str | int
    wait_seconds: float
    checkpoint: ChunkStore = field(init=False)
    _lease: OutputLease | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.checkpoint = ChunkStore.beside(self.location)

    @property
    def id_name(self) -> str:
        """The ID column's name in the output."""
        return self.id_column or ROW_POSITION_ID

    @contextmanager
    def held(self, task: TaskIdentity, work: dict[str, Any]) -> Iterator[set[int]]:
        """Hold the output's lease and its checkpoint for ``work``; yield the chunks a retry can reuse."""
        self._lease = OutputLease(
            self.checkpoint.location, task, output=str(self.location), wait_seconds=self.wait_seconds
        )
        with held_checkpoint(self.checkpoint, self._lease, CheckpointRecord.for_work(work, task)) as finished:
            yield finished

    def record_rows(self, chunk: InputChunk, rows: BatchRows) -> None:
        """Save a chunk's answer ``[[id, result], ...]`` (in the chunk's order) as a finished chunk."""
        if len(rows) != chunk.num_rows:
            raise ModelbitIncompleteBatch(
                f"Deployment {self.deployment!r} (version {self.version}) answered {len(rows)} rows for "
                f"{chunk.describe()}, of {chunk.num_rows} rows; the chunk was not used.",
                deployment=self.deployment,
                version=self.version,
            )
        field, results = result_field(RESULT_COLUMN, [row[1] for row in rows])
        self._save(chunk, field, results)

    def record_table(self, chunk: InputChunk, answer: pa.Table) -> None:
        """Save a chunk's answer read from a link (a ``result`` column in input order) as a finished chunk."""
        self._save(chunk, answer.schema.field(RESULT_COLUMN), answer.column(RESULT_COLUMN))

    def _save(self, chunk: InputChunk, field: pa.Field, results: pa.Array | pa.ChunkedArray) -> None:
        table = output_chunk_table(
            chunk.table, self.id_name, chunk_ids(chunk, self.id_column), field, results, self.passthrough
        )
        # A run that lost its lease must not write into a checkpoint another run now owns.
        if self._lease is not None:
            self._lease.check()
        self.checkpoint.put(chunk.index, table)

    def write(self, expected: Iterable[tuple[int, pa.Array]], input_schema: pa.Schema) -> int:
        """
        Check every input row has one result, then assemble the Parquet output atomically.

        :param expected: each input chunk's index and IDs, read again from the input.
        :param input_schema: the input's schema, for the types of an empty output.
        :return: the rows written.
        """
        self.checkpoint.verify_complete(expected, str(self.location))
        id_type = input_schema.field(self.id_column).type if self.id_column else pa.int64()
        return write_results_parquet(
            self.location,
            store=self.checkpoint,
            expand_result=self.expand_result,
            result_type=self.result_type,
            empty_schema=empty_output_schema(input_schema, self.id_name, id_type, self.passthrough),
            before_replace=self._confirm_lease,
        )

    def _confirm_lease(self, rows: int) -> None:
        """Confirm this run still owns the output; raising leaves what was at the location untouched."""
        if self._lease is not None:
            self._lease.confirm()


def score_pending(
    infer: Callable[[Iterator[BatchRows]], Generator[ChunkResult, None, None]],
    chunks: Iterable[InputChunk],
    *,
    finished: set[int],
    batch_rows: Callable[[InputChunk], BatchRows],
    output: BatchOutput,
    progress: Progress,
    log: Any,
) -> None:
    """
    Send every chunk not finished yet through ``infer`` and save each answer as it arrives.

    :param infer: the hook's chunk scorer: batch rows of each chunk in, answers out in request order.
    :param chunks: the input's chunks, the same on every attempt.
    :param finished: indices of the chunks an earlier try finished: counted, not sent.
    :param batch_rows: a chunk as the batch rows of its request.
    :raises ModelbitError: the failed request's error, naming its chunk and input rows.
    """
    in_flight: deque[InputChunk] = deque()

    def requests() -> Iterator[BatchRows]:
        # The hook pulls requests lazily, so a chunk is in flight from the moment it is taken.
        for chunk in chunks:
            if chunk.index in finished:
                progress.advance(chunk.num_rows, reused=True)
                continue
            in_flight.append(chunk)
            yield batch_rows(chunk)

    results = infer(requests())
    recording: InputChunk | None = None
    try:
        with closing(results):
            for chunk_result in results:
                recording = in_flight.popleft()
                output.record_rows(recording, chunk_result.rows)
                progress.advance(recording.num_rows)
                recording = None
    except ModelbitError as failed:
        _log_stop(log, failed, in_flight, output)
        # Results arrive in request order, so a failed request is the oldest in flight. An input
        # error already names its file and row (and may come from reading a later chunk), and
        # a refused answer names its chunk.
        if recording is not None or not in_flight or isinstance(failed, ModelbitInputError):
            raise
        raise failed.located(in_flight[0].describe()) from failed
    except BaseException as stopped:
        _log_stop(log, stopped, in_flight, output)
        raise


def _log_stop(log: Any, stopped: BaseException, in_flight: deque[InputChunk], output: BatchOutput) -> None:
    log.warning(
        "The batch stopped (%s) with %d chunk(s) in flight: their requests were abandoned and "
        "no new chunk was sent; %d finished chunk(s) stay in %s for the retry.",
        type(stopped).__name__,
        len(in_flight),
        len(output.checkpoint.indices()),
        output.checkpoint.location,
    )
