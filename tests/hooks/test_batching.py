"""Chunking by rows and bytes, ID checks and reassembly by ID (hooks/batching.py)."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pandas as pd
import pytest

from airflow_provider_modelbit.exceptions import ModelbitIncompleteBatch, ModelbitInputError
from airflow_provider_modelbit.hooks.batching import (
    ENVELOPE_BYTES,
    YOUNG_OBJECTS_PER_COLLECTION,
    collection_for_batch,
    encode_chunk,
    input_rows,
    is_batch,
    reassemble,
    rows_in_chunks,
    split_by_bytes,
)
from airflow_provider_modelbit.io.encoding import encode_row, join_rows
from tests.inference_calls import call_to


class TestIsBatch:
    @pytest.mark.parametrize(
        ("data", "batch"),
        [([[1, 2]], True), ([(1, 2)], True), ([1, 2], False), ([], False), (5, False), ({"a": [1]}, False)],
    )
    def test_batch_is_a_list_whose_first_element_is_a_list(self, data: object, batch: bool) -> None:
        assert is_batch(data) is batch


class TestInputRows:
    """Modelbit's rule for single versus batch input, and the checks on batch rows."""

    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            pytest.param(10, None, id="scalar is single"),
            pytest.param({"age": 31}, None, id="object is single"),
            pytest.param([1, "two", 3.0], None, id="flat list is single (positional arguments)"),
            pytest.param("[[1, 2]]", None, id="text is single"),
            pytest.param([], [], id="empty list is an empty batch"),
            pytest.param([[1, 10], ["b", 11]], [[1, 10], ["b", 11]], id="list of lists is a batch"),
            pytest.param(((1, 10), (2, 11)), [[1, 10], [2, 11]], id="tuples become rows"),
            pytest.param([[np.int64(4), 1]], [[4, 1]], id="numpy integer ID"),
            pytest.param(
                pd.DataFrame({"a": [1, 2]}, index=[7, 9]),
                [[7, {"a": 1}], [9, {"a": 2}]],
                id="DataFrame rows keyed by index",
            ),
        ],
    )
    def test_shapes(self, data: Any, expected: list[list[Any]] | None) -> None:
        assert input_rows(data, deployment="scorer") == expected

    @pytest.mark.parametrize(
        ("data", "fragments"),
        [
            pytest.param([[1, 10], 5], ("Batch row 1", "[[0, value]]"), id="row not a list"),
            pytest.param([[1, 10], []], ("Batch row 1",), id="empty row"),
            pytest.param(
                [[1, 10], [1, 11]], ("Row ID 1 appears more than once (again at row 1)",), id="duplicate ID"
            ),
            pytest.param([[None, 10]], ("Row 0", "ID None"), id="null ID"),
            pytest.param([[{"k": 1}, 10]], ("Row 0", "dict"), id="object ID"),
            pytest.param([[float("nan"), 10]], ("Row 0", "finite"), id="NaN ID"),
        ],
    )
    def test_invalid_rows_name_the_row(self, data: Any, fragments: tuple[str, ...]) -> None:
        with pytest.raises(ModelbitInputError) as raised:
            input_rows(data, deployment="scorer")
        assert "'scorer'" in str(raised.value)
        for fragment in fragments:
            assert fragment in str(raised.value)

    def test_a_dataframe_index_may_repeat_as_modelbits_client_sends_it(self) -> None:
        """The one rule (io/row_ids.check_repeated_ids): batch rows' IDs are unique, an index need not be."""
        frame = pd.DataFrame({"a": [1, 2]}, index=[3, 3])
        assert input_rows(frame, deployment="scorer") == [[3, {"a": 1}], [3, {"a": 2}]]


class TestRowsInChunks:
    def test_cuts_by_row_count_lazily(self) -> None:
        consumed: list[int] = []

        def rows():
            for number in range(7):
                consumed.append(number)
                yield [number, number]

        chunks = rows_in_chunks(rows(), 3)
        assert len(next(chunks)) == 3
        assert consumed == [0, 1, 2]
        assert [len(chunk) for chunk in chunks] == [3, 1]


class TestEncodeChunk:
    def test_data_is_the_json_array_of_the_rows(self) -> None:
        rows = [[1, {"x": 0.5}], [2, {"x": float("inf")}]]
        assert encode_chunk(rows).data == b'[[1,{"x":0.5}],[2,{"x":null}]]'

    @pytest.mark.parametrize(
        ("ids", "ids_are_keys"),
        [
            pytest.param([1, 2, 3], True, id="ints"),
            pytest.param(["a", 2], True, id="strings-and-ints"),
            pytest.param([np.int64(1), 2], False, id="numpy-int"),
            pytest.param([True, 2], False, id="bool"),
            pytest.param([1.5, 2], False, id="float"),
        ],
    )
    def test_plain_ids_are_their_own_keys(self, ids: list[object], ids_are_keys: bool) -> None:
        """Only exact ints and strings match the answer by themselves; others by their JSON."""
        assert encode_chunk([[row_id, 0] for row_id in ids]).ids_are_keys is ids_are_keys

    def test_repeated_id_in_a_chunk_is_refused(self) -> None:
        with pytest.raises(ModelbitInputError, match=r"Row ID 'b' appears more than once \(again at row 2\)"):
            encode_chunk([["a", 1], ["b", 2], ["b", 3]])

    @pytest.mark.parametrize("bad_row", [[], {"id": 1}, 5], ids=["empty", "dict", "number"])
    def test_row_that_is_not_a_list_is_named(self, bad_row: object) -> None:
        with pytest.raises(ModelbitInputError, match="Batch row 1 is"):
            encode_chunk([[1, 1], bad_row])  # type: ignore[list-item]


