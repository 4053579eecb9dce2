"""Input tables in every supported format stream as record batches, in order."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from airflow_provider_modelbit.exceptions import ModelbitInputError
from airflow_provider_modelbit.io.tables import open_table

ROWS = 25
TABLE = pa.table(
    {
        "customer_id": [f"c{i:03d}" for i in range(ROWS)],
        "tenure_months": list(range(ROWS)),
        "plan": ["pro", "free"] * 12 + ["basic"],
    }
)


def _write(tmp_path: Path, kind: str) -> Path:
    if kind == "parquet":
        pq.write_table(TABLE, tmp_path / "t.parquet", row_group_size=7)
        return tmp_path / "t.parquet"
    if kind == "parquet directory":
        folder = tmp_path / "parts"
        folder.mkdir()
        for number, start in enumerate(range(0, ROWS, 10)):
            pq.write_table(TABLE.slice(start, 10), folder / f"part-{number:03d}.parquet")
        (folder / "_SUCCESS").write_text("")
        return folder
    if kind == "csv":
        pa_csv.write_csv(TABLE, tmp_path / "t.csv")
        return tmp_path / "t.csv"
    with (tmp_path / "t.jsonl").open("w") as stream:
        stream.writelines(json.dumps(row) + "\n" for row in TABLE.to_pylist())
    return tmp_path / "t.jsonl"


FORMATS = ["parquet", "parquet directory", "csv", "jsonl"]


@pytest.mark.parametrize("kind", FORMATS)
class TestOpenTable:
    def test_reads_every_row_in_order(self, kind: str, tmp_path: Path) -> None:
        source = open_table(str(_write(tmp_path, kind)))
        rows = pa.Table.from_batches(list(source.iter_batches(max_rows=4))).to_pylist()
        assert rows == TABLE.to_pylist()

    def test_batches_respect_max_rows(self, kind: str, tmp_path: Path) -> None:
        source = open_table(str(_write(tmp_path, kind)))
        assert max(batch.num_rows for batch in source.iter_batches(max_rows=4)) <= 4

    def test_reads_only_the_columns_asked_for(self, kind: str, tmp_path: Path) -> None:
        source = open_table(str(_write(tmp_path, kind)), columns=["plan"], id_column="customer_id")
        assert source.schema.names == ["customer_id", "plan"]
        batch = next(source.iter_batches())
        assert batch.schema.names == ["customer_id", "plan"]

    def test_missing_columns_are_named(self, kind: str, tmp_path: Path) -> None:
        with pytest.raises(
            ModelbitInputError, match=r"no column 'age', 'income'; its columns are customer_id"
        ):
            open_table(str(_write(tmp_path, kind)), columns=["age", "plan", "income"])

    def test_row_count_is_known_for_parquet_only(self, kind: str, tmp_path: Path) -> None:
        source = open_table(str(_write(tmp_path, kind)))
        assert source.num_rows == (ROWS if kind.startswith("parquet") else None)


class TestStreamingMemory:
    ROW_GROUP_ROWS = 65_536
    ROW_GROUPS = 16

    def test_parquet_memory_stays_at_one_row_group(self, tmp_path: Path) -> None:
        """Reading holds about one row group however many the file has, not the file read so far."""
        table = pa.table({"x": np.random.default_rng(1).normal(size=self.ROW_GROUPS * self.ROW_GROUP_ROWS)})
        path = tmp_path / "wide.parquet"
        pq.write_table(table, path, row_group_size=self.ROW_GROUP_ROWS, compression="none")
        source = open_table(path)
        tracemalloc.start()
        try:
            for _batch in source.iter_batches(max_rows=self.ROW_GROUP_ROWS):
                pass
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 3 * table.nbytes / self.ROW_GROUPS


class TestOpenTableErrors:
    def test_missing_input_is_named(self, tmp_path: Path) -> None:
        with pytest.raises(ModelbitInputError, match=r"does-not-exist\.parquet does not exist"):
            open_table(str(tmp_path / "does-not-exist.parquet"))

    def test_unknown_suffix_names_the_suffixes_read(self, tmp_path: Path) -> None:
        """The operators take no format= argument, so the message never suggests one."""
        (tmp_path / "data.bin").write_bytes(b"x")
        with pytest.raises(ModelbitInputError, match=r"suffix .\.bin.; name the file with one of"):
            open_table(str(tmp_path / "data.bin"))

    def test_format_argument_overrides_the_suffix(self, tmp_path: Path) -> None:
        pa_csv.write_csv(TABLE, tmp_path / "data.txt")
        assert open_table(str(tmp_path / "data.txt"), format="csv").schema.names == TABLE.column_names

    def test_directory_without_parquet_files_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "empty").mkdir()
        with pytest.raises(ModelbitInputError, match="holds no Parquet files"):
            open_table(str(tmp_path / "empty"))


class TestFingerprint:
    def test_changes_when_a_file_is_rewritten(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "parquet")
        before = open_table(str(path)).fingerprint()
        pq.write_table(TABLE.slice(0, 3), path)
        assert open_table(str(path)).fingerprint() != before


class TestColumnTypes:
    """A column keeps what it holds: CSV IDs stay text, and column_types sets any column's type."""

    CSV = "id,zip,score\n00123,02134,1.5\n007,10001,2\n7,90210,3\n"

    def _csv(self, tmp_path: Path, text: str = CSV) -> str:
        (tmp_path / "t.csv").write_text(text)
        return str(tmp_path / "t.csv")

    def test_csv_id_column_is_text_with_its_leading_zeros(self, tmp_path: Path) -> None:
        source = open_table(self._csv(tmp_path), id_column="id")
        ids = [value for batch in source.iter_batches() for value in batch.column(0).to_pylist()]
        assert source.schema.field("id").type == pa.string()
        assert ids == ["00123", "007", "7"]

    def test_column_types_keeps_a_zip_code_as_text_and_types_others(self, tmp_path: Path) -> None:
        source = open_table(
            self._csv(tmp_path), id_column="id", column_types={"zip": "str", "score": "float32", "id": "int"}
        )
        table = pa.Table.from_batches(list(source.iter_batches()))
        assert table.schema.types == [pa.int64(), pa.string(), pa.float32()]
        assert table.column("zip").to_pylist() == ["02134", "10001", "90210"]

    def test_column_types_cast_parquet_columns_and_narrowed_reads_keep_them(self, tmp_path: Path) -> None:
        source = open_table(str(_write(tmp_path, "parquet")), column_types={"tenure_months": "str"})
        narrow = source.project(["tenure_months"])
        assert narrow.schema.field(0).type == pa.string()
        assert next(narrow.iter_batches()).column(0).to_pylist()[:2] == ["0", "1"]

    def test_unknown_type_name_names_the_column(self, tmp_path: Path) -> None:
        with pytest.raises(ModelbitInputError, match=r"column 'zip' the type 'zipcode'"):
            open_table(self._csv(tmp_path), column_types={"zip": "zipcode"})

    def test_type_for_a_missing_column_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ModelbitInputError, match=r"column_types names 'zipp'.*its columns are id, zip"):
            open_table(self._csv(tmp_path), column_types={"zipp": "str"})

    def test_value_that_does_not_fit_names_file_column_and_row(self, tmp_path: Path) -> None:
        path = self._csv(tmp_path, "id,score\n1,2\n2,two\n")
        with pytest.raises(ModelbitInputError, match=r"t\.csv: column 'score' at row 1 holds 'two'"):
            list(open_table(path, column_types={"score": "int"}).iter_batches())

    def test_header_only_csv_reads_as_no_rows_with_a_text_id(self, tmp_path: Path) -> None:
        source = open_table(self._csv(tmp_path, "id,zip\n"), id_column="id")
        assert source.schema.field("id").type == pa.string()
        assert sum(batch.num_rows for batch in source.iter_batches()) == 0


