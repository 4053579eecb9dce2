"""Input tables are checked before sending and cut into the same chunks on every attempt."""

from __future__ import annotations

import datetime
import decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_modelbit.exceptions import ModelbitInputError
from airflow_provider_modelbit.io.batch_inputs import (
    InputChunk,
    batch_rows,
    chunk_ids,
    column_list,
    count_and_check_ids,
    exact_chunks,
    refuse_bad_id_type,
    refuse_unsendable_columns,
)
from airflow_provider_modelbit.io.encoding import encode_rows
from airflow_provider_modelbit.io.tables import open_table


class TestRefuseUnsendableColumns:
    @pytest.mark.parametrize(
        "data_type",
        [
            pa.binary(),
            pa.large_binary(),
            pa.binary(4),
            pa.list_(pa.binary()),
            pa.map_(pa.string(), pa.int64()),
        ],
    )
    def test_refuses_types_json_cannot_carry(self, data_type: pa.DataType) -> None:
        schema = pa.schema([("photo", data_type)])
        with pytest.raises(ModelbitInputError, match=r"Column 'photo' of input t.parquet has type"):
            refuse_unsendable_columns(schema, ["photo"], "input t.parquet")

    @pytest.mark.parametrize(
        "data_type",
        [pa.int32(), pa.float64(), pa.string(), pa.timestamp("us", "UTC"), pa.date32(), pa.decimal128(10, 2),
         pa.list_(pa.int64()), pa.struct([("a", pa.string())]), pa.dictionary(pa.int8(), pa.string())],
    )  # fmt: skip
    def test_accepts_types_that_encode(self, data_type: pa.DataType) -> None:
        refuse_unsendable_columns(pa.schema([("x", data_type)]), ["x"], "input")


class TestIds:
    @pytest.mark.parametrize("data_type", [pa.float64(), pa.timestamp("s"), pa.binary()])
    def test_id_column_must_hold_integers_or_strings(self, data_type: pa.DataType) -> None:
        with pytest.raises(ModelbitInputError, match="ID column 'key' of input has type"):
            refuse_bad_id_type(pa.schema([("key", data_type)]), "key", "input")

    def test_counts_unique_ids_across_batches(self) -> None:
        assert count_and_check_ids([pa.array([1, 2]), pa.array([3])], "key", "input") == 3

    def test_names_a_repeated_id_and_its_row(self) -> None:
        with pytest.raises(ModelbitInputError, match=r"ID 'b' appears more than once .* \(again at row 3\)"):
            count_and_check_ids([pa.array(["a", "b"]), pa.array(["c", "b"])], "key", "input")

    @pytest.mark.parametrize(
        ("batches", "repeated", "row"),
        [
            pytest.param([[5, 1], [5, 1]], 5, 2, id="ints-across-batches"),
            pytest.param([[1, 2, 3, 4, 5, 3, 1]], 3, 5, id="first-repeat-by-row-not-by-value"),
            pytest.param([["x"], ["y", "z", "y"]], "y", 3, id="strings"),
        ],
    )
    def test_names_the_first_row_that_repeats_an_id(
        self, batches: list[list[object]], repeated: object, row: int
    ) -> None:
        with pytest.raises(ModelbitInputError, match=rf"ID {repeated!r} appears .* \(again at row {row}\)"):
            count_and_check_ids([pa.array(batch) for batch in batches], "key", "input")

    def test_dictionary_batches_are_compared_by_value(self) -> None:
        """Batches encoded with different dictionaries still find a repeated value."""
        batches = [pa.array(["a", "b"]).dictionary_encode(), pa.array(["c", "a"]).dictionary_encode()]
        with pytest.raises(ModelbitInputError, match=r"ID 'a' appears .* \(again at row 3\)"):
            count_and_check_ids(batches, "key", "input")

    def test_no_batches_is_zero_rows(self) -> None:
        assert count_and_check_ids([], "key", "input") == 0

    def test_names_the_row_of_a_missing_id(self) -> None:
        with pytest.raises(ModelbitInputError, match="is empty at row 4"):
            count_and_check_ids([pa.array([1, 2, 3]), pa.array([4, None])], "key", "input")


