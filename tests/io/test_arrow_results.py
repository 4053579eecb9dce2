"""JSON results become the narrowest lossless Arrow type, or JSON text when values disagree."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest

from airflow_provider_modelbit.io.arrow_results import (
    is_json_text,
    json_text,
    result_field,
    results_table,
    results_to_arrow,
)

TYPED_CASES = [
    ([1, 2, None], pa.int64()),
    ([1, 2.5], pa.float64()),
    ([True, None], pa.bool_()),
    (["a", None], pa.string()),
    ([None, None], pa.null()),
    ([[1, 2], [], None], pa.list_(pa.int64())),
    ([[1], [2.5]], pa.list_(pa.float64())),
    ([{"a": 1}, {"b": "x"}], pa.struct([("a", pa.int64()), ("b", pa.string())])),
    ([{"a": {"b": 1}}, {"a": None}], pa.struct([("a", pa.struct([("b", pa.int64())]))])),
    # Fields follow the order keys first appear in, at every depth, whatever pyarrow's own inference does.
    (
        [{"z": 1, "a": "x"}, {"m": True}],
        pa.struct([("z", pa.int64()), ("a", pa.string()), ("m", pa.bool_())]),
    ),
    (
        [[{"z": {"y": 1, "b": 2}}], None],
        pa.list_(pa.struct([("z", pa.struct([("y", pa.int64()), ("b", pa.int64())]))])),
    ),
]

MIXED_CASES = [
    [1, "one"],
    [{"a": 1}, [1]],
    [True, 1],
    [{"a": 1}, {"a": "x"}],
    [2**64, 1],
    [{}, {}],
]


class TestResultsToArrow:
    @pytest.mark.parametrize(("values", "expected_type"), TYPED_CASES)
    def test_consistent_values_get_their_json_type(
        self, values: list[Any], expected_type: pa.DataType
    ) -> None:
        array = results_to_arrow(values)
        assert array.type == expected_type
        assert len(array) == len(values)

    def test_missing_object_keys_read_back_as_null(self) -> None:
        assert results_to_arrow([{"a": 1}, {"b": "x"}]).to_pylist() == [
            {"a": 1, "b": None},
            {"a": None, "b": "x"},
        ]

    @pytest.mark.parametrize("values", MIXED_CASES)
    def test_mixed_values_are_kept_losslessly_as_json_text(self, values: list[Any]) -> None:
        """Each value parses back to exactly what the deployment returned."""
        field, array = result_field("result", values)
        assert is_json_text(field)
        assert array.type == pa.string()
        assert [json.loads(text) for text in array.to_pylist()] == values

    def test_null_stays_null_in_json_text(self) -> None:
        _, array = result_field("result", [1, "x", None])
        assert array.to_pylist() == ["1", '"x"', None]

    def test_typed_columns_carry_no_json_marker(self) -> None:
        field, _ = result_field("result", [1, 2])
        assert not is_json_text(field)


class TestResultsTable:
    def test_has_id_and_result_columns_in_order(self) -> None:
        table = results_table(["a", "b"], [0.5, 0.7])
        assert table.column_names == ["id", "result"]
        assert table.to_pylist() == [{"id": "a", "result": 0.5}, {"id": "b", "result": 0.7}]

    def test_refuses_mismatched_lengths(self) -> None:
        with pytest.raises(ValueError, match="2 IDs but 1 results"):
            results_table([1, 2], [0.5])


class TestJsonText:
    def test_encodes_integers_beyond_64_bits(self) -> None:
        assert json_text({"n": 2**70}) == '{"n":1180591620717411303424}'
