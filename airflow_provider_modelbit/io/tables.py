"""Input tables read as a stream of Arrow record batches.

A table is a Parquet file, a directory of Parquet files (read in name order, as Spark and DuckDB
write them, Hive partition folders ``key=value/`` included), a CSV file or a JSON Lines file, on a
local path or any ObjectStoragePath URL. Files are read through :meth:`ObjectStoragePath.open` so
Airflow records them as lineage inputs, and never loaded whole: memory stays bounded by the batch
size whatever the table's length.

A column keeps what it holds: ``column_types`` sets any column's type (the text formats only guess
them), and a CSV ID column is read as text unless ``column_types`` says otherwise, so ``00123``
stays ``00123``. A partition folder's value is a text column named by its key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from airflow.sdk import ObjectStoragePath

from airflow_provider_modelbit.exceptions import ModelbitInputError
from airflow_provider_modelbit.io.atomic import resolve_output
from airflow_provider_modelbit.io.column_types import parse_column_types, text_id_types

FORMATS = ("parquet", "csv", "jsonl")
_SUFFIX_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_PARQUET_SUFFIXES = (".parquet", ".pq")
# Text formats are parsed in blocks; type inference looks at the first block, so make it generous.
_TEXT_BLOCK_BYTES = 8 << 20
# File properties that change when an object is rewritten, across fsspec backends.
_CHANGE_MARKERS = ("size", "mtime", "LastModified", "last_modified", "ETag", "etag", "md5Hash", "generation")


@dataclass(frozen=True)
class TablePart:
    """
    One file of a table and the Hive partition values of the folders it sits in.

    :param path: the file.
    :param partition: ``{key: value}`` of each ``key=value`` folder between the table and the file.
    """

    path: ObjectStoragePath
    partition: dict[str, str] = field(default_factory=dict)


@dataclass
class TableSource:
    """
    An input table opened for streaming.

    :param location: where the table is (a file or a directory).
    :param format: ``"parquet"``, ``"csv"`` or ``"jsonl"``.
    :param parts: the files making up the table, in reading order, with their partition values.
    :param schema: the schema of the columns that will be read, with the types they are read as.
    :param num_rows: the number of rows, or ``None`` when only a full read can tell (CSV, JSON Lines).
    """

    location: ObjectStoragePath
    format: str
    parts: list[TablePart]
    schema: pa.Schema
    num_rows: int | None
    _columns: list[str] | None = field(default=None, repr=False)
    _types: dict[str, pa.DataType] = field(default_factory=dict, repr=False)

    @property
    def files(self) -> list[ObjectStoragePath]:
        """The files making up the table, in reading order."""
        return [part.path for part in self.parts]

    def iter_batches(self, max_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """Yield the table's rows in order, as record batches of at most ``max_rows`` rows."""
        for part in self.parts:
            file_columns = _file_columns(self._columns, part.partition)
            first_row = 0  # of the file, to name where a value does not fit
            for batch in _read_file(part.path, self.format, file_columns, max_rows, self._types):
                batch = _with_partition(batch, part.partition)
                yield from _conform_batch(batch, self.schema, part.path, max_rows, first_row)
                first_row += batch.num_rows

    def project(self, columns: Sequence[str]) -> TableSource:
        """The same table narrowed to ``columns``, read with the same types (a cheap way to scan IDs)."""
        wanted = list(dict.fromkeys(columns))
        _refuse_missing_columns(self.location, self.schema, wanted)
        schema = pa.schema([self.schema.field(name) for name in wanted])
        return TableSource(self.location, self.format, self.parts, schema, self.num_rows, wanted, self._types)

    def require_columns(self, names: Sequence[str]) -> None:
        """
        Check that the table has every column in ``names``.

        :raises ModelbitInputError: naming the missing columns, the table and the columns it has.
        """
        _refuse_missing_columns(self.location, self.schema, list(names))

    def fingerprint(self) -> list[dict[str, Any]]:
        """Describe each file by path, size and modification marker, to notice a changed input."""
        return [_file_fingerprint(file) for file in self.files]