class TestExactChunks:
    @pytest.mark.parametrize("batch_sizes", [[10], [3, 3, 4], [1] * 10, [7, 0, 3]])
    def test_chunks_do_not_depend_on_how_the_input_is_batched(self, batch_sizes: list[int]) -> None:
        offsets = [sum(batch_sizes[:i]) for i in range(len(batch_sizes))]
        batches = [
            pa.record_batch({"x": pa.array(range(o, o + n), type=pa.int64())})
            for o, n in zip(offsets, batch_sizes, strict=True)
        ]
        chunks = list(exact_chunks(batches, 4))
        assert [(c.index, c.first_row, c.table.column("x").to_pylist()) for c in chunks] == [
            (0, 0, [0, 1, 2, 3]),
            (1, 4, [4, 5, 6, 7]),
            (2, 8, [8, 9]),
        ]


class TestBatchRows:
    CHUNK = InputChunk(
        index=1,
        first_row=10,
        table=pa.table({"age": [31, 45], "plan": ["pro", None], "key": ["a", "b"]}),
    )

    def test_object_style_sends_one_object_per_row(self) -> None:
        rows = batch_rows(self.CHUNK, columns=["age", "plan"], id_column="key", argument_style="object")
        assert list(rows) == [["a", {"age": 31, "plan": "pro"}], ["b", {"age": 45, "plan": None}]]

    def test_positional_style_sends_arguments_in_column_order(self) -> None:
        rows = batch_rows(self.CHUNK, columns=["plan", "age"], id_column="key", argument_style="positional")
        assert list(rows) == [["a", "pro", 31], ["b", None, 45]]

    def test_without_id_column_the_row_position_is_the_id(self) -> None:
        rows = batch_rows(self.CHUNK, columns=["age"], id_column=None, argument_style="positional")
        assert [row[0] for row in rows] == [10, 11]

    def test_row_position_ids_are_int64(self) -> None:
        ids = chunk_ids(self.CHUNK, None)
        assert (ids.type, ids.to_pylist()) == (pa.int64(), [10, 11])

    def test_values_arrive_as_python_values_for_the_encoder(self) -> None:
        chunk = InputChunk(
            0, 0, pa.table({"when": [datetime.date(2026, 1, 2)], "price": [decimal.Decimal("1.50")]})
        )
        rows = batch_rows(chunk, columns=["when", "price"], id_column=None, argument_style="positional")
        assert list(rows) == [[0, datetime.date(2026, 1, 2), decimal.Decimal("1.50")]]


