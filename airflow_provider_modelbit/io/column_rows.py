"""Batch rows held as columns, encoded to JSON from the columns without a Python object per row.

A batch of ``[id, {column: value}]`` rows (or ``[id, *values]``) built one dict per row and then
encoded spent more CPU in Python than everything else a large batch does. Both batch paths hold
their rows as columns instead: :class:`FrameRows` is a DataFrame (the hook's ``get_inference``),
:class:`ColumnRows` the column lists of an input chunk (the batch operator). Rows are only built
when read (to split a request by bytes, or to name a row that cannot be sent); encoding gives the
bytes :func:`~airflow_provider_modelbit.io.encoding.encode_rows` gives for the rows, byte for byte.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

from airflow_provider_modelbit.io.encoding import column_key, encode_json, encode_rows

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    #: A column's values: Python values, or an array encoding as they do (see :func:`_exact_array`).
    Column = list[Any] | np.ndarray

# Rows of a frame converted at a time when its rows are read one by one.
BLOCK_ROWS = 1_000
# numpy kinds (booleans, integers, floats) whose ``tolist`` gives exactly what iterating gives.
_PLAIN_KINDS = frozenset("biuf")


class ColumnRows(Sequence[list[Any]]):
    """
    Batch rows as columns: ``[id, {key: value, ...}]``, or ``[id, *values]`` without keys.

    :param ids: the row IDs.
    :param columns: each column's values, as long as ``ids``: a list of the Python values, or a
        numpy array whose orjson encoding is that of its ``tolist()`` (see :func:`_exact_array`).
    :param keys: each column's JSON key; ``None`` sends the values as positional arguments.
    :param plain: which columns hold only numbers, booleans and ``None`` (see :func:`_json_values`).
    """

    def __init__(
        self, ids: list[Any], columns: Sequence[Column], keys: list[str] | None, plain: list[bool]
    ) -> None:
        self.ids = ids
        self._columns = columns
        self._keys = keys
        self._plain = plain

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, item: int) -> list[Any]: ...

    @overload
    def __getitem__(self, item: slice) -> ColumnRows: ...

    def __getitem__(self, item: int | slice) -> list[Any] | ColumnRows:
        if isinstance(item, slice):
            columns = [column[item] for column in self._columns]
            return ColumnRows(self.ids[item], columns, self._keys, self._plain)
        position = range(len(self))[item]  # IndexError as a list gives it
        return next(iter(self[position : position + 1]))

    def __iter__(self) -> Iterator[list[Any]]:
        columns = [column if isinstance(column, list) else column.tolist() for column in self._columns]
        values = zip(*columns, strict=True) if columns else ((),) * len(self.ids)
        return (self._row(row_id, row) for row_id, row in zip(self.ids, values, strict=True))

    def _row(self, row_id: Any, values: Sequence[Any]) -> list[Any]:
        if self._keys is None:
            return [row_id, *values]
        return [row_id, dict(zip(self._keys, values, strict=True))]

    def encode(self) -> bytes:
        """
        The rows as one JSON array, the bytes :func:`~.encoding.encode_rows` gives for them.

        One orjson call per plain column and one per value of the others; the array is then one
        ``bytes.join`` of those values interleaved with the constant pieces between them
        (``[``, ``,{"key":``, ``}],``), laid in place a column at a time by slice assignment: no
        row is built, and nothing runs in Python once per row. Rows that cannot be sent, and a key
        that repeats (a row dict keeps one, with the last value), go the rows' way, which also
        names the row and value that cannot be sent.

        :raises ModelbitInputError: a value cannot be sent as JSON.
        """
        if not self.ids or (self._keys is not None and len(set(self._keys)) != len(self._keys)):
            return encode_rows(list(self))
        try:
            ids = _json_values(self.ids, plain=False)
            columns = [
                _json_values(column, plain) for column, plain in zip(self._columns, self._plain, strict=True)
            ]
        except TypeError:
            return encode_rows(list(self))
        return _interleaved([ids, *columns], self._row_pieces())

    def _row_pieces(self) -> list[bytes]:
        """
        The constant pieces of a row's JSON around its values, the last one with the comma after the row.

        ``[`` id ``,{"a":`` a ``,"b":`` b ``}],`` for object rows, ``[`` id ``,`` a ``,`` b ``],``
        for positional ones: one piece before each value, and one after the last.
        """
        if self._keys is None:
            return [b"[", *[b","] * len(self._columns), b"],"]
        members = [b"," + encode_json(key) + b":" for key in self._keys]
        if members:
            members[0] = b",{" + members[0][1:]
            return [b"[", *members, b"}],"]
        return [b"[", b",{}],"]


def _interleaved(values: list[list[bytes]], pieces: list[bytes]) -> bytes:
    """
    ``pieces[0] values[0][r] pieces[1] values[1][r] ... pieces[-1]`` for every row ``r``, as one JSON array.

    :param values: each column's JSON values (IDs first), all as long.
    :param pieces: one more than there are columns; the last ends with the comma between rows.
    """
    rows = len(values[0])
    stride = 2 * len(values) + 1
    flat: list[bytes] = [b""] * (rows * stride)
    for position, piece in enumerate(pieces):
        flat[2 * position :: stride] = [piece] * rows
    for position, column in enumerate(values):
        flat[2 * position + 1 :: stride] = column
    # The last row's trailing comma becomes the array's closing bracket.
    return b"[" + b"".join(flat)[:-1] + b"]"


def _json_values(values: Column, plain: bool) -> list[bytes]:
    """
    Each value's JSON, as it is written inside a row.

    A plain column's values (numbers, booleans, ``None``) have JSON without a comma inside, so
    one call encodes the column and it splits at the commas; any other value is encoded alone.
    A list of plain values as ints is checked cheaply here too, since IDs are usually integers.
    An array (always plain) is encoded as it is; orjson needs it contiguous, which a column of a
    frame built from a 2-D array is not.

    :raises TypeError: a value cannot be sent as JSON.
    """
    if not isinstance(values, list):
        return encode_json(values if values.flags.c_contiguous else values.copy())[1:-1].split(b",")
    if plain or set(map(type, values)) <= _PLAIN_PYTHON_TYPES:
        return encode_json(values)[1:-1].split(b",")
    return [encode_json(value) for value in values]


_PLAIN_PYTHON_TYPES = {int, float, bool, type(None)}


class FrameRows(Sequence[list[Any]]):
    """
    The batch rows of a DataFrame, ``[index, {column: value}]``, as Modelbit's client sends it.

    Nothing is converted until read: slicing gives the rows of a slice of the frame, so a chunk of
    a large frame costs nothing until it is encoded (in the hook's worker threads, overlapping
    with the requests in flight). The values are those iterating the frame gives
    (``itertuples``), the same Python objects of the same types, so the JSON and the IDs returned
    are those of Modelbit's own client.

    The columns are taken from the frame once; a slice holds slices of them and of the index,
    never a slice of the frame, which costs pandas half a millisecond to build.

    :param frame: the DataFrame; its index holds the row IDs.
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        self._index: pd.Index = frame.index
        self._keys = [column_key(column) for column in frame.columns]
        columns = [frame.iloc[:, position] for position in range(len(self._keys))]
        self._plain = [_is_plain(column.dtype) for column in columns]
        # Each column's array where it encodes as it is (see _exact_array), its Series otherwise.
        self._columns: list[Any] = [
            column if (array := _exact_array(column)) is None else array for column in columns
        ]

    def __len__(self) -> int:
        return len(self._index)

    @overload
    def __getitem__(self, item: int) -> list[Any]: ...

    @overload
    def __getitem__(self, item: slice) -> FrameRows: ...

    def __getitem__(self, item: int | slice) -> list[Any] | FrameRows:
        if isinstance(item, slice):
            part = copy.copy(self)
            part._index = self._index[item]
            part._columns = [
                column.iloc[item] if _is_series(column) else column[item] for column in self._columns
            ]
            return part
        position = range(len(self))[item]  # IndexError as a list gives it
        return next(iter(self[position : position + 1]))

    def __iter__(self) -> Iterator[list[Any]]:
        for start in range(0, len(self), BLOCK_ROWS):
            yield from self[start : start + BLOCK_ROWS].as_columns()

    @property
    def ids(self) -> list[Any]:
        """The row IDs, the frame's index, as iterating it gives them."""
        return column_values(self._index)

    def encode(self) -> bytes:
        """The rows as one JSON array (see :meth:`ColumnRows.encode`)."""
        return self.as_columns().encode()

    def as_columns(self) -> ColumnRows:
        """The rows as columns: arrays where they encode as they are, else Python values converted now."""
        columns = [column_values(column) if _is_series(column) else column for column in self._columns]
        return ColumnRows(self.ids, columns, self._keys, self._plain)