class TestSplitByBytes:
    def test_small_chunk_is_one_part(self) -> None:
        chunk = encode_chunk([[1, 2], [2, 3]])
        assert split_by_bytes(chunk, 1000) == [chunk]

    def test_parts_stay_within_the_limit_and_keep_order(self) -> None:
        rows = [[number, "x" * 50] for number in range(40)]
        parts = split_by_bytes(encode_chunk(rows), 600)
        assert len(parts) > 1
        assert all(part.size + ENVELOPE_BYTES <= 600 for part in parts)
        assert [row_id for part in parts for row_id in part.ids] == list(range(40))
        assert [part.data for part in parts] == [
            join_rows(encode_row(row) for row in rows[part.ids[0] : part.ids[-1] + 1]) for part in parts
        ]

    def test_single_row_over_the_limit_names_its_id(self) -> None:
        chunk = encode_chunk([[1, "a"], ["huge", "x" * 1000]])
        with pytest.raises(
            ModelbitInputError, match=r"ID 'huge' encodes to 1,\d+ bytes.*batch_bytes \(500\)"
        ):
            split_by_bytes(chunk, 500)


class TestReassemble:
    CHUNK_ROWS = [["a", 1], ["b", 2], ["c", 3]]

    def test_matches_by_id_whatever_the_order(self) -> None:
        chunk = encode_chunk(self.CHUNK_ROWS)
        rows = reassemble(chunk, [["c", 30], ["a", 10], ["b", 20]], call=call_to(version="latest"))
        assert rows == [["a", 10], ["b", 20], ["c", 30]]

    def test_answer_in_request_order_is_used_as_it_is(self) -> None:
        answer = [["a", 10], ["b", 20], ["c", 30]]
        assert reassemble(encode_chunk(self.CHUNK_ROWS), answer, call=call_to()) is answer

    @pytest.mark.parametrize(
        ("answered_id", "match"),
        [
            pytest.param(1.0, r"missing IDs \[1\] \(1\) and unexpected IDs \['1.0'\]", id="float"),
            pytest.param(True, r"missing IDs \[1\] \(1\) and unexpected IDs \['true'\]", id="bool"),
            pytest.param("1", r"missing IDs \[1\] \(1\) and unexpected IDs \['1'\]", id="string"),
        ],
    )
    def test_equal_but_differently_typed_id_is_not_the_same_id(self, answered_id: object, match: str) -> None:
        """1.0, true and "1" are different JSON from 1, even where Python calls them equal."""
        with pytest.raises(ModelbitIncompleteBatch, match=match):
            reassemble(encode_chunk([[1, "x"]]), [[answered_id, "r"]], call=call_to())

    def test_ids_are_returned_as_given(self) -> None:
        chunk = encode_chunk([[np.int64(5), 1]])
        rows = reassemble(chunk, [[5, "r"]], call=call_to())
        assert type(rows[0][0]) is np.int64

    @pytest.mark.parametrize(
        ("answer", "match"),
        [
            pytest.param([["a", 1], ["b", 2]], r"missing IDs \['c'\]", id="missing"),
            pytest.param(
                [["a", 1], ["b", 2], ["c", 3], ["z", 4]], r"unexpected IDs \['z'\]", id="unexpected"
            ),
            pytest.param([["a", 1], ["a", 1], ["b", 2], ["c", 3]], "more than once", id="repeated"),
            pytest.param({"a": 1}, "instead of a list", id="not-a-list"),
            pytest.param([["a", 1, 2]], "malformed", id="malformed-row"),
        ],
    )
    def test_bad_answers_are_refused(self, answer: object, match: str) -> None:
        chunk = encode_chunk(self.CHUNK_ROWS)
        with pytest.raises(ModelbitIncompleteBatch, match=match) as caught:
            reassemble(chunk, answer, call=call_to("scorer", 3, "dev"))
        assert "Deployment 'scorer' (version 3, branch dev) answered" in caught.value.message


class TestCollectionForBatch:
    def test_objects_are_frozen_inside_and_released_after(self) -> None:
        before = gc.get_freeze_count()
        with collection_for_batch():
            assert gc.get_freeze_count() > before
        assert gc.get_freeze_count() == before

    def test_young_objects_are_collected_less_often_inside_and_as_before_after(self) -> None:
        before = gc.get_threshold()
        with collection_for_batch():
            assert gc.get_threshold() == (YOUNG_OBJECTS_PER_COLLECTION, *before[1:])
        assert gc.get_threshold() == before

    def test_a_higher_threshold_set_by_the_process_is_kept(self) -> None:
        before = gc.get_threshold()
        gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION * 2, *before[1:])
        try:
            with collection_for_batch():
                assert gc.get_threshold()[0] == YOUNG_OBJECTS_PER_COLLECTION * 2
        finally:
            gc.set_threshold(*before)

    def test_nested_blocks_release_only_when_the_last_ends(self) -> None:
        with collection_for_batch():
            with collection_for_batch():
                pass
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold()[0] == YOUNG_OBJECTS_PER_COLLECTION
        assert gc.get_freeze_count() == 0

    def test_cycles_made_inside_are_still_collected(self) -> None:
        class Node:
            pass

        with collection_for_batch():
            node = Node()
            node.self = node  # type: ignore[attr-defined]
            del node
            assert gc.collect() >= 1
