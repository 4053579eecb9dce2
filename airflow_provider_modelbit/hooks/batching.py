"""Batch rows into requests by row count and bytes, and match answers back to rows by ID.

Modelbit may return a batch in request order or sorted by ID, so results are always matched by
ID, and every ID sent must come back exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import pandas as pd

from airflow_provider_modelbit.exceptions import ModelbitIncompleteBatch, ModelbitInputError
from airflow_provider_modelbit.io.encoding import RowIdKey, encode_row, row_id_key

DEFAULT_BATCH_SIZE = 3_000
DEFAULT_BATCH_BYTES = 20_000_000
DEFAULT_MAX_CONCURRENCY = 3

# b'{"data":[' ... b'],"timeout_seconds":900,"response_format":"links"}' with room to spare.
ENVELOPE_BYTES = 128
_IDS_SHOWN = 5


@dataclass(frozen=True)
class ChunkResult:
    """
    The answer to one chunk of batch rows.

    :param index: position of the chunk in the input, from 0.
    :param rows: ``[[id, result], ...]`` in the chunk's input order, with the IDs as given.
    :param seconds: time spent on the chunk's request(s), retries included.
    :param response_bytes: size of the answer(s), downloaded links included.
    """

    index: int
    rows: list[list[Any]]
    seconds: float
    response_bytes: int


@dataclass(frozen=True)
class EncodedChunk:
    """
    Batch rows ready to send: their IDs, ID keys and JSON.

    :param ids: the row IDs as given.
    :param keys: each ID's key (see :func:`row_id_key`), used to match the answer.
    :param rows: each row's JSON.
    """

    ids: list[Any]
    keys: list[RowIdKey]
    rows: list[bytes]

    @property
    def size(self) -> int:
        """Bytes of the JSON array these rows form."""
        return sum(len(row) for row in self.rows) + len(self.rows) + 1


def is_batch(data: Any) -> bool:
    """Apply Modelbit's rule: a batch is a list whose first element is a list."""
    return isinstance(data, list | tuple) and len(data) > 0 and isinstance(data[0], list | tuple)


def dataframe_rows(frame: pd.DataFrame) -> list[list[Any]]:
    """Turn a DataFrame into batch rows ``[index, {column: value}]``, as Modelbit's client sends it."""
    columns = [str(column) for column in frame.columns]
    return [
        [index, dict(zip(columns, values, strict=True))]
        for index, values in zip(frame.index, frame.itertuples(index=False, name=None), strict=True)
    ]


def rows_in_chunks(rows: Iterable[Sequence[Any]], batch_size: int) -> Iterator[list[Sequence[Any]]]:
    """Cut rows into lists of at most ``batch_size``, lazily."""
    iterator = iter(rows)
    while chunk := list(islice(iterator, batch_size)):
        yield chunk


def refuse_duplicate_ids(rows: Iterable[Sequence[Any]]) -> None:
    """Raise :class:`ModelbitInputError` naming the first ID that appears twice or a row without one."""
    seen: set[RowIdKey] = set()
    for position, row in enumerate(rows):
        key = row_id_key(_row_id(row, position))
        if key in seen:
            raise ModelbitInputError(
                f"Row ID {row[0]!r} appears more than once (again at row {position}); "
                "batch IDs must be unique so each result can be matched to its row."
            )
        seen.add(key)


def _row_id(row: Any, position: int) -> Any:
    if not isinstance(row, list | tuple) or not row:
        raise ModelbitInputError(
            f"Batch row {position} is {row!r}; each batch row must be a non-empty list [id, *arguments]."
        )
    return row[0]


def encode_chunk(rows: Sequence[Sequence[Any]]) -> EncodedChunk:
    """Encode each row once and check the IDs are unique within the chunk."""
    for position, row in enumerate(rows):
        _row_id(row, position)
    keys = [row_id_key(row[0]) for row in rows]
    if len(set(keys)) != len(keys):
        refuse_duplicate_ids(rows)
    return EncodedChunk(ids=[row[0] for row in rows], keys=keys, rows=[encode_row(row) for row in rows])


