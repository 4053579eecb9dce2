"""JSON encoding of inference inputs (io/encoding.py)."""

from __future__ import annotations

import datetime
import decimal

import numpy as np
import orjson
import pandas as pd
import pytest

from airflow_provider_modelbit.exceptions import ModelbitInputError
from airflow_provider_modelbit.io.encoding import (
    encode_json,
    encode_row,
    encode_rows,
    join_rows,
    request_body,
)


class TestEncodeJson:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param(float("nan"), b"null", id="nan"),
            pytest.param(float("inf"), b"null", id="inf"),
            pytest.param(float("-inf"), b"null", id="minus-inf"),
            pytest.param(np.float64("nan"), b"null", id="numpy-nan"),
            pytest.param(np.int64(7), b"7", id="numpy-int"),
            pytest.param(np.float32(1.5), b"1.5", id="numpy-float"),
            pytest.param(np.bool_(True), b"true", id="numpy-bool"),
            pytest.param(np.array([1, 2]), b"[1,2]", id="numpy-array"),
            pytest.param(pd.NaT, b"null", id="pandas-nat"),
            pytest.param(pd.NA, b"null", id="pandas-na"),
            pytest.param(
                pd.Timestamp("2024-05-01 10:30", tz="UTC"), b'"2024-05-01 10:30:00+00:00"', id="timestamp"
            ),
            pytest.param(datetime.datetime(2024, 5, 1, 10, 30), b'"2024-05-01 10:30:00"', id="datetime"),
            pytest.param(datetime.date(2024, 5, 1), b'"2024-05-01"', id="date"),
            pytest.param(datetime.time(10, 30), b'"10:30:00"', id="time"),
            pytest.param(decimal.Decimal("1.25"), b"1.25", id="decimal"),
            pytest.param(datetime.timedelta(seconds=90), b'"0 days 00:01:30"', id="timedelta"),
            pytest.param(pd.Timedelta(seconds=90), b'"0 days 00:01:30"', id="pandas-timedelta"),
            pytest.param(pd.Period("2024-05", freq="M"), b'"2024-05"', id="period"),
            pytest.param(pd.DataFrame({"a": [1]}), b'[{"a":1}]', id="nested-frame"),
            pytest.param({1: "a", False: "b", None: "c"}, b'{"1":"a","false":"b","null":"c"}', id="keys"),
            pytest.param({"a": [1, None]}, b'{"a":[1,null]}', id="nested"),
        ],
    )
    def test_encodes_as_modelbit_does(self, value: object, expected: bytes) -> None:
        """NaN/Inf become null, numpy/pandas scalars numbers, dates their str(), decimals floats."""
        assert encode_json(value) == expected

    def test_object_is_sent_as_its_attributes(self) -> None:
        """As the official client does for an object it has no converter for."""

        class Point:
            def __init__(self) -> None:
                self.x, self.y = 1, float("nan")

        assert encode_json([Point()]) == b'[{"x":1,"y":null}]'

    def test_bytes_are_refused(self) -> None:
        with pytest.raises(TypeError, match="bytes"):
            encode_json({"blob": b"\x00"})


class TestEncodeRows:
    @pytest.mark.parametrize(
        "rows",
        [
            pytest.param([[1, {"x": 2.5}], [2, {"x": float("nan")}]], id="objects-with-nan"),
            pytest.param([["a", np.int64(3), np.float32(0.5)], ["b", None, 1]], id="numpy-positional"),
            pytest.param([(7, datetime.date(2024, 5, 1), decimal.Decimal("1.5"))], id="tuple-row"),
            pytest.param([], id="empty"),
        ],
    )
    def test_same_bytes_as_joining_each_row(self, rows: list[list[object]]) -> None:
        """One call for the whole chunk gives exactly the array the rows encoded one by one form."""
        assert encode_rows(rows) == join_rows(encode_row(row) for row in rows)

    def test_unencodable_row_is_named(self) -> None:
        with pytest.raises(ModelbitInputError, match=r"Row with ID 'r2' .*column 'photo' is of type bytes"):
            encode_rows([["r1", {"photo": "ok"}], ["r2", {"photo": b"\x89PNG"}]])

    def test_key_path_of_a_nested_value_is_named(self) -> None:
        with pytest.raises(
            ModelbitInputError, match=r"ID 7 .*column 'a' at key path \[1\]\['b'\] is of type set"
        ):
            encode_rows([[7, {"a": [0, {"b": {1}}]}]])

    def test_positional_argument_is_named(self) -> None:
        with pytest.raises(ModelbitInputError, match=r"ID 7 .*argument 2 at key path \[0\] is of type bytes"):
            encode_rows([[7, 1, [b"x"]]])

    def test_integer_beyond_64_bits_is_named(self) -> None:
        with pytest.raises(ModelbitInputError, match=r"the ID is the integer 1180591620717411303424, out"):
            encode_rows([[2**70, 1]])


class TestEncodeRow:
    def test_row_is_compact_json(self) -> None:
        assert encode_row([1, {"x": 2.5}, "a"]) == b'[1,{"x":2.5},"a"]'

    def test_unencodable_column_names_row_id_column_and_type(self) -> None:
        """A row that cannot be encoded names the row ID, the column and the value type."""
        with pytest.raises(ModelbitInputError) as caught:
            encode_row([42, {"age": 3, "photo": b"\x89PNG"}])
        assert "42" in caught.value.message
        assert "'photo'" in caught.value.message
        assert "bytes" in caught.value.message
        assert isinstance(caught.value, ValueError)

    def test_unencodable_positional_argument_is_named(self) -> None:
        with pytest.raises(ModelbitInputError, match=r"ID 'r7'.*argument 2 is of type object"):
            encode_row(["r7", 1, object()])


class TestRequestBody:
    @pytest.mark.parametrize(
        ("fields", "expected"),
        [
            ({}, {"data": [[1, 2]]}),
            ({"timeout_seconds": None}, {"data": [[1, 2]]}),
            (
                {"timeout_seconds": 30, "response_format": "links"},
                {"data": [[1, 2]], "timeout_seconds": 30, "response_format": "links"},
            ),
        ],
    )
    def test_envelope_wraps_encoded_rows(self, fields: dict, expected: dict) -> None:
        body = request_body(join_rows([encode_row([1, 2])]), **fields)
        assert orjson.loads(body) == expected

    def test_empty_batch_is_an_empty_array(self) -> None:
        assert join_rows([]) == b"[]"
