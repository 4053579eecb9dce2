"""
Score a whole table with a Modelbit deployment: :class:`ModelbitBatchInferenceOperator`.

The table is streamed: read a record batch at a time, cut into chunks, sent with a bounded
number of requests in flight, and each finished chunk is saved beside the output as it arrives.
The Parquet output is assembled from those saved chunks at the end and moved into place in one
step. Because finished chunks survive a failed attempt, a retry scores only what is left. In
deferrable mode the same chunks are submitted as async requests, and their webhook deliveries are
saved into the same checkpoint on resumption, so both paths write the same file.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator

from airflow_provider_modelbit.defaults import (
    DEFAULT_ADAPTIVE_CONCURRENCY,
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONN_ID,
    DEFAULT_MAX_CONCURRENCY,
    LATEST,
    LINKS,
)
from airflow_provider_modelbit.exceptions import ModelbitInputError
from airflow_provider_modelbit.io.atomic import resolve_output
from airflow_provider_modelbit.io.batch_inputs import (
    InputChunk,
    batch_rows,
    check_batch_settings,
    check_table_ids,
    chunk_ids_again,
    column_list,
    exact_chunks,
    refuse_unsendable_columns,
)
from airflow_provider_modelbit.io.batch_output import BatchOutput, score_pending
from airflow_provider_modelbit.io.column_types import parse_column_types
from airflow_provider_modelbit.io.destination import check_output_location, refuse_column_clashes
from airflow_provider_modelbit.io.links import link_table_in_input_order
from airflow_provider_modelbit.io.ownership import TaskIdentity
from airflow_provider_modelbit.io.result_writer import declared_result_type
from airflow_provider_modelbit.io.tables import TableSource, open_table
from airflow_provider_modelbit.operators.assets import announce_output, as_asset, with_asset_outlet
from airflow_provider_modelbit.operators.deferrable import CallbackDelivery, ModelbitDeferrableMixin
from airflow_provider_modelbit.operators.lineage import batch_lineage
from airflow_provider_modelbit.operators.progress import ProgressLog
from airflow_provider_modelbit.version_compat import conf

if TYPE_CHECKING:
    import pyarrow as pa
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
    from airflow_provider_modelbit.io.column_rows import ColumnRows


class ModelbitBatchInferenceOperator(ModelbitDeferrableMixin, BaseOperator):
    """
    Score every row of a table with a Modelbit deployment and write the results as Parquet.

    The input is a Parquet file, a directory of Parquet files, a CSV file or a JSON Lines file,
    on a local path or any ObjectStoragePath URL (``s3://``, ``gs://``, ``file://``...). Each row
    is sent as one object ``{column: value}`` — how Modelbit's own client sends a DataFrame — or,
    with ``argument_style="positional"``, as separate arguments in ``columns`` order. Values are
    sent as JSON the way Modelbit's own client sends them: NaN and infinities become ``null``,
    dates and timestamps their ``str()`` (``"2024-01-02 03:04:05"``), durations pandas' form
    (``"0 days 00:00:01"``), decimals floats. Columns JSON cannot carry (binary, maps, unions,
    intervals) are refused.

    Before the first request the operator checks that the columns exist, that the model input
    columns can be sent, and that the IDs in ``id_column`` are present and unique (checked with
    Arrow, about 8 bytes per integer ID; leave ``id_column`` unset to use row positions instead).
    A failed check names the column or row and sends nothing.

    The output has one row per input row, in input order: the ID (named as ``id_column``, or
    ``id`` holding the row position; its input type kept), the ``result`` typed from JSON (numbers,
    strings, booleans, lists, objects as structs; a column of genuinely mixed types is kept as
    JSON text with field metadata ``modelbit.encoding=json``) or, with ``expand_result``, one column
    ``result_<field>`` per object field, then the ``passthrough_columns``. Empty input gives an
    empty file with those columns: ``result`` of type null, or with ``result_schema`` the declared
    result columns, so that every output has one schema. The file is written atomically: a failed
    task leaves nothing at ``output_path``.

    Before anything is sent the destination is checked too: ``output_path`` must not be the input,
    a directory, unwritable or unreachable, its filesystem package must be installed, and no
    pass-through column may clash with the ID or result columns.

    One run writes an output at a time: the run holds a lease on ``output_path`` (an owner record
    in ``<output_path>.checkpoint/``, renewed while it works). Another run writing the same output
    waits up to ``output_wait_seconds`` for it, then fails naming the run that holds it.

    Finished chunks are kept in ``<output_path>.checkpoint/`` until the output is written. A retry
    of the same task instance with the same input and settings reuses them and scores only the
    rest; a checkpoint made by another run, from a different input, workspace, deployment,
    version, branch or settings is discarded with a warning. With ``version="latest"`` a new
    version deployed between attempts would score the remaining chunks only — pin a version when
    that matters. Before the output replaces what was there, every input row must have exactly
    one result (row counts per chunk and in total, and the IDs); otherwise the task fails and the
    previous output is untouched.

    ``on_kill`` and ``execution_timeout`` stop the synchronous path within seconds: requests in
    flight are abandoned (their connections closed), no new chunk is sent, and the finished
    chunks stay for the retry.

    Progress (rows done, rows per second, ETA) is logged every ``progress_interval_seconds``.
    The task returns ``{"path", "rows", "chunks", "seconds", "rows_per_second"}``, never results.

    With ``deferrable=True`` (default from ``[operators] default_deferrable``) each chunk is
    submitted as one async request carrying a signed webhook URL (the connection needs
    ``callback_base_url`` and ``callback_secret``), and the task waits in the triggerer without
    holding a worker slot. On resumption the deliveries — inline results, or links streamed to
    disk — are saved into the same checkpoint and assembled into the same Parquet file as the
    synchronous path writes. A chunk delivered as an error is resubmitted on its own.

    :param deployment: name of the Modelbit deployment. (templated)
    :param input_path: the input table, local path or URL. (templated)
    :param output_path: where the Parquet result is written, local path or URL. (templated)
    :param id_column: column holding unique row IDs; ``None`` uses row positions. (templated)
    :param columns: the columns sent to the model (one name or a list); ``None`` sends every column but
        the ID. (templated)
    :param argument_style: ``"object"`` (one ``{column: value}`` per row) or ``"positional"``.
    :param passthrough_columns: input columns copied unchanged into the output.
    :param expand_result: write the fields of object results as columns ``result_<field>``.
    :param result_schema: ``{field: type}`` of the deployment's object results (types named as in
        ``column_types``): every output, an empty one included, then has exactly these fields (as
        ``result_<field>`` columns with ``expand_result``) with these types, so the outputs of
        daily runs agree in schema; a result field not listed fails the task naming it.
    :param column_types: ``{column: type}`` to read input columns as, for example
        ``{"zip_code": "str"}``: ``"str"``, ``"int"``, ``"float"``, ``"bool"``, ``"date"``, an Arrow
        alias (``"int32"``, ``"timestamp[us]"``) or a ``pyarrow.DataType``. A CSV ID column is read
        as text unless named here, so ``00123`` stays ``00123``.
    :param version: ``latest``, a version number or an alias. (templated)
    :param branch: git branch; ``None`` uses the connection's. (templated)
    :param modelbit_conn_id: the Modelbit connection. (templated)
    :param timeout_seconds: inference time limit per request (1-300); ``None`` uses the connection's.
    :param batch_size: rows per chunk; a chunk is the unit of requests and of resuming.
    :param batch_bytes: most bytes per request body; larger chunks are split into several requests.
    :param max_concurrency: most requests in flight at once: the ceiling of the adaptive level, or
        the level itself when ``adaptive_concurrency`` is ``False``.
    :param adaptive_concurrency: start with few requests in flight and follow the deployment's
        answers (more while answers stay fast, half as many on refusals, timeouts or rising latency,
        none before a ``Retry-After``) up to ``max_concurrency``. The final level is in the returned
        summary under ``concurrency``.
    :param response_format: ``None``, or ``"links"`` to receive each chunk's results as a download.
    :param idempotent: the model may safely run twice on the same rows, so requests are re-sent
        after read timeouts, deployment errors and dropped connections too.
    :param input_conn_id: Airflow connection for the input's object store, if the URL names none.
    :param output_conn_id: Airflow connection for the output's object store, if the URL names none.
    :param asset: an Asset (or its URI) updated when the output is written, so downstream DAGs can
        be scheduled on fresh scores.
    :param deferrable: submit chunks asynchronously and free the worker while they are scored (see above).
    :param progress_interval_seconds: seconds between progress lines in the task log.
    :param output_wait_seconds: how long to wait for another run writing the same ``output_path``
        before failing; ``0`` fails at once.
    """

    template_fields: Sequence[str] = (
        "deployment",
        "input_path",
        "output_path",
        "version",
        "branch",
        "modelbit_conn_id",
        "columns",
        "id_column",
    )
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        deployment: str,
        input_path: str | ObjectStoragePath,
        output_path: str | ObjectStoragePath,
        id_column: str | None = None,
        columns: str | Sequence[str] | None = None,
        argument_style: str = "object",
        passthrough_columns: str | Sequence[str] | None = None,
        expand_result: bool = False,
        column_types: Mapping[str, Any] | None = None,
        result_schema: Mapping[str, Any] | None = None,
        version: str | int = LATEST,
        branch: str | None = None,
        modelbit_conn_id: str = DEFAULT_CONN_ID,
        timeout_seconds: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        adaptive_concurrency: bool = DEFAULT_ADAPTIVE_CONCURRENCY,
        response_format: str | None = None,
        idempotent: bool = False,
        input_conn_id: str | None = None,
        output_conn_id: str | None = None,
        asset: Asset | str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        progress_interval_seconds: float = 10.0,
        output_wait_seconds: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**with_asset_outlet(kwargs, asset))
        check_batch_settings(argument_style, batch_size, batch_bytes, max_concurrency, adaptive_concurrency)
        self.deployment = deployment
        self.input_path = input_path
        self.output_path = output_path
        self.id_column = id_column
        self.columns = columns
        self.argument_style = argument_style
        self.passthrough_columns = column_list(passthrough_columns or [])
        self.expand_result = expand_result
        self.column_types = dict(column_types or {})
        parse_column_types(self.column_types)  # an unknown type name fails when the DAG is parsed
        self.result_schema = dict(result_schema) if result_schema is not None else None
        self._result_type = declared_result_type(result_schema)
        self.version = version
        self.branch = branch
        self.modelbit_conn_id = modelbit_conn_id
        self.timeout_seconds = timeout_seconds
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.max_concurrency = max_concurrency
        self.adaptive_concurrency = adaptive_concurrency
        self.response_format = response_format
        self.idempotent = idempotent
        self.input_conn_id = input_conn_id
        self.output_conn_id = output_conn_id
        self.asset = as_asset(asset) if asset is not None else None
        self.deferrable = deferrable
        self.progress_interval_seconds = progress_interval_seconds
        self.output_wait_seconds = output_wait_seconds
        self.written: dict[str, Any] | None = None  # what the task returned, once the output is in place

    @cached_property
    def hook(self) -> ModelbitHook:
        from airflow_provider_modelbit.hooks.modelbit import ModelbitHook

        return ModelbitHook(
            self.modelbit_conn_id,
            batch_size=self.batch_size,
            batch_bytes=self.batch_bytes,
            max_concurrency=self.max_concurrency,
            adaptive_concurrency=self.adaptive_concurrency,
        )

    @property
    def scored_rows(self) -> int:
        """Rows written by the finished task (for the deferred path's metrics)."""
        return int((self.written or {}).get("rows", 0))

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The OpenLineage input files, Parquet output and ``modelbit`` run facet of this finished task."""
        return batch_lineage(self)

    # The run, synchronous path --------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        started = time.monotonic()
        total_rows = self._prepare()
        if self.deferrable:
            return self.execute_deferrable(context)
        with self._owned_checkpoint(context) as finished:
            progress = ProgressLog(self.log, total_rows, self.progress_interval_seconds)
            infer = partial(
                self.hook.infer_chunks,
                self.deployment,
                version=self.version,
                branch=self.branch,
                timeout_seconds=self.timeout_seconds,
                response_format=self.response_format,
                idempotent=self.idempotent,
                max_concurrency=self.max_concurrency,
                adaptive_concurrency=self.adaptive_concurrency,
                batch_bytes=self.batch_bytes,
            )
            score_pending(
                infer,
                self._iter_chunks(),
                finished=finished,
                batch_rows=self._chunk_rows,
                output=self.batch_output,
                progress=progress,
                log=self.log,
            )
            return self._write_results(context, started)

    @contextmanager
    def _owned_checkpoint(self, context: Context) -> Iterator[set[int]]:
        """Hold the output's lease and its checkpoint for the run; yield the chunks a retry can reuse."""
        with self.batch_output.held(TaskIdentity.from_context(context), self._work()) as finished:
            if finished:
                self.log.info("Resuming: %d chunk(s) finished by an earlier try are reused.", len(finished))
            yield finished

    # The run, deferred path -----------------------------------------------------------------

    def _callback_payloads(self) -> Iterator[list[list[Any]]]:
        """The batch rows of every chunk, one async request each, read lazily from the input."""
        # As lists: a payload is hashed and sent as the JSON of its rows (callbacks/job.py).
        return (list(self._chunk_rows(chunk)) for chunk in self._iter_chunks())

    def _callback_work(self) -> dict[str, Any]:
        """The checkpoint's work (the input's file markers and every option): reading it reads no rows."""
        return self._work()

    def _collect_callback_results(
        self, context: Context, deliveries: Iterator[CallbackDelivery]
    ) -> dict[str, Any]:
        """Save each delivered chunk into the checkpoint, then write the output as the sync path does."""
        resumed = time.monotonic()
        with self._owned_checkpoint(context) as finished:
            progress = ProgressLog(self.log, self.source.num_rows, self.progress_interval_seconds)
            waited = 0.0
            with tempfile.TemporaryDirectory(prefix="modelbit-deliveries-") as scratch:
                for delivery, chunk in zip(deliveries, self._iter_chunks(), strict=True):
                    waited = max(waited, delivery.seconds)
                    if chunk.index not in finished:
                        self._record_delivery(chunk, delivery, Path(scratch))
                    progress.advance(chunk.num_rows, reused=chunk.index in finished)
            # Time runs from the first submission: the deferral is part of the task's work.
            return self._write_results(context, resumed - waited)

    def _record_delivery(self, chunk: InputChunk, delivery: CallbackDelivery, scratch: Path) -> None:
        """Save one chunk's delivery: inline results matched by ID, or a link streamed to disk."""
        from airflow_provider_modelbit.hooks.batching import encode_chunk, reassemble

        rows = self._chunk_rows(chunk)
        call = self.hook.call_target(self.deployment, self.version, self.branch)
        if self.response_format != LINKS:
            answer = reassemble(encode_chunk(rows), delivery.value, call=call)
            self.batch_output.record_rows(chunk, answer)
            return
        linked = link_table_in_input_order(
            self.hook.read_link,
            delivery.value,
            [row[0] for row in rows],
            scratch / f"chunk-{chunk.index:08d}.parquet",
            call=call,
        )
        self.batch_output.record_table(chunk, linked)

    # Building blocks shared with the deferrable path -----------------------------------------

    @cached_property
    def source(self) -> TableSource:
        """The input table, opened with the columns the run needs."""
        # Without explicit columns every column is a model input, so all of them are read.
        needed = None if self.columns is None else [*column_list(self.columns), *self.passthrough_columns]
        source = open_table(
            self.input_path,
            columns=needed,
            id_column=self.id_column,
            conn_id=self.input_conn_id,
            column_types=self.column_types,
        )
        source.require_columns([*self.passthrough_columns, *([self.id_column] if self.id_column else [])])
        return source

    @cached_property
    def output_location(self) -> ObjectStoragePath:
        """Where the Parquet result goes (``output`` is the task's XComArg, as on every operator)."""
        return resolve_output(self.output_path, self.output_conn_id)

    @cached_property
    def batch_output(self) -> BatchOutput:
        """The output, its lease and the checkpoint of finished chunks kept beside it until it is written."""
        return BatchOutput(
            location=self.output_location,
            id_column=self.id_column,
            passthrough=self._output_passthrough,
            expand_result=self.expand_result,
            result_type=self._result_type,
            deployment=self.deployment,
            version=self.version,
            wait_seconds=self.output_wait_seconds,
        )

    def _chunk_rows(self, chunk: InputChunk) -> ColumnRows:
        """Return a chunk as the batch rows ``[[id, *args], ...]`` of one request."""
        return batch_rows(
            chunk, columns=self._model_columns, id_column=self.id_column, argument_style=self.argument_style
        )

    def _iter_chunks(self) -> Iterator[InputChunk]:
        """Yield the input in chunks of ``batch_size`` rows, the same chunks on every attempt."""
        return exact_chunks(self.source.iter_batches(max_rows=max(self.batch_size, 65_536)), self.batch_size)

    def _write_results(self, context: Context, started: float) -> dict[str, Any]:
        """Check every input row has one result, then assemble the Parquet output atomically."""
        chunks = len(self.batch_output.checkpoint.indices())
        rows = self.batch_output.write(self._expected_chunks(), self.source.schema)
        seconds = time.monotonic() - started
        announce_output(context, self.asset, str(self.output_location), rows)
        self.log.info("Wrote %d rows to %s in %.1f s.", rows, self.output_location, seconds)
        self.written = {
            "path": str(self.output_location),
            "rows": rows,
            "chunks": chunks,
            "seconds": round(seconds, 3),
            "rows_per_second": round(rows / seconds, 1) if seconds > 0 else None,
            "concurrency": self.deferred_concurrency or self.hook.concurrency,
        }
        return self.written

    # Checks and descriptions -----------------------------------------------------------------

    def _prepare(self) -> int | None:
        """Check the input, the destination and the call before anything is sent; return the row count."""
        where = f"input {self.source.location}"
        if not self._model_columns:
            raise ModelbitInputError(f"No model input columns: {where} has only the ID column.")
        refuse_unsendable_columns(self.source.schema, self._model_columns, where)
        check_output_location(self.output_location, inputs=[self.source.location])
        refuse_column_clashes(
            self._output_passthrough,
            id_name=self.batch_output.id_name,
            expand_result=self.expand_result,
            output=str(self.output_location),
        )
        self.hook.check_call(
            self.deployment,
            version=self.version,
            branch=self.branch,
            timeout_seconds=self.timeout_seconds,
            response_format=self.response_format,
            asynchronous=self.deferrable,
        )
        return (
            self.source.num_rows if self.id_column is None else check_table_ids(self.source, self.id_column)
        )

    def _expected_chunks(self) -> Iterator[tuple[int, pa.Array]]:
        """Each input chunk's index and IDs, read again from the input (one column) to check the results."""
        column = self.id_column or self._model_columns[0]
        return chunk_ids_again(self.source, column, self.id_column, self.batch_size)

    @cached_property
    def _model_columns(self) -> list[str]:
        if self.columns is not None:
            return column_list(self.columns)
        return [name for name in self.source.schema.names if name != self.id_column]

    @property
    def _output_passthrough(self) -> list[str]:
        return [name for name in self.passthrough_columns if name != self.id_column]

    def _work(self) -> dict[str, Any]:
        """Everything that decides the chunks' answers; a checkpoint made for other work is discarded."""
        settings = self.hook.settings
        return {
            "workspace": settings.base_url,
            "connection": self.modelbit_conn_id,
            "connection_branch": settings.branch,
            "timeout_seconds": self.timeout_seconds or settings.timeout_seconds,
            "response_format": self.response_format,
            "input": self.source.fingerprint(),
            "input_schema": self.source.schema.to_string(show_schema_metadata=False),
            "deployment": self.deployment,
            "version": str(self.version),
            "branch": self.branch,
            "columns": self._model_columns,
            "id_column": self.id_column,
            "argument_style": self.argument_style,
            "passthrough_columns": self._output_passthrough,
            "batch_size": self.batch_size,
            "batch_bytes": self.batch_bytes,
        }
