"""Batch rows held as columns, built when read and encoded from the columns (io/column_rows.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from airflow_provider_modelbit.io.column_rows import BLOCK_ROWS, FrameRows
from airflow_provider_modelbit.io.encoding import column_key, encode_rows


def _rows_by_itertuples(frame: pd.DataFrame) -> list[list[Any]]:
    """The rows as iterating the frame gives them: what Modelbit's client sends, and the reference."""
    columns = [column_key(column) for column in frame.columns]
    tuples = frame.itertuples(index=False, name=None)
    return [
        [index, dict(zip(columns, values, strict=True))]
        for index, values in zip(frame.index, tuples, strict=True)
    ]


ROWS = 5
PLAIN_COLUMNS: dict[Any, Any] = {
    "int": np.arange(ROWS) - 2,
    "int64 extremes": np.array([-(2**63), 2**63 - 1, 0, 1, -1], dtype="int64"),
    "uint64 extremes": np.array([0, 2**64 - 1, 1, 2, 3], dtype="uint64"),
    "uint8": np.arange(ROWS, dtype="uint8"),
    **{name: np.arange(ROWS, dtype=name) - 2 for name in ("int8", "int16", "int32")},
    **{name: np.arange(ROWS, dtype=name) * 1_000 for name in ("uint16", "uint32")},
    "float32": np.arange(ROWS, dtype="float32") / 3,
    "float16": np.array([0.1, -2.5, 65504, np.nan, 1e-7], dtype="float16"),
    "big-endian float64": np.array([0.1, 1 / 3, -1e300, np.inf, 2.0**60], dtype=">f8"),
    "float": [np.nan, 1.5, np.inf, -0.0, 1e300],
    "tiny floats": [5e-324, -np.inf, 0.1, 1e16, 123456.789],
    "bool": [True, False, True, False, True],
    7: np.arange(ROWS),
    True: np.arange(ROWS),
    'with "quotes", commas, %s and é': np.arange(ROWS) * 0.5,
}
OTHER_COLUMNS: dict[str, Any] = {
    "Int64": pd.array([1, None, 3, 4, 5], dtype="Int64"),
    "Float64": pd.array([1.5, None, 3, 4, 5], dtype="Float64"),
    "boolean": pd.array([True, None, False, True, True], dtype="boolean"),
    "timestamp": pd.date_range("2024-01-01 03:04:05", periods=ROWS),
    "tz-aware": pd.date_range("2024-01-01", periods=ROWS, tz="Europe/Paris"),
    "duration": pd.to_timedelta(np.arange(ROWS), unit="s"),
    "period": pd.period_range("2024-01", periods=ROWS, freq="M"),
    "str": ["a", None, "c,d", 'd "quoted"', "é"],
    "category": pd.Categorical(list("xxyyx")),
    "object": [{"a": 1}, [1, 2], None, "x", 3],
}
INDEXES = [
    pytest.param(None, id="range index"),
    pytest.param(pd.Index([3, 1, 4, 1, 5]), id="repeated int index"),
    pytest.param(pd.Index([0.5, 1.5, 2.5, 3.5, 4.5]), id="float index"),
    pytest.param(pd.Index(np.arange(ROWS, dtype="uint32")), id="uint32 index"),
    pytest.param(pd.Index(["a", "b,c", "c", "d", "e"]), id="string index"),
    pytest.param(pd.date_range("2024-01-01", periods=ROWS), id="datetime index"),
]


def _frame(columns: dict[Any, Any], index: pd.Index | None) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    if index is not None:
        frame.index = index
    return frame


