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
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from airflow_provider_modelbit.exceptions import ModelbitIncompleteBatch, ModelbitInputError
from airflow_provider_modelbit.io.column_rows import ColumnRows, FrameRows
from airflow_provider_modelbit.io.encoding import encode_row, encode_rows, join_rows
from airflow_provider_modelbit.io.row_ids import (
    RowIdKey,
    check_repeated_ids,
    input_positions,
    refuse_duplicate_ids,
    refuse_unusable_ids,
    row_id_key,
    row_id_of,
)

if TYPE_CHECKING:
    from airflow_provider_modelbit.hooks.responses import InferenceCall

# b'{"data":[' ... b'],"timeout_seconds":900,"response_format":"links"}' with room to spare.
ENVELOPE_BYTES = 128
_ROW_TYPES = {list, tuple}
# IDs of these exact types are sent as themselves and come back equal; anything else is keyed by its JSON.
_PLAIN_ID_TYPES = {int, str}

# New containers between two collections while a batch is scored (see collection_for_batch).
YOUNG_OBJECTS_PER_COLLECTION = 50_000

_batch_blocks = 0
_batch_blocks_lock = threading.Lock()
_threshold_outside: tuple[int, ...] = gc.get_threshold()


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
    :param keys: each ID's key (see :func:`~airflow_provider_modelbit.io.row_ids.row_id_key`), used
        to match the answer; the very list ``ids`` when every ID is a plain ``int`` or ``str`` (its
        own key).
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


def input_rows(data: Any, *, deployment: str) -> list[list[Any]] | None:
    """
    Return an operator's ``data`` as batch rows ``[[id, *args], ...]``, or ``None`` for a single input.

    A list whose first element is a list is a batch, and so is ``[]`` (an empty batch: nothing is
    sent); a DataFrame is sent row by row as ``[index, {column: value}]``. Every ID must be a
    string or a finite number; batch rows' IDs must be unique, while a DataFrame's index may repeat
    (see :func:`~airflow_provider_modelbit.io.row_ids.check_repeated_ids`), so chunks of these rows
    need no check of their own.

    :raises ModelbitInputError: a row is not a non-empty list, or an ID is unusable or repeated.
    """
    if is_dataframe(data):
        rows = list(FrameRows(data))
    elif isinstance(data, list | tuple) and (not data or isinstance(data[0], list | tuple)):
        rows = [list(row) if isinstance(row, list | tuple) else row for row in data]
    else:
        return None
    refuse_unusable_ids(rows, deployment=deployment)
    check_repeated_ids(rows, from_dataframe=is_dataframe(data), deployment=deployment)
    return rows


def rows_in_chunks(rows: Iterable[Sequence[Any]], batch_size: int) -> Iterator[Sequence[Sequence[Any]]]:
    """Cut rows into chunks of at most ``batch_size``, lazily; a DataFrame's rows into unbuilt slices."""
    if isinstance(rows, FrameRows):
        for start in range(0, len(rows), batch_size):
            yield rows[start : start + batch_size]
        return
    iterator = iter(rows)
    while chunk := list(islice(iterator, batch_size)):
        yield chunk


def encode_chunk(rows: Sequence[Sequence[Any]], *, unique_ids: bool = True) -> EncodedChunk:
    """
    Encode a chunk's rows as one JSON array and check their IDs are unique within it.

    :param unique_ids: refuse a repeated ID (batch rows); ``False`` for a DataFrame's index.

    The whole chunk is encoded in one call, and the checks use set and list operations that
    run in C, because this is the hot path of a large batch; rows are only walked one by one to
    name the first bad one. Rows held as columns (a DataFrame's, an input table's) are encoded from
    their columns (see :mod:`~airflow_provider_modelbit.io.column_rows`).

    :raises ModelbitInputError: a row is not a non-empty list, an ID repeats, or a value cannot be sent.
    """
    if isinstance(rows, ColumnRows | FrameRows):
        ids = rows.ids
    else:
        rows = rows if isinstance(rows, list) else list(rows)
        if not set(map(type, rows)) <= _ROW_TYPES or not all(rows):
            for position, row in enumerate(rows):
                row_id_of(row, position)
        ids = list(map(itemgetter(0), rows))
    keys = ids if set(map(type, ids)) <= _PLAIN_ID_TYPES else [row_id_key(row_id) for row_id in ids]
    if unique_ids and len(set(keys)) != len(keys):
        refuse_duplicate_ids(rows)
    data = rows.encode() if isinstance(rows, ColumnRows | FrameRows) else encode_rows(rows)
    return EncodedChunk(ids=ids, keys=keys, data=data, rows=rows)


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


