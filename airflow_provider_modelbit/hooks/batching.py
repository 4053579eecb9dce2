"""Batch rows into requests by row count and bytes, and match answers back to rows by ID.

Modelbit may return a batch in request order or sorted by ID, so results are always matched by
ID, and every ID sent must come back exactly once. Batch rows must have unique IDs; a DataFrame
may have a non-unique index, as with Modelbit's own client: rows sharing an ID are then matched
in the order the answer lists them (a sort by ID keeps that order when it is stable).
"""

from __future__ import annotations

import gc
import sys
import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from airflow_provider_modelbit.exceptions import ModelbitIncompleteBatch, ModelbitInputError
from airflow_provider_modelbit.io.encoding import (
    RowIdKey,
    column_key,
    encode_row,
    encode_rows,
    join_rows,
    row_id_key,
)

if TYPE_CHECKING:
    import pandas as pd

# b'{"data":[' ... b'],"timeout_seconds":900,"response_format":"links"}' with room to spare.
ENVELOPE_BYTES = 128
_IDS_SHOWN = 5
_ROW_TYPES = {list, tuple}
# IDs of these exact types are sent as themselves and come back equal; anything else is keyed by its JSON.
_PLAIN_ID_TYPES = {int, str}

_frozen_blocks = 0
_frozen_blocks_lock = threading.Lock()


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
    :param keys: each ID's key (see :func:`row_id_key`), used to match the answer; the very
        list ``ids`` when every ID is a plain ``int`` or ``str`` (its own key).
    :param data: the rows encoded as one JSON array, the ``data`` of a request.
    :param rows: the rows themselves, kept to encode them one by one if ``data`` must be split.
    """

    ids: list[Any]
    keys: list[RowIdKey]
    data: bytes
    rows: Sequence[Sequence[Any]]

    @property
    def size(self) -> int:
        """Bytes of the JSON array these rows form."""
        return len(self.data)

    @property
    def ids_are_keys(self) -> bool:
        """Tell whether every ID is a plain ``int`` or ``str``, matched by itself."""
        return self.keys is self.ids


def is_batch(data: Any) -> bool:
    """Apply Modelbit's rule: a batch is a list whose first element is a list."""
    return isinstance(data, list | tuple) and len(data) > 0 and isinstance(data[0], list | tuple)


def is_dataframe(value: Any) -> bool:
    """Return whether ``value`` is a pandas DataFrame, without importing pandas."""
    # A DataFrame can only exist once pandas is imported; looking it up in sys.modules keeps the
    # seconds pandas takes to import out of the hook for the tasks that never send one.
    # While another thread is still importing pandas (the local server warms it up in the
    # background) the module is there without DataFrame yet, and no DataFrame can exist.
    frame_type = getattr(sys.modules.get("pandas"), "DataFrame", None)
    return frame_type is not None and isinstance(value, frame_type)


def dataframe_rows(frame: pd.DataFrame) -> list[list[Any]]:
    """Turn a DataFrame into batch rows ``[index, {column: value}]``, as Modelbit's client sends it."""
    columns = [column_key(column) for column in frame.columns]
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


def encode_chunk(rows: Sequence[Sequence[Any]], *, unique_ids: bool = True) -> EncodedChunk:
    """
    Encode a chunk's rows as one JSON array and check their IDs are unique within it.

    :param unique_ids: refuse a repeated ID (batch rows); ``False`` for a DataFrame's index.

    The whole chunk is encoded in one call, and the checks use set and list operations that
    run in C, because this is the hot path of a large batch; rows are only walked one by one to
    name the first bad one.

    :raises ModelbitInputError: a row is not a non-empty list, an ID repeats, or a value cannot be sent.
    """
    rows = rows if isinstance(rows, list) else list(rows)
    if not set(map(type, rows)) <= _ROW_TYPES or not all(rows):
        for position, row in enumerate(rows):
            _row_id(row, position)
    ids = list(map(itemgetter(0), rows))
    keys = ids if set(map(type, ids)) <= _PLAIN_ID_TYPES else [row_id_key(row_id) for row_id in ids]
    if unique_ids and len(set(keys)) != len(keys):
        refuse_duplicate_ids(rows)
    return EncodedChunk(ids=ids, keys=keys, data=encode_rows(rows), rows=rows)


def split_by_bytes(chunk: EncodedChunk, batch_bytes: int) -> list[EncodedChunk]:
    """Split a chunk so each part's request body stays within ``batch_bytes``."""
    limit = batch_bytes - ENVELOPE_BYTES
    if chunk.size <= limit:
        return [chunk]
    encoded = [encode_row(row) for row in chunk.rows]
    parts: list[EncodedChunk] = []
    start, size = 0, 1
    for position, row in enumerate(encoded):
        if len(row) + 2 > limit:
            raise ModelbitInputError(
                f"Row with ID {chunk.ids[position]!r} encodes to {len(row):,} bytes, more than batch_bytes "
                f"({batch_bytes:,}); raise batch_bytes or send large inputs as links."
            )
        if size + len(row) + 1 > limit:
            parts.append(_part(chunk, encoded, start, position))
            start, size = position, 1
        size += len(row) + 1
    parts.append(_part(chunk, encoded, start, len(encoded)))
    return parts