def column_values(values: pd.Series | pd.Index) -> list[Any]:
    """
    A column's (or an index's) values as iterating it gives them.

    Iterating a column of a plain numpy number or boolean type converts each value with
    ``ndarray.item``, which ``tolist`` does in one C call with the same result; every other column
    (nullable, datetime, categorical, object, Arrow-backed) is iterated as pandas iterates it.
    """
    return values.tolist() if _is_plain(values.dtype) else list(values)


def _exact_array(column: pd.Series) -> np.ndarray | None:
    """
    The column's numpy array when orjson writes its values as it writes the Python values
    iterating gives (integers, booleans, float64, in the machine's byte order); ``None`` otherwise.
    """
    import numpy as np  # already imported with pandas

    dtype = column.dtype
    if not isinstance(dtype, np.dtype) or dtype.kind not in _PLAIN_KINDS or not dtype.isnative:
        return None
    return column.to_numpy() if dtype.kind != "f" or dtype.itemsize == 8 else None


def _is_series(column: Any) -> bool:
    return hasattr(column, "iloc")


def _is_plain(dtype: Any) -> bool:
    import numpy as np  # already imported with pandas

    # Nullable dtypes have a kind too ("Int64" is "i") but iterate as numpy scalars and NA.
    return isinstance(dtype, np.dtype) and dtype.kind in _PLAIN_KINDS
