"""Input tables checked and cut into Modelbit batch rows.

Everything a user can get wrong about an input table is found here before the first request:
columns whose type JSON cannot carry, and row IDs that are missing or repeated (each ID must come
back exactly once, so a repeat would make results ambiguous). Then record batches are cut into
chunks of exactly ``batch_size`` rows — the same chunks on every attempt, which is what lets a
retry skip the chunks an earlier attempt finished — and each chunk becomes rows ``[id, *args]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_modelbit.exceptions import ModelbitInputError
from airflow_provider_modelbit.io.column_rows import ColumnRows
from airflow_provider_modelbit.io.tables import TableSource

ARGUMENT_STYLES = ("object", "positional")
ROW_POSITION_ID = "id"

#: Rows read from the input at a time when only the ID column is checked.
_ID_SCAN_ROWS = 262_144


@dataclass(frozen=True)
class InputChunk:
    """
    A chunk of consecutive input rows.

    :param index: the chunk's position in the table, from 0.
    :param first_row: the table position of the chunk's first row.
    :param table: the chunk's input columns (model inputs, ID and pass-through columns).
    """

    index: int
    first_row: int
    table: pa.Table

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def describe(self) -> str:
        """Where the chunk is in the input, for messages: ``chunk 3 (input rows 300 to 399)``."""
        return f"chunk {self.index} (input rows {self.first_row} to {self.first_row + self.num_rows - 1})"


def refuse_unsendable_columns(schema: pa.Schema, columns: Sequence[str], where: str) -> None:
    """
    Refuse model input columns whose values JSON cannot carry (binary data, maps, unions).

    :raises ModelbitInputError: naming the column, its type and ``where`` (the input table).
    """
    for name in columns:
        data_type = schema.field(name).type
        unsendable = _unsendable_part(data_type)
        if unsendable is not None:
            raise ModelbitInputError(
                f"Column {name!r} of {where} has type {data_type}, which cannot be sent as JSON "
                f"({unsendable}). Drop it from columns, or convert it first: "
                f"{_CONVERSION_ADVICE[unsendable]}."
            )


def _unsendable_part(data_type: pa.DataType) -> str | None:
    if pa.types.is_dictionary(data_type):
        return _unsendable_part(data_type.value_type)
    if pa.types.is_struct(data_type):
        return next(filter(None, (_unsendable_part(field.type) for field in data_type)), None)
    if (
        pa.types.is_list(data_type)
        or pa.types.is_large_list(data_type)
        or pa.types.is_fixed_size_list(data_type)
    ):
        return _unsendable_part(data_type.value_type)
    if (
        pa.types.is_binary(data_type)
        or pa.types.is_large_binary(data_type)
        or pa.types.is_fixed_size_binary(data_type)
        or pa.types.is_binary_view(data_type)
    ):
        return "binary data"
    if pa.types.is_interval(data_type):
        return "calendar intervals"
    if pa.types.is_map(data_type) or pa.types.is_union(data_type):
        return "maps and unions"
    return None


# What to do with each kind of value JSON cannot carry: the advice must fit the column.
_CONVERSION_ADVICE = {
    "binary data": "binary data to a base64 string, or upload it and send its URL",
    "calendar intervals": (
        'an interval or period to text ("2024-01", "P1M") or to a number of months or days'
    ),
    "maps and unions": "a map to a list of key/value structs or a JSON string, a union to one type",
}


def column_values(table: pa.Table, name: str) -> list[Any]:
    """
    A column's values as Python objects, as the encoder sends them.

    A pandas ``Period`` column in Parquet holds period numbers since 1970 (``648`` for January
    2024); it is sent as the text pandas gives a ``Period``, ``"2024-01"``, as the inference
    operator sends a DataFrame's periods, never as the number.
    """
    column = table.column(name)
    frequency = _period_frequency(table.schema.field(name))
    if frequency is None:
        return column.to_pylist()
    import pandas as pd  # a pandas period column was written by pandas, so it is installed

    chunks = [chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk for chunk in column.chunks]
    ordinals = [value for chunk in chunks for value in chunk.to_pylist()]
    return [None if value is None else str(pd.Period(ordinal=value, freq=frequency)) for value in ordinals]


def _period_frequency(field: pa.Field) -> str | None:
    """The frequency of a pandas period column (registered extension type or its metadata), else ``None``."""
    if isinstance(field.type, pa.ExtensionType) and field.type.extension_name == _PANDAS_PERIOD:
        return str(field.type.freq)
    metadata = field.metadata or {}
    if metadata.get(b"ARROW:extension:name") != _PANDAS_PERIOD.encode():
        return None
    return str(json.loads(metadata.get(b"ARROW:extension:metadata", b"{}")).get("freq")) or None


_PANDAS_PERIOD = "pandas.period"


def refuse_bad_id_type(schema: pa.Schema, id_column: str, where: str) -> None:
    """Accept only integer and string IDs: Modelbit returns them as JSON, where they round-trip exactly."""
    data_type = schema.field(id_column).type
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    if not (
        pa.types.is_integer(data_type) or pa.types.is_string(data_type) or pa.types.is_large_string(data_type)
    ):
        raise ModelbitInputError(
            f"ID column {id_column!r} of {where} has type {data_type}; IDs must be integers or strings. "
            "Cast the column, or leave id_column unset to use row positions."
        )


def count_and_check_ids(id_batches: Iterable[pa.Array], id_column: str, where: str) -> int:
    """
    Check that every ID is present and unique, and count the rows.

    The IDs are gathered as one Arrow column (8 bytes per integer ID) and checked with Arrow's
    hash and sort kernels, so a table of tens of millions of rows is checked without a Python
    object per row.

    :param id_batches: the ID column, in order, a batch at a time.
    :return: the number of rows.
    :raises ModelbitInputError: naming the first null or repeated ID and its row.
    """
    gathered: list[pa.Array] = []
    position = 0
    for ids in id_batches:
        if ids.null_count:
            first_null = position + pc.index(ids.is_null(), True).as_py()
            raise ModelbitInputError(
                f"ID column {id_column!r} of {where} is empty at row {first_null}; every row needs an ID."
            )
        gathered.append(_decoded(ids))
        position += len(ids)
    if gathered:
        _refuse_repeated_ids(pa.chunked_array(gathered), id_column, where)
    return position


def _decoded(ids: pa.Array) -> pa.Array:
    # Batches may carry different dictionaries; compare the values themselves.
    return ids.dictionary_decode() if pa.types.is_dictionary(ids.type) else ids


def _refuse_repeated_ids(ids: pa.ChunkedArray, id_column: str, where: str) -> None:
    if pc.count_distinct(ids).as_py() == len(ids):
        return
    # A stable sort keeps equal IDs in row order, so each repeat follows its first occurrence.
    order = pc.sort_indices(ids)
    ordered = ids.take(order)
    repeats = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))
    row = pc.min(pc.filter(order.slice(1), repeats)).as_py()
    raise ModelbitInputError(
        f"ID {ids[row].as_py()!r} appears more than once in column {id_column!r} of {where} "
        f"(again at row {row}); IDs must be unique so each result finds its row."
    )


def exact_chunks(batches: Iterable[pa.RecordBatch], batch_size: int) -> Iterator[InputChunk]:
    """Regroup record batches of any sizes into chunks of exactly ``batch_size`` rows (the last shorter)."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    index = first_row = 0
    for batch in batches:
        if not batch.num_rows:
            continue
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= batch_size:
            table = pa.Table.from_batches(pending)
            yield InputChunk(index, first_row, table.slice(0, batch_size).combine_chunks())
            rest = table.slice(batch_size)
            pending, pending_rows = rest.to_batches(), rest.num_rows
            index, first_row = index + 1, first_row + batch_size
    if pending_rows:
        yield InputChunk(index, first_row, pa.Table.from_batches(pending).combine_chunks())