def _part(chunk: EncodedChunk, encoded: list[bytes], start: int, stop: int) -> EncodedChunk:
    ids = chunk.ids[start:stop]
    keys = ids if chunk.ids_are_keys else chunk.keys[start:stop]
    return EncodedChunk(ids, keys, join_rows(encoded[start:stop]), chunk.rows[start:stop])


def reassemble(chunk: EncodedChunk, answer: Any, *, deployment: str, version: str | int) -> list[list[Any]]:
    """
    Match an answer ``[[id, result], ...]`` to the chunk's rows by ID.

    An answer in request order with plain IDs, the usual case, is used as it is; any other
    (sorted by ID, or IDs that need their JSON form to compare) is matched row by row.

    :return: ``[[id, result], ...]`` in the chunk's order, with the IDs as given.
    :raises ModelbitIncompleteBatch: the answer is not a batch, or has a missing, unexpected or repeated ID.
    """
    if chunk.ids_are_keys and _answers_in_request_order(chunk.ids, answer):
        return answer
    results = _results_by_key(answer, deployment=deployment, version=version)
    expected = Counter(chunk.keys)
    unexpected = [key for key in results if key not in expected]
    repeated = [key for key, found in results.items() if len(found) > expected.get(key, 0) > 0]
    if repeated:
        raise ModelbitIncompleteBatch(
            f"Deployment {deployment!r} (version {version}) answered ID {_readable(repeated[0])!r} more "
            f"than once for each of the {expected[repeated[0]]} row(s) sent with it; the batch was not used.",
            deployment=deployment,
            version=version,
        )
    missing = [
        row_id
        for row_id, key in zip(chunk.ids, chunk.keys, strict=True)
        if len(results.get(key, ())) < expected[key]
    ]
    if unexpected or missing:
        raise ModelbitIncompleteBatch(
            f"Deployment {deployment!r} (version {version}) answered a batch of {len(chunk.ids)} rows "
            f"with missing IDs {_show(missing)} and unexpected IDs "
            f"{_show([_readable(key) for key in unexpected])}; the batch was not used.",
            deployment=deployment,
            version=version,
        )
    return [[row_id, results[key].popleft()] for row_id, key in zip(chunk.ids, chunk.keys, strict=True)]


def _answers_in_request_order(ids: list[int | str], answer: Any) -> bool:
    """
    Tell whether ``answer`` is exactly ``[[id, result], ...]`` with the IDs sent, in the order sent.

    The IDs were checked unique when encoded, so equal lists also mean none is missing, unexpected
    or repeated. Comparing the types as well keeps ``1.0`` or ``true`` from passing for ``1``.
    """
    if type(answer) is not list or len(answer) != len(ids):
        return False
    if set(map(type, answer)) != {list} or set(map(len, answer)) != {2}:
        return False
    answered = list(map(itemgetter(0), answer))
    return answered == ids and set(map(type, answered)) <= _PLAIN_ID_TYPES


def _results_by_key(answer: Any, *, deployment: str, version: str | int) -> dict[RowIdKey, deque[Any]]:
    """Each answered ID's results, in the order the answer lists them."""
    if not isinstance(answer, list):
        raise ModelbitIncompleteBatch(
            f"Deployment {deployment!r} (version {version}) answered a batch with {type(answer).__name__} "
            "instead of a list of [id, result] rows.",
            deployment=deployment,
            version=version,
        )
    results: dict[RowIdKey, deque[Any]] = {}
    for row in answer:
        if not isinstance(row, list) or len(row) != 2:
            raise ModelbitIncompleteBatch(
                f"Deployment {deployment!r} (version {version}) answered a malformed batch row {row!r:.200}; "
                "each row must be [id, result].",
                deployment=deployment,
                version=version,
            )
        results.setdefault(row_id_key(row[0]), deque()).append(row[1])
    return results


@contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """
    Leave the objects that exist now out of garbage collection until the block ends.

    Scoring a batch makes and drops Python containers for every row. Each full collection they
    trigger also walks every long-lived object of the process (hundreds of thousands once Airflow
    is imported), which more than doubled the CPU spent per row. Objects made inside the block are
    still collected as usual, so reference cycles the loop creates are not kept. Nested and
    concurrent blocks are counted: the objects are unfrozen when the last block ends.
    """
    global _frozen_blocks
    with _frozen_blocks_lock:
        if _frozen_blocks == 0:
            gc.freeze()
        _frozen_blocks += 1
    try:
        yield
    finally:
        with _frozen_blocks_lock:
            _frozen_blocks -= 1
            if _frozen_blocks == 0:
                gc.unfreeze()


def _readable(key: RowIdKey) -> Any:
    return key.decode() if isinstance(key, bytes) else key


def _show(ids: list[Any]) -> str:
    if not ids:
        return "none"
    shown = ", ".join(repr(row_id) for row_id in ids[:_IDS_SHOWN])
    return f"[{shown}{', ...' if len(ids) > _IDS_SHOWN else ''}] ({len(ids)})"