class TestRows:
    def test_rows_are_index_and_column_object(self) -> None:
        frame = pd.DataFrame({"age": [31, 45], "plan": ["pro", "free"]}, index=[10, 11])
        assert list(FrameRows(frame)) == [[10, {"age": 31, "plan": "pro"}], [11, {"age": 45, "plan": "free"}]]

    @pytest.mark.parametrize("index", INDEXES)
    def test_values_are_those_iterating_the_frame_gives_for_every_dtype(self, index: pd.Index | None) -> None:
        """Same values of the same types as ``itertuples``, so the same JSON and the same IDs back."""
        frame = _frame({**PLAIN_COLUMNS, **OTHER_COLUMNS}, index)
        expected = _rows_by_itertuples(frame)
        rows = list(FrameRows(frame))
        assert repr(rows) == repr(expected)  # NaN is not equal to itself; its repr is
        for row, reference in zip(rows, expected, strict=True):
            assert type(row[0]) is type(reference[0])
            assert [type(value) for value in row[1].values()] == [type(v) for v in reference[1].values()]
        assert FrameRows(frame).ids == [row[0] for row in expected]

    def test_slices_and_positions_are_the_rows_of_the_frame_slice(self) -> None:
        frame = pd.DataFrame({"a": np.arange(3 * BLOCK_ROWS + 1)}, index=np.arange(3 * BLOCK_ROWS + 1) * 2)
        rows = FrameRows(frame)
        part = rows[BLOCK_ROWS - 1 : 2 * BLOCK_ROWS + 2]
        assert isinstance(part, FrameRows) and len(part) == BLOCK_ROWS + 3
        assert list(part) == [[2 * n, {"a": n}] for n in range(BLOCK_ROWS - 1, 2 * BLOCK_ROWS + 2)]
        assert (rows[0], rows[-1]) == ([0, {"a": 0}], [6 * BLOCK_ROWS, {"a": 3 * BLOCK_ROWS}])
        with pytest.raises(IndexError):
            rows[len(rows)]

    def test_a_frame_without_columns_sends_an_empty_object_per_row(self) -> None:
        rows = FrameRows(pd.DataFrame(index=[4, 2]))
        assert list(rows) == [[4, {}], [2, {}]]
        assert rows.encode() == b"[[4,{}],[2,{}]]"


class TestEncode:
    """Encoding from the columns gives the bytes the rows give, byte for byte, whatever the frame."""

    @pytest.mark.parametrize("index", INDEXES)
    @pytest.mark.parametrize(
        "columns",
        [
            pytest.param(PLAIN_COLUMNS, id="plain numbers and booleans"),
            pytest.param({**PLAIN_COLUMNS, **OTHER_COLUMNS}, id="every dtype"),
            *[
                pytest.param({**PLAIN_COLUMNS, name: values}, id=f"plain and {name}")
                for name, values in OTHER_COLUMNS.items()
            ],
        ],
    )
    def test_the_bytes_are_those_of_the_rows(self, columns: dict[Any, Any], index: pd.Index | None) -> None:
        frame = _frame(columns, index)
        assert FrameRows(frame).encode() == encode_rows(_rows_by_itertuples(frame))

    def test_a_repeated_column_name_keeps_the_row_dicts_last_value(self) -> None:
        frame = pd.DataFrame([[1, 2, 3], [4, 5, 6]], columns=["a", "b", "a"])
        assert FrameRows(frame).encode() == b'[[0,{"a":3,"b":2}],[1,{"a":6,"b":5}]]'

    @pytest.mark.parametrize("rows", [1, 2, 7])
    def test_names_with_quotes_and_format_characters_encode_as_the_rows(self, rows: int) -> None:
        frame = pd.DataFrame({"100%": np.arange(rows), 'say "%s"': [f"v,{n}" for n in range(rows)]})
        assert FrameRows(frame).encode() == encode_rows(_rows_by_itertuples(frame))

    def test_a_slice_encodes_its_own_rows(self) -> None:
        frame = pd.DataFrame({"x": np.linspace(0, 1, 50), "y": np.arange(50)}, index=np.arange(50) + 100)
        part = FrameRows(frame)[10:20]
        assert part.encode() == encode_rows(_rows_by_itertuples(frame.iloc[10:20]))

    def test_a_frame_of_one_2d_array_encodes_as_its_rows(self) -> None:
        """Its columns are strided views of the array, which orjson cannot encode as they are."""
        values = np.random.default_rng(5).normal(size=(300, 4)) * 1e5
        frame = pd.DataFrame(values, columns=list("abcd"), copy=False)
        assert not frame["a"].to_numpy().flags.c_contiguous
        assert FrameRows(frame)[7:250].encode() == encode_rows(_rows_by_itertuples(frame.iloc[7:250]))

    def test_a_large_random_table_encodes_as_its_rows(self) -> None:
        generator = np.random.default_rng(3)
        frame = pd.DataFrame({f"feature_{n}": generator.normal(size=2_000) * 10.0**n for n in range(-4, 12)})
        frame["flag"] = generator.random(2_000) > 0.5
        frame["count"] = generator.integers(-(10**12), 10**12, size=2_000)
        frame.loc[frame.index % 7 == 0, "feature_0"] = np.nan
        assert FrameRows(frame).encode() == encode_rows(_rows_by_itertuples(frame))
