"""JSON results turned into typed Arrow columns.

A deployment answers with JSON values, one per row. They become the narrowest Arrow type that
holds every value without loss: ``int64``, ``double`` (integers and floats mixed), ``bool``,
``string``, ``list<T>``, ``struct`` for objects (the union of the keys seen, missing keys as null)
and ``null`` when every value is ``None``. A column whose values genuinely disagree (numbers and
strings, objects and lists, an integer beyond 64 bits, objects without keys, which Parquet cannot
store) is kept as JSON text: a string column whose field carries ``{"modelbit.encoding": "json"}``
so readers know to parse it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa

JSON_ENCODING_KEY = b"modelbit.encoding"
JSON_TEXT_METADATA = {JSON_ENCODING_KEY: b"json"}

# Conversions pyarrow refuses when values disagree; each means "keep this column as JSON text".
_CONFLICTS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError)


def results_to_arrow(values: Sequence[Any]) -> pa.Array:
    """
    Convert JSON results to the narrowest lossless Arrow array.

    :param values: one decoded JSON value per row (``None`` for null).
    :return: a typed array, or a string array of JSON text when the values disagree in type
        (see :func:`result_field` to learn which).
    """
    return _convert(values)[0]


def result_field(name: str, values: Sequence[Any]) -> tuple[pa.Field, pa.Array]:
    """
    Convert JSON results and describe them as a named field.

    :param name: the column name.
    :param values: one decoded JSON value per row.
    :return: the field (with JSON-text metadata when the column fell back to JSON) and the array.
    """
    array, as_json_text = _convert(values)
    return pa.field(name, array.type, metadata=JSON_TEXT_METADATA if as_json_text else None), array


def results_table(ids: Sequence[Any], values: Sequence[Any]) -> pa.Table:
    """
    Build a table with columns ``id`` and ``result``.

    :param ids: the row IDs, in row order.
    :param values: the JSON result of each row, in the same order.
    """
    if len(ids) != len(values):
        raise ValueError(f"{len(ids)} IDs but {len(values)} results; each row needs both.")
    id_field, id_array = _id_field(ids)
    field, array = result_field("result", values)
    return pa.Table.from_arrays([id_array, array], schema=pa.schema([id_field, field]))


def _id_field(ids: Sequence[Any]) -> tuple[pa.Field, pa.Array]:
    """
    The ``id`` column: as :func:`result_field`, but integer and float IDs together are kept as JSON text.

    A ``double`` column would turn the ID ``1`` into ``1.0``, another ID under the rule of
    :mod:`~airflow_provider_modelbit.io.row_ids`, so the results could no longer be matched to inputs.
    """
    kinds = set(map(type, ids))
    if int in kinds and float in kinds:
        return pa.field("id", pa.string(), metadata=JSON_TEXT_METADATA), json_text_array(ids)
    return result_field("id", ids)


def is_json_text(field: pa.Field) -> bool:
    """Tell whether a field holds results kept as JSON text."""
    return bool(field.metadata) and field.metadata.get(JSON_ENCODING_KEY) == b"json"


def json_text_array(values: Sequence[Any]) -> pa.Array:
    """Encode each value as JSON text, keeping ``None`` as a null (not the text ``null``)."""
    return pa.array([None if value is None else json_text(value) for value in values], type=pa.string())


def json_text(value: Any) -> str:
    """Encode one value as compact JSON text, integers of any size included."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        # orjson stops at 64-bit integers; the standard library does not.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def parquet_can_store(data_type: pa.DataType) -> bool:
    """Tell whether Parquet can store a type: it has no representation for a struct without fields."""
    if pa.types.is_struct(data_type):
        return data_type.num_fields > 0 and all(
            parquet_can_store(data_type.field(i).type) for i in range(data_type.num_fields)
        )
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return parquet_can_store(data_type.value_type)
    return True


def _convert(values: Sequence[Any]) -> tuple[pa.Array, bool]:
    """Return the array and whether it fell back to JSON text."""
    try:
        array = pa.array(values, from_pandas=False)
    except _CONFLICTS:
        return json_text_array(values), True
    if not _is_json_type(array.type) or not parquet_can_store(array.type):
        return json_text_array(values), True
    if _INFERENCE_SORTS_KEYS and _has_struct(array.type):
        array = pa.array(values, type=_in_key_order(array.type, values), from_pandas=False)
    return array, False


# Some pyarrow releases (21, the one pinned with Airflow 3.1) infer struct fields in sorted key order;
# others (26) keep the order keys first appear in: the deployment's order, which result columns follow.
_INFERENCE_SORTS_KEYS = pa.array([{"b": 0, "a": 0}]).type.field(0).name == "a"


def _has_struct(data_type: pa.DataType) -> bool:
    if pa.types.is_struct(data_type):
        return True
    return pa.types.is_list(data_type) and _has_struct(data_type.value_type)


def _in_key_order(data_type: pa.DataType, values: Sequence[Any]) -> pa.DataType:
    """The inferred ``data_type`` with every struct's fields in the order their keys first appear."""
    if pa.types.is_list(data_type):
        items = [item for value in values if isinstance(value, list) for item in value]
        return pa.list_(_in_key_order(data_type.value_type, items))
    if not pa.types.is_struct(data_type):
        return data_type
    objects = [value for value in values if isinstance(value, dict)]
    order = dict.fromkeys(key for value in objects for key in value)
    fields = {data_type.field(i).name: data_type.field(i) for i in range(data_type.num_fields)}
    return pa.struct(
        [
            fields[name].with_type(_in_key_order(fields[name].type, [value.get(name) for value in objects]))
            for name in order
        ]
    )


def _is_json_type(data_type: pa.DataType) -> bool:
    """Accept only the types JSON values map to, so nothing non-JSON slips through inference."""
    if pa.types.is_struct(data_type):
        return all(_is_json_type(data_type.field(i).type) for i in range(data_type.num_fields))
    if pa.types.is_list(data_type):
        return _is_json_type(data_type.value_type)
    return data_type in (pa.null(), pa.bool_(), pa.int64(), pa.float64(), pa.string())
