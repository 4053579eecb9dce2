"""Documents downloaded from Modelbit result links, read without loading them whole.

A links answer points at a JSON document holding what ``data`` would have held: for a batch,
``[[id, result], ...]``, possibly wrapped as ``{"data": [...]}``. Batch documents can be far larger
than memory, so they are parsed incrementally (ijson's C backend) and written to Parquet a row
group at a time.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import ijson
import orjson

from airflow_provider_modelbit.exceptions import ModelbitIncompleteBatch

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_provider_modelbit.hooks.responses import InferenceCall

# A wrapped batch starts like this; enough of the document is peeked at to tell.
_WRAPPED_BATCH = re.compile(rb'^\{\s*"data"\s*:\s*\[')
_PEEK_BYTES = 64
DEFAULT_ROWS_PER_GROUP = 50_000
# Parsed JSON takes several times its text size as Python objects; this keeps a group's share small.
DEFAULT_BYTES_PER_GROUP = 16 << 20


def link_rows_to_parquet(
    chunks: Iterable[bytes],
    output: BinaryIO,
    *,
    rows_per_group: int = DEFAULT_ROWS_PER_GROUP,
    bytes_per_group: int = DEFAULT_BYTES_PER_GROUP,
) -> int:
    """
    Stream a batch answer ``[[id, result], ...]`` (or ``{"data": [...]}``) into a Parquet file.

    The output has columns ``id`` and ``result``, typed as :mod:`.arrow_results` describes. Rows
    are parsed a group at a time and each group is converted and spooled before the next is
    parsed; a group ends after ``rows_per_group`` rows or ``bytes_per_group`` bytes of the
    document, whichever comes first, so wide rows cannot make a group large.

    :param chunks: the document's bytes, in pieces (e.g. an HTTP response's ``iter_bytes()``).
    :param output: a binary stream to write Parquet to.
    :param rows_per_group: most rows parsed before they are converted and spooled.
    :param bytes_per_group: most document bytes parsed before the rows so far are converted and spooled.
    :return: the number of rows written.
    :raises ModelbitIncompleteBatch: the document is cut short, malformed, or not a batch answer.
    """
    # Arrow is imported here, not with the module: the hooks read small documents without it.
    from airflow_provider_modelbit.io.arrow_results import results_table
    from airflow_provider_modelbit.io.result_writer import ResultWriter

    stream = _ChunkReader(chunks)
    with ResultWriter(row_group_rows=rows_per_group) as writer:
        for ids, results in _row_groups(_batch_rows(stream), stream, rows_per_group, bytes_per_group):
            writer.write(results_table(ids, results))
        return writer.write_parquet(output, empty_schema=results_table([], []).schema)


def read_link_value(
    chunks: Iterable[bytes],
    *,
    source: str = "The results link",
    deployment: str | None = None,
    version: str | int | None = None,
) -> Any:
    """
    Read a small links document whole and return its value, unwrapping ``{"data": ...}``.

    :param chunks: the document's bytes, in pieces.
    :param source: what the document is, to begin an error message (no link signature in it).
    :param deployment: the deployment that answered, named in the error.
    :param version: its version, named in the error.
    :raises ModelbitIncompleteBatch: the document is not valid JSON (for example, cut short).
    """
    body = b"".join(chunks)
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ModelbitIncompleteBatch(
            f"{source} returned {len(body):,} bytes that are not complete JSON ({error}); "
            "the download was probably cut short; run the task again.",
            deployment=deployment,
            version=version,
        ) from error
    # A document holds what ``data`` would have held, bare or wrapped as {"data": ...}.
    if isinstance(value, dict) and value.keys() == {"data"}:
        return value["data"]
    return value


def link_table_in_input_order(
    read_link: Callable[[str, Callable[[Iterator[bytes]], None]], None],
    url: str,
    ids: Sequence[Any],
    part: Path,
    *,
    call: InferenceCall,
) -> pa.Table:
    """
    Stream a batch results link to a local Parquet file and return its rows in the input order.

    The document is never held whole: it is parsed into ``part`` a row group at a time, then read
    back as a table whose IDs are matched to ``ids`` (see :mod:`.row_ids`); ``part`` is removed.

    :param read_link: fetches the link and hands its body to a consumer, fetching it again when a
        download breaks (``ModelbitHook.read_link``).
    :param url: the results link.
    :param ids: the IDs of the rows the link answers, in input order.
    :param part: a local scratch file for the download.
    :param call: the call whose results the link holds, named in errors.
    :raises ModelbitIncompleteBatch: the document is cut short, or an ID is missing, unexpected or repeated.
    """
    import pyarrow.parquet as pq

    from airflow_provider_modelbit.io.row_ids import table_in_input_order

    def save(stream: Iterator[bytes]) -> None:
        with part.open("wb") as sink:
            link_rows_to_parquet(stream, sink)

    read_link(url, save)
    try:
        return table_in_input_order(pq.read_table(part), ids, call=call)
    finally:
        part.unlink(missing_ok=True)


def _batch_rows(stream: _ChunkReader) -> Iterator[Any]:
    prefix = _batch_prefix(stream.peek(_PEEK_BYTES))
    try:
        # use_float keeps numbers as floats instead of Decimal, as any JSON reader would.
        for position, row in enumerate(ijson.items(stream, prefix, use_float=True)):
            yield _checked_row(row, position)
    except ijson.common.IncompleteJSONError as error:
        raise ModelbitIncompleteBatch(
            f"The results document ended early or is not valid JSON ({error}); "
            "the download was probably cut short; run the task again."
        ) from error


def _batch_prefix(start: bytes) -> str:
    """Tell where the rows are: the whole document, or the array under ``data``."""
    if start.startswith(b"["):
        return "item"
    if _WRAPPED_BATCH.match(start):
        return "data.item"
    raise ModelbitIncompleteBatch(
        f"The results document starts with {start[:_PEEK_BYTES]!r} instead of a batch answer "
        '[[id, result], ...] or {"data": [[id, result], ...]}.'
    )


def _checked_row(row: Any, position: int) -> Any:
    if not isinstance(row, list) or len(row) != 2:
        raise ModelbitIncompleteBatch(
            f"Row {position} of the results document is {row!r:.200}; each row of a batch answer "
            "must be [id, result]."
        )
    return row


def _row_groups(
    rows: Iterator[list[Any]], stream: _ChunkReader, most_rows: int, most_bytes: int
) -> Iterator[tuple[list[Any], list[Any]]]:
    ids: list[Any] = []
    results: list[Any] = []
    group_start = stream.bytes_read
    for row_id, result in rows:
        ids.append(row_id)
        results.append(result)
        if len(ids) >= most_rows or stream.bytes_read - group_start >= most_bytes:
            yield ids, results
            ids, results = [], []
            group_start = stream.bytes_read
    if ids:
        yield ids, results


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterable of byte strings, so ijson can pull from a download."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""
        self._offset = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def peek(self, size: int) -> bytes:
        """Return up to ``size`` bytes from the first non-blank one on, without consuming them."""
        while len(self._buffer.lstrip()) < size:
            piece = next(self._chunks, None)
            if piece is None:
                break
            self._buffer += piece
        self._buffer = self._buffer.lstrip()
        return self._buffer[:size]

    def readinto(self, target: Any) -> int:
        while self._offset >= len(self._buffer):
            piece = next(self._chunks, None)
            if piece is None:
                return 0
            self._buffer, self._offset = bytes(piece), 0
        size = min(len(target), len(self._buffer) - self._offset)
        target[:size] = self._buffer[self._offset : self._offset + size]
        self._offset += size
        self.bytes_read += size
        return size