def chunk_ids(chunk: InputChunk, id_column: str | None) -> pa.Array:
    """Return the chunk's IDs: the ID column, or row positions in the table."""
    if id_column is not None:
        return chunk.table.column(id_column).combine_chunks()
    return pa.array(np.arange(chunk.first_row, chunk.first_row + chunk.num_rows, dtype=np.int64))


def batch_rows(
    chunk: InputChunk, *, columns: Sequence[str], id_column: str | None, argument_style: str
) -> ColumnRows:
    """
    Turn a chunk into batch rows.

    ``object`` sends each row as one argument ``{column: value}`` (how Modelbit's client sends a
    DataFrame); ``positional`` sends the column values as separate arguments, in ``columns`` order.
    Values are converted a column at a time and kept as columns: the rows are encoded from them
    (see :class:`~airflow_provider_modelbit.io.column_rows.ColumnRows`), without a Python object per row.
    """
    ids = _python_ids(chunk, id_column)
    values = [column_values(chunk.table, name) for name in columns]
    plain = [_is_plain(chunk.table.schema.field(name)) for name in columns]
    return ColumnRows(ids, values, list(columns) if argument_style == "object" else None, plain)


def _is_plain(field: pa.Field) -> bool:
    """Whether the column's values are all numbers, booleans or ``None`` (nulls)."""
    data_type = field.type
    if _period_frequency(field) is not None:
        return False
    return pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_boolean(data_type)


