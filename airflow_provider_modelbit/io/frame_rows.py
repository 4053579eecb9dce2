"""A pandas DataFrame as batch rows ``[index, {column: value}]``, as Modelbit's own client sends it.

The rows are a view of the frame, built only when read and one block at a time, so converting a
large frame overlaps with the requests in flight and memory holds a block of row dicts at most.
A frame whose columns and index are all plain numpy numbers or booleans (the usual feature table)
is encoded straight from its columns, without building a dict per row: the same bytes as
:func:`~airflow_provider_modelbit.io.encoding.encode_rows` of its rows, at a fraction of the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

import orjson

from airflow_provider_modelbit.io.encoding import column_key, encode_rows

if TYPE_CHECKING:
    import pandas as pd

# Rows of a frame converted at a time when its rows are read one by one.
BLOCK_ROWS = 1_000
# numpy kinds (booleans, integers, floats) whose ``tolist`` gives exactly what iterating gives, and
# whose JSON is a bare number, ``true``, ``false`` or ``null``: never a comma inside.
_PLAIN_KINDS = frozenset("biuf")


class FrameRows(Sequence[list[Any]]):
    """
    The batch rows of a DataFrame, ``[index, {column: value}]``, built when read.

    Slicing gives the rows of a slice of the frame, again unbuilt, so a chunk of rows costs nothing
    until it is encoded. The values are those iterating the frame gives (``itertuples``), the same
    Python objects of the same types, so the JSON and the IDs returned are Modelbit's client's.

    :param frame: the DataFrame; its index holds the row IDs.
    """

    def __init__(self, frame: pd.DataFrame, *, keys: list[str] | None = None) -> None:
        self._frame = frame
        self._keys = [column_key(column) for column in frame.columns] if keys is None else keys

    def __len__(self) -> int:
        return len(self._frame)

    @overload
    def __getitem__(self, item: int) -> list[Any]: ...

    @overload
    def __getitem__(self, item: slice) -> FrameRows: ...

    def __getitem__(self, item: int | slice) -> list[Any] | FrameRows:
        if isinstance(item, slice):
            return FrameRows(self._frame.iloc[item], keys=self._keys)
        position = range(len(self))[item]  # IndexError as a list gives it
        return next(iter(self[position : position + 1]))

    def __iter__(self) -> Iterator[list[Any]]:
        for start in range(0, len(self._frame), BLOCK_ROWS):
            yield from _block_rows(self._frame.iloc[start : start + BLOCK_ROWS], self._keys)

    def ids(self) -> list[Any]:
        """The row IDs, the frame's index, as iterating it gives them."""
        return column_values(self._frame.index)

    def encode(self) -> bytes:
        """The rows as one JSON array: the bytes :func:`~.encoding.encode_rows` gives for them."""
        if self._encodes_by_columns():
            return _encode_by_columns(self._frame, self._keys)
        return encode_rows(list(self))

    def _encodes_by_columns(self) -> bool:
        # A repeated column name leaves one key per row dict, holding the last value: only the
        # row dicts say which, so such a frame goes row by row.
        frame = self._frame
        return (
            len(frame) > 0
            and len(set(self._keys)) == len(self._keys)
            and _is_plain(frame.index.dtype)
            and all(_is_plain(dtype) for dtype in frame.dtypes)
        )


def column_values(values: pd.Series | pd.Index) -> list[Any]:
    """
    A column's (or an index's) values as iterating it gives them.

    Iterating a column of a plain numpy number or boolean type converts each value with
    ``ndarray.item``, which ``tolist`` does in one C call with the same result; every other column
    (nullable, datetime, categorical, object, Arrow-backed) is iterated as pandas iterates it.
    """
    return values.tolist() if _is_plain(values.dtype) else list(values)


def _is_plain(dtype: Any) -> bool:
    import numpy as np  # already imported with pandas

    # Nullable dtypes have a kind too ("Int64" is "i") but iterate as numpy scalars and NA.
    return isinstance(dtype, np.dtype) and dtype.kind in _PLAIN_KINDS


def _block_rows(block: pd.DataFrame, keys: list[str]) -> Iterator[list[Any]]:
    index = column_values(block.index)
    if not keys:
        return ([row_id, {}] for row_id in index)
    values = zip(*(column_values(block.iloc[:, position]) for position in range(len(keys))), strict=True)
    return ([row_id, dict(zip(keys, row, strict=True))] for row_id, row in zip(index, values, strict=True))


def _encode_by_columns(frame: pd.DataFrame, keys: list[str]) -> bytes:
    """
    Encode the rows of an all-plain frame from its columns: one orjson call per column, one
    ``bytes`` format per row (``[id,{"key":value,...}]``), no row dicts.

    The values are the floats, integers and booleans ``tolist`` gives, encoded by orjson as in a
    row dict, so each one's JSON is the same text; a plain value's JSON holds no comma, so a
    column's JSON array splits into its values at the commas.
    """
    members = b",".join(orjson.dumps(key).replace(b"%", b"%%") + b":%s" for key in keys)
    row_template = b"[%s,{" + members + b"}]"
    columns = [_json_values(frame.iloc[:, position].tolist()) for position in range(len(keys))]
    ids = _json_values(frame.index.tolist())
    return b"[" + b",".join([row_template % row for row in zip(ids, *columns, strict=True)]) + b"]"


def _json_values(values: list[Any]) -> list[bytes]:
    """The JSON of each plain value (a number, a boolean or a NaN/infinity as ``null``)."""
    return orjson.dumps(values)[1:-1].split(b",")