class TestBatchRowsEncoding:
    """A chunk's rows are encoded from its columns: the bytes of its rows, for every column type."""

    TABLE = pa.table(
        {
            "int64": pa.array([1, None, -(2**63), 2**63 - 1], type=pa.int64()),
            "uint64": pa.array([0, 2**64 - 1, None, 7], type=pa.uint64()),
            "int8": pa.array([1, 2, None, -3], type=pa.int8()),
            "float64": pa.array([0.1, None, float("nan"), float("inf")], type=pa.float64()),
            "float32": pa.array([0.1, 1e30, None, -0.0], type=pa.float32()),
            "bool": pa.array([True, None, False, True]),
            "string": pa.array(["a,b", None, 'say "hi"', "é"]),
            "dictionary": pa.array(["x", "y", None, "x"]).dictionary_encode(),
            "date": pa.array([datetime.date(2026, 1, 2), None, datetime.date(1970, 1, 1), None]),
            "decimal": pa.array([decimal.Decimal("1.50"), None, decimal.Decimal("-2"), None]),
            "list": pa.array([[1.5, None], None, [], [2.0]]),
            "struct": pa.array([{"a": 1, "b": "x,y"}, None, {"a": None, "b": "z"}, {"a": 2, "b": None}]),
            "key": pa.array(["k1", "k,2", 'k"3', "k4"]),
            "number": pa.array([40, 10, 30, 20]),
        }
    )
    COLUMNS = [name for name in TABLE.column_names if name not in ("key", "number")]

    @pytest.mark.parametrize("argument_style", ["object", "positional"])
    @pytest.mark.parametrize("id_column", [None, "key", "number"])
    @pytest.mark.parametrize(
        "columns", [COLUMNS, ["int64", "float64", "bool"], []], ids=["every type", "plain", "none"]
    )
    def test_the_bytes_are_those_of_the_rows(
        self, argument_style: str, id_column: str | None, columns: list[str]
    ) -> None:
        chunk = InputChunk(0, 5, self.TABLE)
        rows = batch_rows(chunk, columns=columns, id_column=id_column, argument_style=argument_style)
        assert rows.encode() == encode_rows(list(rows))
        assert rows[1:3].encode() == encode_rows(list(rows)[1:3])

    def test_a_value_that_cannot_be_sent_is_named_with_its_row(self) -> None:
        table = pa.table({"x": [1.0, 2.0], "big": pa.array([1, 2**64 - 1], type=pa.uint64())})
        rows = batch_rows(
            InputChunk(0, 0, table), columns=["x", "big"], id_column=None, argument_style="object"
        )
        rows.ids[1] = 2**70  # an ID no JSON reader keeps exactly: refused, naming the row
        with pytest.raises(ModelbitInputError, match=r"Row with ID 1180591620717411303424 .*the ID"):
            rows.encode()


class TestDurationsAndPeriods:
    """A table sends durations and periods as the inference operator sends a DataFrame's."""

    FRAME_COLUMNS = ("wait", "month")

    def _frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            {
                "wait": pd.to_timedelta(["1s", "2 days 3h"]),
                "month": pd.period_range("2024-01", periods=2, freq="M"),
            }
        )

    def _sent(self, table: pa.Table) -> bytes:
        rows = batch_rows(
            InputChunk(0, 0, table), columns=self.FRAME_COLUMNS, id_column=None, argument_style="object"
        )
        assert rows.encode() == encode_rows(list(rows))
        return rows.encode()

    def test_parquet_durations_and_periods_encode_as_a_dataframe_does(self, tmp_path: Path) -> None:
        frame = self._frame()
        pq.write_table(pa.Table.from_pandas(frame), tmp_path / "t.parquet")
        table = pa.Table.from_batches(list(open_table(str(tmp_path / "t.parquet")).iter_batches()))
        from_dataframe = encode_rows([[i, row] for i, row in enumerate(frame.to_dict(orient="records"))])
        assert self._sent(table) == from_dataframe
        assert b'"0 days 00:00:01"' in from_dataframe and b'"2024-01"' in from_dataframe

    def test_a_registered_period_extension_type_is_sent_as_text(self) -> None:
        table = pa.Table.from_pandas(self._frame())
        assert isinstance(table.schema.field("month").type, pa.ExtensionType)
        assert b'"month":"2024-02"' in self._sent(table)

    def test_a_calendar_interval_gets_advice_that_fits_it(self) -> None:
        schema = pa.schema([("span", pa.month_day_nano_interval())])
        with pytest.raises(ModelbitInputError, match=r"calendar intervals.*to text .*2024-01") as raised:
            refuse_unsendable_columns(schema, ["span"], "input t.parquet")
        assert "binary" not in str(raised.value)


class TestColumnList:
    def test_a_single_name_is_one_column(self) -> None:
        assert column_list("feature_a") == ["feature_a"]

    def test_a_list_is_kept(self) -> None:
        assert column_list(("a", "b")) == ["a", "b"]