class TestHivePartitions:
    """Folders named key=value are read in path order, their value a text column named by the key."""

    def test_partition_folders_are_read_with_their_column(self, tmp_path: Path) -> None:
        for day, start in (("2024-01-02", 10), ("2024-01-01", 0)):
            folder = tmp_path / "t" / f"date={day}"
            folder.mkdir(parents=True)
            pq.write_table(TABLE.slice(start, 10), folder / "part-0.parquet")
        (tmp_path / "t" / "_SUCCESS").write_text("")
        source = open_table(str(tmp_path / "t"), columns=["tenure_months", "date"])
        table = pa.Table.from_batches(list(source.iter_batches()))
        assert source.num_rows == 20
        assert table.column("tenure_months").to_pylist() == list(range(20))
        assert table.column("date").to_pylist() == ["2024-01-01"] * 10 + ["2024-01-02"] * 10
        assert source.schema.field("date").type == pa.string()

    def test_other_subfolders_are_named_as_not_read(self, tmp_path: Path) -> None:
        (tmp_path / "t" / "january").mkdir(parents=True)
        pq.write_table(TABLE, tmp_path / "t" / "january" / "part-0.parquet")
        with pytest.raises(ModelbitInputError, match="other subfolders are not read"):
            open_table(str(tmp_path / "t"))