def open_table(
    input_path: str | ObjectStoragePath,
    *,
    columns: Sequence[str] | None = None,
    id_column: str | None = None,
    format: str | None = None,
    conn_id: str | None = None,
    column_types: Mapping[str, Any] | None = None,
) -> TableSource:
    """
    Open an input table, checking that the columns asked for exist.

    :param input_path: a Parquet file, a directory of Parquet files (Hive partition folders
        included), a CSV or a JSON Lines file.
    :param columns: the columns to read (all when ``None``).
    :param id_column: a column that must exist as well (read even when not in ``columns``); in a
        CSV file it is read as text unless ``column_types`` names it.
    :param format: ``"parquet"``, ``"csv"`` or ``"jsonl"``; guessed from the suffix when ``None``.
    :param conn_id: the Airflow connection for the object store, when the URL does not name one.
    :param column_types: ``{column: type}`` to read columns as (see :mod:`.column_types`).
    :raises ModelbitInputError: the path does not exist, the format is unknown, a column is missing
        or a type is unknown.
    """
    types = parse_column_types(column_types)
    location = resolve_output(input_path, conn_id)
    if not location.exists():
        raise ModelbitInputError(f"Input table {location} does not exist; check input_path.")
    table_format = _detect_format(location, format)
    if table_format == "csv":
        types = text_id_types(id_column, types)
    parts = _table_parts(location, table_format)
    wanted = _wanted_columns(columns, id_column)
    full_schema = _typed_schema(location, _table_schema(parts[0], table_format, types), types)
    _refuse_missing_columns(location, full_schema, wanted)
    schema = pa.schema([full_schema.field(name) for name in wanted]) if wanted else full_schema
    num_rows = _count_parquet_rows(parts) if table_format == "parquet" else None
    return TableSource(location, table_format, parts, schema, num_rows, wanted, types)


def _typed_schema(location: ObjectStoragePath, schema: pa.Schema, types: dict[str, pa.DataType]) -> pa.Schema:
    """The table's schema with the types ``column_types`` names; refuses a type for a column it lacks."""
    unknown = [name for name in types if name not in schema.names]
    if unknown:
        raise ModelbitInputError(
            f"column_types names {', '.join(map(repr, unknown))}, but input table {location} has no such "
            f"column; its columns are {', '.join(schema.names)}."
        )
    return pa.schema([item.with_type(types.get(item.name, item.type)) for item in schema])


def _wanted_columns(columns: Sequence[str] | None, id_column: str | None) -> list[str] | None:
    if columns is None:
        return None
    wanted = list(dict.fromkeys(columns))
    if id_column is not None and id_column not in wanted:
        wanted.insert(0, id_column)
    return wanted


def _detect_format(location: ObjectStoragePath, format: str | None) -> str:
    if format is not None:
        if format not in FORMATS:
            raise ModelbitInputError(f"Unknown input format {format!r}; use one of {', '.join(FORMATS)}.")
        return format
    if location.is_dir():
        return "parquet"
    detected = _SUFFIX_FORMATS.get(location.suffix.lower())
    if detected is None:
        raise ModelbitInputError(
            f"Cannot tell the format of {location} from its suffix {location.suffix!r}; name the file "
            f"with one of the suffixes {', '.join(sorted(_SUFFIX_FORMATS))}."
        )
    return detected


def _table_parts(location: ObjectStoragePath, table_format: str) -> list[TablePart]:
    if not location.is_dir():
        return [TablePart(location)]
    if table_format != "parquet":
        raise ModelbitInputError(
            f"{location} is a directory; only directories of Parquet files are supported."
        )
    parts = sorted(_folder_parts(location, {}), key=lambda part: str(part.path))
    if not parts:
        raise ModelbitInputError(
            f"Directory {location} holds no Parquet files (names ending in .parquet or .pq), neither "
            "directly nor in Hive partition folders named key=value; other subfolders are not read."
        )
    _refuse_mixed_partitions(location, parts)
    return parts


def _folder_parts(folder: ObjectStoragePath, partition: dict[str, str]) -> Iterator[TablePart]:
    """The data files of ``folder`` and of its ``key=value`` subfolders, with their partition values."""
    for path in folder.iterdir():
        if path.name.startswith((".", "_")):
            continue  # writers' markers (_SUCCESS, _temporary/) and hidden temporary files
        if path.is_dir():
            key, equals, value = path.name.partition("=")
            if equals and key:
                yield from _folder_parts(path, {**partition, key: _partition_value(value)})
        elif path.suffix.lower() in _PARQUET_SUFFIXES:
            yield TablePart(path, partition)


def _partition_value(text: str) -> str:
    # Writers escape characters a path cannot hold (Spark and Arrow: "%3A" for ":").
    from urllib.parse import unquote

    return unquote(text)