def _python_ids(chunk: InputChunk, id_column: str | None) -> list[Any]:
    if id_column is None:
        return list(range(chunk.first_row, chunk.first_row + chunk.num_rows))
    return chunk.table.column(id_column).to_pylist()


def column_list(columns: str | Sequence[str]) -> list[str]:
    """Read a column list; a single name is one column, never a list of its characters."""
    return [columns] if isinstance(columns, str) else list(columns)


def check_batch_settings(
    argument_style: str, batch_size: int, batch_bytes: int, max_concurrency: int, adaptive_concurrency: bool
) -> None:
    """
    Refuse chunking and concurrency settings that cannot work, before anything is read or sent.

    :raises ModelbitInputError: naming the setting and the value given.
    """
    if argument_style not in ARGUMENT_STYLES:
        raise ModelbitInputError(
            f"argument_style must be one of {', '.join(ARGUMENT_STYLES)}, got {argument_style!r}."
        )
    if not isinstance(adaptive_concurrency, bool):
        raise ModelbitInputError(f"adaptive_concurrency must be True or False, got {adaptive_concurrency!r}.")
    for name, value in (
        ("batch_size", batch_size),
        ("batch_bytes", batch_bytes),
        ("max_concurrency", max_concurrency),
    ):
        if not isinstance(value, int) or value < 1:
            raise ModelbitInputError(f"{name} must be a positive integer, got {value!r}.")


def check_table_ids(source: TableSource, id_column: str) -> int:
    """
    Check an input's ID column (type, nulls, repeats) reading that column alone; return the row count.

    :raises ModelbitInputError: naming the column and the first bad or repeated ID.
    """
    where = f"input {source.location}"
    refuse_bad_id_type(source.schema, id_column, where)
    batches = (batch.column(0) for batch in source.project([id_column]).iter_batches(max_rows=_ID_SCAN_ROWS))
    return count_and_check_ids(batches, id_column, where)


def chunk_ids_again(
    source: TableSource, column: str, id_column: str | None, batch_size: int
) -> Iterator[tuple[int, pa.Array]]:
    """
    Each input chunk's index and IDs, read again from the input (one column), to check the results.

    :param column: the column read: the ID column, or any column when IDs are row positions.
    :param id_column: the ID column, ``None`` for row positions.
    """
    batches = source.project([column]).iter_batches(max_rows=max(batch_size, 65_536))
    chunks = exact_chunks(batches, batch_size)
    return ((chunk.index, chunk_ids(chunk, id_column)) for chunk in chunks)
