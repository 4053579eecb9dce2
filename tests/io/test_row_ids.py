"""Row IDs: the equality rule, uniqueness, and answers put back in input order (io/row_ids.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from airflow_provider_modelbit.exceptions import ModelbitIncompleteBatch, ModelbitInputError
from airflow_provider_modelbit.io.arrow_results import is_json_text, results_table
from airflow_provider_modelbit.io.row_ids import (
    input_positions,
    refuse_duplicate_ids,
    refuse_unusable_ids,
    row_id_key,
    table_in_input_order,
)
from tests.inference_calls import call_to


class TestRowIdKey:
    @pytest.mark.parametrize(
        ("given", "returned"),
        [
            (np.int64(3), 3),
            ("a", "a"),
            (np.str_("a"), "a"),
            (pd.Timestamp("2024-01-01"), "2024-01-01 00:00:00"),
            (2.5, 2.5),
            (True, True),
            (np.bool_(False), False),
        ],
    )
    def test_input_id_matches_the_id_the_server_returns(self, given: object, returned: object) -> None:
        """IDs are matched through the JSON they were sent as."""
        assert row_id_key(given) == row_id_key(orjson.loads(orjson.dumps(returned)))

    @pytest.mark.parametrize(("first", "second"), [("1", 1), (True, 1), (1.0, 1), (False, 0)])
    def test_ids_sent_as_different_json_differ(self, first: object, second: object) -> None:
        assert row_id_key(first) != row_id_key(second)


class TestRefuseDuplicateIds:
    def test_duplicate_is_named(self) -> None:
        with pytest.raises(ModelbitInputError, match=r"Row ID 'b' appears more than once \(again at row 2\)"):
            refuse_duplicate_ids([["a", 1], ["b", 2], ["b", 3]])

    def test_numpy_and_plain_ids_collide(self) -> None:
        """Two IDs that would be sent as the same JSON are duplicates."""
        with pytest.raises(ModelbitInputError):
            refuse_duplicate_ids([[np.int64(1), 1], [1, 2]])

    def test_row_without_id_is_refused(self) -> None:
        with pytest.raises(ModelbitInputError, match="row 1"):
            refuse_duplicate_ids([[1, 1], []])

    def test_one_and_one_point_zero_are_two_ids(self) -> None:
        """1 and 1.0 are sent as different JSON, so a batch may hold both."""
        refuse_duplicate_ids([[1, "a"], [1.0, "b"]])

    def test_deployment_is_named_when_known(self) -> None:
        with pytest.raises(ModelbitInputError, match=r"again at row 1\) for 'scorer'"):
            refuse_duplicate_ids([[1, 1], [1, 2]], deployment="scorer")


class TestRefuseUnusableIds:
    @pytest.mark.parametrize(
        "row_id", [None, True, {"k": 1}, float("nan")], ids=["null", "bool", "dict", "nan"]
    )
    def test_only_strings_and_finite_numbers(self, row_id: Any) -> None:
        with pytest.raises(ModelbitInputError, match=r"Row 0 for 'scorer' has ID"):
            refuse_unusable_ids([[row_id, 1]], deployment="scorer")


class TestInputPositions:
    def test_answer_positions_in_input_order(self) -> None:
        positions = input_positions(["a", "b", "c"], ["c", "a", "b"], ids="abc", call=call_to())
        assert positions == [1, 2, 0]

    def test_repeated_ids_take_answers_in_answer_order(self) -> None:
        """A DataFrame's non-unique index: rows sharing an ID are matched in the order answered."""
        assert input_positions([7, 7], [7, 7], ids=[7, 7], call=call_to()) == [0, 1]

    @pytest.mark.parametrize(
        ("answered", "match"),
        [
            pytest.param([1], r"missing IDs \[2\] \(1\) and unexpected IDs none", id="missing"),
            pytest.param([1, 2, 3], r"missing IDs none and unexpected IDs \[3\] \(1\)", id="unexpected"),
            pytest.param([1, 1, 2], "ID 1 more than once", id="repeated"),
        ],
    )
    def test_mismatch_is_refused(self, answered: list[int], match: str) -> None:
        with pytest.raises(ModelbitIncompleteBatch, match=match):
            input_positions([1, 2], answered, ids=[1, 2], call=call_to())


class TestTableInInputOrder:
    def test_reordered_to_the_input(self) -> None:
        table = results_table(["b", "a"], [2, 1])
        ordered = table_in_input_order(table, ["a", "b"], call=call_to())
        assert ordered.column("result").to_pylist() == [1, 2]

    def test_integer_and_float_ids_survive_the_table(self) -> None:
        """An ``id`` column of 1 and 2.5 is kept as JSON text, so 1 is not read back as 1.0."""
        table = results_table([2.5, 1], ["x", "y"])
        assert is_json_text(table.schema.field("id"))
        ordered = table_in_input_order(table, [1, 2.5], call=call_to())
        assert ordered.column("result").to_pylist() == ["y", "x"]

    def test_missing_id_is_named(self) -> None:
        with pytest.raises(ModelbitIncompleteBatch, match=r"missing IDs \['c'\]"):
            table_in_input_order(results_table(["a", "b"], [1, 2]), ["a", "b", "c"], call=call_to())