def _refuse_mixed_partitions(location: ObjectStoragePath, parts: list[TablePart]) -> None:
    keys = {tuple(part.partition) for part in parts}
    if len(keys) > 1:
        listed = "; ".join(f"{part.path} has {list(part.partition) or 'none'}" for part in parts[:2])
        raise ModelbitInputError(
            f"The partition folders of {location} disagree ({listed}); every file must sit under the "
            "same key=value folders, so each row has every partition column."
        )


def _table_schema(part: TablePart, table_format: str, types: dict[str, pa.DataType]) -> pa.Schema:
    schema = _read_schema(part.path, table_format, types)
    for key in part.partition:
        if key in schema.names:
            raise ModelbitInputError(
                f"File {part.path} has a column {key!r} and sits in the partition folder {key}=...; "
                "rename one of them so each column has one source."
            )
    return pa.schema([*schema, *(pa.field(key, pa.string()) for key in part.partition)])


def _file_columns(columns: list[str] | None, partition: dict[str, str]) -> list[str] | None:
    """The columns to read from a file itself: the wanted ones but those its folders give."""
    return None if columns is None else [name for name in columns if name not in partition]


def _with_partition(batch: pa.RecordBatch, partition: dict[str, str]) -> pa.RecordBatch:
    if not partition:
        return batch
    arrays = [
        *batch.columns,
        *(pa.array([value] * batch.num_rows, pa.string()) for value in partition.values()),
    ]
    return pa.RecordBatch.from_arrays(arrays, names=[*batch.schema.names, *partition])


def _read_schema(file: ObjectStoragePath, table_format: str, types: dict[str, pa.DataType]) -> pa.Schema:
    with file.open("rb") as stream:
        if table_format == "parquet":
            return _open_parquet(stream, file).schema_arrow
        try:
            return _open_text_reader(stream, table_format, None, types).schema
        except pa.ArrowInvalid as error:
            raise _bad_text_value(file, table_format, error, types) from error
        except OSError as error:
            raise _unreadable(file, table_format, error) from error


def _open_parquet(stream: Any, file: ObjectStoragePath) -> pq.ParquetFile:
    # Pre-buffering keeps every column chunk read so far until the file is closed, so memory
    # would grow with the file instead of staying at one row group.
    try:
        return pq.ParquetFile(stream, pre_buffer=False)
    except (pa.ArrowInvalid, OSError) as error:
        raise _unreadable(file, "parquet", error) from error


def _unreadable(file: ObjectStoragePath, table_format: str, error: Exception) -> ModelbitInputError:
    return ModelbitInputError(
        f"Cannot read input file {file} as {table_format} (the format its suffix names): {error}. "
        "Check input_path, and that the file's suffix says what it holds."
    )


def _refuse_missing_columns(location: ObjectStoragePath, schema: pa.Schema, wanted: list[str] | None) -> None:
    missing = [name for name in wanted or () if name not in schema.names]
    if missing:
        listed = ", ".join(repr(name) for name in missing)
        raise ModelbitInputError(
            f"Input table {location} has no column {listed}; its columns are {', '.join(schema.names)}."
        )


def _count_parquet_rows(parts: list[TablePart]) -> int:
    total = 0
    for part in parts:
        with part.path.open("rb") as stream:
            total += _open_parquet(stream, part.path).metadata.num_rows
    return total


def _read_file(
    file: ObjectStoragePath,
    table_format: str,
    columns: list[str] | None,
    max_rows: int,
    types: dict[str, pa.DataType],
) -> Iterator[pa.RecordBatch]:
    with file.open("rb") as stream:
        if table_format == "parquet":
            yield from _open_parquet(stream, file).iter_batches(batch_size=max_rows, columns=columns)
            return
        try:
            yield from _open_text_reader(stream, table_format, columns, types)
        except pa.ArrowInvalid as error:
            raise _bad_text_value(file, table_format, error, types) from error


# pyarrow names the failing CSV column by its position in the file: "In CSV column #2: ...".
_CSV_COLUMN = re.compile(r"CSV column #(\d+)")


def _bad_text_value(
    file: ObjectStoragePath, table_format: str, error: pa.ArrowInvalid, types: dict[str, pa.DataType]
) -> ModelbitInputError:
    """Name the file, column and row of a text value that does not fit its column's type."""
    found = _CSV_COLUMN.search(str(error)) if table_format == "csv" else None
    if found is None:
        return ModelbitInputError(
            f"Cannot read {file}: {error}. Column types are guessed from the first "
            f"{_TEXT_BLOCK_BYTES >> 20} MiB; set column_types for the column, or convert the file to Parquet."
        )
    column = _csv_header(file)[int(found.group(1))]
    row, value = _first_bad_csv_value(file, column, types.get(column))
    told = "the type column_types gives it" if column in types else "the type guessed from the first rows"
    return ModelbitInputError(
        f"Cannot read {file}: column {column!r} at row {row} holds {value!r}, which does not fit {told} "
        f"({error}). Set column_types={{{column!r}: ...}} to the type the column holds "
        '("str" keeps any text).'
    )


