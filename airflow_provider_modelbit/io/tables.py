"""Input tables read as a stream of Arrow record batches.

A table is a Parquet file, a directory of Parquet files (read in name order, as Spark and DuckDB
write them), a CSV file or a JSON Lines file, on a local path or any ObjectStoragePath URL. Files
are read through :meth:`ObjectStoragePath.open` so Airflow records them as lineage inputs, and
never loaded whole: memory stays bounded by the batch size whatever the table's length.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from airflow.sdk import ObjectStoragePath

from airflow_provider_modelbit.exceptions import ModelbitInputError
from airflow_provider_modelbit.io.atomic import resolve_output

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


@dataclass
class TableSource:
    """
    An input table opened for streaming.

    :param location: where the table is (a file or a directory).
    :param format: ``"parquet"``, ``"csv"`` or ``"jsonl"``.
    :param files: the files making up the table, in reading order.
    :param schema: the schema of the columns that will be read.
    :param num_rows: the number of rows, or ``None`` when only a full read can tell (CSV, JSON Lines).
    """

    location: ObjectStoragePath
    format: str
    files: list[ObjectStoragePath]
    schema: pa.Schema
    num_rows: int | None
    _columns: list[str] | None = field(default=None, repr=False)

    def iter_batches(self, max_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """Yield the table's rows in order, as record batches of at most ``max_rows`` rows."""
        for file in self.files:
            for batch in _read_file(file, self.format, self._columns, max_rows):
                yield from _conform_batch(batch, self.schema, file, max_rows)

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
) -> TableSource:
    """
    Open an input table, checking that the columns asked for exist.

    :param input_path: a Parquet file, a directory of Parquet files, a CSV or a JSON Lines file.
    :param columns: the columns to read (all when ``None``).
    :param id_column: a column that must exist as well (read even when not in ``columns``).
    :param format: ``"parquet"``, ``"csv"`` or ``"jsonl"``; guessed from the suffix when ``None``.
    :param conn_id: the Airflow connection for the object store, when the URL does not name one.
    :raises ModelbitInputError: the path does not exist, the format is unknown, or a column is missing.
    """
    location = resolve_output(input_path, conn_id)
    if not location.exists():
        raise ModelbitInputError(f"Input table {location} does not exist; check input_path.")
    table_format = _detect_format(location, format)
    files = _table_files(location, table_format)
    wanted = _wanted_columns(columns, id_column)
    full_schema = _read_schema(files[0], table_format)
    _refuse_missing_columns(location, full_schema, wanted)
    schema = pa.schema([full_schema.field(name) for name in wanted]) if wanted else full_schema
    num_rows = _count_parquet_rows(files) if table_format == "parquet" else None
    return TableSource(location, table_format, files, schema, num_rows, wanted)


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


def _table_files(location: ObjectStoragePath, table_format: str) -> list[ObjectStoragePath]:
    if not location.is_dir():
        return [location]
    if table_format != "parquet":
        raise ModelbitInputError(
            f"{location} is a directory; only directories of Parquet files are supported."
        )
    files = sorted(
        (path for path in location.iterdir() if _is_data_file(path)),
        key=lambda path: path.name,
    )
    if not files:
        raise ModelbitInputError(
            f"Directory {location} holds no Parquet files (names ending in .parquet or .pq)."
        )
    return files


def _is_data_file(path: ObjectStoragePath) -> bool:
    # Writers leave markers such as _SUCCESS and hidden temporary files beside the data.
    hidden = path.name.startswith((".", "_"))
    return not hidden and path.suffix.lower() in _PARQUET_SUFFIXES and path.is_file()


def _read_schema(file: ObjectStoragePath, table_format: str) -> pa.Schema:
    with file.open("rb") as stream:
        if table_format == "parquet":
            return _open_parquet(stream, file).schema_arrow
        try:
            return _open_text_reader(stream, table_format, None).schema
        except (pa.ArrowInvalid, OSError) as error:
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


def _count_parquet_rows(files: list[ObjectStoragePath]) -> int:
    total = 0
    for file in files:
        with file.open("rb") as stream:
            total += _open_parquet(stream, file).metadata.num_rows
    return total


def _read_file(
    file: ObjectStoragePath, table_format: str, columns: list[str] | None, max_rows: int
) -> Iterator[pa.RecordBatch]:
    with file.open("rb") as stream:
        if table_format == "parquet":
            yield from _open_parquet(stream, file).iter_batches(batch_size=max_rows, columns=columns)
            return
        reader = _open_text_reader(stream, table_format, columns)
        try:
            yield from reader
        except pa.ArrowInvalid as error:
            raise ModelbitInputError(
                f"Cannot read {file}: {error}. Column types are guessed from the first "
                f"{_TEXT_BLOCK_BYTES >> 20} MiB; convert the file to Parquet to fix column types."
            ) from error


def _open_text_reader(stream: Any, table_format: str, columns: list[str] | None) -> Any:
    if table_format == "csv":
        return pa_csv.open_csv(
            stream,
            read_options=pa_csv.ReadOptions(block_size=_TEXT_BLOCK_BYTES),
            convert_options=pa_csv.ConvertOptions(include_columns=columns),
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
    batch: pa.RecordBatch, schema: pa.Schema, file: ObjectStoragePath, max_rows: int
) -> Iterator[pa.RecordBatch]:
    """Cast a batch to the table's schema (files of a directory may differ slightly) and cut it to size."""
    if not batch.schema.equals(schema):
        try:
            batch = batch.select(schema.names).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as error:
            raise ModelbitInputError(
                f"File {file} does not match the table's schema ({error}); "
                f"every file of the input must have the columns {', '.join(schema.names)} "
                "with the same types."
            ) from error
    for offset in range(0, batch.num_rows, max_rows):
        yield batch.slice(offset, max_rows)


def _file_fingerprint(file: ObjectStoragePath) -> dict[str, Any]:
    info = file.fs.info(file.path)
    return {"path": str(file), **{key: str(info[key]) for key in _CHANGE_MARKERS if key in info}}