def split_by_bytes(chunk: EncodedChunk, batch_bytes: int) -> list[EncodedChunk]:
    """Split a chunk so each part's request body stays within ``batch_bytes``."""
    limit = batch_bytes - ENVELOPE_BYTES
    if chunk.size <= limit:
        return [chunk]
    parts: list[EncodedChunk] = []
    start, size = 0, 1
    for position, row in enumerate(chunk.rows):
        if len(row) + 2 > limit:
            raise ModelbitInputError(
                f"Row with ID {chunk.ids[position]!r} encodes to {len(row):,} bytes, more than batch_bytes "
                f"({batch_bytes:,}); raise batch_bytes or send large inputs as links."
            )
        if size + len(row) + 1 > limit:
            parts.append(_slice(chunk, start, position))
            start, size = position, 1
        size += len(row) + 1
    parts.append(_slice(chunk, start, len(chunk.rows)))
    return parts


def _slice(chunk: EncodedChunk, start: int, stop: int) -> EncodedChunk:
    return EncodedChunk(chunk.ids[start:stop], chunk.keys[start:stop], chunk.rows[start:stop])


def reassemble(chunk: EncodedChunk, answer: Any, *, deployment: str, version: str | int) -> list[list[Any]]:
    """
    Match an answer ``[[id, result], ...]`` to the chunk's rows by ID.

    :return: ``[[id, result], ...]`` in the chunk's order, with the IDs as given.
    :raises ModelbitIncompleteBatch: the answer is not a batch, or has a missing, unexpected or repeated ID.
    """
    results = _results_by_key(answer, deployment=deployment, version=version)
    expected = set(chunk.keys)
    unexpected = [key for key in results if key not in expected]
    missing = [row_id for row_id, key in zip(chunk.ids, chunk.keys, strict=True) if key not in results]
    if unexpected or missing:
        raise ModelbitIncompleteBatch(
            f"Deployment {deployment!r} (version {version}) answered a batch of {len(chunk.ids)} rows "
            f"with missing IDs {_show(missing)} and unexpected IDs "
            f"{_show([_readable(key) for key in unexpected])}; the batch was not used.",
            deployment=deployment,
            version=version,
        )
    return [[row_id, results[key]] for row_id, key in zip(chunk.ids, chunk.keys, strict=True)]


def _results_by_key(answer: Any, *, deployment: str, version: str | int) -> dict[RowIdKey, Any]:
    if not isinstance(answer, list):
        raise ModelbitIncompleteBatch(
            f"Deployment {deployment!r} (version {version}) answered a batch with {type(answer).__name__} "
            "instead of a list of [id, result] rows.",
            deployment=deployment,
            version=version,
        )
    results: dict[RowIdKey, Any] = {}
    for row in answer:
        if not isinstance(row, list) or len(row) != 2:
            raise ModelbitIncompleteBatch(
                f"Deployment {deployment!r} (version {version}) answered a malformed batch row {row!r:.200}; "
                "each row must be [id, result].",
                deployment=deployment,
                version=version,
            )
        key = row_id_key(row[0])
        if key in results:
            raise ModelbitIncompleteBatch(
                f"Deployment {deployment!r} (version {version}) answered ID {row[0]!r} more than once.",
                deployment=deployment,
                version=version,
            )
        results[key] = row[1]
    return results


def _readable(key: RowIdKey) -> Any:
    return key.decode() if isinstance(key, bytes) else key


def _show(ids: list[Any]) -> str:
    if not ids:
        return "none"
    shown = ", ".join(repr(row_id) for row_id in ids[:_IDS_SHOWN])
    return f"[{shown}{', ...' if len(ids) > _IDS_SHOWN else ''}] ({len(ids)})"