def reassemble(chunk: EncodedChunk, answer: Any, *, call: InferenceCall) -> list[list[Any]]:
    """
    Match an answer ``[[id, result], ...]`` to the chunk's rows by ID.

    :param call: the call that answered, named in errors.

    An answer in request order with plain IDs, the usual case, is used as it is; any other
    (sorted by ID, or IDs that need their JSON form to compare) is matched row by row.

    :return: ``[[id, result], ...]`` in the chunk's order, with the IDs as given.
    :raises ModelbitIncompleteBatch: the answer is not a batch, or has a missing, unexpected or repeated ID.
    """
    if chunk.ids_are_keys and _answers_in_request_order(chunk.ids, answer):
        return answer
    answered = _answered_rows(answer, call=call)
    positions = input_positions(
        chunk.keys, (row_id_key(row[0]) for row in answered), ids=chunk.ids, call=call
    )
    return [[row_id, answered[position][1]] for row_id, position in zip(chunk.ids, positions, strict=True)]


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


def _answered_rows(answer: Any, *, call: InferenceCall) -> list[list[Any]]:
    """The answer's ``[id, result]`` rows, refusing any other shape."""
    if not isinstance(answer, list):
        raise ModelbitIncompleteBatch(
            f"{call.where} answered a batch with {type(answer).__name__} "
            "instead of a list of [id, result] rows.",
            deployment=call.deployment,
            version=call.version,
        )
    for row in answer:
        if not isinstance(row, list) or len(row) != 2:
            raise ModelbitIncompleteBatch(
                f"{call.where} answered a malformed batch row {row!r:.200}; each row must be [id, result].",
                deployment=call.deployment,
                version=call.version,
            )
    return answer


@contextmanager
def collection_for_batch() -> Iterator[None]:
    """
    Tune the garbage collector for scoring a batch until the block ends.

    Scoring a batch makes and drops Python containers for every row. Each full collection they
    trigger also walks every long-lived object of the process (hundreds of thousands once Airflow
    is imported), which more than doubled the CPU spent per row: the objects that exist when the
    block starts are left out of collection (``gc.freeze``). And reading the answers makes two
    containers per row, so at Python's default of a collection per 700 new ones the collector ran
    a hundred times per 3,000-row answer, walking the answers of every request in flight: a third
    of the time spent reading them. Inside the block it runs every
    :data:`YOUNG_OBJECTS_PER_COLLECTION` instead. Objects made inside the block are still
    collected, so reference cycles the loop creates are not kept. Nested and concurrent blocks
    are counted: the collector is restored when the last block ends.
    """
    global _batch_blocks, _threshold_outside
    with _batch_blocks_lock:
        if _batch_blocks == 0:
            gc.freeze()
            _threshold_outside = gc.get_threshold()
            young, *older = _threshold_outside
            gc.set_threshold(max(young, YOUNG_OBJECTS_PER_COLLECTION), *older)
        _batch_blocks += 1
    try:
        yield
    finally:
        with _batch_blocks_lock:
            _batch_blocks -= 1
            if _batch_blocks == 0:
                gc.set_threshold(*_threshold_outside)
                gc.unfreeze()
