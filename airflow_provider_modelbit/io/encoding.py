"""JSON encoding of inference inputs, value for value as the official client (``modelbit`` 0.44.3) sends them.

``modelbit.get_inference`` encodes with the standard ``json`` module and a converter table; this
module gives the same JSON values with orjson, because encoding is the hot path of a large batch.
A chunk of rows is encoded in one orjson call; rows are encoded one by one only to split a chunk
by bytes or to find the value that cannot be sent. What the official client sends, and so this
module too:

- NaN and ±infinity: ``null``; numpy integers, floats and booleans: plain numbers and booleans;
  numpy arrays: nested lists;
- ``datetime``, ``pandas.Timestamp`` (timezone-aware too), ``date`` and ``time``: their ``str()``,
  ``"2024-01-02 03:04:05"``, ``"2024-01-02 03:04:05+00:00"``, ``"2024-01-02"``, ``"03:04:05"``;
- ``pandas.Timedelta``: its ``str()``, ``"0 days 00:00:01"``; a DataFrame inside a value: its records;
- any other object with attributes: the object of its attributes; dict keys that are numbers,
  booleans or ``None``: their JSON text (``"1"``, ``"true"``, ``"null"``).

Where the provider differs on purpose (each listed in ``docs/operators.md``, "How values are encoded"):

- ``decimal.Decimal`` is sent as a float (the client refuses it);
- ``datetime.timedelta`` is sent as pandas writes it, ``"0 days 00:00:01"`` (the client refuses
  it), so a duration has one form whether it comes from a DataFrame or an Arrow table;
- ``pandas.Period`` is sent as its ``str()``, ``"2024-01"`` (the client sends ``{}``);
- ``NaT`` and ``pandas.NA`` are sent as ``null`` (the client sends ``{"__module__": "pandas"}``);
- a numpy float NaN outside an array and NaN inside a plain object are ``null`` (the client
  writes ``NaN``, which is not JSON);
- a pandas Series or Index is sent as a list; an integer outside the signed/unsigned 64-bit range
  is refused with a message (the client sends it, and most JSON readers then lose digits).

Bytes are refused, as by the client: Modelbit cannot receive them inline (send a link instead).
"""

from __future__ import annotations

import datetime
import decimal
import sys
import types
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from airflow_provider_modelbit.exceptions import ModelbitInputError

# Dates pass through to _encode_other, so they get str() as the official client gives them
# rather than orjson's ISO 8601 form.
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


def _encode_other(value: Any) -> Any:
    """Turn a value orjson does not know into one it does; raise ``TypeError`` when impossible."""
    # A pandas value can only exist once pandas is imported; looking it up in sys.modules keeps the
    # seconds pandas takes to import out of the hook for the tasks that never send one.
    pd = sys.modules.get("pandas")
    if pd is not None and (value is pd.NaT or value is pd.NA):
        return None
    if isinstance(value, datetime.timedelta):
        import pandas  # the client writes durations as pandas does

        return str(pandas.Timedelta(value))
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if pd is not None:
        if isinstance(value, pd.Period):
            return str(value)
        if isinstance(value, pd.Series | pd.Index):
            return value.to_list()
        if isinstance(value, pd.DataFrame):
            return value.to_dict(orient="records")
    if hasattr(value, "__dict__") and not isinstance(value, type | types.ModuleType):
        return vars(value)
    raise TypeError(type(value).__name__)


def encode_json(value: Any) -> bytes:
    """
    Encode one value as compact JSON.

    :raises TypeError: the value, or something inside it, cannot be sent as JSON.
    """
    try:
        return orjson.dumps(value, default=_encode_other, option=_OPTIONS)
    except orjson.JSONEncodeError as error:
        raise TypeError(str(error)) from error


def column_key(column: Any) -> str:
    """The JSON key of a DataFrame column, as ``json`` writes a non-string key (``True`` -> ``"true"``)."""
    if isinstance(column, str):
        return column
    if column is None or isinstance(column, bool):
        return orjson.dumps(column).decode()
    return str(column)


def encode_row(row: Sequence[Any]) -> bytes:
    """
    Encode one batch row ``[id, *args]``.

    :raises ModelbitInputError: naming the row ID and the key path and type of the value that failed.
    """
    try:
        return encode_json(row)
    except TypeError:
        row_id = row[0] if len(row) else None
        raise ModelbitInputError(
            f"Row with ID {row_id!r} cannot be sent as JSON: {describe_unencodable(row, row_level=True)}. "
            "Convert it to a number, string, list or dict (binary data must be uploaded and sent as a link)."
        ) from None


def encode_rows(rows: list[Sequence[Any]]) -> bytes:
    """
    Encode batch rows ``[[id, *args], ...]`` as one JSON array, the same bytes as joining :func:`encode_row`.

    :raises ModelbitInputError: naming the first row that cannot be sent, as :func:`encode_row` does.
    """
    try:
        return encode_json(rows)
    except TypeError:
        for row in rows:
            encode_row(row)
        raise


def describe_unencodable(value: Any, *, row_level: bool = False) -> str:
    """
    Say where the first value that does not encode sits and what it is (slow path, errors only).

    :param row_level: ``value`` is a batch row ``[id, *args]``: name "the ID" and "argument N".
    """
    path = _unencodable_path(value, [])
    if path is None:
        return "a value of an unsupported type"
    keys, bad = path
    if not row_level or not keys:
        where = f"the value at key path {_key_path(keys)}" if keys else "the input"
    elif keys[0] == 0:
        where = "the ID"
    elif isinstance(value[keys[0]], dict):
        # Rows of a table or DataFrame hold one dict of columns: name the column, then the path inside.
        inner = keys[2:]
        where = f"column {keys[1]!r}" + (f" at key path {_key_path(inner)}" if inner else "")
    else:
        where = f"argument {keys[0]}" + (f" at key path {_key_path(keys[1:])}" if keys[1:] else "")
    return f"{where} is {describe_value(bad)}"


def _unencodable_path(value: Any, keys: list[Any]) -> tuple[list[Any], Any] | None:
    """The keys leading to the innermost value that does not encode, and that value."""
    if _encodes(value):
        return None
    items: Iterable[tuple[Any, Any]] = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    for key, inner in items:
        found = _unencodable_path(inner, [*keys, key])
        if found is not None:
            return found
    return keys, value


def _key_path(keys: list[Any]) -> str:
    return "".join(f"[{key!r}]" for key in keys)


def describe_value(value: Any) -> str:
    """Say what kind of value failed to encode (an out-of-range integer is named with its digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64_MIN <= value <= _UINT64_MAX:
        return f"the integer {value}, outside the 64-bit range JSON readers keep exactly; send it as a string"
    return f"of type {type(value).__name__}"


def _encodes(value: Any) -> bool:
    try:
        encode_json(value)
    except TypeError:
        return False
    return True


def request_body(encoded_data: bytes, **fields: Any) -> bytes:
    """Wrap already encoded ``data`` in a request envelope, adding the fields that are not ``None``."""
    extra = {name: value for name, value in fields.items() if value is not None}
    if not extra:
        return b'{"data":' + encoded_data + b"}"
    return b'{"data":' + encoded_data + b"," + encode_json(extra)[1:]


def join_rows(encoded_rows: Iterable[bytes]) -> bytes:
    """Join encoded rows into the JSON array of a batch."""
    return b"[" + b",".join(encoded_rows) + b"]"