def _csv_header(file: ObjectStoragePath) -> list[str]:
    import csv
    import io

    with file.open("rb") as stream:
        return next(csv.reader(io.TextIOWrapper(stream, encoding="utf-8", newline="")), [])


def _first_bad_csv_value(
    file: ObjectStoragePath, column: str, declared: pa.DataType | None
) -> tuple[int | str, Any]:
    """Scan ``column`` as text for the first value that does not parse as its type (error path only)."""
    options = pa_csv.ConvertOptions(include_columns=[column], column_types={column: pa.string()})
    position = 0
    with file.open("rb") as stream:
        for batch in pa_csv.open_csv(stream, convert_options=options):
            for value in batch.column(0).to_pylist():
                if value is not None and not _parses(value, declared):
                    return position, value
                position += 1
    return "unknown", None


def _parses(text: str, declared: pa.DataType | None) -> bool:
    # Without a declared type, pyarrow guessed one from the first rows: a value that is not a
    # number where the others were is what breaks it.
    try:
        if declared is None:
            float(text)
        else:
            pa.array([text]).cast(declared)
    except (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _open_text_reader(
    stream: Any, table_format: str, columns: list[str] | None, types: dict[str, pa.DataType] | None = None
) -> Any:
    if table_format == "csv":
        return pa_csv.open_csv(
            stream,
            read_options=pa_csv.ReadOptions(block_size=_TEXT_BLOCK_BYTES),
            convert_options=pa_csv.ConvertOptions(include_columns=columns, column_types=types or {}),
        )
    return _ProjectedReader(
        pa_json.open_json(stream, read_options=pa_json.ReadOptions(block_size=_TEXT_BLOCK_BYTES)), columns
    )


class _ProjectedReader:
    """A JSON Lines reader keeping only the wanted columns (pyarrow's reader cannot project)."""

    def __init__(self, reader: Any, columns: list[str] | None) -> None:
        self._reader = reader
        self._columns = columns

    @property
    def schema(self) -> pa.Schema:
        return self._reader.schema

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for batch in self._reader:
            yield batch if self._columns is None else batch.select(self._columns)


def _conform_batch(
    batch: pa.RecordBatch, schema: pa.Schema, file: ObjectStoragePath, max_rows: int, first_row: int = 0
) -> Iterator[pa.RecordBatch]:
    """Cast a batch to the table's schema (files differ slightly, column_types asks) and cut it to size."""
    if not batch.schema.equals(schema):
        missing = [name for name in schema.names if name not in batch.schema.names]
        if missing:
            raise ModelbitInputError(
                f"File {file} has no column {', '.join(map(repr, missing))}; every file of the input "
                f"must have the columns {', '.join(schema.names)}."
            )
        batch = pa.RecordBatch.from_arrays(
            [_cast_column(batch, item, file, first_row) for item in schema], schema=schema
        )
    for offset in range(0, batch.num_rows, max_rows):
        yield batch.slice(offset, max_rows)


def _cast_column(
    batch: pa.RecordBatch, target: pa.Field, file: ObjectStoragePath, first_row: int
) -> pa.Array:
    column = batch.column(target.name)
    if column.type.equals(target.type):
        return column
    try:
        return column.cast(target.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        row, value = _first_uncastable(column, target.type)
        raise ModelbitInputError(
            f"Column {target.name!r} of {file} has type {column.type}, and its value {value!r} at row "
            f"{first_row + row if isinstance(row, int) else row} cannot be read as {target.type}, "
            "the table's type for it "
            f"({error}). Every file must hold the same types; set column_types to the type the column holds."
        ) from error


def _first_uncastable(column: pa.Array, target: pa.DataType) -> tuple[int | str, Any]:
    for row, value in enumerate(column):
        try:
            pa.array([value.as_py()], column.type).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return row, value.as_py()
    return "unknown", None


def _file_fingerprint(file: ObjectStoragePath) -> dict[str, Any]:
    info = file.fs.info(file.path)
    return {"path": str(file), **{key: str(info[key]) for key in _CHANGE_MARKERS if key in info}}
