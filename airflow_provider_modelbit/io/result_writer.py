"""One Parquet file assembled from result chunks whose types may differ.

Each chunk's results are typed on their own (see :mod:`.arrow_results`), so chunk 1 may hold
``null`` where chunk 7 holds ``int64``, integers where a later chunk has floats, or objects with
different keys. Chunks are spooled as Arrow IPC files; when the Parquet file is written the final
type of every column is known and each chunk is cast to it on the way out, one chunk in memory at
a time. Types that cannot be reconciled (numbers in one chunk, strings in another) make the whole
column JSON text, so nothing is lost.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_modelbit.exceptions import ModelbitInputError
from airflow_provider_modelbit.io.arrow_results import (
    JSON_TEXT_METADATA,
    is_json_text,
    json_text_array,
    parquet_can_store,
)
from airflow_provider_modelbit.io.atomic import atomic_output, resolve_output
from airflow_provider_modelbit.io.chunk_store import ChunkStore
from airflow_provider_modelbit.io.column_types import parse_column_types

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

RESULT_COLUMN = "result"
DEFAULT_ROW_GROUP_ROWS = 65_536
# A column's dictionary grows to this size before its row group falls back to plain encoding.
# pyarrow's default (1 MB) is more than a row group of 8-byte values can fill, so a column whose
# values are nearly all distinct (a model's scores) was dictionary-encoded whole: a dictionary as
# large as the data beside the indices, 2.8x slower to write and a quarter larger than plain. A
# column of few distinct values (labels, rounded scores) fits in 64 KB and keeps its dictionary.
DICTIONARY_PAGE_BYTES = 64 * 1024


def output_chunk_table(
    inputs: pa.Table,
    id_name: str,
    ids: pa.Array,
    field: pa.Field,
    results: pa.Array | pa.ChunkedArray,
    passthrough: Sequence[str],
) -> pa.Table:
    """
    One chunk of a batch output: the IDs, the results as ``field`` types them, the pass-through columns.

    :param inputs: the chunk's input rows, holding the ``passthrough`` columns.
    :param id_name: the ID column's name in the output.
    """
    schema = pa.schema(
        [pa.field(id_name, ids.type), field] + [inputs.schema.field(name) for name in passthrough]
    )
    return pa.Table.from_arrays([ids, results, *(inputs.column(name) for name in passthrough)], schema=schema)


def empty_output_schema(
    inputs: pa.Schema, id_name: str, id_type: pa.DataType, passthrough: Sequence[str]
) -> pa.Schema:
    """The schema of a batch output without rows: ID, a null ``result``, the pass-through columns."""
    columns = [inputs.field(name) for name in passthrough]
    return pa.schema([pa.field(id_name, id_type), pa.field(RESULT_COLUMN, pa.null()), *columns])


def write_results_parquet(
    destination: ObjectStoragePath,
    tables: Iterable[pa.Table] = (),
    *,
    store: ChunkStore | None = None,
    expand_result: bool = False,
    result_type: pa.DataType | None = None,
    empty_schema: pa.Schema,
    before_replace: Callable[[int], None] | None = None,
) -> int:
    """
    Write result chunks, in order, as one Parquet file that replaces ``destination`` only on success.

    Every chunk is spooled before the file is opened, so a failure on any chunk leaves nothing at
    ``destination``; types that differ between chunks are reconciled (see :class:`ResultWriter`).

    :param destination: the output file.
    :param tables: chunks to write after those already in ``store``.
    :param store: chunks saved earlier (a checkpoint); a temporary spool when ``None``.
    :param expand_result: write an object ``result`` as columns ``result_<field>``.
    :param result_type: the declared type of ``result`` (see :class:`ResultWriter`), or ``None``.
    :param empty_schema: the schema written when there are no rows at all.
    :param before_replace: called with the row count once the file is written but before it
        replaces ``destination``; raising leaves what was there untouched.
    :return: the number of rows written.
    """
    with ResultWriter(store, expand_result=expand_result, result_type=result_type) as writer:
        for table in tables:
            writer.write(table)
        with atomic_output(destination) as sink:
            rows = writer.write_parquet(sink, empty_schema=empty_schema)
            if before_replace is not None:
                before_replace(rows)
    return rows


class ResultWriter:
    """
    Collect result chunks in order and write them as one Parquet file.

    Use as a context manager so a temporary spool is removed. With ``store`` given, the chunks
    already in it (for example from an earlier attempt) are part of the output as well.

    :param store: where chunks are spooled; a temporary local folder when ``None``.
    :param expand_result: write the fields of an object ``result`` as columns ``result_<field>``.
    :param result_type: the type every output's ``result`` has, whatever the chunks hold (an empty
        output too), so the outputs of daily runs agree in schema; see :func:`declared_result_type`.
    :param row_group_rows: rows per Parquet row group (small chunks are combined up to this size).
    """

    def __init__(
        self,
        store: ChunkStore | None = None,
        *,
        expand_result: bool = False,
        result_type: pa.DataType | None = None,
        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    ) -> None:
        self._temporary_folder: str | None = None
        if store is None:
            self._temporary_folder = tempfile.mkdtemp(prefix="modelbit-results-")
            store = ChunkStore(resolve_output(self._temporary_folder))
        self.store = store
        self.expand_result = expand_result
        self.result_type = result_type
        self.row_group_rows = row_group_rows
        self._next_index = max(self.store.indices(), default=-1) + 1

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self, table: pa.Table) -> None:
        """Append a chunk after those already written."""
        self.store.put(self._next_index, table)
        self._next_index += 1

    def write_parquet(self, sink: BinaryIO, empty_schema: pa.Schema | None = None) -> int:
        """
        Write every chunk, in index order, to ``sink`` as Parquet.

        :param sink: a binary stream (e.g. from :func:`.atomic.atomic_output`).
        :param empty_schema: the schema to write when there are no chunks at all.
        :return: the number of rows written.
        """
        indices = self.store.indices()
        schema = final_schema([self.store.schema(index) for index in indices]) if indices else empty_schema
        if schema is None:
            raise ValueError("No chunks were written and no empty_schema was given.")
        if self.result_type is not None:
            schema = _with_declared_result(schema, self.result_type)
        output_schema = expand_schema(schema) if self.expand_result else schema
        _refuse_duplicate_columns(output_schema)
        rows = 0
        with pq.ParquetWriter(sink, output_schema, dictionary_pagesize_limit=DICTIONARY_PAGE_BYTES) as writer:
            for group in self._row_groups(indices, schema):
                writer.write_table(group)
                rows += group.num_rows
        return rows

    def close(self) -> None:
        """Remove the temporary spool, if this writer made one."""
        if self._temporary_folder is not None:
            shutil.rmtree(self._temporary_folder, ignore_errors=True)
            self._temporary_folder = None

    def _row_groups(self, indices: Sequence[int], schema: pa.Schema) -> Iterator[pa.Table]:
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        for index in indices:
            for batch in self.store.batches(index):
                batch = conform_batch(batch, schema)
                pending.append(expand_batch(batch) if self.expand_result else batch)
                pending_rows += batch.num_rows
                if pending_rows >= self.row_group_rows:
                    yield pa.Table.from_batches(pending)
                    pending, pending_rows = [], 0
        if pending:
            yield pa.Table.from_batches(pending)


def final_schema(schemas: Sequence[pa.Schema]) -> pa.Schema:
    """
    Reconcile the schemas of all chunks, column by column.

    ``null`` gives way to any type, ``int64`` to ``double``, lists and objects merge element and
    field types (objects take the union of their fields); anything else becomes JSON text.
    """
    merged = schemas[0]
    for schema in schemas[1:]:
        if schema.names != merged.names:
            raise ValueError(f"Chunks have different columns: {merged.names} and {schema.names}.")
        merged = pa.schema([merge_fields(a, b) for a, b in zip(merged, schema, strict=True)])
    return pa.schema([_storable(field) for field in merged])


def merge_fields(a: pa.Field, b: pa.Field) -> pa.Field:
    """Return the field that holds the values of both ``a`` and ``b`` without loss."""
    if is_json_text(a) or is_json_text(b):
        return _as_json_text(a)
    merged = merge_types(a.type, b.type)
    if merged is None:
        return _as_json_text(a)
    return a.with_type(merged)


def merge_types(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """Return the narrowest type holding both, or ``None`` when they conflict."""
    if a.equals(b):
        return a
    if pa.types.is_null(a) or pa.types.is_null(b):
        return b if pa.types.is_null(a) else a
    if {a, b} == {pa.int64(), pa.float64()}:
        return pa.float64()
    if pa.types.is_list(a) and pa.types.is_list(b):
        element = merge_types(a.value_type, b.value_type)
        return None if element is None else pa.list_(element)
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        return _merge_structs(a, b)
    return None


def _merge_structs(a: pa.StructType, b: pa.StructType) -> pa.DataType | None:
    fields = {field.name: field for field in a}
    for field in b:
        if field.name not in fields:
            fields[field.name] = field
            continue
        merged = merge_types(fields[field.name].type, field.type)
        if merged is None:
            return None
        fields[field.name] = fields[field.name].with_type(merged)
    return pa.struct(list(fields.values()))


def conform_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a chunk's batch to the final schema, encoding columns that became JSON text."""
    if batch.schema.equals(schema, check_metadata=True):
        return batch
    columns = [
        _conform_column(column, field, target)
        for column, field, target in zip(batch.columns, batch.schema, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _conform_column(column: pa.Array, field: pa.Field, target: pa.Field) -> pa.Array:
    if is_json_text(target) and not is_json_text(field):
        return json_text_array(column.to_pylist())
    if column.type.equals(target.type):
        return column
    _refuse_undeclared_fields(column.type, target)
    try:
        return column.cast(target.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise ModelbitInputError(
            f"Results of type {column.type} cannot be written as column {target.name!r} of type "
            f"{target.type} ({error}); correct result_schema, or leave it unset to type results from "
            "what the deployment returns."
        ) from error


def declared_result_type(result_schema: Mapping[str, Any] | None) -> pa.DataType | None:
    """
    The ``result`` type of an output whose object results have exactly the fields of ``result_schema``.

    The one reading of an operator's ``result_schema=`` (``{field: type}``, types named as in
    ``column_types``); ``None`` when there is none, and the results' own types are kept.

    :raises ModelbitInputError: naming the field whose type is unknown.
    """
    if not result_schema:
        return None
    fields = parse_column_types(result_schema)
    return pa.struct([pa.field(name, data_type) for name, data_type in fields.items()])


def _with_declared_result(schema: pa.Schema, result_type: pa.DataType) -> pa.Schema:
    """``schema`` with ``result`` of the declared type, whatever the chunks held (none when empty)."""
    position = schema.get_field_index(RESULT_COLUMN)
    return schema.set(position, pa.field(RESULT_COLUMN, result_type))


def _refuse_undeclared_fields(data_type: pa.DataType, target: pa.Field) -> None:
    # Arrow drops struct fields the target lacks; a result field nobody declared must not vanish.
    if not (pa.types.is_struct(data_type) and pa.types.is_struct(target.type)):
        return
    declared = {target.type.field(i).name for i in range(target.type.num_fields)}
    extra = [
        data_type.field(i).name
        for i in range(data_type.num_fields)
        if data_type.field(i).name not in declared
    ]
    if extra:
        raise ModelbitInputError(
            f"The deployment's results have the field(s) {', '.join(map(repr, extra))}, which result_schema "
            f"does not list (it lists {', '.join(sorted(declared))}); add them to result_schema. The "
            "finished chunks are kept, so the retry only writes the output."
        )


def expand_schema(schema: pa.Schema) -> pa.Schema:
    """Replace an object ``result`` column by one column ``result_<field>`` per field."""
    position = schema.get_field_index(RESULT_COLUMN)
    if position < 0 or not pa.types.is_struct(schema.field(position).type):
        return schema
    fields = [pa.field(f"{RESULT_COLUMN}_{child.name}", child.type) for child in schema.field(position).type]
    return pa.schema([*schema][:position] + fields + [*schema][position + 1 :])


def expand_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Split an object ``result`` column into its fields, as :func:`expand_schema` describes."""
    position = batch.schema.get_field_index(RESULT_COLUMN)
    if position < 0 or not pa.types.is_struct(batch.schema.field(position).type):
        return batch
    schema = expand_schema(batch.schema)
    children = batch.column(position).flatten()
    columns = [*batch.columns[:position], *children, *batch.columns[position + 1 :]]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _as_json_text(field: pa.Field) -> pa.Field:
    return pa.field(field.name, pa.string(), metadata=JSON_TEXT_METADATA)


def _storable(field: pa.Field) -> pa.Field:
    return field if parquet_can_store(field.type) else _as_json_text(field)


def _refuse_duplicate_columns(schema: pa.Schema) -> None:
    duplicates = sorted({name for name in schema.names if schema.names.count(name) > 1})
    if duplicates:
        raise ModelbitInputError(
            f"The output would have the column(s) {', '.join(duplicates)} twice; "
            "rename the pass-through column or turn off expand_result."
        )
