"""JSON encoding of inference inputs, the way Modelbit's own client encodes them.

A chunk of rows is encoded in one orjson call, because encoding is the hot path of a large
batch; rows are encoded one by one only to split a chunk by bytes or to find the row that cannot
be sent. NaN and infinities become ``null``, numpy and pandas scalars become plain numbers, dates
and times become ISO strings and decimals become floats. Bytes are refused: Modelbit cannot
receive them inline (send a link instead).
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pandas as pd

from airflow_provider_modelbit.exceptions import ModelbitInputError

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _encode_other(value: Any) -> Any:
    """Turn a value orjson does not know into one it does; raise ``TypeError`` when impossible."""
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.timedelta | pd.Timedelta):
        return str(value)
    if isinstance(value, pd.Series | pd.Index):
        return value.to_list()
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


def encode_row(row: Sequence[Any]) -> bytes:
    """
    Encode one batch row ``[id, *args]``.

    :raises ModelbitInputError: naming the row ID and the place and type of the value that failed.
    """
    try:
        return encode_json(row)
    except TypeError:
        row_id = row[0] if len(row) else None
        raise ModelbitInputError(
            f"Row with ID {row_id!r} cannot be sent as JSON: {_describe_unencodable(row)}. "
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


def _describe_unencodable(row: Sequence[Any]) -> str:
    """Find the first value of a row that does not encode and say where it is (slow path, errors only)."""
    for position, argument in enumerate(row):
        where = "the ID" if position == 0 else f"argument {position}"
        if isinstance(argument, dict):
            for column, value in argument.items():
                if not _encodes(value):
                    return f"column {column!r} holds a value of type {type(value).__name__}"
        if not _encodes(argument):
            return f"{where} is of type {type(argument).__name__}"
    return "a value of an unsupported type"


def _encodes(value: Any) -> bool:
    try:
        encode_json(value)
    except TypeError:
        return False
    return True


RowIdKey = int | str | bytes


def row_id_key(row_id: Any) -> RowIdKey:
    """
    Return the key that matches a row ID to the ID the server answers.

    The server answers IDs as plain JSON, so an input ID is keyed by the JSON it is sent as: an ID
    sent as a JSON integer or string is keyed by that int or string, anything else (floats,
    booleans) by its JSON text. Plain ints and strings, nearly every ID, skip the encoder.
    """
    if type(row_id) is int or type(row_id) is str:
        return row_id
    try:
        encoded = encode_json(row_id)
    except TypeError:
        raise ModelbitInputError(
            f"Row ID {row_id!r} of type {type(row_id).__name__} cannot be sent as JSON; "
            "use a number or a string."
        ) from None
    decoded = orjson.loads(encoded)
    return decoded if type(decoded) is int or type(decoded) is str else encoded


def request_body(encoded_data: bytes, **fields: Any) -> bytes:
    """Wrap already encoded ``data`` in a request envelope, adding the fields that are not ``None``."""
    extra = {name: value for name, value in fields.items() if value is not None}
    if not extra:
        return b'{"data":' + encoded_data + b"}"
    return b'{"data":' + encoded_data + b"," + encode_json(extra)[1:]


def join_rows(encoded_rows: Iterable[bytes]) -> bytes:
    """Join encoded rows into the JSON array of a batch."""
    return b"[" + b",".join(encoded_rows) + b"]"
