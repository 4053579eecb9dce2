"""Result chunks with differing types are reconciled into one Parquet file, in order."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_modelbit.exceptions import ModelbitInputError
from airflow_provider_modelbit.io.arrow_results import is_json_text, results_table
from airflow_provider_modelbit.io.atomic import resolve_output
from airflow_provider_modelbit.io.result_writer import (
    ResultWriter,
    declared_result_type,
    merge_types,
    write_results_parquet,
)


def write(chunks: list[list[Any]], **options: Any) -> pa.Table:
    """Write each list of results as one chunk (IDs numbered across chunks) and read the file back."""
    sink = io.BytesIO()
    with ResultWriter(**options) as writer:
        start = 0
        for results in chunks:
            writer.write(results_table(list(range(start, start + len(results))), results))
            start += len(results)
        writer.write_parquet(sink)
    return pq.read_table(io.BytesIO(sink.getvalue()))


class TestMergeTypes:
    @pytest.mark.parametrize(
        ("a", "b", "merged"),
        [
            (pa.null(), pa.int64(), pa.int64()),
            (pa.int64(), pa.float64(), pa.float64()),
            (pa.list_(pa.null()), pa.list_(pa.string()), pa.list_(pa.string())),
            (
                pa.struct([("a", pa.int64())]),
                pa.struct([("b", pa.bool_()), ("a", pa.float64())]),
                pa.struct([("a", pa.float64()), ("b", pa.bool_())]),
            ),
            (pa.int64(), pa.string(), None),
            (pa.struct([("a", pa.int64())]), pa.struct([("a", pa.string())]), None),
        ],
    )
    def test_finds_the_narrowest_common_type(self, a: pa.DataType, b: pa.DataType, merged: Any) -> None:
        assert merge_types(a, b) == merged


class TestResultWriter:
    def test_rows_keep_chunk_order(self) -> None:
        table = write([[1, 2], [3], [4, 5]])
        assert table.column("id").to_pylist() == [0, 1, 2, 3, 4]
        assert table.column("result").to_pylist() == [1, 2, 3, 4, 5]

    @pytest.mark.parametrize(
        ("chunks", "expected_type"),
        [
            ([[None, None], [1]], pa.int64()),
            ([[1], [2.5]], pa.float64()),
            ([[{"a": 1}], [{"b": "x"}]], pa.struct([("a", pa.int64()), ("b", pa.string())])),
        ],
        ids=["null then int", "int then float", "object fields union"],
    )
    def test_types_promote_across_chunks(self, chunks: list[list[Any]], expected_type: pa.DataType) -> None:
        assert write(chunks).schema.field("result").type == expected_type

    def test_conflicting_chunks_fall_back_to_json_text(self) -> None:
        table = write([[1, 2], ["three"], [None]])
        assert is_json_text(table.schema.field("result"))
        assert table.column("result").to_pylist() == ["1", "2", '"three"', None]

    def test_expand_result_writes_one_column_per_field(self) -> None:
        table = write([[{"score": 0.5}], [{"score": 0.7, "label": "churn"}]], expand_result=True)
        assert table.column_names == ["id", "result_score", "result_label"]
        assert table.column("result_label").to_pylist() == [None, "churn"]

    def test_expand_result_leaves_non_objects_alone(self) -> None:
        assert write([[1, 2]], expand_result=True).column_names == ["id", "result"]

    def test_small_chunks_are_combined_into_row_groups(self) -> None:
        sink = io.BytesIO()
        with ResultWriter(row_group_rows=4) as writer:
            for start in range(0, 10, 2):
                writer.write(results_table([start, start + 1], [0.1, 0.2]))
            writer.write_parquet(sink)
        metadata = pq.ParquetFile(io.BytesIO(sink.getvalue())).metadata
        assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [4, 4, 2]

    def test_distinct_scores_are_stored_plain_and_few_values_keep_their_dictionary(self) -> None:
        """A dictionary as large as the column is not kept: distinct doubles take their plain size."""
        rows = 65_536
        generator = random.Random(7)
        results = [{"score": generator.random(), "label": float(index % 3)} for index in range(rows)]
        sink = io.BytesIO()
        with ResultWriter() as writer:
            writer.write(results_table(list(range(rows)), results))
            writer.write_parquet(sink)
        row_group = pq.ParquetFile(io.BytesIO(sink.getvalue())).metadata.row_group(0)
        sizes = {
            row_group.column(i).path_in_schema: row_group.column(i).total_compressed_size for i in range(3)
        }
        assert sizes["result.score"] <= 1.05 * 8 * rows
        assert sizes["result.label"] <= 0.05 * 8 * rows

    def test_no_chunks_writes_the_empty_schema(self) -> None:
        sink = io.BytesIO()
        schema = pa.schema([("id", pa.string()), ("result", pa.null())])
        with ResultWriter() as writer:
            assert writer.write_parquet(sink, empty_schema=schema) == 0
        assert pq.read_table(io.BytesIO(sink.getvalue())).schema.names == ["id", "result"]

    def test_expanded_column_clashing_with_another_is_refused(self) -> None:
        sink = io.BytesIO()
        with ResultWriter(expand_result=True) as writer:
            table = results_table([1], [{"x": 1}]).append_column("result_x", pa.array([2]))
            writer.write(table)
            with pytest.raises(ModelbitInputError, match="result_x twice"):
                writer.write_parquet(sink)


class TestDeclaredResultType:
    """With a declared result type every output has one schema, an empty one included."""

    DECLARED = declared_result_type({"score": pa.float64(), "label": pa.string()})

    def test_an_empty_output_has_the_declared_result_columns(self) -> None:
        empty = results_table([], []).schema
        with ResultWriter(expand_result=True, result_type=self.DECLARED) as writer:
            sink = io.BytesIO()
            assert writer.write_parquet(sink, empty_schema=empty) == 0
        schema = pq.read_table(io.BytesIO(sink.getvalue())).schema
        assert schema.names == ["id", "result_score", "result_label"]
        assert schema.types == [pa.null(), pa.float64(), pa.string()]

    def test_results_take_the_declared_types_and_order_and_missing_fields_are_null(self) -> None:
        table = write([[{"label": "a", "score": 1}], [None]], expand_result=True, result_type=self.DECLARED)
        assert table.schema.names == ["id", "result_score", "result_label"]
        assert table.column("result_score").to_pylist() == [1.0, None]

    def test_a_result_field_not_declared_is_named(self) -> None:
        with pytest.raises(ModelbitInputError, match=r"'extra', which result_schema does not list"):
            write([[{"score": 1, "label": "a", "extra": 2}]], result_type=self.DECLARED)


class TestWriteResultsParquet:
    def test_tables_are_written_in_order(self, tmp_path: Path) -> None:
        destination = resolve_output(str(tmp_path / "out.parquet"))
        tables = [results_table([0, 1], [1, 2]), results_table([2], [3.5])]
        assert write_results_parquet(destination, tables, empty_schema=results_table([], []).schema) == 3
        assert pq.read_table(str(tmp_path / "out.parquet")).column("result").to_pylist() == [1.0, 2.0, 3.5]

    def test_a_refusal_before_replacing_leaves_the_old_file(self, tmp_path: Path) -> None:
        """``before_replace`` sees the row count; raising keeps what was at the destination."""
        path = tmp_path / "out.parquet"
        path.write_bytes(b"previous")
        seen: list[int] = []

        def refuse(rows: int) -> None:
            seen.append(rows)
            raise ModelbitInputError("refused")

        with pytest.raises(ModelbitInputError, match="refused"):
            write_results_parquet(
                resolve_output(str(path)),
                [results_table([0], [1])],
                empty_schema=results_table([], []).schema,
                before_replace=refuse,
            )
        assert seen == [1]
        assert path.read_bytes() == b"previous"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]
