"""
JSON encoding of deployment return values, the way Modelbit encodes them.

NaN and infinities become ``null``; numpy scalars and arrays become plain numbers and nested
arrays; a pandas DataFrame becomes an array of row objects; dates, times, timestamps and
timedeltas become their ``str()``; any other object becomes the object of its attributes.
"""

from __future__ import annotations

import datetime
import decimal
import sys
from typing import Any

import orjson

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


def _encode_numpy(value: Any) -> tuple[bool, Any]:
    # A value can only be a numpy object if numpy is already imported; not importing it keeps start-up fast.
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return False, None
    if isinstance(value, numpy.generic):
        return True, value.item()
    if isinstance(value, numpy.ndarray):
        return True, value.tolist()
    return False, None


def _encode_pandas(value: Any) -> tuple[bool, Any]:
    pandas = sys.modules.get("pandas")
    if pandas is None:
        return False, None
    if value is pandas.NaT or value is pandas.NA:
        return True, None
    if isinstance(value, pandas.DataFrame):
        return True, value.to_dict(orient="records")
    if isinstance(value, pandas.Series | pandas.Index):
        return True, value.tolist()
    return False, None


def _default(value: Any) -> Any:
    for encoder in (_encode_pandas, _encode_numpy):
        handled, encoded = encoder(value)
        if handled:
            return encoded
    if isinstance(value, datetime.date | datetime.time | datetime.timedelta):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, set | frozenset):
        return list(value)
    if hasattr(value, "__dict__"):
        return vars(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encode_json(value: Any) -> bytes:
    """Encode ``value`` as Modelbit would; raises ``TypeError`` for values it cannot represent."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError as error:
        raise TypeError(f"The deployment returned a value that cannot be encoded as JSON: {error}") from None


def error_body(message: str) -> bytes:
    """The ``{"error": ...}`` body of every failed request."""
    return orjson.dumps({"error": message})


def data_body(encoded_value: bytes) -> bytes:
    """The ``{"data": ...}`` body around an already encoded value."""
    return b'{"data":' + encoded_value + b"}"
