"""Encoding of deployment return values (§5.3)."""

from __future__ import annotations

import datetime
import decimal
import math
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd
import pytest

from airflow_provider_modelbit.emulator.encoding import data_body, encode_json, error_body


@dataclass
class Point:
    x: int
    y: int


class TestEncodeJson:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (math.nan, None),
            ([math.inf, -math.inf], [None, None]),
            (np.float32(1.5), 1.5),
            (np.float64("nan"), None),
            (np.int64(7), 7),
            (np.bool_(True), True),
            (np.array([[1, 2], [3, 4]]), [[1, 2], [3, 4]]),
            (pd.DataFrame({"a": [1, 2], "b": ["x", None]}), [{"a": 1, "b": "x"}, {"a": 2, "b": None}]),
            (pd.Series([1.0, math.nan]), [1.0, None]),
            (pd.Timestamp("2024-01-02 03:04:05"), "2024-01-02 03:04:05"),
            (datetime.date(2024, 1, 2), "2024-01-02"),
            (datetime.timedelta(minutes=90), "1:30:00"),
            (pd.NaT, None),
            (decimal.Decimal("1.25"), 1.25),
            ({1: "a"}, {"1": "a"}),
            (Point(1, 2), {"x": 1, "y": 2}),
        ],
    )
    def test_values(self, value: object, expected: object) -> None:
        assert orjson.loads(encode_json(value)) == expected

    def test_unencodable_value_raises_type_error(self) -> None:
        with pytest.raises(TypeError, match=r"not JSON serializable|cannot be encoded"):
            encode_json(object())


def test_bodies() -> None:
    assert data_body(b"[1]") == b'{"data":[1]}'
    assert orjson.loads(error_body('a "quoted"\nline')) == {"error": 'a "quoted"\nline'}
