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
