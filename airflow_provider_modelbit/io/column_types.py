"""Column types a user names for an input table (``column_types={"zip": "str"}``).

Text formats carry no types, so a reader guesses them: ``00123`` becomes the integer ``123`` and a
zip code goes to the model as a number. ``column_types`` says what a column holds instead. One
home for the names both operators accept: Python's (``"str"``, ``"int"``, ``"float"``, ``"bool"``),
Arrow's aliases (``"string"``, ``"int32"``, ``"date32"``, ``"timestamp[us]"``...) or a
``pyarrow.DataType``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from airflow_provider_modelbit.exceptions import ModelbitInputError

ColumnTypes = Mapping[str, "str | pa.DataType"]

_PYTHON_NAMES = {
    "str": pa.string(),
    "text": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "datetime": pa.timestamp("us"),
}


def parse_column_types(column_types: Mapping[str, Any] | None) -> dict[str, pa.DataType]:
    """
    Read ``column_types`` as Arrow types.

    :raises ModelbitInputError: naming the column whose type is not a known name or Arrow type.
    """
    if column_types is None:
        return {}
    if not isinstance(column_types, Mapping):
        raise ModelbitInputError(
            f"column_types must be a dict of column name to type, got {column_types!r}; "
            'for example column_types={"zip_code": "str"}.'
        )
    return {str(name): _arrow_type(name, spec) for name, spec in column_types.items()}


def _arrow_type(column: Any, spec: Any) -> pa.DataType:
    if isinstance(spec, pa.DataType):
        return spec
    if isinstance(spec, type) and spec in (str, int, float, bool):
        return _PYTHON_NAMES[spec.__name__]
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name in _PYTHON_NAMES:
            return _PYTHON_NAMES[name]
        try:
            return pa.type_for_alias(name)
        except ValueError:
            pass
    raise ModelbitInputError(
        f"column_types gives column {column!r} the type {spec!r}, which is not a type name; use one of "
        f"{', '.join(sorted(_PYTHON_NAMES))}, an Arrow alias such as 'int32' or 'timestamp[us]', "
        "or a pyarrow DataType."
    )


def text_id_types(id_column: str | None, column_types: Mapping[str, pa.DataType]) -> dict[str, pa.DataType]:
    """
    ``column_types`` with a text ID column: an ID read from text stays text unless told otherwise.

    ``00123`` and ``123`` are different IDs in a CSV file; read as integers they would merge, and
    ``007`` and ``7`` would be called duplicates.
    """
    if id_column is None or id_column in column_types:
        return dict(column_types)
    return {**column_types, id_column: pa.string()}


def with_column_types(data: Any, column_types: Mapping[str, Any] | None) -> Any:
    """
    ``data`` with the DataFrame columns ``column_types`` names cast to their types (a copy).

    The inference operator's equivalent of reading a table with ``column_types``: a zip code held
    as an integer column is sent as ``"2134"`` when named ``"str"``.

    :raises ModelbitInputError: ``data`` is not a DataFrame, a column is missing, or a value does
        not fit its type (naming the column and the index of its row).
    """
    types = parse_column_types(column_types)
    if not types:
        return data
    pandas = sys.modules.get("pandas")
    if pandas is None or not isinstance(data, pandas.DataFrame):
        raise ModelbitInputError(
            f"column_types applies to the columns of a DataFrame, and data is a {type(data).__name__}; "
            "convert the values before passing them, or pass a DataFrame."
        )
    missing = [name for name in types if name not in data.columns]
    if missing:
        raise ModelbitInputError(
            f"column_types names {', '.join(map(repr, missing))}, but the DataFrame has no such column; "
            f"its columns are {', '.join(map(str, data.columns))}."
        )
    frame = data.copy(deep=False)
    for name, data_type in types.items():
        frame[name] = _cast_series(frame[name], name, data_type)
    return frame


def _cast_series(series: Any, name: str, data_type: pa.DataType) -> Any:
    values = pa.Array.from_pandas(series)
    try:
        cast = values.cast(data_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        position = next((i for i, value in enumerate(values) if not _fits(value, data_type)), None)
        row = "unknown" if position is None else repr(series.index[position])
        raise ModelbitInputError(
            f"Column {name!r} of the DataFrame cannot be read as {data_type} ({error}); the first value "
            f"that does not fit is at index {row}. Correct column_types, or the data."
        ) from error
    return cast.to_pandas().set_axis(series.index)


def _fits(value: pa.Scalar, data_type: pa.DataType) -> bool:
    try:
        pa.array([value.as_py()], value.type).cast(data_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True
